"""Requests the core refuses, and what it does with cars it cannot take."""

from __future__ import annotations

import pytest
from corekit import Scripted, commands, records, small_site

from tower.config import Zone
from tower.core import RequestRefused
from tower.core.events import (
    CancelJob,
    RetrieveRequested,
    SetMode,
    StoreRequested,
)
from tower.core.records import JobFinished


def refusal(s: Scripted, event) -> str:
    before = (s.core.jobs(), s.core.status())
    with pytest.raises(RequestRefused) as refused:
        s.handle(event)
    assert (s.core.jobs(), s.core.status()) == before  # nothing changed
    return refused.value.code


def test_retrieve_unknown_ticket_is_refused():
    """A ticket the tower does not hold is refused, nothing changed."""
    s = Scripted()
    s.start()

    assert refusal(s, RetrieveRequested("nope", "j1")) == "unknown_ticket"


def test_store_from_an_empty_bay_is_refused():
    """No car in the bay: nothing to store."""
    s = Scripted()
    s.start()

    assert refusal(s, StoreRequested("tower-a", "bay-1", "T1", "j1")) == "bay_empty"


def test_store_with_no_free_slot_is_refused():
    """Every slot disabled: no store is accepted."""
    s = Scripted(small_site(zones=[Zone(disabled=True)]))
    s.start()
    s.car_in_bay()

    code = refusal(s, StoreRequested("tower-a", "bay-1", "T1", "j1"))

    assert code == "no_free_slot"


def test_store_before_the_tower_is_in_auto_is_refused():
    """A tower still starting (a device has not reported) takes no request."""
    s = Scripted()
    s.car_in_bay()

    code = refusal(s, StoreRequested("tower-a", "bay-1", "T1", "j1"))

    assert code == "tower_not_auto"


def test_second_store_at_a_busy_bay_is_refused():
    """A bay serving one car takes no second request; a ticket is used once."""
    s = Scripted()
    s.start()
    s.car_in_bay(person=True)
    s.handle(StoreRequested("tower-a", "bay-1", "T1", "j1"))

    assert refusal(s, StoreRequested("tower-a", "bay-1", "T2", "j2")) == "bay_busy"
    assert refusal(s, RetrieveRequested("T1", "j3")) == "ticket_in_use"
    assert refusal(s, StoreRequested("tower-a", "bay-1", "T2", "j1")) == (
        "job_id_in_use"
    )


def test_too_large_car_is_released_back_to_its_driver():
    """A car taller than every class: the job fails with car_too_large, the
    bay is released so the driver can take it back, and no ticket is issued."""
    s = Scripted()
    s.start()
    s.car_in_bay(height_mm=2500)
    (check,) = commands(s.handle(StoreRequested("tower-a", "bay-1", "T1", "j1")))

    actions = s.finish(check, flags={"door_closed": True})
    (release,) = commands(actions)
    finished = records(s.finish(release, flags={"door_closed": False}))

    assert (release.device, release.code) == ("bay-1", "release")
    assert not [r for r in records(actions) if type(r).__name__ == "TicketIssued"]
    assert finished[-1] == JobFinished("j1", "failed", "car_too_large")
    assert s.core.jobs() == []


def test_tall_car_goes_to_a_tall_slot():
    """A car above the standard height is classed tall and gets a tall slot."""
    s = Scripted(small_site(zones=[Zone(levels=[2], size="tall")]))
    s.start()
    s.car_in_bay(height_mm=1900)
    (check,) = commands(s.handle(StoreRequested("tower-a", "bay-1", "T1", "j1")))

    s.finish(check, flags={"door_closed": True})

    assert s.core.ticket("T1")["size_class"] == "tall"
    assert s.core.jobs()[0]["destination"] == "02-01-L"


def test_cancel_before_the_check_cancels_the_job():
    """A store still waiting for its driver to leave can be cancelled; one that
    is checking cannot."""
    s = Scripted()
    s.start()
    s.car_in_bay(person=True)
    s.handle(StoreRequested("tower-a", "bay-1", "T1", "j1"))

    finished = records(s.handle(CancelJob("j1")))
    s.car_in_bay(person=False)
    s.handle(StoreRequested("tower-a", "bay-1", "T2", "j2"))

    assert finished == [JobFinished("j1", "cancelled", "cancelled by operator")]
    assert refusal(s, CancelJob("j2")) == "job_running"


def test_manual_mode_sends_nothing_and_auto_restarts_through_starting():
    """In manual no command goes out; back to auto the tower passes through
    starting and waits for a fresh status of every device."""
    s = Scripted()
    s.start()
    s.handle(SetMode("tower-a", "manual"))
    s.car_in_bay()

    assert refusal(s, StoreRequested("tower-a", "bay-1", "T1", "j1")) == (
        "tower_not_auto"
    )
    s.handle(SetMode("tower-a", "auto"))
    assert s.core.status()["towers"][0]["state"] == "starting"
    s.start()
    assert s.core.status()["towers"][0]["state"] == "auto"
