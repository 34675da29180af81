"""TunDevice against the real kernel, inside network namespaces the tests create."""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Interface, IPv6Interface, ip_address
from pathlib import Path

import pytest
import pytun  # type: ignore[import-not-found]
from hypothesis import given
from hypothesis import strategies as st

from zgate_host import (
    HostError,
    InvalidArgument,
    PacketDevice,
    PermissionRequired,
    TunDevice,
    configure_interface,
    link_exists,
)
from zgate_host import tun as tun_module
from zgate_host.netns import run_in_netns
from zgate_host.sysctl import write_sysctl
from zgate_host.tun import validate_ifname

skip_unless_root = pytest.mark.needs(
    root=True, tools=("ip",), reason="network namespaces and TUN devices"
)
_names = itertools.count()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with lo up, deleted afterwards."""
    name = f"zgh-{os.getpid()}-tun{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _is_echo_request(packet: bytes, dest: str) -> bool:
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        return packet[9] == 1 and packet[16:20] == ip_address(dest).packed and packet[ihl] == 8
    return packet[6] == 58 and packet[24:40] == ip_address(dest).packed and packet[40] == 128


def _echo_reply(request: bytes) -> bytes:
    """Turn an ICMP/ICMPv6 echo request into the reply the pinged host would send."""
    if request[0] >> 4 == 4:
        ihl = (request[0] & 0x0F) * 4
        header = bytearray(request[:ihl])
        header[12:16], header[16:20] = request[16:20], request[12:16]
        header[8], header[10:12] = 64, b"\0\0"
        header[10:12] = _checksum(bytes(header)).to_bytes(2, "big")
        icmp = bytearray(request[ihl:])
        icmp[0], icmp[2:4] = 0, b"\0\0"
        icmp[2:4] = _checksum(bytes(icmp)).to_bytes(2, "big")
        return bytes(header + icmp)
    header = bytearray(request[:40])
    header[8:24], header[24:40] = request[24:40], request[8:24]
    header[7] = 64
    icmp = bytearray(request[40:])
    icmp[0], icmp[2:4] = 129, b"\0\0"
    pseudo = bytes(header[8:40]) + struct.pack("!I3xB", len(icmp), 58)
    icmp[2:4] = _checksum(pseudo + bytes(icmp)).to_bytes(2, "big")
    return bytes(header + icmp)


def _wait_for(device: TunDevice, match: Callable[[bytes], bool], timeout: float = 10.0) -> bytes:
    """Read batches until a packet matching `match` arrives (other kernel chatter skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([device], [], [], left)
        for packet in device.read_batch() if readable else []:
            if match(packet):
                return packet
    raise AssertionError("expected packet never arrived on the TUN device")


# --- without root ---


def test_bad_names_and_mtus_are_refused_before_touching_the_kernel() -> None:
    for name in ["", "x" * 16, "a/b", "a b", "a:b", "..", "zg%s", "é"]:
        with pytest.raises(InvalidArgument):
            TunDevice.open(name)
    for mtu in [0, 67, 65536]:
        with pytest.raises(InvalidArgument):
            TunDevice.open("zgate%d", mtu=mtu)


def test_missing_permission_names_what_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(pytun, "TunTapDevice", refuse)  # pytun.Error is an OSError
    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionRequired, match=r"/dev/net/tun.*CAP_NET_ADMIN"):
        TunDevice.open()


def test_a_node_that_is_no_tun_device_fails_at_tunsetiff(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Not mocked: pytun opens a plain file, and the kernel refuses the ioctl on it.
    fake = tmp_path / "tun"
    fake.write_bytes(b"")
    monkeypatch.setattr(tun_module, "_TUN_PATH", str(fake))
    with pytest.raises(HostError, match=r"creating TUN 'zq%d' \(TUNSETIFF\): .*ENOTTY") as caught:
        TunDevice.open("zq%d")
    assert caught.value.code == errno.ENOTTY
    assert not isinstance(caught.value, PermissionRequired)


@given(st.text(max_size=20))
def test_validate_ifname_accepts_only_kernel_names(name: str) -> None:
    try:
        assert validate_ifname(name) == name
    except InvalidArgument:
        return
    assert 0 < len(name.encode()) < 16
    assert name.isascii() and name.isprintable()
    assert not any(c in name for c in "/:% \t\n")


# --- with root, in a namespace ---


@pytest.mark.root
@skip_unless_root
@pytest.mark.parametrize("offload", [False, True], ids=["plain", "vnet-hdr"])
@pytest.mark.parametrize(
    ("addr", "peer"),
    [("10.77.0.1/24", "10.77.0.2"), ("2001:db8:77::1/64", "2001:db8:77::2")],
)
def test_ping_reaches_the_tun_and_a_written_reply_reaches_ping(
    netns: str, addr: str, peer: str, offload: bool
) -> None:
    """With ``offload`` (IFF_VNET_HDR) reads strip the virtio_net_hdr and writes add one:
    the same ping works."""
    with TunDevice.open("zt%d", mtu=1400, netns=netns, offload=offload) as tun:
        iface = IPv4Interface(addr) if "." in addr else IPv6Interface(addr)
        configure_interface(tun.name, [iface], netns=netns)
        ping = subprocess.Popen(
            ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "10", peer],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            request = _wait_for(tun, lambda p: _is_echo_request(p, peer))
            tun.write(_echo_reply(request))
            output, _ = ping.communicate(timeout=15)
        finally:
            if ping.poll() is None:
                ping.kill()
                ping.wait()
        assert ping.returncode == 0, output.decode()
        assert b"1 received" in output
        assert tun.write_errors == 0


@pytest.mark.root
@skip_unless_root
def test_open_reads_back_the_kernel_name_and_close_removes_the_link(netns: str) -> None:
    tun = TunDevice.open("zq%d", mtu=1380, netns=netns)
    assert tun.name.startswith("zq") and tun.name[2:].isdigit()
    assert tun.fileno() == tun.fd >= 0
    # pytun opens the node blocking and inheritable; the pump wants neither.
    assert not os.get_blocking(tun.fd)
    assert not os.get_inheritable(tun.fd)
    shown = subprocess.run(
        ["ip", "-n", netns, "link", "show", tun.name], capture_output=True, text=True, check=True
    ).stdout
    assert "mtu 1380" in shown
    assert not link_exists(tun.name), "the device must live in the namespace, not here"
    tun.close()
    tun.close()
    assert tun.closed
    assert not link_exists(tun.name, netns=netns)
    with pytest.raises(HostError):
        tun.read_batch()
    with pytest.raises(HostError):
        tun.write(b"\x45")


@pytest.mark.root
@skip_unless_root
def test_a_taken_name_is_a_host_error(netns: str) -> None:
    with TunDevice.open("zbusy", netns=netns), pytest.raises(HostError, match="taken"):
        TunDevice.open("zbusy", netns=netns)


@pytest.mark.root
@skip_unless_root
def test_rejected_writes_are_counted_not_raised(netns: str) -> None:
    with TunDevice.open("zw0", netns=netns) as tun:
        configure_interface(tun.name, [IPv4Interface("10.78.0.1/24")], netns=netns)
        tun.write(b"\x00 not an ip packet")
        tun.write(b"")
        assert tun.write_errors == 2
        assert tun.last_write_errno == errno.EINVAL


@pytest.mark.root
@skip_unless_root
@pytest.mark.parametrize("offload", [False, True], ids=["plain", "vnet-hdr"])
def test_read_batch_drains_at_most_max_packets(netns: str, offload: bool) -> None:
    with TunDevice.open("zr0", netns=netns, offload=offload) as tun:
        # No IPv6 on this link: router solicitations would interleave with the test's packets.
        write_sysctl(Path("/proc/sys/net/ipv6/conf/zr0/disable_ipv6"), "1", netns=netns)
        configure_interface(tun.name, [IPv4Interface("10.79.0.1/24")], netns=netns)

        def send_five() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for i in range(5):
                    sock.sendto(bytes([i]) * 10, ("10.79.0.2", 9000))

        run_in_netns(netns, send_five)
        assert select.select([tun], [], [], 10)[0]
        batches = [tun.read_batch(max_packets=3), tun.read_batch(max_packets=3), tun.read_batch()]
        assert [len(b) for b in batches] == [3, 2, 0]
        payloads = [p[28:] for p in batches[0] + batches[1]]
        assert payloads == [bytes([i]) * 10 for i in range(5)]


@pytest.mark.root
@skip_unless_root
def test_open_in_a_missing_namespace_fails_cleanly() -> None:
    with pytest.raises(HostError, match="does not exist"):
        TunDevice.open(netns=f"zgh-{os.getpid()}-absent")


def test_tun_device_is_a_packet_device() -> None:
    device: PacketDevice = TunDevice(-1, "zt0", 1400)
    assert isinstance(device, PacketDevice)
