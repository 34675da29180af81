"""Fast recovery against real relays in this process (loopback QUIC, in-memory devices):
a relay that goes silent (its socket closed, nothing sent: a crash) is given up by an agent
that sends (an application sending a packet every 0.1 s) at the agent's liveness deadline,
not at QUIC's idle timeout, while an idle agent keeps a quiet live relay; the agent comes
back at once when a relay listens on the port again, or moves to the next relay it was
given; answers that are not the relay's (a stateless-reset-shaped datagram from whatever
listens there now) do not keep a dead relay alive. Both agent engines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from zgate_agent.app import Agent
from zgate_agent.metrics import AgentMetrics
from zgate_host.errors import HostError
from zgate_host.memdev import MemoryPacketDevice
from zgate_lab.harness import (
    INTERNET,
    RelayUnderTest,
    agent_settings_for,
    make_pki,
    running_relay,
    udp4,
    until,
)
from zgate_proto.engines import ENGINES
from zgate_proto.session import PacketMode

#: The agents' liveness deadline here (shorter than the default 2 s: the tests stay short).
LIVENESS = 0.6
#: Slack on a loaded 2-core machine (other jobs running) for what takes one deadline or
#: one handshake when it is quiet; still far below the 30-s idle timeout it replaces.
SLACK = 4.0


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", ["alice"])


class Run:
    def __init__(self, agent: Agent, metrics: AgentMetrics, device: MemoryPacketDevice) -> None:
        self.agent, self.metrics, self.device = agent, metrics, device
        self.task = asyncio.create_task(agent.run())

    def losses(self, cause: str) -> float:
        return float(self.metrics.losses.labels(cause)._value.get())

    def relay(self) -> str:
        return str(self.agent.status()["relay"])

    def chatter(self, stack: AsyncExitStack) -> None:
        """An application behind the agent sending a packet every 0.1 s, until the test
        ends: the agent expects the relay to answer it (an idle agent does not)."""

        async def send() -> None:
            while True:
                link = self.agent.link
                if link is not None and link.ready:
                    own = next(a for a in link.info().addresses if a.version == 4)
                    with contextlib.suppress(HostError):
                        self.device.inject(udp4(str(own.network_address), str(INTERNET), b"hi"))
                await asyncio.sleep(0.1)

        task = asyncio.create_task(send())
        stack.callback(task.cancel)

    async def stop(self) -> None:
        self.agent.stop()
        await asyncio.wait_for(self.task, 10)
        self.device.close()


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


def start(relays: list[RelayUnderTest], engine: str, **kw: object) -> Run:
    values: dict[str, object] = {"quic_engine": engine, "liveness": LIVENESS, "idle_timeout": 30.0}
    values.update(kw)
    values["relay"] = [f"127.0.0.1:{r.port}" for r in relays]
    settings = agent_settings_for(
        relays[0].port, relays[0].pki, "alice", PacketMode.DATAGRAM, **values
    )
    device = MemoryPacketDevice("mem-alice")
    metrics = AgentMetrics()
    return Run(Agent(settings, device, metrics, configure_host=False), metrics, device)


def crash(relay: RelayUnderTest) -> None:
    """The relay stops: its socket closes, no CONNECTION_CLOSE goes out."""
    pump = relay.server.pump
    assert pump is not None
    pump.close()


async def test_a_quiet_live_relay_is_kept_and_a_silent_one_given_up_at_the_deadline(
    pki: Path, engine: str, stack: AsyncExitStack
) -> None:
    relay = await stack.enter_async_context(running_relay(pki))
    # A keepalive twice the deadline: between two of them the idle link is not held to it.
    run = start([relay], engine, keepalive=2 * LIVENESS)
    try:
        await asyncio.wait_for(run.agent.connected.wait(), 10)
        link = run.agent.link
        assert link is not None
        # Quiet for five deadlines: only the keepalives go out, and their acknowledgements
        # keep the relay heard; silent for longer than the deadline between them, the
        # idle link is not given up.
        up_at = asyncio.get_running_loop().time()
        await until(
            lambda: (link.last_heard or 0.0) > up_at + 5 * LIVENESS,
            5 * LIVENESS + SLACK,
            "the relay to be heard five deadlines on",
        )
        assert run.agent.connected.is_set() and run.losses("liveness") == 0
        run.chatter(stack)
        crashed = time.monotonic()
        crash(relay)
        await until(lambda: not run.agent.connected.is_set(), LIVENESS + SLACK, "the loss")
        noticed = time.monotonic() - crashed
        assert noticed <= LIVENESS + SLACK, noticed
        assert run.losses("liveness") == 1
        status = run.agent.status()
        assert (
            status["last_error"] == f"tunnel lost: nothing heard from the relay for {LIVENESS:g} s"
        )
        # The same port listens again: the agent is back within a short backoff.
        again = await stack.enter_async_context(running_relay(pki, relay.port))
        listening = time.monotonic()
        await asyncio.wait_for(run.agent.connected.wait(), 5)
        back = time.monotonic() - listening
        assert back <= 1.0 + SLACK, back
        assert again.port == relay.port
        assert run.metrics.reconnect_seconds._sum.get() > 0  # observed once
        print(f"{engine}: noticed {noticed:.2f}s after the crash, back {back:.2f}s after listening")
    finally:
        await run.stop()


async def test_the_agent_moves_to_the_next_relay_when_its_relay_dies(
    pki: Path, engine: str, stack: AsyncExitStack
) -> None:
    first = await stack.enter_async_context(running_relay(pki))
    second = await stack.enter_async_context(running_relay(pki))
    run = start([first, second], engine)
    try:
        await asyncio.wait_for(run.agent.connected.wait(), 10)
        assert run.relay() == f"127.0.0.1:{first.port}"
        assert run.agent.status()["relays"] == [
            f"127.0.0.1:{first.port}",
            f"127.0.0.1:{second.port}",
        ]
        run.chatter(stack)
        crashed = time.monotonic()
        crash(first)
        # Down and up again can fall between two polls (the move took 6 ms here).
        await until(
            lambda: run.agent.connected.is_set() and run.losses("liveness") == 1,
            LIVENESS + 2 * SLACK,
            "the tunnel up again after the loss",
        )
        moved = time.monotonic() - crashed
        assert run.relay() == f"127.0.0.1:{second.port}"
        assert moved <= LIVENESS + SLACK, moved
        gauge = run.metrics.relay.labels(f"127.0.0.1:{second.port}", "127.0.0.1")
        assert gauge._value.get() == 1
        print(f"{engine}: on the second relay {moved:.2f}s after the first crashed")
    finally:
        await run.stop()


async def test_a_first_relay_that_never_answers_is_passed_over_at_the_deadline(
    pki: Path, engine: str, stack: AsyncExitStack
) -> None:
    live = await stack.enter_async_context(running_relay(pki))
    silent = await stack.enter_async_context(running_relay(pki))
    crash(silent)  # nothing listens there any more
    run = start([silent, live], engine, connect_timeout=30.0)
    try:
        began = time.monotonic()
        await asyncio.wait_for(run.agent.connected.wait(), LIVENESS + SLACK)
        assert run.relay() == f"127.0.0.1:{live.port}"
        assert run.losses("unreachable") == 1
        assert time.monotonic() - began <= LIVENESS + SLACK
    finally:
        await run.stop()


class _Resetter(asyncio.DatagramProtocol):
    """Answers every datagram with a short-header packet that decrypts to nothing (shaped
    like a stateless reset: what a restarted relay sends for a connection it lost)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.answered = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > 22:
            reply = bytes([0x40 | (os.urandom(1)[0] & 0x3F)]) + os.urandom(len(data) - 2)
            self.transport.sendto(reply, addr)  # type: ignore[attr-defined]
            self.answered += 1


async def test_answers_that_are_not_the_relays_do_not_keep_it_alive(
    pki: Path, engine: str, stack: AsyncExitStack
) -> None:
    relay = await stack.enter_async_context(running_relay(pki))
    run = start([relay], engine)
    try:
        await asyncio.wait_for(run.agent.connected.wait(), 10)
        run.chatter(stack)
        crash(relay)
        loop = asyncio.get_running_loop()
        transport, resetter = await loop.create_datagram_endpoint(
            _Resetter, local_addr=("127.0.0.1", relay.port)
        )
        stack.callback(transport.close)
        crashed = time.monotonic()
        await until(lambda: not run.agent.connected.is_set(), LIVENESS + SLACK, "the loss")
        assert time.monotonic() - crashed <= LIVENESS + SLACK
        assert resetter.answered >= 1  # it did answer, and that was not taken as the relay
        assert run.losses("liveness") == 1
    finally:
        await run.stop()
