"""The safety rule: the one check every command passes just before it is sent.

The PLCs own safety and refuse unsafe motion; the core must still never ask
for it. `check_command` is called for every `SendCommand`, after the job logic
decided the step is ready, and raises `IllegalTransition` (machine `safety`)
when the command would move into an unsafe state. That is a bug in the job
logic, never a condition to wait on: the core puts the tower in `fault`.

The rule:

- no command at all unless the tower is in `auto` or `degraded`;
- no command to a device that is offline, not idle, faulted, stopped, under
  manual control, or already running one of ours;
- a bay takes `release` any time, `check` only with nobody inside;
- no ground-shuttle pick or place at a bay that shows a person or an open
  door, or that is not idle;
- no transfer with the lift unless the shuttle stands at column 0 and the lift
  is idle at the shuttle's level;
- no lift move while any shuttle transfers with the lift;
- no place into a slot the inventory says holds a car.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tower.core.errors import IllegalTransition
from tower.core.job import Step
from tower.core.link import DeviceLink
from tower.core.tower import MOTION_STATES, TowerState


def check_command(
    tower_state: TowerState,
    step: Step,
    links: Mapping[str, DeviceLink],
    bay_at: Mapping[tuple[int, str], str],
    car_at: Callable[[str], str | None],
    *,
    resend: bool = False,
) -> None:
    """Raise `IllegalTransition` if sending `step` now would break the rule.

    `bay_at` maps (column, side) to the bay standing there; `car_at` gives the
    ticket of the car the inventory holds at a place, or None. With `resend`,
    the device's command in flight is the one being written again.
    """
    command = step.describe()
    if tower_state not in MOTION_STATES:
        _violation(f"tower is {tower_state.value}", command)
    link = links[step.device]
    idle = link.healthy and link.state == "idle"
    if not idle or (link.inflight is not None and not resend):
        _violation(
            f"{link.name} is {link.state}, online={link.online}, "
            f"in flight={link.inflight is not None}",
            command,
        )

    if link.kind == "bay":
        if step.code == "check" and link.flag("person_present"):
            _violation(f"a person is in {link.name}", command)
        return

    if link.kind == "lift":
        for other in links.values():
            cmd = other.inflight
            if cmd is not None and cmd.step.side == "lift":
                _violation(f"{other.name} is transferring with the lift", command)
        return

    if step.code not in ("pick", "place"):
        return
    status = link.status or {}
    column = status.get("column")
    level = int(link.name.removeprefix("shuttle-"))
    if step.side == "lift":
        lift = links["lift"]
        if column != 0:
            _violation(f"{link.name} is at column {column}, not at the lift", command)
        if not lift.ready or (lift.status or {}).get("level") != level:
            _violation(f"lift is not idle at level {level}", command)
        return
    if level == 0:
        bay_id = bay_at.get((column, step.side))
        if bay_id is None:
            _violation(f"no bay at column {column} {step.side}", command)
        bay = links[bay_id]
        if bay.flag("person_present") or not bay.flag("door_closed"):
            _violation(f"{bay_id} shows a person or an open door", command)
        if not bay.ready:
            _violation(f"{bay_id} is {bay.state}", command)
        return
    if step.code == "place" and step.car_to and car_at(step.car_to) is not None:
        _violation(f"slot {step.car_to} holds {car_at(step.car_to)}", command)


def _violation(why: str, command: str) -> None:
    raise IllegalTransition("safety", why, command)
