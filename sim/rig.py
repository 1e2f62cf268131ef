"""A whole simulated site in one process: plant, Modbus simulator and controller.

The rig is what `tower demo` and the end-to-end tests run: the plant model served
over real Modbus TCP on loopback (free ports picked at start), the real controller
with a real SQLite journal and control socket in a scratch directory, and the
occupancy feed aimed at the broker given. It also plays the visitors: a car
arrives at a bay (`arrive`), the operator stores it through the control socket,
and a driver collects a retrieved car when its bay opens (`collect`).

Times the rig reports are plant (simulated) seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim.plant import Car, Plant
from sim.server import serve
from tower.config import SiteConfig, TowerConfig
from tower.console.client import ControlError, request
from tower.service import Controller, run_controller

_PORT_SPAN = 60  # ports one tower may use above its port_base


def _ports_free(base: int, count: int) -> bool:
    for port in range(base, base + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_bases(count: int, *, start: int = 20000) -> list[int]:
    """Port bases for `count` towers whose whole port span is free on loopback."""
    bases: list[int] = []
    base = start + secrets.randbelow(2000) * 10
    while len(bases) < count:
        if base + _PORT_SPAN > 65000:
            base = start
        if _ports_free(base, _PORT_SPAN):
            bases.append(base)
        base += _PORT_SPAN
    return bases


def site_on_free_ports(site: SiteConfig, *, poll_ms: int | None = None) -> SiteConfig:
    """The same site with every tower moved to free loopback ports."""
    bases = free_port_bases(len(site.towers))
    towers: list[TowerConfig] = []
    for tower, base in zip(site.towers, bases, strict=True):
        plc = tower.plc.model_copy(update={"port_base": base, "host": "127.0.0.1"})
        towers.append(tower.model_copy(update={"plc": plc}))
    update: dict[str, Any] = {"towers": towers}
    if poll_ms is not None:
        update["poll"] = site.poll.model_copy(update={"interval_ms": poll_ms})
    return site.model_copy(update=update)


class Rig:
    """Plant + simulator + controller, started and stopped together."""

    def __init__(
        self,
        site: SiteConfig,
        *,
        mqtt_url: str,
        speed: float = 1.0,
        poll_ms: int | None = None,
        workdir: str | Path | None = None,
    ) -> None:
        self.site = site_on_free_ports(site, poll_ms=poll_ms)
        self.speed = speed
        self.mqtt_url = mqtt_url
        self._workdir = workdir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.plant = Plant(self.site)
        self.token = secrets.token_urlsafe(24)
        self.controller: Controller | None = None
        self._controller_task: asyncio.Task[int] | None = None
        self._sim: Any = None
        self._m0 = 0.0
        self._t0 = 0.0

    @property
    def workdir(self) -> Path:
        if self._workdir is not None:
            return Path(self._workdir)
        assert self._tmp is not None
        return Path(self._tmp.name)

    @property
    def socket_path(self) -> Path:
        return self.workdir / "control.sock"

    @property
    def journal_path(self) -> Path:
        return self.workdir / "journal.db"

    def now(self) -> float:
        """Plant time, seconds."""
        return self.plant.now

    async def __aenter__(self) -> Rig:
        if self._workdir is None:
            # AF_UNIX paths are short (108 bytes): keep the scratch dir near /tmp.
            self._tmp = tempfile.TemporaryDirectory(prefix="tower-", dir="/tmp")
        self.workdir.mkdir(parents=True, exist_ok=True)
        tokens = self.workdir / "tokens"
        tokens.write_text(f"maintenance {self.token}\n", encoding="utf-8")
        tokens.chmod(0o600)
        self._sim = await serve(self.site, self.plant, speed=self.speed)
        try:
            await self.start_controller()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_controller()
        if self._sim is not None:
            await self._sim.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def start_controller(self) -> None:
        """Start (or restart) the controller on the same journal and socket."""
        self.controller = Controller(
            self.site,
            mqtt_url=self.mqtt_url,
            journal_path=self.journal_path,
            socket_path=self.socket_path,
            tokens_path=self.workdir / "tokens",
            handle_signals=False,
        )
        self._controller_task = asyncio.create_task(
            run_controller(self.controller), name="rig.controller"
        )
        started = asyncio.create_task(self.controller.started.wait())
        done, _ = await asyncio.wait(
            {started, self._controller_task}, return_when=asyncio.FIRST_COMPLETED
        )
        if self._controller_task in done:
            started.cancel()
            self._controller_task.result()  # raises what stopped it
            raise RuntimeError("controller ended before it started")
        await self.wait_until(self._all_auto, timeout_s=30)

    async def stop_controller(self) -> None:
        """Stop the controller cleanly (it publishes offline)."""
        if self.controller is None or self._controller_task is None:
            return
        self.controller.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._controller_task, timeout=15)
        self.controller = None
        self._controller_task = None

    def _all_auto(self) -> bool:
        if self.controller is None or self.controller.core is None:
            return False
        towers = self.controller.core.status().get("towers", [])
        return bool(towers) and all(t["state"] == "auto" for t in towers)

    async def ctl(self, cmd: str, **args: Any) -> dict[str, Any]:
        """One operator command over the control socket."""
        return await request(self.socket_path, self.token, cmd, args)

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        *,
        timeout_s: float,
        step_s: float = 0.02,
    ) -> None:
        """Wait (real seconds) until predicate() holds; TimeoutError if it never does.

        Also ends when the controller stops, with what stopped it.
        """
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self._controller_task is not None and self._controller_task.done():
                self._controller_task.result()
                raise RuntimeError("controller stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout_s} s")
            await asyncio.sleep(step_s)

    async def sleep_sim(self, seconds: float) -> None:
        """Sleep for a span of plant time."""
        await asyncio.sleep(seconds / self.speed)

    # -- visitors -----------------------------------------------------------

    def bay_ready(self, tower: str, bay: str) -> bool:
        """The bay stands open and empty: a driver may drive in."""
        flags = self.plant.status(tower, bay)["flags"]
        return (
            not flags["vehicle_present"]
            and not flags["person_present"]
            and not flags["door_closed"]
        )

    def bay_free(self, tower: str, bay: str) -> bool:
        """The bay is open and empty and no job of the controller has it: the
        bay's traffic light shows green."""
        if not self.bay_ready(tower, bay):
            return False
        core = self.controller.core if self.controller else None
        if core is None:
            return False
        if core.inventory.at(tower, bay):
            return False  # the controller has not yet seen the last car leave
        return not any(j["tower"] == tower and j["bay"] == bay for j in core.jobs())

    def _controller_sees_car(self, tower: str, bay: str) -> bool:
        core = self.controller.core if self.controller else None
        if core is None:
            return False
        return core.towers[tower].links[bay].flag("vehicle_present")

    def driver_gone(self, tower: str, bay: str) -> bool:
        flags = self.plant.status(tower, bay)["flags"]
        return flags["vehicle_present"] and not flags["person_present"]

    async def arrive(
        self, tower: str, bay: str, car: Car, *, timeout_s: float = 120
    ) -> str:
        """A car drives into a bay, its driver walks off, the car is stored.

        Returns the ticket the driver gets.
        """
        await self.wait_until(lambda: self.bay_free(tower, bay), timeout_s=timeout_s)
        self._sim.sync()
        self.plant.car_arrives(tower, bay, car)
        # Like a bay terminal, ask once the controller has seen the car (its next
        # poll of the bay).
        await self.wait_until(
            lambda: self._controller_sees_car(tower, bay), timeout_s=5
        )
        deadline = time.monotonic() + 5.0
        while True:
            try:
                result = await self.ctl("store", tower=tower, bay=bay)
            except ControlError as err:
                waiting = err.code in ("bay_empty", "bay_busy")
                if not waiting or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)
                continue
            return result["ticket"]

    def released_bay(self, tower: str, car_id: str) -> str | None:
        """The bay where a retrieved car stands with its door open, if it does."""
        where = self.plant.locate(car_id)
        if where is None or where[0] != tower:
            return None
        place = where[1]
        if place not in {b.id for b in self.site.tower(tower).bays}:
            return None
        flags = self.plant.status(tower, place)["flags"]
        if flags["vehicle_present"] and not flags["door_closed"]:
            return place
        return None

    def car_released(self, tower: str, bay: str, car_id: str) -> bool:
        """The retrieved car stands in that bay with the door open."""
        return self.released_bay(tower, car_id) == bay

    async def collect(self, tower: str, bay: str) -> Car:
        """The visitor drives the released car away."""
        self._sim.sync()
        return self.plant.driver_collects(tower, bay)
