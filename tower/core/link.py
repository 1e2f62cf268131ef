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
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from tower.core.job import Step

SEQ_MAX = 65535


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
    def healthy(self) -> bool:
        """Online, and neither faulted, stopped nor under local manual control."""
        return self.online and self.state in ("idle", "busy") and not self.estop

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
