"""The plant over real Modbus TCP on loopback, through the shipped profiles."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from plantkit import TOWER, small_site
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ExceptionResponse

from sim.control import serve_control, sim_request
from sim.plant import Car, Plant
from sim.server import SimServer, serve
from tower.config import PlcConfig, SiteConfig
from tower.plc.codec import Table
from tower.plc.profile import Profile

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "plc_profiles"
SPAN = 45  # ports one small tower uses above its port_base (bays at +41, +42)
SPEED = 50.0


def free_port_base() -> int:
    """A port base whose whole span is free on loopback, found from port 0."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + SPAN > 65000:
            continue
        try:
            for port in range(base, base + SPAN):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port span on loopback")


def site_on(base: int, variant: bool = False) -> SiteConfig:
    site = small_site(levels=2, columns=2, profiles_dir=str(PROFILES))
    suffix = "-variant" if variant else ""
    plc = PlcConfig(
        port_base=base,
        lift=f"lift{suffix}.toml",
        shuttle=f"shuttle{suffix}.toml",
        bay=f"bay{suffix}.toml",
    )
    tower = site.towers[0].model_copy(update={"plc": plc})
    return site.model_copy(update={"towers": [tower]})


class Device:
    """A Modbus client for one simulated device, speaking its profile."""

    def __init__(self, client: AsyncModbusTcpClient, profile: Profile, unit: int):
        self.client = client
        self.profile = profile
        self.unit = unit

    async def status(self) -> dict[str, Any]:
        decoded: dict[str, Any] = {}
        for span in self.profile.status_reads():
            data = await self._read(span.table, span.start, span.count)
            decoded |= self.profile.decode_block(span.table, span.start, data)
        return decoded

    async def _read(self, table: Table, start: int, count: int) -> list[Any]:
        call = {
            Table.HOLDING: self.client.read_holding_registers,
            Table.INPUT: self.client.read_input_registers,
            Table.COIL: self.client.read_coils,
            Table.DISCRETE_INPUT: self.client.read_discrete_inputs,
        }[table]
        reply = await call(start, count=count, device_id=self.unit)
        assert not reply.isError(), reply
        return reply.bits[:count] if table.holds_bits else reply.registers

    async def write(self, **points: Any) -> None:
        for write in self.profile.encode_points(points):
            if write.table is Table.COIL:
                reply = await self.client.write_coils(
                    write.start, write.values, device_id=self.unit
                )
            else:
                reply = await self.client.write_registers(
                    write.start, write.values, device_id=self.unit
                )
            assert not reply.isError(), reply

    async def until(self, check, timeout_s: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                status = await self.status()
                if check(status):
                    return status
                await asyncio.sleep(0.01)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    site = site_on(free_port_base())
    plant = Plant(site)
    async with await serve(site, plant, speed=SPEED) as running:
        yield running


async def connect(sim: SimServer, device: str) -> Device:
    endpoint = next(e for e in sim.endpoints if e.device == device)
    client = AsyncModbusTcpClient("127.0.0.1", port=endpoint.port, timeout=2)
    assert await client.connect()
    return Device(client, sim.profiles[(TOWER, device)], endpoint.unit_id)


async def test_status_block_reads_the_plant(sim: SimServer) -> None:
    """One read of the lift's status span decodes to the plant's status."""
    lift = await connect(sim, "lift")
    try:
        status = await lift.status()
    finally:
        lift.client.close()

    assert status["state"] == "idle"
    assert (status["level"], status["position_mm"]) == (0, 0)
    assert status["flags"]["loaded"] is False
    assert status["fault_code"] == "none"


async def test_move_through_the_handshake_is_accepted_then_done(
    sim: SimServer,
) -> None:
    """Target and seq, then the code: the PLC accepts, runs and ends done."""
    lift = await connect(sim, "lift")
    try:
        await lift.write(cmd_target=2, cmd_seq=11)
        await lift.write(cmd_code="move")
        accepted = await lift.status()
        done = await lift.until(lambda s: s["seq_done"] == 11)
        again = await lift.status()
    finally:
        lift.client.close()

    assert (accepted["seq_accepted"], accepted["state"]) == (11, "busy")
    assert (done["result"], done["state"], done["level"]) == ("done", "idle", 2)
    assert again["position_mm"] == 4400
    assert sim.plant.motions[(TOWER, "lift", 11)] == 1


async def test_long_move_outlives_plant_time_heartbeat_at_speed(
    sim: SimServer,
) -> None:
    """The watchdog counts real seconds: at speed 50 a 6 s plant move (longer
    than the 2 s timeout) ends done with no heartbeat written."""
    shuttle = await connect(sim, "shuttle-1")
    try:
        await shuttle.write(cmd_target=2, cmd_side="none", cmd_seq=1)
        await shuttle.write(cmd_code="move")
        done = await shuttle.until(lambda s: s["seq_done"] == 1)
    finally:
        shuttle.client.close()

    assert (done["result"], done["column"]) == ("done", 2)


async def test_unmapped_address_is_illegal(sim: SimServer) -> None:
    """Reads past the map, writes to status or unmapped registers: exception 2."""
    lift = await connect(sim, "lift")
    client, unit = lift.client, lift.unit
    try:
        past = await client.read_input_registers(60, count=2, device_id=unit)
        across_gap = await client.read_input_registers(0, count=30, device_id=unit)
        unmapped = await client.write_register(40, 1, device_id=unit)
        bad_unit = await client.read_input_registers(0, count=1, device_id=unit + 7)
        fine = await client.read_input_registers(0, count=1, device_id=unit)
    finally:
        client.close()

    for reply in (past, across_gap, unmapped):
        assert isinstance(reply, ExceptionResponse)
        assert reply.exception_code == 2
    assert isinstance(bad_unit, ExceptionResponse)
    assert bad_unit.exception_code == 0x0B  # gateway target failed to respond
    assert not fine.isError()


async def test_unknown_command_code_is_refused_by_the_plc(sim: SimServer) -> None:
    """A raw code no enum names reaches the PLC, which refuses it: bad_command."""
    lift = await connect(sim, "lift")
    code = lift.profile.register("cmd_code")
    seq = lift.profile.register("cmd_seq")
    try:
        await lift.write(cmd_target=1, cmd_seq=5)
        assert seq.table is code.table
        reply = await lift.client.write_register(
            code.wire_address, 77, device_id=lift.unit
        )
        status = await lift.status()
    finally:
        lift.client.close()

    assert not reply.isError()
    assert (status["seq_done"], status["fault_code"]) == (5, "bad_command")


async def test_variant_profiles_fault_and_reset_on_a_coil() -> None:
    """On the second vendor's maps (1-based, low word first, reset coil) an
    injected fault shows with its code and the reset coil clears it."""
    site = site_on(free_port_base(), variant=True)
    plant = Plant(site)
    async with await serve(site, plant, speed=SPEED) as sim:
        plant.inject_fault(TOWER, "lift", "drive_fault")
        lift = await connect(sim, "lift")
        try:
            await lift.write(cmd_target=2, cmd_seq=3)
            await lift.write(cmd_code="move")
            faulted = await lift.until(lambda s: s["seq_done"] == 3)
            await lift.write(reset=True)
            cleared = await lift.status()
            await lift.write(cmd_target=2, cmd_seq=4)
            await lift.write(cmd_code="move")
            done = await lift.until(lambda s: s["seq_done"] == 4)
        finally:
            lift.client.close()

    assert lift.profile.register("reset").table is Table.COIL
    assert (faulted["result"], faulted["fault_code"]) == ("fault", "drive_fault")
    assert 0 < faulted["position_mm"] < 4400
    assert (cleared["state"], cleared["fault_code"]) == ("idle", "none")
    assert (done["level"], done["result"]) == (2, "done")


async def test_shuttle_slot_sensors_over_modbus(sim: SimServer) -> None:
    """A car in slot 01-02-R lights bit (2 - 1) * 2 + 1 of shuttle-1's sensors."""
    sim.plant.seed_car(TOWER, "01-02-R", Car("a"))
    shuttle = await connect(sim, "shuttle-1")
    try:
        status = await shuttle.status()
    finally:
        shuttle.client.close()

    assert [i for i, on in enumerate(status["slot_sensors"]) if on] == [3]


async def test_control_socket_plays_the_visitors(sim: SimServer, tmp_path) -> None:
    """arrive, status and errors over the sim's JSON-lines socket."""
    path = tmp_path / "sim.sock"
    control = await serve_control(path, sim)
    try:
        arrived = await sim_request(
            path, cmd="arrive", tower=TOWER, bay="bay-1", car={"height_mm": 1900}
        )
        status = await sim_request(path, cmd="status", id=7)
        again = await sim_request(path, cmd="arrive", tower=TOWER, bay="bay-1")
        no_car = await sim_request(path, cmd="collect", tower=TOWER, bay="bay-2")
        bad_fault = await sim_request(
            path, cmd="fault", tower=TOWER, device="lift", fault="gremlins"
        )
        fault = await sim_request(
            path, cmd="fault", tower=TOWER, device="lift", fault="brake_fault"
        )
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"{not json\n[1]\n")
        await writer.drain()
        malformed = [await reader.readline(), await reader.readline()]
        writer.close()
        still = await sim_request(path, cmd="status")
    finally:
        await control.close()

    assert arrived == {"ok": True, "car": "sim-car-1"}
    assert status["id"] == 7
    assert status["towers"][TOWER]["cars"] == {"bay-1": "sim-car-1"}
    assert status["towers"][TOWER]["bays"]["bay-1"]["flags"]["person_present"]
    assert status["motions_repeated"] == {}
    assert again["ok"] is False
    assert "already holds" in again["error"]
    assert no_car["ok"] is False
    assert bad_fault["ok"] is False
    assert "brake_fault" in bad_fault["error"]
    assert fault == {"ok": True}
    assert all(b'"ok": false' in line for line in malformed)
    assert still["ok"] is True
    assert not path.exists()


async def test_control_socket_moves_a_car_by_hand(sim: SimServer, tmp_path) -> None:
    """handmove: a car from one place to another, then out of the tower;
    an empty place or a taken one is refused and nothing moves."""
    path = tmp_path / "sim.sock"
    sim.plant.seed_car(TOWER, "01-01-L", Car("c1"))
    sim.plant.seed_car(TOWER, "02-01-L", Car("c2"))
    control = await serve_control(path, sim)
    try:
        moved = await sim_request(
            path, cmd="handmove", tower=TOWER, **{"from": "01-01-L", "to": "lift"}
        )
        taken = await sim_request(
            path, cmd="handmove", tower=TOWER, **{"from": "lift", "to": "02-01-L"}
        )
        empty = await sim_request(
            path, cmd="handmove", tower=TOWER, **{"from": "01-01-L", "to": "lift"}
        )
        out = await sim_request(
            path, cmd="handmove", tower=TOWER, **{"from": "lift", "to": None}
        )
    finally:
        await control.close()

    assert moved == {"ok": True, "car": "c1"}
    assert taken["ok"] is False
    assert "already holds c2" in taken["error"]
    assert empty["ok"] is False
    assert "no car at" in empty["error"]
    assert out == {"ok": True, "car": "c1"}
    assert sim.plant.where("c1") is None
    assert sim.plant.where("c2") == "02-01-L"


async def test_tower_sim_serves_until_sigterm(tmp_path) -> None:
    """run_sim in its own process: the control socket answers, SIGTERM ends it
    with exit code 0."""
    base = free_port_base()
    site_file = tmp_path / "site.toml"
    site_file.write_text(
        f'profiles_dir = "{PROFILES}"\n'
        "[[towers]]\n"
        'id = "tower-a"\nlevels = 2\ncolumns = 2\n'
        f"[towers.plc]\nport_base = {base}\n",
        encoding="utf-8",
    )
    control = tmp_path / "c.sock"
    script = (
        "import asyncio, sys; from sim.server import run_sim; "
        f"sys.exit(asyncio.run(run_sim({str(site_file)!r}, speed=10.0, "
        f"control_path={str(control)!r})))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        async with asyncio.timeout(20):
            assert process.stdout is not None
            lines = [await process.stdout.readline()]
            while b"sim.control_started" not in lines[-1]:
                assert lines[-1], b"".join(lines)
                lines.append(await process.stdout.readline())
            status = await sim_request(control, cmd="status")
            process.send_signal(signal.SIGTERM)
            rest, _ = await process.communicate()
            output = b"".join(lines) + rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert status["ok"] is True
    assert process.returncode == 0
    assert b"sim.endpoint" in output
    assert b"sim.started" in output
