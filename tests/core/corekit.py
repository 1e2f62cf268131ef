"""Helpers for the core tests: small sites and a scripted fake of PLC statuses."""

from __future__ import annotations

from typing import Any

from tower.config import BayConfig, Side, SiteConfig, TowerConfig, Zone
from tower.core import SiteCore
from tower.core.actions import Action, Alarm, Persist, SendCommand
from tower.core.events import DeviceStatus, Event

TOWER = "tower-a"


def small_site(
    *, levels: int = 2, columns: int = 2, zones: list[Zone] | None = None, **site: Any
) -> SiteConfig:
    """One tower with one bay at column 1, left, and the reference physics."""
    tower = TowerConfig(
        id=TOWER,
        levels=levels,
        columns=columns,
        bays=[BayConfig(id="bay-1", column=1, side=Side.LEFT)],
        zones=zones or [],
    )
    return SiteConfig(towers=[tower], **site)


def idle_status(device: str) -> dict[str, Any]:
    """A healthy idle status of a device that never ran a command."""
    points: dict[str, Any] = {
        "state": "idle",
        "seq_accepted": 0,
        "seq_done": 0,
        "result": "none",
        "fault_code": "none",
        "heartbeat": 0,
    }
    if device == "lift":
        points |= {"level": 0, "position_mm": 0}
        points["flags"] = {"loaded": False, "moving": False, "estop": False}
    elif device.startswith("shuttle-"):
        points |= {"column": 0, "position_mm": 0, "slot_sensors": [False] * 32}
        points["flags"] = {"loaded": False, "moving": False, "estop": False}
    else:
        points["flags"] = {
            "vehicle_present": False,
            "person_present": False,
            "door_closed": False,
            "estop": False,
        }
        points |= {
            "vehicle_length_mm": 0,
            "vehicle_width_mm": 0,
            "vehicle_height_mm": 0,
            "vehicle_weight_class": 0,
        }
    return points


class Scripted:
    """A core fed by hand-written statuses: the PLCs are whatever the test says."""

    def __init__(self, site: SiteConfig | None = None, **core: Any) -> None:
        self.site = site or small_site()
        core.setdefault("heartbeat_timeout_s", None)
        self.core = SiteCore(self.site, **core)
        self.now = 0.0
        self.points = {
            (t.id, d): idle_status(d)
            for t in self.site.towers
            for d in t.device_names()
        }

    def start(self) -> list[Action]:
        """Report every device once; the towers reconcile."""
        actions = []
        for tower, device in self.points:
            actions += self.report(device, tower=tower)
        return actions

    def report(
        self, device: str, *, tower: str = TOWER, **changes: Any
    ) -> list[Action]:
        """Change some points of a device (flags merge) and feed its status."""
        points = self.points[tower, device]
        flags = changes.pop("flags", None)
        points.update(changes)
        if flags:
            points["flags"] = {**points["flags"], **flags}
        status = {**points, "flags": dict(points["flags"])}
        return self.handle(DeviceStatus(tower, device, status))

    def handle(self, event: Event) -> list[Action]:
        return self.core.handle(event, self.now)

    def car_in_bay(self, *, height_mm: int = 1500, person: bool = False) -> None:
        """A car stands in bay-1 (door open); its driver maybe still inside."""
        self.report(
            "bay-1",
            flags={"vehicle_present": True, "person_present": person},
            vehicle_length_mm=4500,
            vehicle_width_mm=1800,
            vehicle_height_mm=height_mm,
            vehicle_weight_class=1,
        )

    def finish(self, command: SendCommand, **changes: Any) -> list[Action]:
        """The device reports the command accepted and done at once."""
        return self.report(
            command.device,
            seq_accepted=command.seq,
            seq_done=command.seq,
            result="done",
            **changes,
        )


def commands(actions: list[Action]) -> list[SendCommand]:
    return [a for a in actions if isinstance(a, SendCommand)]


def records(actions: list[Action]) -> list[Any]:
    return [a.record for a in actions if isinstance(a, Persist)]


def alarms(actions: list[Action]) -> list[Alarm]:
    return [a for a in actions if isinstance(a, Alarm)]
