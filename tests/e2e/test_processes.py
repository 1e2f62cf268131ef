"""The commands as an operator runs them: `tower sim`, `tower run`, `tower ctl`
and `tower simctl` as separate processes on loopback, with a real Mosquitto."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.rig import free_port_bases

ROOT = Path(__file__).resolve().parents[2]
TOWER = [sys.executable, "-m", "tower"]
TOKEN = "operator-token-for-the-test-0123"


def _site_file(tmp_path: Path, mqtt_url: str) -> Path:
    text = (ROOT / "sim/sites/reference.toml").read_text(encoding="utf-8")
    base_a, base_b = free_port_bases(2)
    text = text.replace("port_base = 15020", f"port_base = {base_a}")
    text = text.replace("port_base = 15120", f"port_base = {base_b}")
    text = text.replace('"../../plc_profiles"', f'"{ROOT / "plc_profiles"}"')
    text = text.replace("interval_ms = 100", "interval_ms = 20")
    text = re.sub(r'url = "mqtt://[^"]+"', f'url = "{mqtt_url}"', text)
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOWER, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _until(check, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


@pytest.fixture
def site(tmp_path, mosquitto):
    """A simulator and a controller running as processes, and their paths."""
    site_file = _site_file(tmp_path, mosquitto.url)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"operator {TOKEN}\n", encoding="utf-8")
    tokens.chmod(0o600)
    env = {
        **os.environ,
        "TOWER_SOCKET": str(tmp_path / "control.sock"),
        "TOWER_TOKEN": TOKEN,
        "TOWER_SIM_SOCKET": str(tmp_path / "sim.sock"),
    }
    sim = subprocess.Popen(
        [*TOWER, "sim", "--site", str(site_file), "--speed", "20",
         "--control", env["TOWER_SIM_SOCKET"]],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _until(lambda: Path(env["TOWER_SIM_SOCKET"]).exists(), 30)
    controller = subprocess.Popen(
        [*TOWER, "run", "--site", str(site_file),
         "--journal", str(tmp_path / "journal.db"),
         "--socket", env["TOWER_SOCKET"], "--tokens", str(tokens)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield env, controller, mosquitto
    finally:
        for process in (controller, sim):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_car_stored_and_retrieved_with_the_commands(site):
    """A car arrives (simctl), is stored and retrieved (ctl), and is collected;
    a wrong ticket is refused with exit 1; SIGTERM stops the controller with
    exit 0 and the feed says offline."""
    env, controller, mosquitto = site

    def all_auto():
        result = _run("ctl", "--json", "status", env=env)
        if result.returncode != 0:
            return False
        towers = json.loads(result.stdout)["towers"]
        return all(t["state"] == "auto" for t in towers)

    _until(all_auto)
    _json(_run("simctl", "arrive", "tower-a/bay-1", "--driver-time-s", "2", env=env))
    time.sleep(0.5)
    stored = _until(
        lambda: (
            (r := _run("ctl", "--json", "store", "tower-a/bay-1", env=env)).returncode
            == 0
            and json.loads(r.stdout)
        )
    )
    _until(lambda: not _json(_run("ctl", "--json", "jobs", env=env))["jobs"])
    slots = _json(_run("ctl", "--json", "slots", "tower-a", env=env))
    held = [s for s in slots["towers"][0]["slots"] if s["state"] == "occupied"]
    wrong = _run("ctl", "retrieve", "NOPE-NOPE-NOPE", env=env)
    retrieved = _json(_run("ctl", "--json", "retrieve", stored["ticket"], env=env))

    def released():
        # The bay is the one the controller chose: under the pipelined
        # sequencer it is bound when the car comes down, so the answer to
        # `retrieve` may not name it yet. The car stands in it, door open.
        status = _json(_run("simctl", "status", env=env))
        bays = status["towers"]["tower-a"]["bays"]
        ready = [
            name
            for name, bay in bays.items()
            if bay["car"] and not bay["flags"]["door_closed"]
        ]
        return (
            ready
            and _run("simctl", "collect", f"tower-a/{ready[0]}", env=env).returncode
            == 0
        )

    _until(released)
    controller.send_signal(signal.SIGTERM)
    code = controller.wait(timeout=20)
    retained = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port),
         "-t", "zoo/parking/status", "-C", "1", "-W", "5"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip

    assert [s["ticket"] for s in held] == [stored["ticket"]]
    assert wrong.returncode == 1
    assert "unknown_ticket" in wrong.stderr + wrong.stdout
    assert retrieved["tower"] == "tower-a"
    assert code == 0, controller.stderr.read() if controller.stderr else ""
    assert retained.stdout.strip() == "offline"
