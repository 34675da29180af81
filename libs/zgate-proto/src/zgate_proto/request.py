"""The Extended CONNECT request that opens a CONNECT-IP tunnel (RFC 9484 §3, §4.4-4.6;
RFC 9220; RFC 9297 §3.2-3.4), as aioquic-style header lists.

Templates are paths (starting with "/") using RFC 6570 simple string expansion of the two
variables RFC 9484 defines, ``{target}`` and ``{ipproto}``; other operators and variables
are refused. The wildcard "*" is written literally, as in RFC 9484's examples, and "%2A"
is accepted for it.

Statuses chosen by :func:`parse_connect_ip_request`, in the order checked:

* 400 Bad Request: a malformed request (RFC 9114 §4.1.2, §4.3.1: bad or repeated
  pseudo-header fields, upper-case field names, missing :scheme/:path/:authority on an
  extended CONNECT), a content header on a capsule-protocol request (RFC 9297 §3.2);
* 405 Method Not Allowed: :method is not CONNECT (the answer carries ``allow: CONNECT``);
* 501 Not Implemented: a CONNECT without :protocol (plain TCP proxying is not offered) or
  with a protocol other than connect-ip (RFC 9110 §15.6.2: the functionality is not
  supported);
* 400: :scheme not https, or capsule-protocol missing or not true (RFC 9297 §3.4 lets a
  sender omit it, but a zgate relay requires it, like other CONNECT-IP proxies do);
* 404 Not Found: the :path does not match the template;
* 400: a target or ipproto that breaks RFC 9484 §4.6, which §4.1 says makes the request
  malformed.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from zgate_proto.errors import H3ErrorCode, ProtoError, RequestError

__all__ = [
    "DEFAULT_TEMPLATE",
    "ConnectIpTarget",
    "build_connect_ip_request",
    "expand_template",
    "parse_connect_ip_request",
    "response_headers",
    "validate_connect_ip_response",
]

DEFAULT_TEMPLATE = "/.well-known/masque/ip/{target}/{ipproto}/"
"""The default URI template path of RFC 9484 §3."""

Headers = Sequence[tuple[bytes, bytes]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_VARIABLES = ("target", "ipproto")
_EXPRESSION = re.compile(r"\{([^{}]*)\}")
_LITERAL = re.compile(r"[\x21-\x7e]*")
_PCT_ENCODED = re.compile(r"%(?![0-9A-Fa-f]{2})")
_RAW_VALUE = re.compile(r"[A-Za-z0-9\-._~%*]*")  # unreserved, pct-encoded, literal "*"
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PREFIX_LENGTH = {4: re.compile(r"[0-9]{1,2}"), 6: re.compile(r"[0-9]{1,3}")}
_PSEUDO_HEADERS = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
_CONTENT_HEADERS = frozenset((b"content-length", b"content-type", b"transfer-encoding"))
_SF_PARAMETERS = re.compile(
    r"(?:;[ ]*[a-z*][a-z0-9_\-.*]*(?:=(?:[A-Za-z*][!#$%&\'*+\-.^_`|~:/A-Za-z0-9]*"
    r'|-?[0-9]{1,15}(?:\.[0-9]{1,3})?|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'
    r"|:[A-Za-z0-9+/=]*:|\?[01]))?)*"
)


@dataclass(frozen=True, slots=True)
class ConnectIpTarget:
    """The scope of a CONNECT-IP request (RFC 9484 §4.6).

    ``target`` is "*", an IPv4/IPv6 address or prefix ("192.0.2.0/24", "2001:db8::/32") or
    a DNS name; ``ipproto`` is an IP protocol number, or None for any ("*").
    Raises ProtoError if either breaks RFC 9484 §4.6.
    """

    target: str = "*"
    ipproto: int | None = None

    def __post_init__(self) -> None:
        problem = _target_problem(self.target)
        if problem:
            raise ProtoError(problem, reason="bad_target")
        if self.ipproto is not None and not 0 <= self.ipproto <= 255:
            raise ProtoError(f"ipproto out of range: {self.ipproto}", reason="bad_target")

    @property
    def is_wildcard(self) -> bool:
        """True when any host may be reached."""
        return self.target == "*"

    @property
    def network(self) -> Network | None:
        """The target as a prefix (a bare address is a /32 or /128), None if it is "*" or a
        DNS name."""
        parsed = None if self.target == "*" else _parse_ip_target(self.target)
        return parsed if isinstance(parsed, ipaddress.IPv4Network | ipaddress.IPv6Network) else None

    @property
    def hostname(self) -> str | None:
        """The target DNS name, None if it is "*" or an IP prefix."""
        if self.target == "*" or _parse_ip_target(self.target) is not None:
            return None
        return self.target


def _parse_ip_target(text: str) -> Network | str | None:
    """The prefix ``text`` denotes; None if it is not an IP literal; a problem string if it
    is one but invalid."""
    address, slash, length = text.partition("/")
    if ":" in address:
        version = 6
    elif address.replace(".", "").isdigit() and address.count(".") == 3:
        version = 4
    else:
        return None
    if "%" in address:
        return "IPv6 zone identifiers are not supported"
    if slash and not _PREFIX_LENGTH[version].fullmatch(length):
        return f"bad prefix length {length!r}"
    try:
        return ipaddress.ip_network(text if slash else address, strict=True)
    except ValueError as exc:
        return f"bad IP target {text!r}: {exc}"


def _target_problem(target: str) -> str | None:
    """Why ``target`` is not a valid RFC 9484 §4.6 target, or None."""
    if target == "*":
        return None
    if not target:
        return "empty target"
    parsed = _parse_ip_target(target)
    if isinstance(parsed, str):
        return parsed
    if parsed is not None:
        return None
    return _hostname_problem(target)


def _hostname_problem(name: str) -> str | None:
    host = name[:-1] if name.endswith(".") else name
    if not host or len(host) > 253 or not host.isascii():
        return f"bad host name {name!r}"
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return f"bad host name {name!r}"
    if labels[-1].isdigit():
        return f"bad host name {name!r} (numeric top-level label)"
    return None


@dataclass(frozen=True, slots=True)
class _Template:
    pattern: re.Pattern[str]
    parts: tuple[str, ...]  # literal, variable, literal, variable, ..., literal


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> _Template:
    """Split a template into literals and variables and build the regex that matches its
    expansions. Raises ProtoError for a template this module does not support."""
    if not template.startswith("/"):
        raise ProtoError(f"template must be a path starting with '/': {template!r}")
    parts: list[str] = []
    regex: list[str] = []
    seen: set[str] = set()
    pos = 0
    for match in _EXPRESSION.finditer(template):
        literal = template[pos : match.start()]
        name = match.group(1)
        if name not in _VARIABLES or name in seen:
            raise ProtoError(f"unsupported template expression {{{name}}} in {template!r}")
        seen.add(name)
        parts += [literal, name]
        regex += [re.escape(literal), f"(?P<{name}>[^/?#&=]*)"]
        pos = match.end()
    literal = template[pos:]
    parts.append(literal)
    regex.append(re.escape(literal))
    if not all(_LITERAL.fullmatch(p) and "{" not in p and "}" not in p for p in parts[::2]):
        raise ProtoError(f"template has characters outside 0x21-0x7E or stray braces: {template!r}")
    # Expansions use only _RAW_VALUE's characters: between two expressions a literal needs
    # one that no expansion holds, or "/{target}{ipproto}" makes "/10.0.0.16" of 10.0.0.1
    # and 6, which parses back as 10.0.0.16 and no ipproto.
    if any(_RAW_VALUE.fullmatch(p) for p in parts[2:-1:2]):
        raise ProtoError(
            f"template expressions must be separated by a character outside "
            f"A-Z a-z 0-9 - . _ ~ % * (e.g. '/'), else the path is ambiguous: {template!r}"
        )
    return _Template(re.compile("".join(regex)), tuple(parts))


def expand_template(template: str, target: str = "*", ipproto: int | None = None) -> str:
    """The :path for ``template`` with ``target`` and ``ipproto`` expanded (RFC 6570 simple
    expansion; "*" stays literal). Raises ProtoError for a bad template or value, or when
    the template cannot express a scope other than "*"."""
    scope = ConnectIpTarget(target, ipproto)
    compiled = _compile(template)
    values = {"target": scope.target, "ipproto": "*" if ipproto is None else str(ipproto)}
    out: list[str] = []
    for index, part in enumerate(compiled.parts):
        if index % 2 == 0:
            out.append(part)
        else:
            value = values.pop(part)
            out.append("*" if value == "*" else quote(value, safe=""))
    for name, value in values.items():
        if value != "*":
            raise ProtoError(f"template has no {{{name}}} to carry {value!r}")
    return "".join(out)


def build_connect_ip_request(
    authority: str,
    target: str = "*",
    ipproto: int | None = None,
    template: str = DEFAULT_TEMPLATE,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> list[tuple[bytes, bytes]]:
    """Header list of a CONNECT-IP Extended CONNECT request (RFC 9484 §4.4).

    Raises ProtoError for an empty authority, a bad target/ipproto or template.
    """
    if not authority or not authority.isascii() or any(c in authority for c in " /?#@"):
        raise ProtoError(f"bad authority {authority!r}")
    path = expand_template(template, target, ipproto)
    return [
        (b":method", b"CONNECT"),
        (b":protocol", b"connect-ip"),
        (b":scheme", b"https"),
        (b":authority", authority.encode("ascii")),
        (b":path", path.encode("ascii")),
        (b"capsule-protocol", b"?1"),
        *extra_headers,
    ]


def _malformed(message: str) -> RequestError:
    return RequestError(
        message, status=400, code=H3ErrorCode.H3_MESSAGE_ERROR, reason="malformed_request"
    )


def _split_headers(headers: Headers) -> tuple[dict[bytes, bytes], dict[bytes, list[bytes]]]:
    """Pseudo-header fields and regular fields, checked per RFC 9114 §4.1.2, §4.3."""
    pseudo: dict[bytes, bytes] = {}
    fields: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise _malformed("header names and values must be bytes")
        if name.lower() != name or not name:
            raise _malformed(f"bad header name {name!r}")
        if name.startswith(b":"):
            if fields:
                raise _malformed("pseudo-header field after a regular field")
            if name not in _PSEUDO_HEADERS:
                raise _malformed(f"unknown pseudo-header field {name!r}")
            if name in pseudo:
                raise _malformed(f"repeated pseudo-header field {name!r}")
            pseudo[name] = value
        else:
            fields.setdefault(name, []).append(value)
    return pseudo, fields


def _capsule_protocol_true(values: list[bytes] | None) -> bool:
    """True when Capsule-Protocol is a single Structured Field Boolean item set to true
    (RFC 9297 §3.4; parameters are allowed and ignored)."""
    if values is None or len(values) != 1:
        return False  # absent, or several fields: a List, which counts as absent
    try:
        text = values[0].decode("ascii").strip(" ")
    except UnicodeDecodeError:
        return False
    return text.startswith("?1") and _SF_PARAMETERS.fullmatch(text[2:]) is not None


def _decode_variable(raw: str, name: str) -> str:
    """Percent-decode a matched template variable, strictly."""
    if not _RAW_VALUE.fullmatch(raw) or _PCT_ENCODED.search(raw):
        raise _malformed(f"{name} {raw!r} is not properly percent-encoded")
    try:
        return unquote_to_bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        raise _malformed(f"{name} {raw!r} is not ASCII") from None


def parse_connect_ip_request(headers: Headers, template: str = DEFAULT_TEMPLATE) -> ConnectIpTarget:
    """Validate a CONNECT-IP request and return its scope.

    Raises RequestError whose ``status`` is the answer to send (see the module docstring),
    or ProtoError if ``template`` itself is unsupported.
    """
    compiled = _compile(template)
    pseudo, fields = _split_headers(headers)
    method = pseudo.get(b":method")
    if not method:
        raise _malformed("missing :method")
    if method != b"CONNECT":
        raise RequestError(f"method {method!r} is not CONNECT", status=405, reason="bad_method")
    protocol = pseudo.get(b":protocol")
    if protocol is None:
        raise RequestError("plain CONNECT is not supported", status=501, reason="bad_protocol")
    if protocol != b"connect-ip":
        raise RequestError(
            f"protocol {protocol!r} is not supported", status=501, reason="bad_protocol"
        )
    for name in (b":scheme", b":path", b":authority"):
        if not pseudo.get(name):
            raise _malformed(f"missing or empty {name.decode()}")
    if pseudo[b":scheme"] != b"https":
        raise _malformed(f"scheme {pseudo[b':scheme']!r} is not https")
    if not _capsule_protocol_true(fields.get(b"capsule-protocol")):
        raise _malformed("capsule-protocol: ?1 is required")
    for name in _CONTENT_HEADERS:
        if name in fields:
            raise _malformed(f"{name.decode()} is not allowed with the capsule protocol")
    try:
        path = pseudo[b":path"].decode("ascii")
    except UnicodeDecodeError:
        raise _malformed("non-ASCII :path") from None
    match = compiled.pattern.fullmatch(path)
    if match is None:
        raise RequestError(f"path {path!r} does not match", status=404, reason="not_found")
    values = {n: _decode_variable(v, n) for n, v in match.groupdict().items()}
    return _scope(values.get("target", "*"), values.get("ipproto", "*"))


def _scope(target: str, ipproto: str) -> ConnectIpTarget:
    problem = _target_problem(target)
    if problem:
        raise _malformed(problem)
    if ipproto == "*":
        return ConnectIpTarget(target, None)
    if not (1 <= len(ipproto) <= 3 and ipproto.isascii() and ipproto.isdigit()):
        raise _malformed(f"bad ipproto {ipproto!r}")
    number = int(ipproto)
    if number > 255:
        raise _malformed(f"ipproto {number} out of range")
    return ConnectIpTarget(target, number)


def validate_connect_ip_response(headers: Headers) -> None:
    """Check the proxy's answer to a CONNECT-IP request (RFC 9484 §4.5, RFC 9297 §3.2).

    Raises RequestError carrying the status received unless it is a 2xx that may start the
    capsule protocol; ``status`` is 0 when the response has no valid :status. Interim (1xx)
    responses should be skipped by the caller before calling this.
    """
    statuses = [value for name, value in headers if name == b":status"]
    if len(statuses) != 1 or not re.fullmatch(rb"[1-5][0-9]{2}", statuses[0]):
        raise RequestError(
            "response without a valid :status",
            status=0,
            code=H3ErrorCode.H3_MESSAGE_ERROR,
            reason="malformed_response",
        )
    status = int(statuses[0])
    if not 200 <= status <= 299:
        raise RequestError(f"proxy answered {status}", status=status, reason="refused")
    if status in (204, 205, 206):
        raise RequestError(
            f"status {status} cannot start the capsule protocol",
            status=status,
            code=H3ErrorCode.H3_MESSAGE_ERROR,
            reason="malformed_response",
        )
    for name, _ in headers:
        if name in _CONTENT_HEADERS:
            raise RequestError(
                f"{name.decode()} is not allowed with the capsule protocol",
                status=status,
                code=H3ErrorCode.H3_MESSAGE_ERROR,
                reason="malformed_response",
            )


def response_headers(status: int) -> list[tuple[bytes, bytes]]:
    """Header list answering a CONNECT-IP request with ``status``.

    2xx answers carry ``capsule-protocol: ?1``, which RFC 9297 §3.4 forbids on others; 405
    carries ``allow: CONNECT`` (RFC 9110 §15.5.6). Raises ProtoError for a status outside
    200-599.
    """
    if not 200 <= status <= 599:
        raise ProtoError(f"bad response status {status}")
    headers = [(b":status", str(status).encode("ascii"))]
    if status < 300:
        headers.append((b"capsule-protocol", b"?1"))
    elif status == 405:
        headers.append((b"allow", b"CONNECT"))
    return headers
