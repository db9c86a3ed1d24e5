"""/proc polling: full scans, and in between a cheap poll for new and gone processes.

A full scan reads every process and reconciles the tracker with it, whatever
other sources run, so events that a kernel source lost are recovered. When no
proc connector runs, ``quick`` mode also polls every ``interval``: new pids are
read, and tracked processes get a pidfd that becomes readable at the exact
moment they exit. When no signal source runs, ``signal_threads`` mode checks the
JVMs of worker trees every 0.2 s for HotSpot's "SIGTERM handler" thread, whose
start time is when the JVM received SIGTERM.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from typing import Callable, Iterable

from exporter.events import (
    JvmSignalThreadSeen,
    ProcessExeced,
    ProcessExited,
    ProcessForked,
    ScanCompleted,
)
from exporter.procfs import CLOCK_TICKS_PER_SECOND, ProcFS, ticks_to_monotonic
from exporter.sources.base import Emit

logger = logging.getLogger(__name__)

# HotSpot names the thread that runs the shutdown for a signal "<NAME> handler";
# Linux keeps the first 15 bytes of a thread name, which all three fit.
SIGNAL_THREADS = {
    "SIGTERM handler": signal.SIGTERM,
    "SIGINT handler": signal.SIGINT,
    "SIGHUP handler": signal.SIGHUP,
}

Tracked = Callable[[], Iterable[tuple[int, int, bool]]]

# A JVM's shutdown after SIGTERM often takes well under a second, and the
# "SIGTERM handler" thread is visible only while it runs.
SIGNAL_THREAD_CHECK_SECONDS = 0.2

# How long a thread's name is read again: HotSpot names a new thread as it starts
# to run, a millisecond or so after its creation.
NAMING_SECONDS = 1.0


class PollSource:
    """Scan /proc on a timer; see the module docstring for ``quick`` mode.

    ``tracked()`` returns (pid, start ticks, is a JVM of a worker tree) for the
    processes whose exits matter. ``on_scan(seconds)`` receives each full scan's
    duration, and ``on_error()`` is called for each failed round.
    """

    name = "poll"

    def __init__(
        self,
        procfs: ProcFS,
        *,
        interval: float,
        scan_interval: float,
        quick: bool,
        signal_threads: bool = False,
        tracked: Tracked = lambda: (),
        on_scan: Callable[[float], None] = lambda seconds: None,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.procfs = procfs
        self.interval = interval
        self.scan_interval = scan_interval
        self.quick = quick
        self.signal_threads = signal_threads
        self.tracked = tracked
        self.on_scan = on_scan
        self.on_error = on_error
        self._known: set[int] = set()
        self._young: dict[int, tuple[str, ...]] = {}
        self._pidfds: dict[tuple[int, int], int] = {}
        self._threads: dict[int, int] = {}
        self._named: dict[int, set[int]] = {}  # pid -> tids whose name was read for good
        self._unnamed: dict[int, dict[int, float]] = {}  # pid -> tid -> first read
        self._signal_seen: set[tuple[int, int]] = set()
        self.failures = 0

    def open(self) -> None:
        """Nothing to acquire; /proc is checked by the first scan."""

    def close(self) -> None:
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Scan and poll until ``stop``; a failed round is logged, counted and retried."""
        next_scan = 0.0
        while not stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_scan:
                    next_scan = now + self.scan_interval
                    self.scan(emit)
                elif self.quick:
                    self.poll(emit)
                deadline = min(next_scan, time.monotonic() + (self.interval if self.quick else 0.2))
                self._wait(emit, stop, deadline)
            except OSError as error:
                # /proc unmounted or replaced under us: retry on the next interval.
                self.failures += 1
                self.on_error()
                next_scan = 0.0
                logger.error(
                    "Polling %s failed (%d failures so far): %s; retrying in %.1fs",
                    self.procfs.root, self.failures, error, self.interval,
                )
                stop.wait(self.interval)

    def scan(self, emit: Emit) -> None:
        started = time.monotonic()
        processes = self.procfs.scan()
        duration = time.monotonic() - started
        self._known = set(processes)
        emit(ScanCompleted(time=time.monotonic(), processes=processes, duration=duration))
        self.on_scan(duration)

    def poll(self, emit: Emit) -> None:
        """Report new and gone pids, re-read young ones, check tracked JVMs' threads."""
        now = time.monotonic()
        pids = set(self.procfs.list_pids())
        for pid in self._known - pids:
            emit(ProcessExited(time=now, pid=pid))
        for pid, argv in list(self._young.items()):
            info = self.procfs.read_info(pid) if pid in pids else None
            if info is not None and info.argv != argv:
                emit(ProcessExeced(time=now, pid=pid, info=info))
        self._young = {}
        for pid in sorted(pids - self._known):
            info = self.procfs.read_info(pid)
            if info is None:
                continue
            emit(ProcessForked(time=now, pid=pid, ppid=info.ppid, info=info))
            self._young[pid] = info.argv
        self._known = pids
        self._open_pidfds()

    def _open_pidfds(self) -> None:
        tracked = {(pid, start_ticks) for pid, start_ticks, _ in self.tracked()}
        for key in tracked - set(self._pidfds):
            self._open_pidfd(key)
        for key in set(self._pidfds) - tracked:
            os.close(self._pidfds.pop(key))

    def check_jvms(self, emit: Emit) -> None:
        """Look for new "<SIGNAL> handler" threads in the JVMs of worker trees."""
        jvms = {pid for pid, _, is_jvm in self.tracked() if is_jvm}
        for pid in jvms:
            self._check_signal_threads(emit, pid)
        for pid in set(self._threads) - jvms:
            del self._threads[pid]
            self._named.pop(pid, None)
            self._unnamed.pop(pid, None)
        self._signal_seen = {seen for seen in self._signal_seen if seen[0] in jvms}

    def _open_pidfd(self, key: tuple[int, int]) -> None:
        pid, start_ticks = key
        try:
            fd = os.pidfd_open(pid)
        except OSError as error:
            logger.debug("pidfd_open failed pid=%d: %s", pid, error)
            return
        stat = self.procfs.read_stat(pid)
        if stat is None or stat.start_ticks != start_ticks:
            os.close(fd)  # the pid now belongs to another process
            return
        self._pidfds[key] = fd

    def _check_signal_threads(self, emit: Emit, pid: int) -> None:
        """Read the names of a JVM's new threads, and again of those named too late.

        A thread gets its name from itself shortly after it starts, so a thread
        read before that is read again on later checks for NAMING_SECONDS.
        """
        stat = self.procfs.read_stat(pid)
        if stat is None:
            return
        unnamed = self._unnamed.setdefault(pid, {})
        if self._threads.get(pid) == stat.num_threads and not unnamed:
            return
        self._threads[pid] = stat.num_threads
        now = time.monotonic()
        known = self._named.setdefault(pid, set())
        for tid in self.procfs.list_tasks(pid):
            if tid in known:
                continue
            comm = self.procfs.read_task_comm(pid, tid)
            signum = SIGNAL_THREADS.get(comm or "")
            if signum is None:
                first_seen = unnamed.setdefault(tid, now)
                if now - first_seen > NAMING_SECONDS:
                    known.add(tid)
                    del unnamed[tid]
                continue
            known.add(tid)
            unnamed.pop(tid, None)
            if (pid, signum) in self._signal_seen:
                continue
            task = self.procfs.read_task_stat(pid, tid)
            if task is None:
                continue
            self._signal_seen.add((pid, signum))
            # The start time is truncated to a clock tick: take the middle of it.
            seen = ticks_to_monotonic(task.start_ticks) + 0.5 / CLOCK_TICKS_PER_SECOND
            emit(JvmSignalThreadSeen(time=seen, pid=pid, signal=signum))

    def _wait(self, emit: Emit, stop: threading.Event, deadline: float) -> None:
        """Sleep until ``deadline`` or ``stop``, reporting pidfd exits as they happen
        and checking JVMs for signal threads on their own cadence."""
        next_check = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            if self.signal_threads and now >= next_check:
                self.check_jvms(emit)
                next_check = now + SIGNAL_THREAD_CHECK_SECONDS
            step = min(deadline - now, 0.2)
            if self.signal_threads:
                step = min(step, max(0.0, next_check - time.monotonic()))
            fds = {fd: key for key, fd in self._pidfds.items()}
            if not fds:
                stop.wait(step)
                continue
            # poll(), not select(): pidfds of a busy node pass select()'s fd limit of 1024.
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            ready = poller.poll(step * 1000)
            exited = time.monotonic()
            for fd, _ in ready:
                pid, start_ticks = fds[fd]
                os.close(self._pidfds.pop((pid, start_ticks)))
                emit(ProcessExited(time=exited, pid=pid, start_ticks=start_ticks))
