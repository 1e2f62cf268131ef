"""The plant model: lifts, shuttles, bays, slots and cars, in virtual time.

Theory of operation
-------------------
The plant is a discrete-event model with no clock of its own. Time moves only
when the caller says so: `advance(t)` runs every event up to `t` (the end of a
motion, of a transfer or of a bay check, a driver walking out of a bay, a
heartbeat deadline) in time order, and `next_event_time()` says when the next
one falls, so a benchmark can jump from event to event without fixed steps.
Nothing here sleeps, reads a clock or opens a socket; the Modbus simulator
(`sim.server`), the property tests and the zoo-day benchmark all drive this
same model.

Each tower holds one PLC per device: the `lift`, the shuttles `shuttle-0`
(ground) to `shuttle-L`, and the bays by their id. A device speaks in the
logical points of `tower.plc.points`: `write()` takes command points,
`status()` returns every status point in decoded form (enum value names, flags
as `dict[str, bool]`, slot sensors as `list[bool]`).

A device's `state` follows from four facts, first match wins: e-stop latched
(`estop`), manual mode (`manual`), a fault not yet reset (`fault`), a command
running (`busy`), else `idle`.

The handshake (DESIGN.md section 4): writing a `cmd_code` other than `none`
latches the command when `cmd_seq` differs from `seq_accepted` and the device
is idle; anything else is not accepted and `seq_accepted` stays as it was.
A latched command either starts or is refused at once (`interlock`,
`bad_command`); either way it ends with `seq_done` set to its sequence and
`result` done or fault. Rewriting the same sequence never runs anything again;
`motions` counts every latch so a test can prove it.

Rules that always hold:

- a place (slot, lift, shuttle, bay) holds at most one car, and every car that
  drove in is in exactly one place until its driver takes it away;
- a car changes place only when a transfer completes; a transfer that is
  interrupted (e-stop, heartbeat lost, injected fault) leaves it where it was;
- the PLC owns safety: no transfer at a bay whose door is open or with a person
  inside, no pick from an empty place or onto a loaded shuttle, no place into an
  occupied one, no lift move while a shuttle transfers with the lift;
- a stopped motion leaves the device where it stopped, between levels or
  columns if need be; the next move starts from there.

Motion is a trapezoid: distance d at top speed v with acceleration a takes
d/v + v/a when d >= v*v/a (the device reaches top speed), else 2*sqrt(d/a).
Positions in between are exact on that profile.

A bay check closes the door at once and ends done after bay_check_s; it is
also how the controller closes an empty bay before a retrieved car goes in
(it then measures nothing). Dimensions read 0 until a check has ended done on
the car standing there, and again once the door opens (see the bay profile).

Deliberate simplifications: the PLC's own `heartbeat` counter is derived from
plant time (it ticks every 0.1 s) and is neither an event nor a change
reported by `changed()`; a bay release opens the door at once; the extra
status bits of the profiles (`in_position`, `combs_home`, `door_open`, ...)
follow from the state above rather than from a model of their own.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tower.config import SiteConfig, TowerConfig
from tower.plc.points import DeviceKind

HEARTBEAT_TICK_S = 0.1
"""The PLC's own heartbeat counter advances once per this much plant time."""

SLOT_SENSOR_BITS = 32
"""Length of a shuttle's `slot_sensors` list: 16 columns, two sides."""

# Fault codes the plant reports, by meaning. The profiles map each to a number.
FAULT_NONE = "none"
FAULT_HEARTBEAT_LOST = "heartbeat_lost"
FAULT_INTERLOCK = "interlock"
FAULT_BAD_COMMAND = "bad_command"
# The reference profiles name no fault for a command cut short by the e-stop or
# by the manual switch (the state says which); both count as a safety condition.
FAULT_ESTOP = FAULT_INTERLOCK
FAULT_MANUAL = FAULT_INTERLOCK

_POSITION_EPS_MM = 1e-6

_COMMAND_POINTS: dict[DeviceKind, tuple[str, ...]] = {
    DeviceKind.LIFT: ("cmd_target", "cmd_seq", "cmd_code", "heartbeat_ctl", "reset"),
    DeviceKind.SHUTTLE: (
        "cmd_target",
        "cmd_side",
        "cmd_seq",
        "cmd_code",
        "heartbeat_ctl",
        "reset",
    ),
    DeviceKind.BAY: ("cmd_seq", "cmd_code", "heartbeat_ctl", "reset"),
}

_CODES: dict[DeviceKind, frozenset[str]] = {
    DeviceKind.LIFT: frozenset({"move"}),
    DeviceKind.SHUTTLE: frozenset({"move", "pick", "place"}),
    DeviceKind.BAY: frozenset({"check", "release"}),
}


class PlantError(Exception):
    """Raised when the plant's API is misused: an unknown tower, device or point,
    a car driving into a bay that is not free, a visitor collecting from a bay
    with no car to collect. PLC-level refusals are never raised: they show in
    the device's status as a fault, as a real PLC would report them."""


@dataclass(frozen=True)
class Car:
    """A visitor's car, with what the bay's sensors measure of it."""

    id: str
    length_mm: int = 4500
    width_mm: int = 1800
    height_mm: int = 1500
    weight_class: int = 1
    driver_time_s: float = 60.0  # how long the driver stays in the bay


@dataclass(frozen=True)
class FaultRecord:
    """Why a command ended in a fault; the status shows only the code."""

    time: float
    tower: str
    device: str
    seq: int
    fault_code: str
    reason: str


def move_time_s(distance: float, speed: float, accel: float) -> float:
    """Duration of a trapezoidal move (any consistent units, e.g. m, m/s, m/s^2).

    The device accelerates at `accel`, cruises at `speed` if the distance lets it
    reach that speed, and brakes at `accel` to stop exactly at the target.
    """
    distance = abs(distance)
    if distance >= speed * speed / accel:
        return distance / speed + speed / accel
    return 2.0 * math.sqrt(distance / accel)


def move_progress(elapsed: float, distance: float, speed: float, accel: float) -> float:
    """Distance covered `elapsed` after the start of a trapezoidal move."""
    distance = abs(distance)
    total = move_time_s(distance, speed, accel)
    if elapsed <= 0.0:
        return 0.0
    if elapsed >= total:
        return distance
    if distance >= speed * speed / accel:
        ramp = speed / accel
        if elapsed < ramp:
            return 0.5 * accel * elapsed * elapsed
        if elapsed <= total - ramp:
            return 0.5 * speed * ramp + speed * (elapsed - ramp)
    elif elapsed < total / 2.0:
        return 0.5 * accel * elapsed * elapsed
    left = total - elapsed
    return distance - 0.5 * accel * left * left


def slot_id(level: int, column: int, side: str) -> str:
    """The name of a slot: level 3, column 2, left is '03-02-L'."""
    return f"{level:02d}-{column:02d}-{'L' if side == 'left' else 'R'}"


def _name(value: Any) -> Any:
    """An enum point as its value name; anything else unchanged."""
    return value.value if isinstance(value, Enum) else value


@dataclass
class _Op:
    """The command a device is running."""

    code: str
    seq: int
    start: float
    end: float
    origin_mm: float = 0.0  # moves: where the motion started
    target_mm: float = 0.0  # moves: where it stops
    source: str = ""  # transfers: the place the car leaves
    destination: str = ""  # transfers: the place it goes to
    locks: tuple[str, ...] = ()  # devices locked for the transfer
    fail_at: float | None = None  # an injected fault fires then
    fail_code: str = ""


@dataclass
class _Device:
    """One PLC of a tower and the machine it drives."""

    tower: str
    name: str
    kind: DeviceKind
    level: int  # a shuttle's level; 0 for the lift and the bays
    hb_timeout_s: float
    hb_changed_at: float
    seq_accepted: int = 0
    seq_done: int = 0
    result: str = "none"
    fault_code: str = FAULT_NONE
    faulted: bool = False
    estop: bool = False  # latched until released and reset
    manual: bool = False
    op: _Op | None = None
    position_mm: float = 0.0  # lift: height; shuttle: distance from the lift
    locked_by: str | None = None  # the shuttle transferring with this device
    injected: str | None = None  # fault that ends the next command
    commands: dict[str, Any] = field(default_factory=dict)
    # Bays only.
    column: int = 0
    side: str = ""
    door_closed: bool = False
    measured: bool = False  # a check ended done on the car standing there
    person_until: float | None = None  # when the person in the bay walks out
    collecting: str | None = None  # the car that leaves with that person
    booted_at: float = 0.0  # plant time of the PLC's last start (its heartbeat's zero)

    @property
    def state(self) -> str:
        if self.estop:
            return "estop"
        if self.manual:
            return "manual"
        if self.faulted:
            return "fault"
        if self.op is not None:
            return "busy"
        return "idle"


@dataclass
class _Tower:
    config: TowerConfig
    devices: dict[str, _Device]
    places: dict[str, str]  # place -> car id
    bay_at: dict[tuple[int, str], str]  # (column, side) -> bay id
    estop_pressed: bool = False


class Plant:
    """Every tower of a site, its devices and the cars in it, in virtual time.

    `heartbeat_timeout_s` is one figure for every device, or a mapping from
    `"tower/device"`, device name or device kind (`"lift"`, `"shuttle"`,
    `"bay"`) to seconds, looked up in that order (missing: 2.0 s). With
    `watch_heartbeat` false, heartbeat loss never stops a device.
    """

    def __init__(
        self,
        site: SiteConfig,
        *,
        now: float = 0.0,
        heartbeat_timeout_s: float | Mapping[str, float] = 2.0,
        watch_heartbeat: bool = True,
    ) -> None:
        self.site = site
        self.now = float(now)
        self.watch_heartbeat = watch_heartbeat
        self.motions: Counter[tuple[str, str, int]] = Counter()
        self.delivered: list[tuple[str, str, str, float]] = []
        self.faults: list[FaultRecord] = []
        self._cars: dict[str, Car] = {}
        self._where: dict[str, tuple[str, str]] = {}  # car id -> (tower, place)
        self._towers: dict[str, _Tower] = {}
        self._devices: list[_Device] = []
        self._dirty: set[tuple[str, str]] = set()
        self._changed_at = self.now
        for config in site.towers:
            self._towers[config.id] = self._build_tower(config, heartbeat_timeout_s)

    def _build_tower(
        self, config: TowerConfig, timeouts: float | Mapping[str, float]
    ) -> _Tower:
        devices: dict[str, _Device] = {}
        for name in config.device_names():
            if name == "lift":
                kind, level = DeviceKind.LIFT, 0
            elif name.startswith("shuttle-"):
                kind, level = DeviceKind.SHUTTLE, int(name.removeprefix("shuttle-"))
            else:
                kind, level = DeviceKind.BAY, 0
            device = _Device(
                tower=config.id,
                name=name,
                kind=kind,
                level=level,
                hb_timeout_s=_timeout_for(timeouts, config.id, name, kind),
                hb_changed_at=self.now,
                commands=dict.fromkeys(_COMMAND_POINTS[kind], 0),
            )
            device.commands["cmd_code"] = "none"
            if kind is DeviceKind.SHUTTLE:
                device.commands["cmd_side"] = "none"
            devices[name] = device
            self._devices.append(device)
        bay_at = {}
        for bay in config.bays:
            devices[bay.id].column = bay.column
            devices[bay.id].side = bay.side.value
            bay_at[(bay.column, bay.side.value)] = bay.id
        return _Tower(config=config, devices=devices, places={}, bay_at=bay_at)

    def set_heartbeat_timeouts(self, timeouts: float | Mapping[str, float]) -> None:
        """Change the watchdog of every device (same keys as the constructor).

        A command already running keeps its start as the watchdog's reference.
        """
        for d in self._devices:
            d.hb_timeout_s = _timeout_for(timeouts, d.tower, d.name, d.kind)

    # -- time -------------------------------------------------------------

    def advance(self, t: float) -> None:
        """Run the plant up to plant time `t`, event by event, in time order."""
        if t < self.now:
            raise PlantError(f"cannot go back in time from {self.now} to {t}")
        while True:
            due = self.next_event_time()
            if due is None or due > t:
                break
            self.now = max(self.now, due)
            self._run_due()
        self.now = float(t)

    def next_event_time(self) -> float | None:
        """When the plant next changes by itself, or None if it never will."""
        times = [t for d in self._devices if (t := self._device_due(d)) is not None]
        return min(times) if times else None

    def _device_due(self, device: _Device) -> float | None:
        due = device.person_until
        op = device.op
        if op is not None:
            end = op.end if op.fail_at is None else min(op.end, op.fail_at)
            due = end if due is None else min(due, end)
            deadline = self._heartbeat_deadline(device)
            if deadline is not None:
                due = min(due, deadline)
        return due

    def _heartbeat_deadline(self, device: _Device) -> float | None:
        if not self.watch_heartbeat or device.op is None:
            return None
        return max(device.hb_changed_at, device.op.start) + device.hb_timeout_s

    def _run_due(self) -> None:
        """Handle every event due at or before now, device by device."""
        for device in self._devices:
            if device.person_until is not None and device.person_until <= self.now:
                self._person_leaves(device)
            op = device.op
            if op is None:
                continue
            deadline = self._heartbeat_deadline(device)
            if op.fail_at is not None and op.fail_at <= self.now:
                self._stop(device, op.fail_code, "injected fault")
                continue
            if op.end <= self.now and (deadline is None or op.end <= deadline):
                self._complete(device)
            elif deadline is not None and deadline <= self.now:
                self._stop(
                    device,
                    FAULT_HEARTBEAT_LOST,
                    f"heartbeat_ctl unchanged for {device.hb_timeout_s} s",
                )

    # -- the PLC interface --------------------------------------------------

    def status(self, tower: str, device: str) -> dict[str, Any]:
        """Every status point of a device at plant time now, decoded."""
        d = self._device(tower, device)
        site_tower = self._towers[tower]
        common = {
            "state": d.state,
            "seq_accepted": d.seq_accepted,
            "seq_done": d.seq_done,
            "result": d.result,
            "fault_code": d.fault_code,
            "heartbeat": math.floor((self.now - d.booted_at) / HEARTBEAT_TICK_S + 1e-6)
            % 65536,
        }
        if d.kind is DeviceKind.BAY:
            car_id = site_tower.places.get(d.name)
            car = self._cars[car_id] if car_id else None
            size = car if car is not None and d.measured else None
            return {
                **common,
                "flags": {
                    "vehicle_present": car is not None,
                    "person_present": d.person_until is not None,
                    "door_closed": d.door_closed,
                    "estop": site_tower.estop_pressed,
                    "door_open": not d.door_closed,
                    "vehicle_in_position": car is not None,
                },
                "vehicle_length_mm": size.length_mm if size else 0,
                "vehicle_width_mm": size.width_mm if size else 0,
                "vehicle_height_mm": size.height_mm if size else 0,
                "vehicle_weight_class": size.weight_class if size else 0,
            }

        position = self._position(d)
        running = d.op.code if d.op is not None else None
        flags = {
            "loaded": d.name in site_tower.places,
            # A shuttle's flag covers its comb conveyor too (see the profiles).
            "moving": running == "move"
            or (running is not None and d.kind is DeviceKind.SHUTTLE),
            "estop": site_tower.estop_pressed,
        }
        physics = site_tower.config.physics
        if d.kind is DeviceKind.LIFT:
            step = physics.level_height_m * 1000.0
            top = site_tower.config.levels
            level = min(max(round(position / step), 0), top)
            flags["in_position"] = abs(position - level * step) <= 5.0
            flags["brake_open"] = running == "move"
            flags["door_locked"] = True
            return {
                **common,
                "level": level,
                "position_mm": round(position),
                "flags": flags,
            }
        step = physics.column_pitch_m * 1000.0
        sensors = [False] * SLOT_SENSOR_BITS
        if d.level >= 1:
            for column in range(1, site_tower.config.columns + 1):
                for index, side in enumerate(("left", "right")):
                    if slot_id(d.level, column, side) in site_tower.places:
                        sensors[(column - 1) * 2 + index] = True
        column = min(max(round(position / step), 0), site_tower.config.columns)
        flags["in_position"] = running != "move" and abs(position - column * step) <= 5
        flags["combs_home"] = flags["gripper_home"] = running in (None, "move")
        return {
            **common,
            "column": column,
            "position_mm": round(position),
            "flags": flags,
            "slot_sensors": sensors,
        }

    def commands(self, tower: str, device: str) -> dict[str, Any]:
        """The command points as last written (what a read of them returns)."""
        return dict(self._device(tower, device).commands)

    def write(self, tower: str, device: str, points: Mapping[str, Any]) -> None:
        """Apply command points written by the controller, in one request.

        Target, side and sequence are stored first, then the heartbeat, then a
        reset, then the command code, so one write may carry a whole command.
        Only a written `cmd_code` can latch a command.
        """
        d = self._device(tower, device)
        unknown = set(points) - set(_COMMAND_POINTS[d.kind])
        if unknown:
            raise PlantError(
                f"{tower}/{device}: no command point {sorted(unknown)}; "
                f"a {d.kind.value} takes {list(_COMMAND_POINTS[d.kind])}"
            )

        for name in ("cmd_target", "cmd_side", "cmd_seq"):
            if name in points:
                d.commands[name] = _name(points[name])
        if "heartbeat_ctl" in points:
            value = points["heartbeat_ctl"]
            if value != d.commands["heartbeat_ctl"]:
                d.commands["heartbeat_ctl"] = value
                d.hb_changed_at = self.now
        if "reset" in points:
            value = _name(points["reset"])
            if value in (1, True):
                self._reset(d)
            # The PLC clears the reset point itself once it has acted on it.
            d.commands["reset"] = False if isinstance(value, bool) else 0
        if "cmd_code" in points:
            d.commands["cmd_code"] = _name(points["cmd_code"])
            self._latch(d)

        self._run_due()

    def changed(self) -> set[tuple[str, str]]:
        """Devices whose status changed since the last call, as (tower, device).

        A device that moved in between counts as changed; the PLC's own
        heartbeat counter does not.
        """
        changed = self._dirty
        self._dirty = set()
        if self.now != self._changed_at:
            for d in self._devices:
                if d.op is not None and d.op.code == "move":
                    changed.add((d.tower, d.name))
        self._changed_at = self.now
        return changed

    # -- the people ------------------------------------------------------------

    def car_arrives(self, tower: str, bay: str, car: Car) -> None:
        """A driver drives `car` into an open, empty bay and stays inside for
        `car.driver_time_s`; the door stays open."""
        d = self._bay(tower, bay)
        places = self._towers[tower].places
        if car.id in self._cars:
            raise PlantError(f"car {car.id} is already in the plant")
        if bay in places:
            raise PlantError(f"{tower}/{bay} already holds car {places[bay]}")
        if d.door_closed:
            raise PlantError(f"{tower}/{bay} door is closed")
        if d.person_until is not None:
            raise PlantError(f"{tower}/{bay} has a person inside")

        self._cars[car.id] = car
        self._put(tower, bay, car.id)
        d.person_until = self.now + car.driver_time_s
        self._mark(d)
        self._run_due()

    def driver_collects(
        self, tower: str, bay: str, driver_time_s: float | None = None
    ) -> Car:
        """A visitor walks into an open bay to the car standing there and drives
        off after `driver_time_s` (default the car's own); returns the car."""
        d = self._bay(tower, bay)
        car_id = self._towers[tower].places.get(bay)
        if car_id is None:
            raise PlantError(f"{tower}/{bay} holds no car to collect")
        if d.door_closed:
            raise PlantError(f"{tower}/{bay} door is closed")
        if d.person_until is not None:
            raise PlantError(f"{tower}/{bay} has a person inside")

        car = self._cars[car_id]
        stay_s = car.driver_time_s if driver_time_s is None else driver_time_s
        d.person_until = self.now + stay_s
        d.collecting = car_id
        self._mark(d)
        self._run_due()
        return car

    def _person_leaves(self, bay: _Device) -> None:
        bay.person_until = None
        if bay.collecting is not None:
            car_id, bay.collecting = bay.collecting, None
            self._remove(bay.tower, bay.name, car_id)
            del self._cars[car_id]
            self.delivered.append((car_id, bay.tower, bay.name, self.now))
        self._mark(bay)

    # -- inventory -----------------------------------------------------------

    def where(self, car_id: str) -> str | None:
        """The place of a car (slot id, 'lift', 'shuttle-3', 'bay-1'), or None
        once it has left (or never came)."""
        found = self._where.get(car_id)
        return found[1] if found else None

    def locate(self, car_id: str) -> tuple[str, str] | None:
        """The tower and place of a car, or None."""
        return self._where.get(car_id)

    def car_in(self, tower: str, place: str) -> str | None:
        """The car at a place of a tower (slot id, device or bay), or None."""
        return self._tower(tower).places.get(place)

    def slot_contents(self, tower: str) -> dict[str, str]:
        """Slot id -> car id for every occupied slot of a tower."""
        places = self._tower(tower).places
        return {p: c for p, c in places.items() if p[0].isdigit()}

    def cars(self) -> dict[str, tuple[str, str]]:
        """Every car in the plant: car id -> (tower, place)."""
        return dict(self._where)

    def seed_car(self, tower: str, place: str, car: Car) -> None:
        """Put a car straight into a slot (or onto a device) at the start of a
        test or benchmark, as if it had been stored earlier."""
        site_tower = self._tower(tower)
        if car.id in self._cars:
            raise PlantError(f"car {car.id} is already in the plant")
        if place in site_tower.places:
            holder = site_tower.places[place]
            raise PlantError(f"{tower}/{place} already holds {holder}")
        if place not in self._all_places(site_tower):
            raise PlantError(f"{tower} has no place {place!r}")
        self._cars[car.id] = car
        self._put(tower, place, car.id)
        if place in site_tower.devices:
            self._mark(site_tower.devices[place])
        self._mark_level(site_tower, place)

    def move_by_hand(self, car_id: str, place: str | None) -> None:
        """A person moves a car to another place of its tower (None: out of
        the tower altogether), as maintenance does in manual mode. The
        plant's own devices must not be running a command on it."""
        found = self._where.get(car_id)
        if found is None:
            raise PlantError(f"car {car_id} is not in the plant")
        tower, old = found
        site_tower = self._tower(tower)
        busy = [d.name for d in site_tower.devices.values() if d.op is not None]
        if busy:
            raise PlantError(f"{', '.join(busy)} still moving: stop it first")
        if place is not None:
            if place in site_tower.places:
                holder = site_tower.places[place]
                raise PlantError(f"{tower}/{place} already holds {holder}")
            if place not in self._all_places(site_tower):
                raise PlantError(f"{tower} has no place {place!r}")
        self._remove(tower, old, car_id)
        if place is None:
            del self._cars[car_id]
        else:
            self._put(tower, place, car_id)
        for at in (old, place):
            if at is None:
                continue
            if at in site_tower.devices:
                self._mark(site_tower.devices[at])
            self._mark_level(site_tower, at)

    def reboot(self, tower: str, device: str) -> None:
        """Power-cycle one PLC: a running motion stops where it is (a transfer
        leaves its car where it was), and the PLC comes back with its
        handshake and heartbeat counting from zero and no command written.
        The machine and the cars on it stay as they are."""
        d = self._device(tower, device)
        op = d.op
        if op is not None:
            if op.code == "move":
                d.position_mm = self._position(d)
            for name in op.locks:
                self._towers[tower].devices[name].locked_by = None
            d.op = None
        d.seq_accepted = d.seq_done = 0
        d.result, d.fault_code, d.faulted = "none", FAULT_NONE, False
        d.injected = None
        d.commands = dict.fromkeys(_COMMAND_POINTS[d.kind], 0)
        d.commands["cmd_code"] = "none"
        if d.kind is DeviceKind.SHUTTLE:
            d.commands["cmd_side"] = "none"
        d.booted_at = d.hb_changed_at = self.now
        self._mark(d)

    # -- operator and test controls --------------------------------------------

    def press_estop(self, tower: str) -> None:
        """Press the tower's e-stop: every device stops and latches `estop`."""
        site_tower = self._tower(tower)
        site_tower.estop_pressed = True
        for d in site_tower.devices.values():
            if d.op is not None:
                self._stop(d, FAULT_ESTOP, "e-stop pressed")
            d.estop = True
            self._mark(d)

    def release_estop(self, tower: str) -> None:
        """Release the e-stop button; each device stays in `estop` until reset."""
        site_tower = self._tower(tower)
        site_tower.estop_pressed = False
        for d in site_tower.devices.values():
            self._mark(d)

    def set_manual(self, tower: str, device: str, on: bool) -> None:
        """Switch a device to local manual control (or back). A command running
        when manual is switched on stops with fault `manual`."""
        d = self._device(tower, device)
        if on and d.op is not None:
            self._stop(d, FAULT_MANUAL, "switched to manual")
        d.manual = on
        self._mark(d)

    def inject_fault(self, tower: str, device: str, fault_name: str) -> None:
        """Make the next command the device starts fail with `fault_name`,
        halfway through (a motion stops halfway, a transfer leaves the car)."""
        d = self._device(tower, device)
        if not fault_name or fault_name == FAULT_NONE:
            raise PlantError("inject a fault name other than 'none'")
        d.injected = fault_name

    # -- the handshake -------------------------------------------------------

    def _latch(self, d: _Device) -> None:
        code = d.commands["cmd_code"]
        seq = d.commands["cmd_seq"]
        if code in ("none", 0) or seq == d.seq_accepted or d.state != "idle":
            return

        d.seq_accepted = seq
        self.motions[(d.tower, d.name, seq)] += 1
        self._mark(d)
        if code not in _CODES[d.kind]:
            self._refuse(d, seq, FAULT_BAD_COMMAND, f"unknown command {code!r}")
            return
        starter = {
            DeviceKind.LIFT: self._start_lift,
            DeviceKind.SHUTTLE: self._start_shuttle,
            DeviceKind.BAY: self._start_bay,
        }[d.kind]
        refusal = starter(d, code, seq)
        if refusal is not None:
            self._refuse(d, seq, *refusal)
            return

        op = d.op
        if op is not None and d.injected is not None:
            op.fail_at = op.start + (op.end - op.start) / 2.0
            op.fail_code, d.injected = d.injected, None

    def _start_lift(self, d: _Device, code: str, seq: int) -> tuple[str, str] | None:
        config = self._towers[d.tower].config
        target = d.commands["cmd_target"]
        if not _is_int(target) or not 0 <= target <= config.levels:
            return FAULT_BAD_COMMAND, f"level {target!r} outside 0..{config.levels}"
        if d.locked_by is not None:
            return FAULT_INTERLOCK, f"{d.locked_by} is transferring with the lift"
        physics = config.physics
        self._start_move(
            d,
            seq,
            target * physics.level_height_m * 1000.0,
            physics.lift_speed_m_s * 1000.0,
            physics.lift_accel_m_s2 * 1000.0,
        )
        return None

    def _start_shuttle(self, d: _Device, code: str, seq: int) -> tuple[str, str] | None:
        site_tower = self._towers[d.tower]
        config = site_tower.config
        physics = config.physics
        pitch_mm = physics.column_pitch_m * 1000.0
        if code == "move":
            target = d.commands["cmd_target"]
            if not _is_int(target) or not 0 <= target <= config.columns:
                reason = f"column {target!r} outside 0..{config.columns}"
                return FAULT_BAD_COMMAND, reason
            self._start_move(
                d,
                seq,
                target * pitch_mm,
                physics.shuttle_speed_m_s * 1000.0,
                physics.shuttle_accel_m_s2 * 1000.0,
            )
            return None

        side = d.commands["cmd_side"]
        if side not in ("left", "right", "lift"):
            return FAULT_BAD_COMMAND, f"{code} needs a side, got {side!r}"
        column = round(d.position_mm / pitch_mm)
        if abs(d.position_mm - column * pitch_mm) > _POSITION_EPS_MM:
            return FAULT_INTERLOCK, f"stopped between columns at {d.position_mm:.0f} mm"
        locks: tuple[str, ...] = ()
        if side == "lift":
            if column != 0:
                return FAULT_BAD_COMMAND, f"the lift is at column 0, not {column}"
            lift = site_tower.devices["lift"]
            level_mm = d.level * physics.level_height_m * 1000.0
            if lift.state != "idle":
                return FAULT_INTERLOCK, f"lift is {lift.state}"
            if abs(lift.position_mm - level_mm) > _POSITION_EPS_MM:
                return FAULT_INTERLOCK, f"lift is not at level {d.level}"
            other = "lift"
            locks = ("lift",)
        elif column == 0:
            return FAULT_BAD_COMMAND, f"no {side} slot or bay at column 0"
        elif d.level == 0:
            bay_id = site_tower.bay_at.get((column, side))
            if bay_id is None:
                return FAULT_BAD_COMMAND, f"no bay at column {column} {side}"
            bay = site_tower.devices[bay_id]
            if not bay.door_closed:
                return FAULT_INTERLOCK, f"{bay_id} door is open"
            if bay.person_until is not None:
                return FAULT_INTERLOCK, f"a person is in {bay_id}"
            if bay.state != "idle":
                return FAULT_INTERLOCK, f"{bay_id} is {bay.state}"
            other = bay_id
            locks = (bay_id,)
        elif column > config.columns:
            return FAULT_BAD_COMMAND, f"no slot at column {column}"
        else:
            other = slot_id(d.level, column, side)

        places = site_tower.places
        if code == "pick":
            if d.name in places:
                return FAULT_INTERLOCK, f"shuttle already carries {places[d.name]}"
            if other not in places:
                return FAULT_INTERLOCK, f"no car at {other}"
            source, destination = other, d.name
        else:
            if d.name not in places:
                return FAULT_INTERLOCK, "shuttle carries no car"
            if other in places:
                return FAULT_INTERLOCK, f"{other} already holds {places[other]}"
            source, destination = d.name, other

        d.op = _Op(
            code=code,
            seq=seq,
            start=self.now,
            end=self.now + physics.transfer_s,
            source=source,
            destination=destination,
            locks=locks,
        )
        for name in locks:
            site_tower.devices[name].locked_by = d.name
        return None

    def _start_bay(self, d: _Device, code: str, seq: int) -> tuple[str, str] | None:
        if d.locked_by is not None:
            return FAULT_INTERLOCK, f"{d.locked_by} is transferring at the bay"
        physics = self._towers[d.tower].config.physics
        if code == "check":
            if d.person_until is not None:
                return FAULT_INTERLOCK, "a person is in the bay"
            d.door_closed = True
            end = self.now + physics.bay_check_s
            d.op = _Op(code=code, seq=seq, start=self.now, end=end)
            return None
        d.door_closed = d.measured = False
        d.op = _Op(code=code, seq=seq, start=self.now, end=self.now)
        return None

    def _start_move(
        self, d: _Device, seq: int, target_mm: float, speed: float, accel: float
    ) -> None:
        duration = move_time_s(target_mm - d.position_mm, speed, accel)
        d.op = _Op(
            code="move",
            seq=seq,
            start=self.now,
            end=self.now + duration,
            origin_mm=d.position_mm,
            target_mm=target_mm,
        )

    def _position(self, d: _Device) -> float:
        op = d.op
        if op is None or op.code != "move":
            return d.position_mm
        physics = self._towers[d.tower].config.physics
        if d.kind is DeviceKind.LIFT:
            speed, accel = physics.lift_speed_m_s, physics.lift_accel_m_s2
        else:
            speed, accel = physics.shuttle_speed_m_s, physics.shuttle_accel_m_s2
        distance = op.target_mm - op.origin_mm
        covered = move_progress(
            self.now - op.start, distance, speed * 1000.0, accel * 1000.0
        )
        return op.origin_mm + math.copysign(covered, distance)

    def _complete(self, d: _Device) -> None:
        op = d.op
        if op is None:
            return
        if op.code == "move":
            d.position_mm = op.target_mm
        elif op.code == "check":
            d.measured = True
        elif op.code in ("pick", "place"):
            site_tower = self._towers[d.tower]
            car_id = site_tower.places.get(op.source)
            if car_id is None or op.destination in site_tower.places:
                raise AssertionError(f"transfer {op} found the plant changed under it")
            self._remove(d.tower, op.source, car_id)
            self._put(d.tower, op.destination, car_id)
            for place in (op.source, op.destination):
                if place in site_tower.devices:
                    self._mark(site_tower.devices[place])
                self._mark_level(site_tower, place)
        self._finish(d, "done", FAULT_NONE)

    def _stop(self, d: _Device, fault_code: str, reason: str) -> None:
        """End the running command in a fault, leaving everything where it is."""
        if d.op is not None and d.op.code == "move":
            d.position_mm = self._position(d)
        self._record(d, d.op.seq if d.op else d.seq_done, fault_code, reason)
        self._finish(d, "fault", fault_code)

    def _refuse(self, d: _Device, seq: int, fault_code: str, reason: str) -> None:
        self._record(d, seq, fault_code, reason)
        d.seq_done, d.result = seq, "fault"
        d.faulted, d.fault_code = True, fault_code
        self._mark(d)

    def _finish(self, d: _Device, result: str, fault_code: str) -> None:
        op = d.op
        if op is None:
            return
        site_tower = self._towers[d.tower]
        for name in op.locks:
            site_tower.devices[name].locked_by = None
        d.op = None
        d.seq_done, d.result = op.seq, result
        if result == "fault":
            d.faulted, d.fault_code = True, fault_code
        self._mark(d)

    def _reset(self, d: _Device) -> None:
        if d.manual or d.op is not None:
            return
        if d.estop and self._towers[d.tower].estop_pressed:
            return
        if d.estop or d.faulted:
            d.estop = d.faulted = False
            d.fault_code = FAULT_NONE
            self._mark(d)

    def _record(self, d: _Device, seq: int, fault_code: str, reason: str) -> None:
        self.faults.append(
            FaultRecord(self.now, d.tower, d.name, seq, fault_code, reason)
        )

    # -- helpers -------------------------------------------------------------

    def _tower(self, tower: str) -> _Tower:
        try:
            return self._towers[tower]
        except KeyError:
            raise PlantError(
                f"no tower {tower!r}; the site has {list(self._towers)}"
            ) from None

    def _device(self, tower: str, device: str) -> _Device:
        devices = self._tower(tower).devices
        try:
            return devices[device]
        except KeyError:
            raise PlantError(
                f"{tower} has no device {device!r}; it has {list(devices)}"
            ) from None

    def _bay(self, tower: str, bay: str) -> _Device:
        d = self._device(tower, bay)
        if d.kind is not DeviceKind.BAY:
            raise PlantError(f"{tower}/{bay} is not a bay")
        return d

    def _all_places(self, site_tower: _Tower) -> set[str]:
        config = site_tower.config
        places = set(site_tower.devices)
        for level in range(1, config.levels + 1):
            for column in range(1, config.columns + 1):
                for side in ("left", "right"):
                    places.add(slot_id(level, column, side))
        return places

    def _put(self, tower: str, place: str, car_id: str) -> None:
        self._towers[tower].places[place] = car_id
        self._where[car_id] = (tower, place)
        self._unmeasure(tower, place)

    def _remove(self, tower: str, place: str, car_id: str) -> None:
        del self._towers[tower].places[place]
        del self._where[car_id]
        self._unmeasure(tower, place)

    def _unmeasure(self, tower: str, place: str) -> None:
        """A bay's measurement belongs to the car it measured."""
        bay = self._towers[tower].devices.get(place)
        if bay is not None:
            bay.measured = False

    def _mark(self, d: _Device) -> None:
        self._dirty.add((d.tower, d.name))

    def _mark_level(self, site_tower: _Tower, place: str) -> None:
        """A slot changed: the shuttle of its level shows it in slot_sensors."""
        if place[0].isdigit():
            self._dirty.add((site_tower.config.id, f"shuttle-{int(place[:2])}"))


def _timeout_for(
    timeouts: float | Mapping[str, float], tower: str, name: str, kind: DeviceKind
) -> float:
    if not isinstance(timeouts, Mapping):
        return float(timeouts)
    for key in (f"{tower}/{name}", name, kind.value):
        if key in timeouts:
            return float(timeouts[key])
    return 2.0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
