"""Coherence checks for the deploy files: Dockerfiles, compose, CI, Prometheus, Grafana, systemd.

Nothing here builds an image or starts a service; each test reads the files and checks that they
agree with the workspace (members, console scripts, dependencies) and with each other (ports,
mounts, datasource uids, metric names and labels). `.ci/check-dockerfiles` replays the Dockerfiles'
`uv sync` steps for real.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _exported_metrics() -> dict[str, dict[str, frozenset[str] | None]]:
    """Every metric the relay, the agent, the connector and the control plane export, with their
    labels and label values, read from fresh registries of the services' own metrics modules."""
    from zgate_agent.metrics import AgentMetrics
    from zgate_control.metrics import ControlMetrics
    from zgate_relay.control.metrics import ControlMetrics as RelayControlMetrics
    from zgate_relay.metrics import RelayMetrics

    relay = RelayMetrics()
    # zgate_relay_control_*: registered once the relay follows a control plane (--control).
    RelayControlMetrics(relay.registry)
    # Series that exist only once a policy is running or DNS is served: make one of each.
    relay.watch_rules(["a-rule", "default"])
    relay.policy_version.labels("0123456789ab").set(1)
    relay.watch_dns(dict)
    relay.connector_sessions.labels("site-a").set(1)  # per connector id, once one is known
    relay.connector_prefixes.labels("site-a").set(1)
    relay.route_refusals.labels("site-a").inc()
    control = ControlMetrics()
    # Labelled per request: one route, every method and status class the middleware records.
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        for status in ("1xx", "2xx", "3xx", "4xx", "5xx"):
            control.requests.labels("/v1/policies", method, status)
    control.latency.labels("/v1/policies")
    exported: dict[str, dict[str, frozenset[str] | None]] = {}
    connector = AgentMetrics(prefix="zgate_connector")
    registries = (relay.registry, AgentMetrics().registry, connector.registry, control.registry)
    for registry in registries:
        for family in registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = exported.setdefault(sample.name, {})
                for key, value in sample.labels.items():
                    known = labels.get(key) or frozenset()
                    labels[key] = known | {value}
    return exported


# Metrics the services export, with their labels and label values.
EXPORTED_METRICS = _exported_metrics()

# Series Prometheus itself adds, usable beside the services' metrics.
PROMETHEUS_BUILTIN_METRICS = frozenset({"up"})


@dataclass(frozen=True)
class ServiceImage:
    """What a service's Dockerfile must produce (the operator interface)."""

    member_dir: str
    package: str
    entrypoint: str
    cmd: tuple[str, ...]
    apt_packages: frozenset[str]
    exposed: frozenset[str]
    compose_service: str
    address: str
    pki_files: tuple[str, ...]
    """What compose mounts under /pki for the service (never the CA key)."""
    compose_extra_args: tuple[str, ...] = ()
    """What compose adds to the image's CMD (lab-only settings)."""


IMAGES = (
    ServiceImage(
        member_dir="services/relay",
        package="zgate-relay",
        entrypoint="serve",
        cmd=("--listen", "0.0.0.0:4433", "--pki", "/pki", "--metrics", "0.0.0.0:9101"),
        apt_packages=frozenset({"iproute2", "nftables"}),
        exposed=frozenset({"4433/udp", "9101/tcp"}),
        compose_service="relay",
        address="172.28.0.10",
        pki_files=("/pki/ca.pem", "/pki/crl.pem", "/pki/relay.pem", "/pki/relay.key"),
        # Docker's embedded resolver as the upstream of the relay's DNS service.
        compose_extra_args=("--dns-upstream", "127.0.0.11"),
    ),
    ServiceImage(
        member_dir="services/agent",
        package="zgate-agent",
        entrypoint="zgate-agent",
        cmd=(
            "up",
            "--relay",
            "relay:4433",
            "--ca",
            "/pki/ca.pem",
            "--cert",
            "/pki/clients/agent.pem",
            "--key",
            "/pki/clients/agent.key",
            "--server-name",
            "relay",
            "--metrics",
            "0.0.0.0:9102",
        ),
        apt_packages=frozenset({"iproute2", "iputils-ping", "curl"}),
        exposed=frozenset({"9102/tcp"}),
        compose_service="agent",
        address="172.28.0.20",
        pki_files=("/pki/ca.pem", "/pki/clients/agent.pem", "/pki/clients/agent.key"),
    ),
)
IMAGE_IDS = [image.compose_service for image in IMAGES]

# The control plane's image: built the same way, but no tunnel endpoint (no capability, device,
# PKI mount or apt package), so only the build and entrypoint tests run over it too.
CONTROL_IMAGE = ServiceImage(
    member_dir="services/control",
    package="zgate-control",
    entrypoint="zgate-control",
    cmd=("serve", "--listen", "0.0.0.0:8080"),
    apt_packages=frozenset(),
    exposed=frozenset({"8080/tcp"}),
    compose_service="control",
    address="",
    pki_files=(),
)
BUILT_IMAGES = (*IMAGES, CONTROL_IMAGE)
BUILT_IDS = [image.compose_service for image in BUILT_IMAGES]

YAML_FILES = (
    "compose.yaml",
    ".github/workflows/ci.yml",
    "deploy/prometheus.yml",
    "deploy/prometheus-rules.yml",
    "deploy/grafana/provisioning/datasources/prometheus.yml",
    "deploy/grafana/provisioning/dashboards/zgate.yml",
)


# --- helpers: workspace --------------------------------------------------------------------------


def _load_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, f"unparsable requirement {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def workspace_members() -> dict[str, Path]:
    """Workspace members by package name, from the root's [tool.uv.workspace] globs."""
    root = _load_toml(ROOT / "pyproject.toml")
    members: dict[str, Path] = {}
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        for pyproject in sorted(ROOT.glob(f"{pattern}/pyproject.toml")):
            members[_load_toml(pyproject)["project"]["name"]] = pyproject.parent
    return members


def member_closure(package: str) -> set[str]:
    """The package and every workspace member it depends on, transitively."""
    members = workspace_members()
    seen: set[str] = set()
    todo = [package]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        project = _load_toml(members[name] / "pyproject.toml")["project"]
        todo.extend(
            dep for dep in map(_requirement_name, project.get("dependencies", [])) if dep in members
        )
    return seen


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- helpers: Dockerfile -------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_stages(path: Path) -> list[list[Instruction]]:
    """Instructions grouped by stage (comments dropped, continuation lines joined)."""
    stages: list[list[Instruction]] = []
    logical = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        if logical.strip():
            keyword, _, args = logical.strip().partition(" ")
            instruction = Instruction(keyword.upper(), " ".join(args.split()))
            if instruction.keyword == "FROM":
                stages.append([])
            if stages:
                stages[-1].append(instruction)
        logical = ""
    return stages


def dockerfile_args(path: Path) -> dict[str, str]:
    """Default values of the ARGs declared before the first FROM."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("FROM"):
            break
        if line.startswith("ARG ") and "=" in line:
            name, _, value = line[4:].strip().partition("=")
            values[name] = value
    return values


def base_image(path: Path, from_args: str) -> str:
    image = from_args.split()[0]
    for name, value in dockerfile_args(path).items():
        image = image.replace(f"${{{name}}}", value)
    return image


def uv_syncs(stage: list[Instruction]) -> list[tuple[int, list[str]]]:
    """(index, argv) of each `uv sync` in a stage."""
    found = []
    for index, instruction in enumerate(stage):
        if instruction.keyword == "RUN" and "uv sync" in instruction.args:
            argv = instruction.args[instruction.args.index("uv sync") :].split()
            found.append((index, argv))
    return found


def option_value(argv: list[str], option: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == option and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def copies(stage: list[Instruction], start: int, stop: int) -> list[tuple[list[str], str]]:
    """(sources, destination) of the plain COPY instructions in stage[start:stop]."""
    result = []
    for instruction in stage[start:stop]:
        if instruction.keyword != "COPY":
            continue
        words = [w for w in instruction.args.split() if not w.startswith("--")]
        result.append((words[:-1], words[-1]))
    return result


# --- helpers: compose, Prometheus, PromQL --------------------------------------------------------


def load_yaml(relpath: str) -> Any:
    return yaml.safe_load((ROOT / relpath).read_text())


def compose() -> dict[str, Any]:
    data = load_yaml("compose.yaml")
    assert isinstance(data, dict)
    return data


def bind_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container target -> (host source, read-only) for a service's short-syntax volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        mounts[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return mounts


def published_ports(service: dict[str, Any]) -> set[str]:
    """Container ports a service publishes, as '4433/udp'."""
    ports = set()
    for spec in service.get("ports", []):
        target, _, protocol = str(spec).rpartition(":")[2].partition("/")
        ports.add(f"{target}/{protocol or 'tcp'}")
    return ports


def metrics_port(argv: list[str] | tuple[str, ...]) -> str:
    value = option_value(list(argv), "--metrics")
    assert value, f"no --metrics in {argv}"
    return value.rpartition(":")[2]


def prometheus_config() -> dict[str, Any]:
    data = load_yaml("deploy/prometheus.yml")
    assert isinstance(data, dict)
    return data


def target_labels() -> set[str]:
    """Labels Prometheus attaches to every scraped series: instance, job and static labels."""
    labels = {"instance", "job"}
    for job in prometheus_config()["scrape_configs"]:
        for static in job.get("static_configs", []):
            labels.update(static.get("labels", {}))
    return labels


METRIC_RE = re.compile(r"\b(zgate_[a-z0-9_]+|up)\b(?!\s*\()")
SELECTOR_RE = re.compile(r"\b(zgate_[a-z0-9_]+|up)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LEGEND_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def promql_problems(expr: str, legend: str = "") -> list[str]:
    """What is wrong with a PromQL expression against EXPORTED_METRICS (empty if nothing)."""
    problems: list[str] = []
    metrics = set(METRIC_RE.findall(expr))
    if not metrics:
        problems.append(f"no zgate metric in {expr!r}")
    allowed_labels = target_labels()
    for metric in metrics:
        if metric not in EXPORTED_METRICS and metric not in PROMETHEUS_BUILTIN_METRICS:
            problems.append(f"{metric} is not an exported metric")
        else:
            allowed_labels.update(EXPORTED_METRICS.get(metric, {}))
    jobs = {job["job_name"] for job in prometheus_config()["scrape_configs"]}
    for metric, matchers in SELECTOR_RE.findall(expr):
        for label, op, value in MATCHER_RE.findall(matchers):
            if label == "job" and op == "=" and value not in jobs:
                problems.append(f"{metric}: job {value!r} is not scraped")
            labels = EXPORTED_METRICS.get(metric, {})
            if label not in labels and label not in target_labels():
                problems.append(f"{metric} has no label {label!r}")
            values = labels.get(label)
            if values is not None and op == "=" and value not in values:
                problems.append(f"{metric}: {label}={value!r} is not one of {sorted(values)}")
    grouping: set[str] = set()
    for group in GROUPING_RE.findall(expr):
        grouping.update(label.strip() for label in group.split(",") if label.strip())
    problems.extend(f"grouping by unknown label {label!r}" for label in grouping - allowed_labels)
    for label in LEGEND_RE.findall(legend):
        if label not in (grouping or allowed_labels):
            problems.append(f"legend uses {label!r}, which the query does not keep")
    return problems


# --- helpers: Grafana, systemd -------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data = json.loads((ROOT / "deploy/grafana/dashboards/zgate.json").read_text())
    assert isinstance(data, dict)
    return data


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_targets() -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            yield panel["title"], target


def systemd_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat), comments and blank lines dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not key=value"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def workflow() -> dict[Any, Any]:
    data = load_yaml(".github/workflows/ci.yml")
    assert isinstance(data, dict)
    return data


def job_commands(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


# --- tests: files parse --------------------------------------------------------------------------


@pytest.mark.parametrize("relpath", YAML_FILES)
def test_yaml_file_parses_to_a_mapping(relpath: str) -> None:
    assert isinstance(load_yaml(relpath), dict)


def test_dashboard_is_json_with_unique_panel_ids() -> None:
    ids = [panel["id"] for panel in dashboard_panels()]
    assert ids
    assert len(ids) == len(set(ids))


# --- tests: Dockerfiles --------------------------------------------------------------------------


@pytest.mark.parametrize("image", BUILT_IMAGES, ids=BUILT_IDS)
def test_dockerfile_builds_from_python_311_slim_in_two_stages(image: ServiceImage) -> None:
    path = ROOT / image.member_dir / "Dockerfile"
    stages = dockerfile_stages(path)
    assert len(stages) == 2, "a builder stage and a slim final stage"
    for stage in stages:
        assert base_image(path, stage[0].args).startswith("python:3.11-slim")
    builder_runs = " ".join(i.args for i in stages[0] if i.keyword == "RUN")
    assert re.search(r"python3 -m pip install \S*uv==", builder_runs), "uv comes from pip, pinned"
    assert "curl" not in builder_runs
    assert "astral.sh" not in path.read_text()


@pytest.mark.parametrize("image", BUILT_IMAGES, ids=BUILT_IDS)
def test_dockerfile_syncs_frozen_dependencies_then_the_member(image: ServiceImage) -> None:
    builder = dockerfile_stages(ROOT / image.member_dir / "Dockerfile")[0]
    syncs = uv_syncs(builder)
    assert len(syncs) == 2
    members = workspace_members()
    for _, argv in syncs:
        assert "--frozen" in argv
        assert "--no-dev" in argv
        package = option_value(argv, "--package")
        assert package in members, f"--package {package} is not a workspace member"
        assert package == image.package
    (_, deps_sync), (_, project_sync) = syncs
    assert "--no-install-workspace" in deps_sync
    assert "--no-editable" in project_sync
    assert "--no-install-workspace" not in project_sync


@pytest.mark.parametrize("image", BUILT_IMAGES, ids=BUILT_IDS)
def test_dockerfile_copies_exactly_the_members_the_package_needs(image: ServiceImage) -> None:
    builder = dockerfile_stages(ROOT / image.member_dir / "Dockerfile")[0]
    (first, _), (second, _) = uv_syncs(builder)
    members = workspace_members()
    needed = {rel(members[name]) for name in member_closure(image.package)}

    metadata = copies(builder, 0, first)
    metadata_files = {src for sources, _ in metadata for src in sources}
    assert {"pyproject.toml", "uv.lock"} <= metadata_files
    assert all(Path(src).name in {"pyproject.toml", "uv.lock"} for src in metadata_files), (
        "only workspace metadata before the dependency sync, so source edits keep it cached"
    )
    assert {str(Path(src).parent) for src in metadata_files} - {"."} == needed
    for sources, dest in metadata:
        for src in sources:
            parent = str(Path(src).parent)
            assert dest.rstrip("/") in {".", parent}, f"COPY {src} {dest} breaks the layout"

    sources_copied = copies(builder, first + 1, second)
    assert {src for sources, _ in sources_copied for src in sources} == needed
    for sources, dest in sources_copied:
        assert sources == [dest], f"COPY {sources} {dest} breaks the workspace layout"


@pytest.mark.parametrize("image", IMAGES, ids=IMAGE_IDS)
def test_final_stage_holds_only_the_venv_and_runtime_tools(image: ServiceImage) -> None:
    final = dockerfile_stages(ROOT / image.member_dir / "Dockerfile")[1]
    copied = [i.args.split() for i in final if i.keyword == "COPY"]
    assert copied == [["--from=builder", "/app/.venv", "/app/.venv"]]
    runs = " ".join(i.args for i in final if i.keyword == "RUN")
    installed = re.search(r"apt-get install ((?:-\S+ )*)([^&]+)", runs)
    assert installed, "the final stage installs its runtime Debian packages"
    assert set(installed.group(2).split()) == image.apt_packages
    assert "rm -rf /var/lib/apt/lists/*" in runs
    users = [i.args for i in final if i.keyword == "USER"]
    assert users in ([], ["root"], ["0"], ["0:0"]), "needs root for CAP_NET_ADMIN"
    exposed = {p for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    assert {p if "/" in p else f"{p}/tcp" for p in exposed} == image.exposed


@pytest.mark.parametrize(
    "path", sorted(ROOT.glob("services/*/Dockerfile")), ids=lambda p: p.parent.name
)
def test_dockerfile_builds_without_a_registry_frontend_and_keeps_state(path: Path) -> None:
    text = path.read_text()
    # A `# syntax=` line makes BuildKit pull its frontend from a registry.
    assert not re.search(r"^#\s*syntax\s*=", text, flags=re.MULTILINE | re.IGNORECASE)
    builder, final = dockerfile_stages(path)
    builder_env = " ".join(i.args for i in builder if i.keyword == "ENV")
    assert "UV_NATIVE_TLS=1" in builder_env, "uv must trust the build host's CA store"
    assert [i.args for i in final if i.keyword == "WORKDIR"] == ["/var/lib/zgate"]
    assert [json.loads(i.args) for i in final if i.keyword == "VOLUME"] == [["/var/lib/zgate"]]


@pytest.mark.parametrize("image", BUILT_IMAGES, ids=BUILT_IDS)
def test_entrypoint_is_the_members_console_script(image: ServiceImage) -> None:
    final = dockerfile_stages(ROOT / image.member_dir / "Dockerfile")[1]
    entrypoints = [json.loads(i.args) for i in final if i.keyword == "ENTRYPOINT"]
    cmds = [json.loads(i.args) for i in final if i.keyword == "CMD"]
    assert entrypoints == [[image.entrypoint]]
    assert cmds == [list(image.cmd)]
    scripts = _load_toml(ROOT / image.member_dir / "pyproject.toml")["project"]["scripts"]
    assert image.entrypoint in scripts


def test_dockerignore_keeps_local_state_and_keys_out_of_the_context() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in ("**/.venv", "**/__pycache__", ".zgate", ".git", "**/*.key", "**/*.pem"):
        assert required in patterns
    assert not any(p.startswith("!") for p in patterns)
    for image in IMAGES:
        dockerfile = (ROOT / image.member_dir / "Dockerfile").read_text()
        assert "COPY . " not in dockerfile, "copy members explicitly, not the whole context"


def test_check_dockerfiles_script_is_strict_and_executable() -> None:
    script = ROOT / ".ci/check-dockerfiles"
    assert script.stat().st_mode & 0o111
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text


# --- tests: compose ------------------------------------------------------------------------------


def test_compose_has_the_lab_services() -> None:
    assert set(compose()["services"]) == {
        "relay",
        "agent",
        "control",
        "internet",
        "prometheus",
        "grafana",
    }


def test_compose_file_suits_compose_1_29() -> None:
    # Debian's docker-compose 1.29 refuses a top-level `name:`; the project name comes from
    # `-p` (Makefile, container test) instead.
    assert "name" not in compose()
    assert "version" not in compose()


def test_compose_monitoring_is_behind_a_profile() -> None:
    # Their images come from a registry; `up` without the profile must work offline.
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    for name in ("relay", "agent", "control", "internet"):
        assert "profiles" not in services[name]
        assert str(services[name]["image"]).startswith("zgate-")


@pytest.mark.parametrize("image", IMAGES, ids=IMAGE_IDS)
def test_compose_tunnel_endpoint(image: ServiceImage) -> None:
    service = compose()["services"][image.compose_service]
    assert service["build"] == {
        "context": ".",
        "dockerfile": f"{image.member_dir}/Dockerfile",
    }
    assert str(service["image"]).startswith(f"{image.package}:")
    assert service["cap_add"] == ["NET_ADMIN"]
    assert service["devices"] == ["/dev/net/tun:/dev/net/tun"]
    assert "privileged" not in service
    mounts = bind_mounts(service)
    assert {target for target in mounts if target.startswith("/pki")} == set(image.pki_files)
    for target, (source, read_only) in mounts.items():
        assert read_only, f"{target} is mounted read-write"
        if target.startswith("/pki/"):
            assert source == "./.zgate/pki/" + target.removeprefix("/pki/")
        assert not source.endswith("ca.key"), "the CA key stays on the host"
    assert tuple(service["command"]) == image.cmd + image.compose_extra_args
    assert service["networks"]["zgate"]["ipv4_address"] == image.address
    assert published_ports(service) == image.exposed


def test_compose_relay_forwards_and_agent_targets_it() -> None:
    services = compose()["services"]
    sysctls = services["relay"]["sysctls"]
    if isinstance(sysctls, list):
        sysctls = dict(item.split("=", 1) for item in sysctls)
    assert str(sysctls["net.ipv4.ip_forward"]) == "1"
    assert str(sysctls["net.ipv6.conf.all.forwarding"]) == "1"
    # Docker disables IPv6 in containers; both tunnel ends carry IPv6.
    assert str(sysctls["net.ipv6.conf.all.disable_ipv6"]) == "0"
    assert services["agent"]["sysctls"] == {"net.ipv6.conf.all.disable_ipv6": "0"}
    relay_listen = option_value(services["relay"]["command"], "--listen")
    agent_relay = option_value(services["agent"]["command"], "--relay")
    assert relay_listen and agent_relay
    assert agent_relay == f"relay:{relay_listen.rpartition(':')[2]}"
    assert "relay" in services["agent"]["depends_on"]


def test_compose_network_addresses() -> None:
    (config,) = compose()["networks"]["zgate"]["ipam"]["config"]
    subnet = ipaddress.IPv4Network(config["subnet"])
    assert subnet == ipaddress.IPv4Network("172.28.0.0/16")
    assert compose()["networks"]["zgate"]["driver"] == "bridge"
    dynamic = ipaddress.IPv4Network(config["ip_range"])
    assert dynamic.subnet_of(subnet)
    for image in IMAGES:
        address = ipaddress.IPv4Address(image.address)
        assert address in subnet
        assert address not in dynamic, "a fixed address inside ip_range could be handed out"


def test_compose_internet_is_test_net_3_behind_the_relay_only() -> None:
    services = compose()["services"]
    network = compose()["networks"]["internet"]
    assert network["internal"] is True, "no route from the lab to real public addresses"
    v4, v6 = network["ipam"]["config"]
    # TEST-NET-3 and the IPv6 documentation prefix: never anyone's real addresses.
    assert ipaddress.IPv4Network(v4["subnet"]) == ipaddress.IPv4Network("203.0.113.0/24")
    assert ipaddress.IPv6Network(v6["subnet"]).subnet_of(ipaddress.IPv6Network("2001:db8::/32"))
    assert network["enable_ipv6"] is True
    attached = {name for name, service in services.items() if "internet" in service["networks"]}
    assert attached == {"relay", "internet"}
    internet = services["internet"]
    assert list(internet["networks"]) == ["internet"]
    for name in ("relay", "internet"):
        fixed = services[name]["networks"]["internet"]
        address = ipaddress.IPv4Address(fixed["ipv4_address"])
        assert address in ipaddress.IPv4Network(v4["subnet"])
        assert address not in ipaddress.IPv4Network(v4["ip_range"])
        assert ipaddress.IPv6Address(fixed["ipv6_address"]) in ipaddress.IPv6Network(v6["subnet"])
    assert "ports" not in internet and "cap_add" not in internet


def test_compose_control_plane_keeps_its_state_in_a_named_volume() -> None:
    data = compose()
    service = data["services"]["control"]
    assert service["build"] == {"context": ".", "dockerfile": "services/control/Dockerfile"}
    assert str(service["image"]).startswith("zgate-control:")
    # Runs as the image's non-root user: nothing of the tunnel endpoints' privileges.
    for key in ("cap_add", "devices", "sysctls", "privileged", "user"):
        assert key not in service, key
    (volume,) = service["volumes"]
    name, target = volume.split(":")
    assert target == "/var/lib/zgate" and name in data["volumes"], "state in a named volume"
    assert service["ports"] == ["127.0.0.1:8080:8080/tcp"], "the API stays on loopback"
    assert published_ports(service) == CONTROL_IMAGE.exposed
    assert "/healthz" in " ".join(service["healthcheck"]["test"])


def test_compose_monitoring_mounts_the_deploy_files() -> None:
    services = compose()["services"]
    prometheus = bind_mounts(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == ("./deploy/prometheus.yml", True)
    grafana = bind_mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == ("./deploy/grafana/provisioning", True)
    assert grafana["/var/lib/grafana/dashboards"] == ("./deploy/grafana/dashboards", True)
    for name in ("prometheus", "grafana"):
        service = services[name]
        assert "zgate" in service["networks"]
        for source, _ in bind_mounts(service).values():
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), "monitoring UIs stay on loopback"


# --- tests: Prometheus ---------------------------------------------------------------------------


def test_prometheus_scrapes_each_services_metrics_port() -> None:
    services = compose()["services"]
    targets = {
        target
        for job in prometheus_config()["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {
        f"{image.compose_service}:{metrics_port(services[image.compose_service]['command'])}"
        for image in IMAGES
    }
    # The control plane serves /metrics on its API port (the image's --listen).
    listen = option_value(list(CONTROL_IMAGE.cmd), "--listen")
    assert listen
    expected.add(f"control:{listen.rpartition(':')[2]}")
    assert targets == expected == {"relay:9101", "agent:9102", "control:8080"}


def test_prometheus_rule_files_are_mounted() -> None:
    mounts = bind_mounts(compose()["services"]["prometheus"])
    rule_files = prometheus_config()["rule_files"]
    assert rule_files
    for rule_file in rule_files:
        assert rule_file in mounts, f"{rule_file} is not mounted into the prometheus container"


def test_prometheus_rules_use_exported_metrics() -> None:
    rules = load_yaml("deploy/prometheus-rules.yml")
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert exprs
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert "alert" in rule or "record" in rule
            assert promql_problems(rule["expr"]) == [], rule.get("alert", rule.get("record"))


# promtool unit-test cases, one or more per alert: (alert, input series, eval time, labels of
# each firing alert). Labels include the rule's own (severity); annotations are not compared.
ALERT_CASES: list[tuple[str, dict[str, str], str, list[dict[str, str]]]] = [
    (
        "ZgateRelayDown",
        {'up{job="zgate-relay",instance="relay:9101"}': "1 0x5"},
        "4m",
        [{"job": "zgate-relay", "instance": "relay:9101", "severity": "critical"}],
    ),
    ("ZgateRelayDown", {'up{job="zgate-relay",instance="relay:9101"}': "1x5"}, "4m", []),
    (
        "ZgateRelayDropping",
        {'zgate_relay_drops_total{instance="relay:9101",reason="no_route"}': "0+1200x20"},
        "15m",
        [{"instance": "relay:9101", "reason": "no_route", "severity": "warning"}],
    ),
    (
        "ZgateRelayHandshakeRefusals",
        {
            'zgate_relay_handshake_refusals_total{instance="relay:9101",reason="revoked"}': (
                "0+120x20"
            )
        },
        "18m",
        [{"instance": "relay:9101", "reason": "revoked", "severity": "warning"}],
    ),
    (
        "ZgateRelayDatagramBacklog",
        {'zgate_relay_datagram_queue_depth{instance="relay:9101"}': "2000x15"},
        "12m",
        [{"instance": "relay:9101", "severity": "warning"}],
    ),
    (
        "ZgateAgentDown",
        {'up{job="zgate-agent",instance="agent:9102"}': "0x5"},
        "3m",
        [{"job": "zgate-agent", "instance": "agent:9102", "severity": "critical"}],
    ),
    (
        "ZgateAgentDisconnected",
        {'zgate_agent_connected{instance="agent:9102"}': "0x5"},
        "3m",
        [{"instance": "agent:9102", "severity": "warning"}],
    ),
    (
        "ZgateAgentFlapping",
        {'zgate_agent_reconnects_total{instance="agent:9102"}': "0+1x15"},
        "10m",
        [{"instance": "agent:9102", "severity": "warning"}],
    ),
    # Lost for 3 minutes: pending; for 6: firing.
    (
        "ZgateRelayLostControlPlane",
        {'zgate_relay_control_connected{instance="relay:9101"}': "1 0x10"},
        "3m",
        [],
    ),
    (
        "ZgateRelayLostControlPlane",
        {'zgate_relay_control_connected{instance="relay:9101"}': "1 0x10"},
        "7m",
        [{"instance": "relay:9101", "severity": "critical"}],
    ),
    (
        "ZgateRelayOnCachedSnapshot",
        {'zgate_relay_control_using_cache{instance="relay:9101"}': "1x5"},
        "3m",
        [{"instance": "relay:9101", "severity": "warning"}],
    ),
    (
        "ZgateRelayOnCachedSnapshot",
        {'zgate_relay_control_using_cache{instance="relay:9101"}': "0x5"},
        "3m",
        [],
    ),
    # One failed change fires at once, and clears once 10 minutes pass without another.
    (
        "ZgateRelayControlApplyErrors",
        {'zgate_relay_control_apply_errors_total{instance="relay:9101",kind="policy"}': "0 0 1x30"},
        "3m",
        [{"instance": "relay:9101", "kind": "policy", "severity": "critical"}],
    ),
    (
        "ZgateRelayControlApplyErrors",
        {'zgate_relay_control_apply_errors_total{instance="relay:9101",kind="policy"}': "0 0 1x30"},
        "20m",
        [],
    ),
    (
        "ZgateRelayAuditShipping",
        {'zgate_relay_control_audit_ship_errors_total{instance="relay:9101"}': "0+1x30"},
        "25m",
        [{"instance": "relay:9101", "severity": "warning"}],
    ),
    (
        "ZgateControlDown",
        {'up{job="zgate-control",instance="control:8080"}': "0x5"},
        "3m",
        [{"job": "zgate-control", "instance": "control:8080", "severity": "critical"}],
    ),
    (
        "ZgateControlAuditChainBroken",
        {
            'zgate_control_audit_records_total{instance="control:8080",outcome="chain_broken"}': (
                "0 0 1x10"
            ),
        },
        "3m",
        [{"instance": "control:8080", "severity": "critical"}],
    ),
    # Stored records alone are no alert.
    (
        "ZgateControlAuditChainBroken",
        {
            'zgate_control_audit_records_total{instance="control:8080",outcome="stored"}': (
                "0+50x10"
            ),
            'zgate_control_audit_records_total{instance="control:8080",outcome="chain_broken"}': (
                "0x10"
            ),
        },
        "5m",
        [],
    ),
    (
        "ZgateControlAuditRecordsRejected",
        {'zgate_control_audit_records_total{instance="control:8080",outcome="rejected"}': "0 3x10"},
        "3m",
        [{"instance": "control:8080", "severity": "warning"}],
    ),
    (
        "ZgateControlServerErrors",
        {
            'zgate_control_http_requests_total{instance="control:8080",route="/v1/policies",'
            'method="GET",status="5xx"}': "0+60x30"
        },
        "20m",
        [{"instance": "control:8080", "severity": "warning"}],
    ),
]


def test_every_alert_has_a_promtool_case() -> None:
    rules = load_yaml("deploy/prometheus-rules.yml")
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert alerts == {alert for alert, *_ in ALERT_CASES}


@pytest.mark.needs(tools=("promtool",), reason="to check and unit-test the alerting rules")
def test_promtool_checks_and_fires_the_alerts(tmp_path: Path) -> None:
    source = ROOT / "deploy/prometheus-rules.yml"
    checked = subprocess.run(
        ["promtool", "check", "rules", str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Annotations are checked above (templates parse); the cases compare labels only.
    rules = load_yaml("deploy/prometheus-rules.yml")
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    tests = [
        {
            "interval": "1m",
            "input_series": [
                {"series": series, "values": values} for series, values in inputs.items()
            ],
            "alert_rule_test": [
                {
                    "eval_time": at,
                    "alertname": alert,
                    "exp_alerts": [{"exp_labels": labels} for labels in firing],
                }
            ],
        }
        for alert, inputs, at, firing in ALERT_CASES
    ]
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "tests": tests})
    )
    result = subprocess.run(
        ["promtool", "test", "rules", "tests.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("expr", "legend", "complaint"),
    [
        ("rate(zgate_relay_packet_total[5m])", "", "not an exported metric"),
        ('zgate_relay_packets_total{direction="inbound"}', "", "is not one of"),
        ("sum by (client) (zgate_agent_connected)", "", "grouping by unknown label"),
        ("sum by (direction) (zgate_agent_bytes_total)", "{{reason}}", "legend uses"),
        ('up{job="zgate-console"}', "", "is not scraped"),
        ("vector(1)", "", "no zgate metric"),
    ],
)
def test_promql_check_rejects_bad_expressions(expr: str, legend: str, complaint: str) -> None:
    problems = promql_problems(expr, legend)
    assert any(complaint in problem for problem in problems), problems


# --- tests: Grafana ------------------------------------------------------------------------------


def test_dashboard_queries_use_exported_metrics_and_labels() -> None:
    checked = 0
    for title, target in dashboard_targets():
        assert promql_problems(target["expr"], target.get("legendFormat", "")) == [], title
        checked += 1
    assert checked > 0


def test_dashboard_shows_every_exported_metric() -> None:
    used = {
        metric for _, target in dashboard_targets() for metric in METRIC_RE.findall(target["expr"])
    }
    assert set(EXPORTED_METRICS) - used == set()


@pytest.mark.needs(tools=("promtool",), reason="to parse the dashboard's queries")
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    # Each query as a recording rule, Grafana's variables replaced by what they stand for.
    records = [
        {"record": f"zgate:panel_{index}", "expr": target["expr"].replace("$__rate_interval", "1m")}
        for index, (_, target) in enumerate(dashboard_targets())
    ]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_the_provisioned_datasource() -> None:
    provisioned = load_yaml("deploy/grafana/provisioning/datasources/prometheus.yml")
    (datasource,) = provisioned["datasources"]
    assert datasource["type"] == "prometheus"
    prometheus_port = published_ports(compose()["services"]["prometheus"]).pop().split("/")[0]
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"
    for panel in dashboard_panels():
        if panel.get("type") == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]


def test_dashboard_provider_reads_the_mounted_directory() -> None:
    provisioned = load_yaml("deploy/grafana/provisioning/dashboards/zgate.yml")
    (provider,) = provisioned["providers"]
    mounts = bind_mounts(compose()["services"]["grafana"])
    assert mounts[provider["options"]["path"]] == ("./deploy/grafana/dashboards", True)


# --- tests: systemd ------------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES, ids=IMAGE_IDS)
def test_systemd_unit_hardening_keeps_net_admin(image: ServiceImage) -> None:
    unit = systemd_unit(ROOT / f"deploy/systemd/zgate-{image.compose_service}.service")
    service = unit["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Restart"] == "on-failure"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["AmbientCapabilities"] == "CAP_NET_ADMIN"
    assert one["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert one["NoNewPrivileges"] == "yes"
    assert one["ProtectSystem"] == "strict"
    assert one["DevicePolicy"] == "closed"
    assert "/dev/net/tun rw" in service["DeviceAllow"]
    assert "AF_NETLINK" in one["RestrictAddressFamilies"].split()
    # These would break TUN, /proc/sys writes or the capability itself.
    assert one.get("PrivateDevices", "no") == "no"
    assert one.get("ProtectKernelTunables", "no") == "no"
    assert one.get("PrivateUsers", "no") == "no"
    assert one.get("User", "root") != "root"
    scripts = _load_toml(ROOT / image.member_dir / "pyproject.toml")["project"]["scripts"]
    assert Path(one["ExecStart"].split()[0]).name in scripts
    assert metrics_port(one["ExecStart"].split()) == metrics_port(image.cmd)
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_control_unit_runs_unprivileged_from_its_files() -> None:
    unit = systemd_unit(ROOT / "deploy/systemd/zgate-control.service")
    service = unit["Service"]
    one = {key: values[-1] for key, values in service.items()}
    # A user made up by systemd; the state directory it creates is the one the settings name
    # (a non-root user's default would be under $HOME, which ProtectHome hides).
    assert one["DynamicUser"] == "yes"
    assert "User" not in one
    assert one["StateDirectory"] == "zgate/control"
    assert one["StateDirectoryMode"] == "0700"
    environment = dict(value.split("=", 1) for value in service["Environment"])
    assert environment["ZGATE_CONTROL_STATE_DIR"] == "/var/lib/" + one["StateDirectory"]
    # Secrets (the database URL's password) come from a root-only file systemd reads.
    assert service["EnvironmentFile"] == ["-/etc/zgate/control.env"]
    argv = one["ExecStart"].split()
    scripts = _load_toml(ROOT / CONTROL_IMAGE.member_dir / "pyproject.toml")["project"]["scripts"]
    assert Path(argv[0]).name == CONTROL_IMAGE.entrypoint in scripts
    assert argv[1] == "serve"
    assert option_value(argv, "--config") == "/etc/zgate/control.yaml"
    # Any other flag would override what control.yaml and control.env say.
    assert len(argv) == 4
    assert one["Restart"] == "on-failure"
    assert one["CapabilityBoundingSet"] == ""
    assert one.get("AmbientCapabilities", "") == ""
    for key in ("NoNewPrivileges", "PrivateDevices", "PrivateUsers", "ProtectHome", "PrivateTmp"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["ProtectKernelTunables"] == "yes"
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


SETTINGS_CLASSES = {
    "ZGATE_RELAY_": "zgate_relay.settings:RelaySettings",
    "ZGATE_CONTROL_": "zgate_control.settings:ControlSettings",
}


@pytest.mark.parametrize(
    "path", sorted(ROOT.glob("deploy/systemd/*.service")), ids=lambda p: p.stem
)
def test_systemd_units_name_real_settings(path: Path) -> None:
    """Every ZGATE_RELAY_*/ZGATE_CONTROL_* variable a unit sets or its comments suggest is a
    setting of that service (a misspelt one would be silently ignored)."""
    import importlib

    for prefix, where in SETTINGS_CLASSES.items():
        module, _, name = where.partition(":")
        fields = getattr(importlib.import_module(module), name).model_fields
        for variable in re.findall(rf"\b{prefix}([A-Z0-9_]+)=", path.read_text()):
            assert variable.lower() in fields, f"{path.name}: {prefix}{variable} is no setting"


def test_relay_unit_says_how_to_follow_a_control_plane() -> None:
    text = (ROOT / "deploy/systemd/zgate-relay.service").read_text()
    assert "ZGATE_RELAY_CONTROL=" in text
    assert "ZGATE_RELAY_CONTROL_TOKEN_FILE=/etc/zgate/relay.token" in text


@pytest.mark.needs(tools=("systemd-analyze",), reason="to verify the systemd units")
@pytest.mark.parametrize("service", ["relay", "agent", "control"])
def test_systemd_analyze_accepts_the_unit(service: str, tmp_path: Path) -> None:
    source = ROOT / f"deploy/systemd/zgate-{service}.service"
    exec_start = systemd_unit(source)["Service"]["ExecStart"][-1].split()[0]
    # verify insists that ExecStart exists and EnvironmentFile is readable; neither is installed.
    text = source.read_text().replace(exec_start, "/bin/true")
    text = re.sub(r"^EnvironmentFile=(?!-)", "EnvironmentFile=-", text, flags=re.MULTILINE)
    unit = tmp_path / source.name
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


# --- tests: GitHub Actions -----------------------------------------------------------------------


def test_workflow_has_the_four_jobs() -> None:
    data = workflow()
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert isinstance(triggers, dict)
    assert "pull_request" in triggers
    assert set(data["jobs"]) == {"lint", "package", "e2e", "docker"}


def test_workflow_installs_uv_with_pip_and_syncs_frozen() -> None:
    for name, job in workflow()["jobs"].items():
        commands = job_commands(job)
        assert any(re.match(r'python3 -m pip install "?uv==', cmd) for cmd in commands), name
        for cmd in commands:
            assert "astral.sh" not in cmd, f"{name}: {cmd}"
            assert not re.search(r"(curl|wget)[^|\n]*\|\s*(ba)?sh", cmd), f"{name}: {cmd}"
            if cmd.startswith("uv sync"):
                assert "--frozen" in cmd, f"{name}: {cmd}"


def test_workflow_pins_the_dockerfiles_uv() -> None:
    version = workflow()["env"]["UV_VERSION"]
    for image in BUILT_IMAGES:
        assert dockerfile_args_in_stage(image, "UV_VERSION") == version


def dockerfile_args_in_stage(image: ServiceImage, name: str) -> str:
    for instruction in dockerfile_stages(ROOT / image.member_dir / "Dockerfile")[0]:
        if instruction.keyword == "ARG" and instruction.args.startswith(f"{name}="):
            return instruction.args.split("=", 1)[1]
    raise AssertionError(f"no ARG {name} in the builder stage")


def test_workflow_lint_job() -> None:
    commands = " ; ".join(job_commands(workflow()["jobs"]["lint"]))
    for tool in ("ruff check", "ruff format --check", "mypy"):
        assert tool in commands


def test_workflow_matrix_covers_every_workspace_member() -> None:
    job = workflow()["jobs"]["package"]
    entries = job["strategy"]["matrix"]["include"]
    members = workspace_members()
    assert {entry["package"] for entry in entries} == set(members)
    for entry in entries:
        assert (ROOT / entry["path"]).resolve() == members[entry["package"]]
    commands = job_commands(job)
    assert any(
        cmd.startswith("uv sync --frozen --package ${{ matrix.package }}") for cmd in commands
    )
    assert any("pytest" in cmd and "${{ matrix.path }}" in cmd for cmd in commands)


def test_workflow_e2e_job_runs_make_e2e_as_root() -> None:
    commands = " ; ".join(job_commands(workflow()["jobs"]["e2e"]))
    for package in ("iproute2", "nftables", "iperf3", "iputils-ping"):
        assert package in commands
    assert re.search(r"sudo .*make e2e", commands)


def test_workflow_docker_job_builds_every_dockerfile() -> None:
    job = workflow()["jobs"]["docker"]
    built = {
        step["with"]["file"]
        for step in job["steps"]
        if str(step.get("uses", "")).startswith("docker/build-push-action")
    }
    assert built == {rel(path) for path in ROOT.glob("services/*/Dockerfile")}
    commands = " ; ".join(job_commands(job))
    assert "docker compose -f compose.yaml config" in commands
    assert ".ci/check-dockerfiles" in commands
