"""The change log relays follow: append in the caller's transaction, read after a position,
or take a snapshot of the whole state.

`append` takes the next number from the one-row ``change_head`` with ``SELECT ... FOR UPDATE``:
the row stays locked until the caller's transaction ends, so transactions that append commit in
sequence order (on SQLite, writers are serialised by ``BEGIN IMMEDIATE`` anyway). A reader
therefore only ever sees a prefix of the log: once it has read seq N, no smaller number can
commit behind it. This holds across processes, as the lock is the database's.

On PostgreSQL `append` also sends ``NOTIFY zgate_changes`` with the new seq, in the same
transaction (delivered at commit, carrying nothing the table does not hold); every process's
`Wakeups` listens for it. Within one process, committing a session that appended wakes the
waiting long polls directly (see `zgate_control.wakeup`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from zgate_control import ca
from zgate_control.models import (
    ChangeHead,
    ChangeLogEntry,
    Client,
    Connector,
    PolicyPublication,
    PolicyVersion,
    utc_now,
)
from zgate_control.wakeup import CHANNEL, after_commit_wake, notify_committed

__all__ = [
    "KINDS",
    "ChangeKind",
    "Changes",
    "append",
    "blocked_serials",
    "changes_after",
    "connector_set",
    "current_state",
    "head",
    "notify_committed",
    "read_since",
    "snapshot",
]

ChangeKind = Literal["policy", "revocation", "connectors", "session.end"]
#: ``session.end`` is an event, not state: {"relay": id, "session": id} asks that relay to end
#: that live session now (snapshots carry no such thing: a session outlives no restart).
KINDS: Final[tuple[ChangeKind, ...]] = ("policy", "revocation", "connectors", "session.end")


def append(session: Session, kind: str, payload: dict[str, Any]) -> int:
    """Append one change in the caller's transaction and return its seq.

    The change and the state it describes commit (or roll back) together. Waiters are woken
    once the transaction commits.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown change kind {kind!r}: expected one of {', '.join(KINDS)}")
    counter = session.execute(
        select(ChangeHead).where(ChangeHead.id == 1).with_for_update()
    ).scalar_one()
    counter.seq += 1
    seq = counter.seq
    session.add(ChangeLogEntry(seq=seq, kind=kind, payload=payload, created_at=utc_now()))
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :seq)"), {"channel": CHANNEL, "seq": str(seq)}
        )
    after_commit_wake(session, kind)
    return seq


def head(session: Session) -> int:
    """The seq of the newest change committed (0: none yet)."""
    return int(session.execute(select(ChangeHead.seq).where(ChangeHead.id == 1)).scalar_one())


def _entry(row: ChangeLogEntry) -> dict[str, Any]:
    return {"seq": row.seq, "kind": row.kind, "payload": row.payload, "created_at": row.created_at}


def changes_after(session: Session, since: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` changes with seq > `since`, oldest first (seq, kind, payload, created_at)."""
    rows = session.scalars(
        select(ChangeLogEntry)
        .where(ChangeLogEntry.seq > since)
        .order_by(ChangeLogEntry.seq)
        .limit(limit)
    )
    return [_entry(r) for r in rows]


def blocked_serials(session: Session) -> list[str]:
    """Current certificate serials of disabled, unrevoked clients (refused, not in the CRL)."""
    return list(
        session.scalars(
            select(Client.serial)
            .where(Client.disabled.is_(True), Client.revoked_at.is_(None))
            .where(Client.serial.is_not(None))
            .order_by(Client.serial)
        )
    )


def connector_set(session: Session) -> dict[str, list[str]]:
    """Every unrevoked connector and its prefixes."""
    rows = session.execute(
        select(Connector.id, Connector.prefixes)
        .where(Connector.revoked_at.is_(None))
        .order_by(Connector.id)
    )
    return {ident: list(prefixes) for ident, prefixes in rows}


def _policy_in_force(session: Session) -> dict[str, Any] | None:
    row = session.execute(
        select(PolicyVersion.id, PolicyVersion.digest, PolicyVersion.yaml)
        .join(PolicyPublication, PolicyPublication.version_id == PolicyVersion.id)
        .order_by(PolicyPublication.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return {"version_id": row.id, "digest": row.digest, "yaml": row.yaml}


def current_state(session: Session) -> dict[str, Any]:
    """The snapshot a relay starts from: seq, policy in force, CRL, blocked serials,
    connectors and the CA certificate.

    The head is read first: the state read after it is at least as new as `seq`, so a relay
    that then follows from `seq` may see a change it already holds (applying is idempotent),
    never miss one.
    """
    seq = head(session)
    return {
        "seq": seq,
        "policy": _policy_in_force(session),
        "crl_pem": ca.crl_pem(session),
        "blocked": blocked_serials(session),
        "connectors": connector_set(session),
        "ca_pem": ca.ca_pem(session),
    }


#: The contract's name for `current_state`.
snapshot = current_state


@dataclass(frozen=True, slots=True)
class Changes:
    """What a relay at `since` gets: the changes after it, or a snapshot (then `changes` is
    empty), and the head; `empty` when there is nothing new yet."""

    head_seq: int
    changes: list[dict[str, Any]]
    snapshot: dict[str, Any] | None

    @property
    def empty(self) -> bool:
        """Nothing after `since` yet (a long poll keeps waiting)."""
        return self.snapshot is None and not self.changes

    def body(self) -> dict[str, Any]:
        """The JSON answer of ``GET /relays/{id}/changes``."""
        if self.snapshot is not None:
            return {"type": "snapshot", "snapshot": self.snapshot, "head_seq": self.head_seq}
        return {"type": "changes", "changes": self.changes, "head_seq": self.head_seq}


def _holds_state(session: Session) -> bool:
    """Whether any change carries state (anything but the ``session.end`` events)."""
    return (
        session.scalar(
            select(ChangeLogEntry.seq).where(ChangeLogEntry.kind != "session.end").limit(1)
        )
        is not None
    )


def _oldest(session: Session) -> int | None:
    return session.scalar(select(func.min(ChangeLogEntry.seq)))


def read_since(session: Session, since: int, snapshot_after: int) -> Changes:
    """The answer for a relay at `since`: a snapshot when `since` is 0 (and some change
    carries state), older than the oldest
    row kept, newer than the head, or more than `snapshot_after` changes behind; else the
    changes after it (at most `snapshot_after`)."""
    current = head(session)
    if since == 0 == current:
        # Nothing was ever changed: a new relay's empty state is the whole truth, so it waits
        # like a relay that is up to date instead of fetching the same empty snapshot again
        # and again.
        return Changes(0, [], None)
    # A relay at 0 starts from a snapshot, unless the log holds only events (session.end) so
    # far: the empty state is then still the whole truth, and a snapshot would swallow them.
    from_nothing = since == 0 and _holds_state(session)
    oldest = _oldest(session)
    # Rows may be trimmed some day: a relay behind the oldest row kept cannot catch up by rows.
    too_old = since < current if oldest is None else since < oldest - 1
    if from_nothing or since > current or too_old or current - since > snapshot_after:
        state = current_state(session)
        return Changes(state["seq"], [], state)
    rows = changes_after(session, since, snapshot_after)
    # A change may have committed between reading the head and the rows.
    last = rows[-1]["seq"] if rows else current
    return Changes(max(current, last), rows, None)
