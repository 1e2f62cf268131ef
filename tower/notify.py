"""sd_notify without a dependency: readiness, status and the watchdog for systemd.

systemd starts `tower run` as `Type=notify` with `WatchdogSec=`. It passes
`NOTIFY_SOCKET` (a datagram socket: a path, or `@name` for the abstract
namespace) and, with a watchdog, `WATCHDOG_USEC` and `WATCHDOG_PID`. The service
says `READY=1` once it serves, `STATUS=...` for `systemctl status`, `STOPPING=1`
when it begins to shut down, and `WATCHDOG=1` regularly; a watchdog that stays
silent past `WatchdogSec` makes systemd kill and restart the service.

Outside systemd (no `NOTIFY_SOCKET`) every method does nothing. A send that fails
never raises into the caller: the first failure of a run of failures is logged,
the recovery once more, and the service carries on.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from types import TracebackType

import structlog

_log = structlog.get_logger("tower.notify")


def _socket_address(value: str) -> str | None:
    if value.startswith("/"):
        return value
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace
    if value:
        # systemd may also hand out vsock: addresses (in virtual machines).
        _log.warning("notify.socket_unsupported", notify_socket=value)
    return None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process (our parent)
    try:
        usec = int(raw)
    except ValueError:
        usec = 0
    if usec <= 0:
        _log.warning("notify.watchdog_usec_invalid", watchdog_usec=raw)
        return None
    return usec


class Notifier:
    """Talks to systemd's notification socket, when there is one.

    Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once, from
    `environ` (the process environment by default). Close it when done, or use
    it as a context manager.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = _watchdog_usec(env) if self._address else None
        self._socket: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """Whether a notification socket was given (the process runs under systemd)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half of WatchdogSec, as systemd advises.

        None when systemd keeps no watchdog on this process.
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def ready(self, status: str = "") -> None:
        """Say that start-up is complete (READY=1), with an optional status line."""
        self._send("READY=1", *([_status(status)] if status else []))

    def status(self, text: str) -> None:
        """Set the one-line status `systemctl status` shows."""
        self._send(_status(text))

    def stopping(self) -> None:
        """Say that shutdown has begun (STOPPING=1)."""
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """Ping the watchdog (WATCHDOG=1)."""
        if self._watchdog_usec is not None:
            self._send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket; later calls open a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, *fields: str) -> None:
        if self._address is None:
            return
        data = "\n".join(fields).encode("utf-8")
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto(data, self._address)
        except OSError as exc:
            # Not raised: a lost notification must never stop the controller.
            # The watchdog will notice if the socket stays unusable.
            if not self._failing:
                self._failing = True
                _log.warning(
                    "notify.send_failed",
                    notify_socket=self._address.replace("\0", "@"),
                    error=str(exc),
                )
            return
        if self._failing:
            self._failing = False
            _log.info("notify.send_recovered")


def _status(text: str) -> str:
    # One notification field per line: a newline would start a bogus field.
    return "STATUS=" + " ".join(text.splitlines())


async def watchdog_task(notifier: Notifier, interval_s: float) -> None:
    """Ping the watchdog every `interval_s` seconds until cancelled.

    The loop runs on the service's own event loop on purpose: when the loop is
    wedged (a blocking call, a busy coroutine that never yields) the pings stop,
    systemd sees WatchdogSec pass in silence, and restarts the service. Start it
    only when `notifier.watchdog_interval_s` is not None, with that interval.
    """
    if interval_s <= 0:
        raise ValueError(f"watchdog interval must be positive, got {interval_s} s")
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval_s)
