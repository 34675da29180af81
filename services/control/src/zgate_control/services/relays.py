"""The relays' rows: found, or created the first time a relay speaks, and locked."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from zgate_control.models import Relay

__all__ = ["relay_for_update"]


def relay_for_update(session: Session, relay_id: str, now: datetime) -> Relay:
    """The relay's row, locked until commit; created (registered at `now`) when this is the
    first the control plane hears of it. An insert that ignores a conflict, not a read then an
    insert: a relay's first heartbeat and first audit batch (or two control-plane processes)
    may arrive together, and both must find one row."""
    query = select(Relay).where(Relay.id == relay_id).with_for_update()
    relay = session.scalars(query).one_or_none()
    if relay is not None:
        return relay
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(Relay).values(id=relay_id, registered_at=now).on_conflict_do_nothing())
    return session.scalars(query).one()
