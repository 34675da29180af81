"""Many sessions: open N CONNECT-IP sessions against a real relay and send pings through them.

    uv run --frozen python bench/sessions.py [--sessions 100 1000 5000] [--rate 1]
        [--seconds 10] [--workers 2] [--json FILE]
    uv run --frozen python bench/sessions.py --quick       # N=20 for 2 s: the script works

No root and no TUN device: the relay is a real `serve` subprocess on loopback with
--no-egress (its CPU time and RSS are read from /proc), and the clients are the agent's
own parts without a device: a QUIC engine connection and zgate_proto's ClientSession
each, one UDP socket each, many per process, driven by zgate_host's Pump. --workers
processes share the clients (the machine has 2 cores: one for the relay, the rest for
the load).

What answers the pings: the sessions are paired, and each sends ICMP echo requests at
--rate per second to its partner's tunnel address; the partner (our client code) answers
with the echo reply. So every ping crosses the relay twice (request and reply) through its
router and flow table (the built-in allow-all policy, enforcement on), and a lost packet
anywhere on the way is a ping without reply. Loss counts the requests sent inside the
steady window that got no reply within --grace seconds.

For each N, on a freshly started relay without session limits (--max-sessions 0
--max-sessions-per-client 0: every client here uses one certificate), in this order:
1. open N sessions, at most --concurrency handshakes in flight: handshakes per second
   (established / time from the first dial to the last session ready), and each session's
   time from dial to ready (the QUIC + TLS handshake with the client certificate, the
   extended CONNECT and the address assignment), p50 / p99;
2. with the sessions open and idle, the relay's CPU while each client sends a QUIC PING
   every 10 s (the agent's keepalive) and every 0.5 s (its liveness probes while quiet,
   --liveness 2), --idle-seconds each (--idle-keepalive chooses the intervals);
3. let the pings run --warmup seconds, then measure --seconds: the relay's CPU (per cent of
   one core, and per packet it took from a session), the load generator's CPU, the loss and
   the echo RTT p50 / p99, and every drop counter of the relay and the kernel's UDP
   receive-buffer errors that grew meanwhile (where lost pings went);
4. the relay's RSS before the first session and after the steady phase: per session.

Then the refusals, before and after in the same run: a relay with --max-sessions L and
--max-sessions-per-client P (--refusal-limit, --refusal-per-client), client A asks for
P + 10 sessions, then client B for (L - P) + --refusal-extra: A must get exactly 10
refusals with 429, B exactly --refusal-extra with 503, and the relay counts them under
zgate_relay_handshake_refusals_total{reason="client_limit"|"relay_full"}. The same asks on
a relay with both limits off: everything is accepted (the behaviour before the limits).

Everything is bounded in time (each phase has a deadline) and cleaned up (the relay is
stopped, the workers end, the temporary PKI is removed) also on Ctrl-C. Figures vary with
the machine's load: the run records it (bench/quiet.py) and says when it was not quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import quiet

from zgate_host.pump import Pump
from zgate_pki import init_pki, issue_certificate
from zgate_proto.engines import DEFAULT_ENGINE, ENGINES, get_engine
from zgate_proto.engines.base import Address, ClientConfig, QuicConn
from zgate_proto.ip import internet_checksum, ipv4_checksum
from zgate_proto.session import (
    ClientSession,
    ConnectionClosed,
    PacketMode,
    PacketReceived,
    SessionClosed,
    SessionRefused,
)

SERVE = str(Path(sys.executable).parent / "serve")
CLIENT_IDS = ("load-a", "load-b")
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
PING_PAYLOAD = bytes(56)  # what ping(8) sends: 84-byte IP packets
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- packets


def echo(src: bytes, dst: bytes, kind: int, ident: int, seq: int) -> bytes:
    """An IPv4 ICMP echo request or reply from ``src`` to ``dst`` (4-byte addresses)."""
    icmp = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + PING_PAYLOAD
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0x4000, 64, 1, 0, src, dst)
    header = header[:10] + struct.pack("!H", ipv4_checksum(header)) + header[12:]
    return header + icmp


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The ``pct`` percentile (nearest rank) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class Dial:
    """How the clients reach the relay."""

    port: int
    ca: Path
    cert: Path
    key: Path
    engine: str
    timeout: float
    #: All clients from 127.0.0.1 (else each from its own 127.x.y.z, as agents on
    #: different hosts: the relay's per-source limits on handshakes then do not apply).
    one_source: bool = False


def source_address(index: int, one_source: bool) -> str:
    """The loopback address client ``index`` sends from (Linux answers all of 127/8)."""
    if one_source:
        return "127.0.0.1"
    return f"127.{1 + index // 65025 % 254}.{1 + index // 255 % 255}.{1 + index % 255}"


class LoadClient:
    """One CONNECT-IP client without a device: a QUIC engine connection, the session core
    and a UDP socket under a Pump (the agent's parts, minus the TUN device). Answers echo
    requests; counts the replies to its own."""

    def __init__(self, index: int, dial: Dial) -> None:
        self.index = index
        self.dial = dial
        self.started = 0.0  # monotonic: when it dialled
        self.ready_at: float | None = None
        self.refused: int | None = None  # the status of a refusal
        self.failure: str | None = None
        self.address = b""
        self.partner = b""
        self.seq = 0
        #: seq -> send time of the requests sent inside the measured window.
        self.pending: dict[int, float] = {}
        self.window: tuple[float, float] | None = None
        self.sent_in_window = 0
        self.rtts: list[float] = []
        self.answered = 0  # echo requests of others it replied to
        self.done = asyncio.get_running_loop().create_future()
        self._quic: QuicConn | None = None
        self._session: ClientSession | None = None
        self._pump: Pump | None = None

    def start(self) -> None:
        """Dial the relay (a socket of its own)."""
        d = self.dial
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source_address(self.index, d.one_source), 0))
        config = ClientConfig(
            server_name="localhost", ca_file=d.ca, cert_file=d.cert, key_file=d.key
        )
        self._pump = pump = Pump(sock, self)
        self.started = time.monotonic()
        self._quic = get_engine(d.engine).connect(config, ("127.0.0.1", d.port), pump.now)
        self._session = ClientSession(
            self._quic, authority=f"127.0.0.1:{d.port}", mode=PacketMode.DATAGRAM
        )
        pump.wake()

    # The pump's endpoint.
    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        assert self._quic is not None
        self._quic.feed(data, addr, now)
        self._drain()

    def handle_timer(self, now: float) -> None:
        assert self._quic is not None
        self._quic.handle_timer(now)
        self._drain()

    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        assert self._quic is not None
        return self._quic.flush(now)

    def deadline(self) -> float | None:
        assert self._quic is not None
        return self._quic.deadline()

    def _drain(self) -> None:
        quic, session = self._quic, self._session
        assert quic is not None and session is not None
        while (event := quic.next_event()) is not None:
            for ev in session.receive(event):
                if isinstance(ev, PacketReceived):
                    self._packet(ev.packet)
                elif isinstance(ev, SessionRefused):
                    self.refused = ev.status
                    self._finish()
                elif isinstance(ev, SessionClosed | ConnectionClosed):
                    self.failure = self.failure or ev.reason or "closed"
                    self._finish()
        if self.ready_at is None and session.ready:
            self.ready_at = time.monotonic()
            self.address = next(
                a.network_address.packed for a in session.addresses if a.version == 4
            )
            self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _packet(self, packet: bytes) -> None:
        if len(packet) < 28 or packet[9] != 1:
            return
        kind = packet[20]
        ident, seq = struct.unpack_from("!HH", packet, 24)
        if kind == ICMP_ECHO_REQUEST:
            assert self._session is not None
            self._session.send_packet(echo(packet[16:20], packet[12:16], 0, ident, seq))
            self.answered += 1
        elif kind == ICMP_ECHO_REPLY and ident == self.index & 0xFFFF:
            sent = self.pending.pop(seq, None)
            if sent is not None and self.window is not None:
                now = time.monotonic()
                if now <= self.window[1] + GRACE[0]:
                    self.rtts.append(now - sent)

    def ping(self, now: float) -> None:
        """One echo request to the partner."""
        assert self._session is not None
        self.seq = (self.seq + 1) & 0xFFFF
        window = self.window
        if window is not None and window[0] <= now <= window[1]:
            self.pending[self.seq] = now
            self.sent_in_window += 1
        self._session.send_packet(
            echo(self.address, self.partner, ICMP_ECHO_REQUEST, self.index & 0xFFFF, self.seq)
        )

    def wake(self) -> None:
        """Send what the connection has to send now."""
        if self._pump is not None:
            self._pump.wake()

    def keepalive(self, now: float = 0.0) -> None:
        """A QUIC PING, as an idle agent sends them (the relay must not reach its idle
        timeout; the agent's liveness check probes with them)."""
        if self._pump is not None and self._quic is not None and self.ready_at is not None:
            self._quic.ping()

    def close(self) -> None:
        """End the connection (a CONNECTION_CLOSE) and close the socket."""
        if self._pump is None or self._quic is None:
            return
        with contextlib.suppress(Exception):
            self._quic.close(0, "load generator done")
            self._pump.wake()
        self._pump.close()
        self._pump = None


#: Seconds a reply may come after the window closes (set from --grace in each process).
GRACE = [2.0]


async def open_clients(
    dial: Dial, count: int, concurrency: int, first_index: int = 0
) -> list[LoadClient]:
    """Open ``count`` sessions, at most ``concurrency`` handshakes at once; each either
    ready, refused (its status) or failed (timeout or close; then abandoned) when this
    returns. The ready ones get a QUIC PING every 5 s meanwhile."""
    gate = asyncio.Semaphore(max(1, concurrency))
    started: list[LoadClient] = []

    async def keepalive() -> None:
        while True:
            await asyncio.sleep(5.0)
            for client in started:
                client.keepalive()
                client.wake()

    async def one(index: int) -> LoadClient:
        async with gate:
            client = LoadClient(index, dial)
            started.append(client)
            try:
                client.start()
                await asyncio.wait_for(asyncio.shield(client.done), dial.timeout)
            except TimeoutError:
                client.failure = f"no session within {dial.timeout:g}s"
                client.close()
            except OSError as exc:
                client.failure = f"socket: {exc}"
                client.close()
            return client

    pinger = asyncio.create_task(keepalive())
    try:
        return list(await asyncio.gather(*(one(first_index + i) for i in range(count))))
    finally:
        pinger.cancel()


def pair(clients: Sequence[LoadClient]) -> None:
    """Each ready client pings the next one (0<->1, 2<->3, ...; an odd last one pings 0)."""
    ready = [c for c in clients if c.ready_at is not None]
    for i, client in enumerate(ready):
        partner = ready[i ^ 1] if (i ^ 1) < len(ready) else ready[0]
        client.partner = partner.address


async def every(
    clients: Sequence[LoadClient],
    interval: float,
    action: Callable[[LoadClient, float], None],
    until: float,
) -> None:
    """``action(client, now)`` for each client every ``interval`` seconds, the clients'
    turns spread evenly over the interval, until ``until`` (or cancelled)."""
    if not clients or interval <= 0:
        return
    start = time.monotonic()
    heap = [(start + interval * i / len(clients), i) for i in range(len(clients))]
    heapq.heapify(heap)
    while True:
        now = time.monotonic()
        if now >= until:
            return
        touched: list[LoadClient] = []
        while heap and heap[0][0] <= now:
            at, i = heapq.heappop(heap)
            client = clients[i]
            action(client, now)
            touched.append(client)
            heapq.heappush(heap, (at + interval, i))
        for client in touched:
            client.wake()
        await asyncio.sleep(min(0.02, max(0.0, heap[0][0] - time.monotonic())))


def ping_loop(
    clients: Sequence[LoadClient], rate: float, until: float
) -> Coroutine[Any, Any, None]:
    """Each paired client pings its partner at ``rate`` per second until ``until``."""
    ready = [c for c in clients if c.ready_at is not None and c.partner]
    return every(ready, 1.0 / rate if rate > 0 else 0.0, LoadClient.ping, until)


def keepalive_loop(
    clients: Sequence[LoadClient], interval: float, until: float
) -> Coroutine[Any, Any, None]:
    """Each ready client sends a QUIC PING every ``interval`` seconds until ``until``."""
    ready = [c for c in clients if c.ready_at is not None]
    return every(ready, interval, LoadClient.keepalive, until)


def handshake_stats(clients: Sequence[LoadClient]) -> dict[str, Any]:
    """What the opening phase of these clients gives for the report (times monotonic)."""
    ready = [c for c in clients if c.ready_at is not None]
    refused: dict[str, int] = {}
    for c in clients:
        if c.refused is not None:
            refused[str(c.refused)] = refused.get(str(c.refused), 0) + 1
    failures = [c.failure for c in clients if c.ready_at is None and c.refused is None]
    return {
        "asked": len(clients),
        "ready": len(ready),
        "refused": refused,
        "failed": len(failures),
        "failure_examples": sorted(set(f for f in failures if f))[:3],
        "first_dial": min((c.started for c in clients), default=None),
        "last_ready": max((c.ready_at for c in ready if c.ready_at), default=None),
        "handshake_s": [c.ready_at - c.started for c in ready if c.ready_at is not None],
    }


def load_stats(clients: Sequence[LoadClient]) -> dict[str, Any]:
    """What the steady phase gives: pings sent in the window, replies, RTTs."""
    rtts = [r for c in clients for r in c.rtts]
    return {
        "sent": sum(c.sent_in_window for c in clients),
        "replied": len(rtts),
        "answered_for_others": sum(c.answered for c in clients),
        "rtt_s": rtts,
    }


# --------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class WorkerJob:
    """One worker process's share of a sweep step."""

    dial: Dial
    count: int
    first_index: int
    concurrency: int
    rate: float
    grace: float
    deadline: float  # monotonic: the worker gives up and reports by then


def _cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def worker_main(job: WorkerJob, pipe: Connection) -> None:
    """A worker process: open its sessions, report, ping through the window it is told,
    report again, close everything."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the run
    GRACE[0] = job.grace
    try:
        asyncio.run(_worker(job, pipe))
    except Exception as exc:  # reported, not raised: the parent decides
        with contextlib.suppress(OSError):
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))


async def _worker(job: WorkerJob, pipe: Connection) -> None:
    """Open the sessions, then follow the parent: ("keepalive", interval) sends QUIC PINGs
    (idle agents), ("ping",) starts the pings between partners, ("steady", t0, t1) is the
    measured window, after which the counts go back."""
    loop = asyncio.get_running_loop()
    clients = await open_clients(job.dial, job.count, job.concurrency, job.first_index)
    pair(clients)
    pipe.send(("opened", handshake_stats(clients)))
    task = asyncio.create_task(keepalive_loop(clients, 5.0, job.deadline))
    try:
        while True:
            remaining = job.deadline - time.monotonic()
            if not await loop.run_in_executor(None, pipe.poll, max(0.0, remaining)):
                pipe.send(("error", "no word from the parent in time"))
                return
            message = pipe.recv()
            if message[0] in ("keepalive", "ping"):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if message[0] == "keepalive":
                    task = asyncio.create_task(keepalive_loop(clients, message[1], job.deadline))
                else:
                    task = asyncio.create_task(ping_loop(clients, job.rate, job.deadline))
                pipe.send(("ok", {}))
            elif message[0] == "steady":
                t0, t1 = message[1], message[2]
                for client in clients:
                    client.window = (t0, t1)
                await asyncio.sleep(max(0.0, t1 + job.grace - time.monotonic()))
                pipe.send(("done", load_stats(clients)))
                return
            else:
                return
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for client in clients:
            client.close()
        await asyncio.sleep(0.05)  # let the CONNECTION_CLOSEs leave


# --------------------------------------------------------------------------- the relay


@dataclass
class Relay:
    """A `serve` subprocess on loopback without egress, and its metrics endpoint."""

    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path

    def metrics(self) -> dict[str, float]:
        """The relay's /metrics as {series: value} (names with their labels)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def refusals(self, reason: str) -> int:
        return int(
            self.metrics().get(f'zgate_relay_handshake_refusals_total{{reason="{reason}"}}', 0)
        )

    def rss(self) -> int:
        return _rss_bytes(self.proc.pid)

    def cpu(self) -> float:
        return _cpu_seconds(self.proc.pid)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_relay(
    workdir: Path, pki: Path, engine: str, extra: Sequence[str], name: str
) -> Iterator[Relay]:
    """A relay subprocess, ready (its /metrics answers), stopped with SIGTERM at the end."""
    port, metrics_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    state = workdir / f"relay-{name}"
    state.mkdir()
    log = state / "relay.log"
    cmd = [
        SERVE,
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics",
        f"127.0.0.1:{metrics_port}",
        "--state-dir",
        str(state),
        "--pki",
        str(pki),
        "--no-egress",
        "--no-dns",
        "--quic-engine",
        engine,
        "--relay-name",
        f"bench-{name}",
        *extra,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    relay = Relay(proc, port, metrics_port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the relay exited ({proc.returncode}): {log.read_text()[-800:]}"
                )
            try:
                relay.metrics()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the relay did not start within 30 s") from None
                time.sleep(0.1)
        yield relay
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


# --------------------------------------------------------------------------- the phases


@dataclass
class Options:
    sessions: list[int]
    rate: float
    seconds: float
    warmup: float
    grace: float
    workers: int
    concurrency: int
    engine: str
    connect_timeout: float
    refusal_limit: int
    refusal_per_client: int
    refusal_extra: int
    one_source: bool = False
    idle_seconds: float = 5.0
    relay_flags: list[str] = field(default_factory=list)
    idle_keepalive: list[float] = field(default_factory=lambda: [10.0, 0.5])


@dataclass
class SweepResult:
    """One N of the sweep."""

    sessions: int
    ready: int
    refused: dict[str, int]
    failed: int
    failure_examples: list[str]
    handshakes_per_s: float | None
    handshake_p50_ms: float | None
    handshake_p99_ms: float | None
    open_s: float | None
    #: The relay's CPU time while the sessions opened, per session opened.
    relay_cpu_ms_per_handshake: float | None
    relay_rss_before_mb: float
    #: Right after the last session opened (before the pings' warm-up and window).
    relay_rss_open_mb: float
    relay_rss_after_mb: float
    relay_rss_per_session_kb: float | None
    #: The relay's CPU (% of one core) with the sessions open and idle, each client sending
    #: a QUIC PING every KEY seconds (10: the agent's keepalive without liveness; 0.5: the
    #: liveness probes of an idle agent with --liveness 2).
    relay_idle_cpu_pct: dict[str, float]
    relay_cpu_pct: float
    #: Relay CPU time per packet it took from a session in the steady window.
    relay_cpu_us_per_packet: float | None
    generator_cpu_pct: float
    pings_sent: int
    pings_replied: int
    loss_pct: float | None
    rtt_p50_ms: float | None
    rtt_p99_ms: float | None
    relay_sessions_gauge: float
    relay_drops: dict[str, float] = field(default_factory=dict)
    #: The kernel's UDP counters (this network namespace) that grew in the window:
    #: RcvbufErrors are datagrams a full socket buffer lost (the relay's or a client's).
    udp_errors: dict[str, int] = field(default_factory=dict)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def sweep_step(opts: Options, workdir: Path, pki: Path, n: int) -> SweepResult:
    """One N: a fresh relay without limits, N sessions from worker processes."""
    ctx = mp.get_context("spawn")
    dial = Dial(
        0,
        pki / "ca.pem",
        pki / "clients" / f"{CLIENT_IDS[0]}.pem",
        pki / "clients" / f"{CLIENT_IDS[0]}.key",
        opts.engine,
        opts.connect_timeout,
        opts.one_source,
    )
    extra = [
        "--max-sessions",
        "0",
        "--max-sessions-per-client",
        "0",
        "--log-level",
        "info",
        *opts.relay_flags,
    ]
    with running_relay(workdir, pki, opts.engine, extra, f"n{n}") as relay:
        dial = Dial(
            relay.port, dial.ca, dial.cert, dial.key, dial.engine, dial.timeout, opts.one_source
        )
        time.sleep(0.5)  # the relay settles after start-up before its baseline
        rss_before = relay.rss()
        cpu_before_open = relay.cpu()
        workers = max(1, min(opts.workers, n // 2 or 1))
        shares = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
        open_budget = opts.connect_timeout + n / 20  # at least 20 handshakes/s, or give up
        idle_budget = len(opts.idle_keepalive) * (opts.idle_seconds + 2)
        deadline = (
            time.monotonic()
            + open_budget
            + idle_budget
            + opts.warmup
            + opts.seconds
            + opts.grace
            + 30
        )
        procs: list[tuple[Any, Connection]] = []
        first = 0
        try:
            for share in shares:
                parent, child = ctx.Pipe()
                job = WorkerJob(
                    dial,
                    share,
                    first,
                    max(1, opts.concurrency // workers),
                    opts.rate,
                    opts.grace,
                    deadline,
                )
                first += share
                proc = ctx.Process(target=worker_main, args=(job, child), daemon=True)
                proc.start()
                procs.append((proc, parent))
            opened = [_receive(pipe, "opened", deadline) for _, pipe in procs]
            open_cpu = relay.cpu() - cpu_before_open
            rss_open = relay.rss()
            idle_cpu: dict[str, float] = {}
            for interval in opts.idle_keepalive:
                _tell(procs, ("keepalive", interval), deadline)
                time.sleep(1.0)  # the previous pattern's packets drain
                cpu0 = relay.cpu()
                time.sleep(opts.idle_seconds)
                idle_cpu[f"{interval:g}"] = round(100 * (relay.cpu() - cpu0) / opts.idle_seconds, 2)
            _tell(procs, ("ping",), deadline)
            time.sleep(opts.warmup)
            t0 = time.monotonic() + 0.2
            for _, pipe in procs:
                pipe.send(("steady", t0, t0 + opts.seconds))
            time.sleep(max(0.0, t0 - time.monotonic()))
            relay_cpu0, gen_cpu0 = relay.cpu(), sum(_cpu_seconds(p.pid) for p, _ in procs)
            metrics0, udp0 = relay.metrics(), udp_counters()
            time.sleep(opts.seconds)
            relay_cpu = relay.cpu() - relay_cpu0
            metrics1, udp1 = relay.metrics(), udp_counters()
            moved = _moved(metrics1) - _moved(metrics0)
            gen_cpu = sum(_cpu_seconds(p.pid) for p, _ in procs) - gen_cpu0
            rss_after = relay.rss()
            metrics = relay.metrics()
            done = [_receive(pipe, "done", deadline) for _, pipe in procs]
        finally:
            for proc, pipe in procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
                pipe.close()
    handshakes = [h for o in opened for h in o["handshake_s"]]
    ready = sum(o["ready"] for o in opened)
    refused: dict[str, int] = {}
    for o in opened:
        for status, count in o["refused"].items():
            refused[status] = refused.get(status, 0) + count
    firsts = [o["first_dial"] for o in opened if o["first_dial"] is not None]
    lasts = [o["last_ready"] for o in opened if o["last_ready"] is not None]
    open_s = (max(lasts) - min(firsts)) if firsts and lasts else None
    sent = sum(d["sent"] for d in done)
    rtts = [r for d in done for r in d["rtt_s"]]
    # Every drop counter the relay has (whatever its name), as it grew in the window.
    drops = {
        k: metrics1[k] - metrics0.get(k, 0.0)
        for k in metrics1
        if "drop" in k and not k.startswith("#") and metrics1[k] - metrics0.get(k, 0.0) > 0
    }
    return SweepResult(
        sessions=n,
        ready=ready,
        refused=refused,
        failed=sum(o["failed"] for o in opened),
        failure_examples=sorted({f for o in opened for f in o["failure_examples"]})[:3],
        handshakes_per_s=round(ready / open_s, 1) if open_s else None,
        handshake_p50_ms=_ms(percentile(handshakes, 50)),
        handshake_p99_ms=_ms(percentile(handshakes, 99)),
        open_s=round(open_s, 2) if open_s is not None else None,
        relay_cpu_ms_per_handshake=round(1000 * open_cpu / ready, 2) if ready else None,
        relay_rss_before_mb=round(rss_before / 2**20, 1),
        relay_rss_open_mb=round(rss_open / 2**20, 1),
        relay_rss_after_mb=round(rss_after / 2**20, 1),
        relay_rss_per_session_kb=round((rss_after - rss_before) / ready / 1024, 1)
        if ready
        else None,
        relay_idle_cpu_pct=idle_cpu,
        relay_cpu_pct=round(100 * relay_cpu / opts.seconds, 1),
        relay_cpu_us_per_packet=round(1e6 * relay_cpu / moved, 1) if moved else None,
        generator_cpu_pct=round(100 * gen_cpu / opts.seconds, 1),
        pings_sent=sent,
        pings_replied=len(rtts),
        loss_pct=round(100 * (sent - len(rtts)) / sent, 3) if sent else None,
        rtt_p50_ms=_ms(percentile(rtts, 50)),
        rtt_p99_ms=_ms(percentile(rtts, 99)),
        relay_sessions_gauge=metrics.get("zgate_relay_sessions", 0.0),
        relay_drops=drops,
        udp_errors={
            k: udp1[k] - udp0.get(k, 0)
            for k in ("InErrors", "RcvbufErrors", "SndbufErrors")
            if udp1.get(k, 0) - udp0.get(k, 0)
        },
    )


def udp_counters() -> dict[str, int]:
    """The kernel's UDP counters (/proc/net/snmp)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    udp = [line[1:] for line in lines if line and line[0] == "Udp:"]
    if len(udp) < 2:
        return {}
    return dict(zip(udp[0], map(int, udp[1]), strict=False))


def _moved(metrics: dict[str, float]) -> float:
    """Packets the relay took from sessions (each relayed ping is one in and one out)."""
    return metrics.get('zgate_relay_packets_total{direction="from_agent"}', 0.0)


def _tell(
    procs: Sequence[tuple[Any, Connection]], message: tuple[Any, ...], deadline: float
) -> None:
    """Send every worker ``message`` and wait for each one's "ok"."""
    for _, pipe in procs:
        pipe.send(message)
    for _, pipe in procs:
        _receive(pipe, "ok", deadline)


def _receive(pipe: Connection, kind: str, deadline: float) -> dict[str, Any]:
    if not pipe.poll(max(0.0, deadline - time.monotonic())):
        raise RuntimeError(f"a worker sent no {kind!r} report in time")
    message = pipe.recv()
    if message[0] != kind:
        raise RuntimeError(f"a worker failed: {message[1]}")
    result: dict[str, Any] = message[1]
    return result


def refusal_phase(opts: Options, workdir: Path, pki: Path, limited: bool) -> dict[str, Any]:
    """Client A asks for P + 10 sessions, then client B for (L - P) + extra, on a relay
    with (``limited``) or without the limits; what each got, and what the relay counted."""
    limit, per_client, extra = opts.refusal_limit, opts.refusal_per_client, opts.refusal_extra
    flags = (
        ["--max-sessions", str(limit), "--max-sessions-per-client", str(per_client)]
        if limited
        else ["--max-sessions", "0", "--max-sessions-per-client", "0"]
    )
    name = "limited" if limited else "unlimited"
    asks = {CLIENT_IDS[0]: per_client + 10, CLIENT_IDS[1]: (limit - per_client) + extra}
    with running_relay(workdir, pki, opts.engine, [*flags, "--log-level", "info"], name) as relay:

        async def run() -> dict[str, Any]:
            out: dict[str, Any] = {}
            everyone: list[LoadClient] = []
            index = 0
            for ident, count in asks.items():
                dial = Dial(
                    relay.port,
                    pki / "ca.pem",
                    pki / "clients" / f"{ident}.pem",
                    pki / "clients" / f"{ident}.key",
                    opts.engine,
                    opts.connect_timeout,
                    opts.one_source,
                )
                clients = await open_clients(dial, count, opts.concurrency, index)
                index += count
                everyone += clients
                stats = handshake_stats(clients)
                out[ident] = {k: stats[k] for k in ("asked", "ready", "refused", "failed")}
            for client in everyone:
                client.close()
            return out

        result = asyncio.run(run())
        result["relay_counted"] = {
            reason: relay.refusals(reason) for reason in ("relay_full", "client_limit")
        }
        refused_lines = sum(
            '"request refused"' in line for line in relay.log.read_text().splitlines()
        )
        result["relay_log_lines"] = refused_lines
    result["limits"] = (
        {"max_sessions": limit, "max_sessions_per_client": per_client} if limited else None
    )
    a, b = result[CLIENT_IDS[0]], result[CLIENT_IDS[1]]
    if limited:
        expected = {
            CLIENT_IDS[0]: {"ready": per_client, "refused": {"429": 10}},
            CLIENT_IDS[1]: {"ready": limit - per_client, "refused": {"503": extra}},
        }
    else:
        expected = {CLIENT_IDS[0]: {"ready": a["asked"], "refused": {}}}
        expected[CLIENT_IDS[1]] = {"ready": b["asked"], "refused": {}}
    result["as_expected"] = all(
        result[ident]["ready"] == want["ready"] and result[ident]["refused"] == want["refused"]
        for ident, want in expected.items()
    )
    return result


# --------------------------------------------------------------------------- report


def _fmt(value: object, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def print_sweep(results: Sequence[SweepResult], opts: Options) -> None:
    print(
        f"\nN sessions, each pinging its partner {opts.rate:g}/s through the relay "
        f"({opts.engine}); steady window {opts.seconds:g} s"
    )
    head = (
        f"{'N':>6} {'ready':>6} {'hs/s':>7} {'hs p50':>8} {'hs p99':>8} {'CPU/hs':>8} "
        f"{'RSS before':>10} {'after':>8} {'per sess':>9} {'relay CPU':>9} {'gen CPU':>8} "
        f"{'loss':>7} {'rtt p50':>8} {'rtt p99':>8}"
    )
    print(head)
    for r in results:
        print(
            f"{r.sessions:>6} {r.ready:>6} {_fmt(r.handshakes_per_s):>7} "
            f"{_fmt(r.handshake_p50_ms, 'ms'):>8} {_fmt(r.handshake_p99_ms, 'ms'):>8} "
            f"{_fmt(r.relay_cpu_ms_per_handshake, 'ms'):>8} "
            f"{r.relay_rss_before_mb:>8}MB {r.relay_rss_after_mb:>6}MB "
            f"{_fmt(r.relay_rss_per_session_kb, 'kB'):>9} {r.relay_cpu_pct:>8}% "
            f"{r.generator_cpu_pct:>7}% {_fmt(r.loss_pct, '%'):>7} "
            f"{_fmt(r.rtt_p50_ms, 'ms'):>8} {_fmt(r.rtt_p99_ms, 'ms'):>8}"
        )
        idle = ", ".join(f"PING every {k} s: {v} %" for k, v in r.relay_idle_cpu_pct.items())
        print(
            f"       relay CPU idle: {idle or '-'}; "
            f"{_fmt(r.relay_cpu_us_per_packet, ' us')} per packet in the window"
        )
        if r.relay_drops or r.udp_errors:
            print(f"       drops in the window: relay {r.relay_drops}, kernel UDP {r.udp_errors}")
        if r.failed or r.refused:
            print(f"       not opened: {r.failed} failed {r.failure_examples}, refused {r.refused}")


def print_refusals(before: dict[str, Any], after: dict[str, Any]) -> None:
    limits = after["limits"]
    print(
        f"\nRefusals: client A asks for {before[CLIENT_IDS[0]]['asked']}, then client B for "
        f"{before[CLIENT_IDS[1]]['asked']} (limits: {limits['max_sessions']} sessions, "
        f"{limits['max_sessions_per_client']} per client)"
    )
    for label, result in (("no limits (before)", before), ("limits (after)", after)):
        a, b = result[CLIENT_IDS[0]], result[CLIENT_IDS[1]]
        print(
            f"  {label:<19} A: {a['ready']} open, refused {a['refused'] or 'none'}; "
            f"B: {b['ready']} open, refused {b['refused'] or 'none'}; relay counted "
            f"{result['relay_counted']}, {result['relay_log_lines']} log lines; "
            f"{'as expected' if result['as_expected'] else 'NOT AS EXPECTED'}"
        )


# --------------------------------------------------------------------------- main


def make_pki(directory: Path) -> Path:
    init_pki(directory)
    for ident in CLIENT_IDS:
        issue_certificate(directory, "client", ident)
    return directory


def raise_fd_limit(needed: int) -> None:
    """One socket per client: make the soft file limit as large as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        raise SystemExit(
            f"bench/sessions.py: {needed} sessions need about {needed} file descriptors; "
            f"the hard limit is {hard} (raise it: ulimit -Hn)"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="See the module docstring (bench/sessions.py) for what is measured and how.",
    )
    p.add_argument(
        "--sessions",
        type=int,
        nargs="+",
        default=[100, 1000, 5000],
        metavar="N",
        help="the session counts to measure, each on a fresh relay [100 1000 5000]",
    )
    p.add_argument("--rate", type=float, default=1.0, help="pings per second per session [1]")
    p.add_argument("--seconds", type=float, default=10.0, help="steady window, seconds [10]")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before the window [2]")
    p.add_argument("--grace", type=float, default=2.0, help="seconds a reply may take to count [2]")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="load-generator processes sharing the clients [2]",
    )
    p.add_argument(
        "--concurrency", type=int, default=64, help="handshakes in flight at most, in all [64]"
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=DEFAULT_ENGINE,
        help=f"QUIC engine of the relay and the clients [{DEFAULT_ENGINE}]",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="seconds one session may take to open before it counts as failed [30]",
    )
    p.add_argument(
        "--refusal-limit",
        type=int,
        default=100,
        help="--max-sessions of the refusal phase's relay; 0 skips the phase [100]",
    )
    p.add_argument(
        "--refusal-per-client",
        type=int,
        default=60,
        help="--max-sessions-per-client of the refusal phase's relay [60]",
    )
    p.add_argument(
        "--refusal-extra",
        type=int,
        default=50,
        help="requests past --refusal-limit, each to be refused with 503 [50]",
    )
    p.add_argument(
        "--one-source",
        action="store_true",
        help="every client from 127.0.0.1 (default: each from its own 127.x.y.z, as agents "
        "on different hosts; one source meets the relay's per-source handshake limits)",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=5.0,
        help="seconds the relay's CPU is measured with the sessions idle, per keepalive [5]",
    )
    p.add_argument(
        "--idle-keepalive",
        type=float,
        nargs="*",
        default=[10.0, 0.5],
        metavar="SECONDS",
        help="QUIC PING intervals of the idle clients to measure (10: the agent's keepalive; "
        "0.5: its liveness probes with --liveness 2); none skips the idle phase [10 0.5]",
    )
    p.add_argument(
        "--relay-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="pass FLAG to the sweep's relays (repeatable; e.g. --relay-flag=--queue=fifo)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (relay logs, PKI)")
    p.add_argument("--quick", action="store_true", help="N=20 for 2 s, small refusal phase")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the figures here")
    return p


def parse_options(argv: Sequence[str] | None) -> tuple[Options, Path | None, bool]:
    p = build_parser()
    args = p.parse_args(argv)
    if args.quick:
        args.sessions, args.seconds, args.warmup, args.grace = [20], 2.0, 0.5, 1.0
        args.idle_seconds = 1.0
        args.refusal_limit, args.refusal_per_client, args.refusal_extra = 10, 6, 5
    if any(n < 1 for n in args.sessions) or args.seconds <= 0 or args.rate < 0:
        p.error("--sessions must be >= 1, --seconds > 0, --rate >= 0")
    if args.refusal_limit and not 0 < args.refusal_per_client < args.refusal_limit:
        p.error("--refusal-per-client must be between 0 and --refusal-limit")
    if args.workers < 1 or args.concurrency < 1:
        p.error("--workers and --concurrency must be >= 1")
    opts = Options(
        sessions=args.sessions,
        rate=args.rate,
        seconds=args.seconds,
        warmup=args.warmup,
        grace=args.grace,
        workers=args.workers,
        concurrency=args.concurrency,
        engine=args.engine,
        connect_timeout=args.connect_timeout,
        refusal_limit=args.refusal_limit,
        refusal_per_client=args.refusal_per_client,
        refusal_extra=args.refusal_extra,
        one_source=args.one_source,
        idle_seconds=args.idle_seconds,
        relay_flags=list(args.relay_flag),
        idle_keepalive=list(args.idle_keepalive),
    )
    return opts, args.json, bool(args.keep)


def main(argv: Sequence[str] | None = None) -> int:
    opts, json_path, keep = parse_options(argv)
    GRACE[0] = opts.grace
    raise_fd_limit(max(opts.sessions) + 256)
    load_at_start = quiet.snapshot(sample_s=1.0)
    workdir = Path(tempfile.mkdtemp(prefix="zgate-sessions-"))
    report: dict[str, Any] = {
        "benchmark": "sessions",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": asdict(opts),
    }
    try:
        pki = make_pki(workdir / "pki")
        results = [sweep_step(opts, workdir, pki, n) for n in opts.sessions]
        report["sweep"] = [asdict(r) for r in results]
        print_sweep(results, opts)
        if opts.refusal_limit:
            before = refusal_phase(opts, workdir, pki, limited=False)
            after = refusal_phase(opts, workdir, pki, limited=True)
            report["refusals"] = {"before": before, "after": after}
            print_refusals(before, after)
    finally:
        if keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    load = quiet.assess(load_at_start, quiet.snapshot(), cpus=os.cpu_count() or 1)
    report["machine"] = {"cpus": os.cpu_count(), "load": load}
    if warn := quiet.warning(load):
        print(warn)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    ok = all(r.ready == r.sessions for r in results)
    if "refusals" in report:
        ok = ok and report["refusals"]["before"]["as_expected"]
        ok = ok and report["refusals"]["after"]["as_expected"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
