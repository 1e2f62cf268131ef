"""`tower simctl`: play the visitors and the hardware of a running `tower sim`.

    tower simctl --control PATH arrive tower-a/bay-1 [--height-mm 1850]
    tower simctl --control PATH collect tower-a/bay-1
    tower simctl --control PATH status
    tower simctl --control PATH estop tower-a | release tower-a
    tower simctl --control PATH fault tower-a/lift drive_fault
    tower simctl --control PATH manual tower-a/shuttle-3 on|off
    tower simctl --control PATH handmove tower-a/lift 01-01-L | out

The control socket is the one given to `tower sim --control PATH` (default:
$TOWER_SIM_SOCKET). Each command prints the simulator's JSON answer; the exit
code is 0 when it says ok, 1 when it refuses, 2 when it cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from sim.control import sim_request


def _split(text: str) -> tuple[str, str]:
    tower, sep, name = text.partition("/")
    if not sep or not tower or not name:
        raise argparse.ArgumentTypeError(
            f"expected TOWER/NAME, e.g. tower-a/bay-1: {text!r}"
        )
    return tower, name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tower simctl", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--control", help="simulator control socket")
    sub = parser.add_subparsers(dest="cmd", required=True)
    arrive = sub.add_parser("arrive", help="a car drives into a bay")
    arrive.add_argument("bay", type=_split, help="TOWER/BAY")
    arrive.add_argument("--height-mm", type=int, help="car height (default 1500)")
    arrive.add_argument("--length-mm", type=int, help="car length (default 4500)")
    arrive.add_argument(
        "--driver-time-s", type=float, help="how long the driver stays in the bay"
    )
    collect = sub.add_parser("collect", help="a visitor drives a released car away")
    collect.add_argument("bay", type=_split, help="TOWER/BAY")
    sub.add_parser("status", help="bays, cars and devices of the plant")
    for name in ("estop", "release"):
        one = sub.add_parser(name, help=f"{name} the e-stop of a tower")
        one.add_argument("tower")
    fault = sub.add_parser("fault", help="fail a device's next command")
    fault.add_argument("device", type=_split, help="TOWER/DEVICE")
    fault.add_argument("fault", help="a fault name of the device's profile")
    manual = sub.add_parser("manual", help="switch a device to local manual")
    manual.add_argument("device", type=_split, help="TOWER/DEVICE")
    manual.add_argument("on", choices=["on", "off"])
    handmove = sub.add_parser(
        "handmove", help="a person moves a car by hand (maintenance, in manual)"
    )
    handmove.add_argument("source", type=_split, help="TOWER/PLACE the car is at")
    handmove.add_argument("to", help="the place it goes to, or 'out' of the tower")
    return parser


def _request(args: argparse.Namespace) -> dict[str, Any]:
    if args.cmd in ("arrive", "collect"):
        tower, bay = args.bay
        fields: dict[str, Any] = {"cmd": args.cmd, "tower": tower, "bay": bay}
        car = {
            key: value
            for key, value in (
                ("height_mm", getattr(args, "height_mm", None)),
                ("length_mm", getattr(args, "length_mm", None)),
                ("driver_time_s", getattr(args, "driver_time_s", None)),
            )
            if value is not None
        }
        if car:
            fields["car"] = car
        return fields
    if args.cmd in ("estop", "release"):
        return {"cmd": args.cmd, "tower": args.tower}
    if args.cmd == "fault":
        tower, device = args.device
        return {"cmd": "fault", "tower": tower, "device": device, "fault": args.fault}
    if args.cmd == "manual":
        tower, device = args.device
        return {
            "cmd": "manual",
            "tower": tower,
            "device": device,
            "on": args.on == "on",
        }
    if args.cmd == "handmove":
        tower, source = args.source
        to = None if args.to == "out" else args.to
        return {"cmd": "handmove", "tower": tower, "from": source, "to": to}
    return {"cmd": args.cmd}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    path = args.control or os.environ.get("TOWER_SIM_SOCKET")
    if not path:
        print(
            "tower simctl: give --control PATH or set TOWER_SIM_SOCKET", file=sys.stderr
        )
        return 2
    try:
        answer = asyncio.run(sim_request(path, **_request(args)))
    except OSError as err:
        print(
            f"tower simctl: cannot reach the simulator at {path}: {err}",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("ok") else 1
