"""Time from a policy publish (or a client revocation) to its enforcement on a real relay.

    uv run --frozen python bench/control_enforce.py [--rounds 30] [--revocations 10]
        [--database-url postgresql+psycopg://...] [--postgres] [--json FILE]

No root needed. For each database (SQLite in a temporary state directory; PostgreSQL from
``--database-url``, or a throw-away server from ``zgate_testkit.postgres`` with ``--postgres``):

1. ``zgate-control db upgrade`` and ``token create`` make an admin and a relay token, then
   ``zgate-control serve`` starts on a free loopback port (a subprocess, as deployed).
2. The relay's certificate is issued through the API (``POST /api/v1/relays/bench/certificate``)
   into a temporary PKI directory with the CA and CRL of ``GET /api/v1/ca``, a first policy is
   published, and a real relay starts: ``serve --no-egress --no-dns --control URL
   --control-token-file F`` on free loopback ports, followed until it runs that policy.
3. ``--rounds`` times: a new policy version (one rule's port changes, so its digest does) is
   stored, then published; the clock runs from the publish call's start and from its return
   until the relay's ``/metrics`` shows ``zgate_policy_version_info{version="<digest>"} 1``,
   polled every 5 ms.
4. ``--revocations`` times: a client is added, the relay is let catch up, the client is revoked;
   the clock runs until the relay's ``zgate_relay_control_applied_seq`` passes the change-log
   head the control plane had before the revocation (the revocation change is applied).

Printed: p50/p90/max in ms per database, with the machine (CPUs, model, load average). The
figures include up to one poll interval plus one ``/metrics`` scrape of detection delay.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from control_common import cpu_model, free_port, postgres_unavailable, throwaway_postgres, wait_for

VENV_BIN = Path(sys.executable).parent
RELAY_ID = "bench"
POLL_S = 0.005
START_TIMEOUT_S = 60.0
ENFORCE_TIMEOUT_S = 30.0


def policy_yaml(round_no: int) -> str:
    """A small policy whose digest differs per round (the ssh port varies)."""
    return (
        "default: deny\n"
        "groups: {ops: []}\n"
        "rules:\n"
        "  - {id: web, action: allow, from: ['*'], to: [10.20.0.0/16], ports: [tcp/443]}\n"
        f"  - {{id: ssh, action: allow, from: [group:ops], to: [10.0.0.0/8], "
        f"ports: [tcp/{10000 + round_no}]}}\n"
        "  - {id: dns, action: allow, from: ['*'], to: [10.53.0.0/24], ports: [udp/53]}\n"
    )


@dataclass(frozen=True, slots=True)
class Stats:
    """p50/p90/max of one series, in milliseconds."""

    n: int
    p50_ms: float
    p90_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class Result:
    """One database's figures."""

    database: str
    publish_from_return: Stats
    publish_from_start: Stats
    publish_call: Stats
    revoke_from_return: Stats
    revoke_from_start: Stats
    revoke_call: Stats
    samples_ms: dict[str, list[float]]


def stats(samples: list[float]) -> Stats:
    """Median, nearest-rank p90 and max of `samples` (seconds), in ms."""
    ordered = sorted(samples)
    p90 = ordered[max(0, -(-9 * len(ordered) // 10) - 1)]
    return Stats(
        len(ordered),
        round(statistics.median(ordered) * 1000, 1),
        round(p90 * 1000, 1),
        round(ordered[-1] * 1000, 1),
    )


def machine() -> dict[str, Any]:
    """CPUs, CPU model, load average, Python: printed beside the figures."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of `name{labels}` in Prometheus text (labels matched exactly), or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        metric_name, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest.rstrip("}") else ""
        if metric_name == name and got == want:
            return float(value)
    return None


class Daemon:
    """A subprocess with its output in a log file, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, command: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def check(self) -> None:
        """RuntimeError with the log's tail when the process has exited."""
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{tail}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _ctl_cli(args: list[str], state: Path, database_url: str | None) -> str:
    """`zgate-control ARGS --state-dir STATE [--database-url URL]`, its stdout."""
    command = [str(VENV_BIN / "zgate-control"), *args, "--state-dir", str(state)]
    if database_url:
        command += ["--database-url", database_url]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return done.stdout.strip()


@contextmanager
def control_plane(work: Path, database_url: str | None) -> Iterator[tuple[httpx.Client, Path]]:
    """A migrated control plane serving on loopback: an admin API client and the relay's
    token file."""
    state = work / "control-state"
    _ctl_cli(["db", "upgrade"], state, database_url)
    admin = _ctl_cli(["token", "create", "--role", "admin", "--name", "bench"], state, database_url)
    relay = _ctl_cli(
        ["token", "create", "--role", "relay", "--name", RELAY_ID, "--relay", RELAY_ID],
        state,
        database_url,
    )
    token_file = work / "relay.token"
    token_file.write_text(relay)
    token_file.chmod(0o600)
    port = free_port(socket.SOCK_STREAM)
    command = [
        str(VENV_BIN / "zgate-control"),
        "serve",
        "--state-dir",
        str(state),
        "--listen",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ]
    if database_url:
        command += ["--database-url", database_url]
    daemon = Daemon("zgate-control", command, work / "control.log")
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=30
        ) as client:

            def ready() -> bool:
                daemon.check()
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(ready, START_TIMEOUT_S, "zgate-control's /readyz", 0.1)
            yield client, token_file
    finally:
        daemon.stop()


def _api(response: httpx.Response) -> Any:
    if response.status_code >= 300:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text[:500]}"
        )
    return response.json() if response.content else None


def write_pki(api: httpx.Client, pki: Path) -> None:
    """The relay's certificate and key from the API, with the CA and CRL, into `pki`."""
    pki.mkdir(parents=True)
    issued = _api(api.post(f"/api/v1/relays/{RELAY_ID}/certificate", json={"ips": ["127.0.0.1"]}))
    authority = _api(api.get("/api/v1/ca"))
    (pki / "relay.pem").write_text(issued["bundle"]["cert_pem"])
    key = pki / "relay.key"
    key.touch(0o600)
    key.write_text(issued["bundle"]["key_pem"])
    (pki / "ca.pem").write_text(authority["ca_pem"])
    (pki / "crl.pem").write_text(authority["crl_pem"])


class Relay:
    """A relay subprocess following the control plane, and its /metrics."""

    def __init__(self, work: Path, control_url: str, token_file: Path) -> None:
        self.metrics_url = f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}/metrics"
        command = [
            str(VENV_BIN / "serve"),
            "--no-egress",
            "--no-dns",
            "--listen",
            f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
            "--metrics",
            self.metrics_url.removeprefix("http://").removesuffix("/metrics"),
            "--pki",
            str(work / "pki"),
            "--state-dir",
            str(work / "relay-state"),
            "--relay-name",
            RELAY_ID,
            "--control",
            control_url,
            "--control-token-file",
            str(token_file),
            "--log-level",
            "warning",
        ]
        self.daemon = Daemon("relay", command, work / "relay.log")
        self.http = httpx.Client(timeout=5)

    def metrics(self) -> str:
        """The relay's /metrics text ("" while it does not answer)."""
        try:
            return self.http.get(self.metrics_url).text
        except httpx.TransportError:
            self.daemon.check()
            return ""

    def runs(self, digest: str) -> bool:
        """Whether the relay enforces policy `digest`."""
        return metric(self.metrics(), "zgate_policy_version_info", version=digest) == 1

    def applied_seq(self) -> int:
        """The change-log position the relay has applied (-1 while unknown)."""
        value = metric(self.metrics(), "zgate_relay_control_applied_seq")
        return -1 if value is None else int(value)

    def applied_at_least(self, seq: int) -> bool:
        """Whether the relay has applied the change log up to `seq`."""
        return self.applied_seq() >= seq

    def close(self) -> None:
        """Stop the relay."""
        self.http.close()
        self.daemon.stop()


def push(api: httpx.Client, round_no: int) -> tuple[int, str]:
    """Store round `round_no`'s policy: (version id, digest)."""
    created = _api(
        api.post("/api/v1/policies", json={"yaml": policy_yaml(round_no), "comment": "bench"})
    )
    return int(created["id"]), str(created["digest"])


def head_seq(api: httpx.Client) -> int:
    """The control plane's change-log head, as it reports it for the relay."""
    row = _api(api.get(f"/api/v1/relays/{RELAY_ID}"))
    return int(row["applied_seq"]) + int(row.get("behind", 0))


def measure(name: str, database_url: str | None, rounds: int, revocations: int) -> Result:
    """Start a control plane on `database_url` (None: SQLite) and a relay; time the rounds."""
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "publish_from_return",
            "publish_from_start",
            "publish_call",
            "revoke_from_return",
            "revoke_from_start",
            "revoke_call",
        )
    }
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="zgate-enforce-")))
        api, token_file = stack.enter_context(control_plane(work, database_url))
        write_pki(api, work / "pki")
        version, digest = push(api, 0)
        _api(api.post(f"/api/v1/policies/{version}/publish"))
        relay = Relay(work, str(api.base_url).rstrip("/"), token_file)
        stack.callback(relay.close)
        wait_for(lambda: relay.runs(digest), START_TIMEOUT_S, "the relay's first policy", 0.05)
        print(f"{name}: relay follows; {rounds} publishes", file=sys.stderr)
        for round_no in range(1, rounds + 1):
            version, digest = push(api, round_no)
            started = time.perf_counter()
            _api(api.post(f"/api/v1/policies/{version}/publish"))
            returned = time.perf_counter()
            wait_for(partial(relay.runs, digest), ENFORCE_TIMEOUT_S, f"policy {digest}", POLL_S)
            enforced = time.perf_counter()
            samples["publish_from_return"].append(enforced - returned)
            samples["publish_from_start"].append(enforced - started)
            samples["publish_call"].append(returned - started)
        print(f"{name}: {revocations} revocations", file=sys.stderr)
        for n in range(revocations):
            client_id = f"bench-client-{n}"
            _api(api.post("/api/v1/clients", json={"id": client_id}))
            head = head_seq(api)
            wait_for(partial(relay.applied_at_least, head), ENFORCE_TIMEOUT_S, "catch-up", POLL_S)
            started = time.perf_counter()
            _api(api.post(f"/api/v1/clients/{client_id}/revoke"))
            returned = time.perf_counter()
            wait_for(
                partial(relay.applied_at_least, head + 1),
                ENFORCE_TIMEOUT_S,
                "the revocation",
                POLL_S,
            )
            applied = time.perf_counter()
            samples["revoke_from_return"].append(applied - returned)
            samples["revoke_from_start"].append(applied - started)
            samples["revoke_call"].append(returned - started)
    figures = {k: stats(v) if v else Stats(0, 0.0, 0.0, 0.0) for k, v in samples.items()}
    return Result(
        name,
        figures["publish_from_return"],
        figures["publish_from_start"],
        figures["publish_call"],
        figures["revoke_from_return"],
        figures["revoke_from_start"],
        figures["revoke_call"],
        samples_ms={k: [round(v * 1000, 2) for v in s] for k, s in samples.items()},
    )


def print_table(results: list[Result], about: dict[str, Any]) -> None:
    """One line per database and series."""
    print(
        f"\npublish/revoke -> enforced on the relay; {about['cpus']} CPUs, {about['cpu_model']}, "
        f"load {about['loadavg_start'][0]} -> {about['loadavg_end'][0]}; poll every "
        f"{POLL_S * 1000:.0f} ms"
    )
    header = f"{'database':<12}{'series':<34}{'n':>4}{'p50 ms':>9}{'p90 ms':>9}{'max ms':>9}"
    print(header)
    print("-" * len(header))
    labels = {
        "publish_from_return": "publish returned -> enforced",
        "publish_from_start": "publish called -> enforced",
        "publish_call": "publish call itself",
        "revoke_from_return": "revoke returned -> applied",
        "revoke_from_start": "revoke called -> applied",
        "revoke_call": "revoke call itself",
    }
    for r in results:
        for key, label in labels.items():
            s: Stats = getattr(r, key)
            print(
                f"{r.database:<12}{label:<34}{s.n:>4}{s.p50_ms:>9.1f}{s.p90_ms:>9.1f}{s.max_ms:>9.1f}"
            )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="policy publishes to time")
    parser.add_argument("--revocations", type=int, default=10, help="client revocations to time")
    parser.add_argument("--database-url", help="a PostgreSQL URL of an EMPTY database, too")
    parser.add_argument(
        "--postgres", action="store_true", help="also on a throw-away PostgreSQL server"
    )
    parser.add_argument("--no-sqlite", action="store_true", help="skip SQLite")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.revocations < 0:
        parser.error("--rounds must be at least 1, --revocations at least 0")
    about = machine()
    about["loadavg_start"] = about.pop("loadavg")
    results = []
    if not args.no_sqlite:
        results.append(measure("sqlite", None, args.rounds, args.revocations))
    if args.database_url:
        results.append(measure("postgresql", args.database_url, args.rounds, args.revocations))
    if args.postgres:
        missing = postgres_unavailable()
        if missing is not None:
            parser.error(f"--postgres: {missing}")
        with throwaway_postgres("enforce") as url:
            results.append(measure("postgresql", url, args.rounds, args.revocations))
    about["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print_table(results, about)
    if args.json:
        payload = {
            "at": datetime.now(UTC).isoformat(),
            "machine": about,
            "poll_ms": POLL_S * 1000,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
