"""The zoo-day benchmark: the real core against the plant model, in virtual time.

Theory of operation
-------------------
`run_day(workload, site, policy)` replays one generated zoo day (see
`sim.workload`) through a `Harness`: the `SiteCore` with the policy's
allocator and sequencer, coupled to the same `Plant` that `tower sim` serves
over Modbus. Time jumps from event to event; nothing sleeps and nothing opens
a socket, so a run is deterministic for its seed (only the CPU figures vary).
The same trace is replayed for every policy.

The visitors around the harness:

- a car comes to its tower at its arrival time and takes a bay showing a green
  light: open, empty, nobody inside, not reserved by the controller (its own
  bay first, else the other). While no bay is green it waits in line. A car
  the core still refuses (a retrieval took the bay while the driver was
  getting out) drives round and queues again; `refused_stores` counts them;
- a retrieval request goes to the core at its time `t_s`: at the tower's
  terminal, or minutes earlier at the kiosk by the exit. The core hears of a
  kiosk request at `t_s` with the walk's shortest time as the visitor's
  expected arrival (the kiosk knows where it stands, not how fast each visitor
  walks); the visitor reaches the tower at `arrives_at_tower_s` and collects
  the car from then on, taking `driver_out_s` to drive off;
- a request for a car that is not parked yet (it queued for a bay) is asked
  again as soon as the car is in its slot (`deferred_requests`).

What is measured, per run (`RunResult.metrics`):

- **wait**: from the visitor reaching the tower (`arrives_at_tower_s`, equal
  to `t_s` at the tower) until the car is released in the bay (the bay's
  `release` step done, which ends the retrieve job). A kiosk car released
  before its visitor arrives waits for them: its wait is clamped to 0
  (`staged` counts those). The closing figures take the visitors who reach the
  tower in the hour before closing or later;
- **throughput**: jobs done per rolling hour (`peak_cars_per_h`), and the rate
  while a queue exists: per tower, the periods with at least two jobs waiting
  for service (a store whose car stands in a bay, a retrieval whose visitor is
  at the tower), with the jobs done in them;
- **lift utilisation**: the lift's motion and transfer time over the day;
- **entry wait**: a car's time in line for a green bay (arrival to the store
  request, less the driver's own time getting out);
- **relocations**, and `relocation_overlaps`: visitors who asked while a
  relocation ran in their tower (the one way a relocation can delay anyone);
- **positionings** (an idle device moved, with no car, to where the next
  retrieval will likely want it), and `positioning_overlaps`: visitors who
  asked while one ran in their tower;
- **solo retrievals**: at-tower retrievals with no other job of their tower
  open from request to release, as a multiple of their travel bound;
- **CPU**: `time.process_time` around every `SiteCore.handle` call (the
  controller's own CPU, `cpu_ms_per_job`) and around the whole replay
  (`cpu_s_total`: core, plant and harness).

The physics bounds for the same run (`tower.core.model.Travel`):

- `bound_wait_mean_s`: each retrieval's unqueued travel from the slot its car
  was in (the devices waiting where the plan needs them), less the time the
  visitor gave by asking ahead, never below 0;
- `bound_peak_cars_per_h`: the lifts' cycle limit, 3600 s over the mean
  single-command cycle of the day's jobs (two transfers, the trip to the
  car's level and back), summed over towers; a store and a retrieval paired
  in one cycle can beat it, the closing rush has no stores to pair;
- `bound_bay_cars_per_h`: the bays' limit for retrievals, each bay taking a
  check, a transfer and the driver's mean time to drive off per car.
"""

from __future__ import annotations

import bisect
import math
import multiprocessing
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from sim.harness import Harness
from sim.plant import Car
from sim.workload import (
    Arrival,
    RequestKind,
    RetrievalRequest,
    Workload,
    WorkloadParams,
    clock_s,
    generate,
    scaled_site,
)
from tower.config import SiteConfig, load_site
from tower.core.actions import SendCommand
from tower.core.errors import RequestRefused
from tower.core.events import StoreRequested
from tower.core.model import SlotId, Travel
from tower.core.policies import Policy
from tower.core.records import JobCreated, JobDestination, JobFinished, JobKind

CLOSING_WINDOW_S = 3600.0
"""The closing figures take visitors reaching the tower from this long before
closing on."""

SOLO_TOLERANCE = 0.10
"""A retrieval with an empty queue counts as within its bound up to this share
over it."""

_HORIZON_S = 48 * 3600.0  # past the day's end: a run that needs more is stuck


@dataclass(frozen=True)
class Retrieval:
    """One visitor's retrieval, as measured."""

    car_id: str
    tower: str
    kind: str  # "kiosk" or "at_tower"
    asked_s: float  # the visitor asked (the trace's t_s)
    requested_s: float  # the core heard of it (later if the car was not parked)
    visitor_s: float  # the visitor reached the tower
    released_s: float  # the car stood released in the bay
    slot: str  # where the car was when asked for
    bay: str
    travel_s: float  # unqueued travel from the slot to the bay
    solo: bool  # no other job of its tower open from request to release

    @property
    def wait_s(self) -> float:
        """Visitor at the tower to car released, never below 0."""
        return max(0.0, self.released_s - self.visitor_s)

    @property
    def bound_s(self) -> float:
        """The physics' lower bound of the wait."""
        return max(0.0, self.travel_s - (self.visitor_s - self.asked_s))


@dataclass
class RunResult:
    """One seed and policy: the figures and the measured retrievals."""

    metrics: dict[str, Any]
    retrievals: list[Retrieval]
    queue: list[tuple[float, int]]  # (t_s, visitors waiting), site-wide


@dataclass
class _Pending:
    arrival: Arrival
    ready_s: float = 0.0  # a refused car may come back once it has left


@dataclass
class _Replay:
    """The visitors of one run around the harness."""

    workload: Workload
    harness: Harness
    cars: dict[str, Arrival]
    ticket_of: dict[str, str] = field(default_factory=dict)
    car_of_ticket: dict[str, str] = field(default_factory=dict)
    requests: dict[str, RetrievalRequest] = field(default_factory=dict)
    line: dict[str, list[_Pending]] = field(default_factory=lambda: defaultdict(list))
    deferred: list[RetrievalRequest] = field(default_factory=list)
    refused_stores: int = 0
    deferred_requests: int = 0
    core_cpu_s: float = 0.0
    lift_busy: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # Relocations: job id -> (tower, start, end), from the records as they come.
    relocating: dict[str, list[Any]] = field(default_factory=dict)
    positioning: dict[str, list[Any]] = field(default_factory=dict)  # the same
    core_events: int = 0
    _refused_seen: int = 0
    _records_seen: int = 0

    # -- arrivals ----------------------------------------------------------------

    def arrive(self, arrival: Arrival) -> None:
        self.line[arrival.tower].append(_Pending(arrival))
        self.seat()

    def seat(self) -> None:
        """Send waiting cars into green bays, oldest first.

        A car sent drives in at the same instant (the harness's next step), so
        only the bays taken in this call need remembering.
        """
        h = self.harness
        taken: set[tuple[str, str]] = set()
        for tower, line in self.line.items():
            if not line:
                continue
            config = next(t for t in h.site.towers if t.id == tower)
            for pending in list(line):
                car = pending.arrival
                if pending.ready_s > h.now or h.plant.where(car.car_id) is not None:
                    continue
                bays = sorted((b.id for b in config.bays), key=lambda b: b != car.bay)
                bay = next((b for b in bays if self._green(tower, b, taken)), None)
                if bay is None:
                    break  # first in line, first in: nobody overtakes
                line.remove(pending)
                taken.add((tower, bay))
                ticket = h.arrive(
                    tower,
                    bay,
                    expected_departure_s=car.expected_departure_s,
                    wants_charger=car.ev,
                    car=Car(
                        car.car_id,
                        car.length_mm,
                        car.width_mm,
                        car.height_mm,
                        car.weight_class,
                        car.driver_in_s,
                    ),
                )
                self.ticket_of[car.car_id] = ticket
                self.car_of_ticket[ticket] = car.car_id

    def _green(self, tower: str, bay: str, taken: set[tuple[str, str]]) -> bool:
        h = self.harness
        if (tower, bay) in taken or bay in h.core.towers[tower].holders:
            return False
        flags = h.plant.status(tower, bay)["flags"]
        return not (
            flags["door_closed"] or flags["vehicle_present"] or flags["person_present"]
        )

    # -- retrievals --------------------------------------------------------------

    def ask(self, request: RetrievalRequest) -> None:
        self.requests[request.car_id] = request
        if not self._try_ask(request):
            self.deferred.append(request)
            self.deferred_requests += 1

    def _try_ask(self, request: RetrievalRequest) -> bool:
        h = self.harness
        ticket = self.ticket_of.get(request.car_id)
        if ticket is None:
            return False
        car = h.core.inventory.cars.get(ticket)
        if car is None or car.place not in h.core.towers[car.tower].slots.by_name:
            return False
        try:
            if h.core.ticket(ticket)["job_id"] is not None:
                return False
        except RequestRefused:
            return False
        arrival = self.cars[request.car_id]
        h.collect_s[ticket] = arrival.driver_out_s
        if request.arrives_at_tower_s > h.now:
            h.collect_at[ticket] = request.arrives_at_tower_s
        due = None
        if request.kind is RequestKind.KIOSK:
            # The kiosk knows the shortest walk from it, not each visitor's pace.
            walk_s = self.workload.params.kiosk.lead_min[0] * 60.0
            due = max(h.now, request.t_s + walk_s)
        h.retrieve(ticket, visitor_due_s=due)
        return True

    # -- after every harness step ----------------------------------------------

    def after_step(self, h: Harness) -> None:
        if len(h.records) > self._records_seen:
            for record in h.records[self._records_seen :]:
                if isinstance(record, JobCreated) and record.kind is JobKind.RELOCATE:
                    self.relocating[record.job_id] = [record.tower, h.now, None]
                elif isinstance(record, JobCreated) and record.kind is JobKind.POSITION:
                    self.positioning[record.job_id] = [record.tower, h.now, None]
                elif isinstance(record, JobFinished):
                    for spans in (self.relocating, self.positioning):
                        if record.job_id in spans:
                            spans[record.job_id][2] = h.now
            self._records_seen = len(h.records)
        if len(h.refused) > self._refused_seen:
            for event, _code in h.refused[self._refused_seen :]:
                if isinstance(event, StoreRequested):
                    car_id = self.car_of_ticket[event.ticket]
                    self.refused_stores += 1
                    pending = _Pending(self.cars[car_id], ready_s=h.now + 60.0)
                    self.line[event.tower].insert(0, pending)
                    h.schedule(pending.ready_s, self.seat)
            self._refused_seen = len(h.refused)
        if self.deferred:
            self.deferred = [r for r in self.deferred if not self._try_ask(r)]
        if any(self.line.values()):
            self.seat()

    def on_command(self, h: Harness, command: SendCommand) -> None:
        """Book the lift's busy time: its moves and the transfers with it."""
        tower = command.tower
        physics = h.core.towers[tower].config.physics
        if command.device == "lift":
            here_mm = h.plant.status(tower, "lift")["position_mm"]
            metres = abs(command.target * physics.level_height_m - here_mm / 1000.0)
            busy = _move_s(metres, physics.lift_speed_m_s, physics.lift_accel_m_s2)
        elif command.side == "lift":
            busy = physics.transfer_s
        else:
            return
        self.lift_busy[tower].append((h.now, busy))


def _move_s(distance_m: float, speed: float, accel: float) -> float:
    if distance_m <= 1e-9:
        return 0.0
    ramp = speed * speed / accel
    if distance_m <= ramp:
        return 2.0 * math.sqrt(distance_m / accel)
    return distance_m / speed + speed / accel


# -- running a day ----------------------------------------------------------------


def run_day(workload: Workload, site: SiteConfig, policy: Policy) -> RunResult:
    """Replay one zoo day for one policy; the figures and the retrievals."""
    start_cpu = time.process_time()
    harness = Harness(
        site,
        seed=workload.seed,
        allocator=policy.allocator(),
        sequencer=policy.sequencer(),
    )
    replay = _Replay(workload, harness, {a.car_id: a for a in workload.arrivals()})
    _time_core(replay)
    harness.after_step.append(replay.after_step)
    harness.on_command.append(replay.on_command)
    for event in workload.events:
        if isinstance(event, Arrival):
            harness.schedule(event.t_s, lambda e=event: replay.arrive(e))
        else:
            harness.schedule(event.t_s, lambda e=event: replay.ask(e))
    harness.run_until_idle(limit=workload.end_s + _HORIZON_S)
    cpu_total = time.process_time() - start_cpu
    return _measure(replay, policy, cpu_total)


def _time_core(replay: _Replay) -> None:
    """Wrap the core's `handle` to add up the controller's own CPU time."""
    core = replay.harness.core
    handle = core.handle
    clock = time.process_time

    def timed(event: Any, now: float) -> Any:
        started = clock()
        try:
            return handle(event, now)
        finally:
            replay.core_cpu_s += clock() - started
            replay.core_events += 1

    core.handle = timed  # type: ignore[method-assign]


# -- measuring ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between ranks; 0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


def _measure(replay: _Replay, policy: Policy, cpu_total: float) -> RunResult:
    h, w = replay.harness, replay.workload
    site = h.site
    configs = {t.id: t for t in site.towers}
    travel = {t.id: Travel(t.physics) for t in site.towers}
    bay_column = {(t.id, b.id): b.column for t in site.towers for b in t.bays}

    origin: dict[str, str] = {}  # job id -> slot a retrieval started from
    destination: dict[str, str] = {}  # job id -> slot a store went to
    relocations = 0
    for record in h.records:
        if isinstance(record, JobCreated):
            if record.kind is JobKind.RETRIEVE:
                origin[record.job_id] = record.origin
            elif record.kind is JobKind.RELOCATE:
                relocations += 1
        elif isinstance(record, JobDestination) and record.job_id not in origin:
            destination[record.job_id] = record.destination

    done = [
        (job_id, times)
        for job_id, times in h.jobs.items()
        if times.outcome == "done" and times.finished_at is not None
    ]
    intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, times in done:
        assert times.finished_at is not None
        intervals[times.tower].append((times.requested_at, times.finished_at))

    retrievals: list[Retrieval] = []
    for job_id, times in done:
        if times.kind is not JobKind.RETRIEVE:
            continue
        car_id = replay.car_of_ticket[times.ticket]
        request = replay.requests[car_id]
        slot = origin[job_id]
        assert times.finished_at is not None
        tower = times.tower
        travel_s = travel[tower].retrieve_s(
            SlotId.parse(slot), bay_column[tower, times.bay]
        )
        others = sum(
            1
            for start, end in intervals[tower]
            if start < times.finished_at and end > times.requested_at
        )
        retrievals.append(
            Retrieval(
                car_id=car_id,
                tower=tower,
                kind="kiosk" if request.kind is RequestKind.KIOSK else "at_tower",
                asked_s=request.t_s,
                requested_s=times.requested_at,
                visitor_s=request.arrives_at_tower_s,
                released_s=times.finished_at,
                slot=slot,
                bay=times.bay,
                travel_s=travel_s,
                solo=others == 1,
            )
        )
    retrievals.sort(key=lambda r: (r.visitor_s, r.car_id))

    waits = [r.wait_s for r in retrievals]
    closing_from = w.closing_s - CLOSING_WINDOW_S
    closing = [r for r in retrievals if r.visitor_s >= closing_from]
    solo = [r for r in retrievals if r.solo and r.kind == "at_tower"]
    solo_ratio = [(r.released_s - r.requested_s) / r.travel_s for r in solo]

    entry = [
        times.requested_at - arrival.t_s - arrival.driver_in_s
        for _, times in done
        if times.kind is JobKind.STORE
        for arrival in [replay.cars[replay.car_of_ticket[times.ticket]]]
    ]
    finishes = sorted(t.finished_at for _, t in done if t.finished_at is not None)
    jobs_done = len(finishes)
    levels = {
        job_id: SlotId.parse(
            origin[job_id] if t.kind is JobKind.RETRIEVE else destination[job_id]
        ).level
        for job_id, t in done
    }

    def cycle_s(job_id: str, tower: str) -> float:
        p = configs[tower].physics
        return 2 * p.transfer_s + 2 * travel[tower].lift_s(0, levels[job_id])

    bound_peak = 0.0
    for tower in configs:
        cycles = [cycle_s(j, t.tower) for j, t in done if t.tower == tower]
        if cycles:
            bound_peak += 3600.0 / _mean(cycles)

    queued = _queued_throughput(replay, retrievals, done, cycle_s)
    lift_busy = sum(b for spans in replay.lift_busy.values() for _, b in spans)
    closing_busy = sum(
        b for spans in replay.lift_busy.values() for t, b in spans if t >= closing_from
    )
    day_s = w.end_s
    closing_span = max(h.now, w.end_s) - closing_from

    bay_bound = 0.0
    outs = [a.driver_out_s for a in w.arrivals()]
    for tower in configs.values():
        per_car = tower.physics.bay_check_s + tower.physics.transfer_s + _mean(outs)
        bay_bound += len(tower.bays) * 3600.0 / per_car

    metrics: dict[str, Any] = {
        "seed": w.seed,
        "policy": policy.name,
        "site": site.id,
        "towers": len(site.towers),
        "slots": sum(t.slots for t in w.towers),
        "cars": len(w.arrivals()),
        "jobs": jobs_done,
        "retrievals": len(retrievals),
        "wait_mean_s": _mean(waits),
        "wait_p95_s": percentile(waits, 0.95),
        "wait_max_s": max(waits, default=0.0),
        "closing_retrievals": len(closing),
        "closing_wait_mean_s": _mean(r.wait_s for r in closing),
        "closing_wait_p95_s": percentile([r.wait_s for r in closing], 0.95),
        "peak_cars_per_h": _best_hour(finishes),
        "queued_cars_per_h": queued["rate"],
        "queued_hours": queued["hours"],
        "queued_throughput_ratio": queued["ratio"],
        "lift_utilisation": lift_busy / (len(configs) * day_s),
        "closing_lift_utilisation": closing_busy / (len(configs) * closing_span),
        "relocations": relocations,
        "relocation_overlaps": sum(
            1
            for r in retrievals
            for tower, start, end in replay.relocating.values()
            if tower == r.tower and start <= r.asked_s < (end or math.inf)
        ),
        "positionings": len(replay.positioning),
        "positioning_overlaps": sum(
            1
            for r in retrievals
            for tower, start, end in replay.positioning.values()
            if tower == r.tower and start <= r.asked_s < (end or math.inf)
        ),
        "staged": sum(1 for r in retrievals if r.released_s <= r.visitor_s),
        "solo_retrievals": len(solo),
        "solo_ratio_median": median(solo_ratio) if solo_ratio else 0.0,
        "solo_within_10pct": _share(x <= 1 + SOLO_TOLERANCE for x in solo_ratio),
        "entry_wait_mean_s": _mean(entry),
        "entry_wait_p95_s": percentile(entry, 0.95),
        "refused_stores": replay.refused_stores,
        "deferred_requests": replay.deferred_requests,
        "cpu_s_total": cpu_total,
        "cpu_s_core": replay.core_cpu_s,
        "cpu_ms_per_job": 1000.0 * replay.core_cpu_s / max(jobs_done, 1),
        "core_events_per_job": replay.core_events / max(jobs_done, 1),
        "end_s": h.now,
        "bound_wait_mean_s": _mean(r.bound_s for r in retrievals),
        "bound_closing_wait_mean_s": _mean(r.bound_s for r in closing),
        "bound_peak_cars_per_h": bound_peak,
        "bound_queued_cars_per_h": queued["bound"],
        "bound_queued_bay_cars_per_h": queued["bays"],
        "bound_bay_cars_per_h": bay_bound,
    }
    return RunResult(metrics, retrievals, _visitor_queue(retrievals))


def _share(flags: Iterable[bool]) -> float:
    items = list(flags)
    return sum(items) / len(items) if items else 0.0


def _best_hour(times: Sequence[float]) -> float:
    """The most events in any hour-long window."""
    best, low = 0, 0
    for high, t in enumerate(times):
        while times[low] <= t - 3600.0:
            low += 1
        best = max(best, high - low + 1)
    return float(best)


def _visitor_queue(retrievals: Sequence[Retrieval]) -> list[tuple[float, int]]:
    """Visitors waiting at the towers over the day, as (t_s, count) steps."""
    steps = Counter[float]()
    for r in retrievals:
        if r.released_s > r.visitor_s:
            steps[r.visitor_s] += 1
            steps[r.released_s] -= 1
    series, waiting = [(0.0, 0)], 0
    for t in sorted(steps):
        waiting += steps[t]
        series.append((t, waiting))
    return series


def _queued_throughput(
    replay: _Replay,
    retrievals: Sequence[Retrieval],
    done: Sequence[tuple[str, Any]],
    cycle_s: Any,
) -> dict[str, float]:
    """Jobs done per tower-hour while at least two jobs waited for service.

    A store waits from its request (the car stands in the bay) to its end, a
    retrieval from its visitor reaching the tower to the car's release.
    """
    waits: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    by_ticket = {r.car_id: r for r in retrievals}
    for job_id, times in done:
        if times.kind is JobKind.STORE:
            waits[times.tower].append((times.requested_at, times.finished_at, job_id))
        else:
            r = by_ticket[replay.car_of_ticket[times.ticket]]
            if r.released_s > r.visitor_s:
                waits[times.tower].append((r.visitor_s, r.released_s, job_id))

    configs = {t.id: t for t in replay.harness.site.towers}
    total_s = jobs = bound_cycles = bay_rate_sum = 0.0
    for tower, spans in waits.items():
        physics = configs[tower].physics
        bay_times = []
        edges = sorted(
            [(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans],
            key=lambda x: (x[0], x[1]),
        )
        periods, depth, opened = [], 0, 0.0
        for t, step in edges:
            before = depth
            depth += step
            if before < 2 <= depth:
                opened = t
            elif before >= 2 > depth:
                periods.append((opened, t))
        starts = [p[0] for p in periods]
        for _start, end, job_id in spans:
            i = bisect.bisect_right(starts, end) - 1
            if i >= 0 and periods[i][0] < end <= periods[i][1]:
                jobs += 1
                bound_cycles += cycle_s(job_id, tower)
                times = replay.harness.jobs[job_id]
                car = replay.cars[replay.car_of_ticket[times.ticket]]
                # The bay's own minimum per car: the driver's time in it, the
                # check and one transfer.
                driver = (
                    car.driver_in_s
                    if times.kind is JobKind.STORE
                    else (car.driver_out_s)
                )
                bay_times.append(driver + physics.bay_check_s + physics.transfer_s)
        span = sum(e - s for s, e in periods)
        total_s += span
        if bay_times:
            bays = len(configs[tower].bays)
            bay_rate_sum += span * bays * 3600.0 / _mean(bay_times)
    if total_s <= 0 or jobs == 0:
        return {"rate": 0.0, "hours": 0.0, "ratio": 0.0, "bound": 0.0, "bays": 0.0}
    rate = 3600.0 * jobs / total_s
    bound = 3600.0 * jobs / bound_cycles
    return {
        "rate": rate,
        "hours": total_s / 3600.0,
        "ratio": rate / bound,
        "bound": bound,
        "bays": bay_rate_sum / total_s,
    }


# -- many runs, the summary, the plots ------------------------------------------------

SCALES = ("reference", "levels20", "towers10")
"""The sites `tower bench --scale` knows: the reference site, one tower of 20
levels, a site of 10 reference towers."""

REFERENCE_SITE = Path(__file__).parent / "sites" / "reference.toml"


def scale_site(name: str, base: SiteConfig | None = None) -> SiteConfig:
    """The site of a named scale, built from `base` (default the reference)."""
    base = base or load_site(REFERENCE_SITE)
    if name == "reference":
        return base
    if name == "levels20":
        return scaled_site(base, towers=1, levels=20)
    if name == "towers10":
        return scaled_site(base, towers=10)
    raise ValueError(f"unknown scale {name!r}; known: {', '.join(SCALES)}")


def run_seed(
    seed: int, site: SiteConfig, params: WorkloadParams, policies: Sequence[Policy]
) -> list[RunResult]:
    """One seed's day, generated once and replayed for every policy."""
    workload = generate(params, site, seed)
    return [run_day(workload, site, policy) for policy in policies]


def run_many(
    seeds: Sequence[int],
    site: SiteConfig,
    params: WorkloadParams,
    policies: Sequence[Policy],
    *,
    processes: int = 1,
) -> list[RunResult]:
    """Every seed for every policy, seed by seed; results in (seed, policy) order.

    With `processes` > 1 the seeds run in worker processes. The figures do not
    depend on it (each run is deterministic for its seed); the CPU figures are
    each run's own.
    """
    tasks = [(seed, site, params, list(policies)) for seed in seeds]
    if processes <= 1 or len(tasks) <= 1:
        batches = [run_seed(*task) for task in tasks]
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(processes, len(tasks))) as pool:
            batches = pool.starmap(run_seed, tasks)
    return [result for batch in batches for result in batch]


SUMMARY_KEYS = (
    "wait_mean_s",
    "wait_p95_s",
    "wait_max_s",
    "closing_wait_mean_s",
    "closing_wait_p95_s",
    "peak_cars_per_h",
    "queued_cars_per_h",
    "queued_throughput_ratio",
    "lift_utilisation",
    "relocations",
    "relocation_overlaps",
    "positionings",
    "positioning_overlaps",
    "solo_ratio_median",
    "solo_within_10pct",
    "entry_wait_mean_s",
    "cpu_s_total",
    "cpu_ms_per_job",
    "core_events_per_job",
    "jobs",
    "bound_wait_mean_s",
    "bound_closing_wait_mean_s",
    "bound_peak_cars_per_h",
    "bound_queued_cars_per_h",
    "bound_queued_bay_cars_per_h",
    "bound_bay_cars_per_h",
)


def summarize(results: Sequence[RunResult], baseline: str) -> dict[str, Any]:
    """Per policy, the median over seeds of each figure, and the closing-hour
    p95 against `baseline`'s on the same seeds (median and worst ratio)."""
    by_policy: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for result in results:
        m = result.metrics
        by_policy[m["policy"]][m["seed"]] = m
    base = by_policy.get(baseline, {})
    summary: dict[str, Any] = {}
    for policy, runs in by_policy.items():
        row = {k: median(r[k] for r in runs.values()) for k in SUMMARY_KEYS}
        row["seeds"] = len(runs)
        ratios = [
            runs[s]["closing_wait_p95_s"] / base[s]["closing_wait_p95_s"]
            for s in runs
            if s in base and base[s]["closing_wait_p95_s"] > 0
        ]
        if ratios:
            row["closing_p95_vs_baseline_median"] = median(ratios)
            row["closing_p95_vs_baseline_worst"] = max(ratios)
        summary[policy] = row
    return summary


_COLUMNS = (
    ("policy", "policy", "{}"),
    ("wait_mean_s", "wait mean s", "{:.0f}"),
    ("wait_p95_s", "p95 s", "{:.0f}"),
    ("wait_max_s", "max s", "{:.0f}"),
    ("closing_wait_mean_s", "closing mean s", "{:.0f}"),
    ("closing_wait_p95_s", "closing p95 s", "{:.0f}"),
    ("closing_p95_vs_baseline_median", "p95/base", "{:.2f}"),
    ("closing_p95_vs_baseline_worst", "worst", "{:.2f}"),
    ("peak_cars_per_h", "peak/h", "{:.0f}"),
    ("queued_throughput_ratio", "queued/bound", "{:.2f}"),
    ("lift_utilisation", "lift", "{:.0%}"),
    ("relocations", "reloc", "{:.0f}"),
    ("positionings", "pos", "{:.0f}"),
    ("cpu_s_total", "cpu s", "{:.2f}"),
    ("cpu_ms_per_job", "ms/job", "{:.2f}"),
)


def table(summary: dict[str, Any], *, markdown: bool = False) -> list[str]:
    """The summary as a table, one row per policy (medians over seeds)."""
    header = [title for _, title, _ in _COLUMNS]
    rows = []
    for policy, row in summary.items():
        cells = []
        for key, _, fmt in _COLUMNS:
            value = policy if key == "policy" else row.get(key)
            cells.append("-" if value is None else fmt.format(value))
        rows.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |"]
        lines.append(
            "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"
        )
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        return lines
    widths = [max(len(c[i]) for c in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), *(line(r) for r in rows)]


def bounds_lines(summary: dict[str, Any]) -> list[str]:
    """What the physics allows, per policy (the bounds depend on the slots used)."""
    lines = []
    for policy, row in summary.items():
        lines.append(
            f"{policy}: wait mean >= {row['bound_wait_mean_s']:.0f} s "
            f"(closing >= {row['bound_closing_wait_mean_s']:.0f} s); lift cycles "
            f"<= {row['bound_peak_cars_per_h']:.0f} cars/h, bays <= "
            f"{row['bound_bay_cars_per_h']:.0f} retrievals/h; with a queue "
            f"{row['queued_cars_per_h']:.0f} cars per tower-hour, "
            f"{row['queued_throughput_ratio']:.2f} of the lift bound "
            f"({row['bound_queued_cars_per_h']:.0f}), the bays allowing "
            f"{row['bound_queued_bay_cars_per_h']:.0f}; solo "
            f"retrievals {row['solo_ratio_median']:.2f} x bound "
            f"({row['solo_within_10pct']:.0%} within 10 %)"
        )
    return lines


def plot(
    results: Sequence[RunResult], directory: Path, workload: Workload
) -> list[Path]:
    """Two PNG files: the closing-hour wait distribution per policy (all seeds
    pooled), and the visitors waiting over the day (mean over seeds)."""
    import matplotlib  # noqa: PLC0415 (an optional dependency, the "bench" extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    policies: dict[str, list[RunResult]] = defaultdict(list)
    for result in results:
        policies[result.metrics["policy"]].append(result)
    closing_from = workload.closing_s - CLOSING_WINDOW_S

    fig, (day_ax, closing_ax) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, runs in policies.items():
        for ax, since in ((day_ax, -math.inf), (closing_ax, closing_from)):
            waits = sorted(
                r.wait_s for run in runs for r in run.retrievals if r.visitor_s >= since
            )
            if waits:
                shares = [(i + 1) / len(waits) for i in range(len(waits))]
                ax.step([w / 60 for w in waits], shares, where="post", label=name)
    for ax, title in ((day_ax, "whole day"), (closing_ax, "closing hour on")):
        ax.set_title(f"Retrieval wait, {title}")
        ax.set_xlabel("wait, min (visitor at the tower to car released)")
        ax.set_xscale("symlog", linthresh=1)
        ax.grid(alpha=0.3)
    day_ax.set_ylabel("share of visitors waiting at most that long")
    closing_ax.legend(loc="lower right")
    fig.tight_layout()
    waits_png = directory / "wait-distribution.png"
    fig.savefig(waits_png, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 4))
    step_s = 300.0
    bins = int(workload.end_s // step_s) + 1
    start_h = clock_s(workload.params.day.start) / 3600
    for name, runs in policies.items():
        sums = [0.0] * bins
        for run in runs:
            times = [t for t, _ in run.queue]
            for i in range(bins):
                at = bisect.bisect_right(times, i * step_s) - 1
                sums[i] += run.queue[at][1] if at >= 0 else 0
        ax.plot(
            [start_h + i * step_s / 3600 for i in range(bins)],
            [total / len(runs) for total in sums],
            label=name,
        )
    closing_h = start_h + workload.closing_s / 3600
    ax.axvline(closing_h, color="grey", linestyle="--", linewidth=1)
    ax.set_title("Visitors waiting for their car (mean over seeds, every 5 min)")
    ax.set_xlabel("time of day, h (dashed: closing)")
    ax.set_ylabel("visitors waiting")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    queue_png = directory / "queue-over-the-day.png"
    fig.savefig(queue_png, dpi=120)
    plt.close(fig)
    return [waits_png, queue_png]
