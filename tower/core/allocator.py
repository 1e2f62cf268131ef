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
        column = min((b.column for b in config.bays), default=1)
        self._retrieval_s = {s.id: travel.retrieve_s(s.id, column) for s in slots.order}
        self._by_retrieval = sorted(slots.order, key=lambda s: self._retrieval_s[s.id])
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

    def retrieval_s(self, slot: SlotId) -> float:
        """Unqueued retrieve time from the slot to the tower's nearest bay, s."""
        return self._retrieval_s[slot]

    def by_retrieval(self) -> list[Slot]:
        """Every slot, shortest unqueued retrieval (to the nearest bay) first.

        Ties keep (level, column, side) order. The layout and physics are
        fixed, so the ranking is made once.
        """
        return self._by_retrieval


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


class Nearest:
    """The free fitting slot with the shortest unqueued retrieval.

    The strong baseline of the benchmark: every car as near the lift as the
    free slots allow, whatever its stay, so the first cars of the morning
    take the best slots and keep them until they leave.
    """

    def choose(self, tower: TowerView, size_class: SizeClass) -> SlotId | None:
        """The nearest free slot that fits, or None."""
        for slot in tower.by_retrieval():
            if tower.is_free(slot) and tower.fits(slot, size_class):
                return slot.id
        return None


class DepartureZones:
    """Cars likely to leave soon go where retrieval is short.

    The slots of a tower, ranked by unqueued retrieval time, are cut into
    `zones` zones of equal size. A car goes to the zone of its place in the
    departure order of the cars present (its own estimate among theirs): the
    first third to leave gets the nearest zone. Within a zone it takes the
    nearest free slot; a full zone sends it to the next farther one, then to
    the nearer ones. Size rules hold as always: tall cars go to tall slots,
    and a car takes a slot of a larger class only when none of its own class
    is free. With `chargers`, a car that wants to charge takes a charger slot
    of its zone when there is one, and other cars leave charger slots free
    while they can (off by default: the reference site's chargers stand in
    the column next to the lift, which every car would then lose). A car
    with no estimate goes to the nearest free slot.

    The allocator remembers the estimate of every car it placed, by ticket
    (the core keeps no hints for parked cars); it forgets cars that left.
    """

    def __init__(self, *, zones: int = 3, chargers: bool = False) -> None:
        self.zones = zones
        self.chargers = chargers
        self._departures: dict[str, float] = {}  # ticket -> estimate
        self._zone_of: dict[str, dict[SlotId, int]] = {}

    def choose(self, tower: TowerView, size_class: SizeClass) -> SlotId | None:
        """The slot for the car, by its zone; see the class docstring."""
        zone_of = self._zones(tower)
        departure = tower.expected_departure_s
        known = self._departures
        present = [
            known[ticket]
            for slot in tower.slots
            if (ticket := tower.car_at(slot)) is not None and ticket in known
        ]
        if len(known) > 2 * len(present) + 64:
            here = {tower.car_at(slot) for slot in tower.slots}
            for ticket in [t for t in known if t not in here]:
                del known[ticket]  # left (or in another tower: re-learned there)

        if departure is None:
            target = 0
        else:
            earlier = sum(1 for leaves in present if leaves < departure)
            target = min(self.zones - 1, self.zones * earlier // (len(present) + 1))
        order = sorted(range(self.zones), key=lambda z: (z < target, abs(z - target)))

        chosen = self._pick(tower, size_class, zone_of, order)
        if chosen is not None and departure is not None and tower.ticket is not None:
            known[tower.ticket] = departure
        return chosen

    def _pick(
        self,
        tower: TowerView,
        size_class: SizeClass,
        zone_of: dict[SlotId, int],
        order: list[int],
    ) -> SlotId | None:
        fitting = [
            s
            for s in tower.by_retrieval()
            if tower.is_free(s) and tower.fits(s, size_class)
        ]
        own = [s for s in fitting if s.size is size_class] or fitting
        wants = tower.wants_charger and self.chargers
        for zone in order:
            in_zone = [s for s in own if zone_of[s.id] == zone]
            if not in_zone:
                continue
            if wants:
                charging = [s for s in in_zone if s.charger]
                if charging:
                    return charging[0].id
            elif self.chargers:
                plain = [s for s in in_zone if not s.charger]
                if plain:
                    return plain[0].id
            return in_zone[0].id
        return None

    def _zones(self, tower: TowerView) -> dict[SlotId, int]:
        zone_of = self._zone_of.get(tower.tower)
        if zone_of is None:
            ranked = [s for s in tower.by_retrieval() if not s.disabled]
            size = max(1, -(-len(ranked) // self.zones))
            zone_of = {
                s.id: min(i // size, self.zones - 1) for i, s in enumerate(ranked)
            }
            self._zone_of[tower.tower] = zone_of
        return zone_of
