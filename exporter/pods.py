"""Termination facts from Kubernetes Pod and Event objects.

Every function takes the plain dicts that the API server returns as JSON.
Missing, null or wrongly typed fields make a function return None or an empty
list instead of raising. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from exporter.outcome import signal_name, split_status

GRACEFUL = "graceful"
SIGKILL = "sigkill"
OOMKILLED = "oomkilled"
ERROR = "error"
UNKNOWN = "unknown"
CONTAINER_OUTCOMES = (GRACEFUL, SIGKILL, OOMKILLED, ERROR, UNKNOWN)

# Grace period the API server applies when the pod spec leaves it out.
DEFAULT_GRACE_SECONDS = 30

# API timestamps have one-second resolution, and the API server and kubelet
# clocks differ, so a SIGKILL this close to the grace period still counts.
ESCALATION_TOLERANCE_SECONDS = 1.0

# A JVM that ran its shutdown hooks after SIGTERM exits with 128 + 15.
GRACEFUL_EXIT_CODES = frozenset({0, 143})
SIGKILL_EXIT_CODE = 137

OVERDUE_FINALIZERS = "finalizers"
OVERDUE_CONTAINERS_RUNNING = "containers_running"
OVERDUE_NOT_REPORTED = "not_reported"

KILLING = "Killing"
FAILED_KILL_POD = "FailedKillPod"
EXCEEDED_GRACE_PERIOD = "ExceededGracePeriod"
KILL_EVENT_REASONS = frozenset({KILLING, FAILED_KILL_POD, EXCEEDED_GRACE_PERIOD})


@dataclass(frozen=True)
class ContainerExit:
    """One terminated container of a pod, as its status reports it."""

    name: str
    init: bool
    exit_code: int
    reason: str | None
    runtime: str | None
    container_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str
    # Seconds from the termination start to finishedAt, or None when the pod
    # was not being deleted or the status carries no finish time.
    duration: float | None
    escalation: bool
    # True when the exit came from lastState because the container restarted.
    from_last_state: bool

    @property
    def killed_by(self) -> str | None:
        """Name of the signal that the exit code 128 + N implies, such as ``SIGKILL``."""
        if 128 < self.exit_code < 128 + 65:
            return signal_name(self.exit_code - 128)
        return None


@dataclass(frozen=True)
class KillFailure:
    """One failed kubelet operation listed in a FailedKillPod message."""

    operation: str
    target: str
    reason: str
    grpc_code: str | None
    detail: str


@dataclass(frozen=True)
class KillEvent:
    """A kubelet Event about stopping a pod or one of its containers."""

    reason: str
    namespace: str | None
    pod_name: str | None
    pod_uid: str | None
    container: str | None
    runtime: str | None
    container_id: str | None
    failures: tuple[KillFailure, ...]
    grace_override: int | None
    runtime_kill_timeout: bool
    node: str
    time: datetime | None
    count: int

    @property
    def failure_reasons(self) -> tuple[str, ...]:
        """Reasons of the failed operations, one entry per failure."""
        return tuple(failure.reason for failure in self.failures)


def parse_time(text: Any) -> datetime | None:
    """Parse an RFC 3339 timestamp such as ``2019-01-23T19:27:12Z`` into an aware datetime."""
    if not isinstance(text, str) or not text:
        return None
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            return None
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def termination_start(pod: Any) -> datetime | None:
    """Return the deletion request time, deletionTimestamp minus deletionGracePeriodSeconds.

    The API server sets deletionTimestamp to request time plus grace, and a
    shorter later delete moves both by the same amount, so the difference
    stays the same across the MODIFIED and the final grace-0 DELETED event.
    Returns None unless both fields are present and valid.
    """
    metadata = _dict(_dict(pod).get("metadata"))
    deletion = parse_time(metadata.get("deletionTimestamp"))
    grace = _seconds(metadata.get("deletionGracePeriodSeconds"))
    if deletion is None or grace is None:
        return None
    try:
        return deletion - timedelta(seconds=grace)
    except OverflowError:
        return None


def grace_period(pod: Any, previous: int | None = None) -> int | None:
    """Return the pod's grace period in seconds, preferring a non-zero value.

    The order is metadata.deletionGracePeriodSeconds, then ``previous`` (the
    value seen on an earlier event of the same pod), then
    spec.terminationGracePeriodSeconds. The final DELETED event carries grace
    0, so a non-zero value from any of these wins. Returns 0 only when every
    present value is 0, the default 30 when all are absent, and None when
    ``pod`` is not an object.
    """
    if not isinstance(pod, dict):
        return None
    candidates = [
        _seconds(_dict(pod.get("metadata")).get("deletionGracePeriodSeconds")),
        _seconds(previous),
        _seconds(_dict(pod.get("spec")).get("terminationGracePeriodSeconds")),
    ]
    for value in candidates:
        if value:
            return value
    if any(value == 0 for value in candidates):
        return 0
    return DEFAULT_GRACE_SECONDS


def workload(pod: Any) -> str:
    """Return ``<kind>/<name>`` of the pod's controller, or ``pod/<name>`` for a bare pod.

    A ReplicaSet name that ends in ``-<pod-template-hash label>`` was created
    by a Deployment, so it is written as ``deployment/<name without the hash>``.
    The pod does not record the ReplicaSet's own owner, so that label is the
    only evidence.
    """
    metadata = _dict(_dict(pod).get("metadata"))
    pod_name = _text(metadata.get("name")) or ""
    controller = _controller_reference(metadata)
    if controller is None:
        return f"pod/{pod_name}"
    kind, name = controller
    if kind == "replicaset":
        template_hash = _text(_dict(metadata.get("labels")).get("pod-template-hash"))
        suffix = f"-{template_hash}"
        if template_hash and name.endswith(suffix) and len(name) > len(suffix):
            return f"deployment/{name[: -len(suffix)]}"
    return f"{kind}/{name}"


def has_pre_stop(pod: Any, container: str) -> bool | None:
    """Return whether the named container of the pod spec has a lifecycle.preStop hook.

    None when the spec has no container of that name. The kubelet runs the hook
    before it sends the container's PID 1 SIGTERM.
    """
    for spec in _list(_dict(_dict(pod).get("spec")).get("containers")):
        spec = _dict(spec)
        if _text(spec.get("name")) == container:
            return bool(_dict(_dict(spec.get("lifecycle")).get("preStop")))
    return None


def container_exits(
    pod: Any, start: datetime | None, *, grace: int | None = None
) -> list[ContainerExit]:
    """List the containers whose termination belongs to the deletion that began at ``start``.

    A container counts when its state.terminated finished at or after
    ``start``. When the container restarted and its state is waiting or
    running, lastState.terminated is used under the same rule. An exit with
    no finish time, such as the kubelet's ContainerStatusUnknown placeholder
    for a container lost during deletion, is included with no duration.
    ``grace`` defaults to grace_period(pod) and decides the escalation.
    Returns [] when ``start`` is None, and unrequested_exits covers that case.
    A naive ``start`` is taken as UTC.
    """
    if not isinstance(start, datetime):
        return []
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    grace = _seconds(grace)
    if grace is None:
        grace = grace_period(pod)
    exits = []
    for exit_ in _all_exits(pod, start, grace):
        if exit_.finished_at is None or exit_.finished_at >= start:
            exits.append(exit_)
    return exits


def unrequested_exits(pod: Any) -> list[ContainerExit]:
    """List the container exits that no deletion requested, with no duration and no escalation.

    Without a deletion request these are all exits from state.terminated and
    lastState.terminated, such as an OOM kill. With one, they are the exits
    that finished before the request. The same exit appears on every later
    event of the pod, so callers deduplicate by container_id.
    """
    start = termination_start(pod)
    exits = []
    for exit_ in _all_exits(pod, None, None):
        if start is None:
            exits.append(exit_)
        elif exit_.finished_at is not None and exit_.finished_at < start:
            exits.append(exit_)
    return exits


def overdue(pod: Any, now: datetime) -> tuple[str, float] | None:
    """Return why a pod still exists past its deletionTimestamp, with the seconds past it.

    The cause is ``finalizers`` when metadata.finalizers is non-empty and no
    container runs, ``containers_running`` when some container still runs,
    and ``not_reported`` otherwise: the kubelet has reported no running or
    terminated container, or reported all terminated but has not deleted the
    pod. A naive ``now`` is taken as UTC.
    """
    if not isinstance(now, datetime):
        return None
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    pod = _dict(pod)
    metadata = _dict(pod.get("metadata"))
    deletion = parse_time(metadata.get("deletionTimestamp"))
    if deletion is None or now <= deletion:
        return None
    seconds = (now - deletion).total_seconds()
    statuses = [status for status, _ in _container_statuses(pod)]
    running = any("running" in _dict(status.get("state")) for status in statuses)
    finalizers = _list(metadata.get("finalizers"))
    if finalizers and not running:
        return OVERDUE_FINALIZERS, seconds
    if running:
        return OVERDUE_CONTAINERS_RUNNING, seconds
    return OVERDUE_NOT_REPORTED, seconds


def split_container_id(text: Any) -> tuple[str | None, str | None]:
    """Split ``containerd://<id>`` into the runtime and the id; either may be None."""
    value = _text(text)
    if not value:
        return None, None
    runtime, separator, identifier = value.partition("://")
    if not separator:
        return None, value
    return runtime or None, identifier or None


def _all_exits(pod: Any, start: datetime | None, grace: int | None) -> list[ContainerExit]:
    exits = []
    for status, init in _container_statuses(pod):
        name = _text(status.get("name"))
        if not name:
            continue
        state = _dict(status.get("state"))
        terminated = state.get("terminated")
        from_last_state = False
        if not isinstance(terminated, dict):
            terminated = _dict(status.get("lastState")).get("terminated")
            from_last_state = True
        if not isinstance(terminated, dict):
            continue
        exit_ = _terminated_exit(name, init, terminated, from_last_state, start, grace)
        if exit_ is not None:
            exits.append(exit_)
    return exits


def _terminated_exit(
    name: str,
    init: bool,
    terminated: dict,
    from_last_state: bool,
    start: datetime | None,
    grace: int | None,
) -> ContainerExit | None:
    exit_code = terminated.get("exitCode")
    if not isinstance(exit_code, int) or isinstance(exit_code, bool):
        return None
    reason = _text(terminated.get("reason"))
    started_at = _real_time(terminated.get("startedAt"))
    finished_at = _real_time(terminated.get("finishedAt"))
    outcome = _classify(exit_code, reason, started_at is None and finished_at is None)
    duration = None
    if start is not None and finished_at is not None and finished_at >= start:
        duration = (finished_at - start).total_seconds()
    escalation = (
        outcome == SIGKILL
        and duration is not None
        and grace is not None
        and duration >= grace - ESCALATION_TOLERANCE_SECONDS
    )
    runtime, container_id = split_container_id(terminated.get("containerID"))
    return ContainerExit(
        name=name,
        init=init,
        exit_code=exit_code,
        reason=reason,
        runtime=runtime,
        container_id=container_id,
        started_at=started_at,
        finished_at=finished_at,
        outcome=outcome,
        duration=duration,
        escalation=escalation,
        from_last_state=from_last_state,
    )


def with_kernel_exit(exit_: ContainerExit, duration: float, status: int | None, grace: int | None) -> ContainerExit:
    """Return ``exit_`` with the duration, and the exit code from the wait ``status``,
    that the kernel reported for the container's main process."""
    exit_code = exit_.exit_code
    if status is not None:
        code, killed_by = split_status(status)
        # Runtimes report a signal death as 128 + the signal, as shells do.
        exit_code = code if killed_by is None else 128 + killed_by
    outcome = _classify(exit_code, exit_.reason, False)
    limit = (grace if grace is not None else DEFAULT_GRACE_SECONDS) - ESCALATION_TOLERANCE_SECONDS
    return replace(
        exit_, exit_code=exit_code, outcome=outcome, duration=duration,
        escalation=outcome == SIGKILL and duration >= limit,
    )


def _classify(exit_code: int, reason: str | None, no_timestamps: bool) -> str:
    # The reason is ignored for 0 and 143 because the runtime's OOM counter is
    # cumulative and can label a later SIGTERM exit as OOMKilled.
    if exit_code in GRACEFUL_EXIT_CODES:
        return GRACEFUL
    if exit_code == SIGKILL_EXIT_CODE:
        if reason == "OOMKilled":
            return OOMKILLED
        # The kubelet writes this placeholder when it cannot find the
        # container, so no signal was necessarily sent.
        if reason == "ContainerStatusUnknown" and no_timestamps:
            return UNKNOWN
        return SIGKILL
    return ERROR


def _container_statuses(pod: Any) -> list[tuple[dict, bool]]:
    status = _dict(_dict(pod).get("status"))
    statuses = []
    for key, init in (("initContainerStatuses", True), ("containerStatuses", False)):
        for entry in _list(status.get(key)):
            if isinstance(entry, dict):
                statuses.append((entry, init))
    return statuses


def _controller_reference(metadata: dict) -> tuple[str, str] | None:
    for reference in _list(metadata.get("ownerReferences")):
        reference = _dict(reference)
        if reference.get("controller") is not True:
            continue
        kind = _text(reference.get("kind"))
        name = _text(reference.get("name"))
        if kind and name:
            return kind.lower(), name
    return None


def _real_time(value: Any) -> datetime | None:
    # Go's zero time (0001-01-01) means "not set", and an epoch-zero time is
    # treated the same way.
    parsed = parse_time(value)
    if parsed is None or parsed.year <= 1970:
        return None
    return parsed


def _seconds(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


_STOPPING_CONTAINER = re.compile(r"^Stopping container (\S+)")
_FIELD_PATH_CONTAINER = re.compile(
    r"^spec\.(?:containers|initContainers|ephemeralContainers)\{([^}]+)\}$"
)
# Container id wordings of older kubelets: 'Killing container with id
# docker://<id>:<reason>', 'Killing container "docker://<id>" with ...' and
# 'Killing container {"docker" "<id>"}, but using ...'.
_CONTAINER_ID_FORMS = (
    re.compile(r"Killing container with id ([\w.-]+)://([^:\s\"]+)"),
    re.compile(r"Killing container \"([\w.-]+)://([^\"]+)\""),
    re.compile(r"Killing container \{\"([\w.-]+)\" \"([^\"]+)\"\}"),
)
_GRACE_OVERRIDE = re.compile(r"using (\d+) second grace period override")
# One entry of 'error killing pod: [failed to "<op>" for "<target>" with
# <reason>: "<detail>", ...]'. The detail may contain escaped quotes.
_KILL_FAILURE = re.compile(
    r'failed to "(\w+)" for "([^"]*)" with (\w+): "((?:[^"\\]|\\.)*)"'
)
_GRPC_CODE = re.compile(r"rpc error: code = (\w+)")


def parse_kill_event(event: Any, node: str) -> KillEvent | None:
    """Parse a core/v1 kubelet Event about killing a pod, or return None.

    Only the reasons Killing, FailedKillPod and ExceededGracePeriod count, and
    only when source.host equals ``node``, because every kubelet's events are
    visible cluster-wide. FailedKillPod lists each failed operation, so one
    event can carry several failure reasons. ExceededGracePeriod means the
    runtime did not stop the pod within the grace period.
    """
    # NOTE: only the core/v1 shape is read. An events.k8s.io/v1 object keeps
    # the same facts in regarding, note and deprecatedSource and returns None.
    event = _dict(event)
    reason = _text(event.get("reason"))
    if reason not in KILL_EVENT_REASONS:
        return None
    source_host = _text(_dict(event.get("source")).get("host"))
    if not node or source_host != node:
        return None
    involved = _dict(event.get("involvedObject"))
    kind = _text(involved.get("kind"))
    if kind is not None and kind != "Pod":
        return None
    message = _text(event.get("message")) or ""

    failures = _kill_failures(message) if reason == FAILED_KILL_POD else ()
    container = _event_container(message, involved, failures)
    runtime, container_id = _event_container_id(message)
    return KillEvent(
        reason=reason,
        namespace=_text(involved.get("namespace")),
        pod_name=_text(involved.get("name")),
        pod_uid=_event_pod_uid(involved, failures),
        container=container,
        runtime=runtime,
        container_id=container_id,
        failures=failures,
        grace_override=_grace_override(message),
        runtime_kill_timeout=reason == EXCEEDED_GRACE_PERIOD,
        node=source_host,
        time=_event_time(event),
        count=_event_count(event),
    )


def _kill_failures(message: str) -> tuple[KillFailure, ...]:
    failures = []
    for match in _KILL_FAILURE.finditer(message):
        operation, target, reason, detail = match.groups()
        detail = detail.replace('\\"', '"')
        grpc = _GRPC_CODE.search(detail)
        failures.append(
            KillFailure(
                operation=operation,
                target=target,
                reason=reason,
                grpc_code=grpc.group(1) if grpc else None,
                detail=detail,
            )
        )
    return tuple(failures)


def _event_container(
    message: str, involved: dict, failures: tuple[KillFailure, ...]
) -> str | None:
    stopping = _STOPPING_CONTAINER.match(message)
    if stopping:
        return stopping.group(1)
    field_path = _FIELD_PATH_CONTAINER.match(_text(involved.get("fieldPath")) or "")
    if field_path:
        return field_path.group(1)
    for failure in failures:
        if failure.operation == "KillContainer" and failure.target:
            return failure.target
    return None


def _event_container_id(message: str) -> tuple[str | None, str | None]:
    for form in _CONTAINER_ID_FORMS:
        match = form.search(message)
        if match:
            return match.group(1), match.group(2)
    return None, None


def _event_pod_uid(involved: dict, failures: tuple[KillFailure, ...]) -> str | None:
    for failure in failures:
        if failure.operation == "KillPodSandbox" and failure.target:
            return failure.target
    return _text(involved.get("uid")) or None


def _grace_override(message: str) -> int | None:
    match = _GRACE_OVERRIDE.search(message)
    return int(match.group(1)) if match else None


def _event_time(event: dict) -> datetime | None:
    # Aggregated events move lastTimestamp; events.k8s.io writers set eventTime,
    # which has microseconds.
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        parsed = parse_time(event.get(key))
        if parsed is not None:
            return parsed
    return None


def _event_count(event: dict) -> int:
    count = event.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return 1
    return count
