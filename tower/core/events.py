"""What the shell tells the core: requests, device readings and the passing of time.

Events are frozen dataclasses. They carry every identifier the core needs
(tickets and job ids are made by the shell, which owns randomness), and the
time of an event is passed beside it to `SiteCore.handle(event, now)`, never
inside it, so one event type serves the real clock and the virtual one alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class StoreRequested:
    """A driver left a car in a bay and asked the tower to store it.

    `ticket` is the visitor's new ticket (random, made by the shell); the core
    journals it with `TicketIssued` once the car is measured and accepted.
    `expected_departure_s` is an estimate of when the visitor will want the
    car back (core clock, s; from the time of day or the visitor's app), and
    `wants_charger` says the driver asked to charge; both are hints for slot
    allocation, never promises.
    """

    tower: str
    bay: str
    ticket: str
    job_id: str
    expected_departure_s: float | None = None
    wants_charger: bool = False


@dataclass(frozen=True, slots=True)
class RetrieveRequested:
    """A visitor asked for the car of `ticket`, at `bay` or at the nearest free bay.

    `visitor_due_s` is when the visitor is expected at the tower (core clock,
    s) for a request made ahead, at the kiosk by the exit; None means the
    visitor is at the tower now.
    """

    ticket: str
    job_id: str
    bay: str | None = None
    visitor_due_s: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """One poll of a device: its decoded status points (see docs/architecture.md).

    Enums come as their value names, `flags` as a dict of bools, `slot_sensors`
    as a list of bools. The shell may send the same status again; the core
    ignores repeats.
    """

    tower: str
    device: str
    points: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeviceOffline:
    """The shell lost the link to a device (connection refused, timeouts)."""

    tower: str
    device: str
    reason: str


@dataclass(frozen=True, slots=True)
class CommandWriteFailed:
    """Writing the command numbered `seq` to a device failed in the shell."""

    tower: str
    device: str
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; the core checks its deadlines (see `SiteCore.next_deadline`)."""


@dataclass(frozen=True, slots=True)
class SetMode:
    """An operator switched a tower to automatic or manual operation."""

    tower: str
    mode: Literal["auto", "manual"]


@dataclass(frozen=True, slots=True)
class ResetTower:
    """An operator acknowledged a fault: reset the devices and start the tower again."""

    tower: str


@dataclass(frozen=True, slots=True)
class CancelJob:
    """An operator cancelled a job that has not started moving a car."""

    job_id: str


@dataclass(frozen=True, slots=True)
class PlaceCar:
    """Maintenance states where a car is now, after moving it by hand in manual
    mode: a slot, a bay or a device of its tower."""

    ticket: str
    place: str


@dataclass(frozen=True, slots=True)
class RemoveCar:
    """Maintenance states that a car has left the tower by hand (not through a
    bay's release): its ticket closes."""

    ticket: str


@dataclass(frozen=True, slots=True)
class UnblockSlot:
    """Maintenance returns a blocked slot to service, its sensor and the
    inventory agreeing again."""

    tower: str
    slot: str


Event = (
    StoreRequested
    | RetrieveRequested
    | DeviceStatus
    | DeviceOffline
    | CommandWriteFailed
    | Tick
    | SetMode
    | ResetTower
    | CancelJob
    | PlaceCar
    | RemoveCar
    | UnblockSlot
)
