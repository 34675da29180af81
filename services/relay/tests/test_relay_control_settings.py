"""Following a control plane is configured by --control with a token; it excludes a local
policy and local connectors; the heartbeat body is built from the core's status."""

from __future__ import annotations

from pathlib import Path

import pytest

from zgate_host.settings import SettingsError, load_settings
from zgate_relay.cli import build_parser, main
from zgate_relay.control.heartbeat import heartbeat_body
from zgate_relay.settings import RelaySettings


def settings(tmp_path: Path, **flags: object) -> RelaySettings:
    return load_settings(RelaySettings, None, {"state_dir": tmp_path, **flags})


def test_control_with_a_token_or_a_token_file(tmp_path: Path) -> None:
    s = settings(tmp_path, control="https://control.example:8443/", control_token="zgt_a_b")
    assert s.control == "https://control.example:8443"
    assert s.control_token_value() == "zgt_a_b"
    assert "zgt_a_b" not in repr(s)
    token = tmp_path / "token"
    token.write_text("zgt_c_d\n")
    assert (
        settings(tmp_path, control="http://c", control_token_file=token).control_token_value()
        == "zgt_c_d"
    )
    missing = settings(tmp_path, control="http://c", control_token_file=tmp_path / "nope")
    with pytest.raises(ValueError, match="--control-token-file"):
        missing.control_token_value()


def test_control_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZGATE_RELAY_CONTROL", "http://control:8080")
    monkeypatch.setenv("ZGATE_RELAY_CONTROL_TOKEN", "zgt_e_f")
    s = settings(tmp_path)
    assert s.control == "http://control:8080" and s.control_token_value() == "zgt_e_f"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"control": "http://c", "control_token": "t", "policy": "p.yaml"},
            "--policy cannot be used with --control",
        ),
        (
            {"control": "http://c", "control_token": "t", "connectors": ["a=10.0.0.0/8"]},
            "--connector cannot be used",
        ),
        ({"control": "http://c"}, "--control needs the relay's token"),
        ({"control": "ftp://c", "control_token": "t"}, "http:// or https://"),
    ],
    ids=["policy", "connector", "no-token", "scheme"],
)
def test_bad_control_settings_are_refused_at_start(
    tmp_path: Path, flags: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        settings(tmp_path, **flags)


def test_the_flags_exist_and_a_conflict_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = build_parser().format_help()
    for flag in ("--control URL", "--control-token TOKEN", "--control-token-file FILE"):
        assert flag in text
    status = main(
        [
            "--state-dir",
            str(tmp_path),
            "--control",
            "http://c",
            "--control-token",
            "t",
            "--policy",
            "p.yaml",
        ]
    )
    assert status == 2
    assert "--policy cannot be used with --control" in capsys.readouterr().err


def test_the_heartbeat_lists_the_live_sessions() -> None:
    status = {
        "sessions": [
            {
                "session": "abc",
                "client": "client/alice",
                "ident": "alice",
                "kind": "client",
                "peer": "192.0.2.1:5000",
                "addresses": ["10.100.0.2", "fd7a:7a67::2"],
                "mode": "datagram",
                "opened_at": 1764892800.0,
                "bytes_in": 10,
                "bytes_out": 20,
            },
            {"session": "def", "client": "connector/site-a", "kind": "connector", "opened_at": 0},
        ],
        "count": 2,
    }
    body = heartbeat_body(
        status, applied_seq=7, policy_version="0123abcd", software="zgate-relay 0.1.0", address=None
    )
    assert body["applied_seq"] == 7 and body["following"] is True
    assert body["policy_version"] == "0123abcd" and body["software"] == "zgate-relay 0.1.0"
    alice, site = body["sessions"]
    assert alice == {
        "session": "abc",
        "client": "alice",
        "kind": "client",
        "addresses": ["10.100.0.2", "fd7a:7a67::2"],
        "mode": "datagram",
        "since": "2025-12-05T00:00:00+00:00",
        "bytes_in": 20,  # the client's view, as in session.close audit records
        "bytes_out": 10,
    }
    assert site["client"] == "site-a" and site["kind"] == "connector"
