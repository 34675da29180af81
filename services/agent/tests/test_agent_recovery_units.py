"""Fast recovery, the sans-IO parts: the liveness deadline on an injected clock, the order
in which several relays are tried, the relay list in settings (flag, YAML, env), the causes
counted."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest

from zgate_agent.app import Agent, TunnelError
from zgate_agent.cli import main as agent_main
from zgate_agent.failures import CloseInfo, loss_cause
from zgate_agent.liveness import Liveness
from zgate_agent.metrics import AgentMetrics
from zgate_agent.relays import Candidate, Rotation, candidates
from zgate_agent.settings import AgentSettings
from zgate_host.memdev import MemoryPacketDevice
from zgate_host.settings import SettingsError, load_settings

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")
C = ipaddress.ip_address("2001:db8::3")


# ------------------------------------------------------------------------- liveness


def test_a_quiet_link_is_probed_every_quarter_and_given_up_at_the_deadline() -> None:
    live = Liveness(2.0, start=100.0)
    first = live.check(100.0)
    assert not first.expired and not first.probe and first.next_at == 100.5
    probes = []
    now = 100.0
    while not (check := live.check(now)).expired:
        if check.probe:
            probes.append(now)
        now = check.next_at
    # Probes at 0.5, 1.0, 1.5 s; given up exactly 2 s after the relay was last heard.
    assert probes == [100.5, 101.0, 101.5]
    assert now == 102.0 and live.silent_for(now) == 2.0


def test_hearing_the_relay_moves_the_deadline_and_the_next_probe() -> None:
    live = Liveness(2.0, start=0.0)
    assert live.check(0.5).probe
    live.heard(0.6)  # the probe's acknowledgement
    check = live.check(0.7)
    assert not check.probe and check.next_at == pytest.approx(1.1)
    assert not live.check(2.5).expired  # 1.9 s after it was last heard
    assert live.check(2.6).expired
    live.heard(None)  # nothing heard yet: no change
    live.heard(0.1)  # an older time: no change
    assert live.last_heard == 0.6


def test_a_busy_link_is_not_probed_but_a_keepalive_still_goes_out() -> None:
    live = Liveness(2.0, start=0.0, keepalive=1.0)
    probes = []
    for step in range(1, 31):  # the relay heard every 0.1 s for 3 s
        now = step / 10
        live.heard(now)
        if live.check(now).probe:
            probes.append(now)
    assert probes == [1.0, 2.0, 3.0]


def test_a_liveness_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Liveness(0.0, start=0.0)


# ------------------------------------------------------------------- several relays


def test_a_name_with_several_addresses_counts_as_several_in_order() -> None:
    got = candidates(
        [("relay.example", 4433), ("192.0.2.9", 4433), ("down.example", 4433)],
        {
            ("relay.example", 4433): [A, B, A],
            ("192.0.2.9", 4433): [ipaddress.ip_address("192.0.2.9")],
        },
    )
    assert [c.where for c in got] == [
        "relay.example:4433 (192.0.2.1)",
        "relay.example:4433 (192.0.2.2)",
        "192.0.2.9:4433",
        "down.example:4433",  # not resolved: its attempt resolves it and says why
    ]
    assert Candidate("2001:db8::3", 443, C).where == "[2001:db8::3]:443"


def test_failover_moves_to_the_next_at_once_and_backs_off_after_a_whole_round() -> None:
    rot = Rotation([Candidate("a", 1, A), Candidate("b", 1, B), Candidate("c", 1, C)])
    assert rot.current.host == "a" and rot.round_start
    rot.connected()  # up on a
    assert rot.failed() is True and rot.current.host == "b"  # a lost: b at once
    assert not rot.round_start
    assert rot.failed() is True and rot.current.host == "c"
    assert rot.failed() is False and rot.current.host == "a"  # all three failed: back off
    assert rot.round_start
    assert rot.failed() is True and rot.current.host == "b"
    rot.connected()  # b is good: it stays in use, and a new round starts from it
    assert rot.current.host == "b" and rot.round_start
    assert rot.failed() is True and rot.current.host == "c"


def test_a_single_relay_lost_is_retried_after_the_backoff_whose_first_step_is_zero() -> None:
    rot = Rotation([Candidate("a", 1, A)])
    rot.connected()
    assert rot.failed() is False and rot.current.host == "a"


def test_resolving_again_keeps_the_relay_in_use() -> None:
    rot = Rotation([Candidate("n", 1, A), Candidate("n", 1, B)])
    rot.failed()
    assert rot.current.address == B
    rot.replace([Candidate("n", 1, C), Candidate("n", 1, B)])
    assert rot.current.address == B
    rot.replace([Candidate("n", 1, C)])  # B is gone from the name: the first
    assert rot.current.address == C
    rot.replace([])  # nothing resolved: keep what we had
    assert rot.current.address == C


# ------------------------------------------------------------------------- settings


def test_relay_takes_one_string_several_comma_separated_or_a_list(tmp_path: Path) -> None:
    assert AgentSettings(relay="r1:4433").relay == ["r1:4433"]
    assert AgentSettings(relay="r1:4433, r2").relay_hostports == [("r1", 4433), ("r2", 4433)]
    assert AgentSettings(relay=["r1", "r2:1", "r1"]).relay == ["r1", "r2:1"]
    config = tmp_path / "agent.yaml"
    config.write_text("relay:\n  - a.example:4433\n  - b.example:4434\nliveness: 1.5\n")
    settings = load_settings(AgentSettings, config, {})
    assert settings.relay == ["a.example:4433", "b.example:4434"] and settings.liveness == 1.5
    config.write_text("relay: solo.example:4433\n")
    assert load_settings(AgentSettings, config, {}).relay == ["solo.example:4433"]
    # Flags win over the file, and --relay given twice is a list.
    flags = {"relay": ["x:1", "y:2"], "liveness": 0.0}
    settings = load_settings(AgentSettings, config, flags)
    assert settings.relay == ["x:1", "y:2"] and settings.liveness == 0.0


def test_relay_and_liveness_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZGATE_AGENT_RELAY", "e1.example:4433,e2.example")
    monkeypatch.setenv("ZGATE_AGENT_LIVENESS", "3")
    settings = load_settings(AgentSettings, None, {})
    assert settings.relay == ["e1.example:4433", "e2.example"] and settings.liveness == 3.0


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ({"relay": ["r:notaport"]}, "relay"),
        ({"relay": [" , "]}, "at least one relay"),
        ({"liveness": -1.0}, "liveness"),
        ({"liveness": 0.05}, "at least 0.2"),
        ({"backoff_lost_max": 0.0}, "backoff_lost_max"),
    ],
)
def test_bad_relay_or_liveness_values_are_one_clear_error(
    flags: dict[str, object], says: str
) -> None:
    with pytest.raises(SettingsError, match=says):
        load_settings(AgentSettings, None, flags)


def test_the_cli_refuses_a_bad_liveness_with_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert agent_main(["up", "--relay", "a:1", "--relay", "b:2", "--liveness", "-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "liveness" in err[0], err
    with pytest.raises(SystemExit) as exit_info:
        agent_main(["up", "--liveness", "soon"])
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------- causes


def _close(reason: str, *, by_peer: bool, code: int = 0) -> CloseInfo:
    return CloseInfo(code, reason, by_peer=by_peer, handshake_done=True)


def test_each_loss_has_its_cause() -> None:
    assert loss_cause(None, refused=True) == "refused"
    assert loss_cause(None, refused=False) == "closed"
    assert loss_cause(_close("relay shutting down", by_peer=True), refused=False) == "closed"
    assert loss_cause(_close("Idle timeout", by_peer=False), refused=False) == "idle_timeout"
    assert loss_cause(_close("Stateless reset", by_peer=True), refused=False) == "reset"
    assert loss_cause(_close("", by_peer=True, code=0x100 + 42), refused=False) == "refused"
    assert loss_cause(_close("oops", by_peer=False), refused=False) == "error"
    # qh3 on a stateless reset: no close sent by either side, no reason, no code.
    assert loss_cause(_close("", by_peer=False), refused=False) == "reset"
    before_handshake = CloseInfo(0, "", by_peer=False, handshake_done=False)
    assert loss_cause(before_handshake, refused=False) == "error"


def test_the_same_failure_again_and_again_is_warned_at_1_2_4_8_times(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = MemoryPacketDevice("t-repeat")
    try:
        agent = Agent(
            AgentSettings(relay="r:1", state_dir=tmp_path),
            device,
            AgentMetrics(),
            configure_host=False,
        )
        caplog.set_level(logging.DEBUG, logger="zgate.agent")
        relay = agent._rotation.current
        for _ in range(9):
            agent._failed(TunnelError("no answer", cause="unreachable"), 0.5, relay)
        agent._failed(TunnelError("something else"), 0.5, relay)
        said = [(r.levelno, r.__dict__.get("times_in_a_row")) for r in caplog.records]
        warned = [n for level, n in said if level == logging.WARNING]
        assert warned == [None, None, 4, 8, None], said
        assert len(said) == 10  # the rest at debug
    finally:
        device.close()
