"""The change log: append in the caller's transaction, read after a position, snapshot rules,
and seq order across two "processes" (two Database objects) appending at once."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import delete

from zgate_control import ca, changelog
from zgate_control.db import Database
from zgate_control.models import (
    ChangeLogEntry,
    Client,
    Connector,
    PolicyPublication,
    PolicyVersion,
    utc_now,
)


@pytest.fixture
def other(database_url: str, database: Database) -> Iterator[Database]:
    """A second Database over the same database: another control-plane process."""
    second = Database(database_url)
    try:
        yield second
    finally:
        second.dispose()


def _append(db: Database, n: int) -> int:
    with db.session() as session:
        return changelog.append(session, "policy", {"n": n})


def test_append_numbers_changes_in_the_callers_transaction(database: Database) -> None:
    assert _append(database, 1) == 1
    assert _append(database, 2) == 2
    with pytest.raises(RuntimeError), database.session() as session:
        changelog.append(session, "connectors", {"connectors": {}})
        raise RuntimeError("the change it described failed")
    with database.reader() as session:
        assert changelog.head(session) == 2
        rows = changelog.changes_after(session, 0, 10)
        assert [(r["seq"], r["kind"], r["payload"]) for r in rows] == [
            (1, "policy", {"n": 1}),
            (2, "policy", {"n": 2}),
        ]
        assert changelog.changes_after(session, 1, 10)[0]["seq"] == 2
        assert changelog.changes_after(session, 0, 1)[0]["seq"] == 1
    assert _append(database, 3) == 3  # the rolled-back number is not skipped
    with pytest.raises(ValueError, match="unknown change kind"), database.session() as session:
        changelog.append(session, "gossip", {})


def test_current_state(database: Database) -> None:
    with database.session() as session:
        empty = changelog.current_state(session)
        assert empty["seq"] == 0 and empty["policy"] is None
        assert empty["blocked"] == [] and empty["connectors"] == {}
        assert empty["ca_pem"] == ca.ca_pem(session)
        assert empty["crl_pem"].startswith("-----BEGIN X509 CRL-----")
        now = utc_now()
        for ident, disabled, revoked in (
            ("a", True, False),
            ("b", False, False),
            ("c", True, True),
        ):
            session.add(
                Client(
                    id=ident,
                    groups=[],
                    created_at=now,
                    created_by="t",
                    disabled=disabled,
                    revoked_at=now if revoked else None,
                    serial=f"{ident}0",
                    row_version=1,
                )
            )
        session.add(
            Connector(
                id="s1", prefixes=["10.0.0.0/8"], created_at=now, created_by="t", row_version=1
            )
        )
        session.add(
            Connector(
                id="s2", prefixes=["10.1.0.0/16"], created_at=now, created_by="t", revoked_at=now
            )
        )
        for n in (1, 2):
            session.add(
                PolicyVersion(
                    id=n,
                    yaml=f"v{n}",
                    digest=f"d{n}",
                    author="t",
                    comment="",
                    created_at=now,
                    rules=1,
                )
            )
        session.flush()
        session.add(
            PolicyPublication(version_id=2, kind="publish", published_at=now, published_by="t")
        )
        session.add(
            PolicyPublication(version_id=1, kind="rollback", published_at=now, published_by="t")
        )
        changelog.append(session, "policy", {"version_id": 1})
    with database.reader() as session:
        state = changelog.snapshot(session)
    assert state["seq"] == 1
    assert state["policy"] == {"version_id": 1, "digest": "d1", "yaml": "v1"}
    assert state["blocked"] == ["a0"]
    assert state["connectors"] == {"s1": ["10.0.0.0/8"]}


def test_read_since_answers_with_a_snapshot_when_it_must(database: Database) -> None:
    for n in range(1, 6):
        _append(database, n)

    def read(since: int, after: int = 1000) -> changelog.Changes:
        with database.reader() as session:
            return changelog.read_since(session, since, after)

    assert read(0).snapshot is not None and read(0).head_seq == 5
    assert read(6).snapshot is not None  # ahead of the head: the database was replaced
    assert read(5).empty and read(5).head_seq == 5
    within = read(3)
    assert within.snapshot is None and [c["seq"] for c in within.changes] == [4, 5]
    assert within.body()["type"] == "changes"
    assert read(1, after=3).snapshot is not None  # four behind, more than three
    assert [c["seq"] for c in read(2, after=3).changes] == [3, 4, 5]
    with database.session() as session:  # rows trimmed: 1..2 are gone
        session.execute(delete(ChangeLogEntry).where(ChangeLogEntry.seq <= 2))
    assert read(1).snapshot is not None
    assert [c["seq"] for c in read(2).changes] == [3, 4, 5]
    snapshot = read(1).body()
    assert snapshot["type"] == "snapshot" and snapshot["snapshot"]["seq"] == 5


def test_two_processes_append_in_order_and_readers_never_see_a_gap(
    database: Database, other: Database
) -> None:
    per_writer = 20
    writers = [(database, 0), (database, 1), (other, 2), (other, 3)]
    done = threading.Event()
    failures: list[str] = []
    observed: list[int] = []
    written: dict[int, list[int]] = {w: [] for _, w in writers}

    def write(db: Database, writer: int) -> None:
        try:
            for n in range(per_writer):
                with db.session() as session:
                    seq = changelog.append(session, "policy", {"writer": writer, "n": n})
                    # Hold the transaction open a little so another writer's commit
                    # would overtake this one if numbering did not serialise them.
                    time.sleep(random.random() / 500)
                written[writer].append(seq)
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(f"writer {writer}: {exc!r}")

    def read() -> None:
        while not done.is_set():
            with other.reader() as session:
                seqs = [c["seq"] for c in changelog.changes_after(session, 0, 10_000)]
            if seqs != list(range(1, len(seqs) + 1)):
                failures.append(f"a reader saw a gap: {seqs}")
                return
            if observed and len(seqs) < observed[-1]:
                failures.append("a reader saw the log shrink")
                return
            observed.append(len(seqs))

    reader = threading.Thread(target=read)
    threads = [threading.Thread(target=write, args=w) for w in writers]
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done.set()
    reader.join(timeout=30)
    assert failures == []
    total = per_writer * len(writers)
    assert len(observed) > 1
    for seqs in written.values():
        assert seqs == sorted(seqs) and len(seqs) == per_writer
    with database.reader() as session:
        rows = changelog.changes_after(session, 0, 10_000)
        assert changelog.head(session) == total
    assert [r["seq"] for r in rows] == list(range(1, total + 1))
    assert sorted((r["payload"]["writer"], r["payload"]["n"]) for r in rows) == sorted(
        (w, n) for _, w in writers for n in range(per_writer)
    )
