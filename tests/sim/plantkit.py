"""Helpers for the simulator tests: a small site and a hand operator."""

from __future__ import annotations

from typing import Any

from sim.plant import Plant
from tower.config import BayConfig, PlcConfig, Side, SiteConfig, TowerConfig

TOWER = "tower-a"


def small_site(
    *, levels: int = 8, columns: int = 6, port_base: int = 15020, **site: Any
) -> SiteConfig:
    """One tower with the reference physics and the two reference bays."""
    tower = TowerConfig(
        id=TOWER,
        levels=levels,
        columns=columns,
        bays=[
            BayConfig(id="bay-1", column=1, side=Side.LEFT),
            BayConfig(id="bay-2", column=1, side=Side.RIGHT),
        ],
        plc=PlcConfig(port_base=port_base),
    )
    return SiteConfig(towers=[tower], **site)


class Operator:
    """Drives one plant through the handshake by hand, as the core would."""

    def __init__(self, plant: Plant, tower: str = TOWER) -> None:
        self.plant = plant
        self.tower = tower
        self.seq = 0

    def send(self, device: str, code: str, target: int = 0, side: str = "none") -> int:
        """Write one command (target, side and seq first, then the code)."""
        self.seq += 1
        points: dict[str, Any] = {"cmd_seq": self.seq}
        if device == "lift" or device.startswith("shuttle-"):
            points["cmd_target"] = target
        if device.startswith("shuttle-"):
            points["cmd_side"] = side
        self.plant.write(self.tower, device, points)
        self.plant.write(self.tower, device, {"cmd_code": code})
        return self.seq

    def wait(self, device: str, seq: int, limit_s: float = 1000.0) -> dict[str, Any]:
        """Advance event by event until the device reports seq done; its status."""
        deadline = self.plant.now + limit_s
        while True:
            status = self.plant.status(self.tower, device)
            if status["seq_done"] == seq:
                return status
            due = self.plant.next_event_time()
            if due is None or due > deadline:
                raise AssertionError(f"{device} never finished seq {seq}: {status}")
            self.plant.advance(due)

    def run(
        self, device: str, code: str, target: int = 0, side: str = "none"
    ) -> dict[str, Any]:
        """Send a command and wait for it; the final status."""
        return self.wait(device, self.send(device, code, target, side))

    def reset(self, device: str) -> None:
        self.plant.write(self.tower, device, {"reset": 1})
        self.plant.write(self.tower, device, {"reset": 0})
