"""A restart on the real journal: what the core journaled is what it restores."""

from __future__ import annotations

from corekit import small_site

from sim.harness import Harness
from sim.plant import Car
from tower.core import RestoredState, SiteCore
from tower.core.actions import Alarm
from tower.core.events import DeviceStatus
from tower.store.journal import Journal

TOWER = "tower-a"


def restart(h: Harness, journal: Journal) -> tuple[SiteCore, list]:
    """A new core from the journal, fed the plant's statuses as they stand."""
    restored = RestoredState.from_journal(journal.restored_state())
    core = SiteCore(h.site, restored=restored, heartbeat_timeout_s=None)
    actions = []
    for device in h.site.towers[0].device_names():
        status = h.plant.status(TOWER, device)
        actions += core.handle(DeviceStatus(TOWER, device, status), h.now)
    return core, actions


def test_restart_restores_parked_cars_and_resumes_the_interrupted_job(tmp_path):
    """Two cars parked and a third stopped on its way by a crash: after the
    restart the parked cars are where the sensors see them, the third car's
    job is rebuilt from the journal and resumes (the PLC statuses prove its
    steps), with no alarm; sequence numbers continue from the journal."""
    with Journal.open(tmp_path / "journal.db") as journal:
        h = Harness(small_site(levels=2, columns=2), journal=journal)
        parked = [h.arrive(TOWER, "bay-1", Car(f"c{i}")) for i in range(2)]
        h.run_until_idle(limit=2000)
        moving = h.arrive(TOWER, "bay-1", Car("c2"))
        h.run_until(h.now + 60 + 10 + 30)  # driver out, check, on its way
        place = h.core.ticket(moving)["place"]
        sent = {d: link.seq for d, link in h.core.towers[TOWER].links.items()}

        core, actions = restart(h, journal)

    codes = sorted((a.device, a.code) for a in actions if isinstance(a, Alarm))
    (job,) = core.jobs()
    assert place in ("shuttle-0", "lift", "shuttle-1", "shuttle-2")
    assert codes == []
    assert job["state"] == "running"
    for ticket in parked:
        assert core.ticket(ticket)["place"] == h.plant.where(h.car_of[ticket])
    assert core.ticket(moving)["place"] == place
    assert {d: link.seq for d, link in core.towers[TOWER].links.items()} == sent
    assert core.status()["towers"][0]["state"] == "auto"
