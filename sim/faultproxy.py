"""A fault-injecting Modbus TCP proxy on loopback, for the driver's fault tests.

Theory of operation
-------------------
`FaultProxy` listens on a free loopback port and stands between a Modbus client
(the controller's driver) and one Modbus TCP server (a simulated PLC). For every
client connection it opens its own connection to the target and then works
request by request: it reads one whole Modbus TCP frame from the client (the
7-byte MBAP header: transaction id, protocol id, length, unit id; then the
PDU), decides what the current fault says, and either forwards it and relays
the target's reply or answers (or fails to answer) by itself.

The faults are what a real link does to a controller:

- `drop_replies()`: the request goes to the PLC, the reply never comes back,
  the connection stays open (a half-open peer, a gateway that lost its PLC);
- `delay_replies(s)`: the reply comes `s` seconds late; meanwhile the proxy
  goes on reading and relaying, so a late reply can land after a later
  request, as on a real network;
- `answer_exception(code)`: the proxy answers with a Modbus exception (6 busy,
  2 illegal data address, 4 device failure, ...) instead of forwarding;
- `corrupt_replies(Corruption.X)`: the reply is relayed damaged (a length
  field that promises more than comes, another transaction id);
- `reset_after(n)`: the connection is reset (TCP RST) when the request after
  the next `n` arrives;
- `reset_connections()`: every open connection is reset now, between requests
  or not (a gateway reboot);
- `refuse_connections()`: every new connection is reset at once (a device that
  is down, with its TCP stack still up, or a full gateway);
- `single_client`: a gateway that serves one client at a time; a second
  connection is refused (`SingleClient.REFUSE`) or takes over, the first
  being reset (`SingleClient.REPLACE`).

A request fault applies to the next `count` requests (all of them when `count`
is None) and then the proxy passes again. Counters measure the client's
behaviour: `connections` (every connection the client opened, refused ones
too; `connected_at` says when each came), `requests`,
`max_concurrent_connections`, `refused`, `displaced`, and `exchanges`, a
record of every request with the time it arrived and the time its answer left,
to check the client's pacing.

Only loopback: the proxy listens on 127.0.0.1 and connects to the target it is
given, which the tests keep on loopback too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

import structlog

_log = structlog.get_logger("sim.faultproxy")

MBAP_BYTES = 7
"""Transaction id (2), protocol id (2), length (2), unit id (1)."""
MAX_FRAME_LENGTH = 254
"""Largest MBAP length field: unit id plus a 253-byte PDU."""
CONNECT_TIMEOUT_S = 2.0
"""How long the proxy waits for the target to accept its connection."""


class Corruption(StrEnum):
    """How a relayed reply is damaged."""

    LENGTH = "length"  # The MBAP length promises 4 more bytes than are sent.
    TRANSACTION_ID = "transaction_id"  # The reply carries another request's id.
    TRANSACTION_ID_ZERO = "transaction_id_zero"  # The reply carries id 0.


class SingleClient(StrEnum):
    """What a one-client gateway does with a second connection."""

    REFUSE = "refuse"  # The newcomer is reset; the first keeps its session.
    REPLACE = "replace"  # The first is reset; the newcomer takes over.


@dataclass
class Exchange:
    """One request the proxy saw, and what became of it.

    `request_at` and `reply_at` are `time.monotonic()` seconds; `reply_at` is
    when the answer left the proxy (None if none ever did). `outcome` is one of
    forwarded, dropped, delayed, exception, corrupted, reset.
    """

    connection: int
    transaction_id: int
    unit_id: int
    function_code: int
    request_at: float
    outcome: str = "forwarded"
    reply_at: float | None = None


@dataclass
class _Fault:
    kind: str  # drop, delay, exception, corrupt
    remaining: int | None
    delay_s: float = 0.0
    code: int = 0
    corruption: Corruption = Corruption.LENGTH


@dataclass(eq=False)
class _Link:
    number: int
    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None


class FaultProxy:
    """A Modbus TCP proxy in front of one server, with faults set at run time."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.single_client: SingleClient | None = None
        self.connections = 0
        self.requests = 0
        self.refused = 0
        self.displaced = 0
        self.max_concurrent_connections = 0
        self.connected_at: list[float] = []
        self.exchanges: deque[Exchange] = deque(maxlen=10_000)
        self._fault: _Fault | None = None
        self._refuse = False
        self._reset_in: int | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._late: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> int:
        """Listen on a free loopback port; the port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop listening, reset every connection and wait for the handlers."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in self._late:
            task.cancel()
        for link in list(self._links):
            self._reset(link.client)
            if link.target is not None:
                link.target.transport.abort()
        handlers = self._handlers | self._late
        await asyncio.gather(*handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- faults ------------------------------------------------------------------

    def passthrough(self) -> None:
        """Relay every request and reply unchanged (cancels a pending reset)."""
        self._fault = None
        self._reset_in = None

    def drop_replies(self, *, count: int | None = None) -> None:
        """Forward requests but never answer; the connection stays open."""
        self._fault = _Fault("drop", count)

    def delay_replies(self, delay_s: float, *, count: int | None = None) -> None:
        """Relay replies `delay_s` seconds late, still reading new requests."""
        self._fault = _Fault("delay", count, delay_s=delay_s)

    def answer_exception(self, code: int, *, count: int | None = None) -> None:
        """Answer with Modbus exception `code`; the target never sees the request."""
        self._fault = _Fault("exception", count, code=code)

    def corrupt_replies(
        self, corruption: Corruption, *, count: int | None = None
    ) -> None:
        """Relay replies damaged as `corruption` says."""
        self._fault = _Fault("corrupt", count, corruption=corruption)

    def reset_after(self, requests: int) -> None:
        """Reset the connection (RST) when the request after the next
        `requests` arrives; once."""
        self._reset_in = requests

    def reset_connections(self) -> None:
        """Reset every open client connection now, between requests or not."""
        for link in list(self._links):
            self._reset(link.client)

    def refuse_connections(self, refuse: bool = True) -> None:
        """Reset every new connection at once (True) or accept again (False)."""
        self._refuse = refuse

    # -- the connections ---------------------------------------------------------

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections += 1
        self.connected_at.append(time.monotonic())
        number = self.connections
        task.set_name(f"faultproxy[{self.port}].conn-{number}")
        self._handlers.add(task)
        try:
            if self._admit(writer):
                await self._serve(_Link(number, writer), reader)
        finally:
            self._handlers.discard(task)

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Whether a new connection may stay, per the refusal and gateway rules."""
        self.max_concurrent_connections = max(
            self.max_concurrent_connections, len(self._links) + 1
        )
        if self._refuse or (self.single_client is SingleClient.REFUSE and self._links):
            self.refused += 1
            self._reset(writer)
            return False
        if self.single_client is SingleClient.REPLACE:
            for old in list(self._links):
                self.displaced += 1
                self._reset(old.client)
        return True

    async def _serve(self, link: _Link, reader: asyncio.StreamReader) -> None:
        self._links.add(link)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                target_reader, link.target = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
        except (OSError, TimeoutError):
            _log.warning("faultproxy.target_unreachable", port=self.target_port)
            self._links.discard(link)
            self._reset(link.client)
            return
        try:
            while True:
                frame = await _read_frame(reader)
                if frame is None:
                    return
                await self._exchange(link, frame, target_reader)
        except (OSError, asyncio.IncompleteReadError):
            return
        finally:
            self._links.discard(link)
            link.target.close()
            link.client.close()

    async def _exchange(
        self, link: _Link, frame: bytes, target: asyncio.StreamReader
    ) -> None:
        tid, _pid, _length, unit = struct.unpack(">HHHB", frame[:MBAP_BYTES])
        function = frame[MBAP_BYTES]
        self.requests += 1
        record = Exchange(link.number, tid, unit, function, time.monotonic())
        self.exchanges.append(record)

        if self._reset_in is not None:
            if self._reset_in == 0:
                self._reset_in = None
                record.outcome = "reset"
                self._reset(link.client)
                raise ConnectionResetError("reset by the fault proxy")
            self._reset_in -= 1

        fault = self._take_fault()
        if fault is not None and fault.kind == "exception":
            record.outcome = "exception"
            reply = struct.pack(">HHHBBB", tid, 0, 3, unit, function | 0x80, fault.code)
            self._send(link, record, reply)
            return

        assert link.target is not None
        link.target.write(frame)
        await link.target.drain()
        reply = await _read_frame(target)
        if reply is None:
            raise ConnectionResetError("the target closed the connection")

        if fault is None:
            self._send(link, record, reply)
        elif fault.kind == "drop":
            record.outcome = "dropped"
        elif fault.kind == "corrupt":
            record.outcome = "corrupted"
            self._send(link, record, _corrupt(reply, fault.corruption))
        else:
            record.outcome = "delayed"
            late = asyncio.create_task(
                self._send_late(link, record, reply, fault.delay_s),
                name=f"faultproxy[{self.port}].late-{tid}",
            )
            self._late.add(late)
            late.add_done_callback(self._late.discard)

    def _take_fault(self) -> _Fault | None:
        fault = self._fault
        if fault is None:
            return None
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._fault = None
        return fault

    def _send(self, link: _Link, record: Exchange, reply: bytes) -> None:
        if link.client.is_closing():
            return
        link.client.write(reply)
        record.reply_at = time.monotonic()

    async def _send_late(
        self, link: _Link, record: Exchange, reply: bytes, delay_s: float
    ) -> None:
        await asyncio.sleep(delay_s)
        self._send(link, record, reply)

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        """Close with an RST rather than a FIN: SO_LINGER with a zero timeout."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        writer.transport.abort()


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One whole Modbus TCP frame, or None at a clean end of the stream."""
    try:
        header = await reader.readexactly(MBAP_BYTES)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    length = struct.unpack(">H", header[4:6])[0]
    if not 2 <= length <= MAX_FRAME_LENGTH:
        raise ConnectionResetError(f"bad MBAP length {length}")
    return header + await reader.readexactly(length - 1)


def _corrupt(reply: bytes, corruption: Corruption) -> bytes:
    tid, pid, length = struct.unpack(">HHH", reply[:6])
    if corruption is Corruption.LENGTH:
        return struct.pack(">HHH", tid, pid, length + 4) + reply[6:]
    new_tid = 0 if corruption is Corruption.TRANSACTION_ID_ZERO else tid ^ 0x4000
    return struct.pack(">HHH", new_tid, pid, length) + reply[6:]
