"""Job sequencing: which waiting jobs may take their path now.

The core keeps the waiting jobs of a tower in arrival order and asks its
`Sequencer` after every event which of them to admit. An admitted job gets its
whole path (bay, ground shuttle, lift, level shuttle) reserved at once, so no
two jobs ever wait on each other (the deadlock rule of docs/architecture.md).
The sequencer only chooses; the core reserves, and re-checks every device, so
a policy cannot double-book one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tower.core.job import Job
from tower.core.plan import StepSpec, devices_of


@dataclass(frozen=True, slots=True)
class Admission:
    """Devices reserved for a job now, and the plan it runs.

    `plan` is added to a waiting job's steps when it is first admitted; for a
    job already running it is ignored (pass `[]`). `reserve` names the
    devices to reserve now; None reserves the plan's whole path. A retrieval
    whose visitor gave no bay is planned through `bay` provisionally; it is
    bound to `bay` (journaled, and its steps not sent yet planned again
    through it) once `bay` is among the devices it holds.
    """

    job: Job
    bay: str
    plan: list[StepSpec]
    reserve: frozenset[str] | None = None


class PathBook(Protocol):
    """What a sequencer may ask the core about a tower's devices."""

    def plan_for(self, job: Job, bay: str) -> list[StepSpec]:
        """The motion plan of a waiting job through `bay`."""
        ...

    def available(self, device: str, job: Job) -> bool:
        """Whether `job` could reserve `device` now (free, healthy; a bay empty)."""
        ...

    def bays_for(self, job: Job) -> list[str]:
        """The bays a job may use, nearest to the lift first."""
        ...


class Sequencer(Protocol):
    """A sequencing policy."""

    def admit(self, waiting: Sequence[Job], book: PathBook) -> list[Admission]:
        """The jobs to admit now, from `waiting` (oldest first)."""
        ...


class FcfsWholePath:
    """First come, first served, skipping a job whose path is busy.

    A job whose path is free is admitted even if an older one waits, so an idle
    level never waits behind a busy one; the lift and the ground shuttle are on
    every path, so in practice one car moves through the lift at a time.
    """

    def admit(self, waiting: Sequence[Job], book: PathBook) -> list[Admission]:
        """Every waiting job whose whole path is free, oldest first."""
        admitted: list[Admission] = []
        taken: set[str] = set()
        for job in waiting:
            for bay in book.bays_for(job):
                plan = book.plan_for(job, bay)
                path = devices_of(plan)
                if taken.isdisjoint(path) and all(
                    book.available(device, job) for device in path
                ):
                    admitted.append(Admission(job, bay, plan))
                    taken |= path
                    break
        return admitted
