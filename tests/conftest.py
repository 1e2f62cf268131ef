"""Fixtures shared by the whole suite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from broker import Mosquitto

# How long a test's tasks get to finish on their own after the test ends.
_TASK_GRACE_S = 0.5


@pytest.fixture(autouse=True)
async def _no_leftover_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    yield

    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    deadline = loop.time() + _TASK_GRACE_S
    while True:
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not left or loop.time() > deadline:
            break
        await asyncio.sleep(0.01)
    if not left:
        return

    names = sorted(t.get_name() for t in left)
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    pytest.fail(f"the test left asyncio tasks running: {names}")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of the test's own on a free loopback port, stopped after it."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Give every test structlog's defaults back.

    Commands run in-process (`tower chaos`, `tower bench`) configure logging for
    the process: a level filter and the stream they were given, which pytest
    closes after the test. Later tests must not log through either.
    """
    yield
    structlog.reset_defaults()
