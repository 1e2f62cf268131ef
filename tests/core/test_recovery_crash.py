"""Crashes of the controller against the plant model, in virtual time.

A crash kills the core at a command write: the journal holds every record
the core emitted before it (the shell commits a batch before each command),
and the PLC got none, half (target and sequence) or all of the command. The
plant runs on while the controller is down; with the watchdog on, a PLC stops
its running motion when the dead controller's heartbeat stops. The restart
is a new `SiteCore` from `RestoredState.from_records(records)` against the
same plant, with a new sequencer of the same kind (a restarted process keeps
nothing but its journal), fed a full poll. A crash can come again during the
recovery. Both sequencers run: the whole-path one and the pipelined one, whose
jobs hold their path piece by piece and which relocates cars when idle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from corekit import small_site
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_harness_properties import HEIGHTS, check_agreement, site

from sim.harness import Harness
from sim.plant import Car
from tower.core import RestoredState, SiteCore
from tower.core.actions import SendCommand
from tower.core.model import SlotId
from tower.core.records import JobCreated, JobKind, StepIntent, TicketIssued
from tower.core.sequencer import FcfsWholePath, Pipelined, Sequencer
from tower.store.journal import Journal

TOWER = "tower-a"
CUTS = ("before", "target", "after")
SEQUENCERS: dict[str, Callable[[], Sequencer]] = {
    "whole_path": FcfsWholePath,
    "pipelined": lambda: Pipelined(
        relocate_quiet_s=0, relocate_lead_s=0, relocate_gain_s=0.1
    ),
}


class Crash(Exception):
    """The controller died at a command write."""


class Crasher:
    """Kills the core at chosen command writes (counted from 0, resets not
    counted) and restarts it from what it journaled."""

    def __init__(
        self,
        h: Harness,
        plan: list[tuple[int, str, float, float | None]],
        sequencer: Callable[[], Sequencer] = FcfsWholePath,
    ):
        self.h = h
        self.sequencer = sequencer
        # write index -> (how much of it lands, downtime_s, watchdog_s or None)
        self.plan = {index: rest for index, *rest in plan}
        self.writes = 0
        self.crashes = 0
        self._beat = 0
        self._due: tuple[float, float | None] | None = None
        h.on_command.append(self._on_command)

    def _on_command(self, h: Harness, command: SendCommand) -> None:
        index, self.writes = self.writes, self.writes + 1
        if index not in self.plan:
            return
        cut, downtime_s, watchdog_s = self.plan.pop(index)
        h.write_partly(command, cut)
        self._due = (downtime_s, watchdog_s)
        raise Crash

    def run(self, until: float) -> None:
        """Run the harness to `until`, crashing and restarting as planned."""
        while True:
            try:
                if self._due is not None:
                    self._restart(*self._due)
                self.h.run_until(until)
                return
            except Crash:
                self.crashes += 1

    def _restart(self, downtime_s: float, watchdog_s: float | None) -> None:
        self._due = None
        h = self.h
        plant = h.plant
        if watchdog_s is not None:
            # The dead controller's last heartbeat: running motions stop
            # watchdog_s after it.
            self._beat += 1
            for tower in h.site.towers:
                for device in tower.device_names():
                    plant.write(tower.id, device, {"heartbeat_ctl": self._beat})
            plant.set_heartbeat_timeouts(watchdog_s)
            plant.watch_heartbeat = True
        plant.advance(h.now + downtime_s)
        plant.watch_heartbeat = False
        h.now = plant.now
        restored = RestoredState.from_records(h.records)
        h.core = SiteCore(
            h.site,
            restored=restored,
            sequencer=self.sequencer(),
            heartbeat_timeout_s=None,
        )
        h.poll()


def repeated_steps(h: Harness) -> list[tuple[str, int]]:
    """Job steps whose motion the plant ran to its end more than once."""
    owner = {
        (r.tower, r.device, r.seq): (r.job_id, r.step)
        for r in h.records
        if isinstance(r, StepIntent)
    }
    stopped = {(f.tower, f.device, f.seq) for f in h.plant.faults}
    ran = Counter(owner[k] for k in h.plant.motions if k not in stopped)
    return [step for step, n in ran.items() if n > 1]


def check_outcome(h: Harness, tickets: list[str]) -> None:
    """No car lost, no motion repeated; every job done or held with an alarm."""
    assert h.core.errors == []
    assert [k for k, n in h.plant.motions.items() if n > 1] == []
    assert repeated_steps(h) == []
    alarmed = {a.device for a in h.alarms if a.code in ("job_open", "job_held")}
    for job in h.core.jobs():
        assert job["state"] == "held", job
        assert job["job_id"] in alarmed
    for ticket in tickets:
        car = h.car_of[ticket]
        if ticket in h.delivered:
            assert h.delivered[ticket] == car
        elif ticket in h.core.inventory.cars:
            place = h.core.ticket(ticket)["place"]
            assert h.plant.locate(car) == (TOWER, place)
    known = {h.car_of[t] for t in h.core.inventory.cars}
    for car, (_, place) in h.plant.cars().items():
        assert car in known or place.startswith("bay-"), (car, place)


def test_crash_at_every_command_of_a_store_and_retrieve():
    """One car stored and retrieved, the controller killed at each command in
    turn, with nothing, half or all of it written: every time the car comes
    back to its visitor, each motion ran once, and no job was held."""
    for cut in CUTS:
        index = 0
        while True:
            h = Harness(small_site())
            crasher = Crasher(h, [(index, cut, 5.0, None)])
            ticket = h.arrive(TOWER, "bay-1", Car("c1", driver_time_s=10))
            h.retrieve(ticket, at=400, retry_s=30)
            crasher.run(3000)
            if crasher.crashes == 0:
                break
            check_outcome(h, [ticket])
            assert h.delivered == {ticket: "c1"}, (cut, index)
            assert not h.core.jobs()
            index += 1
        assert index > 20


def test_crash_with_the_watchdog_stopping_the_motion():
    """Killed mid-motion and down longer than the PLC watchdog: the stopped
    motions are reset and retried; the car still comes back."""
    for index in range(0, 24, 3):
        h = Harness(small_site())
        ticket = h.arrive(TOWER, "bay-1", Car("c1", driver_time_s=10))
        h.retrieve(ticket, at=400, retry_s=30)
        crasher = Crasher(h, [(index, "after", 30.0, 2.0)])
        crasher.run(3000)

        check_outcome(h, [ticket])
        assert h.delivered == {ticket: "c1"}, index
        assert not h.core.jobs()


def test_records_replay_as_the_journal_restores_them(tmp_path):
    """`RestoredState.from_records` gives what the journal restores from the
    same records, with jobs open and cars on their way."""
    with Journal.open(tmp_path / "journal.db") as journal:
        h = Harness(small_site(levels=2, columns=2), journal=journal)
        for i in range(3):
            h.arrive(TOWER, "bay-1", Car(f"c{i}"), at=i * 200.0)
        h.run_until(520)

        from_journal = RestoredState.from_journal(journal.restored_state())
    from_records = RestoredState.from_records(h.records)

    def norm(state: RestoredState) -> tuple:
        jobs = [
            (j.job_id, j.kind, j.ticket, j.origin, j.destination, j.intents,
             sorted(j.results, key=lambda r: (r.step, r.seq)))
            for j in state.jobs
        ]  # fmt: skip
        return dict(state.cars), jobs, dict(state.last_seq), dict(state.blocked)

    assert from_journal.jobs
    assert norm(from_records) == norm(from_journal)


arrival = st.tuples(
    st.sampled_from(("bay-1", "bay-2")),
    st.floats(min_value=0, max_value=600, allow_nan=False),
    st.sampled_from(["standard", "tall"]),
    st.floats(min_value=5, max_value=60, allow_nan=False),
    st.floats(min_value=100, max_value=900, allow_nan=False),
)
crash = st.tuples(
    st.integers(min_value=0, max_value=160),
    st.sampled_from(CUTS),
    st.floats(min_value=0, max_value=40, allow_nan=False),
    st.sampled_from([None, None, 2.0]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cars=st.lists(arrival, min_size=1, max_size=6),
    crashes=st.lists(crash, max_size=5, unique_by=lambda c: c[0]),
    sequencer=st.sampled_from(sorted(SEQUENCERS)),
)
def test_crash_anywhere_loses_no_car_and_repeats_no_motion(cars, crashes, sequencer):
    """A random day, the controller killed at random commands (some during
    the recovery from the last kill), with random downtimes, some longer than
    the PLC watchdog: no car is lost, no motion runs twice, the core and the
    plant agree on every slot, and every job completes or is held with an
    alarm; without the watchdog, none is held."""
    h = Harness(site(), sequencer=SEQUENCERS[sequencer]())
    h.after_step.append(check_agreement)
    crasher = Crasher(h, crashes, SEQUENCERS[sequencer])
    tickets = []
    for i, (bay, at, size, driver_s, visit_s) in enumerate(cars):
        car = Car(f"c{i}", height_mm=HEIGHTS[size], driver_time_s=driver_s)
        ticket = h.arrive(TOWER, bay, car, at=at, expected_departure_s=at + visit_s)
        h.retrieve(ticket, at=at + visit_s, retry_s=30)
        tickets.append(ticket)

    crasher.run(20_000)
    for ticket in tickets:
        if ticket in h.core.inventory.cars and not h.core.ticket(ticket)["job_id"]:
            h.retrieve(ticket, retry_s=30)  # asked before it was stored
    crasher.run(40_000)

    check_outcome(h, tickets)
    if all(watchdog is None for *_, watchdog in crashes):
        issued = {r.ticket for r in h.records if isinstance(r, TicketIssued)}
        assert h.core.jobs() == []
        assert set(h.delivered) == issued


class FarSlot:
    """An allocator that parks the car in the slot farthest from the lift."""

    def choose(self, view, size):
        return SlotId.parse("03-02-R")


def test_crash_during_a_relocation_resumes_it():
    """The pipelined sequencer relocates a car parked far up, the tower being
    idle; the controller is killed at each command of the relocation in turn
    (a store takes the first 12): the relocation ends, the car is where the
    plant has it, and it still comes back to its visitor."""
    hit = 0
    for index in range(12, 24):
        h = Harness(site(), allocator=FarSlot(), sequencer=SEQUENCERS["pipelined"]())
        crasher = Crasher(h, [(index, "after", 5.0, None)], SEQUENCERS["pipelined"])
        ticket = h.arrive(
            TOWER, "bay-1", Car("c1", driver_time_s=10), expected_departure_s=3_000
        )
        crasher.run(2_500)
        h.retrieve(ticket, retry_s=30)
        crasher.run(6_000)

        relocations = [
            r for r in h.records if isinstance(r, JobCreated)
            and r.kind is JobKind.RELOCATE
        ]  # fmt: skip
        check_outcome(h, [ticket])
        assert relocations, index
        assert h.delivered == {ticket: "c1"}, index
        assert not h.core.jobs()
        hit += crasher.crashes
    assert hit >= 8


@pytest.mark.parametrize(
    ("before", "after"), [("pipelined", "whole_path"), ("whole_path", "pipelined")]
)
def test_a_restart_under_another_policy_finishes_the_open_jobs(before, after):
    """The site file's policy changed across a restart: four cars stored
    and retrieved through two bays, the controller killed at each of many
    commands and restarted under the other sequencer, whose open jobs may
    hold part of their path; every car comes back and no job is left."""
    stuck = []
    for index in range(4, 120, 4):
        h = Harness(site(), sequencer=SEQUENCERS[before]())
        crasher = Crasher(h, [(index, "after", 5.0, None)], SEQUENCERS[after])
        tickets = []
        for i in range(4):
            car = Car(f"c{i}", height_mm=HEIGHTS["standard"], driver_time_s=10)
            ticket = h.arrive(TOWER, f"bay-{1 + i % 2}", car, at=i * 20.0)
            h.retrieve(ticket, at=300 + i * 30.0, retry_s=30)
            tickets.append(ticket)

        crasher.run(8_000)

        check_outcome(h, tickets)
        if h.core.jobs() or len(h.delivered) != 4:
            stuck.append((index, [j["state"] for j in h.core.jobs()]))
    assert stuck == []
