"""What the core gets back from the journal on start, and how it is checked.

`RestoredState` is the journal's last word: the cars and their places, the
open jobs with their step intents and results, the last sequence number sent
to each device and the blocked slots. The core trusts none of it blindly. In
`starting`, once every device of a tower has reported, the core first settles
the commands the journal left in flight from each PLC's own status (see
`tower.core.site`, "Recovery"), then `reconcile()` compares the inventory
with what the sensors say:

- each slot sensor against the inventory: where they agree, fine; where they
  disagree, the slot is blocked and an alarm raised (the inventory is never
  overwritten from a sensor);
- each lift and shuttle `loaded` flag against the cars the inventory puts on
  that device;
- each car the inventory puts in a bay against the bay's `vehicle_present`
  (the core decides: a car whose job is over may have left with its driver);
- every car in a transit place (lift, shuttle, bay) is reported; the core
  raises an alarm for the ones no resumed job accounts for.

Only then does the tower go to `auto`. A job that touches a place with a
disagreement is held for an operator, with an alarm naming its ticket.

Before any of that, `check_towers()` refuses a journal with cars, open jobs
or blocked slots in a tower the site file does not name (a tower removed or
renamed by mistake): the core would not know where those cars are, so it does
not start (`UnknownTowers`), and the journal is left as it is.

`RestoredState.from_journal` reads `Journal.restored_state()`;
`RestoredState.from_records` replays journal records the way the journal
applies them, for tests that crash a core without a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tower.config import SiteConfig, SizeClass
from tower.core.inventory import Inventory, TowerSlots
from tower.core.link import DeviceLink
from tower.core.model import SlotId
from tower.core.records import (
    CarMoved,
    JobCreated,
    JobDestination,
    JobFinished,
    JobKind,
    ModeSet,
    Record,
    SlotBlocked,
    SlotUnblocked,
    StepIntent,
    StepResult,
    TicketClosed,
    TicketIssued,
)
from tower.errors import TowerError


class UnknownTowers(TowerError):
    """Raised when the journal holds cars or jobs of towers the site lacks."""


def check_towers(restored: RestoredState, site: SiteConfig) -> None:
    """Raise `UnknownTowers` naming each tower the journal has cars, open
    jobs or blocked slots in that `site` does not name."""
    known = {t.id for t in site.towers}
    found: dict[str, list[int]] = {}  # tower -> [cars, open jobs, blocked slots]
    for tower, _place, _size in restored.cars.values():
        found.setdefault(tower, [0, 0, 0])[0] += 1
    for job in restored.jobs:
        found.setdefault(job.tower, [0, 0, 0])[1] += 1
    for tower, _slot in restored.blocked:
        found.setdefault(tower, [0, 0, 0])[2] += 1
    unknown = sorted(set(found) - known)
    if not unknown:
        return
    parts = []
    for tower in unknown:
        cars, jobs, blocked = found[tower]
        parts.append(
            f"tower {tower!r}: {cars} cars, {jobs} open jobs, {blocked} blocked slots"
        )
    names = ", ".join(sorted(known))
    raise UnknownTowers(
        f"the journal has {'; '.join(parts)}, but the site file names only "
        f"{names}; put the tower back in the site file (the journal is left as is)"
    )


@dataclass(frozen=True)
class RestoredJob:
    """An open job as the journal left it."""

    job_id: str
    tower: str
    kind: JobKind
    ticket: str
    origin: str
    destination: str
    intents: tuple[StepIntent, ...] = ()
    results: tuple[StepResult, ...] = ()


@dataclass(frozen=True)
class RestoredState:
    """The journal's view at start.

    `cars`: ticket -> (tower, place, size class); `jobs`: open jobs, oldest
    first; `last_seq`: (tower, device) -> last sequence sent; `blocked`:
    (tower, slot name) -> reason; `modes`: tower -> `manual`/`auto` as an
    operator last set it.
    """

    cars: Mapping[str, tuple[str, str, SizeClass]] = field(default_factory=dict)
    jobs: Sequence[RestoredJob] = ()
    last_seq: Mapping[tuple[str, str], int] = field(default_factory=dict)
    blocked: Mapping[tuple[str, str], str] = field(default_factory=dict)
    modes: Mapping[str, str] = field(default_factory=dict)
    jobs_total: int = 0
    """Jobs the journal has ever held: the core numbers its own jobs on."""

    @classmethod
    def from_journal(cls, state: Mapping[str, Any]) -> RestoredState:
        """Build from `Journal.restored_state()` (plain dicts and rows)."""
        cars = {
            ticket: (car["tower"], car["place"], SizeClass(car["size_class"]))
            for ticket, car in state.get("cars", {}).items()
        }
        jobs = []
        for row in state.get("open_jobs", []):
            intents, results = [], []
            for s in row.get("steps", []):
                intents.append(
                    StepIntent(
                        row["job_id"], s["step"], row["tower"], s["device"],
                        s["code"], s["target"], s["side"], s["seq"],
                    )
                )  # fmt: skip
                if s.get("outcome"):
                    results.append(
                        StepResult(
                            row["job_id"], s["step"], row["tower"], s["device"],
                            s["seq"], s["outcome"], s.get("fault_code") or "",
                        )
                    )  # fmt: skip
            jobs.append(
                RestoredJob(
                    job_id=row["job_id"],
                    tower=row["tower"],
                    kind=JobKind(row["kind"]),
                    ticket=row["ticket"],
                    origin=row["origin"],
                    destination=row["destination"] or "",
                    intents=tuple(intents),
                    results=tuple(results),
                )
            )
        return cls(
            cars=cars,
            jobs=tuple(jobs),
            last_seq=dict(state.get("last_seq", {})),
            blocked=dict(state.get("blocked", {})),
            modes=dict(state.get("modes", {})),
            jobs_total=int(state.get("jobs_total", 0)),
        )

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> RestoredState:
        """Replay journal records in order, as `Journal.write` applies them."""
        sizes: dict[str, SizeClass] = {}
        cars: dict[str, tuple[str, str, SizeClass]] = {}
        jobs: dict[str, dict[str, Any]] = {}
        last_seq: dict[tuple[str, str], int] = {}
        blocked: dict[tuple[str, str], str] = {}
        modes: dict[str, str] = {}
        jobs_total = 0
        for r in records:
            if isinstance(r, TicketIssued):
                sizes[r.ticket] = SizeClass(r.size_class)
            elif isinstance(r, CarMoved):
                cars[r.ticket] = (r.tower, r.place, sizes[r.ticket])
            elif isinstance(r, TicketClosed):
                cars.pop(r.ticket, None)
            elif isinstance(r, JobCreated):
                jobs_total += 1
                jobs[r.job_id] = {
                    "job": r, "destination": r.destination, "intents": [],
                    "results": [],
                }  # fmt: skip
            elif isinstance(r, JobDestination):
                jobs[r.job_id]["destination"] = r.destination
            elif isinstance(r, StepIntent):
                jobs[r.job_id]["intents"].append(r)
                last_seq[r.tower, r.device] = r.seq
            elif isinstance(r, StepResult):
                jobs[r.job_id]["results"].append(r)
            elif isinstance(r, JobFinished):
                del jobs[r.job_id]
            elif isinstance(r, SlotBlocked):
                blocked[r.tower, r.slot] = r.reason
            elif isinstance(r, SlotUnblocked):
                blocked.pop((r.tower, r.slot), None)
            elif isinstance(r, ModeSet):
                modes[r.tower] = r.mode
        restored = []
        for entry in jobs.values():
            created: JobCreated = entry["job"]
            restored.append(
                RestoredJob(
                    job_id=created.job_id,
                    tower=created.tower,
                    kind=JobKind(created.kind),
                    ticket=created.ticket,
                    origin=created.origin,
                    destination=entry["destination"],
                    intents=tuple(entry["intents"]),
                    results=tuple(entry["results"]),
                )
            )
        return cls(
            cars=cars,
            jobs=tuple(restored),
            last_seq=last_seq,
            blocked=blocked,
            modes=modes,
            jobs_total=jobs_total,
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement found by `reconcile()`.

    `code` is the alarm code: `slot_sensor_mismatch` (the slot gets blocked),
    `load_mismatch` (a lift or shuttle), `bay_mismatch` (a car the journal
    puts in a bay that shows none), `car_in_transit`. `device` names the place
    (the shuttle reading the slot sensor, for a slot); `ticket` the car the
    journal has there, if any.
    """

    code: str
    device: str
    message: str
    slot: SlotId | None = None
    ticket: str | None = None


def reconcile(
    slots: TowerSlots,
    inventory: Inventory,
    links: Mapping[str, DeviceLink],
    transit_places: Iterable[str],
) -> list[Finding]:
    """Compare the tower's inventory with its sensors; the disagreements found.

    Slots already blocked are not compared again. `transit_places` are the
    tower's devices and bays (where a car at rest is a question for a person).
    """
    findings = []
    for slot in slots.order:
        if slot.id in slots.blocked:
            continue
        link = links.get(f"shuttle-{slot.id.level}")
        sensors = (link.status or {}).get("slot_sensors") if link else None
        if sensors is None:
            continue
        bit = slot.sensor_bit()
        seen = bool(sensors[bit]) if bit < len(sensors) else False
        ticket = slots.car_at(slot)
        if seen and ticket is None:
            why = f"sensor sees a car in {slot.name}, the journal has none"
        elif ticket is not None and not seen:
            why = f"journal has {ticket} in {slot.name}, the sensor sees none"
        else:
            continue
        findings.append(
            Finding("slot_sensor_mismatch", link.name, why, slot.id, ticket)
        )

    for place in transit_places:
        ticket = inventory.at(slots.tower, place)
        link = links.get(place)
        if link is not None and link.kind != "bay":
            loaded = link.flag("loaded")
            if loaded != (ticket is not None):
                holds = f"holds {ticket}" if ticket else "holds no car"
                loads = "loaded" if loaded else "empty"
                why = f"{place} reports {loads}, the journal says it {holds}"
                findings.append(Finding("load_mismatch", place, why, None, ticket))
        elif (
            link is not None and ticket is not None and not link.flag("vehicle_present")
        ):
            why = f"journal has {ticket} in {place}, the bay sees no car"
            findings.append(Finding("bay_mismatch", place, why, None, ticket))
        if ticket is not None:
            why = f"car {ticket} is at {place}, not in a slot"
            findings.append(Finding("car_in_transit", place, why, None, ticket))
    return findings
