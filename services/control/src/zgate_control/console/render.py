"""Rendering console pages: one Jinja2 environment (autoescaped) over the package's
templates, and the context every page gets (the user, the CSRF token, the navigation)."""

from __future__ import annotations

from typing import Any, Final

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from zgate_control.console.session import ConsoleUser

__all__ = ["NAV", "render"]

#: The console's sections, in navigation order: (path, label).
NAV: Final = (
    ("/console/", "Overview"),
    ("/console/sessions", "Sessions"),
    ("/console/clients", "Clients"),
    ("/console/connectors", "Connectors"),
    ("/console/policies", "Policies"),
    ("/console/audit", "Audit"),
)

_env = Environment(
    loader=PackageLoader("zgate_control.console", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(
    request: Request,
    template: str,
    user: ConsoleUser | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The page `template` with `context`, the user and the navigation."""
    html = _env.get_template(template).render(
        request=request,
        user=user,
        nav=NAV,
        path=request.url.path,
        csrf=user.csrf if user else "",
        can_write=bool(user and user.can_write),
        **context,
    )
    return HTMLResponse(
        html,
        status_code=status_code,
        headers={
            # Our own scripts and styles only; no framing; no referrer to other sites.
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        },
    )
