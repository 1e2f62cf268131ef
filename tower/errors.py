"""The error family of the shell, on two axes.

*Whose fault*: `DeviceError` (a PLC or the link to it did something wrong;
`BadData` when the PLC answered with a value its profile forbids) versus our own
errors (`ConfigError`-like problems are `tower.tomlsource.ValidationProblems`,
journal problems are `tower.store.journal.JournalError`). *Whether to try
again*: every `DeviceError` says `retryable`. Third-party exceptions (pymodbus,
aiomqtt, sqlite3) are translated into these once, at the boundary, and carry
their facts as attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
MODBUS_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# An illegal function, address or value fails the same way every time: the
# profile and the device disagree. Anything else (busy, acknowledge, gateway
# trouble, device failure, a code the standard does not define) may pass; the
# driver takes a device that keeps answering it offline by its error count.
PERMANENT_EXCEPTIONS = frozenset({1, 2, 3})


def exception_is_retryable(code: int) -> bool:
    """Whether a request answered with Modbus exception `code` may succeed later."""
    return code not in PERMANENT_EXCEPTIONS


class TowerError(Exception):
    """Base of the controller's own errors."""


@dataclass
class DeviceError(TowerError):
    """Raised when a PLC request fails: no answer, a lost link, an exception reply
    or a reply the driver cannot trust.

    `register` names the point (or the run of points, `state..flags`) the request
    was for, `table` and `address` where it starts, as the profile documents it.
    `exception_code` is set when the device answered with a Modbus exception.
    `retryable` says whether the same request may succeed later: false for an
    illegal function, address or value, which fail the same way every time.
    """

    tower: str
    device: str
    unit_id: int
    detail: str
    register: str = ""
    exception_code: int | None = None
    retryable: bool = True
    table: str = ""
    address: int | None = None

    def __str__(self) -> str:
        where = f"{self.tower}/{self.device} (unit {self.unit_id})"
        if self.register:
            where += f" register {self.register}"
        if self.table:
            where += f" ({self.table} {self.address})"
        if self.exception_code is not None:
            name = MODBUS_EXCEPTIONS.get(self.exception_code, "unknown")
            return f"{where}: exception {self.exception_code} ({name}): {self.detail}"
        return f"{where}: {self.detail}"


@dataclass
class BadData(DeviceError):
    """Raised when a device answers with a value its profile does not allow (an
    enum code it does not list, a NaN): the whole read is discarded, never used.

    `raw` is the value as read; `register`, `table` and `address` name where.
    """

    raw: object = None
