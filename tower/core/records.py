"""Journal records: the facts the core asks the shell to make durable.

The core emits `Persist(record)` actions carrying these; `tower.store.journal`
writes them in one transaction per batch and reads them back on start. They are
plain frozen dataclasses so the core stays free of I/O and the journal free of
core logic. Wall-clock times are added by the journal, never by the core.

A *place* is where a car is: a slot id (`03-02-L`), a device (`lift`,
`shuttle-3`) or a bay id (`bay-1`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class JobKind(str, Enum):
    """What a job does."""

    STORE = "store"  # Bay to slot.
    RETRIEVE = "retrieve"  # Slot to bay.
    RELOCATE = "relocate"  # Slot to slot.
    POSITION = "position"  # An idle device, with no car, to where a job may want it.


class JobOutcome(str, Enum):
    """How a job ended."""

    DONE = "done"  # The car reached its destination.
    FAILED = "failed"  # A fault or refusal ended it; the car is where CarMoved says.
    CANCELLED = "cancelled"  # An operator cancelled it, or a positioning was dropped.


@dataclass(frozen=True)
class TicketIssued:
    """A visitor's car got a ticket. The ticket is random, never a counter."""

    ticket: str
    tower: str
    bay: str
    job_id: str
    size_class: str


@dataclass(frozen=True)
class JobCreated:
    """A job was accepted."""

    job_id: str
    tower: str
    kind: JobKind
    ticket: str  # '' for a positioning job: it moves no car
    origin: str  # place the car starts from; a positioning job's device
    destination: str  # place the car goes to ('' until allocated); or a target


@dataclass(frozen=True)
class JobDestination:
    """A store or relocate job got its slot."""

    job_id: str
    destination: str


@dataclass(frozen=True)
class StepIntent:
    """A command is about to be sent; written before it goes to the PLC."""

    job_id: str
    step: int
    tower: str
    device: str
    code: str
    target: int
    side: str
    seq: int


@dataclass(frozen=True)
class StepResult:
    """The PLC finished a command."""

    job_id: str
    step: int
    tower: str
    device: str
    seq: int
    outcome: str  # 'done' or 'fault'
    fault_code: str


@dataclass(frozen=True)
class CarMoved:
    """A car is now at a new place (confirmed by the PLC)."""

    ticket: str
    tower: str
    place: str


@dataclass(frozen=True)
class JobFinished:
    """A job ended."""

    job_id: str
    outcome: JobOutcome
    reason: str


@dataclass(frozen=True)
class TicketClosed:
    """The car left the tower with its driver; the ticket is spent."""

    ticket: str


@dataclass(frozen=True)
class SlotBlocked:
    """A slot was taken out of allocation (sensor disagreement, operator)."""

    tower: str
    slot: str
    reason: str


@dataclass(frozen=True)
class SlotUnblocked:
    """A blocked slot was returned to service."""

    tower: str
    slot: str


@dataclass(frozen=True)
class ModeSet:
    """An operator put a tower in `manual` or `auto`: it stays so across
    resets and restarts until they say otherwise."""

    tower: str
    mode: str


Record = (
    TicketIssued
    | JobCreated
    | JobDestination
    | StepIntent
    | StepResult
    | CarMoved
    | JobFinished
    | TicketClosed
    | SlotBlocked
    | SlotUnblocked
    | ModeSet
)
