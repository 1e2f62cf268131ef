"""Slot allocation: which free slot a measured car goes to.

The core asks an `Allocator` once per store job, after the bay check, with a
read-only `TowerView` of the tower. The view shows what smarter policies need
(slot properties, cars, reservations, blocks, travel estimates from the
physics) without copying anything: it reads the core's live tables. The core
checks the answer (a slot that is not free or does not fit is a bug in the
allocator and stops the job), so a policy cannot corrupt the inventory.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Protocol

from tower.config import SizeClass, TowerConfig
from tower.core.events import Event, StoreRequested
from tower.core.inventory import TowerSlots
from tower.core.model import SizeRules, Slot, SlotId, Travel


class TowerView:
    """A read-only window on one tower's slots, for allocation policies."""

    def __init__(
        self,
        config: TowerConfig,
        slots: TowerSlots,
        sizes: SizeRules,
        travel: Travel,
    ) -> None:
        self.config = config
        self.travel = travel
        self._slots = slots
        self._sizes = sizes
        self.now = 0.0
        """When the car was measured (core clock, s)."""
        self.expected_departure_s: float | None = None
        """The store request's departure estimate (core clock, s), if any."""
        self.wants_charger = False
        """Whether the driver asked to charge."""
        self.ticket: str | None = None
        """The ticket of the car being placed."""

    def asking(self, now: float, request: Event | None) -> TowerView:
        """The same window, for one store: its time and its request's hints."""
        view = copy.copy(self)
        view.now = now
        if isinstance(request, StoreRequested):
            view.expected_departure_s = request.expected_departure_s
            view.wants_charger = request.wants_charger
            view.ticket = request.ticket
        return view

    @property
    def tower(self) -> str:
        """The tower id."""
        return self.config.id

    @property
    def slots(self) -> list[Slot]:
        """Every slot, in (level, column, side) order."""
        return self._slots.order

    def slot(self, slot_id: SlotId) -> Slot:
        """One slot's properties."""
        return self._slots.by_id[slot_id]

    def is_free(self, slot: Slot) -> bool:
        """Enabled, not blocked, not reserved, holding no car."""
        return self._slots.is_free(slot)

    def fits(self, slot: Slot, size: SizeClass) -> bool:
        """Whether the slot takes a car of class `size`."""
        return self._sizes.fits(slot.size, size)

    def free_slots(self, size: SizeClass) -> Iterator[Slot]:
        """Free slots taking a car of class `size`, in (level, column, side) order."""
        return (s for s in self._slots.free() if self._sizes.fits(s.size, size))

    def car_at(self, slot: Slot) -> str | None:
        """The ticket of the car in the slot, or None."""
        return self._slots.car_at(slot)

    def reserved_by(self, slot: Slot) -> str | None:
        """The job id holding the slot for a store, or None."""
        return self._slots.reserved.get(slot.id)

    def blocked(self, slot: Slot) -> str | None:
        """Why the slot is blocked, or None."""
        return self._slots.blocked.get(slot.id)

    def store_estimate_s(self, slot: Slot, bay_column: int = 1) -> float:
        """Unqueued store time from a bay at `bay_column` to the slot, s."""
        return self.travel.store_s(bay_column, slot.id)

    def retrieve_estimate_s(self, slot: Slot, bay_column: int = 1) -> float:
        """Unqueued retrieve time from the slot to a bay at `bay_column`, s."""
        return self.travel.retrieve_s(slot.id, bay_column)


class Allocator(Protocol):
    """A slot allocation policy."""

    def choose(self, tower: TowerView, size_class: SizeClass) -> SlotId | None:
        """The slot for a car of `size_class`, or None when none fits."""
        ...


class FirstFit:
    """The first free fitting slot, in (level, column, side) order.

    The baseline of the benchmark: simple, predictable, and poor (it fills the
    low levels first whatever a car's stay).
    """

    def choose(self, tower: TowerView, size_class: SizeClass) -> SlotId | None:
        """The first free slot that fits, or None."""
        for slot in tower.free_slots(size_class):
            return slot.id
        return None
