"""``zgate ctl policy``: versions pushed, listed, compared, published, rolled back, explained
and their impact on the flows the relays recorded."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .client import ControlClient
from .common import SubParsers, add_command, add_list_options, list_items
from .errors import ApiError, UsageError
from .output import Column, cell, print_json, render_table, when
from .times import parse_time, rfc3339

__all__ = ["register"]

PUBLISHED = "published"

COLUMNS: list[Column] = [
    ("VERSION", lambda v: f"v{v.get('id')}"),
    ("IN FORCE", lambda v: "*" if v.get("published") else ""),
    ("RULES", lambda v: cell(v.get("rules"))),
    ("DIGEST", lambda v: cell(str(v.get("digest", ""))[:12])),
    ("AUTHOR", lambda v: cell(v.get("author"))),
    ("CREATED", lambda v: when(v.get("created_at"))),
    ("COMMENT", lambda v: cell(v.get("comment"))),
]

CHANGE_COLUMNS: list[Column] = [
    ("CLIENT", lambda c: cell(c.get("client"))),
    ("CHANGE", lambda c: cell(c.get("change"))),
    ("PROTO", lambda c: cell(c.get("proto"))),
    ("DESTINATION", lambda c: cell(c.get("fqdn") or c.get("dst"))),
    ("PORT", lambda c: cell(c.get("dport"))),
    ("FLOWS", lambda c: cell(c.get("flows"))),
    ("LAST SEEN", lambda c: when(c.get("last_seen"))),
    ("WAS", lambda c: cell(c.get("old_rule"))),
    ("NOW", lambda c: cell(c.get("new_rule"))),
]


def _version_arg(text: str) -> str:
    """A version as typed: ``3``, ``v3`` or ``published``."""
    value = text.strip().lower()
    if value == PUBLISHED:
        return value
    number = value.removeprefix("v")
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"not a policy version: {text!r} (e.g. 3, v3, published)")
    return str(int(number))


def _resolve(client: ControlClient, version: str) -> int:
    """The version number `version` names (``published``: the one in force)."""
    if version != PUBLISHED:
        return int(version)
    found: dict[str, Any] = client.get("/policies/published")
    return int(found["version"]["id"])


def _read_yaml(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def _describe(version: dict[str, Any]) -> str:
    rules = version.get("rules")
    return f"v{version['id']} ({rules} rule{'' if rules == 1 else 's'}, digest {version['digest']})"


def _publish_line(result: dict[str, Any], kind: str) -> str:
    version = result["version"]
    if not result.get("changed", True):
        return f"v{version['id']} is already in force: nothing changed"
    done = "published" if kind == "publish" else "rolled back to"
    seq = result.get("seq")
    follow = f" (change {seq}; relays follow within seconds)" if seq is not None else ""
    return f"{done} v{version['id']}{follow}"


def _push(args: argparse.Namespace, client: ControlClient) -> int:
    path: Path = args.file
    body = {"yaml": _read_yaml(path), "comment": args.comment}
    try:
        response = client.request("POST", "/policies", body=body)
    except ApiError as exc:
        raise exc.about(str(path)) from None
    version: dict[str, Any] = response.json()
    published: dict[str, Any] | None = None
    if args.publish:
        published = client.post(f"/policies/{version['id']}/publish")
    if args.json:
        print_json(version if published is None else {"version": version, "publish": published})
        return 0
    tests = version.get("tests") or []
    passed = f", {len(tests)} test{'' if len(tests) == 1 else 's'} passed" if tests else ""
    if response.status_code == 201:
        print(f"pushed {_describe(version)}{passed}")
    else:
        print(f"{path} is already stored as {_describe(version)}")
    if published is not None:
        print(_publish_line(published, "publish"))
    return 0


def _list(args: argparse.Namespace, client: ControlClient) -> int:
    list_items(args, client, "/policies", COLUMNS, empty="no policy versions yet")
    return 0


def _show(args: argparse.Namespace, client: ControlClient) -> int:
    if args.version == PUBLISHED:
        version: dict[str, Any] = client.get("/policies/published")["version"]
    else:
        version = client.get(f"/policies/{args.version}")
    if args.json:
        print_json(version)
    elif args.yaml:
        sys.stdout.write(version["yaml"])
    else:
        mark = " (in force)" if version.get("published") else ""
        print(f"{_describe(version)}{mark}")
        print(f"author:  {version.get('author')}")
        print(f"created: {when(version.get('created_at'))}")
        if version.get("comment"):
            print(f"comment: {version['comment']}")
        print()
        sys.stdout.write(version["yaml"])
    return 0


def _diff(args: argparse.Namespace, client: ControlClient) -> int:
    a, b = _resolve(client, args.a), _resolve(client, args.b)
    diff: dict[str, Any] = client.get(f"/policies/{a}/diff/{b}")
    if args.json:
        print_json(diff)
        return 0
    sys.stdout.write(diff.get("unified") or "")
    rules = diff.get("rules") or {}
    for key in ("added", "removed", "changed", "moved"):
        if rules.get(key):
            print(f"rules {key}: {', '.join(rules[key])}")
    default = diff.get("default") or {}
    if default and default.get("from") != default.get("to"):
        print(f"default: {default.get('from')} -> {default.get('to')}")
    if not diff.get("unified"):
        print(f"v{a} and v{b} are the same policy", file=sys.stderr)
    return 0


def _publish(args: argparse.Namespace, client: ControlClient) -> int:
    kind = "rollback" if args.rollback else "publish"
    headers = {"If-Match": args.if_match} if args.if_match else None
    result: dict[str, Any] = client.post(f"/policies/{args.version}/{kind}", headers=headers)
    if args.json:
        print_json(result)
    else:
        print(_publish_line(result, kind))
    return 0


def _explain(args: argparse.Namespace, client: ControlClient) -> int:
    version = _resolve(client, args.version)
    groups: list[str] = args.groups
    body = {
        "client": args.client,
        "groups": groups or None,
        "target": args.target,
        "fqdn": args.fqdn,
        "country": args.country,
    }
    result: dict[str, Any] = client.post(f"/policies/{version}/explain", body)
    verdict = str(result.get("verdict", ""))
    if args.json:
        print_json(result)
    else:
        # The explanation's own lines start with the verdict and name the groups used.
        print(f"v{result.get('policy_version', version)}: {args.client} -> {args.target}")
        for line in result.get("explanation") or [f"verdict: {verdict}"]:
            print(line)
        if result.get("note"):
            print(f"note: {result['note']}")
    return 0 if verdict == "allow" else 1


def _impact(args: argparse.Namespace, client: ControlClient) -> int:
    body: dict[str, Any] = {"client": args.client, "limit": args.limit}
    source: str | None = None
    if args.file is not None:
        source = str(args.file)
        body["yaml"] = _read_yaml(args.file)
    else:
        body["version_id"] = _resolve(client, args.version)
    until: datetime | None = args.until
    since: datetime | None = args.since
    if since is not None and args.days is not None:
        raise UsageError("give --since or --days, not both")
    if args.days is not None:
        since = (until or datetime.now(UTC)) - timedelta(days=args.days)
    body.update(since=rfc3339(since), until=rfc3339(until))
    try:
        result: dict[str, Any] = client.post("/policies/impact", body)
    except ApiError as exc:
        raise exc.about(source) if source else exc from None
    if args.json:
        print_json(result)
        return 0
    window = result.get("window") or {}
    print(
        f"replayed {result.get('flows_considered', 0)} flows ({result.get('distinct', 0)} distinct)"
        f" from {when(window.get('since'))} to {when(window.get('until'))}"
    )
    for line in result.get("summary") or []:
        print(line)
    changes = result.get("changes") or []
    if changes:
        print()
        print(render_table(changes, CHANGE_COLUMNS))
    if result.get("truncated"):
        print(f"(only the first {len(changes)} changes are listed: --limit N for more)")
    for note in result.get("notes") or []:
        print(f"note: {note}", file=sys.stderr)
    return 0


def register(groups: SubParsers) -> None:
    """Add ``policy`` to ``zgate ctl``."""
    policy = groups.add_parser(
        "policy", help="push, list, compare, publish, roll back, explain policy versions"
    )
    commands = policy.add_subparsers(title="commands", metavar="COMMAND", required=True)

    push = add_command(
        commands, "push", _push, "store a policy file as a new version (checked and tested first)"
    )
    push.add_argument("file", type=Path, metavar="FILE", help="the policy (YAML)")
    push.add_argument("--comment", default="", metavar="TEXT", help="why this version")
    push.add_argument("--publish", action="store_true", help="and put it in force at once")

    listing = add_command(commands, "list", _list, "list versions, newest first (* in force)")
    add_list_options(listing)

    show = add_command(commands, "show", _show, "show a version and its YAML")
    show.add_argument("version", type=_version_arg, metavar="ID", help="3, v3 or published")
    show.add_argument("--yaml", action="store_true", help="print the YAML only")

    diff = add_command(commands, "diff", _diff, "what changed from version A to version B")
    diff.add_argument("a", type=_version_arg, metavar="A")
    diff.add_argument("b", type=_version_arg, metavar="B")

    for name, rollback, text in (
        ("publish", False, "put a version in force (relays follow within seconds)"),
        ("rollback", True, "put back a version that was published before"),
    ):
        cmd = add_command(commands, name, _publish, text)
        cmd.add_argument("version", type=_version_arg, metavar="ID")
        cmd.add_argument(
            "--if-match", metavar="ETAG", help="refuse if the policy in force changed (its ETag)"
        )
        cmd.set_defaults(rollback=rollback)

    explain = add_command(
        commands,
        "explain",
        _explain,
        "how a version decides one flow, rule by rule (exit 0 allow, 1 deny)",
    )
    explain.add_argument("version", type=_version_arg, metavar="ID|published")
    explain.add_argument(
        "target", metavar="TARGET", help="tcp://HOST:PORT, udp://... or icmp://HOST"
    )
    explain.add_argument("--client", required=True, metavar="CLIENT")
    explain.add_argument(
        "--group",
        dest="groups",
        action="append",
        default=[],
        metavar="GROUP",
        help="a certificate group (repeatable; default: the client's groups on record)",
    )
    explain.add_argument("--fqdn", metavar="NAME", help="the name the IP was resolved from")
    explain.add_argument("--country", metavar="CC", help="the destination's GeoIP country")

    impact = add_command(
        commands,
        "impact",
        _impact,
        "who would lose or gain access with a candidate, from the flows relays recorded",
    )
    candidate = impact.add_mutually_exclusive_group(required=True)
    candidate.add_argument(
        "version", nargs="?", type=_version_arg, metavar="ID", help="a stored version"
    )
    candidate.add_argument("--file", type=Path, metavar="FILE", help="a policy file not pushed")
    impact.add_argument("--since", type=parse_time, metavar="TIME", help="window start")
    impact.add_argument("--until", type=parse_time, metavar="TIME", help="window end (now)")
    impact.add_argument(
        "--days", type=int, default=None, metavar="N", help="window of N days up to --until (7)"
    )
    impact.add_argument("--client", metavar="CLIENT", help="only this client's flows")
    impact.add_argument(
        "--limit", type=int, default=200, metavar="N", help="most changes listed (200)"
    )
