"""Positioning jobs: an idle device, with no car, to where the next job may want it.

The pipelined sequencer proposes them; the core makes, journals and sends them
(see `SiteCore._position`). These tests drive the core against the plant model
and check what a positioning may never do: move a device a car job wants, make
a visitor's job wait longer than the one move in progress, move a device to
where it stands, move one again and again with nothing new, or run again
after a restart.
"""

from __future__ import annotations

from typing import Any

import pytest
from corekit import small_site
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_harness_properties import HEIGHTS, check_agreement, site
from test_recovery_crash import Crasher, repeated_steps

from sim.harness import Harness
from sim.plant import Car
from tower.config import Zone
from tower.core import RestoredState, SiteCore
from tower.core.actions import Persist, SendCommand
from tower.core.job import TERMINAL, Job, StepState
from tower.core.records import JobCreated, JobFinished, JobKind, StepIntent
from tower.core.sequencer import Pipelined

TOWER = "tower-a"


def pipelined(**options: Any) -> Pipelined:
    """The pipelined sequencer without relocation: positioning alone."""
    return Pipelined(relocate=False, **options)


def positionings(h: Harness) -> list[JobCreated]:
    return [
        r for r in h.records if isinstance(r, JobCreated) and r.kind is JobKind.POSITION
    ]


def outcomes(h: Harness) -> dict[str, JobFinished]:
    return {r.job_id: r for r in h.records if isinstance(r, JobFinished)}


def column(h: Harness, device: str) -> int:
    return h.plant.status(TOWER, device)["column"]


def timed(h: Harness) -> list[tuple[float, SendCommand]]:
    """Every command the harness writes from now on, with its time."""
    written: list[tuple[float, SendCommand]] = []
    h.on_command.append(lambda hh, command: written.append((hh.now, command)))
    return written


def store(h: Harness, cars: list[tuple[str, float | None]]) -> list[str]:
    """Store cars one after the other, with their departure hints."""
    tickets = []
    for name, departure in cars:
        car = Car(name)
        tickets.append(h.arrive(TOWER, "bay-1", car, expected_departure_s=departure))
        h.run_until_idle(limit=h.now + 2000)
    return tickets


def three_cars() -> tuple[Harness, list[str]]:
    """One level of three columns; cars in 01-01-L, 01-01-R and 01-02-L."""
    h = Harness(small_site(levels=1, columns=3), sequencer=pipelined())
    tickets = store(h, [("c1", None), ("c2", None), ("c3", None)])
    places = [h.core.ticket(t)["place"] for t in tickets]
    assert places == ["01-01-L", "01-01-R", "01-02-L"]
    return h, tickets


def test_level_shuttle_goes_back_out_to_the_cars_of_its_level():
    """A retrieval leaves the level shuttle at the lift; a positioning job
    (no ticket, one move) takes it back out to the cars of its level, and
    ends done."""
    h, (first, _, _) = three_cars()
    before = len(positionings(h))

    h.retrieve(first)
    h.run_until_idle(limit=h.now + 2000)

    (job,) = positionings(h)[before:]
    assert (job.ticket, job.origin, job.destination) == ("", "shuttle-1", "1")
    assert column(h, "shuttle-1") == 1
    assert outcomes(h)[job.job_id].outcome.value == "done"
    moves = [(c.device, c.code, c.target) for c in h.commands if c.job_id == job.job_id]
    assert moves == [("shuttle-1", "move", 1)]
    assert h.core.jobs() == []


def test_level_shuttle_waits_nearer_the_car_leaving_soonest():
    """Of the cars on a level, the one expected to leave soonest draws the
    idle shuttle to its column."""
    h = Harness(small_site(levels=1, columns=3), sequencer=pipelined())
    soon, late = 4 * 3600.0, 20 * 3600.0
    first, *_ = store(h, [("c1", late), ("c2", late), ("c3", soon)])

    h.retrieve(first)
    h.run_until_idle(limit=h.now + 2000)

    leaving = next(t for t in h.core.inventory.cars if h.car_of[t] == "c3")
    assert h.core.ticket(leaving)["place"] == "01-02-L"
    assert column(h, "shuttle-1") == 2


def test_lift_waits_low_enough_to_keep_up_with_the_shuttle():
    """Cars only on the top of eight levels: from the ground the lift's trip
    up is longer than the shuttle's pick and trip to the lift, so the idle
    lift goes up, to the lowest level from which it no longer is (level 2:
    13.2 m, 15.2 s, against 12 s + 4.6 s)."""
    low = Zone(levels=list(range(1, 8)), disabled=True)
    h = Harness(small_site(levels=8, columns=1, zones=[low]), sequencer=pipelined())
    first, _ = store(h, [("c1", None), ("c2", None)])

    h.retrieve(first)
    h.run_until_idle(limit=h.now + 2000)

    lift = [p for p in positionings(h) if p.origin == "lift"]
    assert [p.destination for p in lift] == ["2"]
    assert h.plant.status(TOWER, "lift")["level"] == 2
    assert column(h, "shuttle-8") == 1


def test_no_positioning_where_the_device_stands():
    """With the shuttle already at the best column, nothing moves: storing a
    car leaves the shuttle at its column, the only car of its level."""
    h = Harness(small_site(levels=1, columns=3), sequencer=pipelined())

    store(h, [("c1", None)])

    assert column(h, "shuttle-1") == 1
    assert positionings(h) == []


def test_a_retrieval_waits_only_for_the_move_in_progress():
    """A visitor asks for a car of a level while its shuttle is being
    positioned: the retrieval's first command to that shuttle goes out at
    the moment the move ends (the next step boundary), and no other
    positioning of it comes in between."""
    h, (first, second, _) = three_cars()
    written = timed(h)
    asked: list[float] = []

    def ask(hh: Harness, command: SendCommand) -> None:
        if command.job_id.startswith("position-") and not asked:
            asked.append(hh.now)
            hh.retrieve(second)

    h.on_command.append(ask)
    h.retrieve(first)
    h.run_until_idle(limit=h.now + 2000)

    on_shuttle = [
        (t, c) for t, c in written if c.device == "shuttle-1" and t >= asked[0]
    ]
    (position_at, position), (next_at, after) = on_shuttle[:2]
    move_s = h.core.towers[TOWER].travel.shuttle_s(0, position.target)

    assert position.job_id.startswith("position-")
    assert position_at == asked[0]
    assert not after.job_id.startswith("position-")
    assert next_at == pytest.approx(position_at + move_s)
    assert h.delivered[second] == "c2"


def wants(job: Job, device: str) -> bool:
    """Whether an open car job still needs `device`, from what it is for: a
    job not admitted yet its whole path (a store not yet allocated any
    level), a running one the devices of its steps not done."""
    if job.state in TERMINAL:
        return False
    if not [s for s in job.steps if s.code != "check"]:
        if job.slot is None:
            return True
        return device in ("lift", "shuttle-0", f"shuttle-{job.slot.level}")
    return any(device in s.devices for s in job.steps if s.state is not StepState.DONE)


def watch(h: Harness) -> list[str]:
    """Check every positioning the core makes against the open car jobs
    right after the event that made it; the problems found, as the day runs."""
    problems: list[str] = []
    core = h.core
    handle = core.handle

    def checked(event: Any, now: float) -> Any:
        actions = handle(event, now)
        for action in actions:
            record = action.record if isinstance(action, Persist) else None
            if (
                not isinstance(record, JobCreated)
                or record.kind is not JobKind.POSITION
            ):
                continue
            device, status = record.origin, h.plant.status(TOWER, record.origin)
            where = status["level"] if device == "lift" else status["column"]
            if str(where) == record.destination:
                problems.append(f"{record.job_id}: {device} is there already")
            for job in core.open_jobs.values():
                if job.kind is not JobKind.POSITION and wants(job, device):
                    problems.append(f"{record.job_id}: job {job.id} wants {device}")
        return actions

    core.handle = checked  # type: ignore[method-assign]
    return problems


def thrash(written: list[tuple[float, SendCommand]], recheck_s: float) -> list[str]:
    """Two positionings of one device, with no car job's command to it in
    between, sooner than `recheck_s` apart."""
    last: dict[str, tuple[float, str]] = {}
    found = []
    for at, command in written:
        if not command.job_id.startswith("position-"):
            last.pop(command.device, None)
            continue
        before = last.get(command.device)
        if before is not None and at - before[0] < recheck_s:
            found.append(f"{command.device}: {before[1]}, then {command.job_id}")
        last[command.device] = (at, command.job_id)
    return found


arrival = st.tuples(
    st.sampled_from(["bay-1", "bay-2"]),
    st.floats(min_value=0, max_value=900),
    st.sampled_from(["standard", "standard", "tall"]),
    st.floats(min_value=5, max_value=60),
    st.floats(min_value=600, max_value=8 * 3600),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cars=st.lists(arrival, min_size=1, max_size=12), data=st.data())
def test_positioning_never_takes_a_device_a_job_wants(cars, data):
    """Random days with departure hints, positioning on quiet towers only or
    whenever a device is free: no positioning moves a device a car job
    still needs, or to where it stands; each ends done; none follows
    another of the same device within the recheck time with no car job on
    it in between; and every visitor gets their car back."""
    sequencer = pipelined(position_quiet=data.draw(st.booleans()))
    h = Harness(site(), seed=data.draw(st.integers(0, 2**16)), sequencer=sequencer)
    problems = watch(h)
    written = timed(h)
    h.after_step.append(check_agreement)
    tickets = []
    for i, (bay, at, size, driver_s, stay_s) in enumerate(cars):
        car = Car(f"c{i}", height_mm=HEIGHTS[size], driver_time_s=driver_s)
        hint = at + stay_s
        tickets.append(h.arrive(TOWER, bay, car, at=at, expected_departure_s=hint))
    h.run_until_idle(limit=50_000)
    parked = [t for t in tickets if t in h.core.inventory.cars]
    for ticket in data.draw(st.permutations(parked)):
        at = h.now + data.draw(st.floats(min_value=0, max_value=300))
        h.retrieve(ticket, at=at, retry_s=30)
    h.run_until_idle(limit=150_000)

    assert problems == []
    assert h.core.errors == []
    assert {t: h.delivered[t] for t in parked} == {t: h.car_of[t] for t in parked}
    ends = outcomes(h)
    assert {ends[p.job_id].outcome.value for p in positionings(h)} <= {"done"}
    assert thrash(written, sequencer.position_recheck_s) == []
    assert [k for k, n in h.plant.motions.items() if n > 1] == []


# -- restarts -------------------------------------------------------------------


def crash_day(
    plan: list[tuple[int, str, float, float | None]],
) -> tuple[Harness, Crasher]:
    """Three cars stored, the first retrieved (its shuttle is then positioned),
    crashing at the planned command writes."""
    h = Harness(small_site(levels=1, columns=3), sequencer=pipelined())
    crasher = Crasher(h, plan, sequencer=pipelined)
    tickets = [h.arrive(TOWER, "bay-1", Car(f"c{i}"), at=i * 300.0) for i in range(3)]
    h.retrieve(tickets[0], at=1200.0, retry_s=30)
    crasher.run(until=3000.0)
    return h, crasher


def first_positioning_write() -> int:
    """The index of the first positioning move among the day's command writes."""
    h, crasher = crash_day([])
    index = next(
        i for i, c in enumerate(c for c in h.commands if c.code != "reset")
        if c.job_id.startswith("position-")
    )  # fmt: skip
    assert crasher.writes > index
    return index


def crashed_positioning(h: Harness) -> tuple[JobCreated, JobFinished]:
    """The first positioning job of the day (the one the crash hit) and how
    it ended."""
    job = positionings(h)[0]
    return job, outcomes(h)[job.job_id]


@pytest.mark.parametrize("cut", ["before", "target"])
def test_restart_drops_a_positioning_the_plc_never_latched(cut):
    """The controller dies writing a positioning move the PLC never
    latched: after the restart the job is dropped (cancelled, not sent
    again), no alarm is raised, and the day goes on."""
    index = first_positioning_write()

    h, crasher = crash_day([(index, cut, 5.0, None)])

    job, end = crashed_positioning(h)
    assert crasher.crashes == 1
    assert (end.outcome.value, end.reason.split(":")[0]) == ("cancelled", "dropped")
    intent = next(
        r for r in h.records if isinstance(r, StepIntent) and r.job_id == job.job_id
    )
    assert (TOWER, intent.device, intent.seq) not in h.plant.motions
    again = [p for p in positionings(h) if p.job_id != job.job_id]
    assert all(outcomes(h)[p.job_id].outcome.value == "done" for p in again)
    assert not [a for a in h.alarms if a.code in ("job_open", "job_held")]
    assert h.core.jobs() == []
    assert h.core.errors == []
    assert sorted(h.parked(TOWER).values()) == ["c1", "c2"]


def test_restart_settles_a_positioning_the_plc_latched():
    """The PLC latched the move just before the crash: after the restart the
    job is settled from the PLC's status (done), and the move ran once."""
    index = first_positioning_write()

    h, crasher = crash_day([(index, "after", 5.0, None)])

    job, end = crashed_positioning(h)
    assert crasher.crashes == 1
    assert end.outcome.value == "done"
    assert column(h, "shuttle-1") == int(job.destination)
    assert repeated_steps(h) == []
    assert [k for k, n in h.plant.motions.items() if n > 1] == []
    assert h.core.jobs() == []
    assert h.core.errors == []


def test_restart_drops_a_positioning_stopped_for_the_lost_heartbeat():
    """The PLC stops the latched move when the dead controller's heartbeat
    stops: after the restart the shuttle is reset and the job dropped, not
    moved again; the next retrieval uses the shuttle as usual."""
    index = first_positioning_write()

    h, _ = crash_day([(index, "after", 30.0, 0.5)])

    _, end = crashed_positioning(h)
    assert (end.outcome.value, end.reason.split(":")[0]) == ("cancelled", "dropped")
    assert h.plant.status(TOWER, "shuttle-1")["state"] == "idle"
    assert not [a for a in h.alarms if a.code in ("job_open", "job_held")]
    for ticket in list(h.core.inventory.cars):
        h.retrieve(ticket)
    h.run_until_idle(limit=h.now + 3000)
    assert h.core.inventory.cars == {}
    assert h.core.errors == []


def test_restart_drops_a_positioning_journaled_before_its_move():
    """The journal has the positioning job but not its move's intent (the
    controller died between the two): the restarted core drops it without
    sending anything."""
    h, _ = crash_day([])
    job, _ = crashed_positioning(h)
    cut = next(i for i, r in enumerate(h.records) if r == job) + 1
    restored = RestoredState.from_records(h.records[:cut])

    core = SiteCore(
        h.site, restored=restored, sequencer=pipelined(), heartbeat_timeout_s=None
    )
    h.core = core
    h.records = list(h.records[:cut])
    sent = len(h.commands)
    h.poll()

    end = outcomes(h)[job.job_id]
    assert (end.outcome.value, end.reason.split(":")[0]) == ("cancelled", "dropped")
    assert [c for c in h.commands[sent:] if c.job_id == job.job_id] == []
    assert [a for a in h.alarms if a.device == job.job_id] == []
