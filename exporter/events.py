"""Facts that event sources report to the process table and the tracker.

Every ``time`` is seconds on CLOCK_MONOTONIC (``time.monotonic()``): the proc
connector stamps its messages with ``ktime_get_ns()``, the tracefs instance is
switched to the ``mono`` trace clock, and the poll source reads the same clock, so
events from different sources can be compared and subtracted directly.

Every ``pid`` is a process id (thread group id) in the initial PID namespace.
Sources drop thread-level events before they emit anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process as read from /proc; ``start_ticks`` and ``pid`` are its identity."""

    pid: int
    start_ticks: int  # /proc/PID/stat field 22, clock ticks after boot
    ppid: int
    comm: str
    state: str  # /proc/PID/stat field 3, for example "S", "R", "Z"
    uid: int | None = None  # real uid from /proc/PID/status, None when unreadable
    argv: tuple[str, ...] = ()  # empty for kernel threads and zombies
    nspid: tuple[int, ...] = ()  # NSpid line, outermost namespace first
    pidns: int | None = None  # inode of /proc/PID/ns/pid, None when unreadable
    threads: int = 1

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)


@dataclass(frozen=True, slots=True)
class ProcessForked:
    """A new process (not a thread) was created by ``fork``/``clone``."""

    time: float
    pid: int
    ppid: int
    info: ProcessInfo | None = None  # read at once by the source; None if it vanished


@dataclass(frozen=True, slots=True)
class ProcessExeced:
    """A process called ``execve``; ``info`` carries the new argv when it was readable."""

    time: float
    pid: int
    info: ProcessInfo | None = None


@dataclass(frozen=True, slots=True)
class ProcessExited:
    """A process (its thread group leader) exited.

    ``status`` is the wait status as ``waitpid(2)`` reports it: ``code << 8`` for a
    normal exit, the signal number (plus 0x80 with a core dump) for a signal death.
    It is None when the source cannot know it (polling).
    """

    time: float
    pid: int
    status: int | None = None
    start_ticks: int | None = None  # identity, when the source has it


@dataclass(frozen=True, slots=True)
class SignalGenerated:
    """The kernel generated a signal for a process (tracepoint ``signal_generate``).

    ``code`` is the siginfo ``si_code``: 0 (SI_USER) for ``kill(2)``, 0x80
    (SI_KERNEL) for signals the kernel sends itself, such as the SIGKILL of a
    PID-namespace teardown or of the OOM killer. ``result`` is the tracepoint's
    ``res`` field: 0 delivered, 1 ignored, 2 already pending, 3 lost.
    """

    time: float
    pid: int
    signal: int
    sender_pid: int
    sender_comm: str
    code: int = 0
    errno: int = 0
    group: bool = True
    result: int = 0


@dataclass(frozen=True, slots=True)
class JvmSignalThreadSeen:
    """A JVM started the thread HotSpot names after a signal ("SIGTERM handler").

    HotSpot runs the shutdown for SIGTERM, SIGINT and SIGHUP on a new thread named
    "<SIGNAME> handler", so its start time is when the signal arrived. Polling
    uses this to see a termination request without a kernel signal source.
    """

    time: float
    pid: int
    signal: int


@dataclass(frozen=True, slots=True)
class ScanCompleted:
    """A full /proc scan finished; ``processes`` is every process seen, by pid."""

    time: float
    processes: dict[int, ProcessInfo] = field(default_factory=dict)
    duration: float = 0.0


@dataclass(frozen=True, slots=True)
class EventsLost:
    """A source found that it lost events (netlink ENOBUFS, trace buffer overrun)."""

    time: float
    source: str
    count: int = 1


Event = (
    ProcessForked
    | ProcessExeced
    | ProcessExited
    | SignalGenerated
    | JvmSignalThreadSeen
    | ScanCompleted
    | EventsLost
)
