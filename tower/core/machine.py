"""A state machine driven by a transition table.

Every machine of the core (tower, job, step) is a `Machine`: a table mapping
(state, event) to the next state, a current state and a fault state. `fire()`
is the one place that applies an event to a state. An event without a row in
the table moves the machine to its fault state and raises `IllegalTransition`;
the caller turns that into an alarm. Tables are plain dicts so that tests can
walk every state x event pair and docs can draw them.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Generic, TypeVar

from tower.core.errors import IllegalTransition

S = TypeVar("S", bound=Enum)
E = TypeVar("E", bound=Enum)

Table = Mapping[tuple[S, E], S]


class Machine(Generic[S, E]):
    """One running instance of a transition table."""

    __slots__ = ("_fault", "_table", "name", "state")

    def __init__(self, name: str, table: Table, initial: S, fault: S) -> None:
        self.name = name
        self.state = initial
        self._table = table
        self._fault = fault

    def allows(self, event: E) -> bool:
        """Whether the table has a transition for `event` from the current state."""
        return (self.state, event) in self._table

    def fire(self, event: E) -> S:
        """Apply `event`: move to the next state, or to the fault state and raise."""
        try:
            self.state = self._table[self.state, event]
        except KeyError:
            old, self.state = self.state, self._fault
            raise IllegalTransition(self.name, old, event) from None
        return self.state

    def to_fault(self) -> None:
        """Move to the fault state: a domain error elsewhere stopped this machine."""
        self.state = self._fault

    def __repr__(self) -> str:
        return f"Machine({self.name!r}, {self.state.value!r})"
