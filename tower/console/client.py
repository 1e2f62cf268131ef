"""The control socket client: one request, one answer.

`request()` opens a connection, sends one request line, reads the answer and
closes. Two kinds of failure, kept apart because the operator's next step
differs: `ControlError` when the controller answered and refused (the command
was wrong, or not allowed now), `ControlUnavailable` when there was no
controller to ask (no socket, nobody listening, no permission, no answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from typing import Any

from tower.console import protocol as proto

# Answers (status of a big site) may be far longer than a request line.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

_ids = itertools.count(1)


class ControlError(Exception):
    """Raised when the controller answers a request with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ControlUnavailable(ConnectionError):
    """Raised when the controller cannot be asked: no socket, nobody listening,
    no permission, a dropped connection or no answer in time."""


async def request(
    path: str | os.PathLike[str],
    token: str,
    cmd: str,
    args: dict[str, Any] | None = None,
    *,
    timeout_s: float = 10,
) -> dict[str, Any]:
    """Send one command and return its result.

    Raises ControlError(code, message) when the controller refuses, and
    ControlUnavailable when it cannot be reached or does not answer within
    `timeout_s`.
    """
    path = os.fspath(path)
    request_id = next(_ids)
    try:
        async with asyncio.timeout(timeout_s):
            line = await _exchange(
                path, proto.make_request(request_id, token, cmd, args or {})
            )
    except TimeoutError:
        raise ControlUnavailable(
            f"control socket {path}: no answer within {timeout_s} s"
        ) from None

    try:
        answer = json.loads(line)
        ok, answer_id = answer["ok"], answer["id"]
    except (ValueError, KeyError, TypeError):
        raise ControlUnavailable(
            f"control socket {path}: the answer is not a control response"
        ) from None
    if answer_id not in (request_id, None):
        raise ControlUnavailable(
            f"control socket {path}: answer to request {answer_id!r}, not {request_id}"
        )
    if ok is True and isinstance(answer.get("result"), dict):
        return answer["result"]
    failure = answer.get("error") or {}
    raise ControlError(
        str(failure.get("code", "unknown")), str(failure.get("message", ""))
    )


async def _exchange(path: str, line: bytes) -> bytes:
    try:
        reader, writer = await asyncio.open_unix_connection(
            path, limit=MAX_ANSWER_BYTES
        )
    except FileNotFoundError:
        raise ControlUnavailable(
            f"control socket {path}: no such file (is the controller running?)"
        ) from None
    except ConnectionRefusedError:
        raise ControlUnavailable(
            f"control socket {path}: nobody is listening (controller stopped?)"
        ) from None
    except PermissionError:
        raise ControlUnavailable(
            f"control socket {path}: permission denied (not in the socket's group?)"
        ) from None
    except OSError as exc:
        raise ControlUnavailable(f"control socket {path}: {exc}") from None

    try:
        writer.write(line)
        await writer.drain()
        answer = await reader.readline()
    except ValueError:  # readline() says so when the answer passes the limit.
        raise ControlUnavailable(
            f"control socket {path}: answer longer than {MAX_ANSWER_BYTES} bytes"
        ) from None
    except OSError as exc:
        raise ControlUnavailable(f"control socket {path}: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not answer.endswith(b"\n"):
        raise ControlUnavailable(
            f"control socket {path}: the controller closed the connection "
            "without answering"
        )
    return answer
