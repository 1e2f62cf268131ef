"""End to end: the real controller drives the simulated tower over Modbus TCP.

Every part is real: the plant model served by pymodbus on loopback through the
profile files, the controller with its SQLite journal and control socket, and a
Mosquitto broker the test starts itself. Run against both profile variants: the
driver and the simulator are driven by the files alone.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import aiomqtt
import jsonschema
import pytest

import tower.feed
from sim.plant import Car
from sim.rig import Rig
from tower.config import load_site
from tower.core.allocator import Nearest
from tower.core.sequencer import Pipelined
from tower.store.journal import Journal

SITES = Path(__file__).resolve().parents[2] / "sim" / "sites"
SCHEMA = json.loads(
    (Path(tower.feed.__file__).parent / "occupancy-v1.schema.json").read_text()
)
SPEED = 40.0  # simulated seconds per real second
TOWER = "tower-a"


class FeedRecorder:
    """Subscribes to the whole feed and keeps every message in arrival order."""

    def __init__(self, url: str, prefix: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self._host, self._port = host, int(port)
        self.prefix = prefix
        self.messages: list[tuple[str, dict | str]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> FeedRecorder:
        self._task = asyncio.create_task(self._run(), name="test.feed_recorder")
        await asyncio.wait_for(self._ready.wait(), timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with aiomqtt.Client(self._host, self._port) as client:
            await client.subscribe(f"{self.prefix}/#", qos=1)
            self._ready.set()
            async for message in client.messages:
                text = message.payload.decode()
                body = (
                    text
                    if message.topic.matches(f"{self.prefix}/status")
                    else (json.loads(text))
                )
                self.messages.append((str(message.topic), body))

    def towers(self, tower: str) -> list[dict]:
        topic = f"{self.prefix}/towers/{tower}"
        return [body for t, body in self.messages if t == topic]

    def statuses(self) -> list[str]:
        topic = f"{self.prefix}/status"
        return [body for t, body in self.messages if t == topic]

    async def wait_for(self, predicate, timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s):
            # The predicate reads messages another task appends: poll it.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.02)


def _car(index: int) -> Car:
    tall = index % 4 == 3
    return Car(
        id=f"car-{index:02d}",
        height_mm=1850 if tall else 1500,
        weight_class=2,
        driver_time_s=5.0,
    )


def _moved_by_relocations(journal_path: Path, ticket: str, slot: str) -> str:
    """Where the car stored in `slot` stands after the relocations the journal
    finished for its ticket, each of them starting where the last one ended."""
    with Journal.open(journal_path, readonly=True) as journal:
        moves = [
            job
            for job in journal.jobs()
            if job["kind"] == "relocate"
            and job["ticket"] == ticket
            and job["outcome"] == "done"
        ]
    for move in moves:
        assert move["origin"] == slot
        slot = move["destination"]
    return slot


def _relocating(rig: Rig) -> bool:
    return any(j["kind"] == "relocate" for j in rig.controller.core.jobs())


def _free_counts(messages: list[dict]) -> list[int]:
    counts: list[int] = []
    for body in messages:
        if not counts or counts[-1] != body["free"]:
            counts.append(body["free"])
    return counts


@pytest.mark.parametrize("site_file", ["reference.toml", "reference-variant.toml"])
async def test_twelve_cars_come_back_by_ticket_from_their_own_slots(
    site_file, mosquitto
):
    """Under the site's default policy (pipelined), 12 cars stored from two
    bays come back by ticket, in another order, each from its own slot; the
    retained feed counts the free slots down and up, and says offline once the
    controller has stopped."""
    site = load_site(SITES / site_file)
    prefix = site.mqtt.topic_prefix
    cars = [_car(i) for i in range(12)]
    tickets: dict[str, str] = {}
    slots: dict[str, str] = {}  # car -> its own slot, following relocations
    stored: dict[str, str] = {}  # car -> the slot it was stored in

    async with FeedRecorder(mosquitto.url, prefix) as feed:
        async with Rig(site, mqtt_url=mosquitto.url, speed=SPEED, poll_ms=20) as rig:
            capacity = rig.controller.core.status()["towers"][0]["capacity"]
            assert isinstance(rig.controller.core.sequencer, Pipelined)
            assert isinstance(rig.controller.core.allocator, Nearest)

            async def arrivals(bay: str, mine: list[Car]) -> None:
                for car in mine:
                    tickets[car.id] = await rig.arrive(TOWER, bay, car)

            await asyncio.gather(
                arrivals("bay-1", cars[0::2]), arrivals("bay-2", cars[1::2])
            )
            await rig.wait_until(
                lambda: all(
                    (rig.plant.where(c.id) or "").count("-") == 2 for c in cars
                ),
                timeout_s=240,
            )
            slots = {car.id: rig.plant.where(car.id) for car in cars}
            stored = dict(slots)
            for car in cars:
                info = await rig.ctl("ticket", ticket=tickets[car.id])
                assert info["place"] == slots[car.id]
            await feed.wait_for(lambda: feed.towers(TOWER)[-1]["free"] == capacity - 12)
            stored_counts = _free_counts(feed.towers(TOWER))

            order = cars[:]
            random.Random(7).shuffle(order)
            for pair in (order[i : i + 2] for i in range(0, 12, 2)):
                # An idle tower may move a parked car nearer to the lift: its
                # own slot is where the journaled relocations took it.
                await rig.wait_until(lambda: not _relocating(rig), timeout_s=120)
                for car in pair:
                    slots[car.id] = _moved_by_relocations(
                        rig.journal_path, tickets[car.id], slots[car.id]
                    )
                asked = []
                for car in pair:
                    assert rig.plant.where(car.id) == slots[car.id]
                    reply = await rig.ctl("retrieve", ticket=tickets[car.id])
                    job = next(
                        j
                        for j in rig.controller.core.jobs()
                        if j["job_id"] == reply["job_id"]
                    )
                    assert job["origin"] == slots[car.id]
                    asked.append(car)
                for car in asked:
                    await rig.wait_until(
                        lambda car=car: rig.released_bay(TOWER, car.id) is not None,
                        timeout_s=240,
                    )
                    collected = await rig.collect(
                        TOWER, rig.released_bay(TOWER, car.id)
                    )
                    assert collected.id == car.id
            await rig.wait_until(lambda: not rig.controller.core.jobs(), timeout_s=60)
            await feed.wait_for(lambda: feed.towers(TOWER)[-1]["free"] == capacity)
            repeated = [k for k, n in rig.plant.motions.items() if n > 1]

        await feed.wait_for(lambda: feed.statuses()[-1:] == ["offline"])

    assert repeated == []
    assert len(set(stored.values())) == 12
    for _topic, body in feed.messages:
        if isinstance(body, dict):
            jsonschema.validate(body, SCHEMA)
    for body in feed.towers(TOWER):
        assert body["free"] == body["capacity"] - body["occupied"] - body["closed"]
    # Two bays may change the count in one instant, so a value may be skipped;
    # the counts must still only fall while storing and only rise while retrieving.
    down = stored_counts[stored_counts.index(capacity) :]
    assert down == sorted(down, reverse=True)
    assert down[-1] == capacity - 12
    assert len(down) >= 7
    everything = _free_counts(feed.towers(TOWER))
    up = everything[len(down) - 1 :]
    assert up == sorted(up)
    assert up[0] == capacity - 12
    assert up[-1] == capacity
    assert len(up) >= 7
    assert feed.statuses()[0] == "online"
