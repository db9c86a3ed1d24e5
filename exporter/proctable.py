"""The node's processes as the exporter has seen them, keyed by (pid, start time).

A pid alone is not an identity: the kernel reuses pids, and a process that
appears under a recycled pid must never inherit the history of the process that
had it before. Each entry therefore carries the start time from
/proc/PID/stat field 22, and the table maps a pid to the one live entry that
has it now. Parent links are kept as keys, so the tree of a worker is known
even after its members are reparented to a subreaper or to PID 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.events import ProcessInfo
from exporter.storm import StormProcess, classify

Key = tuple[int, int]

# How long after its exit a process may still receive signals as a zombie; parents
# such as the LogWriter reap their children within milliseconds.
ZOMBIE_SECONDS = 1.0


@dataclass(slots=True)
class Process:
    """One process, alive or recently exited."""

    pid: int
    start_ticks: int
    ppid: int
    comm: str = ""
    uid: int | None = None
    # Only a digest of argv is kept: Storm command lines carry classpaths of
    # over 100 KB, and the table needs argv only to notice that it changed.
    argv_digest: int = 0
    nspid: tuple[int, ...] = ()
    pidns: int | None = None
    storm: StormProcess | None = None
    parent: Key | None = None
    worker: Key | None = None  # the worker JVM whose tree this process belongs to
    topology: str | None = None
    added: float = 0.0  # monotonic time the table learnt of the process
    cwd_checked: bool = False  # looked for a Storm multilang working directory
    exit_time: float | None = None
    exit_status: int | None = None

    @property
    def key(self) -> Key:
        return (self.pid, self.start_ticks)

    @property
    def alive(self) -> bool:
        return self.exit_time is None

    @property
    def role(self) -> str | None:
        return self.storm.role if self.storm else None

    def update(self, info: ProcessInfo) -> None:
        """Take the fields of a fresh /proc read of the same process."""
        self.ppid = info.ppid
        self.comm = info.comm
        if info.uid is not None:
            self.uid = info.uid
        if info.argv or info.state == "Z":
            self.argv_digest = hash(info.argv) if info.argv else 0
        if info.nspid:
            self.nspid = info.nspid
        if info.pidns is not None:
            self.pidns = info.pidns


class ProcessTable:
    """Live processes by pid, and every known process by key.

    Exited processes stay reachable by key until ``forget`` drops them, because
    the tracker still needs the members of a worker tree after the worker exited.
    """

    def __init__(self) -> None:
        self.by_pid: dict[int, Process] = {}
        self.by_key: dict[Key, Process] = {}
        # Keys of processes that exited in the last moments, so that a scan that
        # read them just before they exited does not bring them back.
        self.recent_exits: dict[Key, float] = {}
        self._exited_by_pid: dict[int, Process] = {}

    def __len__(self) -> int:
        return len(self.by_pid)

    def get(self, pid: int) -> Process | None:
        return self.by_pid.get(pid)

    def add(self, info: ProcessInfo, time: float = 0.0) -> tuple[Process, Process | None]:
        """Insert a process read from /proc; return it and the entry it replaced.

        The replaced entry is a previous holder of the same pid with another
        start time, which has therefore exited; the caller records that exit.
        """
        current = self.by_pid.get(info.pid)
        if current is not None and current.start_ticks == info.start_ticks:
            changed = bool(info.argv) and hash(info.argv) != current.argv_digest
            current.update(info)
            if changed:
                self._classify(current, info.argv)
            return current, None
        process = Process(pid=info.pid, start_ticks=info.start_ticks, ppid=info.ppid, added=time)
        process.update(info)
        parent = self.by_pid.get(info.ppid)
        if parent is not None:
            process.parent = parent.key
        self._classify(process, info.argv)
        self.by_pid[info.pid] = process
        self.by_key[process.key] = process
        return process, current

    def _classify(self, process: Process, argv: tuple[str, ...]) -> None:
        """Set the Storm role from argv, unless argv is only a copy of the parent's.

        Between fork and exec a child still shows its parent's argv, so the
        LogWriter's child looks like a second LogWriter until it execs the worker.
        """
        if not argv:
            return
        storm = classify(argv)
        parent = self.parent_of(process)
        if storm is not None and parent is not None and parent.storm is not None:
            same = (parent.storm.role, parent.storm.worker_id) == (storm.role, storm.worker_id)
            if same and parent.argv_digest == process.argv_digest:
                storm = None
        process.storm = storm

    def mark_exited(self, process: Process, time: float, status: int | None) -> None:
        """Record an exit; the pid becomes free for the next process."""
        if process.exit_time is None:
            process.exit_time = time
            process.exit_status = status
        if self.by_pid.get(process.pid) is process:
            del self.by_pid[process.pid]
        self.recent_exits[process.key] = time
        self._exited_by_pid[process.pid] = process

    def prune_recent_exits(self, before: float) -> None:
        for key in [k for k, t in self.recent_exits.items() if t < before]:
            del self.recent_exits[key]
            process = self._exited_by_pid.get(key[0])
            if process is not None and process.key == key:
                del self._exited_by_pid[key[0]]

    def latest(self, pid: int) -> Process | None:
        """Return the live holder of ``pid``, else the process that exited with it last."""
        return self.by_pid.get(pid) or self._exited_by_pid.get(pid)

    def holder_at(self, pid: int, time: float) -> Process | None:
        """Return the process that had ``pid`` at ``time``.

        That is the live holder, unless it appeared later than ``time``; then it is
        the process that exited with that pid. A fact may arrive after the exit it
        preceded, and a signal may be generated for a process that is already
        exiting, until its parent reaps it: both go to the exited process when it
        exited less than ZOMBIE_SECONDS before ``time``.
        """
        process = self.by_pid.get(pid)
        if process is not None and process.added <= time:
            return process
        exited = self._exited_by_pid.get(pid)
        if exited is not None and exited.exit_time is not None and exited.exit_time >= time - ZOMBIE_SECONDS:
            return exited
        return process

    def forget(self, key: Key) -> None:
        """Drop an exited process for good."""
        process = self.by_key.get(key)
        if process is None or process.alive:
            return
        del self.by_key[key]

    def parent_of(self, process: Process) -> Process | None:
        if process.parent is not None:
            return self.by_key.get(process.parent)
        return self.by_pid.get(process.ppid)
