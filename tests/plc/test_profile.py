"""Profiles: every shipped file loads, and every validation rule fires."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tower.plc.codec import Codec, DataType
from tower.plc.points import REQUIRED, REQUIRED_FAULTS, DeviceKind
from tower.plc.profile import (
    BadValue,
    ReadSpan,
    Register,
    Role,
    Table,
    WordOrder,
    Write,
    check_main,
    check_profile,
    load_profile,
)
from tower.tomlsource import Problem, ValidationProblems

PROFILES = Path(__file__).resolve().parents[2] / "plc_profiles"
SHIPPED = sorted(PROFILES.glob("*.toml"))


def test_profiles_are_shipped():
    """plc_profiles/ holds a reference profile for each device kind."""
    names = {p.name for p in SHIPPED}

    assert {"lift.toml", "shuttle.toml", "bay.toml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_profile_passes_check(path):
    """Every shipped profile passes `tower profile check` without a problem."""
    problems = check_profile(path)

    assert problems == []


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_profile_polls_in_one_read(path):
    """Every shipped profile reads all its status points in one request."""
    profile = load_profile(path)

    spans = profile.status_reads()

    assert len(spans) == 1
    status = {n for n, r in profile.registers.items() if r.role is Role.STATUS}
    assert set(REQUIRED[profile.kind]["status"]) <= status
    assert isinstance(profile.kind, DeviceKind)


# ---- the API the driver and the simulator use --------------------------------


def test_decode_block_decodes_every_register_inside_it():
    """A status block decodes to point values: names, numbers in mm, bit dicts."""
    profile = load_profile(PROFILES / "lift.toml")
    span = profile.status_reads()[0]

    decoded = profile.decode_block(
        span.table, span.start, [1, 7, 6, 1, 0, 5, 3, 0, 6600, 0b11]
    )

    assert decoded == {
        "state": "busy",
        "seq_accepted": 7,
        "seq_done": 6,
        "result": "done",
        "fault_code": "none",
        "heartbeat": 5,
        "level": 3,
        "position_mm": 6600,
        "flags": {
            "loaded": True,
            "moving": True,
            "estop": False,
            "in_position": False,
            "brake_open": False,
        },
    }


def test_decode_block_skips_registers_not_wholly_inside():
    """A register cut by the end of the block is left out, not half decoded."""
    profile = load_profile(PROFILES / "lift.toml")

    decoded = profile.decode_block("input", 6, [3, 0])

    assert decoded == {"level": 3}


def test_decode_block_reports_bad_data():
    """An unknown state code in a block raises BadValue naming the register."""
    profile = load_profile(PROFILES / "lift-variant.toml")

    with pytest.raises(BadValue) as caught:
        profile.decode_block("input", 100, [0, 11, 0, 0, 0, 0, 0, 0, 0, 0])

    assert (caught.value.register, caught.value.address) == ("state", 102)


def test_encode_points_merges_neighbours_in_address_order():
    """Command points next to each other go in one write, lowest address first."""
    profile = load_profile(PROFILES / "shuttle.toml")

    writes = profile.encode_points({"cmd_seq": 9, "cmd_target": 4, "cmd_side": "left"})

    assert writes == [Write(Table.HOLDING, 0, [4, 1, 9])]


def test_encode_points_splits_tables_and_gaps():
    """The variant's reset coil and its separate heartbeat each get their own write."""
    profile = load_profile(PROFILES / "lift-variant.toml")

    writes = profile.encode_points({"reset": True, "heartbeat_ctl": 7, "cmd_seq": 3})

    assert writes == [
        Write(Table.HOLDING, 200, [3]),
        Write(Table.HOLDING, 209, [7]),
        Write(Table.COIL, 0, [True]),
    ]


def test_encode_points_refuses_unknown_points():
    """Asking for a point the profile does not define is a KeyError."""
    profile = load_profile(PROFILES / "bay.toml")

    with pytest.raises(KeyError, match="cmd_target"):
        profile.encode_points({"cmd_target": 1})


def test_variant_scales_to_the_same_engineering_units():
    """Position in cm (variant lift) and 0.1 mm (variant shuttle) decode to mm."""
    lift = load_profile(PROFILES / "lift-variant.toml").register("position_mm")
    shuttle = load_profile(PROFILES / "shuttle-variant.toml").register("position_mm")

    values = (lift.decode([660, 0]), shuttle.decode([0xD4C0, 0x0001]))

    assert values == (6600, 12000.0)


def test_register_resolves_wire_address_and_word_order():
    """Documented 1-based address n is wire address n - 1; word order is inherited."""
    reg = load_profile(PROFILES / "lift-variant.toml").register("position_mm")

    resolved = (reg.address, reg.wire_address, reg.words, reg.word_order, reg.scale)

    assert resolved == (107, 106, 2, WordOrder.LITTLE, 10)


def test_fault_meaning_and_enum_tables():
    """Fault names carry the documentation's meaning; enum tables are exposed."""
    profile = load_profile(PROFILES / "bay.toml")

    meaning = profile.fault_meaning("vehicle_too_heavy")

    assert "weight" in meaning
    assert profile.enum("cmd_code")[1].name == "check"
    assert set(REQUIRED_FAULTS) <= set(profile.faults)


# ---- validation: each rule fires, with the right line and field ---------------


def write_broken(tmp_path: Path, base: str, *edits: tuple[str, str, str]) -> Path:
    """A copy of a shipped profile with edits (section, old, new).

    Each edit replaces the first `old` after the `[section]` header (section ""
    means the top of the file). The copy is written to tmp_path.
    """
    text = (PROFILES / base).read_text(encoding="utf-8")
    for section, old, new in edits:
        at = text.index(f"[{section}]\n") if section else 0
        found = text.index(old, at)
        text = text[:found] + new + text[found + len(old) :]
    path = tmp_path / base
    path.write_text(text, encoding="utf-8")
    return path


def line_with(path: Path, needle: str, section: str = "") -> int:
    """The 1-based line of the first line containing needle after [section]."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"[{section}]") if section else 0
    return next(i for i, line in enumerate(lines[start:], start + 1) if needle in line)


def problem(path: Path, field: str) -> Problem:
    """The first problem check_profile reports on a field (fails if none)."""
    problems = check_profile(path)
    matching = [p for p in problems if p.field == field]
    assert matching, "\n".join(map(str, problems))
    return matching[0]


def test_missing_required_point_is_reported_at_the_kind(tmp_path):
    """A lift whose heartbeat has another name: the problem points at `kind`."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("registers.heartbeat", "[registers.heartbeat]", "[registers.life_counter]"),
    )

    found = problem(path, "registers.heartbeat")

    assert found.line == line_with(path, "kind =")
    assert found.message == "a lift needs the status point 'heartbeat'"


def test_missing_required_point_without_stray_tables(tmp_path):
    """A bay file cut before its reset register reports exactly that."""
    text = (PROFILES / "bay.toml").read_text()
    start = text.index("[registers.reset]")
    path = tmp_path / "bay.toml"
    path.write_text(text[:start])

    problems = check_profile(path)

    assert [p.field for p in problems] == ["registers.reset"]
    assert problems[0].line == line_with(path, "kind =")


def test_wrong_role_is_reported_at_the_role(tmp_path):
    """seq_done written as an info register is refused on its role line."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("registers.seq_done", 'role = "status"', 'role = "info"'),
    )

    found = problem(path, "registers.seq_done.role")

    assert found.line == line_with(path, "role =", "registers.seq_done")
    assert found.message == "seq_done is a status point"


def test_wrong_point_type_is_reported(tmp_path):
    """A sequence number must be u16."""
    path = write_broken(
        tmp_path, "lift.toml", ("registers.seq_done", 'type = "u16"', 'type = "i16"')
    )

    found = problem(path, "registers.seq_done.type")

    assert found.line == line_with(path, "type =", "registers.seq_done")


def test_missing_required_flag_is_reported_at_the_bits(tmp_path):
    """A lift's flags without an estop bit are refused."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        (
            "registers.flags.bits",
            'estop = { bit = 2, meaning = "Emergency stop circuit open." }\n',
            "",
        ),
    )

    found = problem(path, "registers.flags.bits")

    assert found.line == line_with(path, "[registers.flags.bits]")
    assert found.message.endswith("missing estop")


def test_state_names_must_match_device_states_exactly(tmp_path):
    """A state 'service' instead of 'manual': one name missing, one unknown."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("registers.state.values", 'name = "manual"', 'name = "service"'),
    )

    messages = [
        p.message for p in check_profile(path) if p.field == "registers.state.values"
    ]

    assert len(messages) == 2
    assert messages[0].endswith("missing manual")
    assert messages[1].endswith("unknown service")


def test_result_names_must_cover_results(tmp_path):
    """A result enum without 'fault' is refused."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("registers.result.values", '2 = { name = "fault"', '2 = { name = "failed"'),
    )

    found = problem(path, "registers.result.values")

    assert found.line == line_with(path, "[registers.result.values]")
    assert "missing fault" in found.message


def test_cmd_code_must_cover_the_kinds_commands(tmp_path):
    """A lift cmd_code without 'move' is refused; extra vendor commands are not."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("registers.cmd_code.values", 'name = "move"', 'name = "travel"'),
    )

    problems = check_profile(path)

    assert [p.field for p in problems] == ["registers.cmd_code.values"]
    assert problems[0].message.endswith("missing move")


def test_shuttle_cmd_side_must_cover_transfer_sides(tmp_path):
    """A shuttle cmd_side without 'lift' is refused."""
    path = write_broken(
        tmp_path,
        "shuttle.toml",
        ("registers.cmd_side.values", '3 = { name = "lift"', '3 = { name = "conveyor"'),
    )

    found = problem(path, "registers.cmd_side.values")

    assert found.message.endswith("missing lift")


def test_fault_code_zero_must_be_none(tmp_path):
    """Fault code 0 named 'ok' is refused on its own line, and 'none' is missing."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("registers.fault_code.values", '0 = { name = "none"', '0 = { name = "ok"'),
    )

    zero = problem(path, "registers.fault_code.values.0")
    names = problem(path, "registers.fault_code.values")

    assert zero.line == line_with(path, '0 = { name = "ok"')
    assert names.message.endswith("missing none")


def test_fault_code_must_name_the_required_faults(tmp_path):
    """A fault enum without 'interlock' is refused."""
    path = write_broken(
        tmp_path,
        "bay-variant.toml",
        ("registers.fault_code.values", 'name = "interlock"', 'name = "blocked"'),
    )

    found = problem(path, "registers.fault_code.values")

    assert found.message.endswith("missing interlock")


def test_overlapping_registers_are_refused(tmp_path):
    """level moved onto heartbeat's address overlaps it."""
    path = write_broken(
        tmp_path, "lift.toml", ("registers.level", "address = 6", "address = 5")
    )

    found = problem(path, "registers.level.address")

    assert found.line == line_with(path, "address =", "registers.level")
    assert found.message == "overlaps heartbeat (input 5..5)"


def test_a_32_bit_value_in_a_coil_table_is_refused(tmp_path):
    """position_mm (u32) cannot live in discrete inputs."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("registers.position_mm", 'table = "input"', 'table = "discrete_input"'),
    )

    found = problem(path, "registers.position_mm.type")

    assert found.line == line_with(path, "type =", "registers.position_mm")
    assert "32-bit type needs two words" in found.message


def test_bool_outside_a_bit_table_is_refused(tmp_path):
    """The variant's reset moved to a holding register cannot stay a bool."""
    path = write_broken(
        tmp_path,
        "lift-variant.toml",
        ("registers.reset", 'table = "coil"', 'table = "holding"'),
    )

    found = problem(path, "registers.reset.type")

    assert "coil or discrete_input" in found.message


def test_address_zero_is_refused_when_one_based(tmp_path):
    """With address_base = 1, documented address 0 does not exist."""
    path = write_broken(
        tmp_path, "lift-variant.toml", ("registers.reset", "address = 1", "address = 0")
    )

    found = problem(path, "registers.reset.address")

    assert found.line == line_with(path, "address =", "registers.reset")
    assert "address_base = 1" in found.message


def test_register_past_the_last_address_is_refused(tmp_path):
    """A u32 at 65535 runs past the end of the table."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("registers.program_version", "address = 100", "address = 65535"),
        ("registers.program_version", 'type = "u16"', 'type = "u32"'),
    )

    found = problem(path, "registers.program_version.address")

    assert "runs past the last address (65535" in found.message


def test_bit_index_beyond_the_register_is_refused(tmp_path):
    """Bit 16 of a one-word bits register does not exist."""
    path = write_broken(
        tmp_path, "lift.toml", ("registers.flags.bits", "bit = 4", "bit = 16")
    )

    found = problem(path, "registers.flags.bits.brake_open.bit")

    assert found.line == line_with(path, "brake_open =")
    assert "outside the register's 16 bits" in found.message


def test_duplicate_bit_index_is_refused(tmp_path):
    """Two names on one bit are refused on the second."""
    path = write_broken(
        tmp_path, "lift.toml", ("registers.flags.bits", "bit = 4", "bit = 3")
    )

    found = problem(path, "registers.flags.bits.brake_open.bit")

    assert found.message == "bit 3 is also 'in_position'"


def test_duplicate_bit_name_is_a_syntax_problem(tmp_path):
    """TOML itself refuses a name written twice; the line is reported."""
    path = write_broken(
        tmp_path, "lift.toml", ("registers.flags.bits", "brake_open =", "loaded =")
    )

    found = problem(path, "(syntax)")

    assert found.line == line_with(path, "loaded =", "registers.flags.bits") + 4


def test_duplicate_enum_code_and_name_are_refused(tmp_path):
    """'00' repeats code 0; a second 'busy' repeats a name."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("registers.state.values", '4 = { name = "estop"', '00 = { name = "estop"'),
        ("registers.result.values", 'name = "fault"', 'name = "done"'),
    )

    code = problem(path, "registers.state.values.00")
    name = problem(path, "registers.result.values.2.name")

    assert code.message == "code 0 is given twice"
    assert name.message == "name 'done' is also code 1"


def test_status_block_must_fit_one_read(tmp_path):
    """max_read_registers = 4 tears the handshake points over two reads."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("device", "max_read_registers = 64", "max_read_registers = 4"),
    )

    found = problem(path, "device.max_read_registers")

    assert found.line == line_with(path, "max_read_registers =")
    assert "must come in one read" in found.message


def test_command_block_must_be_one_write(tmp_path):
    """cmd_target away from cmd_seq cannot go in the same write."""
    path = write_broken(
        tmp_path, "lift.toml", ("registers.cmd_target", "address = 0", "address = 10")
    )

    found = problem(path, "registers.cmd_target.address")

    assert "written in one request" in found.message


def test_command_in_a_read_only_table_is_refused(tmp_path):
    """A command register in the input table cannot be written."""
    path = write_broken(
        tmp_path,
        "bay.toml",
        ("registers.heartbeat_ctl", 'table = "holding"', 'table = "input"'),
    )

    found = problem(path, "registers.heartbeat_ctl.table")

    assert "must be writable" in found.message


def test_scale_on_an_enum_and_missing_mm_unit_are_refused(tmp_path):
    """Scale applies to numbers only; a *_mm point must declare unit mm."""
    path = write_broken(
        tmp_path,
        "bay.toml",
        ("registers.state", 'type = "enum"', 'type = "enum"\nscale = 2'),
        ("registers.vehicle_width_mm", 'unit = "mm"\n', ""),
    )

    scale = problem(path, "registers.state.scale")
    unit = problem(path, "registers.vehicle_width_mm.unit")

    assert scale.line == line_with(path, "scale = 2")
    assert unit.line == line_with(path, "[registers.vehicle_width_mm]")


def test_unknown_keys_are_refused_everywhere(tmp_path):
    """Unknown keys in [device], a register and an inline enum value are refused."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("device", "unit_id = 1", "unit_id = 1\ncolour = 'red'"),
        ("registers.level", 'role = "status"', 'role = "status"\nlenght = 3'),
        ("registers.state.values", 'meaning = "Executing', 'meening = "Executing'),
    )

    problems = {p.field: p for p in check_profile(path)}

    assert problems["device.colour"].line == line_with(path, "colour =")
    assert problems["registers.level.lenght"].line == line_with(path, "lenght =")
    value = problems["registers.state.values.1.meening"]
    assert value.line == line_with(path, '1 = { name = "busy"')
    assert value.message == "Extra inputs are not permitted"


def test_wrong_types_are_reported_with_line(tmp_path):
    """An address written as text is refused on its line."""
    path = write_broken(
        tmp_path, "lift.toml", ("registers.level", "address = 6", 'address = "six"')
    )

    found = problem(path, "registers.level.address")

    assert found.line == line_with(path, 'address = "six"')


def test_every_problem_is_listed_at_once(tmp_path):
    """load_profile raises ValidationProblems listing all problems, not the first."""
    path = write_broken(
        tmp_path,
        "shuttle.toml",
        ("device", 'kind = "shuttle"', 'kind = "shuttle"\ncolour = 1'),
        ("registers.column", "address = 6", "address = 5"),
        ("registers.flags.bits", "bit = 4", "bit = 40"),
    )

    with pytest.raises(ValidationProblems) as caught:
        load_profile(path)

    fields = sorted(p.field for p in caught.value.problems)
    expected = [
        "device.colour",
        "registers.column.address",
        "registers.flags.bits.combs_home.bit",
    ]
    assert expected == fields


# ---- tower profile check ----------------------------------------------------


def test_check_main_reports_ok_and_problems(tmp_path, capsys):
    """OK lines for sound files, file:line: field: message for the broken one."""
    good = PROFILES / "lift.toml"
    bad = write_broken(
        tmp_path, "lift.toml", ("registers.level", "address = 6", "address = 5")
    )

    code = check_main([str(good), str(bad)])

    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out == [
        f"{good}: OK (lift Hubwerk Automation HW-L4 lift controller, program 2.3, "
        "15 registers)",
        f"{bad}:{line_with(bad, 'address = 5', 'registers.level')}: "
        "registers.level.address: "
        "overlaps heartbeat (input 5..5)",
    ]


def test_check_main_returns_zero_when_all_pass(capsys):
    """Every shipped profile checks OK: exit code 0, one OK line each."""
    code = check_main([str(p) for p in SHIPPED])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(out) == len(SHIPPED)
    assert all(": OK (" in line for line in out)


def test_check_main_reports_unreadable_files(tmp_path, capsys):
    """A file that does not exist is a problem, not a crash."""
    code = check_main([str(tmp_path / "nope.toml")])

    out = capsys.readouterr().out
    assert code == 1
    assert "(file): cannot read" in out


# ---- encode and decode agree, for every shipped profile ------------------------


def raw_of(reg: Register) -> st.SearchStrategy[list[int] | list[bool]]:
    """Raw words (or a bit) that the register can legally hold."""
    if reg.type is DataType.BOOL:
        return st.booleans().map(lambda b: [b])
    if reg.type is DataType.ENUM:
        return st.sampled_from(sorted(reg.values)).map(lambda code: [code])
    if reg.type is DataType.F32:
        finite = st.floats(width=32, allow_nan=False, allow_infinity=False)
        codec = Codec(DataType.F32, word_order=reg.word_order)
        return finite.map(codec.encode)
    if reg.type is DataType.BITS and reg.bits:
        masks = [1 << bit.bit for bit in reg.bits.values()]
        return st.lists(st.sampled_from(masks), unique=True).map(
            lambda chosen: _words_of(sum(chosen), reg.count)
        )
    word = st.integers(0, 0xFFFF)
    return st.lists(word, min_size=reg.words, max_size=reg.words)


def _words_of(bits: int, count: int) -> list[int]:
    return [bits >> (16 * w) & 0xFFFF for w in range(count)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
@given(data=st.data())
def test_status_block_decodes_and_encodes_back(path, data):
    """Any legal status block decodes to points that encode to the same block."""
    profile = load_profile(path)
    (span,) = profile.status_reads()
    regs = sorted(
        (r for r in profile.registers.values() if _inside(r, span)),
        key=lambda r: r.wire_address,
    )
    block = [w for reg in regs for w in data.draw(raw_of(reg), label=reg.name)]

    values = profile.decode_block(span.table, span.start, block)

    assert [Write(span.table, span.start, block)] == profile.encode_points(values)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
@given(data=st.data())
def test_command_points_encode_and_decode_back(path, data):
    """Every write of command points decodes back to the values written."""
    profile = load_profile(path)
    commands = [r for r in profile.registers.values() if r.role is Role.COMMAND]
    values = {r.name: r.decode(data.draw(raw_of(r), label=r.name)) for r in commands}

    writes = profile.encode_points(values)

    decoded = {}
    for write in writes:
        decoded |= profile.decode_block(write.table, write.start, write.values)
    assert values == decoded


def _inside(reg: Register, span: ReadSpan) -> bool:
    return reg.table is span.table and span.start <= reg.wire_address < span.end


def test_reads_split_at_gaps_and_at_the_read_limit(tmp_path):
    """A read never crosses an undefined address nor exceeds max_read_registers."""
    path = write_broken(
        tmp_path,
        "lift.toml",
        ("device", "max_read_registers = 64", "max_read_registers = 6"),
    )
    profile = load_profile(path)

    spans = profile.reads(["status", "info"])

    assert spans == [
        ReadSpan(Table.INPUT, 0, 6),
        ReadSpan(Table.INPUT, 6, 4),
        ReadSpan(Table.INPUT, 100, 1),
    ]
