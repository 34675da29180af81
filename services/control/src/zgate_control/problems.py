"""Errors as RFC 9457 problem documents (``application/problem+json``).

Endpoints raise `ProblemError`; `install` turns it, FastAPI's validation errors, Starlette's
HTTP errors and anything unexpected into one document shape, declared in the OpenAPI document
through `PROBLEM_RESPONSES` so clients (and schemathesis) can rely on it.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["PROBLEM_RESPONSES", "Problem", "ProblemError", "install", "problem_response"]

log = logging.getLogger("zgate.control.api")

MEDIA_TYPE: Final = "application/problem+json"
_TITLES: Final = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    422: "Invalid request",
    428: "Precondition required",
    500: "Internal error",
    503: "Unavailable",
}


class Problem(BaseModel):
    """An RFC 9457 problem document; extensions (e.g. ``errors``) may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class ProblemError(Exception):
    """Raise to answer with a problem document. `slug` becomes the type
    ``urn:zgate:problem:<slug>``; keyword extensions are added as members."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _TITLES.get(status, "Error")
        self.type = f"urn:zgate:problem:{slug}" if slug else "about:blank"
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(
    request: Request,
    status: int,
    detail: str | None,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> JSONResponse:
    """A problem document for `request`."""
    body: dict[str, Any] = {
        "type": type_,
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    body.update(extensions or {})
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _problem_schema(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description, "content": {MEDIA_TYPE: {}}}


#: Merged into every router's ``responses`` so each operation documents its errors.
PROBLEM_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    400: _problem_schema("Bad request"),
    401: _problem_schema("Missing or invalid token"),
    403: _problem_schema("The token's role may not do this"),
    404: _problem_schema("No such object"),
    409: _problem_schema("Conflicts with the current state"),
    412: _problem_schema("If-Match does not match the current ETag"),
    422: _problem_schema("The request is invalid"),
}


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


def install(app: FastAPI) -> None:
    """Register the handlers that answer every error with a problem document."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            request,
            exc.status,
            exc.detail,
            title=exc.title,
            type_=exc.type,
            headers=exc.headers,
            extensions=exc.extensions,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _location(e.get("loc", ())), "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(
            request, 422, detail, type_="urn:zgate:problem:invalid", extensions={"errors": errors}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(
            request, exc.status_code, str(exc.detail), headers=dict(exc.headers or {})
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"path": request.url.path})
        return problem_response(
            request, 500, "an unexpected error occurred; the control plane's log has the details"
        )
