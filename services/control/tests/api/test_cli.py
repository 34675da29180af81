"""zgate-control's command line: serve as an operator starts it, db and token commands, and
the mistakes people make (bad URL, unreachable database, busy port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from zgate_control.cli import main

CONTROL = [sys.executable, "-m", "zgate_control.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _await_ready(url: str, process: subprocess.Popen[str], deadline: float = 30) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"zgate-control exited {process.returncode}: {process.stderr}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("zgate-control did not become ready")


def test_serve_from_another_directory_prints_the_token_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ZGATE_CONTROL_STATE_DIR": str(state)}
    tokens = []
    for _ in range(2):
        process = subprocess.Popen(
            [*CONTROL, "serve", "--listen", f"127.0.0.1:{port}", "--log-format", "text"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _await_ready(url, process)
        finally:
            process.terminate()
            _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        tokens.append(
            [line.strip() for line in err.splitlines() if line.strip().startswith("zgt_")]
        )
    assert len(tokens[0]) == 1 and tokens[1] == []  # shown at the first start only
    assert oct((state / "control.db").stat().st_mode & 0o777) == "0o600"
    token = tokens[0][0]
    process = subprocess.Popen(
        [*CONTROL, "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _await_ready(url, process)
        ok = httpx.get(f"{url}/api/v1/tokens", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["items"][0]["name"] == "bootstrap-admin"
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_db_commands_and_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["db", "current", "--database-url", url]) == 0
    assert "never migrated" in capsys.readouterr().out
    assert main(["token", "create", "--role", "admin", "--database-url", url]) == 2
    assert "db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade", "--database-url", url, "--revision", "0001"]) == 0
    assert "empty -> 0001" in capsys.readouterr().out
    assert main(["db", "current", "--database-url", url]) == 0
    assert "behind" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert "0001 -> " in capsys.readouterr().out
    assert main(["db", "current", "--database-url", url]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (
        main(["token", "create", "--role", "viewer", "--name", "grafana", "--database-url", url])
        == 0
    )
    token = capsys.readouterr().out.strip()
    assert token.startswith("zgt_")
    token_id = token.split("_")[1]
    assert main(["token", "list", "--database-url", url]) == 0
    listing = capsys.readouterr().out
    assert token_id in listing and "grafana" in listing and "active" in listing
    assert main(["token", "revoke", token_id, "--database-url", url]) == 0
    assert main(["token", "revoke", "nosuchtoken", "--database-url", url]) == 2
    assert "no token" in capsys.readouterr().err
    assert (
        main(["token", "create", "--role", "viewer", "--relay", "r1", "--database-url", url]) == 2
    )
    assert main(["db", "downgrade", "base", "--database-url", url]) == 0
    assert "-> empty" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x/y", "unsupported database"),
        ("postgres://u:p@db/zgate", "write postgresql+psycopg://"),
        ("not a url", "cannot parse the database URL"),
        ("sqlite:////nonexistent/dir/c.db", "does not exist"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/zgate", "cannot reach the database"),
    ],
)
def test_bad_database_urls_are_one_clear_line(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "current", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_busy_port_and_bad_listen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = main(["serve", "--state-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}"])
    assert status == 2
    assert "could not listen" in capsys.readouterr().err
    assert main(["serve", "--state-dir", str(tmp_path), "--listen", "host:notaport"]) == 2
    assert "listen" in capsys.readouterr().err


def test_a_stop_answers_the_relays_held_polls(tmp_path: Path) -> None:
    """SIGTERM releases every held long poll with an answer (the relay simply asks again,
    elsewhere or later) instead of cutting it off when the graceful shutdown times out."""
    env = {**os.environ, "ZGATE_CONTROL_STATE_DIR": str(tmp_path)}
    subprocess.run([*CONTROL, "db", "upgrade"], env=env, check=True, capture_output=True)
    token = subprocess.run(
        [*CONTROL, "token", "create", "--role", "relay"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [*CONTROL, "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    answers: list[httpx.Response] = []
    try:
        _await_ready(url, process)
        headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
        poll = threading.Thread(
            target=lambda: answers.append(
                httpx.get(
                    f"{url}/api/v1/relays/r1/changes",
                    params={"since": 0, "wait": 30},
                    headers=headers,
                    timeout=60,
                )
            )
        )
        poll.start()
        end = time.monotonic() + 10
        while "zgate_control_relay_streams 1.0" not in httpx.get(f"{url}/metrics").text:
            assert time.monotonic() < end, "the poll never reached the control plane"
            time.sleep(0.02)
        process.terminate()
        poll.join(timeout=30)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert [a.status_code for a in answers] == [200]
    assert answers[0].json() == {"type": "changes", "changes": [], "head_seq": 0}
    assert "Traceback" not in err
