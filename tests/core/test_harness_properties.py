"""Properties of the core driving the plant model, over random visitor days.

Cars of random sizes arrive at random bays and times; their tickets are
retrieved in random order, some while other cars still arrive. Throughout,
the core and the plant agree on every slot, nothing moves at a bay with a
person or an open door, and the occupancy figures add up; in the end every
stored car came back to the visitor holding its ticket.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.harness import Harness
from sim.plant import Car
from tower.config import BayConfig, Side, SiteConfig, TowerConfig, Zone

TOWER = "tower-a"
BAYS = ("bay-1", "bay-2")
HEIGHTS = {"standard": 1500, "tall": 1900, "too_large": 2500}


def site() -> SiteConfig:
    """A small tower (3 levels, 2 columns: 12 slots, 4 tall) that fills up."""
    tower = TowerConfig(
        id=TOWER,
        levels=3,
        columns=2,
        bays=[
            BayConfig(id="bay-1", column=1, side=Side.LEFT),
            BayConfig(id="bay-2", column=2, side=Side.RIGHT),
        ],
        zones=[Zone(levels=[3], size="tall"), Zone(levels=[1], charger=True)],
    )
    return SiteConfig(towers=[tower])


def check_bay_safety(h: Harness, command) -> None:
    """Just before a command is written: the plant shows its bay safe."""
    plant = h.plant
    if command.device.startswith("bay-"):
        if command.code == "check":
            assert not plant.status(TOWER, command.device)["flags"]["person_present"]
        return
    if command.device != "shuttle-0" or command.code not in ("pick", "place"):
        return
    if command.side == "lift":
        return
    column = plant.status(TOWER, "shuttle-0")["column"]
    bay = next(b.id for b in h.site.towers[0].bays
               if (b.column, b.side.value) == (column, command.side))  # fmt: skip
    flags = plant.status(TOWER, bay)["flags"]
    assert flags["door_closed"]
    assert not flags["person_present"]


def check_agreement(h: Harness) -> None:
    """After each step: one car per slot, the same in core and plant, and
    occupancy figures that add up."""
    parked = h.parked(TOWER)
    assert parked == h.plant.slot_contents(TOWER)
    for ticket, car in h.core.inventory.cars.items():
        assert h.plant.locate(h.car_of[ticket]) == (car.tower, car.place)
    assert len(set(parked.values())) == len(parked)

    check_occupancy(h, parked)


def check_occupancy(h: Harness, parked: dict[str, str]) -> None:
    """The tower's figures add up (parked cars and reservations), and the
    last occupancy published says the same."""
    tower = h.core.status()["towers"][0]
    reserved = len(h.core.towers[TOWER].slots.reserved)
    assert tower["occupied"] == len(parked) + reserved
    assert tower["free"] == tower["capacity"] - tower["occupied"] - tower["closed"]
    if h.occupancy:
        last = h.occupancy[-1]
        figures = ("capacity", "occupied", "free", "free_ev", "free_tall", "closed")
        assert tuple(getattr(last, f) for f in figures) == tuple(
            tower[f] for f in figures
        )


arrival = st.tuples(
    st.sampled_from(BAYS),
    st.floats(min_value=0, max_value=900, allow_nan=False),
    st.sampled_from(sorted(HEIGHTS)),
    st.floats(min_value=5, max_value=90, allow_nan=False),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    first=st.lists(arrival, min_size=1, max_size=14),
    second=st.lists(arrival, max_size=6),
    data=st.data(),
)
def test_every_stored_car_comes_back_with_its_ticket(first, second, data):
    """Random arrivals and retrievals: the core and plant agree on every slot,
    no motion at a bay with a person or an open door, and every stored car is
    delivered to its own ticket, once."""
    h = Harness(site(), seed=data.draw(st.integers(0, 2**16)))
    h.on_command.append(check_bay_safety)
    h.after_step.append(check_agreement)

    def arrive(batch, start, tag):
        tickets = []
        for i, (bay, at, size, driver_s) in enumerate(batch):
            car = Car(f"{tag}{i}", height_mm=HEIGHTS[size], driver_time_s=driver_s)
            tickets.append(h.arrive(TOWER, bay, car, at=start + at))
        return tickets

    early = arrive(first, 0.0, "a")
    h.run_until_idle(limit=50_000)
    stored = [t for t in early if h.core.inventory.cars.get(t)]
    late = arrive(second, h.now, "b")
    order = data.draw(st.permutations(stored))
    for ticket in order:
        at = h.now + data.draw(st.floats(min_value=0, max_value=600))
        bay = data.draw(st.sampled_from([None, *BAYS]))
        h.retrieve(ticket, bay, at=at, retry_s=30)
    h.run_until_idle(limit=100_000)
    for ticket in late:
        if h.core.inventory.cars.get(ticket):
            stored.append(ticket)
            h.retrieve(ticket, retry_s=30)
    h.run_until_idle(limit=150_000)

    assert h.core.errors == []
    assert {t: h.delivered[t] for t in stored} == {t: h.car_of[t] for t in stored}
    assert h.plant.cars() == {}
    assert h.core.inventory.cars == {}
    assert [k for k, n in h.plant.motions.items() if n > 1] == []
    too_large = [j for j in h.jobs.values() if j.reason == "car_too_large"]
    assert all(j.outcome == "failed" for j in too_large)
    assert not [a for a in h.alarms if a.code in ("domain_error", "job_held")]


DEVICES = ("lift", "shuttle-0", "shuttle-1", "shuttle-2", "shuttle-3", *BAYS)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cars=st.lists(arrival, min_size=1, max_size=10),
    faults=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=1500, allow_nan=False),
            st.sampled_from(DEVICES),
            st.sampled_from(["interlock", "bad_command"]),
        ),
        max_size=3,
    ),
)
def test_plc_faults_never_corrupt_the_inventory(cars, faults):
    """PLC faults at random times and devices: the jobs they hit are held,
    the others finish; the core's inventory always matches the plant, no
    motion runs twice and no domain error (safety violation) occurs."""
    h = Harness(site())
    h.on_command.append(check_bay_safety)
    h.after_step.append(check_agreement)
    for at, device, code in sorted(faults):
        h.schedule(at, lambda d=device, c=code: h.plant.inject_fault(TOWER, d, c))
    tickets = [
        h.arrive(TOWER, bay, Car(f"c{i}", height_mm=HEIGHTS[size], driver_time_s=s),
                 at=at)
        for i, (bay, at, size, s) in enumerate(cars)
    ]  # fmt: skip
    h.run_until(6000)
    for ticket in tickets:
        if ticket in h.core.inventory.cars and h.core.ticket(ticket)["job_id"] is None:
            h.retrieve(ticket)
    h.run_until(12000)

    assert h.core.errors == []
    assert [k for k, n in h.plant.motions.items() if n > 1] == []
    held = {j["job_id"] for j in h.core.jobs() if j["state"] == "held"}
    assert {j["job_id"] for j in h.core.jobs()} <= held | {
        j["job_id"] for j in h.core.jobs() if j["state"] == "waiting_path"
    }
    for ticket in h.delivered:
        assert h.delivered[ticket] == h.car_of[ticket]
