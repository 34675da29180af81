"""A small HTTP endpoint for a daemon: Prometheus ``/metrics`` and a JSON ``/status``.

It runs in a thread (prometheus-client's exposition is synchronous), so a slow scraper
never stalls the packet loop. ``status`` is called from that thread: it must only read.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["Query", "StatusServer", "serve_status"]

#: A GET handler: the request's query parameters in, (HTTP status, JSON answer) out.
Query = Callable[[Mapping[str, list[str]]], tuple[int, dict[str, Any]]]


class StatusServer(ThreadingHTTPServer):
    """The HTTP server; ``close()`` stops it and its thread."""

    daemon_threads = True
    thread: threading.Thread

    def close(self) -> None:
        """Stop serving and release the socket."""
        self.shutdown()
        self.server_close()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:9101."""
        host, port = self.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        if ":" in host_text:
            host_text = f"[{host_text}]"
        return f"http://{host_text}:{port}"


class _StatusServer6(StatusServer):
    address_family = socket.AF_INET6


def serve_status(
    host: str,
    port: int,
    registry: CollectorRegistry,
    status: Callable[[], dict[str, Any]] | None = None,
    actions: Mapping[str, Callable[[], dict[str, Any]]] | None = None,
    queries: Mapping[str, Query] | None = None,
) -> StatusServer:
    """Serve /metrics (and /status when given) on host:port in a background thread.

    ``actions`` map a path to a callable run on POST (e.g. ``/reload``); its result is the
    JSON answer. ``queries`` map a path to a handler run on GET with the query parameters
    (e.g. the agent's ``/why``). Both run in the HTTP thread: hand work to the event loop
    thread-safely.
    """
    posts = dict(actions or {})
    gets = dict(queries or {})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path in gets:
                code, result = gets[path](parse_qs(query))
                body = json.dumps(result, default=str).encode() + b"\n"
                self._send(code, "application/json", body)
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/status" and status is not None:
                body = json.dumps(status(), default=str, indent=2).encode() + b"\n"
                self._send(200, "application/json", body)
            elif path in ("/", "/healthz"):
                self._send(200, "text/plain; charset=utf-8", b"ok\n")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def do_POST(self) -> None:
            action = posts.get(self.path.split("?", 1)[0])
            if action is None:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")
                return
            try:
                result = action()
            except Exception as exc:
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            code = 200 if result.get("ok", True) else 409
            self._send(code, "application/json", json.dumps(result, default=str).encode() + b"\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes are not worth a log line each

    bare_host = host.strip("[]")
    server_cls = _StatusServer6 if ":" in bare_host else StatusServer
    server = server_cls((bare_host, port), Handler)
    # close() waits for the serving loop to notice: poll often, so that a service stopping
    # (SIGTERM, Ctrl-C) is not held up by half a second (serve_forever's default).
    server.thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="zgate-http", daemon=True
    )
    server.thread.start()
    return server
