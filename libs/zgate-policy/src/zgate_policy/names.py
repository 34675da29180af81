"""Validators for the names a policy uses: ids, FQDN patterns, country codes, networks, targets.

Each raises ValueError with a message meant for an operator (pydantic turns it into a Problem).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Final, Literal

__all__ = [
    "COUNTRIES",
    "IPAddress",
    "IPNetwork",
    "TestTarget",
    "fqdn_matches",
    "looks_like_ip",
    "parse_network",
    "validate_country",
    "validate_fqdn",
    "validate_token",
]

IPAddress = IPv4Address | IPv6Address
Scheme = Literal["tcp", "udp", "icmp"]
IPNetwork = IPv4Network | IPv6Network

_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LABEL_RE: Final = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_SCHEMES: Final[dict[str, Scheme]] = {"tcp": "tcp", "udp": "udp", "icmp": "icmp"}
_IP_CHARS: Final = re.compile(r"[0-9.]+|.*[:/].*")

_COUNTRY_CODES: Final = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO
    DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU
    GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW
    KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU
    MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW
    PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF
    TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA
    ZM ZW"""
#: ISO 3166-1 alpha-2, the codes MaxMind-format databases use for countries.
COUNTRIES: Final = frozenset(_COUNTRY_CODES.split())


def validate_token(value: str, what: str = "name") -> str:
    """A client id, group, resource or rule id: 1-64 of ``A-Z a-z 0-9 . _ -``."""
    if _TOKEN_RE.fullmatch(value) is None or value in (".", ".."):
        raise ValueError(f"invalid {what} {value!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    return value


def validate_fqdn(value: str) -> str:
    """A DNS name, or ``*.`` + a name (any subdomain); returned lowercase without a final dot."""
    name = value.strip().lower().removesuffix(".")
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    if not labels or len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"invalid FQDN {value!r}")
    return name


def fqdn_matches(pattern: str, name: str) -> bool:
    """``*.corp.example`` matches ``a.corp.example`` and ``a.b.corp.example``, not the apex."""
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def validate_country(value: str) -> str:
    """An ISO 3166-1 alpha-2 code, returned uppercase."""
    code = value.strip().upper()
    if code not in COUNTRIES:
        raise ValueError(f"unknown country code {value!r} (use ISO 3166-1 alpha-2, e.g. DE)")
    return code


def looks_like_ip(text: str) -> bool:
    """Whether an operator meant `text` as an address or CIDR (so a typo is an error there)."""
    return _IP_CHARS.fullmatch(text) is not None


def parse_network(value: object) -> IPNetwork:
    """A CIDR or bare IP (v4 or v6); host bits must be clear."""
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR like 10.0.0.0/8, got {value!r}")
    try:
        return ip_network(value.strip(), strict=True)
    except ValueError:
        pass
    try:
        loose = ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"invalid CIDR or IP address {value!r}") from None
    raise ValueError(f"{value!r} has host bits set (did you mean {loose}?)")


@dataclass(frozen=True, slots=True)
class TestTarget:
    """A test or explain destination: ``tcp://10.1.2.3:443``, ``icmp://host``; host IP or name."""

    __test__ = False  # not a pytest test class

    proto: Scheme
    host: IPAddress | str
    port: int | None

    @classmethod
    def parse(cls, value: object) -> TestTarget:
        """Parse ``proto://host:port`` (tcp, udp) or ``icmp://host``; IPv6 in brackets."""
        if isinstance(value, TestTarget):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected a target like tcp://10.1.2.3:443, got {value!r}")
        scheme, sep, rest = value.strip().partition("://")
        proto = _SCHEMES.get(scheme.lower())
        if not sep or proto is None:
            raise ValueError(f"{value!r}: expected tcp://HOST:PORT, udp://HOST:PORT or icmp://HOST")
        port_text: str | None = None
        if rest.startswith("["):
            host_text, bracket, tail = rest[1:].partition("]")
            if not bracket or (tail and not tail.startswith(":")):
                raise ValueError(f"{value!r}: bad [IPv6] host")
            port_text = tail[1:] if tail else None
        elif rest.count(":") != 1:  # a name, an IPv4 address, or a bare IPv6 address (icmp)
            host_text = rest
        else:
            host_text, _, port_text = rest.partition(":")
        if proto == "icmp":
            if port_text is not None:
                raise ValueError(f"{value!r}: icmp has no port")
            port = None
        else:
            if port_text is None or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise ValueError(f"{value!r}: {proto} needs a port from 1 to 65535")
            port = int(port_text)
        return cls(proto, _host(value, host_text), port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if isinstance(self.host, IPv6Address) else str(self.host)
        return f"{self.proto}://{host}" + (f":{self.port}" if self.port is not None else "")


def _host(spec: str, text: str) -> IPAddress | str:
    try:
        return ip_address(text)
    except ValueError:
        pass
    if looks_like_ip(text):
        raise ValueError(f"{spec!r}: invalid IP address {text!r}")
    if text.startswith("*"):
        raise ValueError(f"{spec!r}: a test host is one name, not a wildcard")
    try:
        return validate_fqdn(text)
    except ValueError:
        raise ValueError(f"{spec!r}: invalid host {text!r}") from None
