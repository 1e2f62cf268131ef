"""The systemd units: systemd accepts them, the controller's is hardened, and they
agree with the site file's defaults.

`systemd-analyze verify` checks that every ExecStart binary exists, and
/opt/tower/venv/bin/tower is not installed on a development machine or in CI.
The verify tests therefore check a copy of each unit, written to tmp_path, whose
ExecStart points at this virtual environment's `tower` script (or /bin/true
where that script is missing); nothing else in the unit changes.

`systemd-analyze verify` (systemd 252, checked here) does not look up User= or
Group=: it accepts User=tower on a machine that has no such user. The user comes
from systemd/tower.sysusers.conf, which a test checks with systemd-sysusers in a
scratch root instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tower.config import ControlConfig, JournalConfig

UNITS = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED_TOWER = "/opt/tower/venv/bin/tower"
# The controller's unit must rate this or better (lower is safer, 0..10).
MAX_EXPOSURE = 2.0

_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
_SYSUSERS = shutil.which("systemd-sysusers") or "/usr/bin/systemd-sysusers"
needs_analyze = pytest.mark.skipif(
    not Path(_ANALYZE).is_file(),
    reason="systemd-analyze is not installed (Debian package: systemd)",
)


def _directives(unit: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment in a unit, repeats kept."""
    section = ""
    out = []
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _value(unit: Path, key: str) -> str:
    values = [v for _, k, v in _directives(unit) if k == key]
    assert len(values) == 1, f"{unit.name}: {key} set {len(values)} times"
    return values[0]


def _runnable_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart's binary swapped for one that exists here."""
    local = Path(sys.executable).parent / "tower"
    binary = str(local) if local.is_file() else "/bin/true"
    text = unit.read_text(encoding="utf-8")
    assert f"ExecStart={INSTALLED_TOWER} " in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED_TOWER, binary), encoding="utf-8")
    return copy


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _exposure(unit: Path) -> float:
    result = subprocess.run(
        [_ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: ([0-9]+(?:\.[0-9]+)?)",
        result.stdout,
    )
    assert match, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))


@pytest.mark.systemd
@needs_analyze
@pytest.mark.parametrize("name", ["tower.service", "tower-sim.service"])
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path):
    """systemd-analyze verify accepts the unit without an error or a warning."""
    result = _verify(_runnable_copy(UNITS / name, tmp_path))

    assert (result.returncode, result.stderr.strip()) == (0, "")


@pytest.mark.systemd
@needs_analyze
def test_verify_reports_a_broken_unit(tmp_path: Path):
    """The verify check is not vacuous: a misspelt setting shows up on stderr."""
    copy = _runnable_copy(UNITS / "tower.service", tmp_path)
    copy.write_text(
        copy.read_text(encoding="utf-8").replace("ProtectHome=yes", "ProtectHom=yes"),
        encoding="utf-8",
    )

    result = _verify(copy)

    assert "ProtectHom" in result.stderr


@pytest.mark.systemd
@needs_analyze
def test_controller_exposure_is_at_most_two():
    """systemd-analyze security rates tower.service 2.0 or better (offline)."""
    exposure = _exposure(UNITS / "tower.service")

    print(f"tower.service exposure: {exposure}")
    assert exposure <= MAX_EXPOSURE


@pytest.mark.systemd
@needs_analyze
def test_simulator_exposure_is_reported():
    """systemd-analyze security rates tower-sim.service (informational only)."""
    exposure = _exposure(UNITS / "tower-sim.service")

    print(f"tower-sim.service exposure: {exposure}")
    assert 0.0 <= exposure <= 10.0


@pytest.mark.systemd
@pytest.mark.skipif(
    not Path(_SYSUSERS).is_file(), reason="systemd-sysusers is not installed"
)
def test_sysusers_snippet_creates_the_tower_user(tmp_path: Path):
    """systemd-sysusers would create the system user and group the unit runs as."""
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [
            _SYSUSERS,
            f"--root={tmp_path}",
            "--dry-run",
            str(UNITS / "tower.sysusers.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    said = result.stdout + result.stderr

    assert result.returncode == 0, said
    assert "Creating group 'tower'" in said
    assert "Creating user 'tower'" in said
    assert _value(UNITS / "tower.service", "User") == "tower"
    assert _value(UNITS / "tower.service", "Group") == "tower"


def test_controller_unit_matches_site_defaults():
    """The unit's directories are where the site file's defaults point."""
    unit = UNITS / "tower.service"
    socket_default = Path(ControlConfig().socket)
    journal_default = Path(JournalConfig().path)
    tokens_default = Path(ControlConfig().tokens_file)

    assert Path("/run") / _value(unit, "RuntimeDirectory") == socket_default.parent
    assert Path("/var/lib") / _value(unit, "StateDirectory") == journal_default.parent
    assert tokens_default.parent == Path("/etc/tower")
    assert _value(unit, "ExecStart") == (
        f"{INSTALLED_TOWER} run --site /etc/tower/site.toml"
    )


def test_controller_unit_keeps_the_notify_contract():
    """Type=notify with a watchdog: what tower/service.py and tower/notify.py expect."""
    unit = UNITS / "tower.service"

    assert {
        key: _value(unit, key)
        for key in ("Type", "NotifyAccess", "WatchdogSec", "Restart", "RestartSec")
    } == {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "10s",
        "Restart": "on-failure",
        "RestartSec": "2s",
    }


_MDWE_WORKLOAD = textwrap.dedent(
    """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)  # the kernel has no PR_SET_MDWE (Linux < 6.3)

    import mmap
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        pass
    else:
        sys.exit("a writable and executable mapping was allowed")

    import asyncio, sqlite3
    import aiomqtt, pydantic, pymodbus.client, pymodbus.server, structlog
    from tower.feed.fallback_broker import FallbackBroker

    async def main():
        async with FallbackBroker() as broker:
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                await client.publish("t", b"x", qos=1, retain=True)
            assert broker.retained == {"t": b"x"}

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    asyncio.run(main())
    db = sqlite3.connect(sys.argv[1])
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    print("ok")
    """
)


def test_python_runs_under_memory_deny_write_execute(tmp_path: Path):
    """CPython and our C extensions work where W+X memory is refused.

    systemd's MemoryDenyWriteExecute= refuses writable-and-executable mappings
    with a seccomp filter; the kernel's PR_SET_MDWE refuses the same, so a
    process under it stands in for the service: it imports the libraries the
    controller uses, runs the broker and an MQTT client, and writes SQLite WAL.
    """
    result = subprocess.run(
        [sys.executable, "-c", _MDWE_WORKLOAD, str(tmp_path / "journal.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE to stand in for systemd")

    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
