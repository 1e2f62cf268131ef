"""Plants for the simulator tests."""

from __future__ import annotations

import pytest
from plantkit import Operator, small_site

from sim.plant import Plant


@pytest.fixture
def plant() -> Plant:
    return Plant(small_site(), watch_heartbeat=False)


@pytest.fixture
def op(plant: Plant) -> Operator:
    return Operator(plant)
