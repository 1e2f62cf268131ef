"""The Modbus driver over real TCP on loopback: polls, commands, pacing, backoff.

A `BenchPlc` is a minimal pymodbus server built from a profile alone: it holds
raw register values the test sets (so it can also serve values a real PLC
should never send) and records every write. The fault tests
(`test_driver_faults.py`) put a `sim.faultproxy.FaultProxy` between it and the
driver and import these helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from sim.faultproxy import FaultProxy
from tower.errors import DeviceError
from tower.plc.codec import Table
from tower.plc.driver import Backoff, DeviceDriver, WriteNotKept
from tower.plc.profile import Profile, load_profile

PROFILES = Path(__file__).resolve().parents[2] / "plc_profiles"
LIFT = load_profile(PROFILES / "lift.toml")
LIFT_VARIANT = load_profile(PROFILES / "lift-variant.toml")
WAIT_S = 5.0
"""Generous bound for anything a test waits for; no test asserts it is tight."""

_TABLES = (Table.COIL, Table.DISCRETE_INPUT, Table.HOLDING, Table.INPUT)
_FUNCTION_TABLE = {
    1: Table.COIL,
    5: Table.COIL,
    15: Table.COIL,
    2: Table.DISCRETE_INPUT,
    3: Table.HOLDING,
    6: Table.HOLDING,
    16: Table.HOLDING,
    4: Table.INPUT,
}
IDLE_LIFT = {
    "state": "idle",
    "seq_accepted": 0,
    "seq_done": 0,
    "result": "none",
    "fault_code": "none",
    "heartbeat": 1,
    "level": 0,
    "position_mm": 0,
    "flags": {"loaded": False, "moving": False, "estop": False},
}


class BenchPlc:
    """A Modbus TCP server on a free loopback port, serving raw values by profile.

    Only the addresses the profile defines exist (others answer illegal data
    address, as a real PLC may). `writes` lists every write as (table, wire
    address, values), in order.
    """

    def __init__(self, profile: Profile, unit_id: int | None = None) -> None:
        self.profile = profile
        self.unit_id = profile.unit_id if unit_id is None else unit_id
        self.image: dict[tuple[Table, int], int] = {}
        self.writes: list[tuple[Table, int, list[int]]] = []
        self.port = 0
        self._server: ModbusTcpServer | None = None
        self.set_points(**IDLE_LIFT)

    def set_points(self, **points: Any) -> None:
        """Serve these point values from now on (encoded by the profile)."""
        for write in self.profile.encode_points(points):
            for offset, value in enumerate(write.values):
                self.image[(write.table, write.start + offset)] = int(value)

    def set_raw(self, point: str, *words: int) -> None:
        """Serve raw words for a point, whether the profile allows them or not."""
        reg = self.profile.register(point)
        for offset, word in enumerate(words):
            self.image[(reg.table, reg.wire_address + offset)] = word

    def written(self, point: str) -> list[int]:
        """Every raw value written to a one-word point, in order."""
        reg = self.profile.register(point)
        return [
            values[reg.wire_address - start]
            for table, start, values in self.writes
            if table is reg.table and start <= reg.wire_address < start + len(values)
        ]

    async def start(self) -> int:
        """Listen on a free loopback port; the port."""
        device = SimDevice(id=self.unit_id, simdata=self._blocks(), action=self._action)
        self._server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await self._server.serve_forever(background=True)
        self.port = self._server.transport.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def _blocks(self) -> tuple[list[SimData], ...]:
        blocks = []
        for table in _TABLES:
            regs = sorted(
                (r for r in self.profile.registers.values() if r.table is table),
                key=lambda r: r.wire_address,
            )
            kind = DataType.BITS if table.holds_bits else DataType.REGISTERS
            data = [SimData(r.wire_address, count=r.words, datatype=kind) for r in regs]
            blocks.append(data or [SimData(0, values=False, datatype=DataType.BITS)])
        return tuple(blocks)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = _FUNCTION_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if values is not None:
            words = [int(v) for v in values]
            self.writes.append((table, address, words))
            for offset, word in enumerate(words):
                self.image[(table, address + offset)] = word
            return None
        if table.holds_bits:
            return None  # no test reads bits; the profiles keep status in words
        for a in range(address, address + count):
            registers[a - start_address] = self.image.get((table, a), 0)
        return None


@dataclass
class Recorder:
    """The driver's callbacks, recorded, and a way to wait for them."""

    statuses: list[dict[str, Any]] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    faults: list[DeviceError] = field(default_factory=list)

    def on_status(self, tower: str, device: str, points: dict[str, Any]) -> None:
        self.statuses.append(points)

    def on_offline(self, tower: str, device: str, reason: str) -> None:
        self.offline.append(reason)

    def on_fault(self, tower: str, device: str, error: DeviceError) -> None:
        self.faults.append(error)


def outcomes(proxy: FaultProxy) -> list[str]:
    """What became of each request the proxy saw, in order."""
    return [exchange.outcome for exchange in proxy.exchanges]


async def until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Wait until `condition()` holds; fail the test after `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            # Polling on purpose: the conditions read counters of the driver,
            # the proxy and the bench PLC, none of which has an event to wait on.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"condition not met within {timeout_s} s")


def make_driver(
    port: int,
    recorder: Recorder,
    *,
    profile: Profile = LIFT,
    poll_s: float = 0.02,
    timeout_s: float = 0.2,
    heartbeat_s: float = 0.05,
    max_errors: int = 3,
    backoff: Backoff | None = None,
) -> DeviceDriver:
    """A driver for the bench lift with test-sized periods and a seeded backoff."""
    return DeviceDriver(
        tower="tower-a",
        device="lift",
        profile=profile,
        host="127.0.0.1",
        port=port,
        unit_id=profile.unit_id,
        poll_s=poll_s,
        timeout_s=timeout_s,
        heartbeat_s=heartbeat_s,
        on_status=recorder.on_status,
        on_offline=recorder.on_offline,
        on_fault=recorder.on_fault,
        max_errors=max_errors,
        backoff=backoff or Backoff(min_s=0.02, max_s=0.1, rng=random.Random(7)),
        heartbeat_start=0,  # counts 1, 2, 3, ... (the service starts at random)
    )


@contextlib.asynccontextmanager
async def running(driver: DeviceDriver) -> AsyncIterator[asyncio.Task[None]]:
    """Run the driver's task for the block; cancel it and wait for it after."""
    task = asyncio.create_task(driver.run(), name=f"{driver.name}.poll")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def plc() -> AsyncIterator[BenchPlc]:
    bench = BenchPlc(LIFT)
    await bench.start()
    yield bench
    await bench.close()


@pytest.fixture
async def proxy(plc: BenchPlc) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", plc.port) as fault_proxy:
        yield fault_proxy


# ---- backoff ----------------------------------------------------------------


def test_backoff_delays_grow_to_the_cap_and_stay_jittered() -> None:
    """Each delay lies in [c/2, c] for a ceiling c that doubles up to max_s."""
    backoff = Backoff(min_s=0.1, max_s=1.0, rng=random.Random(1))

    delays = [backoff.next_delay() for _ in range(30)]

    ceilings = [min(1.0, 0.1 * 2 ** (n + 1)) for n in range(30)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len({round(d, 6) for d in delays[5:]}) > 1


def test_backoff_never_goes_below_its_minimum_or_above_its_cap() -> None:
    """Whatever the draw, a delay stays within [min_s, max_s]."""
    for seed in range(20):
        backoff = Backoff(min_s=0.2, max_s=3.0, rng=random.Random(seed))

        delays = [backoff.next_delay() for _ in range(12)]

        assert all(0.2 <= d <= 3.0 for d in delays)


def test_backoff_reset_starts_again_from_the_shortest_delay() -> None:
    """After reset the next delay is one of the first attempt's."""
    backoff = Backoff(min_s=0.1, max_s=5.0, rng=random.Random(3))
    for _ in range(8):
        backoff.next_delay()

    backoff.reset()

    assert 0.1 <= backoff.next_delay() <= 0.2


# ---- polls and commands -----------------------------------------------------


async def test_driver_passes_decoded_status_and_comes_online(plc: BenchPlc) -> None:
    """A good poll goes to on_status decoded, and the driver counts as online."""
    recorder = Recorder()
    plc.set_points(state="busy", level=3, position_mm=6600, heartbeat=42)
    driver = make_driver(plc.port, recorder)

    async with running(driver):
        await until(lambda: bool(recorder.statuses))
        status = recorder.statuses[0]

        assert driver.online
        assert (status["state"], status["level"], status["position_mm"]) == (
            "busy",
            3,
            6600,
        )
        assert driver.last_status == recorder.statuses[-1]
        assert not driver.stale
    assert recorder.offline == []


async def test_driver_writes_the_heartbeat_only_after_a_status_read(
    proxy: FaultProxy, plc: BenchPlc
) -> None:
    """On every connection the first request is a status read, then heartbeats."""
    recorder = Recorder()
    driver = make_driver(proxy.port, recorder)

    async with running(driver):
        await until(lambda: len(plc.written("heartbeat_ctl")) >= 3)
        proxy.reset_connections()
        await until(lambda: proxy.connections >= 2 and len(recorder.statuses) > 5)

    firsts = {}
    for exchange in proxy.exchanges:
        firsts.setdefault(exchange.connection, exchange.function_code)
    heartbeats = plc.written("heartbeat_ctl")
    assert set(firsts.values()) == {4}
    assert heartbeats == sorted(set(heartbeats))


async def test_command_writes_its_groups_in_order_then_reads_status(
    proxy: FaultProxy, plc: BenchPlc
) -> None:
    """Target and sequence go in one request and are read back; the code
    that latches them goes in the next, then a poll."""
    recorder = Recorder()
    driver = make_driver(proxy.port, recorder, poll_s=1.0, heartbeat_s=1.0)

    async with running(driver):
        await until(lambda: len(plc.written("heartbeat_ctl")) == 1)
        before = len(proxy.exchanges)
        await driver.command({"cmd_target": 5, "cmd_seq": 17}, {"cmd_code": "move"})
        await until(lambda: len(proxy.exchanges) >= before + 4)

    functions = [e.function_code for e in list(proxy.exchanges)[before : before + 4]]
    assert functions == [16, 3, 16, 4]
    assert plc.writes[-2:] == [(Table.HOLDING, 0, [5, 17]), (Table.HOLDING, 2, [1])]


async def test_command_to_an_offline_device_is_refused(plc: BenchPlc) -> None:
    """Before the first good poll a command fails at once, nothing is sent."""
    recorder = Recorder()
    driver = make_driver(plc.port, recorder)

    with pytest.raises(DeviceError, match="offline"):
        await driver.command({"cmd_code": "move"})

    assert plc.writes == []


async def test_command_that_does_not_encode_sends_nothing(
    plc: BenchPlc,
) -> None:
    """A value its register cannot hold fails the command before any write."""
    recorder = Recorder()
    driver = make_driver(plc.port, recorder, heartbeat_s=10.0)

    async with running(driver) as task:
        await until(lambda: driver.online)
        with pytest.raises(ValueError, match="cmd_target"):
            await driver.command({"cmd_target": 1, "cmd_seq": 2}, {"cmd_target": -1})

        assert not task.done()
    assert [w for w in plc.writes if w[1] != 3] == []


async def test_commands_in_flight_or_queued_fail_when_the_driver_stops(
    proxy: FaultProxy,
) -> None:
    """The command being written and the one queued behind it both fail when
    the driver task is cancelled; neither caller waits forever."""
    recorder = Recorder()
    driver = make_driver(
        proxy.port, recorder, poll_s=10.0, timeout_s=30.0, heartbeat_s=10.0
    )

    async with running(driver):
        await until(lambda: len(proxy.exchanges) == 2)  # the poll, the heartbeat
        proxy.drop_replies()
        writing = asyncio.create_task(
            driver.command({"cmd_code": "move"}), name="test.writing"
        )
        await until(lambda: outcomes(proxy)[-1:] == ["dropped"])
        waiting = asyncio.create_task(
            driver.command({"cmd_code": "none"}), name="test.waiting"
        )
        await asyncio.sleep(0.01)

    for command in (writing, waiting):
        with pytest.raises(DeviceError, match="driver stopped"):
            await command


async def test_min_request_gap_is_kept_between_requests() -> None:
    """With a 20 ms gap in the profile, no request starts sooner after a reply."""
    bench = BenchPlc(LIFT_VARIANT)
    await bench.start()
    gap_s = LIFT_VARIANT.min_request_gap_ms / 1000
    recorder = Recorder()
    try:
        async with FaultProxy("127.0.0.1", bench.port) as proxy:
            driver = make_driver(
                proxy.port,
                recorder,
                profile=LIFT_VARIANT,
                poll_s=0.001,
                heartbeat_s=0.005,
            )
            async with running(driver):
                await until(lambda: len(proxy.exchanges) >= 15)
    finally:
        await bench.close()

    exchanges = list(proxy.exchanges)
    gaps = [
        later.request_at - earlier.reply_at
        for earlier, later in itertools.pairwise(exchanges)
        if earlier.reply_at is not None
    ]
    assert len(gaps) >= 14
    assert min(gaps) >= gap_s - 0.001
    # Status reads, heartbeat writes and the heartbeat's read-backs: all paced.
    assert {e.function_code for e in exchanges} == {3, 4, 16}


@contextlib.asynccontextmanager
async def other_master(plc: BenchPlc, period_s: float = 0.005) -> AsyncIterator[None]:
    """Another master writing its own heartbeat values to the PLC meanwhile."""

    async def write() -> None:
        value = 40000
        while True:
            value += 1
            plc.set_points(heartbeat_ctl=value)
            await asyncio.sleep(period_s)

    task = asyncio.create_task(write(), name="test.other_master")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_second_master_writing_the_heartbeat_is_reported(plc: BenchPlc) -> None:
    """Another master (a second controller on the same PLC) writes the
    controller heartbeat register too: read back before each of our writes,
    it is not what we wrote, and after two such read-backs in a row every
    status says `contested`. Once the other master stops, it clears."""
    recorder = Recorder()
    driver = make_driver(plc.port, recorder, heartbeat_s=0.02)
    async with running(driver):
        await until(lambda: len(plc.written("heartbeat_ctl")) >= 3)
        assert recorder.statuses[-1]["contested"] is False

        async with other_master(plc):
            await until(lambda: recorder.statuses[-1]["contested"] is True)
            assert driver.contested
        await until(lambda: recorder.statuses[-1]["contested"] is False)


async def test_a_read_back_of_our_own_heartbeat_is_not_contested(plc: BenchPlc) -> None:
    """With us as the only master, every read-back holds what we wrote."""
    recorder = Recorder()
    driver = make_driver(plc.port, recorder, heartbeat_s=0.01)
    async with running(driver):
        await until(lambda: len(plc.written("heartbeat_ctl")) >= 20)
    assert not any(s["contested"] for s in recorder.statuses)


class ClampingPlc(BenchPlc):
    """A bench PLC whose firmware clamps the target level to 3 instead of
    refusing a value it cannot serve."""

    async def _action(
        self, function_code, start_address, address, count, registers, values
    ):
        target = self.profile.register("cmd_target").wire_address
        if values is not None and address <= target < address + len(values):
            values = list(values)
            values[target - address] = min(int(values[target - address]), 3)
        return await super()._action(
            function_code, start_address, address, count, registers, values
        )


async def test_a_clamped_command_parameter_fails_the_command_before_its_latch() -> None:
    """The PLC keeps 3 where the controller wrote target 5: the command fails
    naming the register and both values, the command code is never written
    (nothing moves to the wrong level), and the link stays up."""
    plc = ClampingPlc(LIFT)
    await plc.start()
    recorder = Recorder()
    driver = make_driver(plc.port, recorder)
    try:
        async with running(driver):
            await until(lambda: driver.online)
            with pytest.raises(WriteNotKept) as failed:
                await driver.command(
                    {"cmd_target": 5, "cmd_seq": 17}, {"cmd_code": "move"}
                )
            polls = driver.polls
            await until(lambda: driver.polls > polls + 2)
            assert driver.online
    finally:
        await plc.close()

    message = str(failed.value)
    assert "cmd_target" in message
    assert "wrote 5, reads back 3" in message
    assert plc.written("cmd_code") == []
    assert recorder.offline == []


async def test_a_device_is_owned_only_after_its_heartbeat_reads_back_ours(
    plc: BenchPlc,
) -> None:
    """Just after a connect the driver cannot know whether another master
    writes to the PLC: its statuses say `owned` false until two read-backs
    in a row hold its own heartbeat; with another master writing, never."""
    recorder = Recorder()
    driver = make_driver(plc.port, recorder, heartbeat_s=0.02)
    async with running(driver):
        await until(lambda: bool(recorder.statuses))
        assert recorder.statuses[0]["owned"] is False
        await until(lambda: recorder.statuses[-1]["owned"] is True)
        assert len(plc.written("heartbeat_ctl")) >= 3

    recorder = Recorder()
    driver = make_driver(plc.port, recorder, heartbeat_s=0.02)
    async with other_master(plc, period_s=0.002), running(driver):
        await until(lambda: len(plc.written("heartbeat_ctl")) >= 12)
    assert not any(s["owned"] for s in recorder.statuses)
