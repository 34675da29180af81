"""`GET /.well-known/zgate/why?target=proto://host:port`: why the relay refuses (or allows)
a destination for the asking agent (sans-IO).

The question comes as a plain HTTP/3 request on the agent's own QUIC connection, so the
identity is the connection's verified client certificate, never anything in the request;
the answer speaks only of that identity: the running policy's decision and explanation for
it, and its own last denied flows to that destination.
"""

from __future__ import annotations

import ipaddress
import json
import weakref
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs

from zgate_pki import Identity
from zgate_policy import Explanation, TestTarget
from zgate_policy.testing import target_flow
from zgate_proto.session import RequestReceived
from zgate_relay.denials import Denial
from zgate_relay.enforce import RELAY_DNS_RULE, Enforcer

__all__ = ["WHY_PATH", "WhyDesk", "WhyReply", "answer_why"]

#: Where agents ask.
WHY_PATH: Final = "/.well-known/zgate/why"

#: The IP protocols a denial may have for each scheme of a target.
_PROTOCOLS: Final = {"tcp": frozenset((6,)), "udp": frozenset((17,)), "icmp": frozenset((1, 58))}
_JSON: Final = (b"content-type", b"application/json")
_PROBLEM: Final = (b"content-type", b"application/problem+json")
_TITLES: Final = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
}
_DNS_PORT: Final = 53


@dataclass(frozen=True, slots=True)
class WhyReply:
    """The response to send, and how the request is counted (a ``WHY_RESULTS`` label)."""

    status: int
    headers: Sequence[tuple[bytes, bytes]]
    body: bytes
    result: str


class WhyDesk:
    """Answers the plain requests of each connection (``asker``) within a token bucket of
    ``rate`` a second and bursts of ``burst``: ``explain()`` walks every rule, so an agent
    asking in a loop must not take the relay's time from the packets. Beyond it: 429."""

    def __init__(self, *, rate: float = 5.0, burst: float = 20.0) -> None:
        self.rate = rate
        self.burst = burst
        # Weak keys: a bucket goes with its connection, never needing a sweep.
        self._buckets: weakref.WeakKeyDictionary[object, tuple[float, float]] = (
            weakref.WeakKeyDictionary()
        )

    def answer(
        self,
        asker: object,
        request: RequestReceived,
        identity: Identity | None,
        enforcer: Enforcer | None,
        now: float,
    ) -> WhyReply:
        """:func:`answer_why`, or 429 when ``asker`` has asked too often."""
        tokens, last = self._buckets.get(asker, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[asker] = (tokens, now)
            detail = "too many questions: ask again in a second"
            return _problem(429, detail, "rate_limited", [(b"retry-after", b"1")])
        self._buckets[asker] = (tokens - 1, now)
        return answer_why(request, identity, enforcer, now)


def answer_why(
    request: RequestReceived, identity: Identity | None, enforcer: Enforcer | None, now: float
) -> WhyReply:
    """The answer to a plain request on a client's connection: the why answer for GET on
    :data:`WHY_PATH`, 404 for another path, 405 for another method, 400 (RFC 9457 problem
    JSON) for a bad ``target``. ``now`` is the relay's monotonic clock (name bindings)."""
    path, _, query = request.path.partition("?")
    if path != WHY_PATH:
        return _problem(404, f"nothing is served at {path}", "not_found")
    if request.method != "GET":
        return _problem(405, f"{path} answers GET only", "bad_method", [(b"allow", b"GET")])
    if identity is None:
        return _problem(403, "the connection has no client identity", "no_identity")
    targets = parse_qs(query).get("target", [])
    if len(targets) != 1:
        return _problem(400, "give one target: ?target=tcp://HOST:PORT", "bad_target")
    try:
        target = TestTarget.parse(targets[0])
    except ValueError as exc:
        return _problem(400, str(exc), "bad_target")
    answer = _verdict(identity, target, enforcer, now)
    return WhyReply(200, [_JSON], json.dumps(answer).encode() + b"\n", str(answer["verdict"]))


def _verdict(
    identity: Identity, target: TestTarget, enforcer: Enforcer | None, now: float
) -> dict[str, object]:
    """The decision for ``identity`` towards ``target``, as the enforcer would take it."""
    answer: dict[str, object] = {"client": str(identity), "target": str(target)}
    if enforcer is None:
        return {
            **answer,
            "verdict": "allow",
            "rule": None,
            "policy_version": None,
            "explanation": ["verdict: allow (access control is off on this relay)"],
            "recent_denials": [],
        }
    proto, dst, dport, fqdns = target_flow(target)
    policy = enforcer.policy
    country = None
    if dst is not None:
        if enforcer.names_for is not None:  # what this client's own DNS answers bound
            fqdns = tuple(sorted(enforcer.names_for(identity.ident, dst.packed, now)))
        if policy.uses_geoip and enforcer.country_of is not None:
            country = enforcer.country_of(dst.packed)
    if _relay_dns(dst, dport, proto, enforcer.relay_addresses):
        verdict, rule = "allow", RELAY_DNS_RULE
        lines = [
            f"verdict: allow (rule {RELAY_DNS_RULE})",
            "the relay's own DNS service is always allowed: the FQDN rules depend on it",
        ]
    else:
        explained = policy.explain(
            identity.ident,
            identity.groups,
            proto,
            dst,
            dport,
            fqdns=fqdns,
            country=country,
            now=enforcer.wall_clock(),
        )
        verdict, rule = explained.decision.verdict, explained.decision.rule_id
        lines = _own_lines(explained)
        if fqdns:
            lines.insert(1, f"names: {', '.join(fqdns)}")
    denials = _about(enforcer.denials.recent(str(identity)), target)
    return {
        **answer,
        "verdict": verdict,
        "rule": rule,
        "policy_version": policy.version,
        "explanation": lines,
        "recent_denials": [d.to_json() for d in denials],
    }


def _own_lines(explained: Explanation) -> list[str]:
    """``explain()``'s lines without the rules that are not for this client: their reason
    names the clients and groups they are for, which are none of the asker's business."""
    own = tuple(s for s in explained.steps if s.matched or not s.reason.startswith("principal:"))
    lines = Explanation(explained.decision, explained.principals, own).lines()
    hidden = len(explained.steps) - len(own)
    if hidden:
        lines.insert(2, f"  ({hidden} rule{'s' * (hidden > 1)} for other clients left out)")
    return lines


def _relay_dns(
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    dport: int | None,
    proto: int,
    relay_addresses: Collection[bytes],
) -> bool:
    """The relay's own DNS service (the enforcer always allows it)."""
    return (
        dst is not None
        and dport == _DNS_PORT
        and proto in (6, 17)
        and (dst.packed in relay_addresses)
    )


def _about(denials: Iterable[Denial], target: TestTarget) -> list[Denial]:
    """The denials of flows to ``target``: its IP (or a name the flow's destination was
    bound to), its protocol and its port."""
    protocols = _PROTOCOLS[target.proto]
    host = target.host
    return [
        d
        for d in denials
        if d.proto in protocols
        and (target.port is None or d.dport == target.port)
        and (host in d.names if isinstance(host, str) else d.dst == host.packed)
    ]


def _problem(
    status: int, detail: str, result: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> WhyReply:
    """An RFC 9457 problem document."""
    body = {"type": "about:blank", "title": _TITLES[status], "status": status, "detail": detail}
    return WhyReply(status, [_PROBLEM, *extra], json.dumps(body).encode() + b"\n", result)
