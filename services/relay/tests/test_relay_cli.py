"""The relay's command line: help, settings errors, privileges, the development PKI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zgate_relay.cli import main

SERVE = str(Path(sys.executable).parent / "serve")


def test_help_explains_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in ("4433", "127.0.0.1:9101", ".zgate/pki", "ZGATE_RELAY_", "CAP_NET_ADMIN"):
        assert text in out


def test_bad_setting_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--pool", "10.0.0.0/33"]) == 2
    err = capsys.readouterr().err
    assert "pool" in err and "10.0.0.0/33" in err


def test_bad_yaml_value_names_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text("tun_mtu: 100\n")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "tun_mtu" in err and str(config) in err


def test_flags_beat_environment_beat_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zgate_host.settings import load_settings
    from zgate_relay.settings import RelaySettings

    config = tmp_path / "relay.yaml"
    config.write_text("pool: 10.1.0.0/16\ntun_mtu: 1300\nlisten: 0.0.0.0:1111\n")
    monkeypatch.setenv("ZGATE_RELAY_TUN_MTU", "1350")
    monkeypatch.setenv("ZGATE_RELAY_LISTEN", "0.0.0.0:2222")
    settings = load_settings(RelaySettings, config, {"listen": "0.0.0.0:3333", "pool": None})
    assert str(settings.pool) == "10.1.0.0/16"  # YAML over default
    assert settings.tun_mtu == 1350  # env over YAML
    assert settings.listen_address == ("0.0.0.0", 3333)  # flag over env


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run as an unprivileged user",
)
def test_without_net_admin_it_says_what_it_needs(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            SERVE,
            "--pki",
            str(tmp_path / "pki"),
            "--metrics",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert "CAP_NET_ADMIN" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_flags_creates_a_development_pki_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [SERVE, "--no-egress", "--listen", "127.0.0.1:0", "--metrics", "off"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "relay ready" in line or not line:
                break
        text = "".join(lines)
        assert "DEVELOPMENT PKI" in text
        assert "relay ready" in text
        for name in ("ca.pem", "relay.pem", "relay.key", "crl.pem"):
            assert (tmp_path / ".zgate" / "pki" / name).exists()
        assert (tmp_path / ".zgate" / "pki" / "ca.key").stat().st_mode & 0o777 == 0o600
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
