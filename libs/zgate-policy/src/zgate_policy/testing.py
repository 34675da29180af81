"""Run a policy's inline ``tests:`` against its compiled form."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv6Address

from .errors import PolicyTestFailed
from .matcher import CompiledPolicy, Decision
from .model import Policy, PolicyTest
from .names import IPAddress, TestTarget
from .ports import ICMP, ICMPV6, TCP, UDP

__all__ = ["TestResult", "check_policy_tests", "run_policy_tests", "target_flow"]

_PROTO = {"tcp": TCP, "udp": UDP}


@dataclass(frozen=True, slots=True)
class TestResult:
    """The outcome of one inline test."""

    __test__ = False  # not a pytest test class

    index: int
    test: PolicyTest
    decision: Decision
    passed: bool

    def describe(self) -> str:
        """``alice -> tcp://10.1.2.3:443: allow by eng-corp (expected allow)``."""
        t = self.test
        who = t.from_ + (f" [{', '.join(t.groups)}]" if t.groups else "")
        wanted = t.expect + (f" by {t.rule}" if t.rule is not None else "")
        got = f"{self.decision.verdict} by {self.decision.rule_id}"
        name = f"{t.name}: " if t.name else ""
        return f"{name}{who} -> {t.to}: {got} (expected {wanted})"


def target_flow(
    target: TestTarget, fqdn: str | None = None
) -> tuple[int, IPAddress | None, int | None, tuple[str, ...]]:
    """(proto, dst, dport, fqdns) for a test target; `fqdn`: a name the IP was resolved from.

    A name target is decided on the name alone (dst None): FQDN rules apply, IP rules do not.
    """
    host = target.host
    if target.proto == "icmp":
        proto = ICMPV6 if isinstance(host, IPv6Address) else ICMP
    else:
        proto = _PROTO[target.proto]
    if isinstance(host, str):
        return proto, None, target.port, tuple(n for n in (host, fqdn) if n is not None)
    return proto, host, target.port, (fqdn,) if fqdn is not None else ()


def run_policy_tests(
    policy: Policy, compiled: CompiledPolicy, *, now: datetime
) -> list[TestResult]:
    """Decide each test's flow (at its ``at`` time, else `now`) and compare with its expectation."""
    results = []
    for i, test in enumerate(policy.tests):
        proto, dst, dport, fqdns = target_flow(test.to, test.fqdn)
        decision = compiled.decide(
            test.from_,
            test.groups,
            proto,
            dst,
            dport,
            fqdns=fqdns,
            country=test.country,
            now=test.at or now,
        )
        passed = decision.verdict == test.expect and test.rule in (None, decision.rule_id)
        results.append(TestResult(i, test, decision, passed))
    return results


def check_policy_tests(policy: Policy, compiled: CompiledPolicy, *, now: datetime) -> None:
    """Run the tests; PolicyTestFailed (a ``file:line:col: tests[i]: ...`` line each) on failure."""
    failures = [r for r in run_policy_tests(policy, compiled, now=now) if not r.passed]
    if failures:
        lines = [
            str(policy.source.problem(("tests", r.index), "FAIL " + r.describe())) for r in failures
        ]
        raise PolicyTestFailed(failures, lines)
