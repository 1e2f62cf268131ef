"""`tower chaos`: the crash test. Kill the controller, restart it, check the cars.

Theory of operation
-------------------
This process (the parent) runs the plant model behind the Modbus simulator on
free loopback ports, an embedded MQTT broker, and the visitors of a seeded busy
day: cars arrive at every bay, are stored through the control socket, and are
asked for again after a visit. The controller under test runs as a child
process, `python -m tower run`, on a site file written for the run (the same
file the parent's plant and simulator read) with its journal, control socket
and tokens in a scratch directory.

At N moments drawn from the seed the parent kills the child with SIGKILL and
starts it again on the same journal. The moments come from five triggers:

- `random`: a random time after the tower came back to `auto`;
- `latch`: the instant a PLC latches a command, inside the simulator's write
  handler, before the reply goes back (mid-motion, the acknowledgement lost);
- `end`: 0 to 40 ms after a PLC ends a command (before or while the
  controller polls it, journals the result and sends the next intent);
- `journal`: the instant the journal's WAL file grows (a transaction being
  written or just written);
- `recovery`: during the restart itself, before the tower is back in `auto`.

Some restarts wait longer than the PLC watchdog, so the motion the dead
controller left running is stopped by the PLC (`heartbeat_lost`), as it is
under systemd's `RestartSec=2s`. In the field the watchdog (2 s in the
shipped profiles) is a sixth of a 12 s transfer; in a run sped up
`--speed` times it would outlast every motion, so the run sets the simulated
PLCs' watchdog to `--watchdog-s` real seconds (0.8 s: 8 plant seconds at the
default speed 10, shorter than a transfer or a bay check and three times the
controller's heartbeat period).

Recovery time is from the restart until every tower reports `auto` on the
control socket. After the last kill, new arrivals stop, the visitors who
already asked for their car collect it (with `--drain` every car left is asked
for), the controller is stopped, and the parent checks, against the plant and
the journal (opened read-only):

- every car is where the journal says and where the slot sensors say;
- every ticket issued was retrieved by its own visitor or is still
  retrievable (parked in an unblocked slot, no job open on it);
- no slot holds two cars;
- no motion ran twice: the simulator counts every latch per sequence, and a
  job step whose motion ran to its end under two sequences is a repeat.

Times of the day (visits, drivers) are plant seconds; the simulator runs at
`--speed` plant seconds per real second. Kill moments and recoveries are
real seconds. The run is seeded: the day and the kill plan repeat, the exact
moments depend on the machine's timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.plant import Car, Plant
from sim.rig import free_port_bases
from sim.server import SimServer, serve
from tower import logs
from tower.config import SiteConfig, load_site
from tower.console.client import ControlError, ControlUnavailable, request
from tower.core.policies import POLICIES
from tower.feed.fallback_broker import FallbackBroker
from tower.store.journal import Journal

PROFILES = Path(__file__).resolve().parent.parent / "plc_profiles"

TRIGGERS = {"random": 30, "latch": 25, "end": 20, "journal": 10, "recovery": 15}
"""Kill triggers and their weights in the seeded plan."""

ARRIVAL_GAP_S = (0.0, 10.0)
"""Plant seconds between a bay standing free and the next car driving in."""

VISIT_S = (30.0, 300.0)
"""Plant seconds a visitor spends in the zoo."""

DRIVER_S = (5.0, 20.0)
"""Plant seconds a driver takes to leave the bay, or to drive off."""

RECOVERY_LIMIT_S = 60.0
"""Longest wait for the towers to be back in auto after a restart, s."""

_SITE = """\
# Written by `tower chaos` for one run; the simulator and the controller under
# test both read it.
id = "chaos"
profiles_dir = "{profiles}"

[mqtt]
url = "{mqtt}"
topic_prefix = "chaos/parking"

[poll]
interval_ms = {poll_ms}    # status poll period per device, real ms
timeout_ms = 1000
heartbeat_ms = 250

[policy]
name = "{policy}"
"""

_TOWER = """
[[towers]]
id = "{id}"
levels = {levels}
columns = {columns}

[[towers.bays]]
id = "bay-1"
column = 1
side = "left"

[[towers.bays]]
id = "bay-2"
column = 1
side = "right"

[towers.plc]
host = "127.0.0.1"
port_base = {port_base}
"""


@dataclass
class Options:
    """One run of the crash test."""

    kills: int = 20
    seed: int = 1
    speed: float = 10.0  # plant seconds per real second
    towers: int = 2
    levels: int = 3
    columns: int = 3
    poll_ms: int = 50
    slow_restarts: float = 0.25  # share of restarts that outwait the watchdog
    watchdog_s: float = 0.8  # the simulated PLCs' watchdog, real s
    gap_s: tuple[float, float] = (0.3, 2.5)  # real s from auto to a random kill
    drain: bool = False
    policy: str = "pipelined"  # a name of tower.core.policies.POLICIES
    workdir: Path | None = None


@dataclass(frozen=True)
class Kill:
    """One planned kill: its trigger, a delay before arming it, the restart pause."""

    trigger: str
    delay_s: float
    restart_pause_s: float


def plan_kills(options: Options) -> list[Kill]:
    """The seeded kill plan."""
    rng = random.Random(options.seed)
    names, weights = zip(*TRIGGERS.items(), strict=True)
    plan = []
    for _ in range(options.kills):
        trigger = rng.choices(names, weights)[0]
        if trigger == "random":
            delay = rng.uniform(*options.gap_s)
        elif trigger == "recovery":
            delay = rng.random()  # share of the last recovery time
        else:
            delay = rng.uniform(0.0, options.gap_s[1] / 2)
        slow = rng.random() < options.slow_restarts
        watchdog = options.watchdog_s
        pause = rng.uniform(watchdog + 0.1, watchdog + 0.6) if slow else 0.0
        plan.append(Kill(trigger, delay, pause))
    return plan


def write_site(options: Options, path: Path, mqtt_url: str) -> SiteConfig:
    """Write the run's site file (free loopback ports) and load it back."""
    text = _SITE.format(
        profiles=PROFILES,
        mqtt=mqtt_url,
        poll_ms=options.poll_ms,
        policy=options.policy,
    )
    for index, base in enumerate(free_port_bases(options.towers)):
        text += _TOWER.format(
            id=f"tower-{chr(ord('a') + index)}",
            levels=options.levels,
            columns=options.columns,
            port_base=base,
        )
    path.write_text(text, encoding="utf-8")
    return load_site(path)


class ChaosPlant(Plant):
    """The plant, telling the crash test when a PLC latches or ends a command."""

    def __init__(self, site: SiteConfig) -> None:
        super().__init__(site)
        self.on_latch: Callable[[], None] | None = None
        self.on_end: Callable[[], None] | None = None
        self.on_fault: Callable[[str], None] | None = None
        self._running: dict[tuple[str, str], int] = {}
        self._faults_seen = 0
        self._checked_at = 0.0

    @property
    def running(self) -> int:
        """How many commands the PLCs are running now."""
        self._check_ends(force=True)
        return len(self._running)

    def write(self, tower: str, device: str, points: Any) -> None:
        latches = self.motions.total() if "cmd_code" in points else None
        super().write(tower, device, points)
        if latches is not None and self.motions.total() != latches:
            self._running[tower, device] = self.commands(tower, device)["cmd_seq"]
            if self.on_latch is not None:
                self.on_latch()
        self._check_ends(force=True)

    def advance(self, t: float) -> None:
        super().advance(t)
        self._check_ends(force=False)

    def _check_ends(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < 0.005:
            return
        self._checked_at = now
        for fault in self.faults[self._faults_seen :]:
            if self.on_fault is not None:
                self.on_fault(
                    f"PLC fault {fault.tower}/{fault.device} seq {fault.seq} "
                    f"{fault.fault_code}: {fault.reason}"
                )
        self._faults_seen = len(self.faults)
        for key, seq in list(self._running.items()):
            if self.status(*key)["seq_done"] == seq:
                del self._running[key]
                if self.on_end is not None:
                    self.on_end()


@dataclass
class Report:
    """What a run found. Times in real seconds."""

    kills: int = 0
    cars_lost: int = 0
    mismatches: int = 0
    jobs_repeated: int = 0
    recovery_s_p50: float = 0.0
    recovery_s_p95: float = 0.0
    recovery_s_max: float = 0.0
    not_recovered: int = 0
    tickets_issued: int = 0
    retrieved: int = 0
    still_retrievable: int = 0
    not_retrievable: int = 0
    held_jobs: int = 0
    blocked_slots: int = 0
    motions: int = 0
    heartbeat_stops: int = 0
    slow_restarts: int = 0
    kills_mid_motion: int = 0
    triggers: dict[str, int] = field(default_factory=dict)
    alarms: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seed: int = 0
    speed: float = 0.0
    policy: str = ""
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Zero lost, zero mismatched, zero repeated, every ticket accounted."""
        return not (
            self.cars_lost or self.mismatches or self.jobs_repeated
            or self.not_retrievable
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-able data, `ok` included."""
        data = dict(self.__dict__)
        data["ok"] = self.ok
        return data


class Chaos:
    """One crash-test run: plant, simulator, broker, visitors, the child."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed ^ 0x5EED)
        self.token = secrets.token_urlsafe(24)
        self.report = Report(
            seed=options.seed, speed=options.speed, policy=options.policy
        )
        self.site: SiteConfig | None = None
        self.plant: ChaosPlant | None = None
        self.sim: SimServer | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.workdir = Path()
        self.recoveries: list[float] = []
        self.car_of: dict[str, str] = {}  # ticket -> car id
        self.delivered: dict[str, str] = {}  # ticket -> car id its visitor got
        self.last_out: dict[tuple[str, str], str] = {}  # bay -> last ticket out
        self.stopping = asyncio.Event()
        self._cars = 0
        self._t0 = time.monotonic()
        self._kill_armed: str | None = None
        self._killed = asyncio.Event()
        self._visits: set[asyncio.Task[None]] = set()

    # -- paths -----------------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        return self.workdir / "journal.db"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "control.sock"

    # -- the run ---------------------------------------------------------------

    async def run(self) -> Report:
        """The whole run; the report."""
        started = self._t0 = time.monotonic()
        with contextlib.ExitStack() as stack:
            if self.options.workdir is None:
                tmp = tempfile.TemporaryDirectory(prefix="chaos-", dir="/tmp")
                self.workdir = Path(stack.enter_context(tmp))
            else:
                self.workdir = self.options.workdir
                self.workdir.mkdir(parents=True, exist_ok=True)
            broker = FallbackBroker()
            await broker.start()
            try:
                await self._run(broker.url)
            finally:
                await self._stop_child(signal.SIGKILL)
                if self.sim is not None:
                    await self.sim.close()
                await broker.close()
        self.report.duration_s = round(time.monotonic() - started, 1)
        return self.report

    async def _run(self, mqtt_url: str) -> None:
        options = self.options
        site_path = self.workdir / "site.toml"
        self.site = write_site(options, site_path, mqtt_url)
        self.plant = ChaosPlant(self.site)
        self.plant.on_latch = lambda: self._fire("latch")
        self.plant.on_end = self._on_end
        self.plant.on_fault = self._note
        self.sim = await serve(self.site, self.plant, speed=options.speed)
        self.plant.set_heartbeat_timeouts(options.watchdog_s * options.speed)
        tokens = self.workdir / "tokens"
        tokens.write_text(f"maintenance {self.token}\n", encoding="utf-8")
        tokens.chmod(0o600)
        self._argv = [
            sys.executable, "-m", "tower", "--log-level", "warning", "--log-json",
            "run", "--site", str(site_path), "--journal", str(self.journal_path),
            "--socket", str(self.socket_path), "--tokens", str(tokens),
            "--mqtt", mqtt_url,
        ]  # fmt: skip

        await self._start_child()
        if await self._wait_auto() is None:
            raise RuntimeError("the controller never reached auto at its first start")
        visitors = [
            asyncio.create_task(self._arrivals(t.id, b.id), name=f"chaos.{t.id}.{b.id}")
            for t in self.site.towers
            for b in t.bays
        ]
        await self._kill_loop(plan_kills(options))

        self.stopping.set()
        await self._finish(visitors)
        await self._check()

    async def _kill_loop(self, plan: list[Kill]) -> None:
        restarted_at: float | None = None
        for kill in plan:
            if kill.trigger != "recovery" and restarted_at is not None:
                await self._record_recovery(restarted_at)
            await self._kill(kill)
            pause = kill.restart_pause_s
            self._note(f"killed ({kill.trigger}), restart in {pause:.2f} s")
            self.report.kills += 1
            self.report.triggers[kill.trigger] = (
                self.report.triggers.get(kill.trigger, 0) + 1
            )
            if kill.restart_pause_s:
                self.report.slow_restarts += 1
                await asyncio.sleep(kill.restart_pause_s)
            restarted_at = time.monotonic()
            await self._start_child()
        if restarted_at is not None:
            await self._record_recovery(restarted_at)

    async def _record_recovery(self, restarted_at: float) -> None:
        at = await self._wait_auto()
        if at is None:
            self.report.not_recovered += 1
            why = await self._describe()
            self.report.problems.append(
                f"not back in auto {RECOVERY_LIMIT_S:g} s after a restart: {why}"
            )
            self._note(f"not recovered: {why}")
        else:
            self.recoveries.append(at - restarted_at)
            self._note(f"recovered in {at - restarted_at:.3f} s")

    async def _describe(self) -> str:
        """The towers that are not in auto, their unhealthy devices and alarms."""
        try:
            status = await self._ctl("status")
        except (ControlUnavailable, ControlError) as err:
            return f"no status: {err}"
        parts = []
        for t in status.get("towers", []):
            if t["state"] == "auto":
                continue
            bad = {
                name: d["state"] if d["online"] else "offline"
                for name, d in t["devices"].items()
                if not d["online"] or d["state"] not in ("idle", "busy")
            }
            codes = sorted({a["code"] for a in t["alarms"]})
            parts.append(f"{t['id']} {t['state']} devices {bad} alarms {codes}")
        return "; ".join(parts)

    def _note(self, text: str) -> None:
        """One line of the run's timeline (`chaos.log` in the work directory)."""
        with (self.workdir / "chaos.log").open("a", encoding="utf-8") as log:
            log.write(f"{time.monotonic() - self._t0:9.3f} {text}\n")

    # -- killing ---------------------------------------------------------------

    async def _kill(self, kill: Kill) -> None:
        self._killed.clear()
        if kill.trigger == "recovery":
            typical = statistics.median(self.recoveries) if self.recoveries else 0.5
            await asyncio.sleep(kill.delay_s * typical)
            self._sigkill()
        elif kill.trigger == "random":
            await asyncio.sleep(kill.delay_s)
            self._sigkill()
        else:
            await asyncio.sleep(kill.delay_s)
            self._kill_armed = kill.trigger
            watcher = None
            if kill.trigger == "journal":
                watcher = asyncio.create_task(self._watch_journal())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._killed.wait()
            self._kill_armed = None
            if watcher is not None:
                watcher.cancel()
            self._sigkill()  # nothing came: kill anyway
        assert self.proc is not None
        await self.proc.wait()

    def _fire(self, trigger: str) -> None:
        if self._kill_armed == trigger:
            self._kill_armed = None
            self._sigkill()

    def _on_end(self) -> None:
        if self._kill_armed == "end":
            self._kill_armed = None
            delay = self.rng.uniform(0.0, 0.04)
            asyncio.get_running_loop().call_later(delay, self._sigkill)

    async def _watch_journal(self) -> None:
        wal = self.journal_path.with_name(self.journal_path.name + "-wal")

        def size() -> int:
            with contextlib.suppress(OSError):
                return wal.stat().st_size
            return -1

        before = size()
        while self._kill_armed == "journal":
            await asyncio.sleep(0.001)
            if size() != before:
                self._fire("journal")
                return

    def _sigkill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None and not self._killed.is_set():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            assert self.plant is not None
            running = self.plant.running
            self.report.kills_mid_motion += running > 0
            self._note(f"SIGKILL, {running} commands running")
        self._killed.set()

    # -- the child -------------------------------------------------------------

    async def _start_child(self) -> None:
        log = (self.workdir / "controller.log").open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self._argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )
        finally:
            log.close()

    async def _stop_child(self, signum: int) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            async with asyncio.timeout(15):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _ctl(self, cmd: str, **args: Any) -> dict[str, Any]:
        return await request(self.socket_path, self.token, cmd, args, timeout_s=5)

    async def _wait_auto(self) -> float | None:
        """The monotonic time every tower is in auto, or None (limit passed)."""
        deadline = time.monotonic() + RECOVERY_LIMIT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError(
                    f"the controller exited with {self.proc.returncode}; "
                    f"see {self.workdir / 'controller.log'}"
                )
            with contextlib.suppress(ControlUnavailable, ControlError):
                towers = (await self._ctl("status")).get("towers", [])
                if towers and all(t["state"] == "auto" for t in towers):
                    return time.monotonic()
            await asyncio.sleep(0.02)
        return None

    # -- visitors ----------------------------------------------------------------

    async def _sleep_plant(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.options.speed)

    def _bay_flags(self, tower: str, bay: str) -> dict[str, bool]:
        assert self.sim is not None
        assert self.plant is not None
        self.sim.sync()
        return self.plant.status(tower, bay)["flags"]

    def _bay_open(self, tower: str, bay: str) -> bool:
        """The bay stands open and empty, nobody inside (the plant, now)."""
        flags = self._bay_flags(tower, bay)
        return not (
            flags["vehicle_present"] or flags["person_present"] or flags["door_closed"]
        )

    async def _bay_free(self, tower: str, bay: str) -> bool:
        """The bay's green light: open, empty, no job on it, the last car out
        seen leaving by the controller."""
        if not self._bay_open(tower, bay):
            return False
        try:
            jobs = (await self._ctl("jobs"))["jobs"]
            if any(j["tower"] == tower and j["bay"] == bay for j in jobs):
                return False
            last = self.last_out.get((tower, bay))
            if last is not None:
                with contextlib.suppress(ControlError):
                    await self._ctl("ticket", ticket=last)
                    return False  # its ticket is still open: not seen leaving
        except ControlUnavailable:
            return False
        return True

    async def _arrivals(self, tower: str, bay: str) -> None:
        assert self.plant is not None
        assert self.site is not None
        config = self.site.tower(tower)
        limit = config.levels * config.columns * 2 - 4  # room for the cars on the way
        while not self.stopping.is_set():
            await self._sleep_plant(self.rng.uniform(*ARRIVAL_GAP_S))
            parked = sum(1 for t, _ in self.plant.cars().values() if t == tower)
            if self.stopping.is_set() or parked >= limit:
                continue
            # The light is read over the socket: look at the bay again after.
            while not (await self._bay_free(tower, bay) and self._bay_open(tower, bay)):
                if self.stopping.is_set():
                    return
                await asyncio.sleep(0.05)
            if self.stopping.is_set():
                return
            self._cars += 1
            car = Car(
                f"car-{self._cars:04d}",
                driver_time_s=self.rng.uniform(*DRIVER_S),
            )
            self.plant.car_arrives(tower, bay, car)
            self._note(f"{car.id} drives into {tower}/{bay}")
            await self._sleep_plant(car.driver_time_s)
            ticket = await self._store(tower, bay)
            if ticket is None:
                await self._take_back(tower, bay)
                self._note(f"{car.id} taken back out of {tower}/{bay}")
                continue
            self._note(f"{car.id} stored from {tower}/{bay}, job for {ticket[:4]}")
            self.car_of[ticket] = car.id
            visit = asyncio.create_task(self._visit(ticket, car), name="chaos.visit")
            self._visits.add(visit)
            visit.add_done_callback(self._visits.discard)

    def _sync(self) -> None:
        assert self.sim is not None
        self.sim.sync()

    async def _store(self, tower: str, bay: str) -> str | None:
        """Ask to store the car in the bay; its ticket, or None if refused.

        A lost answer (the controller killed) is recovered from the open job
        at the bay, or by asking again: a second store at a bay already taken
        is refused, never doubled.
        """
        while True:
            try:
                return (await self._ctl("store", tower=tower, bay=bay))["ticket"]
            except ControlError as err:
                if err.code == "bay_busy":
                    ticket, retrieving = await self._jobs_at(tower, bay)
                    if ticket is not None:
                        self._note(f"store at {tower}/{bay}: answer lost, job found")
                        return ticket
                    if retrieving:
                        self._note(f"store at {tower}/{bay}: a retrieve has the bay")
                        return None  # drive out again
                elif err.code == "no_free_slot":
                    return None
                elif err.code not in ("bay_empty", "tower_not_auto", "device_offline"):
                    self.report.problems.append(f"store at {tower}/{bay}: {err}")
                    return None
            except ControlUnavailable:
                pass
            await asyncio.sleep(0.05)

    async def _jobs_at(self, tower: str, bay: str) -> tuple[str | None, bool]:
        """The ticket of a store job at the bay that no visitor knows yet (the
        answer to this visitor's request was lost), and whether a retrieve
        job has the bay."""
        try:
            jobs = (await self._ctl("jobs"))["jobs"]
        except (ControlUnavailable, ControlError):
            return None, False
        here = [j for j in jobs if (j["tower"], j["bay"]) == (tower, bay)]
        for job in here:
            if job["kind"] == "store" and job["ticket"] not in self.car_of:
                return job["ticket"], False
        return None, any(j["kind"] == "retrieve" for j in here)

    async def _take_back(self, tower: str, bay: str) -> None:
        """The driver drives the car out of the bay again (store refused)."""
        assert self.plant is not None
        while True:
            flags = self._bay_flags(tower, bay)
            if not flags["door_closed"] and not flags["person_present"]:
                self.plant.driver_collects(tower, bay)
                return
            await asyncio.sleep(0.05)

    async def _visit(self, ticket: str, car: Car) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.rng.uniform(*VISIT_S) / self.options.speed):
                await self.stopping.wait()
        if self.stopping.is_set() and not self.options.drain:
            return  # the day is over before this visitor came back
        await self._retrieve(ticket, car)

    async def _retrieve(self, ticket: str, car: Car) -> None:
        """Come back for a parked car: ask for it, collect it from its bay.

        A car still in the bay it arrived at has not been stored yet: the
        visitor waits for it to be parked (a car standing open in a bay is
        only released once it has been up). A lost answer shows as the car
        leaving its slot anyway.
        """
        assert self.plant is not None
        deadline = time.monotonic() + 300
        while not self._parked(car):
            if time.monotonic() > deadline:
                self.report.problems.append(f"{car.id} was never parked")
                return
            await asyncio.sleep(0.05)
        asked = False
        while not asked and self._parked(car):
            try:
                await self._ctl("retrieve", ticket=ticket)
                asked = True
            except ControlError as err:
                if err.code not in (
                    "ticket_in_use", "tower_not_auto", "car_not_parked",
                ):  # fmt: skip
                    self.report.problems.append(f"retrieve {car.id}: {err}")
                    return
                await asyncio.sleep(0.2)
            except ControlUnavailable:
                await asyncio.sleep(0.05)
        self._note(f"{car.id} asked for")
        deadline = time.monotonic() + 300
        while (where := self._released(car)) is None:
            if time.monotonic() > deadline:
                self.report.problems.append(f"{car.id} never reached a bay")
                return
            await asyncio.sleep(0.02)
        tower, bay = where
        self.last_out[tower, bay] = ticket
        self.delivered[ticket] = self.plant.driver_collects(tower, bay).id
        self._note(f"{car.id} collected from {tower}/{bay}")

    def _parked(self, car: Car) -> bool:
        """Whether the car stands in a slot."""
        assert self.plant is not None
        self._sync()
        where = self.plant.locate(car.id)
        return where is not None and where[1][0].isdigit()

    def _released(self, car: Car) -> tuple[str, str] | None:
        """The bay where the car stands released for its driver, if it does."""
        assert self.plant is not None
        self._sync()
        where = self.plant.locate(car.id)
        if where is None or not where[1].startswith("bay-"):
            return None
        flags = self.plant.status(*where)["flags"]
        if flags["door_closed"] or flags["person_present"]:
            return None
        return where

    async def _finish(self, visitors: list[asyncio.Task[None]]) -> None:
        """Let the work in progress end: no new arrivals, the asked cars out."""
        try:
            async with asyncio.timeout(240):
                await asyncio.gather(*visitors)
                while self._visits:
                    await asyncio.gather(*list(self._visits))
                # The plant and the controller are polled: no event to wait on.
                while not await self._settled():  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        except TimeoutError:
            self.report.problems.append("the work did not finish within 240 s")
            for task in [*visitors, *self._visits]:
                task.cancel()

    async def _settled(self) -> bool:
        """No job but held ones, nobody in a bay, every collected car's ticket
        closed (the controller saw it leave)."""
        assert self.site is not None
        for t in self.site.towers:
            for b in t.bays:
                if self._bay_flags(t.id, b.id)["person_present"]:
                    return False
        try:
            jobs = (await self._ctl("jobs"))["jobs"]
            if not all(j["state"] == "held" for j in jobs):
                return False
            for ticket in self.last_out.values():
                with contextlib.suppress(ControlError):
                    await self._ctl("ticket", ticket=ticket)
                    return False
        except ControlUnavailable:
            return False
        return True

    # -- the checks --------------------------------------------------------------

    async def _check(self) -> None:
        assert self.plant is not None
        assert self.site is not None
        report = self.report
        jobs = (await self._ctl("jobs"))["jobs"]
        report.held_jobs = sum(1 for j in jobs if j["state"] == "held")
        await self._stop_child(signal.SIGTERM)
        self._sync()

        with Journal.open(self.journal_path, readonly=True) as journal:
            tickets = journal.tickets()
            inventory = journal.inventory()
            open_jobs = journal.jobs(open_only=True)
        uri = f"file:{self.journal_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            steps = db.execute(
                "SELECT job_id, step, tower, device, seq FROM steps"
            ).fetchall()
            blocked = db.execute(
                "SELECT tower, slot, reason FROM blocked_slots"
            ).fetchall()

        problems = report.problems
        place_of = {row["ticket"]: (row["tower"], row["place"]) for row in inventory}
        ticket_of_car = {car: t for t, car in self.car_of.items()}
        # Where the journal and the plant put every car.
        for ticket, (tower, place) in place_of.items():
            car = self.car_of.get(ticket)
            if car is None:
                report.mismatches += 1
                problems.append(f"journal has a car no visitor left, at {place}")
            elif self.plant.locate(car) != (tower, place):
                report.mismatches += 1
                problems.append(
                    f"{car}: journal {tower}/{place}, plant {self.plant.locate(car)}"
                )
        for car, (tower, place) in self.plant.cars().items():
            ticket = ticket_of_car.get(car)
            if ticket is None or ticket not in place_of:
                report.mismatches += 1
                problems.append(f"{car} at {tower}/{place} is not in the journal")
        # Slot sensors against the journal, and one car per slot.
        for t in self.site.towers:
            sensed = set(self.plant.slot_contents(t.id))
            journaled = [
                p for tw, p in place_of.values() if tw == t.id and p[0].isdigit()
            ]
            if len(journaled) != len(set(journaled)):
                report.mismatches += 1
                problems.append(f"{t.id}: the journal puts two cars in one slot")
            if sensed != set(journaled):
                report.mismatches += len(sensed ^ set(journaled))
                problems.append(f"{t.id}: slot sensors and journal differ")
        report.blocked_slots = len(blocked)
        report.mismatches += len(blocked)
        for tower, slot, reason in blocked:
            problems.append(f"{tower}/{slot} blocked: {reason}")

        # Every ticket: retrieved by its own visitor, or still retrievable.
        busy = {j["ticket"] for j in open_jobs}
        report.tickets_issued = len(tickets)
        for row in tickets:
            ticket = row["ticket"]
            car = self.car_of.get(ticket)
            if row["closed_at"] is not None:
                if car is not None and self.delivered.get(ticket) == car:
                    report.retrieved += 1
                else:
                    report.cars_lost += 1
                    problems.append(f"ticket closed but {car} not with its visitor")
                continue
            where = place_of.get(ticket)
            parked = where is not None and where[1][0].isdigit()
            if (
                parked
                and ticket not in busy
                and car
                and self.plant.locate(car) == where
            ):
                report.still_retrievable += 1
            else:
                report.not_retrievable += 1
                problems.append(f"{car} ({where}) is not retrievable")
        issued = {row["ticket"] for row in tickets}
        for ticket, car in self.car_of.items():
            if ticket in self.delivered:
                continue
            if ticket not in issued:
                report.cars_lost += 1
                problems.append(f"{car}: its ticket never reached the journal")
            elif self.plant.locate(car) is None:
                report.cars_lost += 1
                problems.append(f"{car} left the plant without its visitor")

        # No motion twice.
        owner = {
            (tower, device, seq): (job, step) for job, step, tower, device, seq in steps
        }
        stopped = {(f.tower, f.device, f.seq) for f in self.plant.faults}
        report.jobs_repeated = sum(1 for n in self.plant.motions.values() if n > 1)
        ran = Counter(
            owner[key] for key in self.plant.motions
            if key in owner and key not in stopped
        )  # fmt: skip
        report.jobs_repeated += sum(1 for n in ran.values() if n > 1)
        unowned = [k for k in self.plant.motions if k not in owner]
        if unowned:
            report.jobs_repeated += len(unowned)
            problems.append(f"motions with no journaled intent: {unowned[:3]}")
        report.motions = sum(self.plant.motions.values())
        report.heartbeat_stops = sum(
            1 for f in self.plant.faults if f.fault_code == "heartbeat_lost"
        )

        if self.recoveries:
            ordered = sorted(self.recoveries)
            report.recovery_s_p50 = round(statistics.median(ordered), 3)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
            report.recovery_s_p95 = round(p95, 3)
            report.recovery_s_max = round(ordered[-1], 3)
        report.alarms = dict(sorted(self._alarm_codes().items()))

    def _alarm_codes(self) -> Counter[str]:
        codes: Counter[str] = Counter()
        path = self.workdir / "controller.log"
        with path.open(encoding="utf-8", errors="replace") as log:
            for line in log:
                if '"alarm.raised"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    codes[json.loads(line).get("code", "?")] += 1
        return codes


def _table(report: Report) -> str:
    data = report.as_dict()
    lines = ["tower chaos: " + ("OK" if report.ok else "FAILED")]
    for key, value in data.items():
        if key in ("problems", "ok"):
            continue
        shown = value
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        lines.append(f"  {key:<18} {shown}")
    for problem in report.problems[:20]:
        lines.append(f"  ! {problem}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tower chaos",
        description="Kill the controller at random moments of a busy simulated "
        "day, restart it each time, and check that no car was lost.",
    )
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs (20)")
    parser.add_argument("--seed", type=int, default=1, help="day and kill seed (1)")
    parser.add_argument(
        "--speed", type=float, default=10.0, help="plant s per real s (10)"
    )
    parser.add_argument("--towers", type=int, default=2, help="towers (2)")
    parser.add_argument("--levels", type=int, default=3, help="levels a tower (3)")
    parser.add_argument("--columns", type=int, default=3, help="columns a side (3)")
    parser.add_argument(
        "--slow-restarts",
        type=float,
        default=0.25,
        help="share of restarts that wait past the PLC watchdog (0.25)",
    )
    parser.add_argument(
        "--watchdog-s",
        type=float,
        default=0.8,
        help="the simulated PLCs' heartbeat watchdog, real s (0.8)",
    )
    parser.add_argument(
        "--drain", action="store_true", help="at the end, ask for every car left"
    )
    parser.add_argument(
        "--policy",
        choices=list(POLICIES),
        default="pipelined",
        help="the controller's allocation and sequencing policy (pipelined)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the run's files here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


async def _run_until_signalled(chaos: Chaos) -> Report:
    """Run; SIGTERM or SIGINT cancels the run, so the child is killed too."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await chaos.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: list[str]) -> int:
    """`tower chaos ...`: 0 when every target holds, 1 when one fails, 2 when
    the controller under test would not run."""
    args = build_parser().parse_args(argv)
    logs.configure("error", json=False)
    options = Options(
        kills=args.kills,
        seed=args.seed,
        speed=args.speed,
        towers=args.towers,
        levels=args.levels,
        columns=args.columns,
        slow_restarts=args.slow_restarts,
        watchdog_s=args.watchdog_s,
        drain=args.drain,
        policy=args.policy,
        workdir=args.workdir,
    )
    try:
        report = asyncio.run(_run_until_signalled(Chaos(options)))
    except RuntimeError as err:  # the controller under test would not run
        print(f"tower chaos: {err}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        print("tower chaos: stopped by a signal", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(_table(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
