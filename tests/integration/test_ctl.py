"""`zgate ctl` against the real control plane: the app over a migrated SQLite database, served
by uvicorn on a loopback port in a background thread, driven through `zgate_cli.main.main`."""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509

from zgate_cli.main import main
from zgate_control.app import create_app
from zgate_control.auth import Role, create_token
from zgate_control.bootstrap import first_start
from zgate_control.db import Database
from zgate_control.settings import ControlSettings
from zgate_pki import CertificateRefused, ChainVerifier
from zgate_policy.chain import Chainer

WAIT = 10.0  # bound on the server's start and stop; both take far less


@dataclass
class Control:
    """A running control plane: its URL, its database and an admin token."""

    url: str
    database: Database
    admin: str

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the API as the admin (test set-up that is not the CLI's job)."""
        response = httpx.request(
            method,
            f"{self.url}/api/v1{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.admin}"},
        )
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def token(self, role: Role) -> str:
        """A new token of `role`."""
        with self.database.session() as session:
            _, text = create_token(session, f"test-{role}", role, "tests")
        return text


@contextlib.contextmanager
def _serve(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WAIT
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the control plane did not start")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Control]:
    """The control plane, and the environment pointing `zgate ctl` at it as an admin."""
    database = Database(f"sqlite:///{tmp_path / 'control.db'}")
    database.upgrade()
    first_start(database, trust_domain="test.zgate", bootstrap_token=False)
    settings = ControlSettings(state_dir=tmp_path / "state", poll_interval=0.2)
    with database.session() as session:
        _, admin = create_token(session, "test-admin", "admin", "tests")
    # No config file of the user running the tests may leak in.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("ZGATE_CONTROL_URL", raising=False)
    monkeypatch.delenv("ZGATE_CONTROL_TOKEN", raising=False)
    try:
        with _serve(create_app(settings, database)) as url:
            monkeypatch.setenv("ZGATE_CONTROL_URL", url)
            monkeypatch.setenv("ZGATE_CONTROL_TOKEN", admin)
            yield Control(url, database, admin)
    finally:
        database.dispose()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`zgate ARGV...`: its exit status, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """`zgate ARGV... --json`, which must succeed; its output parsed."""
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


# --- connection and authentication -----------------------------------------------------------


def test_wrong_token_says_401_and_where_the_token_came_from(
    control: Control, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "ctl", "token", "list", "--token", "zgt_000000000000_" + "x" * 30)
    assert (code, out) == (1, "")
    assert err.startswith("zgate ctl: Not authenticated: missing, malformed, unknown or revoked")
    assert "the token from --token" in err
    assert "ZGATE_CONTROL_TOKEN" in err


def test_no_token_at_all(
    control: Control, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZGATE_CONTROL_TOKEN")
    code, _, err = run(capsys, "ctl", "token", "list")
    assert code == 1
    assert "no token was given" in err


def test_viewer_token_may_not_write(control: Control, capsys: pytest.CaptureFixture[str]) -> None:
    viewer = control.token("viewer")
    code, _, err = run(
        capsys, "ctl", "--token", viewer, "token", "create", "--role", "viewer", "--name", "x"
    )
    assert code == 1
    assert err.startswith("zgate ctl: Forbidden:")
    assert "operator or admin token" in err


def test_unreachable_url_names_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        code, out, err = run(
            capsys, "ctl", "--url", url, "--config", str(tmp_path / "none.yaml"), "relay", "list"
        )
    assert (code, out) == (2, "")
    assert "none.yaml does not exist" in err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        code, out, err = run(capsys, "ctl", "token", "list", "--url", url, "--token", "t")
    assert (code, out) == (1, "")
    assert f"zgate ctl: cannot reach the control plane at {url} (from --url)" in err
    assert "check that zgate-control runs" in err


def test_config_file_gives_url_and_token(
    control: Control,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("ZGATE_CONTROL_URL")
    monkeypatch.delenv("ZGATE_CONTROL_TOKEN")
    config = tmp_path / "ctl.yaml"
    config.write_text(f"url: {control.url}/\ntoken: {control.admin}\n")
    items = run_json(capsys, "ctl", "token", "list", "--config", str(config))["items"]
    assert [t["name"] for t in items] == ["test-admin"]


# --- tokens ------------------------------------------------------------------------------------


def test_token_create_list_revoke(control: Control, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "ctl", "token", "create", "--role", "viewer", "--name", "grafana")
    assert code == 0, err
    text = out.strip()
    assert text.startswith("zgt_")
    assert "shown only this once" in err
    token_id = text.split("_")[1]
    # The new token works.
    code, out, _ = run(capsys, "ctl", "--token", text, "relay", "list")
    assert code == 0

    code, out, _ = run(capsys, "ctl", "token", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "ROLE", "RELAY", "CREATED", "LAST", "USED", "REVOKED"]
    assert any(line.startswith(token_id) and "grafana" in line for line in lines)
    # Columns align: every row has its ROLE where the heading has it.
    at = lines[0].index("ROLE")
    assert {line[at:].split()[0] for line in lines[1:]} == {"admin", "viewer"}

    assert run(capsys, "ctl", "token", "revoke", token_id)[0:2] == (
        0,
        f"revoked token {token_id}\n",
    )
    listed = run_json(capsys, "ctl", "token", "list")["items"]
    assert [t["revoked_at"] is not None for t in listed if t["id"] == token_id] == [True]
    code, _, err = run(capsys, "ctl", "--token", text, "relay", "list")
    assert code == 1 and "Not authenticated" in err
    code, _, err = run(capsys, "ctl", "token", "revoke", "000000000000")
    assert code == 1 and err.startswith("zgate ctl: Not found: no token 000000000000")


def test_token_list_pages(control: Control, capsys: pytest.CaptureFixture[str]) -> None:
    for n in range(4):
        assert run(capsys, "ctl", "token", "create", "--role", "viewer", "--name", f"t{n}")[0] == 0
    code, out, err = run(capsys, "ctl", "token", "list", "--limit", "2")
    assert code == 0
    assert len(out.splitlines()) == 3  # heading + 2
    assert "--all lists everything" in err
    cursor = err.split("--cursor ")[1].split()[0]
    page2 = run_json(capsys, "ctl", "token", "list", "--limit", "2", "--cursor", cursor)
    assert len(page2["items"]) == 2
    everything = run_json(capsys, "ctl", "token", "list", "--all")
    assert len(everything["items"]) == 5
    assert everything["next_cursor"] is None


# --- policies ----------------------------------------------------------------------------------

POLICY = """\
default: deny
groups:
  eng: []
rules:
  - {id: alice-web, action: allow, from: [alice], to: [10.1.0.0/16], ports: [tcp/443]}
  - {id: eng-ssh, action: allow, from: [group:eng], to: [10.2.0.0/16], ports: [tcp/22]}
tests:
  - {from: alice, to: "tcp://10.1.2.3:443", expect: allow}
"""
POLICY_2 = POLICY.replace("tcp/443", "tcp/8443").replace(":443", ":8443")
POLICY_BAD = "default: deny\nrules:\n  - {id: x, action: perhaps, from: [alice]}\n"


def push(capsys: pytest.CaptureFixture[str], path: Path, text: str, *more: str) -> dict[str, Any]:
    path.write_text(text)
    result: dict[str, Any] = run_json(capsys, "ctl", "policy", "push", str(path), *more)
    return result


def test_policy_push_yaml_error_shows_line_and_column(
    control: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(POLICY_BAD)
    code, out, err = run(capsys, "ctl", "policy", "push", str(path))
    assert (code, out) == (1, "")
    first, *rest = err.splitlines()
    assert first.startswith("zgate ctl: ")
    assert any(line.strip().startswith(f"{path}:3:") and "perhaps" in line for line in rest), err

    broken = tmp_path / "broken.yaml"
    broken.write_text("default: deny\nrules: [\n")
    code, _, err = run(capsys, "ctl", "policy", "push", str(broken))
    assert code == 1
    assert f"{broken}:" in err


def test_policy_push_failing_test_is_listed(
    control: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.replace("expect: allow", "expect: deny"))
    code, _, err = run(capsys, "ctl", "policy", "push", str(path))
    assert code == 1
    assert [line for line in err.splitlines() if "FAIL" in line] == [
        f"  {path}:8:5: tests[0]: FAIL alice -> tcp://10.1.2.3:443: allow by alice-web"
        " (expected deny)"
    ]


def test_policy_push_publish_list_show_diff_rollback(
    control: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    code, out, err = run(capsys, "ctl", "policy", "push", str(path), "--comment", "first")
    assert code == 0, err
    assert out.startswith("pushed v1 (2 rules, digest ")
    # The same YAML again is the same version.
    code, out, _ = run(capsys, "ctl", "policy", "push", str(path))
    assert (code, out.split(" is already stored as ")[1][:3]) == (0, "v1 ")

    code, out, err = run(capsys, "ctl", "policy", "publish", "v1")
    assert code == 0, err
    assert out.startswith("published v1 (change ")
    assert run(capsys, "ctl", "policy", "publish", "1")[1] == (
        "v1 is already in force: nothing changed\n"
    )

    second = push(capsys, path, POLICY_2, "--publish", "--comment", "port 8443")
    assert second["version"]["id"] == 2
    assert second["publish"]["changed"] is True

    code, out, _ = run(capsys, "ctl", "policy", "list")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["VERSION", "IN", "FORCE", "RULES"]
    at = lines[0].index("IN FORCE")
    marks = {line.split()[0]: line[at : at + 8].strip() for line in lines[1:]}
    assert marks == {"v2": "*", "v1": ""}
    assert "port 8443" in lines[1]

    listed = run_json(capsys, "ctl", "policy", "list")
    assert [(v["id"], v["published"]) for v in listed["items"]] == [(2, True), (1, False)]

    code, out, _ = run(capsys, "ctl", "policy", "show", "published", "--yaml")
    assert (code, out) == (0, POLICY_2)
    code, out, _ = run(capsys, "ctl", "policy", "show", "v1")
    assert out.startswith("v1 (2 rules, digest ")
    assert "comment: first" in out
    assert out.endswith(POLICY)
    assert run_json(capsys, "ctl", "policy", "show", "1")["yaml"] == POLICY

    code, out, _ = run(capsys, "ctl", "policy", "diff", "1", "published")
    assert code == 0
    assert "-  - {id: alice-web" in out and "+  - {id: alice-web" in out
    assert "rules changed: alice-web" in out
    assert run_json(capsys, "ctl", "policy", "diff", "v1", "v2")["rules"]["changed"] == [
        "alice-web"
    ]

    code, out, _ = run(capsys, "ctl", "policy", "rollback", "v1")
    assert (code, out.split(" (")[0]) == (0, "rolled back to v1")
    assert run_json(capsys, "ctl", "policy", "show", "published")["id"] == 1
    code, _, err = run(capsys, "ctl", "policy", "show", "v9")
    assert code == 1 and err.startswith("zgate ctl: Not found:")
    code, _, err = run(capsys, "ctl", "policy", "show", "latest")
    assert code == 2 and "not a policy version: 'latest'" in err


def test_policy_explain_exit_codes(
    control: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "ctl", "policy", "explain", "published", "--client", "alice", "tcp://10.1.2.3:443"
    )
    assert code == 1 and err.startswith("zgate ctl: Not found: no policy was ever published")
    push(capsys, tmp_path / "p.yaml", POLICY, "--publish")

    code, out, err = run(
        capsys, "ctl", "policy", "explain", "published", "--client", "alice", "tcp://10.1.2.3:443"
    )
    assert code == 0, err
    assert out.splitlines()[0] == "v1: alice -> tcp://10.1.2.3:443"
    assert out.splitlines()[1] == "verdict: allow (rule alice-web)"

    code, out, _ = run(
        capsys, "ctl", "policy", "explain", "1", "--client", "bob", "tcp://10.2.0.1:22"
    )
    assert code == 1
    assert out.splitlines()[1].startswith("verdict: deny")
    assert "note: client bob is not registered" in out

    code, out, _ = run(
        capsys,
        "ctl",
        "policy",
        "explain",
        "1",
        "--client",
        "bob",
        "--group",
        "eng",
        "tcp://10.2.0.1:22",
        "--json",
    )
    assert code == 0
    assert json.loads(out)["rule"] == "eng-ssh"

    code, _, err = run(capsys, "ctl", "policy", "explain", "1", "--client", "bob", "ftp://x")
    assert code == 1 and "zgate ctl: Invalid request" in err


def test_policy_impact(
    control: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    push(capsys, tmp_path / "p.yaml", POLICY, "--publish")
    candidate = tmp_path / "c.yaml"
    candidate.write_text(POLICY_2)
    code, out, err = run(capsys, "ctl", "policy", "impact", "--file", str(candidate), "--days", "2")
    assert code == 0, err
    assert out.startswith("replayed 0 flows (0 distinct) from ")
    result = run_json(
        capsys,
        "ctl",
        "policy",
        "impact",
        "1",
        "--since",
        "2026-01-01T00:00Z",
        "--until",
        "2026-01-02",
    )
    assert result["window"]["since"].startswith("2026-01-01T00:00:00")
    assert result["changes"] == []
    # With recorded flows: alice's two allowed flows to tcp/443 would be denied.
    ship_audit(control)
    code, out, err = run(capsys, "ctl", "policy", "impact", "--file", str(candidate))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("replayed 3 flows (3 distinct) from ")
    heading = next(i for i, line in enumerate(lines) if line.startswith("CLIENT"))
    rows = [line.split() for line in lines[heading + 1 :]]
    assert [row[:3] for row in rows] == [["alice", "loses", "tcp"], ["alice", "loses", "tcp"]]
    assert "note: 2 client(s) not registered" in err
    code, out, _ = run(capsys, "ctl", "policy", "impact", "--file", str(candidate), "--limit", "1")
    assert out.splitlines()[-1] == "(only the first 1 changes are listed: --limit N for more)"

    candidate.write_text(POLICY_BAD)
    code, _, err = run(capsys, "ctl", "policy", "impact", "--file", str(candidate))
    assert code == 1 and f"{candidate}:3:" in err, err
    code, _, err = run(capsys, "ctl", "policy", "impact", "1", "--file", str(candidate))
    assert code == 2
    code, _, err = run(capsys, "ctl", "policy", "impact", "1", "--since", "2d", "--days", "1")
    assert (code, err) == (2, "zgate ctl: give --since or --days, not both\n")


# --- clients -----------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def verify(directory: Path, ident: str, crl_pem: bytes | None = None) -> str:
    """Verify DIR/ID.pem against DIR/ca.pem (and `crl_pem`); the identity."""
    verifier = ChainVerifier(directory / "ca.pem")
    if crl_pem is not None:
        verifier.set_revocations(crl_pem)
    leaf = x509.load_pem_x509_certificate((directory / f"{ident}.pem").read_bytes())
    return verifier.verify(leaf, [], datetime.now(UTC)).ident


def test_client_add_writes_a_verifiable_bundle_once(
    control: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "alice"
    code, stdout, err = run(
        capsys,
        "ctl",
        "client",
        "add",
        "alice",
        "--group",
        "eng",
        "--group",
        "ops",
        "--days",
        "30",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert stdout.startswith("created client alice (serial ")
    assert "groups eng,ops" in stdout
    assert f"wrote {out / 'alice.key'} (0600)" in stdout
    assert "this bundle is shown only once" in err
    assert mode(out / "alice.key") == 0o600
    assert (out / "alice.key").read_text().startswith("-----BEGIN")
    assert verify(out, "alice") == "alice"
    leaf = x509.load_pem_x509_certificate((out / "alice.pem").read_bytes())
    assert leaf.not_valid_after_utc - datetime.now(UTC) < timedelta(days=31)

    # Never overwrites a client's own files: refused before anything is issued (bob does not
    # exist afterwards).
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "bob.key").write_text("keep me")
    code, stdout, err = run(capsys, "ctl", "client", "add", "bob", "--out", str(tmp_path / "bob"))
    assert (code, stdout) == (2, "")
    assert "refusing to overwrite" in err and "bob.key" in err
    assert (tmp_path / "bob" / "bob.key").read_text() == "keep me"
    code, _, err = run(capsys, "ctl", "client", "show", "bob")
    assert code == 1 and "Not found" in err

    # ca.pem is shared: the same CA is kept as it is, so several clients share a directory...
    code, _, err = run(capsys, "ctl", "client", "add", "dave", "--out", str(out))
    assert code == 0, err
    assert verify(out, "dave") == "dave" and verify(out, "alice") == "alice"
    # ...and another CA's ca.pem is never replaced: the bundle is written, the CA beside it.
    (tmp_path / "erin").mkdir()
    (tmp_path / "erin" / "ca.pem").write_text("another CA")
    code, _, err = run(capsys, "ctl", "client", "add", "erin", "--out", str(tmp_path / "erin"))
    assert code == 1 and "holds another CA" in err
    assert (tmp_path / "erin" / "ca.pem").read_text() == "another CA"
    assert (tmp_path / "erin" / "ca.pem.new").read_text().startswith("-----BEGIN CERTIFICATE")
    assert (tmp_path / "erin" / "erin.key").exists()

    # The same id again is a conflict from the server.
    code, _, err = run(capsys, "ctl", "client", "add", "alice", "--out", str(tmp_path / "again"))
    assert code == 1 and err.startswith("zgate ctl: Conflict: client alice already exists")

    created = run_json(capsys, "ctl", "client", "add", "carol", "--out", str(tmp_path / "carol"))
    assert created["client"]["id"] == "carol"
    assert created["files"] == [
        str(tmp_path / "carol" / n) for n in ("carol.pem", "carol.key", "ca.pem")
    ]
    assert "key_pem" not in json.dumps(created)


def test_client_list_disable_enable_revoke(
    control: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for ident, group in (("alice", "eng"), ("bob", "ops")):
        code, _, err = run(
            capsys, "ctl", "client", "add", ident, "--group", group, "--out", str(tmp_path / ident)
        )
        assert code == 0, err
    code, out, _ = run(capsys, "ctl", "client", "list")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "GROUPS", "STATE"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["alice", "eng", "active"],
        ["bob", "ops", "active"],
    ]
    assert [
        c["id"] for c in run_json(capsys, "ctl", "client", "list", "--group", "ops")["items"]
    ] == ["bob"]

    assert run(capsys, "ctl", "client", "disable", "bob")[:2] == (
        0,
        "disabled client bob; relays refuse its certificate\n",
    )
    assert [c["id"] for c in run_json(capsys, "ctl", "client", "list", "--disabled")["items"]] == [
        "bob"
    ]
    assert run_json(capsys, "ctl", "client", "enable", "bob")["disabled"] is False
    assert run_json(capsys, "ctl", "client", "list", "--disabled")["items"] == []

    code, out, err = run(capsys, "ctl", "client", "revoke", "alice", "--reason", "keyCompromise")
    assert code == 0, err
    assert out.startswith("revoked client alice (serial ")
    revoked = run_json(capsys, "ctl", "client", "list", "--revoked")["items"]
    assert [c["id"] for c in revoked] == ["alice"]
    code, out, _ = run(capsys, "ctl", "client", "show", "alice")
    assert "state:     revoked" in out
    # The CRL the control plane now serves refuses alice's certificate.
    crl = control.api("GET", "/ca")["crl_pem"].encode()
    with pytest.raises(CertificateRefused) as refused:
        verify(tmp_path / "alice", "alice", crl)
    assert refused.value.reason == "revoked"
    assert verify(tmp_path / "bob", "bob", crl) == "bob"

    code, _, err = run(capsys, "ctl", "client", "revoke", "alice")
    assert code == 1 and "already revoked" in err

    # A revoked client gets a new certificate (new groups), which the CRL does not refuse.
    code, _, err = run(capsys, "ctl", "client", "reissue", "bob", "--out", str(tmp_path / "b2"))
    assert code == 1 and "holds a valid certificate; revoke it first" in err
    again = tmp_path / "alice-2"
    code, out, err = run(
        capsys, "ctl", "client", "reissue", "alice", "--group", "ops", "--out", str(again)
    )
    assert code == 0, err
    assert out.startswith("re-issued client alice (serial ") and "groups ops" in out
    assert mode(again / "alice.key") == 0o600
    assert verify(again, "alice", control.api("GET", "/ca")["crl_pem"].encode()) == "alice"
    shown = run_json(capsys, "ctl", "client", "show", "alice")
    assert (shown["groups"], shown["revoked_at"]) == (["ops"], None)
    code, _, err = run(capsys, "ctl", "client", "disable", "nobody")
    assert code == 1 and err.startswith("zgate ctl: Not found: no client nobody")


# --- connectors and relays ---------------------------------------------------------------------


def test_connector_add_list_set_prefixes(
    control: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "site-a"
    code, stdout, err = run(
        capsys,
        "ctl",
        "connector",
        "add",
        "site-a",
        "--prefix",
        "10.20.0.0/24",
        "--prefix",
        "10.21.0.0/24",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "prefixes: 10.20.0.0/24,10.21.0.0/24" in stdout
    assert mode(out / "site-a.key") == 0o600
    assert verify(out, "site-a") == "site-a"

    code, stdout, _ = run(capsys, "ctl", "connector", "list")
    assert stdout.splitlines()[1].split()[:3] == ["site-a", "10.20.0.0/24,10.21.0.0/24", "active"]
    code, stdout, err = run(
        capsys, "ctl", "connector", "set-prefixes", "site-a", "--prefix", "10.30.0.0/16"
    )
    assert code == 0, err
    assert run_json(capsys, "ctl", "connector", "show", "site-a")["prefixes"] == ["10.30.0.0/16"]
    code, _, err = run(capsys, "ctl", "connector", "set-prefixes", "site-a", "--prefix", "nope")
    assert code == 1 and "zgate ctl: Invalid request" in err
    code, _, err = run(capsys, "ctl", "connector", "set-prefixes", "site-a")
    assert code == 2 and "--prefix" in err


def test_relay_list_show_and_cert(
    control: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "ctl", "relay", "list")
    assert (code, err) == (0, "no relay has reported yet\n")
    since = datetime.now(UTC).isoformat()
    control.api(
        "POST",
        "/relays/relay-1/heartbeat",
        {
            "applied_seq": 0,
            "software": "zgate-relay 0.1.0",
            "address": "198.51.100.7:443",
            "following": True,
            "sessions": [
                {
                    "session": "s1",
                    "client": "alice",
                    "kind": "client",
                    "addresses": ["100.64.0.2"],
                    "mode": "ip",
                    "since": since,
                    "bytes_in": 10,
                    "bytes_out": 20,
                }
            ],
        },
    )
    code, out, _ = run(capsys, "ctl", "relay", "list")
    assert out.splitlines()[1].split()[:2] == ["relay-1", "198.51.100.7:443"]
    code, out, _ = run(capsys, "ctl", "relay", "show", "relay-1")
    assert code == 0
    assert "address:        198.51.100.7:443" in out
    assert any(line.split()[:3] == ["s1", "alice", "client"] for line in out.splitlines())
    assert run_json(capsys, "ctl", "relay", "show", "relay-1")["live_sessions"][0]["client"] == (
        "alice"
    )
    code, out, _ = run(capsys, "ctl", "relay", "sessions", "--client", "alice")
    assert out.splitlines()[1].split()[:4] == ["relay-1", "s1", "alice", "client"]
    assert run_json(capsys, "ctl", "relay", "sessions", "--client", "bob")["items"] == []

    pki = tmp_path / "pki"
    code, out, err = run(
        capsys,
        "ctl",
        "relay",
        "cert",
        "relay-1",
        "--name",
        "relay.example",
        "--ip",
        "192.0.2.1",
        "--out",
        str(pki),
    )
    assert code == 0, err
    assert sorted(p.name for p in pki.iterdir()) == ["ca.pem", "crl.pem", "relay.key", "relay.pem"]
    assert mode(pki / "relay.key") == 0o600
    assert f"serve --pki {pki}" in out
    cert = x509.load_pem_x509_certificate((pki / "relay.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["relay.example"]
    # The CRL is the CA's: a relay can load the directory as it is.
    ChainVerifier(pki / "ca.pem", pki / "crl.pem")
    code, _, err = run(capsys, "ctl", "relay", "cert", "relay-1", "--name", "x", "--out", str(pki))
    assert code == 2 and "refusing to overwrite" in err
    code, _, err = run(
        capsys,
        "ctl",
        "relay",
        "cert",
        "r",
        "--name",
        "x",
        "--ip",
        "1.2.3",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "not an IP address" in err


# --- audit -------------------------------------------------------------------------------------


def ship_audit(control: Control) -> list[dict[str, Any]]:
    """Three chained records from relay-1, as a relay ships them."""
    chainer = Chainer.new()
    now = datetime.now(UTC).replace(microsecond=0)
    records = []
    for n, (client, dst, verdict, rule) in enumerate(
        [
            ("alice", "10.1.2.3", "allow", "alice-web"),
            ("bob", "10.9.9.9", "deny", "default"),
            ("alice", "10.1.2.4", "allow", "alice-web"),
        ]
    ):
        ts = (now - timedelta(minutes=3 - n)).isoformat().replace("+00:00", "Z")
        record = {
            "ts": ts,
            "event": f"flow.{verdict}",
            "relay": "relay-1",
            "client": client,
            "session": "s1",
            "proto": "tcp",
            "src": "100.64.0.2",
            "sport": 40000 + n,
            "dst": dst,
            "dport": 443,
            "verdict": verdict,
            "rule": rule,
            "policy_version": "abc",
        }
        records.append(chainer.link(record))
    answer = control.api("POST", "/relays/relay-1/audit", {"records": records})
    assert answer["accepted"] == 3, answer
    return records


def test_audit_query_and_export(
    control: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    records = ship_audit(control)
    code, out, err = run(capsys, "ctl", "audit", "query")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "TIME",
        "EVENT",
        "CLIENT",
        "PROTO",
        "DESTINATION",
        "VERDICT",
        "RULE",
        "POLICY",
        "CHAIN",
    ]
    assert lines[2].split()[2:] == [
        "flow.deny",
        "bob",
        "tcp",
        "10.9.9.9:443",
        "deny",
        "default",
        "abc",
        "ok",
    ]

    found = run_json(
        capsys, "ctl", "audit", "query", "--client", "alice", "--verdict", "allow", "--since", "1h"
    )
    assert [r["id"] for r in found["items"]] == [records[2]["id"], records[0]["id"]]
    assert run_json(capsys, "ctl", "audit", "query", "--until", "2000-01-01")["items"] == []
    code, out, err = run(capsys, "ctl", "audit", "query", "--limit", "1")
    assert len(out.splitlines()) == 2 and "--all lists everything" in err
    assert len(run_json(capsys, "ctl", "audit", "query", "--all")["items"]) == 3

    target = tmp_path / "audit.jsonl"
    code, out, err = run(capsys, "ctl", "audit", "export", "-o", str(target))
    assert (code, out) == (0, "")
    assert err == f"exported 3 records to {target}\n"
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["hash"] for r in exported] == [r["hash"] for r in records]
    # What `zgate audit verify` reads: the chain holds.
    code, _, err = run(capsys, "audit", "verify", str(target))
    assert code == 0, err

    code, out, err = run(capsys, "ctl", "audit", "export", "--format", "csv", "--client", "bob")
    assert code == 0
    assert len(out.splitlines()) == 2 and err == "exported 1 record\n"
    code, _, err = run(capsys, "ctl", "audit", "query", "--since", "yesterday")
    assert code == 2 and "not a time: 'yesterday'" in err


def test_json_everywhere_parses(
    control: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Every command's --json output is one JSON document (after a little of everything)."""
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    ship_audit(control)
    commands = [
        ["policy", "push", str(policy)],
        ["policy", "publish", "1"],
        ["policy", "list"],
        ["policy", "show", "1"],
        ["policy", "diff", "1", "1"],
        ["policy", "explain", "1", "--client", "alice", "tcp://10.1.2.3:443"],
        ["policy", "impact", "1"],
        ["policy", "rollback", "1"],
        ["client", "add", "alice", "--out", str(tmp_path / "a")],
        ["client", "list", "--all"],
        ["client", "show", "alice"],
        ["client", "disable", "alice"],
        ["client", "enable", "alice"],
        ["client", "revoke", "alice"],
        ["connector", "add", "site", "--prefix", "10.0.0.0/8", "--out", str(tmp_path / "c")],
        ["connector", "list"],
        ["connector", "set-prefixes", "site", "--prefix", "10.1.0.0/16"],
        ["connector", "revoke", "site"],
        ["relay", "list"],
        ["relay", "show", "relay-1"],
        ["relay", "sessions"],
        ["client", "reissue", "alice", "--out", str(tmp_path / "a2")],
        ["admin-log"],
        ["relay", "cert", "relay-1", "--name", "r.example", "--out", str(tmp_path / "r")],
        ["token", "create", "--role", "operator", "--name", "ci"],
        ["token", "list"],
        ["audit", "query"],
    ]
    for argv in commands:
        code, out, err = run(capsys, "ctl", *argv, "--json")
        assert code == 0, (argv, err)
        json.loads(out)
    # Every change above is in the admin log.
    code, out, _ = run(capsys, "ctl", "admin-log", "--action", "client.revoke")
    assert [line.split()[2:5] for line in out.splitlines()[1:]] == [
        ["test-admin", "admin", "client.revoke"]
    ]
    actions = {
        e["action"] for e in run_json(capsys, "ctl", "admin-log", "--all", "--since", "1h")["items"]
    }
    assert {"policy.create", "policy.publish", "client.create", "token.create"} <= actions
    # --json before the command works as well.
    code, out, _ = run(capsys, "ctl", "--json", "relay", "list")
    assert code == 0 and json.loads(out)["items"][0]["id"] == "relay-1"
