"""Forwarding switches, flipped and restored inside a test namespace (never the host's)."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from zgate_host import HostError, enable_forwarding
from zgate_host.sysctl import IPV4_FORWARDING, IPV6_FORWARDING, read_sysctl, write_sysctl

pytestmark = [
    pytest.mark.root,
    pytest.mark.needs(root=True, tools=("ip",), reason="network namespaces"),
]
_names = itertools.count()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace with both forwarding switches off, deleted afterwards."""
    name = f"zgh-{os.getpid()}-sc{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        write_sysctl(IPV4_FORWARDING, "0", netns=name)
        write_sysctl(IPV6_FORWARDING, "0", netns=name)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _switches(netns: str | None) -> tuple[str, str]:
    return read_sysctl(IPV4_FORWARDING, netns=netns), read_sysctl(IPV6_FORWARDING, netns=netns)


def test_enable_then_restore(netns: str) -> None:
    host_before = _switches(None)
    state = enable_forwarding(netns=netns)
    assert _switches(netns) == ("1", "1")
    assert _switches(None) == host_before, "the host's own switches must not move"
    assert state.previous == {IPV4_FORWARDING: "0", IPV6_FORWARDING: "0"}
    state.restore()
    assert _switches(netns) == ("0", "0")
    state.restore()
    assert _switches(netns) == ("0", "0")


def test_only_the_requested_family_is_touched(netns: str) -> None:
    state = enable_forwarding(ipv6=False, netns=netns)
    assert _switches(netns) == ("1", "0")
    state.restore()
    assert _switches(netns) == ("0", "0")


def test_a_switch_already_on_stays_on_after_restore(netns: str) -> None:
    write_sysctl(IPV4_FORWARDING, "1", netns=netns)
    state = enable_forwarding(netns=netns)
    assert state.previous == {IPV6_FORWARDING: "0"}
    state.restore()
    assert _switches(netns) == ("1", "0")


def test_missing_sysctl_is_a_host_error(netns: str) -> None:
    with pytest.raises(HostError, match="nosuch"):
        read_sysctl(Path("/proc/sys/net/ipv4/nosuch"), netns=netns)
