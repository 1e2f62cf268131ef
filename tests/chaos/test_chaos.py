"""The crash test in CI: `tower chaos --kills 20` and its zero targets.

The run is real: the simulator on loopback, the controller as a child process
killed with SIGKILL twenty times and restarted on its journal. It takes about
a minute.
"""

from __future__ import annotations

import json

from tower.chaos import TRIGGERS, Options, plan_kills, write_site
from tower.chaos import main as chaos_main


def test_twenty_kills_lose_no_car_and_repeat_no_motion(capsys):
    """20 SIGKILLs on a seeded busy day: no car lost, none where the journal
    or the slot sensors would not have it, no motion run twice, every ticket
    retrieved or still retrievable, and every restart back in auto."""
    code = chaos_main(["--kills", "20", "--seed", "1", "--json"])

    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == []
    assert (report["kills"], report["cars_lost"], report["mismatches"]) == (20, 0, 0)
    assert report["jobs_repeated"] == 0
    assert report["not_retrievable"] == 0
    assert report["not_recovered"] == 0
    assert report["tickets_issued"] > 0
    assert report["kills_mid_motion"] > 0
    assert 0 < report["recovery_s_p50"] <= report["recovery_s_p95"]
    assert code == 0


def test_kill_plan_is_seeded():
    """The same seed gives the same kill plan; every trigger is drawn."""
    plan = plan_kills(Options(kills=200, seed=7))

    assert plan == plan_kills(Options(kills=200, seed=7))
    assert plan != plan_kills(Options(kills=200, seed=8))
    assert {k.trigger for k in plan} == set(TRIGGERS)
    slow = [k for k in plan if k.restart_pause_s]
    assert all(k.restart_pause_s > Options().watchdog_s for k in slow)
    assert 0 < len(slow) < len(plan)


def test_the_controller_under_test_runs_the_policy_asked_for(tmp_path):
    """--policy goes into the run's site file, which the controller reads."""
    path = tmp_path / "site.toml"

    site = write_site(Options(policy="nearest"), path, "mqtt://127.0.0.1:1")

    assert site.policy.name == "nearest"
    assert Options().policy == "pipelined"
