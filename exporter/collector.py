"""Metric families built from the tracker's state at scrape time."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.cgroup import PodCgroup
from exporter.exposition import SampleCache
from exporter.labels import bound_length
from exporter.outcome import OUTCOMES
from exporter.tracker import DURATION_BUCKETS, TRIGGERS, Histogram, Tracker

STATES = ("running", "terminating")
_EMPTY_HISTOGRAM = Histogram()  # shared by every histogram without observations; never changed
UNRESOLVED = ("", "", "", "")


class StormCollector(Collector):
    """Yield the storm_worker_* families and the exporter's own state.

    Everything is read under ``lock``, the lock the sources hold while they
    update the tracker, so one scrape reads one consistent state.
    """

    def __init__(
        self,
        tracker: Tracker,
        lock: threading.Lock,
        sources: Iterable[str] = (),
        resolve_pod: Callable[[PodCgroup], tuple[str, str, str, str]] | None = None,
    ):
        self.tracker = tracker
        self.lock = lock
        # Maps a worker's cgroup to (namespace, pod, container, workload) once pods are known.
        self.resolve_pod = resolve_pod or (lambda cgroup: UNRESOLVED)
        self.sources: list[str] = list(sources)
        self.source_errors: defaultdict[str, int] = defaultdict(int)
        self.event_errors = 0
        # Most series keep their value from one scrape to the next; their Sample
        # objects are reused, so that exposition.Encoder reuses their lines.
        self.cache = SampleCache()

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        with self.lock:
            self.cache.begin()
            now = self.tracker.clock()
            yield from self._worker_families(now)
            yield from self._episode_families()
            yield from self._exporter_families()

    def _worker_families(self, now: float) -> Iterator:
        tracker = self.tracker
        workers = GaugeMetricFamily(
            "storm_workers", "Live Storm worker JVMs on this node.", labels=["topology", "state"]
        )
        info = GaugeMetricFamily(
            "storm_worker_info",
            "One series per live worker JVM; namespace, pod, container and workload are "
            "empty until the worker's pod is known.",
            labels=["topology", "worker_id", "port", "uid", "namespace", "pod", "container", "workload"],
        )
        pending = GaugeMetricFamily(
            "storm_worker_termination_pending_seconds",
            "Age of the oldest termination request whose worker is still alive; 0 when none.",
            labels=["topology"],
        )
        leftovers = GaugeMetricFamily(
            "storm_worker_leftover_processes",
            "Processes of a worker's tree still alive after the leftover grace since the "
            "worker exited.",
            labels=["topology"],
        )
        labels = [label for label in tracker.labels.last_active]
        counts = {(label, state): 0 for label in labels for state in STATES}
        oldest = {label: 0.0 for label in labels}
        seen_info: set[tuple[str, ...]] = set()
        info_series: list[tuple[tuple[str, ...], int]] = []
        for worker in tracker.live_workers():
            state = "terminating" if worker.request_time is not None else "running"
            counts[(worker.label, state)] = counts.get((worker.label, state), 0) + 1
            if worker.request_time is not None:
                age = max(0.0, now - worker.request_time)
                oldest[worker.label] = max(oldest.get(worker.label, 0.0), age)
            namespace, pod, container, workload = (
                self.resolve_pod(worker.cgroup) if worker.cgroup is not None else UNRESOLVED
            )
            values = (
                worker.label,
                bound_length(worker.worker_id),
                "" if worker.port is None else str(worker.port),
                "" if worker.uid is None else str(worker.uid),
                namespace,
                pod,
                container,
                workload,
            )
            # Workers whose argv lacks the ids would repeat a series: emit it once.
            if values not in seen_info:
                seen_info.add(values)
                info_series.append((values, 1))
        self.cache.add_all(info, info_series)
        self.cache.add_all(workers, sorted(counts.items()))
        self.cache.add_all(pending, [((label,), age) for label, age in sorted(oldest.items())])
        alive = tracker.leftover_counts()
        self.cache.add_all(
            leftovers, [((label,), alive.get(label, 0)) for label in sorted(set(labels) | set(alive))]
        )
        yield from (workers, info, pending, leftovers)

    def _episode_families(self) -> Iterator:
        # Counters start at 0 for every exported topology, so that the first
        # increment is visible to rate() and increase().
        tracker = self.tracker
        labels = list(tracker.labels.last_active)
        exits = {(label, result): 0 for label in labels for result in OUTCOMES}
        exits.update(tracker.exits)
        escalations = {(label,): 0 for label in labels}
        escalations.update({(k,): v for k, v in tracker.escalations.items()})
        detected = {(label,): 0 for label in labels}
        detected.update({(k,): v for k, v in tracker.leftovers_detected.items()})
        yield self._counter(
            "storm_worker_exits",
            "Worker JVM exits by outcome: graceful, halted (exit 20 from Storm's shutdown "
            "watchdog), sigkill, crashed (no request) or unknown.",
            ["topology", "outcome"],
            exits,
        )
        yield self._counter(
            "storm_worker_sigkill_escalations",
            "Requested worker terminations that ended by SIGKILL.",
            ["topology"],
            escalations,
        )
        yield self._counter(
            "storm_worker_leftover_processes_detected",
            "Leftover processes found: alive after the leftover grace since their worker exited.",
            ["topology"],
            detected,
        )
        yield self._counter(
            "storm_worker_signals",
            "Signals generated for processes of worker trees, by signal and sender class.",
            ["topology", "signal", "sender"],
            tracker.signals,
        )
        yield self._counter(
            "storm_worker_kill_commands",
            "kill and worker-launcher commands aimed at a worker JVM or its LogWriter.",
            ["topology", "signal"],
            tracker.kill_commands,
        )
        failures = {(label, name): 0 for label in labels for name in ("SIGTERM", "SIGKILL")}
        failures.update(tracker.kill_failures)
        yield self._counter(
            "storm_worker_kill_failures",
            "kill and worker-launcher commands aimed at a worker JVM or its LogWriter that "
            "exited non-zero, so the signal was not sent (netlink).",
            ["topology", "signal"],
            failures,
        )
        requests = {(label, trigger): 0 for label in labels for trigger in TRIGGERS}
        requests.update(tracker.termination_requests)
        yield self._counter(
            "storm_worker_termination_requests",
            "Requested worker terminations by where the request came from: the supervisor "
            "(its kill commands or signals), the pod's deletion, or other senders.",
            ["topology", "trigger"],
            requests,
        )
        durations = HistogramMetricFamily(
            "storm_worker_shutdown_duration_seconds",
            "Time from a worker's termination request to its JVM's exit.",
            labels=["topology", "outcome"],
        )
        # Histograms start at 0 too, with the outcomes the active sources can tell apart.
        timed = ("graceful", "halted", "sigkill") if tracker.exits_known or tracker.signals_visible else ("unknown",)
        histograms = {(label, result): _EMPTY_HISTOGRAM for label in labels for result in timed}
        histograms.update(tracker.durations)
        self.cache.add_histograms(durations, sorted(histograms.items()), _buckets)
        yield durations

    def _counter(self, name: str, documentation: str, labels: list[str], values: dict) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation, labels=labels)
        self.cache.add_all(family, sorted(values.items()))
        return family

    def _exporter_families(self) -> Iterator:
        tracker = self.tracker
        yield InfoMetricFamily(
            "storm_termination_exporter_build",
            "Version of the exporter.",
            value={"version": __version__},
        )
        active = GaugeMetricFamily(
            "storm_termination_exporter_event_source_info",
            "Event sources in use; 1 per active source.",
            labels=["source"],
        )
        for source in self.sources:
            active.add_metric([source], 1)
        yield active
        lost = {(source,): 0 for source in self.sources if source != "poll"}
        lost.update({(k,): v for k, v in tracker.events_lost.items()})
        yield self._counter(
            "storm_termination_exporter_events_lost",
            "Events known to be lost: reported by the kernel, or found missing by a full scan.",
            ["source"],
            lost,
        )
        source_errors = {(source,): 0 for source in self.sources}
        source_errors.update({(k,): v for k, v in self.source_errors.items()})
        yield self._counter(
            "storm_termination_exporter_event_source_errors",
            "Failures of an event source after it started; the exporter fell back.",
            ["source"],
            source_errors,
        )
        event_errors = CounterMetricFamily(
            "storm_termination_exporter_event_errors",
            "Events whose processing raised an error; the event was skipped.",
        )
        event_errors.add_metric([], self.event_errors)
        yield event_errors
        overflow = CounterMetricFamily(
            "storm_termination_exporter_topology_overflow",
            "Workers whose topology label became _other because --topology.max topologies "
            "were already exported.",
        )
        overflow.add_metric([], tracker.labels.overflowed)
        yield overflow
        processes = GaugeMetricFamily(
            "storm_termination_exporter_processes",
            "Live processes in the exporter's process table.",
        )
        processes.add_metric([], len(tracker.table))
        yield processes


def _buckets(histogram: Histogram) -> list[tuple[str, int]]:
    buckets, cumulative = [], 0
    for bound, count in zip(DURATION_BUCKETS + (float("inf"),), histogram.counts):
        cumulative += count
        buckets.append((_bound(bound), cumulative))
    return buckets


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))
