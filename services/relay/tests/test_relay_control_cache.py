"""The control-plane snapshot cache on disk: written atomically with mode 0600, read back,
a corrupt one moved aside (not fatal)."""

from __future__ import annotations

import json
import logging
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from zgate_relay.control.boot import load_boot
from zgate_relay.control.cache import CACHE_NAME, load_cache, save_cache
from zgate_relay.control.state import ControlState, PublishedPolicy

STATE = ControlState(
    seq=12,
    policy=PublishedPolicy(3, "d1g3st", "default: deny\n"),
    crl_pem="-----BEGIN X509 CRL-----\n...\n",
    blocked=("1f", "a0"),
    connectors={"site-a": ("192.168.50.0/24", "fd00:50::/64")},
    ca_pem="-----BEGIN CERTIFICATE-----\n...\n",
)
SAVED = datetime(2026, 12, 4, 22, 0, tzinfo=UTC)


def test_saved_state_reads_back_with_its_time(tmp_path: Path) -> None:
    path = tmp_path / CACHE_NAME
    save_cache(path, STATE, SAVED)
    cached = load_cache(path)
    assert cached is not None
    assert cached.state == STATE and cached.saved_at == SAVED
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["seq"] == 12 and document["policy"]["version_id"] == 3
    assert document["saved_at"] == SAVED.isoformat()
    assert [p.name for p in tmp_path.iterdir()] == [CACHE_NAME]  # no temporary file left


def test_a_save_replaces_the_old_file_and_fixes_a_stale_tmp_mode(tmp_path: Path) -> None:
    path = tmp_path / CACHE_NAME
    stale = tmp_path / f".{CACHE_NAME}.tmp"
    stale.write_text("half")
    stale.chmod(0o644)
    save_cache(path, ControlState(seq=1), SAVED)
    save_cache(path, STATE, SAVED)
    cached = load_cache(path)
    assert cached is not None and cached.state.seq == 12
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_cache_is_none(tmp_path: Path) -> None:
    assert load_cache(tmp_path / CACHE_NAME) is None


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"format": 99, "seq": 1, "saved_at": "2026-12-04T00:00:00+00:00"}',
        b'{"format": 1, "seq": 1}',
        b'{"format": 1, "seq": "one", "saved_at": "2026-12-04T00:00:00+00:00"}',
        b'{"format": 1, "seq": 1, "saved_at": "yesterday"}',
        b"\xff\xfe",
    ],
    ids=["truncated", "not-object", "other-format", "no-time", "bad-seq", "bad-time", "binary"],
)
def test_a_corrupt_cache_is_moved_aside_with_an_error(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / CACHE_NAME
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR, "zgate.relay.control"):
        assert load_cache(path) is None
    assert not path.exists()
    assert (tmp_path / f"{CACHE_NAME}.corrupt").read_bytes() == content
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_boot_starts_from_the_cache_or_from_nothing(tmp_path: Path) -> None:
    empty = load_boot(tmp_path)
    assert empty.cached_at is None and empty.state == ControlState()
    save_cache(tmp_path / CACHE_NAME, STATE, SAVED)
    boot = load_boot(tmp_path)
    assert boot.state == STATE and boot.cached_at == SAVED
    assert [str(n) for n in boot.connectors()["site-a"]] == ["192.168.50.0/24", "fd00:50::/64"]
