"""`zgate audit verify` driven through main([...]): a file or stdin, and the control plane's
export served over loopback by a small HTTP server in the test (its faults too)."""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from zgate_cli.audit_cmd import _split_lines
from zgate_cli.main import main
from zgate_policy.chain import Chainer

TOKEN = "zgt_0123456789ab_secret"


def chain(relay: str, n: int) -> list[dict[str, Any]]:
    chainer = Chainer.new()
    return [
        chainer.link({"ts": f"2026-12-04T10:00:{i:02}.000Z", "event": "flow.allow", "relay": relay})
        for i in range(n)
    ]


def jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_text(jsonl(chain("relay-a", 5)))
    return path


# --- files ----------------------------------------------------------------------------


def test_a_valid_file(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "audit", "verify", str(log_file))
    assert (code, err) == (0, "")
    chain_id = json.loads(log_file.read_text().splitlines()[0])["chain"]
    assert out.splitlines() == [
        f"relay relay-a chain {chain_id}: 5 records, seq 1-5: OK",
        f"{log_file}: OK: 1 chain, 5 records",
    ]


def test_a_deleted_line_is_reported_at_its_line(
    log_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = log_file.read_text().splitlines(keepends=True)
    log_file.write_text("".join(lines[:2] + lines[3:]))
    code, out, _ = run(capsys, "audit", "verify", str(log_file))
    assert code == 1
    assert "4 records, seq 1-5: 1 problem" in out
    assert (
        "  line 3: seq 4: deleted: seq jumps from 2 to 4, 1 record missing before this one" in out
    )
    assert out.splitlines()[-1] == f"{log_file}: FAILED: 1 of 1 chain broken (4 records)"


def test_an_edited_line_and_stray_lines(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = log_file.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("flow.allow", "flow.deny")
    log_file.write_text("".join(lines) + "junk\n")
    code, out, _ = run(capsys, "audit", "verify", str(log_file))
    assert code == 1
    assert "  line 2: seq 2: altered: the hash does not match the record's content" in out
    assert "1 line in no chain:\n  line 6: not JSON: " in out
    assert out.splitlines()[-1].endswith("1 of 1 chain broken, 1 line in no chain (5 records)")


def test_json_report_and_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = chain("relay-a", 3), chain("relay-b", 4)[2:]  # relay-b's file was rotated
    path = tmp_path / "both.jsonl"
    path.write_text(jsonl(a + b))
    code, out, _ = run(capsys, "audit", "verify", "--json", str(path))
    assert code == 0
    report = json.loads(out)
    assert (report["ok"], report["records"], report["unchained"]) == (True, 5, [])
    assert [(r["relay"], r["first_seq"], r["last_seq"], r["ok"]) for r in report["relays"]] == [
        ("relay-a", 1, 3, True),
        ("relay-b", 3, 4, True),
    ]
    [note] = report["relays"][1]["notes"]
    assert note == {
        "position": 4,
        "seq": 3,
        "id": b[0]["id"],
        "problem": "starts at seq 3 (earlier records not in this file)",
    }
    code, out, _ = run(capsys, "audit", "verify", str(path))
    assert "  line 4: note: starts at seq 3 (earlier records not in this file)" in out


def test_many_problems_are_cut_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "junk.jsonl"
    path.write_text("x\n" * 1005)
    code, out, _ = run(capsys, "audit", "verify", str(path))
    assert code == 1
    assert "1005 lines in no chain:" in out and "  ... and 5 more" in out
    assert out.count("not JSON") == 1000


def test_stdin_and_an_empty_file(
    log_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(log_file.read_bytes()))
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, _ = run(capsys, "audit", "verify", "-")
    assert code == 0 and out.endswith("-: OK: 1 chain, 5 records\n")
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    assert run(capsys, "audit", "verify", str(empty))[:2] == (0, f"{empty}: no records\n")


def test_an_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "audit", "verify", str(tmp_path / "missing.jsonl"))
    assert (code, out) == (1, "")
    missing = tmp_path / "missing.jsonl"
    assert err == f"zgate audit verify: cannot read {missing}: No such file or directory\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give a FILE or --control URL (one of them)"),
        (
            ["f.jsonl", "--control", "http://127.0.0.1:1"],
            "give a FILE or --control URL (one of them)",
        ),
        (["f.jsonl", "--token", "t"], "--token and --relay go with --control"),
        (["--control", "ftp://host/"], "--control 'ftp://host/' is not an http(s):// URL"),
        (
            ["--control", "http://127.0.0.1:1"],
            "--control needs a token: --token T or ZGATE_CONTROL_TOKEN",
        ),
    ],
)
def test_usage_errors(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ZGATE_CONTROL_TOKEN", raising=False)
    code, out, err = run(capsys, "audit", "verify", *argv)
    assert (code, out) == (2, "")
    assert err == f"zgate audit verify: {message}\n"


def test_lines_split_on_newlines_only_across_chunks() -> None:
    chunks = iter([b'{"a":', b'1}\n{"b"', b":2}\n\n", b'{"c":3}'])
    assert list(_split_lines(chunks)) == [b'{"a":1}', b'{"b":2}', b"", b'{"c":3}']


# --- the control plane's export -----------------------------------------------------------

Reply = Callable[[BaseHTTPRequestHandler, dict[str, list[str]]], None]


class FakeControl:
    """An HTTP server on loopback answering each path prefix with its own reply."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply] = {}
        self.requests: list[tuple[str, dict[str, list[str]], str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                fake.requests.append((url.path, query, self.headers.get("Authorization")))
                for prefix, reply in fake.routes.items():
                    if url.path == prefix + "/api/v1/audit/export":
                        reply(self, query)
                        return
                send(self, 404, "application/problem+json", b'{"title":"Not Found"}')

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test's output stays readable

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def send(handler: BaseHTTPRequestHandler, status: int, kind: str, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def export_of(records: list[dict[str, Any]]) -> Reply:
    """The export as the control plane serves it: checks the token, filters by relay."""

    def reply(handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        token = handler.headers.get("Authorization")
        if token == "Bearer relay-token":
            body = b'{"title":"Forbidden","status":403,"detail":"role relay may not read audit"}'
            send(handler, 403, "application/problem+json", body)
        elif token != f"Bearer {TOKEN}":
            send(handler, 401, "application/problem+json", b'{"title":"Unauthorized"}')
        else:
            relay = query.get("relay", [None])[0]
            kept = [r for r in records if relay is None or r["relay"] == relay]
            send(handler, 200, "application/x-ndjson", jsonl(kept).encode())

    return reply


@pytest.fixture
def control() -> Iterator[FakeControl]:
    fake = FakeControl()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.close()


def test_control_export_verifies(
    control: FakeControl, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = chain("relay-a", 3), chain("relay-b", 2)
    control.routes[""] = export_of(a + b)
    monkeypatch.setenv("ZGATE_CONTROL_TOKEN", TOKEN)
    code, out, err = run(capsys, "audit", "verify", "--control", control.url + "/")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == f"{control.url}/: OK: 2 chains, 5 records"
    assert control.requests == [("/api/v1/audit/export", {"format": ["jsonl"]}, f"Bearer {TOKEN}")]
    code, out, _ = run(
        capsys, "audit", "verify", "--control", control.url, "--relay", "relay-b", "--json"
    )
    assert code == 0
    assert [r["relay"] for r in json.loads(out)["relays"]] == ["relay-b"]
    assert control.requests[-1][1] == {"format": ["jsonl"], "relay": ["relay-b"]}


def test_control_export_with_a_gap(
    control: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    a = chain("relay-a", 6)
    control.routes[""] = export_of(a[:3] + a[5:])
    code, out, _ = run(capsys, "audit", "verify", "--control", control.url, "--token", TOKEN)
    assert code == 1
    assert (
        "  line 4: seq 6: deleted: seq jumps from 3 to 6, 2 records missing before this one" in out
    )


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (
            "wrong",
            "the control plane refused the token (401) (Unauthorized):"
            " check --token or ZGATE_CONTROL_TOKEN",
        ),
        (
            "relay-token",
            "the token may not export audit records (403) (role relay may not read audit):"
            " use a viewer, operator or admin token",
        ),
    ],
)
def test_control_refuses_the_token(
    token: str, message: str, control: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    control.routes[""] = export_of(chain("relay-a", 1))
    code, out, err = run(capsys, "audit", "verify", "--control", control.url, "--token", token)
    assert (code, out, err) == (1, "", f"zgate audit verify: {message}\n")


def test_control_faults(control: FakeControl, capsys: pytest.CaptureFixture[str]) -> None:
    def html(handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        send(handler, 200, "text/html", b"\n<html><body>Sign in</body></html>\n")

    def failing(handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        body = (
            b'{"type":"about:blank","title":"Internal Server Error","detail":"database is locked"}'
        )
        send(handler, 500, "application/problem+json", body)

    def cut(handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        body = jsonl(chain("relay-a", 2)).encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body) + 1000))  # more than it sends
        handler.end_headers()
        handler.wfile.write(body)
        handler.close_connection = True

    control.routes.update({"/html": html, "/failing": failing, "/cut": cut})

    def error(base: str) -> str:
        code, out, err = run(capsys, "audit", "verify", "--control", base, "--token", TOKEN)
        assert (code, out) == (1, "")
        return err

    assert error(control.url + "/html") == (
        f"zgate audit verify: the answer from {control.url}/html/api/v1/audit/export is not JSON"
        " lines (text/html), it starts b'<html><body>Sign in</body></html>':"
        " is --control the control plane's base URL?\n"
    )
    assert "answered 500 Internal Server Error (database is locked)" in error(
        control.url + "/failing"
    )
    assert (
        f"no audit export at {control.url}/nowhere/api/v1/audit/export (404) (Not Found)"
        in error(control.url + "/nowhere")
    )
    assert (
        f"the download from {control.url}/cut/api/v1/audit/export broke off after line 2: "
        in error(control.url + "/cut")
    )


def test_control_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    code, out, err = run(capsys, "audit", "verify", "--control", url, "--token", TOKEN)
    assert (code, out) == (1, "")
    assert err.startswith(f"zgate audit verify: cannot reach the control plane at {url}: ")
    assert err.endswith("; check --control and that it runs\n")


def test_control_that_never_answers(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as listener:  # accepts (the kernel does) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        code, _, err = run(
            capsys, "audit", "verify", "--control", url, "--token", TOKEN, "--timeout", "0.3"
        )
    assert code == 1
    assert err.startswith(
        f"zgate audit verify: downloading {url}/api/v1/audit/export failed: timed out"
    )
