"""What an operator does about a stopped job or a car out of place.

Cancelling a held job hands its car back to its driver when the car is in a
bay, and waits while one of the job's commands still runs.
"""

from __future__ import annotations

import pytest
from corekit import small_site

from sim.harness import Harness
from sim.plant import Car
from tower.core.errors import RequestRefused
from tower.core.events import CancelJob, ResetTower
from tower.core.model import SlotId

TOWER = "tower-a"


def bay_flags(h: Harness) -> dict:
    return h.plant.status(TOWER, "bay-1")["flags"]


def held_job(h: Harness) -> dict:
    (job,) = h.core.jobs()
    assert job["state"] == "held", job
    return job


def test_cancel_of_a_held_store_opens_the_bay_for_the_driver():
    """The ground shuttle faults picking the car from the bay: the job is
    held with the car still in the bay behind a closed door. After a reset,
    the cancel opens the door; the driver takes the car, its ticket closes,
    and the next car is stored as usual."""
    h = Harness(small_site())
    h.plant.inject_fault(TOWER, "shuttle-0", "interlock")
    first = h.arrive(TOWER, "bay-1", Car("c1"))
    h.run_until(400)
    job = held_job(h)
    assert h.plant.where("c1") == "bay-1"
    assert bay_flags(h)["door_closed"]

    h.operate(ResetTower(TOWER))
    h.operate(CancelJob(job["job_id"]))
    h.run_until(h.now + 60)

    assert h.core.jobs() == []
    assert h.plant.where("c1") is None  # the driver drove it away
    assert first not in h.core.inventory.cars
    second = h.arrive(TOWER, "bay-1", Car("c2"))
    h.run_until_idle(limit=h.now + 1000)
    assert h.core.ticket(second)["place"] == h.plant.where("c2")
    assert h.plant.where("c2") not in (None, "bay-1")


def test_cancel_of_a_store_held_in_its_bay_check_opens_the_bay():
    """The bay faults during its check (the car is not measured, so not in
    custody): after a reset, a cancel releases the bay to the driver."""
    h = Harness(small_site())
    h.plant.inject_fault(TOWER, "bay-1", "interlock")
    h.arrive(TOWER, "bay-1", Car("c1"))
    h.run_until(300)
    job = held_job(h)
    assert h.core.inventory.cars == {}
    assert bay_flags(h)["vehicle_present"]

    h.operate(ResetTower(TOWER))
    h.operate(CancelJob(job["job_id"]))
    h.run_until(h.now + 60)

    assert h.core.jobs() == []
    assert h.plant.where("c1") is None
    releases = [c for c in h.commands if c.device == "bay-1" and c.code == "release"]
    assert releases, "the bay was never released"


class Slots:
    """An allocator that hands out the slots of a list, in order."""

    def __init__(self, *names: str) -> None:
        self.slots = [SlotId.parse(name) for name in names]

    def choose(self, tower, size_class):
        return self.slots.pop(0)


def running_steps(h: Harness, job_id: str) -> list[str]:
    steps = h.core.open_jobs[job_id].steps
    return [s.device for s in steps if s.state.value in ("sent", "accepted")]


def test_cancel_waits_while_a_command_of_the_held_job_runs():
    """The ground shuttle faults picking the second car while the lift still
    comes down from the first car's level for it: the job is held with the
    lift's move out. The cancel is refused until the PLC has reported that
    move too, so nothing runs under a job that is gone."""
    h = Harness(small_site(levels=6), allocator=Slots("06-01-L", "01-01-L"))
    h.arrive(TOWER, "bay-1", Car("c1"))
    h.run_until_idle(limit=1000)
    h.plant.inject_fault(TOWER, "shuttle-0", "interlock")
    h.arrive(TOWER, "bay-1", Car("c2"))
    while not h.core.jobs() or h.core.jobs()[0]["state"] != "held":
        h.run_until(h.now + 0.2)
        assert h.now < 2000, "the pick never faulted"
    job_id = held_job(h)["job_id"]
    assert running_steps(h, job_id) == ["lift"]

    with pytest.raises(RequestRefused) as refused:
        h.operate(CancelJob(job_id))
    assert refused.value.code == "job_running"
    assert "lift" in refused.value.message

    while running_steps(h, job_id):
        h.run_until(h.now + 0.2)
    h.operate(ResetTower(TOWER))
    h.operate(CancelJob(job_id))
    h.run_until(h.now + 120)
    assert h.core.jobs() == []
    assert h.plant.where("c2") is None  # handed back through the bay
