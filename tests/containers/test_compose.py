"""The compose lab, for real: images built here, containers started, traffic through the tunnel.

What it does, in order (one lab for the module, always torn down):
  1. scripts/make-base-image (kept when present), then the relay, agent, connector and control
     images with BuildKit on that base (`--build-arg PYTHON_IMAGE=zgate-base:bookworm`);
  2. a PKI in a temporary project directory (`zgate pki init` / `zgate pki issue client agent`)
     and a file of random bytes for the "internet" host (203.0.113.100, TEST-NET-3) to serve;
  3. `compose -p <unique> up` of compose.yaml itself with that project directory, then waits
     for health and the tunnel by polling against deadlines;
  4. proves: the agent pings the internet host and downloads the file through the tunnel with
     the right sha256, over IPv4 and IPv6 (2001:db8:203::100); both /metrics answer on their
     published loopback ports, and the control plane's /healthz and /metrics on its own;
     Debian's Prometheus, scraping a copy of deploy/prometheus.yml aimed at those ports, sees
     every target up and the series the Grafana dashboard draws;
  5. `compose down -v`, and nothing of it is left: containers, networks, volumes, network
     namespaces, nftables tables or TUN devices on the host.

Skipped, with the reason, where Docker (or root) is missing, unless ZGATE_REQUIRE_E2E=1 (CI),
where that is a failure. Run it with `make container-test`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/zgate.json"

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

BASE_IMAGE = os.environ.get("BASE_IMAGE") or "zgate-base:bookworm"
IMAGE_TAG = "dev"  # the tags compose.yaml runs
IMAGES = ("relay", "agent", "connector", "control")
LAB_SERVICES = ("relay", "agent", "control", "internet")
RELAY_ADDRESS = "172.28.0.10"
INTERNET_HOST = "203.0.113.100"
INTERNET_HOST6 = "2001:db8:203::100"
PROJECT_PREFIX = "zgatect"
BLOB_NAME = "blob.bin"
BLOB_SIZE = 4 * 1024 * 1024
# Series the dashboard draws that must exist once one agent is connected and has sent traffic.
REQUIRED_SERIES = (
    "zgate_relay_sessions",
    "zgate_relay_packets_total",
    "zgate_relay_bytes_total",
    "zgate_agent_connected",
    "zgate_agent_packets_total",
    "zgate_agent_bytes_total",
)

T = TypeVar("T")
TIMINGS_ATTRIBUTE = "zgate_container_timings"  # read by conftest.py's terminal summary


# --- tools ----------------------------------------------------------------------------------------


def _works(argv: Sequence[str]) -> bool:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def docker_client() -> str | None:
    """A docker client that builds with BuildKit: one with buildx, else Debian's 20.10 client."""
    if os.environ.get("DOCKER"):
        return os.environ["DOCKER"]
    found = shutil.which("docker")
    if found and _works([found, "buildx", "version"]):
        return found
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    return found


def compose_command(docker: str) -> list[str] | None:
    if _works([docker, "compose", "version"]):
        return [docker, "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


def unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap for the base image, the Docker socket)"
    docker = docker_client()
    if docker is None:
        return "no docker client (apt-get install docker.io)"
    if not _works([docker, "info"]):
        return f"`{docker} info` fails: the Docker daemon is not running (start dockerd)"
    if compose_command(docker) is None:
        return "neither `docker compose` nor docker-compose (apt-get install docker-compose)"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun on this host (modprobe tun)"
    if not _works([docker, "image", "inspect", BASE_IMAGE]) and not shutil.which("debootstrap"):
        return f"no {BASE_IMAGE} and no debootstrap to make it (apt-get install debootstrap)"
    return None


def require(reason: str) -> None:
    if os.environ.get("ZGATE_REQUIRE_E2E") == "1":
        pytest.fail(f"ZGATE_REQUIRE_E2E=1 but {reason}")
    pytest.skip(reason)


def run(
    argv: Sequence[str],
    *,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{' '.join(argv)} did not finish within {timeout:.0f}s") from exc
    if check and done.returncode != 0:
        output = f"{_tail(done.stdout)}\n{_tail(done.stderr)}"
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{output}")
    return done


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def wait_for(what: str, probe: Callable[[], T | None], *, deadline: float, poll: float = 0.5) -> T:
    """Call `probe` until it returns something other than None; fail after `deadline` s."""
    end = time.monotonic() + deadline
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
        except Exception as exc:  # a probe may fail until the thing is up
            last_error = exc
            result = None
        if result is not None:
            return result
        if time.monotonic() > end:
            raise AssertionError(
                f"timed out after {deadline:.0f}s waiting for {what}: {last_error}"
            )
        time.sleep(poll)


def http_get(url: str, *, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- host state that must not change --------------------------------------------------------------


@dataclass(frozen=True)
class HostSnapshot:
    netns: frozenset[str]
    nft_tables: frozenset[str]
    zgate_links: frozenset[str]

    @classmethod
    def take(cls) -> HostSnapshot:
        def lines(*argv: str) -> list[str]:
            if shutil.which(argv[0]) is None:
                return []
            return run(argv, check=False).stdout.splitlines()

        netns = lines("ip", "netns", "list")
        tables = lines("nft", "list", "tables")
        links = lines("ip", "-o", "link", "show")
        return cls(
            netns=frozenset(line.split()[0] for line in netns if line.strip()),
            nft_tables=frozenset(
                line.split()[-1] for line in tables if line.split()[-1].startswith("zgate")
            ),
            zgate_links=frozenset(
                name
                for line in links
                if (name := line.split(":")[1].strip().split("@")[0]).startswith("zgate")
            ),
        )


def processes_by_netns() -> dict[int, int]:
    """PID -> network namespace inode, for every process on the host."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                found[int(proc.name)] = os.stat(proc / "ns/net").st_ino
    return found


# --- the lab --------------------------------------------------------------------------------------


@dataclass
class Lab:
    docker: str
    compose: list[str]
    project: str
    workdir: Path
    blob_sha256: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    up: bool = False
    netns: dict[str, str] = field(default_factory=dict)
    """service -> Docker's handle on the container's network namespace (its sandbox file)."""
    pids: dict[int, int] = field(default_factory=dict)
    """PID -> namespace inode of every process that was in one of the lab's namespaces."""

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["ZGATE_INTERNET_DIR"] = str(self.workdir / "www")
        env.pop("COMPOSE_PROJECT_NAME", None)
        env.pop("COMPOSE_PROFILES", None)
        return env

    def compose_argv(self, *args: str) -> list[str]:
        return [
            *self.compose,
            "-p",
            self.project,
            "-f",
            str(COMPOSE_FILE),
            "--project-directory",
            str(self.workdir),
            *args,
        ]

    def run_compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(self.compose_argv(*args), timeout=timeout, check=check, env=self.env)

    def exec(
        self, service: str, *argv: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = self.run_compose("exec", "-T", service, *argv, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(
                f"`{' '.join(argv)}` in {service} exited {done.returncode}:\n"
                f"{_tail(done.stdout)}\n{_tail(done.stderr)}\n--- logs ---\n{self.logs()}"
            )
        return done

    def container(self, service: str) -> str:
        container_id = self.run_compose("ps", "-q", service).stdout.strip()
        assert container_id, f"no container for {service}"
        return container_id

    def state(self, service: str) -> tuple[str, str]:
        """(status, health) of a service's container: ('running', 'healthy')."""
        fmt = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
        out = run([self.docker, "inspect", "-f", fmt, self.container(service)]).stdout.split()
        return out[0], out[1] if len(out) > 1 else ""

    def record_netns(self) -> None:
        """Remember each container's network namespace, to prove later that it is gone."""
        for service in LAB_SERVICES:
            fmt = "{{.State.Pid}} {{.NetworkSettings.SandboxKey}}"
            inspect = [self.docker, "inspect", "-f", fmt, self.container(service)]
            pid, sandbox = run(inspect).stdout.split()
            self.netns[service] = sandbox
            inode = os.stat(f"/proc/{pid}/ns/net").st_ino
            self.pids |= {p: ns for p, ns in processes_by_netns().items() if ns == inode}

    def published(self, service: str, port: int) -> str:
        """The host address:port compose published a service's TCP port on."""
        address = self.run_compose("port", service, str(port)).stdout.strip()
        assert address, f"{service}:{port} is not published"
        return address

    def logs(self) -> str:
        done = self.run_compose("logs", "--no-color", "--tail", "30", timeout=60, check=False)
        return _tail(done.stdout + done.stderr, 120)

    def down(self) -> None:
        started = time.monotonic()
        self.run_compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=180)
        self.up = False
        self.timings["down"] = time.monotonic() - started


def remove_project(docker: str, project: str) -> None:
    """Remove what a compose project left (a crashed run), without its compose file."""
    label = f"label=com.docker.compose.project={project}"
    for kind, listing, remove in (
        ("containers", ["ps", "-aq"], ["rm", "-f", "-v"]),
        ("networks", ["network", "ls", "-q"], ["network", "rm"]),
        ("volumes", ["volume", "ls", "-q"], ["volume", "rm", "-f"]),
    ):
        ids = run([docker, *listing, "--filter", label], check=False).stdout.split()
        if ids:
            run([docker, *remove, *ids], check=False, timeout=120)
            print(f"removed stale {kind} of {project}: {len(ids)}")


def stale_projects(docker: str) -> set[str]:
    listing = [docker, "ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}']
    networks = [docker, "network", "ls", "--format", '{{.Label "com.docker.compose.project"}}']
    names = run(listing, check=False).stdout.split() + run(networks, check=False).stdout.split()
    return {name for name in names if name.startswith(PROJECT_PREFIX)}


def build_images(lab: Lab) -> None:
    started = time.monotonic()
    env = dict(os.environ, DOCKER=lab.docker)
    run([str(ROOT / "scripts/make-base-image"), BASE_IMAGE], timeout=900, env=env)
    lab.timings["base image"] = time.monotonic() - started
    env["DOCKER_BUILDKIT"] = "1"
    for image in IMAGES:
        started = time.monotonic()
        run(
            [
                lab.docker,
                "build",
                "--progress=plain",
                "--build-arg",
                f"PYTHON_IMAGE={BASE_IMAGE}",
                "-f",
                f"services/{image}/Dockerfile",
                "-t",
                f"zgate-{image}:{IMAGE_TAG}",
                ".",
            ],
            timeout=900,
            env=env,
        )
        lab.timings[f"image {image}"] = time.monotonic() - started


def make_pki_and_content(lab: Lab) -> None:
    pki = lab.workdir / ".zgate/pki"
    zgate = [sys.executable, "-m", "zgate_cli"]
    if (Path(sys.executable).parent / "zgate").exists():
        zgate = [str(Path(sys.executable).parent / "zgate")]
    run(
        [
            *zgate,
            "pki",
            "init",
            "--dir",
            str(pki),
            "--relay-name",
            "relay",
            "--relay-ip",
            RELAY_ADDRESS,
        ]
    )
    run([*zgate, "pki", "issue", "client", "agent", "--dir", str(pki)])
    www = lab.workdir / "www"
    www.mkdir()
    blob = secrets.token_bytes(BLOB_SIZE)
    (www / BLOB_NAME).write_bytes(blob)
    lab.blob_sha256 = hashlib.sha256(blob).hexdigest()
    # The internet host serves it as whatever user; the keys stay 0600 (root in the containers
    # reads them; nothing else does).
    www.chmod(0o755)
    (www / BLOB_NAME).chmod(0o644)


def start(lab: Lab) -> None:
    started = time.monotonic()
    # Compose waits for the relay's health before it starts the agent (depends_on).
    lab.up = True  # from here on, whatever `up` managed to create is taken down again
    lab.run_compose("up", "-d", "--no-build", *LAB_SERVICES, timeout=300)

    def healthy() -> bool | None:
        states = {service: lab.state(service) for service in LAB_SERVICES}
        for service, (status, _) in states.items():
            if status in ("exited", "dead", "restarting"):
                raise_now(f"{service} is {status}")
        return True if all(health == "healthy" for _, health in states.values()) else None

    def raise_now(message: str) -> None:
        raise pytest.fail.Exception(f"{message}\n--- logs ---\n{lab.logs()}")

    try:
        wait_for("healthy containers", healthy, deadline=120)
        agent_status = f"http://{lab.published('agent', 9102)}/status"

        def connected() -> dict[str, Any] | None:
            status: dict[str, Any] = json.loads(http_get(agent_status))
            return status if status.get("state") == "connected" else None

        wait_for("the agent's tunnel", connected, deadline=60)
        lab.record_netns()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- logs ---\n{lab.logs()}") from None
    lab.timings["up"] = time.monotonic() - started


@pytest.fixture(scope="module")
def host_before() -> HostSnapshot:
    return HostSnapshot.take()


@pytest.fixture(scope="module")
def lab(host_before: HostSnapshot, request: pytest.FixtureRequest) -> Iterator[Lab]:
    reason = unavailable()
    if reason:
        require(reason)
    docker = docker_client()
    assert docker is not None
    compose = compose_command(docker)
    assert compose is not None
    for project in stale_projects(docker):
        # A crashed run's leftovers hold the lab's fixed subnets; a live run's are its own.
        if not Path(f"/proc/{project.removeprefix(PROJECT_PREFIX)}").exists():
            remove_project(docker, project)
    workdir = Path(tempfile.mkdtemp(prefix="zgate-containers-"))
    the_lab = Lab(docker, compose, f"{PROJECT_PREFIX}{os.getpid()}", workdir)
    try:
        build_images(the_lab)
        make_pki_and_content(the_lab)
        start(the_lab)
        yield the_lab
    finally:
        try:
            if the_lab.up:
                the_lab.down()
        finally:
            remove_project(docker, the_lab.project)
            shutil.rmtree(workdir, ignore_errors=True)
            # conftest.py prints them in the terminal summary.
            setattr(request.config, TIMINGS_ATTRIBUTE, dict(the_lab.timings))


# --- the tests ------------------------------------------------------------------------------------


def test_each_service_mounts_only_its_own_keys(lab: Lab) -> None:
    lab.exec("relay", "test", "-r", "/pki/relay.key")
    lab.exec("agent", "test", "-r", "/pki/clients/agent.key")
    for service in ("relay", "agent"):
        assert lab.exec(service, "test", "-e", "/pki/ca.key", check=False).returncode == 1
    # The state directory is the image's volume; the relay keeps its audit log there.
    lab.exec("relay", "test", "-s", "/var/lib/zgate/relay/audit.log")


def test_tunnel_devices_carry_only_assigned_addresses(lab: Lab) -> None:
    # /proc/sys is read-only in a container: zgate_host turns off IPv6 link-local addresses on
    # its TUN devices through netlink instead, and IPv6 works because compose enabled it.
    for service, device in (("relay", "zgate0"), ("agent", "zgate-agent0")):
        addresses = lab.exec(service, "ip", "-o", "addr", "show", "dev", device).stdout
        assert " inet " in addresses and " inet6 fd7a:" in addresses, addresses
        assert "scope link" not in addresses, f"{service}: {addresses}"


@pytest.mark.parametrize("host", [INTERNET_HOST, INTERNET_HOST6], ids=["ipv4", "ipv6"])
def test_agent_pings_the_internet_host_through_the_relay(lab: Lab, host: str) -> None:
    done = lab.exec("agent", "ping", "-c", "4", "-W", "2", host)
    assert " 0% packet loss" in done.stdout, done.stdout
    # The way there is the tunnel, not a Docker network: the agent shares none with the host.
    route = lab.exec("agent", "ip", "route", "get", host).stdout
    assert "dev zgate-agent0" in route, route


@pytest.mark.parametrize(
    "host", [INTERNET_HOST, f"[{INTERNET_HOST6}]", "internet"], ids=["ipv4", "ipv6", "by-name"]
)
def test_download_through_the_tunnel_is_intact(lab: Lab, host: str) -> None:
    # By name, the agent asks the relay's DNS service through the tunnel (its resolv.conf
    # points there), and the relay asks Docker's resolver.
    done = lab.exec(
        "agent",
        "sh",
        "-c",
        f"curl -fsS --max-time 60 -o /tmp/{BLOB_NAME} http://{host}/{BLOB_NAME}"
        f" && sha256sum /tmp/{BLOB_NAME} && rm /tmp/{BLOB_NAME}",
        timeout=90,
    )
    assert done.stdout.split()[0] == lab.blob_sha256


def test_metrics_endpoints_answer_on_loopback(lab: Lab) -> None:
    relay = lab.published("relay", 9101)
    agent = lab.published("agent", 9102)
    assert relay.startswith("127.0.0.1:") and agent.startswith("127.0.0.1:")
    relay_metrics = http_get(f"http://{relay}/metrics").decode()
    agent_metrics = http_get(f"http://{agent}/metrics").decode()
    assert re.search(r"^zgate_relay_sessions 1(\.0)?$", relay_metrics, re.MULTILINE)
    assert re.search(r"^zgate_agent_connected 1(\.0)?$", agent_metrics, re.MULTILINE)


def test_control_plane_answers_health_and_metrics_on_loopback(lab: Lab) -> None:
    control = lab.published("control", 8080)
    assert control.startswith("127.0.0.1:")
    assert json.loads(http_get(f"http://{control}/healthz")) == {"status": "ok"}
    metrics = http_get(f"http://{control}/metrics").decode()
    assert re.search(r"^# TYPE zgate_control_\w+ ", metrics, re.MULTILINE), metrics[:2000]
    # Its SQLite database lives in the named volume, written by the image's non-root user.
    owner = lab.exec("control", "stat", "-c", "%u", "/var/lib/zgate/control/control.db").stdout
    assert owner.strip() == "10001"


def prometheus_config(lab: Lab) -> dict[str, Any]:
    """deploy/prometheus.yml with the targets moved to the published ports, rules by path."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            moved = []
            for target in static["targets"]:
                service, _, port = target.rpartition(":")
                moved.append(lab.published(service, int(port)))
            static["targets"] = moved
    config["rule_files"] = [str(ROOT / "deploy/prometheus-rules.yml")]
    return config


def dashboard_metrics() -> set[str]:
    exprs = re.findall(r'"expr":\s*"((?:[^"\\]|\\.)*)"', DASHBOARD.read_text())
    return {m for expr in exprs for m in re.findall(r"\bzgate_[a-z0-9_]+", expr)}


def test_prometheus_scrapes_every_target_and_the_dashboards_series(lab: Lab) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        require("no prometheus binary (apt-get install prometheus)")
        return
    assert set(REQUIRED_SERIES) <= dashboard_metrics(), "the test checks series the dashboard uses"
    home = lab.workdir / "prometheus"
    home.mkdir()
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(lab)))
    port = free_loopback_port()
    api = f"http://127.0.0.1:{port}"
    log = (home / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=home,
    )

    def query(promql: str) -> list[dict[str, Any]]:
        url = f"{api}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        reply = json.loads(http_get(url))
        assert reply["status"] == "success", reply
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    try:
        wait_for("Prometheus to be ready", lambda: http_get(f"{api}/-/ready") or None, deadline=60)
        jobs = {job["job_name"] for job in yaml.safe_load(config.read_text())["scrape_configs"]}

        def all_up() -> list[dict[str, Any]] | None:
            up = query("up")
            seen = {r["metric"]["job"]: r["value"][1] for r in up}
            return up if seen.keys() >= jobs and set(seen.values()) == {"1"} else None

        try:
            up = wait_for("every target up == 1", all_up, deadline=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; up = {query('up')}") from None
        assert {r["metric"]["job"] for r in up} == jobs
        for metric in REQUIRED_SERIES:
            assert query(metric), f"Prometheus has no series {metric}"
        sessions = query("zgate_relay_sessions")
        assert [r["value"][1] for r in sessions] == ["1"]
        rules = json.loads(http_get(f"{api}/api/v1/rules"))["data"]["groups"]
        broken = [r["name"] for g in rules for r in g["rules"] if r.get("health") == "err"]
        assert rules and not broken, f"rules failing to evaluate: {broken}"
    except AssertionError as exc:
        log.flush()
        raise AssertionError(
            f"{exc}\n--- prometheus ---\n{_tail((home / 'prometheus.log').read_text())}"
        ) from None
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_down_leaves_nothing_behind(lab: Lab, host_before: HostSnapshot) -> None:
    lab.down()
    label = f"label=com.docker.compose.project={lab.project}"
    for listing in (["ps", "-aq"], ["network", "ls", "-q"], ["volume", "ls", "-q"]):
        left = run([lab.docker, *listing, "--filter", label]).stdout.split()
        assert left == [], f"docker {' '.join(listing)}: {left} left by {lab.project}"
    # The containers' namespaces: Docker's handles gone, no process left in one, and none
    # pinned under a name in `ip netns` (other tests on this machine may add their own there).
    assert lab.netns and lab.pids, "the lab's network namespaces were never recorded"
    # Docker unmounts a sandbox at once and deletes the empty file in a later sweep.
    mounted = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    for service, sandbox in lab.netns.items():
        real = str(Path(sandbox).resolve())
        assert sandbox not in mounted and real not in mounted, (
            f"{service}'s network namespace is still mounted at {sandbox}"
        )
    # Both a PID and a namespace inode may be reused, but not the pair within seconds.
    still = lab.pids.items() & processes_by_netns().items()
    assert not still, f"processes of the lab still run: {sorted(still)}"
    after = HostSnapshot.take()
    mine = {name for name in after.netns - host_before.netns if lab.project in name}
    assert not mine, f"`ip netns` names left by the lab: {mine}"
    assert after.nft_tables <= host_before.nft_tables, f"nft tables left: {after.nft_tables}"
    assert after.zgate_links <= host_before.zgate_links, f"TUN devices left: {after.zgate_links}"
