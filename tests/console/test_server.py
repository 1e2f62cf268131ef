"""The control socket server, on real Unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import structlog
from fakes import (
    COMMANDS,
    MAINTENANCE_TOKEN,
    OPERATOR_TOKEN,
    STATUS,
    VIEWER_TOKEN,
    FakeService,
    Refused,
)

from tower.console import protocol as proto
from tower.console.client import request
from tower.console.server import ControlServer, ControlSocketError
from tower.console.tokens import Role, TokenStore


class Connection:
    """A raw client connection that speaks lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Connection:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes | dict[str, Any]) -> None:
        self.writer.write(proto.encode(data) if isinstance(data, dict) else data)
        await self.writer.drain()

    async def receive(self) -> dict[str, Any]:
        async with asyncio.timeout(5):
            line = await self.reader.readline()
        assert line.endswith(b"\n"), f"no answer, got {line!r}"
        return json.loads(line)

    async def ask(self, data: bytes | dict[str, Any]) -> dict[str, Any]:
        await self.send(data)
        return await self.receive()

    async def at_eof(self) -> bool:
        async with asyncio.timeout(5):
            return await self.reader.read() == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def req(cmd: str, token: str = VIEWER_TOKEN, request_id: Any = 1, **args: Any) -> dict:
    return {"id": request_id, "token": token, "cmd": cmd, "args": args}


async def test_status_is_answered_with_its_result(server: ControlServer) -> None:
    """A valid request gets ok and the dispatcher's result, with its id echoed."""
    conn = await Connection.open(server.path)

    answer = await conn.ask(req("status", request_id="abc"))
    await conn.close()

    assert answer == {"id": "abc", "ok": True, "result": STATUS}


async def test_requests_on_one_connection_are_answered_in_order(
    server: ControlServer,
) -> None:
    """Several request lines in one write get their answers in order."""
    conn = await Connection.open(server.path)

    await conn.send(b"".join(proto.encode(req("jobs", request_id=n)) for n in range(5)))
    answers = [await conn.receive() for _ in range(5)]
    await conn.close()

    assert [a["id"] for a in answers] == [0, 1, 2, 3, 4]
    assert all(a["ok"] for a in answers)


async def test_bad_json_is_answered_and_the_connection_stays_usable(
    server: ControlServer,
) -> None:
    """A line that is not JSON gets bad_json; the next line is served normally."""
    conn = await Connection.open(server.path)

    bad = await conn.ask(b"{this is not json\n")
    binary = await conn.ask(b"\xff\xfe\x00garbage\n")
    good = await conn.ask(req("status"))
    await conn.close()

    assert bad["id"] is None
    assert bad["error"]["code"] == binary["error"]["code"] == "bad_json"
    assert good["ok"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([1, 2, 3], "object"),
        ({"token": VIEWER_TOKEN, "cmd": "status"}, "'id'"),
        ({"id": True, "token": VIEWER_TOKEN, "cmd": "status"}, "'id'"),
        ({"id": 1, "cmd": "status"}, "'token'"),
        ({"id": 1, "token": 42, "cmd": "status"}, "'token'"),
        ({"id": 1, "token": VIEWER_TOKEN}, "'cmd'"),
        ({"id": 1, "token": VIEWER_TOKEN, "cmd": ""}, "'cmd'"),
        ({"id": 1, "token": VIEWER_TOKEN, "cmd": "status", "args": [1]}, "'args'"),
        ({"id": 1, "token": VIEWER_TOKEN, "cmd": "status", "user": "x"}, "'user'"),
    ],
)
async def test_bad_request_names_the_field(
    server: ControlServer, body: Any, field: str
) -> None:
    """A request with a missing or mistyped field is refused, naming the field."""
    conn = await Connection.open(server.path)

    answer = await conn.ask(json.dumps(body).encode() + b"\n")
    await conn.close()

    assert answer["ok"] is False
    assert answer["error"]["code"] == "bad_request"
    assert field in answer["error"]["message"]


async def test_args_may_be_left_out(
    server: ControlServer, service: FakeService
) -> None:
    """A request without args runs the command with empty args."""
    conn = await Connection.open(server.path)

    answer = await conn.ask({"id": 7, "token": VIEWER_TOKEN, "cmd": "jobs"})
    await conn.close()

    assert answer["ok"] is True
    assert service.calls == [("jobs", {}, Role.VIEWER)]


async def test_unknown_token_is_unauthorized_and_never_echoed(
    server: ControlServer, service: FakeService
) -> None:
    """A wrong token is refused; neither the answer nor the log repeats it."""
    secret = "guessed-token-5f4dcc3b5aa765d6"
    conn = await Connection.open(server.path)

    with structlog.testing.capture_logs() as logs:
        answer = await conn.ask(req("store", token=secret, bay="bay-1"))
        unknown = await conn.ask(req("no_such_command", token=secret))
    await conn.close()

    assert answer["error"]["code"] == unknown["error"]["code"] == "unauthorized"
    assert secret not in json.dumps([answer, unknown])
    assert secret not in repr(logs)
    assert service.calls == []


@pytest.mark.parametrize(
    ("token", "cmd", "needed"),
    [
        (VIEWER_TOKEN, "store", "operator"),
        (VIEWER_TOKEN, "mode", "maintenance"),
        (OPERATOR_TOKEN, "mode", "maintenance"),
    ],
)
async def test_role_too_low_is_forbidden(
    server: ControlServer, service: FakeService, token: str, cmd: str, needed: str
) -> None:
    """A known token whose role is too low is refused before the command runs."""
    conn = await Connection.open(server.path)

    answer = await conn.ask(req(cmd, token=token, tower="tower-a"))
    await conn.close()

    assert answer["error"]["code"] == "forbidden"
    assert f"needs the {needed} role" in answer["error"]["message"]
    assert service.calls == []


async def test_higher_roles_may_run_lower_commands(server: ControlServer) -> None:
    """Maintenance may do what an operator and a viewer may."""
    conn = await Connection.open(server.path)

    answers = [
        await conn.ask(req("status", token=MAINTENANCE_TOKEN)),
        await conn.ask(req("store", token=MAINTENANCE_TOKEN, tower="t", bay="b")),
        await conn.ask(req("mode", token=MAINTENANCE_TOKEN, tower="t", mode="auto")),
    ]
    await conn.close()

    assert [a["ok"] for a in answers] == [True, True, True]


async def test_unknown_command_is_refused(server: ControlServer) -> None:
    """A command the server does not know is unknown_command, listing the known."""
    conn = await Connection.open(server.path)

    answer = await conn.ask(req("launch"))
    await conn.close()

    assert answer["error"]["code"] == "unknown_command"
    assert "'launch'" in answer["error"]["message"]
    assert "status" in answer["error"]["message"]


async def test_refusal_from_dispatch_becomes_its_error(
    server: ControlServer, service: FakeService
) -> None:
    """An exception with code and message is answered with exactly those."""
    service.refuse["retrieve"] = Refused("unknown_ticket", "no car with that ticket")
    conn = await Connection.open(server.path)

    answer = await conn.ask(req("retrieve", token=OPERATOR_TOKEN, ticket="X"))
    await conn.close()

    assert answer == {
        "id": 1,
        "ok": False,
        "error": {"code": "unknown_ticket", "message": "no car with that ticket"},
    }


async def test_the_cores_request_refused_is_understood(
    server: ControlServer, service: FakeService
) -> None:
    """tower.core's RequestRefused becomes its own error code."""
    from tower.core import RequestRefused

    service.refuse["store"] = RequestRefused("bay_empty", "no car in bay-1")
    conn = await Connection.open(server.path)

    answer = await conn.ask(req("store", token=OPERATOR_TOKEN, bay="tower-a/bay-1"))
    await conn.close()

    assert answer["error"] == {"code": "bay_empty", "message": "no car in bay-1"}


async def test_dispatch_crash_is_internal_error_logged_once(
    server: ControlServer,
) -> None:
    """A failing command is answered internal_error and logged once; the server
    keeps serving."""
    conn = await Connection.open(server.path)

    with structlog.testing.capture_logs() as logs:
        crashed = await conn.ask(req("crash"))
    after = await conn.ask(req("status"))
    await conn.close()

    assert crashed["error"]["code"] == "internal_error"
    assert "fell over" not in crashed["error"]["message"]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "control.internal_error"
    ]
    assert after["ok"] is True


async def test_unserialisable_result_is_internal_error(
    short_dir: Path, tokens: TokenStore
) -> None:
    """A result that is not JSON is caught before it is sent."""

    async def dispatch(cmd: str, args: dict, role: Role) -> dict:
        return {"when": object()}

    server = ControlServer(
        short_dir / "c.sock", tokens, dispatch, commands={"status": Role.VIEWER}
    )
    await server.start()
    conn = await Connection.open(server.path)

    answer = await conn.ask(req("status"))
    await conn.close()
    await server.close()

    assert answer["error"]["code"] == "internal_error"


async def test_line_too_long_is_answered_then_the_connection_closed(
    server: ControlServer,
) -> None:
    """A line over 64 KiB gets line_too_long, then the server hangs up."""
    conn = await Connection.open(server.path)
    padding = "x" * proto.MAX_LINE_BYTES

    answer = await conn.ask(json.dumps(req("status", pad=padding)).encode() + b"\n")
    closed = await conn.at_eof()
    await conn.close()

    assert answer["error"]["code"] == "line_too_long"
    assert closed


async def test_endless_line_without_newline_is_cut_off(server: ControlServer) -> None:
    """A client streaming bytes with no newline is answered and hung up on."""
    conn = await Connection.open(server.path)

    await conn.send(b"a" * (proto.MAX_LINE_BYTES + 100))
    answer = await conn.receive()
    closed = await conn.at_eof()
    await conn.close()

    assert answer["error"]["code"] == "line_too_long"
    assert closed


async def test_line_of_exactly_the_limit_is_served(server: ControlServer) -> None:
    """A request of exactly 64 KiB (without its newline) is within the limit."""
    body = req("status", pad="")
    size = len(proto.encode(body)) - 1
    body["args"]["pad"] = "x" * (proto.MAX_LINE_BYTES - size)
    line = proto.encode(body)
    conn = await Connection.open(server.path)

    answer = await conn.ask(line)
    await conn.close()

    assert len(line) - 1 == proto.MAX_LINE_BYTES
    assert answer["ok"] is True


async def test_garbage_and_a_client_leaving_mid_line_do_not_hurt(
    server: ControlServer,
) -> None:
    """Random bytes and a hang-up in the middle of a line leave the server serving."""
    rude = await Connection.open(server.path)
    await rude.send(os.urandom(4096).replace(b"\n", b"") + b'{"id": 1, "tok')
    await rude.close()
    silent = await Connection.open(server.path)
    await silent.close()

    answer = await request(server.path, VIEWER_TOKEN, "status")

    assert answer == STATUS


async def test_a_slow_client_blocks_nobody(
    server: ControlServer, service: FakeService
) -> None:
    """A client stuck half-way through a line, and one whose command is slow, do
    not hold up anybody else."""
    stuck = await Connection.open(server.path)
    await stuck.send(b'{"id": 1, "token": ')
    waiting = await Connection.open(server.path)
    await waiting.send(req("slow"))

    async with asyncio.timeout(2):
        answer = await request(server.path, VIEWER_TOKEN, "status")
    service.release.set()
    slow = await waiting.receive()
    await stuck.close()
    await waiting.close()

    assert answer == STATUS
    assert slow["result"] == {"slow": "done"}


async def test_many_clients_are_served_at_once(server: ControlServer) -> None:
    """Fifty clients asking together all get their answers."""
    answers = await asyncio.gather(
        *(request(server.path, VIEWER_TOKEN, "status") for _ in range(50))
    )

    assert answers == [STATUS] * 50


async def test_audit_gets_every_accepted_mutating_command_only(
    server: ControlServer, service: FakeService
) -> None:
    """Operator and maintenance commands are audited with their outcome; reads,
    and commands refused at the gate, are not."""
    service.refuse["retrieve"] = Refused("unknown_ticket", "no such ticket")
    conn = await Connection.open(server.path)

    for body in [
        req("status", token=OPERATOR_TOKEN),
        req("store", token=OPERATOR_TOKEN, tower="tower-a", bay="bay-1"),
        req("retrieve", token=OPERATOR_TOKEN, ticket="NOPE"),
        req("crash_op", token=OPERATOR_TOKEN),
        req("mode", token=MAINTENANCE_TOKEN, tower="tower-a", mode="manual"),
        req("mode", token=OPERATOR_TOKEN, tower="tower-a", mode="auto"),  # forbidden
        req("store", token="wrong-token-0123456789", bay="x"),  # unauthorized
        req("jobs", token=MAINTENANCE_TOKEN),
    ]:
        await conn.ask(body)
    await conn.close()

    assert service.audits == [
        (Role.OPERATOR, "store", {"tower": "tower-a", "bay": "bay-1"}, "ok"),
        (Role.OPERATOR, "retrieve", {"ticket": "NOPE"}, "refused:unknown_ticket"),
        (Role.OPERATOR, "crash_op", {}, "error:internal_error"),
        (Role.MAINTENANCE, "mode", {"tower": "tower-a", "mode": "manual"}, "ok"),
    ]


async def test_a_failing_audit_still_answers_the_command(
    server: ControlServer, service: FakeService
) -> None:
    """The command ran: its answer is sent even when the audit write fails."""
    service.audit_fails = True

    with structlog.testing.capture_logs() as logs:
        result = await request(server.path, OPERATOR_TOKEN, "reset", {"tower": "t-a"})

    assert result == {"reset": "t-a"}
    assert "control.audit_failed" in [e["event"] for e in logs]


async def test_socket_file_has_mode_0660(server: ControlServer) -> None:
    """The socket is reachable by its owner and group only."""
    mode = os.stat(server.path).st_mode

    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


async def test_stale_socket_file_is_removed_at_start(
    short_dir: Path, tokens: TokenStore, service: FakeService
) -> None:
    """A socket file nobody listens on (a crash left it) is replaced."""
    path = short_dir / "control.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()
    server = ControlServer(path, tokens, service.dispatch, commands=COMMANDS)

    await server.start()
    answer = await request(path, VIEWER_TOKEN, "status")
    await server.close()

    assert answer == STATUS
    assert not path.exists()


async def test_live_socket_is_not_taken_over(
    server: ControlServer, tokens: TokenStore, service: FakeService
) -> None:
    """A second server on a path another one serves is refused; the first goes on."""
    second = ControlServer(server.path, tokens, service.dispatch, commands=COMMANDS)

    with pytest.raises(ControlSocketError, match="another process is serving it"):
        await second.start()
    answer = await request(server.path, VIEWER_TOKEN, "status")

    assert answer == STATUS


async def test_a_file_that_is_not_a_socket_is_left_alone(
    short_dir: Path, tokens: TokenStore, service: FakeService
) -> None:
    """A regular file at the socket path is neither removed nor replaced."""
    path = short_dir / "control.sock"
    path.write_text("keep me")
    server = ControlServer(path, tokens, service.dispatch, commands=COMMANDS)

    with pytest.raises(ControlSocketError, match="not a socket"):
        await server.start()

    assert path.read_text() == "keep me"


async def test_missing_directory_is_refused(
    short_dir: Path, tokens: TokenStore, service: FakeService
) -> None:
    """The socket's directory must exist; the error names it."""
    path = short_dir / "nowhere" / "control.sock"
    server = ControlServer(path, tokens, service.dispatch, commands=COMMANDS)

    with pytest.raises(ControlSocketError, match="does not exist"):
        await server.start()


async def test_close_hangs_up_idle_clients_and_removes_the_socket(
    short_dir: Path, tokens: TokenStore, service: FakeService
) -> None:
    """After close() connected clients see the end and the socket file is gone."""
    server = ControlServer(
        short_dir / "c.sock", tokens, service.dispatch, commands=COMMANDS
    )
    await server.start()
    idle = await Connection.open(server.path)
    await idle.ask(req("status"))

    await server.close()
    hung_up = await idle.at_eof()
    await idle.close()

    assert hung_up
    assert not server.path.exists()


async def test_close_lets_a_running_command_finish(
    short_dir: Path, tokens: TokenStore, service: FakeService
) -> None:
    """A command in flight when close() comes still gets its answer."""
    server = ControlServer(
        short_dir / "c.sock", tokens, service.dispatch, commands=COMMANDS
    )
    await server.start()
    conn = await Connection.open(server.path)
    await conn.send(req("slow"))
    await asyncio.sleep(0.1)

    closing = asyncio.create_task(server.close(), name="test.close")
    await asyncio.sleep(0.1)
    service.release.set()
    answer = await conn.receive()
    await closing
    await conn.close()

    assert answer["result"] == {"slow": "done"}
