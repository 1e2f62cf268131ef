"""Named policies: an allocator and a sequencer that work together.

The benchmark (`tower bench --policy NAME`) and the controller (the site
file's `[policy] name`, `pipelined` by default) choose a policy by name. A
policy is a pair of factories, so every run gets fresh policy objects (both
keep per-car bookkeeping). The first two are the baselines of issue 3; `zoned`
is the project's policy; the two in between separate what allocation and what
sequencing contribute. `zoned` and the relocations and kiosk staging of
`pipelined` live on request hints that the control socket does not carry yet,
which is why the controller's default is `pipelined` (docs/architecture.md,
"Policy").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tower.core.allocator import Allocator, DepartureZones, FirstFit, Nearest
from tower.core.sequencer import FcfsWholePath, Pipelined, Sequencer


@dataclass(frozen=True)
class Policy:
    """A named allocation and sequencing policy."""

    name: str
    summary: str
    allocator: Callable[[], Allocator]
    sequencer: Callable[[], Sequencer]


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy(
            "first-free",
            "first free fitting slot; first come first served, whole path",
            FirstFit,
            FcfsWholePath,
        ),
        Policy(
            "nearest",
            "nearest free fitting slot; first come first served, whole path",
            Nearest,
            FcfsWholePath,
        ),
        Policy(
            "zones-fcfs",
            "three zones by expected departure; first come first served, whole path",
            DepartureZones,
            FcfsWholePath,
        ),
        Policy(
            "pipelined",
            "nearest free fitting slot; pipelined sequencing, kiosk staging, "
            "idle-time relocation",
            Nearest,
            Pipelined,
        ),
        Policy(
            "zoned",
            "three zones by expected departure; pipelined sequencing, kiosk "
            "staging, idle-time relocation",
            DepartureZones,
            Pipelined,
        ),
    )
}
"""Every policy by name, baselines first."""

BASELINE = "nearest"
"""The strong baseline the benchmark compares against."""

DEFAULT = "zoned"
"""The project's policy, in the benchmark (where requests carry hints)."""
