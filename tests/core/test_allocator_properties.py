"""Properties of the allocators: a car goes only where it fits, and gets a slot
whenever one that fits is free."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tower.config import SiteConfig, SizeClass, TowerConfig, Zone
from tower.core.allocator import DepartureZones, FirstFit, Nearest, TowerView
from tower.core.events import StoreRequested
from tower.core.inventory import Inventory, TowerSlots
from tower.core.model import SizeRules, Travel, build_slots

TOWER = "tower-a"


def view_of(levels: int, columns: int, tall: set[int], disabled: set[int]):
    """A tower with tall top levels and some slots out of service."""
    zones = [Zone(levels=sorted(tall), size="tall")] if tall else []
    zones += [Zone(levels=[level], disabled=True) for level in sorted(disabled)]
    config = TowerConfig(id=TOWER, levels=levels, columns=columns, zones=zones)
    site = SiteConfig(towers=[config])
    inventory = Inventory()
    slots = TowerSlots(TOWER, build_slots(config), inventory)
    sizes = SizeRules(site)
    return TowerView(config, slots, sizes, Travel(config.physics)), inventory, slots


car = st.tuples(
    st.sampled_from([SizeClass.STANDARD, SizeClass.TALL]),
    st.floats(min_value=0, max_value=40_000, allow_nan=False),  # departure
    st.booleans(),  # wants a charger
)


@settings(max_examples=150, deadline=None)
@given(
    levels=st.integers(1, 5),
    columns=st.integers(1, 4),
    tall=st.sets(st.integers(1, 5), max_size=2),
    disabled=st.sets(st.integers(1, 5), max_size=1),
    cars=st.lists(car, min_size=1, max_size=50),
    allocator=st.sampled_from(["first-fit", "nearest", "zones", "zones-chargers"]),
)
def test_no_allocator_places_a_car_where_it_does_not_fit(
    levels, columns, tall, disabled, cars, allocator
):
    """Cars arrive one by one into a filling tower: each gets a free slot of
    a class that takes it, or None exactly when no such slot is free; a zoned
    car never takes a larger class while its own class has a free slot."""
    view, inventory, slots = view_of(levels, columns, tall & set(range(1, levels + 1)),
                                     disabled & set(range(1, levels + 1)))  # fmt: skip
    chooser = {
        "first-fit": FirstFit,
        "nearest": Nearest,
        "zones": DepartureZones,
        "zones-chargers": lambda: DepartureZones(chargers=True),
    }[allocator]()
    for i, (size, departure, charger) in enumerate(cars):
        ticket = f"t{i}"
        request = StoreRequested(TOWER, "bay-1", ticket, f"j{i}", departure, charger)
        asked = view.asking(float(i), request)
        fitting = [s for s in view.slots if view.is_free(s) and view.fits(s, size)]

        chosen = chooser.choose(asked, size)

        if not fitting:
            assert chosen is None
            continue
        assert chosen is not None
        slot = view.slot(chosen)
        assert view.is_free(slot)
        assert view.fits(slot, size)
        if allocator.startswith("zones") and any(s.size is size for s in fitting):
            assert slot.size is size
        inventory.add(ticket, TOWER, slot.name, size)
    assert len({slots.car_at(s) for s in slots.order if slots.car_at(s)}) == len(
        inventory.cars
    )


def test_nearest_takes_the_shortest_retrieval():
    """Nearest fills the slot nearest to the lift first: level 1, column 1."""
    view, _, _ = view_of(3, 3, set(), set())

    chosen = Nearest().choose(view, SizeClass.STANDARD)

    assert (chosen.level, chosen.column) == (1, 1)


def test_zones_send_a_late_leaver_away_from_the_lift():
    """With cars present that leave sooner, a car that leaves last goes to the
    far zone, and one that leaves first to the near zone."""
    view, inventory, _ = view_of(3, 3, set(), set())
    zones = DepartureZones()
    for i, departure in enumerate([100.0, 200.0, 300.0]):
        request = StoreRequested(TOWER, "bay-1", f"t{i}", f"j{i}", departure)
        chosen = zones.choose(view.asking(0.0, request), SizeClass.STANDARD)
        inventory.add(f"t{i}", TOWER, str(chosen), SizeClass.STANDARD)
    ranked = [s.id for s in view.by_retrieval()]

    late = zones.choose(
        view.asking(0.0, StoreRequested(TOWER, "bay-1", "late", "j9", 9_000.0)),
        SizeClass.STANDARD,
    )
    early = zones.choose(
        view.asking(0.0, StoreRequested(TOWER, "bay-1", "early", "j8", 10.0)),
        SizeClass.STANDARD,
    )

    assert ranked.index(late) >= 2 * len(ranked) // 3
    assert ranked.index(early) < len(ranked) // 3


def test_zones_without_hints_take_the_nearest_slot_of_the_cars_class():
    """A store request with no expected departure (all the control socket
    sends) puts every car in zone 0: DepartureZones then takes the nearest
    free slot of the car's own class, a larger class only when that is full,
    and remembers nothing."""
    view, inventory, _ = view_of(3, 2, {3}, set())
    zones = DepartureZones()
    sizes = [SizeClass.STANDARD, SizeClass.TALL] * 3 + [SizeClass.STANDARD] * 6
    expected, chosen = [], []
    for i, size in enumerate(sizes):
        fitting = [s for s in view.by_retrieval() if view.is_free(s)]
        fitting = [s for s in fitting if view.fits(s, size)]
        own = [s for s in fitting if s.size is size] or fitting
        request = StoreRequested(TOWER, "bay-1", f"t{i}", f"j{i}")

        slot = zones.choose(view.asking(float(i), request), size)

        expected.append(own[0].id)
        chosen.append(slot)
        inventory.add(f"t{i}", TOWER, str(slot), size)

    assert chosen == expected
    assert zones._departures == {}
