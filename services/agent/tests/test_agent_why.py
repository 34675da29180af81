"""`zgate-agent why`: the command line, the printout, the CLI against a local endpoint over
loopback HTTP (answers given by hand), and the daemon's /why handler when there is no
tunnel to ask on. Asking a real relay is tests/integration/test_agent_why_relay.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from zgate_agent.app import Agent, RelayQueryError
from zgate_agent.cli import build_parser, main
from zgate_agent.metrics import AgentMetrics
from zgate_agent.settings import AgentSettings
from zgate_agent.why import LOCAL_PATH, WHY_PATH, describe_why, relay_path, why_query
from zgate_host.httpd import StatusServer, serve_status
from zgate_host.memdev import MemoryPacketDevice
from zgate_proto.session import ResponseReceived, SessionError

DENIED: dict[str, Any] = {
    "client": "client/alice",
    "target": "tcp://db.corp:5432",
    "verdict": "deny",
    "rule": "block-db",
    "policy_version": "3f2a9c",
    "explanation": ["verdict: deny (rule block-db)", "principal: alice"],
    "recent_denials": [
        {
            "ts": "2026-12-04T12:00:00+00:00",
            "proto": "tcp",
            "dst": "10.1.2.3",
            "dport": 5432,
            "fqdn": "db.corp",
            "rule": "block-db",
        },
        {
            "ts": "2026-12-04T11:00:00+00:00",
            "proto": "icmp",
            "dst": "10.1.2.3",
            "dport": None,
            "fqdn": None,
            "rule": "block-db",
        },
    ],
}


# ---- the command line ---------------------------------------------------------------------------


def test_why_takes_a_target_the_agents_address_and_json() -> None:
    args = build_parser().parse_args(["why", "tcp://db:5432"])
    assert (args.command, args.target, args.metrics, args.json) == (
        "why",
        "tcp://db:5432",
        "127.0.0.1:9102",
        False,
    )
    args = build_parser().parse_args(["why", "udp://[::1]:53", "--metrics", "[::1]:9200", "--json"])
    assert (args.target, args.metrics, args.json) == ("udp://[::1]:53", "[::1]:9200", True)


def test_why_without_a_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["why"])
    assert exited.value.code == 2
    assert "TARGET" in capsys.readouterr().err


def test_up_and_status_parse_as_before() -> None:
    up = build_parser().parse_args(["up", "--relay", "r:4433", "--mode", "stream"])
    assert (up.command, up.relay, up.mode) == ("up", ["r:4433"], "stream")  # --relay repeats
    assert build_parser().parse_args(["status"]).command == "status"


def test_the_relay_path_carries_the_whole_target_encoded() -> None:
    assert relay_path("tcp://[::1]:53") == f"{WHY_PATH}?target=tcp%3A%2F%2F%5B%3A%3A1%5D%3A53"


# ---- the printout -------------------------------------------------------------------------------


def test_the_printout_leads_with_the_verdict_and_lists_the_denials() -> None:
    lines = describe_why(DENIED)
    assert lines[0] == "tcp://db.corp:5432: deny by rule block-db (policy 3f2a9c)"
    assert lines[1:3] == ["  verdict: deny (rule block-db)", "  principal: alice"]
    assert lines[3] == "recent denials of this agent there: 2"
    assert lines[4] == "  2026-12-04T12:00:00+00:00  tcp 10.1.2.3:5432 (db.corp)  by block-db"
    assert lines[5] == "  2026-12-04T11:00:00+00:00  icmp 10.1.2.3  by block-db"


def test_the_printout_of_the_default_and_of_no_access_control() -> None:
    default = {**DENIED, "rule": "default", "recent_denials": []}
    assert describe_why(default)[0] == "tcp://db.corp:5432: deny by the default (policy 3f2a9c)"
    assert describe_why(default)[-1] == "recent denials of this agent there: none"
    off: dict[str, Any] = {
        "target": "tcp://x:1",
        "verdict": "allow",
        "rule": None,
        "explanation": [],
    }
    assert describe_why(off)[0] == "tcp://x:1: allow (access control is off on this relay)"


# ---- the CLI against an endpoint ----------------------------------------------------------------


@pytest.fixture
def endpoint() -> Iterator[tuple[StatusServer, list[tuple[int, dict[str, Any]]], list[str]]]:
    """A local endpoint whose /why answers what the test queues, noting the targets asked."""
    answers: list[tuple[int, dict[str, Any]]] = []
    asked: list[str] = []

    def why(params: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
        asked.extend(params.get("target", []))
        return answers.pop(0)

    server = serve_status("127.0.0.1", 0, CollectorRegistry(), queries={LOCAL_PATH: why})
    try:
        yield server, answers, asked
    finally:
        server.close()


def address(server: StatusServer) -> str:
    return server.url.removeprefix("http://")


def test_a_denied_target_prints_why_and_exits_1(
    endpoint: tuple[StatusServer, list[tuple[int, dict[str, Any]]], list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, answers, asked = endpoint
    answers.append((200, DENIED))
    assert main(["why", "tcp://db.corp:5432", "--metrics", address(server)]) == 1
    assert asked == ["tcp://db.corp:5432"]
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "tcp://db.corp:5432: deny by rule block-db (policy 3f2a9c)"
    assert "10.1.2.3:5432 (db.corp)" in out


def test_an_allowed_target_exits_0_and_json_prints_the_answer(
    endpoint: tuple[StatusServer, list[tuple[int, dict[str, Any]]], list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, answers, _ = endpoint
    allowed = {**DENIED, "verdict": "allow", "rule": "eng-db", "recent_denials": []}
    answers.append((200, allowed))
    assert main(["why", "tcp://db.corp:5432", "--metrics", address(server), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == allowed


@pytest.mark.parametrize(
    ("status", "answer", "said"),
    [
        (400, {"status": 400, "detail": "'tcp://db': tcp needs a port"}, "tcp needs a port"),
        (503, {"error": "not connected to the relay (state: reconnecting)"}, "not connected"),
    ],
)
def test_a_refusal_or_no_tunnel_exits_2_saying_why(
    endpoint: tuple[StatusServer, list[tuple[int, dict[str, Any]]], list[str]],
    capsys: pytest.CaptureFixture[str],
    status: int,
    answer: dict[str, Any],
    said: str,
) -> None:
    server, answers, _ = endpoint
    answers.append((status, answer))
    assert main(["why", "tcp://db", "--metrics", address(server)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zgate-agent: why tcp://db: ") and said in err


def test_no_agent_listening_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    server = serve_status("127.0.0.1", 0, CollectorRegistry())
    free = address(server)
    server.close()
    assert main(["why", "tcp://db:1", "--metrics", free]) == 2
    assert "is `zgate-agent up` running" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["not-a-target", "db.corp:5432", "http://db.corp", "tcp://"])
def test_a_mistyped_target_is_said_before_asking_anyone(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No agent listens at this address: the answer must come from the target's shape alone.
    assert main(["why", target, "--metrics", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "is not a destination: write tcp://HOST:PORT" in err
    assert "nothing answers" not in err


# ---- the daemon's handler -----------------------------------------------------------------------


async def test_the_daemons_handler_without_a_tunnel_answers_503(tmp_path: Path) -> None:
    settings = AgentSettings(
        relay="127.0.0.1:9", ca=tmp_path / "ca", cert=tmp_path / "c", key=tmp_path / "k"
    )
    device = MemoryPacketDevice("mem-why")
    try:
        agent = Agent(settings, device, AgentMetrics(), configure_host=False)
        handle = why_query(agent, asyncio.get_running_loop(), timeout=0.5)
        status, answer = await asyncio.to_thread(handle, {"target": ["tcp://db:1"]})
        assert (status, answer["error"]) == (503, "not connected to the relay (state: starting)")
        status, answer = await asyncio.to_thread(handle, {})
        assert status == 400 and "give one target" in answer["error"]
    finally:
        device.close()


def test_an_agent_without_why_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    server = serve_status("127.0.0.1", 0, CollectorRegistry())  # an older agent: no /why
    try:
        assert main(["why", "tcp://db:1", "--metrics", address(server)]) == 2
    finally:
        server.close()
    assert capsys.readouterr().err == "zgate-agent: why tcp://db:1: Not Found\n"


class StubAgent:
    """Stands in for the Agent whose ask_relay the handler calls."""

    def __init__(self, body: bytes = b"{}", delay: float = 0.0) -> None:
        self.body = body
        self.delay = delay

    async def ask_relay(self, method: str, path: str, *, timeout: float) -> ResponseReceived:
        await asyncio.sleep(self.delay)
        return ResponseReceived(4, 200, [], self.body)


@pytest.mark.parametrize(
    ("body", "error"),
    [(b"<html>", "is not JSON"), (b"[1, 2]", "is not a JSON object")],
)
async def test_the_daemons_handler_refuses_an_answer_that_is_no_json_object(
    body: bytes, error: str
) -> None:
    handle = why_query(cast(Agent, StubAgent(body)), asyncio.get_running_loop())
    status, answer = await asyncio.to_thread(handle, {"target": ["tcp://db:1"]})
    assert status == 502 and error in answer["error"]


async def test_the_daemons_handler_gives_up_on_a_stuck_loop() -> None:
    agent = StubAgent(delay=3.0)
    handle = why_query(cast(Agent, agent), asyncio.get_running_loop(), timeout=0.01)
    status, answer = await asyncio.to_thread(handle, {"target": ["tcp://db:1"]})
    assert (status, answer["error"]) == (503, "the agent did not answer within 0.01 s")


async def test_asking_on_a_connection_that_just_ended_is_a_clear_error(tmp_path: Path) -> None:
    class EndedLink:
        def request(self, method: str, path: str) -> int:
            raise SessionError("the connection has ended: no more requests")

    settings = AgentSettings(
        relay="127.0.0.1:9", ca=tmp_path / "ca", cert=tmp_path / "c", key=tmp_path / "k"
    )
    device = MemoryPacketDevice("mem-ended")
    try:
        agent = Agent(settings, device, AgentMetrics(), configure_host=False)
        agent._link, agent._pump = cast(Any, EndedLink()), cast(Any, object())
        with pytest.raises(RelayQueryError, match="cannot ask the relay: the connection has ended"):
            await agent.ask_relay("GET", "/x")
    finally:
        device.close()
