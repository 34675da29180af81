"""What the control-plane benchmarks share (control_audit.py, control_enforce.py,
control_impact.py): the machine they ran on, free loopback ports, waiting for a condition,
a throw-away PostgreSQL server, and audit rows put in bulk into ``audit_records``.

Imported by bare name, as Python does when it runs one of the scripts from ``bench/``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from zgate_control.db import Database
from zgate_control.services.audit import CSV_COLUMNS

__all__ = [
    "AUDIT_ROW_COLUMNS",
    "audit_row",
    "copy_audit_rows",
    "cpu_model",
    "free_port",
    "postgres_unavailable",
    "throwaway_postgres",
    "wait_for",
]

#: The ``audit_records`` columns a bench fills: the export's fields (the relay's id in
#: ``relay_id``) and the whole record as shipped.
AUDIT_ROW_COLUMNS: Final = (
    *("relay_id" if name == "relay" else name for name in CSV_COLUMNS),
    "record",
)


def cpu_model(fallback: str = "unknown") -> str:
    """The CPU's model name from /proc/cpuinfo (`fallback` where it says none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return fallback


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port free right now (`kind`: SOCK_STREAM or SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float) -> None:
    """Poll `predicate` every `interval` s until it holds; RuntimeError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def postgres_unavailable() -> str | None:
    """Why no throw-away PostgreSQL server can be started here (None: it can)."""
    try:
        from zgate_testkit.postgres import find_postgres_bin
    except ImportError:
        return "zgate_testkit is not installed"
    if find_postgres_bin() is None:
        return "no PostgreSQL binaries (initdb, pg_ctl)"
    return None


@contextmanager
def throwaway_postgres(database: str) -> Iterator[str]:
    """The URL of a new database `database` on a throw-away PostgreSQL server (from
    zgate_testkit.postgres), stopped and removed on exit. Check postgres_unavailable() first."""
    from zgate_testkit.postgres import PostgresServer

    with PostgresServer() as server:
        yield server.create_database(database)


def audit_row(record: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The ``audit_records`` row of a chained `record` (stored whole in ``record``), its
    chain intact; `overrides` replace column values (e.g. an exact ``ts``)."""
    row = {name: record.get(name) for name in AUDIT_ROW_COLUMNS}
    row.update(
        relay_id=record["relay"],
        ts=datetime.fromisoformat(record["ts"]),
        chain_ok=True,
        record=record,
    )
    row.update(overrides)
    return row


def copy_audit_rows(db: Database, rows: list[dict[str, Any]]) -> None:
    """Put `rows` into ``audit_records`` with COPY on PostgreSQL: several times faster than
    INSERT for a bulk fill."""
    raw = db.engine.raw_connection()
    try:
        conn: Any = raw.driver_connection
        statement = f"COPY audit_records ({', '.join(AUDIT_ROW_COLUMNS)}) FROM STDIN"
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                values = [row[name] for name in AUDIT_ROW_COLUMNS]
                values[-1] = json.dumps(row["record"], separators=(",", ":"))
                copy.write_row(values)
        conn.commit()
    finally:
        raw.close()
