"""Recovery after a crash, on scripted PLC statuses: what the core resumes and
what it holds.

Each test restores a core from a journal state written by hand: a store job
from bay-1 to slot 01-01-L stopped by a crash while `shuttle-0 pick left`
(step 4, seq 2) was in flight, or a variant of it. The PLC statuses at start
then decide: done, running, never latched, faulted, restarted.
"""

from __future__ import annotations

from typing import Any

import pytest
from corekit import Scripted, alarms, commands, records, small_site

from tower.config import BayConfig, Side, SiteConfig, SizeClass, TowerConfig
from tower.core import RequestRefused, RestoredJob, RestoredState
from tower.core.actions import AlarmCleared, SendCommand
from tower.core.events import RetrieveRequested, StoreRequested
from tower.core.model import SlotId
from tower.core.plan import check, store
from tower.core.records import CarMoved, JobKind, StepIntent, StepResult

TOWER = "tower-a"
SLOT = SlotId(1, 1, Side.LEFT)
TICKET = "T1"


def store_specs() -> list[Any]:
    """The store job's steps as the core numbers them: the check, then the plan."""
    site = small_site()
    bay = site.towers[0].bays[0]
    return [*check(bay), *store(bay, SLOT)]


def journal(
    done: int,
    *,
    inflight: dict[int, int] | None = None,
    faults: dict[int, str] | None = None,
    place: str | None = None,
    last_seq: dict[str, int] | None = None,
) -> RestoredState:
    """The journal of the store job with steps 0..done-1 done (each its
    device's seq 1, 2, ... in order), `inflight` step -> seq sent without a
    result, `faults` step -> fault code (journaled as faulted)."""
    specs = store_specs()
    intents, results, seqs = [], [], {}
    inflight = inflight or {}
    faults = faults or {}
    for index in [*range(done), *sorted(inflight)]:
        spec = specs[index]
        seq = inflight.get(index) or seqs.get(spec.device, 0) + 1
        seqs[spec.device] = seq
        args = (TOWER, spec.device, spec.code, spec.target, spec.side, seq)
        intents.append(StepIntent("j1", index, *args))
        if index in inflight and index not in faults:
            continue
        outcome = "fault" if index in faults else "done"
        code = faults.get(index, "none")
        results.append(StepResult("j1", index, TOWER, spec.device, seq, outcome, code))
    if place is None:
        place = "bay-1"
        for index in range(done):
            place = specs[index].car_to or place
    job = RestoredJob(
        "j1", TOWER, JobKind.STORE, TICKET, "bay-1", str(SLOT),
        tuple(intents), tuple(results),
    )  # fmt: skip
    return RestoredState(
        cars={TICKET: (TOWER, place, SizeClass.STANDARD)},
        jobs=[job],
        last_seq={(TOWER, d): s for d, s in {**seqs, **(last_seq or {})}.items()},
    )


def picking(s: Scripted, **shuttle: Any) -> None:
    """The plant as the crash left it during the pick: steps 0-3 done, so
    shuttle-0 stands at column 1 (seq 1 done), the lift and shuttle-1 at the
    lift, the bay closed on the car; `shuttle` overrides shuttle-0's points."""
    p = s.points
    p[TOWER, "bay-1"].update(seq_accepted=1, seq_done=1, result="done")
    p[TOWER, "bay-1"]["flags"].update(vehicle_present=True, door_closed=True)
    p[TOWER, "lift"].update(seq_accepted=1, seq_done=1, result="done")
    p[TOWER, "shuttle-1"].update(seq_accepted=1, seq_done=1, result="done")
    p[TOWER, "shuttle-0"].update(
        seq_accepted=1, seq_done=1, result="done", column=1, position_mm=2600
    )
    flags = shuttle.pop("flags", {})
    p[TOWER, "shuttle-0"].update(shuttle)
    p[TOWER, "shuttle-0"]["flags"].update(flags)


def job_of(s: Scripted) -> dict[str, Any]:
    (job,) = s.core.jobs()
    return job


def sent(actions) -> list[tuple[str, str, int]]:
    return sorted((c.device, c.code, c.seq) for c in commands(actions))


def test_step_the_plc_shows_done_is_applied_and_the_plan_goes_on():
    """The pick ended while the controller was down: at start its result and
    the car's move to shuttle-0 are journaled, and the next steps go out."""
    s = Scripted(restored=journal(4, inflight={4: 2}))
    picking(s, seq_accepted=2, seq_done=2, flags={"loaded": True})
    s.points[TOWER, "bay-1"]["flags"]["vehicle_present"] = False

    actions = s.start()

    assert StepResult("j1", 4, TOWER, "shuttle-0", 2, "done", "none") in records(
        actions
    )
    assert CarMoved(TICKET, TOWER, "shuttle-0") in records(actions)
    assert alarms(actions) == []
    assert sent(actions) == [("bay-1", "release", 2), ("shuttle-0", "move", 3)]
    assert s.core.ticket(TICKET)["place"] == "shuttle-0"
    assert s.core.status()["towers"][0]["state"] == "auto"


def test_step_still_running_is_waited_for():
    """The PLC accepted the pick and still runs it: nothing is sent to it;
    its end, when it comes, is judged as usual."""
    s = Scripted(restored=journal(4, inflight={4: 2}))
    picking(s, seq_accepted=2, state="busy")

    actions = s.start()
    done = s.report("shuttle-0", state="idle", seq_done=2, flags={"loaded": True})

    assert commands(actions) == []
    assert [st["state"] for st in job_of(s)["steps"]][4] == "done"
    assert ("shuttle-0", "move", 3) in sent(done)


def test_command_never_latched_goes_again_under_its_own_sequence():
    """The crash came before the PLC latched the pick: it goes again with the
    same sequence (the PLC runs a sequence at most once) and no new intent."""
    s = Scripted(restored=journal(4, inflight={4: 2}))
    picking(s)

    actions = s.start()

    assert sent(actions) == [("shuttle-0", "pick", 2)]
    assert [r for r in records(actions) if isinstance(r, StepIntent)] == []
    assert alarms(actions) == []


def test_fault_at_start_holds_the_job():
    """The pick ended in an interlock fault: the job is held with an alarm,
    the fault is journaled, nothing is sent."""
    s = Scripted(restored=journal(4, inflight={4: 2}))
    picking(
        s, seq_accepted=2, seq_done=2, result="fault", fault_code="interlock",
        state="fault",
    )  # fmt: skip

    actions = s.start()

    assert job_of(s)["state"] == "held"
    assert {a.code for a in alarms(actions)} >= {"job_held", "device_fault"}
    assert StepResult("j1", 4, TOWER, "shuttle-0", 2, "fault", "interlock") in (
        records(actions)
    )
    assert [c for c in commands(actions) if c.code != "reset"] == []


def test_heartbeat_lost_stop_is_reset_and_retried_under_a_new_sequence():
    """The PLC stopped the pick because the dead controller's heartbeat
    stopped; the car is still in the bay and the shuttle empty, as the
    journal says: the shuttle is reset and the pick goes again as seq 3."""
    s = Scripted(restored=journal(4, inflight={4: 2}))
    picking(
        s, seq_accepted=2, seq_done=2, result="fault",
        fault_code="heartbeat_lost", state="fault",
    )  # fmt: skip

    actions = s.start()
    again = s.report("shuttle-0", state="idle", fault_code="none")

    assert sent(actions) == [("shuttle-0", "reset", 0)]
    assert "job_held" not in {a.code for a in alarms(actions)}
    assert sent(again) == [("shuttle-0", "pick", 3)]
    assert StepIntent("j1", 4, TOWER, "shuttle-0", "pick", 0, "left", 3) in (
        records(again)
    )
    assert AlarmCleared(TOWER, "shuttle-0", "device_fault") in again
    assert job_of(s)["state"] == "running"


def test_heartbeat_lost_with_sensors_against_the_journal_holds_the_job():
    """Stopped for a lost heartbeat, but shuttle-0 reports loaded where the
    journal has the car in the bay: no retry; held, with alarms naming the
    car's ticket."""
    s = Scripted(restored=journal(4, inflight={4: 2}))
    picking(
        s, seq_accepted=2, seq_done=2, result="fault",
        fault_code="heartbeat_lost", state="fault", flags={"loaded": True},
    )  # fmt: skip

    actions = s.start()

    held = [a for a in alarms(actions) if a.code == "job_open"]
    assert job_of(s)["state"] == "held"
    assert [c for c in commands(actions) if c.code != "reset"] == []
    assert "load_mismatch" in {a.code for a in alarms(actions)}
    assert len(held) == 1
    assert TICKET in held[0].message


def test_loaded_flag_against_the_journal_holds_the_job_with_its_ticket():
    """The journal has the car on shuttle-0 (pick done) but shuttle-0
    reports empty: the job is held and the alarm names the ticket."""
    s = Scripted(restored=journal(5))
    picking(s, seq_accepted=2, seq_done=2)
    s.points[TOWER, "bay-1"]["flags"].update(vehicle_present=False)

    actions = s.start()

    codes = {a.code for a in alarms(actions)}
    held = next(a for a in alarms(actions) if a.code == "job_open")
    assert codes >= {"load_mismatch", "job_open"}
    assert TICKET in held.message
    assert job_of(s)["state"] == "held"
    assert commands(actions) == []


def test_restarted_plc_is_resynchronised_and_its_command_is_unknown():
    """shuttle-0 shows no sequence at all, though the journal sent it seq 2:
    it restarted. The pick's outcome is unknown: alarm, job held; the next
    command to shuttle-0 is numbered above the journal's."""
    s = Scripted(restored=journal(4, inflight={4: 2}))
    picking(s, seq_accepted=0, seq_done=0)

    actions = s.start()

    assert {a.code for a in alarms(actions)} >= {"plc_resync", "job_open"}
    assert job_of(s)["state"] == "held"
    assert commands(actions) == []
    assert s.core.towers[TOWER].links["shuttle-0"].next_seq() == 3


def test_plc_restarting_while_running_holds_its_job():
    """A status whose seq_accepted falls back to 0 while our command runs:
    the PLC restarted, the command is unknown, the job is held."""
    s = Scripted()
    s.start()
    s.car_in_bay()
    (chk,) = commands(s.handle(StoreRequested(TOWER, "bay-1", TICKET, "j1")))
    s.report("bay-1", seq_accepted=chk.seq, state="busy")

    actions = s.report("bay-1", seq_accepted=0, seq_done=0, state="idle")

    assert {a.code for a in alarms(actions)} == {"plc_resync", "job_held"}
    assert job_of(s)["state"] == "held"
    assert commands(actions) == []


def test_heartbeat_lost_while_running_is_retried():
    """A command stopped for a lost heartbeat while the controller runs (it
    stalled): the same proof and retry as after a restart."""
    s = Scripted()
    s.start()
    s.car_in_bay()
    (chk,) = commands(s.handle(StoreRequested(TOWER, "bay-1", TICKET, "j1")))
    s.report("bay-1", seq_accepted=chk.seq, state="busy")

    stopped = s.report(
        "bay-1", seq_done=chk.seq, result="fault", fault_code="heartbeat_lost",
        state="fault",
    )  # fmt: skip
    again = s.report("bay-1", state="idle", fault_code="none")

    assert sent(stopped) == [("bay-1", "reset", 0)]
    assert sent(again) == [("bay-1", "check", chk.seq + 1)]
    assert job_of(s)["state"] == "checking"


def test_retries_stop_after_the_limit():
    """A step stopped for a lost heartbeat again and again is held after
    its retries are used up."""
    s = Scripted()
    s.start()
    s.car_in_bay()
    (cmd,) = commands(s.handle(StoreRequested(TOWER, "bay-1", TICKET, "j1")))
    for _ in range(4):
        s.report(
            "bay-1", seq_accepted=cmd.seq, seq_done=cmd.seq, result="fault",
            fault_code="heartbeat_lost", state="fault",
        )  # fmt: skip
        again = commands(s.report("bay-1", state="idle", fault_code="none"))
        if not again:
            break
        (cmd,) = again

    assert job_of(s)["state"] == "held"
    assert "not retried: stopped 4 times" in job_of(s)["reason"]


def test_journaled_heartbeat_stop_is_retried_after_another_crash():
    """A crash after the stop was journaled, before the retry went out: the
    next start retries it (the PLC, already reset, shows idle)."""
    s = Scripted(restored=journal(4, inflight={4: 2}, faults={4: "heartbeat_lost"}))
    picking(s, seq_accepted=2, seq_done=2, result="fault")

    actions = s.start()

    assert sent(actions) == [("shuttle-0", "pick", 3)]
    assert job_of(s)["state"] == "running"


def test_superseded_intent_is_unknown():
    """The journal sent shuttle-0 a later sequence than the pick's: the
    pick's own outcome cannot be read from the PLC any more; held."""
    s = Scripted(
        restored=journal(4, inflight={4: 2}, last_seq={"shuttle-0": 5}),
    )
    picking(s, seq_accepted=5, seq_done=5)

    s.start()

    assert job_of(s)["state"] == "held"
    assert "was sent seq 5 after it" in job_of(s)["reason"]


def test_journal_that_does_not_match_the_plan_holds_the_job():
    """An intent that is not the plan's step (another version's plan): held."""
    state = journal(4, inflight={4: 2})
    (job,) = state.jobs
    wrong = StepIntent("j1", 4, TOWER, "shuttle-0", "pick", 0, "right", 2)
    state = RestoredState(
        cars=state.cars,
        jobs=[RestoredJob(
            "j1", TOWER, JobKind.STORE, TICKET, "bay-1", str(SLOT),
            (*job.intents[:-1], wrong), job.results,
        )],
        last_seq=state.last_seq,
    )  # fmt: skip
    s = Scripted(restored=state)
    picking(s)

    actions = s.start()

    assert job_of(s)["state"] == "held"
    assert "the plan has shuttle-0 pick left" in job_of(s)["reason"]
    assert sorted(a.code for a in alarms(actions)) == ["car_in_transit", "job_open"]


def test_store_requested_before_the_crash_starts_its_check():
    """A store accepted just before the crash (no step sent yet): it resumes
    from the start and checks the bay."""
    state = RestoredState(
        jobs=[RestoredJob("j1", TOWER, JobKind.STORE, TICKET, "bay-1", "")]
    )
    s = Scripted(restored=state)
    s.points[TOWER, "bay-1"]["flags"]["vehicle_present"] = True

    actions = s.start()

    assert sent(actions) == [("bay-1", "check", 1)]
    assert alarms(actions) == []


def test_retrieve_waiting_for_its_path_is_admitted():
    """A retrieve queued before the crash is admitted after it and runs."""
    state = RestoredState(
        cars={TICKET: (TOWER, "01-01-L", SizeClass.STANDARD)},
        jobs=[RestoredJob("j1", TOWER, JobKind.RETRIEVE, TICKET, "01-01-L", "bay-1")],
    )
    s = Scripted(restored=state)
    sensors = [False] * 32
    sensors[0] = True
    s.points[TOWER, "shuttle-1"]["slot_sensors"] = sensors

    actions = s.start()

    assert ("shuttle-1", "move", 1) in sent(actions)
    assert job_of(s)["state"] == "running"
    assert alarms(actions) == []


def test_retrieved_car_waiting_in_its_bay_raises_no_alarm():
    """A car the journal has in a bay with no job (retrieved, its driver on
    the way) is where it should be: no alarm at start."""
    state = RestoredState(cars={TICKET: (TOWER, "bay-1", SizeClass.STANDARD)})
    s = Scripted(restored=state)
    s.points[TOWER, "bay-1"]["flags"]["vehicle_present"] = True

    actions = s.start()

    assert alarms(actions) == []
    assert s.core.ticket(TICKET)["place"] == "bay-1"
    assert not [a for a in actions if isinstance(a, SendCommand)]


def test_restored_retrieve_keeps_the_bay_it_was_bound_to():
    """A retrieve bound to bay-1 whose bay steps had not started (its car was
    still on the level) and whose path is partly held by another restored job
    keeps bay-1: a driver who then stops at bay-1 is refused, so no new store
    can take the bay the retrieve holds to hand its car over."""
    site = SiteConfig(
        towers=[
            TowerConfig(
                id=TOWER,
                levels=3,
                columns=2,
                bays=[
                    BayConfig(id="bay-1", column=1, side=Side.LEFT),
                    BayConfig(id="bay-2", column=2, side=Side.RIGHT),
                ],
            )
        ]
    )
    bay_2 = site.towers[0].bays[1]
    store_steps = [*check(bay_2), *store(bay_2, SlotId(2, 1, Side.LEFT))][:3]
    storing = RestoredJob(
        "j1", TOWER, JobKind.STORE, "T1", "bay-2", "02-01-L",
        tuple(StepIntent("j1", i, TOWER, s.device, s.code, s.target, s.side, 1)
              for i, s in enumerate(store_steps)),
        tuple(StepResult("j1", i, TOWER, s.device, 1, "done", "none")
              for i, s in enumerate(store_steps)),
    )  # fmt: skip
    retrieving = RestoredJob(
        "j2", TOWER, JobKind.RETRIEVE, "T2", "01-01-L", "bay-1",
        (StepIntent("j2", 0, TOWER, "shuttle-1", "move", 1, "none", 1),),
        (StepResult("j2", 0, TOWER, "shuttle-1", 1, "done", "none"),),
    )  # fmt: skip
    state = RestoredState(
        cars={
            "T1": (TOWER, "bay-2", SizeClass.STANDARD),
            "T2": (TOWER, "01-01-L", SizeClass.STANDARD),
        },
        jobs=[storing, retrieving],
        last_seq={(TOWER, d): 1 for d in ("bay-2", "shuttle-0", "lift", "shuttle-1")},
    )
    s = Scripted(site, restored=state)
    done = {"seq_accepted": 1, "seq_done": 1, "result": "done"}
    s.points[TOWER, "bay-2"].update(done, vehicle_height_mm=1500)
    s.points[TOWER, "bay-2"]["flags"].update(vehicle_present=True, door_closed=True)
    s.points[TOWER, "shuttle-0"].update(done, column=2, position_mm=5200)
    s.points[TOWER, "lift"].update(done)
    s.points[TOWER, "shuttle-1"].update(done, column=1, position_mm=2600)
    s.points[TOWER, "shuttle-1"]["slot_sensors"][0] = True
    started = s.start()
    s.car_in_bay()

    with pytest.raises(RequestRefused) as refused:
        s.handle(StoreRequested(TOWER, "bay-1", "T3", "j3"))

    assert alarms(started) == []
    assert refused.value.code == "bay_busy"
    assert s.core.towers[TOWER].holders.get("bay-1") == "j2"


def parked_car() -> Scripted:
    """A started core with car T1 parked in 01-01-L (its sensor on)."""
    state = RestoredState(cars={TICKET: (TOWER, "01-01-L", SizeClass.STANDARD)})
    s = Scripted(restored=state)
    s.points[TOWER, "shuttle-1"]["slot_sensors"][0] = True
    s.start()
    return s


def test_retrieve_bay_check_refused_for_a_driver_goes_again_once_clear():
    """A driver pulls into the bay between the controller's last poll and
    the PLC's latch of a retrieve's bay check: the PLC refuses it
    (interlock). Nothing moved, so it is no fault to hold for: the bay is
    reset and stays the retrieve's (the driver's store is refused), and the
    check goes again under a new sequence once the bay is clear."""
    s = parked_car()
    started = s.handle(RetrieveRequested(TICKET, "j1", "bay-1"))
    (chk,) = [c for c in commands(started) if c.device == "bay-1"]

    refused = s.report(
        "bay-1", seq_accepted=chk.seq, seq_done=chk.seq, result="fault",
        fault_code="interlock", state="fault",
        flags={"vehicle_present": True, "person_present": True},
    )  # fmt: skip
    waiting = s.report("bay-1", state="idle", fault_code="none")
    with pytest.raises(RequestRefused) as store:
        s.handle(StoreRequested(TOWER, "bay-1", "T2", "j2"))
    again = s.report("bay-1", flags={"vehicle_present": False, "person_present": False})

    assert sent(refused) == [("bay-1", "reset", 0)]
    assert [a.code for a in alarms(refused) if a.code == "job_held"] == []
    assert [c for c in commands(waiting) if c.device == "bay-1"] == []
    assert store.value.code == "bay_busy"
    assert ("bay-1", "check", chk.seq + 1) in sent(again)
    assert job_of(s)["state"] == "running"


def test_store_bay_check_refused_for_a_person_goes_again_once_clear():
    """The driver walks back into the bay as its check latches: refused
    (interlock), reset, and checked again once nobody is inside."""
    s = Scripted()
    s.start()
    s.car_in_bay()
    (chk,) = commands(s.handle(StoreRequested(TOWER, "bay-1", TICKET, "j1")))

    refused = s.report(
        "bay-1", seq_accepted=chk.seq, seq_done=chk.seq, result="fault",
        fault_code="interlock", state="fault", flags={"person_present": True},
    )  # fmt: skip
    waiting = s.report("bay-1", state="idle", fault_code="none")
    again = s.report("bay-1", flags={"person_present": False})

    assert sent(refused) == [("bay-1", "reset", 0)]
    assert sent(waiting) == []
    assert sent(again) == [("bay-1", "check", chk.seq + 1)]
    assert job_of(s)["state"] == "checking"


def test_journaled_bay_check_refusal_is_retried_after_a_restart():
    """The refusal was journaled, then the controller died before the check
    went again: the restart asks again, it does not hold the job."""
    s = Scripted()
    s.start()
    s.car_in_bay()
    (chk,) = commands(s.handle(StoreRequested(TOWER, "bay-1", TICKET, "j1")))
    journaled = records(
        s.report(
            "bay-1", seq_accepted=chk.seq, seq_done=chk.seq, result="fault",
            fault_code="interlock", state="fault", flags={"person_present": True},
        )
    )  # fmt: skip
    intent = StepIntent("j1", 0, TOWER, "bay-1", "check", 0, "none", chk.seq)
    assert journaled == [
        StepResult("j1", 0, TOWER, "bay-1", chk.seq, "fault", "interlock")
    ]
    state = RestoredState(
        jobs=[
            RestoredJob(
                "j1", TOWER, JobKind.STORE, TICKET, "bay-1", "", (intent,),
                tuple(journaled),
            )
        ],
        last_seq={(TOWER, "bay-1"): chk.seq},
    )  # fmt: skip
    r = Scripted(restored=state)
    r.points[TOWER, "bay-1"] = dict(s.points[TOWER, "bay-1"])

    restarted = r.start()
    clear = {"person_present": False}
    again = r.report("bay-1", state="idle", fault_code="none", flags=clear)

    assert sent(restarted) == [("bay-1", "reset", 0)]
    assert [a for a in alarms(restarted) if a.code == "job_open"] == []
    assert sent(again) == [("bay-1", "check", chk.seq + 1)]
    assert job_of(r)["state"] == "checking"
