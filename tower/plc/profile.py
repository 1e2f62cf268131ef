"""PLC profiles: one TOML file per PLC type maps the logical points to registers.

Theory of operation. A profile file has a `[device]` table (what the PLC is and
how it wants to be talked to) and one `[registers.<point>]` table per register.
Loading goes in three passes and collects every problem before it reports:

1. the file parses (TOML syntax, with the line of the error);
2. `[device]` and each register validate on their own against the pydantic
   models below (types, ranges, unknown keys), so one bad register does not
   hide the problems of the next;
3. the rules that span registers run on what validated: the points the device
   kind requires and their roles and types, the enum names the core relies on,
   overlapping addresses, address ranges, the status block fitting one read.

The result is a `Profile`: a frozen description the driver and the simulator
share. It computes the status reads of a poll (`status_reads`), decodes a read
block into point values (`decode_block`) and encodes point values into writes
(`encode_points`). Addresses in a Profile's reads and writes are wire
addresses (0-based protocol addresses); `Register.address` keeps the documented
number so that problems and logs match the vendor's manual.

The format is documented in plc_profiles/README.md.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tower.plc import points
from tower.plc.codec import BadValue, Codec, DataType, Table, WordOrder
from tower.plc.points import DeviceKind
from tower.tomlsource import Problem, TomlSource, ValidationProblems

__all__ = [
    "BadValue",
    "Bit",
    "DataType",
    "EnumValue",
    "Profile",
    "ReadSpan",
    "Register",
    "Role",
    "Table",
    "WordOrder",
    "Write",
    "check_main",
    "check_profile",
    "load_profile",
]

# Modbus caps one request: 125 registers or 2000 bits read, 123 registers or
# 1968 bits written (Modbus application protocol v1.1b3, functions 3/4, 1/2,
# 16 and 15).
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TABLE_ORDER = (Table.HOLDING, Table.INPUT, Table.COIL, Table.DISCRETE_INPUT)


class Role(StrEnum):
    """What the controller does with a register."""

    STATUS = "status"  # Read on every poll.
    COMMAND = "command"  # Written by the controller.
    INFO = "info"  # Documented and decoded when read, never polled nor written.


# ---- the file, as pydantic models --------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnumValue(_Model):
    """One code of an enum register."""

    name: str = Field(
        description="Logical name the code decodes to (lower case, e.g. 'idle').",
        pattern=_NAME.pattern,
    )
    meaning: str = Field(
        description="What the code means, in the device documentation's words.",
        min_length=1,
    )


class Bit(_Model):
    """One named bit of a bits register."""

    bit: int = Field(description="Bit index; 0 is the least significant bit.", ge=0)
    meaning: str = Field(
        description="What the bit says when set, in the documentation's words.",
        min_length=1,
    )


class DeviceEntry(_Model):
    """The `[device]` table: what the PLC is and how it wants to be talked to."""

    kind: DeviceKind = Field(description="Device kind: lift, shuttle or bay.")
    vendor: str = Field(description="Who makes the PLC program.", min_length=1)
    model: str = Field(description="Model or program name and version.", min_length=1)
    description: str = Field("", description="What the device is, in one paragraph.")
    document: str = Field(
        "", description="The register map document (title, revision) this follows."
    )
    unit_id: int = Field(1, description="Factory Modbus unit id.", ge=0, le=255)
    address_base: Literal[0, 1] = Field(
        0,
        description=(
            "How the documentation numbers registers: 0 means the documented "
            "number is the wire address, 1 means documented 1 is wire address 0."
        ),
    )
    word_order: WordOrder = Field(
        WordOrder.BIG, description="Default word order of the 32-bit registers."
    )
    max_read_registers: int = Field(
        MAX_READ_REGISTERS,
        description="Most holding/input registers one read may ask for.",
        ge=1,
        le=MAX_READ_REGISTERS,
    )
    max_read_bits: int = Field(
        MAX_READ_BITS,
        description="Most coils/discrete inputs one read may ask for.",
        ge=1,
        le=MAX_READ_BITS,
    )
    min_request_gap_ms: int = Field(
        0, description="Quiet time the device needs between two requests, ms.", ge=0
    )
    heartbeat_timeout_ms: int = Field(
        2000,
        description=(
            "The PLC stops motion and faults heartbeat_lost when heartbeat_ctl "
            "has not changed for this long, ms."
        ),
        gt=0,
    )
    caveats: list[str] = Field(
        default_factory=list, description="Quirks of the device, one sentence each."
    )


class RegisterEntry(_Model):
    """One `[registers.<point>]` table, as written in the file."""

    label: str = Field(description="The register's name in the documentation.")
    table: Table = Field(description="holding, input, coil or discrete_input.")
    address: int = Field(description="Address as documented (see address_base).", ge=0)
    type: DataType = Field(description="u16, i16, u32, i32, f32, bits, enum or bool.")
    role: Role = Field(description="status, command or info.")
    description: str = Field(description="What the register holds.", min_length=1)
    unit: str | None = Field(None, description="Engineering unit, after the scale.")
    scale: float = Field(
        1, description="Engineering value = raw * scale (numbers only).", gt=0
    )
    word_order: WordOrder | None = Field(
        None, description="Overrides the device's word order (32-bit types only)."
    )
    count: int = Field(1, description="Words of a bits register.", ge=1)
    values: dict[str, EnumValue] = Field(
        default_factory=dict, description="Enum codes (decimal keys) and their names."
    )
    bits: dict[str, Bit] = Field(
        default_factory=dict, description="Named bits of a bits register."
    )


# ---- the loaded profile ----------------------------------------------------


@dataclass(frozen=True)
class ReadSpan:
    """One read request: `count` registers (or bits) from wire address `start`."""

    table: Table
    start: int
    count: int

    @property
    def end(self) -> int:
        """The first wire address after the span."""
        return self.start + self.count


@dataclass(frozen=True)
class Write:
    """One write request: `values` from wire address `start`, in one request."""

    table: Table
    start: int
    values: list[int] | list[bool]


@dataclass(frozen=True)
class Register:
    """One register of a profile, with its defaults resolved.

    `address` is the documented address, `wire_address` the 0-based protocol
    address; `words` the width in 16-bit words (1 for a coil or discrete input).
    `values` maps enum codes to their names and meanings; `bits` the named bits.
    """

    name: str
    label: str
    table: Table
    address: int
    wire_address: int
    type: DataType
    role: Role
    description: str
    unit: str | None
    scale: float
    word_order: WordOrder
    count: int
    values: Mapping[int, EnumValue]
    bits: Mapping[str, Bit]
    codec: Codec = field(repr=False, compare=False)

    @property
    def words(self) -> int:
        """Width in 16-bit words (bits registers: count); 1 for coil/discrete."""
        return self.codec.words

    @property
    def end(self) -> int:
        """The first wire address after the register."""
        return self.wire_address + self.words

    def decode(self, raw: Sequence[int] | Sequence[bool]) -> Any:
        """The point value of the raw words; raises BadValue on bad data."""
        return self.codec.decode(raw)

    def encode(self, value: Any) -> list[int] | list[bool]:
        """The raw words of a point value; raises ValueError if it does not fit."""
        return self.codec.encode(value)

    def meaning(self, name: str) -> str:
        """The documented meaning of an enum name or a bit name."""
        for value in self.values.values():
            if value.name == name:
                return value.meaning
        if name in self.bits:
            return self.bits[name].meaning
        raise KeyError(f"register {self.name} has no value or bit named {name!r}")


@dataclass(frozen=True, eq=False)
class Profile:
    """A validated PLC profile. Build it with `load_profile`.

    Profiles compare and hash by identity: load a file once and share it.
    """

    kind: DeviceKind
    vendor: str
    model: str
    description: str
    document: str
    unit_id: int
    address_base: int
    word_order: WordOrder
    max_read_registers: int
    max_read_bits: int
    min_request_gap_ms: int
    heartbeat_timeout_ms: int
    caveats: tuple[str, ...]
    registers: Mapping[str, Register]
    source: Path | None = None

    def register(self, name: str) -> Register:
        """The register of a point; KeyError naming the profile if there is none."""
        try:
            return self.registers[name]
        except KeyError:
            raise KeyError(
                f"profile {self.vendor} {self.model} has no register {name!r}"
            ) from None

    @cached_property
    def _by_table(self) -> dict[Table, list[Register]]:
        tables: dict[Table, list[Register]] = {t: [] for t in _TABLE_ORDER}
        for reg in self.registers.values():
            tables[reg.table].append(reg)
        for regs in tables.values():
            regs.sort(key=lambda r: r.wire_address)
        return tables

    def reads(self, roles: Iterable[Role | str] = (Role.STATUS,)) -> list[ReadSpan]:
        """Read spans covering every register of the given roles.

        A span only covers addresses the profile defines (a real PLC may answer
        "illegal data address" for a hole), so it runs through other registers
        but never across a gap, and it holds at most max_read_registers words
        (max_read_bits for the bit tables). Registers are never split.
        """
        wanted_roles = {Role(r) for r in roles}
        spans: list[ReadSpan] = []
        for table in _TABLE_ORDER:
            limit = self.max_read_bits if table.holds_bits else self.max_read_registers
            start = end = -1
            previous_end = -1  # end of the last register seen: spots gaps
            for reg in self._by_table[table]:
                contiguous = reg.wire_address == previous_end
                previous_end = reg.end
                if start >= 0 and not contiguous:
                    spans.append(ReadSpan(table, start, end - start))
                    start = -1
                if reg.role not in wanted_roles:
                    continue
                if start >= 0 and reg.end - start > limit:
                    spans.append(ReadSpan(table, start, end - start))
                    start = -1
                if start < 0:
                    start = reg.wire_address
                end = reg.end
            if start >= 0:
                spans.append(ReadSpan(table, start, end - start))
        return spans

    def status_reads(self) -> list[ReadSpan]:
        """The reads of one poll: every status register, in as few spans as fit.

        Every shipped profile needs exactly one.
        """
        return self.reads((Role.STATUS,))

    def decode_block(
        self, table: Table | str, start: int, data: Sequence[int] | Sequence[bool]
    ) -> dict[str, Any]:
        """Decode every register lying wholly inside a block read from `table`.

        `start` is the wire address of data[0]; pass exactly what was asked
        for (pymodbus pads bit reads to a multiple of 8). Raises BadValue at the
        first register the device filled with bad data.
        """
        table = Table(table)
        end = start + len(data)
        decoded: dict[str, Any] = {}
        for reg in self._by_table[table]:
            if reg.wire_address >= start and reg.end <= end:
                offset = reg.wire_address - start
                decoded[reg.name] = reg.decode(data[offset : offset + reg.words])
        return decoded

    def encode_points(self, values: Mapping[str, Any]) -> list[Write]:
        """Writes that put these point values in their registers.

        Registers of one table that stand next to each other are merged into
        one write, in address order (up to 123 registers or 1968 coils per
        write). Raises KeyError for an unknown point and ValueError for a value
        its register cannot hold. Input and discrete-input registers are
        encoded too (the simulator fills its tables this way); a Modbus client
        can only send the holding and coil writes.
        """
        regs = sorted(
            (self.register(name) for name in values),
            key=lambda r: (_TABLE_ORDER.index(r.table), r.wire_address),
        )
        writes: list[Write] = []
        for reg in regs:
            raw = reg.encode(values[reg.name])
            last = writes[-1] if writes else None
            limit = MAX_WRITE_BITS if reg.table.holds_bits else MAX_WRITE_REGISTERS
            if (
                last is not None
                and last.table is reg.table
                and last.start + len(last.values) == reg.wire_address
                and len(last.values) + len(raw) <= limit
            ):
                last.values.extend(raw)  # type: ignore[arg-type]
            else:
                writes.append(Write(reg.table, reg.wire_address, list(raw)))
        return writes

    def enum(self, name: str) -> Mapping[int, EnumValue]:
        """The codes of an enum point, for consoles and alarm texts."""
        reg = self.register(name)
        if reg.type is not DataType.ENUM:
            raise KeyError(f"register {name!r} is {reg.type.value}, not an enum")
        return reg.values

    @property
    def faults(self) -> dict[str, str]:
        """Every fault name of the device and its documented meaning."""
        return {v.name: v.meaning for v in self.enum("fault_code").values()}

    def fault_meaning(self, name: str) -> str:
        """The documented meaning of a fault name (as `fault_code` decodes)."""
        return self.register("fault_code").meaning(name)

    def summary(self) -> str:
        """'lift Vendor Model, N registers', for check output and logs."""
        count = len(self.registers)
        return f"{self.kind.value} {self.vendor} {self.model}, {count} registers"


# ---- loading and checking ----------------------------------------------------

# The data types each required point may have.
_COUNTS = (DataType.U16, DataType.I16)
_NUMBERS = (DataType.U16, DataType.I16, DataType.U32, DataType.I32, DataType.F32)
_POINT_TYPES: dict[str, tuple[DataType, ...]] = {
    "state": (DataType.ENUM,),
    "result": (DataType.ENUM,),
    "fault_code": (DataType.ENUM,),
    "cmd_code": (DataType.ENUM,),
    "cmd_side": (DataType.ENUM,),
    "seq_accepted": (DataType.U16,),
    "seq_done": (DataType.U16,),
    "cmd_seq": (DataType.U16,),
    "heartbeat": (DataType.U16,),
    "heartbeat_ctl": (DataType.U16,),
    "reset": (DataType.U16, DataType.BOOL),
    "flags": (DataType.BITS,),
    "slot_sensors": (DataType.BITS,),
    "level": _COUNTS,
    "column": _COUNTS,
    "cmd_target": _COUNTS,
    "vehicle_weight_class": _COUNTS,
    "position_mm": _NUMBERS,
    "vehicle_length_mm": _NUMBERS,
    "vehicle_width_mm": _NUMBERS,
    "vehicle_height_mm": _NUMBERS,
}

# Enum points whose names must equal an enum of points.py ("exact": the core
# must understand every name the PLC can report) or include it ("covers": a
# command enum may document vendor commands the controller never sends).
_ENUM_RULES: dict[str, tuple[type[StrEnum] | None, bool]] = {
    "state": (points.DeviceState, True),
    "result": (points.Result, True),
    "cmd_code": (None, False),  # the kind's command enum, points.COMMANDS
    "cmd_side": (points.TransferSide, False),
}

# Status points read in one request, so a poll never mixes the seq_done of one
# moment with the result of another.
_HANDSHAKE = ("state", "seq_accepted", "seq_done", "result", "fault_code")

# Command points written in one request before cmd_code (DESIGN.md section 4).
_COMMAND_BLOCK = ("cmd_target", "cmd_side", "cmd_seq")

_TOP_KEYS = ("device", "registers")


class _Loader:
    """Builds a Profile from a TomlSource, collecting every problem."""

    def __init__(self, source: TomlSource) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(self, loc: Sequence[str | int], message: str) -> None:
        self.problems.append(self.source.problem([str(p) for p in loc], message))

    def add_at(self, loc: Sequence[str], line_loc: Sequence[str], message: str) -> None:
        """A problem named by loc, on the line of line_loc (for missing keys)."""
        problem = self.source.problem(loc, message)
        line = self.source.line_of(line_loc)
        self.problems.append(Problem(problem.file, line, problem.field, message))

    def validate(self, model: type[BaseModel], data: Any, prefix: Sequence[str]) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                self.add([*prefix, *(str(p) for p in err["loc"])], err["msg"])
            return None

    def load(self) -> Profile | None:
        data = self.source.data
        for key in data:
            if key not in _TOP_KEYS:
                self.add([key], "unknown table; a profile has [device] and [registers]")
        device = self.validate(DeviceEntry, data.get("device", {}), ["device"])

        raw_registers = data.get("registers", {})
        if not isinstance(raw_registers, dict) or not raw_registers:
            self.add(["registers"], "needs at least one [registers.<point>] table")
            raw_registers = {}
        entries: dict[str, RegisterEntry] = {}
        for name, raw in raw_registers.items():
            loc = ["registers", name]
            if not _NAME.match(name):
                self.add(loc, "point names are lower case letters, digits and _")
            entry = self.validate(RegisterEntry, raw, loc)
            if entry is not None:
                entries[name] = entry

        # A bad [device] must not hide the registers' problems: check them
        # against what of [device] is usable.
        kind, base, order = _usable_device(device, data.get("device", {}))

        registers = {}
        for name, entry in entries.items():
            reg = self._register(base, order, name, entry)
            if reg is not None:
                registers[name] = reg
        complete = len(registers) == len(raw_registers)
        if kind is not None:
            self._check_points(kind, registers, complete)
        self._check_overlaps(registers)
        if device is None:
            return None

        profile = Profile(
            kind=device.kind,
            vendor=device.vendor,
            model=device.model,
            description=device.description,
            document=device.document,
            unit_id=device.unit_id,
            address_base=device.address_base,
            word_order=device.word_order,
            max_read_registers=device.max_read_registers,
            max_read_bits=device.max_read_bits,
            min_request_gap_ms=device.min_request_gap_ms,
            heartbeat_timeout_ms=device.heartbeat_timeout_ms,
            caveats=tuple(device.caveats),
            registers=registers,
            source=self.source.path,
        )
        if complete:  # a register left out would show up as a gap in the reads
            self._check_reads(profile)
        return profile

    # -- one register --

    def _register(
        self, base: int, device_order: WordOrder, name: str, entry: RegisterEntry
    ) -> Register | None:
        loc = ["registers", name]
        before = len(self.problems)
        kind = entry.type

        if entry.table.holds_bits and kind is not DataType.BOOL:
            width = "a 32-bit type needs two words" if kind.is_wide else "use bool"
            self.add(
                [*loc, "type"],
                f"a {entry.table.value} holds one bit per address; "
                f"{kind.value} cannot live there ({width})",
            )
        if kind is DataType.BOOL and not entry.table.holds_bits:
            self.add([*loc, "type"], "bool lives in a coil or discrete_input table")
        if entry.role is Role.COMMAND and not entry.table.writable:
            self.add(
                [*loc, "table"],
                f"a command register must be writable (holding or coil), "
                f"not {entry.table.value}",
            )
        if not kind.is_number and "scale" in entry.model_fields_set:
            self.add([*loc, "scale"], f"scale applies to numbers, not {kind.value}")
        if entry.word_order is not None and not kind.is_wide:
            self.add([*loc, "word_order"], "word_order applies to 32-bit types only")
        if kind is not DataType.BITS and entry.count != 1:
            self.add([*loc, "count"], "count applies to bits registers only")
        if kind is not DataType.BITS and entry.bits:
            self.add([*loc, "bits"], "named bits belong to a bits register")
        if kind is not DataType.ENUM and entry.values:
            self.add([*loc, "values"], "values belong to an enum register")

        codes = self._codes(loc, entry) if kind is DataType.ENUM else {}
        if kind is DataType.BITS:
            self._bits(loc, entry)

        wire = entry.address - base
        width = Codec(type=kind, count=entry.count).words
        if wire < 0:
            self.add(
                [*loc, "address"],
                "address 0 does not exist: address_base = 1 numbers registers from 1",
            )
        elif wire + width > 0x1_0000:
            self.add(
                [*loc, "address"],
                f"register runs past the last address ({0xFFFF + base} with "
                f"address_base = {base})",
            )
        if len(self.problems) > before:
            return None

        word_order = entry.word_order or device_order
        codec = Codec(
            type=kind,
            count=entry.count,
            word_order=word_order,
            scale=entry.scale,
            codes={code: v.name for code, v in codes.items()},
            bits={bit_name: bit.bit for bit_name, bit in entry.bits.items()},
            register=name,
            label=entry.label,
            table=entry.table,
            address=entry.address,
            unit=entry.unit,
        )
        return Register(
            name=name,
            label=entry.label,
            table=entry.table,
            address=entry.address,
            wire_address=wire,
            type=kind,
            role=entry.role,
            description=entry.description,
            unit=entry.unit,
            scale=entry.scale,
            word_order=word_order,
            count=entry.count,
            values=dict(sorted(codes.items())),
            bits=dict(entry.bits),
            codec=codec,
        )

    def _codes(self, loc: list[str], entry: RegisterEntry) -> dict[int, EnumValue]:
        if not entry.values:
            self.add([*loc, "values"], "an enum needs at least one value")
        codes: dict[int, EnumValue] = {}
        names: dict[str, str] = {}
        for key, value in entry.values.items():
            here = [*loc, "values", key]
            if not key.isdigit() or int(key) > 0xFFFF:
                self.add(here, "an enum code is a decimal number 0..65535")
                continue
            code = int(key)
            if code in codes:
                self.add(here, f"code {code} is given twice")
                continue
            if value.name in names:
                self.add(
                    [*here, "name"],
                    f"name {value.name!r} is also code {names[value.name]}",
                )
                continue
            codes[code] = value
            names[value.name] = key
        return codes

    def _bits(self, loc: list[str], entry: RegisterEntry) -> None:
        width = 16 * entry.count
        taken: dict[int, str] = {}
        for bit_name, bit in entry.bits.items():
            here = [*loc, "bits", bit_name]
            if not _NAME.match(bit_name):
                self.add(here, "bit names are lower case letters, digits and _")
            if bit.bit >= width:
                self.add(
                    [*here, "bit"],
                    f"bit {bit.bit} outside the register's {width} bits "
                    f"(0..{width - 1}, count = {entry.count})",
                )
            elif bit.bit in taken:
                self.add([*here, "bit"], f"bit {bit.bit} is also {taken[bit.bit]!r}")
            else:
                taken[bit.bit] = bit_name

    # -- rules across registers --

    def _check_points(
        self, kind: DeviceKind, registers: dict[str, Register], complete: bool
    ) -> None:
        for role, names in points.REQUIRED[kind].items():
            for name in names:
                loc = ["registers", name]
                reg = registers.get(name)
                if reg is None:
                    if complete or name not in self.source.data.get("registers", {}):
                        self.add_at(
                            loc,
                            ["device", "kind"],
                            f"a {kind.value} needs the {role} point {name!r}",
                        )
                    continue
                if reg.role.value != role:
                    self.add([*loc, "role"], f"{name} is a {role} point")
                allowed = _POINT_TYPES.get(name)
                if allowed and reg.type not in allowed:
                    wanted = " or ".join(t.value for t in allowed)
                    self.add([*loc, "type"], f"{name} must be {wanted}")
                    continue
                self._check_point(kind, reg)

    def _check_point(self, kind: DeviceKind, reg: Register) -> None:
        loc = ["registers", reg.name]
        names = {v.name for v in reg.values.values()}
        if reg.name.endswith("_mm") and reg.unit != "mm":
            self.add([*loc, "unit"], f'{reg.name} decodes to mm: set unit = "mm"')
        if reg.name in _ENUM_RULES:
            enum, exact = _ENUM_RULES[reg.name]
            enum = enum or points.COMMANDS[kind]
            needed = {str(m.value) for m in enum}
            missing = sorted(needed - names)
            if missing:
                self.add(
                    [*loc, "values"],
                    f"{reg.name} must name {', '.join(sorted(needed))}; "
                    f"missing {', '.join(missing)}",
                )
            extra = sorted(names - needed)
            if exact and extra:
                self.add(
                    [*loc, "values"],
                    f"{reg.name} names only {', '.join(sorted(needed))}; "
                    f"unknown {', '.join(extra)}",
                )
        if reg.name == "fault_code":
            zero = reg.values.get(0)
            if zero is None or zero.name != "none":
                self.add([*loc, "values", "0"], 'fault code 0 must be named "none"')
            missing = [f for f in points.REQUIRED_FAULTS if f not in names]
            if missing:
                self.add(
                    [*loc, "values"],
                    f"fault_code must name {', '.join(points.REQUIRED_FAULTS)}; "
                    f"missing {', '.join(missing)}",
                )
        if reg.name == "flags":
            missing = [f for f in points.REQUIRED_FLAGS[kind] if f not in reg.bits]
            if missing:
                self.add(
                    [*loc, "bits"],
                    f"flags of a {kind.value} must name bits "
                    f"{', '.join(points.REQUIRED_FLAGS[kind])}; "
                    f"missing {', '.join(missing)}",
                )
        if reg.name == "slot_sensors" and reg.bits:
            self.add(
                [*loc, "bits"],
                "slot_sensors is a bit array: bit (column - 1) * 2 + side, no names",
            )

    def _check_overlaps(self, registers: dict[str, Register]) -> None:
        # Of two overlapping registers, the one written later in the file is
        # blamed: it is the one an author adding a register just wrote.
        order = {name: i for i, name in enumerate(registers)}
        by_table: dict[Table, list[Register]] = {}
        for reg in registers.values():
            by_table.setdefault(reg.table, []).append(reg)
        for regs in by_table.values():
            regs.sort(key=lambda r: (r.wire_address, order[r.name]))
            previous: Register | None = None
            for reg in regs:
                if previous is not None and reg.wire_address < previous.end:
                    last = previous.address + previous.words - 1
                    self.add(
                        ["registers", reg.name, "address"],
                        f"overlaps {previous.name} ({previous.table.value} "
                        f"{previous.address}..{last})",
                    )
                if previous is None or reg.end > previous.end:
                    previous = reg

    def _check_reads(self, profile: Profile) -> None:
        spans = profile.status_reads()
        for reg in profile.registers.values():
            too_wide = reg.words > profile.max_read_registers
            if reg.role is Role.STATUS and not reg.table.holds_bits and too_wide:
                self.add(
                    ["registers", reg.name, "count"],
                    f"{reg.words} words do not fit one read "
                    f"(max_read_registers = {profile.max_read_registers})",
                )
        present = [n for n in _HANDSHAKE if n in profile.registers]
        if not present:
            return
        where = {
            name: next(
                (i for i, s in enumerate(spans) if _inside(profile.registers[name], s)),
                -1,
            )
            for name in present
        }
        if len(set(where.values())) > 1:
            tables = {profile.registers[n].table for n in present}
            why = (
                f"they need more than max_read_registers = {profile.max_read_registers}"
                if len(tables) == 1
                else "they stand in different tables"
            )
            self.add_at(
                ["device", "max_read_registers"],
                ["device", "max_read_registers"],
                f"{', '.join(present)} must come in one read so a status is never "
                f"torn; {why} or there is a gap between them",
            )
        self._check_command_block(profile)

    def _check_command_block(self, profile: Profile) -> None:
        regs = [profile.registers[n] for n in _COMMAND_BLOCK if n in profile.registers]
        if len(regs) < 2:
            return
        regs.sort(key=lambda r: (r.table.value, r.wire_address))
        joined = all(
            a.table is b.table and a.end == b.wire_address
            for a, b in itertools.pairwise(regs)
        )
        if not joined:
            names = ", ".join(r.name for r in regs)
            self.add(
                ["registers", regs[-1].name, "address"],
                f"{names} are written in one request: "
                "they must stand next to each other in one table",
            )


def _usable_device(
    device: DeviceEntry | None, raw: Any
) -> tuple[DeviceKind | None, int, WordOrder]:
    """Kind, address base and word order of [device], even if it did not validate.

    A value that is itself invalid is left out (kind None: the point rules
    cannot run) or replaced by its default.
    """
    if device is not None:
        return device.kind, device.address_base, device.word_order
    raw = raw if isinstance(raw, dict) else {}
    kinds = {k.value: k for k in DeviceKind}
    orders = {o.value: o for o in WordOrder}
    raw_kind = raw.get("kind")
    kind = kinds.get(raw_kind) if isinstance(raw_kind, str) else None
    base = raw.get("address_base", 0)
    base = base if base in (0, 1) and not isinstance(base, bool) else 0
    raw_order = raw.get("word_order")
    order = (
        orders.get(raw_order, WordOrder.BIG)
        if isinstance(raw_order, str)
        else (WordOrder.BIG)
    )
    return kind, base, order


def _inside(reg: Register, span: ReadSpan) -> bool:
    return reg.table is span.table and span.start <= reg.wire_address < span.end


def _load(path: str | Path) -> tuple[Profile | None, list[Problem]]:
    try:
        source = TomlSource.read(path)
    except ValidationProblems as exc:
        return None, exc.problems
    loader = _Loader(source)
    profile = loader.load()
    return profile, loader.problems


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file.

    Raises ValidationProblems listing every problem with its file, line and field.
    """
    profile, problems = _load(path)
    if problems or profile is None:
        raise ValidationProblems(problems)
    return profile


def check_profile(path: str | Path) -> list[Problem]:
    """Every problem of a profile file; an empty list when it is sound."""
    return _load(path)[1]


def check_main(paths: Sequence[str], *, out: Any = None) -> int:
    """`tower profile check FILE...`: print each file's problems or OK.

    Prints one problem per line as `file:line: field: message`, or
    `file: OK (kind vendor model, N registers)`. Returns 1 if any file has a
    problem, else 0.
    """
    failed = False
    for path in paths:
        profile, problems = _load(path)
        if problems or profile is None:
            failed = True
            for problem in problems:
                print(problem, file=out)
        else:
            print(f"{path}: OK ({profile.summary()})", file=out)
    return 1 if failed else 0
