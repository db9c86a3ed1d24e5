"""Metric families of the latest diagnosis: why worker terminations will fail."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.cgroup import PodCgroup
from exporter.diagnostics import EMPTY, Diagnosis
from exporter.exposition import SampleCache
from exporter.sigstate import DISPOSITIONS

ROLES = ("logwriter", "worker")
USER_ROLES = ("worker", "supervisor")

# (namespace, pod, container, workload) of a cgroup once pods are known.
PodResolver = Callable[[PodCgroup], tuple[str, str, str, str]]


def unresolved(cgroup: PodCgroup) -> tuple[str, str, str, str]:
    return ("", "", "", "")


class DiagnosticsCollector(Collector):
    """Yield the diagnostic gauges from ``latest``, which the diagnosis thread replaces.

    Per-topology gauges start at 0 for every exported topology, like the
    tracker's counters, so a finding shows as a change rather than a new series.
    """

    def __init__(self, resolve_pod: PodResolver | None = None) -> None:
        self.resolve_pod: PodResolver = resolve_pod or unresolved
        # Unchanged samples are reused, see exposition.Encoder. One cache serves the
        # families built when a diagnosis is set, the other the init family built
        # at each scrape, so that the two threads never share one.
        self._cache = SampleCache()
        self._init_cache = SampleCache()
        self._state: tuple[Diagnosis, list] = (EMPTY, self._build(EMPTY))

    @property
    def latest(self) -> Diagnosis:
        return self._state[0]

    @latest.setter
    def latest(self, diagnosis: Diagnosis) -> None:
        """Replace the diagnosis and build its families on the calling thread, not at scrape time."""
        self._state = (diagnosis, self._build(diagnosis))

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        diagnosis, families = self._state
        yield from families[:-1]
        yield self._init_family(diagnosis)  # pod names resolve as the pod watch learns them
        yield families[-1]

    def _build(self, diagnosis: Diagnosis) -> list:
        self._cache.begin()
        return [*self._worker_families(diagnosis), self._port_family(diagnosis)]

    def _port_family(self, diagnosis: Diagnosis) -> GaugeMetricFamily:
        ports = GaugeMetricFamily(
            "storm_worker_port_conflicts",
            "Processes claiming a worker port on this node where it is claimed by two live "
            "worker JVMs of one network namespace or held in LISTEN by a leftover process.",
            labels=["port"],
        )
        self._cache.add_all(ports, [((str(port),), count) for port, count in sorted(diagnosis.port_conflicts.items())])
        return ports

    def _worker_families(self, diagnosis: Diagnosis) -> Iterator:
        labels = set(diagnosis.labels) | {report.snapshot.label for report in diagnosis.workers}
        dispositions = {(label, role, value): 0 for label in labels for role in ROLES for value in DISPOSITIONS}
        denied = {label: 0 for label in labels}
        unresolvable = {(label, role): 0 for label in labels for role in USER_ROLES}
        unsafe = {label: 0 for label in labels}
        supervisors: defaultdict[str, set[int]] = defaultdict(set)
        for report in diagnosis.workers:
            label = report.snapshot.label
            for process in (report.worker, report.logwriter):
                if process is not None and process.disposition is not None:
                    dispositions[(label, process.role, process.disposition)] += 1
            if report.signal_permitted is False:
                denied[label] += 1
            if report.worker.user_known is False:
                unresolvable[(label, "worker")] += 1
            supervisor = report.supervisor
            if supervisor is not None and supervisor.user_known is False:
                supervisors[label].add(supervisor.pid)
            if report.pod_stop_unsafe:
                unsafe[label] += 1
        for label, pids in supervisors.items():
            unresolvable[(label, "supervisor")] = len(pids)

        family = GaugeMetricFamily(
            "storm_worker_sigterm_disposition",
            "Live worker JVMs and LogWriters by their SIGTERM disposition: handled, ignored, "
            "blocked (in every thread) or default.",
            labels=["topology", "role", "disposition"],
        )
        self._cache.add_all(family, sorted(dispositions.items()))
        yield family
        family = GaugeMetricFamily(
            "storm_worker_signal_permission_denied",
            "Live workers that their supervisor may not signal under the kill(2) rules "
            "(no matching UID and no CAP_KILL).",
            labels=["topology"],
        )
        self._cache.add_all(family, [((label,), value) for label, value in sorted(denied.items())])
        yield family
        family = GaugeMetricFamily(
            "storm_worker_user_unresolvable",
            "Live workers, and the supervisors of live workers, whose UID has no entry in "
            "/etc/passwd of their own root.",
            labels=["topology", "role"],
        )
        self._cache.add_all(family, sorted(unresolvable.items()))
        yield family
        family = GaugeMetricFamily(
            "storm_worker_pod_stop_unsafe",
            "Live workers whose PID namespace's init is the supervisor or a shell in front of "
            "it and whose container has no preStop hook, so a pod deletion SIGKILLs them "
            "without a SIGTERM.",
            labels=["topology"],
        )
        self._cache.add_all(family, [((label,), value) for label, value in sorted(unsafe.items())])
        yield family

    def _init_family(self, diagnosis: Diagnosis) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "storm_container_init_drops_sigterm",
            "1 per live container running Storm workers whose PID 1 will not pass SIGTERM on: "
            "it does not handle SIGTERM, or it is a shell that did not exec.",
            labels=["namespace", "pod", "container", "reason"],
        )
        self._init_cache.begin()
        counts: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        for init in diagnosis.inits:
            if init.reason is None:
                continue
            namespace, pod, container, _ = (
                self.resolve_pod(init.cgroup) if init.cgroup is not None else unresolved(init.cgroup)
            )
            # Containers whose pod is not known share the empty label values.
            counts[(namespace, pod, container, init.reason)] += 1
        self._init_cache.add_all(family, sorted(counts.items()))
        return family
