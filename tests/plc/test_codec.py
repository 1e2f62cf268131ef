"""The register codec: round trips, word orders, scales, edges and bad data."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tower.plc.codec import BadValue, Codec, DataType, Table, WordOrder

INTEGERS = [DataType.U16, DataType.I16, DataType.U32, DataType.I32]
RANGES = {
    DataType.U16: (0, 2**16 - 1),
    DataType.I16: (-(2**15), 2**15 - 1),
    DataType.U32: (0, 2**32 - 1),
    DataType.I32: (-(2**31), 2**31 - 1),
}
SCALES = [1, 10, 0.1, 0.01, 0.5, 2.5]
orders = st.sampled_from(list(WordOrder))
words = st.integers(0, 0xFFFF)


@given(
    kind=st.sampled_from(INTEGERS),
    order=orders,
    scale=st.sampled_from(SCALES),
    data=st.data(),
)
def test_integer_raw_words_survive_decode_and_encode(kind, order, scale, data):
    """Any raw words of an integer type decode and encode back to themselves."""
    codec = Codec(kind, word_order=order, scale=scale)
    raw = data.draw(st.lists(words, min_size=codec.words, max_size=codec.words))

    again = codec.encode(codec.decode(raw))

    assert raw == again


@given(kind=st.sampled_from(INTEGERS), order=orders, data=st.data())
def test_integer_value_round_trips_exactly_with_whole_scale(kind, order, data):
    """With a whole-number scale, every representable value comes back unchanged."""
    scale = data.draw(st.sampled_from([1, 10, 100]))
    low, high = RANGES[kind]
    value = data.draw(st.integers(low, high)) * scale
    codec = Codec(kind, word_order=order, scale=scale)

    decoded = codec.decode(codec.encode(value))

    assert value == decoded
    assert type(decoded) is int


@given(
    kind=st.sampled_from(INTEGERS),
    order=orders,
    scale=st.sampled_from([0.1, 0.01, 0.5, 2.5]),
    data=st.data(),
)
def test_integer_value_rounds_to_nearest_step_of_the_scale(kind, order, scale, data):
    """A value between two raw steps decodes to the nearest step (a float)."""
    low, high = RANGES[kind]
    value = data.draw(st.floats(low * scale, high * scale))
    codec = Codec(kind, word_order=order, scale=scale)

    decoded = codec.decode(codec.encode(value))

    assert type(decoded) is float
    assert abs(decoded - value) <= scale / 2 * (1 + 1e-9)


@pytest.mark.parametrize("kind", INTEGERS)
def test_integer_edges_encode_and_out_of_range_is_refused(kind):
    """The extreme values of each type encode; one step beyond names the register."""
    low, high = RANGES[kind]
    codec = Codec(kind, register="position_mm", label="STS_POS", unit="mm")

    assert codec.decode(codec.encode(low)) == low
    assert codec.decode(codec.encode(high)) == high
    for outside in (low - 1, high + 1):
        with pytest.raises(ValueError, match=r"position_mm \(STS_POS\).*out of range"):
            codec.encode(outside)


def test_word_order_puts_high_or_low_word_first():
    """Big word order sends the high word first, little the low word first."""
    big = Codec(DataType.U32, word_order=WordOrder.BIG).encode(0x1234_5678)
    little = Codec(DataType.U32, word_order=WordOrder.LITTLE).encode(0x1234_5678)

    assert (big, little) == ([0x1234, 0x5678], [0x5678, 0x1234])


def test_signed_values_use_twos_complement():
    """-1 is all ones, in both 16 and 32 bits."""
    i16 = Codec(DataType.I16).encode(-1)
    i32 = Codec(DataType.I32).encode(-2)

    assert (i16, i32) == ([0xFFFF], [0xFFFF, 0xFFFE])


def test_scale_converts_raw_to_engineering_units():
    """Raw cm with scale 10 decode to mm; raw 0.1 mm with scale 0.1 decode exactly."""
    cm = Codec(DataType.I32, scale=10).decode([0xFFFF, 0xFFF6])
    tenth = Codec(DataType.U32, scale=0.1).decode([0, 12345])

    assert (cm, tenth) == (-100, 1234.5)


def test_encode_rounds_halves_away_from_zero():
    """A value exactly between two raw steps goes to the step further from zero."""
    codec = Codec(DataType.I16, scale=10)

    raws = [codec.encode(v)[0] for v in (15, 25, -15)]

    assert raws == [2, 3, 0xFFFE]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "12", None])
def test_integer_encode_refuses_what_is_not_a_finite_number(bad):
    """NaN, infinities and non-numbers do not encode into an integer register."""
    codec = Codec(DataType.U16, register="level")

    with pytest.raises(ValueError, match="level"):
        codec.encode(bad)


@given(
    value=st.floats(width=32, allow_nan=False, allow_infinity=False),
    order=orders,
)
def test_f32_round_trips_every_finite_single(value, order):
    """Every finite single-precision value comes back exactly, in both word orders."""
    codec = Codec(DataType.F32, word_order=order)

    decoded = codec.decode(codec.encode(value))

    assert struct.pack(">f", value) == struct.pack(">f", decoded)


@given(raw=st.lists(words, min_size=2, max_size=2), order=orders)
def test_f32_raw_words_decode_or_report_bad_data(raw, order):
    """Finite raw words survive decode and encode; NaN and infinity are BadValue."""
    codec = Codec(DataType.F32, word_order=order)
    high, low = raw if order is WordOrder.BIG else raw[::-1]
    number = struct.unpack(">f", struct.pack(">HH", high, low))[0]

    if math.isfinite(number):
        assert raw == codec.encode(codec.decode(raw))
    else:
        with pytest.raises(BadValue):
            codec.decode(raw)


def test_f32_scale_applies_to_the_float():
    """An f32 in tenths decodes to a tenth of its raw value."""
    codec = Codec(DataType.F32, scale=0.1)

    decoded = codec.decode(codec.encode(2.5))

    assert math.isclose(2.5, decoded)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e39])
def test_f32_encode_refuses_non_finite_and_too_large(bad):
    """NaN, infinity and values beyond the f32 range do not encode."""
    codec = Codec(DataType.F32, register="motor_current_a")

    with pytest.raises(ValueError, match="motor_current_a"):
        codec.encode(bad)


def test_f32_nan_from_the_device_is_bad_value():
    """A NaN read from a device is bad data, not a value."""
    codec = Codec(DataType.F32, register="motor_current_a", table=Table.INPUT)

    with pytest.raises(BadValue) as caught:
        codec.decode([0x7FC0, 0x0000])

    assert caught.value.register == "motor_current_a"


ENUM = Codec(
    DataType.ENUM,
    codes={0: "idle", 1: "busy", 90: "fault"},
    register="state",
    label="STS_MODE",
    table=Table.INPUT,
    address=101,
)


@given(code=st.sampled_from([0, 1, 90]))
def test_enum_round_trips_through_its_name(code):
    """A known code decodes to its name and the name encodes to the code."""
    name = ENUM.decode([code])

    assert [code] == ENUM.encode(name)


@given(code=words.filter(lambda c: c not in (0, 1, 90)))
def test_enum_unknown_code_is_bad_value(code):
    """An unknown code raises BadValue carrying the register's facts."""
    with pytest.raises(BadValue) as caught:
        ENUM.decode([code])

    facts = caught.value
    expected = ("state", "STS_MODE", Table.INPUT, 101, code)
    assert expected == (
        facts.register,
        facts.label,
        facts.table,
        facts.address,
        facts.raw,
    )
    assert facts.reason == "unknown enum code"


def test_enum_encodes_enum_members_and_refuses_unknown_names():
    """A str enum member encodes by its value; an unknown name lists the known ones."""
    from tower.plc.points import DeviceState

    assert ENUM.encode(DeviceState.BUSY) == [1]
    with pytest.raises(ValueError, match="busy, fault, idle"):
        ENUM.encode("sleeping")


NAMED = Codec(DataType.BITS, bits={"loaded": 0, "moving": 1, "estop": 15})


@given(state=st.fixed_dictionaries({n: st.booleans() for n in NAMED.bits}))
def test_named_bits_round_trip(state):
    """Named bits decode to the same dict they were encoded from."""
    decoded = NAMED.decode(NAMED.encode(state))

    assert state == decoded


def test_named_bits_ignore_unnamed_bits_and_refuse_unknown_names():
    """Unnamed bits are not reported; encoding an unknown bit name fails."""
    decoded = NAMED.decode([0b1000_0000_0000_0110])

    assert decoded == {"loaded": False, "moving": True, "estop": True}
    with pytest.raises(ValueError, match="no bit 'flying'"):
        NAMED.encode({"flying": True})


@given(count=st.integers(1, 4), data=st.data())
def test_bit_array_round_trips(count, data):
    """A bits register without names is a list of 16 * count bools."""
    codec = Codec(DataType.BITS, count=count)
    bits = data.draw(st.lists(st.booleans(), min_size=16 * count, max_size=16 * count))

    decoded = codec.decode(codec.encode(bits))

    assert bits == decoded


def test_bit_array_starts_with_bit_0_of_the_first_word():
    """Slot (column 1, right) is bit 1 of word 0; (column 9, left) bit 0 of word 1."""
    codec = Codec(DataType.BITS, count=2)

    decoded = codec.decode([0b10, 0b1])

    assert [i for i, b in enumerate(decoded) if b] == [1, 16]


@given(value=st.booleans())
def test_bool_round_trips(value):
    """A coil encodes to one bool and decodes back."""
    codec = Codec(DataType.BOOL, table=Table.COIL)

    decoded = codec.decode(codec.encode(value))

    assert value is decoded


def test_bool_accepts_one_and_zero_only():
    """1 and 0 write a coil; other numbers are refused."""
    codec = Codec(DataType.BOOL, register="reset", table=Table.COIL)

    assert (codec.encode(1), codec.encode(0)) == ([True], [False])
    with pytest.raises(ValueError, match="reset"):
        codec.encode(2)


def test_decode_refuses_the_wrong_number_of_words():
    """Passing two words to a one-word register is a caller error."""
    with pytest.raises(ValueError, match="needs 1 raw values"):
        Codec(DataType.U16).decode([1, 2])
