"""The controller process: the asyncio shell around the sans-IO core.

Theory of operation
-------------------
Every input becomes a core event: PLC statuses and outages from the drivers, a
tick when the core's next deadline comes, operator requests from the control
socket. Events are applied one at a time under one lock (`_apply`), and the
actions the core returns are carried out in order:

- `Persist` records are gathered and committed to the journal (one transaction)
  before any `SendCommand` that follows them: the intent is durable before the PLC
  moves (DESIGN.md section 6);
- `SendCommand` goes to the device's driver in a task of its own, so a slow PLC
  never stalls the loop; a failed write comes back as `CommandWriteFailed`;
- `Occupancy` updates the feed (which never blocks);
- `Alarm` is logged once.

A journal that cannot be written stops the controller (the unit restarts it):
sending a command whose intent is not durable would break the one promise the
journal makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from tower.config import SiteConfig
from tower.console.server import ControlServer
from tower.console.tokens import Role, TokenStore
from tower.core import RequestRefused, SiteCore
from tower.core import actions as act
from tower.core import events as ev
from tower.core.policies import POLICIES
from tower.core.restore import RestoredState
from tower.errors import DeviceError, TowerError
from tower.feed.publisher import OccupancyFeed
from tower.notify import Notifier, watchdog_task
from tower.plc.driver import DeviceDriver
from tower.plc.profile import Profile, load_profile
from tower.store.journal import AsyncJournal, JournalError

_log = structlog.get_logger("tower.service")

# Ticket alphabet: no 0/O, 1/I/L, so a visitor can read it out loud.
_TICKET_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
_TICKET_CHARS = 12  # about 59 bits: unguessable, and short enough to type

COMMANDS: dict[str, Role] = {
    "status": Role.VIEWER,
    "slots": Role.VIEWER,
    "jobs": Role.VIEWER,
    "alarms": Role.VIEWER,
    "ticket": Role.OPERATOR,
    "store": Role.OPERATOR,
    "retrieve": Role.OPERATOR,
    "cancel": Role.OPERATOR,
    "reset": Role.OPERATOR,
    "mode": Role.MAINTENANCE,
    "place": Role.MAINTENANCE,
    "remove": Role.MAINTENANCE,
    "unblock": Role.MAINTENANCE,
}


def new_ticket() -> str:
    """A random ticket such as 'K7QX-M2PD-9RTW' (never a counter)."""
    raw = "".join(secrets.choice(_TICKET_ALPHABET) for _ in range(_TICKET_CHARS))
    return "-".join(raw[i : i + 4] for i in range(0, _TICKET_CHARS, 4))


_TICKET_SHAPE = re.compile(
    rf"\b[{_TICKET_ALPHABET}]{{4}}-[{_TICKET_ALPHABET}]{{4}}-[{_TICKET_ALPHABET}]{{4}}\b"
)


def redact_tickets(text: str) -> str:
    """Text for the log: tickets (a visitor's key to a car) replaced."""
    return _TICKET_SHAPE.sub("<ticket>", text)


def new_job_id() -> str:
    return "j-" + secrets.token_hex(6)


def _refused(code: str, message: str) -> RequestRefused:
    return RequestRefused(code, message)


class Controller:
    """One site's controller: drivers, core, journal, feed and control socket."""

    def __init__(
        self,
        site: SiteConfig,
        *,
        mqtt_url: str,
        journal_path: str | Path,
        socket_path: str | Path,
        tokens_path: str | Path,
        mqtt_password: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.site = site
        self.mqtt_url = mqtt_url
        self.journal_path = Path(journal_path)
        self.socket_path = Path(socket_path)
        self.tokens_path = Path(tokens_path)
        self._mqtt_password = mqtt_password
        self._clock = clock
        self._notifier = notifier or Notifier()
        self._handle_signals = handle_signals
        self._lock = asyncio.Lock()
        self._events: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._tick_at = 0.0
        self._stop = asyncio.Event()
        self._pending_writes: set[asyncio.Task[None]] = set()
        self.drivers: dict[tuple[str, str], DeviceDriver] = {}
        self.core: SiteCore | None = None
        self.journal: AsyncJournal | None = None
        self.feed: OccupancyFeed | None = None
        self.started = asyncio.Event()
        self.fatal: JournalError | None = None

    # -- lifecycle ---------------------------------------------------------

    def stop(self) -> None:
        """Ask the controller to stop cleanly (publishes offline, closes all)."""
        self._stop.set()

    async def run(self) -> None:
        """Run until stop() or SIGTERM/SIGINT; raises if a part fails for good."""
        self.journal = await AsyncJournal.open(self.journal_path)
        try:
            restored = RestoredState.from_journal(await self.journal.restored_state())
            policy = POLICIES[self.site.policy.name]
            self.core = SiteCore(
                self.site,
                allocator=policy.allocator(),
                sequencer=policy.sequencer(),
                restored=restored,
            )
            self._make_drivers()
            self.feed = OccupancyFeed(
                self.mqtt_url,
                self.site.mqtt.topic_prefix,
                self.site.id,
                client_id=self.site.mqtt.client_id
                or f"tower-{self.site.id}-{os.getpid()}",
                username=self.site.mqtt.username,
                password=self._mqtt_password,
            )
            tokens = TokenStore.load(self.tokens_path)
            server = ControlServer(
                self.socket_path,
                tokens,
                self._dispatch,
                commands=COMMANDS,
                audit=self._audit,
            )
            await server.start()
            try:
                await self._run_tasks()
            finally:
                await server.close()
        finally:
            await self._shutdown()

    async def _run_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if self._handle_signals else ()
        for signum in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self.stop)
        try:
            async with asyncio.TaskGroup() as group:
                for driver in self.drivers.values():
                    group.create_task(driver.run(), name=f"{driver.name}.poll")
                group.create_task(self._core_loop(), name="core.events")
                group.create_task(self._ticker(), name="core.ticker")
                assert self.feed is not None
                group.create_task(self.feed.run(), name="feed.mqtt")
                interval = self._notifier.watchdog_interval_s
                if interval:
                    group.create_task(
                        watchdog_task(self._notifier, interval), name="systemd.watchdog"
                    )
                group.create_task(self._stopper(group), name="service.stop")
                self.started.set()
                self._notifier.ready("controller started")
                _log.info(
                    "controller.started",
                    site=self.site.id,
                    devices=len(self.drivers),
                    socket=str(self.socket_path),
                    mqtt=self.mqtt_url,
                    policy=self.site.policy.name,
                )
        finally:
            for signum in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(signum)

    async def _stopper(self, group: asyncio.TaskGroup) -> None:
        await self._stop.wait()
        self._notifier.stopping()
        _log.info("controller.stopping")
        raise _StopRequested

    async def _shutdown(self) -> None:
        for task in list(self._pending_writes):
            task.cancel()
        if self.feed is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.feed.stop(), timeout=5)
        if self.journal is not None:
            await self.journal.close()
        _log.info("controller.stopped", site=self.site.id)

    def _make_drivers(self) -> None:
        profiles: dict[Path, Profile] = {}
        base = self.site.profiles_path()
        poll = self.site.poll
        for tower in self.site.towers:
            for device in tower.device_names():
                endpoint = tower.endpoint(device)
                path = base / endpoint.profile
                if path not in profiles:
                    profiles[path] = load_profile(path)
                profile = profiles[path]
                _check_fits(tower.id, device, profile, poll.heartbeat_ms)
                self.drivers[(tower.id, device)] = DeviceDriver(
                    tower=tower.id,
                    device=device,
                    profile=profile,
                    host=endpoint.host,
                    port=endpoint.port or 502,
                    unit_id=endpoint.unit_id
                    if endpoint.unit_id is not None
                    else profile.unit_id,
                    poll_s=poll.interval_ms / 1000,
                    timeout_s=poll.timeout_ms / 1000,
                    heartbeat_s=poll.heartbeat_ms / 1000,
                    on_status=self._on_status,
                    on_offline=self._on_offline,
                    on_fault=self._on_fault,
                )

    # -- events ------------------------------------------------------------

    def _on_status(self, tower: str, device: str, points: dict[str, Any]) -> None:
        self._events.put_nowait(ev.DeviceStatus(tower, device, points))

    def _on_offline(self, tower: str, device: str, reason: str) -> None:
        self._events.put_nowait(ev.DeviceOffline(tower, device, reason))

    def _on_fault(self, tower: str, device: str, error: DeviceError) -> None:
        """Bad data from a PLC: the core treats the device as offline (degraded,
        alarm raised, nothing decided from it) until a good status comes."""
        self._events.put_nowait(ev.DeviceOffline(tower, device, f"bad data: {error}"))

    async def _core_loop(self) -> None:
        while True:
            event = await self._events.get()
            await self.apply(event)

    async def _ticker(self) -> None:
        """Feed the core a Tick at its next deadline (and at least every second).

        `apply` wakes this loop early only when an event moved the core's next
        deadline before the one it sleeps towards.
        """
        assert self.core is not None
        while True:
            self._wake.clear()
            now = self._clock()
            deadline = self.core.next_deadline()
            self._tick_at = now + 1.0 if deadline is None else min(now + 1.0, deadline)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.005, self._tick_at - now)):
                    await self._wake.wait()
            await self.apply(ev.Tick())

    async def apply(self, event: ev.Event) -> list[act.Action]:
        """Apply one event to the core and carry out its actions, in order.

        RequestRefused from the core propagates to the caller (an operator
        request); nothing has changed in that case.
        """
        assert self.core is not None
        async with self._lock:
            if self.fatal is not None:
                raise _refused("controller_stopping", f"stopping: {self.fatal}")
            actions = self.core.handle(event, self._clock())
            try:
                await self._carry_out(actions)
            except JournalError as err:
                # The core has moved on in memory, the journal has not: nothing
                # more may be sent. Stop; the restart reconciles from the
                # journal and the PLCs.
                self.fatal = err
                _log.critical("journal.failed", reason=str(err))
                self.stop()
                raise _refused("journal_failed", str(err)) from None
        if not isinstance(event, ev.Tick):
            deadline = self.core.next_deadline()
            if deadline is not None and deadline < self._tick_at:
                self._wake.set()
        return actions

    async def _carry_out(self, actions: list[act.Action]) -> None:
        assert self.journal is not None
        assert self.feed is not None
        batch: list[Any] = []
        for action in actions:
            if isinstance(action, act.Persist):
                batch.append(action.record)
                continue
            if batch:
                await self.journal.write(batch)
                batch = []
            if isinstance(action, act.SendCommand):
                self._send(action)
            elif isinstance(action, act.Occupancy):
                self.feed.update_tower(
                    action.tower,
                    capacity=action.capacity,
                    occupied=action.occupied,
                    free=action.free,
                    free_ev=action.free_ev,
                    free_tall=action.free_tall,
                    closed=action.closed,
                    state=action.state,
                )
            elif isinstance(action, act.Alarm):
                _log.warning(
                    "alarm.raised",
                    tower=action.tower,
                    device=action.device,
                    code=action.code,
                    message=redact_tickets(action.message),
                )
            elif isinstance(action, act.AlarmCleared):
                _log.info(
                    "alarm.cleared",
                    tower=action.tower,
                    device=action.device,
                    code=action.code,
                )
        if batch:
            await self.journal.write(batch)

    def _send(self, command: act.SendCommand) -> None:
        driver = self.drivers[(command.tower, command.device)]
        first: dict[str, Any] = {"cmd_seq": command.seq}
        if "cmd_target" in driver.profile.registers:
            first["cmd_target"] = command.target
        if "cmd_side" in driver.profile.registers:
            first["cmd_side"] = command.side
        second = {"cmd_code": command.code}
        if command.code == "reset":
            first, second = {}, {"reset": 1}

        async def write() -> None:
            try:
                if first:
                    await driver.command(first, second)
                else:
                    await driver.command(second)
            except DeviceError as err:
                await self.apply(
                    ev.CommandWriteFailed(
                        command.tower, command.device, command.seq, str(err)
                    )
                )

        task = asyncio.create_task(
            write(), name=f"plc[{command.tower}/{command.device}].command"
        )
        self._pending_writes.add(task)
        task.add_done_callback(self._pending_writes.discard)

    # -- the control socket -------------------------------------------------

    async def _audit(self, role: Role, command: str, args: dict, outcome: str) -> None:
        assert self.journal is not None
        _log.info("operator.command", role=role.value, command=command, outcome=outcome)
        await self.journal.audit(role.value, command, args, outcome)

    async def _dispatch(self, command: str, args: dict, role: Role) -> dict:
        assert self.core is not None
        core = self.core
        if command == "status":
            status = _alarms_for(role, core.status())
            status["feed"] = {"connected": self.feed.connected if self.feed else False}
            for tower in status.get("towers", []):
                for name, device in tower.get("devices", {}).items():
                    driver = self.drivers.get((tower["id"], name))
                    device["online"] = bool(driver and driver.online)
            return status
        if command == "slots":
            tower_arg = _optional(args, "tower")
            towers = [tower_arg] if tower_arg else [t.id for t in self.site.towers]
            for tower in towers:
                self._check_tower(tower)
            return {
                "towers": [
                    {
                        "tower": t,
                        "slots": [_for(role, _with_state(s)) for s in core.slots(t)],
                    }
                    for t in towers
                ]
            }
        if command == "jobs":
            now = self._clock()
            return {"jobs": [_for(role, _with_progress(j, now)) for j in core.jobs()]}
        if command == "alarms":
            return {"alarms": _alarms_for(role, core.status()).get("alarms", [])}
        if command == "ticket":
            return core.ticket(_required(args, "ticket"))
        if command == "store":
            tower, bay = _tower_bay(args)
            self._check_tower(tower)
            ticket, job_id = new_ticket(), new_job_id()
            await self.apply(ev.StoreRequested(tower, bay, ticket, job_id))
            return {"job_id": job_id, "ticket": ticket, "tower": tower, "bay": bay}
        if command == "retrieve":
            ticket = _required(args, "ticket")
            bay = _optional(args, "bay")
            job_id = new_job_id()
            await self.apply(ev.RetrieveRequested(ticket, job_id, bay))
            job = next((j for j in core.jobs() if j["job_id"] == job_id), {})
            return {"job_id": job_id, "tower": job.get("tower"), "bay": job.get("bay")}
        if command == "cancel":
            await self.apply(ev.CancelJob(_required(args, "job_id")))
            return {"cancelled": args["job_id"]}
        if command == "reset":
            tower = _required(args, "tower")
            self._check_tower(tower)
            await self.apply(ev.ResetTower(tower))
            return {"reset": tower}
        if command == "mode":
            tower = _required(args, "tower")
            self._check_tower(tower)
            mode = _required(args, "mode")
            if mode not in ("auto", "manual"):
                raise _refused(
                    "bad_request", f"mode must be auto or manual, not {mode!r}"
                )
            await self.apply(ev.SetMode(tower, mode))
            state = next(
                t["state"] for t in core.status()["towers"] if t["id"] == tower
            )
            return {"tower": tower, "mode": mode, "state": state}
        if command == "place":
            ticket, place = _required(args, "ticket"), _required(args, "place")
            await self.apply(ev.PlaceCar(ticket, place))
            return {"placed": place}
        if command == "remove":
            await self.apply(ev.RemoveCar(_required(args, "ticket")))
            return {"removed": True}
        if command == "unblock":
            tower, slot = _required(args, "tower"), _required(args, "slot")
            self._check_tower(tower)
            await self.apply(ev.UnblockSlot(tower, slot))
            return {"tower": tower, "unblocked": slot}
        raise _refused("unknown_command", f"no command {command!r}")

    def _check_tower(self, tower: str) -> None:
        if tower not in {t.id for t in self.site.towers}:
            raise _refused("unknown_tower", f"no tower {tower!r} on this site")


class SiteMismatch(TowerError):
    """Raised at start when the site file and a profile cannot work together."""


def _check_fits(tower: str, device: str, profile: Profile, heartbeat_ms: int) -> None:
    if device == "lift":
        kind = "lift"
    elif device.startswith("shuttle-"):
        kind = "shuttle"
    else:
        kind = "bay"  # every other device of a tower is one of its bays
    if profile.kind.value != kind:
        raise SiteMismatch(
            f"{tower}/{device}: profile {profile.source} describes a "
            f"{profile.kind.value}, not a {kind}"
        )
    if heartbeat_ms * 2 > profile.heartbeat_timeout_ms:
        raise SiteMismatch(
            f"{tower}/{device}: poll.heartbeat_ms = {heartbeat_ms} is more than half "
            f"the PLC's heartbeat_timeout_ms = {profile.heartbeat_timeout_ms}; the "
            "PLC would stop its motions"
        )


class _StopRequested(Exception):
    """Raised inside the task group to end it on a clean stop."""


def _with_state(slot: dict[str, Any]) -> dict[str, Any]:
    """A slot as the console shows it: one state word."""
    if slot.get("disabled"):
        state = "disabled"
    elif slot.get("blocked"):
        state = "blocked"
    elif slot.get("ticket"):
        state = "occupied"
    elif slot.get("reserved_by"):
        state = "reserved"
    else:
        state = "free"
    return {**slot, "state": state}


def _with_progress(job: dict[str, Any], now: float) -> dict[str, Any]:
    """A job with the command it runs now and its age, for the console."""
    running = [
        s["command"] for s in job.get("steps", []) if s["state"] in ("sent", "accepted")
    ]
    done = sum(1 for s in job.get("steps", []) if s["state"] == "done")
    total = len(job.get("steps", []))
    step = "; ".join(running) or (f"{done}/{total} done" if total else "")
    created = job.get("created_at")
    age_s = round(now - created, 1) if isinstance(created, int | float) else None
    return {**job, "step": step, "age_s": age_s}


def _for(role: Role, item: dict[str, Any]) -> dict[str, Any]:
    """What a role may see: a viewer gets no tickets (a ticket fetches a car)."""
    if role is not Role.VIEWER or not item.get("ticket"):
        return item
    return {**item, "ticket": "<hidden>"}


def _alarms_for(role: Role, status: dict[str, Any]) -> dict[str, Any]:
    """A status whose alarm messages a role may read: a viewer's have their
    tickets replaced (an alarm about a car names its ticket)."""
    if role is not Role.VIEWER:
        return status

    def redacted(alarms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**a, "message": redact_tickets(str(a.get("message", "")))} for a in alarms
        ]

    towers = [
        {**t, "alarms": redacted(t.get("alarms", []))} for t in status.get("towers", [])
    ]
    return {**status, "alarms": redacted(status.get("alarms", [])), "towers": towers}


def _optional(args: dict, name: str) -> str | None:
    value = args.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _refused("bad_request", f"argument {name!r} must be a non-empty string")
    return value


def _required(args: dict, name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise _refused("bad_request", f"argument {name!r} (a string) is required")
    return value


def _tower_bay(args: dict) -> tuple[str, str]:
    if "tower" in args and "bay" in args:
        return _required(args, "tower"), _required(args, "bay")
    spec = _required(args, "bay")
    tower, sep, bay = spec.partition("/")
    if not sep or not tower or not bay:
        raise _refused(
            "bad_request", f"bay must be TOWER/BAY, e.g. tower-a/bay-1, not {spec!r}"
        )
    return tower, bay


async def run_controller(controller: Controller) -> int:
    """Run a controller; a clean stop returns 0."""
    try:
        await controller.run()
    except* _StopRequested:
        pass
    return 1 if controller.fatal is not None else 0


def mqtt_url_from(site: SiteConfig, override: str | None) -> str:
    """The broker URL: --mqtt, else TOWER_MQTT_URL, else the site file."""
    return override or os.environ.get("TOWER_MQTT_URL") or site.mqtt.url
