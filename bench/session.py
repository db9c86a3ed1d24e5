"""One exporter per event source and one process-exporter, started together on the same processes.

The exit-detection, shutdown-duration and fork-storm measurements run against a
Session: every server sees the same worker trees and the same stops. This
exporter runs as bench/probe.py, which records when each worker exit was applied.
process-exporter is scraped back to back by a FastScraper thread, as fast as it
answers, and the first scrape whose num_procs for a worker's group is below the
group's size before the stop is when its metric changed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from records import Record
from servers import ProcessExporter, StormExporter, group_sizes

# Label of each measured exporter and its --events.source value. "tracefs,netlink"
# is what --events.source=auto chooses as root on this kernel.
MODES: dict[str, str] = {
    "tracefs,netlink": "tracefs,netlink",
    "tracefs": "tracefs",
    "netlink": "netlink",
    "poll": "poll",
}
FAST_SCRAPE = "process-exporter, back-to-back scrapes"


class FastScraper:
    """Scrape process-exporter back to back and note when each watched group shrank."""

    def __init__(self, server: ProcessExporter) -> None:
        self.server = server
        self._lock = threading.Lock()
        self._watching: set[str] = set()
        self._baseline: dict[str, float] = {}  # group -> num_procs before its stop
        self._armed: set[str] = set()  # groups whose worker was asked to stop
        self.dropped: dict[str, tuple[float, float]] = {}  # group -> (scrape start, end)
        self.scrape_seconds: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fast-scrape", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def watch(self, groups: list[str]) -> None:
        with self._lock:
            for group in groups:
                self._baseline.pop(group, None)
                self.dropped.pop(group, None)
                self._armed.discard(group)
            self._watching.update(groups)

    def seen(self, groups: list[str]) -> bool:
        """Tell whether a scrape has shown every group at its full size."""
        with self._lock:
            return all(group in self._baseline for group in groups)

    def arm(self, group: str) -> None:
        """Start looking for the drop of ``group``; call it just before the stop."""
        with self._lock:
            self._armed.add(group)

    def forget(self, groups: list[str]) -> None:
        with self._lock:
            for group in groups:
                self._baseline.pop(group, None)
                self._armed.discard(group)
                self._watching.discard(group)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            body = self.server.get("/metrics", timeout=10.0)
            ended = time.monotonic()
            if body is None:
                self.failures += 1
                self._stop.wait(0.05)
                continue
            self.scrape_seconds.append(ended - started)
            sizes = group_sizes(body.decode("utf-8", errors="replace"))
            with self._lock:
                for group in self._watching:
                    size = sizes.get(group, 0.0)
                    if group not in self._armed:
                        if size >= 2:
                            self._baseline[group] = size
                    elif group not in self.dropped and size < self._baseline.get(group, 2.0):
                        self.dropped[group] = (started, ended)


class Session:
    """The probes of MODES and one process-exporter, with their record files."""

    def __init__(self, log_dir: Path, work_dir: Path, repeat: int) -> None:
        self.probes: dict[str, StormExporter] = {}
        self.records: dict[str, Record] = {}
        for label, sources in MODES.items():
            name = label.replace(",", "-")
            record = work_dir / f"probe-{name}-{repeat}.record"
            self.probes[label] = StormExporter(f"probe-{name}-{repeat}", log_dir, sources, record=record)
            self.records[label] = Record(record)
        self.process_exporter = ProcessExporter(f"process-exporter-fast-{repeat}", log_dir)
        self.scraper = FastScraper(self.process_exporter)

    def start(self) -> None:
        for probe in self.probes.values():
            probe.start()
        self.process_exporter.start()
        for probe in self.probes.values():
            probe.wait_ready()
        self.process_exporter.wait_ready()
        self.scraper.start()

    def close(self) -> dict[str, dict]:
        self.scraper.close()
        stopped = {label: probe.stop() for label, probe in self.probes.items()}
        stopped["process-exporter"] = self.process_exporter.stop()
        return stopped

    def all_tracked(self, pids: list[int]) -> bool:
        for record in self.records.values():
            record.read()
        return all(pid in record.tracked for record in self.records.values() for pid in pids)

    def wait_tracked(self, pids: list[int], groups: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.all_tracked(pids) and self.scraper.seen(groups):
                return True
            time.sleep(0.02)
        return False

    def all_finished(self, pids: list[int]) -> bool:
        for record in self.records.values():
            record.read()
        return all(pid in record.finished for record in self.records.values() for pid in pids)

    def wait_finished(self, pids: list[int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.all_finished(pids):
                return True
            time.sleep(0.05)
        return self.all_finished(pids)

    def forget(self, pids: list[int], groups: list[str]) -> None:
        for record in self.records.values():
            record.forget(pids)
        self.scraper.forget(groups)
