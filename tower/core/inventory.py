"""Where every car is, and the state of every slot: the facts the core never loses.

The inventory holds one entry per car in the tower's custody, keyed by ticket,
with its place (a slot name, `shuttle-k`, `lift` or a bay id). It enforces one
car per place: a move into a taken place raises `IllegalTransition` and
changes nothing, so a bug can stop a job but never corrupt the inventory.

A car enters the inventory when its store job's bay check has measured it (the
door is closed: the tower has custody) and leaves it when its ticket closes
(the driver drove away). Between those, every place change follows a transfer
the PLC confirmed.

`TowerSlots` adds, per tower, which slots are reserved by a job and which are
blocked; a slot is free when it is enabled, not blocked, not reserved and holds
no car.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tower.config import SizeClass
from tower.core.errors import IllegalTransition
from tower.core.model import Slot, SlotId


@dataclass(slots=True)
class Car:
    """A car in custody: its ticket, tower, current place and size class."""

    ticket: str
    tower: str
    place: str
    size: SizeClass


class Inventory:
    """Every car of the site, with one car per (tower, place)."""

    def __init__(self) -> None:
        self.cars: dict[str, Car] = {}
        self._at: dict[tuple[str, str], str] = {}
        self.changes = 0
        """How often a car was added, moved or removed: a cheap sign of change."""

    def at(self, tower: str, place: str) -> str | None:
        """The ticket of the car at a place, or None."""
        return self._at.get((tower, place))

    def add(self, ticket: str, tower: str, place: str, size: SizeClass) -> Car:
        """Take a car into custody at `place`."""
        if ticket in self.cars:
            raise IllegalTransition("inventory", f"ticket {ticket} held", "add")
        self._check_empty(tower, place, ticket)
        car = Car(ticket, tower, place, size)
        self.cars[ticket] = car
        self._at[tower, place] = ticket
        self.changes += 1
        return car

    def move(self, ticket: str, place: str) -> Car:
        """Record that a car reached a new place of its tower."""
        car = self.cars.get(ticket)
        if car is None:
            raise IllegalTransition("inventory", f"no car {ticket}", f"move {place}")
        if car.place == place:
            return car
        self._check_empty(car.tower, place, ticket)
        del self._at[car.tower, car.place]
        car.place = place
        self._at[car.tower, place] = ticket
        self.changes += 1
        return car

    def remove(self, ticket: str) -> Car:
        """Release a car from custody (its ticket closed)."""
        car = self.cars.pop(ticket)
        del self._at[car.tower, car.place]
        self.changes += 1
        return car

    def _check_empty(self, tower: str, place: str, ticket: str) -> None:
        holder = self._at.get((tower, place))
        if holder is not None and holder != ticket:
            raise IllegalTransition(
                f"inventory {tower}", f"{place} holds {holder}", f"car {ticket} in"
            )


class TowerSlots:
    """The slots of one tower: layout, reservations and blocks, over the inventory."""

    def __init__(self, tower: str, slots: list[Slot], inventory: Inventory) -> None:
        self.tower = tower
        self.order = slots
        self.by_id = {slot.id: slot for slot in slots}
        self.by_name = {slot.name: slot for slot in slots}
        self.reserved: dict[SlotId, str] = {}  # slot -> job id
        self.blocked: dict[SlotId, str] = {}  # slot -> reason
        self._inventory = inventory

    def car_at(self, slot: Slot) -> str | None:
        """The ticket of the car in a slot, or None."""
        return self._inventory.at(self.tower, slot.name)

    def is_free(self, slot: Slot) -> bool:
        """Enabled, not blocked, not reserved, and holding no car."""
        return (
            not slot.disabled
            and slot.id not in self.blocked
            and slot.id not in self.reserved
            and self._inventory.at(self.tower, slot.name) is None
        )

    def free(self) -> Iterator[Slot]:
        """The free slots, in (level, column, side) order."""
        return (slot for slot in self.order if self.is_free(slot))

    def reserve(self, slot: SlotId, job_id: str) -> None:
        """Hold a free slot for a store job."""
        if not self.is_free(self.by_id[slot]):
            raise IllegalTransition(
                f"slots {self.tower}", "not free", f"reserve {slot}"
            )
        self.reserved[slot] = job_id

    def unreserve(self, slot: SlotId) -> None:
        """Drop a slot's reservation (the car arrived or the job ended)."""
        self.reserved.pop(slot, None)

    def occupancy(self, tall: SizeClass) -> tuple[int, int, int, int, int, int]:
        """(capacity, occupied, free, free_ev, free_tall, closed), see `Occupancy`."""
        capacity = occupied = free = free_ev = free_tall = closed = 0
        for slot in self.order:
            if slot.disabled:
                closed += 1
                continue
            capacity += 1
            if slot.id in self.blocked:
                closed += 1
            elif slot.id in self.reserved or self.car_at(slot) is not None:
                occupied += 1
            else:
                free += 1
                free_ev += slot.charger
                free_tall += slot.size is tall
        return capacity, occupied, free, free_ev, free_tall, closed
