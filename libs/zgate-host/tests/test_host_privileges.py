"""Capability checks, and running work inside a namespace."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_host import HostError, InvalidArgument, PermissionRequired, privileges
from zgate_host.netns import run_in_netns
from zgate_host.privileges import CAP_NET_ADMIN, has_net_admin, parse_cap_eff, require_net_admin

STATUS = "Name:\tpython\nUmask:\t0022\nCapInh:\t0000000000000000\nCapEff:\t{:016x}\nCapBnd:\t1\n"


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_cap_eff_round_trips(mask: int) -> None:
    assert parse_cap_eff(STATUS.format(mask)) == mask


@given(st.text())
def test_cap_eff_parser_never_raises(text: str) -> None:
    result = parse_cap_eff(text)
    assert result is None or result >= 0


def test_has_net_admin_reads_bit_12(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(STATUS.format(1 << CAP_NET_ADMIN))
    assert has_net_admin(status)
    status.write_text(STATUS.format(~(1 << CAP_NET_ADMIN) & (2**41 - 1)))
    assert not has_net_admin(status)


def test_without_proc_the_uid_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "absent"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert has_net_admin(missing)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert not has_net_admin(missing)


def test_require_net_admin_says_what_and_how(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privileges, "has_net_admin", lambda: False)
    with pytest.raises(PermissionRequired, match=r"opening zgate0 needs root or CAP_NET_ADMIN"):
        require_net_admin("opening zgate0")
    monkeypatch.setattr(privileges, "has_net_admin", lambda: True)
    require_net_admin("opening zgate0")


def test_run_in_netns_returns_results_and_raises_errors() -> None:
    assert run_in_netns(None, lambda: 42) == 42

    def fail() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        run_in_netns(None, fail)
    for bad in ["", "a/b", ".."]:
        with pytest.raises(InvalidArgument):
            run_in_netns(bad, lambda: None)


@pytest.mark.root
@pytest.mark.needs(root=True, tools=("ip",), reason="network namespaces")
def test_run_in_netns_enters_the_namespace_and_leaves_the_caller_alone() -> None:
    name = f"zgh-{os.getpid()}-priv"
    with pytest.raises(HostError, match="does not exist"):
        run_in_netns(name, lambda: None)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        before = os.stat("/proc/thread-self/ns/net").st_ino
        target = os.stat(f"/run/netns/{name}").st_ino
        inside = run_in_netns(name, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        assert inside == target != before
        assert [n for _, n in run_in_netns(name, socket.if_nameindex)] == ["lo"]
        assert os.stat("/proc/thread-self/ns/net").st_ino == before
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
