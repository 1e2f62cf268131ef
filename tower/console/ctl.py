"""`tower ctl`: one operator command on the control socket, for people and scripts.

    tower ctl [--socket PATH] [--token-file PATH] [--json] COMMAND ...

    status                          towers, devices, alarms
    slots [TOWER]                   every slot and what is in it
    jobs                            running and queued jobs
    store TOWER/BAY                 store the car standing in a bay; prints its ticket
    retrieve TICKET [--bay TOWER/BAY]
                                    bring a car back (to the nearest bay by default)
    cancel JOB_ID                   cancel a queued or held job (no command running)
    alarms                          active alarms
    mode TOWER auto|manual          hand a tower to the operator or back
    reset TOWER                     reset a tower after a fault
    place TICKET PLACE              maintenance, in manual: where a car moved by hand is
    remove TICKET                   maintenance, in manual: a car left the tower by hand
    unblock TOWER/SLOT              maintenance: return a blocked slot to service

The socket is `--socket`, else `$TOWER_SOCKET`, else /run/tower/control.sock.
The token comes from `--token-file` (else `$TOWER_TOKEN_FILE`), a file that
holds just the token: its first line that is neither blank nor a `#` comment.
Without a file, `$TOWER_TOKEN` holds the token itself. (The controller's own
tokens file, with `role token` lines, is a different file.)

Output is a readable table; `--json` prints the controller's result as JSON
instead (or `{"error": {"code", "message"}}` when it refuses). Exit status: 0
done, 1 refused by the controller, 2 usage error or no controller to ask.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from tower.console.client import ControlError, ControlUnavailable, request

DEFAULT_SOCKET = "/run/tower/control.sock"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Raised when the command line or the environment is not enough to ask."""


# -- arguments ----------------------------------------------------------------


def _tower_and(what: str, example: str) -> Callable[[str], tuple[str, str]]:
    """An argument type for `TOWER/<what>`, e.g. `tower-a/<example>`."""

    def parse(text: str) -> tuple[str, str]:
        tower, sep, rest = text.partition("/")
        if not sep or not tower or not rest or "/" in rest:
            raise argparse.ArgumentTypeError(
                f"expected TOWER/{what}, e.g. tower-a/{example}: {text!r}"
            )
        return tower, rest

    return parse


_tower_bay = _tower_and("BAY", "bay-1")
_tower_slot = _tower_and("SLOT", "03-02-L")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tower ctl",
        description="Send one operator command to the controller.",
        epilog="Exit status: 0 done, 1 refused, 2 usage error or no controller.",
    )
    parser.add_argument(
        "--socket", help=f"control socket (default: $TOWER_SOCKET or {DEFAULT_SOCKET})"
    )
    parser.add_argument(
        "--token-file",
        help="file holding just the token (default: $TOWER_TOKEN_FILE; "
        "without one, $TOWER_TOKEN holds the token)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the raw result as JSON"
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for an answer"
    )
    # `--json` also after the command, as scripts tend to write it.
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", parents=[late], help="towers, devices and alarms")
    slots = sub.add_parser(
        "slots", parents=[late], help="every slot of a tower (default all)"
    )
    slots.add_argument("tower", nargs="?", help="tower id, e.g. tower-a")
    sub.add_parser("jobs", parents=[late], help="running and queued jobs")
    store = sub.add_parser(
        "store", parents=[late], help="store the car standing in a bay"
    )
    store.add_argument("bay", type=_tower_bay, metavar="TOWER/BAY")
    retrieve = sub.add_parser(
        "retrieve", parents=[late], help="bring a car back by its ticket"
    )
    retrieve.add_argument("ticket")
    retrieve.add_argument(
        "--bay", type=_tower_bay, metavar="TOWER/BAY", help="bay to bring it to"
    )
    cancel = sub.add_parser("cancel", parents=[late], help="cancel a job")
    cancel.add_argument("job_id")
    sub.add_parser("alarms", parents=[late], help="active alarms")
    mode = sub.add_parser(
        "mode", parents=[late], help="switch a tower to auto or manual"
    )
    mode.add_argument("tower")
    mode.add_argument("mode", choices=["auto", "manual"])
    reset = sub.add_parser("reset", parents=[late], help="reset a tower after a fault")
    reset.add_argument("tower")
    place = sub.add_parser(
        "place",
        parents=[late],
        help="maintenance, in manual: say where you moved a car by hand",
    )
    place.add_argument("ticket")
    place.add_argument("place", help="slot (e.g. 03-02-L), bay or device of its tower")
    remove = sub.add_parser(
        "remove",
        parents=[late],
        help="maintenance, in manual: a car left the tower by hand (ticket closes)",
    )
    remove.add_argument("ticket")
    unblock = sub.add_parser(
        "unblock",
        parents=[late],
        help="maintenance: return a blocked slot to service once its sensor agrees",
    )
    unblock.add_argument("slot", type=_tower_slot, metavar="TOWER/SLOT")
    return parser


def _command(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The request a parsed command line stands for."""
    name = args.command
    if name == "slots":
        return name, {"tower": args.tower} if args.tower else {}
    if name == "store":
        tower, bay = args.bay
        return name, {"tower": tower, "bay": bay}
    if name == "retrieve":
        request_args: dict[str, Any] = {"ticket": args.ticket}
        if args.bay:
            request_args["tower"], request_args["bay"] = args.bay
        return name, request_args
    if name == "cancel":
        return name, {"job_id": args.job_id}
    if name == "mode":
        return name, {"tower": args.tower, "mode": args.mode}
    if name == "reset":
        return name, {"tower": args.tower}
    if name == "place":
        return name, {"ticket": args.ticket, "place": args.place}
    if name == "remove":
        return name, {"ticket": args.ticket}
    if name == "unblock":
        tower, slot = args.slot
        return name, {"tower": tower, "slot": slot}
    return name, {}


def read_token_file(path: str | os.PathLike[str]) -> tuple[str, list[str]]:
    """The token in a ctl token file, and warnings about the file."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"token file {path}: cannot read: {exc}") from None
    warnings = []
    if mode & stat.S_IROTH:
        warnings.append(f"token file {path} is readable by every user; chmod 0600")
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(line.split()) != 1:
            raise UsageError(
                f"token file {path}:{number}: holds just the token, one word "
                "(not the controller's 'role token' lines)"
            )
        return line, warnings
    raise UsageError(f"token file {path}: no token in it")


def _token(args: argparse.Namespace, env: dict[str, str], err: TextIO) -> str:
    path = args.token_file or env.get("TOWER_TOKEN_FILE")
    if path:
        token, warnings = read_token_file(path)
        for warning in warnings:
            print(f"tower ctl: warning: {warning}", file=err)
        return token
    token = env.get("TOWER_TOKEN", "").strip()
    if not token:
        raise UsageError("no token: give --token-file PATH or set TOWER_TOKEN")
    return token


# -- output ---------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart, a header line on top."""
    cells = [list(headers)] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in cells
    )


def _age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return _cell(seconds)
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _alarm_table(alarms: list[dict[str, Any]], tower: str | None = None) -> str:
    rows = [
        [
            alarm.get("tower", tower),
            alarm.get("device"),
            alarm.get("code"),
            alarm.get("message"),
        ]
        for alarm in alarms
    ]
    return table(["TOWER", "DEVICE", "CODE", "MESSAGE"], rows)


def format_status(result: dict[str, Any]) -> str:
    towers = result.get("towers", [])
    head = f"site {result.get('site', '?')}"
    feed = result.get("feed")
    if isinstance(feed, dict) and "connected" in feed:
        head += ", feed " + ("connected" if feed["connected"] else "NOT connected")
    summary = table(
        ["TOWER", "STATE", "CAPACITY", "OCCUPIED", "FREE", "FREE EV", "ALARMS"],
        [
            [
                t.get("id"),
                t.get("state"),
                t.get("capacity"),
                t.get("occupied"),
                t.get("free"),
                t.get("free_ev"),
                len(t.get("alarms", [])),
            ]
            for t in towers
        ],
    )
    parts = [f"{head}\n{summary}"]
    for tower in towers:
        devices = tower.get("devices", {})
        rows = [
            [name, device.get("state"), device.get("online")]
            for name, device in devices.items()
        ]
        parts.append(
            f"{tower.get('id')} devices\n" + table(["DEVICE", "STATE", "ONLINE"], rows)
        )
    alarms = [
        {"tower": tower.get("id"), **alarm}
        for tower in towers
        for alarm in tower.get("alarms", [])
    ]
    parts.append("alarms\n" + _alarm_table(alarms) if alarms else "no alarms")
    return "\n\n".join(parts)


def format_slots(result: dict[str, Any]) -> str:
    towers = result.get("towers")
    if towers is None:  # One tower: {"tower", "slots"}.
        towers = [result]
    parts = []
    for tower in towers:
        slots = tower.get("slots", [])
        counts: dict[str, int] = {}
        for slot in slots:
            counts[slot.get("state", "?")] = counts.get(slot.get("state", "?"), 0) + 1
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        rows = [
            [
                s.get("slot"),
                s.get("size"),
                s.get("charger"),
                s.get("state"),
                s.get("ticket"),
            ]
            for s in slots
        ]
        parts.append(
            f"{tower.get('tower')}: {len(slots)} slots ({summary or 'none'})\n"
            + table(["SLOT", "SIZE", "CHARGER", "STATE", "TICKET"], rows)
        )
    return "\n\n".join(parts) if parts else "no slots"


def format_jobs(result: dict[str, Any]) -> str:
    jobs = result.get("jobs", [])
    if not jobs:
        return "no jobs"
    rows = [
        [
            j.get("job_id"),
            j.get("kind"),
            j.get("tower"),
            j.get("ticket"),
            j.get("state"),
            j.get("step"),
            j.get("origin"),
            j.get("destination"),
            _age(j.get("age_s")),
        ]
        for j in jobs
    ]
    headers = ["JOB", "KIND", "TOWER", "TICKET", "STATE", "STEP", "FROM", "TO", "AGE"]
    return table(headers, rows)


def format_store(result: dict[str, Any]) -> str:
    where = ""
    if result.get("tower") and result.get("bay"):
        where = f" from {result['tower']}/{result['bay']}"
    return (
        f"job {result.get('job_id')} stores the car{where}\n"
        f"ticket {result.get('ticket')}  (give it to the driver)"
    )


def format_retrieve(result: dict[str, Any]) -> str:
    tower, bay = result.get("tower"), result.get("bay")
    where = f"{tower}/{bay}" if tower and bay else (tower or "the next free bay")
    return f"job {result.get('job_id')} brings the car to {where}"


def format_alarms(result: dict[str, Any]) -> str:
    alarms = result.get("alarms", [])
    return _alarm_table(alarms) if alarms else "no alarms"


def format_mode(result: dict[str, Any]) -> str:
    tower, mode = result.get("tower"), result.get("mode")
    if result.get("state") == "fault":
        return f"{tower} is in fault: it goes to {mode} mode once it is reset"
    return f"{tower} is now in {mode} mode"


def format_reset(result: dict[str, Any]) -> str:
    return f"{result.get('reset') or result.get('tower')} reset"


def format_cancel(result: dict[str, Any]) -> str:
    return f"job {result.get('cancelled') or result.get('job_id')} cancelled"


def format_place(result: dict[str, Any]) -> str:
    return f"the inventory has the car at {result.get('placed')} now"


def format_remove(result: dict[str, Any]) -> str:
    return "the car is out of custody; its ticket is closed"


def format_unblock(result: dict[str, Any]) -> str:
    return f"{result.get('tower')}/{result.get('unblocked')} is back in service"


def format_other(result: dict[str, Any]) -> str:
    return (
        "\n".join(f"{key}: {_cell(value)}" for key, value in result.items()) or "done"
    )


FORMATTERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "status": format_status,
    "slots": format_slots,
    "jobs": format_jobs,
    "store": format_store,
    "retrieve": format_retrieve,
    "alarms": format_alarms,
    "mode": format_mode,
    "reset": format_reset,
    "cancel": format_cancel,
    "place": format_place,
    "remove": format_remove,
    "unblock": format_unblock,
}


# -- main -------------------------------------------------------------------------


def main(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run one `tower ctl` command line; returns the exit status."""
    env = dict(os.environ) if env is None else env
    out = out or sys.stdout
    err = err or sys.stderr

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed the usage or the help.
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    socket_path = args.socket or env.get("TOWER_SOCKET") or DEFAULT_SOCKET
    try:
        token = _token(args, env, err)
    except UsageError as exc:
        print(f"tower ctl: {exc}", file=err)
        return EXIT_USAGE

    cmd, cmd_args = _command(args)
    try:
        result = asyncio.run(
            request(socket_path, token, cmd, cmd_args, timeout_s=args.timeout)
        )
    except ControlError as exc:
        if args.json:
            print(
                json.dumps({"error": {"code": exc.code, "message": exc.message}}),
                file=out,
            )
        else:
            print(f"tower ctl: refused: {exc.code}: {exc.message}", file=err)
        return EXIT_REFUSED
    except ControlUnavailable as exc:
        print(f"tower ctl: {exc}", file=err)
        return EXIT_USAGE

    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False), file=out)
    else:
        print(FORMATTERS.get(cmd, format_other)(result), file=out)
    return EXIT_OK
