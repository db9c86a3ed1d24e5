"""Signals generated for any process, from the tracepoint signal:signal_generate.

The source works in a private tracefs instance (``instances/<prefix>-<pid>``), so
its trace clock, buffer and filter never touch the top-level trace buffer or other
tools' instances. The kernel fires the tracepoint for a signal that passed the
kill(2) permission check, whether it was delivered, ignored or already pending,
and a kill that fails with EPERM produces no line (both checked on Linux 6.18).

A trace_pipe line looks like this, with the optional tgid column present when the
``record-tgid`` option is on::

    kill-4083    (   4083) [001] d..1.   457.556224: signal_generate: sig=15 errno=0 code=0 comm=sleep pid=4082 grp=1 res=0
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import select
import threading
import time
from typing import Iterable

from exporter.events import EventsLost, SignalGenerated
from exporter.sources.base import Emit, SourceUnavailable

log = logging.getLogger(__name__)

DEFAULT_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
DEFAULT_SIGNALS = (1, 2, 3, 6, 9, 15)  # SIGHUP, SIGINT, SIGQUIT, SIGABRT, SIGKILL, SIGTERM
EVENT_DIR = "events/signal/signal_generate"
UNKNOWN_COMM = "<...>"  # printed when the kernel's pid-to-comm cache has no entry

_MARKER = ": signal_generate: "
_HEADER = re.compile(
    r"\s*(?P<comm>.*)-(?P<pid>\d+)\s+"
    r"(?:\(\s*(?P<tgid>\d+|-+)\)\s+)?"
    r"\[(?P<cpu>\d+)\]\s+"
    r"(?:\S+\s+)?"  # irq-info flags such as "d..1."
    r"(?P<timestamp>\d+\.\d+)"
)
_FIELDS = re.compile(
    r"sig=(?P<sig>-?\d+) errno=(?P<errno>-?\d+) code=(?P<code>-?\d+) "
    r"comm=(?P<comm>.*) pid=(?P<pid>-?\d+) grp=(?P<grp>-?\d+) res=(?P<res>-?\d+)"
)
_LOST = re.compile(r"CPU:(?P<cpu>\d+) \[LOST (?P<count>\d+) EVENTS\]")

_ROOT_HINT = ". Writing to tracefs needs root."
_SELECT_TIMEOUT = 0.2
_READ_SIZE = 65536
_MAX_PARTIAL = 65536  # a longer line without a newline is dropped as garbage
_LOG_INTERVAL = 60.0
_RMDIR_ATTEMPTS = 10
_RMDIR_RETRY_DELAY = 0.05

# After trace_pipe becomes readable, the reader waits this long before it reads.
# The kernel looks up the sender's comm and tgid when trace_pipe is read, in a
# cache that it fills at the sender's next context switch. A read right after the
# event can therefore print "<...>" and "(-------)". Event times come from the
# trace clock, so the delay does not shift them. On a 2-CPU Linux 6.18 VM, 1 of 20
# senders that kept running after kill(2) showed "<...>" with no delay, and none
# of 20 did with a 2 ms delay.
_SETTLE_SECONDS = 0.01


class _RateLimitedLog:
    """Logger for one kind of repeated message, at most one line per interval.

    The next line logged reports how many were suppressed in between.
    """

    def __init__(self, level: int, interval: float = _LOG_INTERVAL) -> None:
        self._level = level
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        log.log(self._level, message, *args)
        self._next = now + self._interval
        self._suppressed = 0


def parse_line(line: str) -> SignalGenerated | int | None:
    """Parse one trace_pipe line into a SignalGenerated or a lost-event count.

    Returns the count M of a ``CPU:N [LOST M EVENTS]`` line, and None for any
    other line, including truncated and garbage ones. The target fields are
    matched from the right and the sender pid is the last ``-digits`` before the
    CPU column, so either comm may contain spaces, '-', '(' or 'pid='.
    ``sender_pid`` is the tgid column when it contains a number, otherwise the
    sending thread's id. ``sender_comm`` is UNKNOWN_COMM when the kernel had no
    comm cached for the sender.
    """
    line = line.rstrip("\n")
    lost = _LOST.fullmatch(line.strip())
    if lost:
        return int(lost["count"])
    head, marker, payload = line.partition(_MARKER)
    if not marker:
        return None
    header = _HEADER.fullmatch(head)
    fields = _FIELDS.fullmatch(payload)
    if header is None or fields is None:
        return None
    return _to_event(header, fields)


def _to_event(header: re.Match[str], fields: re.Match[str]) -> SignalGenerated:
    tgid = header["tgid"]
    sender_pid = int(tgid) if tgid and tgid.isdigit() else int(header["pid"])
    return SignalGenerated(
        time=float(header["timestamp"]),
        pid=int(fields["pid"]),
        signal=int(fields["sig"]),
        sender_pid=sender_pid,
        sender_comm=header["comm"],
        code=int(fields["code"]),
        errno=int(fields["errno"]),
        group=fields["grp"] != "0",
        result=int(fields["res"]),
    )


def build_filter(signals: Iterable[int]) -> str:
    """Build the event filter that keeps only the given signal numbers."""
    return " || ".join(f"sig=={number}" for number in sorted(set(signals)))


class TracefsSource:
    """Source of every generated signal in ``signals``, with its sender, from tracefs.

    ``tracing_root`` is the tracefs mount to use, by default the first of
    DEFAULT_ROOTS that is mounted. With ``mount`` true, an unmounted tracefs is
    mounted at ``tracing_root`` or /sys/kernel/tracing, which needs CAP_SYS_ADMIN.
    ``buffer_kb`` is the instance's ring buffer size per CPU in KiB.
    """

    name = "tracefs"

    def __init__(
        self,
        tracing_root: str | None = None,
        instance_prefix: str = "storm-termination-exporter",
        signals: Iterable[int] = DEFAULT_SIGNALS,
        buffer_kb: int = 1024,
        mount: bool = True,
    ) -> None:
        self._signals = tuple(sorted(set(signals)))
        if not self._signals or not all(1 <= number <= 64 for number in self._signals):
            raise ValueError(f"signals must be numbers from 1 to 64, got {self._signals}")
        if buffer_kb < 1:
            raise ValueError(f"buffer_kb must be at least 1, got {buffer_kb}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", instance_prefix):
            raise ValueError(f"instance_prefix {instance_prefix!r} is not a plain file name")
        self._tracing_root = tracing_root
        self._prefix = instance_prefix
        self._buffer_kb = buffer_kb
        self._mount = mount
        self._instance: str | None = None
        self._pipe: int | None = None
        self.lost = 0  # events the kernel reported lost since open()
        self.malformed = 0  # unparsable trace_pipe lines since open()
        self._log_lost = _RateLimitedLog(logging.WARNING)
        self._log_malformed = _RateLimitedLog(logging.WARNING)

    @property
    def instance_path(self) -> str | None:
        """The path of the open instance, None when closed."""
        return self._instance

    def open(self) -> None:
        """Create the private instance, enable the tracepoint and open trace_pipe.

        Raises SourceUnavailable when tracefs cannot be found or mounted, or the
        instance cannot be set up. An instance created here is removed again
        before the exception propagates.
        """
        if self._instance is not None:
            self.close()
        root = self._find_root()
        instances = os.path.join(root, "instances")
        _remove_stale_instances(instances, self._prefix)
        path = os.path.join(instances, f"{self._prefix}-{os.getpid()}")
        _make_instance(path)
        try:
            self._pipe = self._configure(path)
        except BaseException:
            _remove_instance(path)
            raise
        self._instance = path
        self.lost = 0
        self.malformed = 0
        log.info(
            "Tracing signals %s in tracefs instance %s.",
            ",".join(map(str, self._signals)),
            path,
        )

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit events until ``stop`` is set. Raises OSError when trace_pipe fails."""
        pipe = self._pipe
        if pipe is None:
            raise RuntimeError("TracefsSource.run() called before open()")
        partial = b""
        while not stop.is_set():
            readable, _, _ = select.select([pipe], [], [], _SELECT_TIMEOUT)
            if not readable:
                continue
            time.sleep(_SETTLE_SECONDS)
            chunk = _read_available(pipe)
            if chunk is None:
                continue
            if not chunk:
                # trace_pipe does not normally return end of file, so wait, not spin.
                stop.wait(_SELECT_TIMEOUT)
                continue
            partial = self._handle_chunk(partial + chunk, emit)

    def close(self) -> None:
        """Disable the tracepoint, close trace_pipe and remove the instance.

        A second call does nothing.
        """
        path, self._instance = self._instance, None
        pipe, self._pipe = self._pipe, None
        if path is None:
            return
        try:
            _write(os.path.join(path, EVENT_DIR, "enable"), "0")
        except OSError as error:
            log.warning("Disabling signal_generate in %s failed: %s", path, error)
        if pipe is not None:
            os.close(pipe)
        _remove_instance(path)
        log.info("Removed tracefs instance %s.", path)

    def _find_root(self) -> str:
        candidates = (self._tracing_root,) if self._tracing_root else DEFAULT_ROOTS
        for candidate in candidates:
            if _is_tracefs(candidate):
                return candidate
        for candidate in candidates:
            # A tracefs root is mode 0700: to anyone but root it looks empty.
            if os.path.isdir(candidate) and not os.access(candidate, os.R_OK | os.X_OK):
                raise SourceUnavailable(
                    f"cannot read {candidate}: permission denied. The tracefs source "
                    "needs root, because only root may enter tracefs."
                )
        if not self._mount:
            raise SourceUnavailable(
                f"tracefs is not mounted at {' or '.join(candidates)} and mounting "
                "is disabled. Mount tracefs there or allow mounting."
            )
        # Mount only at the standard place: a path given by the user may be any
        # directory, and a mount there would hide what it contains.
        if candidates[0] != DEFAULT_ROOTS[0]:
            raise SourceUnavailable(
                f"{candidates[0]} is not a tracefs mount; the exporter mounts tracefs only "
                f"at {DEFAULT_ROOTS[0]}, so mount it at {candidates[0]} or use the default path"
            )
        _mount_tracefs(candidates[0])
        if not _is_tracefs(candidates[0]):
            raise SourceUnavailable(f"mounted tracefs at {candidates[0]} but it has no instances")
        return candidates[0]

    def _configure(self, path: str) -> int:
        event = os.path.join(path, EVENT_DIR)
        if not os.path.isdir(event):
            raise SourceUnavailable(f"tracepoint signal:signal_generate not found in {path}")
        _setup_write(os.path.join(path, "trace_clock"), "mono")
        _setup_write(os.path.join(path, "buffer_size_kb"), str(self._buffer_kb))
        _enable_record_tgid(path)
        _setup_write(os.path.join(event, "filter"), build_filter(self._signals))
        _setup_write(os.path.join(event, "enable"), "1")
        pipe_path = os.path.join(path, "trace_pipe")
        try:
            return os.open(pipe_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            raise SourceUnavailable(f"opening {pipe_path} failed: {error.strerror}") from error

    def _handle_chunk(self, data: bytes, emit: Emit) -> bytes:
        """Handle the complete lines in ``data`` and return the unfinished rest."""
        *lines, partial = data.split(b"\n")
        for raw in lines:
            self._handle_line(raw.decode("utf-8", errors="replace"), emit)
        if len(partial) > _MAX_PARTIAL:
            self._report_malformed(f"{len(partial)} bytes without a newline")
            return b""
        return partial

    def _handle_line(self, line: str, emit: Emit) -> None:
        result = parse_line(line)
        if isinstance(result, SignalGenerated):
            emit(result)
        elif isinstance(result, int):
            self.lost += result
            self._log_lost(
                "The tracefs buffer of %s overran and lost %d events (%d since open).",
                self._instance,
                result,
                self.lost,
            )
            emit(EventsLost(time.monotonic(), self.name, result))
        elif line.strip():
            self._report_malformed(repr(line[:200]))

    def _report_malformed(self, what: str) -> None:
        self.malformed += 1
        self._log_malformed(
            "Skipped an unparsable trace_pipe line in %s: %s (%d since open).",
            self._instance,
            what,
            self.malformed,
        )


def _is_tracefs(path: str) -> bool:
    return all(
        os.path.exists(os.path.join(path, name))
        for name in ("instances", "trace_pipe", "available_events")
    )


def _mount_tracefs(path: str) -> None:
    if not os.path.isdir(path):
        raise SourceUnavailable(f"cannot mount tracefs: {path} does not exist")
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.mount(b"nodev", os.fsencode(path), b"tracefs", ctypes.c_ulong(0), None)
    if result != 0:
        code = ctypes.get_errno()
        raise SourceUnavailable(
            f"mounting tracefs at {path} failed: {os.strerror(code)}. Mounting needs "
            "CAP_SYS_ADMIN. Otherwise mount tracefs on the node and into the container."
        )
    log.info("Mounted tracefs at %s.", path)


def _remove_stale_instances(instances: str, prefix: str) -> None:
    """Remove ``<prefix>-<pid>`` instances whose pid is not alive, or is this process."""
    pattern = re.compile(re.escape(prefix) + r"-(\d+)")
    try:
        names = os.listdir(instances)
    except OSError as error:
        raise SourceUnavailable(f"listing {instances} failed: {error.strerror}") from error
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        pid = int(match[1])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        log.info("Removing stale tracefs instance %s of pid %d.", name, pid)
        _remove_instance(os.path.join(instances, name))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_instance(path: str) -> None:
    try:
        os.mkdir(path)
    except OSError as error:
        hint = _ROOT_HINT if error.errno in (errno.EACCES, errno.EPERM) else ""
        raise SourceUnavailable(
            f"creating tracefs instance {path} failed: {error.strerror}{hint}"
        ) from error


def _remove_instance(path: str) -> None:
    """Remove an instance, retrying while the kernel reports it busy."""
    for attempt in range(1, _RMDIR_ATTEMPTS + 1):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or attempt == _RMDIR_ATTEMPTS:
                log.error(
                    "Removing tracefs instance %s failed after %d attempts: %s",
                    path,
                    attempt,
                    error,
                )
                return
        time.sleep(_RMDIR_RETRY_DELAY)


def _enable_record_tgid(path: str) -> None:
    option = os.path.join(path, "options", "record-tgid")
    try:
        _write(option, "1")
    except OSError as error:
        log.info(
            "Could not enable %s (%s), so sender pids are thread ids.", option, error.strerror
        )


def _setup_write(path: str, value: str) -> None:
    try:
        _write(path, value)
    except OSError as error:
        hint = _ROOT_HINT if error.errno in (errno.EACCES, errno.EPERM) else ""
        raise SourceUnavailable(
            f"writing {value!r} to {path} failed: {error.strerror}{hint}"
        ) from error


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(value)


def _read_available(pipe: int) -> bytes | None:
    try:
        return os.read(pipe, _READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
