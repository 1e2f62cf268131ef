"""Requests built to hurt: deep nesting, huge numbers, viewers and tickets."""

from __future__ import annotations

import pytest

from tower.console import protocol as proto
from tower.console.tokens import Role
from tower.plc.profile import load_profile
from tower.service import (
    SiteMismatch,
    _alarms_for,
    _check_fits,
    _for,
    new_ticket,
    redact_tickets,
)


@pytest.mark.parametrize(
    "line",
    [b"[" * 30000 + b"]" * 30000, b'{"id": ' + b"9" * 5000 + b', "token": "x"}'],
    ids=["deep-nesting", "huge-integer"],
)
def test_a_line_json_cannot_hold_is_bad_json(line):
    """Nesting too deep or an integer too long is answered bad_json, not a crash."""
    with pytest.raises(proto.ProtocolError) as caught:
        proto.parse_request(line)

    assert caught.value.code == proto.BAD_JSON


def test_a_viewer_never_sees_a_ticket():
    """Slots and jobs shown to a viewer carry no ticket; an operator sees it."""
    slot = {"slot": "01-01-L", "ticket": new_ticket()}

    assert _for(Role.VIEWER, slot)["ticket"] == "<hidden>"
    assert _for(Role.OPERATOR, slot) == slot


def test_a_viewer_reads_alarms_without_tickets():
    """Alarms about a car name its ticket; a viewer's status and alarms show
    it replaced, in the site list and per tower; an operator reads it."""
    ticket = new_ticket()
    alarm = {"tower": "tower-a", "device": "lift", "code": "car_stranded",
             "message": f"car {ticket} left on lift by job j-1"}  # fmt: skip
    status = {"alarms": [alarm], "towers": [{"id": "tower-a", "alarms": [alarm]}]}

    seen = _alarms_for(Role.VIEWER, status)
    assert ticket not in str(seen)
    assert seen["alarms"][0]["message"] == "car <ticket> left on lift by job j-1"
    assert seen["towers"][0]["alarms"][0]["code"] == "car_stranded"
    assert _alarms_for(Role.OPERATOR, status) == status


def test_tickets_are_redacted_from_logged_text():
    """A ticket inside an alarm message is replaced before it is logged."""
    ticket = new_ticket()

    assert redact_tickets(f"car {ticket} left on shuttle-0") == (
        "car <ticket> left on shuttle-0"
    )


def test_a_heartbeat_slower_than_the_plc_allows_is_refused_at_start():
    """poll.heartbeat_ms above half the PLC's heartbeat timeout stops the start."""
    from pathlib import Path

    profile = load_profile(Path(__file__).parents[2] / "plc_profiles" / "lift.toml")

    with pytest.raises(SiteMismatch, match="heartbeat_ms"):
        _check_fits("tower-a", "lift", profile, profile.heartbeat_timeout_ms)
    with pytest.raises(SiteMismatch, match="describes a lift, not a bay"):
        _check_fits("tower-a", "bay-1", profile, 100)
