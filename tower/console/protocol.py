"""The control socket protocol: JSON lines, one request and one response.

A request is one line of UTF-8 JSON, at most `MAX_LINE_BYTES` long without its
newline:

    {"id": 1, "token": "...", "cmd": "status", "args": {}}

`id` (an integer or a string) is echoed in the response; `args` may be left
out. The server answers each request with one line, in order:

    {"id": 1, "ok": true, "result": {...}}
    {"id": 1, "ok": false, "error": {"code": "forbidden", "message": "..."}}

`id` is null in the answer to a request whose id could not be read. Error codes
of the protocol itself are listed in `ERROR_CODES`; a command may refuse with
a code of its own (`unknown_ticket`, `no_free_slot`, ...).

This module is pure: it parses and builds messages, the server and the client
do the I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_LINE_BYTES = 64 * 1024

RequestId = int | str | None

BAD_JSON = "bad_json"  # The line is not UTF-8 JSON.
BAD_REQUEST = "bad_request"  # A field is missing or of the wrong type.
UNAUTHORIZED = "unauthorized"  # The token is not in the tokens file.
FORBIDDEN = "forbidden"  # The token's role may not run this command.
UNKNOWN_COMMAND = "unknown_command"  # No such command.
LINE_TOO_LONG = "line_too_long"  # Over MAX_LINE_BYTES; the connection is closed.
INTERNAL_ERROR = "internal_error"  # The controller failed; see its log.

ERROR_CODES = (
    BAD_JSON,
    BAD_REQUEST,
    UNAUTHORIZED,
    FORBIDDEN,
    UNKNOWN_COMMAND,
    LINE_TOO_LONG,
    INTERNAL_ERROR,
)

_FIELDS = {"id", "token", "cmd", "args"}


class ProtocolError(Exception):
    """Raised when a request line cannot be read; carries the answer to send."""

    def __init__(self, code: str, message: str, request_id: RequestId = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    """One parsed request. `repr` hides the token so it never reaches a log."""

    id: int | str
    token: str = field(repr=False)
    cmd: str
    args: dict[str, Any]


def parse_request(line: bytes) -> Request:
    """Read one request line (with or without its newline).

    Raises ProtocolError with `bad_json` or `bad_request` (naming the field).
    """
    try:
        body = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(BAD_JSON, f"not a JSON line: {exc}") from None
    except (RecursionError, ValueError) as exc:
        # Nesting too deep, or an integer with thousands of digits.
        raise ProtocolError(BAD_JSON, f"not a usable JSON line: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(BAD_REQUEST, "a request is a JSON object")

    request_id = body.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        raise ProtocolError(
            BAD_REQUEST, "field 'id' (an integer or a string) is required"
        )
    extra = sorted(set(body) - _FIELDS)
    if extra:
        raise ProtocolError(BAD_REQUEST, f"unknown field {extra[0]!r}", request_id)
    token = body.get("token")
    if not isinstance(token, str):
        raise ProtocolError(
            BAD_REQUEST, "field 'token' (a string) is required", request_id
        )
    cmd = body.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError(
            BAD_REQUEST, "field 'cmd' (a string) is required", request_id
        )
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError(BAD_REQUEST, "field 'args' must be an object", request_id)
    return Request(id=request_id, token=token, cmd=cmd, args=args)


def make_request(request_id: int | str, token: str, cmd: str, args: dict) -> bytes:
    """One request line, newline included."""
    return encode({"id": request_id, "token": token, "cmd": cmd, "args": args})


def ok(request_id: RequestId, result: dict[str, Any]) -> dict[str, Any]:
    return {"id": request_id, "ok": True, "result": result}


def error(request_id: RequestId, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def encode(message: dict[str, Any]) -> bytes:
    """A message as one JSON line (compact, UTF-8, newline-terminated)."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8") + b"\n"
