"""TOML files with line numbers for their problems.

`tomllib` parses but forgets where a value stood. Operators and PLC integrators
need "file, line, field" in every error, so this module keeps a map from each
key path to the line it was written on and turns pydantic's error locations into
`Problem` records that name all three.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY_PART = re.compile(rf"\s*({_BARE}|{_QUOTED})\s*(\.)?")
_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*(\]\]?)\s*(#.*)?$")
_ASSIGN = re.compile(
    rf"^\s*((?:(?:{_BARE}|{_QUOTED})\s*\.\s*)*(?:{_BARE}|{_QUOTED}))\s*="
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: where it is and what is wrong."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class ValidationProblems(ValueError):
    """Raised when a file does not parse or does not validate; lists every problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def _split_key(text: str) -> list[str]:
    parts: list[str] = []
    pos = 0
    while pos < len(text):
        match = _KEY_PART.match(text, pos)
        if not match:
            break
        raw = match.group(1)
        parts.append(raw[1:-1] if raw[0] in "\"'" else raw)
        pos = match.end()
        if not match.group(2):
            break
    return parts


def _line_map(text: str) -> dict[tuple[str | int, ...], int]:
    """Map every table header and key path to its 1-based line number."""
    lines: dict[tuple[str | int, ...], int] = {}
    counters: dict[tuple[str, ...], int] = {}
    table: tuple[str | int, ...] = ()
    in_string = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
            was_in = in_string
            in_string = not in_string
            if was_in:
                continue
        elif in_string:
            continue
        header = _HEADER.match(line)
        if header and not _ASSIGN.match(line):
            names = _split_key(header.group(2))
            if header.group(1) == "[[":
                key = tuple(names)
                index = counters.get(key, -1) + 1
                counters[key] = index
                table = (*_resolve(names, counters), index)
            else:
                table = tuple(_resolve(names, counters))
            lines.setdefault(table, number)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            path = (*table, *_split_key(assign.group(1)))
            lines.setdefault(path, number)
    return lines


def _resolve(names: list[str], counters: dict[tuple[str, ...], int]) -> list[str | int]:
    """Insert array-of-tables indexes into a header path ([towers.physics])."""
    out: list[str | int] = []
    for i, name in enumerate(names):
        out.append(name)
        prefix = tuple(names[: i + 1])
        if prefix in counters and i < len(names) - 1:
            out.append(counters[prefix])
    return out


@dataclass
class TomlSource:
    """A parsed TOML file that remembers where each key was written."""

    path: Path
    data: dict[str, Any]
    lines: dict[tuple[str | int, ...], int]

    @classmethod
    def read(cls, path: str | Path) -> TomlSource:
        """Parse a file; a syntax error becomes a ValidationProblems with its line."""
        path = Path(path)
        if path.exists() and not path.is_file():
            # A directory, a FIFO or a device: reading would fail or never end.
            raise ValidationProblems(
                [Problem(str(path), None, "(file)", "not a regular file")]
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationProblems(
                [Problem(str(path), None, "(file)", f"cannot read: {exc}")]
            ) from None
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, path: str | Path = "<string>") -> TomlSource:
        path = Path(path)
        try:
            data = tomllib.loads(text)
        except RecursionError:
            raise ValidationProblems(
                [Problem(str(path), None, "(syntax)", "nested too deeply to read")]
            ) from None
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"line (\d+)", str(exc))
            line = int(match.group(1)) if match else None
            raise ValidationProblems(
                [Problem(str(path), line, "(syntax)", str(exc))]
            ) from None
        return cls(path=path, data=data, lines=_line_map(text))

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """The line of the deepest key of loc that the file spells out."""
        for end in range(len(loc), 0, -1):
            found = self.lines.get(tuple(loc[:end]))
            if found is not None:
                return found
        return None

    def problem(self, loc: Sequence[str | int], message: str) -> Problem:
        field = ".".join(str(p) for p in loc) or "(top)"
        return Problem(str(self.path), self.line_of(loc), field, message)

    def validate(self, model: type[Model], data: Any = None) -> Model:
        """Validate the file (or a part of it) against a pydantic model."""
        try:
            return model.model_validate(self.data if data is None else data)
        except ValidationError as exc:
            raise ValidationProblems(
                [self.problem(err["loc"], err["msg"]) for err in exc.errors()]
            ) from None
