"""Benchmark the control plane's policy impact replay over a large audit trail.

    uv run --frozen python bench/control_impact.py [--flows 1000000] [--rounds 3]
        [--database-url postgresql+psycopg://...] [--no-postgres] [--json FILE]

Fills a fresh SQLite database (and a PostgreSQL one: --database-url, else a throwaway server
from zgate_testkit.postgres when its binaries are installed) with --flows synthetic
``flow.allow``/``flow.deny`` audit records: ~200 clients with certificate groups, ~2000
destinations, each client talking to its own few dozen (destination, port) pairs, spread over
the last 7 days and 18 hours (about a tenth fall before the 7-day window replayed), each with
the verdict the current policy gives it. Then it times the replay of a candidate policy the way
``POST /api/v1/policies/impact`` does it, in its three stages: the SQL aggregation
(``recorded_flows``), the client groups lookup, and the sans-IO decisions (``replay``), and
prints the median of --rounds runs. The fill is timed too but is not the point.

On a 2-vCPU VM the default million flows take about 4 minutes to store in SQLite and 1½ in
PostgreSQL; the replay then takes about 3.5 s on SQLite and 1.5 s on PostgreSQL, nearly all of
it the SQL aggregation (deciding the ~6 000 distinct rows takes ~30 ms). --flows 100000 runs in
under a minute.

A PostgreSQL database given by URL must be empty or already migrated by zgate-control: the
benchmark adds rows to ``audit_records`` and ``clients`` and deletes them at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from control_common import (
    AUDIT_ROW_COLUMNS,
    audit_row,
    copy_audit_rows,
    postgres_unavailable,
    throwaway_postgres,
)
from sqlalchemy import delete

from zgate_control.db import Database
from zgate_control.models import AuditRecord, Client, utc_now
from zgate_control.services.impact import replay
from zgate_control.services.policies import client_groups, recorded_flows
from zgate_policy import CompiledPolicy, compile_policy, load_policy_text

CLIENTS = 200
DESTINATIONS = 2000
PAIRS_PER_CLIENT = (15, 45)
WINDOW = timedelta(days=7)
SPAN = timedelta(days=7, hours=18)  # about a tenth of the flows fall before the window
BATCH = 10_000
SEED = 20261204
GROUPS = ("eng", "dba", "ops", "sales")

CURRENT = """\
groups: {eng: [], dba: [], ops: [], sales: []}
rules:
  - {id: dba-db, action: allow, from: [group:dba], to: [10.10.0.0/16], ports: [tcp/5432]}
  - {id: eng-web, action: allow, from: [group:eng], to: [10.20.0.0/16], ports: [tcp/443, tcp/80]}
  - {id: ops-ssh, action: allow, from: [group:ops], to: [10.0.0.0/8], ports: [tcp/22]}
  - {id: dns, action: allow, from: ["*"], to: [10.53.0.0/24], ports: [udp/53]}
  - {id: ping, action: allow, from: ["*"], to: [10.0.0.0/8], ports: [icmp]}
  - {id: names, action: allow, from: [group:eng, group:sales], to: ["*.corp.example"]}
"""

#: The candidate: the database narrowed to a /17, no ssh into 10.30/16, eng gets tcp/8080.
CANDIDATE = """\
groups: {eng: [], dba: [], ops: [], sales: []}
rules:
  - {id: no-ssh-30, action: deny, from: ["*"], to: [10.30.0.0/16], ports: [tcp/22]}
  - {id: dba-db, action: allow, from: [group:dba], to: [10.10.0.0/17], ports: [tcp/5432]}
  - {id: eng-web, action: allow, from: [group:eng], to: [10.20.0.0/16],
     ports: [tcp/443, tcp/80, tcp/8080]}
  - {id: ops-ssh, action: allow, from: [group:ops], to: [10.0.0.0/8], ports: [tcp/22]}
  - {id: dns, action: allow, from: ["*"], to: [10.53.0.0/24], ports: [udp/53]}
  - {id: ping, action: allow, from: ["*"], to: [10.0.0.0/8], ports: [icmp]}
  - {id: names, action: allow, from: [group:eng, group:sales], to: ["*.corp.example"]}
"""

_PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}


@dataclass(frozen=True, slots=True)
class Destination:
    """One synthetic destination: address, protocol, port and maybe a name."""

    dst: str
    proto: str
    dport: int
    fqdn: str | None


@dataclass(frozen=True, slots=True)
class Result:
    """One database's figures (seconds are medians over the rounds)."""

    database: str
    flows: int
    fill_s: float
    distinct: int
    aggregate_s: float
    groups_s: float
    decide_s: float
    total_s: float
    changes: int
    flows_changed: int


def _destinations(rng: random.Random) -> list[Destination]:
    out = []
    for i in range(DESTINATIONS):
        kind = rng.random()
        host = IPv4Address((10 << 24) | rng.getrandbits(16))
        if kind < 0.25:
            dst, proto, port = (
                IPv4Address((10 << 24) | (10 << 16) | rng.getrandbits(16)),
                "tcp",
                5432,
            )
        elif kind < 0.6:
            dst = IPv4Address((10 << 24) | (20 << 16) | rng.getrandbits(16))
            proto, port = "tcp", rng.choice((443, 443, 80, 8080))
        elif kind < 0.75:
            dst = IPv4Address((10 << 24) | (rng.choice((30, 40)) << 16) | rng.getrandbits(16))
            proto, port = "tcp", 22
        elif kind < 0.8:
            dst, proto, port = IPv4Address((10 << 24) | (53 << 16) | rng.getrandbits(8)), "udp", 53
        elif kind < 0.85:
            dst, proto, port = host, "icmp", 0
        else:
            dst = IPv4Address((198 << 24) | (51 << 16) | (100 << 8) | rng.getrandbits(8))
            proto, port = "tcp", 443
        fqdn = f"svc{i}.corp.example" if rng.random() < 0.3 else None
        out.append(Destination(str(dst), proto, port, fqdn))
    return out


def _clients(rng: random.Random) -> dict[str, list[str]]:
    return {
        f"user{i:03d}": sorted(rng.sample(GROUPS, rng.choice((1, 1, 2, 3)))) for i in range(CLIENTS)
    }


def _records(
    flows: int, now: datetime, policy: CompiledPolicy, rng: random.Random
) -> Iterator[list[dict[str, Any]]]:
    """Batches of audit_records rows, each with the verdict `policy` gives it."""
    destinations = _destinations(rng)
    clients = _clients(rng)
    names = list(clients)
    weights = [1 / (rank + 1) ** 0.8 for rank in range(len(names))]  # a few busy clients
    pairs = {c: rng.sample(destinations, rng.randint(*PAIRS_PER_CLIENT)) for c in names}
    decided: dict[tuple[str, Destination], tuple[str, str]] = {}
    span = SPAN.total_seconds()
    chain = f"{rng.getrandbits(128):032x}"
    batch: list[dict[str, Any]] = []
    for seq, client in enumerate(rng.choices(names, weights, k=flows), start=1):
        target = rng.choice(pairs[client])
        verdict_rule = decided.get((client, target))
        if verdict_rule is None:
            decision = policy.decide(
                client,
                tuple(clients[client]),
                _PROTO_NUMBERS[target.proto],
                IPv4Address(target.dst),
                target.dport if target.proto != "icmp" else None,
                fqdns=(target.fqdn,) if target.fqdn else (),
                now=now,
            )
            verdict_rule = decided[client, target] = (decision.verdict, decision.rule_id)
        verdict, rule = verdict_rule
        ts = now - timedelta(seconds=rng.random() * span)
        record = {
            "ts": ts.isoformat(timespec="milliseconds"),
            "event": f"flow.{verdict}",
            "relay": "relay-1",
            "client": client,
            "session": "s-" + client,
            "proto": target.proto,
            "src": "100.64.0.2",
            "sport": 1024 + seq % 60000,
            "dst": target.dst,
            "dport": target.dport,
            "fqdn": target.fqdn,
            "verdict": verdict,
            "rule": rule,
            "policy_version": policy.version,
            "connector": None,
            "id": f"{rng.getrandbits(128):032x}",
            "chain": chain,
            "seq": seq,
        }
        batch.append(audit_row(record, ts=ts, prev="0" * 64, hash=f"{seq:064x}"))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _insert_sqlite(db: Database, batch: list[dict[str, Any]]) -> None:
    # The driver's executemany, as SQLAlchemy would store the values: naive UTC text times.
    statement = (
        f"INSERT INTO audit_records ({', '.join(AUDIT_ROW_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in AUDIT_ROW_COLUMNS)})"
    )
    rows = [
        tuple(
            row[c].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            if c == "ts"
            else json.dumps(row[c])
            if c == "record"
            else row[c]
            for c in AUDIT_ROW_COLUMNS
        )
        for row in batch
    ]
    with db.engine.begin() as connection:
        # Random record ids land all over the primary key's b-tree: with SQLite's default 2 MB
        # page cache most inserts would read and write pages from disk.
        connection.exec_driver_sql("PRAGMA cache_size = -262144")
        connection.exec_driver_sql(statement, rows)


def fill(db: Database, flows: int, now: datetime, policy: CompiledPolicy) -> float:
    """Insert the synthetic clients and `flows` records in bulk; the seconds it took."""
    started = time.perf_counter()
    rng = random.Random(SEED)
    with db.session() as session:
        for client, groups in _clients(random.Random(SEED)).items():
            session.add(Client(id=client, groups=groups, created_at=now, created_by="bench"))
    insert = copy_audit_rows if db.dialect == "postgresql" else _insert_sqlite
    for batch in _records(flows, now, policy, rng):
        insert(db, batch)
        print(f"\r  filled {batch[-1]['seq']:,} of {flows:,}", end="", file=sys.stderr)
    print(file=sys.stderr)
    with db.engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        connection.commit()
    return time.perf_counter() - started


def run_once(db: Database, candidate: CompiledPolicy, now: datetime) -> tuple[float, ...]:
    """One replay, timed by stage: (aggregate, groups, decide, distinct, changes, flows)."""
    since = now - WINDOW
    t0 = time.perf_counter()
    with db.reader() as session:
        rows = recorded_flows(session, since, now)
        t1 = time.perf_counter()
        groups = client_groups(session, {r.client for r in rows})
    t2 = time.perf_counter()
    result = replay(
        rows, candidate, client_groups=groups, since=since, until=now, now=now, limit=200
    )
    t3 = time.perf_counter()
    changed = sum(c.loses + c.gains for c in result.by_client)
    return (t1 - t0, t2 - t1, t3 - t2, result.distinct, len(result.changes), changed)


def measure(name: str, url: str, flows: int, rounds: int) -> Result:
    """Fill the database at `url`, replay `rounds` times, clean up; the figures."""
    now = utc_now()
    current = compile_policy(load_policy_text(CURRENT), geoip_available=True)
    candidate = compile_policy(load_policy_text(CANDIDATE), geoip_available=True)
    db = Database(url)
    try:
        db.upgrade()
        print(f"{name}: filling {flows:,} flow records", file=sys.stderr)
        fill_s = fill(db, flows, now, current)
        runs = [run_once(db, candidate, now) for _ in range(rounds)]
        with db.session() as session:  # a database given by URL is left as it was found
            session.execute(delete(AuditRecord).where(AuditRecord.relay_id == "relay-1"))
            session.execute(delete(Client).where(Client.created_by == "bench"))
    finally:
        db.dispose()
    aggregate, groups, decide = (statistics.median(r[i] for r in runs) for i in range(3))
    _, _, _, distinct, changes, changed = runs[-1]
    return Result(
        name,
        flows,
        round(fill_s, 2),
        int(distinct),
        round(aggregate, 3),
        round(groups, 3),
        round(decide, 3),
        round(aggregate + groups + decide, 3),
        int(changes),
        int(changed),
    )


def print_table(results: list[Result], rounds: int) -> None:
    """The figures, one line per database."""
    print(f"\nimpact replay, {CLIENTS} clients, {DESTINATIONS} destinations, median of {rounds}")
    header = (
        f"{'database':<11}{'flows':>11}{'fill s':>9}{'distinct':>10}{'aggregate s':>13}"
        f"{'groups s':>10}{'decide s':>10}{'total s':>9}{'changes':>9}{'flows chg':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.database:<11}{r.flows:>11,}{r.fill_s:>9.1f}{r.distinct:>10,}{r.aggregate_s:>13.3f}"
            f"{r.groups_s:>10.3f}{r.decide_s:>10.3f}{r.total_s:>9.3f}{r.changes:>9,}"
            f"{r.flows_changed:>11,}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=1_000_000, help="flow records to store")
    parser.add_argument("--rounds", type=int, default=3, help="replays per database")
    parser.add_argument("--database-url", help="a PostgreSQL URL (default: a throwaway server)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.flows < 1 or args.rounds < 1:
        parser.error("--flows and --rounds must be at least 1")
    results = []
    with tempfile.TemporaryDirectory(prefix="zgate-impact-") as folder:
        results.append(measure("sqlite", f"sqlite:///{folder}/control.db", args.flows, args.rounds))
    if args.database_url:
        results.append(measure("postgresql", args.database_url, args.flows, args.rounds))
    elif not args.no_postgres:
        results.extend(_throwaway_postgres(args.flows, args.rounds))
    print_table(results, args.rounds)
    if args.json:
        payload = {"at": datetime.now(UTC).isoformat(), "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def _throwaway_postgres(flows: int, rounds: int) -> list[Result]:
    missing = postgres_unavailable()
    if missing is not None:
        print(f"postgresql: skipped ({missing}; or pass --database-url)", file=sys.stderr)
        return []
    with throwaway_postgres("impact") as url:
        return [measure("postgresql", url, flows, rounds)]


if __name__ == "__main__":
    sys.exit(main())
