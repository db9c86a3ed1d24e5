"""Ground truth from the kernel: exit and exec times from a separate proc connector socket.

The times are the proc connector's ``ktime_get_ns()`` stamps, CLOCK_MONOTONIC
seconds, the clock ``time.monotonic()`` reads. This listener has its own socket and
thread, so it shares no state with the exporter under test.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from exporter.events import Event, EventsLost, ProcessExeced, ProcessExited
from exporter.sources.netlink import NetlinkSource

# Exec times are kept for every process because a kill command's exec can arrive
# before Popen returns its pid. The oldest are dropped past this many.
_EXEC_HISTORY = 20000


class KernelTimes:
    """Exit times of watched pids and exec times of recent processes."""

    def __init__(self) -> None:
        self._source = NetlinkSource(read_info=None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._watched: set[int] = set()
        self._exits: dict[int, tuple[float, int | None]] = {}
        self._execs: OrderedDict[int, float] = OrderedDict()
        self.lost = 0
        self.events = 0  # fork, exec and exit events of all processes since start()

    def start(self) -> None:
        self._source.open()
        self._thread = threading.Thread(
            target=self._source.run, args=(self._record, self._stop), name="kernel-truth", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._source.close()

    def watch(self, pid: int) -> None:
        """Record the next exit of ``pid``; call it while the process is alive."""
        with self._lock:
            self._watched.add(pid)
            self._exits.pop(pid, None)

    def exit_of(self, pid: int, timeout: float) -> tuple[float, int | None] | None:
        """Wait for the exit of a watched pid; return (time, wait status) or None."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while pid not in self._exits:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)
            return self._exits[pid]

    def forget(self, pid: int) -> None:
        with self._lock:
            self._watched.discard(pid)
            self._exits.pop(pid, None)

    def exec_of(self, pid: int, after: float, timeout: float) -> float | None:
        """Wait for an exec of ``pid`` at ``after`` or later and return its time, or None."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._execs.get(pid, -1.0) < after:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)
            return self._execs[pid]

    def _record(self, event: Event) -> None:
        self.events += 1
        if isinstance(event, ProcessExited):
            with self._changed:
                if event.pid in self._watched:
                    self._watched.discard(event.pid)
                    self._exits[event.pid] = (event.time, event.status)
                    self._changed.notify_all()
        elif isinstance(event, ProcessExeced):
            with self._changed:
                self._execs[event.pid] = event.time
                self._execs.move_to_end(event.pid)
                while len(self._execs) > _EXEC_HISTORY:
                    self._execs.popitem(last=False)
                self._changed.notify_all()
        elif isinstance(event, EventsLost):
            self.lost += event.count
