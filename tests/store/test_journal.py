"""The SQLite journal, on real files in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tower.core.records import (
    CarMoved,
    JobCreated,
    JobDestination,
    JobFinished,
    JobKind,
    JobOutcome,
    ModeSet,
    SlotBlocked,
    SlotUnblocked,
    StepIntent,
    StepResult,
    TicketClosed,
    TicketIssued,
)
from tower.store.journal import (
    _MIGRATIONS,
    APPLICATION_ID,
    SCHEMA_VERSION,
    AsyncJournal,
    Journal,
    JournalError,
)

T0 = datetime(2026, 12, 4, 8, 0, 0, tzinfo=UTC)


class FakeClock:
    """A wall clock that moves one second per reading."""

    def __init__(self) -> None:
        self.now = T0
        self.threads: list[str] = []

    def __call__(self) -> datetime:
        self.threads.append(threading.current_thread().name)
        self.now += timedelta(seconds=1)
        return self.now


def at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    journal = Journal.open(path, clock=FakeClock())
    yield journal
    journal.close()


def store_job_start(ticket: str = "t-1", job: str = "j-1") -> list:
    return [
        JobCreated(job, "tower-a", JobKind.STORE, ticket, "bay-1", ""),
        TicketIssued(ticket, "tower-a", "bay-1", job, "standard"),
        CarMoved(ticket, "tower-a", "bay-1"),
    ]


def intent(job: str, step: int, device: str, seq: int) -> StepIntent:
    return StepIntent(job, step, "tower-a", device, "move", 3, "left", seq)


def result(job: str, step: int, device: str, seq: int) -> StepResult:
    return StepResult(job, step, "tower-a", device, seq, "done", "")


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """Make a file unwritable, even for root (who ignores the mode bits)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        path.chmod(0o644)
        return
    done = subprocess.run(["chattr", "+i", str(path)], check=False)
    if done.returncode != 0:
        pytest.skip("running as root and chattr +i is not available")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_new_journal_is_wal_full_sync_at_current_schema(journal: Journal) -> None:
    """A fresh journal is in WAL mode, syncs FULL and carries the schema version."""
    db = journal._db  # The settings are per connection: look at the real one.

    settings = (
        db.execute("PRAGMA journal_mode").fetchone()[0],
        db.execute("PRAGMA synchronous").fetchone()[0],
        db.execute("PRAGMA foreign_keys").fetchone()[0],
        db.execute("PRAGMA user_version").fetchone()[0],
    )

    assert settings == ("wal", 2, 1, SCHEMA_VERSION)


def test_every_record_type_round_trips(journal: Journal) -> None:
    """Every record type lands in its table, stamped with the injected clock."""
    journal.write(store_job_start())  # clock reading 1
    journal.write([JobDestination("j-1", "03-02-L"), intent("j-1", 1, "lift", 7)])
    journal.write([result("j-1", 1, "lift", 7), CarMoved("t-1", "tower-a", "03-02-L")])
    journal.write([JobFinished("j-1", JobOutcome.DONE, "")])  # reading 4
    journal.write([SlotBlocked("tower-a", "05-01-R", "sensor disagrees")])
    journal.write([SlotBlocked("tower-a", "05-02-R", "operator")])
    journal.write([SlotUnblocked("tower-a", "05-02-R")])
    journal.write([TicketClosed("t-1")])  # reading 8
    journal.write([ModeSet("tower-a", "manual"), ModeSet("tower-b", "manual")])
    journal.write([ModeSet("tower-b", "auto")])

    tickets, jobs = journal.tickets(), journal.jobs()
    state = journal.restored_state()

    assert tickets == [
        {
            "ticket": "t-1",
            "tower": "tower-a",
            "bay": "bay-1",
            "size_class": "standard",
            "job_id": "j-1",
            "issued_at": at(1),
            "closed_at": at(8),
        }
    ]
    assert jobs == [
        {
            "job_id": "j-1",
            "kind": "store",
            "tower": "tower-a",
            "ticket": "t-1",
            "origin": "bay-1",
            "destination": "03-02-L",
            "state": "finished",
            "created_at": at(1),
            "finished_at": at(4),
            "outcome": "done",
            "reason": "",
        }
    ]
    assert journal.inventory() == []
    assert state == {
        "cars": {},
        "open_jobs": [],
        "last_seq": {("tower-a", "lift"): 7},
        "blocked": {("tower-a", "05-01-R"): "sensor disagrees"},
        "modes": {"tower-a": "manual", "tower-b": "auto"},
        "jobs_total": 1,
    }


def test_restored_state_after_a_sequence(path: Path) -> None:
    """After a restart the open jobs, their steps, cars and sequences come back."""
    with Journal.open(path, clock=FakeClock()) as journal:
        journal.write(store_job_start("t-1", "j-1"))
        journal.write([JobDestination("j-1", "02-01-L"), intent("j-1", 1, "lift", 1)])
        journal.write([result("j-1", 1, "lift", 1)])
        journal.write([CarMoved("t-1", "tower-a", "02-01-L")])
        journal.write([JobFinished("j-1", JobOutcome.DONE, "")])
        journal.write(
            [
                JobCreated(
                    "j-2", "tower-a", JobKind.RETRIEVE, "t-1", "02-01-L", "bay-2"
                ),
                intent("j-2", 1, "shuttle-2", 4),
                intent("j-2", 2, "lift", 2),  # reading 7
            ]
        )
        journal.write([result("j-2", 1, "shuttle-2", 4)])  # reading 8
        journal.write([CarMoved("t-1", "tower-a", "shuttle-2")])  # reading 9
        journal.write(store_job_start("t-2", "j-3"))  # reading 10

    with Journal.open(path, readonly=True) as journal:
        state = journal.restored_state()

    assert state == {
        "cars": {
            "t-1": {"tower": "tower-a", "place": "shuttle-2", "size_class": "standard"},
            "t-2": {"tower": "tower-a", "place": "bay-1", "size_class": "standard"},
        },
        "open_jobs": [
            {
                "job_id": "j-2",
                "kind": "retrieve",
                "tower": "tower-a",
                "ticket": "t-1",
                "origin": "02-01-L",
                "destination": "bay-2",
                "steps": [
                    {
                        "step": 1,
                        "device": "shuttle-2",
                        "code": "move",
                        "target": 3,
                        "side": "left",
                        "seq": 4,
                        "outcome": "done",
                        "fault_code": "",
                        "intent_at": at(6),
                        "result_at": at(7),
                    },
                    {
                        "step": 2,
                        "device": "lift",
                        "code": "move",
                        "target": 3,
                        "side": "left",
                        "seq": 2,
                        "outcome": None,
                        "fault_code": None,
                        "intent_at": at(6),
                        "result_at": None,
                    },
                ],
            },
            {
                "job_id": "j-3",
                "kind": "store",
                "tower": "tower-a",
                "ticket": "t-2",
                "origin": "bay-1",
                "destination": "",
                "steps": [],
            },
        ],
        "last_seq": {("tower-a", "lift"): 2, ("tower-a", "shuttle-2"): 4},
        "blocked": {},
        "modes": {},
        "jobs_total": 3,
    }


def test_bad_batch_rolls_back_as_a_whole(journal: Journal) -> None:
    """A batch with one bad record leaves nothing of itself behind."""
    journal.write(store_job_start("t-1", "j-1"))
    bad = [
        *store_job_start("t-2", "j-2"),
        intent("j-2", 1, "lift", 1),
        result("j-2", 1, "lift", 99),  # No step with seq 99.
    ]

    with pytest.raises(JournalError) as caught:
        journal.write(bad)

    assert caught.value.reason == "bad_record"
    assert "seq 99" in str(caught.value)
    assert str(journal.path) in str(caught.value)
    assert [t["ticket"] for t in journal.tickets()] == ["t-1"]
    assert [j["job_id"] for j in journal.jobs()] == ["j-1"]
    assert journal.restored_state()["last_seq"] == {}


@pytest.mark.parametrize(
    ("records", "words"),
    [
        (store_job_start("t-1", "j-1"), "UNIQUE"),
        ([CarMoved("t-9", "tower-a", "bay-1")], "never issued"),
        ([JobFinished("j-9", JobOutcome.FAILED, "x")], "not open"),
        ([JobDestination("j-9", "01-01-L")], "not open"),
        ([TicketClosed("t-9")], "unknown or already closed"),
        ([intent("j-9", 1, "lift", 1)], "FOREIGN KEY"),
    ],
)
def test_records_contradicting_the_journal_are_refused(
    journal: Journal, records: list, words: str
) -> None:
    """Duplicates and records naming unknown jobs or tickets are refused."""
    journal.write(store_job_start("t-1", "j-1"))

    with pytest.raises(JournalError) as caught:
        journal.write(records)

    assert caught.value.reason == "bad_record"
    assert words in str(caught.value)


def test_journal_stays_usable_after_a_refused_batch(journal: Journal) -> None:
    """A refused batch does not poison the connection for the next one."""
    with pytest.raises(JournalError):
        journal.write([TicketClosed("nobody")])

    journal.write(store_job_start())

    assert len(journal.inventory()) == 1


def test_newer_schema_is_refused_and_file_untouched(path: Path) -> None:
    """A file from a newer program is refused by writer and reader, byte for byte."""
    Journal.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()

    with pytest.raises(JournalError) as writer:
        Journal.open(path)
    with pytest.raises(JournalError) as reader:
        Journal.open(path, readonly=True)

    assert writer.value.reason == reader.value.reason == "newer_schema"
    assert f"schema version {SCHEMA_VERSION + 1} is newer" in str(writer.value)
    assert path.read_bytes() == before


def test_version_1_journal_migrates_keeping_its_jobs(path: Path) -> None:
    """A journal written before positioning jobs migrates up: its open jobs,
    their steps and their order survive, and a positioning job can be written."""
    db = sqlite3.connect(path, isolation_level=None)
    for statement in _MIGRATIONS[0]:
        db.execute(statement)
    db.executescript(
        """
        INSERT INTO jobs VALUES ('j-2', 'retrieve', 'tower-a', 't-2', '01-01-L',
            '', 'open', 'x', NULL, NULL, NULL);
        INSERT INTO jobs VALUES ('j-1', 'store', 'tower-a', 't-1', 'bay-1', '',
            'open', 'x', NULL, NULL, NULL);
        INSERT INTO steps VALUES ('j-1', 0, 'tower-a', 'bay-1', 'check', 0,
            'none', 1, 'x', NULL, NULL, NULL);
        """
    )
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 1")
    db.close()

    with Journal.open(path, clock=FakeClock()) as journal:
        journal.write(
            [JobCreated("p-1", "tower-a", JobKind.POSITION, "", "shuttle-2", "3")]
        )
        state = journal.restored_state()
        version = journal._db.execute("PRAGMA user_version").fetchone()[0]
        references = journal._db.execute("PRAGMA foreign_keys").fetchone()[0]

    assert (version, references) == (SCHEMA_VERSION, 1)
    assert [j["job_id"] for j in state["open_jobs"]] == ["j-2", "j-1", "p-1"]
    assert [s["device"] for s in state["open_jobs"][1]["steps"]] == ["bay-1"]
    assert state["open_jobs"][2]["kind"] == "position"


def test_not_a_database_is_refused_and_file_untouched(path: Path) -> None:
    """A file that is not SQLite at all is refused and left as it was."""
    path.write_bytes(b"these are the zoo's opening hours, not a journal\n" * 100)
    before = path.read_bytes()

    with pytest.raises(JournalError) as writer:
        Journal.open(path)
    with pytest.raises(JournalError) as reader:
        Journal.open(path, readonly=True)

    assert writer.value.reason == reader.value.reason == "not_a_journal"
    assert str(path) in str(writer.value)
    assert path.read_bytes() == before


def test_another_applications_database_is_refused_untouched(path: Path) -> None:
    """An SQLite file of some other program is not taken over."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE animals (name TEXT)")
    db.commit()
    db.close()
    before = path.read_bytes()

    with pytest.raises(JournalError) as caught:
        Journal.open(path)

    assert caught.value.reason == "not_a_journal"
    assert "application_id" in str(caught.value)
    assert path.read_bytes() == before


def test_read_only_file_is_refused(path: Path) -> None:
    """A journal file the controller cannot write is refused with a clear error."""
    Journal.open(path).close()

    with immutable(path), pytest.raises(JournalError) as caught:
        Journal.open(path)

    assert caught.value.reason == "read_only"
    assert f"journal {path}: file is read-only" == str(caught.value)


def test_second_writer_is_refused_until_the_first_closes(path: Path) -> None:
    """Only one controller writes; the second gets a clear error naming the pid."""
    first = Journal.open(path)

    with pytest.raises(JournalError) as caught:
        Journal.open(path)
    first.close()
    second = Journal.open(path)
    second.close()

    assert caught.value.reason == "locked"
    assert f"locked by another writer (pid {os.getpid()})" in str(caught.value)


def test_readonly_reader_never_blocks_the_writer(journal: Journal, path: Path) -> None:
    """A console reading the journal sees commits and never holds the writer up."""
    reader = Journal.open(path, readonly=True)
    console = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    console.execute("BEGIN")  # A long read transaction, as a slow console would.
    console.execute("SELECT count(*) FROM tickets").fetchone()

    for n in range(20):
        journal.write(store_job_start(f"t-{n}", f"j-{n}"))
    seen = len(reader.inventory())
    console.execute("COMMIT")
    with pytest.raises(JournalError) as refused:
        reader.write(store_job_start("t-x", "j-x"))
    reader.close()
    console.close()

    assert seen == 20
    assert refused.value.reason == "read_only"


def test_disk_full_is_reported_and_rolled_back(journal: Journal) -> None:
    """When SQLite runs out of room the batch is refused as disk_full."""
    journal.write(store_job_start("t-0", "j-0"))
    db = journal._db  # No portable way to fill a disk: cap the file instead.
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    big = [SlotBlocked("tower-a", f"{n:02d}-01-L", "x" * 2000) for n in range(1, 60)]

    with pytest.raises(JournalError) as caught:
        journal.write(big)

    assert caught.value.reason == "disk_full"
    assert journal.restored_state()["blocked"] == {}


def test_readonly_open_of_a_missing_file_is_refused(path: Path) -> None:
    """A reader never creates the journal."""
    with pytest.raises(JournalError) as caught:
        Journal.open(path, readonly=True)

    assert caught.value.reason == "missing"
    assert not path.exists()


def test_writer_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    """The journal's directory must exist; the error says so."""
    with pytest.raises(JournalError) as caught:
        Journal.open(tmp_path / "nowhere" / "journal.db")

    assert caught.value.reason == "missing"
    assert "directory does not exist" in str(caught.value)


def test_audit_keeps_any_string_a_client_sent(journal: Journal) -> None:
    """A lone surrogate (valid JSON, not UTF-8) or any other text in a
    command's arguments still lands in the audit log, decoded back as sent."""
    args = {"tower": "tower-b", "mode": "manual", "note": "\ud800 Zoo Zürich"}
    journal.audit("maintenance", "mode", args, "ok")

    (entry,) = journal.audit_log(limit=1)
    assert entry["args"] == args


def test_audit_log_lists_newest_first(journal: Journal) -> None:
    """Audit entries come back newest first with their arguments decoded."""
    journal.audit("operator", "store", {"tower": "tower-a", "bay": "bay-1"}, "ok")
    journal.audit("maintenance", "reset", {"tower": "tower-b"}, "refused:busy")
    journal.audit("operator", "mode", {"tower": "tower-a", "mode": "manual"}, "ok")

    entries = journal.audit_log(limit=2)

    assert entries == [
        {
            "id": 3,
            "at": at(3),
            "role": "operator",
            "command": "mode",
            "args": {"tower": "tower-a", "mode": "manual"},
            "outcome": "ok",
        },
        {
            "id": 2,
            "at": at(2),
            "role": "maintenance",
            "command": "reset",
            "args": {"tower": "tower-b"},
            "outcome": "refused:busy",
        },
    ]


def test_closed_journal_refuses_writes(path: Path) -> None:
    """Writing after close is a clear error, and close is idempotent."""
    journal = Journal.open(path)
    journal.close()
    journal.close()

    with pytest.raises(JournalError) as caught:
        journal.write(store_job_start())

    assert "closed" in str(caught.value)


_CRASHING_WRITER = """
import sys
from tower.core.records import CarMoved, JobCreated, JobKind, TicketIssued
from tower.store.journal import Journal

journal = Journal.open(sys.argv[1])
n = 0
while True:
    journal.write([
        JobCreated(f"j-{n}", "tower-a", JobKind.STORE, f"t-{n}", "bay-1", ""),
        TicketIssued(f"t-{n}", "tower-a", "bay-1", f"j-{n}", "standard"),
        CarMoved(f"t-{n}", "tower-a", "bay-1"),
    ])
    print("ack", n, flush=True)
    n += 1
"""


def test_killed_writer_loses_no_committed_batch(path: Path) -> None:
    """After a SIGKILL mid-write, every acknowledged batch is whole, none is half."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acks = (line.split()[1] for line in proc.stdout if line.startswith("ack "))
    for _ in range(30):
        acknowledged = int(next(acks))
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    with Journal.open(path) as journal:  # The kernel dropped the dead one's lock.
        tickets = {t["ticket"] for t in journal.tickets()}
        jobs = {j["ticket"] for j in journal.jobs(open_only=True)}
        cars = set(journal.restored_state()["cars"])

    assert len(tickets) >= acknowledged + 1
    assert tickets == jobs == cars


async def test_async_journal_writes_in_order_on_one_worker(path: Path) -> None:
    """Concurrent async writes commit in call order, all on the journal thread."""
    clock = FakeClock()
    journal = await AsyncJournal.open(path, clock=clock)

    await asyncio.gather(
        *(journal.write(store_job_start(f"t-{n}", f"j-{n}")) for n in range(50))
    )
    await journal.audit("operator", "store", {"bay": "tower-a/bay-1"}, "ok")
    jobs = await journal.jobs(open_only=True)
    audit = await journal.audit_log()
    await journal.close()

    assert [j["job_id"] for j in jobs] == [f"j-{n}" for n in range(50)]
    assert audit[0]["command"] == "store"
    assert {name.split("_")[0] for name in clock.threads} == {"journal"}
