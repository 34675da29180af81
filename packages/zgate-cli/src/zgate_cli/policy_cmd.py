"""``zgate policy``: check, test and explain access policies; convert the Go original's format."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from zgate_policy import (
    CompiledPolicy,
    Policy,
    PolicyError,
    PolicyInvalid,
    Problem,
    TestTarget,
    compile_policy,
    convert_go_policy,
    lint,
    load_policy_file,
    run_policy_tests,
    target_flow,
)

__all__ = ["register"]

_Handler = Callable[[argparse.Namespace], int]


def _policy_errors_to_exit_code(handler: _Handler) -> _Handler:
    """Print a PolicyError (its ``file:line:col: field: message`` lines) and exit with 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            return 1

    return run


def _timestamp(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _target(text: str) -> TestTarget:
    try:
        return TestTarget.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _now(args: argparse.Namespace) -> datetime:
    at: datetime | None = args.at
    return at if at is not None else datetime.now(UTC)


def _load(args: argparse.Namespace) -> tuple[Policy, CompiledPolicy]:
    geoip: Path | None = args.geoip
    if geoip is not None and not geoip.is_file():
        raise PolicyInvalid([Problem(str(geoip), 0, 0, "", "no such GeoIP database")])
    policy = load_policy_file(args.file)
    return policy, compile_policy(policy, geoip_available=geoip is not None)


@_policy_errors_to_exit_code
def _cmd_check(args: argparse.Namespace) -> int:
    policy, compiled = _load(args)
    now = _now(args)
    warnings = lint(policy, now=now)
    for warning in warnings:
        print(policy.source.problem(warning.path, f"warning: {warning}"), file=sys.stderr)
    failed = [r for r in run_policy_tests(policy, compiled, now=now) if not r.passed]
    for result in failed:
        where = policy.source.problem(("tests", result.index), f"FAIL {result.describe()}")
        print(where, file=sys.stderr)
    if failed:
        print(f"{args.file}: {len(failed)} of {len(policy.tests)} tests failed")
        return 1
    print(
        f"{args.file}: OK: {len(policy.rules)} rules, {len(policy.tests)} tests passed,"
        f" {len(warnings)} warnings, version {compiled.version}"
    )
    return 1 if warnings and args.strict else 0


@_policy_errors_to_exit_code
def _cmd_test(args: argparse.Namespace) -> int:
    policy, compiled = _load(args)
    results = run_policy_tests(policy, compiled, now=_now(args))
    for r in results:
        line, _ = policy.source.locate(("tests", r.index))
        status = "PASS" if r.passed else "FAIL"
        print(f"{status} tests[{r.index}] (line {line}): {r.describe()}")
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


@_policy_errors_to_exit_code
def _cmd_explain(args: argparse.Namespace) -> int:
    _, compiled = _load(args)
    proto, dst, dport, fqdns = target_flow(args.to, args.fqdn)
    groups: list[str] = args.groups
    explanation = compiled.explain(
        args.client, groups, proto, dst, dport, fqdns=fqdns, country=args.country, now=_now(args)
    )
    print(f"flow: {args.client} -> {args.to}" + (f" ({', '.join(fqdns)})" if fqdns else ""))
    for line in explanation.lines():
        print(line)
    return 0


@_policy_errors_to_exit_code
def _cmd_convert_go(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"zgate policy: error: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    converted = convert_go_policy(text, str(path))
    out: Path | None = args.output
    if out is None:
        sys.stdout.write(converted)
        return 0
    try:
        out.write_text(converted, encoding="utf-8")
    except OSError as exc:
        print(f"zgate policy: error: cannot write {out}: {exc}", file=sys.stderr)
        return 1
    print(f"converted {path} -> {out}", file=sys.stderr)
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="the policy (YAML)")
    parser.add_argument(
        "--geoip",
        type=Path,
        metavar="FILE",
        help="a GeoIP database is configured (needed by policies with country rules)",
    )
    parser.add_argument(
        "--at",
        type=_timestamp,
        metavar="TIME",
        help="decide as of this ISO 8601 time (default: now), e.g. to check rule expiry",
    )


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``policy`` command group to the top-level ``zgate`` parser."""
    policy = groups.add_parser(
        "policy",
        help="check, test and explain access policies",
        description="Validate access policies, run their inline tests, explain decisions and "
        "convert the Go original's policy format.",
    )
    commands = policy.add_subparsers(title="commands", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check", help="validate, lint and test a policy (exit 1 if it would be refused)"
    )
    _add_common(check)
    check.add_argument("--strict", action="store_true", help="warnings fail the check too")
    check.set_defaults(handler=_cmd_check)

    test = commands.add_parser("test", help="run the policy's inline tests, PASS/FAIL each")
    _add_common(test)
    test.set_defaults(handler=_cmd_test)

    explain = commands.add_parser(
        "explain", help="decide one flow and say why each rule matched or not"
    )
    _add_common(explain)
    explain.add_argument("--from", dest="client", required=True, metavar="CLIENT")
    explain.add_argument(
        "--group",
        dest="groups",
        action="append",
        default=[],
        metavar="GROUP",
        help="a group in the client's certificate (repeatable)",
    )
    explain.add_argument(
        "--to",
        type=_target,
        required=True,
        metavar="TARGET",
        help="tcp://HOST:PORT, udp://HOST:PORT or icmp://HOST (HOST an IP or a name)",
    )
    explain.add_argument("--fqdn", metavar="NAME", help="the name the IP was resolved from")
    explain.add_argument("--country", metavar="CC", help="the destination's GeoIP country")
    explain.set_defaults(handler=_cmd_explain)

    convert = commands.add_parser(
        "convert-go", help="convert a policy in the Go original's format to ours"
    )
    convert.add_argument("file", type=Path, metavar="FILE", help="the Go policy (YAML)")
    convert.add_argument(
        "-o", "--output", type=Path, metavar="OUT", help="write here (default: stdout)"
    )
    convert.set_defaults(handler=_cmd_convert_go)
