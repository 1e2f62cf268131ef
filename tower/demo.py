"""`tower demo`: the simulator, the controller, visitors and the feed, in one go.

Runs the reference site (or the site given) on the plant model served over real
Modbus TCP on loopback, the real controller with a scratch journal and control
socket, and a seeded stream of visitors: cars arrive at the bays, are stored
through the control socket, and are asked for again after a visit. The feed goes
to the broker at 127.0.0.1:1883, or to the URL given, or, when no broker answers
on loopback, to an embedded fallback broker that the log names.

Visits in the demo are shortened (20 to 60 simulated minutes) so that cars come
back while someone watches; the zoo-day benchmark models real visit lengths.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from sim.plant import Car
from sim.rig import Rig
from tower.config import PolicyConfig, load_site
from tower.console.client import ControlError
from tower.feed.fallback_broker import FallbackBroker, probe_broker

_log = structlog.get_logger("tower.demo")

REFERENCE_SITE = Path(__file__).resolve().parent.parent / "sim/sites/reference.toml"
_LOOPBACK = ("127.", "localhost", "::1", "[::1]")


@dataclass
class DemoStats:
    """What the visitors saw, in simulated seconds."""

    stored: int = 0
    retrieved: int = 0
    refused: int = 0
    waits_s: list[float] = field(default_factory=list)

    @property
    def mean_wait_s(self) -> float:
        return sum(self.waits_s) / len(self.waits_s) if self.waits_s else 0.0


async def choose_broker(url: str | None) -> tuple[str, FallbackBroker | None]:
    """The broker to publish to: the one given, else loopback 1883, else a fallback."""
    url = url or os.environ.get("TOWER_MQTT_URL")
    if url:
        return url, None
    if await probe_broker("127.0.0.1", 1883):
        return "mqtt://127.0.0.1:1883", None
    broker = FallbackBroker()
    await broker.start()
    _log.warning(
        "demo.broker_fallback",
        reason="no MQTT broker answers on 127.0.0.1:1883",
        url=broker.url,
        broker="embedded fallback broker (tower.feed.fallback_broker)",
    )
    return broker.url, broker


class Visitors:
    """A seeded stream of arrivals and retrievals against a running rig."""

    def __init__(self, rig: Rig, seed: int, stats: DemoStats) -> None:
        self.rig = rig
        self.rng = random.Random(seed)
        self.stats = stats
        self._cars = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _new_car(self) -> Car:
        self._cars += 1
        tall = self.rng.random() < 0.1
        return Car(
            id=f"car-{self._cars:04d}",
            length_mm=self.rng.randint(3800, 4900),
            width_mm=self.rng.randint(1650, 1900),
            height_mm=self.rng.randint(1700, 1950)
            if tall
            else self.rng.randint(1400, 1580),
            weight_class=2 if tall else 1,
            driver_time_s=self.rng.uniform(45, 150),
        )

    async def run(self) -> None:
        """Keep every bay of the site busy with arrivals, then their retrievals."""
        async with asyncio.TaskGroup() as group:
            for tower in self.rig.site.towers:
                for bay in tower.bays:
                    group.create_task(
                        self._arrivals(tower.id, bay.id),
                        name=f"demo.arrivals[{tower.id}/{bay.id}]",
                    )

    async def _arrivals(self, tower: str, bay: str) -> None:
        while True:
            await self.rig.sleep_sim(self.rng.expovariate(1 / 240))
            car = self._new_car()
            try:
                ticket = await self.rig.arrive(tower, bay, car, timeout_s=3600)
            except ControlError as err:
                self.stats.refused += 1
                _log.info("demo.store_refused", tower=tower, bay=bay, code=err.code)
                await self._drive_off(tower, bay)
                continue
            self.stats.stored += 1
            visit_s = self.rng.uniform(20 * 60, 60 * 60)
            task = asyncio.create_task(
                self._visit(ticket, car, visit_s), name=f"demo.visit[{car.id}]"
            )
            self._tasks.add(task)
            task.add_done_callback(self._visit_ended)

    async def _drive_off(self, tower: str, bay: str) -> None:
        """A refused car is driven away again once its bay is open."""
        with contextlib.suppress(Exception):
            await self.rig.wait_until(
                lambda: (
                    self.rig.bay_ready(tower, bay)
                    or (
                        self.rig.driver_gone(tower, bay)
                        and not self.rig.plant.status(tower, bay)["flags"][
                            "door_closed"
                        ]
                    )
                ),
                timeout_s=600,
            )
            if not self.rig.bay_ready(tower, bay):
                await self.rig.collect(tower, bay)

    async def _visit(self, ticket: str, car: Car, visit_s: float) -> None:
        await self.rig.sleep_sim(visit_s)
        asked = self.rig.now()
        while True:
            try:
                result = await self.rig.ctl("retrieve", ticket=ticket)
                break
            except ControlError as err:
                # The car's store may still be running: ask again a bit later.
                if err.code != "ticket_in_use":
                    raise
                await self.rig.sleep_sim(30)
        tower = result["tower"]
        await self.rig.wait_until(
            lambda: self.rig.released_bay(tower, car.id) is not None, timeout_s=7200
        )
        self.stats.waits_s.append(self.rig.now() - asked)
        self.stats.retrieved += 1
        await self.rig.collect(tower, self.rig.released_bay(tower, car.id) or "")

    def _visit_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("demo.visit_failed", error=str(task.exception()))

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()


def _status_lines(rig: Rig, stats: DemoStats) -> list[str]:
    core = rig.controller.core if rig.controller else None
    if core is None:
        return ["controller not running"]
    status = core.status()
    jobs = core.jobs()
    sim_s = int(rig.now())
    clock = f"{sim_s // 3600:02d}:{sim_s % 3600 // 60:02d}:{sim_s % 60:02d}"
    lines = [
        f"simulated {clock}  (x{rig.speed:g})   stored {stats.stored}  "
        f"retrieved {stats.retrieved}  mean wait {stats.mean_wait_s:.0f} s  "
        f"jobs {len(jobs)}"
    ]
    for tower in status.get("towers", []):
        lines.append(
            f"  {tower['id']:<10} {tower['state']:<9} occupied {tower['occupied']:>3}"
            f"/{tower['capacity']:<3} free {tower['free']:>3}  ev {tower['free_ev']:>2}"
            f"  alarms {len(tower.get('alarms', []))}"
        )
    return lines


async def _live_view(rig: Rig, stats: DemoStats, *, tty: bool) -> None:
    shown = 0
    while True:
        lines = _status_lines(rig, stats)
        if tty:
            if shown:
                sys.stdout.write(f"\x1b[{shown}F")
            for line in lines:
                sys.stdout.write("\x1b[2K" + line + "\n")
            sys.stdout.flush()
            shown = len(lines)
        else:
            _log.info("demo.status", view=" | ".join(lines))
        await asyncio.sleep(1.0 if tty else 10.0)


def _mqtt_is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host.startswith(_LOOPBACK) or host in ("localhost", "::1")


async def run_demo(
    *,
    speed: float,
    hours: float | None,
    seed: int,
    mqtt_url: str | None,
    site_path: str | None,
    live: bool,
    policy: str | None = None,
) -> int:
    """Run the demo until Ctrl-C, or for `hours` simulated hours with a summary.

    `policy` overrides the site file's `policy.name`.
    """
    site = load_site(site_path or REFERENCE_SITE)
    if policy is not None:
        site = site.model_copy(update={"policy": PolicyConfig(name=policy)})
    url, broker = await choose_broker(mqtt_url)
    if not _mqtt_is_loopback(url):
        _log.warning("demo.remote_broker", url=url)
    # Poll faster when time runs faster, so the handshake keeps up.
    poll_ms = max(20, min(100, int(500 / speed)))
    stats = DemoStats()
    started = time.monotonic()
    try:
        async with Rig(site, mqtt_url=url, speed=speed, poll_ms=poll_ms) as rig:
            _log.info(
                "demo.started",
                towers=len(rig.site.towers),
                speed=speed,
                mqtt=url,
                topic_prefix=rig.site.mqtt.topic_prefix,
                socket=str(rig.socket_path),
                policy=rig.site.policy.name,
            )
            if live and sys.stdout.isatty():
                print(
                    f"tower demo: {len(rig.site.towers)} towers at x{speed:g}; feed on "
                    f"{url} ({rig.site.mqtt.topic_prefix}/#); control socket "
                    f"{rig.socket_path}; Ctrl-C stops with a summary"
                )
            visitors = Visitors(rig, seed, stats)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            tasks = [
                asyncio.create_task(visitors.run(), name="demo.visitors"),
                asyncio.create_task(stop.wait(), name="demo.stop"),
            ]
            if hours is not None:
                tasks.append(
                    asyncio.create_task(
                        rig.wait_until(
                            lambda: rig.now() >= hours * 3600,
                            timeout_s=hours * 3600 / speed + 60,
                            step_s=0.2,
                        ),
                        name="demo.hours",
                    )
                )
            if live:
                tasks.append(
                    asyncio.create_task(
                        _live_view(rig, stats, tty=sys.stdout.isatty()),
                        name="demo.view",
                    )
                )
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a visitor or the controller failing ends here
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
                for task in tasks:
                    task.cancel()
                visitors.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if broker is not None:
            await broker.close()
    print(
        f"demo summary: {stats.stored} cars stored, {stats.retrieved} retrieved, "
        f"mean retrieval wait {stats.mean_wait_s:.1f} s (simulated), "
        f"{stats.refused} refused, {time.monotonic() - started:.0f} s of real time"
    )
    return 0
