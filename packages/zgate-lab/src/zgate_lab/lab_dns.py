"""A tiny authoritative DNS server and client for the lab's hosts (dnspython).

    python -m zgate_lab.lab_dns serve PORT NAME=ADDR[,ADDR...] ...   answers A/AAAA (TTL 60)
    python -m zgate_lab.lab_dns query SERVER NAME [PORT]           prints the addresses

Unknown names get NXDOMAIN. UDP and TCP.
"""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import sys
import threading

import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 60


def answer(zone: dict[str, list[str]], wire: bytes) -> bytes | None:
    """The response to one query, or None if the query cannot be parsed."""
    try:
        query = dns.message.from_wire(wire)
    except Exception:
        return None
    response = dns.message.make_response(query)
    for question in query.question:
        name = question.name.to_text().rstrip(".").lower()
        if name not in zone:
            response.set_rcode(dns.rcode.NXDOMAIN)
            continue
        wanted = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(question.rdtype)
        values = [a for a in zone[name] if ipaddress.ip_address(a).version == wanted]
        if values:
            rtype = dns.rdatatype.to_text(question.rdtype)
            response.answer.append(
                dns.rrset.from_text_list(question.name, TTL, "IN", rtype, values)
            )
    return response.to_wire()


def serve(port: int, zone: dict[str, list[str]]) -> None:
    """Serve the zone on [::]:port (UDP and TCP) until killed."""

    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            reply = answer(zone, data)
            if reply is not None:
                sock.sendto(reply, self.client_address)

    class Tcp(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            size = int.from_bytes(self.rfile.read(2), "big")
            reply = answer(zone, self.rfile.read(size))
            if reply is not None:
                self.wfile.write(len(reply).to_bytes(2, "big") + reply)

    class UdpServer(socketserver.ThreadingUDPServer):
        address_family = socket.AF_INET6

    class TcpServer(socketserver.ThreadingTCPServer):
        address_family = socket.AF_INET6
        allow_reuse_address = True

    udp, tcp = UdpServer(("::", port), Udp), TcpServer(("::", port), Tcp)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    udp.serve_forever()


def query(server: str, name: str, port: int = 53) -> list[str]:
    """A and AAAA addresses of ``name`` as ``server`` answers them."""
    found = []
    for rtype in ("A", "AAAA"):
        response = dns.query.udp(dns.message.make_query(name, rtype), server, timeout=3, port=port)
        for rrset in response.answer:
            found += [r.to_text() for r in rrset]
    return found


def main(argv: list[str]) -> int:
    """Command-line entry point."""
    if len(argv) >= 2 and argv[0] == "serve":
        zone = {}
        for item in argv[2:]:
            name, _, addresses = item.partition("=")
            zone[name.lower()] = addresses.split(",")
        serve(int(argv[1]), zone)
        return 0
    if len(argv) in (3, 4) and argv[0] == "query":
        print(" ".join(query(argv[1], argv[2], int(argv[3]) if len(argv) == 4 else 53)))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
