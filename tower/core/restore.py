"""What the core gets back from the journal on start, and how it is checked.

`RestoredState` is the journal's last word: the cars and their places, the
open jobs with their step intents and results, the last sequence number sent
to each device and the blocked slots. The core trusts none of it blindly. In
`starting`, once every device of a tower has reported, `reconcile()` compares
it with what the PLCs say:

- each slot sensor against the inventory: where they agree, fine; where they
  disagree, the slot is blocked and an alarm raised (the inventory is never
  overwritten from a sensor);
- each lift and shuttle `loaded` flag against the cars the inventory puts on
  that device;
- every car in a transit place (lift, shuttle, bay) and every open job raise
  an alarm naming the car's place; such jobs are `held` for an operator.

Only then does the tower go to `auto`. Resuming a job whose last step can be
proved from the PLC's status is issue 4; this module is its seam.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tower.config import SizeClass
from tower.core.inventory import Inventory, TowerSlots
from tower.core.link import DeviceLink
from tower.core.model import SlotId
from tower.core.records import JobKind, StepIntent, StepResult


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
    (tower, slot name) -> reason.
    """

    cars: Mapping[str, tuple[str, str, SizeClass]] = field(default_factory=dict)
    jobs: Sequence[RestoredJob] = ()
    last_seq: Mapping[tuple[str, str], int] = field(default_factory=dict)
    blocked: Mapping[tuple[str, str], str] = field(default_factory=dict)

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
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement found by `reconcile()`.

    `code` is the alarm code: `slot_sensor_mismatch` (the slot gets blocked),
    `load_mismatch`, `car_in_transit`.
    """

    code: str
    device: str
    message: str
    slot: SlotId | None = None


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
        findings.append(Finding("slot_sensor_mismatch", link.name, why, slot.id))

    for place in transit_places:
        ticket = inventory.at(slots.tower, place)
        link = links.get(place)
        if link is not None and link.kind != "bay":
            loaded = link.flag("loaded")
            if loaded != (ticket is not None):
                holds = f"holds {ticket}" if ticket else "holds no car"
                loads = "loaded" if loaded else "empty"
                why = f"{place} reports {loads}, the journal says it {holds}"
                findings.append(Finding("load_mismatch", place, why))
        if ticket is not None:
            why = f"car {ticket} is at {place}, not in a slot"
            findings.append(Finding("car_in_transit", place, why))
    return findings
