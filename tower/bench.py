"""`tower bench`: the zoo-day benchmark on a virtual clock.

tower bench [--seeds 1-20] [--policy NAME ...] [--site FILE | --scale NAME]
            [--workload FILE] [--json] [--plots DIR] [--per-seed] [--processes N]

Each seed's zoo day is generated once and replayed for every policy chosen
(default: all), through the real core and the simulated plant (see
`sim.bench`). The table shows, per policy, the median over the seeds; `--json`
prints every run instead, as {"runs": [...], "summary": {...}}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from sim.bench import (
    SCALES,
    bounds_lines,
    plot,
    run_many,
    scale_site,
    summarize,
    table,
)
from sim.workload import DEFAULT_WORKLOAD, WorkloadError, generate, load_workload
from tower.config import load_site
from tower.core.policies import BASELINE, POLICIES
from tower.errors import TowerError


class _UsageError(Exception):
    pass


def parse_seeds(text: str) -> list[int]:
    """`1-20`, `7` or `1,3,5-8`: the seeds, in order, each once."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            first = int(low)
            last = int(high) if high else first
        except ValueError:
            raise _UsageError(f"not a seed or seed range: {part!r}") from None
        if first < 0 or last < first:
            raise _UsageError(f"bad seed range: {part!r}")
        seeds += [s for s in range(first, last + 1) if s not in seeds]
    return seeds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tower bench",
        description="Replay seeded zoo days through the core and the plant model, "
        "on a virtual clock, for each policy.",
    )
    parser.add_argument("--seeds", default="1-20", help="seeds: 1-20, 7 or 1,3,5-8")
    parser.add_argument(
        "--policy",
        action="append",
        choices=sorted(POLICIES),
        help="a policy to run (repeatable; default: all)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--site", type=Path, help="a site file (default: the reference)")
    where.add_argument(
        "--scale", choices=SCALES, default="reference", help="a built-in site"
    )
    parser.add_argument(
        "--workload", type=Path, default=DEFAULT_WORKLOAD, help="a workload file"
    )
    parser.add_argument("--json", action="store_true", help="print every run as JSON")
    parser.add_argument("--plots", type=Path, help="write PNG plots to this directory")
    parser.add_argument(
        "--per-seed", action="store_true", help="also print one row per run"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes for the seeds (the figures do not depend on it)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run the benchmark; 0 on success, 2 on a usage or input error."""
    args = _parser().parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        site = load_site(args.site) if args.site else scale_site(args.scale)
        params = load_workload(args.workload)
    except (_UsageError, TowerError, WorkloadError, OSError, ValueError) as err:
        print(f"tower bench: {err}", file=sys.stderr)
        return 2
    # Checked before a long run, not after it.
    if args.plots and importlib.util.find_spec("matplotlib") is None:
        print(
            "tower bench: --plots needs matplotlib: pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    names = args.policy or list(POLICIES)
    policies = [POLICIES[name] for name in names]
    baseline = BASELINE if BASELINE in names else names[0]

    results = run_many(seeds, site, params, policies, processes=args.processes)
    summary = summarize(results, baseline)

    if args.json:
        runs = [r.metrics for r in results]
        print(json.dumps({"runs": runs, "summary": summary}, indent=1))
    else:
        cars = sorted(r.metrics["cars"] for r in results)
        print(
            f"tower bench: site {site.id!r} ({len(site.towers)} towers, "
            f"{results[0].metrics['slots']} slots), workload {params.name!r}, "
            f"seeds {args.seeds} ({len(seeds)} days, {cars[0]}-{cars[-1]} cars)"
        )
        print(f"medians over the seeds; p95/base and worst: closing p95 vs {baseline}")
        print()
        print("\n".join(table(summary)))
        print()
        print("bounds from the physics (medians):")
        print("\n".join("  " + line for line in bounds_lines(summary)))
        if args.per_seed:
            print()
            for r in results:
                m = r.metrics
                print(
                    f"seed {m['seed']:>3} {m['policy']:<12} wait mean "
                    f"{m['wait_mean_s']:6.0f} s p95 {m['wait_p95_s']:6.0f} s  closing "
                    f"p95 {m['closing_wait_p95_s']:6.0f} s  "
                    f"cpu {m['cpu_s_total']:.2f} s"
                )
    if args.plots:
        workload = generate(params, site, seeds[0])
        for path in plot(results, args.plots, workload):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
