"""The operator console (TUI) against a real controller on the simulated site."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Static

from sim.plant import Car
from sim.rig import Rig
from tower.config import load_site
from tower.console.tui import Console, parse_command
from tower.feed.fallback_broker import FallbackBroker

SITE = Path(__file__).resolve().parents[2] / "sim" / "sites" / "reference.toml"


def test_console_lines_become_control_requests():
    """A console line is read into the same request `tower ctl` would send."""
    assert parse_command("store tower-a/bay-1") == ("store", {"bay": "tower-a/bay-1"})
    assert parse_command("retrieve ABCD tower-b/bay-2") == (
        "retrieve",
        {"ticket": "ABCD", "tower": "tower-b", "bay": "bay-2"},
    )
    assert parse_command("mode tower-a manual") == (
        "mode",
        {"tower": "tower-a", "mode": "manual"},
    )


def test_a_console_line_it_cannot_read_names_the_commands():
    """An unknown or incomplete line is refused with the list of commands."""
    with pytest.raises(ValueError, match="commands: store"):
        parse_command("store")


async def _submit(pilot, app: Console, line: str) -> str:
    box = app.query_one("#command", Input)
    box.value = line
    await box.action_submit()
    await pilot.pause(0.3)
    return str(app.query_one("#message", Static).render())


async def test_console_shows_the_towers_and_stores_a_car():
    """The console lists both towers, refuses a bad line, and stores a car."""
    async with FallbackBroker() as broker:
        site = load_site(SITE)
        async with Rig(site, mqtt_url=broker.url, speed=20, poll_ms=20) as rig:
            app = Console(rig.socket_path, rig.token, refresh_s=0.2)
            async with app.run_test() as pilot:
                await pilot.pause(0.5)
                towers = app.query_one("#towers", DataTable)
                rows = [towers.get_row_at(i)[0] for i in range(towers.row_count)]

                refused = await _submit(pilot, app, "retrieve NO-SUCH-TICKET")
                rig.plant.car_arrives("tower-a", "bay-1", Car(id="c1", driver_time_s=1))
                await rig.wait_until(
                    lambda: rig.driver_gone("tower-a", "bay-1"), timeout_s=10
                )
                await pilot.pause(0.2)
                stored = await _submit(pilot, app, "store tower-a/bay-1")
                await pilot.pause(0.5)
                jobs = app.query_one("#jobs", DataTable).row_count

    assert rows == ["tower-a", "tower-b"]
    assert "unknown_ticket" in refused
    assert "store ok" in stored
    assert "ticket=" in stored
    assert jobs == 1
