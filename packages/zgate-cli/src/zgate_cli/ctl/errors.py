"""The failures `zgate ctl` reports, each with its exit status and an actionable message."""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["ApiError", "ConnectionFailed", "CtlError", "UsageError", "render_problem"]


class CtlError(Exception):
    """Base of every `zgate ctl` failure; ``str()`` is the message after ``zgate ctl: ``."""

    exit_code: ClassVar[int] = 1


class UsageError(CtlError):
    """Bad arguments or configuration (exit status 2)."""

    exit_code: ClassVar[int] = 2


class ConnectionFailed(CtlError):
    """The control plane could not be reached (exit status 1)."""


def _location(error: dict[str, Any]) -> str:
    line, column = error.get("line"), error.get("column")
    if isinstance(line, int) and line > 0:
        return f"{line}:{column}" if isinstance(column, int) and column > 0 else str(line)
    field = error.get("field") or error.get("path")
    return str(field) if field else ""


def _error_line(error: Any, source: str | None) -> str:
    if not isinstance(error, dict):
        return f"  {error}"
    where = _location(error)
    if source and where and isinstance(error.get("line"), int):
        where = f"{source}:{where}"
    message = error.get("message") or error.get("problem") or error.get("detail") or ""
    return f"  {where}: {message}" if where else f"  {message}"


def _test_line(test: Any) -> str:
    if not isinstance(test, dict):
        return f"  test: {test}"
    where = _location(test)
    name = test.get("name")
    text = test.get("description") or test.get("message") or test.get("detail") or ""
    if name and text:
        text = f"{name}: {text}"
    elif not text:
        text = ", ".join(f"{k}={v}" for k, v in test.items() if k not in ("line", "column"))
    return f"  {where}: FAIL {text}" if where else f"  FAIL {text}"


def render_problem(problem: dict[str, Any], status: int, source: str | None = None) -> list[str]:
    """The lines of an RFC 9457 problem: ``<title>: <detail>`` then one line per entry of its
    ``errors`` (``line:column: message`` for policies, ``field: message`` otherwise) and of
    its failed ``tests`` (when no errors name them). `source` (a file name) prefixes the line
    numbers."""
    title = str(problem.get("title") or f"HTTP {status}")
    detail = problem.get("detail")
    lines = [f"{title}: {detail}" if detail else title]
    errors = problem.get("errors")
    if isinstance(errors, list):
        lines.extend(_error_line(e, source) for e in errors)
    tests = problem.get("tests")
    # A failing test is among the errors too (at its line); list tests only when it is not.
    if isinstance(tests, list) and not errors:
        lines.extend(_test_line(t) for t in tests if not (isinstance(t, dict) and t.get("passed")))
    return lines


class ApiError(CtlError):
    """The control plane refused or failed a request: its problem document and a hint."""

    def __init__(
        self,
        status: int,
        problem: dict[str, Any],
        hint: str | None = None,
        *,
        source: str | None = None,
    ) -> None:
        self.status = status
        self.problem = problem
        self.hint = hint
        lines = render_problem(problem, status, source)
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))

    def about(self, source: str) -> ApiError:
        """The same refusal with its line numbers prefixed by the file `source`."""
        return ApiError(self.status, self.problem, self.hint, source=source)
