"""Session limits end to end, in one process over loopback QUIC (in-memory devices): the
agent past --max-sessions is refused with 503 and says the relay is full, the one past
--max-sessions-per-client is refused with 429 and says so; each gets in once room frees."""

from __future__ import annotations

from pathlib import Path

import pytest

from zgate_lab.harness import (
    QUIC_ENGINES,
    AgentUnderTest,
    make_pki,
    running_relay,
    start_agent,
    until,
    watching_logs,
)
from zgate_relay.limits import SessionLimits

pytestmark = pytest.mark.parametrize("engine", QUIC_ENGINES)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", ["c0", "c1", "c2", "alice"])


def refusals(relay: object, reason: str) -> float:
    return float(relay.metrics.refusals[reason]._value.get())  # type: ignore[attr-defined]


async def test_the_agent_past_max_sessions_says_the_relay_is_full_then_gets_in(
    pki: Path, engine: str
) -> None:
    limits = SessionLimits(max_sessions=2)
    async with running_relay(pki, engine=engine, limits=limits) as relay:
        first = await start_agent(relay, "c0")
        second = await start_agent(relay, "c1")
        late: AgentUnderTest | None = None
        try:
            with watching_logs("zgate.agent") as agent_logs:
                late = await start_agent(relay, "c2", wait=False)
                await agent_logs.wait_for("the relay is full")
            assert len(relay.server.sessions) == 2
            assert refusals(relay, "relay_full") >= 1
            error = late.agent.status()["last_error"]
            assert error is not None and "503" in error and "--max-sessions" in error
            # Still retrying on its short backoff: it gets in once a session ends.
            await first.stop()
            await until(late.agent.connected.is_set, what="the late agent to get in")
            assert sorted(s.identity.ident for s in relay.server.sessions) == ["c1", "c2"]
        finally:
            for agent in (second, late):
                if agent is not None:
                    await agent.stop()


async def test_a_second_device_on_one_certificate_past_the_limit_gets_429(
    pki: Path, engine: str
) -> None:
    limits = SessionLimits(max_sessions=100, max_sessions_per_client=1)
    async with running_relay(pki, engine=engine, limits=limits) as relay:
        laptop = await start_agent(relay, "alice")
        phone: AgentUnderTest | None = None
        try:
            with watching_logs("zgate.agent") as agent_logs:
                phone = await start_agent(relay, "alice", wait=False)
                await agent_logs.wait_for("for this certificate (429)")
            assert refusals(relay, "client_limit") >= 1
            assert refusals(relay, "relay_full") == 0
            other = await start_agent(relay, "c0")  # another identity is not affected
            await other.stop()
            assert not phone.agent.connected.is_set()
            error = phone.agent.status()["last_error"]
            assert error is not None and "--max-sessions-per-client" in error
        finally:
            for agent in (laptop, phone):
                if agent is not None:
                    await agent.stop()
