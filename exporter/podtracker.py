"""Pod termination state of one node, kept from the pod watch and exported as metrics.

PodTracker consumes PodWatch's snapshots and events, counts each container
exit of a pod termination once, and builds the storm_pod_* metric families at
scrape time from the pods it holds.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from exporter import pods
from exporter.labels import OTHER, bound_length
from exporter.tracker import DURATION_BUCKETS, Histogram

logger = logging.getLogger(__name__)

DEFAULT_RETENTION_SECONDS = 24 * 3600.0
# A kernel exit time this close to finishedAt (whole seconds) is the same exit.
KERNEL_MATCH_SECONDS = 2.0
DEFAULT_MAX_WORKLOADS = 200
OVERDUE_CAUSES = (
    pods.OVERDUE_FINALIZERS,
    pods.OVERDUE_CONTAINERS_RUNNING,
    pods.OVERDUE_NOT_REPORTED,
)

# (namespace, workload) label values of a pod's series.
WorkloadKey = tuple[str, str]
# Container id, or the container name when the status has no id, and finishedAt.
ExitKey = tuple[str, datetime | None]


ZERO_DURATION_OUTCOMES = ("graceful", "sigkill")


@dataclass
class PodState:
    """Termination state of one live pod, keyed by metadata.uid."""

    uid: str
    namespace: str
    name: str
    key: WorkloadKey
    pod: dict
    grace: int | None = None
    start: datetime | None = None
    counted: set[ExitKey] = field(default_factory=set)
    container_names: dict[str, str] = field(default_factory=dict)


class PodTracker:
    """Consume pod snapshots and events of one node and yield the storm_pod_* families.

    Every public method takes the tracker's own lock, so PodWatch's thread and
    the scrape thread may call it concurrently. ``clock`` returns a
    timezone-aware UTC datetime. Exits that finished before ``started_at`` are
    not counted, so a restarted exporter does not count a termination twice.
    """

    def __init__(
        self,
        clock: Callable[[], datetime],
        node: str,
        started_at: datetime,
        *,
        retention: float = DEFAULT_RETENTION_SECONDS,
        max_workloads: int = DEFAULT_MAX_WORKLOADS,
        kernel_exits: Callable[[str], tuple[datetime, int | None] | None] | None = None,
    ) -> None:
        self.clock = clock
        # Kernel-reported exits of containers' main processes, by container id.
        self.kernel_exits = kernel_exits
        self.node = node
        self.started_at = started_at
        self.retention = retention
        self.max_workloads = max_workloads
        self.lock = threading.RLock()
        self.pods: dict[str, PodState] = {}
        # Admitted (namespace, workload) keys and when a pod of each was last seen.
        self.last_active: dict[WorkloadKey, datetime] = {}
        self.overflowed = 0  # pods whose workload label became _other
        # Container names of each workload's pod specs, so its counters start at 0.
        self.containers: defaultdict[WorkloadKey, set[str]] = defaultdict(set)
        self.exits: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        self.escalations: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.durations: defaultdict[tuple[str, str, str, str], Histogram] = defaultdict(Histogram)

    # PodWatch consumer interface.

    def on_snapshot(self, pod_list: list[dict]) -> None:
        """Replace the pod set with a full LIST result; pods missing from it count as deleted."""
        with self.lock:
            now = self.clock()
            seen: set[str] = set()
            for pod in pod_list if isinstance(pod_list, list) else ():
                state = self._update(pod, now)
                if state is not None:
                    seen.add(state.uid)
            for uid in [uid for uid in self.pods if uid not in seen]:
                self._remove(uid, now)
            self._expire(now)

    def on_event(self, kind: str, pod: dict) -> None:
        """Apply one ADDED, MODIFIED or DELETED watch event; other kinds are ignored."""
        with self.lock:
            now = self.clock()
            if kind in ("ADDED", "MODIFIED"):
                self._update(pod, now)
            elif kind == "DELETED":
                state = self._update(pod, now)
                if state is not None:
                    self._remove(state.uid, now)
            else:
                logger.debug("Ignored pod watch event of type %r", kind)
            self._expire(now)

    # Lookups for joining processes to pods.

    def termination_start_of(self, pod_uid: str) -> datetime | None:
        """Return when the deletion of a live pod was requested, or None."""
        with self.lock:
            state = self.pods.get(pod_uid)
            return None if state is None else state.start

    def pod_of(self, pod_uid: str) -> tuple[str, str, str] | None:
        """Return (namespace, name, workload label value) of a live pod, or None."""
        with self.lock:
            state = self.pods.get(pod_uid)
            return None if state is None else (state.namespace, state.name, state.key[1])

    def has_pre_stop(self, pod_uid: str, container_id: str) -> bool | None:
        """Return whether a live pod's container has a lifecycle.preStop hook, None when unknown."""
        name = self.container_name_of(pod_uid, container_id)
        if name is None:
            return None
        with self.lock:
            state = self.pods.get(pod_uid)
            if state is None:
                return None
            return pods.has_pre_stop(state.pod, name)

    def container_name_of(self, pod_uid: str, container_id: str) -> str | None:
        """Return the name of a live pod's container from its id without the runtime prefix."""
        with self.lock:
            state = self.pods.get(pod_uid)
            if state is None:
                return None
            return state.container_names.get(container_id)

    # Metric families.

    def families(self) -> list:
        """Build the storm_pod_* families from the current state, expiring idle workloads first."""
        with self.lock:
            now = self.clock()
            self._expire(now)
            return [
                *self._pod_gauges(now),
                self._duration_family(),
                *self._counter_families(),
            ]

    # State updates.

    def _update(self, pod: Any, now: datetime) -> PodState | None:
        if not isinstance(pod, dict):
            logger.debug("Ignored a pod that is not an object: %r", type(pod).__name__)
            return None
        metadata = _dict(pod.get("metadata"))
        uid = _text(metadata.get("uid"))
        if not uid:
            logger.debug("Ignored a pod without metadata.uid name=%r", metadata.get("name"))
            return None
        state = self.pods.get(uid)
        if state is None:
            namespace = _text(metadata.get("namespace")) or ""
            name = _text(metadata.get("name")) or ""
            key = self._admit(namespace, pods.workload(pod), now)
            state = PodState(uid=uid, namespace=namespace, name=name, key=key, pod=pod)
            self.pods[uid] = state
        state.pod = pod
        state.grace = pods.grace_period(pod, state.grace)
        # The final DELETED event may lack the deletion fields, so the
        # earlier start is kept.
        state.start = pods.termination_start(pod) or state.start
        state.container_names.update(_container_ids(pod))
        self.containers[state.key].update(_spec_containers(pod))
        self.last_active[state.key] = now
        self._count_exits(state)
        return state

    def _remove(self, uid: str, now: datetime) -> None:
        state = self.pods.pop(uid, None)
        if state is not None and state.key in self.last_active:
            self.last_active[state.key] = now

    def _count_exits(self, state: PodState) -> None:
        namespace, workload = state.key
        for exit_ in pods.container_exits(state.pod, state.start, grace=state.grace):
            exit_key = (exit_.container_id or exit_.name, exit_.finished_at)
            if exit_key in state.counted:
                continue
            state.counted.add(exit_key)
            if not self._after_start(exit_, state):
                continue
            exit_ = self._with_kernel_exit(exit_, state)
            container = bound_length(exit_.name)
            self.exits[(namespace, workload, container, exit_.outcome)] += 1
            if exit_.duration is not None:
                self.durations[(namespace, workload, container, exit_.outcome)].observe(exit_.duration)
            if exit_.escalation:
                self.escalations[(namespace, workload, container)] += 1
            logger.info(
                "Pod container exited during termination namespace=%s pod=%s container=%s "
                "outcome=%s exit_code=%d duration=%s",
                state.namespace, state.name, exit_.name, exit_.outcome, exit_.exit_code,
                "unknown" if exit_.duration is None else f"{exit_.duration:.3f}s",
            )

    def _with_kernel_exit(self, exit_: pods.ContainerExit, state: PodState) -> pods.ContainerExit:
        """Take the kernel's exit time and status of the container's main process.

        They replace finishedAt, which has whole seconds, and the reported exit
        code when the kernel's time lies within KERNEL_MATCH_SECONDS of finishedAt,
        so both describe the same exit.
        """
        if self.kernel_exits is None or exit_.container_id is None or state.start is None:
            return exit_
        seen = self.kernel_exits(exit_.container_id)
        if seen is None or exit_.finished_at is None:
            return exit_
        when, status = seen
        if abs((when - exit_.finished_at).total_seconds()) > KERNEL_MATCH_SECONDS:
            return exit_
        duration = max(0.0, (when - state.start).total_seconds())
        return pods.with_kernel_exit(exit_, duration, status, state.grace)

    def _after_start(self, exit_: pods.ContainerExit, state: PodState) -> bool:
        # API timestamps have whole seconds, so an exit in the exporter's first
        # second counts: finishedAt is compared with the start truncated likewise.
        started = self.started_at.replace(microsecond=0)
        if exit_.finished_at is not None:
            return exit_.finished_at >= started
        # NOTE: an exit without finishedAt, such as the ContainerStatusUnknown
        # placeholder, is counted only when the deletion was requested after
        # the exporter started, because its own time is unknown.
        return state.start is not None and state.start >= started

    # Label bounding and expiry.

    def _admit(self, namespace: str, workload: str, now: datetime) -> WorkloadKey:
        key = (bound_length(namespace), bound_length(workload))
        if key in self.last_active:
            return key
        admitted = [k for k in self.last_active if k[1] != OTHER]
        if len(admitted) < self.max_workloads:
            self.last_active[key] = now
            return key
        self.overflowed += 1
        if self.overflowed == 1 or self.overflowed % 1000 == 0:
            logger.warning(
                "More than %d workloads on node %s; namespace=%s workload=%s and later ones "
                "are exported as workload=%s (%d pods so far)",
                self.max_workloads, self.node, namespace, workload, OTHER, self.overflowed,
            )
        other = (key[0], OTHER)
        self.last_active.setdefault(other, now)
        return other

    def _expire(self, now: datetime) -> None:
        active = {state.key for state in self.pods.values()}
        limit = timedelta(seconds=self.retention)
        expired = [
            key for key, seen in self.last_active.items() if key not in active and now - seen > limit
        ]
        for key in expired:
            del self.last_active[key]
            self.containers.pop(key, None)
            for table in (self.exits, self.escalations, self.durations):
                for series in [s for s in table if s[:2] == key]:
                    del table[series]
            logger.info(
                "Expired pod series of namespace=%s workload=%s after the retention", *key
            )

    # Family builders.

    def _pod_gauges(self, now: datetime) -> list:
        keys = sorted(self.last_active)
        terminating = {key: 0 for key in keys}
        overdue = {(*key, cause): 0.0 for key in keys for cause in OVERDUE_CAUSES}
        grace: dict[WorkloadKey, int] = {}
        for state in self.pods.values():
            metadata = _dict(state.pod.get("metadata"))
            if metadata.get("deletionTimestamp") is not None:
                terminating[state.key] = terminating.get(state.key, 0) + 1
            late = pods.overdue(state.pod, now)
            if late is not None:
                cause, seconds = late
                series = (*state.key, cause)
                overdue[series] = max(overdue.get(series, 0.0), seconds)
            if state.grace is not None:
                grace[state.key] = max(grace.get(state.key, 0), state.grace)
        terminating_family = GaugeMetricFamily(
            "storm_pods_terminating",
            "Pods on this node with a deletionTimestamp.",
            labels=["namespace", "workload"],
        )
        for key, count in sorted(terminating.items()):
            terminating_family.add_metric(list(key), count)
        overdue_family = GaugeMetricFamily(
            "storm_pod_termination_overdue_seconds",
            "Seconds the oldest pod of the workload is past its deletionTimestamp, by cause; "
            "0 when none.",
            labels=["namespace", "workload", "cause"],
        )
        for series, seconds in sorted(overdue.items()):
            overdue_family.add_metric(list(series), seconds)
        grace_family = GaugeMetricFamily(
            "storm_pod_grace_period_seconds",
            "Largest termination grace period among the workload's live pods on this node.",
            labels=["namespace", "workload"],
        )
        for key, seconds in sorted(grace.items()):
            grace_family.add_metric(list(key), seconds)
        return [terminating_family, overdue_family, grace_family]

    def _duration_family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "storm_pod_container_shutdown_duration_seconds",
            "Time from a pod's deletion request to a container's finishedAt.",
            labels=["namespace", "workload", "container", "outcome"],
        )
        # The graceful and sigkill histograms of every known container start at 0,
        # so that rate() and increase() count a workload's first pod shutdown.
        histograms = {
            (*key, container, outcome): Histogram()
            for key, names in self.containers.items()
            for container in names
            for outcome in ZERO_DURATION_OUTCOMES
        }
        histograms.update(self.durations)
        for series, histogram in sorted(histograms.items()):
            buckets, cumulative = [], 0
            for bound, count in zip(DURATION_BUCKETS + (float("inf"),), histogram.counts):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            family.add_metric(list(series), buckets, histogram.total)
        return family

    def _counter_families(self) -> list:
        # Counters start at 0 for every container of the pod specs and every
        # container seen exiting, so that the first increment of an outcome is
        # visible to rate() and increase().
        containers = {series[:3] for series in self.exits}
        for key in self.last_active:
            containers.update((*key, name) for name in self.containers.get(key, ()))
        exits = {(*c, outcome): 0 for c in containers for outcome in pods.CONTAINER_OUTCOMES}
        exits.update(self.exits)
        escalations = {c: 0 for c in containers}
        escalations.update(self.escalations)
        exits_family = CounterMetricFamily(
            "storm_pod_container_exits",
            "Container terminations during pod termination, by outcome.",
            labels=["namespace", "workload", "container", "outcome"],
        )
        for series, value in sorted(exits.items()):
            exits_family.add_metric(list(series), value)
        escalations_family = CounterMetricFamily(
            "storm_pod_sigkill_escalations",
            "Containers that the kubelet killed with SIGKILL after the grace period.",
            labels=["namespace", "workload", "container"],
        )
        for series, value in sorted(escalations.items()):
            escalations_family.add_metric(list(series), value)
        return [exits_family, escalations_family]


def _container_ids(pod: dict) -> dict[str, str]:
    """Map the container ids in a pod's status, without the runtime prefix, to container names."""
    names = {}
    status = _dict(pod.get("status"))
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for entry in _list(status.get(key)):
            entry = _dict(entry)
            name = _text(entry.get("name"))
            if not name:
                continue
            candidates = [entry.get("containerID")]
            for state_key in ("state", "lastState"):
                terminated = _dict(_dict(entry.get(state_key)).get("terminated"))
                candidates.append(terminated.get("containerID"))
            for text in candidates:
                _, container_id = pods.split_container_id(text)
                if container_id:
                    names[container_id] = name
    return names


def _spec_containers(pod: dict) -> set[str]:
    """Return the bounded names of the containers and init containers in a pod's spec."""
    spec = _dict(pod.get("spec"))
    names = set()
    for key in ("initContainers", "containers"):
        for entry in _list(spec.get(key)):
            name = _text(_dict(entry).get("name"))
            if name:
                names.add(bound_length(name))
    return names


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
