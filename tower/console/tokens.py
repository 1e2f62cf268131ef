"""Operator tokens and their roles.

The tokens file holds one `role token` pair per line; `#` starts a comment and
blank lines are skipped:

    # role        token
    viewer        3f1c0e5f2b7d4a9e8c6b1a0d
    operator      9b2e7c4d1f0a6e3b8d5c2a7f
    maintenance   c4a1e8f3b6d0927e5a1c8b3d

Roles are ordered: viewer < operator < maintenance; a command names the lowest
role that may run it. Tokens are compared in constant time. The file should be
readable by the controller only (mode 0600 or 0640): a world-readable file is
accepted with a warning in `TokenStore.warnings`.
"""

from __future__ import annotations

import hmac
import os
import stat
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

MIN_TOKEN_CHARS = 16


class Role(str, Enum):
    """Who may do what on the control socket, in increasing order of power."""

    VIEWER = "viewer"  # Reads status, slots, jobs and alarms.
    OPERATOR = "operator"  # Also stores and retrieves cars, cancels and resets.
    MAINTENANCE = "maintenance"  # Also switches a tower between auto and manual.

    @property
    def rank(self) -> int:
        return _RANKS[self]

    # str's own comparisons would order roles alphabetically: override them all.
    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank >= other.rank


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.MAINTENANCE: 2}


class TokenFileError(ValueError):
    """Raised when the tokens file cannot be read or has a malformed line."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


@dataclass
class TokenStore:
    """The tokens of one tokens file. Load it with `TokenStore.load`."""

    path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    _entries: list[tuple[bytes, Role]] = field(default_factory=list, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TokenStore:
        """Read a tokens file. Raises TokenFileError naming the file and line."""
        path = Path(path)
        try:
            with path.open(encoding="utf-8") as file:
                mode = os.fstat(file.fileno()).st_mode
                text = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(path, None, f"cannot read: {exc}") from None

        store = cls(path=path)
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if line:
                role, token = _parse_line(path, number, line)
                store._add(path, number, role, token)
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            store.warnings.append(
                f"{path}: readable or writable by every user "
                f"(mode {stat.S_IMODE(mode):04o}); chmod 0600 or 0640"
            )
        if not store._entries:
            store.warnings.append(f"{path}: no tokens; every request is refused")
        return store

    @classmethod
    def from_pairs(cls, pairs: list[tuple[Role, str]]) -> TokenStore:
        """A store built in code (tests, the demo)."""
        store = cls()
        for number, (role, token) in enumerate(pairs, start=1):
            store._add(Path("<memory>"), number, Role(role), token)
        return store

    def _add(self, path: Path, number: int, role: Role, token: str) -> None:
        encoded = token.encode("ascii")
        if any(hmac.compare_digest(encoded, known) for known, _ in self._entries):
            raise TokenFileError(path, number, "this token is already listed")
        self._entries.append((encoded, role))

    def role_of(self, token: str) -> Role | None:
        """The role of a token, or None for an unknown one (constant time)."""
        try:
            candidate = token.encode("ascii")
        except UnicodeEncodeError:
            candidate = b""
        found: Role | None = None
        for known, role in self._entries:  # No early exit: every entry is compared.
            if hmac.compare_digest(candidate, known):
                found = role
        return found

    def __len__(self) -> int:
        return len(self._entries)


def _parse_line(path: Path, number: int, line: str) -> tuple[Role, str]:
    parts = line.split()
    if len(parts) != 2:
        raise TokenFileError(
            path, number, f"expected 'role token', found {len(parts)} words"
        )
    role_name, token = parts
    try:
        role = Role(role_name)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise TokenFileError(
            path, number, f"unknown role {role_name!r} (one of {known})"
        ) from None
    if not token.isascii() or not token.isprintable():
        raise TokenFileError(path, number, "a token is printable ASCII")
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenFileError(
            path,
            number,
            f"token too short ({len(token)} characters, at least {MIN_TOKEN_CHARS}; "
            "e.g. openssl rand -hex 16)",
        )
    return role, token
