"""`tower console`: the operator's terminal view, over the control socket.

It shows the towers (state, occupancy, devices, alarms) and the jobs, refreshed
every second, and takes the same commands as `tower ctl` on its command line:
`store tower-a/bay-1`, `retrieve TICKET`, `reset tower-a`, `mode tower-a manual`,
`cancel JOB`. It holds no state of its own: everything shown comes from the
controller, so two consoles always agree.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, Input, Static

from tower.console.client import ControlError, request

HELP = (
    "commands: store TOWER/BAY | retrieve TICKET [TOWER/BAY] | cancel JOB | "
    "reset TOWER | mode TOWER auto|manual"
)


def parse_command(line: str) -> tuple[str, dict[str, Any]]:
    """Turn a console line into a control request; ValueError names what is wrong."""
    words = shlex.split(line)
    if not words:
        raise ValueError("empty command")
    cmd, rest = words[0], words[1:]
    if cmd == "store" and len(rest) == 1:
        return "store", {"bay": rest[0]}
    if cmd == "retrieve" and len(rest) in (1, 2):
        args: dict[str, Any] = {"ticket": rest[0]}
        if len(rest) == 2:
            tower, _, bay = rest[1].partition("/")
            args.update(tower=tower, bay=bay)
        return "retrieve", args
    if cmd == "cancel" and len(rest) == 1:
        return "cancel", {"job_id": rest[0]}
    if cmd == "reset" and len(rest) == 1:
        return "reset", {"tower": rest[0]}
    if cmd == "mode" and len(rest) == 2:
        return "mode", {"tower": rest[0], "mode": rest[1]}
    raise ValueError(f"cannot read {line!r}; {HELP}")


class Console(App[None]):
    """The operator console."""

    TITLE = "Tower console"
    BINDINGS: ClassVar = [
        ("ctrl+q", "quit", "Quit"),
        ("ctrl+r", "refresh", "Refresh"),
    ]
    CSS = """
    #towers { height: auto; max-height: 12; }
    #jobs { height: 1fr; }
    #alarms { height: auto; max-height: 8; color: $warning; }
    #message { height: 1; }
    """

    def __init__(self, socket_path: str | Path, token: str, *, refresh_s: float = 1.0):
        super().__init__()
        self.socket_path = socket_path
        self.token = token
        self.refresh_s = refresh_s
        self.last_error: str | None = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        with Vertical():
            yield DataTable(id="towers", cursor_type="row")
            yield Static("", id="alarms")
            yield DataTable(id="jobs", cursor_type="row")
            yield Static(HELP, id="message")
            yield Input(placeholder="command (e.g. store tower-a/bay-1)", id="command")
        yield Footer()

    async def on_mount(self) -> None:
        towers = self.query_one("#towers", DataTable)
        towers.add_columns(
            "tower", "state", "occupied", "free", "free EV", "devices", "alarms"
        )
        jobs = self.query_one("#jobs", DataTable)
        jobs.add_columns("job", "kind", "tower", "state", "step", "from", "to", "age s")
        self.query_one("#command", Input).focus()
        await self.action_refresh()
        self.set_interval(self.refresh_s, self.action_refresh)

    async def _call(self, cmd: str, args: dict[str, Any] | None = None) -> dict | None:
        try:
            result = await request(self.socket_path, self.token, cmd, args or {})
        except ControlError as err:
            self.last_error = f"{err.code}: {err.message}"
            if err.code == "unauthorized":
                # A wrong token will not get better: leave, like `tower ctl` does.
                self.exit(return_code=1, message=f"tower console: {self.last_error}")
                return None
            self._say(f"[b red]{self.last_error}[/]")
            return None
        except OSError as err:
            self.last_error = f"no controller on {self.socket_path}: {err}"
            self._say(f"[b red]{self.last_error}[/]")
            return None
        return result

    def _say(self, text: str) -> None:
        self.query_one("#message", Static).update(text)

    async def action_refresh(self) -> None:
        status = await self._call("status")
        jobs = await self._call("jobs")
        if status is None or jobs is None:
            return
        self.sub_title = status.get("site", "")
        towers = self.query_one("#towers", DataTable)
        towers.clear()
        alarms: list[str] = []
        for tower in status.get("towers", []):
            devices = tower.get("devices", {})
            online = sum(1 for d in devices.values() if d.get("online"))
            towers.add_row(
                tower["id"],
                tower["state"],
                f"{tower['occupied']}/{tower['capacity']}",
                str(tower["free"]),
                str(tower["free_ev"]),
                f"{online}/{len(devices)} online",
                str(len(tower.get("alarms", []))),
            )
            alarms += [
                f"{tower['id']}/{a.get('device', '')}: {a.get('code')}: "
                f"{a.get('message', '')}"
                for a in tower.get("alarms", [])
            ]
        self.query_one("#alarms", Static).update("\n".join(alarms))
        table = self.query_one("#jobs", DataTable)
        table.clear()
        for job in jobs.get("jobs", []):
            table.add_row(
                job["job_id"],
                job["kind"],
                job["tower"],
                job["state"],
                str(job.get("step", "")),
                job.get("origin", ""),
                job.get("destination", ""),
                f"{job.get('age_s', 0):.0f}",
            )

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        line = event.value.strip()
        event.input.value = ""
        try:
            cmd, args = parse_command(line)
        except ValueError as err:
            self._say(f"[b red]{err}[/]")
            return
        result = await self._call(cmd, args)
        if result is not None:
            shown = ", ".join(f"{k}={v}" for k, v in result.items())
            self._say(f"[b green]{cmd} ok[/]: {shown}")
            await self.action_refresh()
