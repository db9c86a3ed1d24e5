"""/proc polling: full scans, and in between a cheap poll for new and gone processes.

A full scan reads every process and reconciles the tracker with it, whatever
other sources run, so events that a kernel source lost are recovered. When no
proc connector runs, ``quick`` mode also polls every ``interval``: new pids are
read, and tracked processes get a pidfd that becomes readable at the exact
moment they exit. A thread of its own waits on those pidfds, so an exit is
timed when it happens even while a poll or a full scan runs. When no signal
source runs, ``signal_threads`` mode checks the JVMs of worker trees every 0.2 s
for HotSpot's "SIGTERM handler" thread, whose start time is when the JVM
received SIGTERM.
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

# The exit waiter thread runs as SCHED_RR at this priority when the process may
# (CAP_SYS_NICE), else at this nice value, so that a busy node does not delay
# the moment it takes an exit's time.
EXIT_WAITER_RT_PRIORITY = 1
EXIT_WAITER_NICE = -10
_EXIT_WAIT_MS = 200


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
        give_way: Callable[[], None] = lambda: None,
    ) -> None:
        self.procfs = procfs
        self.interval = interval
        self.scan_interval = scan_interval
        self.quick = quick
        self.signal_threads = signal_threads
        self.tracked = tracked
        self.on_scan = on_scan
        self.on_error = on_error
        self.give_way = give_way  # called between parts of a full scan, see exporter.foreground
        self._known: set[int] = set()
        self._young: dict[int, tuple[str, ...]] = {}
        # The pidfds of tracked processes, shared with the exit waiter thread under
        # _pidfd_lock. A pidfd that is no longer wanted is retired, and the waiter
        # closes it, so that it never polls an fd number that was closed and reused.
        self._pidfds: dict[tuple[int, int], int] = {}
        self._retired: list[int] = []
        self._pidfd_lock = threading.Lock()
        self._wakeup: tuple[int, int] | None = None  # pipe that makes the waiter reread _pidfds
        self._threads: dict[int, int] = {}
        self._named: dict[int, set[int]] = {}  # pid -> tids whose name was read for good
        self._unnamed: dict[int, dict[int, float]] = {}  # pid -> tid -> first read
        self._signal_seen: set[tuple[int, int]] = set()
        self.failures = 0

    def open(self) -> None:
        """Nothing to acquire; /proc is checked by the first scan."""

    def close(self) -> None:
        with self._pidfd_lock:
            for fd in [*self._pidfds.values(), *self._retired]:
                os.close(fd)
            self._pidfds.clear()
            self._retired.clear()
            wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            for fd in wakeup:
                os.close(fd)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Scan and poll until ``stop``; a failed round is logged, counted and retried."""
        waiter = threading.Thread(target=self._wait_exits, args=(emit, stop), name="poll-exits", daemon=True)
        waiter.start()
        try:
            self._run(emit, stop)
        finally:
            waiter.join(timeout=1.0)

    def _run(self, emit: Emit, stop: threading.Event) -> None:
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
        processes = self.procfs.scan(give_way=self.give_way)
        duration = time.monotonic() - started
        self._known = set(processes)
        self.give_way()  # the tracker applies the scan under the lock that scrapes need
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
        opened = {}
        for key in tracked - set(self._pidfds):
            fd = self._open_pidfd(key)
            if fd is not None:
                opened[key] = fd
        with self._pidfd_lock:
            changed = bool(opened)
            self._pidfds.update(opened)
            for key in set(self._pidfds) - tracked:
                self._retired.append(self._pidfds.pop(key))
                changed = True
            wakeup = self._wakeup
        if changed and wakeup is not None:
            try:
                os.write(wakeup[1], b"\0")
            except BlockingIOError:
                pass  # the pipe is full, so the waiter wakes anyway

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

    def _open_pidfd(self, key: tuple[int, int]) -> int | None:
        pid, start_ticks = key
        try:
            fd = os.pidfd_open(pid)
        except OSError as error:
            logger.debug("pidfd_open failed pid=%d: %s", pid, error)
            return None
        stat = self.procfs.read_stat(pid)
        if stat is None or stat.start_ticks != start_ticks:
            os.close(fd)  # the pid now belongs to another process
            return None
        return fd

    def _check_signal_threads(self, emit: Emit, pid: int) -> None:
        """Read the names of a JVM's new threads, and again of those named too late.

        A thread gets its name from itself shortly after it starts, so a thread
        read before that is read again on later checks for NAMING_SECONDS.
        """
        threads = self.procfs.count_threads(pid)
        if threads is None:
            return
        unnamed = self._unnamed.setdefault(pid, {})
        if self._threads.get(pid) == threads and not unnamed:
            return
        self._threads[pid] = threads
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
        """Sleep until ``deadline`` or ``stop``, checking JVMs for signal threads on their own cadence."""
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
            stop.wait(step)

    def _wait_exits(self, emit: Emit, stop: threading.Event) -> None:
        """Report the exit of each tracked process when its pidfd becomes readable, until ``stop``."""
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with self._pidfd_lock:
            self._wakeup = (read_end, write_end)
        _raise_thread_priority()
        while not stop.is_set():
            with self._pidfd_lock:
                if self._wakeup is None:
                    return  # closed
                for fd in self._retired:
                    os.close(fd)
                self._retired.clear()
                fds = {fd: key for key, fd in self._pidfds.items()}
            # poll(), not select(): pidfds of a busy node pass select()'s fd limit of 1024.
            poller = select.poll()
            poller.register(read_end, select.POLLIN)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            ready = poller.poll(_EXIT_WAIT_MS)
            exited = time.monotonic()
            for fd, _ in ready:
                if fd == read_end:
                    _drain(read_end)
                    continue
                key = fds[fd]
                with self._pidfd_lock:
                    if self._pidfds.get(key) != fd:
                        continue  # retired meanwhile
                    del self._pidfds[key]
                    os.close(fd)
                pid, start_ticks = key
                emit(ProcessExited(time=exited, pid=pid, start_ticks=start_ticks))


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _raise_thread_priority() -> None:
    """Run the calling thread as SCHED_RR when allowed, else at EXIT_WAITER_NICE."""
    thread_id = threading.get_native_id()
    try:
        os.sched_setscheduler(thread_id, os.SCHED_RR, os.sched_param(EXIT_WAITER_RT_PRIORITY))
        return
    except OSError as error:
        logger.debug("Setting SCHED_RR failed for the exit waiter thread %d: %s", thread_id, error.strerror)
    try:
        os.setpriority(os.PRIO_PROCESS, thread_id, EXIT_WAITER_NICE)
    except OSError as error:
        logger.debug("Setting nice %d failed for the exit waiter thread %d: %s",
                     EXIT_WAITER_NICE, thread_id, error.strerror)
