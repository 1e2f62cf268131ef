"""Maintenance corrections over the control socket, against the simulator.

The controller starts to find a car in a slot its journal has never heard
of: the slot is blocked. Maintenance takes the car out by hand in manual and
returns the slot to service with `unblock`; each step is refused, with its
reason, until the sensors agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.plant import Car
from sim.rig import Rig
from tower.config import load_site
from tower.console.client import ControlError

SITES = Path(__file__).resolve().parents[2] / "sim" / "sites"
TOWER = "tower-a"
SLOT = "02-03-L"


async def test_a_stray_car_blocks_its_slot_until_maintenance_clears_it(mosquitto):
    site = load_site(SITES / "reference.toml")
    rig = Rig(site, mqtt_url=mosquitto.url, speed=10, poll_ms=20)
    rig.plant.seed_car(TOWER, SLOT, Car("stray"))
    async with rig:
        core = rig.controller.core
        assert core.status()["towers"][0]["closed"] == 1
        assert any(a["device"] == SLOT for a in core.status()["alarms"])

        with pytest.raises(ControlError) as refused:
            await rig.ctl("unblock", tower=TOWER, slot=SLOT)
        assert refused.value.code == "sensor_disagrees"
        with pytest.raises(ControlError) as refused:
            await rig.ctl("remove", ticket="NO-SUCH-TICKET")
        assert refused.value.code == "unknown_ticket"
        with pytest.raises(ControlError) as refused:
            await rig.ctl("unblock", tower="tower-z", slot=SLOT)
        assert refused.value.code == "unknown_tower"

        await rig.ctl("mode", tower=TOWER, mode="manual")
        rig.plant.move_by_hand("stray", None)
        level = f"shuttle-{int(SLOT[:2])}"
        await rig.wait_until(
            # 02-03-L is bit 4 of its level shuttle's slot sensors.
            lambda: not core.towers[TOWER].links[level].status["slot_sensors"][4],
            timeout_s=10,
        )
        reply = await rig.ctl("unblock", tower=TOWER, slot=SLOT)
        assert reply == {"tower": TOWER, "unblocked": SLOT}
        await rig.ctl("mode", tower=TOWER, mode="auto")
        await rig.wait_until(
            lambda: core.status()["towers"][0]["state"] == "auto", timeout_s=10
        )
        assert core.status()["towers"][0]["closed"] == 0
        assert not any(a["device"] == SLOT for a in core.status()["alarms"])
        audit = await rig.controller.journal.audit_log()
    assert [(a["command"], a["outcome"]) for a in audit[:2]] == [
        ("mode", "ok"),
        ("unblock", "ok"),
    ]
