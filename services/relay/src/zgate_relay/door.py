"""The relay's front door (sans-IO): what to do with a datagram that names no connection.

Everything here runs before any per-connection state exists, and costs a few dictionary
look-ups and at most one HMAC, so that a flood of forged Initials is turned away for far
less than a TLS handshake (about a millisecond of CPU and 60 kB of memory each):

- per source (an IPv4 address, an IPv6 /64), a token bucket of new-connection attempts
  (``source_rate`` drops);
- Retry (RFC 9000 §8.1.2): in ``always`` mode every first Initial, in ``auto`` mode only
  while new connections arrive faster than a threshold or too many handshakes are half
  open, is answered with a Retry carrying an address-validation token instead of a
  connection; the Initial that brings the token back proves its address;
- a bound on half-open connections (handshake not done) in all and per source IP
  (``half_open_full`` / ``source_half_open`` drops), so that their memory is bounded by
  configuration; the core drops those that miss the handshake deadline;
- stateless resets (RFC 9000 §10.3) for short-header datagrams whose connection the relay
  does not know (a relay that restarted), with tokens derived from a key kept across
  restarts, rate-limited and always shorter than the datagram that triggered them.

Drops are silent (no answer, no log line each) and counted by reason; :meth:`FrontDoor.report`
gives the core one summary line now and then for the log.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from zgate_proto.engines.base import Address
from zgate_proto.errors import DecodeError
from zgate_proto.quic_header import QuicHeader, initial_token
from zgate_proto.retry import RetryTokens, TokenRefused, encode_retry

__all__ = [
    "DOOR_DROP_REASONS",
    "DOOR_OUTCOMES",
    "Admitted",
    "DoorLimits",
    "FrontDoor",
    "RetryMode",
    "reset_token",
    "source_of",
]

RetryMode = Literal["auto", "always", "never"]

#: Why a connection attempt was turned away before it had any state (a bounded set).
DOOR_DROP_REASONS: Final = (
    "short_dcid",  # an Initial's destination CID under 8 bytes (RFC 9000 §7.2)
    "malformed_token",  # the Initial's token field is cut short, or no token of ours
    "bad_token",  # a token that does not match the address or the connection ID
    "expired_token",  # a token older than its lifetime
    "source_rate",  # the source IP opens connections faster than allowed
    "half_open_full",  # as many half-open connections as allowed already
    "source_half_open",  # the source IP has as many half-open connections as allowed
    "handshake_timeout",  # a half-open connection that missed the handshake deadline
    "reset_rate",  # a stateless reset not sent: too many of them this second
)

#: What the front door did (besides dropping).
DOOR_OUTCOMES: Final = ("accepted", "retry_sent", "validated", "stateless_reset")

#: The shortest destination CID a client's first Initial may carry (RFC 9000 §7.2).
_MIN_CLIENT_DCID: Final = 8
#: A stateless reset is at least this long (RFC 9000 §10.3) ...
_MIN_RESET: Final = 21
#: ... and need not be longer than this to look like any short-header packet.
_MAX_RESET: Final = 43
#: Source IPs with a rate bucket, at most; past it new sources share one bucket.
_MAX_SOURCES: Final = 65536
#: Seconds between two "handshake flood" summaries in the log.
_REPORT_INTERVAL: Final = 10.0


@dataclass(frozen=True, slots=True)
class DoorLimits:
    """The front door's configuration. A limit of 0 turns that check off (the measurements
    of "before"); the defaults are what a relay should run with."""

    retry: RetryMode = "auto"
    #: auto: Retry while more new-connection attempts than this arrive per second (from
    #: all sources, counted before any other check) ...
    retry_above_rate: float = 20.0
    #: ... or while at least this many handshakes are half open. A Retry costs a real client
    #: one round trip; every handshake costs the relay about a millisecond of CPU, during
    #: which its socket fills: so, low.
    retry_above_half_open: int = 8
    #: Half-open connections in all, at most (each holds a TLS handshake: about 60 kB
    #: with qh3, measured in tests/e2e/test_e2e_flood.py's "before").
    max_half_open: int = 1000
    #: Half-open connections per source IP, at most.
    max_half_open_per_source: int = 32
    #: New-connection attempts per source IP per second (bursts of twice that pass).
    new_per_source: float = 20.0
    #: Seconds a connection has to complete its handshake.
    handshake_deadline: float = 10.0
    #: Seconds a Retry token stays good.
    token_lifetime: float = 10.0
    #: Stateless resets sent per second, at most (bursts of the same size pass).
    resets_per_second: float = 100.0


@dataclass(frozen=True, slots=True)
class Admitted:
    """Make a connection. After a Retry, with the connection IDs its token vouched for."""

    original_destination_cid: bytes | None = None
    retry_source_cid: bytes | None = None


_FIRST: Final = Admitted()


def reset_token(key: bytes, connection_id: bytes) -> bytes:
    """The stateless reset token of one of the relay's connection IDs (RFC 9000 §10.3.2:
    a keyed function of the ID, so that a restarted relay knowing the key knows it)."""
    return hmac.digest(key, b"zgate stateless reset\x00" + connection_id, hashlib.sha256)[:16]


def source_of(addr: Address) -> str:
    """Whom per-source limits count an address toward: its IPv4 address, or the /64 of an
    IPv6 one (one host commonly holds a whole /64, and picks a new address at will)."""
    host = str(addr[0])
    if ":" not in host:
        return host
    ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.packed[:8].hex() + "::/64"


class _Bucket:
    """A token bucket: ``rate`` per second, holding at most ``burst``."""

    __slots__ = ("at", "level")

    def __init__(self, level: float, at: float) -> None:
        self.level = level
        self.at = at

    def take(self, rate: float, burst: float, now: float) -> bool:
        level = min(burst, self.level + (now - self.at) * rate)
        self.at = now
        if level < 1.0:
            self.level = level
            return False
        self.level = level - 1.0
        return True


class FrontDoor:
    """Admission decisions for new connections, and stateless resets (see the module
    docstring). ``drops`` and ``outcomes`` are the metrics' counters (dicts of ints)."""

    def __init__(
        self,
        limits: DoorLimits,
        *,
        drops: dict[str, int],
        outcomes: dict[str, int],
        cid_length: int = 8,
        reset_key: bytes | None = None,
        token_key: bytes | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.limits = limits
        self.drops = drops
        self.outcomes = outcomes
        self.cid_length = cid_length
        self.reset_key = reset_key
        self._random = random
        self._tokens = RetryTokens(token_key or random(32), lifetime=limits.token_lifetime)
        self._sources: dict[str, _Bucket] = {}
        self._overflow = _Bucket(0.0, 0.0)
        self._half_open: dict[str, int] = {}
        self.half_open = 0
        self._window = 0.0  # start of the current one-second window
        self._this_second = 0
        self._last_second = 0
        self._resets = _Bucket(limits.resets_per_second, 0.0)
        self._reported_at: float | None = None  # when the last line was given
        self._since: float | None = None  # since when the counts in _reported run
        self._reported: dict[str, int] = {}

    # ------------------------------------------------------------ new connections

    def admit(
        self, data: bytes, header: QuicHeader, addr: Address, now: float
    ) -> Admitted | bytes | None:
        """A QUIC v1 Initial of at least 1200 bytes for no known connection: make a
        connection (:class:`Admitted`), answer with these bytes (a Retry), or drop it (None,
        counted)."""
        limits = self.limits
        drops = self.drops
        if len(header.destination_cid) < _MIN_CLIENT_DCID:
            drops["short_dcid"] += 1
            return None
        self._count_attempt(now)
        ip = source_of(addr)
        if limits.new_per_source and not self._source_may_open(ip, now):
            drops["source_rate"] += 1
            return None
        try:
            token = initial_token(data, header)
        except DecodeError:
            drops["malformed_token"] += 1
            return None
        if token:
            try:
                valid = self._tokens.validate(token, addr, header.destination_cid, now)
            except TokenRefused as exc:
                drops[exc.reason] += 1
                return None
            if not self._room_for(ip):
                return None
            self.outcomes["validated"] += 1
            return Admitted(valid.original_destination_cid, valid.retry_source_cid)
        if self._wants_retry():
            return self._retry(header, addr, now)
        if not self._room_for(ip):
            return None
        return _FIRST

    def _source_may_open(self, ip: str, now: float) -> bool:
        rate = self.limits.new_per_source
        bucket = self._sources.get(ip)
        if bucket is None:
            if len(self._sources) >= _MAX_SOURCES:
                bucket = self._overflow
            else:
                bucket = self._sources[ip] = _Bucket(2 * rate, now)
        return bucket.take(rate, 2 * rate, now)

    def _count_attempt(self, now: float) -> None:
        if now - self._window >= 1.0:
            self._last_second = self._this_second if now - self._window < 2.0 else 0
            self._this_second = 0
            self._window = now
        self._this_second += 1

    @property
    def attempts_per_second(self) -> int:
        """New-connection attempts in the last full second, or this one if more."""
        return max(self._last_second, self._this_second)

    def _wants_retry(self) -> bool:
        limits = self.limits
        if limits.retry == "always":
            return True
        if limits.retry == "never":
            return False
        return (
            self.attempts_per_second > limits.retry_above_rate
            or self.half_open >= limits.retry_above_half_open
        )

    def _retry(self, header: QuicHeader, addr: Address, now: float) -> bytes:
        odcid = header.destination_cid
        scid = self._random(self.cid_length)
        while scid == odcid:
            scid = self._random(self.cid_length)
        token = self._tokens.mint(addr, odcid, scid, now)
        self.outcomes["retry_sent"] += 1
        return encode_retry(
            destination_cid=header.source_cid,
            source_cid=scid,
            original_destination_cid=odcid,
            token=token,
            unused_bits=self._random(1)[0],
        )

    def _room_for(self, ip: str) -> bool:
        limits = self.limits
        if limits.max_half_open and self.half_open >= limits.max_half_open:
            self.drops["half_open_full"] += 1
            return False
        per_source = limits.max_half_open_per_source
        if per_source and self._half_open.get(ip, 0) >= per_source:
            self.drops["source_half_open"] += 1
            return False
        return True

    # --------------------------------------------------------- half-open connections

    def opened(self, addr: Address) -> None:
        """A connection was made for ``addr``: half open until :meth:`settled`."""
        ip = source_of(addr)
        self.half_open += 1
        self._half_open[ip] = self._half_open.get(ip, 0) + 1
        self.outcomes["accepted"] += 1

    def settled(self, addr: Address) -> None:
        """A half-open connection completed its handshake, or went away."""
        ip = source_of(addr)
        self.half_open -= 1
        left = self._half_open.get(ip, 0) - 1
        if left > 0:
            self._half_open[ip] = left
        else:
            self._half_open.pop(ip, None)

    def timed_out(self) -> None:
        """Count a half-open connection dropped at its handshake deadline."""
        self.drops["handshake_timeout"] += 1

    # -------------------------------------------------------------- stateless reset

    def reset_token_of(self, connection_id: bytes) -> bytes:
        """The token the engines put beside each connection ID they issue."""
        assert self.reset_key is not None, "no reset key"
        return reset_token(self.reset_key, connection_id)

    def stateless_reset(self, data: bytes, now: float) -> bytes | None:
        """A stateless reset for a short-header datagram of no known connection, or None:
        no reset key, a datagram too short to answer with a shorter reset (which is what
        keeps two endpoints from resetting each other for ever, RFC 9000 §10.3.3), or the
        rate limit (counted)."""
        key = self.reset_key
        size = min(len(data) - 1, _MAX_RESET)
        if key is None or size < _MIN_RESET or len(data) < 1 + self.cid_length:
            return None
        rate = self.limits.resets_per_second
        if rate and not self._resets.take(rate, rate, now):
            self.drops["reset_rate"] += 1
            return None
        token = reset_token(key, data[1 : 1 + self.cid_length])
        filler = self._random(size - 16)
        # RFC 9000 §10.3: it looks like a short header: 0b01 then unpredictable bits.
        first = bytes((0x40 | (filler[0] & 0x3F),))
        self.outcomes["stateless_reset"] += 1
        return first + filler[1:] + token

    # ----------------------------------------------------------------- housekeeping

    def expire(self, now: float) -> None:
        """Forget the rate buckets of sources quiet long enough to be full again."""
        rate = self.limits.new_per_source
        if not rate:
            return
        refill = 2.0  # a bucket refills in 2 s (burst = 2 x rate)
        stale = [ip for ip, b in self._sources.items() if now - b.at >= refill]
        for ip in stale:
            del self._sources[ip]

    def report(self, now: float) -> str | None:
        """One line for the log when at least 100 connection attempts were dropped or
        retried since the last line (or the last quiet call), at once, then at most every
        ten seconds while it goes on ("handshake flood: ...")."""
        current = {**self.drops, "retry_sent": self.outcomes["retry_sent"]}
        if self._reported_at is not None and now - self._reported_at < _REPORT_INTERVAL:
            return None  # within ten seconds of the last line: keep counting from it
        since = self._since
        busy = {
            k: v - self._reported.get(k, 0)
            for k, v in current.items()
            if k != "reset_rate" and v - self._reported.get(k, 0)
        }
        self._reported, self._since = current, now
        if since is None or sum(busy.values()) < 100:
            return None
        self._reported_at = now
        parts = ", ".join(f"{k} {v}" for k, v in sorted(busy.items()))
        return (
            f"handshake flood: {parts} in the last {now - since:.0f} s; "
            f"{self.half_open} half open, {self.attempts_per_second} attempts/s"
        )
