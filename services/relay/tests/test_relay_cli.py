"""The relay's command line: help, settings errors, privileges, the development PKI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zgate_relay.cli import main

SERVE = str(Path(sys.executable).parent / "serve")


def test_help_explains_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in ("4433", "127.0.0.1:9101", "/var/lib/zgate/relay", "--state-dir", "ZGATE_RELAY_"):
        assert text in out
    assert "CAP_NET_ADMIN" in out


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


@pytest.mark.needs(root=True, tools=("setpriv",), reason="to run as an unprivileged user")
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
            "--state-dir",
            str(tmp_path / "state"),
            "--metrics",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "CAP_NET_ADMIN" in proc.stderr
    assert not (tmp_path / "state").exists()  # refused before it wrote anything
    assert "Traceback" not in proc.stderr


def test_quic_engine_from_yaml_env_and_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zgate_host.settings import load_settings
    from zgate_proto.engines import DEFAULT_ENGINE
    from zgate_relay.cli import build_parser
    from zgate_relay.settings import RelaySettings

    assert load_settings(RelaySettings, None, {}).quic_engine == DEFAULT_ENGINE
    config = tmp_path / "relay.yaml"
    config.write_text("quic_engine: qh3\n")
    assert load_settings(RelaySettings, config, {}).quic_engine == "qh3"
    monkeypatch.setenv("ZGATE_RELAY_QUIC_ENGINE", "aioquic")
    assert load_settings(RelaySettings, config, {}).quic_engine == "aioquic"
    flags = vars(build_parser().parse_args(["--quic-engine", "qh3"]))
    flags = {k: v for k, v in flags.items() if k not in ("config", "debug")}
    assert load_settings(RelaySettings, config, flags).quic_engine == "qh3"


def test_unknown_quic_engine_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text("quic_engine: msquic\n")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "quic_engine" in err and "msquic" in err
    with pytest.raises(SystemExit):
        main(["--quic-engine", "msquic"])


@pytest.mark.parametrize("flag", ["off", "none"])
def test_audit_log_off_on_the_command_line_means_no_audit_file(
    flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # argparse hands the value over as a Path: "off" must not become a file named ./off.
    from zgate_host.settings import load_settings
    from zgate_relay.cli import build_parser
    from zgate_relay.settings import RelaySettings

    monkeypatch.chdir(tmp_path)
    flags = vars(build_parser().parse_args(["--audit-log", flag]))
    flags = {k: v for k, v in flags.items() if k not in ("config", "debug") and v is not None}
    assert load_settings(RelaySettings, None, flags).audit_log is None
    kept = vars(build_parser().parse_args(["--audit-log", "audit.jsonl"]))
    kept = {k: v for k, v in kept.items() if k not in ("config", "debug") and v is not None}
    assert load_settings(RelaySettings, None, kept).audit_log == Path("audit.jsonl")
