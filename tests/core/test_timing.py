"""Store and retrieve times at the reference physics, through the harness."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.harness import Harness
from sim.plant import Car
from tower.config import Side, load_site
from tower.core.model import SlotId
from tower.core.records import JobKind

REFERENCE = Path(__file__).parents[2] / "sim" / "sites" / "reference.toml"


class Fixed:
    """An allocator that always answers one slot."""

    def __init__(self, slot: SlotId) -> None:
        self.slot = slot

    def choose(self, tower, size_class):
        return self.slot


@pytest.mark.parametrize("column", [1, 6])
def test_top_level_store_and_retrieve_take_their_unqueued_time(column):
    """One car to the top level and back: the plan's parallel steps make each
    job take exactly the physics' unqueued time, about 1.5 minutes (DESIGN.md
    section 2)."""
    site = load_site(REFERENCE)
    slot = SlotId(8, column, Side.LEFT)
    h = Harness(site, allocator=Fixed(slot))
    ticket = h.arrive("tower-a", "bay-1", Car("c1"))
    h.run_until_idle(limit=5000)
    h.retrieve(ticket, "bay-1")
    h.run_until_idle(limit=5000)
    times = {j.kind: j.duration_s for j in h.jobs.values()}
    travel = h.core.towers["tower-a"].travel

    assert times[JobKind.STORE] == pytest.approx(travel.store_s(1, slot), abs=0.01)
    assert times[JobKind.RETRIEVE] == pytest.approx(
        travel.retrieve_s(slot, 1), abs=0.01
    )
    assert 60 < times[JobKind.STORE] < 150
    assert 60 < times[JobKind.RETRIEVE] < 150
    assert h.delivered == {ticket: "c1"}
