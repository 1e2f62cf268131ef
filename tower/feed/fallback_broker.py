"""An embedded MQTT 3.1.1 broker for `tower demo`, and a probe for a real broker.

`tower demo` publishes its occupancy feed to the broker on 127.0.0.1:1883. A
fresh machine may have none, so the demo can start this small broker instead and
name it in its log. It exists for the demo and the tests only: a site runs a real
broker, and `tower run` never starts this one.

Theory of operation. One asyncio task per client connection reads packets and
answers them; packets are decoded by pure functions (`decode_packet`) that either
return a packet or raise `MalformedPacket`. The broker keeps, per connected
client, its subscriptions and its last will, and for the whole broker the latest
retained message per topic. The rules that always hold:

- It listens on a loopback address only (`start` refuses any other host).
- Only clean sessions: nothing survives a client's connection. A client that asks
  for a persistent session is accepted, told that no session was present, and
  gets a fresh one each time.
- User names and passwords are accepted and ignored. The broker is reachable
  from this machine only and carries demo data; it is no place for access control.
- Messages arrive at QoS 0, 1 (PUBACK) or 2 (PUBREC/PUBREL/PUBCOMP), but every
  subscriber receives them at QoS 0: SUBACK grants QoS 0 for each filter, so the
  downgrade is what the protocol announces, not a silent loss. A lost delivery
  to a subscriber is not resent.
- A retained message replaces the previous one of its topic; an empty retained
  payload clears it. Retained matches go to a client when it subscribes, with
  the retain flag set; live deliveries carry it cleared, as MQTT 3.1.1 says.
- A client that goes away without DISCONNECT (its connection drops, it sends a
  malformed packet, it stays silent past 1.5 times its keepalive, or a new
  connection takes over its client id) has its last will published.
- A malformed packet closes that client's connection and nothing else. A client
  that does not read what it is sent is closed once its unsent data passes
  `MAX_PENDING_BYTES`, so one stuck subscriber cannot grow the broker's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import struct
from dataclasses import dataclass, field
from enum import IntEnum

import structlog

_log = structlog.get_logger("tower.feed.fallback_broker")

PROTOCOL_NAME = "MQTT"
PROTOCOL_LEVEL = 4  # MQTT 3.1.1
# Biggest packet body taken from a client, bytes. Feed messages are a few kB.
MAX_PACKET_BYTES = 1 << 20
# Unsent bytes a client may have queued before the broker gives up on it.
MAX_PENDING_BYTES = 4 << 20
# How long a new connection has to send its CONNECT, s.
CONNECT_TIMEOUT_S = 10.0


class PacketType(IntEnum):
    """MQTT 3.1.1 control packet types (the high nibble of the first byte)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class ConnackCode(IntEnum):
    """CONNACK return codes (MQTT 3.1.1 section 3.2.2.3)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2


# The fixed-header flags each packet type from a client must carry (PUBLISH's
# flags carry DUP, QoS and RETAIN and are checked on their own).
_REQUIRED_FLAGS = {
    PacketType.CONNECT: 0,
    PacketType.PUBREL: 2,
    PacketType.SUBSCRIBE: 2,
    PacketType.UNSUBSCRIBE: 2,
    PacketType.PINGREQ: 0,
    PacketType.DISCONNECT: 0,
}


class MalformedPacket(Exception):
    """Raised when a client's bytes are not a valid MQTT 3.1.1 packet for a broker.

    It closes that client's connection (its last will is published); the broker
    and every other client go on.
    """


class ConnectRefused(Exception):
    """Raised when a well-formed CONNECT cannot be accepted; carries the CONNACK
    return code to send before closing."""

    def __init__(self, code: ConnackCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class Will:
    """A client's last will: published for it when it goes away uncleanly."""

    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class Connect:
    client_id: str
    clean_session: bool
    keepalive_s: int
    will: Will | None
    username: str | None


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int | None


@dataclass(frozen=True)
class Subscribe:
    packet_id: int
    # (topic filter, requested QoS); the broker grants QoS 0 whatever is asked.
    requests: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]


@dataclass(frozen=True)
class PubRel:
    packet_id: int


@dataclass(frozen=True)
class PingReq:
    pass


@dataclass(frozen=True)
class Disconnect:
    pass


Packet = Connect | Publish | Subscribe | Unsubscribe | PubRel | PingReq | Disconnect


# ---------------------------------------------------------------------------
# Decoding and encoding (pure)


class _Body:
    """A cursor over one packet body; running past its end is malformed."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    @property
    def left(self) -> int:
        return len(self._data) - self._at

    def take(self, n: int) -> bytes:
        if n > self.left:
            raise MalformedPacket(
                f"packet ends early: wanted {n} bytes, {self.left} left"
            )
        chunk = self._data[self._at : self._at + n]
        self._at += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacket("string is not UTF-8") from exc
        if "\x00" in text:
            raise MalformedPacket("string contains U+0000")
        return text

    def rest(self) -> bytes:
        return self.take(self.left)

    def packet_id(self) -> int:
        value = self.u16()
        if value == 0:
            raise MalformedPacket("packet identifier 0")
        return value

    def end(self) -> None:
        if self.left:
            raise MalformedPacket(f"{self.left} stray bytes at the end of the packet")


def valid_topic(topic: str) -> bool:
    """Whether a topic name may be published to: not empty, no wildcards."""
    return bool(topic) and "+" not in topic and "#" not in topic


def valid_filter(topic_filter: str) -> bool:
    """Whether a topic filter is well formed: `+` fills a whole level, `#` fills
    the last level."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a topic name matches a (valid) topic filter.

    `+` matches exactly one level, `#` the parent level and any number below it
    (`a/#` matches `a`, `a/b`, `a/b/c`). Topics starting with `$` are not matched
    by a filter that starts with a wildcard.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    wanted = topic_filter.split("/")
    given = topic.split("/")
    for index, level in enumerate(wanted):
        if level == "#":
            return True
        if index >= len(given) or level not in ("+", given[index]):
            return False
    return len(wanted) == len(given)


def _decode_connect(body: _Body) -> Connect:
    name = body.string()
    level = body.u8()
    if name != PROTOCOL_NAME or level != PROTOCOL_LEVEL:
        raise ConnectRefused(
            ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION,
            f"protocol {name!r} level {level}; this broker speaks MQTT 3.1.1 only",
        )
    flags = body.u8()
    keepalive_s = body.u16()
    if flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag set")
    clean_session = bool(flags & 0x02)
    has_will = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    has_password = bool(flags & 0x40)
    has_username = bool(flags & 0x80)
    if not has_will and (will_qos or will_retain):
        raise MalformedPacket("will QoS or retain set without a will")
    if will_qos == 3:
        raise MalformedPacket("will QoS 3")
    if has_password and not has_username:
        raise MalformedPacket("password without a user name")

    client_id = body.string()
    will = None
    if has_will:
        topic = body.string()
        if not valid_topic(topic):
            raise MalformedPacket(f"will topic {topic!r} is not a topic name")
        will = Will(topic=topic, payload=body.binary(), retain=will_retain)
    username = body.string() if has_username else None
    if has_password:
        body.binary()  # accepted and ignored: see the module docstring
    body.end()

    if not client_id and not clean_session:
        raise ConnectRefused(
            ConnackCode.IDENTIFIER_REJECTED, "empty client id needs a clean session"
        )
    return Connect(client_id, clean_session, keepalive_s, will, username)


def _decode_publish(flags: int, body: _Body) -> Publish:
    dup = bool(flags & 0x08)
    qos = (flags >> 1) & 0x03
    retain = bool(flags & 0x01)
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    if dup and qos == 0:
        raise MalformedPacket("PUBLISH QoS 0 with DUP set")
    topic = body.string()
    if not valid_topic(topic):
        raise MalformedPacket(f"publish topic {topic!r} is not a topic name")
    packet_id = body.packet_id() if qos else None
    return Publish(topic, body.rest(), qos, retain, packet_id)


def _decode_subscribe(body: _Body) -> Subscribe:
    packet_id = body.packet_id()
    requests = []
    while body.left:
        topic_filter = body.string()
        qos = body.u8()
        if qos > 2:
            raise MalformedPacket(f"SUBSCRIBE requested QoS byte {qos:#04x}")
        requests.append((topic_filter, qos))
    if not requests:
        raise MalformedPacket("SUBSCRIBE without a topic filter")
    return Subscribe(packet_id, tuple(requests))


def _decode_unsubscribe(body: _Body) -> Unsubscribe:
    packet_id = body.packet_id()
    filters = []
    while body.left:
        filters.append(body.string())
    if not filters:
        raise MalformedPacket("UNSUBSCRIBE without a topic filter")
    return Unsubscribe(packet_id, tuple(filters))


def decode_packet(first_byte: int, data: bytes) -> Packet:
    """Decode one packet a client sent to the broker.

    `first_byte` is the fixed header's first byte, `data` the body that its
    remaining length announced. Raises MalformedPacket for anything that is not
    a valid client-to-broker packet (including packet types only a broker
    sends), ConnectRefused for a CONNECT this broker must answer with an error.
    """
    try:
        kind = PacketType(first_byte >> 4)
    except ValueError:
        raise MalformedPacket(f"reserved packet type {first_byte >> 4}") from None
    flags = first_byte & 0x0F
    if kind in _REQUIRED_FLAGS and flags != _REQUIRED_FLAGS[kind]:
        raise MalformedPacket(f"{kind.name} with fixed-header flags {flags:#x}")
    body = _Body(data)

    if kind is PacketType.CONNECT:
        return _decode_connect(body)
    if kind is PacketType.PUBLISH:
        return _decode_publish(flags, body)
    if kind is PacketType.PUBREL:
        packet: Packet = PubRel(body.packet_id())
    elif kind is PacketType.SUBSCRIBE:
        packet = _decode_subscribe(body)
    elif kind is PacketType.UNSUBSCRIBE:
        packet = _decode_unsubscribe(body)
    elif kind is PacketType.PINGREQ:
        packet = PingReq()
    elif kind is PacketType.DISCONNECT:
        packet = Disconnect()
    else:
        # CONNACK, SUBACK, ... come from a broker; PUBACK, PUBREC and PUBCOMP
        # answer a QoS 1/2 delivery, and this broker delivers at QoS 0 only.
        raise MalformedPacket(f"{kind.name} is not expected from a client")
    body.end()
    return packet


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        digit, n = n & 0x7F, n >> 7
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_packet(kind: PacketType, flags: int, body: bytes) -> bytes:
    """One packet on the wire: fixed header (type, flags, remaining length), body."""
    return bytes([kind << 4 | flags]) + _remaining_length(len(body)) + body


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _publish_packet(topic: str, payload: bytes, *, retain: bool) -> bytes:
    return encode_packet(PacketType.PUBLISH, int(retain), _string(topic) + payload)


def _ack(kind: PacketType, packet_id: int) -> bytes:
    return encode_packet(kind, 0, struct.pack("!H", packet_id))


def connect_packet(client_id: str, *, keepalive_s: int = 60) -> bytes:
    """A clean-session CONNECT without will or credentials (used by the probe)."""
    body = _string(PROTOCOL_NAME) + bytes([PROTOCOL_LEVEL, 0x02])
    body += struct.pack("!H", keepalive_s) + _string(client_id)
    return encode_packet(PacketType.CONNECT, 0, body)


_CONNACK_ACCEPTED = encode_packet(PacketType.CONNACK, 0, b"\x00\x00")
_PINGRESP = encode_packet(PacketType.PINGRESP, 0, b"")
_DISCONNECT = encode_packet(PacketType.DISCONNECT, 0, b"")


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one packet's first byte and body; raises IncompleteReadError at EOF."""
    first = (await reader.readexactly(1))[0]
    length = 0
    for position in range(4):
        digit = (await reader.readexactly(1))[0]
        length |= (digit & 0x7F) << (7 * position)
        if not digit & 0x80:
            break
    else:
        raise MalformedPacket("remaining length longer than four bytes")
    if length > MAX_PACKET_BYTES:
        raise MalformedPacket(f"packet of {length} bytes, limit {MAX_PACKET_BYTES}")
    return first, await reader.readexactly(length)


# ---------------------------------------------------------------------------
# The broker (asyncio shell)


@dataclass(eq=False)
class _Client:
    """One connected client: its socket, subscriptions and will."""

    client_id: str
    writer: asyncio.StreamWriter
    will: Will | None
    keepalive_s: int
    subscriptions: set[str] = field(default_factory=set)
    # QoS 2 packet ids received but not yet released: a resent PUBLISH with one
    # of these ids is not delivered twice.
    qos2_pending: set[int] = field(default_factory=set)
    # Why the broker closed this client itself (takeover, too slow), if it did.
    dropped: str | None = None

    def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_PENDING_BYTES:
            self.drop("client does not read")
            return
        self.writer.write(data)

    def drop(self, reason: str) -> None:
        self.dropped = self.dropped or reason
        self.writer.close()


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{host!r} is not a loopback address; this is a demo broker")


class FallbackBroker:
    """A small MQTT 3.1.1 broker on loopback, for `tower demo` and the tests.

    ::

        broker = FallbackBroker()
        port = await broker.start()  # a free port on 127.0.0.1
        ...                          # clients connect to broker.url
        await broker.close()

    See the module docstring for what it does and what it leaves out.
    """

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        """The latest retained payload of each topic."""
        self._clients: dict[str, _Client] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._closing = False
        self._connections = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on `host` (a loopback address) and `port` (0: a free one).

        Returns the port. Raises ValueError for a host that is not loopback and
        OSError when the port cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the broker is already started")
        _require_loopback(host)
        self._server = await asyncio.start_server(self._on_connection, host, port)
        self._host = host
        self._port = self._server.sockets[0].getsockname()[1]
        _log.info("broker.started", host=host, port=self._port)
        return self._port

    @property
    def port(self) -> int:
        """The port the broker listens on (after `start`)."""
        if self._port is None:
            raise RuntimeError("the broker is not started")
        return self._port

    @property
    def url(self) -> str:
        """Where clients connect: `mqtt://HOST:PORT`."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"mqtt://{host}:{self.port}"

    async def close(self) -> None:
        """Stop listening and close every client connection. No will is published:
        the clients lose the broker, not the other way round."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for client in list(self._clients.values()):
            client.drop("broker closing")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            _log.info("broker.stopped", port=self._port)
            self._server = None

    async def __aenter__(self) -> FallbackBroker:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- one connection ----------------------------------------------------

    def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Each connection is served by a task of ours rather than by the task
        # asyncio.start_server would make, so that close() can cancel it.
        self._connections += 1
        task = asyncio.create_task(
            self._serve_connection(reader, writer),
            name=f"broker.connection-{self._connections}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        client: _Client | None = None
        reason = "connection closed without DISCONNECT"
        clean = False
        try:
            client = await self._accept(reader, writer)
            if client is not None:
                clean = await self._serve_client(client, reader)
        except MalformedPacket as exc:
            reason = f"malformed packet: {exc}"
            _log.warning("broker.malformed_packet", peer=peer, detail=str(exc))
        except ConnectRefused as exc:
            reason = f"connect refused: {exc}"
            writer.write(encode_packet(PacketType.CONNACK, 0, bytes([0, exc.code])))
        except TimeoutError:
            reason = "keepalive expired" if client else "no CONNECT in time"
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            if client is not None:
                self._forget(client, clean=clean, reason=client.dropped or reason)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Client | None:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            first, data = await _read_packet(reader)
        if first >> 4 != PacketType.CONNECT:
            raise MalformedPacket("the first packet is not CONNECT")
        connect = decode_packet(first, data)
        assert isinstance(connect, Connect)  # decode_packet maps type 1 to Connect
        if self._closing:
            return None

        client_id = connect.client_id or f"auto-{secrets.token_hex(8)}"
        client = _Client(client_id, writer, connect.will, connect.keepalive_s)
        previous = self._clients.get(client_id)
        if previous is not None:
            previous.drop("client id taken over by a new connection")
        self._clients[client_id] = client
        client.send(_CONNACK_ACCEPTED)
        _log.debug(
            "broker.client_connected",
            client_id=client_id,
            keepalive_s=connect.keepalive_s,
            will=connect.will is not None,
        )
        return client

    async def _serve_client(
        self, client: _Client, reader: asyncio.StreamReader
    ) -> bool:
        """Answer the client's packets until it goes; True if it said DISCONNECT."""
        # MQTT 3.1.1 section 3.1.2.10: silence for 1.5 keepalives ends the client.
        deadline_s = client.keepalive_s * 1.5 if client.keepalive_s else None
        while True:
            async with asyncio.timeout(deadline_s):
                first, data = await _read_packet(reader)
            packet = decode_packet(first, data)
            if isinstance(packet, Disconnect):
                return True
            self._handle(client, packet)

    def _handle(self, client: _Client, packet: Packet) -> None:
        if isinstance(packet, Publish):
            if packet.qos == 1:
                assert packet.packet_id is not None
                client.send(_ack(PacketType.PUBACK, packet.packet_id))
            elif packet.qos == 2:
                assert packet.packet_id is not None
                client.send(_ack(PacketType.PUBREC, packet.packet_id))
                if packet.packet_id in client.qos2_pending:
                    return  # a resend of a message already delivered
                client.qos2_pending.add(packet.packet_id)
            self._publish(packet.topic, packet.payload, retain=packet.retain)
        elif isinstance(packet, PubRel):
            client.qos2_pending.discard(packet.packet_id)
            client.send(_ack(PacketType.PUBCOMP, packet.packet_id))
        elif isinstance(packet, Subscribe):
            self._subscribe(client, packet)
        elif isinstance(packet, Unsubscribe):
            client.subscriptions.difference_update(packet.filters)
            client.send(_ack(PacketType.UNSUBACK, packet.packet_id))
        elif isinstance(packet, PingReq):
            client.send(_PINGRESP)
        else:
            raise MalformedPacket("a second CONNECT on one connection")

    def _subscribe(self, client: _Client, packet: Subscribe) -> None:
        codes = bytearray()
        accepted = []
        for topic_filter, _qos in packet.requests:
            if valid_filter(topic_filter):
                client.subscriptions.add(topic_filter)
                accepted.append(topic_filter)
                codes.append(0x00)  # granted QoS 0, whatever was asked
            else:
                codes.append(0x80)  # failure
        client.send(
            encode_packet(
                PacketType.SUBACK, 0, struct.pack("!H", packet.packet_id) + codes
            )
        )
        for topic, payload in list(self.retained.items()):
            if any(topic_matches(f, topic) for f in accepted):
                client.send(_publish_packet(topic, payload, retain=True))

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        data = _publish_packet(topic, payload, retain=False)
        for client in list(self._clients.values()):
            if any(topic_matches(f, topic) for f in client.subscriptions):
                client.send(data)

    def _forget(self, client: _Client, *, clean: bool, reason: str) -> None:
        if self._clients.get(client.client_id) is client:
            del self._clients[client.client_id]
        if clean:
            _log.debug("broker.client_disconnected", client_id=client.client_id)
            return
        _log.debug("broker.client_lost", client_id=client.client_id, reason=reason)
        if client.will is not None and not self._closing:
            will = client.will
            _log.debug(
                "broker.will_published", client_id=client.client_id, topic=will.topic
            )
            self._publish(will.topic, will.payload, retain=will.retain)


async def probe_broker(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether an MQTT broker on a loopback address accepts a connection.

    Sends a real clean-session CONNECT (MQTT 3.1.1, no credentials) and waits for
    the CONNACK, then says DISCONNECT. True only when the broker accepted; a
    refused CONNECT, anything that is not a CONNACK, no answer within `timeout_s`
    or a closed port is False. Raises ValueError for a host that is not loopback:
    the probe is for choosing the demo's broker, not for scanning.
    """
    _require_loopback(host)
    client_id = f"tower-probe-{secrets.token_hex(4)}"
    writer: asyncio.StreamWriter | None = None
    accepted = False
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(connect_packet(client_id))
            reply = await reader.readexactly(4)
            # CONNACK: type and length, session-present flag, return code.
            accepted = reply[:2] == b"\x20\x02" and reply[3] == ConnackCode.ACCEPTED
            if accepted:
                writer.write(_DISCONNECT)
                await writer.drain()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await writer.wait_closed()
    _log.debug("broker.probed", host=host, port=port, accepted=accepted)
    return accepted
