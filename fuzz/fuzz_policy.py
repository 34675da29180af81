"""Fuzz the policy loader: zgate_policy (YAML text -> Policy -> CompiledPolicy, the inline
policy tests run), what ``zgate policy check`` and the relay's SIGHUP reload do with an
operator's file.

Contract: ``load_and_compile`` returns a CompiledPolicy or raises PolicyError (PolicyInvalid
naming a line and column, PolicyTestFailed), nothing else: no yaml, pydantic, ValueError,
RecursionError or KeyError may leak. Properties: every reported problem has a 0-based-or-
later position inside the text; a policy that loads also compiles the same way twice.
Input bytes are decoded as UTF-8 (undecodable bytes replaced), as the loader reads files.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from harness import check, instrumented, main

with instrumented(__name__ == "__main__"):
    from zgate_policy import PolicyError, PolicyInvalid, load_and_compile

TARGETS = (
    "zgate_policy.loader",
    "zgate_policy.model",
    "zgate_policy.compiler",
    "zgate_policy.matcher",
    "zgate_policy.index",
    "zgate_policy.ports",
    "zgate_policy.names",
    "zgate_policy.errors",
    "zgate_policy.testing",
)
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    # YAML breaks lines at \r, NEL and the Unicode separators too: bound by characters.
    lines = len(text) + 2
    try:
        compiled = load_and_compile(text, geoip_available=False, now=NOW, name="fuzz.yaml")
    except PolicyInvalid as exc:
        check(bool(exc.problems), "PolicyInvalid without a problem")
        for problem in exc.problems:
            check(0 <= problem.line <= lines, f"problem outside the text: {problem}")
        return
    except PolicyError:
        return
    again = load_and_compile(text, geoip_available=False, now=NOW, name="fuzz.yaml")
    check(len(again.rules) == len(compiled.rules), "the same text compiles differently")


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)
