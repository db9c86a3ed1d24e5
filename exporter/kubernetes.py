"""The pod watch wired to the exporter: pod state, readiness, metrics and the pod join."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.cgroup import ContainerExits, PodCgroup
from exporter.config import Config
from exporter.kubewatch import RESTART_REASONS, PodWatch
from exporter.pods import termination_start
from exporter.podtracker import PodTracker

logger = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class PodWatcher(Collector):
    """A PodWatch feeding a PodTracker, exported as metric families.

    ``listed`` is set after the first LIST, which /readyz waits for.
    """

    def __init__(
        self,
        config: Config,
        on_termination: Callable[[str, datetime], None] = lambda uid, start: None,
        container_exits: ContainerExits | None = None,
    ) -> None:
        self.pods = PodTracker(
            utc_now, config.node_name, utc_now(),
            kernel_exits=container_exits.get if container_exits is not None else None,
        )
        self.listed = threading.Event()
        self.on_termination = on_termination
        self._terminating: set[str] = set()  # uids whose termination start was reported
        self.watch = PodWatch(
            self,
            node=config.node_name,
            kubeconfig=config.kubeconfig or None,
            label_selector=config.pod_selector,
        )

    # PodConsumer, called on the watch thread.

    def on_snapshot(self, pods: list[dict]) -> None:
        self.pods.on_snapshot(pods)
        for pod in pods:
            self._report_termination(pod)
        if not self.listed.is_set():
            logger.info("First pod list received node=%s pods=%d", self.watch.node, len(pods))
            self.listed.set()

    def on_event(self, kind: str, pod: dict) -> None:
        self.pods.on_event(kind, pod)
        self._report_termination(pod)

    def _report_termination(self, pod: dict) -> None:
        """Tell ``on_termination`` once per pod when its termination has started."""
        uid = (pod.get("metadata") or {}).get("uid") if isinstance(pod, dict) else None
        if not isinstance(uid, str) or uid in self._terminating:
            return
        start = termination_start(pod)
        if start is None:
            return
        self._terminating.add(uid)
        if len(self._terminating) > 100_000:
            self._terminating.clear()
        self.on_termination(uid, start)

    # Lifecycle.

    def start(self) -> None:
        self.watch.start()

    def stop(self) -> None:
        self.watch.stop()

    # The process-to-pod join.

    def resolve(self, cgroup: PodCgroup) -> tuple[str, str, str, str]:
        """Return (namespace, pod, container, workload) for a worker's cgroup, "" when unknown.

        The workload is the value of the storm_pod_* series' workload label.
        """
        pod = self.pods.pod_of(cgroup.pod_uid)
        if pod is None:
            return "", "", "", ""
        namespace, name, workload = pod
        container = ""
        if cgroup.container_id is not None:
            container = self.pods.container_name_of(cgroup.pod_uid, cgroup.container_id) or ""
        return namespace, name, container, workload

    def has_pre_stop(self, cgroup: PodCgroup) -> bool | None:
        """Return whether the worker's container has a preStop hook, None when unknown."""
        if cgroup.container_id is None:
            return None
        return self.pods.has_pre_stop(cgroup.pod_uid, cgroup.container_id)

    # Collector.

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        yield from self.pods.families()
        up = GaugeMetricFamily(
            "storm_termination_exporter_kubernetes_up", "1 while the pod watch is healthy."
        )
        up.add_metric([], 1 if self.watch.up else 0)
        yield up
        restarts = CounterMetricFamily(
            "storm_termination_exporter_kubernetes_watch_restarts",
            "Restarts of the pod watch: gone (410, re-listed), error, timeout (silent stream), "
            "closed (the server ended the stream).",
            labels=["reason"],
        )
        for reason in RESTART_REASONS:
            restarts.add_metric([reason], self.watch.restarts.get(reason, 0))
        yield restarts
