"""Tests for the pod termination state and metric families in exporter.podtracker."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import pytest

from exporter.podtracker import PodTracker

UID = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
NEW_UID = "7a8b9c0d-1e2f-4a3b-9c4d-5e6f708192a3"
STARTED = datetime(2024, 5, 1, 11, 0, 0, tzinfo=timezone.utc)
DEPLOYMENT = {"kind": "ReplicaSet", "name": "storm-worker-7d9f8b6c5", "controller": True}
STATEFULSET = {"kind": "StatefulSet", "name": "storm-supervisor", "controller": True}
HASH_LABELS = {"pod-template-hash": "7d9f8b6c5"}
WORKER_KEY = ("storm", "deployment/storm-worker")


class Clock:
    def __init__(self, now: str = "2024-05-01T12:00:00Z"):
        self.now = utc(now)

    def __call__(self) -> datetime:
        return self.now

    def set(self, text: str) -> None:
        self.now = utc(text)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def running(name: str, container_id: str) -> dict:
    return {
        "name": name,
        "containerID": f"containerd://{container_id}",
        "state": {"running": {"startedAt": "2024-05-01T10:00:00Z"}},
        "lastState": {},
    }


def terminated(name: str, container_id: str, code: int, finished: str, reason: str) -> dict:
    return {
        "name": name,
        "containerID": f"containerd://{container_id}",
        "state": {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": "2024-05-01T10:00:00Z",
                "finishedAt": finished,
                "containerID": f"containerd://{container_id}",
            }
        },
        "lastState": {},
    }


def make_pod(
    *,
    uid: str = UID,
    name: str = "storm-worker-7d9f8b6c5-abcde",
    owner: dict | None = DEPLOYMENT,
    labels: dict | None = HASH_LABELS,
    deletion: str | None = None,
    deletion_grace: int | None = None,
    finalizers: list | None = None,
    spec_grace: int = 30,
    statuses: list | None = None,
    init_statuses: list | None = None,
) -> dict:
    metadata: dict = {"name": name, "namespace": "storm", "uid": uid}
    if owner is not None:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "uid": "owner-uid", **owner}]
    if labels is not None:
        metadata["labels"] = dict(labels)
    if deletion is not None:
        metadata["deletionTimestamp"] = deletion
        metadata["deletionGracePeriodSeconds"] = deletion_grace
    if finalizers is not None:
        metadata["finalizers"] = finalizers
    spec = {
        "nodeName": "node-1",
        "terminationGracePeriodSeconds": spec_grace,
        "containers": [{"name": "worker"}],
    }
    if init_statuses is not None:
        spec["initContainers"] = [{"name": s["name"], "restartPolicy": "Always"} for s in init_statuses]
    status: dict = {"phase": "Running"}
    if statuses is not None:
        status["containerStatuses"] = statuses
    if init_statuses is not None:
        status["initContainerStatuses"] = init_statuses
    return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": spec, "status": status}


def samples(tracker: PodTracker) -> dict:
    """Map (sample name, sorted label items) to value for every sample of every family."""
    values = {}
    for family in tracker.families():
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(tracker: PodTracker, name: str, **labels) -> float | None:
    return samples(tracker).get((name, tuple(sorted(labels.items()))))


def exits(tracker, outcome, container="worker", key=WORKER_KEY):
    return value(
        tracker, "storm_pod_container_exits_total",
        namespace=key[0], workload=key[1], container=container, outcome=outcome,
    )


def escalations(tracker, container="worker", key=WORKER_KEY):
    return value(
        tracker, "storm_pod_sigkill_escalations_total",
        namespace=key[0], workload=key[1], container=container,
    )


def histogram(tracker, suffix, outcome, container="worker", key=WORKER_KEY, **extra):
    return value(
        tracker, f"storm_pod_container_shutdown_duration_seconds_{suffix}",
        namespace=key[0], workload=key[1], container=container, outcome=outcome, **extra,
    )


def tracker_at(clock: Clock | None = None, **kwargs) -> PodTracker:
    return PodTracker(clock or Clock(), "node-1", STARTED, **kwargs)


def test_graceful_termination_duration():
    tracker = tracker_at()
    tracker.on_event("ADDED", make_pod(statuses=[running("worker", "c1")]))
    deleting = make_pod(
        deletion="2024-05-01T12:00:30Z", deletion_grace=30, statuses=[running("worker", "c1")]
    )
    tracker.on_event("MODIFIED", deleting)
    assert tracker.termination_start_of(UID) == utc("2024-05-01T12:00:00Z")
    done = make_pod(
        deletion="2024-05-01T12:00:30Z", deletion_grace=30,
        statuses=[terminated("worker", "c1", 143, "2024-05-01T12:00:04Z", "Error")],
    )
    tracker.on_event("MODIFIED", done)
    assert exits(tracker, "graceful") == 1
    assert exits(tracker, "sigkill") == 0
    assert histogram(tracker, "sum", "graceful") == 4.0
    assert histogram(tracker, "count", "graceful") == 1
    assert histogram(tracker, "bucket", "graceful", le="4.0") == 1
    assert histogram(tracker, "bucket", "graceful", le="3.5") == 0
    assert escalations(tracker) == 0


def test_sigkill_after_grace_counted_once():
    tracker = tracker_at()
    killed = make_pod(
        deletion="2024-05-01T12:00:30Z", deletion_grace=30,
        statuses=[terminated("worker", "c1", 137, "2024-05-01T12:00:30Z", "Error")],
    )
    tracker.on_event("MODIFIED", killed)
    tracker.on_event("MODIFIED", copy.deepcopy(killed))
    tracker.on_event("MODIFIED", copy.deepcopy(killed))
    tracker.on_snapshot([copy.deepcopy(killed)])
    assert exits(tracker, "sigkill") == 1
    assert escalations(tracker) == 1
    assert histogram(tracker, "sum", "sigkill") == 30.0
    final = copy.deepcopy(killed)
    final["metadata"]["deletionTimestamp"] = "2024-05-01T12:00:00Z"
    final["metadata"]["deletionGracePeriodSeconds"] = 0
    tracker.on_event("DELETED", final)
    assert exits(tracker, "sigkill") == 1
    assert escalations(tracker) == 1


def test_oomkilled_during_termination():
    tracker = tracker_at()
    tracker.on_event(
        "MODIFIED",
        make_pod(
            deletion="2024-05-01T12:00:30Z", deletion_grace=30,
            statuses=[terminated("worker", "c1", 137, "2024-05-01T12:00:06Z", "OOMKilled")],
        ),
    )
    assert exits(tracker, "oomkilled") == 1
    assert exits(tracker, "sigkill") == 0
    assert escalations(tracker) == 0


def test_finalizer_stuck_pod_overdue():
    clock = Clock("2024-05-01T12:02:15Z")
    tracker = tracker_at(clock)
    tracker.on_event(
        "MODIFIED",
        make_pod(
            deletion="2024-05-01T12:00:30Z", deletion_grace=30,
            finalizers=["example.com/cleanup"],
            statuses=[terminated("worker", "c1", 0, "2024-05-01T12:00:03Z", "Completed")],
        ),
    )
    assert value(tracker, "storm_pods_terminating", namespace="storm", workload=WORKER_KEY[1]) == 1
    overdue = "storm_pod_termination_overdue_seconds"
    assert value(tracker, overdue, namespace="storm", workload=WORKER_KEY[1], cause="finalizers") == 105.0
    assert value(tracker, overdue, namespace="storm", workload=WORKER_KEY[1], cause="containers_running") == 0
    assert value(tracker, overdue, namespace="storm", workload=WORKER_KEY[1], cause="not_reported") == 0
    clock.set("2024-05-01T12:03:00Z")
    assert value(tracker, overdue, namespace="storm", workload=WORKER_KEY[1], cause="finalizers") == 150.0


def test_prestop_used_most_of_grace():
    tracker = tracker_at()
    tracker.on_event(
        "MODIFIED",
        make_pod(
            deletion="2024-05-01T12:00:30Z", deletion_grace=30,
            statuses=[terminated("worker", "c1", 143, "2024-05-01T12:00:28Z", "Error")],
        ),
    )
    assert exits(tracker, "graceful") == 1
    assert escalations(tracker) == 0
    assert histogram(tracker, "sum", "graceful") == pytest.approx(28.0)


def test_init_sidecar_counted_by_name():
    tracker = tracker_at()
    pod = make_pod(
        deletion="2024-05-01T12:00:30Z", deletion_grace=30,
        statuses=[terminated("worker", "c1", 143, "2024-05-01T12:00:05Z", "Error")],
        init_statuses=[terminated("log-shipper", "s1", 0, "2024-05-01T12:00:06Z", "Completed")],
    )
    tracker.on_event("MODIFIED", pod)
    assert exits(tracker, "graceful", container="log-shipper") == 1
    assert exits(tracker, "graceful", container="worker") == 1
    assert histogram(tracker, "sum", "graceful", container="log-shipper") == 6.0
    assert tracker.container_name_of(UID, "s1") == "log-shipper"
    assert tracker.container_name_of(UID, "c1") == "worker"
    assert tracker.container_name_of(UID, "containerd://c1") is None
    assert tracker.pod_of(UID) == ("storm", "storm-worker-7d9f8b6c5-abcde", "deployment/storm-worker")


def test_workload_labels_by_owner():
    tracker = tracker_at()
    tracker.on_event("ADDED", make_pod())
    tracker.on_event(
        "ADDED", make_pod(uid="u-sts", name="storm-supervisor-0", owner=STATEFULSET, labels=None)
    )
    tracker.on_event("ADDED", make_pod(uid="u-bare", name="nimbus", owner=None, labels=None))
    grace = "storm_pod_grace_period_seconds"
    assert value(tracker, grace, namespace="storm", workload="deployment/storm-worker") == 30
    assert value(tracker, grace, namespace="storm", workload="statefulset/storm-supervisor") == 30
    assert value(tracker, grace, namespace="storm", workload="pod/nimbus") == 30
    assert value(tracker, "storm_pods_terminating", namespace="storm", workload="pod/nimbus") == 0
    assert exits(tracker, "graceful", key=("storm", "pod/nimbus")) == 0


def test_restart_skips_earlier_exits():
    tracker = PodTracker(Clock(), "node-1", utc("2024-05-01T12:00:10Z"))
    before = make_pod(
        deletion="2024-05-01T12:00:30Z", deletion_grace=30,
        statuses=[
            terminated("worker", "c1", 143, "2024-05-01T12:00:04Z", "Error"),
            running("metrics", "m1"),
        ],
    )
    tracker.on_snapshot([before])
    assert exits(tracker, "graceful") == 0
    after = copy.deepcopy(before)
    after["status"]["containerStatuses"][1] = terminated(
        "metrics", "m1", 137, "2024-05-01T12:00:30Z", "Error"
    )
    tracker.on_event("MODIFIED", after)
    assert exits(tracker, "graceful") == 0
    assert exits(tracker, "sigkill", container="metrics") == 1
    assert escalations(tracker, container="metrics") == 1


def test_deleted_grace_zero_keeps_grace():
    tracker = tracker_at()
    pod = make_pod(
        deletion="2024-05-01T12:00:30Z", deletion_grace=30, spec_grace=0,
        statuses=[running("worker", "c1")],
    )
    tracker.on_event("MODIFIED", pod)
    final = make_pod(
        deletion="2024-05-01T12:00:00Z", deletion_grace=0, spec_grace=0,
        statuses=[terminated("worker", "c1", 137, "2024-05-01T12:00:30Z", "Error")],
    )
    tracker.on_event("DELETED", final)
    assert tracker.pods == {}
    assert exits(tracker, "sigkill") == 1
    assert escalations(tracker) == 1


def test_grace_gauge_remembered_across_events():
    tracker = tracker_at()
    tracker.on_event("MODIFIED", make_pod(deletion="2024-05-01T12:00:30Z", deletion_grace=30))
    zero = make_pod(deletion="2024-05-01T12:00:00Z", deletion_grace=0, spec_grace=0)
    tracker.on_event("MODIFIED", zero)
    assert tracker.pods[UID].grace == 30
    grace = "storm_pod_grace_period_seconds"
    assert value(tracker, grace, namespace="storm", workload=WORKER_KEY[1]) == 30


def test_retention_expires_deleted_pod_series():
    clock = Clock()
    tracker = tracker_at(clock, retention=3600)
    pod = make_pod(
        deletion="2024-05-01T12:00:30Z", deletion_grace=30,
        statuses=[terminated("worker", "c1", 143, "2024-05-01T12:00:04Z", "Error")],
    )
    tracker.on_event("DELETED", pod)
    assert exits(tracker, "graceful") == 1
    assert tracker.termination_start_of(UID) is None
    clock.now += timedelta(seconds=3599)
    assert exits(tracker, "graceful") == 1
    clock.now += timedelta(seconds=2)
    names = [key for key in samples(tracker) if ("workload", WORKER_KEY[1]) in key[1]]
    assert names == []
    replacement = make_pod(uid=NEW_UID, name="storm-worker-7d9f8b6c5-abcde")
    tracker.on_event("ADDED", replacement)
    assert exits(tracker, "graceful") == 0
    assert tracker.pod_of(NEW_UID) == ("storm", "storm-worker-7d9f8b6c5-abcde", "deployment/storm-worker")
    assert tracker.pod_of(UID) is None


def test_snapshot_drops_missing_pods():
    clock = Clock()
    tracker = tracker_at(clock, retention=60)
    tracker.on_event("ADDED", make_pod(uid="u-bare", name="nimbus", owner=None, labels=None))
    tracker.on_event("ADDED", make_pod())
    tracker.on_snapshot([make_pod()])
    assert tracker.pod_of("u-bare") is None
    clock.now += timedelta(seconds=61)
    names = [key for key in samples(tracker) if ("workload", "pod/nimbus") in key[1]]
    assert names == []
    assert value(tracker, "storm_pods_terminating", namespace="storm", workload=WORKER_KEY[1]) == 0


def test_max_workloads_overflow():
    tracker = tracker_at(max_workloads=2)
    for index in range(4):
        tracker.on_event(
            "MODIFIED",
            make_pod(
                uid=f"u{index}", name=f"bare-{index}", owner=None, labels=None,
                deletion="2024-05-01T12:00:30Z", deletion_grace=30,
                statuses=[terminated("worker", f"c{index}", 0, "2024-05-01T12:00:02Z", "Completed")],
            ),
        )
    terminating = "storm_pods_terminating"
    assert value(tracker, terminating, namespace="storm", workload="pod/bare-0") == 1
    assert value(tracker, terminating, namespace="storm", workload="pod/bare-1") == 1
    assert value(tracker, terminating, namespace="storm", workload="pod/bare-2") is None
    assert value(tracker, terminating, namespace="storm", workload="_other") == 2
    assert exits(tracker, "graceful", key=("storm", "_other")) == 2
    assert tracker.overflowed == 2


@pytest.mark.parametrize(
    "pod",
    [
        None,
        "not a pod",
        {},
        {"metadata": None, "spec": None, "status": None},
        {"metadata": {"uid": UID}},
        {"metadata": {"uid": UID, "name": None, "namespace": None, "ownerReferences": None}},
        {
            "metadata": {"uid": UID, "deletionTimestamp": "garbage", "deletionGracePeriodSeconds": "30"},
            "spec": {"containers": None, "initContainers": [None, {"name": None}]},
            "status": {"containerStatuses": [None, {"name": "w", "state": None, "lastState": None}]},
        },
        {
            "metadata": {"uid": UID, "deletionTimestamp": "2024-05-01T12:00:30Z",
                         "deletionGracePeriodSeconds": 30, "finalizers": None},
            "status": {"containerStatuses": [
                {"name": "w", "state": {"terminated": {"exitCode": None, "finishedAt": None}}},
                {"name": "x", "state": {"terminated": {"exitCode": 137,
                                                       "reason": "ContainerStatusUnknown"}}},
            ]},
        },
    ],
)
def test_malformed_pods_never_raise(pod):
    tracker = tracker_at()
    for kind in ("ADDED", "MODIFIED", "BOOKMARK", "DELETED"):
        tracker.on_event(kind, pod)
    tracker.on_snapshot([pod])
    tracker.on_snapshot(None)
    assert isinstance(tracker.families(), list)
    assert tracker.termination_start_of(UID) is None


def test_unknown_exit_without_times_counted():
    tracker = tracker_at()
    pod = make_pod(deletion="2024-05-01T12:00:30Z", deletion_grace=30)
    pod["status"]["containerStatuses"] = [
        {"name": "worker", "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown"}}}
    ]
    tracker.on_event("MODIFIED", pod)
    tracker.on_event("DELETED", copy.deepcopy(pod))
    assert exits(tracker, "unknown") == 1
    assert escalations(tracker) == 0


def test_kernel_exit_time_replaces_whole_seconds():
    start = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    kernel = {"ab" * 32: (start + timedelta(seconds=3.42), 143 << 8)}
    tracker = PodTracker(lambda: start + timedelta(seconds=10), "node-a", start - timedelta(hours=1),
                         kernel_exits=kernel.get)
    tracker.on_snapshot([])
    pod = _kernel_pod(start, "ab" * 32, finished=start + timedelta(seconds=3))
    tracker.on_event("MODIFIED", pod)
    (histogram,) = tracker.durations.values()
    assert histogram.total == pytest.approx(3.42)


def _kernel_pod(start, container_hex, finished):
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "metadata": {"uid": "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6", "name": "storm-supervisor-0",
                     "namespace": "storm", "deletionTimestamp": (start + timedelta(seconds=30)).strftime(stamp),
                     "deletionGracePeriodSeconds": 30,
                     "ownerReferences": [{"kind": "StatefulSet", "name": "storm-supervisor", "controller": True}]},
        "spec": {"nodeName": "node-a", "containers": [{"name": "supervisor"}]},
        "status": {"containerStatuses": [{
            "name": "supervisor", "containerID": f"containerd://{container_hex}",
            "state": {"terminated": {"exitCode": 143, "reason": "Error", "finishedAt": finished.strftime(stamp),
                                     "containerID": f"containerd://{container_hex}"}}}]},
    }


def test_kernel_status_decides_outcome():
    start = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    kernel = {"ef" * 32: (start + timedelta(seconds=29.6), 9)}  # killed by SIGKILL
    tracker = PodTracker(lambda: start + timedelta(seconds=40), "node-a", start - timedelta(hours=1),
                         kernel_exits=kernel.get)
    pod = _kernel_pod(start, "ef" * 32, finished=start + timedelta(seconds=30))
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = 137
    tracker.on_event("MODIFIED", pod)
    key = ("storm", "statefulset/storm-supervisor", "supervisor", "sigkill")
    assert tracker.exits[key] == 1
    assert tracker.durations[key].total == pytest.approx(29.6)
    assert tracker.escalations[("storm", "statefulset/storm-supervisor", "supervisor")] == 1


def test_duration_histograms_start_at_zero():
    tracker = tracker_at()
    tracker.on_event("ADDED", make_pod(statuses=[running("worker", "c1")]))
    for outcome in ("graceful", "sigkill"):
        assert histogram(tracker, "count", outcome) == 0
        assert histogram(tracker, "bucket", outcome, le="+Inf") == 0
    assert histogram(tracker, "count", "oomkilled") is None
