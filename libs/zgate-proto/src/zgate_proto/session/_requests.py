"""Plain HTTP/3 requests beside the CONNECT-IP session (RFC 9114 §4.1-4.3): reading a
request's method and path, building and reading a response's header section.

A relay answers a few small questions (``GET /.well-known/zgate/...``) on the connection an
agent already has; these helpers keep the header rules of such exchanges in one place, and
the two state machines keep only when they apply them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from zgate_proto.errors import H3ErrorCode, RequestError
from zgate_proto.http3 import Headers
from zgate_proto.session._events import SessionError

__all__ = [
    "PendingBody",
    "build_request",
    "build_response",
    "read_request_line",
    "read_status",
]

#: Regular header fields as a caller gives them.
Fields = Sequence[tuple[bytes, bytes]]

_STATUS: Final = re.compile(rb"[1-5][0-9]{2}")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2


def _malformed(message: str) -> RequestError:
    return RequestError(
        message, status=400, code=H3ErrorCode.H3_MESSAGE_ERROR, reason="malformed_request"
    )


def read_request_line(headers: Headers) -> tuple[str, str]:
    """(method, path) of a request that is not a CONNECT (its header syntax already
    checked); RequestError 400 when RFC 9114 §4.3.1 makes it malformed: ``:protocol``
    outside CONNECT (RFC 9220 §4), a missing ``:scheme`` or ``:path``, a path that is not
    ASCII or does not start with "/"."""
    pseudo = {name: value for name, value in headers if name.startswith(b":")}
    if b":protocol" in pseudo:
        raise _malformed(":protocol is only allowed on CONNECT")
    scheme, path = pseudo.get(b":scheme"), pseudo.get(b":path")
    if not scheme or not path:
        raise _malformed("missing or empty :scheme or :path")
    try:
        method_text = pseudo[b":method"].decode("ascii")
        path_text = path.decode("ascii")
    except UnicodeDecodeError:
        raise _malformed("non-ASCII :method or :path") from None
    if not _TOKEN.fullmatch(method_text) or not path_text.startswith("/"):
        raise _malformed(f"bad request line {method_text!r} {path_text!r}")
    return method_text, path_text


def build_request(method: str, authority: bytes, path: str, headers: Fields) -> Headers:
    """The header section of a request for ``path``; SessionError for a bad method (or
    CONNECT, which belongs to the session), path or header name."""
    if not _TOKEN.fullmatch(method) or method == "CONNECT":
        raise SessionError(f"bad method {method!r} (CONNECT belongs to the session)")
    if not path.startswith("/") or not path.isascii() or any(c in path for c in " \r\n"):
        raise SessionError(f"bad path {path!r}: it must be ASCII, start with '/', no spaces")
    return [
        (b":method", method.encode("ascii")),
        (b":scheme", b"https"),
        (b":authority", authority),
        (b":path", path.encode("ascii")),
        *_regular(headers),
    ]


def build_response(status: int, headers: Fields, body: bytes) -> Headers:
    """The header section of a final response (``content-length`` added for the body);
    SessionError for a status outside 200-599 or a pseudo-header field among ``headers``."""
    if not 200 <= status <= 599:
        raise SessionError(f"a final response needs a status from 200 to 599, not {status}")
    return [
        (b":status", str(status).encode("ascii")),
        *_regular(headers),
        (b"content-length", str(len(body)).encode("ascii")),
    ]


def _regular(headers: Fields) -> list[tuple[bytes, bytes]]:
    out = list(headers)
    for name, _ in out:
        if not name or name.startswith(b":") or name.lower() != name:
            raise SessionError(f"bad header name {name!r}: lower case, no pseudo-header fields")
    return out


def read_status(headers: Headers) -> int:
    """The ``:status`` of a response header section; 0 when it has no single valid one."""
    statuses = [value for name, value in headers if name == b":status"]
    if len(statuses) != 1 or not _STATUS.fullmatch(statuses[0]):
        return 0
    return int(statuses[0])


class PendingBody:
    """A message body being collected, up to ``limit`` bytes."""

    __slots__ = ("chunks", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> bool:
        """Keep ``data``; False (and nothing kept) once the body would pass the limit."""
        self.size += len(data)
        if self.size > self.limit:
            return False
        if data:
            self.chunks.append(data)
        return True

    def take(self) -> bytes:
        """The body so far."""
        return b"".join(self.chunks)
