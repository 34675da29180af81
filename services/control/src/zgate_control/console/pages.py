"""The console's pages: each section is a module with a ``router``; this lists them."""

from __future__ import annotations

from fastapi import APIRouter

from zgate_control.console.audit import router as audit
from zgate_control.console.identities import router as identities
from zgate_control.console.overview import router as overview
from zgate_control.console.policies import router as policies
from zgate_control.console.sessions import router as sessions

__all__ = ["ROUTERS"]

#: Every page router, in navigation order (one line per section).
ROUTERS: tuple[APIRouter, ...] = (
    overview,
    sessions,
    identities,
    policies,
    audit,
)
