"""The Kubernetes manifests (deploy/kubernetes): valid objects, and the properties that matter.

Every object is validated offline against the Kubernetes API schemas that the
`kubernetes_validate` package ships (strict: an unknown field is an error), for the oldest
Kubernetes version the manifests claim and the newest the package knows. The other checks are
functions that return what is wrong (empty when nothing is); each test runs one over the real
manifests, and a second set of tests runs it over a deliberately broken copy, so a check that
could never fail would be caught.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy/kubernetes"
DEPLOY_DOC = ROOT / "docs/deploy.md"
NAMESPACE = "zgate"

# The oldest Kubernetes the manifests claim to work on, and the newest the pinned package ships
# schemas for: an API removed in between fails one of the two.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})
# The one image not built from this repository: the trial database of postgres.yaml.
TRIAL_DATABASE_IMAGE = re.compile(r"postgres:\d+(\.\d+)*-[a-z]+\Z")
# What the relay reads from its --pki directory (zgate_relay.settings, `pki`).
RELAY_PKI_FILES = ("ca.pem", "crl.pem", "relay.pem", "relay.key")
SCRAPE_ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")

Doc = dict[str, Any]


# --- loading --------------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    """Every manifest in deploy/kubernetes except the kustomization itself."""
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def load_documents(path: Path) -> list[Doc]:
    """The YAML documents of one file (an empty document, e.g. before a leading ---, skipped)."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
    return docs


def all_resources() -> list[Doc]:
    """Every object of every manifest, in file order."""
    return [doc for path in manifest_files() for doc in load_documents(path)]


def kustomization() -> Doc:
    data = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def ident(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def find(resources: list[Doc], kind: str, name: str) -> Doc:
    for doc in resources:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name} in deploy/kubernetes")


def schema_problems(doc: Doc, version: str) -> list[str]:
    """What the Kubernetes schema of `version` (strict) says is wrong with one object."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        return [f"{ident(doc)}: {where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{ident(doc)}: {exc.message}"]
    return []


# --- pod templates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodTemplate:
    """One workload's pod template and where it came from."""

    workload: Doc

    @property
    def name(self) -> str:
        return ident(self.workload)

    @property
    def meta(self) -> Doc:
        meta: Doc = self.workload["spec"]["template"]["metadata"]
        return meta

    @property
    def spec(self) -> Doc:
        spec: Doc = self.workload["spec"]["template"]["spec"]
        return spec

    def containers(self, *, init: bool = True) -> list[Doc]:
        found: list[Doc] = list(self.spec.get("containers", []))
        if init:
            found += self.spec.get("initContainers", [])
        return found

    def container(self, name: str) -> Doc:
        for container in self.containers(init=False):
            if container["name"] == name:
                return container
        raise AssertionError(f"{self.name} has no container {name}")

    def volume(self, name: str) -> Doc:
        for volume in self.spec.get("volumes", []):
            if volume["name"] == name:
                return dict(volume)
        for claim in self.workload["spec"].get("volumeClaimTemplates", []):
            if claim["metadata"]["name"] == name:
                return {"name": name, "persistentVolumeClaim": claim}
        raise AssertionError(f"{self.name} mounts {name}, which it does not define")


def pod_templates(resources: list[Doc]) -> Iterator[PodTemplate]:
    for doc in resources:
        if doc["kind"] in WORKLOAD_KINDS:
            yield PodTemplate(doc)


def template_of(resources: list[Doc], kind: str, name: str) -> PodTemplate:
    return PodTemplate(find(resources, kind, name))


def env_var(container: Doc, name: str) -> Doc | None:
    for entry in container.get("env", []):
        if entry["name"] == name:
            return dict(entry)
    return None


def mounts(container: Doc) -> dict[str, str]:
    """mountPath -> volume name."""
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def container_ports(template: PodTemplate) -> dict[str, tuple[int, str]]:
    """Port name (and number, as text) -> (number, protocol), over the pod's containers."""
    ports: dict[str, tuple[int, str]] = {}
    for container in template.containers(init=False):
        for port in container.get("ports", []):
            entry = (port["containerPort"], port.get("protocol", "TCP"))
            ports[str(port["containerPort"])] = entry
            if "name" in port:
                ports[port["name"]] = entry
    return ports


def option(argv: list[str], name: str) -> list[str]:
    """Every value of `name` in an argument list (`--x V` or `--x=V`)."""
    values = []
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            values.append(argv[index + 1])
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
    return values


def services_selecting(resources: list[Doc], template: PodTemplate) -> list[Doc]:
    labels = template.meta.get("labels", {})
    return [
        doc
        for doc in resources
        if doc["kind"] == "Service"
        and doc["spec"].get("selector")
        and all(labels.get(k) == v for k, v in doc["spec"]["selector"].items())
    ]


def probe_problems(template: PodTemplate, container: Doc, kind: str, path: str) -> list[str]:
    probe = container.get(kind)
    if not probe or "httpGet" not in probe:
        return [f"{template.name}: no HTTP {kind}"]
    problems = []
    if probe["httpGet"].get("path") != path:
        problems.append(f"{template.name}: {kind} asks {probe['httpGet'].get('path')}, not {path}")
    if str(probe["httpGet"].get("port")) not in container_ports(template):
        problems.append(f"{template.name}: {kind} port is not a port of the pod")
    return problems


# --- the checks (each returns what is wrong) ------------------------------------------------------


def control_problems(resources: list[Doc], image_uid: int) -> list[str]:
    """Two replicas over PostgreSQL, the URL from a Secret, probes, non-root, a Service on 8080."""
    problems: list[str] = []
    template = template_of(resources, "Deployment", "zgate-control")
    if template.workload["spec"].get("replicas") != 2:
        problems.append("zgate-control: replicas is not 2")
    container = template.container("control")
    url = env_var(container, "ZGATE_CONTROL_DATABASE_URL")
    ref = (url or {}).get("valueFrom", {}).get("secretKeyRef")
    if not ref:
        problems.append("zgate-control: ZGATE_CONTROL_DATABASE_URL does not come from a Secret")
    else:
        secret = find(resources, "Secret", ref["name"])
        if ref["key"] not in secret.get("stringData", {}) | secret.get("data", {}):
            problems.append(f"zgate-control: Secret {ref['name']} has no key {ref['key']}")
        else:
            problems += database_url_problems(resources, secret["stringData"][ref["key"]])
    problems += probe_problems(template, container, "readinessProbe", "/readyz")
    problems += probe_problems(template, container, "livenessProbe", "/healthz")
    pod_security = template.spec.get("securityContext", {})
    if pod_security.get("runAsNonRoot") is not True:
        problems.append("zgate-control: the pod does not require runAsNonRoot")
    # The kubelet can only prove "non-root" for a numeric user: the one the image declares.
    if pod_security.get("runAsUser") != image_uid:
        problems.append(f"zgate-control: runAsUser is not the image's user {image_uid}")
    if "--listen" in container.get("args", []):
        listen = option(container["args"], "--listen")[0]
        if not listen.endswith(":8080"):
            problems.append(f"zgate-control: listens on {listen}, not port 8080")
    services = services_selecting(resources, template)
    ports = [
        (svc["spec"].get("type", "ClusterIP"), p["port"], str(p.get("targetPort", p["port"])))
        for svc in services
        for p in svc["spec"]["ports"]
    ]
    if not any(kind == "ClusterIP" and port == 8080 for kind, port, _ in ports):
        problems.append("zgate-control: no ClusterIP Service on port 8080")
    for _, _, target in ports:
        if container_ports(template).get(target, (0, ""))[0] != 8080:
            problems.append(f"zgate-control: a Service targets {target}, not the pod's 8080")
    return problems


def database_url_problems(resources: list[Doc], url: str) -> list[str]:
    """The control plane's URL reaches the trial database with its credentials."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "postgresql+psycopg":
        return [f"database URL scheme {parsed.scheme!r} is not postgresql+psycopg"]
    credentials = find(resources, "Secret", "zgate-postgres")["stringData"]
    database = find(resources, "Service", "zgate-postgres")
    wanted = (
        credentials["POSTGRES_USER"],
        credentials["POSTGRES_PASSWORD"],
        database["metadata"]["name"],
        database["spec"]["ports"][0]["port"],
        credentials["POSTGRES_DB"],
    )
    got = (parsed.username, parsed.password, parsed.hostname, parsed.port, parsed.path[1:])
    if got != wanted:
        return ["the database URL does not match the zgate-postgres Secret and Service"]
    return []


def tunnel_endpoint_problems(template: PodTemplate, container: Doc) -> list[str]:
    """NET_ADMIN, the TUN device from the host, and forwarding turned on in the pod."""
    problems = []
    security = container.get("securityContext", {})
    if "NET_ADMIN" not in security.get("capabilities", {}).get("add", []):
        problems.append(f"{template.name}: no NET_ADMIN capability")
    if security.get("privileged"):
        problems.append(f"{template.name}: privileged (NET_ADMIN and the TUN device suffice)")
    tun = mounts(container).get("/dev/net/tun")
    host_path = template.volume(tun).get("hostPath", {}) if tun else {}
    if host_path != {"path": "/dev/net/tun", "type": "CharDevice"}:
        problems.append(f"{template.name}: /dev/net/tun is not the host's TUN device")
    sysctls = {s["name"] for s in template.spec.get("securityContext", {}).get("sysctls", [])}
    init_scripts = " ".join(
        " ".join(c.get("command", []) + c.get("args", []))
        for c in template.spec.get("initContainers", [])
    )
    if "net.ipv4.ip_forward" not in sysctls and "/proc/sys/net/ipv4/ip_forward" not in init_scripts:
        problems.append(f"{template.name}: nothing turns net.ipv4.ip_forward on")
    return problems


def relay_problems(resources: list[Doc]) -> list[str]:
    """A tunnel endpoint behind a UDP LoadBalancer on 4433, following the control plane with a
    token and PKI from Secrets."""
    template = template_of(resources, "StatefulSet", "zgate-relay")
    container = template.container("relay")
    problems = tunnel_endpoint_problems(template, container)
    quic = container_ports(template).get("quic")
    if quic != (4433, "UDP"):
        problems.append(f"zgate-relay: the quic port is {quic}, not 4433/UDP")
    balanced = [
        port
        for svc in services_selecting(resources, template)
        if svc["spec"].get("type") == "LoadBalancer"
        for port in svc["spec"]["ports"]
    ]
    if not any(
        p["port"] == 4433
        and p.get("protocol") == "UDP"
        and container_ports(template).get(str(p.get("targetPort"))) == (4433, "UDP")
        for p in balanced
    ):
        problems.append("zgate-relay: no UDP LoadBalancer Service on 4433 reaching the pods")
    token = env_var(container, "ZGATE_RELAY_CONTROL_TOKEN") or {}
    if "secretKeyRef" not in token.get("valueFrom", {}):
        problems.append("zgate-relay: the control-plane token does not come from a Secret")
    control = (env_var(container, "ZGATE_RELAY_CONTROL") or {}).get("value", "")
    service = find(resources, "Service", "zgate-control")
    wanted = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    if control.rstrip("/") != wanted:
        problems.append(f"zgate-relay: ZGATE_RELAY_CONTROL is {control!r}, not {wanted}")
    pki_dir = option(container.get("args", []), "--pki")
    pki = template.volume(mounts(container).get(pki_dir[0], "")) if pki_dir else {}
    if "secret" not in pki:
        problems.append("zgate-relay: the --pki directory is not a Secret mount")
    if template.spec.get("securityContext", {}).get("runAsNonRoot"):
        problems.append("zgate-relay: runAsNonRoot, but NET_ADMIN is only granted to root")
    return problems + relay_egress_problems(resources, template)


def relay_egress_problems(resources: list[Doc], template: PodTemplate) -> list[str]:
    """An egress NetworkPolicy keeps agents (masqueraded to the relay pod) out of the cluster's
    private ranges, yet lets the relay reach the control plane."""
    labels = template.meta.get("labels", {})
    policies = [
        doc
        for doc in resources
        if doc["kind"] == "NetworkPolicy"
        and "Egress" in doc["spec"].get("policyTypes", [])
        and all(labels.get(k) == v for k, v in doc["spec"]["podSelector"]["matchLabels"].items())
    ]
    if not policies:
        return ["zgate-relay: no egress NetworkPolicy: agents reach every pod of the cluster"]
    rules = [rule for policy in policies for rule in policy["spec"].get("egress", [])]
    problems = []
    control = template_of(resources, "Deployment", "zgate-control")
    control_port = container_ports(control)["http"][0]

    def is_control(peer: Doc) -> bool:
        selector = peer.get("podSelector", {}).get("matchLabels")
        return (
            bool(selector)
            and "namespaceSelector" not in peer
            and all(control.meta["labels"].get(k) == v for k, v in selector.items())
        )

    if not any(
        any(is_control(peer) for peer in rule.get("to", []))
        and any(port.get("port") == control_port for port in rule.get("ports", []))
        for rule in rules
    ):
        problems.append("zgate-relay: its egress policy does not let it reach the control plane")
    for rule in rules:
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if (
                block
                and block["cidr"] == "0.0.0.0/0"
                and "10.0.0.0/8" not in block.get("except", [])
            ):
                problems.append("zgate-relay: its egress policy opens 10.0.0.0/8 to agents")
    return problems


def connector_problems(resources: list[Doc]) -> list[str]:
    """A tunnel endpoint with one --relay per relay pod, by the headless Service's names."""
    template = template_of(resources, "Deployment", "zgate-connector")
    container = template.container("connector")
    problems = tunnel_endpoint_problems(template, container)
    relays = template_of(resources, "StatefulSet", "zgate-relay").workload
    peers = find(resources, "Service", relays["spec"]["serviceName"])
    if peers["spec"].get("clusterIP") != "None":
        problems.append(f"{ident(peers)} is not headless: relay pods get no names")
    wanted = {
        f"{relays['metadata']['name']}-{index}.{peers['metadata']['name']}:4433"
        for index in range(relays["spec"]["replicas"])
    }
    given = set(option(container.get("args", []), "--relay"))
    if given != wanted:
        problems.append(
            f"zgate-connector: --relay {sorted(given)}, one per relay is {sorted(wanted)}"
        )
    return problems


def scrape_problems(resources: list[Doc]) -> list[str]:
    """Every pod template says whether Prometheus scrapes it; zgate's own say where."""
    problems = []
    for template in pod_templates(resources):
        annotations = template.meta.get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "false" and is_trial_database(template):
            continue
        missing = [key for key in SCRAPE_ANNOTATIONS if key not in annotations]
        if missing:
            problems.append(f"{template.name}: no {', '.join(missing)} annotation")
            continue
        if annotations["prometheus.io/scrape"] != "true":
            problems.append(f'{template.name}: prometheus.io/scrape is not "true"')
        port = container_ports(template).get(annotations["prometheus.io/port"])
        if port is None or port[1] != "TCP":
            problems.append(f"{template.name}: prometheus.io/port is no TCP port of the pod")
        if annotations["prometheus.io/path"] != "/metrics":
            problems.append(f"{template.name}: prometheus.io/path is not /metrics")
    return problems


def is_trial_database(template: PodTemplate) -> bool:
    images = {c["image"] for c in template.containers()}
    return all(TRIAL_DATABASE_IMAGE.match(image) for image in images)


def image_problems(resources: list[Doc]) -> list[str]:
    """Every image is one this repository builds (zgate-<service>), but the trial database's."""
    problems = []
    for template in pod_templates(resources):
        for container in template.containers():
            image = container["image"]
            match = re.fullmatch(r"zgate-([a-z]+):[\w.-]+", image)
            if match:
                if not (ROOT / f"services/{match.group(1)}/Dockerfile").is_file():
                    problems.append(f"{template.name}: no services/*/Dockerfile builds {image}")
            elif not TRIAL_DATABASE_IMAGE.match(image):
                problems.append(f"{template.name}: {image} is not a zgate-* image")
    return problems


def resources_problems(resources: list[Doc]) -> list[str]:
    """Requests and limits for CPU and memory on every container, init containers too."""
    problems = []
    for template in pod_templates(resources):
        for container in template.containers():
            given = container.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(given.get(kind, {}))
                if missing:
                    problems.append(
                        f"{template.name}/{container['name']}: no {kind} for {sorted(missing)}"
                    )
    return problems


def secret_problems(resources: list[Doc], guide: str) -> list[str]:
    """Every Secret a pod uses is in the manifests, or docs/deploy.md creates it with its keys."""
    defined = {doc["metadata"]["name"] for doc in resources if doc["kind"] == "Secret"}
    used: dict[str, set[str]] = {}
    for template in pod_templates(resources):
        for container in template.containers():
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.setdefault(ref["name"], set()).add(ref["key"])
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    used.setdefault(source["secretRef"]["name"], set())
        for volume in template.spec.get("volumes", []):
            if "secret" in volume:
                used.setdefault(volume["secret"]["secretName"], set())
        used_files = secret_files(template)
        for name, files in used_files.items():
            used.setdefault(name, set()).update(files)
    problems = []
    for name, keys in sorted(used.items()):
        if name in defined:
            continue
        created = re.search(
            rf"kubectl[^\n]*create secret generic {re.escape(name)}\b((?:[^\n]*\\\n)*[^\n]*)",
            guide,
        )
        if not created:
            problems.append(f"Secret {name} is neither defined nor created in docs/deploy.md")
            continue
        for key in keys:
            if not re.search(rf"--from-(?:literal|file)={re.escape(key)}=", created.group(0)):
                problems.append(f"docs/deploy.md creates Secret {name} without key {key}")
    return problems


def secret_files(template: PodTemplate) -> dict[str, set[str]]:
    """Secret name -> the files of it the pod's programs are told to read: paths in their
    arguments under a Secret mount, and the relay's fixed PKI files under its --pki."""
    found: dict[str, set[str]] = {}
    for container in template.containers(init=False):
        argv = container.get("args", [])
        paths = [a for a in argv if a.startswith("/")]
        paths += [f"{d}/{f}" for d in option(argv, "--pki") for f in RELAY_PKI_FILES]
        for mount_path, volume_name in mounts(container).items():
            secret = template.volume(volume_name).get("secret")
            if secret is None:
                continue
            for path in paths:
                if path.startswith(mount_path.rstrip("/") + "/"):
                    key = path[len(mount_path.rstrip("/")) + 1 :]
                    found.setdefault(secret["secretName"], set()).add(key)
    return found


def image_user(dockerfile: Path) -> int:
    """The numeric user the final stage of a Dockerfile runs as."""
    users = re.findall(r"^USER\s+(\d+)", dockerfile.read_text(), flags=re.MULTILINE)
    assert users, f"{dockerfile}: no numeric USER"
    return int(users[-1])


CONTROL_UID = image_user(ROOT / "services/control/Dockerfile")


# --- tests: files ---------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_in_the_namespace() -> None:
    data = kustomization()
    assert data["namespace"] == NAMESPACE
    assert sorted(data["resources"]) == sorted(p.name for p in manifest_files())
    namespaces = [doc for doc in all_resources() if doc["kind"] == "Namespace"]
    assert [doc["metadata"]["name"] for doc in namespaces] == [NAMESPACE]


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_objects_are_named_and_unique(path: Path) -> None:
    docs = load_documents(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
        # The kustomization sets the namespace: a hard-coded one would escape it.
        assert "namespace" not in doc["metadata"], ident(doc)
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in all_resources()]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path, version: str) -> None:
    problems = [p for doc in load_documents(path) for p in schema_problems(doc, version)]
    assert problems == []


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    """A mutation that sets a dotted path (list indexes as numbers) in a copy of an object."""

    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()
_CONTAINER = "spec.template.spec.containers.0"


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("replicas as text", _set("spec.replicas", "two")),
        ("a misspelt field", _set(f"{_CONTAINER}.imagePullPolicyy", "IfNotPresent")),
        ("no selector", _set("spec.selector", _DELETE)),
        ("a port as text", _set(f"{_CONTAINER}.ports.0.containerPort", "eight thousand")),
        ("env without a name", _set(f"{_CONTAINER}.env.0.name", _DELETE)),
        ("a probe port of the wrong type", _set(f"{_CONTAINER}.readinessProbe.httpGet.port", [1])),
    ],
)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_schema_validation_rejects_a_broken_copy(
    name: str, mutate: Callable[[Doc], None], version: str
) -> None:
    broken = copy.deepcopy(find(all_resources(), "Deployment", "zgate-control"))
    mutate(broken)
    assert schema_problems(broken, version), f"{name} passed validation"


def test_schema_validation_rejects_an_unknown_kind() -> None:
    doc = {"apiVersion": "v1", "kind": "Relay", "metadata": {"name": "x"}}
    assert "Couldn't find schema" in " ".join(schema_problems(doc, KUBERNETES_VERSIONS[0]))


@pytest.mark.needs(tools=("kubectl",), reason="to build the kustomization")
def test_kustomize_build_validates_and_puts_everything_in_the_namespace() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl
    built = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(built) if doc]
    assert len(docs) == len(all_resources())
    for doc in docs:
        assert schema_problems(doc, KUBERNETES_VERSIONS[-1]) == []
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, ident(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "zgate", ident(doc)


# --- tests: what matters --------------------------------------------------------------------------


def test_control_plane() -> None:
    assert control_problems(all_resources(), CONTROL_UID) == []


def test_relay() -> None:
    assert relay_problems(all_resources()) == []


def test_connector() -> None:
    assert connector_problems(all_resources()) == []


def test_every_pod_template_has_the_scrape_annotations() -> None:
    templates = list(pod_templates(all_resources()))
    assert len(templates) == 4
    assert scrape_problems(all_resources()) == []


def test_every_image_is_built_here() -> None:
    assert image_problems(all_resources()) == []


def test_every_container_has_requests_and_limits() -> None:
    assert resources_problems(all_resources()) == []


def test_every_secret_is_defined_or_created_in_the_guide() -> None:
    assert secret_problems(all_resources(), DEPLOY_DOC.read_text()) == []


# --- tests: the checks catch what they are for ----------------------------------------------------


def _in(kind: str, name: str, path: str, value: Any) -> Callable[[list[Doc]], None]:
    """A mutation of one object of the set of resources."""

    def mutate(resources: list[Doc]) -> None:
        _set(path, value)(find(resources, kind, name))

    return mutate


_CONTROL = ("Deployment", "zgate-control")
_RELAY = ("StatefulSet", "zgate-relay")
_CONNECTOR = ("Deployment", "zgate-connector")
_POD = "spec.template.spec"


def _annotate(kind: str, name: str, key: str, value: str) -> Callable[[list[Doc]], None]:
    """A mutation of one pod template annotation (its key holds dots)."""

    def mutate(resources: list[Doc]) -> None:
        find(resources, kind, name)["spec"]["template"]["metadata"]["annotations"][key] = value

    return mutate


def _control(resources: list[Doc]) -> list[str]:
    return control_problems(resources, CONTROL_UID)


def _guide_without(name: str) -> Callable[[list[Doc]], list[str]]:
    def check(resources: list[Doc]) -> list[str]:
        return secret_problems(resources, DEPLOY_DOC.read_text().replace(name, "elsewhere"))

    return check


@pytest.mark.parametrize(
    ("check", "mutate", "complaint"),
    [
        (_control, _in(*_CONTROL, "spec.replicas", 1), "replicas is not 2"),
        (
            _control,
            _in(
                *_CONTROL,
                f"{_CONTAINER}.env.0",
                {"name": "ZGATE_CONTROL_DATABASE_URL", "value": "x"},
            ),
            "does not come from a Secret",
        ),
        (
            _control,
            _in("Secret", "zgate-postgres", "stringData.POSTGRES_PASSWORD", "other"),
            "does not match",
        ),
        (
            _control,
            _in(*_CONTROL, f"{_CONTAINER}.readinessProbe.httpGet.path", "/healthz"),
            "/readyz",
        ),
        (_control, _in(*_CONTROL, f"{_CONTAINER}.livenessProbe", _DELETE), "livenessProbe"),
        (_control, _in(*_CONTROL, f"{_POD}.securityContext.runAsNonRoot", False), "runAsNonRoot"),
        (_control, _in(*_CONTROL, f"{_POD}.securityContext.runAsUser", 1000), "image's user"),
        (_control, _in("Service", "zgate-control", "spec.ports.0.port", 80), "port 8080"),
        (
            relay_problems,
            _in(*_RELAY, f"{_CONTAINER}.securityContext.capabilities.add", []),
            "NET_ADMIN",
        ),
        (relay_problems, _in(*_RELAY, f"{_POD}.volumes.0.hostPath.path", "/dev/tun"), "TUN device"),
        (relay_problems, _in(*_RELAY, f"{_POD}.initContainers", _DELETE), "ip_forward"),
        (relay_problems, _in("Service", "zgate-relay", "spec.ports.0.protocol", "TCP"), "UDP"),
        (relay_problems, _in("Service", "zgate-relay", "spec.type", "ClusterIP"), "LoadBalancer"),
        (
            relay_problems,
            _in(
                *_RELAY, f"{_CONTAINER}.env.1", {"name": "ZGATE_RELAY_CONTROL_TOKEN", "value": "t"}
            ),
            "token",
        ),
        (
            relay_problems,
            _in(*_RELAY, f"{_CONTAINER}.env.0.value", "http://control:80"),
            "ZGATE_RELAY_CONTROL",
        ),
        (
            relay_problems,
            _in(*_RELAY, f"{_POD}.volumes.1", {"name": "pki", "emptyDir": {}}),
            "--pki",
        ),
        (
            relay_problems,
            _in(*_RELAY, f"{_CONTAINER}.securityContext.privileged", True),
            "privileged",
        ),
        (
            relay_problems,
            _in("NetworkPolicy", "zgate-relay-egress", "spec.podSelector.matchLabels", {"a": "b"}),
            "no egress NetworkPolicy",
        ),
        (
            relay_problems,
            _in("NetworkPolicy", "zgate-relay-egress", "spec.egress.0.ports.0.port", 80),
            "reach the control plane",
        ),
        (
            relay_problems,
            _in("NetworkPolicy", "zgate-relay-egress", "spec.egress.2.to.0.ipBlock.except", []),
            "opens 10.0.0.0/8",
        ),
        (connector_problems, _in(*_RELAY, "spec.replicas", 3), "one per relay"),
        (
            connector_problems,
            _in(*_CONNECTOR, f"{_CONTAINER}.securityContext.capabilities.add", []),
            "NET_ADMIN",
        ),
        (
            connector_problems,
            _in("Service", "zgate-relay-peers", "spec.clusterIP", "10.0.0.1"),
            "headless",
        ),
        (scrape_problems, _in(*_RELAY, "spec.template.metadata.annotations", {}), "annotation"),
        (scrape_problems, _annotate(*_CONTROL, "prometheus.io/port", "9999"), "no TCP port"),
        (scrape_problems, _annotate(*_CONTROL, "prometheus.io/scrape", "false"), "is not"),
        (image_problems, _in(*_CONNECTOR, f"{_CONTAINER}.image", "nginx:latest"), "not a zgate-*"),
        (
            image_problems,
            _in(*_RELAY, f"{_POD}.initContainers.0.image", "zgate-busybox:1"),
            "Dockerfile",
        ),
        (resources_problems, _in(*_RELAY, f"{_POD}.initContainers.0.resources", {}), "no requests"),
        (
            resources_problems,
            _in(*_CONTROL, f"{_CONTAINER}.resources.limits", {"cpu": "1"}),
            "memory",
        ),
        (_guide_without("zgate-relay-token"), lambda resources: None, "zgate-relay-token"),
        (_guide_without("--from-file=relay.key="), lambda resources: None, "without key"),
    ],
)
def test_check_catches_a_broken_copy(
    check: Callable[[list[Doc]], list[str]],
    mutate: Callable[[list[Doc]], None],
    complaint: str,
) -> None:
    broken = copy.deepcopy(all_resources())
    mutate(broken)
    problems = check(broken)
    assert any(complaint in problem for problem in problems), problems
