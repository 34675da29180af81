"""The relay's PolicyManager: what it logs, audits and keeps at start and on each reload."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from zgate_policy import PolicyError
from zgate_policy.audit import AuditEvent, PolicyLoaded, PolicyRefused
from zgate_relay.metrics import RelayMetrics
from zgate_relay.policy import PolicyManager

ALLOW_ALICE = """\
default: deny
rules:
  - {id: alice-web, action: allow, from: [alice], to: [203.0.113.0/24], ports: [tcp/443]}
tests:
  - {from: alice, to: "tcp://203.0.113.10:443", expect: allow}
"""


def manager(path: Path | None, audit: list[AuditEvent]) -> PolicyManager:
    return PolicyManager(
        path, geoip_available=False, metrics=RelayMetrics(), relay_name="r1", audit=audit.append
    )


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "zgate.relay.policy"]


def test_no_policy_file_warns_and_does_not_claim_a_loaded_policy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    audit: list[AuditEvent] = []
    compiled = manager(None, audit).load_initial()
    assert compiled.default.verdict == "allow"
    said = messages(caplog)
    assert any("no policy file: every authenticated client may reach everything" in m for m in said)
    assert "policy loaded" not in said
    assert [type(e) for e in audit] == [PolicyLoaded]


async def test_reload_results_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "policy.yaml"
    path.write_text(ALLOW_ALICE)
    audit: list[AuditEvent] = []
    policies = manager(path, audit)
    first = policies.load_initial()
    assert messages(caplog) == ["policy loaded"]

    caplog.clear()
    same = await policies.reload("sighup")
    assert same.ok and not same.changed and same.version == first.version
    assert messages(caplog) == ["policy reloaded: unchanged"]

    caplog.clear()
    path.write_text(ALLOW_ALICE.replace("expect: allow", "expect: deny"))  # its test fails
    refused = await policies.reload("file")
    assert not refused.ok and refused.version == first.version
    assert messages(caplog) == ["policy refused; keeping the running version"]
    assert policies.current is first
    assert isinstance(audit[-1], PolicyRefused)

    caplog.clear()
    path.write_text(ALLOW_ALICE.replace("tcp/443", "tcp/8443").replace(":443", ":8443"))
    changed = await policies.reload("sighup")
    assert changed.ok and changed.changed and changed.version != first.version
    assert messages(caplog) == ["policy loaded"]


def test_start_refuses_a_policy_whose_tests_fail(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(ALLOW_ALICE.replace("expect: allow", "expect: deny"))
    with pytest.raises(PolicyError):
        manager(path, []).load_initial()
