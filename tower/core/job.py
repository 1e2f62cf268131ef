"""Jobs and their steps: what the tower is doing for one car.

Theory of operation
-------------------
A job moves one car. A **store** job starts when a driver has left a car in a
bay: it waits in `requested` until nobody is in the bay, runs the bay `check`
(`checking`: the door closes, the car is measured), chooses a slot
(`allocating`), waits for its path (`waiting_path`: bay, ground shuttle, lift
and level shuttle, reserved in one go by the sequencer) and runs its motion
plan (`running`) to `done`. A car too large for any slot, or with no slot left
for its class, goes back to its driver: the bay is released (`returning`) and
the job ends `failed`. A **retrieve** job goes straight from `requested` to
`waiting_path` and runs a plan that ends with the bay's `release`. A
**position** job moves one idle device, with no car, to where the next job
will likely want it (the sequencer says where): it is admitted as it is
made, runs one `move` and ends `done`. One whose move never went out (it
could not start at once, or a restart found it unsent) is dropped: it ends
`cancelled`, as nothing moved.

A job is a sequence of **steps**, each one command to one device. A step is
`pending` until its predecessors are done and its device can take it, `sent`
once its intent is journaled and the command written, `accepted` when the PLC
echoes its sequence number, and `done` or `fault` when the PLC reports the end.

Rules that always hold:

- a job never moves a car before its whole path is reserved, and releases each
  device when its last step involving that device is done;
- a step fault, or anything the core cannot prove after a restart, puts the job
  in `held`: it keeps its devices and waits for an operator (`CancelJob`);
  nothing is retried blindly;
- a step goes back to `pending` only on proof from the PLC's own status: a
  command restored from the journal that the PLC never latched (`unsent`: it
  goes again under its journaled sequence, which the PLC runs at most once),
  or one the PLC stopped because the controller's heartbeat stopped while the
  sensors show the car where the journal has it (`retry`: it goes again under
  a new sequence, at most `MAX_RETRIES` times);
- an operator may cancel a job only before its car moves: in `requested` and
  `waiting_path` (a measured car is handed back through `cancelling`), or in
  `held` once none of its commands is running (a held job whose car is in a
  bay hands it back through `cancelling` too: only the bay's `release` runs,
  the steps planned before the cancel are dead);
- `held` is the job's fault state and `fault` the step's: an event without a
  transition lands there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tower.config import SizeClass
from tower.core.machine import Machine
from tower.core.model import SlotId
from tower.core.records import JobKind, JobOutcome


class JobState(str, Enum):
    """Where a job is in its life."""

    REQUESTED = "requested"  # Accepted; a store waits for nobody to be in the bay.
    CHECKING = "checking"  # The bay check runs: door closing, entry check, measuring.
    ALLOCATING = "allocating"  # The car is measured; its slot is being chosen.
    WAITING_PATH = "waiting_path"  # Queued until every device on its path is free.
    RUNNING = "running"  # Its motion plan runs.
    RETURNING = "returning"  # The car goes back to its driver: the bay releases it.
    CANCELLING = "cancelling"  # Cancelled by an operator; the bay releases the car.
    HELD = "held"  # Stopped on a fault or an unprovable state; an operator decides.
    DONE = "done"  # The car reached its destination.
    FAILED = "failed"  # Ended without reaching its destination; the car is accounted.
    CANCELLED = "cancelled"  # Cancelled before its car moved; or a positioning dropped.


class JobEvent(str, Enum):
    """What happens to a job."""

    BAY_CLEAR = "bay_clear"  # Nobody is in the bay: the check may run.
    QUEUED = "queued"  # A retrieve joins the queue for its path.
    MEASURED = "measured"  # The bay check is done; the car's size is known.
    SLOT_CHOSEN = "slot_chosen"  # The allocator gave a slot; it is reserved.
    NO_SLOT = "no_slot"  # The car is too large, or no slot of its class is free.
    ADMITTED = "admitted"  # The sequencer reserved the whole path.
    PLAN_DONE = "plan_done"  # The last step of the current plan is done.
    STEP_FAULT = "step_fault"  # A step ended in a fault (or the core hit a bug).
    CAR_LEFT = "car_left"  # The car drove out of the bay before the check.
    CANCEL = "cancel"  # An operator cancelled; nothing to hand back.
    CANCEL_RETURN = "cancel_return"  # An operator cancelled a measured car.
    DROP = "drop"  # A positioning job is given up before its move went out.


TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

S, E = JobState, JobEvent
_FAULTS = (S.CHECKING, S.RUNNING, S.RETURNING, S.CANCELLING)

JOB_TABLE: dict[tuple[JobState, JobEvent], JobState] = {
    (S.REQUESTED, E.BAY_CLEAR): S.CHECKING,
    (S.REQUESTED, E.QUEUED): S.WAITING_PATH,
    (S.REQUESTED, E.CAR_LEFT): S.CANCELLED,
    (S.REQUESTED, E.CANCEL): S.CANCELLED,
    (S.CHECKING, E.MEASURED): S.ALLOCATING,
    (S.ALLOCATING, E.SLOT_CHOSEN): S.WAITING_PATH,
    (S.ALLOCATING, E.NO_SLOT): S.RETURNING,
    (S.WAITING_PATH, E.ADMITTED): S.RUNNING,
    (S.WAITING_PATH, E.CANCEL): S.CANCELLED,
    (S.WAITING_PATH, E.CANCEL_RETURN): S.CANCELLING,
    (S.WAITING_PATH, E.DROP): S.CANCELLED,
    (S.RUNNING, E.PLAN_DONE): S.DONE,
    (S.RUNNING, E.DROP): S.CANCELLED,
    (S.RETURNING, E.PLAN_DONE): S.FAILED,
    (S.CANCELLING, E.PLAN_DONE): S.CANCELLED,
    **{(state, E.STEP_FAULT): S.HELD for state in _FAULTS},
    # A step that ran in parallel faults too after the job was held.
    (S.HELD, E.STEP_FAULT): S.HELD,
    (S.HELD, E.CANCEL): S.CANCELLED,
    (S.HELD, E.CANCEL_RETURN): S.CANCELLING,
}
"""(state, event) -> next state of a job."""

OUTCOMES = {
    JobState.DONE: JobOutcome.DONE,
    JobState.FAILED: JobOutcome.FAILED,
    JobState.CANCELLED: JobOutcome.CANCELLED,
}


class StepState(str, Enum):
    """Where one command is in the PLC handshake."""

    PENDING = "pending"  # Not sent: waiting for its predecessors or its device.
    SENT = "sent"  # Intent journaled, command written; no echo yet.
    ACCEPTED = "accepted"  # The PLC echoed its sequence number as accepted.
    DONE = "done"  # The PLC reported it done.
    FAULT = "fault"  # The PLC reported a fault, or the step broke a rule.


class StepEvent(str, Enum):
    """What the handshake judge concluded about a step's command."""

    SEND = "send"  # The command goes out.
    ACCEPT = "accept"  # seq_accepted shows its sequence.
    DONE = "done"  # seq_done shows its sequence with result done.
    FAULT = "fault"  # seq_done shows its sequence with result fault.
    UNSENT = "unsent"  # After a restart: the PLC shows it never latched the command.
    RETRY = "retry"  # Stopped by the PLC for a lost heartbeat; the car is proved.


MAX_RETRIES = 3
"""How often one step may go again after a lost-heartbeat stop."""

S2, E2 = StepState, StepEvent
STEP_TABLE: dict[tuple[StepState, StepEvent], StepState] = {
    (S2.PENDING, E2.SEND): S2.SENT,
    (S2.SENT, E2.ACCEPT): S2.ACCEPTED,
    # A quick command can be accepted and finished between two polls.
    (S2.SENT, E2.DONE): S2.DONE,
    (S2.SENT, E2.FAULT): S2.FAULT,
    (S2.ACCEPTED, E2.DONE): S2.DONE,
    (S2.ACCEPTED, E2.FAULT): S2.FAULT,
    (S2.SENT, E2.UNSENT): S2.PENDING,
    (S2.FAULT, E2.RETRY): S2.PENDING,
}
"""(state, event) -> next state of a step."""

del S, E, S2, E2


@dataclass(eq=False, slots=True)
class Step:
    """One command of a job, and where its handshake stands.

    `after` lists the positions (in the job's steps) that must be done first;
    `partners` the devices the command involves besides its own (the lift in a
    transfer with it, the bay in a pick from it); `car_to` the car's place once
    it is done, for transfers. `resend` marks a step restored from the
    journal whose command the PLC never latched: it goes again under `seq`,
    with no new intent. `retries` counts its lost-heartbeat retries.
    """

    index: int
    device: str
    code: str
    target: int
    side: str
    after: tuple[int, ...]
    partners: tuple[str, ...]
    car_to: str | None
    machine: Machine[StepState, StepEvent]
    seq: int = 0
    fault_code: str = ""
    resend: bool = False
    retries: int = 0

    @property
    def state(self) -> StepState:
        """The step's handshake state."""
        return self.machine.state

    @property
    def devices(self) -> tuple[str, ...]:
        """Its device and its partners."""
        return (self.device, *self.partners)

    def describe(self) -> str:
        """`shuttle-0 pick left` or `lift move 3`, for alarms."""
        arg = self.side if self.side != "none" else str(self.target)
        return f"{self.device} {self.code} {arg}"


@dataclass(eq=False, slots=True)
class Job:
    """One car's job: its identity, its machine and its steps so far."""

    id: str
    tower: str
    kind: JobKind
    ticket: str
    machine: Machine[JobState, JobEvent]
    created_at: float
    bay: str | None = None
    slot: SlotId | None = None
    size: SizeClass | None = None
    steps: list[Step] = field(default_factory=list)
    holds: set[str] = field(default_factory=set)  # devices reserved by this job
    reason: str = ""
    finished_at: float | None = None
    plans: dict[str, list[Any]] = field(default_factory=dict)  # bay -> plan, cached
    restored: bool = False  # rebuilt from the journal at start
    live_from: int = 0  # steps before this index are dead (planned before a cancel)

    @property
    def state(self) -> JobState:
        """The job's state."""
        return self.machine.state

    @property
    def live_steps(self) -> list[Step]:
        """The steps that may still run: those planned since the last cancel."""
        return self.steps[self.live_from :]

    def step_running(self) -> bool:
        """Whether any of its commands is out (sent or accepted)."""
        return any(s.state in (StepState.SENT, StepState.ACCEPTED) for s in self.steps)

    def plan_done(self) -> bool:
        """Whether every live step is done."""
        return all(s.state is StepState.DONE for s in self.live_steps)


def job_machine(job_id: str, initial: JobState = JobState.REQUESTED) -> Machine:
    """A new job machine."""
    return Machine(f"job {job_id}", JOB_TABLE, initial, JobState.HELD)


def step_machine(job_id: str, index: int) -> Machine[StepState, StepEvent]:
    """A new step machine, in `pending`."""
    return Machine(
        f"job {job_id} step {index}", STEP_TABLE, StepState.PENDING, StepState.FAULT
    )
