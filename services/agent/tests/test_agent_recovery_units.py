"""Fast recovery, the sans-IO parts: the liveness deadline on an injected clock, the order
in which several relays are tried, the relay list in settings (flag, YAML, env), the causes
counted."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest

from zgate_agent.app import Agent, TunnelError
from zgate_agent.cli import build_parser
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


def run_until_expired(
    live: Liveness, now: float, answered: bool = False
) -> tuple[list[float], float]:
    """Drive ``live`` from ``now`` as the agent's loop does, the relay never answering
    (``answered``: it acknowledges each probe at once); the probes sent and when it
    expired (or stopped, 60 s on)."""
    probes = []
    stop = now + 60.0
    while not (check := live.check(now)).expired and now < stop:
        if check.probe:
            probes.append(now)
            if answered:
                live.heard(now)
        now = check.next_at
    return probes, now


def test_an_idle_link_never_expires_and_sends_only_the_keepalive() -> None:
    live = Liveness(2.0, start=0.0, keepalive=10.0)
    first = live.check(0.0)
    # Not waiting: no probe, but the loop looks again within probe_every (a local timer).
    assert not first.expired and not first.probe and first.next_at == 0.5
    probes, now = run_until_expired(live, 0.0, answered=True)
    assert now >= 60.0  # a minute idle, silent for far longer than the deadline: kept
    assert probes == [10.0, 20.0, 30.0, 40.0, 50.0]
    # Without a keepalive an idle link sends nothing at all.
    quiet = Liveness(2.0, start=0.0)
    assert run_until_expired(quiet, 0.0, answered=True) == ([], 60.0)


def test_an_unanswered_keepalive_starts_a_wait_held_to_the_deadline() -> None:
    live = Liveness(2.0, start=0.0, keepalive=10.0)
    probes, now = run_until_expired(live, 0.0)
    # The keepalive at 10 s is a send: probed every 0.5 s after it, given up 2 s after it.
    assert probes == [10.0, 10.5, 11.0, 11.5]
    assert now == 12.0 and live.silent_for(now) == 12.0


def test_a_send_starts_a_wait_probed_every_quarter_and_given_up_at_the_deadline() -> None:
    live = Liveness(2.0, start=100.0, keepalive=10.0)
    live.observe(100.0, None)
    assert not live.check(103.0).probe  # idle for 3 s: nothing due
    live.observe(100.0, 103.2)  # the link sent something at 103.2, unanswered since
    check = live.check(103.3)
    assert not check.expired and not check.probe and check.next_at == pytest.approx(103.7)
    probes, now = run_until_expired(live, 103.3)
    # Probes at 0.5, 1.0, 1.5 s after the first unanswered send; given up 2 s after it.
    assert probes == pytest.approx([103.7, 104.2, 104.7])
    assert now == pytest.approx(105.2)


def test_hearing_the_relay_ends_the_wait() -> None:
    live = Liveness(2.0, start=0.0)
    live.observe(0.0, 0.1)
    assert live.check(0.6).probe
    live.observe(0.65, None)  # the probe's acknowledgement: not waiting any more
    check = live.check(0.7)
    assert not check.probe and not check.expired and check.next_at == pytest.approx(1.2)
    assert not live.check(30.0).expired  # idle: no deadline
    live.observe(0.65, 30.0)  # a new send, long after the relay was last heard
    assert not live.check(31.9).expired
    assert live.check(32.0).expired  # 2 s after the send, not after the hearing
    live.observe(None, 30.0)  # nothing new heard: no change
    live.observe(0.1, 30.0)  # an older time: no change
    assert live.last_heard == 0.65


def test_the_start_counts_as_heard_for_a_wait_that_began_before_it() -> None:
    live = Liveness(2.0, start=10.0)
    live.observe(9.0, 9.5)  # the handshake's last datagrams, unanswered when we start
    assert not live.check(11.9).expired
    assert live.check(12.0).expired


def test_our_own_probe_waits_even_before_the_link_sent_it() -> None:
    live = Liveness(2.0, start=0.0, keepalive=1.0)
    assert live.check(1.0).probe
    live.observe(0.0, None)  # the pump has not flushed the PING yet
    assert live.waiting_since == 1.0
    assert live.check(3.0).expired


def test_probe_idle_is_the_behaviour_before() -> None:
    """The switch for benchmarks: an idle link probed every quarter, given up a deadline
    after the relay was last heard."""
    live = Liveness(2.0, start=100.0, keepalive=10.0, probe_idle=True)
    probes, now = run_until_expired(live, 100.0)
    assert probes == [100.5, 101.0, 101.5] and now == 102.0
    kept = Liveness(2.0, start=0.0, keepalive=10.0, probe_idle=True)
    probes, now = run_until_expired(kept, 0.0, answered=True)
    assert now >= 60.0 and len(probes) >= 100  # a probe every 0.5 s, answered


def test_the_probe_idle_switch_is_off_by_default_and_a_flag() -> None:
    assert AgentSettings().liveness_probe_idle is False
    args = build_parser().parse_args(["up", "--liveness-probe-idle"])
    assert args.liveness_probe_idle is True
    assert build_parser().parse_args(["up"]).liveness_probe_idle is None  # the setting's
    flags = {"liveness_probe_idle": True}
    assert load_settings(AgentSettings, None, flags).liveness_probe_idle is True


def test_a_busy_link_is_not_probed_but_a_keepalive_still_goes_out() -> None:
    live = Liveness(2.0, start=0.0, keepalive=1.0)
    probes = []
    for step in range(1, 31):  # sending and heard every 0.1 s for 3 s
        now = step / 10
        live.observe(now - 0.05, now - 0.04)
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
