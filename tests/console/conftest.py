"""A control server on a real Unix socket, with a fake service behind it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fakes import (
    COMMANDS,
    MAINTENANCE_TOKEN,
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    FakeService,
)

from tower.console.server import ControlServer
from tower.console.tokens import Role, TokenStore


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX paths stop at 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tokens() -> TokenStore:
    return TokenStore.from_pairs(
        [
            (Role.VIEWER, VIEWER_TOKEN),
            (Role.OPERATOR, OPERATOR_TOKEN),
            (Role.MAINTENANCE, MAINTENANCE_TOKEN),
        ]
    )


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
async def server(
    short_dir: Path, tokens: TokenStore, service: FakeService
) -> AsyncIterator[ControlServer]:
    server = ControlServer(
        short_dir / "control.sock",
        tokens,
        service.dispatch,
        commands=COMMANDS,
        audit=service.audit,
    )
    await server.start()
    yield server
    service.release.set()
    await server.close()
