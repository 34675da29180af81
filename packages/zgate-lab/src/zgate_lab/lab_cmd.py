"""``zgate-lab``: a one-command demo of the tunnel in network namespaces, and its clean-up.

``zgate-lab demo`` builds a :class:`~zgate_lab.lab.Lab` (an agent, a relay and an "internet"
host, each in its own namespace), pings and downloads through the tunnel, prints what
happened in plain words and removes everything again. ``zgate-lab down`` removes what a
crashed lab left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from zgate_proto.engines import ENGINES

from .lab import (
    HTTP_PORT,
    INET_IP,
    INET_IP6,
    RELAY_INET_IP,
    RELAY_LAN_IP,
    VENV_BIN,
    Lab,
    LabOwner,
    is_lab_namespace,
    owner_file,
    read_owner,
    run,
)

__all__ = ["DEMO_BLOB_SIZE", "add_commands", "lab_namespaces"]

#: Small enough for a demo of ~15 s, big enough that a corrupted transfer would show.
DEMO_BLOB_SIZE: Final = 2 * 1024 * 1024

#: The scripts the demo runs from this virtualenv, and the packages that provide them.
_SCRIPTS: Final = {"serve": "zgate-relay", "zgate-agent": "zgate-agent"}

#: Host commands the lab drives, and the Debian package of each.
_TOOLS: Final = {
    "ip": "iproute2",
    "nft": "nftables",
    "ping": "iputils-ping",
    "curl": "curl",
    "ss": "iproute2",
}

#: The relay's packet directions (zgate_relay_packets_total), in the order a packet takes.
_DIRECTION_WORDS: Final = {
    "from_agent": "from the agent",
    "to_egress": "out to the internet",
    "from_egress": "back from the internet",
    "to_agent": "to the agent",
}

_PING_LOSS: Final = re.compile(r"(\d+(?:\.\d+)?)% packet loss")
_INDENT: Final = "      "


class StepFailedError(Exception):
    """A demo step ran but what it checked did not hold."""


# ------------------------------------------------------------------ prerequisites


def _is_root() -> bool:
    return os.geteuid() == 0


def _missing_prerequisite(command: str) -> str | None:
    """One line saying why ``zgate-lab <command>`` cannot run here, or None."""
    if not _is_root():
        return (
            f"zgate-lab {command}: needs root (it creates network namespaces, TUN devices and "
            "nftables rules); run it with sudo"
        )
    if command != "demo":
        return None
    missing = [name for name in _SCRIPTS if not (VENV_BIN / name).exists()]
    if missing:
        packages = " and ".join(sorted({_SCRIPTS[name] for name in missing}))
        return (
            f"zgate-lab demo: needs the relay and agent packages ({packages}): no "
            f"{', '.join(repr(m) for m in missing)} in {VENV_BIN}; install zgate-lab "
            "with its dependencies or run it from the workspace: uv run --frozen zgate-lab demo"
        )
    for tool, package in _TOOLS.items():
        if shutil.which(tool) is None:
            return f"zgate-lab demo: needs the {tool!r} command (Debian package {package})"
    return None


# ------------------------------------------------------------------ lab down


def lab_namespaces(tag: str | None = None) -> list[str]:
    """The network namespaces on this machine that a Lab created (of one ``tag`` if given)."""
    listing = run(["ip", "netns", "list"]).stdout
    # Lines read "name" or "name (id: 3)".
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    return sorted(
        name
        for name in names
        if is_lab_namespace(name) and (tag is None or name.endswith(f"-{tag}"))
    )


def _pids_in(namespace: str) -> list[int]:
    proc = run(["ip", "netns", "pids", namespace], check=False)
    return [int(word) for word in proc.stdout.split() if word.isdigit()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_processes(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what still runs after ``grace`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def _cmd_down(args: argparse.Namespace) -> int:
    if problem := _missing_prerequisite("down"):
        print(problem, file=sys.stderr)
        return 1
    names = lab_namespaces(args.tag)
    if not names:
        print("No zgate-lab namespaces found; nothing to remove.")
        return 0
    by_tag: dict[str, list[str]] = {}
    for name in names:
        by_tag.setdefault(name.rsplit("-", 1)[1], []).append(name)
    failed = 0
    for tag, members in sorted(by_tag.items()):
        owner = read_owner(tag)
        if owner is not None and _alive(owner.pid) and owner.pid != os.getpid() and not args.force:
            print(
                f"lab {tag} is in use by its owner (pid {owner.pid}): left alone; stop that "
                f"process, or remove the lab anyway with --force --tag {tag}"
            )
            continue
        failed += _remove_lab(members, owner, dry_run=args.dry_run)
        if not args.dry_run:
            owner_file(tag).unlink(missing_ok=True)
    return 1 if failed else 0


def _remove_lab(names: Sequence[str], owner: LabOwner | None, *, dry_run: bool) -> int:
    """Stop what runs in ``names``, delete them and the lab's temporary files; failures."""
    failed = 0
    for name in names:
        # A crashed demo leaves its relay and agent running; a deleted namespace would keep
        # them (and their TUN devices) alive, so they go first.
        pids = _pids_in(name)
        if dry_run:
            print(f"would remove {name} ({_processes(len(pids))} in it)")
            continue
        if pids:
            _stop_processes(pids)
        proc = run(["ip", "netns", "del", name], check=False)
        # The namespace's own resolv.conf (Lab.use_resolver), which `ip netns del` keeps.
        shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
        if proc.returncode == 0:
            print(f"removed {name} (stopped {_processes(len(pids))})")
        else:
            failed += 1
            print(f"could not remove {name}: {proc.stderr.strip()}", file=sys.stderr)
    if owner is not None and owner.temporary_workdir and owner.workdir.is_dir():
        if dry_run:
            print(f"would remove its temporary files {owner.workdir} (PKI, logs)")
        else:
            shutil.rmtree(owner.workdir, ignore_errors=True)
            print(f"removed its temporary files {owner.workdir} (PKI, logs)")
    return failed


# ------------------------------------------------------------------ lab demo


def _say(text: str = "", end: str = "\n") -> None:
    print(text, end=end, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _labelled(text: str, name: str) -> dict[str, float]:
    """The samples of a one-label metric ``name{label="value"} N``, by label value."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        key, _, value = line.rpartition(" ")
        _, _, label_value = key.partition('="')
        with contextlib.suppress(ValueError):
            samples[label_value.rstrip('"}')] = float(value)
    return samples


def _plain(text: str, name: str) -> float:
    """The value of an unlabelled metric (0 if absent)."""
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            with contextlib.suppress(ValueError):
                return float(value)
    return 0.0


def _joined(value: object) -> str:
    """A JSON list as "a, b", or "-" when empty or not a list."""
    return ", ".join(str(item) for item in value) if isinstance(value, list) and value else "-"


Step = Callable[[], list[str]]


@dataclass
class _Demo:
    """The demo's steps over one lab; each returns lines to show, or raises on failure."""

    lab: Lab
    mode: str
    engine: str | None = None  # relay's and agent's --quic-engine; None: their default
    blob: Path | None = None
    blob_sha256: str = ""

    @property
    def agent_ns(self) -> str:
        return self.lab.agent_ns(1)

    def steps(self) -> list[tuple[str, Step]]:
        return [
            ("Build the lab: three network namespaces joined by virtual cables", self.build),
            ("Create a PKI: a CA, the relay's certificate, the agent's certificate", self.pki),
            ("Start a web server on the internet host", self.web_server),
            ("Start the relay", self.relay),
            (f"Start the agent ({self.mode} mode) and wait for its tunnel", self.agent),
            (f"Ping the internet host {INET_IP} from the agent", self.ping),
            ("Download the file over IPv4, through the tunnel", self.download_ipv4),
            ("Download the file over IPv6, through the tunnel", self.download_ipv6),
            ("Read the relay's metrics", self.metrics),
        ]

    def build(self) -> list[str]:
        self.lab.build(agents=1)
        return [
            f"{self.agent_ns:<14} the agent's machine: 198.51.100.11 on a LAN, no other way out",
            f"{self.lab.relay_ns:<14} the relay: {RELAY_LAN_IP} on the LAN, {RELAY_INET_IP} "
            "towards the internet",
            f"{self.lab.inet_ns:<14} an internet host: {INET_IP} and {INET_IP6}",
        ]

    def pki(self) -> list[str]:
        self.lab.make_pki(clients=("agent1",))
        return [
            f"in {self.lab.pki}: only agents with a certificate from this CA get in",
        ]

    def web_server(self) -> list[str]:
        self.blob = self.lab.start_inet_services(blob_size=DEMO_BLOB_SIZE)
        self.blob_sha256 = _sha256(self.blob)
        return [
            f"http://{INET_IP}:{HTTP_PORT}/blob.bin: {DEMO_BLOB_SIZE // 1024 // 1024} MiB of "
            f"random bytes, sha256 {self.blob_sha256[:16]}...",
        ]

    def relay(self) -> list[str]:
        self.lab.start_relay(engine=self.engine)
        engine = f" ({self.engine})" if self.engine else ""
        return [
            f"MASQUE CONNECT-IP over QUIC{engine} on {RELAY_LAN_IP}:4433, client certificates "
            f"required; NAT out through {RELAY_INET_IP}",
        ]

    def agent(self) -> list[str]:
        self.lab.start_agent(1, mode=self.mode, engine=self.engine)
        status = self.lab.agent_status(1)
        if status is None:
            raise StepFailedError("the agent's /status endpoint does not answer")
        if status.get("mode") != self.mode:
            raise StepFailedError(f"asked for {self.mode} mode, the agent runs {status['mode']}")
        if self.engine is not None and status.get("quic_engine") != self.engine:
            raise StepFailedError(
                f"asked for the {self.engine} engine, the agent runs {status.get('quic_engine')}"
            )
        addresses = _joined(status.get("addresses"))
        routes = _joined(status.get("routes"))
        return [
            f"state {status['state']}: relay {status['relay']}, device {status['device']}, "
            f"mode {status['mode']}, QUIC engine {status.get('quic_engine', '?')}",
            f"tunnel addresses given by the relay: {addresses}",
            f"routes into the tunnel: {routes}",
        ]

    def ping(self) -> list[str]:
        proc = self.lab.ns(
            self.agent_ns, "ping", "-c", "5", "-W", "2", INET_IP, check=False, timeout=30
        )
        summary = [
            line for line in proc.stdout.splitlines() if "packet loss" in line or "rtt" in line
        ]
        match = _PING_LOSS.search(proc.stdout)
        if match is None:
            raise StepFailedError(f"ping printed no summary: {proc.stderr.strip() or proc.stdout}")
        if float(match.group(1)) != 0.0:
            raise StepFailedError(f"packets were lost: {summary[0]}")
        return summary

    def download_ipv4(self) -> list[str]:
        return self._download(f"http://{INET_IP}:{HTTP_PORT}/blob.bin", "ipv4")

    def download_ipv6(self) -> list[str]:
        return self._download(f"http://[{INET_IP6}]:{HTTP_PORT}/blob.bin", "ipv6")

    def _download(self, url: str, name: str) -> list[str]:
        assert self.blob is not None, "the web server step comes first"
        out = self.lab.workdir / f"download-{name}.bin"
        proc = self.lab.ns(
            self.agent_ns,
            *("curl", "-sS", "-g", "--max-time", "60", "-o", str(out)),
            *("-w", "%{http_code} %{time_total}", url),
            check=False,
            timeout=90,
        )
        if proc.returncode != 0:
            raise StepFailedError(f"curl {url} failed: {proc.stderr.strip()}")
        code, _, seconds_text = proc.stdout.partition(" ")
        if code != "200":
            raise StepFailedError(f"the web server answered HTTP {code}")
        size, expected = out.stat().st_size, self.blob.stat().st_size
        if size != expected:
            raise StepFailedError(f"got {size} bytes, the original has {expected}")
        digest = _sha256(out)
        if digest != self.blob_sha256:
            raise StepFailedError(f"sha256 {digest[:16]}... differs from the original's")
        seconds = float(seconds_text)
        rate = size / seconds / 1e6 * 8 if seconds > 0 else 0.0
        return [
            f"{url}: {size} bytes in {seconds:.2f} s ({rate:.0f} Mbit/s)",
            f"sha256 {digest[:16]}... equals the original's: checksum OK",
        ]

    def metrics(self) -> list[str]:
        text = self.lab.relay_metrics_text()
        if not text:
            raise StepFailedError("the relay's /metrics endpoint does not answer")
        sessions = _plain(text, "zgate_relay_sessions")
        opened = _plain(text, "zgate_relay_sessions_opened_total")
        packets = _labelled(text, "zgate_relay_packets_total")
        drops = {k: v for k, v in _labelled(text, "zgate_relay_drops_total").items() if v}
        if sessions != 1:
            raise StepFailedError(f"the relay reports {sessions:.0f} live sessions, not 1")
        if packets.get("to_egress", 0) < 5 or packets.get("from_egress", 0) < 5:
            raise StepFailedError(f"too few packets crossed the relay: {packets}")
        dropped = ", ".join(f"{reason} {n:.0f}" for reason, n in sorted(drops.items()))
        return [
            f"sessions: {sessions:.0f} live, {opened:.0f} opened since the relay started",
            "packets: "
            + ", ".join(
                f"{words} {packets.get(direction, 0):.0f}"
                for direction, words in _DIRECTION_WORDS.items()
            ),
            f"dropped: {sum(drops.values()):.0f}" + (f" ({dropped})" if dropped else ""),
        ]


def _run_steps(demo: _Demo) -> tuple[int, str, str] | None:
    """Run every step, printing as it goes; the failing (number, title, reason), or None."""
    steps = demo.steps()
    for number, (title, step) in enumerate(steps, start=1):
        _say(f"[{number}/{len(steps)}] {title} ... ", end="")
        started = time.monotonic()
        try:
            details = step()
        except (StepFailedError, AssertionError, RuntimeError, OSError, ValueError) as exc:
            _say(f"FAILED ({time.monotonic() - started:.1f} s)")
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            for line in lines[:20]:
                _say(_INDENT + line)
            # "relay exited early:" says little without the line after it.
            reason = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
            return number, title, reason
        except subprocess.TimeoutExpired as exc:
            _say(f"FAILED ({time.monotonic() - started:.1f} s)")
            return number, title, f"timed out: {' '.join(map(str, exc.cmd))}"
        _say(f"ok ({time.monotonic() - started:.1f} s)")
        for line in details:
            _say(_INDENT + line)
    return None


def _print_how_to_poke(lab: Lab) -> None:
    a, r = lab.agent_ns(1), lab.relay_ns
    _say("")
    _say("The lab is still running. Try, as root in another terminal:")
    _say(f"  ip netns exec {a} ping {INET_IP}")
    _say(f"  ip netns exec {a} ping {INET_IP6}")
    _say(f"  ip netns exec {a} curl -o /dev/null http://{INET_IP}:{HTTP_PORT}/blob.bin")
    _say(f"  ip netns exec {a} {VENV_BIN / 'zgate-agent'} status")
    _say(f"  ip netns exec {r} curl -s http://127.0.0.1:9101/metrics | grep ^zgate_")
    _say(f"  logs: {lab.workdir}/relay.log, {lab.workdir}/agent1.log")


def _wait_for_enter() -> None:
    _say("Press Enter (or Ctrl-C) to tear it down.")
    try:
        input()
    except EOFError:
        _say("(standard input is closed: tearing down now)")
    except KeyboardInterrupt:
        _say("")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so a killed demo still cleans up."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """No Ctrl-C half-way through the clean-up."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _clean_up(lab: Lab) -> list[str]:
    """Stop the daemons, delete the namespaces; the names of any namespace left behind."""
    ours = list(lab.namespaces)
    _say(
        "Cleaning up: stopping the agent, the relay and the web server, deleting the "
        "namespaces ... ",
        end="",
    )
    with _signals_ignored():
        lab.teardown()
        left = [name for name in lab_namespaces() if name in ours]
    _say("done" if not left else f"FAILED, still there: {', '.join(left)}")
    return left


def _new_lab() -> Lab:
    """A lab with a fresh tag (d + 6 hex digits) that no existing namespace uses."""
    taken = lab_namespaces()
    while True:
        tag = "d" + secrets.token_hex(3)
        if not any(name.endswith(f"-{tag}") for name in taken):
            workdir = Path(tempfile.mkdtemp(prefix="zgate-demo-"))
            return Lab(tag=tag, workdir=workdir, temporary_workdir=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    if problem := _missing_prerequisite("demo"):
        print(problem, file=sys.stderr)
        return 1
    lab = _new_lab()
    _say("zgate-lab demo: an agent, a relay and an internet host, each in its own network")
    _say("namespace on this machine. The agent reaches the internet host only through its")
    _say("MASQUE CONNECT-IP tunnel (HTTP/3 over QUIC, client certificates) to the relay.")
    _say(f"Work directory (PKI, logs; kept only if something fails): {lab.workdir}")
    _say("")
    failure: tuple[int, str, str] | None = None
    left: list[str] = []
    completed = False
    try:
        with _sigterm_interrupts():
            failure = _run_steps(_Demo(lab, args.mode, engine=args.quic_engine))
            if args.keep:
                _print_how_to_poke(lab)
                _wait_for_enter()
            completed = True
    finally:
        _say("")
        left = _clean_up(lab)
        if not completed:
            _say(f"interrupted; logs kept in {lab.workdir}")
    if failure is not None:
        number, title, reason = failure
        _say(f"demo FAILED at step {number} ({title}): {reason}")
        logs = ", ".join(sorted(path.name for path in lab.workdir.glob("*.log")))
        _say(f"logs: {lab.workdir} ({logs or 'none written yet'})")
        return 1
    if left:
        _say(f"demo FAILED: clean-up left namespaces behind: {', '.join(left)}")
        _say(f"remove them with: zgate-lab down --tag {lab.tag}")
        return 1
    shutil.rmtree(lab.workdir, ignore_errors=True)
    _say("demo passed: ping, IPv4 and IPv6 downloads through the tunnel, checksums OK")
    return 0


# ------------------------------------------------------------------ registration


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` and ``down`` to the ``zgate-lab`` parser's sub-commands."""
    demo = commands.add_parser(
        "demo",
        help="build a lab, ping and download through the tunnel, clean up",
        description="Build a lab with one agent, create a PKI, start the relay and the agent, "
        f"then ping {INET_IP} and download a file over IPv4 and IPv6 through the tunnel, "
        "show the relay's metrics and remove everything. Exits 0 only if every step passed.",
    )
    demo.add_argument(
        "--mode",
        choices=("datagram", "stream"),
        default="datagram",
        help="how the agent carries packets: QUIC datagrams or the CONNECT stream "
        "(default: datagram)",
    )
    demo.add_argument(
        "--quic-engine",
        choices=ENGINES,
        default=None,
        help="the QUIC engine of the relay and the agent (default: the services' own)",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the lab running until Enter or Ctrl-C, and print how to use it",
    )
    demo.set_defaults(handler=_cmd_demo)
    down = commands.add_parser(
        "down",
        help="remove the namespaces (and temporary PKI) of labs whose owner is gone",
        description="Stop the processes in, and delete, the network namespaces named like a "
        "zgate-lab's (zr-TAG, zi-TAG, zsN-TAG, zaN-TAG, zcN-TAG) whose owner process (a demo, "
        "the e2e tests, a benchmark) is gone, with the temporary work directory (PKI, logs) "
        "a demo made. Labs still in use are left alone unless --force. Other namespaces are "
        "never touched.",
    )
    down.add_argument("--tag", help="only the lab with this tag (the part after the dash)")
    down.add_argument(
        "--force", action="store_true", help="also remove labs whose owner is still running"
    )
    down.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )
    down.set_defaults(handler=_cmd_down)
