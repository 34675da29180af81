"""The CA the control plane holds (placeholder until the CA module lands)."""

from __future__ import annotations

from sqlalchemy.orm import Session

__all__ = ["ensure_authority"]


def ensure_authority(session: Session, trust_domain: str) -> None:
    """Create the CA on first start (filled in by the CA module)."""
