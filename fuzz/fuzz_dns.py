"""Fuzz the DNS parsing of the relay's DNS forwarder and of the agent's resolver setup:
zgate_relay.dns (queries from agents, answers from upstream resolvers, upstream
addresses) and zgate_host.resolver (resolv.conf text and the agent's resolver backup).

The first input byte picks one of four inputs:

0. a query from an agent: ``parse_query`` never raises (None: malformed, counted); for a
   query, the replies the forwarder builds itself (REFUSED, NOTIMP, SERVFAIL, truncated)
   encode and parse back as responses to it;
1. an upstream answer to a fixed query: dnspython may refuse it with any exception (the
   forwarder catches them all and tries the next upstream); a parsed answer goes through
   ``resolved_chain``, which must return a chain or None and never raise;
2. an upstream address (``--dns-upstream``): ``parse_upstream`` returns (IP, port) or
   raises DnsError;
3. resolv.conf text and a resolver backup: ``nameservers``/``render_resolv_conf`` never
   raise and the rendered file names the relay's servers first; ``Backup.from_json``
   returns a Backup or raises ValueError.
"""

from __future__ import annotations

import ipaddress
import sys

from harness import check, instrumented, main

with instrumented(__name__ == "__main__"):
    import dns.flags
    import dns.message
    import dns.rcode

    from zgate_host.resolver import Backup, nameservers, render_resolv_conf
    from zgate_relay.dns import (
        DnsError,
        _reply,
        _udp_limit,
        parse_query,
        parse_upstream,
        resolved_chain,
    )
    from zgate_relay.fqdn import normalize_name

TARGETS = ("zgate_relay.dns", "zgate_host.resolver")
QUERY = dns.message.make_query("app.corp.example.", "A", id=0x1234)
RELAY_SERVERS = (ipaddress.ip_address("10.100.0.1"), ipaddress.ip_address("fd7a:7a67::1"))


def _query(wire: bytes) -> None:
    query = parse_query(wire)
    if query is None:
        return
    check(len(query.question) == 1 and not query.flags & dns.flags.QR, "not a query")
    name = normalize_name(query.question[0].name.to_text(omit_final_dot=True))
    check(name == name.lower() and not name.endswith("."), "name not normalized")
    check(_udp_limit(query) >= 512, "UDP limit under 512")
    for rcode, truncated in ((dns.rcode.REFUSED, False), (dns.rcode.SERVFAIL, True)):
        reply = dns.message.from_wire(_reply(query, rcode, truncated=truncated))
        check(query.is_response(reply) and reply.rcode() == rcode, "reply does not answer")


def _answer(wire: bytes) -> None:
    try:
        response = dns.message.from_wire(wire)
    except Exception:  # the forwarder's own contract: any parse failure means "next upstream"
        return
    for qname in (QUERY.question[0].name, *(rrset.name for rrset in response.answer[:4])):
        chain = resolved_chain(qname, response)
        if chain is None:
            continue
        check(bool(chain.addresses) and len(chain.names) >= 1, "an empty chain")
        check(chain.ttl >= 0, "negative TTL")


def _upstream(text: bytes) -> None:
    try:
        host, port = parse_upstream(text.decode("utf-8", "replace"))
    except DnsError:
        return
    check(0 < port < 65536, "port out of range")
    check(parse_upstream(host if ":" not in host else f"[{host}]:{port}")[0] == host, "host")


def _resolver(text: bytes) -> None:
    conf = text.decode("utf-8", "replace")
    found = nameservers(conf)
    check(all(ns and not any(c.isspace() for c in ns) for ns in found), "bad nameserver")
    for fallback in (False, True):
        rendered = render_resolv_conf(RELAY_SERVERS, conf, device="zg0", fallback=fallback)
        ours = [str(s) for s in RELAY_SERVERS]
        check(nameservers(rendered)[: len(ours)] == ours, "the relay's servers are not first")
    try:
        backup = Backup.from_json(conf)
    except ValueError:
        return
    check(Backup.from_json(backup.to_json()) == backup, "a backup does not round-trip")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    if mode == 0:
        _query(body)
    elif mode == 1:
        _answer(body)
    elif mode == 2:
        _upstream(body)
    else:
        _resolver(body)


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)
