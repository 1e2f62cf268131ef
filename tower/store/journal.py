"""The journal: the SQLite file that never loses a car.

Theory of operation. The core emits `Persist(record)` actions; the shell hands
each batch to `Journal.write`, which applies the records in order inside one
transaction and commits it (WAL, `synchronous=FULL`: the commit is on disk when
`write` returns). Only then may the shell send the command the batch announced.
On start, `restored_state` reads back what the core needs to reconcile: the
cars and where they are, the open jobs with their steps, the last sequence
number written to each device and the blocked slots.

Rules that always hold:

- one writer: the controller holds an exclusive `flock` on `<journal>.lock`
  for as long as the journal is open for writing; a second writer is refused
  with a `JournalError`. Read-only openers (the console) take no lock and never
  block the writer (WAL readers see the last committed state);
- a batch is all or nothing: any failure rolls the whole batch back;
- a file this program did not write (not SQLite, another application's
  database, a newer schema) is refused and left byte for byte untouched;
- wall-clock times are added here, from the injected clock, as UTC ISO 8601
  with a `Z`; the core never reads a clock.

The schema version lives in `PRAGMA user_version` and the file is marked with
`PRAGMA application_id`. `_MIGRATIONS[n]` takes the schema from version n to
n + 1; a file is only ever migrated up, never down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Self

import structlog

from tower.core.records import (
    CarMoved,
    JobCreated,
    JobDestination,
    JobFinished,
    ModeSet,
    Record,
    SlotBlocked,
    SlotUnblocked,
    StepIntent,
    StepResult,
    TicketClosed,
    TicketIssued,
)

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
"""Returns the current wall-clock time as an aware datetime."""

APPLICATION_ID = 0x5A504B4A  # "ZPKJ": zoo parking journal.
BUSY_TIMEOUT_MS = 5000

# Each entry takes the schema from version index to index + 1. Append only:
# a released migration is never edited.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE tickets (
            ticket TEXT PRIMARY KEY,
            tower TEXT NOT NULL,
            bay TEXT NOT NULL,
            size_class TEXT NOT NULL,
            job_id TEXT NOT NULL,
            issued_at TEXT NOT NULL,
            closed_at TEXT
        )""",
        """CREATE TABLE inventory (
            ticket TEXT PRIMARY KEY REFERENCES tickets (ticket),
            tower TEXT NOT NULL,
            place TEXT NOT NULL,
            since TEXT NOT NULL
        )""",
        """CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('store', 'retrieve', 'relocate')),
            tower TEXT NOT NULL,
            ticket TEXT NOT NULL,
            origin TEXT NOT NULL,
            destination TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('open', 'finished')),
            created_at TEXT NOT NULL,
            finished_at TEXT,
            outcome TEXT CHECK (outcome IN ('done', 'failed', 'cancelled')),
            reason TEXT
        )""",
        """CREATE TABLE steps (
            job_id TEXT NOT NULL REFERENCES jobs (job_id),
            step INTEGER NOT NULL,
            tower TEXT NOT NULL,
            device TEXT NOT NULL,
            code TEXT NOT NULL,
            target INTEGER NOT NULL,
            side TEXT NOT NULL,
            seq INTEGER NOT NULL,
            intent_at TEXT NOT NULL,
            outcome TEXT CHECK (outcome IN ('done', 'fault')),
            fault_code TEXT,
            result_at TEXT,
            UNIQUE (job_id, step, seq)
        )""",
        """CREATE TABLE device_seq (
            tower TEXT NOT NULL,
            device TEXT NOT NULL,
            last_seq INTEGER NOT NULL,
            PRIMARY KEY (tower, device)
        )""",
        """CREATE TABLE blocked_slots (
            tower TEXT NOT NULL,
            slot TEXT NOT NULL,
            reason TEXT NOT NULL,
            since TEXT NOT NULL,
            PRIMARY KEY (tower, slot)
        )""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            role TEXT NOT NULL,
            command TEXT NOT NULL,
            args TEXT NOT NULL CHECK (json_valid(args)),
            outcome TEXT NOT NULL
        )""",
        "CREATE INDEX jobs_open ON jobs (state) WHERE state = 'open'",
    ),
    # 1 -> 2: positioning jobs (no car, no ticket). SQLite cannot alter a
    # CHECK, so the jobs table is rebuilt, its rows and rowids kept (the open
    # jobs are read back in rowid order).
    (
        """CREATE TABLE jobs_v2 (
            job_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL
                CHECK (kind IN ('store', 'retrieve', 'relocate', 'position')),
            tower TEXT NOT NULL,
            ticket TEXT NOT NULL,
            origin TEXT NOT NULL,
            destination TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('open', 'finished')),
            created_at TEXT NOT NULL,
            finished_at TEXT,
            outcome TEXT CHECK (outcome IN ('done', 'failed', 'cancelled')),
            reason TEXT
        )""",
        "INSERT INTO jobs_v2 (rowid, job_id, kind, tower, ticket, origin,"
        " destination, state, created_at, finished_at, outcome, reason)"
        " SELECT rowid, job_id, kind, tower, ticket, origin, destination, state,"
        " created_at, finished_at, outcome, reason FROM jobs",
        "DROP TABLE jobs",
        "ALTER TABLE jobs_v2 RENAME TO jobs",
        "CREATE INDEX jobs_open ON jobs (state) WHERE state = 'open'",
    ),
    # 2 -> 3: the mode an operator chose per tower (auto when absent).
    (
        """CREATE TABLE tower_modes (
            tower TEXT PRIMARY KEY,
            mode TEXT NOT NULL CHECK (mode IN ('auto', 'manual')),
            since TEXT NOT NULL
        )""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class JournalError(Exception):
    """Raised when the journal cannot be opened or a batch cannot be written.

    `path` names the file and `reason` says what is wrong, as one of: `missing`,
    `locked`, `read_only`, `disk_full`, `not_a_journal`, `newer_schema`,
    `older_schema` (a reader met a file the controller has not migrated yet),
    `bad_record` (the batch contradicts the journal: a core bug) and `io`.
    """

    def __init__(self, path: Path, reason: str, message: str) -> None:
        super().__init__(f"journal {path}: {message}")
        self.path = path
        self.reason = reason


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("the journal clock must return an aware datetime")
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _value(item: Any) -> Any:
    return item.value if isinstance(item, Enum) else item


def _translate(path: Path, exc: sqlite3.Error) -> JournalError:
    """Turn an SQLite error into a JournalError that says what to do about it."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_READONLY"):
        return JournalError(path, "read_only", f"cannot write, read-only ({exc})")
    if name == "SQLITE_FULL":
        return JournalError(path, "disk_full", f"disk full ({exc})")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return JournalError(path, "locked", f"locked by another connection ({exc})")
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        return JournalError(path, "not_a_journal", f"not a journal or corrupt ({exc})")
    if name.startswith("SQLITE_CONSTRAINT"):
        return JournalError(path, "bad_record", f"batch refused: {exc}")
    return JournalError(path, "io", f"{type(exc).__name__}: {exc}")


class _BadRecord(Exception):
    """A record names a job, step or ticket the journal does not know."""


class Journal:
    """The SQLite journal of one site. Open it with `Journal.open`."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path,
        *,
        readonly: bool,
        clock: Clock,
        lock_fd: int | None,
    ) -> None:
        self._db = db
        self.path = path
        self.readonly = readonly
        self._clock = clock
        self._lock_fd = lock_fd
        self._closed = False

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        clock: Clock | None = None,
    ) -> Self:
        """Open the journal at `path`, creating it when missing (unless readonly).

        A writer takes the exclusive lock on `<path>.lock` first and migrates an
        older schema up. A reader only reads. Raises JournalError when the file
        is locked by another writer, read-only, not a journal, or has a newer
        schema than this program knows; the file is then left untouched.
        The journal belongs to the thread that opened it (AsyncJournal opens
        it on its worker).
        """
        path = Path(path).absolute()
        clock = clock or _utc_now
        if readonly:
            db = cls._connect_readonly(path)
            journal = cls(db, path, readonly=True, clock=clock, lock_fd=None)
            try:
                journal._check_version(writable=False)
            except BaseException:
                db.close()
                raise
            log.info("journal.opened", path=str(path), readonly=True)
            return journal

        lock_fd = _take_lock(path)
        try:
            if path.exists() and not os.access(path, os.R_OK | os.W_OK):
                raise JournalError(path, "read_only", "file is read-only")
            try:
                db = sqlite3.connect(path, isolation_level=None)
            except sqlite3.Error as exc:
                raise _translate(path, exc) from None
            journal = cls(db, path, readonly=False, clock=clock, lock_fd=lock_fd)
            try:
                journal._configure()
                found = journal._check_version(writable=True)
                journal._migrate(found)
            except BaseException:
                db.close()
                raise
        except BaseException:
            _release_lock(lock_fd)
            raise
        log.info(
            "journal.opened",
            path=str(path),
            readonly=False,
            schema_version=SCHEMA_VERSION,
            migrated_from=found if found != SCHEMA_VERSION else None,
        )
        return journal

    @staticmethod
    def _connect_readonly(path: Path) -> sqlite3.Connection:
        if not path.exists():
            raise JournalError(path, "missing", "no such file")
        uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise _translate(path, exc) from None
        return db

    def _configure(self) -> None:
        """Connection settings; none of them writes to the file."""
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise _translate(self.path, exc) from None

    def _check_version(self, *, writable: bool) -> int:
        """Read the file's identity and schema version, without writing.

        Returns the version found (0 for a fresh, empty file a writer may set
        up). Raises JournalError for a file that is not ours or too new.
        """
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            tables = self._db.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
        except sqlite3.Error as exc:
            raise _translate(self.path, exc) from None

        if version == 0 and app_id == 0 and tables == 0:
            if not writable:
                raise JournalError(self.path, "not_a_journal", "empty, never written")
            return 0
        if app_id != APPLICATION_ID:
            raise JournalError(
                self.path,
                "not_a_journal",
                f"not a journal (SQLite application_id {app_id:#x}, "
                f"expected {APPLICATION_ID:#x})",
            )
        if version > SCHEMA_VERSION:
            raise JournalError(
                self.path,
                "newer_schema",
                f"schema version {version} is newer than this program knows "
                f"({SCHEMA_VERSION}); upgrade the program, the file is left as is",
            )
        if not writable and version < SCHEMA_VERSION:
            raise JournalError(
                self.path,
                "older_schema",
                f"schema version {version} is older than {SCHEMA_VERSION}; "
                "the controller migrates it when it next starts",
            )
        return version

    def _migrate(self, found: int) -> None:
        try:
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(self.path, "io", f"cannot switch to WAL ({mode})")
            # A table rebuild drops a table others refer to: the references
            # are checked by hand before each commit instead (SQLite's own
            # procedure for schema changes ALTER TABLE cannot make).
            self._db.execute("PRAGMA foreign_keys = OFF")
            for version in range(found, SCHEMA_VERSION):
                with self._transaction():
                    for statement in _MIGRATIONS[version]:
                        self._db.execute(statement)
                    broken = self._db.execute("PRAGMA foreign_key_check").fetchone()
                    if broken is not None:
                        raise JournalError(
                            self.path,
                            "io",
                            f"migration to version {version + 1} breaks a "
                            f"reference in table {broken[0]}; left at {version}",
                        )
                    self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    self._db.execute(f"PRAGMA user_version = {version + 1}")
            self._db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise _translate(self.path, exc) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full) may leave the transaction open.
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    # -- writing ------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        """Apply a batch of records in order, in one transaction, and commit.

        When this returns, the batch is on disk. On any failure the whole batch
        is rolled back and JournalError is raised (`bad_record` when a record
        names a job, step or ticket the journal does not know).
        """
        self._require_writer()
        now = _iso(self._clock())
        try:
            with self._transaction():
                for record in records:
                    self._apply(record, now)
        except _BadRecord as exc:
            raise JournalError(
                self.path, "bad_record", f"batch refused: {exc}"
            ) from None
        except sqlite3.Error as exc:
            raise _translate(self.path, exc) from None

    def _apply(self, record: Record, now: str) -> None:
        handler = _HANDLERS.get(type(record))
        if handler is None:
            raise _BadRecord(f"unknown record type {type(record).__name__}")
        handler(self, record, now)

    def _changed(self, sql: str, params: Sequence[Any], what: str) -> None:
        if self._db.execute(sql, params).rowcount != 1:
            raise _BadRecord(what)

    def _ticket_issued(self, r: TicketIssued, now: str) -> None:
        self._db.execute(
            "INSERT INTO tickets (ticket, tower, bay, size_class, job_id, issued_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (r.ticket, r.tower, r.bay, _value(r.size_class), r.job_id, now),
        )

    def _job_created(self, r: JobCreated, now: str) -> None:
        self._db.execute(
            "INSERT INTO jobs (job_id, kind, tower, ticket, origin, destination,"
            " state, created_at) VALUES (?, ?, ?, ?, ?, ?, 'open', ?)",
            (r.job_id, _value(r.kind), r.tower, r.ticket, r.origin, r.destination, now),
        )

    def _job_destination(self, r: JobDestination, _now: str) -> None:
        self._changed(
            "UPDATE jobs SET destination = ? WHERE job_id = ? AND state = 'open'",
            (r.destination, r.job_id),
            f"JobDestination for job {r.job_id!r}, which is not open",
        )

    def _step_intent(self, r: StepIntent, now: str) -> None:
        self._db.execute(
            "INSERT INTO steps (job_id, step, tower, device, code, target, side, seq,"
            " intent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.job_id, r.step, r.tower, r.device, r.code, r.target,
                _value(r.side), r.seq, now,
            ),
        )  # fmt: skip
        self._db.execute(
            "INSERT INTO device_seq (tower, device, last_seq) VALUES (?, ?, ?)"
            " ON CONFLICT (tower, device) DO UPDATE SET last_seq = excluded.last_seq",
            (r.tower, r.device, r.seq),
        )

    def _step_result(self, r: StepResult, now: str) -> None:
        self._changed(
            "UPDATE steps SET outcome = ?, fault_code = ?, result_at = ?"
            " WHERE job_id = ? AND step = ? AND seq = ? AND tower = ? AND device = ?"
            " AND outcome IS NULL",
            (r.outcome, r.fault_code, now, r.job_id, r.step, r.seq, r.tower, r.device),
            f"StepResult for job {r.job_id!r} step {r.step} seq {r.seq} on "
            f"{r.tower}/{r.device}: no such step awaiting its result",
        )

    def _car_moved(self, r: CarMoved, now: str) -> None:
        row = self._db.execute(
            "SELECT closed_at FROM tickets WHERE ticket = ?", (r.ticket,)
        ).fetchone()
        if row is None:
            raise _BadRecord(f"CarMoved for ticket {r.ticket!r}, never issued")
        if row[0] is not None:
            raise _BadRecord(f"CarMoved for ticket {r.ticket!r}, closed at {row[0]}")
        self._db.execute(
            "INSERT INTO inventory (ticket, tower, place, since) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (ticket) DO UPDATE SET tower = excluded.tower,"
            " place = excluded.place, since = excluded.since",
            (r.ticket, r.tower, r.place, now),
        )

    def _job_finished(self, r: JobFinished, now: str) -> None:
        self._changed(
            "UPDATE jobs SET state = 'finished', finished_at = ?, outcome = ?,"
            " reason = ? WHERE job_id = ? AND state = 'open'",
            (now, _value(r.outcome), r.reason, r.job_id),
            f"JobFinished for job {r.job_id!r}, which is not open",
        )

    def _ticket_closed(self, r: TicketClosed, now: str) -> None:
        self._changed(
            "UPDATE tickets SET closed_at = ? WHERE ticket = ? AND closed_at IS NULL",
            (now, r.ticket),
            f"TicketClosed for ticket {r.ticket!r}, unknown or already closed",
        )
        self._db.execute("DELETE FROM inventory WHERE ticket = ?", (r.ticket,))

    def _slot_blocked(self, r: SlotBlocked, now: str) -> None:
        self._db.execute(
            "INSERT INTO blocked_slots (tower, slot, reason, since) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (tower, slot) DO UPDATE SET reason = excluded.reason",
            (r.tower, r.slot, r.reason, now),
        )

    def _mode_set(self, r: ModeSet, now: str) -> None:
        self._db.execute(
            "INSERT INTO tower_modes (tower, mode, since) VALUES (?, ?, ?)"
            " ON CONFLICT (tower) DO UPDATE SET mode = excluded.mode,"
            " since = excluded.since",
            (r.tower, r.mode, now),
        )

    def _slot_unblocked(self, r: SlotUnblocked, _now: str) -> None:
        # Unblocking a slot that is not blocked changes nothing: idempotent.
        self._db.execute(
            "DELETE FROM blocked_slots WHERE tower = ? AND slot = ?", (r.tower, r.slot)
        )

    def audit(
        self, role: str, command: str, args: dict[str, Any], outcome: str
    ) -> None:
        """Append one operator command and its outcome to the audit log."""
        self._require_writer()
        try:
            # ASCII escapes: any string a client sent (a lone surrogate too)
            # is stored, so no accepted command escapes the audit log.
            text = json.dumps(args, sort_keys=True, ensure_ascii=True, default=str)
            self._db.execute(
                "INSERT INTO audit (at, role, command, args, outcome)"
                " VALUES (?, ?, ?, ?, ?)",
                (_iso(self._clock()), _value(role), command, text, outcome),
            )
        except sqlite3.Error as exc:
            raise _translate(self.path, exc) from None

    def _require_writer(self) -> None:
        if self._closed:
            raise JournalError(self.path, "io", "journal is closed")
        if self.readonly:
            raise JournalError(self.path, "read_only", "opened read-only")

    # -- reading ------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            cursor = self._db.execute(sql, params)
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise _translate(self.path, exc) from None

    def restored_state(self) -> dict[str, Any]:
        """What the core needs on start, read in one consistent snapshot.

        `cars`: ticket -> {tower, place, size_class} for every car in a tower;
        `open_jobs`: the unfinished jobs in creation order, each with its
        `steps` in the order they were intended; `last_seq`: (tower, device) ->
        the last sequence number written to that device; `blocked`:
        (tower, slot) -> reason; `modes`: tower -> the mode an operator set;
        `jobs_total`: how many jobs the journal has ever held.
        """
        try:
            self._db.execute("BEGIN")  # One read snapshot for all four queries.
        except sqlite3.Error as exc:
            raise _translate(self.path, exc) from None
        try:
            cars = self._rows(
                "SELECT i.ticket, i.tower, i.place, t.size_class FROM inventory i"
                " JOIN tickets t USING (ticket) ORDER BY i.ticket"
            )
            jobs = self._rows(
                "SELECT job_id, kind, tower, ticket, origin, destination FROM jobs"
                " WHERE state = 'open' ORDER BY rowid"
            )
            steps = self._rows(
                "SELECT s.job_id, s.step, s.device, s.code, s.target, s.side, s.seq,"
                " s.outcome, s.fault_code, s.intent_at, s.result_at FROM steps s"
                " JOIN jobs j USING (job_id) WHERE j.state = 'open' ORDER BY s.rowid"
            )
            seqs = self._rows("SELECT tower, device, last_seq FROM device_seq")
            blocked = self._rows("SELECT tower, slot, reason FROM blocked_slots")
            modes = self._rows("SELECT tower, mode FROM tower_modes")
            (jobs_total,) = self._db.execute("SELECT count(*) FROM jobs").fetchone()
        finally:
            self._db.execute("COMMIT")

        by_job: dict[str, list[dict[str, Any]]] = {job["job_id"]: [] for job in jobs}
        for step in steps:
            by_job[step.pop("job_id")].append(step)
        return {
            "cars": {
                car["ticket"]: {
                    "tower": car["tower"],
                    "place": car["place"],
                    "size_class": car["size_class"],
                }
                for car in cars
            },
            "open_jobs": [{**job, "steps": by_job[job["job_id"]]} for job in jobs],
            "last_seq": {(s["tower"], s["device"]): s["last_seq"] for s in seqs},
            "blocked": {(b["tower"], b["slot"]): b["reason"] for b in blocked},
            "modes": {m["tower"]: m["mode"] for m in modes},
            "jobs_total": jobs_total,
        }

    def audit_log(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest `limit` audit entries, newest first; `args` decoded."""
        rows = self._rows(
            "SELECT id, at, role, command, args, outcome FROM audit"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        for row in rows:
            row["args"] = json.loads(row["args"])
        return rows

    def tickets(self) -> list[dict[str, Any]]:
        """Every ticket ever issued, closed ones included, in issue order."""
        return self._rows(
            "SELECT ticket, tower, bay, size_class, job_id, issued_at, closed_at"
            " FROM tickets ORDER BY rowid"
        )

    def inventory(self) -> list[dict[str, Any]]:
        """Every car in a tower and its place, by ticket."""
        return self._rows(
            "SELECT ticket, tower, place, since FROM inventory ORDER BY tower, ticket"
        )

    def jobs(self, open_only: bool = False) -> list[dict[str, Any]]:
        """Jobs in creation order; only the unfinished ones with `open_only`."""
        return self._rows(
            "SELECT job_id, kind, tower, ticket, origin, destination, state,"
            " created_at, finished_at, outcome, reason FROM jobs"
            " WHERE state = 'open' OR NOT ? ORDER BY rowid",
            (open_only,),
        )

    def close(self) -> None:
        """Close the file and release the writer lock. Safe to call twice."""
        self._closed = True
        self._db.close()
        if self._lock_fd is not None:
            _release_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_HANDLERS: dict[type, Callable[[Journal, Any, str], None]] = {
    TicketIssued: Journal._ticket_issued,
    JobCreated: Journal._job_created,
    JobDestination: Journal._job_destination,
    StepIntent: Journal._step_intent,
    StepResult: Journal._step_result,
    CarMoved: Journal._car_moved,
    JobFinished: Journal._job_finished,
    TicketClosed: Journal._ticket_closed,
    SlotBlocked: Journal._slot_blocked,
    SlotUnblocked: Journal._slot_unblocked,
    ModeSet: Journal._mode_set,
}


def _take_lock(path: Path) -> int:
    """Take the exclusive writer lock on `<path>.lock`; record our pid in it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except FileNotFoundError:
        raise JournalError(path, "missing", "its directory does not exist") from None
    except PermissionError:
        raise JournalError(
            path, "read_only", f"cannot create the lock file {lock_path}"
        ) from None
    except OSError as exc:
        raise JournalError(path, "io", f"lock file {lock_path}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise JournalError(
                path, "locked", f"locked by another writer (pid {holder})"
            ) from None
        raise JournalError(path, "io", f"cannot lock {lock_path}: {exc}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class AsyncJournal:
    """The journal for asyncio code: every call runs on one dedicated thread.

    One worker keeps the calls in the order they were made and keeps SQLite's
    fsync off the event loop. A call whose caller is cancelled still runs to
    its end on the worker: a cancelled `write` may have committed, so never
    treat cancellation as "not written".
    """

    def __init__(self, journal: Journal, executor: ThreadPoolExecutor) -> None:
        self._journal = journal
        self._executor = executor

    @property
    def path(self) -> Path:
        """The journal file."""
        return self._journal.path

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        clock: Clock | None = None,
    ) -> AsyncJournal:
        """Open the journal on a fresh worker thread (see `Journal.open`)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        loop = asyncio.get_running_loop()
        try:
            journal = await loop.run_in_executor(
                executor,
                lambda: Journal.open(path, readonly=readonly, clock=clock),
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(journal, executor)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def write(self, records: Sequence[Record]) -> None:
        """`Journal.write` on the worker: returns once the batch is on disk."""
        await self._call(self._journal.write, list(records))

    async def audit(
        self, role: str, command: str, args: dict[str, Any], outcome: str
    ) -> None:
        """`Journal.audit` on the worker."""
        await self._call(self._journal.audit, role, command, dict(args), outcome)

    async def restored_state(self) -> dict[str, Any]:
        """`Journal.restored_state` on the worker."""
        return await self._call(self._journal.restored_state)

    async def audit_log(self, limit: int = 50) -> list[dict[str, Any]]:
        """`Journal.audit_log` on the worker."""
        return await self._call(self._journal.audit_log, limit)

    async def tickets(self) -> list[dict[str, Any]]:
        """`Journal.tickets` on the worker."""
        return await self._call(self._journal.tickets)

    async def inventory(self) -> list[dict[str, Any]]:
        """`Journal.inventory` on the worker."""
        return await self._call(self._journal.inventory)

    async def jobs(self, open_only: bool = False) -> list[dict[str, Any]]:
        """`Journal.jobs` on the worker."""
        return await self._call(self._journal.jobs, open_only)

    async def close(self) -> None:
        """Finish every queued call, close the journal and stop the worker."""
        try:
            await self._call(self._journal.close)
        finally:
            self._executor.shutdown(wait=False)
