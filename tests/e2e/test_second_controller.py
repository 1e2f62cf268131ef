"""A second controller, with a journal of its own, started on the same PLCs.

Two masters would command the same machines from two inventories. Each one
reads its heartbeat register back before writing the next value; the other's
writes show there. Both raise `second_master` for every device and send no
command, until the second one is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from sim.rig import Rig
from tower.config import load_site
from tower.service import Controller, run_controller

SITES = Path(__file__).resolve().parents[2] / "sim" / "sites"


def _contested(controller: Controller) -> set[str]:
    alarms = controller.core.status()["alarms"] if controller.core else []
    return {a["device"] for a in alarms if a["code"] == "second_master"}


async def test_two_controllers_on_one_plant_both_stop_commanding(mosquitto, tmp_path):
    site = load_site(SITES / "reference.toml")
    async with Rig(site, mqtt_url=mosquitto.url, speed=10, poll_ms=20) as rig:
        first = rig.controller
        devices = set(rig.site.towers[0].device_names())
        second = Controller(
            rig.site,
            mqtt_url=mosquitto.url,
            journal_path=tmp_path / "other.db",
            socket_path=tmp_path / "other.sock",
            tokens_path=rig.workdir / "tokens",
            handle_signals=False,
        )
        task = asyncio.create_task(run_controller(second), name="test.second")
        try:
            await rig.wait_until(
                lambda: devices <= _contested(first) and devices <= _contested(second),
                timeout_s=30,
            )
            states = {t["state"] for t in first.core.status()["towers"]}
            assert states <= {"degraded", "starting"}
        finally:
            second.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=15)
        await rig.wait_until(lambda: not _contested(first), timeout_s=30)
        await rig.wait_until(
            lambda: all(t["state"] == "auto" for t in first.core.status()["towers"]),
            timeout_s=30,
        )
