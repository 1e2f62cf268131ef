"""The tower state machine: may the tower move cars, and why not.

Theory of operation
-------------------
A tower starts in `starting`. It stays there until every device has reported a
status since the tower entered `starting` and the reconciliation (journal
against slot sensors, see `tower.core.restore`) has run; then it goes to
`auto`. In `auto` every device is online and healthy; when one goes offline,
faults or is switched to local manual control, the tower is `degraded`: jobs
that need that device wait, the others continue. It returns to `auto` when all
devices are healthy again.

An operator can put a tower in `manual` from any state but `fault` (there the
choice is recorded and takes effect after the reset): no command is sent
while it is there (commands already running finish and are judged). Going back
to `auto` passes through `starting` again, because a person may have moved
cars by hand: the slot sensors are compared with the inventory once more. The
operator's choice holds until they change it: a reset (after an e-stop, say)
or a controller restart passes through `starting` and comes back to `manual`,
never to `auto` (the core journals the choice).

An e-stop on any device, or a domain error (an illegal transition, a command
that fails the safety rule), puts the tower in `fault`: no motion at all. Only
an operator's reset leaves `fault`, through `starting`.

Rules that always hold:

- commands are sent only in `auto` and `degraded`;
- `starting` is the only way into `auto`, so every entry to `auto` follows a
  reconciliation;
- `fault` is the fault state: an event without a transition lands there.
"""

from __future__ import annotations

from enum import Enum

from tower.core.machine import Machine


class TowerState(str, Enum):
    """What a tower may do."""

    STARTING = "starting"  # Waiting for every device's status and the reconciliation.
    AUTO = "auto"  # Running jobs; every device healthy.
    DEGRADED = "degraded"  # Running jobs that avoid an offline or faulted device.
    MANUAL = "manual"  # An operator has control; the core sends nothing.
    FAULT = "fault"  # E-stop or a domain error; nothing moves until a reset.


class TowerEvent(str, Enum):
    """What happens to a tower."""

    RECONCILED = "reconciled"  # Every device reported and the inventory checks out.
    DEVICE_LOST = "device_lost"  # A device went offline, faulted or went manual.
    DEVICES_HEALTHY = "devices_healthy"  # Every device is online and healthy.
    MANUAL = "manual"  # An operator asked for manual mode.
    AUTO = "auto"  # An operator asked for automatic mode.
    ESTOP = "estop"  # A device reports an emergency stop.
    ERROR = "error"  # The core hit a domain error.
    RESET = "reset"  # An operator reset the tower.


S, E = TowerState, TowerEvent

# Events every state takes the same way.
_ALWAYS = {E.ESTOP: S.FAULT, E.ERROR: S.FAULT, E.MANUAL: S.MANUAL}

TOWER_TABLE: dict[tuple[TowerState, TowerEvent], TowerState] = {
    **{(S.STARTING, e): s for e, s in _ALWAYS.items()},
    (S.STARTING, E.RECONCILED): S.AUTO,
    (S.STARTING, E.DEVICE_LOST): S.STARTING,
    (S.STARTING, E.DEVICES_HEALTHY): S.STARTING,
    (S.STARTING, E.AUTO): S.STARTING,
    (S.STARTING, E.RESET): S.STARTING,
    **{(S.AUTO, e): s for e, s in _ALWAYS.items()},
    (S.AUTO, E.DEVICE_LOST): S.DEGRADED,
    (S.AUTO, E.DEVICES_HEALTHY): S.AUTO,
    (S.AUTO, E.AUTO): S.AUTO,
    (S.AUTO, E.RESET): S.STARTING,
    **{(S.DEGRADED, e): s for e, s in _ALWAYS.items()},
    (S.DEGRADED, E.DEVICE_LOST): S.DEGRADED,
    (S.DEGRADED, E.DEVICES_HEALTHY): S.AUTO,
    (S.DEGRADED, E.AUTO): S.DEGRADED,
    (S.DEGRADED, E.RESET): S.STARTING,
    **{(S.MANUAL, e): s for e, s in _ALWAYS.items()},
    (S.MANUAL, E.DEVICE_LOST): S.MANUAL,
    (S.MANUAL, E.DEVICES_HEALTHY): S.MANUAL,
    (S.MANUAL, E.AUTO): S.STARTING,
    (S.MANUAL, E.RESET): S.MANUAL,
    **{(S.FAULT, e): s for e, s in _ALWAYS.items()},
    # Manual is recorded in fault but does not leave it: only a reset does.
    (S.FAULT, E.MANUAL): S.FAULT,
    (S.FAULT, E.DEVICE_LOST): S.FAULT,
    (S.FAULT, E.DEVICES_HEALTHY): S.FAULT,
    (S.FAULT, E.RESET): S.STARTING,
}
"""(state, event) -> next state. `fault` + `auto` has no row: reset first."""

del S, E

# The states in which commands may be sent.
MOTION_STATES = frozenset({TowerState.AUTO, TowerState.DEGRADED})


def tower_machine(tower: str) -> Machine[TowerState, TowerEvent]:
    """A new tower machine, in `starting`."""
    return Machine(f"tower {tower}", TOWER_TABLE, TowerState.STARTING, TowerState.FAULT)
