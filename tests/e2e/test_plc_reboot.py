"""Every PLC of a tower reboots while a car rides the lift.

The machines keep the car where it is, but the PLCs come back with their
handshake counting from zero: the controller cannot know what became of its
command in flight. It must say so (`plc_resync`), hold the job with the car
where the journal and the sensors have it, and never send a motion again
blindly; the operator then puts things right by hand and the car comes back
to its visitor. Over Modbus TCP to the simulator, with a real Mosquitto.
"""

from __future__ import annotations

from pathlib import Path

from sim.plant import Car
from sim.rig import Rig
from tower.config import load_site

SITES = Path(__file__).resolve().parents[2] / "sim" / "sites"
TOWER = "tower-a"


def _alarms(rig: Rig, code: str) -> set[str]:
    return {
        a["device"]
        for a in rig.controller.core.status()["alarms"]
        if a["code"] == code and a["tower"] == TOWER
    }


async def test_plcs_rebooting_under_a_moving_car_lose_no_car(mosquitto):
    site = load_site(SITES / "reference.toml")
    async with Rig(site, mqtt_url=mosquitto.url, speed=20, poll_ms=20) as rig:
        core = rig.controller.core
        ticket = await rig.arrive(TOWER, "bay-1", Car("c1", driver_time_s=5.0))
        await rig.wait_until(
            lambda: (
                rig.plant.where("c1") == "lift"
                and rig.plant.status(TOWER, "lift")["state"] == "busy"
            ),
            timeout_s=60,
        )
        rig._sim.sync()
        for device in rig.site.tower(TOWER).device_names():
            rig.plant.reboot(TOWER, device)
        motions = dict(rig.plant.motions)

        await rig.wait_until(lambda: "lift" in _alarms(rig, "plc_resync"), timeout_s=30)
        await rig.wait_until(
            lambda: [j["state"] for j in core.jobs()] == ["held"], timeout_s=30
        )
        await rig.sleep_sim(60)
        # Nothing moved blindly after the reboot, and the car is accounted.
        assert rig.plant.motions == motions
        assert rig.plant.where("c1") == "lift"
        assert core.ticket(ticket)["place"] == "lift"

        # The operator: cancel the held job (the car stays on the lift, which
        # is out of use), move the car into a slot by hand, say so, go back.
        (job,) = core.jobs()
        await rig.ctl("reset", tower=TOWER)
        await rig.ctl("cancel", job_id=job["job_id"])
        await rig.wait_until(
            lambda: "lift" in _alarms(rig, "car_stranded"), timeout_s=30
        )
        await rig.ctl("mode", tower=TOWER, mode="manual")
        rig._sim.sync()
        rig.plant.move_by_hand("c1", "01-01-L")
        await rig.wait_until(
            lambda: core.towers[TOWER].links["shuttle-1"].status["slot_sensors"][0],
            timeout_s=10,
        )
        await rig.ctl("place", ticket=ticket, place="01-01-L")
        await rig.ctl("mode", tower=TOWER, mode="auto")
        await rig.wait_until(
            lambda: core.status()["towers"][0]["state"] == "auto", timeout_s=30
        )

        await rig.ctl("retrieve", ticket=ticket)
        await rig.wait_until(lambda: rig.released_bay(TOWER, "c1"), timeout_s=120)
        collected = await rig.collect(TOWER, rig.released_bay(TOWER, "c1"))
    assert collected.id == "c1"
    assert [k for k, n in rig.plant.motions.items() if n > 1] == []
