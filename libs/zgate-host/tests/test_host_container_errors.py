"""What goes wrong in a container, and the one-line errors that say so.

A container's /proc/sys is read-only, Docker disables IPv6 in it, and /dev/net/tun, the
capability or the nft binary may be missing. Without root the failing call is injected;
with root the same situations are made for real in a throwaway mount + network namespace.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path
from typing import Any

import pytest
import pytun  # type: ignore[import-not-found]
from pyroute2.netlink.exceptions import NetlinkError

from zgate_host import HostError, PermissionRequired, TunDevice, configure_interface
from zgate_host import netconf as netconf_module
from zgate_host import nft as nft_module
from zgate_host import tun as tun_module
from zgate_host.errors import (
    IPv6Disabled,
    SysctlNotWritable,
    ToolMissing,
    TunUnavailable,
    describe_errno,
)
from zgate_host.nft import run_nft
from zgate_host.sysctl import (
    IPV4_FORWARDING,
    IPV6_FORWARDING,
    enable_forwarding,
    sysctl_name,
    write_sysctl,
)

# --- without root: the failing call is injected ---


def test_describe_errno_names_the_errno() -> None:
    assert describe_errno(errno.EACCES) == "Permission denied (EACCES)"
    assert describe_errno(errno.EROFS, "nope") == "nope (EROFS)"
    assert describe_errno(None, "odd") == "odd"


def test_sysctl_name() -> None:
    assert sysctl_name(IPV4_FORWARDING) == "net.ipv4.ip_forward"
    assert sysctl_name(IPV6_FORWARDING) == "net.ipv6.conf.all.forwarding"


class ReadOnlyProcSys:
    """Stands in for a container's /proc/sys: reads return `values`, writes fail EROFS."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, values: dict[Path, str]) -> None:
        self.values = values
        self.writes: list[Path] = []
        real_read, real_write = Path.read_text, Path.write_text

        def read_text(path: Path, *args: Any, **kwargs: Any) -> str:
            if path in values:
                return values[path] + "\n"
            return real_read(path, *args, **kwargs)

        def write_text(path: Path, *args: Any, **kwargs: Any) -> int:
            if path in values:
                self.writes.append(path)
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_write(path, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", read_text)
        monkeypatch.setattr(Path, "write_text", write_text)


def test_forwarding_already_on_needs_no_write(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = ReadOnlyProcSys(monkeypatch, {IPV4_FORWARDING: "1", IPV6_FORWARDING: "1"})
    state = enable_forwarding()
    assert state.previous == {}
    assert proc.writes == []


def test_forwarding_off_on_read_only_proc_names_the_compose_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ReadOnlyProcSys(monkeypatch, {IPV4_FORWARDING: "1", IPV6_FORWARDING: "0"})
    with pytest.raises(SysctlNotWritable) as caught:
        enable_forwarding()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "net.ipv6.conf.all.forwarding is 0 and /proc/sys is read-only (a container?)"
    )
    assert 'sysctls: net.ipv6.conf.all.forwarding: "1"' in message
    assert "securityContext.sysctls" in message
    assert "ip_forward" not in message, "a switch that is already right is not mentioned"
    assert caught.value.code == errno.EROFS


def test_both_forwarding_switches_off_are_reported_in_one_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ReadOnlyProcSys(monkeypatch, {IPV4_FORWARDING: "0", IPV6_FORWARDING: "0"})
    with pytest.raises(SysctlNotWritable) as caught:
        enable_forwarding()
    message = str(caught.value)
    assert "net.ipv4.ip_forward is 0 and net.ipv6.conf.all.forwarding is 0" in message
    assert 'net.ipv4.ip_forward: "1", net.ipv6.conf.all.forwarding: "1"' in message
    assert "--sysctl net.ipv4.ip_forward=1 --sysctl net.ipv6.conf.all.forwarding=1" in message


def test_write_sysctl_on_read_only_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    ReadOnlyProcSys(monkeypatch, {IPV4_FORWARDING: "0"})
    with pytest.raises(SysctlNotWritable, match=r"net.ipv4.ip_forward is 0 and /proc/sys is"):
        write_sysctl(IPV4_FORWARDING, "1")


def test_sysctl_refused_for_a_user_blames_privileges(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path, *args: Any, **kwargs: Any) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(PermissionRequired, match=r"net.ipv4.ip_forward: .*EACCES.*NET_ADMIN"):
        write_sysctl(IPV4_FORWARDING, "1")


def refuse_tun(monkeypatch: pytest.MonkeyPatch, code: int, *, node_too: bool) -> None:
    """pytun fails with errno ``code``; with ``node_too`` opening the device node does as
    well (the open failed), otherwise it works (TUNSETIFF failed)."""

    def device(*args: object, **kwargs: object) -> object:
        raise pytun.Error(code, os.strerror(code))

    monkeypatch.setattr(pytun, "TunTapDevice", device)
    if node_too:

        def node(*args: object) -> int:
            raise PermissionError(code, os.strerror(code))

        monkeypatch.setattr(os, "open", node)


def test_no_dev_net_tun_names_the_device_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Not mocked: pytun and the device probe both really find nothing there.
    monkeypatch.setattr(tun_module, "_TUN_PATH", str(tmp_path / "tun"))
    with pytest.raises(TunUnavailable) as caught:
        TunDevice.open()
    message = str(caught.value)
    assert f"{tmp_path / 'tun'} is missing" in message
    assert "devices: [/dev/net/tun:/dev/net/tun]" in message
    assert "--device /dev/net/tun" in message
    assert isinstance(caught.value, HostError)


def test_tun_refused_by_a_device_cgroup(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_tun(monkeypatch, errno.EPERM, node_too=True)
    with pytest.raises(PermissionRequired, match=r"opening /dev/net/tun: .*\(EPERM\).*devices:"):
        TunDevice.open()


def test_tunsetiff_without_net_admin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "tun"
    fake.write_bytes(b"")
    monkeypatch.setattr(tun_module, "_TUN_PATH", str(fake))
    refuse_tun(monkeypatch, errno.EPERM, node_too=False)  # the node opens: TUNSETIFF failed
    with pytest.raises(PermissionRequired) as caught:
        TunDevice.open("zgate%d")
    message = str(caught.value)
    assert "creating TUN 'zgate%d' (TUNSETIFF): Operation not permitted (EPERM)" in message
    assert "cap_add: [NET_ADMIN]" in message


class FakeIPRoute:
    """An IPRoute whose address calls fail with `addr_errno` (IPv6 ones only, by default)."""

    addr_errno = errno.EACCES
    only_v6 = True
    calls: list[tuple[str, dict[str, Any]]] = []

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def link_lookup(self, **kwargs: object) -> list[int]:
        return [7]

    def link(self, command: str, **kwargs: Any) -> None:
        self.calls.append((f"link {command}", kwargs))

    def addr(self, command: str, **kwargs: Any) -> list[Any]:
        self.calls.append((f"addr {command}", kwargs))
        if not self.only_v6 or ":" in str(kwargs.get("address", "")):
            raise NetlinkError(self.addr_errno, os.strerror(self.addr_errno))
        return []


@pytest.fixture
def fake_iproute(monkeypatch: pytest.MonkeyPatch) -> type[FakeIPRoute]:
    FakeIPRoute.calls = []
    FakeIPRoute.addr_errno = errno.EACCES
    FakeIPRoute.only_v6 = True
    monkeypatch.setattr(netconf_module, "IPRoute", FakeIPRoute)
    return FakeIPRoute


ADDRESSES: list[IPv4Interface | IPv6Interface] = [
    IPv4Interface("10.77.0.1/16"),
    IPv6Interface("fd7a:7a67::1/64"),
]


def test_ipv6_disabled_in_a_container_is_named_not_blamed_on_privileges(
    fake_iproute: type[FakeIPRoute], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bug: Docker's disable_ipv6=1 made the kernel answer EACCES to the relay's IPv6
    # gateway address, and the relay said "needs root or CAP_NET_ADMIN".
    monkeypatch.setattr(netconf_module, "_ipv6_disabled", lambda name: True)

    def read_only_open(path: str, *args: object, **kwargs: object) -> Any:
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(netconf_module, "open", read_only_open, raising=False)
    with pytest.raises(IPv6Disabled) as caught:
        configure_interface("zgate0", ADDRESSES, mtu=1400)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("configuring zgate0: adding address fd7a:7a67::1/64:")
    assert "(EACCES)" in message and "(EROFS)" in message
    assert "IPv6 is disabled on zgate0" in message
    assert 'sysctls: net.ipv6.conf.all.disable_ipv6: "0"' in message
    assert "CAP_NET_ADMIN" not in message
    assert not isinstance(caught.value, PermissionRequired)


def test_ipv6_disabled_but_writable_is_enabled_and_retried(
    fake_iproute: type[FakeIPRoute], monkeypatch: pytest.MonkeyPatch
) -> None:
    enabled: list[str] = []
    monkeypatch.setattr(netconf_module, "_ipv6_disabled", lambda name: True)

    def enable(name: str, iface: object) -> None:
        enabled.append(name)
        fake_iproute.addr_errno = 0  # the retry succeeds
        fake_iproute.only_v6 = False
        monkeypatch.setattr(fake_iproute, "addr", lambda self, command, **kw: [])

    monkeypatch.setattr(netconf_module, "_enable_ipv6", enable)
    configure_interface("zgate0", ADDRESSES)
    assert enabled == ["zgate0"]
    assert ("link set", {"index": 7, "state": "up"}) in fake_iproute.calls


def test_other_errnos_name_the_operation_and_errno(fake_iproute: type[FakeIPRoute]) -> None:
    fake_iproute.addr_errno = errno.EADDRNOTAVAIL
    fake_iproute.only_v6 = False
    with pytest.raises(HostError) as caught:
        configure_interface("zgate0", ADDRESSES)
    assert not isinstance(caught.value, PermissionRequired)
    assert str(caught.value) == (
        "configuring zgate0: adding address 10.77.0.1/16: "
        "Cannot assign requested address (EADDRNOTAVAIL)"
    )
    assert caught.value.code == errno.EADDRNOTAVAIL


def test_eacces_with_ipv6_enabled_is_not_a_capability_problem(
    fake_iproute: type[FakeIPRoute], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netconf_module, "_ipv6_disabled", lambda name: False)
    with pytest.raises(HostError, match=r"adding address fd7a:7a67::1/64: .*\(EACCES\)$") as caught:
        configure_interface("zgate0", ADDRESSES)
    assert not isinstance(caught.value, PermissionRequired)


def test_eperm_is_a_missing_capability(fake_iproute: type[FakeIPRoute]) -> None:
    fake_iproute.addr_errno = errno.EPERM
    fake_iproute.only_v6 = False
    with pytest.raises(PermissionRequired) as caught:
        configure_interface("zgate0", ADDRESSES)
    message = str(caught.value)
    assert message.startswith("configuring zgate0: adding address 10.77.0.1/16: ")
    assert "(EPERM): needs CAP_NET_ADMIN" in message
    assert "cap_add: [NET_ADMIN]" in message


def test_nft_missing_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft_module, "NFT", "zgate-no-such-nft")
    with pytest.raises(ToolMissing, match=r"zgate-no-such-nft not found.*apt-get install nftables"):
        run_nft(["list", "tables"])


# --- with root: a read-only /proc/sys and IPv6 off, for real ---

needs_root = pytest.mark.needs(
    root=True, tools=("unshare",), reason="a private mount and network namespace"
)

# Runs in `unshare --mount --net`: a fresh network namespace whose new interfaces start with
# IPv6 disabled (as Docker makes them) and /proc/sys bind-mounted read-only (as every
# container runtime does). Prints one line per case.
_CONTAINER_LIKE = textwrap.dedent(
    """
    import ipaddress, subprocess, sys
    from zgate_host import TunDevice, configure_interface, enable_forwarding
    from zgate_host.errors import HostError

    def attempt(label, fn):
        try:
            fn()
            print(label, "ok")
        except HostError as exc:
            print(label, type(exc).__name__, exc)

    open("/proc/sys/net/ipv6/conf/default/disable_ipv6", "w").write("1\\n")
    open("/proc/sys/net/ipv4/ip_forward", "w").write("1\\n")
    with TunDevice.open("zgw%d") as writable:
        addrs = [ipaddress.ip_interface("10.77.0.1/16"), ipaddress.ip_interface("fd7a::1/64")]
        attempt("writable", lambda: configure_interface(writable.name, addrs))
    for cmd in ("mount --bind /proc/sys /proc/sys", "mount -o remount,bind,ro /proc/sys"):
        subprocess.run(cmd.split(), check=True)
    with TunDevice.open("zgro%d") as tun:
        attempt("ipv4", lambda: configure_interface(tun.name, addrs[:1]))
        attempt("ipv6", lambda: configure_interface(tun.name, addrs))
    attempt("forwarding", enable_forwarding)
    """
)


@pytest.mark.root
@needs_root
def test_container_like_namespace_for_real() -> None:
    done = subprocess.run(
        ["unshare", "--mount", "--net", sys.executable, "-c", _CONTAINER_LIKE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    # Where /proc/sys is writable, IPv6 on our own device is simply turned on.
    assert lines["writable"] == "ok"
    assert lines["ipv4"] == "ok"
    assert lines["ipv6"].startswith("IPv6Disabled configuring zgro0: adding address fd7a::1/64")
    assert 'net.ipv6.conf.all.disable_ipv6: "0"' in lines["ipv6"]
    # ip_forward is already 1 (read, not written); IPv6 forwarding is 0 and cannot be set.
    assert lines["forwarding"].startswith(
        "SysctlNotWritable net.ipv6.conf.all.forwarding is 0 and /proc/sys is read-only"
    )
