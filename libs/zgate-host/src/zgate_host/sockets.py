"""Socket tuning for the tunnel's UDP sockets."""

from __future__ import annotations

import contextlib
import socket

__all__ = ["UDP_BUFFER_BYTES", "enlarge_udp_buffers"]

#: Sized to a queueing delay, not to a maximum. The receive buffer is where a busy relay's
#: backlog stands: bulk TCP inside the tunnel fills whatever it is given until a datagram is
#: lost, so its size is the latency every other packet of the tunnel queues behind. Linux
#: doubles the request for its bookkeeping: 256 KiB asked is 512 KiB of skb memory, about
#: 300 full-size QUIC packets, 3-4 ms at 1 Gbit/s; GSO bursts (64 segments at most) fit
#: with room to spare. Measured in the lab (qh3, single-stream TCP upload with pings every
#: 20 ms, with the engines' datagram_queue at 64): 4 MiB gave 8.5 ms median RTT inside the
#: transfer (1.2 MB standing in the relay's socket) at 950 Mbit/s; 256 KiB gave 2.5 ms at
#: 1 124 Mbit/s; 128 KiB fell to 436 Mbit/s (too little for a burst).
UDP_BUFFER_BYTES = 256 * 1024

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
