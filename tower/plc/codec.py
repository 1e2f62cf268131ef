"""Typed register values to and from Modbus words and bits.

Theory of operation. A Modbus device exposes four tables: holding and input
registers hold 16-bit words, coils and discrete inputs hold single bits. A
register of a profile is a run of consecutive words (or one bit) with a data
type. `Codec` turns the raw words of one register into its engineering value
and back:

- u16, i16: one word, unsigned or two's complement;
- u32, i32, f32: two words; `word_order` "big" sends the high word first (at
  the lower address), "little" the low word first. The bytes inside a word are
  always big-endian, as the Modbus wire format fixes them;
- enum: one u16 word whose codes map to names; a code the profile does not list
  is bad data (`BadValue`), never a value;
- bits: `count` words read as one bit array, bit 0 of the first word first
  (word order does not apply: bit i lives in word i // 16, bit i % 16). With
  named bits it decodes to ``dict[str, bool]``, without names to ``list[bool]``
  of length 16 * count;
- bool: one coil or discrete input.

Numbers carry a scale: engineering value = raw * scale. Integer types decode to
``int`` when the scale is a whole number and to ``float`` otherwise, so a
register always decodes to the same Python type. The arithmetic is exact
(fractions), so a raw 12345 with scale 0.1 decodes to 1234.5, not
1234.5000000000002. Encoding divides by the scale, rounds to the nearest raw
value (halves away from zero) and refuses a value outside the type's range with
a ValueError naming the register.

f32 and non-finite numbers: a NaN or an infinity read from a device is bad data
(`BadValue`): no sensor measures an infinite current, and passing NaN on would
poison every comparison downstream. Encoding NaN or an infinity, or a value too
large for an f32, raises ValueError.

Two error types, on the two axes of the project's error family: `BadValue` is
the device's fault (it sent something the profile does not allow); ValueError
is ours (the caller asked to encode something the register cannot hold).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from fractions import Fraction
from numbers import Real
from typing import Any

WORD_MAX = 0xFFFF


class Table(StrEnum):
    """The four Modbus tables a register can live in."""

    HOLDING = "holding"  # 16-bit words, read and written (functions 3, 6, 16).
    INPUT = "input"  # 16-bit words, read only (function 4).
    COIL = "coil"  # Single bits, read and written (functions 1, 5, 15).
    DISCRETE_INPUT = "discrete_input"  # Single bits, read only (function 2).

    @property
    def holds_bits(self) -> bool:
        """True for the bit tables (coil, discrete_input)."""
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def writable(self) -> bool:
        """True for the tables a Modbus client can write (holding, coil)."""
        return self in (Table.HOLDING, Table.COIL)


class DataType(StrEnum):
    """How the words of a register are read."""

    U16 = "u16"  # Unsigned 16-bit integer, 0..65535.
    I16 = "i16"  # Signed 16-bit integer (two's complement), -32768..32767.
    U32 = "u32"  # Unsigned 32-bit integer in two words.
    I32 = "i32"  # Signed 32-bit integer in two words.
    F32 = "f32"  # IEEE 754 single-precision float in two words.
    BITS = "bits"  # A bit field of `count` words.
    ENUM = "enum"  # A u16 code with a name for each value.
    BOOL = "bool"  # One coil or discrete input.

    @property
    def is_number(self) -> bool:
        """True for the types that carry a scale and a unit."""
        return self in _NUMBERS

    @property
    def is_integer(self) -> bool:
        """True for the integer number types."""
        return self in _RANGES

    @property
    def is_wide(self) -> bool:
        """True for the 32-bit types, which span two words and have a word order."""
        return self in (DataType.U32, DataType.I32, DataType.F32)


class WordOrder(StrEnum):
    """Which word of a 32-bit value comes first (at the lower address)."""

    BIG = "big"  # High word first.
    LITTLE = "little"  # Low word first.


_RANGES: dict[DataType, tuple[int, int]] = {
    DataType.U16: (0, 0xFFFF),
    DataType.I16: (-0x8000, 0x7FFF),
    DataType.U32: (0, 0xFFFF_FFFF),
    DataType.I32: (-0x8000_0000, 0x7FFF_FFFF),
}
_NUMBERS = frozenset({*_RANGES, DataType.F32})


class BadValue(Exception):
    """Raised when a device reports a raw value its profile does not allow.

    The driver treats the whole read as bad data (the device's fault, retryable
    on the next poll), never as a value.
    """

    def __init__(
        self,
        *,
        register: str,
        label: str,
        table: Table,
        address: int,
        raw: Any,
        reason: str,
    ) -> None:
        self.register = register
        self.label = label
        self.table = table
        self.address = address
        self.raw = raw
        self.reason = reason
        super().__init__(
            f"register {register} ({label}, {table.value} {address}): "
            f"raw {raw!r}: {reason}"
        )


@dataclass(frozen=True)
class Codec:
    """Encodes and decodes one register.

    `codes` maps an enum's raw codes to names; `bits` maps bit names to their
    index in the bit array. `register`, `label`, `table`, `address` and `unit`
    only name the register in errors. `address` is the documented address.
    """

    type: DataType
    count: int = 1
    word_order: WordOrder = WordOrder.BIG
    scale: float = 1
    codes: Mapping[int, str] = field(default_factory=dict)
    bits: Mapping[str, int] = field(default_factory=dict)
    register: str = "?"
    label: str = ""
    table: Table = Table.HOLDING
    address: int = 0
    unit: str | None = None
    _scale: Fraction = field(init=False, repr=False, compare=False)
    _names: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # repr() gives the shortest decimal that reads back as the same float,
        # which is what the profile author wrote (0.1, not 0.1000000000000000055).
        object.__setattr__(self, "_scale", Fraction(repr(float(self.scale))))
        object.__setattr__(self, "_names", {n: c for c, n in self.codes.items()})

    @property
    def words(self) -> int:
        """Width in 16-bit words; 1 for a coil or discrete input."""
        if self.type is DataType.BITS:
            return self.count
        return 2 if self.type.is_wide else 1

    @property
    def integral(self) -> bool:
        """True when an integer type decodes to int (the scale is a whole number)."""
        return self.type.is_integer and self._scale.denominator == 1

    # ---- decoding -------------------------------------------------------

    def decode(self, raw: Sequence[int] | Sequence[bool]) -> Any:
        """The engineering value of the register's raw words (or bit).

        Raises BadValue when the device reports something the profile does not
        allow: an unknown enum code, a non-finite float.
        """
        if len(raw) != self.words:
            raise ValueError(
                f"register {self.register}: needs {self.words} raw values, "
                f"got {len(raw)}"
            )
        kind = self.type
        if kind is DataType.BOOL:
            return bool(raw[0])
        words = [int(w) for w in raw]
        if kind is DataType.ENUM:
            name = self.codes.get(words[0])
            if name is None:
                raise self._bad(words[0], "unknown enum code")
            return name
        if kind is DataType.BITS:
            flat = [bool(w >> i & 1) for w in words for i in range(16)]
            if not self.bits:
                return flat
            return {name: flat[index] for name, index in self.bits.items()}
        if kind is DataType.F32:
            number = struct.unpack(">f", struct.pack(">HH", *self._wide(words)))[0]
            if not math.isfinite(number):
                raise self._bad(words, f"f32 is {number}, not a finite number")
            return number if self._scale == 1 else number * float(self._scale)
        return self._scaled(_signed(self._join(words), kind))

    def _join(self, words: list[int]) -> int:
        if len(words) == 1:
            return words[0]
        high, low = self._wide(words)
        return high << 16 | low

    def _wide(self, words: Sequence[int]) -> tuple[int, int]:
        """(high, low) from the two words as they stand on the wire."""
        first, second = words
        if self.word_order is WordOrder.BIG:
            return first, second
        return second, first

    def _scaled(self, raw: int) -> int | float:
        if self._scale == 1:
            return raw
        value = raw * self._scale
        if self._scale.denominator == 1:
            return int(value)
        return float(value)

    def _bad(self, raw: Any, reason: str) -> BadValue:
        return BadValue(
            register=self.register,
            label=self.label,
            table=self.table,
            address=self.address,
            raw=raw,
            reason=reason,
        )

    # ---- encoding -------------------------------------------------------

    def encode(self, value: Any) -> list[int] | list[bool]:
        """The raw words (or bit) that carry `value` in this register.

        Raises ValueError, naming the register, when the value does not fit.
        """
        kind = self.type
        if kind is DataType.BOOL:
            if value not in (True, False):  # 0 and 1 compare equal to them
                raise self._wrong(value, "needs true or false (or 1 or 0)")
            return [bool(value)]
        if kind is DataType.ENUM:
            return [self._code(value)]
        if kind is DataType.BITS:
            return self._encode_bits(value)
        if not isinstance(value, Real):
            raise self._wrong(value, "needs a number")
        if not math.isfinite(value):
            raise self._wrong(value, "needs a finite number")
        if kind is DataType.F32:
            return self._encode_f32(float(value))
        return self._encode_integer(value)

    def _encode_integer(self, value: Real) -> list[int]:
        exact = Fraction(value) / self._scale  # type: ignore[arg-type]
        raw = _round_half_away(exact)
        low, high = _RANGES[self.type]
        if not low <= raw <= high:
            unit = f" {self.unit}" if self.unit else ""
            span = f"{self._scaled(low)}..{self._scaled(high)}{unit}"
            raise self._wrong(
                value,
                f"is out of range {span} (raw {raw}, {self.type.value}, "
                f"scale {self.scale:g})",
            )
        word = raw & 0xFFFF_FFFF
        if not self.type.is_wide:
            return [word & WORD_MAX]
        return self._split(word >> 16, word & WORD_MAX)

    def _encode_f32(self, value: float) -> list[int]:
        raw = value if self._scale == 1 else value / float(self._scale)
        try:
            packed = struct.pack(">f", raw)
        except OverflowError:
            raise self._wrong(value, "is too large for an f32") from None
        high, low = struct.unpack(">HH", packed)
        return self._split(high, low)

    def _split(self, high: int, low: int) -> list[int]:
        if self.word_order is WordOrder.BIG:
            return [high, low]
        return [low, high]

    def _code(self, value: Any) -> int:
        name = value.value if isinstance(value, Enum) else value
        code = self._names.get(name) if isinstance(name, str) else None
        if code is None:
            names = ", ".join(sorted(self._names))
            raise self._wrong(value, f"is not one of its names ({names})")
        return code

    def _encode_bits(self, value: Any) -> list[int]:
        width = 16 * self.count
        if isinstance(value, Mapping):
            flat = [False] * width
            for name, state in value.items():
                if name not in self.bits:
                    known = ", ".join(self.bits) or "none"
                    raise self._wrong(value, f"has no bit {name!r} (bits: {known})")
                flat[self.bits[name]] = bool(state)
        elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
            if len(value) != width:
                raise self._wrong(value, f"needs {width} bits, got {len(value)}")
            flat = [bool(b) for b in value]
        else:
            raise self._wrong(value, "needs a dict of named bits or a list of bools")
        return [
            sum(1 << i for i in range(16) if flat[w * 16 + i])
            for w in range(self.count)
        ]

    def _wrong(self, value: Any, reason: str) -> ValueError:
        return ValueError(
            f"register {self.register} ({self.label}): {value!r} {reason}"
        )


def _signed(raw: int, kind: DataType) -> int:
    """Two's complement for the signed types."""
    if kind is DataType.I16 and raw >= 0x8000:
        return raw - 0x1_0000
    if kind is DataType.I32 and raw >= 0x8000_0000:
        return raw - 0x1_0000_0000
    return raw


def _round_half_away(value: Fraction) -> int:
    """Nearest integer, halves away from zero (what a PLC engineer expects)."""
    magnitude = math.floor(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude
