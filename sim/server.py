"""The plant served over Modbus TCP, through the PLC profiles alone.

Theory of operation
-------------------
Every device of every tower gets its own pymodbus TCP server on the port its
endpoint names (`TowerConfig.endpoint`), answering the unit id of the endpoint
or of its profile. Nothing here knows a register address: each device's
profile says which registers exist, and the server builds its pymodbus
`SimDevice` from them (one `SimData` per register, so a hole in the map is an
illegal address) with an action callback that does the work:

- a read encodes the plant's status points (and the command points as last
  written) with the profile and fills the requested registers;
- a write must cover whole command registers; the profile decodes it into
  points and the server hands them to `Plant.write`, one call per request, in
  the order the requests came;
- anything else (an address no register covers, a write to a status register or
  to part of a register) answers ILLEGAL DATA ADDRESS; a value a register cannot
  hold answers ILLEGAL DATA VALUE, except an unknown enum code, which goes to the
  plant as the raw number so that the PLC refuses it (bad_command) as a real one
  would.

Plant time runs from the monotonic clock: plant time = t0 + (monotonic - m0) *
speed. The plant is advanced before every request and by a background task
that wakes at the plant's next event, so motions end and heartbeat deadlines
fire on time without a poll. The PLC watchdog counts real seconds, like the
controller's heartbeat that it watches: its timeout is the profile's
`heartbeat_timeout_ms` times the speed, in plant time.

pymodbus hands the action of a coil or discrete-input read whole 16-bit words,
not the bit count asked for, so such a read is checked at its first address
only; register reads and every write are checked address by address.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from sim.control import serve_control
from sim.plant import Plant, PlantError
from tower.config import SiteConfig, load_site
from tower.plc.codec import BadValue, Table
from tower.plc.codec import DataType as PointType
from tower.plc.profile import Profile, Register, Role, load_profile

_log = structlog.get_logger("sim.server")

_TABLE_OF_FUNCTION: dict[int, Table] = {
    1: Table.COIL,
    5: Table.COIL,
    15: Table.COIL,
    2: Table.DISCRETE_INPUT,
    3: Table.HOLDING,
    6: Table.HOLDING,
    16: Table.HOLDING,
    22: Table.HOLDING,
    23: Table.HOLDING,
    4: Table.INPUT,
}
# Single writes read their register back for the reply: echo what was written.
_ECHO_FUNCTIONS = frozenset({5, 6})
# pymodbus SimDevice's four blocks, in its order.
_SIM_TABLES = (Table.COIL, Table.DISCRETE_INPUT, Table.HOLDING, Table.INPUT)

CLOCK_TICK_S = 0.05
"""Longest real time the background task sleeps between plant advances."""


class PlantClock:
    """Plant time driven by the monotonic clock, scaled by `speed`."""

    def __init__(
        self,
        plant: Plant,
        speed: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.plant = plant
        self.speed = speed
        self._monotonic = monotonic
        self._t0 = plant.now
        self._m0 = monotonic()

    def now(self) -> float:
        """Plant time now, seconds."""
        return self._t0 + (self._monotonic() - self._m0) * self.speed

    def sync(self) -> float:
        """Advance the plant to now (never backwards); the plant time."""
        now = self.now()
        if now > self.plant.now:
            self.plant.advance(now)
        return self.plant.now

    def real_s_until(self, plant_time: float) -> float:
        """Real seconds from now until a plant time (0 if it has passed)."""
        return max(0.0, (plant_time - self.now()) / self.speed)


class DeviceImage:
    """One device's register map, computed from the plant through its profile."""

    def __init__(
        self,
        plant: Plant,
        clock: PlantClock,
        tower: str,
        device: str,
        profile: Profile,
    ) -> None:
        self.plant = plant
        self.clock = clock
        self.tower = tower
        self.device = device
        self.profile = profile
        self.registers: dict[Table, list[Register]] = {t: [] for t in _SIM_TABLES}
        self.cover: dict[Table, dict[int, Register]] = {t: {} for t in _SIM_TABLES}
        for reg in profile.registers.values():
            self.registers[reg.table].append(reg)
            for address in range(reg.wire_address, reg.end):
                self.cover[reg.table][address] = reg
        self._echo: dict[tuple[Table, int], int | bool] = {}
        self._unencodable: set[tuple[str, str]] = set()

    # -- the pymodbus device ---------------------------------------------------

    def sim_devices(self, unit_id: int) -> list[SimDevice]:
        """The pymodbus devices of this endpoint: `unit_id` with this map, and
        (id 0, pymodbus' catch-all) an answer for any other unit id: gateway
        target failed to respond, as a Modbus TCP gateway would say."""
        blocks = tuple(self._simdata(table) for table in _SIM_TABLES)
        devices = [SimDevice(id=unit_id, simdata=blocks, action=self.action)]
        if unit_id != 0:
            other = tuple(self._simdata(table) for table in _SIM_TABLES)
            devices.append(SimDevice(id=0, simdata=other, action=_no_such_unit))
        return devices

    def _simdata(self, table: Table) -> list[SimData]:
        regs = sorted(self.registers[table], key=lambda r: r.wire_address)
        if table.holds_bits:
            data = [
                SimData(r.wire_address, values=False, datatype=DataType.BITS)
                for r in regs
            ]
            # pymodbus needs one entry per block; the action refuses the address.
            return data or [SimData(0, values=False, datatype=DataType.BITS)]
        data = [
            SimData(r.wire_address, count=r.words, datatype=DataType.REGISTERS)
            for r in regs
        ]
        return data or [SimData(0, datatype=DataType.INVALID)]

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this for every request (it must not await: requests
        are handled in the order they came only while no action yields)."""
        table = _TABLE_OF_FUNCTION.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        try:
            self.clock.sync()
            if values is not None:
                return self.write(table, address, list(values))
            return self._fill(
                function_code, table, start_address, address, count, registers
            )
        except PlantError:
            _log.exception("sim.plant_refused", tower=self.tower, device=self.device)
            return ExcCodes.DEVICE_FAILURE

    def _fill(
        self,
        function_code: int,
        table: Table,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
    ) -> ExcCodes | None:
        if table.holds_bits:
            if address not in self.cover[table]:
                return ExcCodes.ILLEGAL_ADDRESS
            first_word = address // 16
            wanted = range(first_word * 16, (first_word + count) * 16)
        else:
            wanted = range(address, address + count)
            if any(a not in self.cover[table] for a in wanted):
                return ExcCodes.ILLEGAL_ADDRESS

        image = self.read(table)
        if function_code in _ECHO_FUNCTIONS:
            image.update(
                {a: v for (t, a), v in self._echo.items() if t is table and a in wanted}
            )
        if not table.holds_bits:
            for a in wanted:
                registers[a - start_address] = int(image[a])
            return None
        for word in range(first_word, first_word + count):
            bits = [bool(image.get(word * 16 + i, False)) for i in range(16)]
            registers[word - start_address] = sum(
                1 << i for i, b in enumerate(bits) if b
            )
        return None

    # -- reads and writes, in profile terms -------------------------------------

    def read(self, table: Table) -> dict[int, int | bool]:
        """Every address of a table and its raw value, from the plant now."""
        status = self.plant.status(self.tower, self.device)
        commands = self.plant.commands(self.tower, self.device)
        image: dict[int, int | bool] = {}
        for reg in self.registers[table]:
            source = commands if reg.role is Role.COMMAND else status
            raw = self._encode(reg, source.get(reg.name))
            for offset, word in enumerate(raw):
                image[reg.wire_address + offset] = word
        return image

    def _encode(self, reg: Register, value: Any) -> list[int] | list[bool]:
        blank: list[int] | list[bool] = (
            [False] if reg.table.holds_bits else [0] * reg.words
        )
        if value is None:
            return blank  # a point the plant does not model (info registers)
        if reg.type is PointType.BITS and isinstance(value, dict):
            value = {name: bool(value.get(name, False)) for name in reg.bits}
        elif reg.type is PointType.BITS and isinstance(value, list):
            width = 16 * reg.count
            value = (list(value) + [False] * width)[:width]
        try:
            return reg.encode(value)
        except ValueError:
            raw_code = isinstance(value, int) and not isinstance(value, bool)
            if raw_code and reg.type is PointType.ENUM and 0 <= value <= 0xFFFF:
                return [value]  # a raw code written by the controller
            key = (reg.name, repr(value))
            if key not in self._unencodable:
                self._unencodable.add(key)
                _log.error(
                    "sim.unencodable",
                    tower=self.tower,
                    device=self.device,
                    register=reg.name,
                    value=repr(value),
                    profile=str(self.profile.source),
                )
            return blank

    def write(
        self, table: Table, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        """Decode one write request and give its points to the plant."""
        end = address + len(values)
        regs: list[Register] = []
        cursor = address
        while cursor < end:
            reg = self.cover[table].get(cursor)
            if reg is None or reg.role is not Role.COMMAND:
                return ExcCodes.ILLEGAL_ADDRESS
            if reg.wire_address != cursor or reg.end > end:
                return ExcCodes.ILLEGAL_ADDRESS  # part of a register
            regs.append(reg)
            cursor = reg.end

        points: dict[str, Any] = {}
        for reg in regs:
            raw = values[reg.wire_address - address : reg.end - address]
            try:
                points[reg.name] = reg.decode(raw)
            except BadValue:
                if reg.type is not PointType.ENUM:
                    return ExcCodes.ILLEGAL_VALUE
                points[reg.name] = int(raw[0])  # the PLC refuses it: bad_command
        for offset, value in enumerate(values):
            self._echo[(table, address + offset)] = value
        self.plant.write(self.tower, self.device, points)
        _log.debug(
            "sim.write",
            tower=self.tower,
            device=self.device,
            points=points,
            plant_time_s=round(self.plant.now, 3),
        )
        return None


async def _no_such_unit(*_request: object) -> ExcCodes:
    return ExcCodes.GATEWAY_NO_RESPONSE


@dataclass(frozen=True)
class ServedEndpoint:
    """One device the simulator serves."""

    tower: str
    device: str
    host: str
    port: int
    unit_id: int
    profile: Path


class SimServer:
    """The running simulator: every endpoint of a site, and the plant clock."""

    def __init__(self, site: SiteConfig, plant: Plant, clock: PlantClock) -> None:
        self.site = site
        self.plant = plant
        self.clock = clock
        self.endpoints: list[ServedEndpoint] = []
        self.images: dict[tuple[str, str], DeviceImage] = {}
        self.profiles: dict[tuple[str, str], Profile] = {}
        self._servers: list[ModbusTcpServer] = []
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    def sync(self) -> float:
        """Bring the plant up to plant time now; the plant time."""
        return self.clock.sync()

    async def start(self, host: str) -> None:
        """Listen on every endpoint of the site, then start the plant clock."""
        cache: dict[Path, Profile] = {}
        timeouts: dict[str, float] = {}
        for tower in self.site.towers:
            for device in tower.device_names():
                endpoint = tower.endpoint(device)
                path = self.site.profiles_path() / endpoint.profile
                if path not in cache:
                    cache[path] = load_profile(path)
                profile = cache[path]
                unit_id = endpoint.unit_id
                if unit_id is None:
                    unit_id = profile.unit_id
                image = DeviceImage(self.plant, self.clock, tower.id, device, profile)
                server = ModbusTcpServer(
                    image.sim_devices(unit_id), address=(host, endpoint.port)
                )
                where = f"{host}:{endpoint.port} for {tower.id}/{device}"
                try:
                    await server.serve_forever(background=True)
                except RuntimeError as exc:  # pymodbus' word for a bind failure
                    await server.shutdown()
                    raise OSError(
                        f"cannot listen on {where} (is another simulator running?)"
                    ) from exc
                if not server.is_active():
                    raise OSError(f"cannot listen on {where}")
                self._servers.append(server)
                self.images[(tower.id, device)] = image
                self.profiles[(tower.id, device)] = profile
                timeouts[f"{tower.id}/{device}"] = (
                    profile.heartbeat_timeout_ms / 1000.0 * self.clock.speed
                )
                self.endpoints.append(
                    ServedEndpoint(tower.id, device, host, endpoint.port, unit_id, path)
                )
                _log.info(
                    "sim.endpoint",
                    tower=tower.id,
                    device=device,
                    host=host,
                    port=endpoint.port,
                    unit_id=unit_id,
                    profile=path.name,
                )

        self.plant.set_heartbeat_timeouts(timeouts)
        self._ticker = asyncio.create_task(self._tick(), name="sim.clock")
        _log.info(
            "sim.started",
            site=self.site.id,
            endpoints=len(self.endpoints),
            speed=self.clock.speed,
            plant_time_s=round(self.plant.now, 3),
        )

    async def close(self) -> None:
        """Stop every endpoint and the plant clock."""
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for server in self._servers:
            await server.shutdown()
        _log.info(
            "sim.stopped",
            endpoints=len(self.endpoints),
            plant_time_s=round(self.plant.now, 3),
            motions=sum(self.plant.motions.values()),
        )

    async def __aenter__(self) -> SimServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _tick(self) -> None:
        """Advance the plant at each of its events (and at least every tick)."""
        while True:
            self.clock.sync()
            due = self.plant.next_event_time()
            wait_s = CLOCK_TICK_S
            if due is not None:
                wait_s = min(wait_s, self.clock.real_s_until(due))
            await asyncio.sleep(wait_s)


async def serve(
    site: SiteConfig, plant: Plant, *, speed: float = 1.0, host: str = "127.0.0.1"
) -> SimServer:
    """Serve every device of the site over Modbus TCP; the running simulator.

    Each endpoint listens on `host` (loopback by default) at its port; the
    profile files are resolved in `site.profiles_path()`. Raises OSError when a
    port cannot be bound (every endpoint started so far is stopped first).
    """
    sim = SimServer(site, plant, PlantClock(plant, speed))
    try:
        await sim.start(host)
    except BaseException:
        await sim.close()
        raise
    return sim


async def run_sim(site_path: str, *, speed: float, control_path: str | None) -> int:
    """`tower sim`: serve a site's plant until SIGINT or SIGTERM; the exit code."""
    site = load_site(site_path)
    plant = Plant(site)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    try:
        async with await serve(site, plant, speed=speed) as sim:
            control = None
            if control_path is not None:
                control = await serve_control(control_path, sim)
            try:
                await stop.wait()
            finally:
                if control is not None:
                    await control.close()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0
