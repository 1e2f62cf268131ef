"""The control socket server: operator commands over a Unix domain socket.

Theory of operation. Every connection is served by its own task, so a slow or
silent client holds up nobody but itself. A connection reads one request line
at a time (see `tower.console.protocol`) and answers it before reading the
next. Each request goes through the same gates, in this order, and the first
that fails answers it: the line parses (`bad_json`, `bad_request`), the token
is known (`unauthorized`), the command exists (`unknown_command`), the token's
role may run it (`forbidden`). Then `dispatch` runs it. An exception with
`code` and `message` attributes (the core's `RequestRefused`) becomes that
error; any other exception is logged once and answered `internal_error`, and
the server carries on.

Every command that needs the operator role or more changes the plant: once it
has passed the gates it is handed to `audit` with its outcome (`ok`,
`refused:<code>` or `error:internal_error`), whatever that outcome is.

The socket file is created with mode 0660 before it listens, so nobody outside
the file's group can connect even for an instant. A stale socket file left by
a crash is removed at start; a live one (another controller answers on it) or
anything that is not a socket is left alone and refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from tower.console import protocol as proto
from tower.console.tokens import Role, TokenStore

log = structlog.get_logger(__name__)

Dispatch = Callable[[str, dict[str, Any], Role], Awaitable[dict[str, Any]]]
Audit = Callable[[Role, str, dict[str, Any], str], Awaitable[None]]

SOCKET_MODE = 0o660
CLOSE_GRACE_S = 5.0  # How long close() lets running commands finish.


MAX_CONNECTIONS = 128
"""Connections served at once; more are closed at once (and logged)."""

IDLE_TIMEOUT_S = 300.0
"""A connection that sends no complete line for this long is closed."""


class ControlSocketError(OSError):
    """Raised by `start()` when the socket path cannot be served."""


class ControlServer:
    """Serves operator commands on a Unix socket. `await start()`, `await close()`.

    `commands` maps each command to the lowest role that may run it; a command
    not in it is `unknown_command`. `dispatch(cmd, args, role)` runs one and
    returns its result (a JSON object).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        tokens: TokenStore,
        dispatch: Dispatch,
        *,
        commands: dict[str, Role],
        audit: Audit | None = None,
        max_line_bytes: int = proto.MAX_LINE_BYTES,
    ) -> None:
        self.path = Path(path)
        self._tokens = tokens
        self._dispatch = dispatch
        self._commands = {cmd: Role(role) for cmd, role in commands.items()}
        self._audit = audit
        self._max_line_bytes = max_line_bytes
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._idle: set[asyncio.Task[None]] = set()
        self._closing = False
        self._next_connection = 0

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket (mode 0660) and start serving."""
        for warning in self._tokens.warnings:
            log.warning("control.tokens_warning", warning=warning)
        if not self.path.parent.is_dir():
            raise ControlSocketError(
                f"control socket {self.path}: directory {self.path.parent} "
                "does not exist"
            )
        await self._remove_stale()

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, SOCKET_MODE)  # Before listen(): no early callers.
            self._inode = os.stat(self.path).st_ino
            sock.listen(64)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(
                self._serve, sock=sock, limit=self._max_line_bytes + 1
            )
        except OSError as exc:
            sock.close()
            raise ControlSocketError(f"control socket {self.path}: {exc}") from None
        log.info("control.listening", path=str(self.path), commands=len(self._commands))

    async def _remove_stale(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlSocketError(
                f"control socket {self.path}: exists and is not a socket; "
                "not removing it"
            )
        try:
            _, writer = await asyncio.open_unix_connection(self.path)
        except OSError:
            self.path.unlink()  # Nobody answers: a crash left it behind.
            log.info("control.stale_socket_removed", path=str(self.path))
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise ControlSocketError(
            f"control socket {self.path}: another process is serving it"
        )

    async def close(self) -> None:
        """Stop listening, let running commands finish (a few seconds at most),
        close every connection and remove the socket file."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in self._idle:
            task.cancel()
        if self._connections:
            _, late = await asyncio.wait(self._connections, timeout=CLOSE_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._unlink_own_socket()
        log.info("control.closed", path=str(self.path))

    def _unlink_own_socket(self) -> None:
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        self._inode = None

    # -- one connection ---------------------------------------------------

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._next_connection += 1
        task.set_name(f"control.connection[{self._next_connection}]")
        if len(self._connections) >= MAX_CONNECTIONS:
            # Local clients only, but a runaway script must not starve the
            # controller of file descriptors: refuse beyond the cap.
            log.warning("control.refused", code="too_many_connections")
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.CancelledError, TimeoutError):
            pass  # The client left or idled too long, or close() ended it.
        finally:
            self._connections.discard(task)
            self._idle.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self._closing:
            self._idle.add(task)
            try:
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return  # End of stream, possibly in the middle of a line.
            except asyncio.LimitOverrunError:
                line = b""
            finally:
                self._idle.discard(task)

            if not line or len(line) - 1 > self._max_line_bytes:
                answer = proto.error(
                    None,
                    proto.LINE_TOO_LONG,
                    f"a request line is at most {self._max_line_bytes} bytes; "
                    "closing the connection",
                )
                log.warning("control.refused", code=proto.LINE_TOO_LONG)
                writer.write(proto.encode(answer))
                await writer.drain()
                return
            writer.write(proto.encode(await self.answer(line)))
            await writer.drain()

    # -- one request ------------------------------------------------------

    async def answer(self, line: bytes) -> dict[str, Any]:
        """The response to one request line (what the socket sends back)."""
        started = time.monotonic()
        try:
            request = proto.parse_request(line)
        except proto.ProtocolError as exc:
            log.info("control.refused", code=exc.code, detail=exc.message)
            return proto.error(exc.request_id, exc.code, exc.message)

        role = self._tokens.role_of(request.token)
        if role is None:
            log.warning("control.refused", code=proto.UNAUTHORIZED, cmd=request.cmd)
            return proto.error(request.id, proto.UNAUTHORIZED, "unknown token")
        needed = self._commands.get(request.cmd)
        if needed is None:
            log.info("control.refused", code=proto.UNKNOWN_COMMAND, role=role.value)
            known = ", ".join(sorted(self._commands))
            return proto.error(
                request.id,
                proto.UNKNOWN_COMMAND,
                f"no command {request.cmd[:40]!r}; known: {known}",
            )
        if role < needed:
            log.warning(
                "control.refused",
                code=proto.FORBIDDEN,
                cmd=request.cmd,
                role=role.value,
                needed=needed.value,
            )
            return proto.error(
                request.id,
                proto.FORBIDDEN,
                f"{request.cmd} needs the {needed.value} role, this token is "
                f"{role.value}",
            )

        response, outcome = await self._run(request, role)
        if needed >= Role.OPERATOR:
            await self._record(role, request, outcome)
        log.debug(
            "control.request",
            cmd=request.cmd,
            role=role.value,
            outcome=outcome,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return response

    async def _run(self, request: proto.Request, role: Role) -> tuple[dict, str]:
        try:
            result = await self._dispatch(request.cmd, dict(request.args), role)
            proto.encode(proto.ok(request.id, result))  # Fail here, not on send.
        except Exception as exc:  # Every failure becomes an answer.
            code, message = getattr(exc, "code", None), getattr(exc, "message", None)
            if isinstance(code, str) and isinstance(message, str):
                log.info("control.refused", code=code, cmd=request.cmd, role=role.value)
                return proto.error(request.id, code, message), f"refused:{code}"
            log.exception("control.internal_error", cmd=request.cmd, role=role.value)
            return (
                proto.error(
                    request.id,
                    proto.INTERNAL_ERROR,
                    "the controller failed on this request; see its log",
                ),
                f"error:{proto.INTERNAL_ERROR}",
            )
        return proto.ok(request.id, result), "ok"

    async def _record(self, role: Role, request: proto.Request, outcome: str) -> None:
        if self._audit is None:
            return
        try:
            await self._audit(role, request.cmd, dict(request.args), outcome)
        except Exception:  # The command ran; answer it all the same.
            log.exception("control.audit_failed", cmd=request.cmd, outcome=outcome)
