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
from tower.core.events import (
    CancelJob,
    PlaceCar,
    RemoveCar,
    ResetTower,
    RetrieveRequested,
    SetMode,
    UnblockSlot,
)
from tower.core.model import SlotId
from tower.core.records import CarMoved, SlotUnblocked, TicketClosed

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
    h.plant.inject_fault(TOWER, "bay-1", "bad_command")
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


def strand_on_lift(h: Harness) -> str:
    """Store a car and fault the lift while it carries it; cancel the held
    job: the car is stranded on the lift. Returns its ticket."""
    ticket = h.arrive(TOWER, "bay-1", Car("c1"))
    while h.plant.where("c1") != "shuttle-0":
        h.run_until(h.now + 0.2)
        assert h.now < 1000, "the car never left the bay"
    assert "lift" not in running_steps(h, h.core.jobs()[0]["job_id"])
    h.plant.inject_fault(TOWER, "lift", "interlock")
    while not h.core.jobs() or h.core.jobs()[0]["state"] != "held":
        h.run_until(h.now + 0.2)
        assert h.now < 2000, "the lift never faulted"
    assert h.plant.where("c1") == "lift"
    job_id = held_job(h)["job_id"]
    while running_steps(h, job_id):
        h.run_until(h.now + 0.2)
    h.operate(CancelJob(job_id))
    assert h.core.jobs() == []
    assert h.core.ticket(ticket)["place"] == "lift"
    return ticket


def alarm_codes(h: Harness) -> set[tuple[str, str]]:
    return {(a["device"], a["code"]) for a in h.core.status()["alarms"]}


def test_a_car_stranded_on_the_lift_is_put_back_by_hand_and_the_lift_returns():
    """A cancelled job left its car on the lift, which is out of use. In
    manual, maintenance moves the car into a slot by hand and says so: the
    inventory follows (journaled), the lift is usable again, and back in
    auto the car is retrieved from that slot."""
    h = Harness(small_site(levels=4))
    ticket = strand_on_lift(h)
    assert ("lift", "car_stranded") in alarm_codes(h)

    h.operate(SetMode(TOWER, "manual"))
    h.plant.move_by_hand("c1", "02-02-R")
    h.poll()
    h.operate(PlaceCar(ticket, "02-02-R"))

    assert h.core.ticket(ticket)["place"] == "02-02-R"
    assert ("lift", "car_stranded") not in alarm_codes(h)
    assert CarMoved(ticket, TOWER, "02-02-R") in h.records
    h.operate(ResetTower(TOWER))
    h.operate(SetMode(TOWER, "auto"))
    assert h.core.status()["towers"][0]["state"] == "auto"
    h.retrieve(ticket)
    h.run_until_idle(limit=h.now + 1000)
    assert h.delivered == {ticket: "c1"}


def test_hand_corrections_are_refused_unless_the_sensors_agree():
    """Each correction names what stands in its way, and changes nothing."""
    h = Harness(small_site(levels=4))
    ticket = strand_on_lift(h)

    def refused(event) -> str:
        with pytest.raises(RequestRefused) as err:
            h.operate(event)
        return err.value.code

    assert refused(PlaceCar(ticket, "02-02-R")) == "tower_not_manual"
    h.operate(SetMode(TOWER, "manual"))
    records = len(h.records)
    assert refused(PlaceCar("T-NOBODY", "02-02-R")) == "unknown_ticket"
    assert refused(PlaceCar(ticket, "09-09-L")) == "unknown_place"
    # Nobody moved the car: the slot's sensor shows none, the lift still has it.
    assert refused(PlaceCar(ticket, "02-02-R")) == "sensor_disagrees"
    assert refused(RemoveCar(ticket)) == "sensor_disagrees"
    h.plant.move_by_hand("c1", "01-01-L")
    h.poll()
    assert refused(PlaceCar(ticket, "02-02-R")) == "sensor_disagrees"
    assert len(h.records) == records
    assert h.core.ticket(ticket)["place"] == "lift"
    assert refused(PlaceCar(ticket, "tower-z/01-01-L")) == "wrong_tower"
    h.operate(PlaceCar(ticket, f"{TOWER}/01-01-L"))  # the tower may be named
    assert h.core.ticket(ticket)["place"] == "01-01-L"
    assert refused(PlaceCar(ticket, "01-01-L")) == "same_place"


def test_a_car_taken_out_by_hand_closes_its_ticket():
    """The stranded car is pushed out of the tower by hand: maintenance
    removes it from custody; its ticket closes and is not retrievable."""
    h = Harness(small_site(levels=4))
    ticket = strand_on_lift(h)
    h.operate(SetMode(TOWER, "manual"))
    h.plant.move_by_hand("c1", None)
    h.poll()
    h.operate(RemoveCar(ticket))
    assert TicketClosed(ticket) in h.records
    assert ticket not in h.core.inventory.cars
    assert ("lift", "car_stranded") not in alarm_codes(h)
    h.operate(ResetTower(TOWER))
    h.operate(SetMode(TOWER, "auto"))
    with pytest.raises(RequestRefused) as err:
        h.operate(RetrieveRequested(ticket, "j-late"))
    assert err.value.code == "unknown_ticket"


def test_a_blocked_slot_returns_to_service_once_sensor_and_inventory_agree():
    """Back from manual, the audit finds a car nobody journaled in slot
    01-02-R: the slot is blocked with an alarm. Unblocking is refused while
    the sensor still shows the car; once it is taken out, the slot returns to
    service (journaled) and its alarm clears."""
    h = Harness(small_site(levels=2))
    h.operate(SetMode(TOWER, "manual"))
    h.plant.seed_car(TOWER, "01-02-R", Car("stray"))
    h.poll()
    h.operate(SetMode(TOWER, "auto"))
    tower = h.core.status()["towers"][0]
    assert tower["state"] == "auto"
    assert tower["closed"] == 1
    assert any(device == "01-02-R" for device, _code in alarm_codes(h))

    with pytest.raises(RequestRefused) as err:
        h.operate(UnblockSlot(TOWER, "01-02-R"))
    assert err.value.code == "sensor_disagrees"

    h.plant.move_by_hand("stray", None)
    h.poll()
    h.operate(UnblockSlot(TOWER, "01-02-R"))
    assert SlotUnblocked(TOWER, "01-02-R") in h.records
    assert h.core.status()["towers"][0]["closed"] == 0
    assert not any(device == "01-02-R" for device, _code in alarm_codes(h))


def test_a_car_moved_by_hand_unannounced_is_found_on_return_to_auto():
    """In manual, someone moves a parked car to another slot and says
    nothing. Back to auto the audit compares every slot sensor with the
    journal: both slots are blocked with alarms, the inventory is left as it
    was (never overwritten from a sensor), and the rest of the tower works.
    Maintenance then says where the car is: both slots return to service and
    the car comes back from where it really is."""
    h = Harness(small_site(levels=3), allocator=Slots("01-01-L", "03-02-R"))
    moved = h.arrive(TOWER, "bay-1", Car("moved"))
    other = h.arrive(TOWER, "bay-1", Car("other"))
    h.run_until_idle(limit=2000)
    assert h.core.ticket(moved)["place"] == "01-01-L"

    h.operate(SetMode(TOWER, "manual"))
    h.plant.move_by_hand("moved", "02-01-R")
    h.poll()
    h.operate(SetMode(TOWER, "auto"))

    tower = h.core.status()["towers"][0]
    assert tower["state"] == "auto"
    blocked = {device for device, _code in alarm_codes(h)}
    assert {"01-01-L", "02-01-R"} <= blocked
    assert h.core.ticket(moved)["place"] == "01-01-L"  # not taken from a sensor
    h.retrieve(other)
    h.run_until_idle(limit=h.now + 1000)
    assert h.delivered == {other: "other"}

    h.operate(SetMode(TOWER, "manual"))
    h.operate(PlaceCar(moved, "02-01-R"))
    assert not {"01-01-L", "02-01-R"} & {d for d, _c in alarm_codes(h)}
    h.operate(SetMode(TOWER, "auto"))
    assert h.core.status()["towers"][0]["closed"] == 0
    h.retrieve(moved)
    h.run_until_idle(limit=h.now + 1000)
    assert h.delivered[moved] == "moved"
