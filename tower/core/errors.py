"""The core's two errors: a request it refuses, and a transition it has no rule for.

`RequestRefused` is the outside world's problem: an operator or a terminal asked
for something the tower cannot do now (an unknown ticket, an empty bay). It is
raised synchronously from `SiteCore.handle()` before anything changes, so the
caller can answer the request and carry on.

`IllegalTransition` is the core's own problem: a state machine was given an
event its table has no transition for, or a command failed the safety rule. It
is raised inside the core, never out of `handle()`: the machine that raised it
has already moved to its fault state, and the core turns it into an alarm.
"""

from __future__ import annotations

from enum import Enum


class RequestRefused(Exception):
    """Raised by `SiteCore.handle()` when a request cannot be honoured.

    Nothing changed. `code` is a stable machine-readable reason (`unknown_ticket`,
    `bay_empty`, `no_free_slot`, ...); `message` says it for a person.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class IllegalTransition(Exception):
    """Raised when a state machine gets an event it has no transition for.

    `machine` names the machine (`tower tower-a`, `job j-17`, `safety`), `state`
    the state it was in and `event` what it was given. By the time this is
    raised, the machine is in its fault state.
    """

    def __init__(self, machine: str, state: object, event: object) -> None:
        self.machine = machine
        self.state = _name(state)
        self.event = _name(event)
        super().__init__(f"{machine}: no transition from {self.state} on {self.event}")


def _name(value: object) -> str:
    return value.value if isinstance(value, Enum) else str(value)
