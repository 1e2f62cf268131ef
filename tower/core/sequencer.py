"""Job sequencing: which waiting jobs may take which devices now.

The core keeps the open jobs of a tower in arrival order and asks its
`Sequencer` after every event which devices to reserve for whom. A sequencer
answers with `Admission`s: a job, the bay it goes through, the motion plan it
runs (its steps are added when the job is first admitted) and the devices to
reserve now (by default the plan's whole path). A job's steps are sent only
once every device they involve is reserved for it, and each device is
released as soon as the job's last step on it is done. The sequencer only
chooses; the core reserves, and re-checks every device, so a policy cannot
double-book one.

Two sequencers:

- `FcfsWholePath`, the baseline: a job gets its whole path (bay, ground
  shuttle, lift, level shuttle) at once, or waits. There is no hold-and-wait,
  so there is no deadlock; and one car passes the lift at a time.
- `Pipelined`: the path piece by piece, so the level shuttles bring queued
  cars to the lift while the lift serves another level, and the lift brings
  the next car down while the ground shuttle serves a bay. A retrieval's bay
  is chosen when its car comes down, not when the visitor asks. Its rules
  against deadlock are in its docstring.

A sequencer may also propose housekeeping, which the core turns into jobs:
relocations (a car to a nearer slot) and positionings (an idle device, with
no car, to where the next retrieval will likely want it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tower.config import SizeClass
from tower.core.allocator import TowerView
from tower.core.events import Event, RetrieveRequested, StoreRequested
from tower.core.job import Job, JobState, StepState
from tower.core.model import SlotId
from tower.core.plan import LIFT, StepSpec, devices_of, shuttle
from tower.core.records import JobKind

GROUND = shuttle(0)


@dataclass(frozen=True, slots=True)
class Admission:
    """Devices reserved for a job now, and the plan it runs.

    `plan` is added to a waiting job's steps when it is first admitted; for a
    job already running it is ignored (pass `[]`). `reserve` names the
    devices to reserve now; None reserves the plan's whole path. A retrieval
    whose visitor gave no bay is planned through `bay` provisionally; it is
    bound to `bay` (journaled, and its steps not sent yet planned again
    through it) once `bay` is among the devices it holds.
    """

    job: Job
    bay: str
    plan: list[StepSpec]
    reserve: frozenset[str] | None = None


class PathBook(Protocol):
    """What a sequencer may ask the core about a tower."""

    def plan_for(self, job: Job, bay: str) -> list[StepSpec]:
        """The motion plan of a waiting job through `bay`."""
        ...

    def available(self, device: str, job: Job) -> bool:
        """Whether `job` could reserve `device` now (free, healthy; a bay empty)."""
        ...

    def bays_for(self, job: Job) -> list[str]:
        """The bays a job may use, nearest to the lift first."""
        ...

    @property
    def now(self) -> float:
        """The core's time of the event being handled, s."""
        ...

    @property
    def jobs(self) -> list[Job]:
        """Every open job of the tower, oldest first."""
        ...

    @property
    def view(self) -> TowerView:
        """The tower's slots and travel estimates."""
        ...

    def holder(self, device: str) -> str | None:
        """The id of the job holding `device`, or None."""
        ...

    def request(self, job: Job) -> Event | None:
        """The request that opened `job` (its hints), or None."""
        ...

    def place(self, job: Job) -> str | None:
        """Where the car of `job` is now, or None."""
        ...

    def car_at(self, place: str) -> str | None:
        """The ticket of the car in custody at a place (a bay, a slot), or None."""
        ...

    @property
    def car_changes(self) -> int:
        """A number that changes whenever a car is added, moved or removed."""
        ...

    def idle_positions(self) -> list[tuple[str, int]]:
        """The lift and level shuttles that could take a positioning now
        (ready, held by no job, carrying no car), and where each stands: a
        level for the lift, a column for a shuttle."""
        ...


class Sequencer(Protocol):
    """A sequencing policy.

    `admit` sees the waiting jobs, and the running jobs that still have steps
    on devices they do not hold. A sequencer whose `late_bay` attribute is
    true chooses a retrieval's bay itself; otherwise the core takes one when
    the visitor asks.
    """

    def admit(self, waiting: Sequence[Job], book: PathBook) -> list[Admission]:
        """The reservations to make now, from `waiting` (oldest first)."""
        ...


class FcfsWholePath:
    """First come, first served, skipping a job whose path is busy.

    A job whose path is free is admitted even if an older one waits, so an idle
    level never waits behind a busy one; the lift and the ground shuttle are on
    every path, so in practice one car moves through the lift at a time. A
    retrieval that has no bay yet (every bay was taken when its visitor asked)
    takes the first bay that frees, before a newer arrival can, and waits there
    for the rest of its path.

    It never reserves part of a path itself, but a restart may hand it running
    jobs that hold part of theirs (the journal of a piecewise sequencer, when
    the site's policy changed): each gets the rest of its path at once, when
    all of it is free, like a waiting job.
    """

    def admit(self, waiting: Sequence[Job], book: PathBook) -> list[Admission]:
        """Every waiting job whose whole path is free, oldest first."""
        admitted: list[Admission] = []
        taken: set[str] = set()
        for job in waiting:
            if job.state is JobState.RUNNING:
                rest = self._rest_of_path(job, book, taken)
                if rest is not None:
                    admitted.append(rest)
                    taken |= rest.reserve or set()
                continue
            if job.state is not JobState.WAITING_PATH:
                continue
            for bay in book.bays_for(job):
                plan = book.plan_for(job, bay)
                path = devices_of(plan)
                if taken.isdisjoint(path) and all(
                    book.available(device, job) for device in path
                ):
                    admitted.append(Admission(job, bay, plan))
                    taken |= path
                    break
            else:
                if job.kind is JobKind.RETRIEVE and job.bay is None:
                    for bay in book.bays_for(job):
                        if bay not in taken and book.available(bay, job):
                            admitted.append(Admission(job, bay, [], frozenset({bay})))
                            taken.add(bay)
                            break
        return admitted

    @staticmethod
    def _rest_of_path(job: Job, book: PathBook, taken: set[str]) -> Admission | None:
        """The devices a running job has steps on and does not hold, if all
        are free; a retrieval with no bay yet takes the first free one."""
        pending = {
            d for s in job.steps if s.state is StepState.PENDING for d in s.devices
        }
        bays = book.bays_for(job)
        choices: list[str | None] = [None]
        if job.kind is JobKind.RETRIEVE and job.bay is None:
            pending -= set(bays)  # planned through a provisional bay
            choices = list(bays)
        for bay in choices:
            rest = (pending | ({bay} if bay else set())) - job.holds
            if taken.isdisjoint(rest) and all(book.available(d, job) for d in rest):
                return Admission(job, bay or job.bay or bays[0], [], frozenset(rest))
        return None


# -- the pipelined sequencer ----------------------------------------------------

_MEASURING = frozenset({JobState.REQUESTED, JobState.CHECKING, JobState.ALLOCATING})
_ANY_BAY = "<any bay>"  # a late retrieval needs one bay, whichever
_ALL_LEVELS = "<every level shuttle>"  # a store whose level is not known yet


@dataclass(slots=True)
class _Info:
    """What `Pipelined` works out about one open job in one call."""

    job: Job
    late: bool  # a retrieval whose bay the sequencer chooses
    level: int  # the level shuttle its path uses (0: none)
    due: float  # its visitor is (or is expected) at the tower; else its request
    active: bool = True  # a kiosk retrieval becomes active shortly before due
    needs: set[str] | None = None  # devices it will still ask for


class Pipelined:
    """Piece-by-piece reservations, guarded by a deadlock-avoidance check.

    Retrievals whose visitor named no bay ("late" ones) take their devices in
    the order their car uses them: the level shuttle (it fetches the car to
    the lift while the lift serves another level), the lift (it brings the
    car down while the ground shuttle serves a bay), then the ground shuttle
    with a bay, chosen now that the car is at the ground. A store holds its
    bay from the start (the car stands in it); it takes the rest of its path
    in one go, or the ground shuttle first (its car leaves the bay, which
    frees for the next car) and then the lift and its level shuttle.
    Retrievals to a named bay and relocations take their whole path at once.

    Deadlock avoidance (a banker's check): every reservation is made only if
    the tower stays *safe* afterwards: some order exists in which every open
    job can get everything it still needs from the devices free at its turn,
    each job freeing its devices when done. Drivers are not under the core's
    control, so the check assumes the worst of them: every bay no job holds
    may get a new car whose store needs the lift, the ground shuttle and any
    level shuttle; a store still being measured needs the same. Faulted
    (held) jobs keep their devices for good; jobs that need those are left
    out of the check, as they wait for an operator whatever we do. A bay
    that frees while late retrievals hold devices goes at once to the next
    of them, so no new car can take it.

    Priority: the earliest visitor first (at the tower: the time of asking;
    from the kiosk: the expected arrival). A kiosk retrieval stays inactive
    until its visitor is due within its unqueued travel plus
    `kiosk_margin_s`, plus `queue_share_s` for each retrieval due before it,
    so its car is in the bay about when the visitor comes instead of
    blocking a bay for minutes. A store that waited `store_patience_s` gets
    the lift's next free moment when nothing else it needs is taken.

    Positioning (`positions`): an idle level shuttle that no open job wants
    goes to the column that minimises the expected travel to the cars of its
    level, and an idle lift that no job wants to the level that minimises
    the expected time the lift would add to a retrieval. A car's weight is
    its chance of being asked for next, estimated from its expected
    departure: 1 for a car due now (or with no hint), falling by a factor e
    every `position_spread_s` later. A device moves only when that saves at
    least `position_gain_s` of expected retrieval time. With
    `position_quiet` (the default) only on a tower with no open car job:
    that is where a single retrieval gains (docs/benchmarks.md), and busy
    spells keep their devices to themselves. `position_lift=False` leaves
    the lift where its last job left it.
    """

    late_bay = True

    def __init__(
        self,
        *,
        store_patience_s: float = 120.0,
        kiosk_margin_s: float = 20.0,
        queue_share_s: float = 60.0,
        kiosk_delay_s: float = 60.0,
        relocate: bool = True,
        relocate_horizon_s: float = 3 * 3600.0,
        relocate_gain_s: float = 15.0,
        relocate_quiet_s: float = 60.0,
        relocate_lead_s: float = 1200.0,
        position: bool = True,
        position_spread_s: float = 1800.0,
        position_gain_s: float = 0.5,
        position_recheck_s: float = 60.0,
        position_lift: bool = True,
        position_quiet: bool = True,
    ) -> None:
        self.store_patience_s = store_patience_s
        self.kiosk_margin_s = kiosk_margin_s
        self.queue_share_s = queue_share_s
        self.kiosk_delay_s = kiosk_delay_s
        self.relocate = relocate
        self.relocate_horizon_s = relocate_horizon_s
        self.relocate_gain_s = relocate_gain_s
        self.relocate_quiet_s = relocate_quiet_s
        self.relocate_lead_s = relocate_lead_s
        self.position = position
        self.position_spread_s = position_spread_s
        self.position_gain_s = position_gain_s
        self.position_recheck_s = position_recheck_s
        self.position_lift = position_lift
        self.position_quiet = position_quiet
        # tower -> idle device -> (where, when, car changes, open jobs) when
        # it was last looked at
        self._position_seen: dict[str, dict[str, tuple[Any, ...]]] = {}
        self._tables: dict[str, tuple[list[list[float]], list[list[float]]]] = {}
        self._busy_at: dict[str, float] = {}  # tower -> last time a job was open
        self._quiet_wake: dict[str, float] = {}  # tower -> when it will be quiet
        # What the stores said of their cars: ticket -> (departure, size).
        self._cars: dict[str, tuple[float, SizeClass]] = {}
        self._moved: set[str] = set()  # tickets relocated once already

        self._wake: dict[str, float] = {}  # tower -> when a kiosk job activates
        self._now = 0.0  # the latest core time seen, of any tower

    def admit(self, waiting: Sequence[Job], book: PathBook) -> list[Admission]:
        """The reservations to make now; see the class docstring."""
        self._now = max(self._now, book.now)
        for job in waiting:
            request = book.request(job)
            if (
                isinstance(request, StoreRequested)
                and request.expected_departure_s is not None
                and job.size is not None
            ):
                self._cars[job.ticket] = (request.expected_departure_s, job.size)
            elif job.kind is JobKind.RETRIEVE:
                self._cars.pop(job.ticket, None)
                self._moved.discard(job.ticket)
        round_ = _Round(self, book, {job.id for job in waiting})
        if round_.wake is None:
            self._wake.pop(book.view.tower, None)
        else:
            self._wake[book.view.tower] = round_.wake
        return round_.run()

    def relocations(self, book: PathBook) -> list[tuple[str, SlotId]]:
        """On an idle tower: the car leaving soonest that would gain from a
        nearer slot, and that slot; at most one, each car at most once.

        Idle means no open job at all for `relocate_quiet_s`: nobody waits,
        nothing is asked for ahead, and the tower is in a quiet spell, not a
        gap between two busy minutes. Only cars expected between
        `relocate_lead_s` and `relocate_horizon_s` from now move, by at least
        `relocate_gain_s` of retrieval time. A relocation is short work (one
        lift cycle, or one aisle move); a visitor who asks during it waits for
        it to end.
        """
        view, now = book.view, book.now
        self._now = max(self._now, now)
        tower = view.tower
        if not self.relocate or _car_jobs(book):
            self._busy_at[tower] = now
            self._quiet_wake.pop(tower, None)
            return []
        quiet_at = self._busy_at.get(tower, 0.0) + self.relocate_quiet_s
        if now < quiet_at:
            self._quiet_wake[tower] = quiet_at
            return []
        self._quiet_wake.pop(tower, None)
        horizon = now + self.relocate_horizon_s
        soonest = now + self.relocate_lead_s
        leaving = []
        for slot in view.slots:
            ticket = view.car_at(slot)
            known = self._cars.get(ticket) if ticket is not None else None
            if ticket is None or known is None or ticket in self._moved:
                continue
            if soonest <= known[0] <= horizon and view.blocked(slot) is None:
                leaving.append((max(known[0], now), slot.name, slot, ticket, known[1]))
        leaving.sort()
        free = [s for s in view.by_retrieval() if view.is_free(s)]
        for _, _, slot, ticket, size in leaving:
            here = view.retrieval_s(slot.id)
            for target in free:
                gain = here - view.retrieval_s(target.id)
                if gain < self.relocate_gain_s:
                    break
                # Its own class, or back from a larger slot it took when full.
                if target.size in (slot.size, size) and view.fits(target, size):
                    self._moved.add(ticket)
                    return [(ticket, target.id)]
        return []

    def positions(self, book: PathBook) -> list[tuple[str, int]]:
        """Idle devices to move, with no car, and where: (device, target).

        Only a device that stands idle, holds no car and that no open job
        wants or may want (a store not yet allocated may want any level) is
        moved, so a positioning never makes a job wait for its device; a job
        that comes while the move runs waits for its end, a few seconds.
        See the class docstring for where each device goes.

        A free device is looked at again only when it has moved; one that a
        job wanted, when an open job came, went or changed state; one that
        no job wanted, when cars moved and `position_recheck_s` passed (the
        cars of a shuttle's level move only with that shuttle, and almost
        every car job wants the lift).
        """
        if not self.position:
            return []
        now = self._now = max(self._now, book.now)
        view = book.view
        idle = book.idle_positions()
        if not self.position_lift:
            idle = [(device, here) for device, here in idle if device != LIFT]
        if not idle or (self.position_quiet and _car_jobs(book)):
            return []
        last_seen = self._position_seen.get(view.tower, {})
        seen = self._position_seen[view.tower] = {}
        changes = book.car_changes
        jobs: tuple[tuple[str, JobState], ...] | None = None
        free = []
        for device, here in idle:
            last = last_seen.get(device)
            if last is not None and last[0] == here:
                if last[3] is None:  # it was free to move: unless cars moved
                    if last[2] == changes or now - last[1] < self.position_recheck_s:
                        seen[device] = last
                        continue
                else:  # a job wanted it: unless the jobs changed
                    if jobs is None:
                        jobs = tuple((job.id, job.state) for job in book.jobs)
                    if last[3] == jobs:
                        seen[device] = last
                        continue
            free.append((device, here))
        if not free:
            return []
        levels = view.config.levels
        wanted = _wanted(book, levels)
        if jobs is None and any(device in wanted for device, _ in free):
            jobs = tuple((job.id, job.state) for job in book.jobs)
        for device, here in free:
            seen[device] = (here, now, changes, jobs if device in wanted else None)
        free = [(device, here) for device, here in free if device not in wanted]

        weights: dict[str, float] = {}
        moves = []
        for device, here in free:
            if device == LIFT:
                cost = self._lift_cost(view, weights)
                best = min(range(levels + 1), key=lambda k: (cost(k), abs(k - here)))
            else:
                cost = self._shuttle_cost(
                    view, int(device.removeprefix("shuttle-")), weights
                )
                best = min(range(view.config.columns + 1), key=lambda c: (cost(c), c))
            if cost(here) - cost(best) >= self.position_gain_s:
                moves.append((device, best))
        return moves

    def _weight(self, ticket: str, memo: dict[str, float]) -> float:
        """The chance, up to a factor, that a car is the next one asked for."""
        weight = memo.get(ticket)
        if weight is None:
            known = self._cars.get(ticket)
            later_s = 0.0 if known is None else max(0.0, known[0] - self._now)
            weight = memo[ticket] = math.exp(-later_s / self.position_spread_s)
        return weight

    def _travel(self, view: TowerView) -> tuple[list[list[float]], list[list[float]]]:
        """Shuttle times between columns and lift times between levels, s."""
        tables = self._tables.get(view.tower)
        if tables is None:
            travel, config = view.travel, view.config
            columns, levels = range(config.columns + 1), range(config.levels + 1)
            tables = self._tables[view.tower] = (
                [[travel.shuttle_s(a, b) for b in columns] for a in columns],
                [[travel.lift_s(a, b) for b in levels] for a in levels],
            )
        return tables

    def _shuttle_cost(
        self, view: TowerView, level: int, weights: dict[str, float]
    ) -> Callable[[int], float]:
        """Expected shuttle travel to the next car of a level, from each column."""
        per_level = 2 * view.config.columns  # slots are in (level, column) order
        cars = [
            (slot.id.column, self._weight(ticket, weights))
            for slot in view.slots[(level - 1) * per_level : level * per_level]
            if (ticket := view.car_at(slot)) is not None and view.blocked(slot) is None
        ]
        total = sum(w for _, w in cars) or 1.0
        table = self._travel(view)[0]

        def cost(column: int) -> float:
            row = table[column]
            return sum(w * row[c] for c, w in cars) / total

        return cost

    def _lift_cost(
        self, view: TowerView, weights: dict[str, float]
    ) -> Callable[[int], float]:
        """Expected time the lift's trip adds to a retrieval, from each level.

        The lift goes to the car's level while the level shuttle picks the
        car and brings it to the lift (a transfer and the trip to column 0),
        so only what it takes longer counts. A store gives the lift more time
        than that (the bay check, the ground shuttle's pick), so it is left
        out.
        """
        shuttle_table, lift_table = self._travel(view)
        transfer_s = view.config.physics.transfer_s
        cars = [
            (slot.id.level, transfer_s + shuttle_table[slot.id.column][0],
             self._weight(ticket, weights))
            for slot in view.slots
            if (ticket := view.car_at(slot)) is not None
            and view.blocked(slot) is None
        ]  # fmt: skip
        total = sum(w for _, _, w in cars) or 1.0

        def cost(level: int) -> float:
            row = lift_table[level]
            return sum(w * max(0.0, row[k] - slack_s) for k, slack_s, w in cars) / total

        return cost

    def next_wake(self) -> float | None:
        """When a held-back kiosk retrieval becomes active or an idle tower
        becomes quiet enough to relocate, the earliest still to come; or None.

        Each tower's times are renewed by its own rounds; one passed (its
        tower had its round, or has nothing left to wait for) must not hide
        another tower's time to come.
        """
        times = [*self._wake.values(), *self._quiet_wake.values()]
        return min((t for t in times if t > self._now), default=None)


def _car_jobs(book: PathBook) -> list[Job]:
    """The open jobs of a tower that move a car (not positionings)."""
    return [job for job in book.jobs if job.kind is not JobKind.POSITION]


def _wanted(book: PathBook, levels: int) -> set[str]:
    """Every device an open car job holds, still has a step on, or may want."""
    wanted: set[str] = set()
    for job in _car_jobs(book):
        wanted |= job.holds
        if job.kind is JobKind.STORE and job.state in _MEASURING:
            wanted |= {GROUND, LIFT, *(shuttle(k) for k in range(1, levels + 1))}
        elif job.state is JobState.WAITING_PATH and job.slot is not None:
            wanted |= devices_of(book.plan_for(job, book.bays_for(job)[0]))
        for step in job.steps:
            if step.state is not StepState.DONE:
                wanted.update(step.devices)
    return wanted


class _Round:
    """One call of `Pipelined.admit`: tentative grants, each checked safe."""

    def __init__(self, policy: Pipelined, book: PathBook, asked: set[str]) -> None:
        self.policy = policy
        self.book = book
        self.asked = asked
        config = book.view.config
        self.bays = [b.id for b in config.bays]
        self.one_column = len({b.column for b in config.bays}) == 1
        self.levels = [shuttle(k) for k in range(1, config.levels + 1)]
        self.devices = [*self.bays, GROUND, LIFT, *self.levels]
        self.holder = {d: book.holder(d) for d in self.devices}
        self.infos = [self._info(job) for job in book.jobs]
        self.by_id = {i.job.id: i for i in self.infos}
        self.grants: dict[str, set[str]] = {}
        self.bound: dict[str, str] = {}  # job id -> bay bound in this round
        self.wake: float | None = None  # the next inactive job's activation
        # Any retrieval serves to ask whether a bay is empty for one.
        self.probe = next(
            (i.job for i in self.infos if i.job.kind is JobKind.RETRIEVE), None
        )
        self._mark_inactive()

    # -- what each job is and needs ------------------------------------------------

    def _info(self, job: Job) -> _Info:
        request = self.book.request(job)
        late = (
            job.kind is JobKind.RETRIEVE
            and isinstance(request, RetrieveRequested)
            and request.bay is None
        )
        due = job.created_at
        if isinstance(request, RetrieveRequested) and request.visitor_due_s:
            due = request.visitor_due_s + self.policy.kiosk_delay_s
        level = job.slot.level if job.slot is not None else 0
        return _Info(job, late, level, due)

    def _mark_inactive(self) -> None:
        now, view = self.book.now, self.book.view
        kiosk = [i for i in self.infos if i.late and i.due > now]
        if not kiosk:
            return
        dues = sorted(i.due for i in self.infos if i.late)
        for info in kiosk:
            if info.job.holds or info.job.slot is None:
                continue
            ahead = sum(1 for d in dues if d < info.due)
            lead = (
                view.retrieval_s(info.job.slot)
                + self.policy.kiosk_margin_s
                + self.policy.queue_share_s * ahead
            )
            info.active = info.due - now <= lead + 1e-6
            if not info.active and (self.wake is None or info.due - lead < self.wake):
                self.wake = info.due - lead

    def needs(self, info: _Info) -> set[str]:
        """Devices the job will still ask for (before this round's grants)."""
        if info.needs is None:
            job = info.job
            if job.kind is JobKind.STORE and job.state in _MEASURING:
                wanted = {GROUND, LIFT, _ALL_LEVELS}
            elif job.state is JobState.WAITING_PATH:
                wanted = set(devices_of(self.book.plan_for(job, self.bay_of(info))))
            else:
                wanted = {
                    d
                    for s in job.steps
                    if s.state is StepState.PENDING
                    for d in s.devices
                }
            wanted -= job.holds
            if info.late and job.bay is None:
                wanted = {d for d in wanted if d not in self.bays} | {_ANY_BAY}
            info.needs = wanted
        return info.needs

    def bay_of(self, info: _Info) -> str:
        job = info.job
        return self.bound.get(job.id) or job.bay or self.book.bays_for(job)[0]

    def holds(self, info: _Info) -> set[str]:
        return info.job.holds | self.grants.get(info.job.id, set())

    def remaining(self, info: _Info) -> set[str]:
        need = self.needs(info) - self.grants.get(info.job.id, set())
        if info.job.id in self.bound:
            need.discard(_ANY_BAY)
        return need

    # -- the safety check --------------------------------------------------------

    def safe(self) -> bool:
        """Whether every open job can still finish, whatever drivers do."""
        parties: list[tuple[set[str], set[str]]] = []
        for info in self.infos:
            state = info.job.state
            if state is JobState.HELD:
                parties.append((self.holds(info), {"<never>"}))
                continue
            held = self.holds(info)
            if not held:
                continue  # holding nothing, it blocks nobody
            parties.append((held, self.remaining(info)))
        # A bay no job holds is free for retrievals when it is empty or holds a
        # car its visitor collects: this sequencer takes it for the next late
        # retrieval in the same call that sees it empty. One where a driver is
        # leaving a new car will hold a store that needs anything.
        taken = {d for held, _ in parties for d in held}
        probe = self.probe
        for bay in self.bays:
            if bay in taken or probe is None or self.book.car_at(bay) is not None:
                continue
            if not self.book.available(bay, probe):
                parties.append(({bay}, {GROUND, LIFT, _ALL_LEVELS}))

        # Jobs that can never finish (they wait on a held job) keep theirs.
        stuck: set[str] = {"<never>"}
        changed = True
        while changed:
            changed = False
            for held, need in parties:
                if need & stuck and not held <= stuck:
                    stuck |= held
                    changed = True
        left = [(h, n) for h, n in parties if not n & stuck]
        free = set(self.devices) - {d for h, _ in parties for d in h}
        progress = True
        while left and progress:
            progress = False
            for party in list(left):
                held, need = party
                if self._satisfied(need, free):
                    free |= held
                    left.remove(party)
                    progress = True
        return not left

    def _satisfied(self, need: set[str], free: set[str]) -> bool:
        for device in need:
            if device == _ANY_BAY:
                if not any(b in free for b in self.bays):
                    return False
            elif device == _ALL_LEVELS:
                if not all(level in free for level in self.levels):
                    return False
            elif device not in free:
                return False
        return True

    # -- granting ------------------------------------------------------------------

    def free(self, device: str, job: Job) -> bool:
        if any(device in g for g in self.grants.values()):
            return False
        return self.book.available(device, job)

    def try_grant(self, info: _Info, devices: set[str], bay: str | None = None) -> bool:
        """Reserve `devices` for the job if they are free and the tower stays safe."""
        job = info.job
        devices = {d for d in devices if d not in job.holds}
        if not devices or not all(self.free(d, job) for d in devices):
            return False
        grant = self.grants.setdefault(job.id, set())
        before = set(grant)
        grant |= devices
        had_bay = self.bound.get(job.id)
        if bay is not None:
            self.bound[job.id] = bay
        if self.safe():
            return True
        grant.clear()
        grant |= before
        if not grant:
            del self.grants[job.id]
        if bay is not None:
            if had_bay is None:
                self.bound.pop(job.id, None)
            else:
                self.bound[job.id] = had_bay
        return False

    def bay_held(self, info: _Info) -> str | None:
        if info.job.id in self.bound:
            return self.bound[info.job.id]
        return next((b for b in self.bays if b in info.job.holds), None)

    def free_bay(self, info: _Info) -> str | None:
        return next((b for b in self.bays if self.free(b, info.job)), None)

    # -- the round ---------------------------------------------------------------

    def run(self) -> list[Admission]:
        late = [i for i in self.infos if i.late and i.job.id in self.asked]
        pipe = [
            i
            for i in late
            if i.job.state is JobState.RUNNING
            and (GROUND not in i.job.holds or self.bay_held(i) is None)
        ]
        firsts = [i for i in self.infos if not i.late and i.job.id in self.asked]

        # 1. The late retrieval at the ground: the ground shuttle and a bay.
        for info in pipe:
            if LIFT in info.job.holds or GROUND in info.job.holds:
                self.to_ground(info)

        # 2. A store with its car on the ground shuttle: the rest of its path.
        lift_kept = False
        for info in firsts:
            if info.job.state is JobState.RUNNING:
                lift_kept = True
                self.try_grant(info, self.needs(info))

        # 3. A store past its patience gets the lift's next free moment.
        now = self.book.now
        for info in firsts:
            if info.job.state is not JobState.WAITING_PATH:
                continue
            if now - info.job.created_at <= self.policy.store_patience_s:
                continue
            if self.try_grant(info, self.needs(info)):
                continue
            others = self.needs(info) - {LIFT, GROUND}
            if LIFT in self.needs(info) and all(self.free(d, info.job) for d in others):
                lift_kept = True
            break

        # 4. The lift, for the best late retrieval that may take it.
        if not lift_kept:
            self.lift(late, pipe)

        # 5. Level shuttles fetch the next cars to the lift, earliest due first.
        ready = sorted(
            (
                i
                for i in late
                if i.active
                and i.job.state is JobState.WAITING_PATH
                and i.job.id not in self.grants
            ),
            key=lambda i: i.due,
        )
        for info in ready:
            device = shuttle(info.level)
            if self.free(device, info.job):
                self.enter(info, {device})

        # 6. Stores and the rest, oldest first, if the lift is not kept.
        if not lift_kept:
            for info in firsts:
                if info.job.state is JobState.WAITING_PATH:
                    self.try_grant(info, self.needs(info))
            for info in firsts:
                if (
                    info.job.state is JobState.WAITING_PATH
                    and info.job.kind is JobKind.STORE
                    and info.job.id not in self.grants
                    and self.try_grant(info, {GROUND})
                ):
                    break

        # 7. While late retrievals hold devices, a free bay goes to the next.
        self.keep_a_bay(late)
        return self.admissions()

    def to_ground(self, info: _Info) -> None:
        own = self.bay_held(info)
        if own is not None:
            self.try_grant(info, {GROUND})
            return
        bay = self.free_bay(info)
        if bay is not None and (
            self.try_grant(info, {GROUND, bay}, bay) or self.try_grant(info, {bay}, bay)
        ):
            return
        if self.one_column:
            # Every bay stands at one column: the car can wait there on the
            # ground shuttle for whichever bay frees first.
            self.try_grant(info, {GROUND})

    def enter(self, info: _Info, devices: set[str]) -> bool:
        """A late retrieval's first devices, with a bay if the pipe has none."""
        pipe_has_bay = any(
            self.bay_held(i) for i in self.infos if i.late and self.holds(i)
        )
        bay = None if pipe_has_bay else self.free_bay(info)
        if bay is not None and self.try_grant(info, devices | {bay}, bay):
            return True
        return self.try_grant(info, devices)

    def lift(self, late: list[_Info], pipe: list[_Info]) -> None:
        if self.holder[LIFT] is not None or any(
            LIFT in g for g in self.grants.values()
        ):
            return
        candidates = [
            i
            for i in late
            if i.active
            and (
                (i in pipe and LIFT not in i.job.holds)
                or i.job.state is JobState.WAITING_PATH
            )
        ]
        candidates.sort(key=lambda i: (self.bay_held(i) is None, i.due))
        for info in candidates:
            if info.job.state is JobState.WAITING_PATH:
                level = shuttle(info.level)
                if self.free(level, info.job) and self.enter(info, {level, LIFT}):
                    return
            elif self.try_grant(info, {LIFT}):
                return

    def keep_a_bay(self, late: list[_Info]) -> None:
        busy = [
            i
            for i in late
            if self.holds(i) and (GROUND not in i.job.holds or self.bay_held(i) is None)
        ]
        if not busy or any(self.bay_held(i) for i in busy):
            return
        head = min(
            busy,
            key=lambda i: (
                GROUND not in self.holds(i),
                LIFT not in self.holds(i),
                i.due,
            ),
        )
        bay = self.free_bay(head)
        if bay is not None:
            self.try_grant(head, {bay}, bay)

    def admissions(self) -> list[Admission]:
        out = []
        for job_id, devices in self.grants.items():
            info = self.by_id[job_id]
            job = info.job
            bay = self.bay_of(info)
            plan: list[StepSpec] = []
            if job.state is JobState.WAITING_PATH:
                plan = self.book.plan_for(job, bay)
            out.append(Admission(job, bay, plan, frozenset(devices)))
        return out
