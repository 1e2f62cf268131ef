"""The core coupled to the plant model in virtual time: no sockets, no sleeping.

Theory of operation
-------------------
The harness plays the shell and the visitors around a `SiteCore` and a
`Plant`. Time jumps from event to event: the next time is the earliest of the
plant's next event (a motion or transfer ending, a driver walking out), the
core's next deadline and the harness's own schedule (arrivals, retrievals).
At each time the harness advances the plant, runs what is scheduled, feeds the
core a `DeviceStatus` for every device the plant reports changed (until
nothing changes any more) and a `Tick` when the core's deadline is due, and
carries out the actions the core returns:

- `SendCommand`: two plant writes, target/side/seq then the code (`reset`
  writes the reset point);
- `Persist`: appended to `records`, or written to `journal` in batches that
  end before each command, as the shell does;
- `Occupancy`, `Alarm`, `AlarmCleared`: recorded;
- `ReadStatus`: the device's status is fed again.

Faults of the link and the controller, for the stateful tests: `mute()` stops
delivering a device's statuses (its replies are lost, a poll times out) until
`unmute()` delivers the current one; `fail_next_write()` makes the next
command to a device fail in the shell (written or not) and reports
`CommandWriteFailed`; `fault_next_command()` makes the next command that
reaches a device fault halfway; `restart()` replaces the core by a new one
built from the journal records, the plant running on meanwhile.

Visitors: `arrive()` drives a car into a bay (waiting for the bay to stand
open and empty) and sends the store request once the driver has walked out;
`retrieve()` asks for a ticket's car; when a retrieve job ends with the car
released in its bay, its visitor collects it at once (the plant models the
driver's time in the bay), or at `collect_at[ticket]` for a visitor who asked
ahead and is still on the way, taking `collect_s[ticket]` to drive off.

The plant runs with `watch_heartbeat=False` and the core with its heartbeat
watch off: the plant reports changes only, so no status would show the
heartbeat moving between two events. Nothing is copied per step; the cost of
a step is the statuses of the devices that changed.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any, Protocol

from sim.plant import Car, Plant
from tower.config import SiteConfig
from tower.core import Allocator, RequestRefused, RestoredState, SiteCore
from tower.core.actions import (
    Action,
    Alarm,
    AlarmCleared,
    Occupancy,
    Persist,
    ReadStatus,
    SendCommand,
)
from tower.core.events import (
    CommandWriteFailed,
    DeviceStatus,
    Event,
    RetrieveRequested,
    StoreRequested,
    Tick,
)
from tower.core.records import JobCreated, JobDestination, JobFinished, JobKind, Record
from tower.core.sequencer import Sequencer

# A quiet site settles within a few rounds; more means the core and the plant
# keep answering each other, which is a bug worth stopping on.
_MAX_ROUNDS = 1000


class Journal(Protocol):
    """What the harness needs of a journal: batched, ordered writes."""

    def write(self, records: list[Record]) -> None: ...


class HarnessStuck(Exception):
    """Raised when `run_until_idle` reaches its limit with work left."""


@dataclass
class JobTimes:
    """When a job was asked for and when it ended (virtual seconds)."""

    kind: JobKind
    ticket: str
    tower: str
    requested_at: float
    bay: str = ""
    finished_at: float | None = None
    outcome: str = ""
    reason: str = ""

    @property
    def duration_s(self) -> float | None:
        """Request to end, or None while it runs."""
        if self.finished_at is None:
            return None
        return self.finished_at - self.requested_at


CommandHook = Callable[["Harness", SendCommand], None]


class Harness:
    """A site's core and plant in one virtual-time event loop."""

    def __init__(
        self,
        site: SiteConfig,
        *,
        seed: int = 0,
        allocator: Allocator | None = None,
        sequencer: Sequencer | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.site = site
        self.rng = random.Random(seed)
        self.plant = Plant(site, watch_heartbeat=False)
        self.allocator = allocator
        self.core = SiteCore(
            site, allocator=allocator, sequencer=sequencer, heartbeat_timeout_s=None
        )
        self.journal = journal
        self.now = 0.0
        self.records: list[Record] = []
        self.occupancy: list[Occupancy] = []
        self.alarms: list[Alarm] = []
        self.cleared: list[AlarmCleared] = []
        self.commands: list[SendCommand] = []
        self.refused: list[tuple[Event, str]] = []
        self.jobs: dict[str, JobTimes] = {}
        self.car_of: dict[str, str] = {}  # ticket -> car id that arrived with it
        self.delivered: dict[str, str] = {}  # ticket -> car id the visitor got
        # ticket -> car id its driver took back (a store refused or cancelled)
        self.returned: dict[str, str] = {}
        # A visitor who asked ahead (at a kiosk) reaches the bay later: ticket ->
        # when, and how long the driver then takes to get in and drive off.
        # Without an entry the visitor collects at once, in the car's own time.
        self.collect_at: dict[str, float] = {}
        self.collect_s: dict[str, float] = {}
        self.on_command: list[CommandHook] = []
        self.after_step: list[Callable[[Harness], None]] = []
        self._schedule: list[tuple[float, int, Callable[[], None]]] = []
        self._order = count()
        self._job_ids = count(1)
        self._waiting: dict[tuple[str, str], list[tuple[str, Car]]] = {}
        self._dropping: dict[tuple[str, str], str] = {}  # bay -> ticket, driver in
        self._batch: list[Record] = []
        self._hints: dict[str, tuple[float | None, bool]] = {}  # ticket -> hints
        self._reread: set[tuple[str, str]] = set()
        self.muted: set[tuple[str, str]] = set()  # devices whose replies are lost
        # (tower, device) -> whether the next command's failed write still landed
        self._failing: dict[tuple[str, str], bool] = {}
        self._faults: dict[tuple[str, str], str] = {}  # -> fault of its next command

        for tower in site.towers:
            for device in tower.device_names():
                self._feed(tower.id, device)
        self._settle()

    # -- visitors ------------------------------------------------------------

    def arrive(
        self,
        tower: str,
        bay: str,
        car: Car,
        *,
        at: float | None = None,
        expected_departure_s: float | None = None,
        wants_charger: bool = False,
    ) -> str:
        """A car comes to a bay at `at` (default now); the ticket it will get.

        The car waits for the bay to stand open and empty, drives in, and the
        store request goes out when its driver has walked out of the bay,
        with the departure estimate and charging wish as hints.
        """
        ticket = f"T{self.rng.getrandbits(48):012X}"
        self.car_of[ticket] = car.id
        if expected_departure_s is not None or wants_charger:
            self._hints[ticket] = (expected_departure_s, wants_charger)
        self._at(at, lambda: self._queue_arrival(tower, bay, ticket, car))
        return ticket

    def retrieve(
        self,
        ticket: str,
        bay: str | None = None,
        *,
        at: float | None = None,
        retry_s: float | None = None,
        visitor_due_s: float | None = None,
    ) -> None:
        """A visitor asks for the car of `ticket` at `at` (default now).

        With `retry_s`, a request refused because the car is not parked yet
        (or the tower not in auto) is asked again that much later.
        `visitor_due_s` tells the core when a visitor who asks ahead is
        expected at the tower.
        """
        self._at(
            at, lambda: self._request_retrieve(ticket, bay, retry_s, visitor_due_s)
        )

    def operate(self, event: Event, *, poll: bool = True) -> None:
        """An operator request (`SetMode`, `ResetTower`, `CancelJob`) or an
        injected shell event now, then (with `poll`) a poll of every device, as
        the shell's polling would give. Raises `RequestRefused` as the core
        does."""
        self._handle(event)
        if poll:
            self.poll()
        else:
            self._settle()

    def poll(self) -> None:
        """Feed the current status of every device (a full poll round)."""
        for tower in self.site.towers:
            for device in tower.device_names():
                self._feed(tower.id, device)
        self._settle()

    # -- faults of the link and the controller ---------------------------------

    def mute(self, tower: str, device: str) -> None:
        """Lose every reply of a device from now on: the core gets no status
        of it (no poll, no re-read) until `unmute()`. Commands still reach it."""
        self.muted.add((tower, device))

    def unmute(self, tower: str, device: str) -> None:
        """The device answers again: its current status is fed, late."""
        self.muted.discard((tower, device))
        self._feed(tower, device)
        self._settle()

    def write_partly(self, command: SendCommand, cut: str) -> None:
        """Put as much of a command into its PLC as a crash at `cut` lets
        through: `before` nothing, `target` the target, side and sequence
        (the handshake's first write), `after` the code that latches it too
        (the whole command, as every write that is not cut)."""
        first: dict[str, Any] = {"cmd_seq": command.seq}
        if command.device == "lift" or command.device.startswith("shuttle-"):
            first["cmd_target"] = command.target
        if command.device.startswith("shuttle-"):
            first["cmd_side"] = command.side
        if cut in ("target", "after"):
            self.plant.write(command.tower, command.device, first)
        if cut == "after":
            self.plant.write(command.tower, command.device, {"cmd_code": command.code})

    def fail_next_write(self, tower: str, device: str, *, landed: bool) -> None:
        """The next command to a device fails in the shell (a lost reply to
        the write): with `landed` it reached the PLC all the same. The core
        hears of it as `CommandWriteFailed`, as the shell reports it."""
        self._failing[tower, device] = landed

    def fault_next_command(self, tower: str, device: str, fault: str) -> None:
        """The next command that reaches a device faults halfway with the
        PLC fault code `fault` (see `Plant.inject_fault`)."""
        self._faults[tower, device] = fault

    def clear_faults(self) -> None:
        """Forget the write failures and command faults not met yet."""
        self._failing.clear()
        self._faults.clear()

    def restart(
        self,
        *,
        sequencer: Sequencer | None = None,
        downtime_s: float = 0.0,
        watchdog_s: float | None = None,
    ) -> None:
        """The controller dies now and starts again from its journal records.

        Everything the core emitted so far is in the journal (the harness
        flushes a batch before each command and after each round). The plant
        runs on for `downtime_s`; with `watchdog_s`, a PLC stops its running
        motion that long after the dead controller's last heartbeat. The new
        core (with `sequencer`, default a whole-path one, as a new process
        has) is fed a full poll; muted devices stay unheard.
        """
        plant = self.plant
        self._reread = set()
        self._flush()
        if watchdog_s is not None:
            for tower in self.site.towers:
                for device in tower.device_names():
                    beat = plant.commands(tower.id, device)["heartbeat_ctl"] + 1
                    plant.write(tower.id, device, {"heartbeat_ctl": beat})
            plant.set_heartbeat_timeouts(watchdog_s)
            plant.watch_heartbeat = True
        plant.advance(self.now + downtime_s)
        plant.watch_heartbeat = False
        self.now = plant.now
        self.core = SiteCore(
            self.site,
            allocator=self.allocator,
            restored=RestoredState.from_records(self.records),
            sequencer=sequencer,
            heartbeat_timeout_s=None,
        )
        self.poll()

    def _queue_arrival(self, tower: str, bay: str, ticket: str, car: Car) -> None:
        self._waiting.setdefault((tower, bay), []).append((ticket, car))
        self._admit_arrivals()

    def _admit_arrivals(self) -> None:
        for (tower, bay), queue in self._waiting.items():
            if not queue or (tower, bay) in self._dropping:
                continue
            flags = self.plant.status(tower, bay)["flags"]
            if flags["vehicle_present"] or flags["person_present"]:
                continue
            if flags["door_closed"]:
                continue
            ticket, car = queue.pop(0)
            self.plant.car_arrives(tower, bay, car)
            self._dropping[tower, bay] = ticket

    def _check_drivers_out(self) -> None:
        for (tower, bay), ticket in list(self._dropping.items()):
            flags = self.plant.status(tower, bay)["flags"]
            if flags["person_present"]:
                continue
            del self._dropping[tower, bay]
            job_id = f"j{next(self._job_ids)}"
            departure_s, charger = self._hints.get(ticket, (None, False))
            event = StoreRequested(tower, bay, ticket, job_id, departure_s, charger)
            self.jobs[job_id] = JobTimes(JobKind.STORE, ticket, tower, self.now, bay)
            if not self._request(event):
                # Refused: the driver takes the car away again.
                del self.jobs[job_id]
                self.returned[ticket] = self.plant.driver_collects(tower, bay).id

    def _request_retrieve(
        self,
        ticket: str,
        bay: str | None,
        retry_s: float | None,
        visitor_due_s: float | None = None,
    ) -> None:
        job_id = f"j{next(self._job_ids)}"
        event = RetrieveRequested(ticket, job_id, bay, visitor_due_s)
        car = self.core.inventory.cars.get(ticket)
        tower = car.tower if car else ""
        times = JobTimes(JobKind.RETRIEVE, ticket, tower, self.now, bay or "")
        self.jobs[job_id] = times
        if self._request(event):
            return
        del self.jobs[job_id]
        code = self.refused[-1][1]
        if retry_s is not None and code in ("ticket_in_use", "tower_not_auto"):
            self._at(
                self.now + retry_s,
                lambda: self._request_retrieve(ticket, bay, retry_s, visitor_due_s),
            )

    def _collect(self, tower: str, bay: str, ticket: str) -> None:
        car = self.plant.driver_collects(tower, bay, self.collect_s.get(ticket))
        self.delivered[ticket] = car.id

    def _take_back(self, tower: str, bay: str, ticket: str) -> None:
        """The driver of a store that ended without its car parked takes the
        car back, if it stands in the open bay (waiting while someone else is
        still inside)."""
        if self.plant.car_in(tower, bay) != self.car_of[ticket]:
            return
        flags = self.plant.status(tower, bay)["flags"]
        if flags["door_closed"]:
            return
        if flags["person_present"]:
            self._at(self.now + 1.0, lambda: self._take_back(tower, bay, ticket))
            return
        self.returned[ticket] = self.plant.driver_collects(tower, bay).id

    # -- the event loop --------------------------------------------------------

    def run_until(self, t: float) -> None:
        """Run every event up to virtual time `t`, then stand at `t`."""
        while True:
            due = self._next_time()
            if due is None or due > t:
                break
            self._step(due)
        if t > self.now:
            self._step(t)

    def run_until_idle(self, limit: float) -> float:
        """Run until nothing is left to do; the time then. Raises HarnessStuck
        when work is left at virtual time `limit`."""
        while not self.idle():
            due = self._next_time()
            if due is None or due > limit:
                raise HarnessStuck(self._describe_work(limit))
            self._step(due)
        return self.now

    def idle(self) -> bool:
        """No job open, nobody waiting or in a bay, nothing scheduled."""
        return (
            not self._schedule
            and not self.core.open_jobs
            and not self._dropping
            and not any(self._waiting.values())
            and self.plant.next_event_time() is None
        )

    def settled(self) -> bool:
        """Nothing happens any more unless someone acts: nothing scheduled, no
        driver in a bay, the plant still, no deadline of the core due. Open
        jobs may wait for an operator; cars may wait for a bay."""
        return (
            not self._schedule
            and not self._dropping
            and self.plant.next_event_time() is None
            and self.core.next_deadline() is None
        )

    def _next_time(self) -> float | None:
        times = [self.plant.next_event_time(), self.core.next_deadline()]
        if self._schedule:
            times.append(self._schedule[0][0])
        known = [t for t in times if t is not None]
        return max(min(known), self.now) if known else None

    def _step(self, t: float) -> None:
        self.plant.advance(t)
        self.now = t
        self._settle()
        while self._schedule and self._schedule[0][0] <= t:
            _, _, action = heapq.heappop(self._schedule)
            action()
            # The shell sees a change within a poll; the next request sees it.
            self._settle()
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= t:
            self._handle(Tick())
            self._settle()
        for hook in self.after_step:
            hook(self)

    def _settle(self) -> None:
        """Feed every changed device's status until nothing changes any more."""
        for _ in range(_MAX_ROUNDS):
            changed = self.plant.changed() | self._reread
            self._reread = set()
            if not changed:
                self._check_drivers_out()
                self._admit_arrivals()
                changed = self.plant.changed() | self._reread
                self._reread = set()
                if not changed:
                    self._flush()
                    return
            for tower, device in sorted(changed):
                self._feed(tower, device)
        raise HarnessStuck(f"statuses did not settle at {self.now} s")

    def _feed(self, tower: str, device: str) -> None:
        if (tower, device) in self.muted:
            return
        self._handle(DeviceStatus(tower, device, self.plant.status(tower, device)))

    def _request(self, event: Event) -> bool:
        try:
            self._handle(event)
        except RequestRefused as refusal:
            self.refused.append((event, refusal.code))
            return False
        return True

    def _handle(self, event: Event) -> None:
        self._apply(self.core.handle(event, self.now))

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Persist):
                self._record(action.record)
            elif isinstance(action, SendCommand):
                self._flush()
                self._write(action)
            elif isinstance(action, Occupancy):
                self.occupancy.append(action)
            elif isinstance(action, Alarm):
                self.alarms.append(action)
            elif isinstance(action, AlarmCleared):
                self.cleared.append(action)
            elif isinstance(action, ReadStatus):
                self._reread.add((action.tower, action.device))

    def _write(self, command: SendCommand) -> None:
        tower, device = command.tower, command.device
        if command.code == "reset":
            self.plant.write(tower, device, {"reset": 1})
            self.plant.write(tower, device, {"reset": 0})
            return
        for hook in self.on_command:
            hook(self, command)
        self.commands.append(command)
        failed = self._failing.pop((tower, device), None)
        if failed is not None:
            report = CommandWriteFailed(tower, device, command.seq, "no reply")

            def report_failure(writer: SiteCore = self.core) -> None:
                if self.core is writer:  # it dies with the controller that wrote
                    self._handle(report)

            self._at(None, report_failure)
        if failed is not False:  # written, or the failed write landed anyway
            fault = self._faults.pop((tower, device), None)
            if fault is not None:
                self.plant.inject_fault(tower, device, fault)
            self.write_partly(command, "after")

    def _record(self, record: Record) -> None:
        self.records.append(record)
        if self.journal is not None:
            self._batch.append(record)
        if isinstance(record, JobDestination) and record.job_id in self.jobs:
            times = self.jobs[record.job_id]
            if times.kind is JobKind.RETRIEVE:
                times.bay = record.destination
        elif isinstance(record, JobCreated) and record.job_id in self.jobs:
            if record.kind is JobKind.RETRIEVE and record.destination:
                self.jobs[record.job_id].bay = record.destination
        elif isinstance(record, JobFinished) and record.job_id in self.jobs:
            times = self.jobs[record.job_id]
            times.finished_at = self.now
            times.outcome, times.reason = record.outcome.value, record.reason
            done = record.outcome.value == "done"
            tower, bay, ticket = times.tower, times.bay, times.ticket
            if times.kind is JobKind.RETRIEVE and done:
                at = self.collect_at.get(ticket)
                self._at(at, lambda: self._collect(tower, bay, ticket))
            elif times.kind is JobKind.STORE and not done:
                # Refused after the check, or cancelled: the driver takes it back.
                self._at(None, lambda: self._take_back(tower, bay, ticket))

    def _flush(self) -> None:
        if self._batch and self.journal is not None:
            batch, self._batch = self._batch, []
            self.journal.write(batch)

    def schedule(self, t: float, action: Callable[[], None]) -> None:
        """Run `action` at virtual time `t` (a fault injection, an e-stop)."""
        self._at(t, action)

    def _at(self, t: float | None, action: Callable[[], None]) -> None:
        when = self.now if t is None else max(t, self.now)
        heapq.heappush(self._schedule, (when, next(self._order), action))

    def _describe_work(self, limit: float) -> str:
        jobs = [(j["job_id"], j["state"], j["reason"]) for j in self.core.jobs()]
        towers = [(t["id"], t["state"]) for t in self.core.status()["towers"]]
        return (
            f"not idle at {limit} s (now {self.now} s): jobs {jobs}, towers {towers}, "
            f"waiting {sum(map(len, self._waiting.values()))}, "
            f"in bays {list(self._dropping)}, scheduled {len(self._schedule)}"
        )

    # -- checks ----------------------------------------------------------------

    def parked(self, tower: str) -> dict[str, str]:
        """Slot -> car id, as the core's inventory says (through the tickets)."""
        cars = self.core.inventory.cars
        slots = self.core.towers[tower].slots.by_name
        return {
            car.place: self.car_of[ticket]
            for ticket, car in cars.items()
            if car.tower == tower and car.place in slots
        }
