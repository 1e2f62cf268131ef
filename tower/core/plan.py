"""Motion plans: the steps that take a car between a bay and a slot.

A plan is a list of `StepSpec`; `after` refers to positions in the same list.
Steps on different devices run in parallel wherever `after` allows: in a store
the lift goes down to the ground and the level shuttle comes to the lift while
the ground shuttle fetches the car from the bay. See docs/architecture.md,
"Motion plan"; the plans here are that section, step for step.

A relocate plan moves a parked car to another slot, and a position plan one
idle device without a car, both for the sequencer's idle-time housekeeping.

A step that hands a car over names the car's place once it is done (`car_to`)
and the devices it involves besides its own (`partners`): the lift, or the bay
it picks from or places into. A job keeps a device reserved until its last
step involving it is done.
"""

from __future__ import annotations

from dataclasses import dataclass

from tower.config import BayConfig
from tower.core.model import SlotId

LIFT = "lift"


def shuttle(level: int) -> str:
    """Device name of the shuttle of a level (0 is the ground)."""
    return f"shuttle-{level}"


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One command of a plan, before it becomes a job step."""

    device: str
    code: str
    target: int = 0
    side: str = "none"
    after: tuple[int, ...] = ()
    partners: tuple[str, ...] = ()
    car_to: str | None = None


def check(bay: BayConfig) -> list[StepSpec]:
    """Close the bay door, check nobody is inside, measure the car."""
    return [StepSpec(bay.id, "check")]


def release(bay: BayConfig) -> list[StepSpec]:
    """Open the bay door so the driver can take the car (or a new one can enter)."""
    return [StepSpec(bay.id, "release")]


def store(bay: BayConfig, slot: SlotId) -> list[StepSpec]:
    """From a checked bay to a slot. The bay is released once its car is picked."""
    ground, level = shuttle(0), shuttle(slot.level)
    side = slot.side.value
    return [
        StepSpec(ground, "move", bay.column),  # 0
        StepSpec(LIFT, "move", 0),  # 1
        StepSpec(level, "move", 0),  # 2
        StepSpec(ground, "pick", side=bay.side.value, after=(0,), partners=(bay.id,),
                 car_to=ground),  # 3
        StepSpec(bay.id, "release", after=(3,)),  # 4: the door opens for the next car
        StepSpec(ground, "move", 0, after=(3,)),  # 5
        StepSpec(ground, "place", side="lift", after=(5, 1), partners=(LIFT,),
                 car_to=LIFT),  # 6
        StepSpec(LIFT, "move", slot.level, after=(6,)),  # 7
        StepSpec(level, "pick", side="lift", after=(7, 2), partners=(LIFT,),
                 car_to=level),  # 8
        StepSpec(level, "move", slot.column, after=(8,)),  # 9
        StepSpec(level, "place", side=side, after=(9,), car_to=str(slot)),  # 10
    ]  # fmt: skip


def retrieve(slot: SlotId, bay: BayConfig) -> list[StepSpec]:
    """From a slot to a bay, ending with the bay's release for the driver.

    The bay is checked first (door closed, nobody inside) while the car comes
    down, so the ground shuttle never places into an open bay.
    """
    ground, level = shuttle(0), shuttle(slot.level)
    return [
        StepSpec(level, "move", slot.column),  # 0
        StepSpec(LIFT, "move", slot.level),  # 1
        StepSpec(bay.id, "check"),  # 2
        StepSpec(level, "pick", side=slot.side.value, after=(0,), car_to=level),  # 3
        StepSpec(level, "move", 0, after=(3,)),  # 4
        StepSpec(level, "place", side="lift", after=(4, 1), partners=(LIFT,),
                 car_to=LIFT),  # 5
        StepSpec(ground, "move", 0),  # 6
        StepSpec(LIFT, "move", 0, after=(5,)),  # 7
        StepSpec(ground, "pick", side="lift", after=(7, 6), partners=(LIFT,),
                 car_to=ground),  # 8
        StepSpec(ground, "move", bay.column, after=(8,)),  # 9
        StepSpec(ground, "place", side=bay.side.value, after=(9, 2),
                 partners=(bay.id,), car_to=bay.id),  # 10
        StepSpec(bay.id, "release", after=(10,)),  # 11
    ]  # fmt: skip


def relocate(origin: SlotId, destination: SlotId) -> list[StepSpec]:
    """From one slot to another: along the aisle on one level, or through the
    lift between levels (the destination's shuttle comes to the lift meanwhile).
    """
    source, target = shuttle(origin.level), shuttle(destination.level)
    if origin.level == destination.level:
        return [
            StepSpec(source, "move", origin.column),  # 0
            StepSpec(source, "pick", side=origin.side.value, after=(0,),
                     car_to=source),  # 1
            StepSpec(source, "move", destination.column, after=(1,)),  # 2
            StepSpec(source, "place", side=destination.side.value, after=(2,),
                     car_to=str(destination)),  # 3
        ]  # fmt: skip
    return [
        StepSpec(source, "move", origin.column),  # 0
        StepSpec(LIFT, "move", origin.level),  # 1
        StepSpec(target, "move", 0),  # 2
        StepSpec(source, "pick", side=origin.side.value, after=(0,),
                 car_to=source),  # 3
        StepSpec(source, "move", 0, after=(3,)),  # 4
        StepSpec(source, "place", side="lift", after=(4, 1), partners=(LIFT,),
                 car_to=LIFT),  # 5
        StepSpec(LIFT, "move", destination.level, after=(5,)),  # 6
        StepSpec(target, "pick", side="lift", after=(6, 2), partners=(LIFT,),
                 car_to=target),  # 7
        StepSpec(target, "move", destination.column, after=(7,)),  # 8
        StepSpec(target, "place", side=destination.side.value, after=(8,),
                 car_to=str(destination)),  # 9
    ]  # fmt: skip


def position(device: str, target: int) -> list[StepSpec]:
    """One device, with no car, to a column (a shuttle) or a level (the lift)."""
    return [StepSpec(device, "move", target)]


def devices_of(plan: list[StepSpec]) -> frozenset[str]:
    """Every device a plan involves: the path it must reserve."""
    return frozenset(d for spec in plan for d in (spec.device, *spec.partners))
