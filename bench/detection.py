"""Exit-detection latency and shutdown-duration error of an in-process exporter, per source mode.

The exporter under test is ``exporter.app.Exporter`` with its sources on their own
threads and the GIL switch interval that ``exporter.app.run()`` sets, as
``python -m exporter`` runs them, but without the HTTP server. Its
``Tracker.handle`` is wrapped so that the moment the ProcessExited of a tracked
worker has been applied is recorded with ``time.monotonic()``.

Ground truth comes from ``kernel_truth.KernelTimes``: the worker's exit is the
kernel's timestamp of its proc connector exit event. The termination request is
``time.monotonic()`` just before ``os.kill(worker, SIGTERM)``. The ``netlink``
mode cannot see a kill(2) call, only the exec of a kill command (and the JVM's
"SIGTERM handler" thread), so there the request is ``kill -15 PID`` and its
ground truth is the kernel's timestamp of that command's exec.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

from exporter import outcome as oc
from exporter.app import GIL_SWITCH_SECONDS, TICK_SECONDS, Exporter
from exporter.config import Config
from exporter.events import Event, ProcessExited
from exporter.tracker import Worker

from kernel_truth import KernelTimes
from stats import summarize_ms
from workload import Tree, Workload, start_ticks_of

MODES: dict[str, tuple[str, ...]] = {
    "tracefs,netlink": ("tracefs", "netlink"),
    "netlink": ("netlink",),
    "poll": ("poll",),
}

# Every mode runs the same load. Workers are started in batches of 20, and once
# the exporter tracks all of a batch, they get their termination request 50 ms
# apart, so that each exit is detected on its own. A worker stops 1.5 s after
# SIGTERM, a short but realistic JVM shutdown, and longer than the 1 s poll
# interval, so that polling can see the JVM's "SIGTERM handler" thread.
SHUTDOWN_DELAY_MS = 1500
BATCH = 20
REQUEST_SPACING = 0.05

TOPOLOGY_PREFIX = "bench-detect-"
# Other Storm-shaped processes on a shared machine can fill the default 200
# topology slots, which would merge this run's workers into topology="_other".
TOPOLOGY_MAX = 100_000
TRACK_TIMEOUT = 5.0
EXIT_TIMEOUT = 5.0


@dataclass
class Kill:
    """One worker stopped by the benchmark and what the exporter made of it."""

    tree: Tree
    worker: Worker
    request_truth: float | None = None
    exit_truth: float | None = None
    exit_status: int | None = None
    applied: float | None = None


class InProcessExporter:
    """An Exporter with the given sources, a tick thread, and a recording Tracker.handle."""

    def __init__(self, sources: tuple[str, ...]) -> None:
        self.exporter = Exporter(Config(sources=sources, topology_max=TOPOLOGY_MAX))
        self.tracker = self.exporter.tracker
        self.applied: dict[int, float] = {}
        self.exits_seen: dict[int, float] = {}
        self.episodes: dict[int, Worker] = {}
        self._applied_event = threading.Condition()
        self._handle = self.tracker.handle
        self.tracker.handle = self._recording_handle
        self._ticker = threading.Thread(target=self._tick, name="bench-tick", daemon=True)
        self._switch_interval = sys.getswitchinterval()

    def _recording_handle(self, event: Event) -> None:
        self._handle(event)
        if not isinstance(event, ProcessExited):
            return
        worker = self.episodes.get(event.pid)
        if worker is None or worker.exit_time is None or event.pid in self.applied:
            return
        self.applied[event.pid] = time.monotonic()
        self.exits_seen[event.pid] = event.time
        with self._applied_event:
            self._applied_event.notify_all()

    def _tick(self) -> None:
        while not self.exporter.stop.wait(TICK_SECONDS):
            with self.exporter.lock:
                self.tracker.tick()

    def start(self, ready_timeout: float = 60.0) -> None:
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        self.exporter.open_sources()
        self.exporter.start_sources()
        self._ticker.start()
        if not self.exporter.ready.wait(ready_timeout):
            raise RuntimeError(f"the exporter's first full /proc scan did not finish in {ready_timeout:g} s")

    def close(self) -> None:
        self.exporter.stop.set()
        if self._ticker.is_alive():
            self._ticker.join(timeout=1)
        self.exporter.close_sources()
        sys.setswitchinterval(self._switch_interval)

    def wait_tracked(self, pid: int, timeout: float) -> Worker | None:
        """Wait until the tracker has a worker episode for ``pid`` and return it."""
        ticks = start_ticks_of(pid)
        deadline = time.monotonic() + timeout
        while ticks is not None and time.monotonic() < deadline:
            with self.exporter.lock:
                worker = self.tracker.workers.get((pid, ticks))
            if worker is not None:
                self.episodes[pid] = worker
                return worker
            time.sleep(0.001)
        return None

    def applied_at(self, pid: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self._applied_event:
            while pid not in self.applied:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._applied_event.wait(remaining)
        return self.applied[pid]

    def wait_outcomes(self, workers: list[Worker], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.exporter.lock:
                if all(worker.outcome is not None for worker in workers):
                    return
            time.sleep(0.05)


def measure_mode(name: str, workload: Workload, truth: KernelTimes, count: int) -> dict:
    """Start and stop ``count`` workers under an exporter with the sources of mode ``name``."""
    started = time.monotonic()
    truth_lost = truth.lost
    instance = InProcessExporter(MODES[name])
    kills: list[Kill] = []
    untracked = 0
    try:
        instance.start()
        untracked = _run_batches(instance, workload, truth, count, kills, name)
        instance.wait_outcomes([kill.worker for kill in kills], timeout=2.0)
        labels = {kill.worker.label for kill in kills}
        with instance.exporter.lock:
            histogram = _histogram_totals(instance, labels)
            events_lost = dict(instance.tracker.events_lost)
            kill_commands = sum(
                value for (label, _), value in instance.tracker.kill_commands.items() if label in labels
            )
        sources = instance.exporter.active_sources()
    finally:
        instance.close()
    result = _summarize(name, kills, instance, untracked, histogram)
    result["active_sources"] = sources
    result["exporter_events_lost"] = events_lost
    result["kill_commands_counted"] = kill_commands
    result["workers_labelled_other"] = sum(1 for kill in kills if kill.worker.label != kill.worker.topology)
    result["ground_truth_events_lost"] = truth.lost - truth_lost
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _run_batches(
    instance: InProcessExporter,
    workload: Workload,
    truth: KernelTimes,
    count: int,
    kills: list[Kill],
    name: str,
) -> int:
    untracked = 0
    for first in range(0, count, BATCH):
        trees = [
            workload.start_tree(_topology(name, serial), SHUTDOWN_DELAY_MS)
            for serial in range(first, min(count, first + BATCH))
        ]
        batch: list[Kill] = []
        for tree in trees:
            worker = instance.wait_tracked(tree.worker_pid, TRACK_TIMEOUT)
            if worker is None:
                untracked += 1
                workload.request_termination(tree)
                workload.reap(tree, EXIT_TIMEOUT)
                continue
            batch.append(Kill(tree, worker))
        # In polling mode the poll pass that found these workers also opens their
        # pidfds, and the last workers may have been found by a pass still running.
        time.sleep(0.3)
        for kill in batch:
            truth.watch(kill.tree.worker_pid)
            if name == "netlink":
                kill.request_truth = _kill_command(kill.tree, truth)
            else:
                workload.request_termination(kill.tree)
                kill.request_truth = kill.tree.request_time
            time.sleep(REQUEST_SPACING)
        for kill in batch:
            _collect_exit(kill, instance, workload, truth)
        kills.extend(batch)
    return untracked


def _kill_command(tree: Tree, truth: KernelTimes) -> float | None:
    """Run ``kill -15 PID`` as Storm's supervisor does and return the kernel's exec time."""
    before = time.monotonic()
    tree.request_time = before
    command = subprocess.Popen(["kill", "-15", str(tree.worker_pid)], stdin=subprocess.DEVNULL)
    command.wait()
    return truth.exec_of(command.pid, before, timeout=1.0)


def _collect_exit(kill: Kill, instance: InProcessExporter, workload: Workload, truth: KernelTimes) -> None:
    pid = kill.tree.worker_pid
    exit_record = truth.exit_of(pid, EXIT_TIMEOUT)
    if exit_record is not None:
        kill.exit_truth, kill.exit_status = exit_record
    kill.applied = instance.applied_at(pid, EXIT_TIMEOUT)
    workload.reap(kill.tree, EXIT_TIMEOUT)
    truth.forget(pid)


def _topology(mode: str, serial: int) -> str:
    name = TOPOLOGY_PREFIX + mode.replace(",", "-")
    return f"{name}-{serial % 5 + 1}-{1700000000 + os.getpid()}"


def _histogram_totals(instance: InProcessExporter, labels: set[str]) -> tuple[int, float]:
    """Return the observation count and sum of the duration histograms with these topology labels.

    Other Storm-shaped processes on the machine are tracked too, so only the
    labels of this run's workers are counted.
    """
    mine = [h for (label, _), h in instance.tracker.durations.items() if label in labels]
    return sum(sum(h.counts) for h in mine), sum(h.total for h in mine)


def _duration_sample(kill: Kill) -> dict | None:
    """Compare the exporter's shutdown duration with the ground truth, or return None.

    Offsets are exporter minus ground truth, so a negative request offset is a
    request the exporter placed earlier than the benchmark made it.
    """
    worker = kill.worker
    timed = worker.outcome in oc.TIMED_OUTCOMES and worker.request_time is not None
    if not timed or kill.request_truth is None or worker.exit_time is None:
        return None
    measured = worker.exit_time - worker.request_time
    error = measured - (kill.exit_truth - kill.request_truth)
    return {
        "measured": max(0.0, measured),  # the tracker observes negative durations as 0
        "error": abs(error),
        "error_ms": round(abs(error) * 1000, 3),
        "request_via": worker.request_via,
        "request_offset_ms": round((worker.request_time - kill.request_truth) * 1000, 3),
        "exit_offset_ms": round((worker.exit_time - kill.exit_truth) * 1000, 3),
    }


def _summarize(
    name: str,
    kills: list[Kill],
    instance: InProcessExporter,
    untracked: int,
    histogram: tuple[int, float],
) -> dict:
    outcomes: Counter[str] = Counter()
    request_via: Counter[str] = Counter()
    returncodes: Counter[str] = Counter()
    latencies = []
    clock_offsets = []
    samples = []
    missed_exits = 0
    for kill in kills:
        returncodes[str(kill.tree.returncode)] += 1
        outcomes[kill.worker.outcome or "none"] += 1
        request_via[kill.worker.request_via or "none"] += 1
        if kill.exit_truth is None or kill.applied is None:
            missed_exits += 1
            continue
        latencies.append(kill.applied - kill.exit_truth)
        clock_offsets.append(abs(instance.exits_seen[kill.tree.worker_pid] - kill.exit_truth))
        sample = _duration_sample(kill)
        if sample is not None:
            samples.append(sample)

    observations, total = histogram
    largest = sorted(samples, key=lambda sample: sample["error"], reverse=True)[:3]
    return {
        "mode": name,
        "request": "kill -15 PID command" if name == "netlink" else "os.kill(pid, SIGTERM)",
        "workers_started": len(kills) + untracked,
        "workers_not_tracked": untracked,
        "exits_not_applied": missed_exits,
        "exits_without_duration": len(kills) - missed_exits - len(samples),
        "outcomes": dict(outcomes),
        "request_via": dict(request_via),
        "logwriter_returncodes": dict(returncodes),
        "detection_latency": summarize_ms(latencies),
        "exit_time_offset": summarize_ms(clock_offsets),
        "duration_error": summarize_ms([sample["error"] for sample in samples]),
        "largest_duration_errors": [
            {key: value for key, value in sample.items() if key.endswith(("_ms", "_via"))}
            for sample in largest
        ],
        "histogram_observations": observations,
        "histogram_sum_matches_episodes": abs(total - sum(s["measured"] for s in samples)) < 1e-6,
    }
