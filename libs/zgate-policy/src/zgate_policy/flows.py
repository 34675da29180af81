"""The relay's flow table (sans-IO: time is passed in as float seconds, e.g. ``loop.time()``).

A flow is a 5-tuple seen from the agent's side (``src`` is the agent's address) with the
policy decision taken when it started, its counters and, for TCP, a state read from the
flags. Only packets from agents create flows; a packet towards an agent is forwarded only
if :func:`reply_key_from_packet` names a flow that exists.

Keys:

* TCP, UDP and SCTP: the addresses and ports.
* ICMP/ICMPv6 echo: the echo identifier as both ports. The agent's requests and the
  world's replies map to the same key.
* ICMP/ICMPv6 errors (destination unreachable, packet too big, time exceeded, parameter
  problem, IPv4 source quench and redirect): the key of the flow the quoted packet belongs
  to, so an error travels with the flow it is about. The quoted packet must involve the
  agent's address (its source for an error towards the agent, its destination for one
  from the agent), otherwise there is no key. Errors about errors have no key.
* Anything else (other ICMP types, other protocols) and IP fragments that carry no
  transport header (all but the first): ports 0. So a flow's later fragments form a flow
  of their own, decided without a port (a rule limited to ports will not allow them).

Malformed packets have no key (None); these functions never raise.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from zgate_proto.ip import PacketInfo
from zgate_proto.packet import FlowKey, PacketView, parse_packet

__all__ = [
    "END_REASONS",
    "TCP_CLOSING",
    "TCP_ESTABLISHED",
    "TCP_SYN",
    "DecisionLike",
    "EndReason",
    "Flow",
    "FlowKey",
    "FlowTable",
    "Timeouts",
    "flow_key_from_info",
    "flow_key_from_packet",
    "flow_key_from_view",
    "reply_key_from_info",
    "reply_key_from_packet",
    "reply_key_from_view",
    "tcp_flags",
]

Verdict = Literal["allow", "deny"]
EndReason = Literal["idle", "tcp_closed", "session_closed", "policy_revoked", "policy_changed"]
#: Why a flow left the table: idle timeout, idle after FIN/RST, its session ended, the new
#: policy denies it, or (``policy_changed``) a denied flow the new policy allows — removed
#: so that its next packet is decided, and audited, afresh.
END_REASONS: Final[tuple[EndReason, ...]] = (
    "idle",
    "tcp_closed",
    "session_closed",
    "policy_revoked",
    "policy_changed",
)

TCP_SYN: Final = "syn"
TCP_ESTABLISHED: Final = "established"
TCP_CLOSING: Final = "closing"

_TCP, _UDP, _SCTP, _ICMP, _ICMPV6 = 6, 17, 132, 1, 58
_PORT_PROTOCOLS: Final = frozenset((_TCP, _UDP, _SCTP))
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_ICMPV4_ERRORS: Final = frozenset((3, 4, 5, 11, 12))
# Echo request and reply type per IP version.
_ECHO_REQUEST: Final = {4: 8, 6: 128}
_ECHO_REPLY: Final = {4: 0, 6: 129}
_ICMP_FOR: Final = {4: _ICMP, 6: _ICMPV6}
_IPV6_OPTION_LIKE: Final = frozenset((0, 43, 60))  # hop-by-hop, routing, destination
#: What the key functions read a packet's headers from: the relay's one parse
#: (:class:`~zgate_proto.packet.PacketView`) or :func:`zgate_proto.ip.parse_packet`'s.
_Parsed = PacketView | PacketInfo
#: FlowKey(...) without the Python-level __new__ a named tuple adds: half the cost, on the
#: path of every packet.
_new_key = tuple.__new__


class DecisionLike(Protocol):
    """What the table needs of a policy decision (``zgate_policy.matcher.Decision``)."""

    @property
    def verdict(self) -> Verdict:
        """``allow`` or ``deny``."""
        ...

    @property
    def rule_id(self) -> str:
        """The deciding rule (``default`` when none matched)."""
        ...


# --- keys ------------------------------------------------------------------------------


def flow_key_from_view(view: PacketView) -> FlowKey | None:
    """The key of the flow a packet from an agent belongs to (the agent's side is the
    packet's source), or None when it has none (an error about an error, say)."""
    sport, dport = view.sport, view.dport
    if sport is not None and dport is not None:  # TCP, UDP, SCTP: the common case
        return _new_key(FlowKey, (view.proto, view.src, sport, view.dst, dport))
    return _key_from_info(view, view.data, outbound=True, allow_error=True)


def reply_key_from_view(view: PacketView) -> FlowKey | None:
    """The key of the flow a packet towards an agent answers (addresses and ports swapped
    back to the agent's side), or None when it has none."""
    sport, dport = view.sport, view.dport
    if sport is not None and dport is not None:
        return _new_key(FlowKey, (view.proto, view.dst, dport, view.src, sport))
    return _key_from_info(view, view.data, outbound=False, allow_error=True)


def flow_key_from_packet(packet: bytes) -> FlowKey | None:
    """:func:`flow_key_from_view` of raw bytes; None if they are no well-formed packet."""
    view = parse_packet(packet)
    return flow_key_from_view(view) if view is not None else None


def reply_key_from_packet(packet: bytes) -> FlowKey | None:
    """:func:`reply_key_from_view` of raw bytes; None if they are no well-formed packet."""
    view = parse_packet(packet)
    return reply_key_from_view(view) if view is not None else None


def flow_key_from_info(info: PacketInfo, packet: bytes) -> FlowKey | None:
    """:func:`flow_key_from_packet` for a packet the caller has already parsed."""
    return _key_from_info(info, packet, outbound=True, allow_error=True)


def reply_key_from_info(info: PacketInfo, packet: bytes) -> FlowKey | None:
    """:func:`reply_key_from_packet` for a packet the caller has already parsed."""
    return _key_from_info(info, packet, outbound=False, allow_error=True)


def tcp_flags(packet: bytes) -> int | None:
    """The TCP flags byte of a TCP packet; None for other protocols, later fragments and
    malformed packets (an ICMP error about a TCP flow included)."""
    view = parse_packet(packet)
    return view.tcp_flags if view is not None else None


def _key(proto: int, src: bytes, sport: int, dst: bytes, dport: int, outbound: bool) -> FlowKey:
    """The key of a packet going from src to dst, turned to the agent's side."""
    if outbound:
        return FlowKey(proto, src, sport, dst, dport)
    return FlowKey(proto, dst, dport, src, sport)


def _key_from_info(
    info: _Parsed, packet: bytes, *, outbound: bool, allow_error: bool
) -> FlowKey | None:
    if info.sport is not None and info.dport is not None:
        return _key(info.proto, info.src, info.sport, info.dst, info.dport, outbound)
    icmp_type = info.icmp_type
    if icmp_type is None:
        return _key(info.proto, info.src, 0, info.dst, 0, outbound)
    version = info.version
    is_error = icmp_type in _ICMPV4_ERRORS if version == 4 else icmp_type < 128
    if is_error:
        if not allow_error:
            return None
        agent = info.src if outbound else info.dst
        return _quoted_key(packet, info.header_len + 8, info.total_len, version, outbound, agent)
    return _icmp_key(info, packet, outbound)


def _icmp_key(info: _Parsed, packet: bytes, outbound: bool) -> FlowKey | None:
    """ICMP messages other than errors: echo by identifier, the rest without ports."""
    assert info.icmp_type is not None
    echo = _ECHO_REQUEST if outbound else _ECHO_REPLY
    if info.icmp_type != echo[info.version]:
        return _key(info.proto, info.src, 0, info.dst, 0, outbound)
    pos = info.header_len
    if pos + 8 > info.total_len:
        return None  # an echo message is at least 8 bytes
    ident = (packet[pos + 4] << 8) | packet[pos + 5]
    return _key(info.proto, info.src, ident, info.dst, ident, outbound)


def _quoted_key(
    packet: bytes, start: int, end: int, version: int, outbound: bool, agent: bytes
) -> FlowKey | None:
    """The key of the flow an ICMP error's quoted packet (``packet[start:end]``) belongs to.

    The quote is usually cut short, so its declared lengths are not checked; only the bytes
    we read must be inside the error. The quoted packet went the other way: an error from
    the agent quotes a packet towards it, and vice versa.
    """
    quoted = _parse_quoted(packet, start, end, version)
    if quoted is None:
        return None
    proto, src, dst, pos, has_transport = quoted
    inner_outbound = not outbound
    if (src if inner_outbound else dst) != agent:
        return None  # about somebody else's packet: no flow of this agent's
    if not has_transport:
        return _key(proto, src, 0, dst, 0, inner_outbound)
    if proto in _PORT_PROTOCOLS:
        if pos + 4 > end:
            return None
        sport = (packet[pos] << 8) | packet[pos + 1]
        dport = (packet[pos + 2] << 8) | packet[pos + 3]
        return _key(proto, src, sport, dst, dport, inner_outbound)
    if proto != _ICMP_FOR[version]:
        return _key(proto, src, 0, dst, 0, inner_outbound)
    if pos + 8 > end:
        return None
    info = PacketInfo(
        version, src, dst, proto, None, None, packet[pos], packet[pos + 1], pos, end, False, None
    )
    return _key_from_info(info, packet, outbound=inner_outbound, allow_error=False)


def _parse_quoted(
    packet: bytes, start: int, end: int, version: int
) -> tuple[int, bytes, bytes, int, bool] | None:
    """(proto, src, dst, transport offset, has transport header) of a quoted IP header."""
    if version == 4:
        if start + 20 > end or packet[start] >> 4 != 4:
            return None
        pos = start + ((packet[start] & 0x0F) << 2)
        if pos < start + 20 or pos > end:
            return None
        later_fragment = bool(((packet[start + 6] & 0x1F) << 8) | packet[start + 7])
        src, dst = packet[start + 12 : start + 16], packet[start + 16 : start + 20]
        return packet[start + 9], src, dst, pos, not later_fragment
    if start + 40 > end or packet[start] >> 4 != 6:
        return None
    src, dst = packet[start + 8 : start + 24], packet[start + 24 : start + 40]
    proto, pos = packet[start + 6], start + 40
    for _ in range(16):  # a bounded walk of the extension header chain (RFC 8200 §4)
        if proto in _IPV6_OPTION_LIKE:
            if pos + 2 > end:
                return None
            proto, pos = packet[pos], pos + ((packet[pos + 1] + 1) << 3)
        elif proto == 51:  # AH: length in 4-byte units, minus 2 (RFC 4302 §2.2)
            if pos + 2 > end:
                return None
            proto, pos = packet[pos], pos + ((packet[pos + 1] + 2) << 2)
        elif proto == 44:
            if pos + 8 > end:
                return None
            offset = ((packet[pos + 2] << 8) | packet[pos + 3]) & 0xFFF8
            proto, pos = packet[pos], pos + 8
            if offset:
                return proto, src, dst, pos, False
        else:
            return proto, src, dst, pos, True
    return None


# --- the table --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Idle timeouts in seconds. TCP ones depend on the state read from the flags."""

    tcp_syn: float = 30.0
    tcp_established: float = 3600.0
    tcp_closing: float = 30.0
    """After a FIN or RST in either direction."""
    udp: float = 60.0
    icmp: float = 30.0
    """ICMP and ICMPv6."""
    other: float = 60.0

    def __post_init__(self) -> None:
        for name in ("tcp_syn", "tcp_established", "tcp_closing", "udp", "icmp", "other"):
            if not getattr(self, name) > 0:
                raise ValueError(f"timeout {name} must be positive")

    def for_flow(self, proto: int, tcp_state: str | None) -> float:
        """The idle timeout of a flow of this protocol (and TCP state)."""
        if proto == _TCP:
            if tcp_state == TCP_ESTABLISHED:
                return self.tcp_established
            return self.tcp_closing if tcp_state == TCP_CLOSING else self.tcp_syn
        if proto == _UDP:
            return self.udp
        if proto in (_ICMP, _ICMPV6):
            return self.icmp
        return self.other


@dataclass(slots=True, eq=False)
class Flow:
    """One flow: the decision taken at its start, counters both ways (``out`` = from the
    agent) and times in the caller's clock. ``tcp_state`` is None for other protocols.
    ``end_reason`` is set when the table removes the flow."""

    key: FlowKey
    session_id: str
    verdict: Verdict
    rule_id: str
    policy_version: str
    fqdn: str | None
    created: float
    last_seen: float
    idle_timeout: float
    tcp_state: str | None = None
    packets_out: int = 0
    packets_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    connector: str | None = None
    end_reason: EndReason | None = None
    # Deadline of the flow's current entry in the table's expiry heap.
    _queued: float = field(default=0.0, init=False, repr=False)


def _tcp_transitions(inbound: bool) -> dict[str, tuple[str, ...]]:
    """Next TCP state per current state, indexed by ``flags & 0x1F`` (FIN SYN RST PSH ACK).

    FIN or RST either way: closing. A SYN from the agent (re)starts a connection. The
    flow becomes established only on an ACK from the far side, so an agent cannot make a
    long-lived entry on its own.
    """
    table: dict[str, tuple[str, ...]] = {}
    for state in (TCP_SYN, TCP_ESTABLISHED, TCP_CLOSING):
        row = []
        for flags in range(32):
            if flags & (_FIN | _RST):
                row.append(TCP_CLOSING)
            elif not inbound and flags & _SYN and not flags & _ACK:
                row.append(TCP_SYN)
            elif inbound and state == TCP_SYN and flags & _ACK:
                row.append(TCP_ESTABLISHED)
            else:
                row.append(state)
        table[state] = tuple(row)
    return table


_TCP_OUT: Final = _tcp_transitions(inbound=False)
_TCP_IN: Final = _tcp_transitions(inbound=True)


class FlowTable:
    """Flows by key, bounded in total and per session, with amortized idle expiry.

    Expiry uses a heap of (deadline, seq, flow) entries. Packets only move ``last_seen``;
    an entry that comes due is re-checked and pushed again at the flow's real deadline, so
    each live flow costs a heap operation once per timeout period, never one per packet.
    A state change that shortens the timeout pushes an earlier entry; the older one is
    skipped when it comes out. Stale entries are compacted away when they outnumber flows.
    """

    def __init__(
        self,
        max_total: int = 262144,
        max_per_session: int = 8192,
        timeouts: Timeouts | None = None,
    ) -> None:
        if max_total < 1 or max_per_session < 1:
            raise ValueError("flow table bounds must be at least 1")
        self.max_total = max_total
        self.max_per_session = max_per_session
        self.timeouts = timeouts if timeouts is not None else Timeouts()
        self._flows: dict[FlowKey, Flow] = {}
        self._by_session: dict[str, dict[FlowKey, Flow]] = {}
        self._heap: list[tuple[float, int, Flow]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: object) -> bool:
        return key in self._flows

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def get(self, key: FlowKey) -> Flow | None:
        """The flow with this key, if any."""
        return self._flows.get(key)

    def count_for(self, session_id: str) -> int:
        """How many flows a session has."""
        flows = self._by_session.get(session_id)
        return len(flows) if flows is not None else 0

    def add(
        self,
        key: FlowKey,
        session_id: str,
        decision: DecisionLike,
        policy_version: str,
        now: float,
        fqdn: str | None = None,
    ) -> Flow | None:
        """Start a flow; None when the total or the session's bound is reached (the caller
        drops the packet and counts it). ValueError if the key is already in the table."""
        if key in self._flows:
            raise ValueError("flow already in the table")
        if len(self._flows) >= self.max_total:
            return None
        session_flows = self._by_session.get(session_id)
        if session_flows is None:
            session_flows = self._by_session[session_id] = {}
        elif len(session_flows) >= self.max_per_session:
            return None
        state = TCP_SYN if key.proto == _TCP else None
        timeout = self.timeouts.for_flow(key.proto, state)
        flow = Flow(
            key,
            session_id,
            decision.verdict,
            decision.rule_id,
            policy_version,
            fqdn,
            now,
            now,
            timeout,
            state,
        )
        self._flows[key] = flow
        session_flows[key] = flow
        self._push(flow, now + timeout)
        self._maybe_compact()
        return flow

    def seen_out(self, flow: Flow, size: int, tcp_flags: int | None, now: float) -> None:
        """Count a packet from the agent. Pass the flags only for a TCP packet."""
        flow.packets_out += 1
        flow.bytes_out += size
        flow.last_seen = now
        state = flow.tcp_state
        if tcp_flags is not None and state is not None:
            new = _TCP_OUT[state][tcp_flags & 0x1F]
            if new is not state:
                self._change_state(flow, new, now)

    def seen_in(self, flow: Flow, size: int, tcp_flags: int | None, now: float) -> None:
        """Count a packet towards the agent. Pass the flags only for a TCP packet."""
        flow.packets_in += 1
        flow.bytes_in += size
        flow.last_seen = now
        state = flow.tcp_state
        if tcp_flags is not None and state is not None:
            new = _TCP_IN[state][tcp_flags & 0x1F]
            if new is not state:
                self._change_state(flow, new, now)

    def next_expiry(self) -> float | None:
        """When :meth:`expire` may next have work (possibly early), or None if empty."""
        return self._heap[0][0] if self._heap else None

    def expire(self, now: float, budget: int = 1000) -> list[Flow]:
        """Remove flows idle past their timeout, looking at most at ``budget`` heap entries
        (call again, e.g. every second, to continue). Returns the removed flows, with
        ``end_reason`` ``idle`` or ``tcp_closed``."""
        ended: list[Flow] = []
        heap = self._heap
        while budget > 0 and heap and heap[0][0] <= now:
            budget -= 1
            deadline, _, flow = heapq.heappop(heap)
            if flow.end_reason is not None or flow._queued != deadline:
                continue  # the flow is gone, or a later or earlier entry speaks for it
            real = flow.last_seen + flow.idle_timeout
            if real > now:
                self._push(flow, real)
                continue
            self._remove(flow, "tcp_closed" if flow.tcp_state == TCP_CLOSING else "idle")
            ended.append(flow)
        self._maybe_compact()
        return ended

    def end_session(self, session_id: str) -> list[Flow]:
        """Remove every flow of a session (``end_reason`` ``session_closed``)."""
        flows = self._by_session.pop(session_id, None)
        if flows is None:
            return []
        for key, flow in flows.items():
            del self._flows[key]
            flow.end_reason = "session_closed"
        self._maybe_compact()
        return list(flows.values())

    def revalidate(
        self, decide: Callable[[Flow], DecisionLike], *, policy_version: str | None = None
    ) -> list[Flow]:
        """Re-decide every flow after a policy change.

        Flows whose verdict changes are removed and returned: allowed ones the policy now
        denies (``policy_revoked``, their next packet is decided again and dropped) and
        denied ones it now allows (``policy_changed``). The others take the new rule id
        and, if given, the new policy version.
        """
        removed: list[Flow] = []
        for flow in list(self._flows.values()):
            decision = decide(flow)
            if decision.verdict != flow.verdict:
                self._remove(
                    flow, "policy_revoked" if decision.verdict == "deny" else "policy_changed"
                )
                removed.append(flow)
            else:
                flow.rule_id = decision.rule_id
                if policy_version is not None:
                    flow.policy_version = policy_version
        self._maybe_compact()
        return removed

    def _change_state(self, flow: Flow, state: str, now: float) -> None:
        flow.tcp_state = state
        flow.idle_timeout = timeout = self.timeouts.for_flow(_TCP, state)
        deadline = now + timeout
        if deadline < flow._queued:
            self._push(flow, deadline)  # the queued entry would come too late
            self._maybe_compact()

    def _push(self, flow: Flow, deadline: float) -> None:
        self._seq += 1
        flow._queued = deadline
        heapq.heappush(self._heap, (deadline, self._seq, flow))

    def _maybe_compact(self) -> None:
        # Stale entries (removed flows, superseded deadlines) are bounded by the live count.
        if len(self._heap) > 2 * len(self._flows) + 1024:
            self._heap = [(f._queued, i, f) for i, f in enumerate(self._flows.values())]
            heapq.heapify(self._heap)
            self._seq = len(self._heap)

    def _remove(self, flow: Flow, reason: EndReason) -> None:
        del self._flows[flow.key]
        session_flows = self._by_session[flow.session_id]
        del session_flows[flow.key]
        if not session_flows:
            del self._by_session[flow.session_id]
        flow.end_reason = reason
