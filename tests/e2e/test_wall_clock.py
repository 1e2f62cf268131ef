"""The wall clock steps while the tower works, and nothing breaks.

A controller without a real-time clock boots with a stale date; later the
time service corrects it, years forward, and then a little backward. Every
timer in the controller runs on monotonic time (the driver's polls and
deadlines, the core's acceptance and completion timeouts, the heartbeat
watch), so the steps may only show in the journal's and the feed's
timestamps. Here the wall clock the journal, the feed and `time.time()` see
is moved by years in the middle of a store and of a retrieval, over Modbus
TCP to the simulator and MQTT to a real Mosquitto.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sim.plant import Car
from sim.rig import Rig
from tower.config import load_site
from tower.feed import publisher
from tower.store import journal as journal_module
from tower.store.journal import Journal

SITES = Path(__file__).resolve().parents[2] / "sim" / "sites"
TOWER = "tower-a"


class WallClock:
    """The machine's wall clock, set `offset` away from the true time."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset
        self._real_time = time.time

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def time(self) -> float:
        return self._real_time() + self.offset.total_seconds()


async def test_jobs_and_tickets_survive_wall_clock_steps(
    mosquitto, monkeypatch, tmp_path
):
    clock = WallClock(timedelta(days=-6 * 365))  # booted with a stale date
    monkeypatch.setattr(journal_module, "_utc_now", clock.now)
    monkeypatch.setattr(publisher, "_utc_now", clock.now)
    monkeypatch.setattr(time, "time", clock.time)
    site = load_site(SITES / "reference.toml")

    async with Rig(site, mqtt_url=mosquitto.url, speed=40, poll_ms=20,
                   workdir=tmp_path) as rig:  # fmt: skip
        ticket = await rig.arrive(TOWER, "bay-1", Car("c1", driver_time_s=5.0))
        await rig.wait_until(lambda: rig.plant.where("c1") == "lift", timeout_s=60)
        clock.offset = timedelta(0)  # the time service syncs: six years forward
        await rig.wait_until(
            lambda: (rig.plant.where("c1") or "").count("-") == 2, timeout_s=120
        )
        await rig.wait_until(lambda: not rig.controller.core.jobs(), timeout_s=60)

        await rig.ctl("retrieve", ticket=ticket)
        await rig.wait_until(lambda: rig.plant.where("c1") == "lift", timeout_s=120)
        clock.offset = timedelta(hours=-1)  # and a correction an hour back
        await rig.wait_until(
            lambda: rig.released_bay(TOWER, "c1") is not None, timeout_s=120
        )
        collected = await rig.collect(TOWER, rig.released_bay(TOWER, "c1"))
        await rig.wait_until(lambda: not rig.controller.core.jobs(), timeout_s=60)
        # The ticket closes once the bay reports the car gone.
        inventory = rig.controller.core.inventory
        await rig.wait_until(lambda: ticket not in inventory.cars, timeout_s=30)
        alarms = rig.controller.core.status()["alarms"]

        # A restart reads the journal written across the steps.
        await rig.stop_controller()
        await rig.start_controller()
        restarted = rig.controller.core.status()

    assert collected.id == "c1"
    assert alarms == []
    assert restarted["alarms"] == []
    assert restarted["towers"][0]["occupied"] == 0
    assert [k for k, n in rig.plant.motions.items() if n > 1] == []
    with Journal.open(tmp_path / "journal.db", readonly=True) as journal:
        (issued,) = journal.tickets()
        jobs = journal.jobs()
    assert issued["ticket"] == ticket
    assert issued["closed_at"] is not None
    # The journal kept the clock's word, steps and all: the store was
    # created six years back, the retrieval finished before it had started.
    store, retrieve = (j for j in jobs if j["kind"] in ("store", "retrieve"))
    last_year = str(datetime.now(UTC).year - 1)
    assert store["created_at"] < last_year < store["finished_at"]
    assert [j["outcome"] for j in (store, retrieve)] == ["done", "done"]
    assert retrieve["finished_at"] < retrieve["created_at"]
