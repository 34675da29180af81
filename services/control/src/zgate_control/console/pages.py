"""The console's pages: each section is a module with a ``router``; this lists them."""

from __future__ import annotations

from fastapi import APIRouter

from zgate_control.console.audit import router as audit
from zgate_control.console.overview import router as overview
from zgate_control.console.policies import router as policies

__all__ = ["ROUTERS"]

#: Every page router, in navigation order (one line per section).
ROUTERS: tuple[APIRouter, ...] = (
    overview,
    policies,
    audit,
)
