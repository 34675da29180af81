"""What the relay applies from a change-log response (zgate_relay.control.plan, sans-IO):
snapshots, changes in seq order, one step per kind, nothing acknowledged past a failure."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from zgate_relay.control.backoff import Backoff
from zgate_relay.control.plan import (
    EndSession,
    InstallConnectors,
    InstallPolicy,
    InstallRevocations,
    plan_changes,
    settle,
)
from zgate_relay.control.state import ControlState, PublishedPolicy, StateFormatError
from zgate_testkit.pki import make_pki

V1 = PublishedPolicy(1, "aaaa", "default: deny\n")
V2 = PublishedPolicy(2, "bbbb", "default: allow\n")


def snapshot(seq: int, policy: PublishedPolicy | None = V1, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "seq": seq,
        "policy": policy.as_dict() if policy else None,
        "crl_pem": "",
        "blocked": [],
        "connectors": {},
        "ca_pem": "CA",
        **extra,
    }
    return {"type": "snapshot", "snapshot": body, "head_seq": seq}


def change(seq: int, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "payload": payload, "created_at": "2026-12-04T00:00:00Z"}


def changes(*items: dict[str, Any], head: int | None = None) -> dict[str, Any]:
    last = max((c["seq"] for c in items), default=0)
    return {"type": "changes", "changes": list(items), "head_seq": head or last}


def policy_change(seq: int, policy: PublishedPolicy) -> dict[str, Any]:
    return change(seq, "policy", {**policy.as_dict(), "kind": "publish"})


def revocation(seq: int, *blocked: str, crl: str = "") -> dict[str, Any]:
    return change(seq, "revocation", {"crl_pem": crl, "blocked": list(blocked), "action": "x"})


def test_a_snapshot_from_nothing_installs_everything_at_its_seq() -> None:
    plan = plan_changes(
        ControlState(), snapshot(7, blocked=["0A1b"], connectors={"a": ["10.0.0.0/8"]})
    )
    assert plan.snapshot and plan.through == 7 and plan.ca_pem == "CA"
    assert plan.steps == (
        InstallPolicy(7, V1),
        InstallRevocations(7, "", ("0a1b",)),
        InstallConnectors(7, {"a": ("10.0.0.0/8",)}),
    )
    state = settle(ControlState(), plan, [])
    assert state.seq == 7 and state.policy == V1 and state.blocked == ("0a1b",)
    assert state.ca_pem == "CA" and dict(state.connectors) == {"a": ("10.0.0.0/8",)}


def test_a_snapshot_installs_only_what_differs_from_the_state() -> None:
    state = settle(ControlState(), plan_changes(ControlState(), snapshot(7)), [])
    plan = plan_changes(state, snapshot(9, policy=V2))
    assert plan.steps == (InstallPolicy(9, V2),)
    assert settle(state, plan, []).seq == 9


def test_a_snapshot_without_a_policy_asks_for_deny_all() -> None:
    plan = plan_changes(ControlState(), snapshot(3, policy=None))
    assert plan.steps[0] == InstallPolicy(3, None)


def test_changes_apply_in_seq_order_with_only_the_newest_of_each_kind() -> None:
    state = ControlState(seq=4)
    plan = plan_changes(
        state,
        changes(
            policy_change(7, V2),
            revocation(5, "ff"),
            policy_change(6, V1),
            change(8, "connectors", {"connectors": {"s": ["fd00::/64"]}}),
        ),
    )
    assert plan.steps == (
        InstallRevocations(5, "", ("ff",)),
        InstallPolicy(7, V2),
        InstallConnectors(8, {"s": ("fd00::/64",)}),
    )
    assert plan.through == 8 and not plan.snapshot


def test_changes_already_applied_are_passed_over() -> None:
    state = ControlState(seq=6, policy=V1)
    plan = plan_changes(
        state, changes(policy_change(5, V2), revocation(6, "1"), revocation(7, "2"))
    )
    assert plan.steps == (InstallRevocations(7, "", ("2",)),)


def test_a_change_to_what_is_in_force_is_no_step_but_advances() -> None:
    state = ControlState(seq=2, policy=V1)
    plan = plan_changes(state, changes(policy_change(3, V1)))
    assert plan.steps == () and plan.through == 3
    assert settle(state, plan, []).seq == 3


def test_unknown_kinds_are_passed_over_and_counted_in_the_position() -> None:
    plan = plan_changes(ControlState(seq=1), changes(change(2, "gateways", {"x": 1})))
    assert plan.steps == () and plan.ignored == ((2, "gateways"),) and plan.through == 2


def test_an_empty_long_poll_changes_nothing() -> None:
    state = ControlState(seq=5, policy=V1)
    plan = plan_changes(state, {"type": "changes", "changes": [], "head_seq": 5})
    assert plan.steps == () and settle(state, plan, []) == state


def test_nothing_is_acknowledged_past_a_change_that_failed() -> None:
    state = ControlState(seq=4, policy=V1)
    plan = plan_changes(state, changes(policy_change(5, V2), revocation(6, "ab")))
    policy_step = plan.steps[0]
    after = settle(state, plan, [policy_step])
    # The revocation is in force, the policy is not, and the position stays before it.
    assert after.seq == 4 and after.policy == V1 and after.blocked == ("ab",)


def test_a_failed_snapshot_keeps_the_position() -> None:
    state = ControlState(seq=4, policy=V1)
    plan = plan_changes(state, snapshot(9, policy=V2, blocked=["cd"]))
    failed = [s for s in plan.steps if isinstance(s, InstallPolicy)]
    after = settle(state, plan, failed)
    assert after.seq == 4 and after.policy == V1 and after.blocked == ("cd",)


@pytest.mark.parametrize(
    "response",
    [
        [],
        {"type": "changes", "changes": [], "head_seq": "7"},
        {"type": "delta", "head_seq": 1},
        {"type": "changes", "changes": {}, "head_seq": 1},
        {"type": "changes", "changes": [{"seq": 1}], "head_seq": 1},
        {"type": "changes", "changes": [revocation(1, "zz")], "head_seq": 1},
        {"type": "changes", "changes": [revocation(1), revocation(1)], "head_seq": 1},
        {"type": "changes", "changes": [change(1, "policy", {"yaml": 3})], "head_seq": 1},
        {
            "type": "changes",
            "changes": [change(1, "connectors", {"connectors": {"a": "x"}})],
            "head_seq": 1,
        },
        {"type": "snapshot", "snapshot": {"seq": -1}, "head_seq": 1},
    ],
    ids=[
        "not-object",
        "head-text",
        "unknown-type",
        "changes-not-list",
        "no-kind",
        "bad-serial",
        "seq-twice",
        "policy-yaml-not-text",
        "prefixes-not-list",
        "negative-seq",
    ],
)
def test_a_response_that_makes_no_sense_is_refused(response: object) -> None:
    with pytest.raises(StateFormatError):
        plan_changes(ControlState(), response)


def test_state_round_trips_through_json() -> None:
    state = ControlState(7, V1, "CRL", ("ab",), {"s": ("10.1.0.0/16",)}, "CA")
    assert ControlState.from_dict(state.as_dict()) == state


def test_backoff_doubles_to_its_maximum_with_jitter_and_starts_over() -> None:
    low = Backoff(0.5, 10.0, rand=lambda: 0.0)
    assert [low.next() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    high = Backoff(0.5, 10.0, rand=lambda: 1.0)
    assert [high.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    high.reset()
    assert high.next() == 0.5
    with pytest.raises(ValueError):
        Backoff(0, 1)


def test_an_empty_control_plane_is_applied_once_not_on_every_poll() -> None:
    # Position 0 with nothing published: the control plane answers each poll with the same
    # snapshot. The first is applied in full; once it is in force, the next needs nothing.
    empty = snapshot(0, policy=None)
    first = plan_changes(ControlState(), empty, in_force=False)
    assert [s.kind for s in first.steps] == ["policy", "revocation", "connectors"]
    state = settle(ControlState(), first, [])
    assert state.seq == 0
    again = plan_changes(state, empty, in_force=True)
    assert again.steps == () and settle(state, again, []) == state


def signed_crl(pki: Path, serials: list[int], at: datetime) -> str:
    """A CRL of ``serials`` signed by the PKI's CA at ``at``."""
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(at)
        .next_update(at + timedelta(days=1))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_a_crl_signed_anew_with_the_same_serials_is_no_step(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", []).directory
    now = datetime(2026, 12, 4, tzinfo=UTC)
    first = signed_crl(pki, [5, 7], now)
    second = signed_crl(pki, [7, 5], now + timedelta(seconds=30))
    assert first != second
    state = ControlState(seq=3, crl_pem=first, blocked=("b", "a"))
    same = plan_changes(state, changes(revocation(4, "a", "b", crl=second)))
    assert same.steps == () and same.through == 4
    more = signed_crl(pki, [5, 7, 9], now)
    assert plan_changes(state, changes(revocation(4, "a", "b", crl=more))).steps != ()
    garbled = plan_changes(state, changes(revocation(4, "a", "b", crl="not a CRL")))
    assert garbled.steps != ()  # installing it decides, and refuses it
    # A CRL version cryptography does not know: x509.InvalidVersion, no ValueError (the kind
    # fuzz/fuzz_pki.py found in zgate_pki's loaders); not comparable either.
    der = x509.load_pem_x509_crl(more.encode()).public_bytes(serialization.Encoding.DER)
    at = der.index(bytes((2, 1, 1)))
    v41 = der[: at + 2] + b"\x28" + der[at + 3 :]
    pem = (
        "-----BEGIN X509 CRL-----\n" + base64.encodebytes(v41).decode() + "-----END X509 CRL-----\n"
    )
    with pytest.raises(x509.InvalidVersion):
        x509.load_pem_x509_crl(pem.encode())
    assert plan_changes(state, changes(revocation(4, "a", "b", crl=pem))).steps != ()


def end(seq: int, relay: str, session: str) -> dict[str, Any]:
    return change(seq, "session.end", {"relay": relay, "session": session})


def test_every_session_end_for_this_relay_is_a_step_and_others_are_passed_over() -> None:
    state = ControlState(seq=4, policy=V1)
    response = changes(
        end(5, "r1", "aa"), end(6, "r2", "bb"), policy_change(7, V2), end(8, "r1", "cc")
    )
    plan = plan_changes(state, response, relay="r1")
    assert plan.steps == (EndSession(5, "aa"), InstallPolicy(7, V2), EndSession(8, "cc"))
    assert plan.through == 8 and plan.ignored == ()  # another relay's: no warning either
    new = settle(state, plan, [])
    assert new.seq == 8 and new.policy == V2
    # Without a relay id nothing is this relay's; an applied one is not asked again.
    assert plan_changes(state, response).steps == (InstallPolicy(7, V2),)
    assert plan_changes(new, response, relay="r1").steps == ()


@pytest.mark.parametrize(
    "payload", [[], {"relay": "r1"}, {"relay": 1, "session": "aa"}, {"relay": "r1", "session": ""}]
)
def test_a_malformed_session_end_is_a_format_error(payload: Any) -> None:
    with pytest.raises(StateFormatError, match=r"session\.end"):
        plan_changes(ControlState(seq=1), changes(change(2, "session.end", payload)), relay="r1")
