"""The Clients and Connectors pages: lists with filters and live state; for writers, adding
one (its certificate bundle shown once), disabling/enabling a client, changing a connector's
prefixes and revoking either.

Every change calls the REST API's own handler function (``zgate_control.api.clients`` and
``.connectors``), so the console and the API cannot drift apart: same checks, same change-log
entries, same admin-log action names.

The bundle of a new identity is shown on the answer to the POST that created it and nowhere
else: the PEMs in read-only text areas and as download links whose ``data:`` URLs carry the
files inside that one page. Nothing is kept server-side (no table, no memory store that would
also have to be shared between control-plane replicas and expired), and the page is sent with
``Cache-Control: no-store``; reloading it re-posts the form, which is then refused because the
id exists.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy import select

from zgate_control.api import clients as clients_api
from zgate_control.api import connectors as connectors_api
from zgate_control.console.deps import User, Writer
from zgate_control.console.render import render
from zgate_control.console.session import ConsoleUser
from zgate_control.db import Database
from zgate_control.models import RelaySession
from zgate_control.problems import ProblemError

__all__ = ["back", "human_bytes", "human_time", "router"]

router = APIRouter(prefix="/console", include_in_schema=False)

State = Literal["", "active", "disabled", "revoked"]
#: Rows per page of the lists.
PAGE: Final = 100
#: Where a form's ``next`` may send the browser back to.
_BACK_TO: Final = ("/console/clients", "/console/connectors", "/console/sessions")


# -- shared by the console's list pages --------------------------------------------------


def back(
    target: str, default: str, *, done: str | None = None, error: str | None = None
) -> RedirectResponse:
    """303 to `target` (a console list page, else `default`) with a message in the query."""
    path = target if target.split("?")[0] in _BACK_TO else default
    message = {k: v for k, v in (("done", done), ("error", error)) if v}
    if message:
        path += ("&" if "?" in path else "?") + urlencode(message)
    return RedirectResponse(path, status_code=303)


def human_bytes(count: int) -> str:
    """1234567 -> "1.2 MB" (decimal units, as network counters are read)."""
    value, unit = float(count), 0
    units = ("B", "kB", "MB", "GB", "TB")
    while value >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    return f"{value:.0f} {units[unit]}" if unit == 0 else f"{value:.1f} {units[unit]}"


def human_time(at: datetime | None) -> str:
    """A time as the pages show it (UTC, to the second)."""
    return at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else "never"


def _errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()]


def _split(text: str) -> list[str]:
    """Comma- or whitespace-separated values, empty ones dropped."""
    return [part for part in text.replace(",", " ").split() if part]


def _live_connectors(db: Database) -> dict[str, list[str]]:
    """Connector id -> the relays it holds a live session on (as relays last reported)."""
    live: dict[str, list[str]] = {}
    with db.reader() as session:
        rows = session.execute(
            select(RelaySession.client, RelaySession.relay_id)
            .where(RelaySession.kind == "connector")
            .order_by(RelaySession.client, RelaySession.relay_id)
        )
        for ident, relay in rows:
            live.setdefault(ident, []).append(relay)
    return live


def _state_filters(state: State) -> tuple[bool | None, bool | None]:
    """(disabled, revoked) filters for a state choice."""
    if state == "active":
        return False, False
    if state == "disabled":
        return True, False
    if state == "revoked":
        return None, True
    return None, None


def _page(list_page: Callable[..., dict[str, Any]], **filters: Any) -> dict[str, Any]:
    try:
        return list_page(**filters)
    except ProblemError as exc:  # a stale or mangled cursor: start over
        return {"items": [], "next_cursor": None, "error": exc.detail}


def _bundle_page(
    request: Request, user: ConsoleUser, kind: str, ident: str, bundle: dict[str, Any]
) -> HTMLResponse:
    files = [
        ("Certificate", f"{ident}.pem", bundle["cert_pem"]),
        ("Private key", f"{ident}.key", bundle["key_pem"]),
        ("CA certificate", "ca.pem", bundle["ca_pem"]),
    ]
    shown = [
        {
            "label": label,
            "name": name,
            "pem": pem,
            "href": "data:application/x-pem-file;base64," + base64.b64encode(pem.encode()).decode(),
        }
        for label, name, pem in files
    ]
    return render(
        request,
        "bundle.html",
        user,
        status_code=201,
        kind=kind,
        ident=ident,
        files=shown,
        serial=bundle["serial"],
        not_after=human_time(bundle["not_after"]),
    )


def _call(action: Callable[[], Any]) -> str | None:
    """Run an API handler; its problem's detail, or None when it succeeded."""
    try:
        action()
    except ProblemError as exc:
        return exc.detail
    return None


# -- clients -----------------------------------------------------------------------------


def _clients_page(
    request: Request,
    user: ConsoleUser,
    *,
    q: str = "",
    state: State = "",
    group: str = "",
    cursor: str | None = None,
    errors: Iterable[str] = (),
    form: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    disabled, revoked = _state_filters(state)
    page = _page(
        clients_api.list_clients,
        db=request.app.state.db,
        _=user.principal(),
        group=group or None,
        disabled=disabled,
        revoked=revoked,
        q=q or None,
        cursor=cursor,
        limit=PAGE,
    )
    more = None
    if page["next_cursor"]:
        more = "?" + urlencode(
            {"q": q, "state": state, "group": group, "cursor": page["next_cursor"]}
        )
    return render(
        request,
        "clients.html",
        user,
        status_code=status_code,
        items=page["items"],
        more=more,
        filters={"q": q, "state": state, "group": group},
        errors=[*errors, *([page["error"]] if "error" in page else [])],
        form=form or {"id": "", "groups": "", "days": "365"},
        done=request.query_params.get("done"),
        error=request.query_params.get("error"),
        time=human_time,
    )


@router.get("/clients", response_class=HTMLResponse)
def clients(
    request: Request,
    user: User,
    q: str = "",
    state: State = "",
    group: str = "",
    cursor: str | None = None,
) -> HTMLResponse:
    """Clients, filtered by part of the id, state and group."""
    return _clients_page(request, user, q=q[:200], state=state, group=group[:200], cursor=cursor)


def _add_identity(
    request: Request,
    user: ConsoleUser,
    kind: str,
    form: dict[str, str],
    validate: Callable[[dict[str, str]], Any],
    create: Callable[..., dict[str, Any]],
    page: Callable[..., HTMLResponse],
) -> HTMLResponse:
    """Create a client or connector through the REST API's own handler; the answer is the
    page with its bundle (the only time it is shown), or the list page with the errors and
    what was typed."""
    try:
        body = validate({"id": form["id"].strip(), "days": form["days"].strip() or "365"})
        created = create(body, request, Response(), request.app.state.db, user.principal())
    except ValidationError as exc:
        return page(request, user, errors=_errors(exc), form=form, status_code=422)
    except ProblemError as exc:
        return page(request, user, errors=[exc.detail], form=form, status_code=exc.status)
    return _bundle_page(request, user, kind, body.id, created["bundle"])


@router.post("/clients", response_class=HTMLResponse)
def add_client(
    request: Request,
    user: Writer,
    id: Annotated[str, Form()] = "",
    groups: Annotated[str, Form()] = "",
    days: Annotated[str, Form()] = "365",
) -> HTMLResponse:
    """Create a client; the answer is the page with its bundle, the only time it is shown."""
    return _add_identity(
        request,
        user,
        "client",
        {"id": id, "groups": groups, "days": days},
        lambda fields: clients_api.ClientCreate.model_validate(
            {**fields, "groups": _split(groups)}
        ),
        clients_api.create_client,
        _clients_page,
    )


def _client_action(
    request: Request, user: ConsoleUser, client_id: str, next_page: str, what: str
) -> RedirectResponse:
    db = request.app.state.db
    principal = user.principal()
    if what == "revoke":
        error = _call(
            lambda: clients_api.revoke_client(client_id, request, Response(), db, principal)
        )
        done = f"client {client_id} revoked: relays end its sessions"
    else:
        patch = clients_api.ClientPatch(disabled=what == "disable")
        error = _call(
            lambda: clients_api.patch_client(client_id, patch, request, Response(), db, principal)
        )
        done = f"client {client_id} {what}d"
    return back(next_page, "/console/clients", done=None if error else done, error=error)


@router.post("/clients/{client_id}/revoke")
def revoke_client(
    request: Request, user: Writer, client_id: str, next: Annotated[str, Form()] = ""
) -> RedirectResponse:
    """Revoke a client (as POST /api/v1/clients/{id}/revoke): relays end its sessions."""
    return _client_action(request, user, client_id, next, "revoke")


@router.post("/clients/{client_id}/disable")
def disable_client(
    request: Request, user: Writer, client_id: str, next: Annotated[str, Form()] = ""
) -> RedirectResponse:
    """Disable a client (reversible)."""
    return _client_action(request, user, client_id, next, "disable")


@router.post("/clients/{client_id}/enable")
def enable_client(
    request: Request, user: Writer, client_id: str, next: Annotated[str, Form()] = ""
) -> RedirectResponse:
    """Enable a disabled client."""
    return _client_action(request, user, client_id, next, "enable")


# -- connectors --------------------------------------------------------------------------


def _connectors_page(
    request: Request,
    user: ConsoleUser,
    *,
    q: str = "",
    state: State = "",
    cursor: str | None = None,
    errors: Iterable[str] = (),
    form: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    _, revoked = _state_filters(state)
    page = _page(
        connectors_api.list_connectors,
        db=request.app.state.db,
        _=user.principal(),
        revoked=revoked,
        q=q or None,
        cursor=cursor,
        limit=PAGE,
    )
    more = None
    if page["next_cursor"]:
        more = "?" + urlencode({"q": q, "state": state, "cursor": page["next_cursor"]})
    return render(
        request,
        "connectors.html",
        user,
        status_code=status_code,
        items=page["items"],
        live=_live_connectors(request.app.state.db),
        more=more,
        filters={"q": q, "state": state},
        errors=[*errors, *([page["error"]] if "error" in page else [])],
        form=form or {"id": "", "prefixes": "", "days": "365"},
        done=request.query_params.get("done"),
        error=request.query_params.get("error"),
        time=human_time,
    )


@router.get("/connectors", response_class=HTMLResponse)
def connectors(
    request: Request, user: User, q: str = "", state: State = "", cursor: str | None = None
) -> HTMLResponse:
    """Connectors with their prefixes and whether they are connected now."""
    return _connectors_page(request, user, q=q[:200], state=state, cursor=cursor)


@router.post("/connectors", response_class=HTMLResponse)
def add_connector(
    request: Request,
    user: Writer,
    id: Annotated[str, Form()] = "",
    prefixes: Annotated[str, Form()] = "",
    days: Annotated[str, Form()] = "365",
) -> HTMLResponse:
    """Create a connector; the answer is the page with its bundle, shown this once."""
    return _add_identity(
        request,
        user,
        "connector",
        {"id": id, "prefixes": prefixes, "days": days},
        lambda fields: connectors_api.ConnectorCreate.model_validate(
            {**fields, "prefixes": _split(prefixes)}
        ),
        connectors_api.create_connector,
        _connectors_page,
    )


@router.post("/connectors/{connector_id}/prefixes")
def change_prefixes(
    request: Request,
    user: Writer,
    connector_id: str,
    prefixes: Annotated[str, Form()] = "",
) -> RedirectResponse:
    """Replace the prefixes a connector serves."""
    db = request.app.state.db
    try:
        patch = connectors_api.ConnectorPatch.model_validate({"prefixes": _split(prefixes)})
    except ValidationError as exc:
        return back("", "/console/connectors", error="; ".join(_errors(exc)))
    error = _call(
        lambda: connectors_api.patch_connector(
            connector_id, patch, request, Response(), db, user.principal()
        )
    )
    done = f"connector {connector_id} now serves {', '.join(_split(prefixes)) or 'nothing'}"
    return back("", "/console/connectors", done=None if error else done, error=error)


@router.post("/connectors/{connector_id}/revoke")
def revoke_connector(
    request: Request, user: Writer, connector_id: str, next: Annotated[str, Form()] = ""
) -> RedirectResponse:
    """Revoke a connector: relays end its sessions and withdraw its prefixes."""
    db = request.app.state.db
    principal = user.principal()
    error = _call(
        lambda: connectors_api.revoke_connector(connector_id, request, Response(), db, principal)
    )
    done = f"connector {connector_id} revoked"
    return back(next, "/console/connectors", done=None if error else done, error=error)
