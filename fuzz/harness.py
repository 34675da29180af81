"""What every fuzz harness shares: instrumentation, the atheris entry point, a finding type.

A harness is a script ``fuzz/fuzz_<name>.py`` with a ``test_one_input(data: bytes)`` that
feeds ``data`` to a parser and states its contract: the parser returns a value or raises
the project's documented error type, and what it returns obeys the listed invariants. Any
other exception escapes ``test_one_input`` and is a finding (atheris prints the traceback
and writes the input to ``crash-<sha1>``); so is an input that runs past libFuzzer's
``-timeout``. Harnesses import their targets inside ``instrumented(__name__ == "__main__")``
so atheris adds coverage feedback when the file runs as the fuzzer, and the same module
can be imported plainly (by ``fuzz/run.py --replay`` and the CI smoke test).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["InvariantBroken", "check", "instrumented", "main"]


class InvariantBroken(AssertionError):
    """A parser returned something that breaks a property its harness states."""


def instrumented(active: bool) -> contextlib.AbstractContextManager[Any]:
    """Instrument the modules imported in this block for coverage feedback when ``active``.

    Only modules imported for the first time inside the block are instrumented, so the
    harness's targets (and the third-party parsers they call) are imported there.
    """
    if not active:
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports()  # type: ignore[no-any-return]


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Run ``test_one_input`` under atheris with libFuzzer's command line (``sys.argv``)."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def check(condition: bool, message: str) -> None:
    """Raise InvariantBroken (a finding) unless ``condition`` holds."""
    if not condition:
        raise InvariantBroken(message)
