"""Write the seed corpus, ``fuzz/corpus/<harness>/``: small valid inputs for each harness.

Run once (``uv run python fuzz/seeds.py``) and commit what it writes; it is deterministic
but for the PKI seeds, which come from a throwaway CA made here (its certificate becomes
``fuzz/pki_anchor.pem``, its key is never written). The policy seeds are the YAML examples
of docs/policy.md. Each file starts with the byte its harness reads to choose a mode, where
it has one (see each harness's docstring).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import struct
import tempfile
from pathlib import Path

import dns.message
import dns.rrset
import pylsqpack
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zgate_pki import init_pki, issue_certificate, revoke_certificate
from zgate_proto.capsules import (
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    IPAddressRange,
    RequestedAddress,
    RouteAdvertisement,
    encode_capsule,
    encode_ip_datagram_capsule,
    encode_raw_capsule,
)
from zgate_proto.datagram import encode_http_datagram, encode_ip_datagram
from zgate_proto.http3._frames import FrameType, encode_frame
from zgate_proto.ip import internet_checksum, ipv4_checksum, ones_complement_sum
from zgate_proto.quic_header import version_negotiation
from zgate_proto.request import build_connect_ip_request
from zgate_proto.varint import encode_varint

FUZZ = Path(__file__).parent
CORPUS = FUZZ / "corpus"
ROOT = FUZZ.parent


def _ipv4(proto: int, payload: bytes, *, flags_offset: int = 0x4000, ihl: int = 5) -> bytes:
    options = bytes(4 * (ihl - 5))
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            20 + len(options) + len(payload),
            0x1234,
            flags_offset,
            64,
            proto,
            0,
            bytes((10, 100, 0, 2)),
            bytes((203, 0, 113, 7)),
        )
    )
    header += options
    header[10:12] = ipv4_checksum(header).to_bytes(2, "big")
    return bytes(header) + payload


def _ipv6(next_header: int, payload: bytes) -> bytes:
    src = ipaddress.IPv6Address("fd7a:7a67::2").packed
    dst = ipaddress.IPv6Address("2001:db8::7").packed
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, src, dst) + payload


def _icmp_echo(kind: int) -> bytes:
    message = bytearray(struct.pack("!BBHHH", kind, 0, 0, 1, 1) + b"ping")
    message[2:4] = internet_checksum(message).to_bytes(2, "big")
    return bytes(message)


TCP_SYN = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 0x50, 0x02, 65535, 0, 0)
UDP = struct.pack("!HHHH", 40000, 53, 12, 0) + b"abcd"


def packets() -> dict[str, bytes]:
    """Real IPv4/IPv6 packets of the kinds a tunnel carries, and some unusual ones."""
    hop_by_hop = bytes((17, 0, 1, 4, 0, 0, 0, 0))  # next: UDP, PadN
    fragment = bytes((17, 0, 0, 1, 0, 0, 0, 42))  # next: UDP, offset 0, more fragments
    echo6 = bytearray(struct.pack("!BBHHH", 128, 0, 0, 1, 1) + b"ping")
    pseudo = (
        ipaddress.IPv6Address("fd7a:7a67::2").packed
        + ipaddress.IPv6Address("2001:db8::7").packed
        + struct.pack("!I3xB", len(echo6), 58)
    )
    echo6[2:4] = internet_checksum(echo6, ones_complement_sum(pseudo)).to_bytes(2, "big")
    return {
        "ipv4_tcp_syn": _ipv4(6, TCP_SYN),
        "ipv4_udp": _ipv4(17, UDP),
        "ipv4_icmp_echo": _ipv4(1, _icmp_echo(8)),
        "ipv4_options_udp": _ipv4(17, UDP, ihl=6),
        "ipv4_first_fragment": _ipv4(17, UDP, flags_offset=0x2000),
        "ipv4_later_fragment": _ipv4(17, b"rest", flags_offset=0x0010),
        "ipv6_udp": _ipv6(17, UDP),
        "ipv6_tcp_syn": _ipv6(6, TCP_SYN),
        "ipv6_icmp_echo": _ipv6(58, bytes(echo6)),
        "ipv6_hop_by_hop_udp": _ipv6(0, hop_by_hop + UDP),
        "ipv6_fragment_udp": _ipv6(44, fragment + UDP),
    }


def capsules() -> dict[str, bytes]:
    """Capsule streams (after a split-step byte): each known capsule, an unknown one, a mix."""
    v4 = ipaddress.IPv4Network("10.100.0.2/32")
    v6 = ipaddress.IPv6Network("fd7a:7a67::2/128")
    assign = encode_capsule(AddressAssign((AssignedAddress(1, v4), AssignedAddress(2, v6))))
    request = encode_capsule(
        AddressRequest(
            (
                RequestedAddress(1, ipaddress.IPv4Network("0.0.0.0/32")),
                RequestedAddress(2, ipaddress.IPv6Network("::/128")),
            )
        )
    )
    routes = encode_capsule(
        RouteAdvertisement(
            (
                IPAddressRange(
                    ipaddress.IPv4Address("10.1.0.0"), ipaddress.IPv4Address("10.1.255.255"), 0
                ),
                IPAddressRange(
                    ipaddress.IPv4Address("203.0.113.0"), ipaddress.IPv4Address("203.0.113.255"), 6
                ),
                IPAddressRange(
                    ipaddress.IPv6Address("2001:db8::"), ipaddress.IPv6Address("2001:db8::ffff"), 0
                ),
            )
        )
    )
    datagram = encode_ip_datagram_capsule(packets()["ipv4_udp"])
    unknown = encode_raw_capsule(0x2A, b"grease")
    return {
        "address_assign": b"\x00" + assign,
        "address_request": b"\x03" + request,
        "route_advertisement": b"\x05" + routes,
        "datagram_ipv4": b"\x07" + datagram,
        "unknown_type": b"\x01" + unknown,
        "mixed_stream": b"\x02" + request + datagram + unknown + assign + routes + datagram,
    }


def datagrams() -> dict[str, bytes]:
    """HTTP datagram payloads and QUIC DATAGRAM frames (quarter stream ID first)."""
    packet = packets()["ipv4_udp"]
    return {
        "ip_context": encode_ip_datagram(packet),
        "other_context": encode_http_datagram(2, b"compressed"),
        "long_context_id": encode_http_datagram(0x3FFF_FFFF, b"x"),
        "quic_frame_stream_0": encode_varint(0) + encode_ip_datagram(packet),
        "quic_frame_stream_400": encode_varint(100) + encode_ip_datagram(_ipv6(17, UDP)),
    }


def quic_headers() -> dict[str, bytes]:
    """First bytes of QUIC datagrams (after the short-header CID length byte)."""
    dcid, scid = bytes(range(8)), bytes(range(8, 16))
    long_header = bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid
    initial = b"\xc3" + (1).to_bytes(4, "big") + long_header + b"\x00\x41\x00" + bytes(16)
    handshake = b"\xe3" + (1).to_bytes(4, "big") + long_header + b"\x40\x20" + bytes(16)
    unknown = b"\xc3" + (0x1A2A3A4A).to_bytes(4, "big") + long_header + bytes(16)
    short = b"\x43" + dcid + bytes(24)
    vn = version_negotiation(destination_cid=scid, source_cid=dcid, versions=(1,))
    return {
        "initial_v1_large": b"\x88" + initial,
        "initial_v1": b"\x08" + initial,
        "handshake_v1": b"\x08" + handshake,
        "unknown_version_large": b"\x88" + unknown,
        "short_header": b"\x08" + short,
        "version_negotiation": b"\x88" + vn,
    }


def connect_requests() -> dict[str, bytes]:
    """Header lists (mode 0), HTTP/3 streams (mode 1) and templates (mode 2)."""
    request = build_connect_ip_request("relay.example:443")
    scoped = build_connect_ip_request("relay.example", "192.0.2.0/24", 17)
    named = build_connect_ip_request("relay.example", "app.corp.example", 6)
    response = [(b":status", b"200"), (b"capsule-protocol", b"?1")]

    def lines(headers: list[tuple[bytes, bytes]]) -> bytes:
        return b"\n".join(name + b"=" + value for name, value in headers)

    encoder = pylsqpack.Encoder()
    _, block = encoder.encode(0, request)
    settings = encode_varint(0x08) + encode_varint(1) + encode_varint(0x33) + encode_varint(1)
    stream = encode_frame(FrameType.HEADERS, block) + encode_frame(0, b"\x00\x00" + b"x" * 70)
    control = encode_frame(FrameType.SETTINGS, settings) + encode_frame(FrameType.GOAWAY, b"\x04")
    return {
        "request_wildcard": b"\x00" + lines(request),
        "request_scoped": b"\x00" + lines([*scoped, (b"priority", b"u=3")]),
        "request_hostname": b"\x00" + lines(named),
        "response_200": b"\x00" + lines(response),
        "h3_request_stream": b"\x01" + stream,
        "h3_control_stream": b"\x04" + control,
        "template_default": b"\x02/.well-known/masque/ip/{target}/{ipproto}/\n10.0.0.0/8\n\x06",
        "template_query": b"\x02/masque?t={target}&p={ipproto}\napp.example\n\x11",
        "template_fixed": b"\x02/vpn\n*\n",
    }


def dns_inputs() -> dict[str, bytes]:
    """A query (mode 0), answers (mode 1), upstreams (mode 2), resolver files (mode 3)."""
    query = dns.message.make_query("app.corp.example.", "A", id=0x1234, use_edns=0)
    answer = dns.message.make_response(dns.message.make_query("app.corp.example.", "A"))
    answer.answer.append(
        dns.rrset.from_text("app.corp.example.", 60, "IN", "CNAME", "lb.corp.example.")
    )
    answer.answer.append(dns.rrset.from_text("lb.corp.example.", 30, "IN", "A", "10.1.2.3"))
    answer6 = dns.message.make_response(dns.message.make_query("app.corp.example.", "AAAA"))
    answer6.answer.append(
        dns.rrset.from_text("app.corp.example.", 300, "IN", "AAAA", "2001:db8::10")
    )
    backup = {
        "version": 1,
        "path": "/etc/resolv.conf",
        "kind": "file",
        "content": "nameserver 192.0.2.53\n",
        "target": None,
        "mode": 420,
        "written": "0" * 64,
    }
    resolv_conf = "# from DHCP\nnameserver 192.0.2.53\nnameserver 127.0.0.53\nsearch corp.example\n"
    return {
        "query_a": b"\x00" + query.to_wire(),
        "answer_cname_a": b"\x01" + answer.to_wire(),
        "answer_aaaa": b"\x01" + answer6.to_wire(),
        "upstream_v4": b"\x02192.0.2.53:5353",
        "upstream_v6": b"\x02[2001:db8::53]:53",
        "resolv_conf": b"\x03" + resolv_conf.encode(),
        "resolver_backup": b"\x03" + json.dumps(backup).encode(),
    }


def policies() -> dict[str, bytes]:
    """The YAML examples of docs/policy.md."""
    text = (ROOT / "docs" / "policy.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    return {f"docs_policy_md_{i}.yaml": block.encode() for i, block in enumerate(blocks, 1)}


def pki_inputs() -> dict[str, bytes]:
    """DER certificates, a CRL with one entry, a key and an index from a throwaway CA."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "pki"
        init_pki(directory, trust_domain="fuzz.zgate.test")
        issue_certificate(directory, "client", "alice", groups=("eng",))
        issue_certificate(directory, "client", "bob")
        issue_certificate(directory, "connector", "site1")
        revoke_certificate(directory, "bob")
        shutil.copyfile(directory / "ca.pem", FUZZ / "pki_anchor.pem")

        def der(path: Path) -> bytes:
            return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
                serialization.Encoding.DER
            )

        crl = x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())
        key = serialization.load_pem_private_key(
            (directory / "clients" / "bob.key").read_bytes(), None
        )
        key_der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {
            "cert_client_alice": b"\x04" + der(directory / "clients" / "alice.pem"),
            "cert_client_bob_revoked": b"\x04" + der(directory / "clients" / "bob.pem"),
            "cert_connector_site1": b"\x04" + der(directory / "connectors" / "site1.pem"),
            "cert_relay": b"\x00" + der(directory / "relay.pem"),
            "crl_one_entry": b"\x05" + crl.public_bytes(serialization.Encoding.DER),
            "fuzz_seed_key_of_revoked_bob": b"\x06" + key_der,
            "index_json": b"\x03" + (directory / "index.json").read_bytes(),
        }


SEEDS = {
    "capsules": capsules,
    "datagram": datagrams,
    "ip_packet": packets,
    "quic_header": quic_headers,
    "connect_request": connect_requests,
    "dns": dns_inputs,
    "policy": policies,
    "pki": pki_inputs,
}


def main() -> None:
    for harness, make in SEEDS.items():
        directory = CORPUS / harness
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        seeds = make()
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        print(f"{harness}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main()
