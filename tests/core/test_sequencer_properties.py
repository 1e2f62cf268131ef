"""Properties of the sequencers over random visitor days: no deadlock, no loss.

Cars of random sizes arrive at random bays and times while others are asked
for, at the tower, ahead from the kiosk, or to a named bay; every sequencer
with every allocator must bring every day to its end (`run_until_idle` never
raises `HarnessStuck`), deliver each stored car to its ticket, and never
break the safety rule or the inventory.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.harness import Harness
from sim.plant import Car
from tower.config import BayConfig, Side, SiteConfig, TowerConfig, Zone
from tower.core.allocator import FirstFit, Nearest
from tower.core.model import SlotId
from tower.core.records import JobCreated
from tower.core.sequencer import FcfsWholePath, Pipelined

TOWER = "tower-a"
BAYS = ("bay-1", "bay-2")
HEIGHTS = {"standard": 1500, "tall": 1900, "too_large": 2500}
SEQUENCERS = {"fcfs": FcfsWholePath, "pipelined": Pipelined}
ALLOCATORS = {"first-fit": FirstFit, "nearest": Nearest}


def site(levels: int = 3, towers: int = 1) -> SiteConfig:
    """Small towers (2 columns, tall slots on the top level) that fill up, with
    their bays at different columns so a bay chosen late changes the plan."""
    return SiteConfig(
        towers=[
            TowerConfig(
                id=TOWER if n == 0 else f"tower-{chr(ord('a') + n)}",
                levels=levels,
                columns=2,
                bays=[
                    BayConfig(id="bay-1", column=1, side=Side.LEFT),
                    BayConfig(id="bay-2", column=2, side=Side.RIGHT),
                ],
                zones=[
                    Zone(levels=[levels], size="tall"),
                    Zone(levels=[1], charger=True),
                ],
                plc={"port_base": 15020 + 100 * n},
            )
            for n in range(towers)
        ]
    )


def check_agreement(h: Harness) -> None:
    """After each step: the core and the plant agree on every slot and car."""
    for tower in h.site.towers:
        parked = h.parked(tower.id)
        assert parked == h.plant.slot_contents(tower.id)
    for ticket, car in h.core.inventory.cars.items():
        assert h.plant.locate(h.car_of[ticket]) == (car.tower, car.place)


visit = st.tuples(
    st.sampled_from(BAYS),  # the bay the car drives into
    st.floats(min_value=0, max_value=1200, allow_nan=False),  # arrival
    st.sampled_from(sorted(HEIGHTS)),
    st.floats(min_value=5, max_value=120, allow_nan=False),  # driver in the bay
    st.floats(min_value=60, max_value=1500, allow_nan=False),  # stay
    st.sampled_from(["tower", "kiosk", "bay-1", "bay-2"]),  # how it is asked for
    st.floats(min_value=0, max_value=400, allow_nan=False),  # kiosk lead
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    visits=st.lists(visit, min_size=1, max_size=16),
    sequencer=st.sampled_from(sorted(SEQUENCERS)),
    allocator=st.sampled_from(sorted(ALLOCATORS)),
    levels=st.integers(min_value=2, max_value=4),
    towers=st.integers(min_value=1, max_value=2),
    seed=st.integers(0, 2**16),
)
def test_random_days_always_complete(
    visits, sequencer, allocator, levels, towers, seed
):
    """Arrivals and retrievals overlapping at random, on one tower or two: every
    day ends (no deadlock, no wake-up lost), every stored car reaches its own
    ticket's visitor, and no domain error (a safety or inventory violation)
    occurs."""
    h = Harness(
        site(levels, towers),
        seed=seed,
        allocator=ALLOCATORS[allocator](),
        sequencer=SEQUENCERS[sequencer](),
    )
    h.after_step.append(check_agreement)
    tickets = []
    for i, (bay, at, size, driver_s, stay_s, how, lead_s) in enumerate(visits):
        car = Car(f"c{i}", height_mm=HEIGHTS[size], driver_time_s=driver_s)
        tower = h.site.towers[i % towers].id
        ticket = h.arrive(tower, bay, car, at=at, expected_departure_s=at + stay_s)
        tickets.append(ticket)
        asked = at + stay_s
        if how == "kiosk":
            h.collect_at[ticket] = asked + lead_s
            h.retrieve(ticket, at=asked, retry_s=20, visitor_due_s=asked + lead_s)
        else:
            named = how if how in BAYS else None
            h.retrieve(ticket, named, at=asked, retry_s=20)
    h.run_until_idle(limit=100_000)
    # Requests that came before their car was stored are asked again.
    for ticket in tickets:
        car = h.core.inventory.cars.get(ticket)
        if car is not None and h.core.ticket(ticket)["job_id"] is None:
            h.retrieve(ticket, retry_s=20)
    h.run_until_idle(limit=200_000)

    stored = [t for t in tickets if t in h.delivered]
    assert h.core.errors == []
    assert h.core.inventory.cars == {}
    assert h.plant.cars() == {}
    assert {t: h.delivered[t] for t in stored} == {t: h.car_of[t] for t in stored}
    assert [k for k, n in h.plant.motions.items() if n > 1] == []
    assert not [a for a in h.alarms if a.code in ("domain_error", "job_held")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(visits=st.lists(visit, min_size=2, max_size=14), seed=st.integers(0, 2**16))
def test_a_relocation_never_touches_a_car_whose_owner_waits(visits, seed):
    """Relocating eagerly (any idle moment, any gain): a relocation is only
    ever proposed on a tower with no open job (nobody waits, nothing asked for
    ahead), for a car whose owner has not asked yet, into a free slot that
    fits it; and the day still ends with every car delivered."""
    sequencer = Pipelined(relocate_quiet_s=0, relocate_lead_s=0, relocate_gain_s=0.1)
    h = Harness(site(4), seed=seed, allocator=Nearest(), sequencer=sequencer)
    h.after_step.append(check_agreement)
    asked_at: dict[str, float] = {}
    proposed = []

    propose = sequencer.relocations

    def checked(book):
        moves = propose(book)
        for ticket, slot in moves:
            assert book.jobs == []
            assert h.now < asked_at[ticket]
            target = book.view.slot(slot)
            assert book.view.is_free(target)
            proposed.append(ticket)
        return moves

    sequencer.relocations = checked  # type: ignore[method-assign]
    tickets = []
    for i, (bay, at, size, driver_s, stay_s, how, lead_s) in enumerate(visits):
        height = min(HEIGHTS[size], HEIGHTS["tall"])
        car = Car(f"c{i}", height_mm=height, driver_time_s=driver_s)
        ticket = h.arrive(TOWER, bay, car, at=at, expected_departure_s=at + stay_s)
        tickets.append(ticket)
        asked_at[ticket] = at + stay_s
        due = at + stay_s + lead_s if how == "kiosk" else None
        h.retrieve(ticket, at=at + stay_s, retry_s=20, visitor_due_s=due)
    h.run_until_idle(limit=100_000)
    for ticket in tickets:
        if ticket in h.core.inventory.cars and h.core.ticket(ticket)["job_id"] is None:
            h.retrieve(ticket, retry_s=20)
    h.run_until_idle(limit=200_000)

    assert h.core.errors == []
    assert set(h.delivered) == {t for t in tickets if t in h.delivered}
    assert h.core.inventory.cars == {}
    assert not [a for a in h.alarms if a.code in ("domain_error", "job_held")]


def test_an_idle_tower_moves_a_soon_leaver_nearer_the_lift():
    """Two cars parked far up; the tower goes quiet: the one leaving soonest
    is relocated nearer the lift (and journaled as a relocate job), and both
    come back to their visitors afterwards."""
    sequencer = Pipelined(relocate_quiet_s=30, relocate_lead_s=60, relocate_gain_s=5)
    h = Harness(site(4), allocator=Slots("04-02-L", "04-02-R"), sequencer=sequencer)
    soon = h.arrive(TOWER, "bay-1", Car("soon"), expected_departure_s=2_000)
    late = h.arrive(TOWER, "bay-2", Car("late"), expected_departure_s=9_000)
    h.run_until_idle(limit=1_500)
    h.run_until(h.now + 600)  # quiet: the sequencer wakes to relocate

    moved = [
        r for r in h.records if isinstance(r, JobCreated) and r.kind.value == "relocate"
    ]
    assert [r.ticket for r in moved][:1] == [soon]
    assert moved[0].origin == "04-02-L"
    assert h.core.ticket(soon)["place"] != "04-02-L"
    h.retrieve(soon)
    h.retrieve(late)
    h.run_until_idle(limit=20_000)

    assert h.delivered == {soon: "soon", late: "late"}


class Slots:
    """An allocator that hands out the slots of a list, in order."""

    def __init__(self, *names: str) -> None:
        self.slots = [SlotId.parse(name) for name in names]

    def choose(self, tower, size_class):
        return self.slots.pop(0)
