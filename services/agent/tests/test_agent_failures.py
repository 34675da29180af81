"""How each way a connection closes while opening is said, and whether it is permanent
(the codes an in-process relay does not easily produce)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from zgate_agent.failures import (
    CloseInfo,
    certificate_names,
    close_info,
    describe_close,
    describe_timeout,
)

CA = Path("/etc/zgate/ca.pem")
CERT = Path("/etc/zgate/me.pem")


def relay_certificate(start: datetime, end: datetime) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("relay.example.net")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def said(
    code: int,
    reason: str = "",
    *,
    by_peer: bool,
    cert: x509.Certificate | None = None,
    name: str = "relay.example.net",
    kind: str = "client",
) -> tuple[str, bool]:
    close = CloseInfo(code, reason, by_peer, handshake_done=by_peer, peer_certificate=cert)
    return describe_close(close, ca=CA, cert=CERT, server_name=name, kind=kind)


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (0x174, "client certificate required", "requires a client certificate"),
        (0x133, "", "the handshake signature does not verify (is --key the key of --cert?)"),
        (0x12A, "bad certificate", "the relay refused our certificate --cert /etc/zgate/me.pem"),
        (0x146, "", "no TLS version in common"),
        (0x150, "internal error", "the relay refused the TLS handshake: internal error"),
    ],
)
def test_the_relays_alerts_are_permanent(code: int, reason: str, expected: str) -> None:
    message, permanent = said(code, reason, by_peer=True)
    assert expected in message
    assert permanent


def test_a_relay_closing_without_an_alert_is_transient() -> None:
    assert said(0, "relay shutting down", by_peer=True) == (
        "the relay closed the connection: relay shutting down",
        False,
    )


def test_an_expired_relay_certificate_says_when() -> None:
    end = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    cert = relay_certificate(end - timedelta(days=90), end)
    message, permanent = said(0x12D, "Certificate is no longer valid", by_peer=False, cert=cert)
    assert message.startswith("the relay's certificate expired on 2026-03-04 05:06:07 UTC;")
    assert permanent


def test_a_relay_certificate_not_valid_yet_says_from_when() -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    cert = relay_certificate(start, start + timedelta(days=90))
    message, _ = said(0x12D, "Certificate is not valid yet", by_peer=False, cert=cert)
    assert f"not valid before {start:%Y-%m-%d %H:%M:%S} UTC" in message


def test_a_name_mismatch_on_an_ip_suggests_relay_ip() -> None:
    now = datetime.now(UTC)
    cert = relay_certificate(now - timedelta(days=1), now + timedelta(days=1))
    message, permanent = said(
        0x12A, "hostname '192.0.2.7' doesn't match", by_peer=False, cert=cert, name="192.0.2.7"
    )
    assert message == (
        "the relay's certificate is not valid for name 192.0.2.7 (it names: "
        "relay.example.net); pass --server-name with one of those, or re-issue it with "
        "`zgate pki init --relay-ip 192.0.2.7`"
    )
    assert permanent


def test_no_h3_says_it_is_not_a_relay() -> None:
    message, permanent = said(0x178, "No common ALPN protocols", by_peer=False)
    assert "does not speak HTTP/3" in message and permanent


def test_a_connector_is_told_to_issue_a_connector_certificate() -> None:
    message, _ = said(0x12C, "certificate revoked", by_peer=True, kind="connector")
    assert "`zgate pki issue connector ID`" in message


def test_timeouts_say_where() -> None:
    assert describe_timeout("2001:db8::1", 4433, 10, handshake_done=False) == (
        "no answer from the relay at [2001:db8::1]:4433 within 10s (is it running, and is "
        "UDP port 4433 reachable from here?)"
    )
    assert describe_timeout("relay", 4433, 2.5, handshake_done=True) == (
        "timed out after 2.5s opening the tunnel with the relay at relay:4433"
    )


# ------------------------------------------- what our side finds in the relay's certificate


def authority(
    tmp_path: Path, name: str = "ca"
) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Name]:
    """A CA certificate file, its key and its name."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, subject


def issued(
    ca_key: ec.EllipticCurvePrivateKey, issuer: x509.Name, *names: x509.GeneralName
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay")]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


# What qh3 says for any certificate it refuses (aioquic words and codes them apiece).
QH3_REASON = "the server certificate is unacceptable"


def test_an_expired_relay_certificate_is_found_whatever_the_engine_says() -> None:
    end = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    cert = relay_certificate(end - timedelta(days=90), end)
    message, permanent = said(0x12A, QH3_REASON, by_peer=False, cert=cert)
    assert message.startswith("the relay's certificate expired on 2026-03-04 05:06:07 UTC;")
    assert permanent


def test_a_name_mismatch_is_found_whatever_the_engine_says() -> None:
    now = datetime.now(UTC)
    cert = relay_certificate(now - timedelta(days=1), now + timedelta(days=1))
    message, permanent = said(0x12A, QH3_REASON, by_peer=False, cert=cert, name="other.example")
    assert message.startswith(
        "the relay's certificate is not valid for name other.example (it names: "
        "relay.example.net); pass --server-name with one of those"
    )
    assert "--relay-name other.example" in message and permanent


def test_a_relay_certificate_from_another_ca_is_said_so(tmp_path: Path) -> None:
    ours, _, _ = authority(tmp_path, "ours")
    _, theirs_key, theirs = authority(tmp_path, "theirs")
    cert = issued(theirs_key, theirs, x509.DNSName("relay.example.net"))
    close = CloseInfo(0x12A, QH3_REASON, False, False, cert)
    message, permanent = describe_close(close, ca=ours, cert=CERT, server_name="relay.example.net")
    assert message == (
        f"the relay's certificate is not signed by --ca {ours} ({QH3_REASON}); use the CA "
        "that issued the relay's certificate"
    )
    assert permanent


def test_a_sound_certificate_leaves_the_engines_reason(tmp_path: Path) -> None:
    ca, ca_key, ca_name = authority(tmp_path)
    wildcard = issued(ca_key, ca_name, x509.DNSName("*.example.net"))
    close = CloseInfo(0x150, "internal error", False, False, wildcard)
    message, permanent = describe_close(close, ca=ca, cert=CERT, server_name="Relay.Example.NET.")
    assert message == "TLS handshake with the relay failed: internal error"
    assert permanent
    by_ip = issued(ca_key, ca_name, x509.IPAddress(ipaddress.ip_address("2001:db8::7")))
    close = CloseInfo(0x150, "internal error", False, False, by_ip)
    assert describe_close(close, ca=ca, cert=CERT, server_name="2001:db8:0::7")[0] == message
    # One label only: a wildcard does not cover a deeper name.
    close = CloseInfo(0x150, "internal error", False, False, wildcard)
    deeper = describe_close(close, ca=ca, cert=CERT, server_name="a.b.example.net")[0]
    assert deeper.startswith("the relay's certificate is not valid for name a.b.example.net")


def test_close_info_reads_the_relays_certificate_from_der() -> None:
    now = datetime.now(UTC)
    cert = relay_certificate(now - timedelta(days=1), now + timedelta(days=1))
    der = cert.public_bytes(serialization.Encoding.DER)
    info = close_info(0x12A, "x", by_peer=False, handshake_done=False, peer_chain=(der,))
    assert info.peer_certificate == cert
    assert (
        close_info(0, "", by_peer=True, handshake_done=True, peer_chain=()).peer_certificate is None
    )
    garbled = close_info(0, "", by_peer=True, handshake_done=True, peer_chain=(b"\x30\x03",))
    assert garbled.peer_certificate is None
    # A version cryptography does not know raises x509.InvalidVersion, no ValueError (the
    # kind fuzz/fuzz_pki.py found in zgate_pki's loaders): no certificate either.
    at = der.index(bytes((0xA0, 3, 2, 1, 2)))
    v8 = der[: at + 4] + b"\x07" + der[at + 5 :]
    odd = close_info(0, "", by_peer=True, handshake_done=False, peer_chain=(v8,))
    assert odd.peer_certificate is None


def test_a_relay_certificate_with_a_repeated_extension_names_nothing() -> None:
    # Reading such extensions raises x509.DuplicateExtension, no ValueError (the kind
    # fuzz/fuzz_pki.py found in zgate_pki).
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay")])
    der = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("relay.example")]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    basic_constraints, san = bytes.fromhex("0603551d13"), bytes.fromhex("0603551d11")
    assert der.count(basic_constraints) == 1
    cert = x509.load_der_x509_certificate(der.replace(basic_constraints, san))
    with pytest.raises(x509.DuplicateExtension):
        _ = cert.extensions
    assert certificate_names(cert) == []
