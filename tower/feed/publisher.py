"""The occupancy feed: retained JSON on MQTT for the visitor app and open data.

Theory of operation. The controller calls `update_tower` whenever a tower's
figures change. That call only stores the latest figures, marks the tower's
topic and the site summary as pending and wakes the connection loop; it never
waits for the broker and never fails because of it. The loop (`run`) owns the
connection: connect, publish `online` and every current message, then send
whatever is pending, always built from the latest figures, so a slow or absent
broker never sees a backlog of stale messages, only the newest state.

aiomqtt does not reconnect by itself and fixes the last will at connect time,
so every connection is a fresh `aiomqtt.Client` (a reused client is reported
not to recover from a broker restart). When the connection drops, the loop
waits a capped, jittered backoff and connects again, then republishes
everything: the broker may have lost its retained messages or kept stale ones.

Topics, all retained at QoS 1 (see `occupancy-v1.schema.json`):

- `<prefix>/towers/<tower>`: one tower's figures;
- `<prefix>/site`: the sum over every tower;
- `<prefix>/status`: `online` while connected; `offline` published by `stop()`,
  by a cancelled `run()` on its way out, and by the broker as the last will
  when the connection dies without either.

No ticket, plate or other personal data is ever part of a message: the
messages are built from counts only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import aiomqtt
import structlog

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
"""Returns the current wall-clock time as an aware datetime."""

TOWER_SCHEMA = "zoo-parking/occupancy/tower/1"
SITE_SCHEMA = "zoo-parking/occupancy/site/1"
SCHEMA_FILE = "occupancy-v1.schema.json"

ONLINE = b"online"
OFFLINE = b"offline"
QOS = 1
KEEPALIVE_S = 30  # The broker gives up on a silent connection after 1.5x this.
PUBLISH_TIMEOUT_S = 10.0  # Longest wait for one PUBACK before reconnecting.
FAREWELL_TIMEOUT_S = 1.0  # Longest a cancelled run() spends publishing offline.
DEFAULT_PORT = 1883

_TOWER_FIELDS = ("capacity", "occupied", "free", "free_ev", "free_tall", "closed")
# The schema's patterns: an id is also a topic level, so no '/', '+' or '#'.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_STATE = re.compile(r"[a-z][a-z_]{0,31}")


class FeedUrlError(ValueError):
    """Raised when the broker URL is not `mqtt://host[:port]`."""


def load_schema() -> dict[str, Any]:
    """The feed's JSON Schema, as shipped in the package."""
    text = resources.files("tower.feed").joinpath(SCHEMA_FILE).read_text("utf-8")
    return json.loads(text)


def parse_url(url: str) -> tuple[str, int]:
    """Split `mqtt://host[:port]` into host and port (default 1883).

    Only plain MQTT over TCP for now: `mqtts://` (TLS) needs certificate
    settings the site file does not have yet, and credentials in the URL are
    refused so a password never sits in the TOML file or a log line.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "mqtts":
        raise FeedUrlError(
            f"broker URL {url!r}: mqtts:// (TLS) is not supported yet; "
            "use mqtt:// to a local broker or bridge"
        )
    if parts.scheme != "mqtt":
        raise FeedUrlError(
            f"broker URL {url!r}: scheme must be mqtt://, not {parts.scheme!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise FeedUrlError(
            "broker URL: no credentials in the URL; set the user name in the site "
            "file and the password in the password file"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise FeedUrlError(f"broker URL {url!r}: mqtt://host:port, nothing after it")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise FeedUrlError(f"broker URL {url!r}: bad port") from None
    if not parts.hostname:
        raise FeedUrlError(f"broker URL {url!r}: no host")
    return parts.hostname, port


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("the feed clock must return an aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OccupancyFeed:
    """Publishes each tower's occupancy and the site summary, retained.

    Create it, start `run()` as a task, call `update_tower` from the event
    loop whenever figures change, and `await stop()` to leave `offline` behind.
    `connected` says whether the broker has the current state.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        site_id: str,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        clock: Clock | None = None,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 10.0,
    ) -> None:
        self._host, self._port = parse_url(url)
        if not _ID.fullmatch(site_id):
            raise ValueError(f"site id {site_id!r} is not a valid feed name")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        self.prefix = prefix.rstrip("/")
        self.site_id = site_id
        self.client_id = client_id or f"tower-feed-{site_id}"
        self._username = username
        self._password = password
        self._clock = clock or _utc_now
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s

        self._towers: dict[str, dict[str, Any]] = {}
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._connected = False
        self._down_reported = False

    @property
    def connected(self) -> bool:
        """True while a connection is up and `online` has been published."""
        return self._connected

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"

    @property
    def site_topic(self) -> str:
        return f"{self.prefix}/site"

    def tower_topic(self, tower_id: str) -> str:
        return f"{self.prefix}/towers/{tower_id}"

    # -- the caller's side: never blocks ----------------------------------

    def update_tower(
        self,
        tower_id: str,
        *,
        capacity: int,
        occupied: int,
        free: int,
        free_ev: int,
        free_tall: int,
        closed: int,
        state: str,
    ) -> None:
        """Store a tower's latest figures; the loop publishes them when it can.

        Returns at once whatever the broker does. Figures equal to the ones
        already held change nothing. Raises ValueError only for figures the
        schema would refuse (a negative or non-integer count, a bad name).
        """
        figures = {
            "capacity": capacity,
            "occupied": occupied,
            "free": free,
            "free_ev": free_ev,
            "free_tall": free_tall,
            "closed": closed,
            "state": str(getattr(state, "value", state)),
        }
        if not _ID.fullmatch(tower_id):
            raise ValueError(f"tower id {tower_id!r} is not a valid feed name")
        if not _STATE.fullmatch(figures["state"]):
            raise ValueError(f"tower {tower_id}: bad state {figures['state']!r}")
        for name in _TOWER_FIELDS:
            value = figures[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"tower {tower_id}: {name} must be a count: {value!r}")
        if self._towers.get(tower_id) == figures:
            return
        self._towers[tower_id] = figures
        self._pending.update((self.tower_topic(tower_id), self.site_topic))
        self._wake.set()

    def messages(self) -> dict[str, dict[str, Any]]:
        """Every current message by topic (towers and site), as published now."""
        topics = [self.tower_topic(t) for t in sorted(self._towers)]
        if self._towers:
            topics.append(self.site_topic)
        return {topic: self._message(topic) for topic in topics}

    def _message(self, topic: str) -> dict[str, Any]:
        time = _iso(self._clock())
        if topic == self.site_topic:
            towers = sorted(self._towers)
            figures = [self._towers[t] for t in towers]
            return {
                "schema": SITE_SCHEMA,
                "site": self.site_id,
                "towers": towers,
                **{
                    name: sum(f[name] for f in figures)
                    for name in ("capacity", "occupied", "free", "free_ev")
                },
                "time": time,
            }
        tower_id = topic.removeprefix(f"{self.prefix}/towers/")
        return {
            "schema": TOWER_SCHEMA,
            "site": self.site_id,
            "tower": tower_id,
            **self._towers[tower_id],
            "time": time,
        }

    # -- the connection loop ------------------------------------------------

    async def run(self) -> None:
        """Keep a connection to the broker and publish; returns after `stop()`.

        Broker trouble never ends it: a lost connection is logged once
        (`feed.disconnected`, warning), retried with capped, jittered backoff,
        and its return logged once (`feed.connected`, info).
        """
        if self._running:
            raise RuntimeError("OccupancyFeed.run() is already running")
        self._running = True
        failures = 0
        try:
            while not self._stopping.is_set():
                error: aiomqtt.MqttError | None = None
                try:
                    await self._session()
                except* aiomqtt.MqttError as group:
                    error = _first(group)
                if error is None:
                    break  # The session ended on stop().
                if not self._down_reported:  # Once per outage, not per attempt.
                    self._report_down(error)
                    failures = 0
                self._connected = False
                delay_s = min(
                    self._reconnect_max_s, self._reconnect_min_s * 2**failures
                )
                failures += 1
                await self._sleep(delay_s / 2 + random.uniform(0, delay_s / 2))
        finally:
            self._connected = False
            self._running = False
            self._stopped.set()

    async def stop(self) -> None:
        """Publish `offline` (retained), disconnect cleanly and end `run()`.

        Safe when never connected or when `run()` is not running (then there
        is nothing to say goodbye on). Once stopped, the feed stays stopped.
        """
        self._stopping.set()
        self._wake.set()
        if self._running:
            await self._stopped.wait()

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            pass

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self._host,
            self._port,
            identifier=self.client_id,
            username=self._username,
            password=self._password,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=QOS, retain=True),
            keepalive=KEEPALIVE_S,
            timeout=PUBLISH_TIMEOUT_S,
        )

    async def _session(self) -> None:
        """One connection, from connect to stop or loss."""
        async with self._client() as client:
            try:
                async with asyncio.TaskGroup() as group:
                    watch = group.create_task(self._watch(client), name="feed.watch")
                    group.create_task(self._send(client, watch), name="feed.send")
            except asyncio.CancelledError:
                # Cancelled without stop(): the clean DISCONNECT aiomqtt sends on
                # the way out makes the broker drop the will, so say it ourselves.
                await self._farewell(client)
                raise

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Raise MqttError as soon as the connection drops, even when idle."""
        async for _ in client.messages:  # Nothing is subscribed; this only waits.
            pass

    async def _send(self, client: aiomqtt.Client, watch: asyncio.Task[None]) -> None:
        if self._stopping.is_set():  # stop() came while we were connecting.
            await self._publish(client, self.status_topic, OFFLINE)
            watch.cancel()
            return
        await self._publish(client, self.status_topic, ONLINE)
        self._connected = True
        self._report_up()
        self._pending.update(self.messages())

        while True:
            self._wake.clear()
            for topic in self._ordered(self._pending):
                self._pending.discard(topic)
                try:
                    payload = json.dumps(self._message(topic), separators=(",", ":"))
                    await self._publish(client, topic, payload.encode())
                except BaseException:
                    self._pending.add(topic)  # Send it on the next connection.
                    raise
            if self._stopping.is_set():
                await self._publish(client, self.status_topic, OFFLINE)
                self._connected = False
                log.info("feed.stopped", broker=f"{self._host}:{self._port}")
                watch.cancel()
                return
            if not self._pending:
                await self._wake.wait()

    def _ordered(self, topics: set[str]) -> list[str]:
        """Towers first, then the site summary derived from them."""
        return sorted(topics, key=lambda topic: (topic == self.site_topic, topic))

    async def _publish(
        self, client: aiomqtt.Client, topic: str, payload: bytes
    ) -> None:
        await client.publish(topic, payload, qos=QOS, retain=True)
        # aiomqtt waits for the PUBACK with asyncio.wait_for, which on Python
        # 3.11 returns the result and drops a cancellation that lands as the
        # PUBACK comes in. Unchecked, the task would go on to wait for work
        # that never comes, and a stopping controller with it.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    async def _farewell(self, client: aiomqtt.Client) -> None:
        if not self._connected:
            return
        self._connected = False
        # If this fails the connection is gone already and the broker sends the will.
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(
                self.status_topic,
                OFFLINE,
                qos=QOS,
                retain=True,
                timeout=FAREWELL_TIMEOUT_S,
            )

    def _report_up(self) -> None:
        log.info(
            "feed.connected",
            broker=f"{self._host}:{self._port}",
            client_id=self.client_id,
            towers=len(self._towers),
        )
        self._down_reported = False

    def _report_down(self, error: aiomqtt.MqttError) -> None:
        log.warning(
            "feed.disconnected",
            broker=f"{self._host}:{self._port}",
            was_connected=self._connected,
            error=str(error),
            retry_max_s=self._reconnect_max_s,
        )
        self._down_reported = True


def _first(group: BaseExceptionGroup) -> aiomqtt.MqttError:
    """The first MqttError of a (possibly nested) exception group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        return exc
    raise AssertionError("empty exception group")
