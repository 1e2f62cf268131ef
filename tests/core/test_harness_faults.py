"""Faults in the plant as the core meets them: PLC faults, e-stop, outages."""

from __future__ import annotations

from corekit import small_site

from sim.harness import Harness
from sim.plant import Car
from tower.config import BayConfig, Side
from tower.core.events import CancelJob, DeviceOffline, ResetTower
from tower.core.model import SlotId

TOWER = "tower-a"


def two_bay_site():
    site = small_site(levels=2, columns=2)
    tower = site.towers[0].model_copy(
        update={
            "bays": [
                BayConfig(id="bay-1", column=1, side=Side.LEFT),
                BayConfig(id="bay-2", column=1, side=Side.RIGHT),
            ]
        }
    )
    return site.model_copy(update={"towers": [tower]})


def test_plc_fault_holds_the_job_and_nothing_is_resent():
    """The ground shuttle faults halfway through its pick: the job is held
    with an alarm, no command goes to that shuttle again, and the inventory
    keeps the car where the plant has it."""
    h = Harness(small_site())
    h.plant.inject_fault(TOWER, "shuttle-0", "interlock")
    h.arrive(TOWER, "bay-1", Car("c1"))
    h.run_until(400)

    (job,) = h.core.jobs()
    faulted = [c for c in h.commands if c.device == "shuttle-0"]
    assert job["state"] == "held"
    assert {a.code for a in h.alarms} >= {"job_held", "device_fault"}
    assert len(faulted) == 1
    (ticket,) = h.core.inventory.cars
    assert h.core.ticket(ticket)["place"] == h.plant.where("c1")
    assert [k for k, n in h.plant.motions.items() if n > 1] == []


def test_estop_stops_every_command_until_reset():
    """E-stop mid-store: the tower goes to fault and sends nothing; after the
    button is released and the tower reset, it reconciles and runs again
    (the interrupted job stays held for an operator, who cancels it)."""
    h = Harness(small_site())
    h.arrive(TOWER, "bay-1", Car("c1"))
    h.run_until(75)  # the check is done, the car is on its way
    h.plant.press_estop(TOWER)
    h.run_until(76)
    sent = len(h.commands)

    h.run_until(200)
    assert h.core.status()["towers"][0]["state"] == "fault"
    assert len(h.commands) == sent
    h.plant.release_estop(TOWER)
    h.operate(ResetTower(TOWER))
    assert h.core.status()["towers"][0]["state"] == "auto"
    (job,) = h.core.jobs()
    assert job["state"] == "held"
    h.operate(CancelJob(job["job_id"]))
    assert h.core.jobs() == []


class Slots:
    """An allocator that hands out the slots of a list, in order."""

    def __init__(self, *names: str) -> None:
        self.slots = [SlotId.parse(name) for name in names]

    def choose(self, tower, size_class):
        return self.slots.pop(0)


def test_offline_level_shuttle_degrades_the_tower_and_only_its_jobs_wait():
    """Shuttle 2 drops off the link: the tower is degraded, the car on level 1
    still comes back; the car on level 2 comes once shuttle 2 answers again."""
    h = Harness(two_bay_site(), allocator=Slots("01-01-L", "02-01-L"))
    low = h.arrive(TOWER, "bay-1", Car("low"))
    high = h.arrive(TOWER, "bay-2", Car("high"))
    h.run_until_idle(limit=1000)
    h.operate(DeviceOffline(TOWER, "shuttle-2", "refused"), poll=False)
    assert h.core.status()["towers"][0]["state"] == "degraded"

    h.retrieve(high)
    h.retrieve(low)
    h.run_until(h.now + 600)

    assert h.delivered == {low: "low"}
    assert h.core.jobs()[0]["state"] == "waiting_path"
    h.poll()  # shuttle 2 answers again
    h.run_until_idle(limit=h.now + 2000)
    assert h.delivered == {low: "low", high: "high"}
    assert h.core.status()["towers"][0]["state"] == "auto"
