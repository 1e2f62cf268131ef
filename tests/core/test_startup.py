"""A tower at start: every device must answer, and the operator hears which
one does not."""

from __future__ import annotations

import pytest
from corekit import TOWER, Scripted, alarms, commands, small_site

from tower.config import SizeClass
from tower.core import SiteCore
from tower.core.errors import RequestRefused
from tower.core.events import DeviceOffline, ResetTower, SetMode
from tower.core.restore import RestoredState, UnknownTowers


def test_a_device_that_never_answers_raises_an_alarm_naming_it():
    """Shuttle 2 refuses every connection from the start: the tower waits in
    `starting` with a `device_offline` alarm naming it and the driver's
    reason; once it answers, the alarm clears and the tower goes to auto."""
    s = Scripted()
    for tower, device in s.points:
        if device != "shuttle-2":
            s.report(device, tower=tower)
    assert s.core.status()["towers"][0]["state"] == "starting"

    raised = alarms(s.handle(DeviceOffline(TOWER, "shuttle-2", "connection refused")))
    assert [(a.device, a.code) for a in raised] == [("shuttle-2", "device_offline")]
    assert "connection refused" in raised[0].message
    assert "not answered since start" in raised[0].message
    assert s.core.status()["towers"][0]["state"] == "starting"

    s.report("shuttle-2")
    assert s.core.status()["towers"][0]["state"] == "auto"
    codes = {a["code"] for a in s.core.status()["alarms"]}
    assert "device_offline" not in codes


def test_a_journal_naming_a_tower_the_site_lacks_is_refused_before_start():
    """Cars, open jobs or blocked slots of an unknown tower: no core."""
    restored = RestoredState(
        cars={"T1": ("tower-x", "01-01-L", SizeClass.STANDARD)},
        blocked={("tower-y", "01-02-R"): "sensor says empty"},
    )
    with pytest.raises(UnknownTowers) as refused:
        SiteCore(small_site(), restored=restored)
    message = str(refused.value)
    assert "tower 'tower-x': 1 cars, 0 open jobs, 0 blocked slots" in message
    assert "tower 'tower-y': 0 cars, 0 open jobs, 1 blocked slots" in message
    assert "names only tower-a" in message


def test_a_journal_of_the_site_own_towers_starts():
    restored = RestoredState(cars={"T1": (TOWER, "01-01-L", SizeClass.STANDARD)})
    core = SiteCore(small_site(), restored=restored)
    assert core.inventory.cars["T1"].place == "01-01-L"


def test_a_device_another_master_writes_to_gets_no_commands():
    """The driver reports the lift `contested` (its heartbeat register holds
    what someone else wrote): alarm naming it, tower degraded, no command to
    it; when the read-back is ours again, the alarm clears."""
    s = Scripted()
    s.start()
    actions = s.report("lift", contested=True)
    assert [(a.device, a.code) for a in alarms(actions)] == [("lift", "second_master")]
    assert "another master" in alarms(actions)[0].message
    assert s.core.status()["towers"][0]["state"] == "degraded"

    s.report("lift", contested=False)
    assert s.core.status()["towers"][0]["state"] == "auto"
    assert "second_master" not in {a["code"] for a in s.core.status()["alarms"]}


def test_no_reset_goes_to_a_device_another_master_writes_to():
    """A reset clears e-stops and faults: it is not written to a PLC another
    master writes to; the others get theirs."""
    s = Scripted()
    s.start()
    s.report("lift", state="fault", fault_code="interlock", contested=True)
    s.report("shuttle-2", state="fault", fault_code="interlock")
    sent = [c.device for c in commands(s.handle(ResetTower(TOWER)))]
    assert sent == ["shuttle-2"]


def test_manual_chosen_in_fault_is_kept_for_after_the_reset():
    """In fault, `manual` does not leave the fault (only a reset does), and
    `auto` is refused; the reset then brings the tower to manual, not auto."""
    s = Scripted()
    s.start()
    s.report("lift", state="estop", flags={"estop": True})
    assert s.core.status()["towers"][0]["state"] == "fault"

    s.handle(SetMode(TOWER, "manual"))
    assert s.core.status()["towers"][0]["state"] == "fault"
    with pytest.raises(RequestRefused):
        s.handle(SetMode(TOWER, "auto"))
    s.report("lift", state="idle", flags={"estop": False})
    s.handle(ResetTower(TOWER))
    for tower, device in s.points:
        s.report(device, tower=tower)
    assert s.core.status()["towers"][0]["state"] == "manual"
