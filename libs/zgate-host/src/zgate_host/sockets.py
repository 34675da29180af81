"""Socket tuning for the tunnel's UDP sockets."""

from __future__ import annotations

import contextlib
import socket

__all__ = ["UDP_BUFFER_BYTES", "enlarge_udp_buffers"]

#: Bursts of QUIC packets overflow the default ~200 KiB receive buffer at tunnel rates
#: (seen as UdpRcvbufErrors and lost datagrams); a few MiB absorb them.
UDP_BUFFER_BYTES = 4 * 1024 * 1024

# SO_RCVBUFFORCE/SO_SNDBUFFORCE (Linux): like SO_RCVBUF/SO_SNDBUF but past net.core.*mem_max,
# allowed with CAP_NET_ADMIN. Not every Python build exports the names.
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def enlarge_udp_buffers(sock: socket.socket, size: int = UDP_BUFFER_BYTES) -> int:
    """Ask for ``size``-byte send and receive buffers (forcing past the sysctl limit when
    allowed); returns the receive buffer size the kernel granted."""
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
