"""The Modbus TCP driver: one task and one connection per PLC.

Theory of operation
-------------------
A `DeviceDriver` owns at most one pymodbus client, and so one TCP connection to
its device, and never has more than one request in flight on it. Its task loops:
connect, serve, and after a failure close the connection, wait a capped,
jittered backoff, and connect again. Serving means: read the status span(s)
every poll period, write the controller heartbeat every heartbeat period (only
once a status read has succeeded on this connection), and write queued commands
as soon as they come (a command is followed by an immediate status read so its
acceptance shows fast).

It decides nothing. Decoded status goes to `on_status`, a lost device to
`on_offline` (once per outage, and logged once; its return is logged once), bad
data to `on_fault`. The core judges the handshake from the statuses it is given;
a status that is not passed on leaves the core with the last good one, which
the driver also keeps (`last_status`, `stale`).

How each fault is met:

- *link faults* (no answer by the deadline, the link lost, a reply that does
  not answer the request: transaction id, unit id, function or size): the
  connection is closed and the device is offline at once;
- *transient exception replies* (busy, acknowledge, gateway, device failure, a
  code the standard does not define): the connection stays and the turn is
  skipped; the `max_errors`-th failed request in a row takes the device offline;
- *permanent exception replies* (illegal function, address or value) on a
  status read or the heartbeat: offline at once, naming register and code;
- *any exception reply on a command write*: the command fails to its caller
  (the core decides); a transient one also counts as above;
- *bad data* (a code or value the profile forbids): the status is not passed
  on, `on_fault` hears of it once per run of bad reads, and the `max_errors`-th
  in a row takes the device offline.

Rules that keep the link honest:

- every request and every connect has a deadline (`asyncio.timeout`), and a
  request also ends at once when the peer closes or resets the connection;
  pymodbus' own retries and reconnects are off (`retries=0`,
  `reconnect_delay=0`), so no request is ever repeated behind our back;
- a request that times out closes the connection: a reply that arrives late
  can then never be taken for the answer to a later request. (pymodbus 3.16
  would skip a late reply by its transaction id anyway, except one that
  carries id 0; every reply is checked against the request it answers.)
- a cancelled driver stops: every pymodbus call runs in a task of its own,
  so a cancellation is never swallowed inside it;
- the old connection is closed, its socket released, before a new one is
  opened: a gateway that takes one client never sees two of ours;
- the profile's `min_request_gap_ms` is kept between the end of one request
  and the start of the next, across reconnects too.
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
from pymodbus.pdu import ModbusPDU

from tower.errors import BadData, DeviceError, exception_is_retryable
from tower.plc.codec import BadValue, Table
from tower.plc.profile import Profile, Write

StatusCallback = Callable[[str, str, dict[str, Any]], None]
OfflineCallback = Callable[[str, str, str], None]
FaultCallback = Callable[[str, str, DeviceError], None]

_log = structlog.get_logger("tower.plc")

OWNER_WINDOW = 8
"""How many heartbeat read-backs the second-master check looks at."""
OWNER_FOREIGN = 2
"""Foreign read-backs among them that mark a device contested."""
OWNER_CONFIRM = 2
"""Own read-backs in a row after a connect before the device is `owned`."""

_READ_FUNCTIONS = {Table.COIL: 1, Table.DISCRETE_INPUT: 2}
"""Function codes of the bit reads; register reads are 3 (holding), 4 (input)."""


@dataclass
class Backoff:
    """Capped exponential backoff with jitter: the pause before each reconnect.

    The n-th delay (from 0) is drawn uniformly from [c / 2, c] with
    c = min(max_s, min_s * 2 ** (n + 1)), and never falls below min_s: delays
    grow, stay at most max_s, and devices that failed together do not all come
    back at the same instant. `reset` starts again from the first delay.
    """

    min_s: float = 0.2
    max_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        """The next delay, seconds."""
        ceiling = min(self.max_s, self.min_s * 2 ** (self._attempt + 1))
        if ceiling < self.max_s:
            self._attempt += 1
        delay = ceiling / 2 + self.rng.random() * ceiling / 2
        return max(self.min_s, delay)

    def reset(self) -> None:
        """Start again from the shortest delay (after a good poll)."""
        self._attempt = 0


@dataclass
class _Command:
    points: list[dict[str, Any]]
    done: asyncio.Future[None]


class WriteNotKept(DeviceError):
    """A command parameter did not read back as written: the PLC rejected or
    clamped it. The command's latch was not written."""


@dataclass(frozen=True)
class _Where:
    """What a request is for, to name it in errors and the frame ring."""

    register: str
    table: Table
    address: int

    def __str__(self) -> str:
        return f"{self.register} ({self.table.value} {self.address})"


class _LinkLost(Exception):
    """The peer closed or reset the connection while a request was out."""


class DeviceDriver:
    """Polls one PLC, writes its heartbeat and its commands.

    `on_status(tower, device, points)` gets every good status read,
    `on_offline(tower, device, reason)` the start of every outage, and
    `on_fault(tower, device, error)`, if given, bad data: reads whose status
    was not passed on although the link is up (the error is a `BadData`
    naming the register and the raw value). `timeout_s` is the deadline of one
    request and of a connect; `max_errors` how many transient failures in a
    row (exception replies, bad data) a device gets before it counts as
    offline.
    """

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
        on_fault: FaultCallback | None = None,
        max_errors: int = 3,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat_start: int | None = None,
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
        self._on_fault = on_fault
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._client: AsyncModbusTcpClient | None = None
        self._lost: asyncio.Future[None] | None = None
        self._sent: ModbusPDU | None = None
        self._queue: asyncio.Queue[_Command] = asyncio.Queue()
        self._current: _Command | None = None
        self._online = False
        self._reported_down = False
        self._bad_reported = False
        self._polled = False
        self._errors = 0
        # A random start: two controllers started together would otherwise
        # count in step, and neither would see the other's writes.
        if heartbeat_start is None:
            heartbeat_start = random.randrange(65536)
        self._heartbeat = heartbeat_start % 65536
        self._hb_written: int | None = None  # last heartbeat written, this link
        # Whether each of the last read-backs was someone else's value.
        self._hb_owner: deque[bool] = deque(maxlen=OWNER_WINDOW)
        self.contested = False
        """Whether another master writes this PLC's controller heartbeat."""
        self._hb_streak = 0  # our own read-backs in a row
        self._confirmed = False  # OWNER_CONFIRM of them seen on this connection
        self._last_request = -float("inf")
        self._gap_s = profile.min_request_gap_ms / 1000
        self._frames: deque[str] = deque(maxlen=32)
        self._names: dict[tuple[Table, int, int], _Where] = {}
        self._log = _log.bind(tower=tower, device=device, unit_id=unit_id)
        self.last_status: dict[str, Any] | None = None
        self.stale = True
        self.polls = 0

    @property
    def owned(self) -> bool:
        """Whether this connection has read its own heartbeat back from the
        PLC `OWNER_CONFIRM` times in a row, and no other master shows since
        (before that, a second controller started a moment ago would not show
        yet). Reported in every status; the core does not wait for it yet,
        see `DeviceLink.healthy`."""
        return self._confirmed and not self.contested

    @property
    def name(self) -> str:
        """The task name prefix, `plc[tower/device]`."""
        return f"plc[{self.tower}/{self.device}]"

    @property
    def online(self) -> bool:
        """Whether the last poll on the current connection passed the status on."""
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
                delay_s = self._backoff.next_delay()
                self._log.debug("plc.reconnect", delay_s=round(delay_s, 3))
                await asyncio.sleep(delay_s)
        finally:
            await self._disconnect()
            self._fail_queued("driver stopped")

    # -- the connection -------------------------------------------------------

    async def _connect(self) -> None:
        await self._disconnect()  # never two of ours open to one device
        self._hb_written = None  # a PLC restart may have cleared the register
        self._hb_owner.clear()
        self._hb_streak, self._confirmed = 0, False
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lost = lost

        def trace_connect(connected: bool) -> None:
            # pymodbus calls this with False only when the peer ends the link,
            # not when we close it; a request in flight then ends at once.
            if not connected and not lost.done():
                lost.set_result(None)

        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            # Our own deadline (below, and in _request) is the one that fires.
            timeout=2 * self.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=self.name,
            trace_pdu=self._trace_pdu,
            trace_connect=trace_connect,
        )
        self._client = client
        self._polled = False
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await _in_own_task(client.connect(), f"{self.name}.connect")
        except (TimeoutError, OSError, ModbusException, _LinkLost) as exc:
            detail = f"cannot connect to {self.host}:{self.port}: {exc}"
            raise self._error(detail) from None
        if not ok:
            raise self._error(f"cannot connect to {self.host}:{self.port}")

    async def _disconnect(self) -> None:
        """Close the connection and let the loop release its socket."""
        client, self._client = self._client, None
        self._lost = None
        if client is None:
            return
        # pymodbus 3.16 keeps the asyncio transport in client.ctx; abort drops
        # anything unsent (a half-open peer may never read it) where close()
        # would wait for it to drain before the socket goes.
        transport = getattr(client.ctx, "transport", None)
        client.close()
        if transport is not None:
            transport.abort()
        await asyncio.sleep(0)  # the transport closes its socket on this turn

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending:
            self._sent = pdu
        return pdu

    # -- serving --------------------------------------------------------------

    async def _serve(self) -> None:
        next_poll = next_heartbeat = self._clock()
        while True:
            # Status first: after a (re)connect nothing is written before the
            # controller has read what the PLC reports.
            now = self._clock()
            if now >= next_poll:
                await self._poll()
                next_poll = now + self.poll_s
            if self._polled and now >= next_heartbeat:
                await self._write_heartbeat()
                next_heartbeat = now + self.heartbeat_s
            due = min(next_poll, next_heartbeat) if self._polled else next_poll
            wait_s = max(0.0, due - self._clock())
            try:
                async with asyncio.timeout(wait_s):
                    command = await self._queue.get()
            except TimeoutError:
                continue
            await self._run_command(command)
            await self._poll()
            next_poll = self._clock() + self.poll_s

    async def _poll(self) -> None:
        try:
            points = await self._read_status()
        except DeviceError as err:
            self.stale = True
            self._failed(err)
            return

        self._errors = 0
        self._bad_reported = False
        self._polled = True
        self.polls += 1
        points["contested"] = self.contested  # see _check_heartbeat_owner
        points["owned"] = self.owned
        self.last_status, self.stale = points, False
        if not self._online:
            self._online = True
            self._backoff.reset()
            self._log.info("plc.online", host=self.host, port=self.port)
            self._reported_down = False
        self._on_status(self.tower, self.device, points)

    async def _read_status(self) -> dict[str, Any]:
        points: dict[str, Any] = {}
        for span in self.profile.status_reads():
            where = self._where(span.table, span.start, span.end)
            values = await self._read(span.table, span.start, span.count, where)
            try:
                points.update(self.profile.decode_block(span.table, span.start, values))
            except BadValue as bad:
                self._frames.append(f"{where}: bad data {bad.register}={bad.raw!r}")
                raise BadData(
                    self.tower,
                    self.device,
                    self.unit_id,
                    f"bad data: {bad.label} raw {bad.raw!r}: {bad.reason}",
                    register=bad.register,
                    table=bad.table.value,
                    address=bad.address,
                    raw=bad.raw,
                ) from None
        return points

    async def _write_heartbeat(self) -> None:
        self._heartbeat = (self._heartbeat + 1) % 65536
        try:
            await self._check_heartbeat_owner()
            for write in self.profile.encode_points({"heartbeat_ctl": self._heartbeat}):
                await self._write(write)
            self._hb_written = self._heartbeat
        except DeviceError as err:
            self._failed(err)

    async def _check_heartbeat_owner(self) -> None:
        """Read our heartbeat register back before writing the next value.

        Only we write it, so it holds what we wrote last. Another master (a
        second controller, a test panel) writing it too shows in some of the
        read-backs, not all: the two write in turns that drift against each
        other. `OWNER_FOREIGN` foreign read-backs among the last
        `OWNER_WINDOW` mark the device `contested`, reported with every
        status; it clears once a whole window of read-backs is ours.
        """
        if self._hb_written is None:
            return  # nothing of ours in it on this connection yet
        reg = self.profile.register("heartbeat_ctl")
        where = self._where(reg.table, reg.wire_address, reg.end)
        raw = await self._read(reg.table, reg.wire_address, reg.words, where)
        try:
            found = reg.decode(raw)
        except BadValue:
            found = None
        self._hb_owner.append(found != self._hb_written)
        self._hb_streak = 0 if found != self._hb_written else self._hb_streak + 1
        if self._hb_streak >= OWNER_CONFIRM:
            self._confirmed = True
        foreign = sum(self._hb_owner)
        if not self.contested and foreign >= OWNER_FOREIGN:
            self.contested = True
            self._log.error(
                "plc.second_master",
                register=reg.label,
                address=reg.address,
                wrote=self._hb_written,
                read_back=found,
            )
        elif self.contested and foreign == 0 and len(self._hb_owner) == OWNER_WINDOW:
            self.contested = False
            self._log.info("plc.heartbeat_owner_back", register=reg.label)

    async def _run_command(self, command: _Command) -> None:
        """Write a command's groups in order; its future says how it went.

        Nothing is sent when a value does not encode (the caller's error, not
        the device's). A link fault or a transient exception reply also counts
        against the connection, as for a poll; a permanent one only fails the
        command.
        """
        if command.done.done():
            return  # its caller gave up waiting: nobody would see the outcome
        try:
            groups = [self.profile.encode_points(g) for g in command.points]
        except (KeyError, ValueError) as exc:
            _settle(command, exc)
            return

        # Left set if the task is cancelled mid-write: run() then fails it.
        self._current = command
        try:
            for index, writes in enumerate(groups):
                for write in writes:
                    await self._write(write)
                if index < len(groups) - 1:
                    # The parameters must stand as written before the group
                    # that latches them (the command code) goes out.
                    await self._verify(writes)
        except WriteNotKept as err:
            self._current = None
            _settle(command, err)  # the link is fine: the PLC answered
            return
        except DeviceError as err:
            self._current = None
            _settle(command, err)
            if err.exception_code is None or err.retryable:
                self._failed(err)
            return
        self._current = None
        _settle(command, None)

    async def _verify(self, writes: list[Write]) -> None:
        """Read written registers back; a PLC that rejected or clamped a value
        (another value reads back) fails the command with `WriteNotKept`,
        naming the register and both values, before anything latches it."""
        for write in writes:
            count = len(write.values)
            where = self._where(write.table, write.start, write.start + count)
            found = [
                int(v) for v in await self._read(write.table, write.start, count, where)
            ]
            wrote = [int(v) for v in write.values]
            for reg in self.profile.registers.values():
                at = reg.wire_address - write.start
                if reg.table is not write.table or not 0 <= at < count:
                    continue
                mine, theirs = wrote[at : at + reg.words], found[at : at + reg.words]
                if mine == theirs:
                    continue
                try:
                    shown = reg.decode(theirs)
                except BadValue:
                    shown = theirs
                self._log.error(
                    "plc.write_not_kept",
                    register=reg.label,
                    address=reg.address,
                    wrote=reg.decode(mine),
                    read_back=shown,
                )
                raise WriteNotKept(
                    self.tower,
                    self.device,
                    self.unit_id,
                    f"wrote {reg.decode(mine)!r}, reads back {shown!r}: "
                    "rejected or clamped by the PLC; the command was not latched",
                    register=f"{reg.name} ({reg.label})",
                    retryable=False,
                    table=reg.table.value,
                    address=reg.address,
                )

    def _failed(self, err: DeviceError) -> None:
        """Count a failed request; raise it when it ends the connection.

        A fault of the link ends it at once, and so does a permanent exception
        reply (callers that can live with one handle it before). Transient
        exception replies and bad data only skip the turn until `max_errors`
        of them come in a row.
        """
        transient = isinstance(err, BadData) or (
            err.exception_code is not None and err.retryable
        )
        if not transient:
            raise err
        if isinstance(err, BadData) and not self._bad_reported:
            self._bad_reported = True
            self._log.warning(
                "plc.bad_data",
                register=err.register,
                table=err.table,
                address=err.address,
                raw=repr(err.raw),
                reason=err.detail,
            )
            if self._on_fault is not None:
                self._on_fault(self.tower, self.device, err)
        self._errors += 1
        if self._errors >= self.max_errors:
            raise err

    # -- requests ---------------------------------------------------------------

    async def _read(
        self, table: Table, start: int, count: int, where: _Where
    ) -> list[Any]:
        def call(client: AsyncModbusTcpClient) -> Awaitable[Any]:
            read = {
                Table.HOLDING: client.read_holding_registers,
                Table.INPUT: client.read_input_registers,
                Table.COIL: client.read_coils,
                Table.DISCRETE_INPUT: client.read_discrete_inputs,
            }[table]
            return read(start, count=count, device_id=self.unit_id)

        reply = await self._request(call, where)
        if table.holds_bits:
            values: list[Any] = list(reply.bits)
            if len(values) < count:
                raise self._error(f"reply holds {len(values)} bits", where=where)
            return values[:count]
        values = list(reply.registers)
        if len(values) != count:
            raise self._error(f"reply holds {len(values)} registers", where=where)
        return values

    async def _write(self, write: Write) -> None:
        where = self._where(write.table, write.start, write.start + len(write.values))
        if write.table not in (Table.HOLDING, Table.COIL):
            raise self._error(
                f"cannot write table {write.table.value}", where=where, retryable=False
            )

        def call(client: AsyncModbusTcpClient) -> Awaitable[Any]:
            unit = self.unit_id
            if write.table is Table.HOLDING:
                words = [int(v) for v in write.values]
                return client.write_registers(write.start, words, device_id=unit)
            bits = [bool(v) for v in write.values]
            if len(bits) == 1:
                return client.write_coil(write.start, bits[0], device_id=unit)
            return client.write_coils(write.start, bits, device_id=unit)

        await self._request(call, where)

    async def _request(
        self,
        call: Callable[[AsyncModbusTcpClient], Awaitable[Any]],
        where: _Where,
    ) -> Any:
        """Send one request and return its reply; DeviceError for anything else.

        The call is made inside the deadline: pymodbus raises at once, before
        anything is sent, on a connection the peer has closed.
        """
        await self._keep_gap()
        client, lost = self._client, self._lost
        if client is None or lost is None:
            raise self._error("not connected", where=where)
        self._sent = None
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await _in_own_task(call(client), f"{self.name}.request", lost)
        except TimeoutError:
            self._frames.append(f"{where}: timeout")
            raise self._error(
                f"no answer within {self.timeout_s * 1000:.0f} ms", where=where
            ) from None
        except _LinkLost:
            self._frames.append(f"{where}: connection lost")
            raise self._error("connection closed by the device", where=where) from None
        except (ModbusException, OSError) as exc:
            self._frames.append(f"{where}: {exc}")
            raise self._error(str(exc), where=where) from None
        finally:
            self._last_request = self._clock()

        self._check_reply(reply, where)
        if reply.isError():
            code = int(reply.exception_code)
            self._frames.append(f"{where}: exception {code}")
            raise self._error(
                "exception reply",
                where=where,
                code=code,
                retryable=exception_is_retryable(code),
            )
        self._frames.append(f"{where}: ok")
        return reply

    def _check_reply(self, reply: ModbusPDU, where: _Where) -> None:
        """Refuse a reply that does not answer the request just sent.

        pymodbus accepts a reply with transaction id 0 as the answer to any
        request and does not compare function codes; a peer that sends one is
        not to be trusted on this connection.
        """
        sent = self._sent
        problem = ""
        if sent is None:
            problem = "reply without a request"
        elif reply.transaction_id != sent.transaction_id:
            problem = (
                f"reply to transaction {reply.transaction_id}, "
                f"asked {sent.transaction_id}"
            )
        elif reply.dev_id != self.unit_id:
            problem = f"reply from unit {reply.dev_id}"
        elif reply.function_code & 0x7F != sent.function_code:
            problem = (
                f"reply to function {reply.function_code & 0x7F}, "
                f"asked {sent.function_code}"
            )
        if problem:
            self._frames.append(f"{where}: {problem}")
            raise self._error(problem, where=where)

    async def _keep_gap(self) -> None:
        wait_s = self._last_request + self._gap_s - self._clock()
        if wait_s > 0:
            await asyncio.sleep(wait_s)

    # -- naming and reporting -------------------------------------------------

    def _where(self, table: Table, start: int, end: int) -> _Where:
        """Name the registers of a request: `state`, or `state..flags` for a run."""
        key = (table, start, end)
        if key not in self._names:
            regs = sorted(
                (
                    reg
                    for reg in self.profile.registers.values()
                    if reg.table is table and start <= reg.wire_address < end
                ),
                key=lambda reg: reg.wire_address,
            )
            first, last = regs[0], regs[-1]
            name = first.name if first is last else f"{first.name}..{last.name}"
            self._names[key] = _Where(name, table, first.address)
        return self._names[key]

    def _error(
        self,
        detail: str,
        *,
        where: _Where | None = None,
        code: int | None = None,
        retryable: bool = True,
    ) -> DeviceError:
        return DeviceError(
            self.tower,
            self.device,
            self.unit_id,
            detail,
            register=where.register if where else "",
            exception_code=code,
            retryable=retryable,
            table=where.table.value if where else "",
            address=where.address if where else None,
        )

    def _went_offline(self, err: DeviceError) -> None:
        """Report an outage once: at its start, not at every failed reconnect."""
        self._online = False
        self.stale = True
        self._errors = 0
        if self._reported_down:
            return
        self._reported_down = True
        self._log.error(
            "plc.offline",
            reason=str(err),
            register=err.register,
            exception_code=err.exception_code,
            recent_frames=list(self._frames),
        )
        self._on_offline(self.tower, self.device, str(err))

    def _fail_queued(self, reason: str) -> None:
        error = DeviceError(self.tower, self.device, self.unit_id, reason)
        if self._current is not None:
            _settle(self._current, error)
        while not self._queue.empty():
            _settle(self._queue.get_nowait(), error)


def _settle(command: _Command, error: Exception | None) -> None:
    if command.done.done():
        return
    if error is None:
        command.done.set_result(None)
    else:
        command.done.set_exception(error)


async def _in_own_task(
    call: Awaitable[Any], name: str, lost: asyncio.Future[None] | None = None
) -> Any:
    """Await a pymodbus call in a task of its own; raise _LinkLost if `lost`
    is set first.

    Two reasons. pymodbus 3.16 leaves a request waiting for its timeout when
    the peer closes the connection under it; `lost` ends it when the link
    goes. And pymodbus awaits `asyncio.wait_for`, which on Python 3.11 can
    swallow a cancellation that arrives as its inner call completes: awaited
    directly, a cancelled driver could go on running. `asyncio.wait` never
    swallows one; the inner task is cancelled and waited for on the way out.
    """
    task = asyncio.ensure_future(call)
    task.set_name(name)
    waits: set[asyncio.Future[Any]] = {task} if lost is None else {task, lost}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    if task.cancelled():
        raise _LinkLost
    return task.result()
