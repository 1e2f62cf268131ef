"""What the core asks the shell to do, in the order it must be done.

`SiteCore.handle()` returns a list of actions. The shell carries them out in
order; in particular it commits every `Persist` that precedes a `SendCommand`
before it writes the command, which is how a step's intent reaches the journal
before its motion reaches the PLC.
"""

from __future__ import annotations

from dataclasses import dataclass

from tower.core.records import Record


@dataclass(frozen=True, slots=True)
class SendCommand:
    """Write one command: `cmd_target`, `cmd_side`, `cmd_seq`, then `cmd_code`.

    `code` and `side` are the names of the device kind's command enums
    (`"move"`, `"lift"`). `job_id` and `step` say which job step it runs.

    The code `"reset"` is not a command of the handshake: it asks the shell
    to write the device's `reset` point (clearing a fault, or an e-stop once
    released); `seq`, `target`, `side`, `job_id` and `step` are then 0 or ''.
    """

    tower: str
    device: str
    seq: int
    code: str
    target: int
    side: str
    job_id: str
    step: int


@dataclass(frozen=True, slots=True)
class Persist:
    """Make a journal record durable (before any later `SendCommand`)."""

    record: Record


@dataclass(frozen=True, slots=True)
class Occupancy:
    """A tower's occupancy figures changed; publish them.

    `capacity` counts enabled slots; `occupied` the usable slots holding a car
    or reserved for a store; `free` the rest of the usable ones (`capacity -
    occupied - blocked`), `free_ev` and `free_tall` the free ones with a charger
    or of the tall class; `closed` the blocked and disabled slots; `state` the
    tower state (`auto`, `degraded`, ...).
    """

    tower: str
    capacity: int
    occupied: int
    free: int
    free_ev: int
    free_tall: int
    closed: int
    state: str


@dataclass(frozen=True, slots=True)
class Alarm:
    """An operator alarm became active.

    `device` names what the alarm concerns: a device (`shuttle-3`), a place
    (a slot `03-02-L`), a job id, or '' for the tower itself. One alarm is
    active at most once per (tower, device, code).
    """

    tower: str
    device: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class AlarmCleared:
    """The condition of an active alarm ended."""

    tower: str
    device: str
    code: str


@dataclass(frozen=True, slots=True)
class ReadStatus:
    """Poll the device now instead of waiting for the next poll period.

    Emitted when a command is overdue, so the judgement rests on a fresh status.
    """

    tower: str
    device: str


Action = SendCommand | Persist | Occupancy | Alarm | AlarmCleared | ReadStatus
