"""Exposition of the tracker's state: names, types, label escaping and bounds."""

from __future__ import annotations

import signal
import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import StormCollector
from tests.test_tracker import Node, exit_code

ODD_TOPOLOGY = 'say "hi"\\ \n\ufffd-1-1'


def scrape(node: Node) -> tuple[CollectorRegistry, str]:
    registry = CollectorRegistry()
    registry.register(StormCollector(node.tracker, threading.Lock(), ["tracefs", "netlink"]))
    return registry, generate_latest(registry).decode()


def sample(registry: CollectorRegistry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, labels)


def episode(node: Node, topology: str) -> None:
    node.at(1.0).worker_tree(topology=topology)
    node.at(10.0).supervisor_kill(300, 201, int(signal.SIGTERM))
    node.at(13.0).supervisor_kill(301, 201, int(signal.SIGKILL))
    node.at(13.1).exit(201, int(signal.SIGKILL))
    node.tick(13.2)


def test_families_and_values():
    node = Node()
    episode(node, "wordcount-3-1700000000")
    registry, _ = scrape(node)
    topology = "wordcount-3-1700000000"
    assert sample(registry, "storm_worker_exits_total", topology=topology, outcome="sigkill") == 1
    assert sample(registry, "storm_worker_sigkill_escalations_total", topology=topology) == 1
    assert sample(registry, "storm_worker_shutdown_duration_seconds_count", topology=topology, outcome="sigkill") == 1
    assert sample(registry, "storm_worker_shutdown_duration_seconds_bucket", topology=topology, outcome="sigkill", le="3.0") == 0
    assert sample(registry, "storm_worker_shutdown_duration_seconds_bucket", topology=topology, outcome="sigkill", le="3.5") == 1
    assert sample(registry, "storm_worker_signals_total", topology=topology, signal="SIGKILL", sender="supervisor") == 1
    assert sample(registry, "storm_workers", topology=topology, state="running") == 0
    assert sample(registry, "storm_worker_termination_pending_seconds", topology=topology) == 0
    assert sample(registry, "storm_termination_exporter_event_source_info", source="netlink") == 1


def test_pending_and_info_for_live_worker():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).supervisor_kill(300, 201, int(signal.SIGTERM))
    node.at(12.5)
    registry, _ = scrape(node)
    topology = "wordcount-3-1700000000"
    assert sample(registry, "storm_workers", topology=topology, state="terminating") == 1
    assert sample(registry, "storm_worker_termination_pending_seconds", topology=topology) == 2.5
    info = {
        "topology": topology, "worker_id": "8d3c2b1a-4f5e-4a6b-9c7d-0e1f2a3b4c5d", "port": "6700",
        "uid": "1000", "namespace": "", "pod": "", "container": "", "workload": "",
    }
    assert sample(registry, "storm_worker_info", **info) == 1


def test_odd_topology_stays_valid_text():
    node = Node()
    episode(node, ODD_TOPOLOGY)
    registry, text = scrape(node)
    text.encode("utf-8")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    values = {s.labels["topology"] for s in families["storm_worker_exits"].samples}
    assert values == {ODD_TOPOLOGY}


def test_odd_topology_stays_valid_openmetrics():
    node = Node()
    episode(node, ODD_TOPOLOGY)
    registry, _ = scrape(node)
    text = generate_openmetrics(registry).decode()
    families = {family.name: family for family in parse_openmetrics(text)}
    assert {s.labels["topology"] for s in families["storm_worker_exits"].samples} == {ODD_TOPOLOGY}


def test_series_gone_after_retention():
    node = Node(topology_retention=60.0)
    node.at(1.0).worker_tree()
    node.at(2.0).exit(201, exit_code(11))
    node.exit(200, exit_code(11))
    node.exit(202, 0)
    node.tick(3.0)
    node.tick(10.0)  # past the leftover grace: the worker episode is finished
    registry, text = scrape(node)
    assert "wordcount-3-1700000000" in text
    node.tick(100.0)
    registry, text = scrape(node)
    assert "wordcount-3-1700000000" not in text


def test_long_topology_label_is_bounded():
    node = Node()
    long_id = "t" * 100_000 + "-7-1700000000"
    episode(node, long_id)
    _, text = scrape(node)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    (value,) = {s.labels["topology"] for s in families["storm_worker_exits"].samples}
    assert len(value) <= 256
    assert value.endswith("-7-1700000000")
    assert len(text) < 50_000


def test_workers_without_ids_share_one_info_series():
    node = Node()
    node.at(1.0)
    for base in (200, 300, 400):
        node.worker_tree(topology="same-1-1", base=base, worker_id="")
    registry, text = scrape(node)
    lines = [line for line in text.splitlines() if line.startswith("storm_worker_info{")]
    assert len(lines) == 1
    assert sample(registry, "storm_workers", topology="same-1-1", state="running") == 3


def test_worker_info_names_pod_from_cgroup():
    pod_uid = "30cea2cf-1b80-4807-abad-d81453e199c5"
    container_id = "a8077b08a56c0c6e33d6716557d882ac940cb09475c50372e22e84c40d0733f2"
    cgroup = (
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
        f"{pod_uid.replace('-', '_')}.slice/crio-{container_id}.scope\n"
    )
    node = Node(read_cgroup=lambda pid: cgroup if pid == 201 else None)
    node.at(1.0).worker_tree()
    worker = next(iter(node.tracker.workers.values()))
    assert worker.cgroup.pod_uid == pod_uid
    assert worker.cgroup.container_id == container_id
    names = {(pod_uid, container_id): ("storm", "storm-supervisor-0", "supervisor", "statefulset/storm-supervisor")}
    registry = CollectorRegistry()
    registry.register(StormCollector(
        node.tracker, threading.Lock(), resolve_pod=lambda c: names.get((c.pod_uid, c.container_id), ("", "", "", "")),
    ))
    info = {
        "topology": "wordcount-3-1700000000", "worker_id": "8d3c2b1a-4f5e-4a6b-9c7d-0e1f2a3b4c5d",
        "port": "6700", "uid": "1000", "namespace": "storm", "pod": "storm-supervisor-0", "container": "supervisor",
        "workload": "statefulset/storm-supervisor",
    }
    assert registry.get_sample_value("storm_worker_info", info) == 1


def test_histograms_start_at_zero():
    # rate() and increase() then count a topology's first shutdown too.
    node = Node()
    node.at(1.0).worker_tree()
    registry, _ = scrape(node)
    topology = "wordcount-3-1700000000"
    for outcome in ("graceful", "halted", "sigkill"):
        labels = {"topology": topology, "outcome": outcome}
        assert sample(registry, "storm_worker_shutdown_duration_seconds_count", **labels) == 0
        assert sample(registry, "storm_worker_shutdown_duration_seconds_bucket", le="+Inf", **labels) == 0
    assert sample(registry, "storm_worker_shutdown_duration_seconds_count", topology=topology, outcome="unknown") is None
