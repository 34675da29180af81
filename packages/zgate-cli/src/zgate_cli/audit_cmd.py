"""``zgate audit``: verify the hash chains of relay audit records, from a file or the control
plane's export (the same check either way: :mod:`zgate_policy.chain`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from zgate_policy.chain import ChainGroup, ChainProblem, ChainReport, parse_line, verify_lines

__all__ = ["register"]

#: Problems kept for the report; a file that is not an audit log has one per line.
MAX_PROBLEMS = 1000
TOKEN_ENV = "ZGATE_CONTROL_TOKEN"
EXPORT_PATH = "/api/v1/audit/export"


class AuditSourceError(Exception):
    """The records could not be read or downloaded; the message says why and what to do."""


# --- where the lines come from ------------------------------------------------------------


def _file_lines(path: Path) -> Iterator[bytes]:
    """The lines of ``path`` (``-``: standard input), read as they are verified."""
    if str(path) == "-":
        yield from sys.stdin.buffer
        return
    try:
        with path.open("rb") as f:
            yield from f
    except OSError as exc:
        raise AuditSourceError(f"cannot read {path}: {exc.strerror or exc}") from None


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Bytes in arbitrary chunks as lines split on ``\\n`` only, as a file is read."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *lines, rest = rest.split(b"\n")
        yield from lines
    if rest:
        yield rest


def _problem_detail(response: httpx.Response) -> str:
    """The ``detail`` (or ``title``) of an RFC 9457 problem answer, else the start of the body."""
    try:
        body = response.read()
        problem = json.loads(body)
    except (httpx.HTTPError, ValueError):
        return ""
    if isinstance(problem, dict):
        detail = problem.get("detail") or problem.get("title")
        if isinstance(detail, str):
            return detail
    return body[:200].decode("utf-8", "replace")


def _refusal(response: httpx.Response, url: str) -> AuditSourceError:
    status = response.status_code
    detail = _problem_detail(response)
    said = f" ({detail})" if detail else ""
    if status == 401:
        why = f"the control plane refused the token (401){said}: check --token or {TOKEN_ENV}"
    elif status == 403:
        why = (
            f"the token may not export audit records (403){said}:"
            " use a viewer, operator or admin token"
        )
    elif status == 404:
        why = (
            f"no audit export at {url} (404){said}: --control is the control plane's base URL,"
            " e.g. https://control.example:8443"
        )
    else:
        why = f"the control plane answered {status} {response.reason_phrase}{said} for {url}"
    return AuditSourceError(why)


def _control_lines(base: str, token: str, relay: str | None, timeout: float) -> Iterator[bytes]:
    """The lines of the control plane's JSON lines export, streamed (ordered by relay, chain
    and seq, so a line's number is its position)."""
    url = base.rstrip("/") + EXPORT_PATH
    params = {"format": "jsonl"} | ({"relay": relay} if relay else {})
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/x-ndjson"}
    count = 0
    checked = False
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(timeout)) as client,
            client.stream("GET", url, params=params, headers=headers) as response,
        ):
            if response.status_code != 200:
                raise _refusal(response, url)
            for line in _split_lines(response.iter_bytes()):
                if not checked and line.strip():
                    _check_json_lines(line, response, url)
                    checked = True
                count += 1
                yield line
    except httpx.TimeoutException as exc:
        raise AuditSourceError(_broke_off(url, count, f"timed out ({exc})")) from None
    except httpx.ConnectError as exc:
        raise AuditSourceError(
            f"cannot reach the control plane at {base}: {exc}; check --control and that it runs"
        ) from None
    except httpx.HTTPError as exc:
        raise AuditSourceError(_broke_off(url, count, str(exc) or type(exc).__name__)) from None


def _check_json_lines(first: bytes, response: httpx.Response, url: str) -> None:
    """Refuse an answer that is not JSON lines at all (an HTML page, a proxy's error)."""
    if not isinstance(parse_line(first), dict):
        kind = response.headers.get("content-type", "no Content-Type")
        raise AuditSourceError(
            f"the answer from {url} is not JSON lines ({kind}), it starts {first[:60]!r}:"
            " is --control the control plane's base URL?"
        )


def _broke_off(url: str, count: int, why: str) -> str:
    if count == 0:
        return f"downloading {url} failed: {why}"
    return f"the download from {url} broke off after line {count}: {why}"


# --- what is printed ----------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _problem_line(problem: ChainProblem) -> str:
    seq = f"seq {problem.seq}: " if problem.seq is not None else ""
    return f"  line {problem.position}: {seq}{problem.problem}"


def _group_text(group: ChainGroup) -> list[str]:
    relay = group.relay or "(no relay)"
    seqs = f", seq {group.first_seq}-{group.last_seq}" if group.first_seq is not None else ""
    found = len(group.problems) + group.omitted
    verdict = "OK" if group.ok else _plural(found, "problem")
    lines = [
        f"relay {relay} chain {group.chain}: {_plural(group.records, 'record')}{seqs}: {verdict}"
    ]
    lines += [_problem_line(p) for p in group.problems]
    if group.omitted:
        lines.append(f"  ... and {group.omitted} more")
    lines += [f"  line {n.position}: note: {n.problem}" for n in group.notes]
    return lines


def _report_text(report: ChainReport, source: str) -> list[str]:
    lines: list[str] = []
    for group in report.groups:
        lines += _group_text(group)
    stray = len(report.unchained) + report.unchained_omitted
    if stray:
        lines.append(f"{_plural(stray, 'line')} in no chain:")
        lines += [_problem_line(p) for p in report.unchained]
        if report.unchained_omitted:
            lines.append(f"  ... and {report.unchained_omitted} more")
    chains = _plural(len(report.groups), "chain")
    records = _plural(sum(g.records for g in report.groups), "record")
    if not report.records:
        lines.append(f"{source}: no records")
    elif report.ok:
        lines.append(f"{source}: OK: {chains}, {records}")
    else:
        broken = sum(not g.ok for g in report.groups)
        tail = f", {_plural(stray, 'line')} in no chain" if stray else ""
        lines.append(f"{source}: FAILED: {broken} of {chains} broken{tail} ({records})")
    return lines


def _problem_json(problem: ChainProblem) -> dict[str, Any]:
    return problem._asdict()


def _report_json(report: ChainReport, source: str) -> dict[str, Any]:
    """The report in the shape of the control plane's ``GET /audit/verify``, and more."""
    return {
        "source": source,
        "ok": report.ok,
        "records": report.records,
        "relays": [
            {
                "relay": g.relay,
                "chain": g.chain,
                "records": g.records,
                "first_seq": g.first_seq,
                "last_seq": g.last_seq,
                "ok": g.ok,
                "problems": [_problem_json(p) for p in g.problems],
                "omitted": g.omitted,
                "notes": [_problem_json(n) for n in g.notes],
            }
            for g in report.groups
        ],
        "unchained": [_problem_json(p) for p in report.unchained],
        "unchained_omitted": report.unchained_omitted,
    }


# --- the command --------------------------------------------------------------------------


def _usage_error(message: str) -> int:
    print(f"zgate audit verify: {message}", file=sys.stderr)
    return 2


def _cmd_verify(args: argparse.Namespace) -> int:
    file: Path | None = args.file
    control: str | None = args.control
    if (file is None) == (control is None):
        return _usage_error("give a FILE or --control URL (one of them)")
    if control is None and (args.token is not None or args.relay is not None):
        return _usage_error("--token and --relay go with --control")
    if control is not None:
        if urlsplit(control).scheme not in ("http", "https") or not urlsplit(control).netloc:
            return _usage_error(f"--control {control!r} is not an http(s):// URL")
        token = args.token or os.environ.get(TOKEN_ENV)
        if not token:
            return _usage_error(f"--control needs a token: --token T or {TOKEN_ENV}")
        lines = _control_lines(control, token, args.relay, args.timeout)
        source = control
    else:
        assert file is not None
        lines = _file_lines(file)
        source = str(file)
    try:
        report = verify_lines(lines, max_problems=MAX_PROBLEMS)
    except AuditSourceError as exc:
        print(f"zgate audit verify: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_report_json(report, source), indent=2))
    else:
        print("\n".join(_report_text(report, source)))
    return 0 if report.ok else 1


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` command group to the top-level ``zgate`` parser."""
    audit = groups.add_parser(
        "audit",
        help="verify relay audit records",
        description="Work with the relays' hash-chained audit records.",
    )
    commands = audit.add_subparsers(title="commands", metavar="COMMAND", required=True)
    verify = commands.add_parser(
        "verify",
        help="verify the hash chains of audit records (exit 1 if any is broken)",
        description="Verify the hash chain of every relay and chain in a JSON lines audit log "
        "(a relay's file, or the control plane's export): each deleted, altered, reordered or "
        "replayed record is reported at its line. A chain that starts after seq 1 (a rotated "
        "log) is a note, not a failure. Exit 0 when every chain verifies, 1 otherwise, 2 on a "
        "usage error. HTTPS uses the system's CA store, or SSL_CERT_FILE.",
    )
    verify.add_argument(
        "file", nargs="?", type=Path, metavar="FILE", help="the JSON lines file (- for stdin)"
    )
    verify.add_argument(
        "--control",
        metavar="URL",
        help="download the records from the control plane at URL instead (its base URL)",
    )
    verify.add_argument("--token", metavar="T", help=f"the API token (default: ${TOKEN_ENV})")
    verify.add_argument("--relay", metavar="ID", help="only this relay's records (--control)")
    verify.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up on the control plane after this long without an answer (default 30)",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=_cmd_verify)
