"""The command handshake as the core judges it, on scripted PLC statuses."""

from __future__ import annotations

from corekit import Scripted, alarms, commands, records

from tower.core import RestoredState
from tower.core.actions import Persist, ReadStatus, SendCommand
from tower.core.events import CommandWriteFailed, StoreRequested, Tick
from tower.core.records import StepIntent, StepResult, TicketIssued

STORE = StoreRequested("tower-a", "bay-1", "T1", "j1")


def checking(s: Scripted) -> SendCommand:
    """Start the tower, put a car in the bay, ask to store it: the check goes out."""
    s.start()
    s.car_in_bay()
    (check,) = commands(s.handle(STORE))
    return check


def step_states(s: Scripted) -> list[str]:
    (job,) = s.core.jobs()
    return [step["state"] for step in job["steps"]]


def test_check_waits_for_the_driver_to_leave_the_bay():
    """A store is accepted with the driver still in the bay, but the check is
    only sent once nobody is inside."""
    s = Scripted()
    s.start()
    s.car_in_bay(person=True)

    assert commands(s.handle(STORE)) == []
    sent = commands(s.report("bay-1", flags={"person_present": False}))

    assert [(c.device, c.code, c.seq) for c in sent] == [("bay-1", "check", 1)]


def test_step_intent_is_persisted_before_its_command():
    """The journal record of a step comes before the command in the actions."""
    s = Scripted()
    s.start()
    s.car_in_bay()

    actions = s.handle(STORE)

    kinds = [type(a.record) if isinstance(a, Persist) else type(a) for a in actions]
    assert kinds.index(StepIntent) < kinds.index(SendCommand)


def test_stale_status_is_ignored():
    """A status naming another sequence changes nothing about the command."""
    s = Scripted()
    check = checking(s)

    actions = s.report("bay-1", seq_accepted=check.seq - 1, heartbeat=5)

    assert commands(actions) == []
    assert step_states(s) == ["sent"]


def test_accepted_then_done_runs_the_plan():
    """seq_accepted marks the step accepted; seq_done with result done ends
    it, and the measured car gets its ticket, a slot and its first motions."""
    s = Scripted()
    check = checking(s)

    s.report("bay-1", seq_accepted=check.seq, state="busy")
    assert step_states(s) == ["accepted"]
    actions = s.report(
        "bay-1", seq_done=check.seq, result="done", state="idle",
        flags={"door_closed": True},
    )  # fmt: skip

    assert [type(r).__name__ for r in records(actions)][:3] == [
        "StepResult", "TicketIssued", "CarMoved",
    ]  # fmt: skip
    issued = next(r for r in records(actions) if isinstance(r, TicketIssued))
    assert issued.size_class == "standard"
    assert sorted((c.device, c.code, c.target) for c in commands(actions)) == [
        ("lift", "move", 0), ("shuttle-0", "move", 1), ("shuttle-1", "move", 0),
    ]  # fmt: skip


def test_fault_raises_an_alarm_and_the_job_waits():
    """A command ending in a fault holds the job with an alarm; nothing is
    resent and the faulted device gets no new command."""
    s = Scripted()
    check = checking(s)

    actions = s.report(
        "bay-1", seq_accepted=check.seq, seq_done=check.seq, result="fault",
        fault_code="bad_command", state="fault",
    )  # fmt: skip

    assert {a.code for a in alarms(actions)} >= {"job_held", "device_fault"}
    result = next(r for r in records(actions) if isinstance(r, StepResult))
    assert (result.outcome, result.fault_code) == ("fault", "bad_command")
    assert s.core.jobs()[0]["state"] == "held"
    assert commands(s.report("bay-1", state="idle", fault_code="none")) == []


def test_unaccepted_command_alarms_and_asks_for_a_fresh_status():
    """No echo within the acceptance deadline: an alarm and a re-read, never a
    resend; a late acceptance clears the alarm."""
    s = Scripted()
    check = checking(s)
    deadline = s.core.next_deadline()

    s.now = deadline
    actions = s.handle(Tick())

    assert deadline == 3.0
    assert [a.code for a in alarms(actions)] == ["accept_timeout"]
    assert ReadStatus("tower-a", "bay-1") in actions
    assert commands(actions) == []
    late = s.report("bay-1", seq_accepted=check.seq, state="busy")
    assert [a.code for a in late if type(a).__name__ == "AlarmCleared"] == [
        "accept_timeout"
    ]


def test_failed_write_is_resent_once_with_the_same_sequence():
    """After a failed write the same command (same seq) goes once more; a
    second failure raises an alarm instead."""
    s = Scripted()
    check = checking(s)
    failed = CommandWriteFailed("tower-a", "bay-1", check.seq, "timeout")

    again = commands(s.handle(failed))
    twice = s.handle(failed)

    assert again == [check]
    assert commands(twice) == []
    assert [a.code for a in alarms(twice)] == ["write_failed"]


def test_done_not_reported_in_time_raises_an_alarm():
    """A command accepted but not done within command_timeout_s alarms."""
    s = Scripted()
    check = checking(s)
    s.report("bay-1", seq_accepted=check.seq, state="busy")

    s.now = s.site.poll.command_timeout_s
    actions = s.handle(Tick())

    assert [a.code for a in alarms(actions)] == ["done_timeout"]


def test_sequence_continues_from_the_journal_and_wraps_past_zero():
    """After a restart the next sequence follows the journal's last one, and
    65535 is followed by 1, never 0."""
    restored = RestoredState(last_seq={("tower-a", "bay-1"): 65535})
    s = Scripted(restored=restored)

    check = checking(s)

    assert check.seq == 1
    assert s.core.towers["tower-a"].links["bay-1"].seq == 1


def test_sequence_skips_what_the_plc_already_shows():
    """A sequence the PLC already shows as accepted is never reused (it would
    be ignored)."""
    s = Scripted(restored=RestoredState(last_seq={("tower-a", "bay-1"): 6}))
    s.points["tower-a", "bay-1"].update(seq_accepted=7, seq_done=7, result="done")

    check = checking(s)

    assert check.seq == 8


def test_heartbeat_standing_still_takes_the_device_offline():
    """With the heartbeat watch on, a heartbeat that stops moving for longer
    than the timeout makes the device offline and the tower degraded."""
    s = Scripted(heartbeat_timeout_s=3.0)
    s.start()

    s.now = s.core.next_deadline()
    actions = s.handle(Tick())

    assert {a.code for a in alarms(actions)} == {"device_offline"}
    assert s.core.status()["towers"][0]["state"] == "degraded"
    s.now += 0.5
    for device in ("lift", "shuttle-0", "shuttle-1", "shuttle-2", "bay-1"):
        s.report(device, heartbeat=1)
    assert s.core.status()["towers"][0]["state"] == "auto"
