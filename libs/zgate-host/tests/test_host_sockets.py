"""UDP buffer tuning."""

from __future__ import annotations

import os
import socket

from zgate_host.sockets import UDP_BUFFER_BYTES, enlarge_udp_buffers


def test_buffers_grow_beyond_the_default() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        granted = enlarge_udp_buffers(sock, 4 * 1024 * 1024)
        assert granted > before
        if os.geteuid() == 0:  # forced past net.core.rmem_max (the kernel doubles the value)
            assert granted >= 4 * 1024 * 1024


def test_default_buffers_are_sized_to_a_delay_not_a_maximum() -> None:
    # The receive buffer is where a busy relay's backlog stands: the default must stay far
    # below the 4 MiB it once was (8.5 ms of standing queue inside a bulk transfer).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        granted = enlarge_udp_buffers(sock)
        assert granted <= 2 * UDP_BUFFER_BYTES <= 1024 * 1024
        if os.geteuid() == 0:  # forced past net.core.rmem_max, doubled by the kernel
            assert granted == 2 * UDP_BUFFER_BYTES
