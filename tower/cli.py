"""The `tower` command.

tower run --site FILE        the controller (for systemd and real PLCs)
tower sim --site FILE        the PLC simulator for a site, on loopback
tower demo                   simulator, controller, traffic and feed in one go
tower ctl COMMAND ...        one operator command on the control socket
tower profile check FILE...  validate PLC profiles
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

from tower import logs
from tower.tomlsource import ValidationProblems


class StartupError(Exception):
    """A command could not start: what is wrong, in one line."""


def _run(args: argparse.Namespace) -> int:
    from tower.config import load_site
    from tower.console.server import ControlSocketError
    from tower.console.tokens import TokenFileError
    from tower.core.restore import UnknownTowers
    from tower.feed.publisher import FeedUrlError
    from tower.service import Controller, SiteMismatch, mqtt_url_from, run_controller
    from tower.store.journal import JournalError

    site = load_site(args.site)
    password = None
    if site.mqtt.password_file:
        try:
            password = Path(site.mqtt.password_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise StartupError(f"mqtt.password_file: {err}") from None
    controller = Controller(
        site,
        mqtt_url=mqtt_url_from(site, args.mqtt),
        journal_path=args.journal or site.journal.path,
        socket_path=args.socket or site.control.socket,
        tokens_path=args.tokens or site.control.tokens_file,
        mqtt_password=password,
    )
    try:
        return asyncio.run(run_controller(controller))
    except* (
        JournalError,
        TokenFileError,
        ControlSocketError,
        FeedUrlError,
        SiteMismatch,
        UnknownTowers,
    ) as group:
        raise StartupError(group.exceptions[0]) from None


def _sim(args: argparse.Namespace) -> int:
    from sim.server import run_sim

    try:
        return asyncio.run(
            run_sim(args.site, speed=args.speed, control_path=args.control)
        )
    except OSError as err:
        raise StartupError(err) from None


def _demo(args: argparse.Namespace) -> int:
    from tower.demo import run_demo

    if not args.no_live and sys.stdout.isatty() and args.log_level == "info":
        # The live view owns the terminal; only warnings (a fallback broker,
        # an alarm) are worth printing over it.
        logs.configure("warning", json=args.log_json)

    return asyncio.run(
        run_demo(
            speed=args.speed,
            hours=args.hours,
            seed=args.seed,
            mqtt_url=args.mqtt,
            site_path=args.site,
            policy=args.policy,
            live=not args.no_live,
        )
    )


def _profile_check(args: argparse.Namespace) -> int:
    from tower.plc.profile import check_main

    return check_main(args.files)


def _console(args: argparse.Namespace) -> int:
    import os

    from tower.console.ctl import DEFAULT_SOCKET, UsageError, read_token_file
    from tower.console.tui import Console

    socket_path = args.socket or os.environ.get("TOWER_SOCKET") or DEFAULT_SOCKET
    try:
        path = args.token_file or os.environ.get("TOWER_TOKEN_FILE")
        token = read_token_file(path)[0] if path else os.environ.get("TOWER_TOKEN")
    except UsageError as err:
        print(f"tower console: {err}", file=sys.stderr)
        return 2
    if not token:
        print("tower console: no token: give --token-file or set TOWER_TOKEN")
        return 2
    app = Console(socket_path, token)
    app.run()
    return app.return_code or 0


def _ctl(argv: list[str]) -> int:
    from tower.console.ctl import main

    return main(argv)


_OWN_PARSERS = {
    "simctl": "sim.simctl:main",
    "bench": "tower.bench:main",
    "chaos": "tower.chaos:main",
}


def build_parser() -> argparse.ArgumentParser:
    from tower.core.policies import POLICIES

    parser = argparse.ArgumentParser(prog="tower", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="info", help="debug, info, warning")
    parser.add_argument(
        "--log-json", action="store_true", default=None, help="JSON log lines"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the controller")
    run.add_argument("--site", required=True, help="site file (TOML)")
    run.add_argument("--mqtt", help="broker URL (default: TOWER_MQTT_URL or site file)")
    run.add_argument("--journal", help="journal file (default: from the site file)")
    run.add_argument("--socket", help="control socket (default: from the site file)")
    run.add_argument("--tokens", help="operator tokens file (default: site file)")
    run.set_defaults(func=_run)

    sim = sub.add_parser("sim", help="run the PLC simulator for a site")
    sim.add_argument("--site", required=True, help="site file (TOML)")
    sim.add_argument("--speed", type=float, default=1.0, help="time factor")
    sim.add_argument("--control", help="path of the simulator's control socket")
    sim.set_defaults(func=_sim)

    demo = sub.add_parser("demo", help="simulator + controller + traffic + feed")
    demo.add_argument("--speed", type=float, default=10.0, help="time factor")
    demo.add_argument(
        "--hours", type=float, default=None, help="simulated hours, then a summary"
    )
    demo.add_argument("--seed", type=int, default=1, help="traffic seed")
    demo.add_argument("--mqtt", help="broker URL (default: TOWER_MQTT_URL or local)")
    demo.add_argument("--site", help="site file (default: the reference site)")
    demo.add_argument(
        "--policy",
        choices=list(POLICIES),
        help="allocation and sequencing policy (default: the site file's)",
    )
    demo.add_argument("--no-live", action="store_true", help="no live status view")
    demo.set_defaults(func=_demo)

    profile = sub.add_parser("profile", help="PLC profile tools")
    profile_sub = profile.add_subparsers(dest="profile_command", required=True)
    check = profile_sub.add_parser("check", help="validate profile files")
    check.add_argument("files", nargs="+", help="profile files (TOML)")
    check.set_defaults(func=_profile_check)

    console = sub.add_parser("console", help="the operator console (TUI)")
    console.add_argument("--socket", help="control socket (default: $TOWER_SOCKET)")
    console.add_argument("--token-file", help="file holding the operator token")
    console.set_defaults(func=_console)

    sub.add_parser("ctl", help="operator command (see: tower ctl --help)")
    sub.add_parser("simctl", help="visitors and faults for `tower sim` (see --help)")
    sub.add_parser("bench", help="the zoo-day benchmark (see: tower bench --help)")
    sub.add_parser("chaos", help="the crash test (see: tower chaos --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # These commands have their own parsers: hand them what follows the word.
    for word, target in _OWN_PARSERS.items():
        if word in argv:
            index = argv.index(word)
            if all(a.startswith("-") for a in argv[:index]):
                logs.configure("warning")
                module, _, name = target.partition(":")
                command = getattr(importlib.import_module(module), name)
                return command(argv[index + 1 :])
    if "ctl" in argv:
        index = argv.index("ctl")
        if all(a.startswith("-") for a in argv[:index]):
            logs.configure("warning")
            try:
                return _ctl(argv[index + 1 :])
            except BrokenPipeError:
                return 0  # `tower ctl slots | head`: the reader had enough
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, json=args.log_json)
    try:
        return args.func(args)
    except ValidationProblems as problems:
        for problem in problems.problems:
            print(problem, file=sys.stderr)
        return 2
    except StartupError as err:
        # A set-up problem (journal, tokens, socket, ports): one line, exit 2, so
        # systemd does not restart into the same wall (RestartPreventExitStatus=2).
        print(f"tower {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
