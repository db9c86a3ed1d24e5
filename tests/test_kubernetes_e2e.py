"""The exporter with the pod watch on, against the fake API server through a kubeconfig."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.kubeapi import FakeKubeAPI
from tests.stormtree import StormTrees, wait_gone
from tests.servers import REPO, ExporterProcess, free_port, http_get

NODE = "node-a"


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def supervisor_pod(
    name: str, uid: str, node: str, *, deleted_ago: float | None, exit_code: int | None,
    container_hex: str | None = None,
) -> dict:
    """A StatefulSet pod of a Storm supervisor, as the API server returns it."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    metadata = {
        "name": name, "namespace": "storm", "uid": uid, "resourceVersion": "1",
        "labels": {"app": "storm-supervisor"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "storm-supervisor",
                             "uid": "5b1c1c3e-0000-4000-8000-000000000001", "controller": True}],
    }
    container_id = "containerd://" + (container_hex or uid.replace("-", "") * 2)
    state = {"running": {"startedAt": rfc3339(now - timedelta(hours=1))}}
    if deleted_ago is not None:
        metadata["deletionTimestamp"] = rfc3339(now - timedelta(seconds=deleted_ago) + timedelta(seconds=30))
        metadata["deletionGracePeriodSeconds"] = 30
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                "startedAt": rfc3339(now - timedelta(hours=1)), "finishedAt": rfc3339(now),
                                "containerID": container_id}}
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 30,
                 "containers": [{"name": "supervisor", "image": "storm:2.8.8"}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "supervisor", "containerID": container_id, "ready": exit_code is None,
             "restartCount": 0, "image": "storm:2.8.8", "imageID": "", "state": state}]},
    }


@pytest.fixture
def api():
    server = FakeKubeAPI(bookmark_interval=0.2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_pod_metrics_through_kubeconfig(api, tmp_path):
    api.upsert(supervisor_pod("storm-supervisor-0", "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6", NODE,
                              deleted_ago=None, exit_code=None))
    api.upsert(supervisor_pod("storm-supervisor-9", "7a8b9c0d-1e2f-4a3b-9c4d-5e6f708192a3", "node-b",
                              deleted_ago=2, exit_code=None))
    flags = ["--events.source=poll", *watch_flags(api, tmp_path)]
    with ExporterProcess(*flags) as exporter:
        exporter.wait_ready()
        assert http_get(f"http://{exporter.address}/readyz")[0] == 200
        assert exporter.wait_value("storm_termination_exporter_kubernetes_up", 1, 10.0) == 1
        labels = {"namespace": "storm", "workload": "statefulset/storm-supervisor"}
        assert exporter.value("storm_pods_terminating", **labels) == 0
        assert exporter.value("storm_pod_grace_period_seconds", **labels) == 30

        # The pod on node-b is filtered out by the API server, so only node-a's pod counts.
        api.upsert(supervisor_pod("storm-supervisor-0", "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6", NODE,
                                  deleted_ago=3, exit_code=None))
        assert exporter.wait_value("storm_pods_terminating", 1, 10.0, **labels) == 1
        api.upsert(supervisor_pod("storm-supervisor-0", "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6", NODE,
                                  deleted_ago=3, exit_code=0))
        exits = {**labels, "container": "supervisor", "outcome": "graceful"}
        assert exporter.wait_value("storm_pod_container_exits_total", 1, 10.0, **exits) == 1
        duration = exporter.value("storm_pod_container_shutdown_duration_seconds_sum",
                                  **{**labels, "container": "supervisor", "outcome": "graceful"})
        assert duration == pytest.approx(3, abs=1)
        restarts = exporter.value("storm_termination_exporter_kubernetes_watch_restarts_total", reason="gone")
        assert restarts == 0

        # History compacted away: the watch gets 410, lists again, and counts nothing twice.
        api.compact()
        gone = exporter.wait_value("storm_termination_exporter_kubernetes_watch_restarts_total", 1, 10.0,
                                   reason="gone")
        assert gone == 1
        assert exporter.wait_value("storm_termination_exporter_kubernetes_up", 1, 10.0) == 1
        assert exporter.value("storm_pod_container_exits_total", **exits) == 1
    queries = api.list_requests() + api.watch_requests()
    assert queries
    for query in queries:
        assert query.get("fieldSelector") == f"spec.nodeName={NODE}"


def test_bad_kubeconfig_exits_1(tmp_path):
    broken = tmp_path / "kubeconfig"
    broken.write_text("not: [a, kubeconfig")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{free_port()}",
         "--events.source=poll", "--kubernetes=on", f"--kubernetes.kubeconfig={broken}",
         "--kubernetes.node-name=node-a"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "cannot start the pod watch" in result.stderr


def test_worker_info_names_its_pod(api, tmp_path):
    require_root()
    pod_uid = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
    container_hex = uuid.uuid4().hex + uuid.uuid4().hex
    api.upsert(supervisor_pod("storm-supervisor-0", pod_uid, NODE, deleted_ago=None, exit_code=None,
                              container_hex=container_hex))
    flags = ["--events.source=tracefs,netlink", *watch_flags(api, tmp_path)]
    leaf = kubelet_leaf(pod_uid, container_hex)
    try:
        with ExporterProcess(*flags) as exporter, StormTrees(shutdown_sleep=0.3) as trees:
            exporter.wait_ready()
            # Trees inherit this process's cgroup: enter the kubelet-shaped one to start one.
            with inside_cgroup(leaf):
                tree = trees.start("graceful", f"pod-join-1-{int(time.time())}")
            info = {
                "topology": tree.topology_id.decode(), "worker_id": tree.worker_id, "port": "6700",
                "uid": str(os.getuid()), "namespace": "storm", "pod": "storm-supervisor-0",
                "container": "supervisor", "workload": "statefulset/storm-supervisor",
            }
            assert exporter.wait_value("storm_worker_info", 1, 10.0, **info) == 1
            tree.stop()
    finally:
        remove_tree(leaf)
    assert not (UNIFIED / "kubepods.slice").exists()


def test_pod_deletion_requests_namespace_killed_workers(api, tmp_path):
    require_root()
    pod_uid = "7a8b9c0d-1e2f-4a3b-9c4d-5e6f708192a3"
    container_hex = uuid.uuid4().hex + uuid.uuid4().hex
    api.upsert(supervisor_pod("storm-supervisor-1", pod_uid, NODE, deleted_ago=None, exit_code=None,
                              container_hex=container_hex))
    flags = watch_flags(api, tmp_path)
    leaf = kubelet_leaf(pod_uid, container_hex)
    try:
        with ExporterProcess(*flags) as exporter, StormTrees(shutdown_sleep=0.3) as trees:
            exporter.wait_ready()
            with inside_cgroup(leaf):
                namespace = trees.namespace()
                tree = trees.start("graceful", f"pod-kill-1-{int(time.time())}", pid_namespace=namespace)
            topology = tree.topology_id.decode()
            assert exporter.wait_value("storm_workers", 1, 10.0, topology=topology, state="running") == 1
            # The pod is deleted: the kubelet SIGTERMs the supervisor, PID 1 of the
            # container, which exits without stopping its workers.
            deleted = supervisor_pod("storm-supervisor-1", pod_uid, NODE, deleted_ago=0, exit_code=None,
                                     container_hex=container_hex)
            api.upsert(deleted)
            labels = {"namespace": "storm", "workload": "statefulset/storm-supervisor"}
            assert exporter.wait_value("storm_pods_terminating", 1, 10.0, **labels) == 1
            assert namespace.signal_supervisor(signal.SIGTERM)
            assert exporter.wait_value("storm_worker_exits_total", 1, 10.0, topology=topology, outcome="sigkill") == 1
            requests = exporter.value("storm_worker_termination_requests_total", topology=topology,
                                      trigger="pod_deletion")
            assert requests == 1
            assert exporter.value("storm_worker_sigkill_escalations_total", topology=topology) == 1
            total = exporter.value("storm_worker_shutdown_duration_seconds_sum", topology=topology, outcome="sigkill")
            assert 0 <= total < 3  # from a termination start known to the second

            # The container's status arrives with whole-second timestamps; the duration
            # uses the kernel's exit time of its main process, the supervisor, instead.
            assert wait_gone([namespace.init_pid], timeout=5.0) == []
            exited = datetime.now(timezone.utc)
            start = datetime.strptime(deleted["metadata"]["deletionTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=timezone.utc) - timedelta(seconds=30)
            finished = supervisor_pod("storm-supervisor-1", pod_uid, NODE, deleted_ago=0, exit_code=143,
                                      container_hex=container_hex)
            finished["metadata"]["deletionTimestamp"] = deleted["metadata"]["deletionTimestamp"]
            api.upsert(finished)
            container = {**labels, "container": "supervisor", "outcome": "graceful"}
            assert exporter.wait_value("storm_pod_container_exits_total", 1, 10.0, **container) == 1
            seconds = exporter.value("storm_pod_container_shutdown_duration_seconds_sum", **container)
            # The kernel saw the exit before this test did, and API seconds would give a whole number.
            assert seconds <= (exited - start).total_seconds()
            assert seconds >= (exited - start).total_seconds() - 0.5
            assert seconds != round(seconds)
    finally:
        remove_tree(leaf)


UNIFIED = Path("/sys/fs/cgroup/unified")


def kubelet_leaf(pod_uid: str, container_hex: str) -> Path:
    """The cgroup v2 directory the kubelet's systemd driver gives a containerd container."""
    pod_slice = f"kubepods-burstable-pod{pod_uid.replace('-', '_')}.slice"
    return UNIFIED / "kubepods.slice" / "kubepods-burstable.slice" / pod_slice / f"cri-containerd-{container_hex}.scope"


def watch_flags(api: FakeKubeAPI, tmp_path: Path) -> list[str]:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    return ["--kubernetes=on", f"--kubernetes.kubeconfig={kubeconfig}", f"--kubernetes.node-name={NODE}"]


class inside_cgroup:
    """Move this process into a cgroup v2 directory (created) and back on exit."""

    def __init__(self, leaf: Path) -> None:
        self.leaf = leaf
        self.original = None

    def __enter__(self) -> None:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                self.original = UNIFIED / line[3:].lstrip("/")
        self.leaf.mkdir(parents=True, exist_ok=True)
        (self.leaf / "cgroup.procs").write_text(str(os.getpid()))

    def __exit__(self, *exc) -> None:
        (self.original / "cgroup.procs").write_text(str(os.getpid()))


def remove_tree(leaf: Path) -> None:
    """Remove the kubelet-shaped directories, innermost first, once they are empty."""
    for directory in [leaf, *leaf.parents]:
        if directory == UNIFIED:
            break
        try:
            directory.rmdir()
        except OSError:
            break
