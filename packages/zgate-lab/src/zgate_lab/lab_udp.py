"""UDP tools for the lab's hosts: `python -m zgate_lab.lab_udp echo PORT` serves a UDP echo
(IPv4 and IPv6); `python -m zgate_lab.lab_udp client HOST PORT COUNT` sends COUNT requests
and prints, as JSON, how many came back intact."""

from __future__ import annotations

import json
import os
import socket
import sys


def echo(port: int) -> None:
    """Answer every datagram with itself, for ever."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    while True:
        data, addr = sock.recvfrom(65535)
        sock.sendto(data, addr)


def client(host: str, port: int, count: int) -> dict[str, int]:
    """Send ``count`` requests one by one; count the echoes that match."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ok = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        for i in range(count):
            payload = i.to_bytes(4, "big") + os.urandom(96)
            sock.sendto(payload, (host, port))
            try:
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                continue
            ok += data == payload
    return {"sent": count, "echoed": ok}


def main(argv: list[str]) -> int:
    """Command-line entry point."""
    if len(argv) == 2 and argv[0] == "echo":
        echo(int(argv[1]))
        return 0
    if len(argv) == 4 and argv[0] == "client":
        print(json.dumps(client(argv[1], int(argv[2]), int(argv[3]))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
