"""The control plane's four relay endpoints over HTTP (httpx), and nothing else: what to
do with the answers is decided elsewhere. httpx's exceptions stop here, translated into
:class:`ControlError` and its two kinds."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["ControlClient", "ControlError", "ControlRefused", "ControlUnavailable"]


class ControlError(Exception):
    """A call to the control plane failed; ``status`` is the HTTP status if one came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ControlUnavailable(ControlError):
    """No usable answer (network, timeout, 5xx, or a body that is not JSON): try again."""


class ControlRefused(ControlError):
    """The control plane refused the call (4xx); 401/403 mean the token is wrong."""

    @property
    def unauthorized(self) -> bool:
        """The token is missing, unknown, revoked or not a relay token for this relay."""
        return self.status in (401, 403)


class ControlClient:
    """Calls ``{url}/api/v1/relays/{relay}/...`` with the relay's bearer token."""

    def __init__(
        self,
        url: str,
        relay: str,
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        ca_file: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.relay = relay
        self._base = f"{self.url}/api/v1/relays/{quote(relay, safe='')}"
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            verify=ssl.create_default_context(cafile=ca_file) if ca_file is not None else True,
        )

    async def changes(self, since: int, wait: float) -> Any:
        """GET .../changes: held by the control plane up to ``wait`` seconds."""
        # The read timeout must outlast the long poll it waits on.
        timeout = httpx.Timeout(self._timeout, read=wait + self._timeout)
        params = {"since": str(since), "wait": str(int(wait))}
        return await self._call("GET", "changes", params=params, timeout=timeout)

    async def ack(self, seq: int) -> None:
        """POST .../ack: the relay applied everything through ``seq``."""
        await self._call("POST", "ack", json={"seq": seq})

    async def heartbeat(self, body: dict[str, Any]) -> Any:
        """POST .../heartbeat: what the relay runs and its live sessions."""
        return await self._call("POST", "heartbeat", json=body)

    async def ship_audit(self, records: list[dict[str, Any]]) -> Any:
        """POST .../audit: a batch of audit records; the answer counts what was stored."""
        return await self._call("POST", "audit", json={"records": records})

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(self, method: str, endpoint: str, **kwargs: Any) -> Any:
        url = f"{self._base}/{endpoint}"
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ControlUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status >= 400:
            detail = _detail(response)
            error = ControlUnavailable if status >= 500 or status == 429 else ControlRefused
            raise error(f"{method} {url}: HTTP {status}{detail}", status)
        if status == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ControlUnavailable(f"{method} {url}: the answer is not JSON", status) from None


def _detail(response: httpx.Response) -> str:
    """The problem document's title/detail, if the error came with one."""
    try:
        problem = response.json()
    except ValueError:
        return ""
    if not isinstance(problem, dict):
        return ""
    parts = [str(problem[k]) for k in ("title", "detail") if problem.get(k)]
    return f" ({': '.join(parts)})" if parts else ""
