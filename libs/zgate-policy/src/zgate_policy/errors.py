"""The one exception base of zgate-policy, and where in a file a problem is."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .testing import TestResult

__all__ = [
    "KEY",
    "FieldPath",
    "PolicyError",
    "PolicyInvalid",
    "PolicyTestFailed",
    "Problem",
    "SourceMap",
    "format_path",
]

#: Where a value sits in the document: keys and list indexes, e.g. ("rules", 2, "from", 0).
FieldPath = tuple[str | int, ...]
#: A last path element meaning "the key itself", not its value (as pydantic marks key errors).
KEY = "[key]"


def format_path(path: FieldPath) -> str:
    """``("rules", 2, "from", 0)`` -> ``rules[2].from[0]``."""
    text = ""
    for part in path:
        if part != KEY:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy, at a 1-based line and column (0 when unknown)."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


@dataclass(frozen=True, slots=True)
class SourceMap:
    """The file a policy came from and the (line, column) of every field path in it."""

    file: str = "<policy>"
    marks: Mapping[FieldPath, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: FieldPath) -> tuple[int, int]:
        """The position of `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            mark = self.marks.get(path[:end])
            if mark is not None:
                return mark
        return (0, 0)

    def problem(self, path: FieldPath, message: str) -> Problem:
        """A Problem about the value at `path`."""
        line, column = self.locate(path)
        return Problem(self.file, line, column, format_path(path), message)


class PolicyError(Exception):
    """Base of every error zgate-policy raises."""


class PolicyInvalid(PolicyError):
    """The policy is malformed or inconsistent; ``problems`` says where and why."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = sorted(
            problems, key=lambda p: (p.file, p.line, p.column, p.field)
        )
        super().__init__("\n".join(str(p) for p in self.problems))


class PolicyTestFailed(PolicyError):
    """The policy is well-formed but some of its inline tests fail; it must not be used."""

    def __init__(self, failures: Sequence[TestResult], lines: Sequence[str]) -> None:
        self.failures: list[TestResult] = list(failures)
        super().__init__("\n".join(lines))
