"""The driver against a misbehaving link: a fault proxy between it and a PLC.

Every test runs over real TCP on loopback: driver -> `FaultProxy` -> `BenchPlc`
(see test_driver.py). Deadlines here are a few hundred milliseconds and waits
are generous (`WAIT_S`): the tests check what happens and in which order,
never how fast.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs
from test_driver import (
    LIFT,
    WAIT_S,
    BenchPlc,
    Recorder,
    make_driver,
    outcomes,
    running,
    until,
)

from sim.faultproxy import Corruption, FaultProxy, SingleClient
from tower.errors import BadData, DeviceError
from tower.plc.driver import Backoff

TIMEOUT_S = 0.2


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


# ---- no answer, late answers, wrong answers -------------------------------


async def test_half_open_peer_ends_every_request_by_its_deadline(
    proxy: FaultProxy,
) -> None:
    """A peer that never answers: each request times out, the connection is
    replaced, the outage is reported once, and nothing is retried on a link."""
    recorder = Recorder()
    driver = make_driver(proxy.port, recorder, timeout_s=TIMEOUT_S)

    async with running(driver) as task:
        await until(lambda: driver.online)
        proxy.drop_replies()
        await until(lambda: bool(recorder.offline), 5 * TIMEOUT_S)
        await until(lambda: proxy.connections >= 4)

        assert not task.done()
        assert not driver.online
        assert driver.stale
    dropped = [e for e in proxy.exchanges if e.outcome == "dropped"]
    per_connection = [e.connection for e in dropped]
    assert recorder.offline == [recorder.offline[0]]
    assert "no answer within 200 ms" in recorder.offline[0]
    assert len(per_connection) == len(set(per_connection))


async def test_device_answering_again_after_half_open_comes_back_online(
    proxy: FaultProxy,
) -> None:
    """Once replies flow again the driver reconnects and passes status on."""
    recorder = Recorder()
    driver = make_driver(proxy.port, recorder, timeout_s=TIMEOUT_S)

    async with running(driver):
        proxy.drop_replies()
        await until(lambda: bool(recorder.offline))
        proxy.passthrough()
        await until(lambda: driver.online and len(recorder.statuses) >= 3)

    assert len(recorder.offline) == 1


async def test_late_reply_is_never_taken_for_the_answer_to_a_later_request(
    proxy: FaultProxy, plc: BenchPlc
) -> None:
    """The first reply comes after its deadline carrying an old heartbeat; no
    status the driver passes on ever shows that value."""
    recorder = Recorder()
    plc.set_points(heartbeat=1111)
    proxy.delay_replies(3 * TIMEOUT_S, count=1)
    driver = make_driver(proxy.port, recorder, timeout_s=TIMEOUT_S)

    async with running(driver):
        await until(lambda: proxy.requests >= 1)
        await asyncio.sleep(0.01)  # the PLC has answered the first read
        plc.set_points(heartbeat=2222)
        await until(lambda: len(recorder.statuses) >= 3)
        await asyncio.sleep(3 * TIMEOUT_S)  # the late reply is due by now
        count = len(recorder.statuses)
        await until(lambda: len(recorder.statuses) > count)

    beats = {status["heartbeat"] for status in recorder.statuses}
    assert beats == {2222}
    assert proxy.exchanges[0].outcome == "delayed"


async def test_reply_with_transaction_id_zero_is_refused(
    proxy: FaultProxy, plc: BenchPlc
) -> None:
    """pymodbus takes a reply with transaction id 0 for any answer; the driver
    does not, and reconnects."""
    recorder = Recorder()
    plc.set_points(heartbeat=1111)
    proxy.corrupt_replies(Corruption.TRANSACTION_ID_ZERO, count=1)
    driver = make_driver(proxy.port, recorder, timeout_s=TIMEOUT_S)

    async with running(driver):
        await until(lambda: proxy.requests >= 1)
        plc.set_points(heartbeat=2222)
        await until(lambda: len(recorder.statuses) >= 2)

    assert {status["heartbeat"] for status in recorder.statuses} == {2222}
    assert "reply to transaction 0" in recorder.offline[0]
    assert proxy.connections == 2


@pytest.mark.parametrize(
    "corruption", [Corruption.TRANSACTION_ID, Corruption.LENGTH], ids=str
)
async def test_corrupt_reply_is_never_decoded(
    proxy: FaultProxy, plc: BenchPlc, corruption: Corruption
) -> None:
    """A reply with another transaction id, or a length that promises more than
    comes, ends at the deadline; its values are never passed on."""
    recorder = Recorder()
    plc.set_points(heartbeat=1111)
    proxy.corrupt_replies(corruption, count=1)
    driver = make_driver(proxy.port, recorder, timeout_s=TIMEOUT_S)

    async with running(driver):
        await until(lambda: proxy.requests >= 1)
        plc.set_points(heartbeat=2222)
        await until(lambda: len(recorder.statuses) >= 2)

    assert {status["heartbeat"] for status in recorder.statuses} == {2222}
    assert "no answer within" in recorder.offline[0]


async def test_connection_reset_mid_request_ends_it_before_the_deadline(
    proxy: FaultProxy,
) -> None:
    """An RST while a request is out ends that request at once, not at its
    (here long) deadline."""
    recorder = Recorder()
    driver = make_driver(proxy.port, recorder, timeout_s=30.0)

    async with running(driver):
        await until(lambda: driver.online)
        proxy.reset_after(0)
        await until(lambda: bool(recorder.offline))
        await until(lambda: driver.online)

    assert "connection closed by the device" in recorder.offline[0]
    assert outcomes(proxy).count("reset") == 1


async def test_peer_closing_between_requests_does_not_stop_the_driver(
    proxy: FaultProxy,
) -> None:
    """A connection reset while the driver is idle is met by a reconnect; the
    driver task keeps running."""
    recorder = Recorder()
    driver = make_driver(proxy.port, recorder, poll_s=0.3, heartbeat_s=10.0)

    async with running(driver) as task:
        await until(lambda: outcomes(proxy) == ["forwarded", "forwarded"])
        await until(lambda: proxy.exchanges[-1].reply_at is not None)
        proxy.reset_connections()
        await until(lambda: len(recorder.statuses) >= 2)

        assert not task.done()
    assert len(recorder.offline) == 1
    assert proxy.connections == 2


# ---- exception replies -----------------------------------------------------


@pytest.mark.parametrize("code", [4, 5, 6, 10, 11])
async def test_transient_exceptions_below_the_limit_are_tolerated(
    proxy: FaultProxy, plc: BenchPlc, code: int
) -> None:
    """max_errors - 1 busy (or gateway, or device failure) replies in a row
    skip turns; the device stays online on the same connection."""
    recorder = Recorder()
    driver = make_driver(proxy.port, recorder, max_errors=3)

    async with running(driver):
        await until(lambda: driver.online)
        proxy.answer_exception(code, count=2)
        count = len(recorder.statuses)
        await until(lambda: outcomes(proxy).count("exception") == 2)
        plc.set_points(heartbeat=77)
        await until(lambda: len(recorder.statuses) > count + 2)

        assert driver.online
    assert recorder.offline == []
    assert recorder.statuses[-1]["heartbeat"] == 77
    assert proxy.connections == 1


@pytest.mark.parametrize("code", [4, 6, 11])
async def test_transient_exceptions_at_the_limit_take_the_device_offline(
    proxy: FaultProxy, plc: BenchPlc, code: int
) -> None:
    """The max_errors-th transient exception in a row: offline, the last good
    status kept and marked stale."""
    recorder = Recorder()
    plc.set_points(heartbeat=5)
    driver = make_driver(proxy.port, recorder, max_errors=3)

    async with running(driver):
        await until(lambda: driver.online)
        proxy.answer_exception(code)
        await until(lambda: bool(recorder.offline))

        assert driver.stale
        assert driver.last_status is not None
        assert driver.last_status["heartbeat"] == 5
    exceptions = [e for e in proxy.exchanges if e.outcome == "exception"]
    assert f"exception {code}" in recorder.offline[0]
    assert len([e for e in exceptions if e.connection == 1]) == 3


async def test_illegal_address_on_the_status_read_takes_the_device_offline(
    proxy: FaultProxy,
) -> None:
    """A permanent exception on the status read: offline at once, the reason
    naming the register, its table and address, and the code."""
    recorder = Recorder()
    proxy.answer_exception(2)
    driver = make_driver(proxy.port, recorder)

    async with running(driver):
        await until(lambda: proxy.connections >= 3)

    first = [e for e in proxy.exchanges if e.connection == 1]
    reason = recorder.offline[0]
    assert recorder.offline == [reason]
    assert "tower-a/lift (unit 1) register state..flags (input 0)" in reason
    assert "exception 2 (illegal data address)" in reason
    assert len(first) == 1


async def test_permanent_exception_on_a_command_write_fails_only_the_command(
    proxy: FaultProxy, plc: BenchPlc
) -> None:
    """Illegal data value on the target write: the command fails naming the
    register, the code write never goes out, the device stays online."""
    recorder = Recorder()
    driver = make_driver(proxy.port, recorder, heartbeat_s=10.0)

    async with running(driver):
        await until(lambda: len(plc.written("heartbeat_ctl")) == 1)
        proxy.answer_exception(3, count=1)
        with pytest.raises(DeviceError) as failed:
            await driver.command({"cmd_target": 9, "cmd_seq": 4}, {"cmd_code": "move"})
        await until(lambda: len(recorder.statuses) >= 3)

        assert driver.online
    error = failed.value
    assert (error.exception_code, error.retryable) == (3, False)
    assert (error.register, error.table, error.address) == (
        "cmd_target..cmd_seq",
        "holding",
        0,
    )
    assert plc.written("cmd_code") == []
    assert recorder.offline == []


# ---- reconnects -------------------------------------------------------------


async def test_device_down_is_retried_with_growing_capped_delays(
    proxy: FaultProxy,
) -> None:
    """A device that refuses every connection sees attempts spaced by delays
    that grow to the cap: a handful per second, not a storm."""
    recorder = Recorder()
    proxy.refuse_connections()
    backoff = Backoff(min_s=0.02, max_s=0.16, rng=random.Random(11))
    driver = make_driver(proxy.port, recorder, backoff=backoff)
    window_s = 1.0

    async with running(driver):
        await asyncio.sleep(window_s)
    attempts = proxy.connected_at
    spacing = [b - a for a, b in itertools.pairwise(attempts)]

    # At most one attempt per half cap once the delays reach it, plus the
    # three on the way up; a slow machine only makes fewer.
    assert 3 <= len(attempts) <= 4 + window_s / (0.16 / 2)
    assert min(spacing) >= 0.02
    assert all(gap >= 0.16 / 2 for gap in spacing[3:])
    assert len(recorder.offline) == 1
    assert proxy.refused == len(attempts)


async def test_nothing_listening_is_reported_offline_once() -> None:
    """A port where nothing listens: offline once, naming the address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    recorder = Recorder()
    driver = make_driver(port, recorder)

    async with running(driver):
        await until(lambda: bool(recorder.offline))
        await asyncio.sleep(0.2)

    assert recorder.offline == [recorder.offline[0]]
    assert f"cannot connect to 127.0.0.1:{port}" in recorder.offline[0]


@pytest.mark.parametrize("policy", list(SingleClient), ids=str)
async def test_single_client_gateway_never_sees_two_of_our_connections(
    proxy: FaultProxy, policy: SingleClient
) -> None:
    """Through timeouts, resets and refusals the driver closes its connection
    before it opens the next: the gateway never has two of ours at once."""
    recorder = Recorder()
    proxy.single_client = policy
    driver = make_driver(proxy.port, recorder, timeout_s=TIMEOUT_S)

    async with running(driver):
        await until(lambda: driver.online)
        proxy.drop_replies()
        await until(lambda: proxy.connections >= 3)
        proxy.passthrough()
        await until(lambda: driver.online)
        proxy.refuse_connections()
        proxy.reset_after(2)
        await until(lambda: proxy.refused >= 2)
        proxy.refuse_connections(False)
        await until(lambda: driver.online)
        await until(lambda: proxy.exchanges[-1].connection == proxy.connections)

    assert proxy.max_concurrent_connections == 1
    assert proxy.displaced == 0
    assert "reset" in outcomes(proxy)


# ---- bad data ---------------------------------------------------------------


async def test_bad_enum_value_is_reported_as_bad_data_naming_the_register(
    proxy: FaultProxy, plc: BenchPlc
) -> None:
    """A state code the profile does not list: on_fault once with the register
    and the raw value, the status never passed on, offline at the limit, and
    online again with the first good read."""
    recorder = Recorder()
    with capture_logs() as logs:
        driver = make_driver(proxy.port, recorder, max_errors=3)
        async with running(driver):
            await until(lambda: driver.online)
            good = len(recorder.statuses)
            plc.set_raw("state", 99)
            await until(lambda: bool(recorder.offline))
            bad = len(recorder.statuses)
            plc.set_points(state="idle")
            await until(lambda: driver.online)

    fault = recorder.faults[0]
    events = [entry["event"] for entry in logs if entry["log_level"] != "debug"]
    assert isinstance(fault, BadData)
    assert len(recorder.faults) == 1
    assert (fault.register, fault.table, fault.address, fault.raw) == (
        "state",
        "input",
        0,
        99,
    )
    assert "STS_MODE" in str(fault)
    assert "register state (input 0)" in recorder.offline[0]
    assert bad in (good, good + 1)  # at most the poll already on its way
    assert all(status["state"] == "idle" for status in recorder.statuses)
    assert events == ["plc.online", "plc.bad_data", "plc.offline", "plc.online"]


async def test_driver_stops_when_cancelled_as_a_connection_opens(
    plc: BenchPlc,
) -> None:
    """Cancelled at any moment of its connect, the driver task ends: no
    cancellation is lost inside pymodbus (asyncio.wait_for on Python 3.11)."""
    for turns in range(20):
        driver = make_driver(plc.port, Recorder())
        task = asyncio.create_task(driver.run(), name=f"{driver.name}.poll")
        for _ in range(turns):  # sweep the moment of the cancel over the connect
            await asyncio.sleep(0)
        task.cancel()

        done, _ = await asyncio.wait((task,), timeout=WAIT_S)

        assert done == {task}
        assert task.cancelled()
