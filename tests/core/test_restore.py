"""Start after a restart: the journal's inventory against the sensors."""

from __future__ import annotations

from corekit import Scripted, alarms, commands, records

from tower.config import SizeClass
from tower.core import RestoredJob, RestoredState
from tower.core.events import ResetTower
from tower.core.records import JobKind, SlotBlocked


def sensors(*bits: int) -> list[bool]:
    seen = [False] * 32
    for bit in bits:
        seen[bit] = True
    return seen


def test_agreeing_sensors_start_the_tower_in_auto():
    """A car the journal and the sensor both put in 01-01-L: no alarm, auto."""
    restored = RestoredState(cars={"T1": ("tower-a", "01-01-L", SizeClass.STANDARD)})
    s = Scripted(restored=restored)
    s.points["tower-a", "shuttle-1"]["slot_sensors"] = sensors(0)

    actions = s.start()

    assert alarms(actions) == []
    assert s.core.status()["towers"][0]["state"] == "auto"
    assert s.core.ticket("T1")["place"] == "01-01-L"


def test_sensor_disagreement_blocks_the_slot_and_alarms():
    """The sensor sees a car the journal does not know (01-02-R), and misses
    one it knows (01-01-L): both slots are blocked with an alarm; the
    inventory keeps the journal's car."""
    restored = RestoredState(cars={"T1": ("tower-a", "01-01-L", SizeClass.STANDARD)})
    s = Scripted(restored=restored)
    s.points["tower-a", "shuttle-1"]["slot_sensors"] = sensors(3)

    actions = s.start()

    blocked = [r for r in records(actions) if isinstance(r, SlotBlocked)]
    assert sorted(r.slot for r in blocked) == ["01-01-L", "01-02-R"]
    assert sorted((a.device, a.code) for a in alarms(actions)) == [
        ("01-01-L", "slot_sensor_mismatch"), ("01-02-R", "slot_sensor_mismatch"),
    ]  # fmt: skip
    assert s.core.ticket("T1")["place"] == "01-01-L"
    tower = s.core.status()["towers"][0]
    assert (tower["state"], tower["closed"], tower["free"]) == ("auto", 2, 6)


def test_car_in_transit_and_open_job_are_held_for_an_operator():
    """A car the journal left on the lift, with its open job: an alarm names
    the lift, the job is held, the lift is not used by other jobs."""
    restored = RestoredState(
        cars={"T1": ("tower-a", "lift", SizeClass.STANDARD)},
        jobs=[RestoredJob("j1", "tower-a", JobKind.STORE, "T1", "bay-1", "02-01-L")],
    )
    s = Scripted(restored=restored)
    s.points["tower-a", "lift"]["flags"]["loaded"] = True

    actions = s.start()

    assert sorted((a.device, a.code) for a in alarms(actions)) == [
        ("j1", "job_open"), ("lift", "car_in_transit"),
    ]  # fmt: skip
    (job,) = s.core.jobs()
    assert job["state"] == "held"
    assert "lift" in job["holds"]


def test_estop_at_start_faults_the_tower_until_reset():
    """A device in e-stop: the tower goes to fault, not auto; after the reset
    and a clean status it starts."""
    s = Scripted()
    s.points["tower-a", "lift"]["state"] = "estop"

    s.start()
    assert s.core.status()["towers"][0]["state"] == "fault"
    resets = [c for c in commands(s.handle(ResetTower("tower-a"))) if c.code == "reset"]
    s.points["tower-a", "lift"]["state"] = "idle"
    s.start()

    assert [(a.device, a.code) for a in resets] == [("lift", "reset")]
    assert s.core.status()["towers"][0]["state"] == "auto"
