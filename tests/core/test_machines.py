"""Every state x event pair of the tower, job and step machines."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tower.core.errors import IllegalTransition
from tower.core.job import (
    JOB_TABLE,
    STEP_TABLE,
    TERMINAL,
    JobEvent,
    JobState,
    StepEvent,
    StepState,
    job_machine,
    step_machine,
)
from tower.core.machine import Machine
from tower.core.tower import TOWER_TABLE, TowerEvent, TowerState, tower_machine

MACHINES = [
    ("tower", TOWER_TABLE, TowerState, TowerEvent, TowerState.FAULT,
     lambda: tower_machine("t")),
    ("job", JOB_TABLE, JobState, JobEvent, JobState.HELD, lambda: job_machine("j")),
    ("step", STEP_TABLE, StepState, StepEvent, StepState.FAULT,
     lambda: step_machine("j", 0)),
]  # fmt: skip

PAIRS = [
    pytest.param(
        make, table, state, event, fault, id=f"{name}-{state.value}-{event.value}"
    )
    for name, table, states, events, fault, make in MACHINES
    for state, event in itertools.product(states, events)
]


@pytest.mark.parametrize(("make", "table", "state", "event", "fault"), PAIRS)
def test_every_state_event_pair_moves_or_faults(make, table, state, event, fault):
    """Each pair either moves to the state its table names, or raises
    IllegalTransition naming state and event and leaves the machine in its
    fault state."""
    machine: Machine = make()
    machine.state = state

    if (state, event) in table:
        assert machine.fire(event) is table[state, event]
    else:
        with pytest.raises(IllegalTransition) as raised:
            machine.fire(event)
        assert (raised.value.state, raised.value.event) == (state.value, event.value)
        assert machine.state is fault


@pytest.mark.parametrize(
    ("name", "table", "states", "events", "fault", "make"), MACHINES
)
def test_fault_state_is_a_state_of_the_machine(
    name, table, states, events, fault, make
):
    """Every target of a table is a state of its machine, the fault state
    included, and every state is reachable from the initial one."""
    reached = {make().state}
    frontier = list(reached)
    while frontier:
        state = frontier.pop()
        for (source, _), target in table.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)

    assert fault in reached
    assert reached == set(states)


def test_terminal_job_states_take_no_event():
    """A finished job has no transition left."""
    assert not [pair for pair in JOB_TABLE if pair[0] in TERMINAL]


@given(st.lists(st.sampled_from(list(TowerEvent)), max_size=40))
def test_tower_machine_always_in_a_defined_state(events):
    """Any event sequence leaves the tower in one of its states, and an
    illegal event always lands in fault."""
    machine = tower_machine("t")
    for event in events:
        legal = machine.allows(event)
        try:
            machine.fire(event)
        except IllegalTransition:
            assert not legal
            assert machine.state is TowerState.FAULT
    assert machine.state in TowerState


@given(st.lists(st.sampled_from(list(JobEvent)), max_size=40))
def test_job_machine_always_in_a_defined_state(events):
    """Any event sequence leaves a job in one of its states; an illegal event
    holds it (an event on a finished job too)."""
    machine = job_machine("j")
    for event in events:
        legal = machine.allows(event)
        try:
            machine.fire(event)
        except IllegalTransition:
            assert not legal
            assert machine.state is JobState.HELD
    assert machine.state in JobState
