"""Signing in and out of the console with an API token."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from zgate_control.console.render import render
from zgate_control.console.session import (
    COOKIE,
    LIFETIME,
    SignInRequired,
    check_csrf,
    current_user,
    sign_in,
    sign_out,
)
from zgate_control.problems import ProblemError

__all__ = ["router"]

router = APIRouter(prefix="/console", include_in_schema=False)


def _safe_next(target: str | None) -> str:
    # Only a path of the console: never an open redirect to another site.
    if target and target.startswith("/console/") and not target.startswith("//"):
        return target
    return "/console/"


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request, next: str | None = None) -> Response:
    """The sign-in form (straight to the console when already signed in)."""
    try:
        current_user(request)
        return RedirectResponse(_safe_next(next), status_code=303)
    except SignInRequired:
        return render(request, "sign_in.html", None, next=_safe_next(next), error=None)


@router.post("/sign-in")
async def sign_in_submit(
    request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = "/console/"
) -> Response:
    """Check the token and set the session cookie. A form posted from another site is
    refused (its Origin names that site): nobody can sign a browser into their own account."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.url.netloc:
        raise ProblemError(403, "sign-in from another site's page is refused", slug="origin")
    try:
        session_id, _ = await run_in_threadpool(sign_in, request.app.state.db, token)
    except ProblemError:
        return render(
            request,
            "sign_in.html",
            None,
            status_code=401,
            next=_safe_next(next),
            error="That token is not valid (unknown, revoked or mistyped).",
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(LIFETIME.total_seconds()),
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/sign-out")
async def sign_out_submit(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session and forget the cookie (a form of this session only: another site
    cannot sign the user out)."""
    try:
        user = await run_in_threadpool(current_user, request)
    except SignInRequired:
        user = None
    if user is not None:
        check_csrf(user, csrf)
    await run_in_threadpool(sign_out, request.app.state.db, request.cookies.get(COOKIE))
    response = RedirectResponse("/console/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response
