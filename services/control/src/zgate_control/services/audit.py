"""The audit trail: records relays ship, checked against each relay's hash chain, stored,
queried, exported and verified again.

A relay's chain head (the last record of its current chain: chain id, seq, hash) lives in its
``relays`` row, so checking a batch costs no query for the chain it continues. Records that
do not link are stored all the same, with ``chain_ok`` false: the trail keeps what arrived and
says where it is broken. Records that cannot be stored faithfully (no chain fields, no
timestamp, another relay's, values PostgreSQL's JSONB cannot hold) are refused one by one and
reported, never silently dropped.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, cast

from sqlalchemy import Row, Select, Table, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from zgate_control.db import Database
from zgate_control.models import AuditRecord, Relay, as_utc
from zgate_control.services.relays import relay_for_update
from zgate_policy.chain import (
    GENESIS,
    ChainGroup,
    ChainVerifier,
    chain_fields_problem,
    verify_link,
)

__all__ = [
    "CSV_COLUMNS",
    "EXPORT_BATCH",
    "SUSPECT",
    "AuditFilter",
    "BrokenRecord",
    "IngestResult",
    "client_id",
    "export_chunks",
    "ingest",
    "page",
    "verify_chains",
]

#: Rows read per query while exporting or verifying: bounded memory whatever the table holds.
EXPORT_BATCH: Final = 5000
#: Problems kept by one verification (the rest are counted).
MAX_PROBLEMS: Final = 1000

#: Text columns filled from the record's field of the same name, with their widths: a longer
#: value is cut in the column (the whole value stays in ``record``), never refused by the
#: database in the middle of a bulk insert.
_TEXT_COLUMNS: Final = {
    "client": 200,
    "session": 64,
    "proto": 16,
    "src": 64,
    "dst": 64,
    "fqdn": 253,
    "verdict": 8,
    "rule": 200,
    "policy_version": 64,
    "connector": 200,
}
_PORT_COLUMNS: Final = ("sport", "dport")
_MAX_SEQ: Final = 2**63 - 1
#: What JSONB refuses (NUL in a string, NaN/Infinity) or changes (a float of 1e16 or more,
#: which comes back as an integer) can only come in spelled like this: a batch whose text has
#: none of these needs no record checked; a hit is checked precisely, since the same letters
#: may sit harmlessly inside a string.
SUSPECT: Final = re.compile(rb"\\u0000|NaN|Infinity|[0-9][eE]\+?[0-9]")

#: The export's CSV columns, in order (values as shipped; ``chain_ok`` as stored).
CSV_COLUMNS: Final = (
    "id",
    "relay",
    "chain",
    "seq",
    "ts",
    "event",
    "client",
    "session",
    "proto",
    "src",
    "sport",
    "dst",
    "dport",
    "fqdn",
    "verdict",
    "rule",
    "policy_version",
    "connector",
    "prev",
    "hash",
    "chain_ok",
)


@dataclass(frozen=True, slots=True)
class BrokenRecord:
    """A record of a batch that did not link (stored, ``chain_ok`` false) or was refused
    (not stored: ``stored`` false)."""

    seq: int | None
    id: str | None
    problem: str
    stored: bool = True


@dataclass(slots=True)
class IngestResult:
    """What became of a batch: new records stored, ids already stored, records with a
    problem, and the seq of the relay's chain head afterwards."""

    accepted: int = 0
    duplicates: int = 0
    broken: list[BrokenRecord] = field(default_factory=list)
    last_seq: int = 0

    @property
    def chain_broken(self) -> int:
        """Records stored although they do not link."""
        return sum(1 for b in self.broken if b.stored)

    @property
    def rejected(self) -> int:
        """Records refused (not stored)."""
        return sum(1 for b in self.broken if not b.stored)


@dataclass(slots=True)
class _Tail:
    """The last stored record of one chain: what the next one must link to."""

    seq: int
    hash: str


class _Refused(ValueError):
    """A record that cannot be stored as it is."""


# -- ingest ----------------------------------------------------------------------------------


def _parse_ts(value: object) -> datetime:
    if not isinstance(value, str):
        raise _Refused("no ts: the record has no RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Refused(f"bad ts {value[:40]!r}: not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise _Refused(f"bad ts {value[:40]!r}: no time zone (expected ...Z)")
    return as_utc(parsed)


def _jsonb_safe(value: object) -> bool:
    """Whether PostgreSQL gives `value` back as it came (JSONB has no NUL character, no NaN,
    and keeps numbers as decimals: 1e16 as a float returns as the integer 10000000000000000,
    which hashes differently; both databases refuse what one of them would change)."""
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, float):
        return math.isfinite(value) and abs(value) < 1e16
    if isinstance(value, dict):
        return all(_jsonb_safe(k) and _jsonb_safe(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_jsonb_safe(v) for v in value)
    return True


def _row(relay_id: str, record: Mapping[str, Any], screen: bool) -> dict[str, Any]:
    """The table row for a record (raises _Refused). Only called after its chain fields were
    found well-formed."""
    if record.get("relay") != relay_id:
        raise _Refused(
            f"relay mismatch: the record is relay {str(record.get('relay'))[:200]!r}'s,"
            f" posted for {relay_id!r}"
        )
    seq: int = record["seq"]
    if seq > _MAX_SEQ:
        raise _Refused(f"seq {seq} is too large")
    if len(record["id"]) > 64 or len(record["chain"]) > 64:
        raise _Refused("id or chain longer than 64 characters")
    event = record.get("event")
    if not isinstance(event, str) or not event or len(event) > 32:
        raise _Refused("no event: the record has no event name (at most 32 characters)")
    if screen and not _jsonb_safe(dict(record)):
        raise _Refused(
            "unstorable: a string holds a NUL character, or a number is NaN, Infinity"
            " or a float of 1e16 or more"
        )
    row: dict[str, Any] = {
        "id": record["id"],
        "relay_id": relay_id,
        "chain": record["chain"],
        "seq": seq,
        "ts": _parse_ts(record.get("ts")),
        "event": event,
        "prev": record["prev"],
        "hash": record["hash"],
        "record": record,
    }
    for name, width in _TEXT_COLUMNS.items():
        value = record.get(name)
        row[name] = value[:width] if isinstance(value, str) else None
    if row["client"] is not None:
        row["client"] = client_id(row["client"])
    for name in _PORT_COLUMNS:
        value = record.get(name)
        row[name] = value if type(value) is int and 0 <= value <= 0xFFFF else None
    return row


def client_id(identity: str) -> str:
    """The id a client has in policies and in the clients table: relays record the identity
    as ``client/<id>`` (``connector/<id>`` stays as it is, a connector is no client)."""
    return identity.removeprefix("client/")


def _link_problem(tail: _Tail | None, record: Mapping[str, Any]) -> str | None:
    if tail is not None:
        return verify_link(tail.hash, tail.seq, record)
    problem = verify_link(None, None, record)
    seq: int = record["seq"]
    if seq == 1:
        return problem
    # verify_link cannot know a chain's start is missing; the control plane, which has every
    # record the relay shipped, can.
    missing = (
        f"deleted: the chain's first record here is seq {seq}, {seq - 1} before it never arrived"
    )
    return f"{problem}; {missing}" if problem else missing


def _last_stored(session: Session, relay_id: str, chain: str) -> _Tail | None:
    row = session.execute(
        select(AuditRecord.seq, AuditRecord.hash)
        .where(AuditRecord.relay_id == relay_id, AuditRecord.chain == chain)
        .order_by(AuditRecord.seq.desc())
        .limit(1)
    ).first()
    return _Tail(row.seq, row.hash) if row is not None else None


def _stored_ids(session: Session, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 500):  # stay far below any bound-parameter limit
        chunk = ids[start : start + 500]
        found.update(session.scalars(select(AuditRecord.id).where(AuditRecord.id.in_(chunk))))
    return found


def _insert_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """One bulk insert; a row another process stored meanwhile is skipped, not an error."""
    if not rows:
        return
    table = cast(Table, AuditRecord.__table__)
    if session.get_bind().dialect.name == "postgresql":
        statement: Any = postgresql.insert(table).on_conflict_do_nothing(index_elements=["id"])
    else:
        statement = sqlite.insert(table).on_conflict_do_nothing()
    # Core, not the ORM's bulk path: that splits rows by which values are None, one INSERT
    # per group; this is one executemany (multi-row VALUES on PostgreSQL).
    session.connection().execute(statement, rows)


def ingest(
    session: Session,
    relay_id: str,
    records: Sequence[Mapping[str, Any]],
    now: datetime,
    *,
    screen: bool = True,
) -> IngestResult:
    """Store a batch of `relay_id`'s records in `session`'s transaction.

    Idempotent by record id (an id already stored is a duplicate and not checked again).
    Each new record must follow the last stored record of its chain: the relay's head for its
    current chain, the newest stored one for any other. A record starting a new chain (seq 1,
    prev GENESIS) makes that chain the relay's current one. `screen` false skips looking
    for values JSONB cannot hold (when the batch's text cannot contain any: see SUSPECT).
    """
    result = IngestResult()
    relay = relay_for_update(session, relay_id, now)
    ids = [r["id"] for r in records if isinstance(r.get("id"), str)]
    seen = _stored_ids(session, ids)
    head_chain = relay.audit_chain
    tails: dict[str, _Tail | None] = {}
    if head_chain is not None and relay.audit_hash is not None:
        tails[head_chain] = _Tail(relay.audit_seq, relay.audit_hash)
    rows: list[dict[str, Any]] = []
    for record in records:
        ident = record.get("id")
        if isinstance(ident, str) and ident in seen:
            result.duplicates += 1
            continue
        seq = record.get("seq")
        seq_or_none = seq if type(seq) is int else None
        ident_or_none = ident if isinstance(ident, str) else None
        malformed = chain_fields_problem(record)
        try:
            if malformed is not None:
                raise _Refused(malformed)
            row = _row(relay_id, record, screen)
        except _Refused as refused:
            result.broken.append(
                BrokenRecord(seq_or_none, ident_or_none, f"not stored: {refused}", stored=False)
            )
            continue
        chain: str = record["chain"]
        if chain not in tails:
            tails[chain] = _last_stored(session, relay_id, chain)
        tail = tails[chain]
        problem = _link_problem(tail, record)
        row["chain_ok"] = problem is None
        if problem is not None:
            result.broken.append(BrokenRecord(seq_or_none, ident_or_none, problem))
        if tail is None or record["seq"] > tail.seq:
            # A broken record still moves the tail: the next one is checked against it, so
            # one gap is reported once, not at every record after it.
            tails[chain] = _Tail(record["seq"], record["hash"])
        if chain != head_chain and record["seq"] == 1 and record["prev"] == GENESIS:
            head_chain = chain
        seen.add(row["id"])
        rows.append(row)
    _insert_rows(session, rows)
    result.accepted = len(rows)
    head = tails.get(head_chain) if head_chain is not None else None
    if head is not None:
        relay.audit_chain, relay.audit_seq, relay.audit_hash = head_chain, head.seq, head.hash
    result.last_seq = relay.audit_seq
    return result


# -- queries -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What to select: every field set must match (``dst`` is an IP address or a name)."""

    client: str | None = None
    dst: str | None = None
    verdict: Literal["allow", "deny"] | None = None
    rule: str | None = None
    event: str | None = None
    relay: str | None = None
    session: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: Select[Any], *, newest_first: bool = False) -> Select[Any]:
        """`query` narrowed to the matching records. `newest_first`: the query reads in time
        order, so the relay is matched in a way no index serves: a relay has a large share of
        all records, and SQLite would otherwise sort all of them through the chain index
        instead of reading the time index backwards until a page is full."""
        conditions = []
        for column, value in (
            (AuditRecord.client, client_id(self.client) if self.client else None),
            (AuditRecord.verdict, self.verdict),
            (AuditRecord.rule, self.rule),
            (AuditRecord.event, self.event),
            (AuditRecord.session, self.session),
        ):
            if value is not None:
                conditions.append(column == value)
        if self.relay is not None:
            relay = AuditRecord.relay_id + "" if newest_first else AuditRecord.relay_id
            conditions.append(relay == self.relay)
        if self.dst is not None:
            try:
                # Relays write addresses compressed (RFC 5952): match any spelling.
                conditions.append(AuditRecord.dst == str(ipaddress.ip_address(self.dst)))
            except ValueError:
                conditions.append(AuditRecord.fqdn == self.dst)
        if self.since is not None:
            conditions.append(AuditRecord.ts >= as_utc(self.since))
        if self.until is not None:
            conditions.append(AuditRecord.ts < as_utc(self.until))
        return query.where(*conditions) if conditions else query


def _with_status(record: dict[str, Any], chain_ok: bool) -> dict[str, Any]:
    return {**record, "chain_ok": chain_ok}


def page(
    db: Database, where: AuditFilter, after: tuple[datetime, str] | None, limit: int
) -> tuple[list[dict[str, Any]], tuple[datetime, str] | None]:
    """One page of matching records, newest first (keyset on ``(ts, id)``), and the key to
    continue after (None: the last page)."""
    query = select(AuditRecord.ts, AuditRecord.id, AuditRecord.record, AuditRecord.chain_ok)
    query = where.apply(query, newest_first=True)
    query = query.order_by(AuditRecord.ts.desc(), AuditRecord.id.desc())
    if after is not None:
        ts, ident = as_utc(after[0]), after[1]
        # `ts <= x` alone is what an index on (…, ts) can seek to; the rest breaks ties.
        query = query.where(AuditRecord.ts <= ts).where(
            (AuditRecord.ts < ts) | (AuditRecord.id < ident)
        )
    with db.reader() as session:
        rows = session.execute(query.limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [_with_status(row.record, row.chain_ok) for row in rows]
    return items, ((rows[-1].ts, rows[-1].id) if more and rows else None)


def _chain_batches(
    db: Database, where: AuditFilter, batch: int = EXPORT_BATCH
) -> Iterator[Sequence[Row[Any]]]:
    """Matching rows in (relay, chain, seq, id) order, `batch` at a time, each batch read in
    its own short read transaction (a slow download holds no transaction open)."""
    key = tuple_(AuditRecord.relay_id, AuditRecord.chain, AuditRecord.seq, AuditRecord.id)
    base = where.apply(
        select(
            AuditRecord.relay_id,
            AuditRecord.chain,
            AuditRecord.seq,
            AuditRecord.id,
            AuditRecord.record,
            AuditRecord.chain_ok,
        )
    ).order_by(AuditRecord.relay_id, AuditRecord.chain, AuditRecord.seq, AuditRecord.id)
    after: tuple[str, str, int, str] | None = None
    while True:
        query = base if after is None else base.where(key > tuple_(*after))
        with db.reader() as session:
            rows = session.execute(query.limit(batch)).all()
        if not rows:
            return
        yield rows
        if len(rows) < batch:
            return
        last = rows[-1]
        after = (last.relay_id, last.chain, last.seq, last.id)


def _csv_value(value: object) -> object:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else value


def export_chunks(
    db: Database, where: AuditFilter, fmt: Literal["csv", "jsonl"], batch: int = EXPORT_BATCH
) -> Iterator[str]:
    """The export as text chunks (one per batch of rows), ordered by relay, chain and seq so
    the download verifies as it is. JSON lines are the records as shipped (key order aside:
    PostgreSQL keeps its own, and the hash covers sorted keys)."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        yield out.getvalue()
    for rows in _chain_batches(db, where, batch):
        if fmt == "jsonl":
            yield "".join(
                json.dumps(row.record, separators=(",", ":"), ensure_ascii=True) + "\n"
                for row in rows
            )
            continue
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for row in rows:
            record = row.record
            values = [_csv_value(record.get(name)) for name in CSV_COLUMNS[:-1]]
            writer.writerow([*values, "true" if row.chain_ok else "false"])
        yield out.getvalue()


def _group_out(group: ChainGroup) -> dict[str, Any]:
    return {
        "relay": group.relay,
        "chain": group.chain,
        "records": group.records,
        "first_seq": group.first_seq,
        "last_seq": group.last_seq,
        "ok": group.ok,
        "problems": [p._asdict() for p in group.problems],
        "omitted": group.omitted,
    }


def _head_problem(group: dict[str, Any], relay: Relay | None) -> dict[str, Any] | None:
    """Records cut off at the end leave no gap in what is stored: compare the stored chain's
    end with the head the relay's row remembers."""
    if relay is None or relay.audit_chain != group["chain"]:
        return None
    if group["last_seq"] == relay.audit_seq:
        return None
    return {
        "position": group["records"],
        "seq": group["last_seq"],
        "id": None,
        "problem": f"truncated: the relay's chain reached seq {relay.audit_seq},"
        f" the last record stored is seq {group['last_seq']}",
    }


def verify_chains(db: Database, relay: str | None = None) -> list[dict[str, Any]]:
    """Verify every stored chain (of one relay, or all), reading it in batches. A problem's
    ``position`` is the record's place in its chain as stored (1: the first)."""
    verifier = ChainVerifier(max_problems=MAX_PROBLEMS)
    current: tuple[str, str] | None = None
    position = 0
    for rows in _chain_batches(db, AuditFilter(relay=relay)):
        for row in rows:
            key = (row.relay_id, row.chain)
            if key != current:
                current, position = key, 0
            position += 1
            verifier.add_record(position, row.record)
    groups = [_group_out(group) for group in verifier.report().groups]
    with db.reader() as session:
        heads = {r.id: r for r in session.scalars(select(Relay))}
    for group in groups:
        problem = _head_problem(group, heads.get(group["relay"]))
        if problem is not None:
            group["problems"].append(problem)
            group["ok"] = False
    return groups
