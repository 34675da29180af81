"""UDP buffer tuning."""

from __future__ import annotations

import os
import socket

from zgate_host.sockets import enlarge_udp_buffers


def test_buffers_grow_beyond_the_default() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        granted = enlarge_udp_buffers(sock, 4 * 1024 * 1024)
        assert granted > before
        if os.geteuid() == 0:  # forced past net.core.rmem_max (the kernel doubles the value)
            assert granted >= 4 * 1024 * 1024
