"""Applying control-plane steps to the relay's real parts: the policy manager (text from
the control plane, refused text keeps the running version), the certificate verifier
(a CRL signed by the CA, blocked serials), the connectors' prefixes; and the follower
not acknowledging past what failed."""

from __future__ import annotations

import ipaddress
import logging
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from zgate_pki import ChainVerifier, Identity, revoke_certificate
from zgate_policy.audit import AuditEvent, PolicyLoaded, PolicyRefused
from zgate_proto.capsules import IPAddressRange
from zgate_relay.control.apply import Applier, ApplyFailed
from zgate_relay.control.backoff import Backoff
from zgate_relay.control.boot import Boot
from zgate_relay.control.client import ControlClient
from zgate_relay.control.follower import Follower
from zgate_relay.control.metrics import ControlMetrics
from zgate_relay.control.plan import (
    EndSession,
    InstallConnectors,
    InstallPolicy,
    InstallRevocations,
)
from zgate_relay.control.state import ControlState, PublishedPolicy
from zgate_relay.metrics import RelayMetrics
from zgate_relay.policy import PolicyManager
from zgate_relay.session import RelaySession
from zgate_relay.sites import SiteRoutes
from zgate_testkit.pki import make_pki

GOOD = PublishedPolicy(
    4, "x", "default: deny\nrules:\n  - {id: a, action: allow, from: [alice], to: [10.0.0.0/8]}\n"
)
COUNTRY = PublishedPolicy(
    5,
    "y",
    "default: deny\nrules:\n  - {id: c, action: allow, from: [alice], to: [{country: [FR]}]}\n",
)


class Parts:
    def __init__(self, pki: Path) -> None:
        self.audit: list[AuditEvent] = []
        self.metrics = RelayMetrics()
        self.policies = PolicyManager(
            None,
            geoip_available=False,
            metrics=self.metrics,
            relay_name="r1",
            audit=self.audit.append,
        )
        self.verifier = ChainVerifier(pki / "ca.pem", pki / "crl.pem")
        self.sites = SiteRoutes({"site-a": [ipaddress.ip_network("192.168.50.0/24")]})
        self.ended = 0
        self.applier = Applier(
            policies=self.policies,
            verifier=self.verifier,
            end_revoked=self._end,
            sites=self.sites,
        )

    def _end(self) -> int:
        self.ended += 1
        return 0


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", ["alice", "bob"]).directory


@pytest.fixture
def parts(pki: Path) -> Parts:
    p = Parts(pki)
    Boot(ControlState(), None, pki / "unused").install_policy(p.policies)
    return p


def serial_of(pki: Path, client: str) -> int:
    cert = x509.load_pem_x509_certificate((pki / "clients" / f"{client}.pem").read_bytes())
    return cert.serial_number


async def test_a_published_policy_replaces_deny_all(parts: Parts) -> None:
    assert parts.policies.current is not None
    assert parts.policies.current.default.verdict == "deny"
    await parts.applier.apply(InstallPolicy(1, GOOD))
    assert [r.id for r in parts.policies.current.rules] == ["a"]
    loaded = [e for e in parts.audit if isinstance(e, PolicyLoaded)]
    assert [e.source for e in loaded] == ["control", "control"]


async def test_a_policy_this_relay_cannot_use_is_refused_and_the_old_one_stays(
    parts: Parts,
) -> None:
    await parts.applier.apply(InstallPolicy(1, GOOD))
    running = parts.policies.current
    assert running is not None
    with pytest.raises(ApplyFailed) as failed:
        await parts.applier.apply(InstallPolicy(2, COUNTRY))  # needs a GeoIP database
    assert failed.value.kind == "policy" and "control v5" in str(failed.value)
    assert parts.policies.current is running
    assert isinstance(parts.audit[-1], PolicyRefused)
    # A reload compiles the control plane's text again, never a file or allow-all.
    again = await parts.policies.reload("sighup")
    assert again.ok and again.version == running.version


async def test_no_published_policy_means_deny_all(parts: Parts) -> None:
    await parts.applier.apply(InstallPolicy(1, GOOD))
    await parts.applier.apply(InstallPolicy(2, None))
    assert parts.policies.current is not None
    assert parts.policies.current.default.verdict == "deny" and not parts.policies.current.rules


async def test_revocations_from_a_crl_and_blocked_serials(parts: Parts, pki: Path) -> None:
    revoke_certificate(pki, "alice")
    crl = (pki / "crl.pem").read_text()
    bob = serial_of(pki, "bob")
    await parts.applier.apply(InstallRevocations(3, crl, (f"{bob:x}",)))
    assert parts.verifier.revoked_serials() >= {serial_of(pki, "alice"), bob}
    assert parts.ended == 1  # live sessions were checked at once


async def test_a_crl_from_another_ca_is_refused_and_the_old_lists_stay(
    parts: Parts, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other", ["mallory"]).directory
    revoke_certificate(other, "mallory")
    await parts.applier.apply(InstallRevocations(1, "", ("ab",)))
    with pytest.raises(ApplyFailed) as failed:
        await parts.applier.apply(InstallRevocations(2, (other / "crl.pem").read_text(), ()))
    assert failed.value.kind == "revocation"
    assert 0xAB in parts.verifier.revoked_serials()


async def test_connectors_whose_prefixes_shrink_lose_the_withdrawn_routes(parts: Parts) -> None:
    site_a = RelaySession(
        identity=Identity("connector", "site-a", None, (), 9), peer="p", opened_at=0.0
    )
    offered = [
        IPAddressRange.from_network(ipaddress.ip_network(n))
        for n in ("192.168.50.0/25", "192.168.50.128/25", "10.7.0.0/16")
    ]
    result = parts.sites.advertise(site_a, offered)
    assert len(result.accepted) == 2 and len(result.refused) == 1
    await parts.applier.apply(InstallConnectors(1, {"site-a": ("192.168.50.0/25", "10.7.0.0/16")}))
    state = parts.sites.connectors()["site-a"]
    # The withdrawn half is gone; the prefix it offered before and may serve now is in.
    assert state.prefixes == ["192.168.50.0/25", "10.7.0.0/16"]
    assert parts.sites.serves(site_a, ipaddress.ip_address("10.7.1.1").packed)
    assert not parts.sites.serves(site_a, ipaddress.ip_address("192.168.50.200").packed)
    packet = bytes(20)
    assert parts.sites.lookup(ipaddress.ip_address("192.168.50.200").packed, packet, 0) is None
    await parts.applier.apply(InstallConnectors(2, {}))
    assert parts.sites.connectors() == {}
    with pytest.raises(ApplyFailed):
        await parts.applier.apply(InstallConnectors(3, {"site-a": ("not-a-prefix",)}))


async def test_the_follower_caches_and_acknowledges_only_what_applied(
    parts: Parts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acks: list[int] = []
    polls: list[int] = []
    responses = [
        {
            "type": "changes",
            "head_seq": 3,
            "changes": [
                {"seq": 1, "kind": "policy", "payload": GOOD.as_dict()},
                {"seq": 2, "kind": "policy", "payload": COUNTRY.as_dict()},
                {"seq": 3, "kind": "revocation", "payload": {"crl_pem": "", "blocked": ["cd"]}},
            ],
        }
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/ack"):
            acks.append(int(request.read().decode().split(":")[1].strip(" }")))
            return httpx.Response(204)
        polls.append(int(request.url.params["since"]))
        return httpx.Response(200, json=responses[0])

    client = ControlClient("http://c.test", "r1", "t", transport=httpx.MockTransport(handler))
    metrics = ControlMetrics(parts.metrics.registry)
    cache = tmp_path / "control-snapshot.json"
    follower = Follower(
        client,
        parts.applier,
        metrics,
        state=ControlState(),
        cache_path=cache,
        failure_retry=0,
        clock=lambda: datetime(2026, 12, 4, tzinfo=UTC),
    )
    with caplog.at_level(logging.ERROR, "zgate.relay.control"):
        await follower.step()
    # Only the newest policy (v5) was tried, and refused; the revocation is in force.
    assert follower.state.seq == 1 and follower.state.blocked == ("cd",)
    assert follower.state.policy is None
    assert "CONTROL-PLANE CHANGE NOT APPLIED" in caplog.text
    assert cache.exists()
    errors = parts.metrics.registry.get_sample_value(
        "zgate_relay_control_apply_errors_total", {"kind": "policy"}
    )
    assert errors == 1
    await follower.step()  # acknowledges 1 before it polls again
    assert acks == [1] and polls == [0, 1]
    await client.aclose()


def test_a_cached_policy_this_relay_cannot_use_starts_deny_all_from_a_snapshot(
    pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = Parts(pki)
    boot = Boot(ControlState(seq=9, policy=COUNTRY), datetime(2026, 12, 4, tzinfo=UTC), pki / "c")
    compiled = boot.install_policy(p.policies)
    assert compiled.default.verdict == "deny" and not compiled.rules
    assert boot.state.seq == 0  # a whole snapshot is asked for, and applied in full
    assert boot.state.policy is None  # the state says what runs: deny-all
    assert "the cached policy cannot be used" in caplog.text


def test_cached_revocations_or_connectors_that_cannot_be_used_start_over(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = make_pki(tmp_path / "other", ["mallory"]).directory
    revoke_certificate(other, "mallory")
    cached = ControlState(seq=9, crl_pem=(other / "crl.pem").read_text(), blocked=("ab",))
    boot = Boot(cached, datetime(2026, 12, 4, tzinfo=UTC), pki / "c")
    p = Parts(pki)
    boot.install_revocations(p.verifier)
    assert boot.state.seq == 0 and 0xAB not in p.verifier.revoked_serials()
    assert (boot.state.crl_pem, boot.state.blocked) == ("", ())
    assert "cached revocations cannot be used" in caplog.text
    bad = Boot(ControlState(seq=3, connectors={"a": ("x",)}), None, pki / "c")
    assert bad.connectors() == {} and bad.state.seq == 0


async def test_a_response_that_makes_no_sense_is_counted_and_nothing_changes(
    parts: Parts, tmp_path: Path
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"type": "gossip", "head_seq": 1})

    client = ControlClient("http://c.test", "r1", "t", transport=httpx.MockTransport(handler))
    metrics = ControlMetrics(parts.metrics.registry)
    follower = Follower(
        client,
        parts.applier,
        metrics,
        state=ControlState(seq=4),
        cache_path=tmp_path / "cache.json",
        backoff=Backoff(0.001, 0.001),
    )
    await follower.step()
    assert follower.state.seq == 4 and not (tmp_path / "cache.json").exists()
    errors = parts.metrics.registry.get_sample_value(
        "zgate_relay_control_apply_errors_total", {"kind": "response"}
    )
    assert errors == 1
    await client.aclose()


async def test_the_same_snapshot_again_is_not_applied_again(parts: Parts, tmp_path: Path) -> None:
    empty = {
        "type": "snapshot",
        "head_seq": 0,
        "snapshot": {"seq": 0, "policy": None, "crl_pem": "", "blocked": [], "connectors": {}},
    }
    polls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        polls.append(int(request.url.params["since"]))
        return httpx.Response(200, json=empty)

    client = ControlClient("http://c.test", "r1", "t", transport=httpx.MockTransport(handler))
    applied: list[int] = []
    follower = Follower(
        client,
        parts.applier,
        ControlMetrics(parts.metrics.registry),
        state=ControlState(),
        cache_path=tmp_path / "cache.json",
        idle_snapshot_pause=0,
        on_applied=lambda: applied.append(follower.state.seq),
    )
    for _ in range(3):
        await follower.step()
    assert polls == [0, 0, 0]
    assert parts.ended == 1  # the revocations were installed once, on the first snapshot
    assert (tmp_path / "cache.json").exists()
    await client.aclose()


async def test_a_session_end_asks_the_core_with_the_operators_reason(pki: Path) -> None:
    asked: list[tuple[str, str]] = []

    def end_session(session: str, reason: str) -> bool:
        asked.append((session, reason))
        return True

    parts = Parts(pki)
    applier = Applier(
        policies=parts.policies,
        verifier=parts.verifier,
        end_revoked=lambda: 0,
        sites=parts.sites,
        end_session=end_session,
    )
    await applier.apply(EndSession(3, "abc123"))
    assert asked == [("abc123", "ended by operator")]
    # A session that is gone already is no failure (the default knows none).
    await parts.applier.apply(EndSession(4, "gone"))
