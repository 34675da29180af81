"""The REST API, one router per resource (each module exposes ``router``)."""

from __future__ import annotations

from fastapi import APIRouter

from zgate_control.api import admin, audit, clients, connectors, policies, relays

__all__ = ["ROUTERS"]

#: Every router the app mounts under /api/v1, in OpenAPI order.
ROUTERS: tuple[APIRouter, ...] = (
    admin.router,
    audit.router,
    policies.router,
    clients.router,
    connectors.router,
    relays.router,
)
