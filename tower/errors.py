"""The error family of the shell, on two axes.

*Whose fault*: `DeviceError` (a PLC or the link to it did something wrong) versus
our own errors (`ConfigError`-like problems are `tower.tomlsource.ValidationProblems`,
journal problems are `tower.store.journal.JournalError`). *Whether to try again*:
every `DeviceError` says `retryable`. Third-party exceptions (pymodbus, aiomqtt,
sqlite3) are translated into these once, at the boundary, and carry their facts as
attributes.
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
# Busy, acknowledge and gateway trouble pass; a bad function, address or value
# will fail the same way every time. Device failure (4) is retryable, but a device
# that keeps answering it is taken offline by the driver's error count.
RETRYABLE_EXCEPTIONS = frozenset({4, 5, 6, 10, 11})


class TowerError(Exception):
    """Base of the controller's own errors."""


@dataclass
class DeviceError(TowerError):
    """Raised when a PLC request fails: no answer, a lost link or an exception reply."""

    tower: str
    device: str
    unit_id: int
    detail: str
    register: str = ""
    exception_code: int | None = None
    retryable: bool = True

    def __str__(self) -> str:
        where = f"{self.tower}/{self.device} (unit {self.unit_id})"
        if self.register:
            where += f" register {self.register}"
        if self.exception_code is not None:
            name = MODBUS_EXCEPTIONS.get(self.exception_code, "unknown")
            return f"{where}: exception {self.exception_code} ({name}): {self.detail}"
        return f"{where}: {self.detail}"
