"""The demo's embedded MQTT broker, driven by real aiomqtt clients and raw sockets.

Every test runs its own broker on a free loopback port; nothing here touches the
broker a machine may run on 127.0.0.1:1883.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tower.feed import fallback_broker
from tower.feed.fallback_broker import (
    ConnectRefused,
    FallbackBroker,
    MalformedPacket,
    decode_packet,
    probe_broker,
    topic_matches,
    valid_filter,
)

# How long any single wait in these tests may take before the test fails, s.
_WAIT_S = 5.0


@pytest.fixture
async def broker() -> AsyncIterator[FallbackBroker]:
    broker = FallbackBroker()
    await broker.start()
    yield broker
    await broker.close()


def _client(broker: FallbackBroker, identifier: str, **options) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, identifier=identifier, **options)


async def _next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(_WAIT_S):
        return await anext(client.messages)


async def _messages_until(client: aiomqtt.Client, last_topic: str) -> list[tuple]:
    """(topic, payload) of every message up to and including one on `last_topic`."""
    seen = []
    while True:
        message = await _next_message(client)
        seen.append((message.topic.value, message.payload))
        if message.topic.value == last_topic:
            return seen


def _mqtt_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    assert len(body) < 128  # one-byte remaining length is enough for these tests
    return bytes([first_byte, len(body)]) + body


def _raw_connect(
    client_id: str,
    *,
    keepalive_s: int = 60,
    will: tuple[str, bytes] | None = None,
    level: int = 4,
) -> bytes:
    flags = 0x02 | (0x04 | 0x20 if will else 0)  # clean session, retained will
    body = _mqtt_string("MQTT") + bytes([level, flags])
    body += struct.pack("!H", keepalive_s) + _mqtt_string(client_id)
    if will:
        body += _mqtt_string(will[0]) + _mqtt_string(will[1].decode())
    return _packet(0x10, body)


_CONNACK = b"\x20\x02\x00\x00"


@contextlib.asynccontextmanager
async def _raw(broker: FallbackBroker) -> AsyncIterator[tuple]:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the broker sends until it closes the connection."""
    async with asyncio.timeout(_WAIT_S):
        return await reader.read()


# -- publish and subscribe ---------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_publish_reaches_subscriber_at_qos0(broker: FallbackBroker, qos: int):
    """A message published at any QoS reaches a subscriber, downgraded to QoS 0."""
    async with _client(broker, "sub") as sub, _client(broker, "pub") as pub:
        await sub.subscribe("zoo/parking/tower-a", qos=qos)
        await pub.publish("zoo/parking/tower-a", b"12 free", qos=qos)

        message = await _next_message(sub)

    assert (message.topic.value, message.payload) == ("zoo/parking/tower-a", b"12 free")
    assert message.qos == 0
    assert message.retain is False


async def test_retained_message_reaches_late_subscriber(broker: FallbackBroker):
    """A retained message is kept and sent, flagged retained, to a later subscriber."""
    async with _client(broker, "pub") as pub:
        await pub.publish("zoo/parking/site", b"first", qos=1, retain=True)
        await pub.publish("zoo/parking/site", b"latest", qos=1, retain=True)

    async with _client(broker, "late") as late:
        await late.subscribe("zoo/parking/site")
        message = await _next_message(late)

    assert (message.payload, message.retain) == (b"latest", True)
    assert broker.retained == {"zoo/parking/site": b"latest"}


async def test_empty_retained_payload_clears_topic(broker: FallbackBroker):
    """Publishing an empty retained payload forgets the topic's retained message."""
    async with _client(broker, "pub") as pub:
        await pub.publish("zoo/parking/site", b"full", qos=1, retain=True)
        await pub.publish("zoo/parking/site", b"", qos=1, retain=True)
        await pub.publish("zoo/marker", b"end", qos=1, retain=True)

    async with _client(broker, "late") as late:
        await late.subscribe("zoo/#")
        seen = await _messages_until(late, "zoo/marker")

    assert seen == [("zoo/marker", b"end")]
    assert broker.retained == {"zoo/marker": b"end"}


async def test_wildcards_select_topics_by_level(broker: FallbackBroker):
    """`+` matches one level, `#` the parent and everything below it."""
    async with _client(broker, "sub") as sub, _client(broker, "pub") as pub:
        await sub.subscribe([("zoo/+/free", 0), ("site/#", 0)])
        for topic in (
            "zoo/tower-a/free",
            "zoo/tower-a/b/free",
            "zoo/free",
            "site",
            "site/tower-b/ev",
            "other/site",
            "site/end",
        ):
            await pub.publish(topic, topic.encode(), qos=1)

        seen = [topic for topic, _ in await _messages_until(sub, "site/end")]

    assert seen == ["zoo/tower-a/free", "site", "site/tower-b/ev", "site/end"]


async def test_unsubscribe_stops_delivery(broker: FallbackBroker):
    """After UNSUBSCRIBE a filter no longer delivers; the others still do."""
    async with _client(broker, "sub") as sub, _client(broker, "pub") as pub:
        await sub.subscribe([("a", 0), ("b", 0)])
        await sub.unsubscribe("a")
        await pub.publish("a", b"gone", qos=1)
        await pub.publish("b", b"kept", qos=1)

        seen = await _messages_until(sub, "b")

    assert seen == [("b", b"kept")]


# -- the last will ------------------------------------------------------------


async def test_last_will_fires_when_connection_is_killed(broker: FallbackBroker):
    """A client whose socket is shut down without DISCONNECT has its will published."""
    will = aiomqtt.Will("zoo/parking/availability", b"offline", qos=1, retain=True)
    async with _client(broker, "watcher") as watcher:
        await watcher.subscribe("zoo/parking/availability")
        async with _client(broker, "victim", will=will) as victim:
            # aiomqtt offers no way to drop a connection uncleanly, so reach for
            # paho's socket underneath and shut it down: no DISCONNECT is sent.
            victim._client.socket().shutdown(socket.SHUT_RDWR)
            with pytest.raises(aiomqtt.MqttError):
                await _next_message(victim)

        message = await _next_message(watcher)

    assert (message.topic.value, message.payload) == (
        "zoo/parking/availability",
        b"offline",
    )
    assert broker.retained == {"zoo/parking/availability": b"offline"}


async def test_last_will_is_dropped_on_clean_disconnect(broker: FallbackBroker):
    """A client that says DISCONNECT leaves without its will being published."""
    will = aiomqtt.Will("zoo/parking/availability", b"offline", retain=True)
    async with _client(broker, "watcher") as watcher:
        await watcher.subscribe("zoo/#")
        async with _client(broker, "polite", will=will):
            pass
        async with _client(broker, "pub") as pub:
            await pub.publish("zoo/marker", b"end", qos=1)

        seen = await _messages_until(watcher, "zoo/marker")

    assert seen == [("zoo/marker", b"end")]
    assert broker.retained == {}


async def test_last_will_fires_when_keepalive_expires(broker: FallbackBroker):
    """A client silent for 1.5 times its keepalive is dropped and its will sent."""
    async with _client(broker, "watcher") as watcher:
        await watcher.subscribe("zoo/parking/availability")
        async with _raw(broker) as (reader, writer):
            connected_at = time.monotonic()
            writer.write(
                _raw_connect(
                    "quiet",
                    keepalive_s=1,
                    will=("zoo/parking/availability", b"offline"),
                )
            )
            message = await _next_message(watcher)
            silent_s = time.monotonic() - connected_at
            sent = await _read_to_eof(reader)

    assert message.payload == b"offline"
    assert silent_s >= 1.5
    assert sent == _CONNACK


# -- bad clients ----------------------------------------------------------------


async def test_garbage_closes_only_that_connection(broker: FallbackBroker):
    """A byte stream that is not MQTT closes its connection; other clients go on."""
    async with _client(broker, "sub") as sub, _client(broker, "pub") as pub:
        await sub.subscribe("zoo/#")
        async with _raw(broker) as (reader, writer):
            writer.write(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + bytes(range(256))
            )
            sent = await _read_to_eof(reader)
        await pub.publish("zoo/after", b"still here", qos=1)

        message = await _next_message(sub)

    assert sent == b""
    assert message.payload == b"still here"
    assert await probe_broker("127.0.0.1", broker.port)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"\x30\x04\x00\x02a+", id="publish-to-wildcard"),
        pytest.param(b"\x36\x05\x00\x01ax\x01", id="publish-qos3"),
        pytest.param(b"\x30\xff\xff\xff\xff\x01", id="remaining-length-5-bytes"),
        pytest.param(b"\x82\x03\x00\x01\x00", id="subscribe-cut-short"),
        pytest.param(b"\x82\x02\x00\x01", id="subscribe-without-filter"),
        pytest.param(_raw_connect("again"), id="second-connect"),
        pytest.param(b"\x20\x02\x00\x00", id="connack-from-client"),
        pytest.param(b"\xc0\x01\x00", id="pingreq-with-body"),
        pytest.param(b"\x00\x00", id="reserved-type-0"),
    ],
)
async def test_malformed_packet_closes_client_and_fires_will(
    broker: FallbackBroker, packet: bytes
):
    """A malformed packet after CONNECT closes that client and publishes its will."""
    async with _raw(broker) as (reader, writer):
        writer.write(_raw_connect("bad", will=("zoo/bad/will", b"gone")))
        writer.write(packet)
        sent = await _read_to_eof(reader)

    assert sent == _CONNACK
    assert broker.retained == {"zoo/bad/will": b"gone"}


async def test_first_packet_must_be_connect(broker: FallbackBroker):
    """A client that publishes before CONNECT is closed without an answer."""
    async with _raw(broker) as (reader, writer):
        writer.write(b"\x30\x04\x00\x01ax")
        sent = await _read_to_eof(reader)

    assert sent == b""
    assert broker.retained == {}


async def test_other_protocol_level_is_refused(broker: FallbackBroker):
    """A CONNECT for MQTT 5 gets CONNACK 'unacceptable protocol version', then EOF."""
    async with _raw(broker) as (reader, writer):
        writer.write(_raw_connect("v5", level=5))
        sent = await _read_to_eof(reader)

    assert sent == b"\x20\x02\x00\x01"


async def test_new_connection_takes_over_client_id(broker: FallbackBroker):
    """A second connection with a client id in use closes the first one."""
    async with _raw(broker) as (old_reader, old_writer):
        old_writer.write(_raw_connect("same", will=("zoo/same/will", b"old gone")))
        async with asyncio.timeout(_WAIT_S):
            assert await old_reader.readexactly(4) == _CONNACK
        async with _raw(broker) as (new_reader, new_writer):
            new_writer.write(_raw_connect("same"))
            async with asyncio.timeout(_WAIT_S):
                assert await new_reader.readexactly(4) == _CONNACK

            rest_of_old = await _read_to_eof(old_reader)

    assert rest_of_old == b""
    assert broker.retained == {"zoo/same/will": b"old gone"}


# -- decoding, pure ---------------------------------------------------------------


@given(first_byte=st.integers(0, 255), body=st.binary(max_size=64))
def test_decoder_raises_only_its_own_errors(first_byte: int, body: bytes):
    """Any bytes at all decode to a packet or raise MalformedPacket/ConnectRefused."""
    with contextlib.suppress(MalformedPacket, ConnectRefused):
        decode_packet(first_byte, body)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a", False),
        ("a/+", "a/", True),
        ("+/+", "/x", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("#", "$SYS/uptime", False),
        ("+/uptime", "$SYS/uptime", False),
        ("$SYS/#", "$SYS/uptime", True),
    ],
)
def test_topic_filter_matching(topic_filter: str, topic: str, expected: bool):
    """Topic filters match topic names as MQTT 3.1.1 section 4.7 says."""
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a#", "a/b+", "+a"])
def test_malformed_filters_are_rejected(topic_filter: str):
    """Wildcards that do not fill a whole level make a filter invalid."""
    assert not valid_filter(topic_filter)


async def test_invalid_filter_gets_failure_code(broker: FallbackBroker):
    """SUBSCRIBE with an invalid filter answers 0x80 for it and 0x00 for the rest."""
    async with _raw(broker) as (reader, writer):
        writer.write(_raw_connect("subber"))
        body = (
            b"\x00\x07" + _mqtt_string("a/#/b") + b"\x01" + _mqtt_string("ok") + b"\x01"
        )
        writer.write(_packet(0x82, body))
        async with asyncio.timeout(_WAIT_S):
            reply = await reader.readexactly(4 + 6)

    assert reply == _CONNACK + b"\x90\x04\x00\x07\x80\x00"


# -- the probe --------------------------------------------------------------------


async def test_probe_finds_the_fallback_broker(broker: FallbackBroker):
    """probe_broker says True where an MQTT broker accepts a CONNECT."""
    assert await probe_broker("127.0.0.1", broker.port)


async def test_probe_is_false_on_a_closed_port():
    """probe_broker says False where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    assert not await probe_broker("127.0.0.1", port)


async def test_probe_is_false_when_peer_is_not_mqtt():
    """probe_broker says False for a server that answers with something else."""

    async def not_mqtt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(not_mqtt, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]

        answered = await probe_broker("127.0.0.1", port)

    assert not answered


async def test_probe_is_false_when_peer_stays_silent():
    """probe_broker gives up after its timeout on a server that never answers."""
    connections = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        connections.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]

        answered = await probe_broker("127.0.0.1", port, timeout_s=0.2)

        for writer in connections:
            writer.close()

    assert not answered


async def test_probe_and_start_refuse_other_hosts(monkeypatch: pytest.MonkeyPatch):
    """Neither the probe nor the broker goes near an address off loopback."""

    def no_network(*args, **kwargs):
        raise AssertionError("a socket was opened for a non-loopback host")

    monkeypatch.setattr(fallback_broker.asyncio, "open_connection", no_network)
    monkeypatch.setattr(fallback_broker.asyncio, "start_server", no_network)

    with pytest.raises(ValueError, match="loopback"):
        await probe_broker("192.0.2.1", 1883)
    with pytest.raises(ValueError, match="loopback"):
        await FallbackBroker().start(host="0.0.0.0")


async def test_close_ends_every_connection(broker: FallbackBroker):
    """close() ends client connections and leaves no task of the broker behind."""
    async with _raw(broker) as (reader, writer):
        writer.write(_raw_connect("lingering"))

        async with asyncio.timeout(_WAIT_S):
            assert await reader.readexactly(4) == _CONNACK
        await broker.close()
        rest = await _read_to_eof(reader)

    assert rest == b""
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("broker.")]
