"""`zgate ctl`'s API client against a loopback HTTP server that answers what each test needs:
problems, HTML, silence, pages; and the commands' usage errors and bundle writing."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from zgate_cli.ctl.bundles import BundleFile, check_writable, write_bundle
from zgate_cli.ctl.client import ControlClient
from zgate_cli.ctl.config import Connection
from zgate_cli.ctl.errors import ApiError, ConnectionFailed, CtlError, UsageError
from zgate_cli.main import main

Answer = tuple[int, str, bytes]
Route = Callable[["Handler"], Answer | None]


class Handler(BaseHTTPRequestHandler):
    """Answers from the server's `routes` (path -> function of the request)."""

    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read what the client prints, not the server's log

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    def _answer(self) -> None:
        self.server.seen.append(self)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        route = self.server.routes.get(urlsplit(self.path).path)
        answer = route(self) if route else (404, "text/plain", b"no route")
        if answer is None:  # the route handled the connection itself
            return
        status, media, body = answer
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]
    seen: list[Handler]


def problem(status: int, title: str, detail: str, **extra: Any) -> Answer:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return status, "application/problem+json", json.dumps(body).encode()


def ok(data: Any, status: int = 200) -> Answer:
    return status, "application/json", json.dumps(data).encode()


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.routes = {}
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def url_of(server: Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def connect(server: Server, token: str | None = "zgt_t", **kw: Any) -> ControlClient:
    conn = Connection(url_of(server), token, "--url", "--token" if token else None)
    return ControlClient(conn, **kw)


def test_json_requests_and_the_token(server: Server) -> None:
    server.routes["/api/v1/things"] = lambda h: ok(
        {"auth": h.headers.get("Authorization"), "q": h.query, "body": h.body.decode()}
    )
    server.routes["/api/v1/gone"] = lambda h: (204, "text/plain", b"")
    with connect(server) as client:
        got = client.get("/things", {"a": True, "b": False, "c": None, "d": ["x", "y"], "e": 5})
        assert got == {
            "auth": "Bearer zgt_t",
            "q": {"a": ["true"], "b": ["false"], "d": ["x", "y"], "e": ["5"]},
            "body": "",
        }
        assert json.loads(client.post("/things", {"k": 1})["body"]) == {"k": 1}
        assert client.patch("/things", {"k": 2}, {"If-Match": "v1"})["body"] == '{"k":2}'
        assert client.delete("/gone") is None
    with connect(server, token=None) as client:
        assert client.get("/things")["auth"] is None


def test_pages_follows_cursors(server: Server) -> None:
    def pages(h: Handler) -> Answer:
        cursor = h.query.get("cursor", ["0"])[0]
        n = int(cursor)
        return ok({"items": [{"n": n}], "next_cursor": str(n + 1) if n < 2 else None})

    server.routes["/api/v1/list"] = pages
    with connect(server) as client:
        first = client.page("/list")
        assert (first.items, first.next_cursor) == ([{"n": 0}], "1")
        everything = client.pages("/list", {"group": "eng"})
        assert everything.as_json() == {
            "items": [{"n": 0}, {"n": 1}, {"n": 2}],
            "next_cursor": None,
        }
    # Following asks for the largest pages and keeps the filters.
    assert [h.query.get("limit") for h in server.seen[1:]] == [["500"]] * 3
    assert all(h.query.get("group") == ["eng"] for h in server.seen[1:])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (problem(403, "Forbidden", "viewer may not"), "operator or admin token"),
        (problem(412, "Precondition failed", "stale"), "it changed since it was read"),
        (problem(409, "Conflict", "exists"), None),
        ((502, "text/html", b"<html>Bad gateway</html>"), "a zgate control plane?"),
        ((500, "application/json", b"[1, 2]"), "a zgate control plane?"),
    ],
)
def test_refusals_carry_a_hint(server: Server, answer: Answer, expected: str | None) -> None:
    server.routes["/api/v1/x"] = lambda h: answer
    with connect(server) as client, pytest.raises(ApiError) as refused:
        client.get("/x")
    assert refused.value.status == answer[0]
    assert refused.value.hint == expected or (
        expected is not None and expected in str(refused.value)
    )
    if answer[1] == "text/html":
        assert str(refused.value).startswith("HTTP 502 Bad Gateway: <html>Bad gateway</html>")


def test_401_names_the_token_source(server: Server) -> None:
    server.routes["/api/v1/x"] = lambda h: problem(401, "Not authenticated", "bad")
    with connect(server) as client, pytest.raises(ApiError, match="refused the token from --token"):
        client.get("/x")
    with connect(server, token=None) as client, pytest.raises(ApiError, match="no token was given"):
        client.get("/x")


def test_answers_that_are_not_what_the_api_sends(server: Server) -> None:
    server.routes["/api/v1/html"] = lambda h: (200, "text/html", b"<html>login</html>")
    server.routes["/api/v1/notpage"] = lambda h: ok({"rows": []})
    with connect(server) as client:
        with pytest.raises(ApiError, match=r"Not JSON: .*answered 200 with text/html"):
            client.get("/html")
        with pytest.raises(ApiError, match="Unexpected answer: /notpage did not return a list"):
            client.page("/notpage")


def test_unreachable_and_silent_servers(server: Server) -> None:
    release = threading.Event()

    def silent(h: Handler) -> None:
        release.wait(10)
        return None

    server.routes["/api/v1/slow"] = silent

    def hang_up(h: Handler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        h.close_connection = True
        return None

    server.routes["/api/v1/cut"] = hang_up
    try:
        with connect(server, timeout=0.3) as client:
            with pytest.raises(ConnectionFailed, match="no answer in time") as failed:
                client.get("/slow")
            assert f"cannot reach the control plane at {url_of(server)} (from --url)" in str(
                failed.value
            )
            with pytest.raises(ConnectionFailed):
                client.get("/cut")
    finally:
        release.set()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        conn = Connection(f"http://127.0.0.1:{sock.getsockname()[1]}", None, "the default", None)
        with ControlClient(conn) as client, pytest.raises(ConnectionFailed) as failed:
            client.get("/x")
        assert "check that zgate-control runs and listens there" in str(failed.value)
        with ControlClient(conn) as client, pytest.raises(ConnectionFailed), client.stream("/x"):
            pass


def test_stream(server: Server) -> None:
    server.routes["/api/v1/export"] = lambda h: (200, "text/csv", b"a,b\n1,2\n")
    server.routes["/api/v1/refused"] = lambda h: problem(422, "Invalid request", "bad filter")
    with connect(server) as client:
        with client.stream("/export", {"format": "csv"}) as response:
            assert b"".join(response.iter_bytes()) == b"a,b\n1,2\n"
        with (
            pytest.raises(ApiError, match="Invalid request: bad filter"),
            client.stream("/refused"),
        ):
            pass


# --- through main: usage errors, output, files ---------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ZGATE_CONTROL_URL", raising=False)
    monkeypatch.delenv("ZGATE_CONTROL_TOKEN", raising=False)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "ctl")[0] == 2
    assert run(capsys, "ctl", "policy", "explain", "1", "tcp://h:1")[0] == 2  # no --client
    code, _, err = run(capsys, "ctl", "policy", "show", "v0")
    assert code == 2 and "not a policy version" in err
    code, _, err = run(capsys, "ctl", "token", "list", "--token", "a", "--token-file", "b")
    assert (code, err) == (2, "zgate ctl: give --token or --token-file, not both\n")
    code, _, err = run(capsys, "ctl", "policy", "push", str(tmp_path / "none.yaml"))
    assert code == 2 and "cannot read" in err


def test_lists_show_the_next_page_hint(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    server.routes["/api/v1/relays"] = lambda h: ok(
        {"items": [{"id": "r1", "following": True, "sessions": 2}], "next_cursor": "abc"}
    )
    code, out, err = run(capsys, "ctl", "--url", url_of(server), "relay", "list")
    assert code == 0
    assert out.splitlines()[1].split()[:1] == ["r1"]
    assert err == "(more exist: --all lists everything, --cursor abc the next page)\n"
    code, out, err = run(capsys, "ctl", "relay", "list", "--url", url_of(server), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["next_cursor"] == "abc"


def test_bundle_refused_before_the_request(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "alice.key").write_text("old key")
    code, _, err = run(
        capsys, "ctl", "--url", url_of(server), "client", "add", "alice", "--out", str(tmp_path)
    )
    assert code == 2 and "refusing to overwrite" in err and "alice.key" in err
    assert server.seen == []  # nothing was issued
    file = tmp_path / "file"
    file.write_text("")
    code, _, err = run(
        capsys,
        "ctl",
        "--url",
        url_of(server),
        "relay",
        "cert",
        "r",
        "--name",
        "n",
        "--out",
        str(file),
    )
    assert (code, err) == (2, f"zgate ctl: --out {file} is not a directory\n")
    assert server.seen == []


def test_an_answer_without_a_bundle(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server.routes["/api/v1/clients"] = lambda h: ok({"client": {"id": "alice"}}, 201)
    code, _, err = run(
        capsys,
        "ctl",
        "--url",
        url_of(server),
        "client",
        "add",
        "alice",
        "--out",
        str(tmp_path / "o"),
    )
    assert (code, err) == (1, "zgate ctl: the control plane's answer holds no bundle for alice\n")


def test_write_bundle(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    paths = write_bundle(out, [BundleFile("a.pem", "A"), BundleFile("a.key", "K", private=True)])
    assert paths == [out / "a.pem", out / "a.key"]
    assert (out.stat().st_mode & 0o777, (out / "a.key").stat().st_mode & 0o777) == (0o700, 0o600)
    with pytest.raises(UsageError, match="refusing to overwrite"):
        check_writable(out, ["a.pem", "b.pem"])
    check_writable(out, ["b.pem"])
    # A file that appeared meanwhile is not overwritten either.
    with pytest.raises(CtlError, match=r"cannot write the bundle .* \(wrote .*b.pem\)"):
        write_bundle(out, [BundleFile("b.pem", "B"), BundleFile("a.pem", "X")])
    assert (out / "a.pem").read_text() == "A"
