"""Exit-detection latency and shutdown-duration error, for every source and peer at once.

All servers of a Session watch the same worker trees. Each worker gets its own
topology, so that process-exporter's group of that topology contains exactly its
LogWriter and worker. Workers start in batches of BATCH; once every server shows
the whole batch, the workers are stopped REQUEST_SPACING apart by ``kill -15
PID`` commands, as Storm's supervisor stops them, and each exits
SHUTDOWN_DELAY_MS later from its "SIGTERM handler" thread.

Ground truth comes from kernel_truth.KernelTimes, a proc connector listener of
its own: the request is the kernel's exec time of the kill command, the exit is
the kernel's exit time of the worker. Detection latency is the time from that
exit to the moment the probe's tracker applied it, or to the end of the first
process-exporter scrape that showed the group smaller.

The kube-state-metrics method is computed from the same ground truth as a model:
Kubernetes serializes deletionTimestamp and finishedAt at whole seconds (RFC 3339
metav1.Time), so its duration is floor(exit) - floor(request) in wall-clock
seconds.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass

from kernel_truth import KernelTimes
from session import FAST_SCRAPE, MODES, Session
from stats import summarize_ms
from workload import Tree, Workload

SHUTDOWN_DELAY_MS = 1500  # longer than the 1 s poll interval, so polling sees the signal thread
BATCH = 20
REQUEST_SPACING = 0.05
TRACK_TIMEOUT = 10.0
EXIT_TIMEOUT = 5.0
FINISH_TIMEOUT = 5.0
TOPOLOGY_PREFIX = "bench-detect-"
KUBELET_RELIST_SECONDS = 1.0  # the kubelet's PLEG relist period
KSM_METHOD = "kube-state-metrics timestamps (1 s, model)"


@dataclass
class Stop:
    """One worker stopped by the benchmark, with its ground truth."""

    tree: Tree
    request_truth: float | None = None
    exit_truth: float | None = None


def measure(session: Session, workload: Workload, truth: KernelTimes, count: int, repeat: int) -> dict:
    """Start and stop ``count`` workers and return the samples of every source and peer."""
    stops: list[Stop] = []
    samples = _new_samples()
    not_tracked = 0
    wall_offset = time.time() - time.monotonic()
    relist_phase = (os.getpid() * 0.618 + repeat * 0.377) % 1.0
    for first in range(0, count, BATCH):
        batch = [
            workload.start_tree(f"{TOPOLOGY_PREFIX}{repeat}-{serial}-{os.getpid()}", SHUTDOWN_DELAY_MS)
            for serial in range(first, min(count, first + BATCH))
        ]
        pids = [tree.worker_pid for tree in batch]
        groups = [tree.topology for tree in batch]
        session.scraper.watch(groups)
        if not session.wait_tracked(pids, groups, TRACK_TIMEOUT):
            not_tracked += _untracked(session, pids)
        # The poll source opens a pidfd for a new worker after the pass that found it.
        time.sleep(0.3)
        batch_stops = [Stop(tree) for tree in batch]
        for stop in batch_stops:
            truth.watch(stop.tree.worker_pid)
            session.scraper.arm(stop.tree.topology)
            command = workload.kill_command(stop.tree)
            command.wait()
            stop.request_truth = truth.exec_of(command.pid, stop.tree.request_time, timeout=1.0)
            time.sleep(REQUEST_SPACING)
        for stop in batch_stops:
            record = truth.exit_of(stop.tree.worker_pid, EXIT_TIMEOUT)
            if record is not None:
                stop.exit_truth = record[0]
            workload.reap(stop.tree, EXIT_TIMEOUT)
        session.wait_finished(pids, FINISH_TIMEOUT)
        _wait_dropped(session, groups, FINISH_TIMEOUT)
        stops.extend(batch_stops)
        _collect(session, batch_stops, samples)
        session.forget(pids, groups)
        for pid in pids:
            truth.forget(pid)
    return _summarize(samples, stops, not_tracked, wall_offset, relist_phase)


def _untracked(session: Session, pids: list[int]) -> int:
    missing = 0
    for record in session.records.values():
        missing = max(missing, sum(1 for pid in pids if pid not in record.tracked))
    return missing


def _wait_dropped(session: Session, groups: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(group in session.scraper.dropped for group in groups):
        time.sleep(0.02)


def _new_samples() -> dict:
    return {
        label: {"latency": [], "duration_error": [], "exit_offset": [], "outcomes": Counter(),
                "request_via": Counter(), "missed": 0, "events": Counter()}
        for label in [*MODES, FAST_SCRAPE]
    }


def _collect(session: Session, stops: list[Stop], samples: dict) -> None:
    for label, record in session.records.items():
        store = samples[label]
        for stop in stops:
            pid = stop.tree.worker_pid
            applied = record.applied.get(pid)
            finished = record.finished.get(pid)
            if applied is None or stop.exit_truth is None:
                store["missed"] += 1
                continue
            store["events"][applied.event] += 1
            store["latency"].append(applied.time - stop.exit_truth)
            if applied.exit_time is not None:
                store["exit_offset"].append(applied.exit_time - stop.exit_truth)
            if finished is None:
                continue
            store["outcomes"][finished.outcome] += 1
            store["request_via"][finished.request_via or "none"] += 1
            if finished.request_time is None or finished.exit_time is None or stop.request_truth is None:
                continue
            measured = finished.exit_time - finished.request_time
            store["duration_error"].append(abs(measured - (stop.exit_truth - stop.request_truth)))
    store = samples[FAST_SCRAPE]
    for stop in stops:
        dropped = session.scraper.dropped.get(stop.tree.topology)
        if dropped is None or stop.exit_truth is None:
            store["missed"] += 1
            continue
        store["latency"].append(dropped[1] - stop.exit_truth)


def _summarize(samples: dict, stops: list[Stop], not_tracked: int, wall_offset: float, phase: float) -> dict:
    result: dict = {"workers_stopped": len(stops), "workers_not_tracked_by_all": not_tracked}
    for label, store in samples.items():
        result[label] = {
            "latency_s": [round(value, 6) for value in store["latency"]],
            "detection_latency": summarize_ms(store["latency"]),
            "duration_error": summarize_ms(store["duration_error"]),
            "duration_error_s": [round(value, 6) for value in store["duration_error"]],
            "exit_time_offset": summarize_ms([abs(value) for value in store["exit_offset"]]),
            "exits_not_seen": store["missed"],
            "outcomes": dict(store["outcomes"]),
            "request_via": dict(store["request_via"]),
            "applied_by": dict(store["events"]),
        }
    result[KSM_METHOD] = _kube_state_metrics_model(stops, wall_offset, phase)
    return result


def _kube_state_metrics_model(stops: list[Stop], wall_offset: float, phase: float) -> dict:
    """Return the duration error of whole-second timestamps and when the kubelet would report.

    The report time is a lower bound: the kubelet's next relist (every
    KUBELET_RELIST_SECONDS, at a fixed phase) after the exit, without the status
    update to the API server, the kube-state-metrics watch or the scrape interval.
    """
    errors = []
    latencies = []
    for stop in stops:
        if stop.request_truth is None or stop.exit_truth is None:
            continue
        request_wall = stop.request_truth + wall_offset
        exit_wall = stop.exit_truth + wall_offset
        measured = math.floor(exit_wall) - math.floor(request_wall)
        errors.append(abs(measured - (exit_wall - request_wall)))
        relists = math.floor((exit_wall - phase) / KUBELET_RELIST_SECONDS) + 1
        latencies.append(relists * KUBELET_RELIST_SECONDS + phase - exit_wall)
    return {
        "latency_s": [round(value, 6) for value in latencies],
        "detection_latency": summarize_ms(latencies),
        "duration_error": summarize_ms(errors),
        "duration_error_s": [round(value, 6) for value in errors],
        "exits_not_seen": 0,
    }
