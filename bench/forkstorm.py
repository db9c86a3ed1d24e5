"""A fork storm while workers stop: are worker exits still measured, and is any missed?

bench/holder.c forks STORM_PROCESSES short-lived processes paced over
STORM_MILLISECONDS, while the benchmark stops STORM_WORKERS workers with ``kill
-15 PID`` commands spread over the same time. Every worker has its own topology.
For each exporter of the Session, a worker exit is:

- measured exactly: an exit event (from the proc connector, or a pidfd that
  became readable) applied it, with an exit time within EXACT_SECONDS of the kernel's;
- measured late: an exit event applied it, but its time is more than
  EXACT_SECONDS after the kernel's (a pidfd read by a busy poll thread);
- reconciled: a full /proc scan found the worker gone, and its exit time is the
  scan's (the exporter counts these in storm_termination_exporter_events_lost_total);
- missed: not counted within RECONCILE_TIMEOUT, which is longer than the default
  30 s --scan.interval.

The storm comes from STORM_FORKERS processes at once, each forking its share,
so that it can use every core.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from kernel_truth import KernelTimes
from session import FAST_SCRAPE, Session
from workload import Workload

STORM_PROCESSES = 5000
STORM_MILLISECONDS = 1000
STORM_WORKERS = 50
STORM_FORKERS = 2
SHUTDOWN_DELAY_MS = 100
EXACT_SECONDS = 0.005
TRACK_TIMEOUT = 15.0
RECONCILE_TIMEOUT = 40.0
TOPOLOGY_PREFIX = "bench-storm-"


def measure(session: Session, workload: Workload, truth: KernelTimes, repeat: int) -> dict:
    trees = [
        workload.start_tree(f"{TOPOLOGY_PREFIX}{repeat}-{serial}-{os.getpid()}", SHUTDOWN_DELAY_MS)
        for serial in range(STORM_WORKERS)
    ]
    pids = [tree.worker_pid for tree in trees]
    groups = [tree.topology for tree in trees]
    session.scraper.watch(groups)
    tracked = session.wait_tracked(pids, groups, TRACK_TIMEOUT)
    time.sleep(0.3)  # the poll source opens pidfds after the pass that found the workers
    lost_before = {label: _events_lost(probe.scrape()) for label, probe in session.probes.items()}
    truth_lost = truth.lost
    for tree in trees:
        truth.watch(tree.worker_pid)
        session.scraper.arm(tree.topology)

    share = STORM_PROCESSES // STORM_FORKERS
    storms = [
        subprocess.Popen(
            [workload.binary, "storm", str(share), str(STORM_MILLISECONDS)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        for _ in range(STORM_FORKERS)
    ]
    started = time.monotonic()
    commands = _stop_spread(workload, trees, STORM_MILLISECONDS / 1000.0)
    outputs = [storm.communicate(timeout=60)[0].split() for storm in storms]
    storm_elapsed = time.monotonic() - started
    for command in commands:
        command.wait()

    exits = {}
    for tree in trees:
        record = truth.exit_of(tree.worker_pid, 5.0)
        if record is not None:
            exits[tree.worker_pid] = record[0]
        workload.reap(tree, 5.0)
    settled = session.wait_finished(pids, RECONCILE_TIMEOUT)
    time.sleep(0.5)
    result: dict = {
        "storm_processes_forked": sum(int(output[0]) for output in outputs if output),
        "storm_ms_reported": max((float(output[1]) for output in outputs if output), default=None),
        "storm_and_stops_wall_s": round(storm_elapsed, 3),
        "workers_stopped": len(trees),
        "all_tracked_before": tracked,
        "all_counted_within_timeout": settled,
        "ground_truth_events_lost": truth.lost - truth_lost,
        "ground_truth_exits_seen": len(exits),
    }
    for label, probe in session.probes.items():
        text = probe.scrape()
        result[label] = _classify(session.records[label], pids, exits)
        result[label]["events_lost"] = _difference(_events_lost(text), lost_before[label])
        result[label]["exits_counted_in_metrics"] = _exits_counted(text, groups)
    dropped = sum(1 for group in groups if group in session.scraper.dropped)
    result[FAST_SCRAPE] = {
        "workers_seen_gone": dropped,
        "missed": len(trees) - dropped,
        "note": "no exit events: a drop in num_procs, seen by back-to-back scrapes",
    }
    session.forget(pids, groups)
    for pid in pids:
        truth.forget(pid)
    return result


def _stop_spread(workload: Workload, trees: list, seconds: float) -> list[subprocess.Popen]:
    """Start one kill command per tree, evenly spread over ``seconds``."""
    commands = []
    started = time.monotonic()
    for index, tree in enumerate(trees):
        due = started + seconds * index / len(trees)
        time.sleep(max(0.0, due - time.monotonic()))
        commands.append(workload.kill_command(tree))
    return commands


def _classify(record, pids: list[int], exits: dict[int, float]) -> dict:
    counts: Counter[str] = Counter()
    applied_by: Counter[str] = Counter()
    late: list[float] = []
    for pid in pids:
        finished = record.finished.get(pid)
        applied = record.applied.get(pid)
        if applied is not None:
            applied_by[applied.event] += 1
        if finished is None or finished.exit_time is None:
            counts["missed"] += 1
            continue
        truth = exits.get(pid)
        if applied is None or applied.event != "ProcessExited":
            counts["reconciled"] += 1
        elif truth is None or abs(finished.exit_time - truth) <= EXACT_SECONDS:
            counts["measured_exactly"] += 1  # without a ground truth, the exit event's time is taken as exact
        else:
            counts["measured_late"] += 1
            late.append(finished.exit_time - truth)
    return {
        "measured_exactly": counts["measured_exactly"],
        "measured_late": counts["measured_late"],
        "max_late_ms": round(max(late) * 1000, 1) if late else None,
        "reconciled": counts["reconciled"],
        "missed": counts["missed"],
        "applied_by": dict(applied_by),
    }


def _events_lost(text: str) -> dict[str, float]:
    lost = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "storm_termination_exporter_events_lost_total":
                lost[sample.labels["source"]] = sample.value
    return lost


def _difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def _exits_counted(text: str, topologies: list[str]) -> int:
    wanted = set(topologies)
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "storm_worker_exits_total" and sample.labels.get("topology") in wanted:
                total += sample.value
    return int(total)
