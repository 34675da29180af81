"""The control plane over HTTPS: `zgate-control serve --tls-cert/--tls-key`, and a relay's
control client that trusts it through `--control-ca` (and refuses it without)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from zgate_pki import CertificateAuthority
from zgate_relay.control.client import ControlClient, ControlUnavailable

CONTROL = [sys.executable, "-m", "zgate_control.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 it signed: (ca.pem, cert, key)."""
    ca = CertificateAuthority.create("tls.test")
    bundle = ca.issue_relay(["localhost"], ["127.0.0.1"])
    paths = tmp_path / "ca.pem", tmp_path / "control.pem", tmp_path / "control.key"
    for path, data in zip(paths, (ca.cert_pem, bundle.cert_pem, bundle.key_pem), strict=True):
        path.write_bytes(data)
    return paths


async def test_https_serves_and_relays_verify_it(
    tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = tls_files
    state = tmp_path / "state"
    env = {**os.environ, "ZGATE_CONTROL_STATE_DIR": str(state)}
    subprocess.run([*CONTROL, "db", "upgrade"], env=env, check=True, capture_output=True)
    token = subprocess.run(
        [*CONTROL, "token", "create", "--role", "relay", "--relay", "r1"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            *CONTROL,
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        trust = ssl.create_default_context(cafile=ca)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(f"{url}/readyz", verify=trust, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "zgate-control did not serve HTTPS"
                time.sleep(0.05)
        with pytest.raises(httpx.ConnectError):  # plain trust store: an unknown CA
            httpx.get(f"{url}/readyz", timeout=2)
        trusting = ControlClient(url, "r1", token, ca_file=ca)
        try:
            answer = await trusting.heartbeat({"applied_seq": 0, "sessions": []})
            assert answer["relay"] == "r1"
        finally:
            await trusting.aclose()
        doubting = ControlClient(url, "r1", token)
        try:
            with pytest.raises(ControlUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await doubting.heartbeat({"applied_seq": 0, "sessions": []})
        finally:
            await doubting.aclose()
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_a_key_that_does_not_fit_is_one_clear_line(
    tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    _, cert, _ = tls_files
    other = CertificateAuthority.create("other.test").issue_relay(["localhost"], [])
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_bytes(other.key_pem)
    done = subprocess.run(
        [
            *CONTROL,
            "serve",
            "--state-dir",
            str(tmp_path / "s"),
            "--listen",
            f"127.0.0.1:{_free_port()}",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(wrong_key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "cannot use --tls-cert" in done.stderr and "Traceback" not in done.stderr
    alone = subprocess.run(
        [*CONTROL, "serve", "--state-dir", str(tmp_path / "s"), "--tls-cert", str(cert)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert alone.returncode == 2 and "go together" in alone.stderr
