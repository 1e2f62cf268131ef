"""Fakes for the control socket tests: tokens, canned results, a fake service."""

from __future__ import annotations

import asyncio
from typing import Any

from tower.console.tokens import Role

VIEWER_TOKEN = "viewer-token-0123456789"
OPERATOR_TOKEN = "operator-token-0123456789"
MAINTENANCE_TOKEN = "maintenance-token-0123456789"

COMMANDS = {
    "status": Role.VIEWER,
    "slots": Role.VIEWER,
    "jobs": Role.VIEWER,
    "alarms": Role.VIEWER,
    "crash": Role.VIEWER,
    "slow": Role.VIEWER,
    "store": Role.OPERATOR,
    "retrieve": Role.OPERATOR,
    "cancel": Role.OPERATOR,
    "reset": Role.OPERATOR,
    "crash_op": Role.OPERATOR,
    "mode": Role.MAINTENANCE,
    "place": Role.MAINTENANCE,
    "remove": Role.MAINTENANCE,
    "unblock": Role.MAINTENANCE,
}

STATUS = {
    "site": "zoo",
    "towers": [
        {
            "id": "tower-a",
            "state": "auto",
            "capacity": 96,
            "occupied": 10,
            "free": 84,
            "free_ev": 5,
            "devices": {
                "lift": {"state": "idle", "online": True},
                "shuttle-0": {"state": "busy", "online": True},
                "bay-1": {"state": "fault", "online": False},
            },
            "alarms": [
                {"device": "bay-1", "code": "offline", "message": "no answer for 3 s"}
            ],
        }
    ],
}
SLOTS = {
    "tower": "tower-a",
    "slots": [
        {"slot": "01-01-L", "size": "standard", "charger": True, "state": "free"},
        {
            "slot": "01-01-R",
            "size": "standard",
            "charger": False,
            "state": "occupied",
            "ticket": "K7QX-M2PD-9RTW",
        },
        {"slot": "08-06-R", "size": "tall", "charger": False, "state": "blocked"},
    ],
}
JOBS = {
    "jobs": [
        {
            "job_id": "j-1a2b3c",
            "kind": "store",
            "tower": "tower-a",
            "ticket": "K7QX-M2PD-9RTW",
            "state": "running",
            "step": "lift move 3",
            "origin": "bay-1",
            "destination": "03-02-L",
            "age_s": 75.4,
        }
    ]
}
ALARMS = {
    "alarms": [
        {
            "tower": "tower-a",
            "device": "lift",
            "code": "estop",
            "message": "emergency stop pressed",
        }
    ]
}


class Refused(Exception):
    """What the core raises: a code and a message, duck-typed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FakeService:
    """Answers commands with canned results and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], Role]] = []
        self.audits: list[tuple[Role, str, dict[str, Any], str]] = []
        self.release = asyncio.Event()
        self.refuse: dict[str, Refused] = {}
        self.audit_fails = False

    async def dispatch(self, cmd: str, args: dict[str, Any], role: Role) -> dict:
        self.calls.append((cmd, args, role))
        if cmd in self.refuse:
            raise self.refuse[cmd]
        if cmd in ("crash", "crash_op"):
            raise RuntimeError("the core fell over")
        if cmd == "slow":
            await self.release.wait()
            return {"slow": "done"}
        results: dict[str, dict[str, Any]] = {
            "status": STATUS,
            "slots": SLOTS,
            "jobs": JOBS,
            "alarms": ALARMS,
            "store": {
                "job_id": "j-9f8e7d",
                "ticket": "H3TR-8WXY-2MNP",
                "tower": args.get("tower"),
                "bay": args.get("bay"),
            },
            "retrieve": {"job_id": "j-5a5a5a", "tower": "tower-a", "bay": "bay-2"},
            "cancel": {"cancelled": args.get("job_id")},
            "reset": {"reset": args.get("tower")},
            "mode": {"tower": args.get("tower"), "mode": args.get("mode")},
            "place": {"placed": args.get("place")},
            "remove": {"removed": True},
            "unblock": {"tower": args.get("tower"), "unblocked": args.get("slot")},
        }
        return results[cmd]

    async def audit(
        self, role: Role, cmd: str, args: dict[str, Any], outcome: str
    ) -> None:
        if self.audit_fails:
            raise OSError("journal gone")
        self.audits.append((role, cmd, args, outcome))
