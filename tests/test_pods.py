"""Tests for the pod termination model in exporter.pods."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from exporter import pods

FIXTURES = Path(__file__).parent / "fixtures" / "pods"


def load(name: str):
    return json.loads((FIXTURES / name).read_text())


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def make_pod(
    *,
    deletion: str | None = None,
    deletion_grace: int | None = None,
    spec_grace: int | None = 30,
    statuses: list | None = None,
    init_statuses: list | None = None,
    finalizers: list | None = None,
    owner: dict | None = None,
    labels: dict | None = None,
    name: str = "worker-0",
) -> dict:
    metadata: dict = {"name": name, "namespace": "storm", "uid": "0f5c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"}
    if deletion is not None:
        metadata["deletionTimestamp"] = deletion
    if deletion_grace is not None:
        metadata["deletionGracePeriodSeconds"] = deletion_grace
    if finalizers is not None:
        metadata["finalizers"] = finalizers
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    if labels is not None:
        metadata["labels"] = labels
    spec: dict = {"containers": [{"name": "worker"}]}
    if spec_grace is not None:
        spec["terminationGracePeriodSeconds"] = spec_grace
    status: dict = {"phase": "Running"}
    if statuses is not None:
        status["containerStatuses"] = statuses
    if init_statuses is not None:
        status["initContainerStatuses"] = init_statuses
    return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": spec, "status": status}


def terminated(
    name: str,
    exit_code: int,
    reason: str | None,
    finished: str | None,
    started: str | None = "2024-05-01T10:00:00Z",
    container_id: str | None = "containerd://4b1d0e6f9a2c",
) -> dict:
    state: dict = {"exitCode": exit_code}
    if reason is not None:
        state["reason"] = reason
    if started is not None:
        state["startedAt"] = started
    if finished is not None:
        state["finishedAt"] = finished
    if container_id is not None:
        state["containerID"] = container_id
    return {"name": name, "state": {"terminated": state}, "lastState": {}}


def running(name: str) -> dict:
    return {"name": name, "state": {"running": {"startedAt": "2024-05-01T10:00:00Z"}}, "lastState": {}}


# Deletion requested at 10:05:00 with a 30 s grace period.
DELETION = "2024-05-01T10:05:30Z"
REQUEST = utc("2024-05-01T10:05:00Z")


def deleted_pod(*statuses: dict, grace: int = 30) -> dict:
    deadline = (REQUEST + timedelta(seconds=grace)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return make_pod(deletion=deadline, deletion_grace=grace, statuses=list(statuses))


# --- deleted pod whose container exits at once -------------------------------


def test_clean_exit_start_and_grace():
    pod = load("deleted-clean-exit.json")
    assert pod["metadata"]["uid"] == "c6090dfe-1f44-11e9-902b-062291b3f7b2"
    assert pods.termination_start(pod) == utc("2019-01-23T19:27:12Z")
    assert pods.grace_period(pod) == 30


def test_clean_exit_container_facts():
    pod = load("deleted-clean-exit.json")
    exits = pods.container_exits(pod, pods.termination_start(pod))
    assert len(exits) == 1
    exit_ = exits[0]
    assert exit_.name == "pl1"
    assert exit_.init is False
    assert exit_.runtime == "docker"
    assert exit_.container_id == "3663f3d62f74a232344bd94e7b8a5f6a815201a52de3a24b4623b6c469321b2d"
    assert exit_.exit_code == 0
    assert exit_.reason == "Completed"
    assert exit_.outcome == pods.GRACEFUL
    assert exit_.duration == 0.0
    assert exit_.escalation is False
    assert exit_.killed_by is None
    assert pods.unrequested_exits(pod) == []


def test_clean_exit_ignores_ready_condition():
    # The Ready=False transition comes one second after finishedAt, and the
    # duration must still be 0.
    pod = load("deleted-clean-exit.json")
    ready = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"][0]
    assert ready["lastTransitionTime"] == "2019-01-23T19:27:13Z"
    exits = pods.container_exits(pod, pods.termination_start(pod))
    assert exits[0].duration == 0.0


# --- watch events with grace 30 and then grace 0 ------------------------------


def test_start_same_for_modified_and_deleted():
    events = load("watch-grace-zero.json")["events"]
    modified = events[1]["object"]
    deleted = events[2]["object"]
    assert events[1]["type"] == "MODIFIED"
    assert events[2]["type"] == "DELETED"
    assert modified["metadata"]["uid"] == "d42b0bb2-dc4e-11e5-8c79-42010af00003"
    expected = utc("2016-02-26T06:05:46Z")
    assert pods.termination_start(modified) == expected
    assert pods.termination_start(deleted) == expected
    assert pods.termination_start(events[0]["object"]) is None


def test_grace_never_zero_after_nonzero():
    events = load("watch-grace-zero.json")["events"]
    modified = events[1]["object"]
    deleted = events[2]["object"]
    assert pods.grace_period(modified) == 30
    assert pods.grace_period(deleted) == 30
    assert pods.grace_period(deleted, previous=30) == 30

    without_spec = copy.deepcopy(deleted)
    del without_spec["spec"]["terminationGracePeriodSeconds"]
    assert pods.grace_period(without_spec, previous=45) == 45
    assert pods.grace_period(without_spec) == 0


def test_container_never_ran_no_exits():
    events = load("watch-grace-zero.json")["events"]
    for event in events:
        pod = event["object"]
        assert pods.container_exits(pod, pods.termination_start(pod)) == []
        assert pods.unrequested_exits(pod) == []


# --- exit 137 without a deletion ------------------------------------------------


def test_oom_without_deletion_unrequested():
    pod = load("exit137-without-deletion.json")["a_cgroup_oom"]
    assert pod["metadata"]["uid"] == "00bf7d11-259b-11e8-8f72-02638d829128"
    assert pods.termination_start(pod) is None
    assert pods.container_exits(pod, None) == []
    exits = pods.unrequested_exits(pod)
    assert len(exits) == 1
    exit_ = exits[0]
    assert exit_.container_id == "f2b58032f7b01d687cf42cd9ebbdb2a11dc85078f3f64477fc8baada9052b2bc"
    assert exit_.reason == "OOMKilled"
    assert exit_.outcome == pods.OOMKILLED
    assert exit_.duration is None
    assert exit_.escalation is False


def test_system_oom_error_is_sigkill():
    pod = load("exit137-without-deletion.json")["b_system_oom"]
    assert pods.termination_start(pod) is None
    exits = pods.unrequested_exits(pod)
    assert len(exits) == 1
    exit_ = exits[0]
    assert exit_.name == "memcached"
    assert exit_.from_last_state is True
    assert exit_.exit_code == 137
    assert exit_.reason == "Error"
    assert exit_.killed_by == "SIGKILL"
    assert exit_.outcome == pods.SIGKILL
    assert exit_.duration is None
    assert exit_.escalation is False


def test_exit_before_deletion_is_unrequested():
    status = terminated("worker", 137, "OOMKilled", "2024-05-01T10:04:00Z")
    pod = deleted_pod(status)
    assert pods.container_exits(pod, REQUEST) == []
    unrequested = pods.unrequested_exits(pod)
    assert [exit_.outcome for exit_ in unrequested] == [pods.OOMKILLED]


# --- outcomes and escalation during a deletion ---------------------------------


def test_sigkill_after_grace_is_escalation():
    pod = deleted_pod(terminated("worker", 137, "Error", "2024-05-01T10:05:30Z"))
    exits = pods.container_exits(pod, REQUEST)
    assert len(exits) == 1
    assert exits[0].outcome == pods.SIGKILL
    assert exits[0].duration == 30.0
    assert exits[0].escalation is True


def test_sigkill_within_tolerance_is_escalation():
    pod = deleted_pod(terminated("worker", 137, "Error", "2024-05-01T10:05:29Z"))
    exits = pods.container_exits(pod, REQUEST)
    assert exits[0].duration == 29.0
    assert exits[0].escalation is True


def test_early_sigkill_not_escalation():
    # An eviction with a 0 second grace override kills at once while the pod
    # object still shows its 30 s grace period.
    pod = deleted_pod(terminated("worker", 137, "Error", "2024-05-01T10:05:01Z"))
    exits = pods.container_exits(pod, REQUEST)
    assert exits[0].outcome == pods.SIGKILL
    assert exits[0].duration == 1.0
    assert exits[0].escalation is False


def test_grace_argument_overrides_pod():
    pod = deleted_pod(terminated("worker", 137, "Error", "2024-05-01T10:05:10Z"))
    assert pods.container_exits(pod, REQUEST)[0].escalation is False
    assert pods.container_exits(pod, REQUEST, grace=10)[0].escalation is True


@pytest.mark.parametrize(
    ("exit_code", "reason", "outcome"),
    [
        (0, "Completed", pods.GRACEFUL),
        (143, "Error", pods.GRACEFUL),
        (143, "OOMKilled", pods.GRACEFUL),
        (137, "Error", pods.SIGKILL),
        (137, "OOMKilled", pods.OOMKILLED),
        (1, "Error", pods.ERROR),
        (20, "Error", pods.ERROR),
        (130, None, pods.ERROR),
    ],
)
def test_outcome_by_exit_code(exit_code, reason, outcome):
    pod = deleted_pod(terminated("worker", exit_code, reason, "2024-05-01T10:05:30Z"))
    exits = pods.container_exits(pod, REQUEST)
    assert exits[0].outcome == outcome
    assert exits[0].escalation is (outcome == pods.SIGKILL)


def test_status_unknown_placeholder():
    status = terminated(
        "worker", 137, "ContainerStatusUnknown", None, started=None, container_id=None
    )
    status["state"]["terminated"]["message"] = (
        "The container could not be located when the pod was terminated"
    )
    pod = deleted_pod(status)
    exits = pods.container_exits(pod, REQUEST)
    assert len(exits) == 1
    assert exits[0].outcome == pods.UNKNOWN
    assert exits[0].duration is None
    assert exits[0].escalation is False
    assert exits[0].container_id is None
    assert pods.unrequested_exits(pod) == []


def test_status_unknown_zero_time_placeholder():
    status = terminated(
        "worker", 137, "ContainerStatusUnknown", "0001-01-01T00:00:00Z", started=None
    )
    exits = pods.container_exits(deleted_pod(status), REQUEST)
    assert exits[0].outcome == pods.UNKNOWN
    assert exits[0].finished_at is None


def test_status_unknown_with_times_is_sigkill():
    status = terminated("worker", 137, "ContainerStatusUnknown", "2024-05-01T10:05:30Z")
    exits = pods.container_exits(deleted_pod(status), REQUEST)
    assert exits[0].outcome == pods.SIGKILL


def test_sidecar_init_container_exit():
    pod = deleted_pod(terminated("worker", 143, "Error", "2024-05-01T10:05:04Z"))
    pod["status"]["initContainerStatuses"] = [
        terminated("log-shipper", 0, "Completed", "2024-05-01T10:05:06Z", container_id="cri-o://9e8d7c"),
        terminated("setup", 0, "Completed", "2024-05-01T10:00:05Z"),
    ]
    exits = pods.container_exits(pod, REQUEST)
    by_name = {exit_.name: exit_ for exit_ in exits}
    assert set(by_name) == {"log-shipper", "worker"}
    assert by_name["log-shipper"].init is True
    assert by_name["log-shipper"].runtime == "cri-o"
    assert by_name["log-shipper"].container_id == "9e8d7c"
    assert by_name["log-shipper"].duration == 6.0
    assert by_name["worker"].init is False
    assert by_name["worker"].duration == 4.0
    assert [exit_.name for exit_ in pods.unrequested_exits(pod)] == ["setup"]


def test_last_state_after_restart():
    status = running("worker")
    status["lastState"] = terminated("worker", 143, "Error", "2024-05-01T10:05:03Z")["state"]
    exits = pods.container_exits(deleted_pod(status), REQUEST)
    assert len(exits) == 1
    assert exits[0].from_last_state is True
    assert exits[0].duration == 3.0


def test_odd_start_and_grace_arguments():
    pod = deleted_pod(terminated("worker", 137, "Error", "2024-05-01T10:05:30Z"))
    assert pods.container_exits(pod, "2024-05-01T10:05:00Z") == []
    naive = pods.container_exits(pod, datetime(2024, 5, 1, 10, 5, 0))
    assert naive[0].duration == 30.0
    assert naive[0].escalation is True
    odd_grace = pods.container_exits(pod, REQUEST, grace="30")
    assert odd_grace[0].escalation is True


def test_running_container_no_exit():
    assert pods.container_exits(deleted_pod(running("worker")), REQUEST) == []


# --- workload names -----------------------------------------------------------


def owner(kind: str, name: str, controller: bool | None = True) -> dict:
    reference = {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "5d6e7f80-1a2b-4c3d-9e8f-a0b1c2d3e4f5"}
    if controller is not None:
        reference["controller"] = controller
    return reference


@pytest.mark.parametrize(
    ("reference", "labels", "expected"),
    [
        (owner("ReplicaSet", "nimbus-7d4b9c8f6d"), {"pod-template-hash": "7d4b9c8f6d"}, "deployment/nimbus"),
        (owner("ReplicaSet", "nimbus-7d4b9c8f6d"), {}, "replicaset/nimbus-7d4b9c8f6d"),
        (owner("ReplicaSet", "nimbus-7d4b9c8f6d"), {"pod-template-hash": "2756073162"}, "replicaset/nimbus-7d4b9c8f6d"),
        (owner("StatefulSet", "supervisor"), None, "statefulset/supervisor"),
        (owner("DaemonSet", "storm-termination-exporter"), None, "daemonset/storm-termination-exporter"),
        (owner("Job", "topology-submit"), None, "job/topology-submit"),
        (owner("StatefulSet", "supervisor", controller=False), None, "pod/worker-0"),
        (owner("StatefulSet", "supervisor", controller=None), None, "pod/worker-0"),
        (None, None, "pod/worker-0"),
    ],
)
def test_workload_names(reference, labels, expected):
    pod = make_pod(owner=reference, labels=labels)
    assert pods.workload(pod) == expected


def test_workload_bare_pod_from_fixture():
    assert pods.workload(load("deleted-clean-exit.json")) == "pod/pl1-6c9b4c75b6-952tg"


# --- pods past their deletionTimestamp -----------------------------------------

NOW = utc("2024-05-01T10:06:30Z")


def test_overdue_finalizers():
    pod = deleted_pod(terminated("worker", 0, "Completed", "2024-05-01T10:05:02Z"))
    pod["metadata"]["finalizers"] = ["example.com/cleanup"]
    assert pods.overdue(pod, NOW) == (pods.OVERDUE_FINALIZERS, 60.0)


def test_overdue_finalizers_without_statuses():
    pod = deleted_pod()
    pod["metadata"]["finalizers"] = ["example.com/cleanup"]
    assert pods.overdue(pod, NOW) == (pods.OVERDUE_FINALIZERS, 60.0)


def test_overdue_containers_running():
    pod = deleted_pod(running("worker"))
    assert pods.overdue(pod, NOW) == (pods.OVERDUE_CONTAINERS_RUNNING, 60.0)
    pod["metadata"]["finalizers"] = ["example.com/cleanup"]
    assert pods.overdue(pod, NOW) == (pods.OVERDUE_CONTAINERS_RUNNING, 60.0)


def test_overdue_running_init_sidecar():
    pod = deleted_pod(terminated("worker", 0, "Completed", "2024-05-01T10:05:02Z"))
    pod["status"]["initContainerStatuses"] = [running("log-shipper")]
    assert pods.overdue(pod, NOW) == (pods.OVERDUE_CONTAINERS_RUNNING, 60.0)


def test_overdue_not_reported():
    waiting = {"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pods.overdue(deleted_pod(), NOW) == (pods.OVERDUE_NOT_REPORTED, 60.0)
    assert pods.overdue(deleted_pod(waiting), NOW) == (pods.OVERDUE_NOT_REPORTED, 60.0)


def test_overdue_before_deadline():
    pod = deleted_pod(running("worker"))
    assert pods.overdue(pod, utc("2024-05-01T10:05:20Z")) is None
    assert pods.overdue(pod, utc("2024-05-01T10:05:30Z")) is None
    assert pods.overdue(make_pod(statuses=[running("worker")]), NOW) is None


def test_overdue_naive_now_is_utc():
    pod = deleted_pod(running("worker"))
    assert pods.overdue(pod, datetime(2024, 5, 1, 10, 6, 30)) == (pods.OVERDUE_CONTAINERS_RUNNING, 60.0)
    assert pods.overdue(pod, "2024-05-01T10:06:30Z") is None


# --- kubelet events -----------------------------------------------------------


def kubelet_event(reason: str, message: str, pod_name: str, host: str = "node-d", **involved) -> dict:
    return {
        "kind": "Event",
        "apiVersion": "v1",
        "metadata": {"name": f"{pod_name}.17a0b1c2d3e4f5a6", "namespace": "kube-system"},
        "involvedObject": {"kind": "Pod", "namespace": "kube-system", "name": pod_name, **involved},
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": host},
        "firstTimestamp": "2024-05-01T10:05:00Z",
        "lastTimestamp": "2024-05-01T10:05:02Z",
        "count": 2,
        "type": "Normal" if reason == "Killing" else "Warning",
    }


COMPOSITE_FAILURE = (
    'error killing pod: [failed to "KillContainer" for "gpu-device-plugin" with KillContainerError: '
    '"rpc error: code = Unavailable desc = error reading from server: EOF", '
    'failed to "KillPodSandbox" for "d8a700cc-d3d1-4eb0-9809-d130acc6b3f7" with KillPodSandboxError: '
    '"rpc error: code = Unavailable desc = connection error: desc = \\"transport: Error while dialing: '
    'dial unix /run/containerd/containerd.sock: connect: connection refused\\""]'
)


def test_killing_stopping_container():
    event = kubelet_event("Killing", "Stopping container gpu-device-plugin", "gpu-device-plugin-daemonset-bfmqt")
    parsed = pods.parse_kill_event(event, "node-d")
    assert parsed is not None
    assert parsed.reason == pods.KILLING
    assert parsed.pod_name == "gpu-device-plugin-daemonset-bfmqt"
    assert parsed.container == "gpu-device-plugin"
    assert parsed.failures == ()
    assert parsed.time == utc("2024-05-01T10:05:02Z")
    assert parsed.count == 2


def test_failed_kill_pod_composite():
    event = kubelet_event("FailedKillPod", COMPOSITE_FAILURE, "gpu-device-plugin-daemonset-bfmqt")
    parsed = pods.parse_kill_event(event, "node-d")
    assert parsed is not None
    assert parsed.failure_reasons == ("KillContainerError", "KillPodSandboxError")
    assert parsed.pod_uid == "d8a700cc-d3d1-4eb0-9809-d130acc6b3f7"
    assert parsed.container == "gpu-device-plugin"
    assert parsed.failures[0].grpc_code == "Unavailable"
    assert parsed.failures[1].operation == "KillPodSandbox"
    assert parsed.failures[1].detail.endswith('connect: connection refused"')


def test_failed_kill_pod_single_sandbox():
    message = (
        'error killing pod: failed to "KillPodSandbox" for "536a0727-13e6-445b-8d29-3d445f18f419" '
        'with KillPodSandboxError: "rpc error: code = DeadlineExceeded desc = context deadline exceeded"'
    )
    parsed = pods.parse_kill_event(kubelet_event("FailedKillPod", message, "sandbox-pod"), "node-d")
    assert parsed is not None
    assert parsed.failure_reasons == ("KillPodSandboxError",)
    assert parsed.pod_uid == "536a0727-13e6-445b-8d29-3d445f18f419"
    assert parsed.failures[0].grpc_code == "DeadlineExceeded"
    assert parsed.container is None


def test_killing_event_object_field_path():
    event = load("killing-event.json")
    parsed = pods.parse_kill_event(event, "node-d")
    assert parsed is not None
    assert parsed.reason == pods.KILLING
    assert parsed.pod_uid == "f60d3b37-9704-4142-8dc7-430a4725ecfe"
    assert parsed.container == "ctrl-bro"
    assert parsed.namespace == "ro-deploy"
    assert parsed.count == 1


def test_container_from_field_path_only():
    event = load("killing-event.json")
    event["message"] = "Container ctrl-bro failed liveness probe, will be restarted"
    parsed = pods.parse_kill_event(event, "node-d")
    assert parsed is not None
    assert parsed.container == "ctrl-bro"


def test_event_other_node_ignored():
    event = load("killing-event.json")
    assert pods.parse_kill_event(event, "node-e") is None
    event["source"] = {"component": "kubelet"}
    assert pods.parse_kill_event(event, "node-d") is None


def test_killing_legacy_container_id():
    message = "Killing container with id docker://xxx:Need to kill Pod"
    parsed = pods.parse_kill_event(kubelet_event("Killing", message, "legacy-pod"), "node-d")
    assert parsed is not None
    assert parsed.reason == pods.KILLING
    assert parsed.runtime == "docker"
    assert parsed.container_id == "xxx"


def test_grace_override_zero():
    container_id = "9a4c58c575f7656066711faf414e1e4834d9d5013d19656279f36b57f2cf4029"
    message = f'Killing container {{"docker" "{container_id}"}}, but using 0 second grace period override'
    parsed = pods.parse_kill_event(kubelet_event("Killing", message, "evicted-pod"), "node-d")
    assert parsed is not None
    assert parsed.grace_override == 0
    assert parsed.runtime == "docker"
    assert parsed.container_id == container_id


def test_quoted_container_id_no_override():
    container_id = "9a4c58c575f7656066711faf414e1e4834d9d5013d19656279f36b57f2cf4029"
    message = f'Killing container "docker://{container_id}" with 30 second grace period'
    parsed = pods.parse_kill_event(kubelet_event("Killing", message, "evicted-pod"), "node-d")
    assert parsed is not None
    assert parsed.container_id == container_id
    assert parsed.grace_override is None


def test_exceeded_grace_period():
    message = "Container runtime did not kill the pod within specified grace period."
    parsed = pods.parse_kill_event(kubelet_event("ExceededGracePeriod", message, "evicted-pod"), "node-d")
    assert parsed is not None
    assert parsed.runtime_kill_timeout is True
    killing = pods.parse_kill_event(kubelet_event("Killing", "Stopping container worker", "evicted-pod"), "node-d")
    assert killing.runtime_kill_timeout is False


def test_other_event_reasons_ignored():
    for reason in ("SuccessfulDelete", "Pulled", "FailedPreStopHook", None):
        assert pods.parse_kill_event(kubelet_event(reason, "Stopping container worker", "p"), "node-d") is None
    event = kubelet_event("Killing", "Stopping container worker", "p")
    event["involvedObject"]["kind"] = "Node"
    assert pods.parse_kill_event(event, "node-d") is None


# --- malformed input ----------------------------------------------------------

MALFORMED_PODS = [
    None,
    "pod",
    42,
    [],
    {},
    {"metadata": None, "spec": None, "status": None},
    {"metadata": "x", "spec": [], "status": 7},
    {"metadata": {"deletionTimestamp": None, "deletionGracePeriodSeconds": None}},
    {"metadata": {"deletionTimestamp": "yesterday", "deletionGracePeriodSeconds": "30"}},
    {"metadata": {"deletionTimestamp": 1714557930, "deletionGracePeriodSeconds": True}},
    {"metadata": {"deletionTimestamp": DELETION, "deletionGracePeriodSeconds": -5}},
    {"metadata": {"deletionTimestamp": "0001-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30}},
    {"metadata": {"deletionTimestamp": DELETION, "deletionGracePeriodSeconds": 10**20}},
    {"metadata": {"deletionTimestamp": "0001-01-01T00:00:00+01:00", "deletionGracePeriodSeconds": 0}},
    {"metadata": {"ownerReferences": [None, "x", {"controller": True}, {"controller": True, "kind": 3}]}},
    {"metadata": {"ownerReferences": {"kind": "ReplicaSet"}, "labels": None, "finalizers": "x"}},
    {"status": {"containerStatuses": None, "initContainerStatuses": "none"}},
    {"status": {"containerStatuses": [None, 3, "x", {}, {"name": None, "state": None}]}},
    {"status": {"containerStatuses": [{"name": "w", "state": {"terminated": None}, "lastState": None}]}},
    {"status": {"containerStatuses": [{"name": "w", "state": {"terminated": {"exitCode": "137"}}}]}},
    {"status": {"containerStatuses": [{"name": "w", "state": {"terminated": {"exitCode": None, "finishedAt": DELETION}}}]}},
    {"status": {"containerStatuses": [{"name": "w", "state": {"terminated": {"exitCode": True}}}]}},
    {
        "metadata": {"deletionTimestamp": DELETION, "deletionGracePeriodSeconds": 30, "unknownField": {"a": 1}},
        "status": {"containerStatuses": [{"name": "w", "state": {"terminated": {
            "exitCode": 137, "reason": 5, "finishedAt": "not a time", "startedAt": [], "containerID": 9,
        }}}]},
    },
]


@pytest.mark.parametrize("pod", MALFORMED_PODS)
def test_malformed_pod_never_raises(pod):
    start = pods.termination_start(pod)
    assert start is None or start.tzinfo is not None
    grace = pods.grace_period(pod)
    assert grace is None or grace >= 0
    assert isinstance(pods.workload(pod), str)
    assert isinstance(pods.container_exits(pod, REQUEST), list)
    assert isinstance(pods.container_exits(pod, start), list)
    assert isinstance(pods.unrequested_exits(pod), list)
    result = pods.overdue(pod, NOW)
    assert result is None or isinstance(result, tuple)


def test_malformed_exit_fields_defaults():
    pod = MALFORMED_PODS[-1]
    exits = pods.container_exits(pod, pods.termination_start(pod))
    assert len(exits) == 1
    assert exits[0].reason is None
    assert exits[0].container_id is None
    assert exits[0].duration is None
    assert exits[0].outcome == pods.SIGKILL
    assert exits[0].escalation is False


def test_malformed_grace_values():
    assert pods.grace_period(None) is None
    assert pods.grace_period({}) == 30
    assert pods.grace_period({"spec": {"terminationGracePeriodSeconds": None}}) == 30
    assert pods.grace_period({"spec": {"terminationGracePeriodSeconds": "60"}}) == 30
    assert pods.grace_period({"spec": {"terminationGracePeriodSeconds": 0}}) == 0
    assert pods.grace_period({"spec": {"terminationGracePeriodSeconds": 0}}, previous="x") == 0


MALFORMED_EVENTS = [
    None,
    "Killing",
    {},
    {"reason": "Killing"},
    {"reason": "Killing", "source": None, "involvedObject": None},
    {"reason": "Killing", "source": {"host": 5}},
    {"reason": ["Killing"], "source": {"host": "node-d"}},
]


@pytest.mark.parametrize("event", MALFORMED_EVENTS)
def test_malformed_event_never_raises(event):
    assert pods.parse_kill_event(event, "node-d") is None


def test_event_with_odd_fields():
    event = {
        "reason": "FailedKillPod",
        "source": {"host": "node-d"},
        "involvedObject": {"uid": 7, "fieldPath": None, "name": ["p"]},
        "message": None,
        "count": "3",
        "lastTimestamp": "later",
    }
    parsed = pods.parse_kill_event(event, "node-d")
    assert parsed is not None
    assert parsed.pod_uid is None
    assert parsed.pod_name is None
    assert parsed.failures == ()
    assert parsed.count == 1
    assert parsed.time is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-01-23T19:27:12Z", datetime(2019, 1, 23, 19, 27, 12, tzinfo=timezone.utc)),
        ("2023-01-20T13:26:08.331832Z", datetime(2023, 1, 20, 13, 26, 8, 331832, tzinfo=timezone.utc)),
        ("2023-01-20T13:26:08.331832373Z", datetime(2023, 1, 20, 13, 26, 8, 331832, tzinfo=timezone.utc)),
        ("2023-01-20T15:26:08+02:00", datetime(2023, 1, 20, 13, 26, 8, tzinfo=timezone.utc)),
        ("2023-01-20T13:26:08", None),
        ("0001-01-01T00:00:00+01:00", None),
        ("2023-13-40T13:26:08Z", None),
        ("", None),
        ("soon", None),
        (None, None),
        (1674221168, None),
    ],
)
def test_parse_time_values(text, expected):
    assert pods.parse_time(text) == expected


def test_split_container_id_forms():
    assert pods.split_container_id("containerd://abc123") == ("containerd", "abc123")
    assert pods.split_container_id("abc123") == (None, "abc123")
    assert pods.split_container_id("") == (None, None)
    assert pods.split_container_id(None) == (None, None)
