"""`zgate-agent why` end to end, in this process: the CLI asks the agent's local endpoint
over loopback HTTP, the agent asks the relay on its own QUIC connection, the relay answers
from its running policy and its record of that agent's denied flows. Another client denied
the same destination stays out of the answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from zgate_agent.app import RelayQueryError
from zgate_agent.cli import main
from zgate_agent.why import LOCAL_PATH, why_query
from zgate_host.httpd import serve_status
from zgate_lab.harness import (
    RawClient,
    compile_policy,
    make_enforcer,
    make_pki,
    running_relay,
    start_agent,
    tcp4,
    until,
)
from zgate_proto.engines import ENGINES
from zgate_proto.session import RequestReceived
from zgate_relay.core import RelayCore

POLICY = """
default: allow
rules:
  - {id: block-db, action: deny, from: ["*"], to: [198.51.100.5/32], ports: [tcp/5432]}
"""
DB = "tcp://198.51.100.5:5432"


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The agent's QUIC engine."""
    name: str = request.param
    return name


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", ["alice", "bob"])


async def test_why_reports_the_rule_and_the_agents_own_denial(
    pki: Path, engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    enforcer = make_enforcer(compile_policy(POLICY))
    async with running_relay(pki, enforcer=enforcer) as relay:
        agent = await start_agent(relay, "alice", quic_engine=engine)
        bob = await RawClient(relay, "bob").start()
        http = serve_status(
            "127.0.0.1",
            0,
            agent.metrics.registry,
            agent.agent.status,
            queries={LOCAL_PATH: why_query(agent.agent, asyncio.get_running_loop())},
        )
        where = http.url.removeprefix("http://")

        async def why(*args: str) -> int:
            return await asyncio.to_thread(main, ["why", *args, "--metrics", where])

        def denied(client: str) -> bool:
            return any(True for _ in enforcer.denials.recent(f"client/{client}"))

        stopped = False
        try:
            agent.device.inject(tcp4(agent.address4, "198.51.100.5", 41000, 5432, 0x02))
            bob.send_packet(tcp4(bob.address4, "198.51.100.5", 42000, 5432, 0x02))
            await until(lambda: denied("alice") and denied("bob"), what="both denials")
            capsys.readouterr()

            assert await why(DB) == 1
            lines = capsys.readouterr().out.splitlines()
            version = enforcer.policy.version
            assert lines[0] == f"{DB}: deny by rule block-db (policy {version})"
            assert "  verdict: deny (rule block-db)" in lines
            assert lines[-2] == "recent denials of this agent there: 1"
            assert lines[-1].endswith("tcp 198.51.100.5:5432  by block-db")

            assert await why(DB, "--json") == 1
            answer = json.loads(capsys.readouterr().out)
            assert answer["client"] == "client/alice"
            assert len(answer["recent_denials"]) == 1  # bob's denial is not alice's business

            assert await why("tcp://198.51.100.6:5432") == 0
            assert "allow by the default" in capsys.readouterr().out

            assert await why("tcp://198.51.100.5") == 2
            assert "tcp needs a port" in capsys.readouterr().err

            seen = relay.metrics.registry.get_sample_value
            assert seen("zgate_relay_why_requests_total", {"result": "deny"}) == 2
            assert seen("zgate_relay_why_requests_total", {"result": "bad_target"}) == 1

            # With the agent stopped there is no tunnel to ask on.
            await agent.stop()
            stopped = True
            assert await why(DB) == 2
            assert "not connected to the relay (state: stopped)" in capsys.readouterr().err
        finally:
            http.close()
            await bob.stop()
            if not stopped:
                await agent.stop()


async def test_a_relay_that_does_not_answer_or_cancels_is_a_clear_error(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cancelled: list[int] = []

    def cancel_some(self: RelayCore, conn: Any, event: RequestReceived, now: float) -> None:
        if "cancel" in event.path:  # a relay in trouble resets the stream; else it is silent
            conn.quic.reset_stream(event.stream_id, 0x102)
            self._dirty.add(conn)
            cancelled.append(event.stream_id)

    monkeypatch.setattr(RelayCore, "_plain_request", cancel_some)
    async with running_relay(pki) as relay:
        agent = await start_agent(relay, "alice")
        try:
            with pytest.raises(RelayQueryError, match=r"did not answer within 0\.3 s"):
                await agent.agent.ask_relay("GET", "/silent", timeout=0.3)
            with pytest.raises(RelayQueryError, match="relay reset the stream"):
                await agent.agent.ask_relay("GET", "/cancel")
            assert len(cancelled) == 1
            # The tunnel is still up: the session did not suffer.
            assert agent.agent.status()["state"] == "connected"
        finally:
            await agent.stop()
