"""Layer-3 TUN devices: open one, drain it per wake-up, write packets into the kernel.

The device is created through python-pytun (the design card's choice): it opens
``/dev/net/tun`` and issues TUNSETIFF and SIOCSIFMTU. Packets then move with ``os.read``
and ``os.write`` on its fd, which cost the same as pytun's own ``read``/``write`` (0.80 and
0.82 us per read; docs/architecture.md has the figures) and keep "nothing waiting" an
ordinary BlockingIOError. Failures are translated here into zgate_host's errors, told
apart by what failed: the device node (missing, refused by a device cgroup or file mode)
or the interface (CAP_NET_ADMIN, a name in use).
"""

from __future__ import annotations

import errno
import logging
import os
from types import TracebackType
from typing import Protocol, runtime_checkable

import pytun  # type: ignore[import-not-found]  # ships no types: see _TunHandle
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from zgate_host.errors import (
    NET_ADMIN_FIX,
    HostError,
    InvalidArgument,
    PermissionRequired,
    TunUnavailable,
    describe_errno,
)
from zgate_host.gro import NO_OFFLOAD, VNET_HDR_SIZE, coalesce
from zgate_host.netns import run_in_netns

__all__ = ["MAX_PACKET", "PacketDevice", "TunDevice", "validate_ifname"]

# Largest IP packet a TUN read can return (IPv4 total length is 16 bits; without GSO the
# kernel never hands out more than the interface MTU, which is at most this).
MAX_PACKET = 65535

_TUN_PATH = "/dev/net/tun"
_IFNAMSIZ = 16
_MIN_MTU = 68
_IN6_ADDR_GEN_MODE_NONE = 1
#: How to give a container the TUN device, for the messages that need it.
TUN_DEVICE_FIX = (
    "compose: `devices: [/dev/net/tun:/dev/net/tun]`, docker run --device /dev/net/tun, "
    "or a Kubernetes device plugin / hostPath for /dev/net/tun"
)

_log = logging.getLogger(__name__)


class _TunHandle(Protocol):
    """What zgate uses of a ``pytun.TunTapDevice``."""

    @property
    def name(self) -> str:
        """The kernel's name for the interface (a ``%d`` in the asked name filled in)."""
        ...

    mtu: int

    def fileno(self) -> int:
        """The open /dev/net/tun fd."""
        ...

    def close(self) -> None:
        """Close the fd (the kernel removes a non-persistent interface)."""
        ...


def validate_ifname(name: str, *, template: bool = False) -> str:
    """Return `name` if the kernel would accept it as an interface name, else InvalidArgument.

    With `template`, one `%d` (the kernel picks the number) is allowed.
    """
    bad = (
        not name
        or not name.isascii()
        or len(name) >= _IFNAMSIZ
        or name in (".", "..")
        or any(c in name for c in "/:")
        or any(c.isspace() or not c.isprintable() for c in name)
        or (not template and "%" in name)
        or (template and name.count("%") > 1)
        or (template and "%" in name and "%d" not in name)
    )
    if bad:
        raise InvalidArgument(f"bad interface name {name!r} (at most 15 ASCII characters)")
    return name


@runtime_checkable
class PacketDevice(Protocol):
    """A source and sink of IP packets with a pollable fd: a TUN device or a test stand-in."""

    @property
    def name(self) -> str:
        """The interface name."""
        ...

    @property
    def mtu(self) -> int:
        """The MTU the device was opened with."""
        ...

    def fileno(self) -> int:
        """The fd to register with the event loop (readable when packets wait)."""
        ...

    def read_batch(self, max_packets: int = 64) -> list[bytes]:
        """Read the packets waiting now, at most `max_packets`; never blocks."""
        ...

    def write(self, packet: bytes) -> None:
        """Hand one IP packet to the other side; drops (and counts) what cannot be sent."""
        ...

    def write_batch(self, packets: list[bytes]) -> None:
        """Hand several IP packets over at once (a device may join TCP segments)."""
        ...

    def close(self) -> None:
        """Release the device; idempotent."""
        ...


class TunDevice:
    """An open TUN device (IFF_TUN | IFF_NO_PI): raw IP packets, non-blocking fd.

    The interface lives as long as the fd: close() (or process exit) removes it.

    Opened with ``offload``, the device also has IFF_VNET_HDR: every packet crosses the fd
    behind a virtio_net_hdr, which lets :meth:`write_batch` hand the kernel joined TCP
    segments (see :mod:`zgate_host.gro`). Reads still return plain, complete packets: no
    TUNSETOFFLOAD is asked for, so the kernel segments and checksums before handing over.
    The header alone costs about 0.2 us per packet each way (it is stripped on read, and a
    zero one written before each packet that is not joined), so it is off by default and
    pays only where joined segments save the kernel more (bulk TCP into the device).
    """

    def __init__(
        self,
        fd: int,
        name: str,
        mtu: int,
        *,
        offload: bool = False,
        handle: _TunHandle | None = None,
    ) -> None:
        self._fd = fd
        # The pytun object owns the fd (closing or collecting it closes the fd): kept here
        # for as long as the device is open.
        self._handle = handle
        self.name = name
        self.mtu = mtu
        self.offload = offload
        self.write_errors = 0
        self.last_write_errno: int | None = None
        self._skip = VNET_HDR_SIZE if offload else 0

    @classmethod
    def open(
        cls,
        name: str = "zgate%d",
        *,
        mtu: int = 1400,
        netns: str | None = None,
        offload: bool = False,
    ) -> TunDevice:
        """Create a TUN interface (down, no addresses) and return it with its real name.

        `name` may hold `%d` for the kernel to number it. With `netns` the interface is
        created in that network namespace (tests, labs). `offload`: see the class.
        """
        validate_ifname(name, template=True)
        if not _MIN_MTU <= mtu <= MAX_PACKET:
            raise InvalidArgument(f"MTU {mtu} out of range {_MIN_MTU}..{MAX_PACKET}")
        if netns is None:
            return _open_tun(name, mtu, offload)
        return run_in_netns(netns, lambda: _open_tun(name, mtu, offload))

    @property
    def fd(self) -> int:
        """The device's file descriptor (-1 once closed)."""
        return self._fd

    @property
    def closed(self) -> bool:
        """True once close() has run."""
        return self._fd < 0

    def fileno(self) -> int:
        """The fd to register with the event loop."""
        return self._check_open()

    def read_batch(self, max_packets: int = 64) -> list[bytes]:
        """Read packets until the kernel has no more (EAGAIN) or `max_packets` were read.

        One call per readiness event drains the device. A read error other than EAGAIN
        raises HostError unless packets were already read (they are returned first; the
        error comes back on the next call).
        """
        fd = self._check_open()
        packets: list[bytes] = []
        skip = self._skip
        size = skip + MAX_PACKET
        read = os.read
        # A fresh bytes object per read (the kernel copies straight into it) costs less than
        # reading into one reused buffer and copying out: 0.9 against 1.1 us per packet.
        while len(packets) < max_packets:
            try:
                data = read(fd, size)
            except BlockingIOError:
                break
            except OSError as exc:
                if packets:
                    break
                raise HostError(f"reading TUN {self.name}: {exc.strerror}", code=exc.errno) from exc
            if len(data) <= skip:
                break
            packets.append(data[skip:] if skip else data)
        return packets

    def write(self, packet: bytes) -> None:
        """Write one IP packet to the kernel; a packet it refuses is counted and dropped.

        EINVAL (not an IPv4/IPv6 packet), EAGAIN (queue full) and any other write error
        increment `write_errors` and set `last_write_errno`; nothing is raised, so one bad
        packet from a peer can never stop the pump.
        """
        fd = self._check_open()
        try:
            if self.offload:
                os.writev(fd, (NO_OFFLOAD, packet))
            else:
                os.write(fd, packet)
        except OSError as exc:
            self.write_errors += 1
            self.last_write_errno = exc.errno

    def write_batch(self, packets: list[bytes]) -> None:
        """Write packets in order; with ``offload``, TCP segments of one flow are joined
        into super-packets first. Errors count as in :meth:`write`."""
        if not self.offload or len(packets) < 2:
            for packet in packets:
                self.write(packet)
            return
        fd = self._check_open()
        for header, packet in coalesce(packets):
            try:
                os.writev(fd, (header, packet))
            except OSError as exc:
                self.write_errors += 1
                self.last_write_errno = exc.errno

    def close(self) -> None:
        """Close the fd (the kernel removes the interface); idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            handle, self._handle = self._handle, None
            if handle is not None:
                handle.close()
            else:
                os.close(fd)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice(name={self.name!r}, fd={self._fd}, mtu={self.mtu})"

    def _check_open(self) -> int:
        if self._fd < 0:
            raise HostError(f"TUN device {self.name} is closed", code=errno.EBADF)
        return self._fd


def _open_tun(name: str, mtu: int, offload: bool) -> TunDevice:
    flags: int = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if offload else 0)
    try:
        handle: _TunHandle = pytun.TunTapDevice(name=name, flags=flags, dev=_TUN_PATH)
    except OSError as exc:  # pytun.Error is an OSError carrying the errno
        raise _open_error(name, exc) from None
    try:
        fd = handle.fileno()
        # pytun opens the node blocking and inheritable; the pump needs neither.
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        real_name = handle.name
        _set_mtu(handle, real_name, mtu)
        _no_link_local(real_name)
    except BaseException:
        handle.close()
        raise
    return TunDevice(fd, real_name, mtu, offload=offload, handle=handle)


def _open_error(name: str, exc: OSError) -> HostError:
    """What failed in pytun's open-then-TUNSETIFF: both raise the same exception, so the
    device node is tried on its own (only on this error path) to tell them apart."""
    try:
        probe = os.open(_TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return TunUnavailable(
            f"{_TUN_PATH} is missing: give the container the device ({TUN_DEVICE_FIX}) "
            "or load the tun module on the host (modprobe tun)",
            code=errno.ENOENT,
        )
    except PermissionError as node:
        # EPERM: a device cgroup (a container whose device list lacks the node) refused it;
        # EACCES: the node's file mode refused this user.
        return PermissionRequired(
            f"opening {_TUN_PATH}: {describe_errno(node.errno, node.strerror)}: it needs "
            f"read/write access and root or CAP_NET_ADMIN; in a container also the device "
            f"({TUN_DEVICE_FIX})",
            code=node.errno,
        )
    except OSError as node:
        return TunUnavailable(
            f"opening {_TUN_PATH}: {describe_errno(node.errno, node.strerror)}: is the tun "
            "module loaded (modprobe tun)?",
            code=node.errno,
        )
    os.close(probe)
    return _tunsetiff_error(name, exc)


def _tunsetiff_error(name: str, exc: OSError) -> HostError:
    what = f"creating TUN {name!r} (TUNSETIFF): {describe_errno(exc.errno, exc.strerror)}"
    if exc.errno == errno.EPERM:
        return PermissionRequired(f"{what}: needs CAP_NET_ADMIN: {NET_ADMIN_FIX}", code=exc.errno)
    if exc.errno in (errno.EBUSY, errno.EINVAL):
        return HostError(f"{what}: the name is taken by another device", code=exc.errno)
    return HostError(what, code=exc.errno)


def _no_link_local(name: str) -> None:
    # A tunnel gets its addresses from the relay. Without this the kernel gives the device
    # an fe80:: address and sends router solicitations and MLD reports from it, which the
    # relay can only drop (they come from no address it assigned).
    path = f"/proc/sys/net/ipv6/conf/{name}/addr_gen_mode"
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write("1\n")
        return
    except FileNotFoundError:
        return  # no IPv6 in this kernel: nothing to turn off
    except OSError as exc:
        # /proc/sys is read-only in a container; netlink sets the same switch
        # (`ip link set NAME addrgenmode none`). Only cosmetic if that fails too.
        reason = describe_errno(exc.errno, exc.strerror)
    try:
        run_in_netns(None, lambda: _addr_gen_mode_none(name))
    except (NetlinkError, OSError) as exc:
        _log.debug(
            "cannot turn off IPv6 link-local addresses on %s: %s; netlink: %s", name, reason, exc
        )


def _addr_gen_mode_none(name: str) -> None:
    # run_in_netns: pyroute2 refuses a thread with a running event loop; the new thread
    # inherits the network namespace of the one that created it.
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        mode = [["IFLA_INET6_ADDR_GEN_MODE", _IN6_ADDR_GEN_MODE_NONE]]
        ipr.link("set", index=found[0], IFLA_AF_SPEC={"attrs": [["AF_INET6", {"attrs": mode}]]})


def _set_mtu(handle: _TunHandle, name: str, mtu: int) -> None:
    # pytun sets it with SIOCSIFMTU on a socket of the device's namespace (no netlink).
    try:
        handle.mtu = mtu
    except OSError as exc:
        what = f"setting MTU {mtu} on {name} (SIOCSIFMTU): {describe_errno(exc.errno)}"
        if exc.errno == errno.EPERM:
            raise PermissionRequired(
                f"{what}: needs CAP_NET_ADMIN: {NET_ADMIN_FIX}", code=exc.errno
            ) from exc
        raise HostError(what, code=exc.errno) from exc
