"""The control socket client."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from fakes import OPERATOR_TOKEN, Refused

from tower.console.client import ControlError, ControlUnavailable, request
from tower.console.server import ControlServer


async def test_error_answer_raises_control_error(
    server: ControlServer, service
) -> None:
    """A refusal comes back as ControlError with the code and the message."""
    service.refuse["store"] = Refused("bay_empty", "no car in bay-1")

    with pytest.raises(ControlError) as caught:
        await request(server.path, OPERATOR_TOKEN, "store", {"bay": "tower-a/bay-1"})

    assert (caught.value.code, caught.value.message) == ("bay_empty", "no car in bay-1")


async def test_missing_socket_is_unavailable(short_dir: Path) -> None:
    """No socket file: the error says so and asks whether the controller runs."""
    with pytest.raises(ControlUnavailable, match="no such file"):
        await request(short_dir / "none.sock", OPERATOR_TOKEN, "status")


async def test_socket_nobody_listens_on_is_unavailable(short_dir: Path) -> None:
    """A stale socket file: connection refused, said plainly."""
    path = short_dir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()

    with pytest.raises(ControlUnavailable, match="nobody is listening"):
        await request(path, OPERATOR_TOKEN, "status")


async def test_no_answer_in_time_is_unavailable(short_dir: Path) -> None:
    """A controller that never answers makes the client give up after timeout_s."""
    hold = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()
        writer.close()

    path = short_dir / "mute.sock"
    mute_server = await asyncio.start_unix_server(mute, path=path)

    with pytest.raises(ControlUnavailable, match=r"no answer within 0.2 s"):
        await request(path, OPERATOR_TOKEN, "status", timeout_s=0.2)
    hold.set()
    mute_server.close()
    await mute_server.wait_closed()


async def test_hang_up_without_answer_is_unavailable(short_dir: Path) -> None:
    """A controller that closes the connection without answering is reported."""

    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    path = short_dir / "rude.sock"
    rude_server = await asyncio.start_unix_server(rude, path=path)

    with pytest.raises(ControlUnavailable, match="without answering"):
        await request(path, OPERATOR_TOKEN, "status")
    rude_server.close()
    await rude_server.wait_closed()


def test_unavailable_is_an_os_error() -> None:
    """Callers that catch OSError for 'no controller' keep working."""
    assert issubclass(ControlUnavailable, OSError)
