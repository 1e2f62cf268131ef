"""The zoo-day benchmark in its smallest configuration, for correctness.

One tower of three levels and one seed: every policy serves every visitor,
the figures keep to the physics' bounds, a seed gives the same figures twice,
and `tower bench` prints the table and the JSON. Timing is not judged here.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from sim.bench import REFERENCE_SITE, percentile, run_day, run_many, summarize
from sim.workload import generate, load_workload, scaled_site
from tower.bench import main, parse_seeds
from tower.config import load_site
from tower.core.policies import BASELINE, POLICIES

RUN_KEYS = {
    "seed", "policy", "wait_mean_s", "wait_p95_s", "wait_max_s",
    "closing_wait_mean_s", "closing_wait_p95_s", "peak_cars_per_h",
    "lift_utilisation", "relocations", "cpu_s_total", "cpu_ms_per_job",
    "bound_wait_mean_s", "bound_peak_cars_per_h",
}  # fmt: skip


@pytest.fixture(scope="module")
def small():
    """One tower of 3 levels (36 slots) and its zoo day for seed 1."""
    site = scaled_site(load_site(REFERENCE_SITE), towers=1, levels=3)
    return site, generate(load_workload(), site, seed=1)


@pytest.fixture(scope="module")
def runs(small):
    """Every policy on the small day."""
    site, workload = small
    return {name: run_day(workload, site, policy) for name, policy in POLICIES.items()}


def test_every_policy_serves_every_visitor(small, runs):
    """Each car of the day is stored, asked for and released to its visitor,
    under every policy."""
    _, workload = small
    cars = {a.car_id for a in workload.arrivals()}

    for result in runs.values():
        assert {r.car_id for r in result.retrievals} == cars
        assert result.metrics["retrievals"] == len(cars)
        assert result.metrics["jobs"] >= 2 * len(cars)


def test_no_wait_is_below_its_physics_bound(runs):
    """A retrieval cannot beat its own unqueued travel (less the time its
    visitor gave by asking ahead), and no figure is negative."""
    for result in runs.values():
        for r in result.retrievals:
            assert r.wait_s >= r.bound_s - 1e-6
            assert r.wait_s >= 0
        m = result.metrics
        assert m["wait_mean_s"] >= m["bound_wait_mean_s"] - 1e-6
        assert set(m) >= RUN_KEYS
        assert 0 <= m["lift_utilisation"] <= 1


def test_only_the_pipelined_policies_position_idle_devices(runs):
    """Positioning jobs come with the pipelined sequencer only, and each
    visitor who asked during one is one of the day's retrievals."""
    for name, result in runs.items():
        m = result.metrics
        pipelined = name in ("pipelined", "zoned")

        assert (m["positionings"] > 0) == pipelined
        assert 0 <= m["positioning_overlaps"] <= m["retrievals"]


def test_the_same_seed_gives_the_same_result(small, runs):
    """A second run of the same seed and policy measures the same day (the
    CPU figures aside)."""
    site, workload = small
    again = run_day(workload, site, POLICIES["zoned"])
    first = runs["zoned"]

    def figures(metrics):
        return {k: v for k, v in metrics.items() if not k.startswith("cpu")}

    assert figures(again.metrics) == figures(first.metrics)
    assert again.retrievals == first.retrievals


def test_processes_do_not_change_the_figures(small):
    """Seeds run in two worker processes give the figures of one process."""
    site, _ = small
    params = load_workload()
    policies = [POLICIES["nearest"]]
    alone = run_many([1, 2], site, params, policies)
    pooled = run_many([1, 2], site, params, policies, processes=2)

    def figures(results):
        return [
            {k: v for k, v in r.metrics.items() if not k.startswith("cpu")}
            for r in results
        ]

    assert figures(pooled) == figures(alone)


def test_summary_compares_with_the_baseline(runs):
    """The summary holds a row per policy, the baseline's ratio to itself 1."""
    summary = summarize(list(runs.values()), BASELINE)

    assert set(summary) == set(POLICIES)
    assert summary[BASELINE]["closing_p95_vs_baseline_median"] == pytest.approx(1.0)


def test_percentile_interpolates_between_ranks():
    """p95 of 1..21 is 20; of nothing, 0."""
    assert percentile([float(i) for i in range(1, 22)], 0.95) == 20.0
    assert percentile([], 0.95) == 0.0


@pytest.mark.parametrize(
    ("text", "seeds"), [("1-3", [1, 2, 3]), ("7", [7]), ("1,3,5-6", [1, 3, 5, 6])]
)
def test_seed_ranges_are_read(text, seeds):
    """Seeds come as a range, one seed, or a list of both."""
    assert parse_seeds(text) == seeds


def test_bench_prints_json_runs(capsys):
    """`tower bench --json` prints one object per seed and policy."""
    code = main(["--seeds", "1", "--policy", "nearest", "--policy", "zoned", "--json"])
    out = json.loads(capsys.readouterr().out)

    assert code == 0
    assert [(r["seed"], r["policy"]) for r in out["runs"]] == [
        (1, "nearest"),
        (1, "zoned"),
    ]
    assert all(set(r) >= RUN_KEYS for r in out["runs"])
    assert all(math.isfinite(r["wait_p95_s"]) for r in out["runs"])


def test_bench_prints_a_table_and_refuses_bad_seeds(capsys):
    """The readable table names every policy run; a bad seed range is a usage
    error (exit 2), not a traceback."""
    assert main(["--seeds", "2", "--policy", "first-free"]) == 0
    table = capsys.readouterr().out
    assert "first-free" in table
    assert "bounds from the physics" in table

    assert main(["--seeds", "5-1"]) == 2
    assert "bad seed range" in capsys.readouterr().err


def test_plots_without_matplotlib_are_refused_before_the_run(
    capsys, monkeypatch, tmp_path
):
    """--plots without the `bench` extra: exit 2 at once with the install hint,
    instead of a traceback after minutes of benchmark."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    assert main(["--seeds", "1", "--policy", "nearest", "--plots", str(tmp_path)]) == 2
    err = capsys.readouterr()
    assert "pip install -e '.[bench]'" in err.err
    assert err.out == ""  # nothing ran
