"""The simulator's control socket: visitors, e-stops and faults for a running sim.

A Unix domain socket speaking JSON lines, one request and one response per
line. This is the test and demo handle on the simulated plant, not the
operator's control socket (that one is the controller's, in tower.console): it
plays the people and the hardware, not the operators.

Requests (every one may carry an "id", echoed in the response):

- `{"cmd": "arrive", "tower": T, "bay": B, "car": {...}}`: a driver drives in;
  `car` is optional (fields of `sim.plant.Car`; an id is made up if missing).
  Answers `{"ok": true, "car": ID}`.
- `{"cmd": "collect", "tower": T, "bay": B}`: a visitor takes the car standing
  in the released bay. Answers `{"ok": true, "car": ID}`.
- `{"cmd": "status"}`: plant time, every bay's flags and car, the cars by
  place, every device's state and how many commands ran more than once.
- `{"cmd": "estop", "tower": T}` / `{"cmd": "release", "tower": T}`.
- `{"cmd": "fault", "tower": T, "device": D, "fault": NAME}`: the device's next
  command fails with that fault (a name of its profile's fault_code).
- `{"cmd": "manual", "tower": T, "device": D, "on": true}`.
- `{"cmd": "handmove", "tower": T, "from": PLACE, "to": PLACE}`: a person moves
  the car at one place (slot, bay, lift or shuttle) to another by hand, or out
  of the tower (`"to": null`), as maintenance does in manual. Answers
  `{"ok": true, "car": ID}`.

Errors answer `{"ok": false, "error": "..."}`; a malformed line gets an error
response and the connection stays up; nothing a client sends stops the sim.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sim.plant import Car, PlantError

if TYPE_CHECKING:
    from sim.server import SimServer

_log = structlog.get_logger("sim.control")

MAX_LINE_BYTES = 64 * 1024
"""Longest request line accepted; a longer one ends that connection."""

_CAR_FIELDS = {f.name for f in fields(Car)}


class RequestError(Exception):
    """Raised by a handler when a request cannot be carried out; its message
    goes back to the client."""


class ControlServer:
    """The running control socket of one simulator."""

    def __init__(self, path: Path, sim: SimServer) -> None:
        self.path = path
        self.sim = sim
        self._server: asyncio.Server | None = None
        self._arrivals = 0
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "arrive": self._arrive,
            "collect": self._collect,
            "status": self._status,
            "estop": self._estop,
            "release": self._release,
            "fault": self._fault,
            "manual": self._manual,
            "handmove": self._handmove,
        }

    async def start(self) -> None:
        """Listen on the socket path (a stale socket file there is replaced)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._connection, path=str(self.path), limit=MAX_LINE_BYTES
        )
        os.chmod(self.path, 0o600)
        _log.info("sim.control_started", path=str(self.path))

    async def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        _log.info("sim.control_stopped", path=str(self.path))

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await _send(writer, {"ok": False, "error": "request line too long"})
                    return
                if not line:
                    return
                if line.strip():
                    await _send(writer, self.handle_line(line))
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def handle_line(self, line: bytes | str) -> dict[str, Any]:
        """The response to one request line (never raises)."""
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            return {"ok": False, "error": f"not a JSON line: {exc}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request is a JSON object"}

        reply: dict[str, Any]
        cmd = request.get("cmd")
        handler = self._handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            reply = {"ok": False, "error": f"unknown cmd {cmd!r} (one of {known})"}
        else:
            try:
                self.sim.sync()
                reply = {"ok": True, **handler(request)}
            except (RequestError, PlantError) as exc:
                reply = {"ok": False, "error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - a request never stops the sim
                _log.exception("sim.control_failed", cmd=cmd)
                reply = {"ok": False, "error": f"internal error: {exc}"}
        if "id" in request:
            reply["id"] = request["id"]
        if reply["ok"] and cmd != "status":
            _log.info("sim.control", cmd=cmd, **_fields_of(request, reply))
        return reply

    # -- handlers --------------------------------------------------------------

    def _arrive(self, request: dict[str, Any]) -> dict[str, Any]:
        tower, bay = _text(request, "tower"), _text(request, "bay")
        spec = request.get("car") or {}
        if not isinstance(spec, dict):
            raise RequestError("car must be an object")
        unknown = set(spec) - _CAR_FIELDS
        if unknown:
            raise RequestError(f"car has no field {sorted(unknown)}")
        if "id" not in spec:
            self._arrivals += 1
            spec = {**spec, "id": f"sim-car-{self._arrivals}"}
        try:
            car = Car(**spec)
        except TypeError as exc:
            raise RequestError(f"bad car: {exc}") from None
        self.sim.plant.car_arrives(tower, bay, car)
        return {"car": car.id}

    def _collect(self, request: dict[str, Any]) -> dict[str, Any]:
        car = self.sim.plant.driver_collects(
            _text(request, "tower"), _text(request, "bay")
        )
        return {"car": car.id}

    def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        plant = self.sim.plant
        towers: dict[str, Any] = {}
        for tower in self.sim.site.towers:
            bays = {}
            for bay in tower.bays:
                status = plant.status(tower.id, bay.id)
                bays[bay.id] = {
                    "state": status["state"],
                    "flags": status["flags"],
                    "car": plant.car_in(tower.id, bay.id),
                }
            devices = {
                name: plant.status(tower.id, name)["state"]
                for name in tower.device_names()
            }
            cars = {
                place: car
                for car, (where_tower, place) in plant.cars().items()
                if where_tower == tower.id
            }
            towers[tower.id] = {
                "bays": bays,
                "devices": devices,
                "cars": dict(sorted(cars.items())),
            }
        repeated = {
            f"{t}/{d}/{seq}": n for (t, d, seq), n in plant.motions.items() if n > 1
        }
        return {
            "time_s": round(plant.now, 3),
            "towers": towers,
            "motions": sum(plant.motions.values()),
            "motions_repeated": repeated,
            "delivered": len(plant.delivered),
        }

    def _estop(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sim.plant.press_estop(_text(request, "tower"))
        return {}

    def _release(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sim.plant.release_estop(_text(request, "tower"))
        return {}

    def _fault(self, request: dict[str, Any]) -> dict[str, Any]:
        tower, device = _text(request, "tower"), _text(request, "device")
        fault = _text(request, "fault")
        profile = self.sim.profiles.get((tower, device))
        if profile is not None and fault not in profile.faults:
            known = ", ".join(sorted(profile.faults))
            raise RequestError(f"{device} has no fault {fault!r} (faults: {known})")
        self.sim.plant.inject_fault(tower, device, fault)
        return {}

    def _manual(self, request: dict[str, Any]) -> dict[str, Any]:
        on = request.get("on", True)
        if not isinstance(on, bool):
            raise RequestError("on must be true or false")
        self.sim.plant.set_manual(
            _text(request, "tower"), _text(request, "device"), on=on
        )
        return {}

    def _handmove(self, request: dict[str, Any]) -> dict[str, Any]:
        tower, source = _text(request, "tower"), _text(request, "from")
        to = request.get("to")
        if to is not None and (not isinstance(to, str) or not to):
            raise RequestError("to must be a place or null (out of the tower)")
        self.sim.sync()
        car = self.sim.plant.car_in(tower, source)
        if car is None:
            raise RequestError(f"no car at {tower}/{source}")
        self.sim.plant.move_by_hand(car, to)
        return {"car": car}


def _text(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value:
        raise RequestError(f"{name} is required (a string)")
    return value


def _fields_of(request: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
    keys = ("tower", "bay", "device", "fault", "on")
    found = {k: request[k] for k in keys if k in request}
    if "car" in reply:
        found["car"] = reply["car"]
    return found


async def _send(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
    writer.write(json.dumps(reply).encode() + b"\n")
    await writer.drain()


async def serve_control(path: str | Path, sim: SimServer) -> ControlServer:
    """Open the control socket of a running simulator at `path`."""
    control = ControlServer(Path(path), sim)
    await control.start()
    return control


async def sim_request(path: str | Path, **fields: Any) -> dict[str, Any]:
    """Send one request to a simulator's control socket; its response.

    `sim_request(path, cmd="arrive", tower="tower-a", bay="bay-1")`.
    """
    reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE_BYTES)
    try:
        writer.write(json.dumps(fields).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not line:
        raise ConnectionError(f"the simulator at {path} closed without answering")
    return json.loads(line)
