"""``zgate ctl audit``: query and export the audit records the relays shipped.

(Verifying the hash chains is ``zgate audit verify``, which reads a file or this export.)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .client import ControlClient, Params
from .common import SubParsers, add_command, add_list_options, list_items
from .errors import CtlError
from .output import Column, cell
from .output import when as _when
from .times import parse_time, rfc3339

__all__ = ["register"]


def _destination(record: dict[str, Any]) -> str:
    host = record.get("fqdn") or record.get("dst")
    port = record.get("dport")
    if host is None:
        return "-"
    return cell(
        f"{host}:{port}" if port is not None and record.get("proto") in ("tcp", "udp") else host
    )


def _chain(record: dict[str, Any]) -> str:
    ok = record.get("chain_ok")
    return "-" if ok is None else ("ok" if ok else "BROKEN")


COLUMNS: list[Column] = [
    ("TIME", lambda r: _when(r.get("ts"))),
    ("EVENT", lambda r: cell(r.get("event"))),
    ("CLIENT", lambda r: cell(r.get("client"))),
    ("PROTO", lambda r: cell(r.get("proto"))),
    ("DESTINATION", _destination),
    ("VERDICT", lambda r: cell(r.get("verdict"))),
    ("RULE", lambda r: cell(r.get("rule"))),
    ("POLICY", lambda r: cell(r.get("policy_version"))),
    ("CHAIN", _chain),
]


def _filters(args: argparse.Namespace) -> Params:
    return {
        "client": args.client,
        "dst": args.dst,
        "verdict": args.verdict,
        "rule": args.rule,
        "event": args.event,
        "relay": args.relay,
        "session": args.session,
        "since": rfc3339(args.since),
        "until": rfc3339(args.until),
    }


def _query(args: argparse.Namespace, client: ControlClient) -> int:
    list_items(args, client, "/audit", COLUMNS, _filters(args), empty="no matching records")
    return 0


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[bytes]]:
    if path is None or str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        with path.open("wb") as out:
            yield out
    except OSError as exc:
        raise CtlError(f"cannot write {path}: {exc.strerror or exc}") from None


def _export(args: argparse.Namespace, client: ControlClient) -> int:
    params = {**_filters(args), "format": args.format}
    lines = 0
    with client.stream("/audit/export", params) as response, _output(args.output) as out:
        for chunk in response.iter_bytes():
            out.write(chunk)
            lines += chunk.count(b"\n")
    records = lines - 1 if args.format == "csv" and lines else lines
    where = "" if args.output is None or str(args.output) == "-" else f" to {args.output}"
    print(f"exported {records} record{'' if records == 1 else 's'}{where}", file=sys.stderr)
    return 0


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client", metavar="ID", help="only this client's records")
    parser.add_argument("--dst", metavar="HOST", help="only this destination (IP or name)")
    parser.add_argument("--verdict", choices=("allow", "deny"), help="only this verdict")
    parser.add_argument("--rule", metavar="RULE", help="only records decided by this rule")
    parser.add_argument("--event", metavar="EVENT", help="only this event, e.g. flow.deny")
    parser.add_argument("--relay", metavar="ID", help="only this relay's records")
    parser.add_argument("--session", metavar="ID", help="only this session's records")
    parser.add_argument(
        "--since", type=parse_time, metavar="TIME", help="from this time (ISO 8601, or 12h, 7d)"
    )
    parser.add_argument("--until", type=parse_time, metavar="TIME", help="before this time")


def register(groups: SubParsers) -> None:
    """Add ``audit`` to ``zgate ctl``."""
    group = groups.add_parser("audit", help="query and export the relays' audit records")
    commands = group.add_subparsers(title="commands", metavar="COMMAND", required=True)

    query = add_command(commands, "query", _query, "list matching records, newest first")
    _add_filters(query)
    add_list_options(query)

    export = add_command(
        commands,
        "export",
        _export,
        "stream every matching record as CSV or JSON lines",
        description="Stream every matching record, ordered by relay, chain and seq. JSON lines "
        "keep the hash chain: `zgate audit verify FILE` checks it.",
    )
    export.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    _add_filters(export)
    export.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write here (default: stdout)"
    )
