"""Profiles: every shipped file loads, and every validation rule fires."""

from __future__ import annotations

from pathlib import Path

import pytest

from tower.plc.points import REQUIRED, DeviceKind
from tower.plc.profile import Role, check_profile, load_profile

PROFILES = Path(__file__).resolve().parents[2] / "plc_profiles"
SHIPPED = sorted(PROFILES.glob("*.toml"))


def test_profiles_are_shipped():
    """plc_profiles/ holds a reference profile for each device kind."""
    names = {p.name for p in SHIPPED}

    assert {"lift.toml", "shuttle.toml", "bay.toml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_profile_passes_check(path):
    """Every shipped profile passes `tower profile check` without a problem."""
    problems = check_profile(path)

    assert problems == []


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_profile_polls_in_one_read(path):
    """Every shipped profile reads all its status points in one request."""
    profile = load_profile(path)

    spans = profile.status_reads()

    assert len(spans) == 1
    status = {n for n, r in profile.registers.items() if r.role is Role.STATUS}
    assert set(REQUIRED[profile.kind]["status"]) <= status
    assert isinstance(profile.kind, DeviceKind)
