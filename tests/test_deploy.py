"""The Kubernetes manifests in deploy/: rendered by kubectl kustomize, validated offline
against the Kubernetes API schemas, and checked for what the Prometheus Operator, the
Grafana sidecar and the security profiles require."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from collections import defaultdict

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_schemas
from packaging.version import Version

from alerts import rules
from dashboards import generate
from exporter import __version__
from tests.servers import REPO

PROFILES = ("full", "netlink", "minimal")
OVERLAYS = REPO / "deploy" / "overlays"
NAMESPACE = "monitoring"
NAME = "storm-termination-exporter"
# The oldest kubectl the overlays are meant for; the tests here render them with
# kubectl 1.32 (kustomize 5.5).
MIN_KUBECTL = (1, 27)
# Kinds that no schema of kubernetes-validate covers; the Prometheus Operator checks below cover them.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}

# What each profile grants, and so what docs/security.md explains. A change to a
# profile's privileges must change this table, docs/security.md and tests/test_privileges.py.
PRIVILEGES = {
    "full": {
        "uid": 0,
        "capabilities": {"SYS_PTRACE", "DAC_READ_SEARCH", "SYS_NICE", "NET_ADMIN"},
        "host_network": True,
        "tracefs": True,
        "events_source": "auto",
    },
    "netlink": {
        "uid": 0,
        "capabilities": {"SYS_PTRACE", "DAC_READ_SEARCH", "SYS_NICE", "NET_ADMIN"},
        "host_network": True,
        "tracefs": False,
        "events_source": "netlink",
    },
    "minimal": {
        "uid": 10001,
        "capabilities": set(),
        "host_network": False,
        "tracefs": False,
        "events_source": "poll",
    },
}

# The size limit of all annotations of an object. Client-side `kubectl apply` stores
# the whole object in the kubectl.kubernetes.io/last-applied-configuration annotation.
ANNOTATION_BYTES_MAX = 262144


# Rendering.


def _kubectl_version(binary: str) -> tuple[int, int] | None:
    result = subprocess.run(
        [binary, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        return None
    client = json.loads(result.stdout).get("clientVersion", {})
    major, minor = client.get("major", ""), client.get("minor", "").rstrip("+")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


@functools.cache
def _find_kubectl() -> tuple[str | None, str]:
    binary = shutil.which("kubectl")
    if binary is None:
        return None, "kubectl is not installed"
    version = _kubectl_version(binary)
    if version is None:
        return None, f"{binary} did not report its client version"
    if version < MIN_KUBECTL:
        found = ".".join(map(str, version))
        required = ".".join(map(str, MIN_KUBECTL))
        return None, f"{binary} is kubectl {found}, older than {required}"
    return binary, ""


def require_kubectl() -> str:
    """Return the path of kubectl 1.27 or newer; skip without one, but fail under .ci/run."""
    binary, reason = _find_kubectl()
    if binary is not None:
        return binary
    message = f"{reason}: the manifests are rendered with `kubectl kustomize`, which needs kubectl 1.27+"
    if os.environ.get("STORM_EXPORTER_FORBID_PRIVILEGE_SKIPS"):
        pytest.fail(f"{message}, and skips are forbidden here")
    pytest.skip(message)


@functools.cache
def _render(profile: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [require_kubectl(), "kustomize", str(OVERLAYS / profile)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize deploy/overlays/{profile} failed:\n{result.stderr}"
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def render(profile: str) -> list[dict]:
    """Return the objects of ``kubectl kustomize deploy/overlays/<profile>``, as a fresh copy."""
    return copy.deepcopy(list(_render(profile)))


def find(objects: list[dict], kind: str, name: str = NAME) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def exporter_container(objects: list[dict]) -> dict:
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    containers = [c for c in pod["containers"] if c["name"] == "exporter"]
    assert len(containers) == 1, "the DaemonSet has no single container named exporter"
    return containers[0]


def effective_security(objects: list[dict]) -> dict:
    """Return the exporter container's securityContext over the pod's, as the kubelet merges them."""
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    merged = dict(pod.get("securityContext", {}))
    merged.update(exporter_container(objects).get("securityContext", {}))
    return merged


def run_as_user(objects: list[dict]) -> int:
    """Return the exporter's UID; a manifest without runAsUser would run the image's USER."""
    security = effective_security(objects)
    assert "runAsUser" in security, "the exporter container has no runAsUser"
    return security["runAsUser"]


def added_capabilities(objects: list[dict]) -> list[str]:
    return list(effective_security(objects).get("capabilities", {}).get("add", []))


def host_paths(objects: list[dict]) -> dict[str, dict]:
    """Return each hostPath volume's path with the exporter's mount of it."""
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in exporter_container(objects).get("volumeMounts", [])}
    found = {}
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            found[volume["hostPath"]["path"]] = mounts.get(volume["name"], {})
    return found


def test_kubectl_renders_every_overlay():
    for profile in PROFILES:
        kinds = sorted(o["kind"] for o in render(profile))
        assert kinds == sorted([
            "ClusterRole", "ClusterRoleBinding", "ConfigMap", "ConfigMap", "DaemonSet",
            "NetworkPolicy", "PriorityClass", "PrometheusRule", "Service", "ServiceAccount",
            "ServiceMonitor",
        ]), profile


# Kubernetes API schemas.


def newest_schema_versions(count: int = 3) -> list[str]:
    """Return the newest release of each of the ``count`` newest minor versions with schemas."""
    newest: dict[tuple[int, int], Version] = {}
    for text in kubernetes_schemas.all_versions():
        version = Version(text)
        key = (version.major, version.minor)
        newest[key] = max(newest.get(key, version), version)
    return [str(newest[key]) for key in sorted(newest)[-count:]]


def test_schema_versions_are_recent():
    versions = newest_schema_versions()
    assert len(versions) == 3
    assert Version(versions[0]) >= Version("1.30"), f"kubernetes-validate ships old schemas only: {versions}"


def _unique_objects() -> dict[str, tuple[dict, list[str]]]:
    unique: dict[str, tuple[dict, list[str]]] = {}
    for profile in PROFILES:
        for document in render(profile):
            key = json.dumps(document, sort_keys=True)
            unique.setdefault(key, (document, []))[1].append(profile)
    return unique


def test_objects_match_kubernetes_schemas():
    versions = newest_schema_versions()
    failures = []
    validated = defaultdict(set)
    for document, profiles in _unique_objects().values():
        if document["kind"] in OPERATOR_KINDS:
            continue
        for version in versions:
            where = f"{document['kind']}/{document['metadata']['name']} ({', '.join(profiles)}) on {version}"
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_schemas.ValidationError as error:
                path = ".".join(map(str, error.absolute_path))
                failures.append(f"{where}: {path}: {error.message}")
            except kubernetes_schemas.SchemaNotFoundError as error:
                failures.append(f"{where}: {error.message}")
            else:
                validated[document["kind"]].add(version)
    assert failures == []
    assert set(validated) == {
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "NetworkPolicy",
        "PriorityClass", "Service", "ServiceAccount",
    }
    assert all(found == set(versions) for found in validated.values())


def test_schema_validation_rejects_misspelled_field():
    daemonset = find(render("full"), "DaemonSet")
    exporter_container([daemonset])["securityContext"]["privilegd"] = False
    with pytest.raises(kubernetes_schemas.ValidationError, match="privilegd"):
        kubernetes_validate.validate(daemonset, newest_schema_versions()[-1], strict=True)


# Prometheus Operator objects.


@pytest.mark.parametrize("profile", PROFILES)
def test_service_monitor_fields(profile):
    objects = render(profile)
    monitor = find(objects, "ServiceMonitor")
    service = find(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector
    assert selector.items() <= service["metadata"]["labels"].items()
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints
    for endpoint in endpoints:
        assert endpoint["port"] in service_ports
        assert endpoint["honorLabels"] is True


@pytest.mark.parametrize("profile", PROFILES)
def test_service_monitor_relabelings(profile):
    (endpoint,) = find(render(profile), "ServiceMonitor")["spec"]["endpoints"]
    relabelings = endpoint["relabelings"]
    node = [r for r in relabelings if r.get("targetLabel") == rules.Config().node_label]
    assert len(node) == 1
    assert node[0]["sourceLabels"] == ["__meta_kubernetes_pod_node_name"]
    assert node[0].get("action", "replace") == "replace"
    dropped = [re.compile(r["regex"]) for r in relabelings if r.get("action") == "labeldrop"]
    for label in ("namespace", "pod", "container"):
        assert any(pattern.fullmatch(label) for pattern in dropped), f"target label {label} is kept"
    for label in ("job", "instance", "node", "endpoint", "service"):
        assert not any(pattern.fullmatch(label) for pattern in dropped), f"target label {label} is dropped"


@pytest.mark.parametrize("profile", PROFILES)
def test_scrape_job_matches_rules(profile):
    # The Prometheus Operator names the job after the Service unless jobLabel is set.
    objects = render(profile)
    monitor = find(objects, "ServiceMonitor")
    assert "jobLabel" not in monitor["spec"]
    assert rules.Config().job_selector == f'job="{find(objects, "Service")["metadata"]["name"]}"'


@pytest.mark.parametrize("profile", PROFILES)
def test_prometheus_rule_is_generated(profile):
    rule = find(render(profile), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    groups = rule["spec"]["groups"]
    assert groups
    for group in groups:
        assert group["name"]
        assert group["rules"]
        for entry in group["rules"]:
            assert entry["expr"]
            assert ("record" in entry) != ("alert" in entry)
    assert groups == rules.rule_groups()["groups"]


# Grafana dashboards.


@pytest.mark.parametrize("profile", PROFILES)
def test_dashboard_config_maps(profile):
    maps = [o for o in render(profile) if o["kind"] == "ConfigMap"]
    by_file = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == NAMESPACE
        (filename,) = config_map["data"]
        by_file[filename] = config_map
        # Client-side apply stores the whole object in one annotation.
        size = len(json.dumps(config_map).encode())
        assert size < ANNOTATION_BYTES_MAX, f"{filename}: {size} bytes do not fit the apply annotation"
    dashboards = {generate.OPERATIONS_PATH, generate.REVIEW_PATH}
    assert set(by_file) == {path.name for path in dashboards}
    for path in dashboards:
        assert by_file[path.name]["data"][path.name] == path.read_text()


def test_dashboard_config_map_names_fixed():
    names = {o["metadata"]["name"] for o in render("full") if o["kind"] == "ConfigMap"}
    assert names == {f"{NAME}-dashboard-operations", f"{NAME}-dashboard-review"}


# The DaemonSet and its neighbours.


@pytest.mark.parametrize("profile", PROFILES)
def test_namespaced_objects_in_monitoring(profile):
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "PriorityClass"}
    for document in render(profile):
        namespace = document["metadata"].get("namespace")
        if document["kind"] in cluster_scoped:
            assert namespace is None, document["kind"]
        else:
            assert namespace == NAMESPACE, document["kind"]


@pytest.mark.parametrize("profile", PROFILES)
def test_rbac_reads_pods_only(profile):
    objects = render(profile)
    role = find(objects, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = find(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"],
    }
    account = find(objects, "ServiceAccount")
    assert binding["subjects"] == [{
        "kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE,
    }]
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize("profile", PROFILES)
def test_container_settings(profile):
    objects = render(profile)
    container = exporter_container(objects)
    assert container["image"] == f"storm-termination-exporter:{__version__}"
    args = container["args"]
    assert "--web.listen-address=$(POD_IP):19715" in args
    assert "--path.procfs=/host/proc" in args
    assert f"--events.source={PRIVILEGES[profile]['events_source']}" in args
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "POD_IP": "status.podIP"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 19715}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def _benchmark_peak_rss_mb() -> float:
    text = (REPO / "docs" / "benchmarks.md").read_text()
    match = re.search(r"\| RSS ≤ \d+ MB \| (?P<peak>\d+(?:\.\d+)?) MB peak \|", text)
    assert match, "docs/benchmarks.md has no 'RSS ≤ N MB | M MB peak' row"
    return float(match["peak"])


def _quantity(text: str) -> float:
    """Convert a Kubernetes quantity such as 25m, 64Mi or 1 to a number."""
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in suffixes.items():
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("profile", PROFILES)
def test_resources_cover_benchmark(profile):
    resources = exporter_container(render(profile))["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}, kind
    peak = _benchmark_peak_rss_mb() * 1e6
    assert _quantity(resources["requests"]["memory"]) > peak
    assert _quantity(resources["limits"]["memory"]) >= 2 * peak
    assert _quantity(resources["limits"]["cpu"]) > _quantity(resources["requests"]["cpu"])


@pytest.mark.parametrize("profile", PROFILES)
def test_scheduling(profile):
    objects = render(profile)
    spec = find(objects, "DaemonSet")["spec"]
    pod = spec["template"]["spec"]
    assert {"operator": "Exists"} in pod["tolerations"]
    priority = find(objects, "PriorityClass", pod["priorityClassName"])
    assert 0 < priority["value"] < 1_000_000_000, "user classes stay below the system-* classes"
    assert priority.get("globalDefault", False) is False
    update = spec["updateStrategy"]
    assert update["type"] == "RollingUpdate"
    unavailable = str(update["rollingUpdate"]["maxUnavailable"])
    assert unavailable not in ("100%", "0", "0%")
    if unavailable.endswith("%"):
        assert int(unavailable[:-1]) <= 25
    assert str(update["rollingUpdate"].get("maxSurge", 0)) in ("0", "0%")
    assert pod["terminationGracePeriodSeconds"] <= 30


@pytest.mark.parametrize("profile", PROFILES)
def test_service_and_network_policy(profile):
    objects = render(profile)
    pod_labels = find(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    service = find(objects, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 19715, "targetPort": "metrics", "protocol": "TCP"}]
    policy = find(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


# Security properties.


@pytest.mark.parametrize("profile", PROFILES)
def test_security_context(profile):
    objects = render(profile)
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    assert "initContainers" not in pod
    security = effective_security(objects)
    assert security.get("privileged", False) is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "procMount" not in security
    expected = PRIVILEGES[profile]
    assert sorted(added_capabilities(objects)) == sorted(expected["capabilities"])
    assert run_as_user(objects) == expected["uid"]
    assert security.get("runAsGroup") == expected["uid"]
    assert security["runAsNonRoot"] is (expected["uid"] != 0)


@pytest.mark.parametrize("profile", PROFILES)
def test_host_namespaces(profile):
    pod = find(render(profile), "DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod.get("hostNetwork", False) is PRIVILEGES[profile]["host_network"]
    assert pod.get("hostIPC", False) is False
    assert pod.get("hostUsers", True) is True  # a user namespace would hide the host's processes' ids


@pytest.mark.parametrize("profile", PROFILES)
def test_host_mounts(profile):
    mounts = host_paths(render(profile))
    expected = {"/proc"} | ({"/sys/kernel/tracing"} if PRIVILEGES[profile]["tracefs"] else set())
    assert set(mounts) == expected
    assert mounts["/proc"]["mountPath"] == "/host/proc"
    assert mounts["/proc"]["readOnly"] is True
    if PRIVILEGES[profile]["tracefs"]:
        # The default --path.tracefs; the exporter writes its instance there.
        assert mounts["/sys/kernel/tracing"]["mountPath"] == "/sys/kernel/tracing"
        assert mounts["/sys/kernel/tracing"].get("readOnly", False) is False
