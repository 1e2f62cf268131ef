"""The zoo-day workload: determinism, the trace's rules, its shape, its file."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.workload import (
    DEFAULT_WORKLOAD,
    Arrival,
    RequestKind,
    RetrievalRequest,
    Workload,
    WorkloadError,
    WorkloadParams,
    clock_s,
    generate,
    load_workload,
    scaled_site,
)
from tower.config import SiteConfig, SizeClass, Zone, load_site
from tower.tomlsource import ValidationProblems

REFERENCE = Path(__file__).parents[2] / "sim" / "sites" / "reference.toml"


@pytest.fixture(scope="module")
def params() -> WorkloadParams:
    return load_workload()


@pytest.fixture(scope="module")
def site() -> SiteConfig:
    return load_site(REFERENCE)


@pytest.fixture(scope="module")
def big_days(params: WorkloadParams, site: SiteConfig) -> list[Workload]:
    """Three days on a 10-tower site: about 4,800 cars, for the statistics."""
    ten = scaled_site(site, towers=10)
    return [generate(params, ten, seed) for seed in range(3)]


def check_trace(workload: Workload, site: SiteConfig) -> None:
    """Assert every rule the module docstring promises for a trace."""
    p = workload.params
    events = workload.events
    keys = [(e.t_s, isinstance(e, RetrievalRequest), e.car_id) for e in events]
    assert keys == sorted(keys)

    arrivals = {a.car_id: a for a in workload.arrivals()}
    requests = Counter(r.car_id for r in workload.requests())
    assert len(arrivals) == len(workload.arrivals())
    assert set(requests) == set(arrivals)
    assert set(requests.values()) <= {1}

    low_lead, high_lead = (m * 60 for m in p.kiosk.lead_min)
    for r in workload.requests():
        car = arrivals[r.car_id]
        assert r.t_s > car.t_s + car.driver_in_s
        assert r.arrives_at_tower_s <= p.last_departure_s
        if r.kind is RequestKind.KIOSK:
            lead = r.arrives_at_tower_s - r.t_s
            assert low_lead - 0.1 <= lead <= high_lead + 0.1
        else:
            assert r.t_s == r.arrives_at_tower_s
        assert car.t_s <= car.expected_departure_s <= p.last_departure_s

    for car in arrivals.values():
        limits = site.sizes[car.size]
        assert car.length_mm <= limits.max_length_mm
        assert car.width_mm <= limits.max_width_mm
        assert car.height_mm <= limits.max_height_mm
        assert car.weight_class <= limits.max_weight_class
        standard = site.sizes[SizeClass.STANDARD].max_height_mm
        assert (car.size is SizeClass.TALL) == (car.height_mm > standard)
        assert car.ev == (car.energy_kwh > 0)
        tower = site.tower(car.tower)
        assert car.bay in {b.id for b in tower.bays}

    present, tall = Counter(), Counter()
    leave = {r.car_id: r.arrives_at_tower_s for r in workload.requests()}
    changes = [(a.t_s, 1, a) for a in arrivals.values()]
    changes += [(leave[a.car_id], -1, a) for a in arrivals.values()]
    limits = {t.tower: t for t in workload.towers}
    for _, step, car in sorted(changes, key=lambda c: (c[0], c[1])):
        present[car.tower] += step
        tall[car.tower] += step if car.size is SizeClass.TALL else 0
        assert present[car.tower] <= limits[car.tower].slot_limit
        assert tall[car.tower] <= limits[car.tower].tall_limit


def departures_between(days: list[Workload], start: str, end: str) -> int:
    """Visitors reaching the tower from clock time start (inclusive) to end."""
    total = 0
    for day in days:
        zero = clock_s(day.params.day.start)
        low, high = clock_s(start) - zero, clock_s(end) - zero
        total += sum(low <= r.arrives_at_tower_s < high for r in day.requests())
    return total


def share(days: list[Workload], predicate) -> float:
    """The share of all cars of the days for which predicate holds."""
    cars = [a for day in days for a in day.arrivals()]
    return sum(map(predicate, cars)) / len(cars)


# -- determinism ----------------------------------------------------------------


def test_same_seed_gives_identical_trace(params, site) -> None:
    """Two runs with one seed give the same events, field for field."""
    first = generate(params, site, seed=7)

    second = generate(params, site, seed=7)

    assert first.events == second.events


def test_different_seeds_give_different_traces(params, site) -> None:
    """Another seed gives another day."""
    first = generate(params, site, seed=7)

    second = generate(params, site, seed=8)

    assert first.events != second.events


def test_changing_the_kiosk_share_keeps_every_arrival(params, site) -> None:
    """Each visitor has its own random numbers, so a parameter that does not
    touch arrivals or occupancy leaves the arrivals as they were."""
    fewer = params.model_copy(
        update={"kiosk": params.kiosk.model_copy(update={"share": 0.1})}
    )

    base = generate(params, site, seed=3)
    changed = generate(fewer, site, seed=3)

    assert base.arrivals() == changed.arrivals()
    assert base.summary().kiosk_requests > changed.summary().kiosk_requests


# -- the rules of a trace ---------------------------------------------------------


def test_reference_trace_keeps_every_rule(params, site) -> None:
    """Order, one arrival and one request per car, lead times, sizes, occupancy."""
    workload = generate(params, site, seed=1)

    check_trace(workload, site)


def test_large_sites_keep_every_rule(big_days, site) -> None:
    """The rules hold on a 10-tower site too."""
    ten = scaled_site(site, towers=10)

    for day in big_days:
        check_trace(day, ten)


def test_twenty_level_tower_keeps_every_rule(params, site) -> None:
    """A 20-level tower gets a day of its own size that keeps the rules."""
    tall_site = scaled_site(site, towers=1, levels=20)

    workload = generate(params, tall_site, seed=2)

    check_trace(workload, tall_site)
    assert workload.towers[0].slots == 240
    assert workload.summary().peak_occupancy == 216  # 90 % of 240


def test_every_car_is_gone_before_the_day_ends(params, site) -> None:
    """The last visitor reaches the tower before the day's end."""
    workload = generate(params, site, seed=4)

    last = max(r.arrives_at_tower_s for r in workload.requests())

    assert last <= params.last_departure_s < params.end_s


def test_peak_occupancy_reaches_the_target(params, site) -> None:
    """At the busiest moment the site holds its target share of slots, no more."""
    workload = generate(params, site, seed=5)

    summary = workload.summary()

    assert summary.peak_occupancy == sum(t.slot_limit for t in workload.towers)
    assert summary.fill_limited_by == "slots"


def test_few_tall_slots_limit_the_fill(params, site) -> None:
    """When the tall slots run out first, the day has fewer cars and says why."""
    corner = [Zone(levels=[8], columns=[1], size="tall")]
    towers = [t.model_copy(update={"zones": corner}) for t in site.towers]
    few_tall = site.model_copy(update={"towers": towers})

    workload = generate(params, few_tall, seed=5)

    check_trace(workload, few_tall)
    assert workload.fill_limited_by == "tall slots"
    assert workload.summary().peak_occupancy < 172


# -- the shape of the day ---------------------------------------------------------


def test_shares_match_the_parameters(big_days, params) -> None:
    """Tall, EV and kiosk shares agree with the file within four standard errors."""
    cars = sum(len(day.arrivals()) for day in big_days)
    kiosk = sum(day.summary().kiosk_requests for day in big_days) / cars
    measured = {
        "tall": share(big_days, lambda a: a.size is SizeClass.TALL),
        "ev": share(big_days, lambda a: a.ev),
        "kiosk": kiosk,
    }
    wanted = {
        "tall": params.vehicles.tall_share,
        "ev": params.ev.share,
        "kiosk": params.kiosk.share,
    }

    for name, p in wanted.items():
        tolerance = 4 * math.sqrt(p * (1 - p) / cars)
        assert abs(measured[name] - p) < tolerance, name


def test_arrivals_peak_in_the_morning(big_days) -> None:
    """The busiest hour of arrivals starts between 09:40 and 10:50, and no car
    comes after 16:00."""
    starts = Counter(int(a.t_s // 600) for day in big_days for a in day.arrivals())
    zero = clock_s(big_days[0].params.day.start)
    window = {k: sum(starts[k + i] for i in range(6)) for k in range(max(starts) + 1)}
    busiest = max(window, key=window.__getitem__) * 600 + zero
    latest = max(a.t_s for day in big_days for a in day.arrivals()) + zero

    assert clock_s("09:40") <= busiest <= clock_s("10:50")
    assert latest <= clock_s("16:00")


def test_departures_rush_before_closing(big_days) -> None:
    """More than twice as many visitors leave in the last hour as in the one before."""
    last_hour = departures_between(big_days, "17:00", "18:00")

    hour_before = departures_between(big_days, "16:00", "17:00")

    assert last_hour > 2 * hour_before


def test_show_end_sends_a_surge_of_departures(params, site) -> None:
    """In the 20 minutes after the show, clearly more visitors leave than on the
    same day without the show."""
    ten = scaled_site(site, towers=10)
    no_show = params.model_copy(update={"shows": []})
    with_show = [generate(params, ten, seed) for seed in range(3)]
    without = [generate(no_show, ten, seed) for seed in range(3)]

    surge = departures_between(with_show, "15:05", "15:25")
    usual = departures_between(without, "15:05", "15:25")

    assert surge > 1.3 * usual


def test_visit_lengths_follow_the_lognormal(params, site) -> None:
    """Without shows or stayers and with a late closing, visits average mean_h."""
    plain = params.model_copy(
        update={
            "shows": [],
            "closing": params.closing.model_copy(update={"share": 0.0}),
            "day": params.day.model_copy(update={"closing": "23:00"}),
        }
    )
    days = [generate(plain, scaled_site(site, towers=10), s) for s in range(2)]
    visits = [
        r.arrives_at_tower_s - a.t_s
        for day in days
        for a, r in zip(
            sorted(day.arrivals(), key=lambda e: e.car_id),
            sorted(day.requests(), key=lambda e: e.car_id),
            strict=True,
        )
    ]

    mean_h = sum(visits) / len(visits) / 3600

    assert abs(mean_h - params.visit.mean_h) < 0.1


def test_departure_hint_is_near_the_truth_but_not_it(big_days, params) -> None:
    """The hint differs from the true departure by about hint.sd_min."""
    errors = []
    for day in big_days:
        truth = {r.car_id: r.arrives_at_tower_s for r in day.requests()}
        errors += [a.expected_departure_s - truth[a.car_id] for a in day.arrivals()]

    sd_min = math.sqrt(sum(e * e for e in errors) / len(errors)) / 60

    assert 0.8 * params.hint.sd_min < sd_min < 1.1 * params.hint.sd_min


def test_summary_counts_the_trace(params, site) -> None:
    """The summary's counts agree with the events."""
    workload = generate(params, site, seed=1)

    summary = workload.summary()

    assert summary.cars == len(workload.arrivals())
    assert sum(summary.arrivals_per_hour.values()) == summary.cars
    assert sum(summary.cars_per_tower.values()) == summary.cars
    assert summary.peak_arrival_hour in {"10:00", "11:00"}
    assert summary.slots == 192
    assert len(summary.lines()) == 8


def test_ten_tower_day_generates_in_under_a_second(params, site) -> None:
    """A 10-tower day takes well under a second (the budget is generous)."""
    ten = scaled_site(site, towers=10)
    start = time.perf_counter()

    generate(params, ten, seed=11)

    assert time.perf_counter() - start < 1.0


# -- larger sites -----------------------------------------------------------------


def test_scaled_site_names_towers_and_spreads_ports(site) -> None:
    """Copies get their own ids and port bases 100 apart."""
    ten = scaled_site(site, towers=10)

    ports = [t.plc.port_base for t in ten.towers]

    assert [t.id for t in ten.towers][:2] == ["tower-01", "tower-02"]
    assert ports == [15020 + 100 * i for i in range(10)]
    assert ten.source == site.source


def test_scaled_site_zones_keep_their_share_of_levels(site) -> None:
    """The tall zone on the top quarter of 8 levels is the top quarter of 20."""
    tall_site = scaled_site(site, levels=20)

    zones = tall_site.towers[0].zones

    assert zones[0].levels == [16, 17, 18, 19, 20]
    assert zones[2].levels == [1, 2, 3, 4, 5]
    assert [t.id for t in tall_site.towers] == ["tower-a", "tower-b"]


# -- refusals ---------------------------------------------------------------------


def test_tall_cars_without_tall_slots_are_refused(params, site) -> None:
    """A site with no tall slot cannot take a workload with tall cars."""
    flat = site.model_copy(
        update={"towers": [t.model_copy(update={"zones": []}) for t in site.towers]}
    )

    with pytest.raises(WorkloadError, match="tall_share"):
        generate(params, flat, seed=1)


def test_cars_beyond_the_site_limits_are_refused(params, site) -> None:
    """A workload whose tall cars exceed the tall slot's height is refused."""
    vans = params.vehicles.tall.model_copy(update={"height_mm": (1700, 2300)})
    high = params.model_copy(
        update={"vehicles": params.vehicles.model_copy(update={"tall": vans})}
    )

    with pytest.raises(WorkloadError, match="height_mm"):
        generate(high, site, seed=1)


# -- the parameter file -----------------------------------------------------------


def test_shipped_file_loads() -> None:
    """zoo-day.toml validates and names itself."""
    params = load_workload(DEFAULT_WORKLOAD)

    assert params.name == "zoo-day"


def broken_copy(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """zoo-day.toml with one line changed; the file and that line's number."""
    text = DEFAULT_WORKLOAD.read_text(encoding="utf-8")
    lines = text.splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.startswith(old))
    lines[number - 1] = new
    path = tmp_path / "broken.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, number


def test_broken_share_names_file_line_and_field(tmp_path) -> None:
    """A share above 1 is reported with the file, its line and kiosk.share."""
    path, line = broken_copy(tmp_path, "share = 0.3 ", "share = 1.3")

    with pytest.raises(ValidationProblems) as caught:
        load_workload(path)

    problem = caught.value.problems[0]
    expected = (str(path), line, "kiosk.share")
    assert (problem.file, problem.line, problem.field) == expected


def test_cross_field_problem_names_file_line_and_field(tmp_path) -> None:
    """Tall cars no taller than standard ones are reported at vehicles.tall."""
    path, line = broken_copy(
        tmp_path, "height_mm = [1620, 2000]", "height_mm = [1500, 2000]"
    )

    with pytest.raises(ValidationProblems) as caught:
        load_workload(path)

    problem = caught.value.problems[0]
    expected = (str(path), line, "vehicles.tall.height_mm")
    assert (problem.file, problem.line, problem.field) == expected


def test_unknown_key_is_refused(tmp_path) -> None:
    """A misspelt key is a problem, not silently ignored."""
    path, line = broken_copy(tmp_path, "sd_min = 30", "sd_mins = 30")

    with pytest.raises(ValidationProblems) as caught:
        load_workload(path)

    fields = {(p.field, p.line) for p in caught.value.problems}
    assert ("hint.sd_mins", line) in fields


# -- properties -------------------------------------------------------------------


@st.composite
def workload_params(draw: st.DrawFn) -> WorkloadParams:
    """Valid parameters around the shipped ones."""
    data = load_workload().model_dump()
    shares = st.floats(0.0, 1.0)
    data["fill"]["target_occupancy"] = draw(st.floats(0.2, 1.0))
    data["visit"]["mean_h"] = draw(st.floats(1.0, 5.0))
    data["visit"]["sd_h"] = draw(st.floats(0.1, 3.0))
    data["closing"]["share"] = draw(shares)
    data["closing"]["until_min_after"] = draw(st.floats(0.0, 30.0))
    data["shows"][0]["share"] = draw(shares)
    data["shows"][0]["ends"] = draw(st.sampled_from(["11:30", "14:00", "17:30"]))
    data["vehicles"]["tall_share"] = draw(shares)
    data["ev"]["share"] = draw(shares)
    data["kiosk"]["share"] = draw(shares)
    low = draw(st.floats(0.5, 10.0))
    data["kiosk"]["lead_min"] = (low, low + draw(st.floats(0.0, 10.0)))
    data["hint"]["sd_min"] = draw(st.floats(0.0, 120.0))
    return WorkloadParams.model_validate(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=workload_params(), seed=st.integers(0, 2**32), small=st.booleans())
def test_random_parameters_keep_every_rule(params, seed, small) -> None:
    """For any valid parameters and seed, the trace keeps every rule."""
    site = load_site(REFERENCE)
    if small:
        site = scaled_site(site, towers=1, levels=3)

    workload = generate(params, site, seed)

    check_trace(workload, site)
    assert all(isinstance(e, Arrival | RetrievalRequest) for e in workload.events)
