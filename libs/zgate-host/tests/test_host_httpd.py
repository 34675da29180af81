"""zgate_host.httpd: /metrics, /status, health, POST actions and their failures, over a real
loopback socket; close() stops the serving thread."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest
from prometheus_client import CollectorRegistry, Counter

from zgate_host.httpd import StatusServer, serve_status


def _get(url: str, method: str = "GET") -> tuple[int, str, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read().decode()


def _fail() -> dict[str, Any]:
    raise RuntimeError("policy file vanished")


@pytest.fixture
def server() -> Iterator[StatusServer]:
    registry = CollectorRegistry()
    Counter("zgate_test_things", "Things counted.", registry=registry).inc(3)
    served = serve_status(
        "127.0.0.1",
        0,
        registry,
        status=lambda: {"sessions": 2, "since": 1.5},
        actions={
            "/reload": lambda: {"ok": True, "version": "abc"},
            "/refuse": lambda: {"ok": False, "error": "policy invalid"},
            "/fail": _fail,
        },
    )
    yield served
    served.close()


def test_metrics_status_and_health(server: StatusServer) -> None:
    code, kind, body = _get(server.url + "/metrics")
    assert code == 200 and kind.startswith("text/plain")
    assert "zgate_test_things_total 3.0" in body
    code, kind, body = _get(server.url + "/status?verbose=1")
    assert (code, kind) == (200, "application/json")
    assert json.loads(body) == {"sessions": 2, "since": 1.5}
    for path in ("/", "/healthz"):
        assert _get(server.url + path)[::2] == (200, "ok\n")
    assert _get(server.url + "/nothing")[::2] == (404, "not found\n")


def test_actions_answer_with_their_result_and_refusals_with_409(server: StatusServer) -> None:
    code, _, body = _get(server.url + "/reload", "POST")
    assert (code, json.loads(body)) == (200, {"ok": True, "version": "abc"})
    code, _, body = _get(server.url + "/refuse", "POST")
    assert (code, json.loads(body)) == (409, {"ok": False, "error": "policy invalid"})
    code, _, body = _get(server.url + "/fail", "POST")
    assert code == 409
    assert json.loads(body) == {"ok": False, "error": "RuntimeError: policy file vanished"}
    assert _get(server.url + "/metrics", "POST")[0] == 404


def test_without_a_status_callable_there_is_no_status() -> None:
    server = serve_status("127.0.0.1", 0, CollectorRegistry())
    try:
        assert _get(server.url + "/status")[0] == 404
        assert server.url.startswith("http://127.0.0.1:")
    finally:
        server.close()
    assert not server.thread.is_alive()


def test_an_ipv6_host_is_bracketed_in_the_url(skip_or_fail: Callable[[str], NoReturn]) -> None:
    try:
        server = serve_status("[::1]", 0, CollectorRegistry())
    except OSError as exc:  # a container with IPv6 disabled
        skip_or_fail(f"no IPv6 loopback: {exc}")
    try:
        assert server.address_family == socket.AF_INET6
        assert server.url.startswith("http://[::1]:")
        assert _get(server.url + "/healthz")[0] == 200
    finally:
        server.close()
