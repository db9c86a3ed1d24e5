"""CPU and peak RSS of every exporter at once, on one population of processes under worker churn.

For each population, the benchmark starts that many idle processes and LIVE_TREES
worker trees, then one ``python -m exporter`` per event source and two
process-exporters, scraped every 15 s and every 1 s as Prometheus would (gzip,
OpenMetrics Accept header). After WARMUP_SECONDS, WINDOW_SECONDS are measured
while EXITS_PER_SECOND workers a second are stopped with ``kill -15 PID`` and
replaced by new trees. Each server is measured by its own pid: utime + stime from
/proc/PID/stat over the window, VmHWM (peak RSS since start) at its end. The load
generator's own CPU is not counted.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

from kernel_truth import KernelTimes
from servers import PROMETHEUS_HEADERS, ProcessExporter, Server, StormExporter, finish_profile, start_profile
from session import MODES
from workload import Workload

POPULATIONS = (500, 2000, 5000)
LIVE_TREES = 50
EXITS_PER_SECOND = 20
WINDOW_SECONDS = 60.0
WARMUP_SECONDS = 5.0
TOPOLOGIES = 10
TOPOLOGY_PREFIX = "bench-cost-"
PEERS = {"process-exporter, 15 s scrape": 15.0, "process-exporter, 1 s scrape": 1.0}
EXPORTER_SCRAPE_SECONDS = 15.0
# With a directory set (bench/run.py --profile), the first exporter of MODES is
# profiled with py-spy during each window.
PROFILE_DIR: Path | None = None
PROFILED = "tracefs,netlink"


class Churn:
    """Worker trees kept at LIVE_TREES, of which EXITS_PER_SECOND a second are replaced."""

    def __init__(self, workload: Workload, repeat: int) -> None:
        self.workload = workload
        self.repeat = repeat
        self.live: list = []
        self.stopping: list = []
        self.commands: list = []
        self.kills = 0
        self.returncodes: Counter[str] = Counter()
        self._serial = 0
        self._next = 0.0

    def fill(self) -> None:
        while len(self.live) < LIVE_TREES:
            self._start()

    def _start(self) -> None:
        self._serial += 1
        topology = f"{TOPOLOGY_PREFIX}{self.repeat}-{self._serial % TOPOLOGIES + 1}-{os.getpid()}"
        self.live.append(self.workload.start_tree(topology))

    def begin(self, now: float) -> None:
        self._next = now

    def step(self, now: float) -> None:
        """Stop the oldest trees and start new ones for every 1/EXITS_PER_SECOND s that passed."""
        while self._next <= now:
            tree = self.live.pop(0)
            self.commands.append(self.workload.kill_command(tree))
            self.stopping.append(tree)
            self.kills += 1
            self._start()
            self._next += 1.0 / EXITS_PER_SECOND
        self.reap()

    def reap(self) -> None:
        self.commands = [command for command in self.commands if command.poll() is None]
        for tree in self.workload.reap_exited():
            if tree in self.stopping:
                self.stopping.remove(tree)
                self.returncodes[str(tree.returncode)] += 1

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (self.stopping or self.commands) and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.01)

    @property
    def next_due(self) -> float:
        return self._next


class Scrapes:
    """A thread that scrapes each server on its own interval, so that churn stays on time."""

    def __init__(self, schedule: dict[str, tuple[Server, float]]) -> None:
        self.schedule = schedule
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.seconds: dict[str, list[float]] = {label: [] for label in schedule}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scrapes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        due = {label: time.monotonic() for label in self.schedule}
        while not self._stop.is_set():
            label = min(due, key=due.get)
            if self._stop.wait(max(0.0, due[label] - time.monotonic())):
                return
            server, interval = self.schedule[label]
            started = time.monotonic()
            body = server.get("/metrics", timeout=10.0, headers=PROMETHEUS_HEADERS)
            self.seconds[label].append(time.monotonic() - started)
            if body is None:
                self.failures[label] += 1
            else:
                self.counts[label] += 1
            due[label] += interval
            # A scrape slower than its interval starts the next one at once, as Prometheus does.
            due[label] = max(due[label], time.monotonic())


def live_processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def measure_population(
    workload: Workload, kernel: KernelTimes, population: int, log_dir: Path, repeat: int
) -> dict:
    """Measure every server on ``population`` idle processes plus the worker trees."""
    workload.start_idle(population)
    churn = Churn(workload, repeat)
    churn.fill()
    servers: dict[str, Server] = {}
    for label, sources in MODES.items():
        name = f"cost-{label.replace(',', '-')}-{population}-{repeat}"
        servers[label] = StormExporter(name, log_dir, sources)
    for label in PEERS:
        name = f"cost-{label.split(',')[0]}-{int(PEERS[label])}s-{population}-{repeat}"
        servers[label] = ProcessExporter(name, log_dir)
    schedule = {
        label: (server, PEERS.get(label, EXPORTER_SCRAPE_SECONDS)) for label, server in servers.items()
    }
    result: dict = {"idle_processes": population}
    scrapes = Scrapes(schedule)
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        time.sleep(WARMUP_SECONDS)
        result["live_processes_at_start"] = live_processes()
        profile = None
        if PROFILE_DIR is not None:
            output = PROFILE_DIR / f"profile-cost-{population}-{repeat}.svg"
            profile = start_profile(servers[PROFILED], WINDOW_SECONDS, output)
        result.update(_window(servers, scrapes, churn, kernel))
        finish_profile(profile)
        churn.drain(timeout=5.0)
    finally:
        scrapes.close()
        result["stopped"] = {label: server.stop() for label, server in servers.items()}
        workload.close()
    return result


def _window(servers: dict[str, Server], scrapes: Scrapes, churn: Churn, kernel: KernelTimes) -> dict:
    events = kernel.events
    lost = kernel.lost
    cpu = {label: server.cpu_seconds() for label, server in servers.items()}
    started = time.monotonic()
    scrapes.start()
    churn.begin(started)
    end = started + WINDOW_SECONDS
    while (now := time.monotonic()) < end:
        churn.step(now)
        time.sleep(max(0.0, min(end, churn.next_due) - time.monotonic()))
    elapsed = time.monotonic() - started
    figures = {}
    for label, server in servers.items():
        used = server.cpu_seconds() - cpu[label]
        memory = server.memory_kb()
        figures[label] = {
            "cpu_seconds": round(used, 2),
            "cpu_seconds_per_minute": round(used * 60.0 / elapsed, 3),
            "peak_rss_mb": round(memory["VmHWM"] / 1024, 1),
            "rss_mb": round(memory["VmRSS"] / 1024, 1),
            "scrapes": scrapes.counts[label],
            "scrape_failures": scrapes.failures[label],
        }
    return {
        "window_s": round(elapsed, 1),
        "worker_exits_requested": churn.kills,
        "exits_per_second": round(churn.kills / elapsed, 2),
        "machine_process_events_per_second": round((kernel.events - events) / elapsed, 1),
        "ground_truth_events_lost": kernel.lost - lost,
        "servers": figures,
        "logwriter_returncodes": dict(churn.returncodes),
    }
