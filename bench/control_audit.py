"""The control plane's audit trail: ingest rate and query latency, on SQLite and PostgreSQL.

    uv run --frozen python bench/control_audit.py [--records N] [--ingest N]
        [--database-url URL] [--databases sqlite,postgresql] [--json FILE]

For each database (SQLite in a temporary directory; PostgreSQL from ``--database-url``, or a
throw-away server started with ``zgate_testkit.postgres`` when its binaries are installed):

- ``ingest``: records per second posted by a relay through the real HTTP API (uvicorn on
  127.0.0.1 in a thread, an httpx client), batches of ``--batch`` (500) chained records made
  with ``zgate_policy.chain`` beforehand, so chaining is not what is timed. Each batch is
  checked against the chain and stored in one transaction, as a relay's would be.
- ``query``: latency p50/p99 of typical audit queries through the API over ``--records``
  (1 000 000) stored records, put in directly with bulk inserts (COPY on PostgreSQL) as 4
  relays' chains over 7 days, 2 000 clients, 5 000 destinations, 10 % denies: by client over a
  day, by destination, deny verdicts, the newest page, and the next page by cursor.
- ``export``: records per second of the whole jsonl export (streamed in batches).

Client, server and database share the machine, as in a single-node deployment; figures are
for comparing runs on one machine, with the machine printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from control_common import (
    audit_row,
    copy_audit_rows,
    cpu_model,
    free_port,
    postgres_unavailable,
    throwaway_postgres,
    wait_for,
)
from sqlalchemy import insert

from zgate_control.app import create_app
from zgate_control.auth import create_token
from zgate_control.bootstrap import first_start
from zgate_control.db import Database
from zgate_control.models import AuditRecord
from zgate_control.settings import ControlSettings
from zgate_policy.chain import Chainer

START = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 7
RELAYS = 4
CLIENTS = 2_000
DESTINATIONS = 5_000
RULES = 50
FILL_CHUNK = 20_000


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(platform.processor() or "unknown"),
        "python": platform.python_version(),
        # Other work on the machine skews every figure: say how busy it was.
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def _ts(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def flow_record(rng: random.Random, relay: str, when: datetime) -> dict[str, Any]:
    """One flow.allow/flow.deny record as a relay writes it (before chaining)."""
    deny = rng.random() < 0.1
    dst = rng.randrange(DESTINATIONS)
    return {
        "ts": _ts(when),
        "event": "flow.deny" if deny else "flow.allow",
        "relay": relay,
        "client": f"user{rng.randrange(CLIENTS)}",
        "session": f"{rng.getrandbits(64):016x}",
        "proto": "tcp" if rng.random() < 0.8 else "udp",
        "src": f"100.64.{rng.randrange(8)}.{rng.randrange(1, 255)}",
        "sport": rng.randrange(32768, 61000),
        "dst": f"10.{dst // 65536}.{dst // 256 % 256}.{dst % 256}",
        "dport": rng.choice((443, 80, 22, 53, 5432)),
        "fqdn": f"svc{dst}.corp.example" if dst % 3 == 0 else None,
        "verdict": "deny" if deny else "allow",
        "rule": f"r{rng.randrange(RULES)}",
        "policy_version": "4f2a9c0d1e2b",
        "connector": None,
    }


def chained(relay: str, count: int, seed: int, span: timedelta) -> Iterator[dict[str, Any]]:
    """`count` chained records of one relay, spread evenly over `span` from START."""
    rng = random.Random(seed)
    chainer = Chainer.new()
    step = span / max(count, 1)
    for n in range(count):
        yield chainer.link(flow_record(rng, relay, START + step * n))


def fill(db: Database, records: int) -> float:
    """Put `records` chained rows in directly (RELAYS chains); returns the seconds taken."""
    started = time.perf_counter()
    per_relay = records // RELAYS
    for r in range(RELAYS):
        count = per_relay + (records % RELAYS if r == 0 else 0)
        source = chained(f"relay-{r}", count, seed=r, span=timedelta(days=DAYS))
        while chunk := [audit_row(r) for _, r in zip(range(FILL_CHUNK), source, strict=False)]:
            if db.dialect == "postgresql":
                copy_audit_rows(db, chunk)
            else:
                with db.session() as session:
                    session.execute(insert(AuditRecord), chunk)
    if db.dialect == "postgresql":
        with db.engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE audit_records")
            connection.commit()
    else:
        with db.engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


@contextmanager
def serving(db: Database, state_dir: Path) -> Iterator[str]:
    """The control plane's API over `db` on loopback (uvicorn in a thread); yields its URL."""
    port = free_port()
    settings = ControlSettings(state_dir=state_dir, listen=f"127.0.0.1:{port}")
    config = uvicorn.Config(
        create_app(settings, db), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError("the control plane stopped while starting")
        return bool(server.started)

    wait_for(started, 30, "the control plane to start", 0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def token(db: Database, role: str, relay_id: str | None = None) -> str:
    """A new API token of `role`."""
    with db.session() as session:
        _, text = create_token(session, f"bench-{role}", role, "bench", relay_id)  # type: ignore[arg-type]
    return text


@dataclass
class Result:
    """One database's figures."""

    database: str
    records: int
    ingest_records: int = 0
    ingest_per_s: float = 0.0
    ingest_full_per_s: float = 0.0
    fill_s: float = 0.0
    queries: dict[str, dict[str, float]] = field(default_factory=dict)
    export_per_s: float = 0.0


def measure_ingest(url: str, relay_token: str, relay: str, count: int, batch: int) -> float:
    """Records per second posted by one relay in batches of `batch`."""
    records = list(chained(relay, count, seed=sum(relay.encode()), span=timedelta(hours=1)))
    # Encoded beforehand: the client shares this process, and its JSON encoding is not what
    # is measured.
    batches = [
        (len(records[i : i + batch]), json.dumps({"records": records[i : i + batch]}).encode())
        for i in range(0, len(records), batch)
    ]
    headers = {"Authorization": f"Bearer {relay_token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        started = time.perf_counter()
        for size, content in batches:
            answer = client.post(f"/api/v1/relays/{relay}/audit", content=content)
            answer.raise_for_status()
            body = answer.json()
            if body["accepted"] != size or body["broken"]:
                raise RuntimeError(f"batch not stored cleanly: {body}")
        elapsed = time.perf_counter() - started
    return count / elapsed


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_queries(url: str, viewer: str, repeat: int) -> dict[str, dict[str, float]]:
    """p50/p99 milliseconds of each typical query, `repeat` times with varying values."""
    rng = random.Random(5)

    def by_client() -> dict[str, Any]:
        day = START + timedelta(days=rng.randrange(DAYS))
        return {
            "client": f"user{rng.randrange(CLIENTS)}",
            "since": _ts(day),
            "until": _ts(day + timedelta(days=1)),
        }

    def by_dst() -> dict[str, Any]:
        dst = rng.randrange(DESTINATIONS)
        return {"dst": f"10.{dst // 65536}.{dst // 256 % 256}.{dst % 256}"}

    def by_fqdn() -> dict[str, Any]:
        return {"dst": f"svc{rng.randrange(0, DESTINATIONS, 3)}.corp.example"}

    shapes: dict[str, Callable[[], dict[str, Any]]] = {
        "client over a day": by_client,
        "by dst (IP)": by_dst,
        "by dst (name)": by_fqdn,
        "deny verdicts": lambda: {"verdict": "deny"},
        "by relay": lambda: {"relay": f"relay-{rng.randrange(RELAYS)}"},
        "newest page": dict,
    }
    figures: dict[str, dict[str, float]] = {}
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {viewer}"}, timeout=120
    ) as client:
        for name, make in (*shapes.items(), ("newest, 2nd page", dict)):
            samples: list[float] = []
            for _ in range(repeat):
                params = make()
                if name == "newest, 2nd page":
                    first = client.get("/api/v1/audit", params={"limit": 50}).json()
                    params = {"cursor": first["next_cursor"]}
                started = time.perf_counter()
                answer = client.get("/api/v1/audit", params={"limit": 50, **params})
                samples.append(time.perf_counter() - started)
                answer.raise_for_status()
            figures[name] = {
                "p50_ms": _percentile(samples, 0.5) * 1000,
                "p99_ms": _percentile(samples, 0.99) * 1000,
            }
    return figures


def measure_export(url: str, viewer: str, expected: int) -> float:
    """Records per second of the whole jsonl export."""
    lines = 0
    headers = {"Authorization": f"Bearer {viewer}"}
    started = time.perf_counter()
    with httpx.stream(
        "GET",
        f"{url}/api/v1/audit/export",
        params={"format": "jsonl"},
        headers=headers,
        timeout=600,
    ) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_bytes():
            lines += chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    if lines != expected:
        raise RuntimeError(f"the export had {lines} lines, {expected} expected")
    return lines / elapsed


def run_one(name: str, url: str, args: argparse.Namespace, work: Path) -> Result:
    """Every measurement on one (empty) database."""
    db = Database(url)
    try:
        db.upgrade()
        first_start(db, trust_domain="bench.zgate", bootstrap_token=False)
        result = Result(name, args.records, ingest_records=args.ingest)
        relay_token, viewer = token(db, "relay"), token(db, "viewer")
        with serving(db, work / f"state-{name}") as api:
            print(f"[{name}] ingest: {args.ingest} records through the API ...", flush=True)
            result.ingest_per_s = measure_ingest(
                api, relay_token, "ingest-empty", args.ingest, args.batch
            )
            print(f"[{name}] fill: {args.records} records directly ...", flush=True)
            result.fill_s = fill(db, args.records)
            print(f"[{name}] ingest again, into the filled table ...", flush=True)
            result.ingest_full_per_s = measure_ingest(
                api, relay_token, "ingest-full", args.ingest, args.batch
            )
            print(f"[{name}] queries ({args.repeat} each) ...", flush=True)
            result.queries = measure_queries(api, viewer, args.repeat)
            if not args.no_export:
                print(f"[{name}] export ...", flush=True)
                total = args.records + 2 * args.ingest
                result.export_per_s = measure_export(api, viewer, total)
        return result
    finally:
        db.dispose()


def print_table(results: list[Result], about: dict[str, Any]) -> None:
    """The figures side by side, one column per database."""
    about["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(
        f"\nmachine: {about['nproc']} CPUs, {about['cpu']}, Python {about['python']},"
        f" load average {about['loadavg_1m']} at start, {about['loadavg_1m_end']} at the end"
    )
    names = [r.database for r in results]
    width = 26
    print(f"{'':{width}}" + "".join(f"{n:>22}" for n in names))
    print(
        f"{'ingest, empty (records/s)':{width}}"
        + "".join(f"{r.ingest_per_s:>22,.0f}" for r in results)
    )
    print(
        f"{'ingest, filled (records/s)':{width}}"
        + "".join(f"{r.ingest_full_per_s:>22,.0f}" for r in results)
    )
    print(f"{'stored records':{width}}" + "".join(f"{r.records:>22,}" for r in results))
    print(f"{'direct fill (s)':{width}}" + "".join(f"{r.fill_s:>22.1f}" for r in results))
    for query in results[0].queries:
        cells = "".join(
            f"{r.queries[query]['p50_ms']:>10.1f} /{r.queries[query]['p99_ms']:>9.1f}"
            for r in results
        )
        print(f"{query + ' p50/p99 ms':{width}}" + cells)
    if any(r.export_per_s for r in results):
        print(
            f"{'export jsonl (records/s)':{width}}"
            + "".join(f"{r.export_per_s:>22,.0f}" for r in results)
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 2 when no database could be used."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=1_000_000, help="stored records to query")
    parser.add_argument("--ingest", type=int, default=50_000, help="records posted via HTTP")
    parser.add_argument("--batch", type=int, default=500, help="records per posted batch")
    parser.add_argument("--repeat", type=int, default=50, help="runs of each query")
    parser.add_argument("--database-url", help="PostgreSQL URL of an EMPTY database to use")
    parser.add_argument(
        "--databases", default="sqlite,postgresql", help="which to measure (comma-separated)"
    )
    parser.add_argument("--no-export", action="store_true", help="skip the export")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    wanted = {d.strip() for d in args.databases.split(",") if d.strip()}
    about = machine()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="zgate-bench-audit-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        if "sqlite" in wanted:
            results.append(run_one("sqlite", f"sqlite:///{work / 'control.db'}", args, work))
        if "postgresql" in wanted:
            url = args.database_url
            if url is None and postgres_unavailable() is None:
                url = stack.enter_context(throwaway_postgres("zgate_bench"))
            if url is None:
                print("postgresql: skipped (no --database-url and no PostgreSQL binaries)")
            else:
                results.append(run_one("postgresql", url, args, work))
    if not results:
        print("no database measured", file=sys.stderr)
        return 2
    print_table(results, about)
    if args.json:
        args.json.write_text(
            json.dumps({"machine": about, "results": [asdict(r) for r in results]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
