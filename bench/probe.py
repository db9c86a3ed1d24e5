"""``python -m exporter`` that also records when each worker episode changes, for the benchmark.

Usage: BENCH_RECORD=FILE python bench/probe.py [exporter flags]

The exporter package is imported from BENCH_EXPORTER_TREE when set, else from
this repository.

The exporter runs unchanged. Tracker.handle and Tracker._maybe_finish are wrapped
at class level, and every line appended to FILE is space-separated:

    tracked  PID START_TICKS MONOTONIC
    applied  PID START_TICKS MONOTONIC EXIT_TIME EVENT
    finished PID START_TICKS OUTCOME EXIT_TIME REQUEST_TIME REQUEST_VIA EXIT_STATUS

``applied`` is written when the tracker's state first shows the worker's exit.
From then on a scrape of /metrics shows it, as a drop in storm_workers. EVENT is
the type of the event that applied it: ProcessExited from a kernel source or a
pidfd, or ScanCompleted from a full /proc scan. ``finished`` is written when the
exit is classified and counted. Times are CLOCK_MONOTONIC seconds; a missing value is "-".
The lines are written under the exporter's lock, on the thread that applied the event.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.environ.get("BENCH_EXPORTER_TREE", str(Path(__file__).resolve().parent.parent)))

from exporter import cli  # noqa: E402
from exporter.events import ProcessExeced, ProcessExited, ProcessForked, ScanCompleted  # noqa: E402
from exporter.tracker import Tracker, Worker  # noqa: E402

_record = open(os.environ["BENCH_RECORD"], "a", buffering=1, encoding="utf-8")  # noqa: SIM115
_handle = Tracker.handle
_maybe_finish = Tracker._maybe_finish


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return repr(value)
    return str(value).replace(" ", "_")


def _write(*fields: object) -> None:
    _record.write(" ".join(_value(field) for field in fields) + "\n")


def _candidates(tracker: Tracker, event: object) -> list[Worker]:
    """Return the worker episodes that ``event`` can change, before it is applied."""
    if isinstance(event, ScanCompleted):
        return list(tracker.workers.values())
    if isinstance(event, (ProcessExited, ProcessForked, ProcessExeced)):
        process = tracker.table.get(event.pid)
        worker = tracker.workers.get(process.key) if process is not None else None
        return [worker] if worker is not None else []
    return []


def handle(self: Tracker, event: object) -> None:
    before = {worker.key for worker in _candidates(self, event) if worker.alive}
    known = len(self.workers)
    _handle(self, event)
    now = time.monotonic()
    for key in before:
        worker = self.workers.get(key)
        if worker is not None and not worker.alive:
            _write("applied", key[0], key[1], now, worker.exit_time, type(event).__name__)
    if len(self.workers) != known or isinstance(event, ScanCompleted):
        for key, worker in self.workers.items():
            if key not in _reported_tracked and worker.outcome is None and worker.alive:
                _reported_tracked.add(key)
                _write("tracked", key[0], key[1], now)


_reported_tracked: set = set()


def maybe_finish(self: Tracker, worker: Worker, now: float) -> None:
    finished = worker.outcome is not None
    _maybe_finish(self, worker, now)
    if not finished and worker.outcome is not None:
        _reported_tracked.discard(worker.key)
        _write(
            "finished", worker.key[0], worker.key[1], worker.outcome, worker.exit_time,
            worker.request_time, worker.request_via, worker.exit_status,
        )


Tracker.handle = handle
Tracker._maybe_finish = maybe_finish

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
