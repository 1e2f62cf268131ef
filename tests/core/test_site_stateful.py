"""A stateful property test of the core driving the plant, with faults.

Hypothesis plays a day at a small tower one step at a time: visitors arrive
and ask for their cars, time passes, and in between things go wrong: a PLC
faults during a command (and the operator resets or cancels), the e-stop is
pressed and released, a device stops answering (and is reported offline) and
answers again late, a command write fails in the shell (landed or not), the
shell polls twice, a device is switched to manual and back, the operator
switches the tower to manual and back (and maintenance moves a parked car to
another slot by hand, saying where), and the controller crashes, now or at
its next command write (with nothing, half or all of the command written),
and restarts from its journal with the plant running on (past the PLC
watchdog or not). Both sequencers run.

After every step (and after every event of the harness for the places):

- safety: no command is written while the tower is not in auto or degraded,
  the e-stop is pressed, its device is not idle, or it would move a car at a
  bay with an open door or a person inside; every PLC fault is one the test
  caused (an injected fault, the e-stop, the manual switch, the watchdog);
- places: every car the core holds is where the plant has it, or where a
  command still out would put it; a car the core does not hold stands in a
  bay; one car per slot; no domain error;
- no car lost: the journal's inventory is the core's; no ticket closes while
  its car is still in the plant; a car leaves only with its own visitor; a
  restart keeps every ticket;
- occupancy figures add up and the last one published is the current one.

At teardown the faults are cleared (replies back, e-stop released, manual
off, reset, auto), the operator cancels the held jobs whose car can be handed
back or stays in its slot, every parked car is asked for (again as long as
waiting cars get parked), and the tower runs until nothing happens any more.
Then every job left is held with an alarm or waits for a device only an
operator can give back, and every ticket issued was delivered (or handed
back) to its own visitor, unless its car is accounted for: with such a job,
on a device a cancelled job left it on, or in a blocked slot.

The suite runs derandomized examples (the same every time); the deep run,
marked slow, draws new ones: `pytest -m slow tests/core/test_site_stateful.py`.
Two planted bugs (`test_a_*_is_caught_and_shrunk`) show that the machine
bites: each must be found and shrunk to a car's arrival. The plain tests at
the end reproduce bugs the machine found, fixed since.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from test_harness_properties import HEIGHTS, TOWER, check_occupancy, site

from sim.harness import Harness
from sim.plant import Car
from tower.core import RequestRefused, RestoredState, SiteCore
from tower.core.actions import SendCommand
from tower.core.events import (
    CancelJob,
    DeviceOffline,
    PlaceCar,
    ResetTower,
    SetMode,
)
from tower.core.job import Job, JobState, StepState
from tower.core.link import DeviceLink, Verdict
from tower.core.records import JobKind, TicketClosed, TicketIssued
from tower.core.sequencer import FcfsWholePath, Pipelined, Sequencer
from tower.core.tower import MOTION_STATES

BAYS = ("bay-1", "bay-2")
SIZES = ("standard", "tall", "standard", "too_large")  # mostly cars that fit
THEN_S = (0.0, 30.0, 120.0, 600.0)  # time passing after a visitor's step
EPISODE_S = (5.0, 60.0, None)  # how long a fault lasts (None: until a rule ends it)
DEVICES = ("lift", "shuttle-0", "shuttle-1", "shuttle-2", "shuttle-3", *BAYS)
SEQUENCERS: dict[str, Callable[[], Sequencer]] = {
    "whole_path": FcfsWholePath,
    "pipelined": lambda: Pipelined(
        relocate_quiet_s=0, relocate_lead_s=0, relocate_gain_s=0.1
    ),
}
# Why a PLC may fault in this test: what the test itself did to it.
CAUSED = ("injected fault", "e-stop pressed", "switched to manual", "heartbeat_ctl")
OUT = (StepState.SENT, StepState.ACCEPTED)
DRAIN_ROUND_S = 600.0
DRAIN_ROUNDS = 40


class Crash(Exception):
    """The controller died at a command write."""


class SiteMachine(RuleBasedStateMachine):
    """One tower, its visitors, its faults and its controller's crashes."""

    tickets = Bundle("tickets")

    def __init__(self) -> None:
        super().__init__()
        self.h: Harness
        self.broken = False  # a step failed: teardown checks nothing more
        self.cars = count()
        self.ticket_of: dict[str, str] = {}  # car id -> its ticket
        self.asked_at_drain: set[str] = set()  # tickets asked for at teardown
        self.crash_plan: tuple[str, float, float | None] | None = None
        self.crash_due: tuple[float, float | None] = (0.0, None)
        self.estop = False
        self.manual: set[str] = set()  # devices switched to manual
        self.tower_manual = False
        self.faults_seen = 0  # PLC faults already judged
        self.unheard = False  # a device was muted since the last check

    # -- setup ---------------------------------------------------------------

    @initialize(sequencer=st.sampled_from(sorted(SEQUENCERS)))
    def start(self, sequencer: str) -> None:
        self.make_sequencer = SEQUENCERS[sequencer]
        self.h = Harness(site(), sequencer=self.make_sequencer())
        self.h.on_command.append(self._on_command)
        self.h.after_step.append(lambda h: self._check_places())

    # -- visitors ------------------------------------------------------------

    @rule(
        target=tickets,
        bay=st.sampled_from(BAYS),
        size=st.sampled_from(SIZES),
        driver_s=st.sampled_from([5.0, 30.0, 90.0]),
        then_s=st.sampled_from(THEN_S),
    )
    def arrive(self, bay: str, size: str, driver_s: float, then_s: float) -> str:
        """A car drives up to a bay; then time passes."""
        car_id = f"c{next(self.cars)}"
        car = Car(car_id, height_mm=HEIGHTS[size], driver_time_s=driver_s)
        ticket = self.h.arrive(TOWER, bay, car)
        self.ticket_of[car.id] = ticket
        self.advance(then_s)
        return ticket

    @rule(
        ticket=tickets,
        bay=st.sampled_from([None, *BAYS]),
        then_s=st.sampled_from(THEN_S),
    )
    def retrieve(self, ticket: str, bay: str | None, then_s: float) -> None:
        """A visitor asks for a car (maybe not stored yet); then time passes."""
        self.h.retrieve(ticket, bay)
        self.advance(then_s)

    @rule(seconds=st.sampled_from([1.0, 5.0, 20.0, 60.0, 200.0, 600.0]))
    def advance(self, seconds: float) -> None:
        until = self.h.now + seconds
        self._drive(lambda: self.h.run_until(until), resume=True)

    # -- PLC faults and the operator -----------------------------------------

    @rule(
        device=st.sampled_from(DEVICES),
        fault=st.sampled_from(["interlock", "bad_command", "heartbeat_lost"]),
    )
    def plc_fault(self, device: str, fault: str) -> None:
        """The device's next command faults halfway."""
        self.h.fault_next_command(TOWER, device, fault)

    @rule()
    def operator_reset(self) -> None:
        self._drive(lambda: self.h.operate(ResetTower(TOWER)))

    @precondition(lambda self: self.h.core.open_jobs)
    @rule(data=st.data())
    def operator_cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.h.core.open_jobs)))
        self._drive(lambda: self._refusable(CancelJob(job_id)))

    # Manual mode now survives a reset after an e-stop and a restart (the
    # plain tests below), but the machine's model of the mode and its drain
    # do not follow that yet: no e-stop latched when it is chosen, no e-stop
    # and no crash while it lasts. TODO: teach the drain to switch back to
    # auto after a reset, then lift these preconditions.
    @precondition(lambda self: not self._estop_latched())
    @rule(mode=st.sampled_from(["manual", "auto"]))
    def tower_mode(self, mode: str) -> None:
        self._set_mode(mode)

    def _set_mode(self, mode: str) -> None:
        def switch() -> None:
            # Commands may go out within the request (auto): expect them.
            was, self.tower_manual = self.tower_manual, False
            if self._refusable(SetMode(TOWER, mode)):  # type: ignore[arg-type]
                self.tower_manual = mode == "manual"
            else:
                self.tower_manual = was

        self._drive(switch)

    @precondition(lambda self: self.tower_manual and not self.h.muted)
    @rule(data=st.data())
    def move_by_hand(self, data: st.DataObject) -> None:
        """In manual, maintenance moves a parked car to a free slot by hand
        and says where (`PlaceCar`); a statement the core refuses (the car
        does not fit there) is undone by hand."""
        h = self.h
        if any(h.plant.status(TOWER, d)["state"] == "busy" for d in DEVICES):
            return  # commands sent before the switch still run
        slots = h.core.towers[TOWER].slots
        busy = {j.ticket for j in h.core.open_jobs.values()}
        cars = sorted(
            ticket
            for ticket, car in h.core.inventory.cars.items()
            if car.place in slots.by_name
            and ticket not in busy
            and h.plant.where(h.car_of[ticket]) == car.place
        )
        free = [
            s.name
            for s in slots.order
            if slots.is_free(s) and h.plant.car_in(TOWER, s.name) is None
        ]
        if not cars or not free:
            return
        ticket = data.draw(st.sampled_from(cars))
        to = data.draw(st.sampled_from(free))
        car_id = h.car_of[ticket]
        was = h.plant.where(car_id)
        h.plant.move_by_hand(car_id, to)
        self._drive(h.poll)
        if not self._refusable(PlaceCar(ticket, to)):
            h.plant.move_by_hand(car_id, was)
            self._drive(h.poll)

    @precondition(lambda self: not self.estop and not self.tower_manual)
    @rule(for_s=st.sampled_from(EPISODE_S), reset=st.booleans())
    def press_estop(self, for_s: float | None, reset: bool) -> None:
        """The e-stop is pressed; with `for_s`, released that much later."""
        self.estop = True
        self.h.plant.press_estop(TOWER)
        self._drive(self.h.poll)
        if for_s is not None:
            self.advance(for_s)
            self.release_estop(reset)

    @precondition(lambda self: self.estop)
    @rule(reset=st.booleans())
    def release_estop(self, reset: bool) -> None:
        self.estop = False
        self.h.plant.release_estop(TOWER)
        self._drive(self.h.poll)
        if reset:
            self.operator_reset()

    @rule(device=st.sampled_from(DEVICES), for_s=st.sampled_from(EPISODE_S))
    def device_manual(self, device: str, for_s: float | None) -> None:
        """The device's local manual switch (a running command stops); with
        `for_s`, switched back that much later."""
        self.manual.add(device)
        self.h.plant.set_manual(TOWER, device, True)
        self._drive(self.h.poll)
        if for_s is not None:
            self.advance(for_s)
            self.device_auto(device)

    @precondition(lambda self: self.manual)
    @rule(data=st.data())
    def device_back_to_auto(self, data: st.DataObject) -> None:
        self.device_auto(data.draw(st.sampled_from(sorted(self.manual))))

    def device_auto(self, device: str) -> None:
        self.manual.discard(device)
        self.h.plant.set_manual(TOWER, device, False)
        self._drive(self.h.poll)

    # -- the link --------------------------------------------------------------

    @precondition(lambda self: not self.h.muted)
    @rule(
        device=st.sampled_from(DEVICES),
        offline=st.booleans(),
        for_s=st.sampled_from(EPISODE_S),
    )
    def lose_replies(self, device: str, offline: bool, for_s: float | None) -> None:
        """The device stops answering; the shell may report it offline. With
        `for_s`, it answers again that much later."""
        self.unheard = True
        self.h.mute(TOWER, device)
        if offline:
            event = DeviceOffline(TOWER, device, "timeout")
            self._drive(lambda: self.h.operate(event, poll=False))
        if for_s is not None:
            self.advance(for_s)
            self.replies_back()

    @precondition(lambda self: self.h.muted)
    @rule()
    def replies_back(self) -> None:
        """The device answers again: its current status arrives, late."""
        ((tower, device),) = self.h.muted
        self._drive(lambda: self.h.unmute(tower, device))

    @rule(device=st.sampled_from(DEVICES), landed=st.booleans())
    def write_fails(self, device: str, landed: bool) -> None:
        """The next command write to the device gets no reply."""
        self.h.fail_next_write(TOWER, device, landed=landed)

    @rule()
    def poll_again(self) -> None:
        """A full poll round: every status again, most of them unchanged."""
        self._drive(self.h.poll)

    # -- the controller ----------------------------------------------------------

    @precondition(lambda self: not self.tower_manual)
    @rule(
        downtime_s=st.sampled_from([0.0, 5.0, 40.0]),
        watchdog_s=st.sampled_from([None, 2.0]),
    )
    def crash(self, downtime_s: float, watchdog_s: float | None) -> None:
        """The controller dies between two events and starts again."""
        self.crash_due = (downtime_s, watchdog_s)
        self._drive(self._raise_crash)

    @precondition(lambda self: not self.tower_manual)
    @rule(
        cut=st.sampled_from(["before", "target", "after"]),
        downtime_s=st.sampled_from([0.0, 5.0, 40.0]),
        watchdog_s=st.sampled_from([None, 2.0]),
    )
    def crash_at_next_write(
        self, cut: str, downtime_s: float, watchdog_s: float | None
    ) -> None:
        """The controller will die writing its next command: nothing of it
        written, half (target and sequence), or all."""
        self.crash_plan = (cut, downtime_s, watchdog_s)

    # -- driving the harness -------------------------------------------------------

    def _drive(self, action: Callable[[], Any], *, resume: bool = False) -> None:
        """Run a harness action; on a crash, restart the controller and, with
        `resume` (a run of time), go on with it."""
        try:
            action()
        except Crash:
            pass  # restart outside the handler: no failure there chains to it
        except BaseException:
            self.broken = True
            raise
        else:
            return
        try:
            self._restart()
            if resume:
                self._drive(action, resume=True)
        except BaseException:
            self.broken = True
            raise

    def _raise_crash(self) -> None:
        raise Crash

    def _estop_latched(self) -> bool:
        """The e-stop is pressed, or some device still shows it (no reset)."""
        plant = self.h.plant
        return self.estop or any(
            plant.status(TOWER, device)["state"] == "estop" for device in DEVICES
        )

    def _refusable(self, event: Any) -> bool:
        """An operator request; whether the core took it."""
        try:
            self.h.operate(event)
        except RequestRefused:
            return False
        return True

    def _restart(self) -> None:
        h = self.h
        assert h.core.errors == []
        before = set(h.core.inventory.cars)
        mark = len(h.records)
        downtime_s, watchdog_s = self.crash_due
        self.unheard = True  # the PLCs may stop on the watchdog meanwhile
        try:
            h.restart(
                sequencer=self.make_sequencer(),
                downtime_s=downtime_s,
                watchdog_s=watchdog_s,
            )
        except Crash:
            again = True  # killed again during the recovery
        else:
            again = False
        if again:
            self._restart()
            return
        closed = {r.ticket for r in h.records[mark:] if isinstance(r, TicketClosed)}
        assert before <= set(h.core.inventory.cars) | closed

    def _on_command(self, h: Harness, command: SendCommand) -> None:
        self._check_safe(command)
        if self.crash_plan is None:
            return
        cut, *due = self.crash_plan
        self.crash_plan = None
        self.crash_due = (due[0], due[1])
        h.write_partly(command, cut)
        raise Crash

    # -- the invariants ----------------------------------------------------------

    def _check_safe(self, command: SendCommand) -> None:
        """Just before a command is written: nothing makes it unsafe."""
        h = self.h
        plant = h.plant
        what = f"{command.device} {command.code} {command.target} {command.side}"
        assert h.core.towers[TOWER].state in MOTION_STATES, what
        assert not self.tower_manual, what
        status = plant.status(TOWER, command.device)
        assert not status["flags"]["estop"], what
        if (TOWER, command.device) not in h.muted:
            assert status["state"] == "idle", (what, status["state"])
        if command.device.startswith("bay-"):
            if command.code == "check" and (TOWER, command.device) not in h.muted:
                assert not status["flags"]["person_present"], what
            return
        transfer = command.code in ("pick", "place") and command.side != "lift"
        if command.device != "shuttle-0" or not transfer:
            return
        column = status["column"]
        bay = next(b.id for b in h.site.towers[0].bays
                   if (b.column, b.side.value) == (column, command.side))  # fmt: skip
        if {(TOWER, bay), (TOWER, "shuttle-0")} & h.muted:
            return
        flags = plant.status(TOWER, bay)["flags"]
        assert flags["door_closed"], what
        assert not flags["person_present"], what

    def _check_places(self) -> None:
        """The core's cars against the plant's, one car per place."""
        h = self.h
        core = h.core
        assert core.errors == []
        reaching: dict[str, set[str]] = {}  # ticket -> places a command out leads
        for job in core.open_jobs.values():
            for step in job.steps:
                if step.state in OUT and step.car_to is not None:
                    reaching.setdefault(job.ticket, set()).add(step.car_to)

        for ticket, car in core.inventory.cars.items():
            car_id = h.car_of[ticket]
            found = h.plant.locate(car_id)
            if found is None:
                # Collected by its visitor; the bay's status not heard since,
                # or another car stands there now (a bay senses a car, not
                # which one).
                gone = (h.delivered.get(ticket), h.returned.get(ticket))
                assert car_id in gone, (ticket, car.place)
                unheard = (TOWER, car.place) in h.muted
                assert unheard or h.plant.car_in(TOWER, car.place), (ticket, car.place)
                continue
            allowed = {car.place} | reaching.get(ticket, set())
            assert found[1] in allowed, (ticket, car_id, found, allowed)

        known = {h.car_of[t] for t in core.inventory.cars}
        issued = self._issued()
        for car_id, (_, place) in h.plant.cars().items():
            if car_id in known:
                continue
            assert place in BAYS, f"car {car_id} at {place} is unknown to the core"
            ticket = self.ticket_of[car_id]
            assert ticket not in issued, f"ticket {ticket} closed, car {car_id} here"
        for ticket, car_id in [*h.delivered.items(), *h.returned.items()]:
            assert h.car_of[ticket] == car_id, (ticket, car_id)

    def _issued(self) -> set[str]:
        return {r.ticket for r in self.h.records if isinstance(r, TicketIssued)}

    @invariant()
    def everything_adds_up(self) -> None:
        try:
            self._check_everything()
        except BaseException:
            self.broken = True
            raise

    def _check_everything(self) -> None:
        h = self.h
        self._check_places()
        assert not [a for a in h.alarms if a.code == "domain_error"]

        journal = RestoredState.from_records(h.records).cars
        memory = {
            t: (c.tower, c.place, c.size) for t, c in h.core.inventory.cars.items()
        }
        assert journal == memory

        faults = h.plant.faults[self.faults_seen :]
        self.faults_seen = len(h.plant.faults)
        if not self.unheard:
            for fault in faults:
                assert fault.reason.startswith(CAUSED), fault
        self.unheard = bool(h.muted)

        check_occupancy(h, h.parked(TOWER))

    # -- the drain -----------------------------------------------------------------

    def teardown(self) -> None:
        if getattr(self, "h", None) is None or self.broken:
            return
        self._drain()

    def _drain(self) -> None:
        h = self.h
        h.clear_faults()
        self.crash_plan = None
        for tower, device in sorted(h.muted):
            self._drive(lambda t=tower, d=device: h.unmute(t, d))
        if self.estop:
            self.estop = False
            h.plant.release_estop(TOWER)
        for device in sorted(self.manual):
            h.plant.set_manual(TOWER, device, False)
        self.manual.clear()
        self._drive(h.poll)
        self._set_mode("auto")
        self._recover()

        # The operator cancels what can be handed back or stays in its slot.
        for job in list(h.core.open_jobs.values()):
            car = h.core.inventory.cars.get(job.ticket)
            on_device = car is not None and car.place in DEVICES[:5]
            if job.state is JobState.HELD and not on_device:
                self._drive(lambda j=job.id: self._refusable(CancelJob(j)))
        self._recover()

        # Every visitor whose car is parked asks for it (cars that waited for
        # a bay are stored meanwhile: they are asked for in the next round).
        slots = h.core.towers[TOWER].slots
        for _ in range(DRAIN_ROUNDS):
            busy = {j.ticket for j in h.core.open_jobs.values()}
            parked = [
                ticket
                for ticket, car in sorted(h.core.inventory.cars.items())
                if (slot := slots.by_name.get(car.place)) is not None
                and slot.id not in slots.blocked
                and ticket not in busy
                and ticket not in self.asked_at_drain
            ]
            if not parked:
                break
            for ticket in parked:
                self.asked_at_drain.add(ticket)
                h.retrieve(ticket)
            self._recover()

        # What is left waits for an operator, and says so.
        waiting = set()
        active = {(device, code) for _, device, code in h.core.alarms}
        stuck = self._stuck()
        for job in h.core.open_jobs.values():
            if job.state is JobState.HELD:
                assert {(job.id, "job_held"), (job.id, "job_open")} & active, job.id
            else:
                assert job.id in stuck, f"work left: {self._describe_job(job)}"
            waiting.add(job.ticket)
        lost = {d for d, c in active if c in ("car_stranded", "car_in_transit")}
        blocked = {str(s) for s in slots.blocked}
        excused = waiting | {
            t for t, c in h.core.inventory.cars.items() if c.place in lost | blocked
        }
        issued = self._issued()
        for ticket in sorted(issued - excused):
            car_id = h.car_of[ticket]
            served = car_id in (h.delivered.get(ticket), h.returned.get(ticket))
            assert served, f"ticket {ticket} not served: {self._describe(ticket)}"

    def _recover(self) -> None:
        """The operator resets the tower until no device shows a fault, and
        the tower runs until nothing happens any more."""
        h = self.h
        for _ in range(4):
            self._drive(lambda: h.operate(ResetTower(TOWER)))
            self._run_to_settled()
            devices = h.core.status()["towers"][0]["devices"]
            if all(d["state"] not in ("fault", "estop") for d in devices.values()):
                return

    def _run_to_settled(self) -> None:
        h = self.h
        for _ in range(DRAIN_ROUNDS):
            if h.settled():
                return
            until = h.now + DRAIN_ROUND_S
            self._drive(lambda u=until: h.run_until(u), resume=True)
        jobs = [self._describe_job(j) for j in h.core.open_jobs.values()]
        raise AssertionError(f"still busy at {h.now} s: {jobs}")

    def _stuck(self) -> set[str]:
        """The open jobs that wait for an operator: held ones, and those that
        need a device only an operator can give back (held by a stuck job,
        holding a car no job accounts for, or unhealthy)."""
        core = self.h.core
        devices = core.status()["towers"][0]["devices"]
        lost = {d for _, d, c in core.alarms if c in ("car_stranded", "car_in_transit")}
        lost |= {n for n, d in devices.items() if d["state"] not in ("idle", "busy")}
        stuck = {j.id for j in core.open_jobs.values() if j.state is JobState.HELD}
        while True:
            out = lost | {n for n, d in devices.items() if d["held_by"] in stuck}
            more = {
                j.id
                for j in core.open_jobs.values()
                if j.id not in stuck and (self._needs(j) & out or self._no_bay(j, out))
            }
            if not more:
                return stuck
            stuck |= more

    def _no_bay(self, job: Job, out: set[str]) -> bool:
        """Whether a retrieve not yet planned can get no bay: its own (or
        every bay) is out of use or holds a car."""
        if job.kind is not JobKind.RETRIEVE or job.steps:
            return False
        bays = [job.bay] if job.bay else list(BAYS)
        return all(b in out or self.h.plant.car_in(TOWER, b) for b in bays)

    def _needs(self, job: Job) -> set[str]:
        """The devices a job still needs (its path, before it has a plan)."""
        pending = StepState.PENDING
        needed = {d for s in job.live_steps if s.state is pending for d in s.devices}
        if not needed:
            needed = {"lift", "shuttle-0"}
            if job.slot is not None:
                needed.add(f"shuttle-{job.slot.level}")
        return needed

    def _describe_job(self, job: Job) -> str:
        steps = [(s.describe(), s.state.value) for s in job.steps]
        return f"{job.id} {job.kind.value} {job.state.value} {job.reason!r} {steps}"

    def _describe(self, ticket: str) -> str:
        h = self.h
        try:
            where = h.core.ticket(ticket)
        except RequestRefused:
            where = {"ticket": "unknown to the core"}
        return f"{where}, car {h.plant.locate(h.car_of[ticket])}"


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_site_survives_faults_and_crashes():
    """Days of visitors, faults and crashes keep every invariant, and with the
    faults cleared every car comes back to its visitor. The examples are
    derandomized: the suite runs the same ones every time (the deep run
    below draws new ones)."""
    run_state_machine_as_test(
        SiteMachine, settings=settings(SETTINGS, derandomize=True)
    )


@pytest.mark.slow
def test_site_survives_faults_and_crashes_deep():
    """The same over many more and longer random days."""
    run_state_machine_as_test(
        SiteMachine,
        settings=settings(SETTINGS, max_examples=2000, stateful_step_count=80),
    )


def shrunk_failure(monkeypatch, cls: type, name: str, patch: Callable) -> tuple:
    """Run the machine with a planted bug: the error it reports and the rule
    steps of its shrunk example (as Hypothesis lists them)."""
    monkeypatch.setattr(cls, name, patch)
    with pytest.raises(AssertionError) as caught:
        run_state_machine_as_test(
            SiteMachine,
            # Short days: the bug shows within a few steps, and shrinks fast.
            settings=settings(
                SETTINGS, max_examples=200, stateful_step_count=10, derandomize=True
            ),
        )
    notes = getattr(caught.value, "__notes__", [])
    calls = [n.split("state.")[1].split("(")[0] for n in notes if "state." in n]
    steps = [c for c in calls if c not in ("everything_adds_up", "teardown")]
    return str(caught.value), steps


def test_a_lost_acknowledgement_is_caught_and_shrunk(monkeypatch):
    """A planted bug: the core ignores the end of the lift's first command.
    The machine finds it (a job that never ends) and shrinks it to a car
    arriving."""
    judge = DeviceLink.judge

    def forgetful(self: DeviceLink, points: dict[str, Any]) -> Verdict:
        verdict = judge(self, points)
        cmd = self.inflight
        if verdict is Verdict.DONE and self.name == "lift" and cmd and cmd.seq == 1:
            return Verdict.NONE
        return verdict

    error, steps = shrunk_failure(monkeypatch, DeviceLink, "judge", forgetful)

    assert "work left" in error
    assert steps == ["start", "arrive"]


def test_a_car_move_not_noted_is_caught_and_shrunk(monkeypatch):
    """A planted bug: the core does not note a car reaching the lift. The
    machine finds the core and the plant disagreeing and shrinks it to a car
    arriving (and maybe time passing)."""
    move_car = SiteCore._move_car

    def careless(self: SiteCore, t: Any, job: Job, place: str) -> None:
        if place != "lift":
            move_car(self, t, job, place)

    error, steps = shrunk_failure(monkeypatch, SiteCore, "_move_car", careless)

    assert "'lift'" in error
    assert steps[:2] == ["start", "arrive"]
    assert len(steps) <= 3


def test_manual_mode_survives_an_estop_and_its_reset():
    """The operator switched the tower to manual; an e-stop is pressed,
    released and reset: the tower stays in manual and sends nothing."""
    h = Harness(site())
    h.operate(SetMode(TOWER, "manual"))
    h.plant.press_estop(TOWER)
    h.poll()
    h.plant.release_estop(TOWER)
    h.operate(ResetTower(TOWER))
    h.arrive(TOWER, "bay-1", Car("c1", driver_time_s=5))
    h.run_until(60)

    assert h.core.status()["towers"][0]["state"] == "manual"
    assert h.commands == []


def test_manual_mode_survives_a_restart():
    """A controller restarted while its tower is in manual keeps it there."""
    h = Harness(site())
    h.operate(SetMode(TOWER, "manual"))
    h.restart()

    assert h.core.status()["towers"][0]["state"] == "manual"


def busy_tower_with_a_retrieve_waiting_for_a_store_bay() -> tuple[Harness, dict]:
    """Pipelined: c1 parked; c0's store keeps the lift busy; c1's visitor
    asks for it at bay-1 (waiting for its path, no bay reserved yet); c2
    drives into bay-1 and its store takes the bay and starts its check. Then
    the controller restarts."""
    h = Harness(site(), sequencer=SEQUENCERS["pipelined"]())
    tickets = {"c1": h.arrive(TOWER, "bay-1", Car("c1", driver_time_s=5))}
    h.run_until_idle(limit=1_000)
    tickets["c0"] = h.arrive(TOWER, "bay-2", Car("c0", driver_time_s=5))
    h.run_until(h.now + 40)
    h.retrieve(tickets["c1"], "bay-1")
    tickets["c2"] = h.arrive(TOWER, "bay-1", Car("c2", driver_time_s=5))
    h.run_until(h.now + 6)
    h.restart(sequencer=SEQUENCERS["pipelined"]())
    return h, tickets


def test_restart_leaves_a_store_its_bay():
    """The store whose car stands in bay-1 keeps the bay across the restart;
    every job then ends: c1 comes back, c2 is parked."""
    h, tickets = busy_tower_with_a_retrieve_waiting_for_a_store_bay()
    h.run_until(h.now + 3_000)

    assert h.core.jobs() == []
    assert h.delivered == {tickets["c1"]: "c1"}
    assert h.core.ticket(tickets["c2"])["place"] in h.parked(TOWER)


def test_a_job_held_at_restart_can_be_cancelled():
    """A job held at the restart with its command in flight can be cancelled
    once the PLC has ended that command."""
    h, _ = busy_tower_with_a_retrieve_waiting_for_a_store_bay()
    h.run_until(h.now + 3_000)
    held = [j["job_id"] for j in h.core.jobs() if j["state"] == "held"]

    for job_id in held:
        h.operate(CancelJob(job_id))


def test_a_command_whose_writes_failed_does_not_stop_its_job_for_good():
    """The bay check's write fails twice (not landed): the operator's reset
    sends it again under its own sequence, and the car is stored."""
    h = Harness(site())
    failures = count()

    def fail_two_checks(h: Harness, command: SendCommand) -> None:
        if command.code == "check" and next(failures) < 2:
            h.fail_next_write(TOWER, command.device, landed=False)

    h.on_command.append(fail_two_checks)
    h.arrive(TOWER, "bay-1", Car("c1", driver_time_s=5))
    h.run_until(60)
    h.operate(ResetTower(TOWER))
    h.run_until(h.now + 600)

    assert h.core.jobs() == []
    assert h.parked(TOWER) == {"01-01-L": "c1"}


def test_a_job_held_at_restart_keeps_only_the_devices_it_held():
    """A store held with its car on the level shuttle (switched to manual
    mid-move) holds that shuttle; after a restart it does not take back the
    bay it had released, and the next car is stored through that bay."""
    h = Harness(site())
    h.arrive(TOWER, "bay-1", Car("c1", driver_time_s=5, height_mm=HEIGHTS["tall"]))

    def manual_mid_move(h: Harness, command: SendCommand) -> None:
        if (command.device, command.code, command.target) == ("shuttle-3", "move", 1):
            h.schedule(h.now + 1, lambda: h.plant.set_manual(TOWER, "shuttle-3", True))

    h.on_command.append(manual_mid_move)
    h.run_until(400)
    h.plant.set_manual(TOWER, "shuttle-3", False)
    h.operate(ResetTower(TOWER))
    (held,) = h.core.jobs()
    assert held["holds"] == ["shuttle-3"]
    h.restart()
    h.arrive(TOWER, "bay-1", Car("c2", driver_time_s=5))
    h.run_until(h.now + 600)

    assert h.core.jobs()[0]["holds"] == ["shuttle-3"]
    assert "c2" in h.parked(TOWER).values()
