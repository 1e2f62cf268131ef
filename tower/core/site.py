"""The site core: every tower's machines, jobs and inventory behind one `handle()`.

Theory of operation
-------------------
`SiteCore.handle(event, now)` is the only way in. It applies one event and
returns the actions the shell must carry out, in order. Within one call:

1. the event's handler validates a request and raises `RequestRefused` before
   changing anything, or applies a device reading, an outage or the passing
   of time to the device links and the jobs they serve;
2. every affected tower then *progresses*: a tower in `starting` reconciles
   once all its devices have reported; a tower in `auto` or `degraded` admits
   waiting jobs (the `Sequencer`) and sends every job step that is ready, each
   through the safety rule and each preceded by its journal intent;
3. occupancy figures that changed are published.

The core keeps no clock: `now` comes with each event, and `next_deadline()`
tells the shell when to send a `Tick`. It holds no randomness: tickets and job
ids come in the events.

Rules that always hold:

- every `SendCommand` of a job step follows its `Persist(StepIntent)` in the
  same action list, and passed `safety.check_command` just before;
- a car's place changes only on a PLC-confirmed transfer, and each change is
  journaled (`CarMoved`);
- a domain error (`IllegalTransition`) never leaves `handle()`: the machine it
  came from is in its fault state, the tower is in `fault` and an alarm says
  why; the inventory is unchanged by the failed operation.

Recovery
--------
A core built from a `RestoredState` rebuilds every open job from its journal
records: its motion plan (the same plan functions, checked step by step
against the journaled intents), the state of each step (done or faulted where
the journal has the result, in flight where it has only the intent), the
car's place (which must be where the done transfers put it), the devices the
job holds and the slot it reserved. A job that cannot be rebuilt that way is
held for an operator (`job_open` alarm naming its ticket).

In `starting`, once every device of the tower has reported, each command left
in flight is settled from the PLC's own status, never by sending it again
blindly:

- a PLC whose sequence points the journal cannot explain (it shows no
  sequence, or one the journal never sent) restarted: `plc_resync` alarm, its
  commands in flight are unknown, their jobs are held, and numbering goes on
  above both;
- `seq_done` shows the sequence with `done`: the step's effect is applied
  (the car moved) and the plan goes on from the next step;
- `seq_done` shows it with `fault`: as any fault (below);
- `seq_accepted` shows it and the PLC is busy: the step waits for its end;
- neither, the sequence is the last the journal sent the PLC and the PLC is
  idle: the command never latched; it goes again under the same sequence
  (the PLC ignores a sequence it has accepted, so it runs at most once) and
  without a second intent;
- anything else: unknown, the job is held.

Then `reconcile()` compares the inventory with the slot sensors, the lift and
shuttle `loaded` flags and the bays' `vehicle_present`; a job that touches a
place where they disagree is held with an alarm naming the car's ticket.

A step that ends in `heartbeat_lost` (the PLC stopped it because the
controller went silent: after a crash, or while it was stalled) goes again
under a new sequence once the device has been reset, if the sensors show the
car where the journal has it and the step's devices loaded as the journal
says, at most `MAX_RETRIES` times. Every other fault holds the job.

Two exceptions to the first rule above: a command restored as never latched
goes again with the intent already in the journal; a `reset` has no intent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from tower.config import BayConfig, SiteConfig, SizeClass, TowerConfig
from tower.core import plan
from tower.core.actions import (
    Action,
    Alarm,
    AlarmCleared,
    Occupancy,
    Persist,
    ReadStatus,
    SendCommand,
)
from tower.core.allocator import Allocator, FirstFit, TowerView
from tower.core.errors import IllegalTransition, RequestRefused
from tower.core.events import (
    CancelJob,
    CommandWriteFailed,
    DeviceOffline,
    DeviceStatus,
    Event,
    PlaceCar,
    RemoveCar,
    ResetTower,
    RetrieveRequested,
    SetMode,
    StoreRequested,
    Tick,
    UnblockSlot,
)
from tower.core.inventory import Car, Inventory, TowerSlots
from tower.core.job import (
    MAX_RETRIES,
    OUTCOMES,
    TERMINAL,
    Job,
    JobEvent,
    JobState,
    Step,
    StepEvent,
    StepState,
    job_machine,
    step_machine,
)
from tower.core.link import DeviceLink, Inflight, Verdict, sequence_problem
from tower.core.machine import Machine
from tower.core.model import SizeRules, SlotId, Travel, build_slots
from tower.core.records import (
    CarMoved,
    JobCreated,
    JobDestination,
    JobFinished,
    JobKind,
    ModeSet,
    Record,
    SlotBlocked,
    SlotUnblocked,
    StepIntent,
    StepResult,
    TicketClosed,
    TicketIssued,
)
from tower.core.restore import (
    Finding,
    RestoredJob,
    RestoredState,
    check_towers,
    reconcile,
)
from tower.core.safety import check_command
from tower.core.sequencer import FcfsWholePath, Sequencer
from tower.core.tower import MOTION_STATES, TowerEvent, TowerState, tower_machine

ACCEPT_TIMEOUT_S = 3.0
"""How long a PLC may take to echo a command's sequence as accepted, s."""

HEARTBEAT_TIMEOUT_S = 3.0
"""How long a PLC's heartbeat may stand still before it counts as offline, s."""

RESET_REPEAT_S = 1.0
"""How often a reset is written again to a device that still shows its fault, s."""

FAULT_HEARTBEAT_LOST = "heartbeat_lost"
"""The fault code of a command the PLC stopped because our heartbeat stopped."""

FAULT_INTERLOCK = "interlock"
"""The fault code of a command the PLC refused as unsafe (for a bay: a person
inside, the door path not clear)."""


def _retried(step: Step, link: DeviceLink) -> bool:
    """Whether a faulted step may go again once its device is reset.

    A command stopped for our lost heartbeat, and a bay check refused for its
    interlock: someone entered the bay between our last status and the PLC's
    latch. A check moves no car, and `_step_ready` sends it again only once
    the bay shows nobody inside (and, for a retrieve, no car).
    """
    if step.fault_code == FAULT_HEARTBEAT_LOST:
        return True
    refused = step.fault_code == FAULT_INTERLOCK and step.code == "check"
    return refused and link.kind == "bay"


# Store job states in which the tower has no custody of the car yet (or no
# more: a car refused after its check goes back to its driver).
_NO_CUSTODY = frozenset({JobState.REQUESTED, JobState.CHECKING, JobState.RETURNING})

# Job states in which a job's steps are sent.
_STEPPING = frozenset(
    {JobState.CHECKING, JobState.RUNNING, JobState.RETURNING, JobState.CANCELLING}
)
# Job states whose plan is final, so a device with no step left is released.
_RELEASING = frozenset({JobState.RUNNING, JobState.RETURNING, JobState.CANCELLING})
# Step states in which a step's command is out at its PLC.
_OUT = frozenset({StepState.SENT, StepState.ACCEPTED})


class _Tower:
    """One tower's live state inside the core."""

    def __init__(self, config: TowerConfig, core: SiteCore) -> None:
        self.id = config.id
        self.config = config
        self.machine: Machine[TowerState, TowerEvent] = tower_machine(config.id)
        self.links = {
            name: DeviceLink(
                config.id,
                name,
                last_seq=core.restored_seq.get((config.id, name), 0),
                heartbeat_timeout_s=core.heartbeat_timeout_s,
            )
            for name in config.device_names()
        }
        self.bays: dict[str, BayConfig] = {bay.id: bay for bay in config.bays}
        self.bay_at = {(bay.column, bay.side.value): bay.id for bay in config.bays}
        # Bays nearest to the lift first: the ground shuttle travels least.
        self.bay_order = [b.id for b in sorted(config.bays, key=lambda b: b.column)]
        self.slots = TowerSlots(config.id, build_slots(config), core.inventory)
        self.travel = Travel(config.physics)
        self.view = TowerView(config, self.slots, core.sizes, self.travel)
        self.holders: dict[str, str] = {}  # device -> job id holding it
        self.jobs: list[Job] = []  # open jobs, oldest first
        # Running jobs with steps on devices they do not hold yet (a sequencer
        # that reserves a path piece by piece, see `Admission.reserve`).
        self.partial: set[str] = set()
        self.stranded: set[str] = set()  # devices holding a car no job accounts for
        # The devices a positioning may move: the lift and the level shuttles.
        self.movers = ["lift", *(f"shuttle-{k}" for k in range(1, config.levels + 1))]
        self.first_start = True
        # The operator's choice: in manual until they ask for auto, whatever
        # resets, e-stops or restarts come between (journaled, `ModeSet`).
        self.manual = False
        self.occupancy: Occupancy | None = None
        self.dirty = True

    @property
    def state(self) -> TowerState:
        return self.machine.state


class _Book:
    """The `PathBook` a sequencer sees for one tower."""

    def __init__(self, core: SiteCore, tower: _Tower) -> None:
        self._core = core
        self._tower = tower
        self._idle: list[tuple[str, int]] | None = None

    def plan_for(self, job: Job, bay: str) -> list[plan.StepSpec]:
        cached = job.plans.get(bay)
        if cached is not None:
            return cached
        t = self._tower
        assert job.slot is not None  # a waiting job always knows its slot
        if job.kind is JobKind.STORE:
            made = plan.store(t.bays[bay], job.slot)
        elif job.kind is JobKind.RELOCATE:
            made = plan.relocate(job.slot, self._core._relocations[job.id])
        else:
            made = plan.retrieve(job.slot, t.bays[bay])
        job.plans[bay] = made
        return made

    def available(self, device: str, job: Job) -> bool:
        t = self._tower
        holder = t.holders.get(device)
        if holder is not None and holder != job.id:
            return False
        link = t.links[device]
        if link.kind == "bay" and job.kind is JobKind.RETRIEVE:
            # A retrieve needs its bay empty: the last car collected.
            empty = self._core.inventory.at(t.id, device) is None
            return empty and link.healthy and not link.flag("vehicle_present")
        if holder is not None:
            return True
        return link.healthy and device not in t.stranded

    def bays_for(self, job: Job) -> list[str]:
        if job.bay is not None:
            return [job.bay]
        return self._tower.bay_order

    # What a sequencer may read besides the paths (see `PathBook`).

    @property
    def now(self) -> float:
        return self._core._now

    @property
    def jobs(self) -> list[Job]:
        return self._tower.jobs

    @property
    def view(self) -> TowerView:
        return self._tower.view

    def holder(self, device: str) -> str | None:
        return self._tower.holders.get(device)

    def request(self, job: Job) -> Event | None:
        return self._core._requests.get(job.id)

    def place(self, job: Job) -> str | None:
        car = self._core.inventory.cars.get(job.ticket)
        return car.place if car is not None else None

    def car_at(self, place: str) -> str | None:
        return self._core.inventory.at(self._tower.id, place)

    @property
    def car_changes(self) -> int:
        return self._core.inventory.changes

    def idle_positions(self) -> list[tuple[str, int]]:
        if self._idle is not None:
            return self._idle  # one answer per book: the core checks with it
        t = self._tower
        inventory = self._core.inventory
        idle = []
        for name in t.movers:
            link = t.links[name]
            if (
                name not in t.holders
                and link.inflight is None
                and link.state == "idle"
                and name not in t.stranded
                and link.ready
                and not link.flag("loaded")
                and inventory.at(t.id, name) is None
            ):
                where = (link.status or {}).get(
                    "level" if link.kind == "lift" else "column"
                )
                if isinstance(where, int):
                    idle.append((name, where))
        self._idle = idle
        return idle


class SiteCore:
    """The sans-IO core of one site. See the module docstring.

    `allocator` chooses slots (default `FirstFit`), `sequencer` admits jobs
    (default `FcfsWholePath`), `restored` is the journal's state at start
    (`UnknownTowers` if it has cars or jobs of towers `site` does not name).
    `heartbeat_timeout_s=None` turns the heartbeat watch off, for a plant model
    that reports changes only.
    """

    def __init__(
        self,
        site: SiteConfig,
        *,
        allocator: Allocator | None = None,
        restored: RestoredState | None = None,
        sequencer: Sequencer | None = None,
        accept_timeout_s: float = ACCEPT_TIMEOUT_S,
        heartbeat_timeout_s: float | None = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        self.site = site
        self.sizes = SizeRules(site)
        self.allocator: Allocator = allocator or FirstFit()
        self.sequencer: Sequencer = sequencer or FcfsWholePath()
        self.accept_timeout_s = accept_timeout_s
        self.done_timeout_s = site.poll.command_timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.inventory = Inventory()
        self.restored_seq = dict(restored.last_seq) if restored else {}
        self.towers: dict[str, _Tower] = {t.id: _Tower(t, self) for t in site.towers}
        self.open_jobs: dict[str, Job] = {}
        self.alarms: dict[tuple[str, str, str], str] = {}
        self.errors: list[IllegalTransition] = []
        """Every domain error so far, oldest first (for tests and the console)."""
        self._ticket_jobs: dict[str, str] = {}  # ticket -> its open job
        self._requests: dict[str, Event] = {}  # job id -> its request (hints)
        self._relocations: dict[str, SlotId] = {}  # relocate job id -> destination
        self._restore_notes: dict[str, list[tuple[str, str, str]]] = {}
        # tower -> steps restored in flight (or stopped for a lost heartbeat)
        self._unresolved: dict[str, list[tuple[Job, Step]]] = {}
        # (tower, device) -> why its sequence points are not trusted at start
        self._untrusted: dict[tuple[str, str], str] = {}
        # (tower, device) -> when a reset was last written for a retry
        self._resets: dict[tuple[str, str], float] = {}
        # (tower, device) the journal has a command result from
        self._latched_before: set[tuple[str, str]] = set()
        self._out: list[Action] = []
        self._now = 0.0
        self._serial = restored.jobs_total if restored is not None else 0
        if restored is not None:
            check_towers(restored, site)
            self._restore(restored)

    # -- the one way in ------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event at monotonic time `now`; the actions, in order.

        Raises `RequestRefused` (with nothing changed) for a request that
        cannot be honoured.
        """
        self._now = now
        self._out = out = []
        handler = self._HANDLERS[type(event)]
        towers: list[_Tower]
        try:
            towers = handler(self, event)
        except IllegalTransition as err:
            towers = list(self.towers.values())
            for t in towers:
                self._domain_error(t, err)
        for t in towers:
            self._progress(t)
        self._publish_occupancy()
        self._out = []
        return out

    def next_deadline(self) -> float | None:
        """The earliest time the core wants a `Tick`, or None."""
        best: float | None = None
        for t in self.towers.values():
            for link in t.links.values():
                due = link.deadline(self.accept_timeout_s, self.done_timeout_s)
                if due is not None and (best is None or due < best):
                    best = due
        # A sequencer may want to decide again at a time of its own (a job
        # it holds back until its visitor is near).
        wake = getattr(self.sequencer, "next_wake", None)
        due = wake() if wake is not None else None
        if due is not None and due > self._now and (best is None or due < best):
            best = due
        return best

    # -- requests --------------------------------------------------------------

    def _on_store(self, event: StoreRequested) -> list[_Tower]:
        t = self._tower(event.tower)
        self._check_new_job(event.job_id)
        self._check_motion(t)
        if event.bay not in t.bays:
            raise RequestRefused("unknown_bay", f"{t.id} has no bay {event.bay!r}")
        bay = t.links[event.bay]
        if not bay.online or bay.status is None:
            raise RequestRefused("device_offline", f"{event.bay} is offline")
        if event.bay in t.holders:
            why = f"{event.bay} is reserved by job {t.holders[event.bay]}"
            raise RequestRefused("bay_busy", why)
        if self.inventory.at(t.id, event.bay):
            why = f"{event.bay} still holds a retrieved car its driver has not taken"
            raise RequestRefused("bay_busy", why)
        if not bay.flag("vehicle_present"):
            raise RequestRefused("bay_empty", f"no car stands in {event.bay}")
        if event.ticket in self.inventory.cars or event.ticket in self._ticket_jobs:
            raise RequestRefused("ticket_in_use", f"ticket {event.ticket} is in use")
        unplaced = sum(1 for j in t.jobs if j.kind is JobKind.STORE and j.slot is None)
        if sum(1 for _ in t.slots.free()) <= unplaced:
            raise RequestRefused("no_free_slot", f"{t.id} has no free slot")

        job = self._new_job(t, event.job_id, JobKind.STORE, event.ticket)
        job.bay = event.bay
        self._requests[job.id] = event
        self._hold(t, job, event.bay)
        self._persist(
            JobCreated(job.id, t.id, JobKind.STORE, job.ticket, event.bay, "")
        )
        return [t]

    def _on_retrieve(self, event: RetrieveRequested) -> list[_Tower]:
        self._check_new_job(event.job_id)
        car = self.inventory.cars.get(event.ticket)
        if car is None:
            if event.ticket in self._ticket_jobs:
                raise RequestRefused("ticket_in_use", "the car is still being stored")
            raise RequestRefused("unknown_ticket", f"no car has ticket {event.ticket}")
        if event.ticket in self._ticket_jobs:
            job_id = self._ticket_jobs[event.ticket]
            raise RequestRefused("ticket_in_use", f"job {job_id} serves this ticket")
        t = self.towers[car.tower]
        self._check_motion(t)
        slot = t.slots.by_name.get(car.place)
        if slot is None:
            raise RequestRefused("car_not_parked", f"the car is at {car.place}")
        if slot.id in t.slots.blocked:
            why = t.slots.blocked[slot.id]
            raise RequestRefused("slot_blocked", f"{slot.name} is blocked: {why}")
        if event.bay is not None and event.bay not in t.bays:
            raise RequestRefused("unknown_bay", f"{t.id} has no bay {event.bay!r}")

        job = self._new_job(t, event.job_id, JobKind.RETRIEVE, event.ticket)
        job.slot, job.size = slot.id, car.size
        self._requests[job.id] = event
        # The bay is taken now, so the visitor knows where to go: a free one
        # if there is one, else one whose last car is still being collected.
        # With every bay taken by jobs, the first to free up serves it. A bay
        # where a driver is leaving a new car (not in custody yet) is not
        # taken: its store request is on the way. A sequencer with `late_bay`
        # reserves the bay itself (chooses it, too, if the visitor named none).
        book = _Book(self, t)
        untaken = [b for b in [event.bay] if b] or [
            b
            for b in t.bay_order
            if b not in t.holders
            and (self.inventory.at(t.id, b) or not t.links[b].flag("vehicle_present"))
        ]
        free = [b for b in untaken if book.available(b, job)]
        job.bay = event.bay or next(iter(free or untaken), None)
        late = getattr(self.sequencer, "late_bay", False)
        if late and event.bay is None:
            job.bay = None
        if job.bay is not None and job.bay not in t.holders and not late:
            self._hold(t, job, job.bay)
        self._persist(
            JobCreated(
                job.id, t.id, JobKind.RETRIEVE, job.ticket, slot.name, job.bay or ""
            )
        )
        job.machine.fire(JobEvent.QUEUED)
        return [t]

    def _on_cancel(self, event: CancelJob) -> list[_Tower]:
        job = self.open_jobs.get(event.job_id)
        if job is None:
            raise RequestRefused("unknown_job", f"no open job {event.job_id}")
        t = self.towers[job.tower]
        state = job.state
        handback = self._handback_bay(t, job)
        measured = state is JobState.WAITING_PATH and job.kind is JobKind.STORE
        if measured or (state is JobState.HELD and handback is not None):
            transition = JobEvent.CANCEL_RETURN
        elif state in (JobState.REQUESTED, JobState.WAITING_PATH, JobState.HELD):
            transition = JobEvent.CANCEL
        else:
            raise RequestRefused("job_running", f"job {job.id} is {state.value}")
        running = self._still_running(t, job)
        if running:
            # Its command may still move the car: wait for the PLC's verdict.
            why = f"job {job.id} has a command running on {running[0]}; retry later"
            raise RequestRefused("job_running", why)
        if transition is JobEvent.CANCEL_RETURN and state is JobState.HELD:
            assert handback is not None
            holder = t.holders.get(handback, job.id)
            if holder != job.id:
                why = f"{handback} holds its car but is reserved by job {holder}"
                raise RequestRefused("bay_busy", why)

        job.reason = "cancelled by operator"
        for link in t.links.values():
            if link.inflight is not None and link.inflight.job_id == job.id:
                link.inflight = None  # never latched (see _still_running)
        job.machine.fire(transition)
        self._unreserve(t, job)
        if job.state is JobState.CANCELLING:
            assert handback is not None
            # Only the bay's release runs now; what was planned before is dead.
            job.live_from = len(job.steps)
            t.partial.discard(job.id)
            if handback not in job.holds:
                self._hold(t, job, handback)
            self._add_steps(job, plan.release(t.bays[handback]))
            self._release_done_devices(t, job)
        else:
            self._finish(t, job)
        return [t]

    def _still_running(self, t: _Tower, job: Job) -> list[str]:
        """The devices that may still be running a command of the job: one
        we are waiting on, or (for a step a restart left unsettled, as in a
        job held at start) one its PLC shows accepted and busy."""
        devices = []
        for step in job.steps:
            if step.state not in _OUT:
                continue
            link = t.links[step.device]
            cmd = link.inflight
            tracked = cmd is not None and cmd.job_id == job.id
            if tracked and self._never_latched(link, cmd):
                continue
            status = link.status or {}
            busy = status.get("seq_accepted") == step.seq and link.state == "busy"
            if tracked or busy or link.status is None:
                devices.append(step.device)
        return devices

    @staticmethod
    def _never_latched(link: DeviceLink, cmd: Inflight | None) -> bool:
        """A command whose write failed and which its PLC, idle, has not
        accepted since its acceptance deadline: it never latched."""
        if cmd is None or not cmd.write_failures or not cmd.accept_overdue:
            return False
        status = link.status or {}
        return status.get("seq_accepted") != cmd.seq and link.state == "idle"

    def _handback_bay(self, t: _Tower, job: Job) -> str | None:
        """The bay a cancelled job must open for its driver: where its car is
        (a store's car not measured yet is in its bay if the bay senses one)."""
        car = self.inventory.cars.get(job.ticket)
        if car is not None:
            return car.place if car.place in t.bays else None
        in_bay = job.bay is not None and t.links[job.bay].flag("vehicle_present")
        return job.bay if job.kind is JobKind.STORE and in_bay else None

    def _on_mode(self, event: SetMode) -> list[_Tower]:
        t = self._tower(event.tower)
        if event.mode not in ("auto", "manual"):
            raise RequestRefused("bad_mode", f"mode {event.mode!r} is not auto/manual")
        transition = TowerEvent.AUTO if event.mode == "auto" else TowerEvent.MANUAL
        if not t.machine.allows(transition):
            raise RequestRefused("tower_in_fault", f"{t.id} is in fault: reset it")
        manual = event.mode == "manual"
        if manual != t.manual:
            t.manual = manual
            self._persist(ModeSet(t.id, event.mode))
        self._tower_fire(t, transition)
        return [t]

    def _on_reset(self, event: ResetTower) -> list[_Tower]:
        t = self._tower(event.tower)
        for link in t.links.values():
            cmd = link.inflight
            if self._never_latched(link, cmd):
                # Its write failed and it never latched: the reset is the
                # operator's word to try again, under the same sequence and
                # intent (the PLC runs a sequence at most once), once the
                # tower is back in auto.
                assert cmd is not None
                link.inflight = None
                cmd.step.machine.fire(StepEvent.UNSENT)
                cmd.step.resend = True
                self._clear(t, link.name, "write_failed")
                self._clear(t, link.name, "accept_timeout")
        for link in t.links.values():
            if link.state in ("fault", "estop"):
                self._reset_device(t, link)
        self._clear(t, "", "domain_error")
        for name in t.links:
            self._clear(t, name, "plc_resync")
        self._tower_fire(t, TowerEvent.RESET)
        return [t]

    # -- operator corrections --------------------------------------------------
    #
    # What a person did by hand, stated by maintenance. The core never takes
    # a sensor's word over the journal on its own; here a person vouches for
    # the change, each one checked against the sensors and journaled (and
    # audited by the control socket). Back in auto the tower reconciles again.

    def _on_place_car(self, event: PlaceCar) -> list[_Tower]:
        t, car = self._hand_moved(event.ticket)
        tower, sep, place = event.place.rpartition("/")
        if sep and tower != t.id:
            why = f"the car is in {t.id}, not {tower}: cars do not change towers"
            raise RequestRefused("wrong_tower", why)
        if place == car.place:
            raise RequestRefused("same_place", f"the car is at {place} already")
        slot = t.slots.by_name.get(place)
        if slot is None and place not in t.links:
            raise RequestRefused(
                "unknown_place", f"{t.id} has no slot or device {place!r}"
            )
        other = self.inventory.at(t.id, place)
        if other is not None:
            raise RequestRefused("place_taken", f"another car is at {place}")
        if slot is not None:
            if slot.disabled:
                raise RequestRefused("slot_disabled", f"slot {place} is not in use")
            if slot.id in t.slots.reserved:
                job = t.slots.reserved[slot.id]
                raise RequestRefused(
                    "slot_reserved", f"slot {place} is reserved by job {job}"
                )
            if not self.sizes.fits(slot.size, car.size):
                sizes = f"{slot.size.value}, the car {car.size.value}"
                why = f"slot {place} is too small ({sizes})"
                raise RequestRefused("slot_too_small", why)
        self._check_sensed(t, place, present=True)
        self._check_sensed(t, car.place, present=False)
        old = car.place
        self.inventory.move(car.ticket, place)
        self._persist(CarMoved(car.ticket, t.id, place))
        t.dirty = True
        self._after_hand_move(t, old)
        self._settle_slot(t, place)
        return [t]

    def _on_remove_car(self, event: RemoveCar) -> list[_Tower]:
        t, car = self._hand_moved(event.ticket)
        self._check_sensed(t, car.place, present=False)
        self.inventory.remove(car.ticket)
        self._persist(TicketClosed(car.ticket))
        t.dirty = True
        self._after_hand_move(t, car.place)
        return [t]

    def _on_unblock(self, event: UnblockSlot) -> list[_Tower]:
        t = self._tower(event.tower)
        slot = t.slots.by_name.get(event.slot)
        if slot is None:
            raise RequestRefused("unknown_slot", f"{t.id} has no slot {event.slot!r}")
        if slot.id not in t.slots.blocked:
            raise RequestRefused("not_blocked", f"slot {event.slot} is not blocked")
        held = self._car_at(t)(event.slot) is not None
        self._check_sensed(t, event.slot, present=held)
        self._settle_slot(t, event.slot)
        return [t]

    def _hand_moved(self, ticket: str) -> tuple[_Tower, Car]:
        """The tower and car a hand correction is about, once it may be made."""
        car = self.inventory.cars.get(ticket)
        if car is None:
            raise RequestRefused("unknown_ticket", "no car in custody has that ticket")
        job_id = self._ticket_jobs.get(ticket)
        if job_id is not None:
            raise RequestRefused(
                "ticket_in_use", f"job {job_id} has the car: cancel it first"
            )
        t = self._tower(car.tower)
        if t.state is not TowerState.MANUAL:
            why = (
                f"{t.id} is {t.state.value}: cars are moved by hand in manual mode only"
            )
            raise RequestRefused("tower_not_manual", why)
        return t, car

    def _check_sensed(self, t: _Tower, place: str, *, present: bool) -> None:
        """Refuse unless the sensor of `place` shows a car (or none)."""
        slot = t.slots.by_name.get(place)
        device = f"shuttle-{slot.id.level}" if slot is not None else place
        link = t.links[device]
        if link.status is None or not link.online:
            why = f"{device} has not reported: its sensors cannot confirm {place}"
            raise RequestRefused("not_sensed", why)
        if self._sensed(t, place) != present:
            shows = "a car" if not present else "no car"
            raise RequestRefused(
                "sensor_disagrees", f"the sensor at {place} shows {shows}"
            )

    def _after_hand_move(self, t: _Tower, old: str) -> None:
        """A car left `old` by hand: a device it was stranded on is usable
        again, a slot it was blocked in may agree again."""
        if old in t.stranded:
            t.stranded.discard(old)
            self._clear(t, old, "car_stranded")
        self._settle_slot(t, old)

    def _settle_slot(self, t: _Tower, place: str) -> None:
        """Unblock a blocked slot whose sensor and inventory agree again."""
        slot = t.slots.by_name.get(place)
        if slot is None or slot.id not in t.slots.blocked:
            return
        held = self._car_at(t)(place) is not None
        if self._sensed(t, place) != held:
            return
        del t.slots.blocked[slot.id]
        t.dirty = True
        self._persist(SlotUnblocked(t.id, place))
        for _tower, device, code in [k for k in self.alarms if k[:2] == (t.id, place)]:
            self._clear(t, device, code)

    # -- devices and time ------------------------------------------------------

    def _on_status(self, event: DeviceStatus) -> list[_Tower]:
        t = self._tower(event.tower)
        link = self._link(t, event.device)
        foreign = link.foreign_sequence(event.points)
        if foreign is not None:
            try:
                self._resync(t, link, event.points, foreign)
            except IllegalTransition as err:
                self._domain_error(t, err)
        was_online = link.online
        was = (link.healthy, link.estop)
        cmd = link.inflight
        verdict = link.observe(event.points, self._now)
        if link.online and not was_online:
            self._clear(t, link.name, "device_offline")

        if cmd is not None and verdict is not Verdict.NONE:
            job = self.open_jobs.get(cmd.job_id)
            if job is None:  # the job ended (cancelled) under a running command
                link.inflight = None
            else:
                try:
                    self._judge(t, job, link, cmd, verdict)
                except IllegalTransition as err:
                    self._domain_error(t, err, job)

        self._device_alarms(t, link)
        self._repeat_reset(t, link)
        if link.kind == "bay":
            self._on_bay(t, link)
        if (link.healthy, link.estop) != was or t.state is TowerState.STARTING:
            self._health(t)
        return [t]

    def _on_offline(self, event: DeviceOffline) -> list[_Tower]:
        t = self._tower(event.tower)
        self._offline(t, self._link(t, event.device), event.reason)
        self._health(t)
        return [t]

    def _on_write_failed(self, event: CommandWriteFailed) -> list[_Tower]:
        t = self._tower(event.tower)
        link = self._link(t, event.device)
        cmd = link.inflight
        if cmd is None or cmd.seq != event.seq or cmd.accepted_at is not None:
            return [t]  # about a command already judged: nothing to do
        step = cmd.step
        if cmd.write_failures == 0:
            cmd.write_failures = 1
            try:
                check_command(
                    t.state, step, t.links, t.bay_at, self._car_at(t), resend=True
                )
            except IllegalTransition:
                pass  # no longer safe to write; fall through to the alarm
            else:
                # The same sequence again: the PLC runs it at most once.
                self._out.append(self._command(t, cmd.job_id, step))
                return [t]
        message = f"{step.describe()} (seq {cmd.seq}) not written: {event.reason}"
        self._alarm(t, link.name, "write_failed", message)
        return [t]

    def _on_tick(self, _event: Tick) -> list[_Tower]:
        now = self._now
        for t in self.towers.values():
            for link in t.links.values():
                cmd = link.inflight
                if cmd is not None:
                    self._check_overdue(t, link, cmd, now)
                if link.heartbeat_stale(now):
                    self._offline(t, link, "heartbeat stopped")
            self._health(t)
        return list(self.towers.values())

    def _check_overdue(
        self, t: _Tower, link: DeviceLink, cmd: Inflight, now: float
    ) -> None:
        what = f"{cmd.step.describe()} (seq {cmd.seq}, job {cmd.job_id})"
        late = cmd.accepted_at is None and not cmd.accept_overdue
        if late and now >= cmd.sent_at + self.accept_timeout_s:
            cmd.accept_overdue = True
            message = f"{what} not accepted within {self.accept_timeout_s:g} s"
            self._alarm(t, link.name, "accept_timeout", message)
            self._out.append(ReadStatus(t.id, link.name))
        if not cmd.done_overdue and now >= cmd.sent_at + self.done_timeout_s:
            cmd.done_overdue = True
            message = f"{what} not done within {self.done_timeout_s:g} s"
            self._alarm(t, link.name, "done_timeout", message)

    def _judge(
        self, t: _Tower, job: Job, link: DeviceLink, cmd: Inflight, verdict: Verdict
    ) -> None:
        step = cmd.step
        if verdict is Verdict.ACCEPTED:
            step.machine.fire(StepEvent.ACCEPT)
            cmd.accepted_at = self._now
            self._clear(t, link.name, "accept_timeout")
            return

        link.inflight = None
        self._clear(t, link.name, "accept_timeout")
        self._clear(t, link.name, "done_timeout")
        self._clear(t, link.name, "write_failed")
        points = link.status or {}
        if verdict is Verdict.FAULT:
            step.machine.fire(StepEvent.FAULT)
            step.fault_code = str(points.get("fault_code", ""))
            self._persist(
                StepResult(
                    job.id, step.index, t.id, step.device, step.seq, "fault",
                    step.fault_code,
                )
            )  # fmt: skip
            job.reason = f"{step.describe()} faulted: {step.fault_code}"
            if _retried(step, link):
                why = self._retry(t, job, step, link)
                if why is None:
                    return
                job.reason += f", not retried: {why}"
            job.machine.fire(JobEvent.STEP_FAULT)
            self._alarm(t, job.id, "job_held", f"job {job.id}: {job.reason}")
            return

        step.machine.fire(StepEvent.DONE)
        self._persist(
            StepResult(job.id, step.index, t.id, step.device, step.seq, "done", "none")
        )
        if step.car_to is not None:
            self._move_car(t, job, step.car_to)
        if job.state is JobState.CHECKING:
            job.machine.fire(JobEvent.MEASURED)
            self._allocate(t, job)
        elif job.state in _RELEASING and job.plan_done():
            job.machine.fire(JobEvent.PLAN_DONE)
            self._finish(t, job)
            return
        if job.state in _RELEASING:
            self._release_done_devices(t, job)

    def _on_bay(self, t: _Tower, bay: DeviceLink) -> None:
        """A bay's status: a driver took a car away, or left before the check."""
        if bay.flag("vehicle_present"):
            return
        ticket = self.inventory.at(t.id, bay.name)
        if ticket is not None and ticket not in self._ticket_jobs:
            self.inventory.remove(ticket)
            self._persist(TicketClosed(ticket))
        holder = t.holders.get(bay.name)
        job = self.open_jobs.get(holder) if holder else None
        if job and job.state is JobState.REQUESTED and job.kind is JobKind.STORE:
            job.reason = "car_left"
            job.machine.fire(JobEvent.CAR_LEFT)
            self._finish(t, job)

    # -- progress --------------------------------------------------------------

    def _progress(self, t: _Tower) -> None:
        if t.state is TowerState.STARTING:
            self._try_start(t)
        if t.state not in MOTION_STATES:
            return
        try:
            self._housekeep(t)
            self._position(t)
            self._admit(t)
        except IllegalTransition as err:
            self._domain_error(t, err)
        for job in list(t.jobs):
            if t.state not in MOTION_STATES:
                return
            try:
                self._advance(t, job)
            except IllegalTransition as err:
                self._domain_error(t, err, job)

    def _admit(self, t: _Tower) -> None:
        waiting = [
            j
            for j in t.jobs
            if j.state is JobState.WAITING_PATH
            or (j.id in t.partial and j.state is JobState.RUNNING)
        ]
        if not waiting:
            return
        book = _Book(self, t)
        for admission in self.sequencer.admit(waiting, book):
            job = admission.job
            path = plan.devices_of(admission.plan)
            reserve = path if admission.reserve is None else admission.reserve
            new = [d for d in reserve if d not in job.holds]
            busy = [d for d in new if not book.available(d, job)]
            if job.state not in (JobState.WAITING_PATH, JobState.RUNNING) or busy:
                raise IllegalTransition("sequencer", f"path busy: {busy}", job.id)
            for device in new:
                self._hold(t, job, device)
            bound = admission.bay in job.holds
            if job.kind is JobKind.RETRIEVE and job.bay is None and bound:
                job.bay = admission.bay
                self._persist(JobDestination(job.id, admission.bay))
                self._rebind(t, job)
            if job.state is JobState.WAITING_PATH and admission.plan:
                self._add_steps(job, admission.plan)
                job.machine.fire(JobEvent.ADMITTED)
            if job.state is JobState.RUNNING and any(
                not job.holds.issuperset(s.devices)
                for s in job.steps
                if s.state is StepState.PENDING
            ):
                t.partial.add(job.id)
            else:
                t.partial.discard(job.id)

    def _housekeep(self, t: _Tower) -> None:
        """The relocations the sequencer asks for (it knows when) become jobs.

        A relocate job moves a parked car (no job of its own) to a free slot
        that fits it; it is journaled like any job. Its id is made here, as
        no request brings one: the tower and a number above every job the
        journal has held, so it never repeats an id, across restarts too.
        """
        propose = getattr(self.sequencer, "relocations", None)
        if propose is None:
            return
        for ticket, to in propose(_Book(self, t)):
            car = self.inventory.cars.get(ticket)
            origin = t.slots.by_name.get(car.place) if car is not None else None
            target = t.slots.by_id.get(to)
            if (
                car is None
                or origin is None
                or target is None
                or ticket in self._ticket_jobs
                or origin.id in t.slots.blocked
                or not t.slots.is_free(target)
                or not self.sizes.fits(target.size, car.size)
            ):
                raise IllegalTransition("sequencer", f"bad relocation to {to}", ticket)
            # Numbered on from every job the journal ever held: unique across
            # restarts (the monotonic clock starts over at a reboot).
            self._serial += 1
            job_id = f"relocate-{t.id}-{self._serial}"
            job = self._new_job(t, job_id, JobKind.RELOCATE, ticket)
            job.slot, job.size = origin.id, car.size
            t.slots.reserve(target.id, job.id)
            self._relocations[job.id] = target.id
            t.dirty = True
            self._persist(
                JobCreated(
                    job.id, t.id, JobKind.RELOCATE, ticket, origin.name, target.name
                )
            )
            job.machine.fire(JobEvent.QUEUED)

    def _position(self, t: _Tower) -> None:
        """The positionings the sequencer asks for become jobs; stale ones go.

        A position job moves one idle device, with no car, to a column (a
        shuttle) or a level (the lift). It is journaled like any job and
        holds its device for its one `move`, sent at once through the same
        safety check as every command; a job that then wants the device waits
        for the move's end. One whose move is not out (it could not start at
        once, a restart found it never latched, or the PLC stopped it for a
        lost heartbeat and the device was reset) is dropped, never sent late:
        by then the device may be wanted, or wanted elsewhere. Its id is
        made here, from the tower, the device, the device's last sequence
        (journaled, so it goes on across restarts) and the time.
        """
        for job in [j for j in t.jobs if j.kind is JobKind.POSITION]:
            if job.state is JobState.WAITING_PATH or (
                job.state is JobState.RUNNING
                and all(s.state is StepState.PENDING for s in job.steps)
            ):
                self._drop_position(t, job, "its move is not out")
        propose = getattr(self.sequencer, "positions", None)
        if propose is None:
            return
        book = _Book(self, t)
        idle = dict(book.idle_positions())
        for device, target in propose(book):
            here = idle.pop(device, None)  # one positioning per device
            if here is None or here == target:
                why = f"bad positioning of {device} (at {here}) to {target}"
                raise IllegalTransition("sequencer", why, device)
            link = t.links[device]
            job_id = f"position-{t.id}-{device}-{link.seq}-{round(self._now * 1000)}"
            job = self._new_job(t, job_id, JobKind.POSITION, "")
            self._persist(
                JobCreated(job.id, t.id, JobKind.POSITION, "", device, str(target))
            )
            job.machine.fire(JobEvent.QUEUED)
            self._hold(t, job, device)
            self._add_steps(job, plan.position(device, target))
            job.machine.fire(JobEvent.ADMITTED)

    def _drop_position(self, t: _Tower, job: Job, why: str) -> None:
        """Give up a positioning job whose move is not out; nothing moved."""
        job.reason = f"dropped: {why}"
        job.machine.fire(JobEvent.DROP)
        self._finish(t, job)

    def _rebind(self, t: _Tower, job: Job) -> None:
        """A retrieve planned through a provisional bay got its own: the steps
        not sent yet are planned again through it (the same plan's steps; only
        the bay's and the ground shuttle's commands differ)."""
        assert job.bay is not None
        if not job.steps:
            return
        specs = _Book(self, t).plan_for(job, job.bay)
        for step, spec in zip(job.steps, specs, strict=True):
            if step.state is StepState.PENDING:
                step.device, step.code = spec.device, spec.code
                step.target, step.side = spec.target, spec.side
                step.partners, step.car_to = spec.partners, spec.car_to

    def _advance(self, t: _Tower, job: Job) -> None:
        if job.state is JobState.REQUESTED and job.kind is JobKind.STORE:
            assert job.bay is not None
            bay = t.links[job.bay]
            if bay.ready and not bay.flag("person_present"):
                job.machine.fire(JobEvent.BAY_CLEAR)
                self._add_steps(job, plan.check(t.bays[job.bay]))
        if job.state not in _STEPPING:
            return
        steps = job.steps
        gated = job.id in t.partial  # steps wait for their devices' reservation
        for step in job.live_steps:
            if step.state is not StepState.PENDING:
                continue
            if any(steps[i].state is not StepState.DONE for i in step.after):
                continue
            if gated and not job.holds.issuperset(step.devices):
                continue
            if self._step_ready(t, step, retrieve=job.kind is JobKind.RETRIEVE):
                self._send(t, job, step)

    def _step_ready(self, t: _Tower, step: Step, *, retrieve: bool = False) -> bool:
        """Whether a step's devices are in a state to take it now."""
        links = t.links
        link = links[step.device]
        if not link.ready:
            return False
        if step.code == "check":
            # A retrieve checks an empty bay: a car that drove in meanwhile
            # must leave first (its store is refused: the bay is taken).
            empty = not link.flag("vehicle_present")
            return not link.flag("person_present") and (empty or not retrieve)
        for partner in step.partners:
            other = links[partner]
            if not other.ready:
                return False
            if other.kind == "bay" and (
                other.flag("person_present") or not other.flag("door_closed")
            ):
                return False
        return True

    def _send(self, t: _Tower, job: Job, step: Step) -> None:
        check_command(t.state, step, t.links, t.bay_at, self._car_at(t))
        link = t.links[step.device]
        # A restored command the PLC never latched goes again under its own
        # sequence; its intent is in the journal already.
        resend, step.resend = step.resend, False
        if not resend:
            step.seq = link.next_seq()
        step.machine.fire(StepEvent.SEND)
        link.inflight = Inflight(step.seq, job.id, step, self._now)
        if not resend:
            self._persist(
                StepIntent(
                    job.id, step.index, t.id, step.device, step.code, step.target,
                    step.side, step.seq,
                )
            )  # fmt: skip
        self._out.append(self._command(t, job.id, step))

    def _command(self, t: _Tower, job_id: str, step: Step) -> SendCommand:
        return SendCommand(
            t.id, step.device, step.seq, step.code, step.target, step.side, job_id,
            step.index,
        )  # fmt: skip

    def _allocate(self, t: _Tower, job: Job) -> None:
        """The check is done: measure, choose a slot, take the car into custody."""
        assert job.bay is not None
        points = t.links[job.bay].status or {}
        size = self.sizes.classify(
            points.get("vehicle_length_mm", 0),
            points.get("vehicle_width_mm", 0),
            points.get("vehicle_height_mm", 0),
            points.get("vehicle_weight_class", 0),
        )
        chosen: SlotId | None = None
        if size is None:
            job.reason = "car_too_large"
        else:
            request = self._requests.get(job.id)
            chosen = self.allocator.choose(t.view.asking(self._now, request), size)
            if chosen is None:
                job.reason = "no_free_slot"
        if size is None or chosen is None:
            job.machine.fire(JobEvent.NO_SLOT)
            self._add_steps(job, plan.release(t.bays[job.bay]))
            return

        slot = t.slots.by_id.get(chosen)
        if slot is None or not t.slots.is_free(slot):
            raise IllegalTransition("allocator", f"{chosen} is not free", job.id)
        if not self.sizes.fits(slot.size, size):
            raise IllegalTransition("allocator", f"{chosen} is too small", job.id)
        t.slots.reserve(slot.id, job.id)
        self.inventory.add(job.ticket, t.id, job.bay, size)
        job.slot, job.size = slot.id, size
        t.dirty = True
        self._persist(TicketIssued(job.ticket, t.id, job.bay, job.id, size.value))
        self._persist(CarMoved(job.ticket, t.id, job.bay))
        self._persist(JobDestination(job.id, slot.name))
        job.machine.fire(JobEvent.SLOT_CHOSEN)

    def _move_car(self, t: _Tower, job: Job, place: str) -> None:
        self.inventory.move(job.ticket, place)
        self._persist(CarMoved(job.ticket, t.id, place))
        slot = t.slots.by_name.get(place)
        if slot is not None:
            t.slots.unreserve(slot.id)
        t.dirty = True

    # -- jobs and devices ------------------------------------------------------

    def _new_job(self, t: _Tower, job_id: str, kind: JobKind, ticket: str) -> Job:
        job = Job(job_id, t.id, kind, ticket, job_machine(job_id), self._now)
        self.open_jobs[job_id] = job
        if ticket:  # a positioning job has none
            self._ticket_jobs[ticket] = job_id
        t.jobs.append(job)
        return job

    def _add_steps(self, job: Job, specs: list[plan.StepSpec]) -> None:
        base = len(job.steps)
        for offset, spec in enumerate(specs):
            index = base + offset
            job.steps.append(
                Step(
                    index=index,
                    device=spec.device,
                    code=spec.code,
                    target=spec.target,
                    side=spec.side,
                    after=tuple(base + i for i in spec.after),
                    partners=spec.partners,
                    car_to=spec.car_to,
                    machine=step_machine(job.id, index),
                )
            )

    def _hold(self, t: _Tower, job: Job, device: str) -> None:
        t.holders[device] = job.id
        job.holds.add(device)

    def _release_done_devices(self, t: _Tower, job: Job) -> None:
        for device in list(job.holds):
            live = job.live_steps
            if all(s.state is StepState.DONE for s in live if device in s.devices):
                job.holds.discard(device)
                if t.holders.get(device) == job.id:
                    del t.holders[device]

    def _unreserve(self, t: _Tower, job: Job) -> None:
        if job.slot is not None and t.slots.reserved.get(job.slot) == job.id:
            t.slots.unreserve(job.slot)
            t.dirty = True

    def _finish(self, t: _Tower, job: Job) -> None:
        for device in job.holds:
            if t.holders.get(device) == job.id:
                del t.holders[device]
        job.holds.clear()
        t.partial.discard(job.id)
        self._requests.pop(job.id, None)
        destination = self._relocations.pop(job.id, None)
        if destination is not None and t.slots.reserved.get(destination) == job.id:
            t.slots.unreserve(destination)
        self._unreserve(t, job)
        job.finished_at = self._now
        self._persist(JobFinished(job.id, OUTCOMES[job.state], job.reason))
        car = self.inventory.cars.get(job.ticket)
        if car is not None and car.place in t.links and car.place not in t.bays:
            # A cancelled held job left its car on a device: keep others off it
            # until maintenance moves the car by hand in manual and says where
            # (`PlaceCar`, or `RemoveCar` if it left the tower).
            t.stranded.add(car.place)
            message = f"car {car.ticket} left on {car.place} by job {job.id}"
            self._alarm(t, car.place, "car_stranded", message)
        t.jobs.remove(job)
        del self.open_jobs[job.id]
        if self._ticket_jobs.get(job.ticket) == job.id:
            del self._ticket_jobs[job.ticket]
        for code in ("job_held", "job_open"):
            self._clear(t, job.id, code)

    # -- tower health and start ------------------------------------------------

    def _tower_fire(self, t: _Tower, event: TowerEvent) -> None:
        old = t.state
        try:
            new = t.machine.fire(event)
        except IllegalTransition as err:
            self._record_error(t, err)
            new = t.state
        if new is not old:
            t.dirty = True
            if new is TowerState.STARTING:
                for link in t.links.values():
                    link.fresh = False

    def _health(self, t: _Tower) -> None:
        links = t.links.values()
        # A status from before the latest `starting` (a reset) may be stale.
        stopped = [link.name for link in links if link.estop and link.fresh]
        if stopped:
            self._alarm(t, "", "estop", f"e-stop on {', '.join(stopped)}")
            if t.state is not TowerState.FAULT:
                self._tower_fire(t, TowerEvent.ESTOP)
            return
        self._clear(t, "", "estop")
        if t.state in MOTION_STATES:
            healthy = all(link.healthy for link in links)
            if healthy and t.state is TowerState.DEGRADED:
                self._tower_fire(t, TowerEvent.DEVICES_HEALTHY)
            elif not healthy and t.state is TowerState.AUTO:
                self._tower_fire(t, TowerEvent.DEVICE_LOST)

    def _device_alarms(self, t: _Tower, link: DeviceLink) -> None:
        state = link.state
        if state == "fault":
            code = (link.status or {}).get("fault_code", "")
            self._alarm(t, link.name, "device_fault", f"{link.name} faulted: {code}")
        else:
            self._clear(t, link.name, "device_fault")
        if state == "manual":
            self._alarm(t, link.name, "device_manual", f"{link.name} is in manual")
        else:
            self._clear(t, link.name, "device_manual")
        if link.contested:
            message = (
                f"{link.name}: another master writes its controller heartbeat "
                "(a second controller on this PLC?); no commands go to it"
            )
            self._alarm(t, link.name, "second_master", message)
        else:
            self._clear(t, link.name, "second_master")

    def _offline(self, t: _Tower, link: DeviceLink, reason: str) -> None:
        if link.online:
            link.online = False
            link.offline_reason = reason
            self._alarm(t, link.name, "device_offline", f"{link.name}: {reason}")
        elif link.status is None:
            # Never answered since the controller started: the tower cannot
            # leave `starting` without it, so say which device and why.
            link.offline_reason = reason
            message = f"{link.name} has not answered since start: {reason}"
            self._alarm(t, link.name, "device_offline", message)

    def _try_start(self, t: _Tower) -> None:
        """In `starting`: once every device has reported, reconcile and go on.

        At the first start, the commands the journal left in flight are
        settled first (see "Recovery" in the module docstring).
        """
        if not all(link.fresh for link in t.links.values()):
            return
        if t.first_start:
            self._check_sequences(t)
        stopped = any(link.estop for link in t.links.values())
        pending = [] if stopped else self._settle_restored(t)

        findings = reconcile(t.slots, self.inventory, t.links, [*t.links])
        suspects: dict[str, str] = {}
        for finding in findings:
            if finding.code == "car_in_transit":
                continue
            subject = finding.device
            if finding.code == "bay_mismatch" and (
                finding.ticket not in self._ticket_jobs
            ):
                continue  # its job is over: the driver took it (the ticket closes)
            if finding.slot is not None:
                subject = str(finding.slot)
                t.slots.blocked[finding.slot] = finding.message
                t.dirty = True
                self._persist(SlotBlocked(t.id, subject, finding.message))
            suspects[subject] = finding.message
            self._alarm(t, subject, finding.code, finding.message)
        if not stopped:
            self._resume_restored(t, pending, suspects)

        if t.first_start:
            for finding in findings:
                if finding.code == "car_in_transit" and self._unaccounted(t, finding):
                    self._alarm(t, finding.device, finding.code, finding.message)
            for subject, code, message in self._restore_notes.pop(t.id, []):
                self._alarm(t, subject, code, message)
        t.first_start = False

        if stopped:
            self._health(t)
            return
        # A reset (after an e-stop, say) or a restart does not end manual mode.
        self._tower_fire(t, TowerEvent.MANUAL if t.manual else TowerEvent.RECONCILED)
        self._health(t)

    def _unaccounted(self, t: _Tower, finding: Finding) -> bool:
        """Whether a car found in a transit place is a question for a person."""
        job_id = self._ticket_jobs.get(finding.ticket or "")
        job = self.open_jobs.get(job_id) if job_id else None
        if job is None:
            # In a bay with its job over, a car waits for its driver.
            return finding.device not in t.bays
        return job.state is JobState.HELD

    # -- recovery --------------------------------------------------------------

    def _check_sequences(self, t: _Tower) -> None:
        """At the first start: a PLC whose numbering the journal cannot explain."""
        for link in t.links.values():
            key = (t.id, link.name)
            last = self.restored_seq.get(key, 0)
            latched = last > 1 or key in self._latched_before
            why = sequence_problem(link.status, last, latched_before=latched)
            if why is None:
                continue
            self._untrusted[t.id, link.name] = why
            link.resync(link.status or {})
            message = f"{link.name} {why}; its commands in flight are unknown"
            self._alarm(t, link.name, "plc_resync", message)

    def _resync(
        self, t: _Tower, link: DeviceLink, points: dict[str, Any], why: str
    ) -> None:
        """A PLC restarted under us: its command in flight is unknown."""
        link.resync(points)
        message = f"{link.name} {why}; its commands in flight are unknown"
        self._alarm(t, link.name, "plc_resync", message)
        cmd, link.inflight = link.inflight, None
        job = self.open_jobs.get(cmd.job_id) if cmd is not None else None
        if cmd is None or job is None:
            return
        step = cmd.step
        step.machine.fire(StepEvent.FAULT)
        step.fault_code = "plc_resync"
        self._persist(
            StepResult(
                job.id, step.index, t.id, step.device, step.seq, "fault",
                step.fault_code,
            )
        )  # fmt: skip
        job.reason = (
            f"{step.describe()} (seq {cmd.seq}) unknown: {link.name} restarted; "
            f"car {job.ticket} at {self._place_of(job)}"
        )
        job.machine.fire(JobEvent.STEP_FAULT)
        self._alarm(t, job.id, "job_held", f"job {job.id}: {job.reason}")

    def _settle_restored(self, t: _Tower) -> list[tuple[Job, Step, str, str]]:
        """Apply every restored step the PLC shows done; the others, judged.

        Returns (job, step, verdict, why) for the steps not done: verdict is
        `accepted`, `unsent`, `fault`, `retry` or `unknown`.
        """
        pending = []
        for job, step in self._unresolved.pop(t.id, []):
            if self.open_jobs.get(job.id) is not job or job.state is JobState.HELD:
                continue
            link = t.links[step.device]
            verdict, why = self._restored_verdict(t, link, step)
            if verdict != "done":
                pending.append((job, step, verdict, why))
                continue
            cmd = Inflight(step.seq, job.id, step, self._now)
            link.inflight = cmd
            try:
                self._judge(t, job, link, cmd, Verdict.DONE)
            except IllegalTransition as err:
                self._domain_error(t, err, job)
        for key in [k for k in self._untrusted if k[0] == t.id]:
            del self._untrusted[key]
        return pending

    def _restored_verdict(
        self, t: _Tower, link: DeviceLink, step: Step
    ) -> tuple[str, str]:
        """What a PLC's status at start says about a restored step, and why."""
        untrusted = self._untrusted.get((t.id, link.name))
        if untrusted is not None:
            return "unknown", f"{link.name} {untrusted}"
        points = link.status or {}
        last = self.restored_seq.get((t.id, link.name), 0)
        later = f"{link.name} was sent seq {last} after it"
        if step.state is StepState.FAULT:  # journaled as a stop `_retried` allows
            return ("retry", "") if step.seq == last else ("unknown", later)
        if points.get("seq_done") == step.seq:
            result = points.get("result")
            if result in ("done", "fault"):
                return result, ""
        if points.get("seq_accepted") == step.seq:
            if link.state == "busy":
                return "accepted", ""
            return "unknown", f"{link.name} accepted it but is {link.state}"
        if step.seq != last:
            return "unknown", later
        if link.state == "idle":
            return "unsent", ""
        return "unknown", f"{link.name} is {link.state} and never latched it"

    def _resume_restored(
        self,
        t: _Tower,
        pending: list[tuple[Job, Step, str, str]],
        suspects: dict[str, str],
    ) -> None:
        """Hold the restored jobs the sensors contradict; resume the rest."""
        for job in list(t.jobs):
            if job.restored and job.state is not JobState.HELD:
                hit = self._touches(job, suspects)
                if hit is not None:
                    self._hold_at_start(t, job, hit)
        for job, step, verdict, why in pending:
            if self.open_jobs.get(job.id) is not job:
                continue
            link = t.links[step.device]
            if verdict == "accepted":
                # Even a held job's running command is judged when it ends.
                step.machine.fire(StepEvent.ACCEPT)
                link.inflight = Inflight(
                    step.seq, job.id, step, self._now, accepted_at=self._now
                )
                continue
            if job.state is JobState.HELD:
                continue
            try:
                self._resume_step(t, job, step, link, verdict, why)
            except IllegalTransition as err:
                self._domain_error(t, err, job)

    def _resume_step(
        self,
        t: _Tower,
        job: Job,
        step: Step,
        link: DeviceLink,
        verdict: str,
        why: str,
    ) -> None:
        if verdict == "unsent":
            step.machine.fire(StepEvent.UNSENT)
            step.resend = True
        elif verdict == "fault":
            cmd = Inflight(step.seq, job.id, step, self._now)
            link.inflight = cmd
            self._judge(t, job, link, cmd, Verdict.FAULT)
        elif verdict == "retry":
            not_retried = self._retry(t, job, step, link)
            if not_retried is not None:
                what = f"{step.describe()} stopped ({step.fault_code})"
                self._hold_at_start(t, job, f"{what}, not retried: {not_retried}")
        else:
            self._hold_at_start(t, job, f"{step.describe()} (seq {step.seq}): {why}")

    def _retry(self, t: _Tower, job: Job, step: Step, link: DeviceLink) -> str | None:
        """Send a step stopped for a lost heartbeat (or a bay check refused,
        see `_retried`) again, if the sensors prove where the car is; None
        when it goes again, else why not."""
        if job.state not in _STEPPING:
            return f"the job is {job.state.value}"
        if step.retries >= MAX_RETRIES:
            return f"stopped {step.retries + 1} times"
        why = self._disproof(t, job, step)
        if why is not None:
            return why
        step.retries += 1
        step.machine.fire(StepEvent.RETRY)
        key = (t.id, link.name)
        self._resets[key] = self._now
        if link.state == "fault":
            self._reset_device(t, link)
        return None

    def _reset_device(self, t: _Tower, link: DeviceLink) -> None:
        """Write a reset, unless another master writes to the PLC too: a reset
        clears faults and e-stops, so it is a command like any other."""
        if link.contested:
            return
        self._out.append(SendCommand(t.id, link.name, 0, "reset", 0, "", "", 0))

    def _repeat_reset(self, t: _Tower, link: DeviceLink) -> None:
        """A device reset for a retry: write the reset again while it faults."""
        key = (t.id, link.name)
        since = self._resets.get(key)
        if since is None:
            return
        if link.state != "fault":
            del self._resets[key]
        elif self._now - since >= RESET_REPEAT_S:
            self._resets[key] = self._now
            self._reset_device(t, link)

    def _disproof(self, t: _Tower, job: Job, step: Step) -> str | None:
        """What the sensors say against the journal about a stopped step's
        car and devices, or None when they agree."""
        car = self.inventory.cars.get(job.ticket)
        place = car.place if car is not None else job.bay
        if job.kind is JobKind.POSITION:
            pass  # no car: only its device's `loaded` flag below
        elif place is None:
            return f"the place of car {job.ticket} is unknown"
        elif not self._sensed(t, place):
            return f"the journal has car {job.ticket} at {place}, it shows none"
        to = step.car_to
        if to is not None and to != place and self._sensed(t, to):
            return f"{to} shows a car, the journal has none there"
        for device in step.devices:
            link = t.links[device]
            if link.kind == "bay":
                continue
            held = self.inventory.at(t.id, device)
            if link.flag("loaded") != (held is not None):
                holds = f"holds {held}" if held else "holds no car"
                return f"{device} loaded={link.flag('loaded')}, the journal {holds}"
        return None

    def _sensed(self, t: _Tower, place: str) -> bool:
        """Whether the sensor of a place (slot, bay or device) shows a car."""
        slot = t.slots.by_name.get(place)
        if slot is not None:
            link = t.links[f"shuttle-{slot.id.level}"]
            sensors = (link.status or {}).get("slot_sensors") or []
            bit = slot.sensor_bit()
            return bit < len(sensors) and bool(sensors[bit])
        link = t.links[place]
        return link.flag("vehicle_present" if link.kind == "bay" else "loaded")

    def _touches(self, job: Job, suspects: dict[str, str]) -> str | None:
        """The first place with a disagreement that a job involves, and why."""
        places = set(job.holds)
        car = self.inventory.cars.get(job.ticket)
        if car is not None:
            places.add(car.place)
        if job.slot is not None:
            places.add(str(job.slot))
        if job.bay is not None:
            places.add(job.bay)
        for place in sorted(places):
            if place in suspects:
                return f"{place}: {suspects[place]}"
        return None

    def _place_of(self, job: Job) -> str:
        car = self.inventory.cars.get(job.ticket)
        if car is not None:
            return car.place
        return f"{job.bay} (not in custody)" if job.bay else "an unknown place"

    def _hold_at_start(self, t: _Tower, job: Job, why: str) -> None:
        """Hold a restored job the start could not prove, with an alarm."""
        job.machine.to_fault()
        job.reason = f"open at restart; car {job.ticket} at {self._place_of(job)}"
        if job.kind is JobKind.POSITION:
            job.reason = "open at restart"
        job.reason += f": {why}"
        message = f"job {job.id} ({job.kind.value}) {job.reason}; held"
        self._alarm(t, job.id, "job_open", message)

    # -- restore ---------------------------------------------------------------

    def _restore(self, restored: RestoredState) -> None:
        notes = self._restore_notes
        for tower_id, mode in restored.modes.items():
            if tower_id in self.towers:
                self.towers[tower_id].manual = mode == "manual"
        for (tower_id, slot_name), reason in restored.blocked.items():
            t = self.towers.get(tower_id)
            slot = t.slots.by_name.get(slot_name) if t else None
            if t is not None and slot is not None:
                t.slots.blocked[slot.id] = reason
        for ticket, (tower_id, place, size) in restored.cars.items():
            try:
                self.inventory.add(ticket, tower_id, place, SizeClass(size))
            except IllegalTransition as err:
                note = (place, "car_conflict", f"car {ticket} not restored: {err}")
                notes.setdefault(tower_id, []).append(note)
        wanted: dict[str, set[str]] = {}  # job id -> devices it still needs
        # Stores first: a store's car may stand in its bay, which no retrieve
        # waiting for that bay may take from it (they would wait on each
        # other). The towers' job lists keep the journal's order.
        order = {rjob.job_id: i for i, rjob in enumerate(restored.jobs)}
        stores_first = sorted(restored.jobs, key=lambda r: r.kind is not JobKind.STORE)
        for rjob in stores_first:
            self._latched_before |= {(r.tower, r.device) for r in rjob.results}
            t = self.towers.get(rjob.tower)
            if t is None:
                continue
            job = self._new_job(t, rjob.job_id, rjob.kind, rjob.ticket)
            job.restored = True
            why = self._rebuild(t, job, rjob, wanted)
            if why is not None:
                wanted.pop(job.id, None)
                self._hold_restored(t, job, rjob, why)
        for t in self.towers.values():
            t.jobs.sort(key=lambda job: order.get(job.id, len(order)))
        for car in self.inventory.cars.values():
            t = self.towers.get(car.tower)
            if t is None:
                continue
            on_device = car.place in t.links and car.place not in t.bays
            if on_device and car.ticket not in self._ticket_jobs:
                t.stranded.add(car.place)
        self._reserve_rest(wanted)

    def _reserve_rest(self, wanted: dict[str, set[str]]) -> None:
        """The second pass of restoring reservations (see `_rebuild`).

        A running job whose remaining devices are all free holds them again,
        as a whole-path sequencer had it; otherwise it waits for them through
        the sequencer like any partly reserved job (`_Tower.partial`).
        """
        for job_id, devices in wanted.items():
            job = self.open_jobs.get(job_id)
            if job is None or job.state is not JobState.RUNNING:
                continue
            t = self.towers[job.tower]
            rest = devices - job.holds
            free = all(d not in t.holders and d not in t.stranded for d in rest)
            if job.kind is JobKind.RETRIEVE and job.bay is None:
                t.partial.add(job.id)  # its bay is for the sequencer to choose
            elif rest and free:
                for device in sorted(rest):
                    self._hold(t, job, device)
            elif rest:
                t.partial.add(job.id)

    def _rebuild(
        self, t: _Tower, job: Job, rjob: RestoredJob, wanted: dict[str, set[str]]
    ) -> str | None:
        """Rebuild an open job from its journal records; why not, or None.

        Reservations come back in two passes, so that they never depend on
        the sequencer that made them: here, every device the job has in use
        (a step on it started, another still to do: it was held at the
        crash, so two restored jobs never claim one); in `_reserve_rest`,
        the devices it will still need (`wanted`).
        """
        intents = {intent.step: intent for intent in rjob.intents}  # last counts
        outcome = {(r.step, r.seq): r for r in rjob.results}
        made = self._restored_plan(t, job, rjob, intents, outcome)
        if isinstance(made, str):
            return made
        segments, state = made
        for segment in segments:
            self._add_steps(job, segment)
        if max(intents, default=-1) >= len(job.steps):
            return f"the journal has step {max(intents)}, the plan has not"

        for index, intent in sorted(intents.items()):
            step = job.steps[index]
            sent = (intent.device, intent.code, intent.target, intent.side)
            if sent != (step.device, step.code, step.target, step.side):
                what = f"{intent.device} {intent.code} {intent.target} {intent.side}"
                return f"step {index} was {what}, the plan has {step.describe()}"
            step.seq = intent.seq
            step.machine.fire(StepEvent.SEND)
            result = outcome.get((index, intent.seq))
            if result is None:
                continue
            if result.outcome == "done":
                step.machine.fire(StepEvent.DONE)
                continue
            step.machine.fire(StepEvent.FAULT)
            step.fault_code = result.fault_code
            if not _retried(step, t.links[step.device]):
                return f"{step.describe()} faulted: {result.fault_code}"

        car = self.inventory.cars.get(job.ticket)
        job.size = car.size if car is not None else None
        if job.kind is JobKind.POSITION:
            pass  # no car: its device's `loaded` flag is reconciled at start
        elif job.kind is JobKind.STORE and state in _NO_CUSTODY:
            if car is not None:
                return f"the car is at {car.place} before its bay check ended"
        else:
            place = job.bay if job.kind is JobKind.STORE else str(job.slot)
            for step in job.steps:
                if step.state is StepState.DONE and step.car_to is not None:
                    place = step.car_to
            if car is None:
                return "the car is not in the journal's inventory"
            if car.place != place:
                return f"the car is at {car.place}, its done steps put it at {place}"

        job.machine = job_machine(job.id, state)
        devices = set()
        if state in _RELEASING:
            remaining = {d for s in job.steps if s.state is not StepState.DONE
                         for d in s.devices}  # fmt: skip
            started = {d for s in job.steps if s.state is not StepState.PENDING
                       for d in s.devices}  # fmt: skip
            devices = remaining & started
            if car is not None and car.place in t.links:
                devices.add(car.place)
            if job.kind is JobKind.RETRIEVE and job.bay is None:
                remaining -= set(t.bays)  # planned through a provisional bay
                devices -= set(t.bays)
            elif job.kind is JobKind.RETRIEVE and job.bay in remaining:
                # A running retrieve holds the bay it was given (or bound to)
                # until its release, even before its first step there.
                devices.add(job.bay)
            wanted[job.id] = remaining
        elif job.bay is not None and (
            job.kind is JobKind.STORE or job.bay not in t.holders
        ):
            devices.add(job.bay)
        taken = sorted(d for d in devices if t.holders.get(d, job.id) != job.id)
        if taken:
            return f"{taken[0]} is held by job {t.holders[taken[0]]}"
        destination = self._restored_destination(job, rjob, t, state, car)
        if isinstance(destination, str):
            return destination
        # What a sequencer reads of the request (its hints are not journaled).
        if job.kind is JobKind.STORE and job.bay is not None:
            self._requests[job.id] = StoreRequested(t.id, job.bay, job.ticket, job.id)
        elif job.kind is JobKind.RETRIEVE:
            self._requests[job.id] = RetrieveRequested(job.ticket, job.id, job.bay)
        if destination is not None:
            t.slots.reserve(destination, job.id)
        for device in sorted(devices):
            self._hold(t, job, device)

        unresolved = self._unresolved.setdefault(t.id, [])
        for step in job.steps:
            if step.state in (StepState.SENT, StepState.FAULT):
                unresolved.append((job, step))
        return None

    def _restored_destination(
        self,
        job: Job,
        rjob: RestoredJob,
        t: _Tower,
        state: JobState,
        car: Any,
    ) -> SlotId | str | None:
        """The slot a restored store or relocation must reserve again (its car
        is not there yet), None, or why it cannot."""
        if job.kind is JobKind.STORE and state not in _NO_CUSTODY:
            slot_id = job.slot
        elif job.kind is JobKind.RELOCATE:
            slot_id = self._relocations.get(job.id)
        else:
            return None
        if slot_id is None or car is None or car.place == str(slot_id):
            return None
        if not t.slots.is_free(t.slots.by_id[slot_id]):
            return f"its slot {slot_id} is not free"
        return slot_id

    def _restored_plan(
        self,
        t: _Tower,
        job: Job,
        rjob: RestoredJob,
        intents: dict[int, StepIntent],
        outcome: dict[tuple[int, int], StepResult],
    ) -> tuple[list[list[plan.StepSpec]], JobState] | str:
        """The plan segments and state of a restored job; or why there are none.

        Sets the job's bay and slot from the journal's origin and destination.
        """
        if job.kind is JobKind.STORE:
            bay = t.bays.get(rjob.origin)
            if bay is None:
                return f"its bay {rjob.origin!r} is not in the site"
            job.bay = bay.id
            if rjob.destination:
                slot = t.slots.by_name.get(rjob.destination)
                if slot is None:
                    return f"its slot {rjob.destination!r} is not in the site"
                job.slot = slot.id
            check = intents.get(0)
            if check is None:
                if intents:
                    return "the journal has steps but no bay check"
                return [], JobState.REQUESTED
            result = outcome.get((0, check.seq))
            if result is None or result.outcome != "done":
                return [plan.check(bay)], JobState.CHECKING
            if job.slot is None:  # measured and refused: back to the driver
                return [plan.check(bay), plan.release(bay)], JobState.RETURNING
            if len(intents) == 1:
                return [plan.check(bay)], JobState.WAITING_PATH
            first = intents.get(1)
            if len(intents) == 2 and first is not None and first.device == bay.id:
                # Cancelled while waiting: the bay hands the car back.
                return [plan.check(bay), plan.release(bay)], JobState.CANCELLING
            return [plan.check(bay), plan.store(bay, job.slot)], JobState.RUNNING
        if job.kind is JobKind.RETRIEVE:
            slot = t.slots.by_name.get(rjob.origin)
            if slot is None:
                return f"its slot {rjob.origin!r} is not in the site"
            job.slot = slot.id
            if rjob.destination:
                if rjob.destination not in t.bays:
                    return f"its bay {rjob.destination!r} is not in the site"
                job.bay = rjob.destination
            if not intents:
                return [], JobState.WAITING_PATH
            # A retrieve whose bay was not chosen yet ran through a
            # provisional one (only steps that do not depend on it).
            bay = t.bays[job.bay or t.bay_order[0]]
            return [plan.retrieve(slot.id, bay)], JobState.RUNNING
        if job.kind is JobKind.RELOCATE:
            origin = t.slots.by_name.get(rjob.origin)
            target = t.slots.by_name.get(rjob.destination)
            if origin is None or target is None:
                return f"its slots {rjob.origin!r}, {rjob.destination!r} are unknown"
            job.slot = origin.id
            self._relocations[job.id] = target.id
            if not intents:
                return [], JobState.WAITING_PATH
            return [plan.relocate(origin.id, target.id)], JobState.RUNNING
        if job.kind is JobKind.POSITION:
            # Never sent, it is dropped once the tower starts (`_position`);
            # sent, its move is settled from the PLC's status like any step.
            link = t.links.get(rjob.origin)
            if link is None or link.kind == "bay" or not rjob.destination.isdigit():
                return f"it moves {rjob.origin!r} to {rjob.destination!r}, unknown"
            if not intents:
                return [], JobState.WAITING_PATH
            return [plan.position(link.name, int(rjob.destination))], JobState.RUNNING
        return f"{job.kind.value} jobs are not resumed"

    def _hold_restored(self, t: _Tower, job: Job, rjob: RestoredJob, why: str) -> None:
        """A restored job that cannot be rebuilt: held, keeping its bay and car."""
        job.machine.to_fault()
        for end in (rjob.origin, rjob.destination):
            if end in t.bays and job.bay is None:
                job.bay = end
            elif end in t.slots.by_name and job.slot is None:
                job.slot = t.slots.by_name[end].id
        car = self.inventory.cars.get(rjob.ticket)
        place = car.place if car else "the bay (not yet measured)"
        job.reason = f"open at restart; car {rjob.ticket} at {place}: {why}"
        if job.kind is JobKind.POSITION:
            job.reason = f"open at restart: {why}"
        # A bay the journal shows released (its car gone on) stays free.
        done = {(r.step, r.seq) for r in rjob.results if r.outcome == "done"}
        released = {
            i.device
            for i in rjob.intents
            if i.code == "release" and (i.step, i.seq) in done
        }
        for device in (job.bay, car.place if car else None):
            if device in released and (car is None or car.place != device):
                continue
            if device in t.links and t.holders.get(device, job.id) == job.id:
                self._hold(t, job, device)
        message = f"job {job.id} ({job.kind.value}) {job.reason}; held"
        self._restore_notes.setdefault(t.id, []).append((job.id, "job_open", message))

    # -- small helpers ---------------------------------------------------------

    def _tower(self, tower: str) -> _Tower:
        t = self.towers.get(tower)
        if t is None:
            raise RequestRefused("unknown_tower", f"no tower {tower!r}")
        return t

    def _link(self, t: _Tower, device: str) -> DeviceLink:
        link = t.links.get(device)
        if link is None:
            raise RequestRefused("unknown_device", f"{t.id} has no device {device!r}")
        return link

    def _check_new_job(self, job_id: str) -> None:
        if job_id in self.open_jobs:
            raise RequestRefused("job_id_in_use", f"job {job_id} exists")

    def _check_motion(self, t: _Tower) -> None:
        if t.state not in MOTION_STATES:
            raise RequestRefused("tower_not_auto", f"{t.id} is {t.state.value}")

    def _car_at(self, t: _Tower) -> Callable[[str], str | None]:
        inventory, tower = self.inventory, t.id
        return lambda place: inventory.at(tower, place)

    def _persist(self, record: Record) -> None:
        self._out.append(Persist(record))

    def _alarm(self, t: _Tower, device: str, code: str, message: str) -> None:
        key = (t.id, device, code)
        if key not in self.alarms:
            self.alarms[key] = message
            self._out.append(Alarm(t.id, device, code, message))

    def _clear(self, t: _Tower, device: str, code: str) -> None:
        if self.alarms.pop((t.id, device, code), None) is not None:
            self._out.append(AlarmCleared(t.id, device, code))

    def _record_error(self, t: _Tower, err: IllegalTransition) -> None:
        self.errors.append(err)
        self._alarm(t, "", "domain_error", str(err))

    def _domain_error(
        self, t: _Tower, err: IllegalTransition, job: Job | None = None
    ) -> None:
        """A bug showed: stop the job and the tower, and say so."""
        self._record_error(t, err)
        if job is not None and job.state not in TERMINAL:
            if job.state is not JobState.HELD:
                job.machine.to_fault()
            job.reason = str(err)
            self._alarm(t, job.id, "job_held", f"job {job.id}: {err}")
        self._tower_fire(t, TowerEvent.ERROR)

    def _publish_occupancy(self) -> None:
        tall = SizeClass.TALL
        for t in self.towers.values():
            if not t.dirty:
                continue
            t.dirty = False
            figures = Occupancy(t.id, *t.slots.occupancy(tall), t.state.value)
            if figures != t.occupancy:
                t.occupancy = figures
                self._out.append(figures)

    _HANDLERS: ClassVar[dict[type, Callable[[SiteCore, Any], list[_Tower]]]] = {
        StoreRequested: _on_store,
        RetrieveRequested: _on_retrieve,
        CancelJob: _on_cancel,
        SetMode: _on_mode,
        ResetTower: _on_reset,
        DeviceStatus: _on_status,
        DeviceOffline: _on_offline,
        CommandWriteFailed: _on_write_failed,
        Tick: _on_tick,
        PlaceCar: _on_place_car,
        RemoveCar: _on_remove_car,
        UnblockSlot: _on_unblock,
    }

    # -- queries ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Every tower's state, occupancy, devices and alarms (JSON-able)."""
        towers = []
        for t in self.towers.values():
            capacity, occupied, free, free_ev, free_tall, closed = t.slots.occupancy(
                SizeClass.TALL
            )
            devices = {
                name: {
                    "state": link.state,
                    "online": link.online,
                    "seq": link.seq,
                    "in_flight": link.inflight.seq if link.inflight else None,
                    "held_by": t.holders.get(name),
                }
                for name, link in t.links.items()
            }
            towers.append(
                {
                    "id": t.id,
                    "state": t.state.value,
                    "capacity": capacity,
                    "occupied": occupied,
                    "free": free,
                    "free_ev": free_ev,
                    "free_tall": free_tall,
                    "closed": closed,
                    "jobs": len(t.jobs),
                    "devices": devices,
                    "alarms": self._alarm_list(t.id),
                }
            )
        return {"site": self.site.id, "towers": towers, "alarms": self._alarm_list()}

    def slots(self, tower: str) -> list[dict[str, Any]]:
        """Every slot of a tower with its size, charger, car and reservation."""
        t = self._tower(tower)
        return [
            {
                "slot": slot.name,
                "level": slot.id.level,
                "column": slot.id.column,
                "side": slot.id.side.value,
                "size": slot.size.value,
                "charger": slot.charger,
                "disabled": slot.disabled,
                "blocked": t.slots.blocked.get(slot.id),
                "reserved_by": t.slots.reserved.get(slot.id),
                "ticket": t.slots.car_at(slot),
            }
            for slot in t.slots.order
        ]

    def jobs(self) -> list[dict[str, Any]]:
        """The open jobs, oldest first, each with its steps."""
        return [self._job_dict(job) for t in self.towers.values() for job in t.jobs]

    def ticket(self, ticket: str) -> dict[str, Any]:
        """Where the car of a ticket is, and the job serving it."""
        car = self.inventory.cars.get(ticket)
        job_id = self._ticket_jobs.get(ticket)
        job = self.open_jobs.get(job_id) if job_id else None
        if car is None and job is None:
            raise RequestRefused("unknown_ticket", f"no car has ticket {ticket}")
        return {
            "ticket": ticket,
            "tower": car.tower if car else job.tower,  # type: ignore[union-attr]
            "place": car.place if car else job.bay,  # type: ignore[union-attr]
            "size_class": car.size.value if car else None,
            "job_id": job.id if job else None,
            "job_state": job.state.value if job else None,
        }

    def _job_dict(self, job: Job) -> dict[str, Any]:
        if job.kind is JobKind.STORE:
            origin, destination = job.bay, str(job.slot) if job.slot else ""
        elif job.kind is JobKind.POSITION and job.steps:
            origin, destination = job.steps[0].device, str(job.steps[0].target)
        else:
            origin, destination = str(job.slot) if job.slot else "", job.bay or ""
        return {
            "job_id": job.id,
            "tower": job.tower,
            "kind": job.kind.value,
            "ticket": job.ticket,
            "state": job.state.value,
            "origin": origin,
            "destination": destination,
            "bay": job.bay,
            "size_class": job.size.value if job.size else None,
            "created_at": job.created_at,
            "reason": job.reason,
            "holds": sorted(job.holds),
            "steps": [
                {
                    "step": s.index,
                    "command": s.describe(),
                    "state": s.state.value,
                    "seq": s.seq,
                    "fault_code": s.fault_code,
                }
                for s in job.steps
            ],
        }

    def _alarm_list(self, tower: str | None = None) -> list[dict[str, str]]:
        return [
            {"tower": tw, "device": device, "code": code, "message": message}
            for (tw, device, code), message in self.alarms.items()
            if tower is None or tw == tower
        ]
