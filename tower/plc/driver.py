"""The Modbus TCP driver: one task and one connection per PLC.

Theory of operation
-------------------
A `DeviceDriver` owns one pymodbus client and never has more than one request in
flight on it. Its task loops: connect (capped, jittered backoff while the device is
away), then serve: read the status span(s) every poll period, write the controller
heartbeat every heartbeat period, and write queued commands as soon as they come
(a command is followed by an immediate status read so its acceptance shows fast).

It decides nothing. Decoded status goes to `on_status`, a lost device to
`on_offline` (once per outage, and logged once; its return is logged once). The
core judges the handshake from the statuses it is given.

Rules that keep the link honest:

- every request has a deadline (`asyncio.timeout`); pymodbus' own retries are off,
  so a command write is never repeated behind our back;
- a request that times out drops the connection: a reply that arrives late can then
  never be taken for the answer to a later request;
- exception replies are sorted: busy/gateway/device failure are retryable (the
  device goes offline after `max_errors` in a row), illegal function/address/value
  are permanent (the profile and the device disagree: offline at once);
- a decoded value outside its enum is bad data, reported as offline with the reason,
  never passed on as a value;
- the profile's `min_request_gap_ms` is kept between requests.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from tower.errors import RETRYABLE_EXCEPTIONS, DeviceError
from tower.plc.codec import BadValue
from tower.plc.profile import Profile

StatusCallback = Callable[[str, str, dict[str, Any]], None]
OfflineCallback = Callable[[str, str, str], None]

_log = structlog.get_logger("tower.plc")


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter."""

    min_s: float = 0.2
    max_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.min_s * 2**self._attempt)
        self._attempt += 1
        return self.min_s + self.rng.random() * max(0.0, ceiling - self.min_s)

    def reset(self) -> None:
        self._attempt = 0


@dataclass
class _Command:
    points: list[dict[str, Any]]
    done: asyncio.Future[None]


class DeviceDriver:
    """Polls one PLC, writes its heartbeat and its commands."""

    def __init__(
        self,
        *,
        tower: str,
        device: str,
        profile: Profile,
        host: str,
        port: int,
        unit_id: int,
        poll_s: float,
        timeout_s: float,
        heartbeat_s: float,
        on_status: StatusCallback,
        on_offline: OfflineCallback,
        max_errors: int = 3,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tower = tower
        self.device = device
        self.profile = profile
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.max_errors = max_errors
        self._on_status = on_status
        self._on_offline = on_offline
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._client: AsyncModbusTcpClient | None = None
        self._queue: asyncio.Queue[_Command] = asyncio.Queue()
        self._online = False
        self._reported_down = False
        self._errors = 0
        self._heartbeat = 0
        self._last_request = 0.0
        self._gap_s = profile.min_request_gap_ms / 1000
        self._frames: deque[str] = deque(maxlen=32)
        self._log = _log.bind(tower=tower, device=device, unit_id=unit_id)
        self.polls = 0

    @property
    def name(self) -> str:
        return f"plc[{self.tower}/{self.device}]"

    @property
    def online(self) -> bool:
        return self._online

    async def command(self, *writes: dict[str, Any]) -> None:
        """Write groups of command points, in order, as separate requests.

        Raises DeviceError when the device is offline or a write fails; the caller
        (the core, through the service) decides what that means for the job.
        """
        if not self._online:
            raise DeviceError(
                self.tower, self.device, self.unit_id, "device is offline"
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Command(list(writes), done))
        await done

    async def run(self) -> None:
        """The driver task: connect, serve, and reconnect, until cancelled."""
        try:
            while True:
                try:
                    await self._connect()
                    await self._serve()
                except DeviceError as err:
                    self._went_offline(err)
                await self._disconnect()
                self._fail_queued("device is offline")
                await asyncio.sleep(self._backoff.next_delay())
        finally:
            await self._disconnect()
            self._fail_queued("driver stopped")

    async def _connect(self) -> None:
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=self.name,
        )
        self._client = client
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            detail = f"cannot connect to {self.host}:{self.port}: {exc}"
            raise self._error(detail) from None
        if not ok:
            raise self._error(f"cannot connect to {self.host}:{self.port}")

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _serve(self) -> None:
        next_poll = next_heartbeat = self._clock()
        while True:
            # Status first: after a (re)connect nothing is written before the
            # controller has read what the PLC reports.
            now = self._clock()
            if now >= next_poll:
                await self._tolerate(self._poll())
                next_poll = now + self.poll_s
            if now >= next_heartbeat:
                await self._tolerate(self._write_heartbeat())
                next_heartbeat = now + self.heartbeat_s
            wait_s = max(0.0, min(next_poll, next_heartbeat) - self._clock())
            try:
                async with asyncio.timeout(wait_s):
                    command = await self._queue.get()
            except TimeoutError:
                continue
            await self._run_command(command)
            await self._tolerate(self._poll())
            next_poll = self._clock() + self.poll_s

    async def _tolerate(self, request: Awaitable[None]) -> None:
        """Run a request; a busy reply below the error limit only skips this turn.

        Anything else (a timeout, a lost link, a permanent exception, bad data, or
        too many busy replies in a row) ends the connection.
        """
        try:
            await request
        except DeviceError as err:
            busy = err.exception_code is not None and err.retryable
            if not busy or self._errors >= self.max_errors:
                raise

    async def _run_command(self, command: _Command) -> None:
        try:
            for points in command.points:
                for write in self.profile.encode_points(points):
                    await self._write(write, ",".join(points))
        except DeviceError as err:
            if not command.done.done():
                command.done.set_exception(err)
            busy = err.exception_code is not None and err.retryable
            if not busy or self._errors >= self.max_errors:
                raise
            return
        if not command.done.done():
            command.done.set_result(None)

    async def _write_heartbeat(self) -> None:
        self._heartbeat = (self._heartbeat + 1) % 65536
        for write in self.profile.encode_points({"heartbeat_ctl": self._heartbeat}):
            await self._write(write, "heartbeat_ctl")

    async def _poll(self) -> None:
        points: dict[str, Any] = {}
        for span in self.profile.status_reads():
            values = await self._read(span.table, span.start, span.count)
            try:
                points.update(self.profile.decode_block(span.table, span.start, values))
            except BadValue as bad:
                raise self._error(f"bad data: {bad}", retryable=True) from None
        self.polls += 1
        if not self._online:
            self._online = True
            self._backoff.reset()
            self._log.info("plc.online", host=self.host, port=self.port)
            self._reported_down = False
        self._on_status(self.tower, self.device, points)

    async def _read(self, table: str, start: int, count: int) -> list[Any]:
        client = self._require_client()
        read = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete_input": client.read_discrete_inputs,
        }[table]
        reply = await self._request(
            read(start, count=count, device_id=self.unit_id),
            f"{table}[{start}+{count}]",
        )
        if table in ("coil", "discrete_input"):
            return list(reply.bits[:count])
        return list(reply.registers)

    async def _write(self, write: Any, label: str) -> None:
        client = self._require_client()
        if write.table == "coil":
            bits = [bool(v) for v in write.values]
            call = (
                client.write_coil(write.start, bits[0], device_id=self.unit_id)
                if len(bits) == 1
                else client.write_coils(write.start, bits, device_id=self.unit_id)
            )
        elif write.table == "holding":
            call = client.write_registers(
                write.start, list(write.values), device_id=self.unit_id
            )
        else:
            raise self._error(f"cannot write table {write.table}", retryable=False)
        await self._request(call, label)

    async def _request(self, call: Awaitable[Any], label: str) -> Any:
        gap = self._last_request + self._gap_s - self._clock()
        if gap > 0:
            await asyncio.sleep(gap)
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await call
        except TimeoutError:
            self._frames.append(f"{label}: timeout")
            raise self._error(
                f"no answer within {self.timeout_s * 1000:.0f} ms", register=label
            ) from None
        except (ModbusException, OSError) as exc:
            self._frames.append(f"{label}: {exc}")
            raise self._error(str(exc), register=label) from None
        finally:
            self._last_request = self._clock()

        if reply.isError():
            code = reply.exception_code
            self._frames.append(f"{label}: exception {code}")
            self._errors += 1
            raise self._error(
                "exception reply",
                register=label,
                code=code,
                retryable=code in RETRYABLE_EXCEPTIONS,
            )
        self._errors = 0
        self._frames.append(f"{label}: ok")
        return reply

    def _require_client(self) -> AsyncModbusTcpClient:
        if self._client is None:
            raise self._error("not connected")
        return self._client

    def _error(
        self,
        detail: str,
        *,
        register: str = "",
        code: int | None = None,
        retryable: bool = True,
    ) -> DeviceError:
        return DeviceError(
            self.tower,
            self.device,
            self.unit_id,
            detail,
            register=register,
            exception_code=code,
            retryable=retryable,
        )

    def _went_offline(self, err: DeviceError) -> None:
        """Report an outage once: at its start, not at every failed reconnect."""
        self._online = False
        self._errors = 0
        if self._reported_down:
            return
        self._reported_down = True
        self._log.error(
            "plc.offline", reason=str(err), recent_frames=list(self._frames)
        )
        self._on_offline(self.tower, self.device, str(err))

    def _fail_queued(self, reason: str) -> None:
        while not self._queue.empty():
            command = self._queue.get_nowait()
            if not command.done.done():
                command.done.set_exception(
                    DeviceError(self.tower, self.device, self.unit_id, reason)
                )
