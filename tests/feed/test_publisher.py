"""The occupancy feed against a real Mosquitto of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import jsonschema
import pytest
import structlog
from broker import Mosquitto, free_port

from tower.feed.publisher import FeedUrlError, OccupancyFeed, load_schema, parse_url

PREFIX = "test/parking"
STATUS = f"{PREFIX}/status"
TOWER_A = f"{PREFIX}/towers/tower-a"
TOWER_B = f"{PREFIX}/towers/tower-b"
SITE = f"{PREFIX}/site"
NOON = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)

VALIDATOR = jsonschema.Draft202012Validator(
    load_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def figures(occupied: int = 10, **changes: Any) -> dict[str, Any]:
    base = {
        "capacity": 96,
        "occupied": occupied,
        "free": 96 - occupied - 2,
        "free_ev": 5,
        "free_tall": 7,
        "closed": 2,
        "state": "auto",
    }
    return base | changes


def make_feed(broker: Mosquitto, **options: Any) -> OccupancyFeed:
    options = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5} | options
    return OccupancyFeed(broker.url, PREFIX, "zoo", **options)


@contextlib.asynccontextmanager
async def running(feed: OccupancyFeed) -> AsyncIterator[asyncio.Task[None]]:
    """Run the feed's loop; stop it cleanly on the way out."""
    task = asyncio.create_task(feed.run(), name="test.feed")
    try:
        yield task
    finally:
        await feed.stop()
        await task


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        # The predicate reads state another task changes: poll it.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class Recorder:
    """Subscribes to the whole feed and keeps every message in arrival order."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.messages: list[tuple[str, str, bool]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._run(), name="test.recorder")
        async with asyncio.timeout(5):
            await self._ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port) as client:
            await client.subscribe(f"{PREFIX}/#", qos=1)
            self._ready.set()
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                self.messages.append(
                    (str(message.topic), payload.decode(), message.retain)
                )

    def texts(self, topic: str) -> list[str]:
        return [text for t, text, _ in self.messages if t == topic]

    def bodies(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.texts(topic)]

    def latest(self) -> dict[str, str]:
        return {topic: text for topic, text, _ in self.messages}


async def retained(broker: Mosquitto) -> dict[str, str]:
    """What a new subscriber gets on connecting: the retained message per topic."""
    async with Recorder(broker) as recorder:
        await asyncio.sleep(0.3)
    return recorder.latest()


def test_url_defaults_to_port_1883() -> None:
    """mqtt://host without a port means the standard MQTT port."""
    assert parse_url("mqtt://127.0.0.1") == ("127.0.0.1", 1883)
    assert parse_url("mqtt://localhost:1884") == ("localhost", 1884)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mqtts://127.0.0.1:8883", "mqtts:// (TLS) is not supported yet"),
        ("http://127.0.0.1:1883", "scheme must be mqtt://"),
        ("127.0.0.1:1883", "scheme must be mqtt://"),
        ("mqtt://user:secret@127.0.0.1", "no credentials in the URL"),
        ("mqtt://127.0.0.1:99999", "bad port"),
        ("mqtt://127.0.0.1:1883/zoo", "nothing after it"),
    ],
)
def test_bad_urls_are_refused_clearly(url: str, words: str) -> None:
    """Anything but mqtt://host[:port] is refused, saying why."""
    with pytest.raises(FeedUrlError) as caught:
        OccupancyFeed(url, PREFIX, "zoo")

    assert words in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "changes",
    [{"occupied": -1}, {"free": 1.5}, {"closed": True}, {"state": "Auto Mode"}],
)
def test_update_refuses_figures_the_schema_would_refuse(changes: dict) -> None:
    """A negative or non-integer count or a malformed state is a ValueError."""
    feed = OccupancyFeed("mqtt://127.0.0.1:1", PREFIX, "zoo")

    with pytest.raises(ValueError, match="tower-a"):
        feed.update_tower("tower-a", **figures(**changes))


@pytest.mark.parametrize("tower", ["tower/a", "tower+", "#", ""])
def test_update_refuses_tower_ids_that_are_not_topic_levels(tower: str) -> None:
    """A tower id must be a single, wildcard-free topic level."""
    feed = OccupancyFeed("mqtt://127.0.0.1:1", PREFIX, "zoo")

    with pytest.raises(ValueError, match="tower id"):
        feed.update_tower(tower, **figures())


def test_schema_refuses_a_message_carrying_a_ticket() -> None:
    """additionalProperties: false keeps personal data out of valid messages."""
    feed = OccupancyFeed("mqtt://127.0.0.1:1", PREFIX, "zoo", clock=lambda: NOON)
    feed.update_tower("tower-a", **figures())
    message = feed.messages()[TOWER_A]

    leaky = message | {"ticket": "K7QX-M2PD-9RTW"}

    assert VALIDATOR.is_valid(message)
    assert not VALIDATOR.is_valid(leaky)


async def test_retained_messages_validate_against_the_schema(
    mosquitto: Mosquitto,
) -> None:
    """A new subscriber gets online, each tower and the site sum, all valid."""
    feed = make_feed(mosquitto, clock=lambda: NOON)
    feed.update_tower("tower-a", **figures(10))
    feed.update_tower("tower-b", **figures(20, free_ev=1))

    async with running(feed):
        await eventually(lambda: feed.connected)
        await asyncio.sleep(0.2)
        seen = await retained(mosquitto)

    bodies = {
        topic: json.loads(text) for topic, text in seen.items() if topic != STATUS
    }
    for body in bodies.values():
        VALIDATOR.validate(body)
    assert seen[STATUS] == "online"
    assert set(bodies) == {TOWER_A, TOWER_B, SITE}
    assert bodies[TOWER_A] == {
        "schema": "zoo-parking/occupancy/tower/1",
        "site": "zoo",
        "tower": "tower-a",
        **figures(10),
        "time": "2026-12-04T12:00:00Z",
    }
    assert bodies[SITE] == {
        "schema": "zoo-parking/occupancy/site/1",
        "site": "zoo",
        "towers": ["tower-a", "tower-b"],
        "capacity": 192,
        "occupied": 30,
        "free": 158,
        "free_ev": 6,
        "time": "2026-12-04T12:00:00Z",
    }


async def test_changes_are_published_as_they_come(mosquitto: Mosquitto) -> None:
    """An update while connected reaches subscribers; equal figures send nothing."""
    feed = make_feed(mosquitto)
    feed.update_tower("tower-a", **figures(10))

    async with running(feed), Recorder(mosquitto) as recorder:
        await eventually(lambda: feed.connected)
        await eventually(lambda: len(recorder.bodies(TOWER_A)) == 1)
        feed.update_tower("tower-a", **figures(11))
        feed.update_tower("tower-a", **figures(11))
        await eventually(lambda: recorder.bodies(SITE)[-1]["occupied"] == 11)
        await asyncio.sleep(0.2)

    occupied = [body["occupied"] for body in recorder.bodies(TOWER_A)]

    assert occupied == [10, 11]


async def test_stop_publishes_offline_after_online(mosquitto: Mosquitto) -> None:
    """A clean stop leaves 'offline' retained, after the 'online' of the connect."""
    feed = make_feed(mosquitto)

    async with Recorder(mosquitto) as recorder:
        async with running(feed):
            await eventually(lambda: feed.connected)
        await eventually(lambda: "offline" in recorder.texts(STATUS))
    after = await retained(mosquitto)

    assert recorder.texts(STATUS) == ["online", "offline"]
    assert after[STATUS] == "offline"
    assert not feed.connected


async def test_stop_is_safe_when_never_connected() -> None:
    """stop() returns at once without a broker, with or without run()."""
    idle = OccupancyFeed(f"mqtt://127.0.0.1:{free_port()}", PREFIX, "zoo")
    await idle.stop()
    feed = OccupancyFeed(
        f"mqtt://127.0.0.1:{free_port()}", PREFIX, "zoo", reconnect_min_s=5
    )
    task = asyncio.create_task(feed.run(), name="test.feed")
    await asyncio.sleep(0.2)

    started = time.monotonic()
    await feed.stop()
    await task

    assert time.monotonic() - started < 1.0


_DOOMED_FEED = """
import asyncio, sys
from tower.feed.publisher import OccupancyFeed

async def main():
    feed = OccupancyFeed(sys.argv[1], sys.argv[2], "zoo", client_id="doomed")
    feed.update_tower("tower-a", capacity=96, occupied=1, free=93, free_ev=5,
                      free_tall=7, closed=2, state="auto")
    task = asyncio.create_task(feed.run())
    while not feed.connected:
        await asyncio.sleep(0.01)
    print("FEED-CONNECTED", flush=True)
    await task

asyncio.run(main())
"""


async def test_last_will_says_offline_when_the_process_dies(
    mosquitto: Mosquitto,
) -> None:
    """A controller killed with SIGKILL leaves 'offline' through its last will."""
    async with Recorder(mosquitto) as recorder:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _DOOMED_FEED,
            mosquitto.url,
            PREFIX,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            while b"FEED-CONNECTED" not in await proc.stdout.readline():
                pass
        await eventually(lambda: recorder.texts(STATUS) == ["online"])

        proc.kill()
        await proc.wait()
        await eventually(lambda: recorder.texts(STATUS) == ["online", "offline"])

    assert (await retained(mosquitto))[STATUS] == "offline"


async def test_cancelled_run_without_stop_leaves_offline(mosquitto: Mosquitto) -> None:
    """Cancelling run() (a crashing task group) still leaves 'offline' retained."""
    feed = make_feed(mosquitto)
    task = asyncio.create_task(feed.run(), name="test.feed")
    await eventually(lambda: feed.connected)

    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    after = await retained(mosquitto)

    assert after[STATUS] == "offline"
    assert not feed.connected


async def test_cancel_swallowed_by_a_publish_still_ends_the_run(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11, asyncio.wait_for (aiomqtt waits for each PUBACK with
    it) returns normally when a cancellation lands as its future completes:
    the cancellation is lost. A publish that does just that must not leave
    the feed's task waiting for ever (a controller that never stops)."""
    feed = make_feed(mosquitto)
    task = asyncio.create_task(feed.run(), name="test.feed")
    await eventually(lambda: feed.connected)
    publishing = asyncio.Event()
    real_publish = aiomqtt.Client.publish

    async def publish_losing_the_cancel(self, *args: Any, **kwargs: Any) -> None:
        publishing.set()
        try:
            await asyncio.sleep(0.5)  # waiting for the PUBACK
        except asyncio.CancelledError:
            await real_publish(self, *args, **kwargs)  # the PUBACK came after all

    monkeypatch.setattr(aiomqtt.Client, "publish", publish_losing_the_cancel)
    feed.update_tower("tower-a", **figures(occupied=11))
    await asyncio.wait_for(publishing.wait(), timeout=5)
    task.cancel()

    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the feed's task swallowed its cancellation and kept waiting"
    assert task.cancelled()


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_broker_restart_republishes_only_the_latest_state(
    mosquitto: Mosquitto, how: str
) -> None:
    """After a broker restart the current state is back within seconds, with no
    backlog of the updates made while it was down."""
    feed = make_feed(mosquitto)
    feed.update_tower("tower-a", **figures(0))
    feed.update_tower("tower-b", **figures(0))

    async with running(feed):
        await eventually(lambda: feed.connected)
        await asyncio.sleep(0.2)  # Let the first state reach the broker.
        getattr(mosquitto, how)()
        await eventually(lambda: not feed.connected)
        for occupied in range(1, 51):
            feed.update_tower("tower-a", **figures(occupied))
            await asyncio.sleep(0.01)

        mosquitto.start()
        restarted = time.monotonic()
        async with Recorder(mosquitto) as recorder:
            await eventually(
                lambda: [b["occupied"] for b in recorder.bodies(TOWER_A)][-1:] == [50]
            )
            back_after_s = time.monotonic() - restarted
            await eventually(lambda: feed.connected)
            await asyncio.sleep(0.3)

    occupied = [body["occupied"] for body in recorder.bodies(TOWER_A)]
    assert back_after_s < 5.0
    assert set(occupied) <= {0, 50}  # Retained from before, then the latest only.
    assert occupied.count(50) == 1
    assert recorder.texts(STATUS)[-1] == "online"
    assert recorder.bodies(SITE)[-1]["occupied"] == 50
    assert [b["occupied"] for b in recorder.bodies(TOWER_B)][-1] == 0


async def test_update_never_blocks_while_the_broker_is_down(
    mosquitto: Mosquitto,
) -> None:
    """With the broker gone, a thousand updates take next to no time."""
    feed = make_feed(mosquitto)

    async with running(feed):
        await eventually(lambda: feed.connected)
        mosquitto.stop()
        await eventually(lambda: not feed.connected)

        started = time.perf_counter()
        for occupied in range(1000):
            feed.update_tower("tower-a", **figures(occupied % 90))
        took_s = time.perf_counter() - started

    assert took_s < 0.2


async def test_outage_is_logged_once_and_recovery_once(mosquitto: Mosquitto) -> None:
    """A down broker is one warning however many retries; its return one info."""
    feed = make_feed(mosquitto, reconnect_min_s=0.05, reconnect_max_s=0.1)

    with structlog.testing.capture_logs() as logs:
        async with running(feed):
            await eventually(lambda: feed.connected)
            mosquitto.stop()
            await asyncio.sleep(1.0)  # Several reconnect attempts fail meanwhile.
            mosquitto.start()
            await eventually(lambda: feed.connected)

    events = [
        (e["event"], e["log_level"]) for e in logs if e["event"].startswith("feed.")
    ]
    assert events == [
        ("feed.connected", "info"),
        ("feed.disconnected", "warning"),
        ("feed.connected", "info"),
        ("feed.stopped", "info"),
    ]


async def test_password_never_reaches_the_log(mosquitto: Mosquitto) -> None:
    """The broker password is used to connect, never logged."""
    feed = make_feed(mosquitto, username="feed", password="hunter2-secret")

    with structlog.testing.capture_logs() as logs:
        async with running(feed):
            await eventually(lambda: feed.connected)

    assert logs
    assert "hunter2-secret" not in repr(logs)
