"""The logical points every device kind exposes, whatever its register map.

A profile maps these names to registers; the driver and the simulator both speak
in these names, so a new PLC layout is a new profile file, never new code. A
profile may define more registers than listed here (they are decoded and shown,
not used by the core); it must define every required one.

Status points are read in one block per poll. Command points are written by the
handshake of DESIGN.md section 4 (see plc_profiles/README.md):

1. write cmd_target, cmd_side and cmd_seq (one write);
2. write cmd_code (a second write: the PLC latches the command on it);
3. the PLC shows seq_accepted == cmd_seq and state == busy;
4. the PLC shows seq_done == cmd_seq with result done or fault (and fault_code).

A command whose cmd_seq equals the PLC's seq_accepted is ignored by the PLC, so a
repeated write never runs a motion twice.
"""

from __future__ import annotations

from enum import Enum


class DeviceKind(str, Enum):
    """The kinds of PLC in a tower."""

    LIFT = "lift"
    SHUTTLE = "shuttle"
    BAY = "bay"


class DeviceState(str, Enum):
    """The `state` point: what the PLC says it is doing."""

    IDLE = "idle"  # Ready; no command running.
    BUSY = "busy"  # Running the accepted command.
    FAULT = "fault"  # Stopped on a fault; needs a reset.
    MANUAL = "manual"  # Local manual control; refuses remote commands.
    ESTOP = "estop"  # Emergency stop pressed; refuses every command.


class Result(str, Enum):
    """The `result` point: how the command numbered seq_done ended."""

    NONE = "none"  # No command finished since the PLC started.
    DONE = "done"  # Finished as commanded.
    FAULT = "fault"  # Ended in a fault; fault_code says which.


class LiftCommand(str, Enum):
    """cmd_code of the lift."""

    NONE = "none"  # No command.
    MOVE = "move"  # Travel to level cmd_target.


class ShuttleCommand(str, Enum):
    """cmd_code of a shuttle. Transfers happen at the shuttle's current column."""

    NONE = "none"  # No command.
    MOVE = "move"  # Travel to column cmd_target (0 is the lift).
    PICK = "pick"  # Take the car from cmd_side (left, right, or lift at column 0).
    PLACE = "place"  # Hand the car to cmd_side (left, right, or lift at column 0).


class BayCommand(str, Enum):
    """cmd_code of a bay."""

    NONE = "none"  # No command.
    CHECK = "check"  # Close the door, check nobody is inside, measure the car.
    RELEASE = "release"  # Open the door so a driver can enter or leave.


class TransferSide(str, Enum):
    """cmd_side of a shuttle transfer."""

    NONE = "none"  # Not a transfer.
    LEFT = "left"  # The slot or bay on the left of the aisle.
    RIGHT = "right"  # The slot or bay on the right of the aisle.
    LIFT = "lift"  # The lift, at column 0.


# Points every profile of a kind must define. Each is (name, role) where role is
# "status" (read every poll) or "command" (written by the controller).
COMMON_STATUS = (
    "state",  # enum DeviceState
    "seq_accepted",  # u16
    "seq_done",  # u16
    "result",  # enum Result
    "fault_code",  # enum of the device's fault codes; 0 means no fault
    "heartbeat",  # u16, the PLC's counter; it moves at least every second
)
COMMON_COMMAND = (
    "cmd_seq",  # u16
    "cmd_code",  # enum of the kind's command codes
    "heartbeat_ctl",  # u16, the controller's counter
    "reset",  # u16 or coil: writing 1 clears a fault (and an e-stop once released)
)

REQUIRED: dict[DeviceKind, dict[str, tuple[str, ...]]] = {
    DeviceKind.LIFT: {
        "status": (*COMMON_STATUS, "level", "position_mm", "flags"),
        "command": (*COMMON_COMMAND, "cmd_target"),
    },
    DeviceKind.SHUTTLE: {
        "status": (*COMMON_STATUS, "column", "position_mm", "flags", "slot_sensors"),
        "command": (*COMMON_COMMAND, "cmd_target", "cmd_side"),
    },
    DeviceKind.BAY: {
        "status": (
            *COMMON_STATUS,
            "flags",
            "vehicle_length_mm",
            "vehicle_width_mm",
            "vehicle_height_mm",
            "vehicle_weight_class",
        ),
        "command": COMMON_COMMAND,
    },
}

# Named bits each kind's `flags` bit field must define.
REQUIRED_FLAGS: dict[DeviceKind, tuple[str, ...]] = {
    DeviceKind.LIFT: ("loaded", "moving", "estop"),
    DeviceKind.SHUTTLE: ("loaded", "moving", "estop"),
    DeviceKind.BAY: (
        "vehicle_present",
        "person_present",
        "door_closed",
        "estop",
    ),
}

COMMANDS: dict[DeviceKind, type[Enum]] = {
    DeviceKind.LIFT: LiftCommand,
    DeviceKind.SHUTTLE: ShuttleCommand,
    DeviceKind.BAY: BayCommand,
}

# Fault codes every device kind's fault_code enum must name, by meaning. A
# profile maps each to its own number and its documentation's wording.
REQUIRED_FAULTS = (
    "none",  # 0: no fault
    "heartbeat_lost",  # the controller's heartbeat stopped; motion stopped
    "interlock",  # the command was refused: unsafe (door, person, occupied target)
    "bad_command",  # the command or its target was invalid
)
