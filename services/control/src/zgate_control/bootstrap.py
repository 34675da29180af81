"""What the first start of a control plane creates: the CA and a first admin token.

Runs under the change log's row lock, so two replicas starting together on one empty
PostgreSQL database create one CA and one bootstrap token between them, not two.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from zgate_control.auth import create_token, tokens_exist
from zgate_control.db import Database
from zgate_control.models import ChangeHead

__all__ = ["FirstStart", "first_start"]


@dataclass(frozen=True, slots=True)
class FirstStart:
    """What `first_start` created: the admin token's text (shown once), if any."""

    admin_token: str | None


def first_start(db: Database, *, trust_domain: str, bootstrap_token: bool) -> FirstStart:
    """Create what a new database lacks; nothing on later starts."""
    from zgate_control import ca  # the CA module needs the models only; imported late

    with db.session() as session:
        session.execute(select(ChangeHead).where(ChangeHead.id == 1).with_for_update()).one()
        ca.ensure_authority(session, trust_domain)
        token = None
        if bootstrap_token and not tokens_exist(session):
            _, token = create_token(session, "bootstrap-admin", "admin", "zgate-control")
        return FirstStart(token)
