"""The device link: the core's judge of one device's command handshake.

Theory of operation
-------------------
The core keeps one `DeviceLink` per PLC. It numbers commands with a rolling
sequence (1..65535, 0 skipped, wrapping), continuing after a restart from the
last sequence the journal holds. At most one command per device is in flight.
Every status the shell reads goes through `observe()`, which returns a
`Verdict` about the command in flight:

- `accepted` when `seq_accepted` shows its sequence;
- `done` or `fault` when `seq_done` shows its sequence and `result` says so;
- `none` otherwise: a status naming another sequence is stale and changes
  nothing about the command.

The link also watches liveness: a device is online from its first status on,
offline after `DeviceOffline` or when its `heartbeat` has not moved for longer
than the heartbeat timeout, and online again when a status shows the
heartbeat moving. Deadlines (acceptance, completion, heartbeat) are reported
through `deadline()`; the core acts on them at a `Tick`. A link never resends
a command by itself.

A PLC's sequence points change only when it latches or ends one of our
commands. So the link can tell when the PLC's numbering is no longer ours:

- at start, `sequence_problem()` compares what the PLC shows with the last
  sequence the journal sent it: a PLC that shows no sequence at all (it
  restarted and forgot), or one the journal never sent, is not trusted;
- while running, `foreign_sequence()` compares each status with the one
  before: `seq_accepted` or `seq_done` moving to a number the controller did
  not send means the PLC restarted (or someone else commands it).

Either way the core re-synchronises: it raises an alarm, treats the commands
it had in flight on that PLC as unknown, and numbers on above both.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from tower.core.job import Step

SEQ_MAX = 65535

RESYNC_WINDOW = 1024
"""How far behind the journal's last sequence a PLC's `seq_accepted` may be
and still be trusted at start (commands never latched leave it behind)."""


def seq_distance(start: int, end: int) -> int:
    """Steps forward from `start` to `end` on the rolling sequence 1..65535."""
    return (end - start) % SEQ_MAX


def seq_ahead(a: int, b: int) -> int:
    """The one of two sequences that is further along (the nearer way round)."""
    if a == 0 or b == 0:
        return a or b
    return b if 0 < seq_distance(a, b) < SEQ_MAX // 2 else a


def sequence_problem(
    points: dict[str, Any] | None, last_seq: int, *, latched_before: bool
) -> str | None:
    """Why a PLC's sequence points cannot be trusted at start, or None.

    `last_seq` is the last sequence the journal sent the device (0: none);
    `latched_before` says whether the journal knows the PLC latched one of
    them (a journaled result, or a sequence past the first: the core numbers
    a new command only after the one before was judged). Trusted: the PLC
    shows `last_seq`, or a sequence at most `RESYNC_WINDOW` behind it (the
    last ones were never latched), or nothing at all if it never latched
    anything. Not trusted: it shows nothing though it latched before (it
    restarted), or a sequence the journal never sent.
    """
    if last_seq == 0 or points is None:
        return None
    accepted = points.get("seq_accepted") or 0
    done = points.get("seq_done") or 0
    if accepted == 0 and done == 0:
        if not latched_before:
            return None
        return (
            f"shows no sequence; the journal sent up to {last_seq}: the PLC restarted"
        )
    for name, shown in (("seq_accepted", accepted), ("seq_done", done)):
        if shown and seq_distance(shown, last_seq) >= RESYNC_WINDOW:
            return (
                f"shows {name} {shown}; the journal sent up to {last_seq}: "
                "its numbering is not ours"
            )
    return None


class Verdict(str, Enum):
    """What one status says about the command in flight."""

    NONE = "none"  # Nothing new: no command out, or the status is stale.
    ACCEPTED = "accepted"  # The PLC echoed the sequence as accepted.
    DONE = "done"  # The PLC finished the command.
    FAULT = "fault"  # The command ended in a fault.


@dataclass(slots=True)
class Inflight:
    """The command a device is running for a job step."""

    seq: int
    job_id: str
    step: Step
    sent_at: float
    accepted_at: float | None = None
    write_failures: int = 0
    accept_overdue: bool = False  # its acceptance deadline passed (alarm raised)
    done_overdue: bool = False  # its completion deadline passed (alarm raised)


class DeviceLink:
    """One device's last status, liveness, sequence counter and command in flight."""

    __slots__ = (
        "_hb_timeout_s",
        "fresh",
        "heartbeat",
        "heartbeat_at",
        "inflight",
        "kind",
        "name",
        "offline_reason",
        "online",
        "seq",
        "status",
        "tower",
    )

    def __init__(
        self,
        tower: str,
        name: str,
        *,
        last_seq: int = 0,
        heartbeat_timeout_s: float | None = 3.0,
    ) -> None:
        self.tower = tower
        self.name = name
        if name == "lift":
            self.kind = "lift"
        else:
            self.kind = "shuttle" if name.startswith("shuttle-") else "bay"
        self.seq = last_seq
        self.status: dict[str, Any] | None = None
        self.online = False
        self.offline_reason = "no status yet"
        self.fresh = False  # a status arrived since the tower entered `starting`
        self.inflight: Inflight | None = None
        self.heartbeat: object = None
        self.heartbeat_at = 0.0
        self._hb_timeout_s = heartbeat_timeout_s

    # -- what the status says --------------------------------------------------

    @property
    def state(self) -> str:
        """The PLC's `state` point, or `unknown` before the first status."""
        return "unknown" if self.status is None else self.status.get("state", "unknown")

    def flag(self, name: str) -> bool:
        """One bit of the `flags` point (False before the first status)."""
        if self.status is None:
            return False
        return bool(self.status.get("flags", {}).get(name, False))

    @property
    def estop(self) -> bool:
        """Whether the device reports an emergency stop."""
        return self.state == "estop" or self.flag("estop")

    @property
    def contested(self) -> bool:
        """Whether the driver found another master writing this PLC (its
        `contested` point): nothing is commanded to it then."""
        return self.status is not None and bool(self.status.get("contested", False))

    @property
    def healthy(self) -> bool:
        """Online, and neither faulted, stopped, under local manual control nor
        written to by another master."""
        # TODO: also require the driver's `owned` point (true once it read
        # its own heartbeat back twice since connecting), so a controller
        # started beside another one commands nothing before it can tell.
        # Tried: the crash test's drain then stalls (tower chaos --kills 50
        # --seed 7: 8 cars not retrievable); not yet understood, so it is off.
        return (
            self.online
            and self.state in ("idle", "busy")
            and not self.estop
            and not self.contested
        )

    @property
    def ready(self) -> bool:
        """Healthy, idle, and with no command of ours in flight."""
        return self.healthy and self.state == "idle" and self.inflight is None

    # -- the handshake ---------------------------------------------------------

    def next_seq(self) -> int:
        """The next sequence number; never 0, nor what the PLC shows right now.

        The PLC ignores a command whose sequence equals its `seq_accepted`, so
        a number it already shows (a journal that lost its tail) is skipped.
        """
        shown = set()
        if self.status is not None:
            shown = {self.status.get("seq_accepted"), self.status.get("seq_done")}
        seq = self.seq
        while True:
            seq = seq % SEQ_MAX + 1
            if seq not in shown:
                self.seq = seq
                return seq

    def foreign_sequence(self, points: dict[str, Any]) -> str | None:
        """Why a new status shows a numbering that is not ours, or None.

        Between two statuses `seq_accepted` and `seq_done` only ever move to
        a sequence this link sent (the last one, or the one in flight).
        """
        old = self.status
        if old is None:
            return None
        ours = {self.seq}
        if self.inflight is not None:
            ours.add(self.inflight.seq)
        for name in ("seq_accepted", "seq_done"):
            before, shown = old.get(name), points.get(name)
            if shown != before and shown not in ours:
                return (
                    f"{name} went from {before} to {shown}; the controller "
                    f"last sent {self.seq}: the PLC restarted"
                )
        return None

    def resync(self, points: dict[str, Any]) -> None:
        """Number on above both the journal's sequence and what the PLC shows."""
        for name in ("seq_accepted", "seq_done"):
            self.seq = seq_ahead(self.seq, points.get(name) or 0)

    def observe(self, points: dict[str, Any], now: float) -> Verdict:
        """Take a status: update liveness and judge the command in flight."""
        self.status = points
        self.fresh = True
        beat = points.get("heartbeat")
        if beat != self.heartbeat or self._hb_timeout_s is None:
            self.heartbeat, self.heartbeat_at = beat, now
            self.online = True
        return self.judge(points)

    def judge(self, points: dict[str, Any]) -> Verdict:
        """The verdict of a status about the command in flight."""
        cmd = self.inflight
        if cmd is None:
            return Verdict.NONE
        if points.get("seq_done") == cmd.seq:
            result = points.get("result")
            if result == "done":
                return Verdict.DONE
            if result == "fault":
                return Verdict.FAULT
        if points.get("seq_accepted") == cmd.seq and cmd.accepted_at is None:
            return Verdict.ACCEPTED
        return Verdict.NONE

    def heartbeat_stale(self, now: float) -> bool:
        """Whether the heartbeat has stood still for longer than the timeout."""
        return (
            self._hb_timeout_s is not None
            and self.online
            and now - self.heartbeat_at > self._hb_timeout_s
        )

    def deadline(self, accept_s: float, done_s: float) -> float | None:
        """The earliest time this link needs a `Tick`, or None."""
        times = []
        cmd = self.inflight
        if cmd is not None:
            if cmd.accepted_at is None and not cmd.accept_overdue:
                times.append(cmd.sent_at + accept_s)
            if not cmd.done_overdue:
                times.append(cmd.sent_at + done_s)
        if self._hb_timeout_s is not None and self.online:
            # Strictly after the timeout, so the stale test holds at the Tick.
            times.append(self.heartbeat_at + self._hb_timeout_s + 1e-3)
        return min(times) if times else None
