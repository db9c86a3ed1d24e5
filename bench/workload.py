"""Storm-shaped load for the benchmarks: worker trees and idle processes from bench/holder.c.

Every process started here is recorded and ended by pid in ``Workload.close()``,
which signals workers through pidfds opened while they were alive, so a reused pid
is never hit. The measured SIGTERM uses kill(2) on a worker that is still alive, and
its pid cannot be reused before its LogWriter reaps it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from exporter.procfs import ProcFS
from stormargv import logwriter_argv  # tests/stormargv.py

HOLDER_SOURCE = Path(__file__).resolve().parent / "holder.c"

_procfs = ProcFS()


class WorkloadError(Exception):
    """The load generator could not start a process it needs."""


def build_holder(directory: str) -> str:
    """Compile bench/holder.c into ``directory``/java and return the binary's path.

    The binary is named java so that its comm is the one a worker JVM has.
    """
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise WorkloadError("no C compiler found: install gcc to build bench/holder.c")
    binary = os.path.join(directory, "java")
    command = [compiler, "-O2", "-pthread", "-o", binary, str(HOLDER_SOURCE)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise WorkloadError(f"compiling {HOLDER_SOURCE} failed:\n{result.stderr}")
    return binary


def start_ticks_of(pid: int) -> int | None:
    stat = _procfs.read_stat(pid)
    return None if stat is None else stat.start_ticks


@dataclass
class Tree:
    """One LogWriter-shaped holder and the worker-shaped process it started."""

    logwriter: subprocess.Popen
    worker_pid: int
    worker_pidfd: int
    topology: str
    worker_id: str
    request_time: float | None = None  # time.monotonic() before the termination request
    returncode: int | None = None


@dataclass
class Workload:
    """Factory and registry of the benchmark's processes."""

    binary: str
    trees: list[Tree] = field(default_factory=list)
    idle: list[tuple[subprocess.Popen, list[tuple[int, int]]]] = field(default_factory=list)
    _serial: itertools.count = field(default_factory=lambda: itertools.count(1))

    def start_tree(self, topology: str, shutdown_delay_ms: int = 0, port: int | None = None) -> Tree:
        """Start a LogWriter holder with a Storm argv and wait for its worker's pid.

        Without ``port``, workers take the four ports of a default supervisor in turn.
        """
        serial = next(self._serial)
        worker_id = str(uuid.uuid4())
        port = 6700 + serial % 4 if port is None else port
        argv = logwriter_argv(topology, worker_id, port)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "BENCH_SHUTDOWN_DELAY_MS": str(shutdown_delay_ms)}
        logwriter = subprocess.Popen(
            argv,
            executable=self.binary,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        line = logwriter.stdout.readline()
        logwriter.stdout.close()
        if not line.strip().isdigit():
            logwriter.kill()
            logwriter.wait()
            raise WorkloadError(f"holder pid {logwriter.pid} reported no worker pid: {line!r}")
        worker_pid = int(line)
        pidfd = os.pidfd_open(worker_pid)
        tree = Tree(logwriter, worker_pid, pidfd, topology, worker_id)
        self.trees.append(tree)
        return tree

    def request_termination(self, tree: Tree) -> None:
        """Record ``time.monotonic()`` in ``request_time``, then send SIGTERM to the worker with kill(2)."""
        tree.request_time = time.monotonic()
        os.kill(tree.worker_pid, signal.SIGTERM)

    def kill_command(self, tree: Tree) -> subprocess.Popen:
        """Start ``kill -15 PID`` for the worker, as Storm's supervisor stops a worker.

        ``request_time`` is ``time.monotonic()`` before the command starts; the
        kernel's exec time of the command is the exact request. The caller waits
        for the command.
        """
        tree.request_time = time.monotonic()
        return subprocess.Popen(["kill", "-15", str(tree.worker_pid)], stdin=subprocess.DEVNULL)

    def reap(self, tree: Tree, timeout: float | None = None) -> int | None:
        """Wait for the LogWriter's exit status, then release the tree."""
        try:
            tree.returncode = tree.logwriter.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._release(tree)
        return tree.returncode

    def reap_exited(self) -> list[Tree]:
        """Release the trees whose LogWriter has exited, without waiting."""
        done = []
        for tree in list(self.trees):
            code = tree.logwriter.poll()
            if code is not None:
                tree.returncode = code
                self._release(tree)
                done.append(tree)
        return done

    def _release(self, tree: Tree) -> None:
        if tree in self.trees:
            self.trees.remove(tree)
            os.close(tree.worker_pidfd)

    def start_idle(self, count: int) -> list[int]:
        """Start ``count`` paused processes under one holder and return their pids."""
        holder = subprocess.Popen(
            [self.binary, "idle", str(count)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        children: list[tuple[int, int]] = []
        self.idle.append((holder, children))
        for line in holder.stdout:
            pid = int(line)
            ticks = start_ticks_of(pid)
            if ticks is not None:
                children.append((pid, ticks))
        holder.stdout.close()
        if len(children) != count:
            raise WorkloadError(f"idle holder pid {holder.pid} started {len(children)} of {count}")
        return [pid for pid, _ in children]

    def close(self) -> None:
        """Kill every process started here, by pid, and reap the direct children."""
        for tree in list(self.trees):
            try:
                signal.pidfd_send_signal(tree.worker_pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if tree.logwriter.poll() is None:
                tree.logwriter.kill()
            tree.logwriter.wait()
            self._release(tree)
        for holder, children in self.idle:
            for pid, ticks in children:
                # An idle child lives until it is killed, but the holder reaps it if
                # something else killed it first, so check that the pid is still its.
                if start_ticks_of(pid) == ticks:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if holder.poll() is None:
                try:
                    holder.wait(5)
                except subprocess.TimeoutExpired:
                    holder.kill()
                    holder.wait()
        self.idle.clear()
