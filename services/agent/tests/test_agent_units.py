"""The agent's pure parts: backoff, route computation, settings, and the status command."""

from __future__ import annotations

import ipaddress
import itertools
import random
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from zgate_agent.app import backoff_delays
from zgate_agent.cli import build_parser, main
from zgate_agent.routes import prefixes_for
from zgate_agent.settings import AgentSettings
from zgate_host.httpd import serve_status
from zgate_host.settings import SettingsError, load_settings
from zgate_proto.capsules import IPAddressRange
from zgate_proto.engines import DEFAULT_ENGINE

ALL4 = IPAddressRange(ipaddress.IPv4Address(0), ipaddress.IPv4Address(2**32 - 1), 0)
ALL6 = IPAddressRange(ipaddress.IPv6Address(0), ipaddress.IPv6Address(2**128 - 1), 0)


def test_backoff_doubles_with_jitter_up_to_the_maximum() -> None:
    delays = list(itertools.islice(backoff_delays(0.5, 8.0, random.Random(1)), 10))
    bounds = [0.5, 1, 2, 4, 8, 8, 8, 8, 8, 8]
    for delay, bound in zip(delays, bounds, strict=True):
        assert bound / 2 <= delay <= bound
    # Jitter: two agents with different random states do not retry in lockstep.
    other = list(itertools.islice(backoff_delays(0.5, 8.0, random.Random(2)), 10))
    assert other != delays


def test_full_tunnel_uses_half_routes() -> None:
    got = prefixes_for([], full_tunnel=True, ipv6=True)
    assert [str(p) for p in got] == ["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"]
    assert [str(p) for p in prefixes_for([], full_tunnel=True, ipv6=False)] == [
        "0.0.0.0/1",
        "128.0.0.0/1",
    ]


def test_split_tunnel_routes_exactly_the_advertised_ranges() -> None:
    ranges = [
        IPAddressRange(ipaddress.IPv4Address("10.1.0.0"), ipaddress.IPv4Address("10.1.255.255"), 0),
        IPAddressRange(
            ipaddress.IPv4Address("192.168.50.0"), ipaddress.IPv4Address("192.168.50.9"), 0
        ),
        ALL6,
    ]
    got = [str(p) for p in prefixes_for(ranges, full_tunnel=False, ipv6=True)]
    assert got == ["10.1.0.0/16", "192.168.50.0/29", "192.168.50.8/31", "::/1", "8000::/1"]
    assert "::/1" not in [str(p) for p in prefixes_for(ranges, full_tunnel=False, ipv6=False)]
    assert [str(p) for p in prefixes_for([ALL4], full_tunnel=False, ipv6=False)] == [
        "0.0.0.0/1",
        "128.0.0.0/1",
    ]


def test_settings_reject_a_bad_relay_address() -> None:
    with pytest.raises(ValueError, match="relay"):
        AgentSettings(relay="relay.example:notaport")
    assert AgentSettings(relay="[2001:db8::1]:4443").relay_address == ("2001:db8::1", 4443)
    assert AgentSettings(relay="relay.example").relay_address == ("relay.example", 4433)


def test_up_refuses_missing_certificate_files(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["up", "--ca", "/nonexistent/ca.pem"]) == 2
    assert "--ca /nonexistent/ca.pem does not exist" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_without_an_agent_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--metrics", f"127.0.0.1:{free_port()}"]) == 1
    assert "is `zgate-agent up` running?" in capsys.readouterr().err


@pytest.mark.parametrize(("state", "code"), [("connected", 0), ("reconnecting", 3)])
def test_status_reports_the_tunnel(
    state: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    status = {
        "state": state,
        "since": 0,
        "relay": "relay:4433",
        "device": "zgate-agent0",
        "mode": "datagram",
        "quic_engine": "qh3",
        "addresses": ["10.100.0.2/32"],
        "routes": ["0.0.0.0/1"],
        "attempts": 2,
        "last_error": "timed out" if state != "connected" else None,
    }
    server = serve_status("127.0.0.1", 0, CollectorRegistry(), lambda: status)
    try:
        port = server.server_address[1]
        assert main(["status", "--metrics", f"127.0.0.1:{port}"]) == code
    finally:
        server.close()
    out = capsys.readouterr().out
    assert f"state:     {state}" in out
    assert "10.100.0.2/32" in out
    assert "engine:    qh3" in out
    assert ("timed out" in out) == (state != "connected")


def test_connect_timeout_from_flag_env_or_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert AgentSettings().connect_timeout == 10.0
    config = tmp_path / "agent.yaml"
    config.write_text("connect_timeout: 4\nbackoff_permanent: 90\n")
    assert load_settings(AgentSettings, config, {}).connect_timeout == 4.0
    assert load_settings(AgentSettings, config, {}).backoff_permanent == 90.0
    monkeypatch.setenv("ZGATE_AGENT_CONNECT_TIMEOUT", "6")
    assert load_settings(AgentSettings, config, {}).connect_timeout == 6.0
    args = build_parser().parse_args(["up", "--connect-timeout", "2.5"])
    assert load_settings(AgentSettings, config, {"connect_timeout": args.connect_timeout}) == (
        load_settings(AgentSettings, config, {"connect_timeout": 2.5})
    )
    assert args.connect_timeout == 2.5
    with pytest.raises(SettingsError, match="connect_timeout"):
        load_settings(AgentSettings, None, {"connect_timeout": 0})


def test_certificate_files_default_to_the_state_dir_not_the_working_directory(
    tmp_path: Path,
) -> None:
    from zgate_agent.settings import AgentSettings

    state = tmp_path / "state"
    settings = AgentSettings(state_dir=state)
    assert (settings.ca, settings.cert, settings.key) == (
        state / "ca.pem",
        state / "agent.pem",
        state / "agent.key",
    )
    given = AgentSettings(state_dir=state, ca=Path("/etc/zgate/ca.pem"))
    assert given.ca == Path("/etc/zgate/ca.pem") and given.key == state / "agent.key"


def test_quic_engine_from_flag_env_or_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert AgentSettings().quic_engine == DEFAULT_ENGINE
    config = tmp_path / "agent.yaml"
    config.write_text("quic_engine: qh3\n")
    assert load_settings(AgentSettings, config, {}).quic_engine == "qh3"
    monkeypatch.setenv("ZGATE_AGENT_QUIC_ENGINE", "aioquic")
    assert load_settings(AgentSettings, config, {}).quic_engine == "aioquic"
    args = build_parser().parse_args(["up", "--quic-engine", "qh3"])
    assert load_settings(AgentSettings, config, {"quic_engine": args.quic_engine}).quic_engine == (
        "qh3"
    )
    with pytest.raises(SettingsError, match="quic_engine"):
        load_settings(AgentSettings, None, {"quic_engine": "picoquic"})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--quic-engine", "picoquic"])
    assert "invalid choice: 'picoquic'" in capsys.readouterr().err


def test_up_help_explains_the_quic_engine(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["up", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--quic-engine {aioquic,qh3}" in text
    assert "the pure-Python reference engine, or qh3, whose QUIC core is compiled" in text
    assert f"[{DEFAULT_ENGINE}]" in text
