"""identity_from_certificate and the name validators, with property tests."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_pki import Identity, PkiError, identity_from_certificate, validate_group, validate_ident

_KEY = ec.generate_private_key(ec.SECP256R1())
_NOW = datetime.now(UTC)

idents = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True).filter(
    lambda s: s not in {".", ".."}
)


def make_cert(
    *, common_name: str | None = "cn", units: list[str] | None = None, uris: list[str] | None = None
) -> x509.Certificate:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, u) for u in units or []]
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")]))
        .public_key(_KEY.public_key())
        .serial_number(1234)
        .not_valid_before(_NOW)
        .not_valid_after(_NOW + timedelta(days=1))
    )
    if uris:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(_KEY, hashes.SHA256())


def test_spiffe_uri_names_the_identity() -> None:
    cert = make_cert(
        common_name="ignored",
        units=["eng", "ops"],
        uris=["https://example.com/", "spiffe://Corp.Example/connector/site-a"],
    )
    assert identity_from_certificate(cert) == Identity(
        kind="connector",
        ident="site-a",
        trust_domain="corp.example",
        groups=("eng", "ops"),
        serial=1234,
    )


def test_common_name_is_the_fallback() -> None:
    identity = identity_from_certificate(make_cert(common_name="bob", units=["eng", "eng"]))
    assert identity == Identity("client", "bob", None, ("eng",), 1234)
    assert str(identity) == "client/bob"


@pytest.mark.parametrize(
    "uri",
    ["spiffe://td", "spiffe://td/client", "spiffe://td/client/a/b", "spiffe:///client/a"],
)
def test_malformed_spiffe_ids_fall_back_to_the_cn(uri: str) -> None:
    assert identity_from_certificate(make_cert(common_name="cn", uris=[uri])).ident == "cn"


def test_unknown_kind() -> None:
    identity = identity_from_certificate(make_cert(uris=["spiffe://td/robot/r2"]))
    assert (identity.kind, str(identity)) == ("unknown", "unknown/r2")


def test_no_identity_at_all() -> None:
    with pytest.raises(PkiError, match="no identity"):
        identity_from_certificate(make_cert(common_name=None))


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["client", "connector"]),
    ident=idents,
    groups=st.lists(idents, max_size=4),
)
def test_spiffe_round_trip(kind: str, ident: str, groups: list[str]) -> None:
    cert = make_cert(units=groups, uris=[f"spiffe://zgate.local/{kind}/{ident}"])
    identity = identity_from_certificate(cert)
    assert (identity.kind, identity.ident, identity.trust_domain) == (kind, ident, "zgate.local")
    assert identity.groups == tuple(dict.fromkeys(groups))


@settings(max_examples=100, deadline=None)
@given(
    uris=st.lists(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E)), max_size=3),
    common_name=st.none() | st.text(min_size=1, max_size=16),  # CN: at most 64 bytes
)
def test_any_certificate_yields_an_identity_or_a_pki_error(
    uris: list[str], common_name: str | None
) -> None:
    cert = make_cert(common_name=common_name, uris=[f"spiffe://{u}" for u in uris])
    try:
        identity = identity_from_certificate(cert)
    except PkiError:
        return
    assert identity.kind in {"client", "connector", "unknown"}
    assert identity.ident


_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,64}")


@given(st.text(max_size=80))
def test_validators_accept_exactly_the_documented_charset(text: str) -> None:
    expected = _TOKEN.fullmatch(text) is not None and text not in {".", ".."}
    for validate in (validate_ident, validate_group):
        try:
            assert validate(text) == text
            accepted = True
        except PkiError:
            accepted = False
        assert accepted is expected
