"""The tower's static layout and physics, as the core sees them.

Slots come from the tower config: levels 1..L, columns 1..C, both sides, with the
zones applied in order (later zones override earlier ones). Size classes are
ordered by their limits, so "a slot fits a car" is "the slot's class is at
least the car's class". Travel estimates use the same trapezoidal motion
profile as the plant model, from the config's physics figures; they feed the
allocator and the benchmark's lower bounds, never a deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from tower.config import Physics, Side, SiteConfig, SizeClass, TowerConfig

SIDE_LETTER = {Side.LEFT: "L", Side.RIGHT: "R"}
LETTER_SIDE = {letter: side for side, letter in SIDE_LETTER.items()}


class SlotId(NamedTuple):
    """A slot by level, column and side; ordered level first, as first-fit scans.

    `str()` gives the written form, `03-02-L`.
    """

    level: int
    column: int
    side: Side

    def __str__(self) -> str:
        return f"{self.level:02d}-{self.column:02d}-{SIDE_LETTER[self.side]}"

    @classmethod
    def parse(cls, text: str) -> SlotId:
        """Read the written form `03-02-L`; raises ValueError on anything else."""
        level, column, letter = text.split("-")
        if letter not in LETTER_SIDE:
            raise ValueError(f"not a slot id: {text!r}")
        return cls(int(level), int(column), LETTER_SIDE[letter])


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot and its fixed properties. `name` is `str(id)`, kept for speed."""

    id: SlotId
    name: str
    size: SizeClass
    charger: bool
    disabled: bool

    def sensor_bit(self) -> int:
        """Index of this slot in its level shuttle's `slot_sensors`."""
        return (self.id.column - 1) * 2 + (0 if self.id.side is Side.LEFT else 1)


def build_slots(tower: TowerConfig) -> list[Slot]:
    """Every slot of a tower in (level, column, side) order, zones applied."""
    slots = []
    for level in range(1, tower.levels + 1):
        for column in range(1, tower.columns + 1):
            for side in (Side.LEFT, Side.RIGHT):
                size, charger, disabled = SizeClass.STANDARD, False, False
                for zone in tower.zones:
                    if zone.levels is not None and level not in zone.levels:
                        continue
                    if zone.columns is not None and column not in zone.columns:
                        continue
                    if zone.sides is not None and side not in zone.sides:
                        continue
                    size = zone.size if zone.size is not None else size
                    charger = zone.charger if zone.charger is not None else charger
                    disabled = zone.disabled if zone.disabled is not None else disabled
                slot_id = SlotId(level, column, side)
                slots.append(Slot(slot_id, str(slot_id), size, charger, disabled))
    return slots


class SizeRules:
    """The site's size classes, smallest first, and how a measured car maps to one."""

    def __init__(self, site: SiteConfig) -> None:
        limits = site.sizes
        self.order: list[SizeClass] = sorted(
            limits,
            key=lambda c: (
                limits[c].max_height_mm,
                limits[c].max_length_mm,
                limits[c].max_width_mm,
                limits[c].max_weight_class,
            ),
        )
        self._limits = limits
        self._rank = {size: rank for rank, size in enumerate(self.order)}
        # A class the site file does not list fits above every listed one.
        self._unlisted = len(self.order)

    def rank(self, size: SizeClass) -> int:
        """Position of a class in the smallest-first order."""
        return self._rank.get(size, self._unlisted)

    def fits(self, slot_size: SizeClass, car_size: SizeClass) -> bool:
        """Whether a slot of `slot_size` takes a car of `car_size`."""
        return self.rank(slot_size) >= self.rank(car_size)

    def classify(
        self, length_mm: float, width_mm: float, height_mm: float, weight_class: int
    ) -> SizeClass | None:
        """The smallest class whose limits the car keeps within, or None."""
        for size in self.order:
            lim = self._limits[size]
            if (
                height_mm <= lim.max_height_mm
                and length_mm <= lim.max_length_mm
                and width_mm <= lim.max_width_mm
                and weight_class <= lim.max_weight_class
            ):
                return size
        return None


def travel_s(distance_m: float, speed_m_s: float, accel_m_s2: float) -> float:
    """Time of a trapezoidal (or, if short, triangular) move from rest to rest."""
    if distance_m <= 0:
        return 0.0
    ramp_m = speed_m_s * speed_m_s / accel_m_s2  # accelerating and braking together
    if distance_m <= ramp_m:
        return 2.0 * math.sqrt(distance_m / accel_m_s2)
    return distance_m / speed_m_s + speed_m_s / accel_m_s2


class Travel:
    """Motion time estimates of one tower, from its physics figures."""

    def __init__(self, physics: Physics) -> None:
        self.physics = physics

    def lift_s(self, from_level: int, to_level: int) -> float:
        """Lift travel between two levels, s."""
        p = self.physics
        distance = abs(to_level - from_level) * p.level_height_m
        return travel_s(distance, p.lift_speed_m_s, p.lift_accel_m_s2)

    def shuttle_s(self, from_column: int, to_column: int) -> float:
        """Shuttle travel between two columns (0 is the lift), s."""
        p = self.physics
        distance = abs(to_column - from_column) * p.column_pitch_m
        return travel_s(distance, p.shuttle_speed_m_s, p.shuttle_accel_m_s2)

    def store_s(self, bay_column: int, slot: SlotId) -> float:
        """A store with every device waiting where the plan needs it, no queue, s.

        Check, pick at the bay, back to the lift, hand to the lift, lift up,
        hand to the level shuttle, out to the column, place.
        """
        p = self.physics
        return (
            p.bay_check_s
            + self.shuttle_s(0, bay_column)
            + 3 * p.transfer_s  # pick at bay, place on lift, pick from lift
            + self.shuttle_s(bay_column, 0)
            + self.lift_s(0, slot.level)
            + self.shuttle_s(0, slot.column)
            + p.transfer_s  # place in slot
        )

    def retrieve_s(self, slot: SlotId, bay_column: int) -> float:
        """A retrieve with the level shuttle at its column and the lift at its level.

        Pick from the slot, back to the lift, hand over, lift down, hand to
        the ground shuttle, out to the bay, place in the bay (door release not
        counted).
        """
        p = self.physics
        return (
            p.transfer_s
            + self.shuttle_s(slot.column, 0)
            + 2 * p.transfer_s
            + self.lift_s(slot.level, 0)
            + self.shuttle_s(0, bay_column)
            + p.transfer_s
        )
