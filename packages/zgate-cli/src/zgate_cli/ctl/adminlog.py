"""``zgate ctl admin-log``: who changed what through the API, newest first."""

from __future__ import annotations

import argparse
import json

from .client import ControlClient
from .common import SubParsers, add_command, add_list_options, list_items
from .output import Column, cell, when
from .times import parse_time, rfc3339

__all__ = ["register"]

COLUMNS: list[Column] = [
    ("AT", lambda e: when(e.get("at"))),
    ("ACTOR", lambda e: cell(e.get("actor"))),
    ("ROLE", lambda e: cell(e.get("role"))),
    ("ACTION", lambda e: cell(e.get("action"))),
    ("TARGET", lambda e: cell(e.get("target"))),
    ("STATUS", lambda e: cell(e.get("status"))),
    ("DETAIL", lambda e: cell(json.dumps(e["detail"], sort_keys=True)) if e.get("detail") else "-"),
]


def _list(args: argparse.Namespace, client: ControlClient) -> int:
    params = {
        "actor": args.actor,
        "action": args.action,
        "since": rfc3339(args.since),
        "until": rfc3339(args.until),
    }
    list_items(args, client, "/admin-log", COLUMNS, params, empty="no matching entries")
    return 0


def register(groups: SubParsers) -> None:
    """Add ``admin-log`` to ``zgate ctl``."""
    log = add_command(groups, "admin-log", _list, "who changed what through the API, newest first")
    log.add_argument("--actor", metavar="NAME", help="only this token name's actions")
    log.add_argument("--action", metavar="ACTION", help="only this action, e.g. policy.publish")
    log.add_argument("--since", type=parse_time, metavar="TIME", help="from this time (or 12h, 7d)")
    log.add_argument("--until", type=parse_time, metavar="TIME", help="before this time")
    add_list_options(log)
