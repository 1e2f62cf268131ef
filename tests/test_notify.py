"""sd_notify: a real AF_UNIX datagram socket stands in for systemd's."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tower.notify import Notifier, watchdog_task

# How long any single wait in these tests may take before the test fails, s.
_WAIT_S = 5.0


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound where NOTIFY_SOCKET points, as systemd binds it."""
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100  # sun_path holds 108 bytes
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        yield sock, str(path)


def _received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on the socket now, oldest first."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


def _env(path: str, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": path, **extra}


def test_ready_status_and_stopping_reach_the_socket(systemd_socket):
    """ready, status and stopping each send one datagram in sd_notify's format."""
    sock, path = systemd_socket
    with Notifier(_env(path)) as notifier:
        notifier.ready("controller started")
        notifier.status("2 towers, 0 jobs")
        notifier.stopping()

    assert _received(sock) == [
        b"READY=1\nSTATUS=controller started",
        b"STATUS=2 towers, 0 jobs",
        b"STOPPING=1",
    ]


def test_ready_without_status_sends_ready_alone(systemd_socket):
    """ready() with no status sends just READY=1."""
    sock, path = systemd_socket
    with Notifier(_env(path)) as notifier:
        notifier.ready()

    assert _received(sock) == [b"READY=1"]


def test_status_with_newline_stays_one_field(systemd_socket):
    """A newline in a status text cannot smuggle in another notification field."""
    sock, path = systemd_socket
    with Notifier(_env(path)) as notifier:
        notifier.status("fine\nREADY=1")

    assert _received(sock) == [b"STATUS=fine READY=1"]


def test_abstract_socket_name_is_used():
    """NOTIFY_SOCKET='@name' addresses the abstract namespace."""
    name = f"tower-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        with Notifier(_env("@" + name)) as notifier:
            notifier.ready()

        assert _received(sock) == [b"READY=1"]


def test_watchdog_interval_is_half_of_watchdog_sec(systemd_socket):
    """WATCHDOG_USEC=10 s for this pid gives a 5 s ping interval."""
    _, path = systemd_socket
    env = _env(path, WATCHDOG_USEC="10000000", WATCHDOG_PID=str(os.getpid()))
    with Notifier(env) as notifier:
        interval_s = notifier.watchdog_interval_s

    assert interval_s == 5.0


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="no-watchdog"),
        pytest.param(
            {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, id="other-pid"
        ),
        pytest.param({"WATCHDOG_USEC": "soon"}, id="not-a-number"),
    ],
)
def test_no_watchdog_unless_meant_for_this_process(systemd_socket, extra):
    """Without a valid WATCHDOG_USEC for this pid there is no interval and no ping."""
    sock, path = systemd_socket
    with Notifier(_env(path, **extra)) as notifier:
        interval_s = notifier.watchdog_interval_s
        notifier.watchdog()

    assert interval_s is None
    assert _received(sock) == []


def test_outside_systemd_everything_is_a_no_op():
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    with Notifier({}) as notifier:
        notifier.ready("x")
        notifier.status("y")
        notifier.stopping()
        notifier.watchdog()

        assert not notifier.enabled
        assert notifier.watchdog_interval_s is None


def test_send_failure_is_logged_once_and_not_raised(tmp_path: Path):
    """A socket that is not there never raises; the run of failures logs once."""
    with capture_logs() as logs, Notifier(_env(str(tmp_path / "gone.sock"))) as n:
        n.ready()
        n.status("still going")
        n.stopping()

    assert [entry["event"] for entry in logs] == ["notify.send_failed"]


def test_recovery_after_failure_is_logged(tmp_path: Path):
    """When the socket comes back, sends work again and the recovery is logged."""
    path = str(tmp_path / "late.sock")
    with capture_logs() as logs, Notifier(_env(path)) as notifier:
        notifier.status("before")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            notifier.status("after")
            received = _received(sock)

    assert received == [b"STATUS=after"]
    assert [entry["event"] for entry in logs] == [
        "notify.send_failed",
        "notify.send_recovered",
    ]


async def test_watchdog_task_pings_until_cancelled(systemd_socket):
    """The watchdog task sends WATCHDOG=1 again and again while the loop runs."""
    sock, path = systemd_socket
    env = _env(path, WATCHDOG_USEC="100000", WATCHDOG_PID=str(os.getpid()))
    with Notifier(env) as notifier:
        task = asyncio.create_task(
            watchdog_task(notifier, notifier.watchdog_interval_s), name="watchdog"
        )
        pings = await _wait_for_pings(sock, 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert pings == [b"WATCHDOG=1"] * 3


class _TimedNotifier(Notifier):
    """A Notifier that notes the monotonic time of every watchdog ping it sends."""

    def __init__(self, environ: dict[str, str]) -> None:
        super().__init__(environ)
        self.pinged_at: list[float] = []

    def watchdog(self) -> None:
        self.pinged_at.append(time.monotonic())
        super().watchdog()


async def test_watchdog_stops_while_the_loop_is_blocked(systemd_socket):
    """A blocking call in the loop stops the pings for at least the blocked time."""
    sock, path = systemd_socket
    interval_s = 0.02
    blocked_s = 0.5
    with _TimedNotifier(_env(path, WATCHDOG_USEC="40000")) as notifier:
        task = asyncio.create_task(watchdog_task(notifier, interval_s), name="watchdog")
        await _wait_for_pings(sock, 3)

        # Drain, then wedge the loop the way a blocking call in a coroutine would.
        _received(sock)
        blocked_at = time.monotonic()
        time.sleep(blocked_s)  # noqa: ASYNC251 -- blocking the loop is the test
        unblocked_at = time.monotonic()
        during = _received(sock)

        after = await _wait_for_pings(sock, 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    last_before = max(t for t in notifier.pinged_at if t < blocked_at)
    first_after = min(t for t in notifier.pinged_at if t > blocked_at)
    gaps = [b - a for a, b in itertools.pairwise(notifier.pinged_at)]
    assert during == []
    assert first_after >= unblocked_at
    assert first_after - last_before >= blocked_s
    assert max(gaps) == first_after - last_before
    assert after == [b"WATCHDOG=1"] * 2


async def _wait_for_pings(sock: socket.socket, count: int) -> list[bytes]:
    """Wait (on the loop) for `count` datagrams and return them."""
    loop = asyncio.get_running_loop()
    out = []
    async with asyncio.timeout(_WAIT_S):
        while len(out) < count:
            out.append(await loop.sock_recv(sock, 4096))
    return out
