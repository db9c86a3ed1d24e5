"""Steady-state CPU and memory of ``python -m exporter`` on a node with many processes.

The exporter runs as its own process with ``--events.source=auto`` while this
module keeps 2,000 idle processes and 50 worker trees alive and scrapes /metrics
every 15 s. Two phases of 60 s are measured: ``steady`` (no exits) and then
``churn`` (20 worker exits a second, each replaced by a new tree). Only the
exporter's pid is measured: utime + stime from /proc/PID/stat, VmHWM and VmRSS
from /proc/PID/status. The load generator's own CPU is not counted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from exporter.procfs import CLOCK_TICKS_PER_SECOND, ProcFS

from kernel_truth import KernelTimes
from workload import Workload

ROOT = Path(__file__).resolve().parent.parent
TRACEFS_INSTANCES = "/sys/kernel/tracing/instances"

IDLE_PROCESSES = 2000
LIVE_TREES = 50
EXITS_PER_SECOND = 20
PHASE_SECONDS = 60.0
SCRAPE_INTERVAL = 15.0
WARMUP_SECONDS = 5.0
TOPOLOGY_PREFIX = "bench-cost-"
TOPOLOGIES = 10


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ExporterProcess:
    """``python -m exporter`` on 127.0.0.1 with its output in a log file."""

    def __init__(self, log_path: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._procfs = ProcFS()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 60.0) -> None:
        command = [
            sys.executable, "-m", "exporter",
            f"--web.listen-address=127.0.0.1:{self.port}", "--events.source=auto",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the exporter exited with status {self.process.returncode}; see {self.log_path}"
                )
            if self._get("/readyz") is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the exporter was not ready within {ready_timeout:g} s; see {self.log_path}")

    def _get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def scrape(self) -> str:
        text = self._get("/metrics")
        if text is None:
            raise RuntimeError(f"scraping {self.url}/metrics failed; see {self.log_path}")
        return text

    def cpu_ticks(self) -> int:
        stat = self._procfs.read_stat(self.process.pid)
        if stat is None:
            raise RuntimeError(f"the exporter pid {self.process.pid} is gone; see {self.log_path}")
        return stat.utime + stat.stime

    def thread_ticks(self) -> dict[str, int]:
        """Return utime + stime per thread, in clock ticks, named by the thread's role.

        The main thread runs the asyncio loop (the 100 ms tick and HTTP). The next
        three threads by start time are taken to be the sources, which
        Exporter.start_sources() starts in the order tracefs, netlink, poll when
        both kernel sources are active. Later threads are named by thread id.
        """
        tasks = []
        for tid in self._procfs.list_tasks(self.process.pid):
            stat = self._procfs.read_task_stat(self.process.pid, tid)
            if stat is not None:
                tasks.append((tid != self.process.pid, stat.start_ticks, tid, stat.utime + stat.stime))
        tasks.sort()
        names = ["main", "source-tracefs", "source-netlink", "source-poll"]
        named = {}
        for index, (_, _, tid, ticks) in enumerate(tasks):
            named[names[index] if index < len(names) else f"other-{tid}"] = ticks
        return named

    def memory_kb(self) -> dict[str, int]:
        """Return VmHWM and VmRSS of the exporter in KiB."""
        values = {}
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    values[key] = int(value.split()[0])
        return values

    def stop(self) -> dict[str, object]:
        """Stop the exporter with SIGTERM (SIGKILL after 5 s) and check its tracefs instance."""
        if self.process is None:
            return {}
        killed = False
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                killed = True
        instance = os.path.join(TRACEFS_INSTANCES, f"storm-termination-exporter-{self.process.pid}")
        left_behind = os.path.isdir(instance)
        if left_behind:
            os.rmdir(instance)
        return {
            "exit_status": self.process.returncode,
            "killed_after_5s": killed,
            "tracefs_instance_left_behind": left_behind,
        }


class Churn:
    """Worker trees kept at LIVE_TREES, of which EXITS_PER_SECOND a second are replaced."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.live: list = []
        self.stopping: list = []
        self.kills = 0
        self.returncodes: Counter[str] = Counter()
        self._serial = 0
        self._next = 0.0

    def fill(self) -> None:
        while len(self.live) < LIVE_TREES:
            self._start()

    def _start(self) -> None:
        self._serial += 1
        topology = f"{TOPOLOGY_PREFIX}{self._serial % TOPOLOGIES + 1}-{1700000000 + os.getpid()}"
        self.live.append(self.workload.start_tree(topology))

    def begin(self, now: float) -> None:
        self._next = now

    def step(self, now: float) -> None:
        """Stop the oldest trees and start new ones for every 1/EXITS_PER_SECOND s that passed."""
        while self._next <= now:
            tree = self.live.pop(0)
            self.workload.request_termination(tree)
            self.stopping.append(tree)
            self.kills += 1
            self._start()
            self._next += 1.0 / EXITS_PER_SECOND
        self.reap()

    def reap(self) -> None:
        for tree in self.workload.reap_exited():
            if tree in self.stopping:
                self.stopping.remove(tree)
                self.returncodes[str(tree.returncode)] += 1

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.stopping and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.01)

    @property
    def next_due(self) -> float:
        return self._next


def run_phase(exporter: ExporterProcess, seconds: float, churn: Churn | None, kernel: KernelTimes) -> dict:
    """Measure the exporter's CPU and memory for ``seconds``, scraping every 15 s.

    ``kernel`` counts the proc connector events of every process on the machine,
    which the exporter reads too, so the figures show how busy the machine was.
    """
    started = time.monotonic()
    events = kernel.events
    lost = kernel.lost
    ticks = exporter.cpu_ticks()
    threads = exporter.thread_ticks()
    end = started + seconds
    next_scrape = started
    scrapes = 0
    if churn is not None:
        churn.begin(started)
    first_scrape = ""
    while (now := time.monotonic()) < end:
        if now >= next_scrape:
            text = exporter.scrape()
            first_scrape = first_scrape or text
            scrapes += 1
            next_scrape += SCRAPE_INTERVAL
        wake = min(next_scrape, end)
        if churn is not None:
            churn.step(now)
            wake = min(wake, churn.next_due)
        time.sleep(max(0.0, wake - time.monotonic()))
    elapsed = time.monotonic() - started
    cpu_seconds = (exporter.cpu_ticks() - ticks) / CLOCK_TICKS_PER_SECOND
    by_thread = {
        name: round((value - threads.get(name, 0)) / CLOCK_TICKS_PER_SECOND, 2)
        for name, value in exporter.thread_ticks().items()
    }
    memory = exporter.memory_kb()
    scan_count, scan_seconds = _scan_totals(exporter.scrape())
    first_count, first_seconds = _scan_totals(first_scrape)
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        load = float(loadavg.read().split()[0])
    result = {
        "seconds": round(elapsed, 1),
        "scrapes": scrapes,
        "cpu_seconds": round(cpu_seconds, 2),
        "cpu_seconds_per_minute": round(cpu_seconds * 60.0 / elapsed, 3),
        "percent_of_one_core": round(cpu_seconds * 100.0 / elapsed, 2),
        "cpu_seconds_by_thread": by_thread,
        "peak_rss_mb": round(memory["VmHWM"] / 1024, 1),
        "rss_mb": round(memory["VmRSS"] / 1024, 1),
        "process_events_per_second": round((kernel.events - events) / elapsed, 1),
        "ground_truth_events_lost": kernel.lost - lost,
        "full_scans": int(scan_count - first_count),
        "full_scan_seconds": round(scan_seconds - first_seconds, 3),
        "load_average_1m_at_end": load,
    }
    if churn is not None:
        result["worker_exits_requested"] = churn.kills
        result["exits_per_second"] = round(churn.kills / elapsed, 2)
    return result


def _bench_samples(text: str, name: str) -> list:
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("topology", "").startswith(TOPOLOGY_PREFIX):
                samples.append(sample)
    return samples


def _scan_totals(text: str) -> tuple[float, float]:
    """Return the count and sum of the exporter's full /proc scan histogram."""
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "storm_termination_exporter_scan_duration_seconds_count":
                count = sample.value
            elif sample.name == "storm_termination_exporter_scan_duration_seconds_sum":
                total = sample.value
    return count, total


def _exits_by_outcome(text: str) -> Counter[str]:
    exits: Counter[str] = Counter()
    for sample in _bench_samples(text, "storm_worker_exits_total"):
        exits[sample.labels["outcome"]] += int(sample.value)
    return exits


def _running_workers(text: str) -> int:
    return int(sum(s.value for s in _bench_samples(text, "storm_workers") if s.labels.get("state") == "running"))


def _events_lost(text: str) -> dict[str, float]:
    lost = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "storm_termination_exporter_events_lost_total":
                lost[sample.labels["source"]] = sample.value
    return lost


def _topology_overflows(text: str) -> float:
    """Return storm_termination_exporter_topology_overflow_total.

    Workers past --topology.max are exported as topology="_other", where this
    module's topology filter cannot count them.
    """
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "storm_termination_exporter_topology_overflow_total":
                return sample.value
    return 0.0


def measure_cost(workload: Workload, kernel: KernelTimes, log_path: str) -> dict:
    """Run both phases and return their figures plus the exporter's own counts."""
    workload.start_idle(IDLE_PROCESSES)
    churn = Churn(workload)
    churn.fill()
    exporter = ExporterProcess(log_path)
    result: dict = {
        "idle_processes": IDLE_PROCESSES,
        "live_worker_trees": LIVE_TREES,
        "target_exits_per_second": EXITS_PER_SECOND,
    }
    try:
        exporter.start()
        time.sleep(WARMUP_SECONDS)
        result["steady"] = run_phase(exporter, PHASE_SECONDS, None, kernel)
        before = exporter.scrape()
        result["steady"]["running_workers_reported"] = _running_workers(before)
        result["churn"] = run_phase(exporter, PHASE_SECONDS, churn, kernel)
        churn.drain(timeout=5.0)
        time.sleep(1.0)  # the tracker classifies an exit within its 0.3 s settle window
        after = exporter.scrape()
        exits = _exits_by_outcome(after) - _exits_by_outcome(before)
        result["churn"]["worker_exits_counted"] = sum(exits.values())
        result["churn"]["outcomes_counted"] = dict(exits)
        result["churn"]["logwriter_returncodes"] = dict(churn.returncodes)
        result["churn"]["running_workers_reported"] = _running_workers(after)
        result["exporter_events_lost_total_at_end"] = _events_lost(after)
        result["topology_overflow_total_at_end"] = _topology_overflows(after)
    finally:
        result["exporter_stop"] = exporter.stop()
    return result
