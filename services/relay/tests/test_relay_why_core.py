"""`why` through the relay core: two clients on real QUIC over loopback, each denied a flow
to the same destination, each asking on its own connection; each answer names only the
asking client and its own denial, and every question is counted by result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from zgate_lab.harness import (
    RawClient,
    RelayUnderTest,
    compile_policy,
    make_enforcer,
    make_pki,
    running_relay,
    tcp4,
    until,
)
from zgate_proto.engines import ENGINES
from zgate_proto.session import ResponseReceived
from zgate_relay.why import WHY_PATH

POLICY = """
default: allow
rules:
  - {id: block-db, action: deny, from: ["*"], to: [198.51.100.5/32], ports: [tcp/5432]}
"""


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", ["alice", "bob"])


def why_requests(relay: RelayUnderTest, result: str) -> float:
    value = relay.metrics.registry.get_sample_value(
        "zgate_relay_why_requests_total", {"result": result}
    )
    assert value is not None, result
    return value


async def ask(client: RawClient, path: str) -> ResponseReceived:
    stream_id = client.session.request("GET", path)
    client.wake()

    def answer() -> ResponseReceived | None:
        for event in client.events:
            if isinstance(event, ResponseReceived) and event.stream_id == stream_id:
                return event
        return None

    await until(lambda: answer() is not None, what=f"{client.client}'s answer")
    response = answer()
    assert response is not None
    return response


def decoded(response: ResponseReceived) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.body)
    return body


async def test_each_client_hears_only_of_its_own_denials(pki: Path, engine: str) -> None:
    enforcer = make_enforcer(compile_policy(POLICY))
    async with running_relay(pki, engine=engine, enforcer=enforcer) as relay:
        assert why_requests(relay, "deny") == 0
        alice = await RawClient(relay, "alice").start()
        bob = await RawClient(relay, "bob").start()
        try:
            for client, sport in ((alice, 41000), (bob, 42000), (bob, 42001)):
                client.send_packet(tcp4(client.address4, "198.51.100.5", sport, 5432, 0x02))
            await until(
                lambda: (
                    sum(1 for _ in enforcer.denials.recent("client/bob")) == 2
                    and any(True for _ in enforcer.denials.recent("client/alice"))
                ),
                what="the three denials",
            )
            path = f"{WHY_PATH}?target={quote('tcp://198.51.100.5:5432', safe='')}"

            answer = decoded(await ask(alice, path))
            assert (answer["client"], answer["verdict"], answer["rule"]) == (
                "client/alice",
                "deny",
                "block-db",
            )
            assert answer["policy_version"] == enforcer.policy.version
            [denial] = answer["recent_denials"]
            assert (denial["dst"], denial["dport"], denial["rule"]) == (
                "198.51.100.5",
                5432,
                "block-db",
            )
            assert len(decoded(await ask(bob, path))["recent_denials"]) == 2

            missing = await ask(alice, "/.well-known/zgate/nothing")
            assert missing.status == 404
            assert why_requests(relay, "deny") == 2
            assert why_requests(relay, "not_found") == 1
            # The sessions carry on beside the questions.
            assert alice.session.ready and bob.session.ready
        finally:
            await alice.stop()
            await bob.stop()
