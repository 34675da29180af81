"""A small typed client of the control plane's REST API (``/api/v1``) over httpx.

Every failure leaves as a `CtlError`: a refusal as `ApiError` (the problem document with a hint
on what to change), an unreachable server as `ConnectionFailed` naming the URL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import httpx

from .config import TOKEN_ENV, URL_ENV, Connection
from .errors import ApiError, ConnectionFailed

__all__ = ["ControlClient", "Page", "Params"]

#: Seconds for any one request; the API answers at once (no long polls are used here).
TIMEOUT: Final = 30.0
#: The server's largest page (``limit`` 1..500): following every page asks for the largest.
MAX_LIMIT: Final = 500

Params = Mapping[str, str | int | bool | list[str] | None]


@dataclass(frozen=True, slots=True)
class Page:
    """Items of a list and the cursor of the next page (None: nothing more)."""

    items: list[dict[str, Any]]
    next_cursor: str | None

    def as_json(self) -> dict[str, Any]:
        """The page as the API returns it."""
        return {"items": self.items, "next_cursor": self.next_cursor}


def _query(params: Params | None) -> httpx.QueryParams:
    """`params` as a query: None dropped, lists repeated, booleans ``true``/``false``."""
    pairs: list[tuple[str, str | int | float | bool | None]] = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, bool):
            pairs.append((key, "true" if value else "false"))
        elif isinstance(value, list):
            pairs.extend((key, item) for item in value)
        else:
            pairs.append((key, str(value)))
    return httpx.QueryParams(pairs)


class ControlClient:
    """Requests to one control plane as one token; a context manager that closes its pool."""

    def __init__(
        self,
        connection: Connection,
        *,
        timeout: float = TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.connection = connection
        headers = {"Accept": "application/json, application/problem+json"}
        if connection.token:
            headers["Authorization"] = f"Bearer {connection.token}"
        self._http = httpx.Client(
            base_url=connection.api, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # --- requests ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; the response when its status is under 400, else ApiError."""
        request = self._http.build_request(
            method,
            path,
            params=_query(params),
            json=body if body is not None else None,
            headers=dict(headers or {}),
        )
        try:
            response = self._http.send(request)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._refusal(response)
        return response

    def get(self, path: str, params: Params | None = None) -> Any:
        """GET `path`; its JSON body."""
        return self._json(self.request("GET", path, params=params))

    def post(self, path: str, body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        """POST `body` (JSON) to `path`; the JSON answer (None for 204)."""
        return self._json(self.request("POST", path, body=body, headers=headers))

    def patch(self, path: str, body: Any, headers: Mapping[str, str] | None = None) -> Any:
        """PATCH `path` with `body`; the JSON answer."""
        return self._json(self.request("PATCH", path, body=body, headers=headers))

    def delete(self, path: str) -> Any:
        """DELETE `path`; the JSON answer (None for 204)."""
        return self._json(self.request("DELETE", path))

    def page(self, path: str, params: Params | None = None) -> Page:
        """One page of the list at `path`."""
        return self._page(self.get(path, params), path)

    def pages(self, path: str, params: Params | None = None) -> Page:
        """Every item of the list at `path`, following ``next_cursor`` to the end."""
        query = {**(params or {}), "limit": MAX_LIMIT, "cursor": None}
        items: list[dict[str, Any]] = []
        while True:
            page = self.page(path, query)
            items.extend(page.items)
            if page.next_cursor is None:
                return Page(items, None)
            query["cursor"] = page.next_cursor

    @contextmanager
    def stream(self, path: str, params: Params | None = None) -> Iterator[httpx.Response]:
        """A streamed GET of `path` (for exports); ApiError if it is refused."""
        request = self._http.build_request("GET", path, params=_query(params))
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        try:
            if response.status_code >= 400:
                try:
                    response.read()
                except httpx.HTTPError as exc:
                    raise self._unreachable(exc) from None
                raise self._refusal(response)
            yield response
        except httpx.HTTPError as exc:  # the stream broke while being read
            raise self._unreachable(exc) from None
        finally:
            response.close()

    # --- translation ------------------------------------------------------------------------

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.status_code,
                {
                    "title": "Not JSON",
                    "detail": f"{response.request.url} answered {response.status_code} with"
                    f" {response.headers.get('content-type', 'no content type')}",
                },
                hint=self._is_it_zgate(),
            ) from None

    def _page(self, data: Any, path: str) -> Page:
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise ApiError(
                200,
                {"title": "Unexpected answer", "detail": f"{path} did not return a list page"},
                hint=self._is_it_zgate(),
            )
        cursor = data.get("next_cursor")
        return Page(data["items"], cursor if isinstance(cursor, str) and cursor else None)

    def _is_it_zgate(self) -> str:
        conn = self.connection
        return f"is {conn.url} (from {conn.url_from}) a zgate control plane?"

    def _unreachable(self, exc: httpx.HTTPError) -> ConnectionFailed:
        conn = self.connection
        what = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            what = f"no answer in time ({type(exc).__name__})"
        return ConnectionFailed(
            f"cannot reach the control plane at {conn.url} (from {conn.url_from}): {what}\n"
            f"check that zgate-control runs and listens there, and the URL"
            f" (--url, {URL_ENV} or url: in the config file)"
        )

    def _refusal(self, response: httpx.Response) -> ApiError:
        status = response.status_code
        problem: dict[str, Any] | None = None
        try:
            data = json.loads(response.content)
            if isinstance(data, dict) and ("title" in data or "detail" in data):
                problem = data
        except ValueError:
            pass
        hint: str | None = None
        if problem is None:
            text = response.content[:200].decode("utf-8", "replace").strip()
            problem = {"title": f"HTTP {status} {response.reason_phrase}".strip(), "detail": text}
            hint = self._is_it_zgate()
        conn = self.connection
        if status == 401:
            given = (
                f"the control plane refused the token from {conn.token_from}"
                if conn.token_from
                else "no token was given"
            )
            hint = (
                f"{given}: pass a valid API token (zgt_...) with --token, --token-file,"
                f" {TOKEN_ENV} or token: in the config file"
            )
        elif status == 403:
            hint = (
                "the token's role may not do this: writes need an operator or admin token,"
                " tokens an admin token"
            )
        elif status == 412:
            hint = "it changed since it was read: look at it again and retry"
        return ApiError(status, problem, hint)
