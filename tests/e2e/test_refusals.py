"""`tower run` refuses to start, in one line and with exit 2, where starting
would lose track of cars; the journal is left as it was."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tower.core.records import CarMoved, JobCreated, JobKind, TicketIssued
from tower.store.journal import Journal

ROOT = Path(__file__).resolve().parents[2]


def test_a_journal_with_cars_of_a_tower_the_site_lacks_is_refused(tmp_path):
    """The site file lost tower-b (removed or renamed by mistake) while the
    journal still has a car and an open job there: the controller does not
    start, names the tower and what it holds, and leaves the file as is."""
    journal_path = tmp_path / "journal.db"
    journal = Journal.open(journal_path)
    journal.write([
        TicketIssued("T-LOST", "tower-gone", "bay-1", "j1", "standard"),
        CarMoved("T-LOST", "tower-gone", "02-03-L"),
        JobCreated("j2", "tower-gone", JobKind.RETRIEVE, "T-LOST", "02-03-L", ""),
    ])  # fmt: skip
    journal.close()
    before = hashlib.sha256(journal_path.read_bytes()).hexdigest()

    result = subprocess.run(
        [sys.executable, "-m", "tower", "run",
         "--site", str(ROOT / "sim/sites/reference.toml"),
         "--journal", str(journal_path),
         "--socket", str(tmp_path / "control.sock"),
         "--tokens", str(tmp_path / "tokens")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    assert "tower 'tower-gone': 1 cars, 1 open jobs" in result.stderr
    assert "T-LOST" not in result.stderr  # tickets never reach a log
    assert hashlib.sha256(journal_path.read_bytes()).hexdigest() == before
