"""Parsers for /proc/PID files, and ProcFS, which reads whole processes from a proc root.

The root is an argument, so the exporter can read the host's processes through a
mounted /host/proc and tests can read a fixture tree.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from exporter.events import ProcessInfo

_Parsed = TypeVar("_Parsed")

logger = logging.getLogger(__name__)

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

# A process that was reaped makes reads through its open /proc/PID directory fd fail
# with ESRCH. ENOENT comes from a path lookup after the directory itself is gone.
_VANISHED_ERRNOS = frozenset({errno.ESRCH, errno.ENOENT})
_DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM})

_READ_SIZE = 128 * 1024


class _Vanished(Exception):
    """The process exited while it was being read."""


@dataclass(frozen=True, slots=True)
class Stat:
    """The fields of /proc/PID/stat that the exporter uses, numbered as in proc(5)."""

    pid: int
    comm: str
    state: str  # field 3, one letter such as "S", "R", "Z"
    ppid: int
    pgrp: int
    session: int
    utime: int  # field 14, clock ticks
    stime: int  # field 15, clock ticks
    num_threads: int
    start_ticks: int  # field 22, clock ticks after boot
    exit_code: int | None  # field 52, a wait status, or None before Linux 3.5


@dataclass(frozen=True, slots=True)
class Status:
    """The fields of /proc/PID/status that the exporter uses. A missing key leaves None or ()."""

    name: str | None = None  # comm, with the kernel's "\\n" and "\\\\" escapes undone
    state: str | None = None  # the letter only, "S" for "S (sleeping)"
    tgid: int | None = None
    pid: int | None = None
    ppid: int | None = None
    uids: tuple[int, ...] = ()  # real, effective, saved set, filesystem
    gids: tuple[int, ...] = ()
    threads: int | None = None
    nstgid: tuple[int, ...] = ()  # outermost PID namespace first
    nspid: tuple[int, ...] = ()
    nspgid: tuple[int, ...] = ()
    nssid: tuple[int, ...] = ()
    sigpnd: int | None = None  # signal n is bit n - 1
    shdpnd: int | None = None
    sigblk: int | None = None
    sigign: int | None = None
    sigcgt: int | None = None


def parse_stat(text: str) -> Stat:
    """Parse one /proc/PID/stat line and raise ValueError when it is truncated or invalid.

    comm is taken between the first "(" and the last ")", because comm may itself
    contain spaces and parentheses.
    """
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        raise ValueError(f"invalid /proc stat line, missing '(comm)': {text!r}")
    # fields[0] is field 3 (state), so field n is fields[n - 3].
    fields = text[close_paren + 1 :].split()
    if len(fields) < 20:
        raise ValueError(
            f"truncated /proc stat line, {len(fields) + 2} of at least 22 fields: {text!r}"
        )
    if len(fields[0]) != 1:
        raise ValueError(f"invalid /proc stat line, state {fields[0]!r}: {text!r}")
    try:
        return Stat(
            pid=int(text[:open_paren]),
            comm=text[open_paren + 1 : close_paren],
            state=fields[0],
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            session=int(fields[3]),
            utime=int(fields[11]),
            stime=int(fields[12]),
            num_threads=int(fields[17]),
            start_ticks=int(fields[19]),
            exit_code=int(fields[49]) if len(fields) >= 50 else None,
        )
    except ValueError:
        raise ValueError(f"invalid /proc stat line, a field is not a number: {text!r}") from None


def _unescape_name(raw: str) -> str:
    # Only the one separator after "Name:" goes, because comm itself may start with a space.
    value = raw[1:] if raw.startswith("\t") else raw.lstrip(" ")
    return re.sub(r"\\([n\\])", lambda match: "\n" if match[1] == "n" else "\\", value)


def _first_word(raw: str) -> str:
    return raw.split()[0]


def _integers(raw: str) -> tuple[int, ...]:
    return tuple(int(word) for word in raw.split())


def _hex_mask(raw: str) -> int:
    return int(raw.strip(), 16)


_STATUS_KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "Name": ("name", _unescape_name),
    "State": ("state", _first_word),
    "Tgid": ("tgid", int),
    "Pid": ("pid", int),
    "PPid": ("ppid", int),
    "Uid": ("uids", _integers),
    "Gid": ("gids", _integers),
    "Threads": ("threads", int),
    "NStgid": ("nstgid", _integers),
    "NSpid": ("nspid", _integers),
    "NSpgid": ("nspgid", _integers),
    "NSsid": ("nssid", _integers),
    "SigPnd": ("sigpnd", _hex_mask),
    "ShdPnd": ("shdpnd", _hex_mask),
    "SigBlk": ("sigblk", _hex_mask),
    "SigIgn": ("sigign", _hex_mask),
    "SigCgt": ("sigcgt", _hex_mask),
}


def parse_status(text: str) -> Status:
    """Parse /proc/PID/status text, skipping unknown keys.

    Values follow "Key:" after a TAB or spaces. ValueError names the line when a
    known key has an invalid value.
    """
    values: dict[str, object] = {}
    # str.splitlines() would also split on \v, \f, \r, \x1c-\x1e and \x85, which comm may contain.
    for line in text.split("\n"):
        key, separator, raw = line.partition(":")
        known = _STATUS_KEYS.get(key)
        if known is None or not separator:
            continue
        attribute, convert = known
        try:
            values[attribute] = convert(raw)
        except (ValueError, IndexError):
            raise ValueError(f"invalid value in /proc status line {line!r}") from None
    return Status(**values)


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """Split /proc/PID/cmdline into argv, decoding UTF-8 with U+FFFD for invalid bytes.

    Kernel threads and zombies give b"" and so (). A process that rewrote its argv
    into one string without NULs gives a single element.
    """
    if not data:
        return ()
    parts = data.split(b"\0")
    if parts[-1] == b"":
        parts.pop()
    return tuple(part.decode("utf-8", errors="replace") for part in parts)


def signal_set(mask: int) -> frozenset[int]:
    """Return the signal numbers in a /proc status mask such as SigCgt (signal n is bit n - 1)."""
    return frozenset(bit + 1 for bit in range(mask.bit_length()) if mask >> bit & 1)


def ticks_to_monotonic(start_ticks: int) -> float:
    """Convert a start time in clock ticks after boot to CLOCK_MONOTONIC seconds.

    Linux counts start times (task->start_boottime) on CLOCK_BOOTTIME, which also
    runs during suspend, so the current BOOTTIME - MONOTONIC offset is subtracted.
    The result has the resolution of one clock tick (10 ms at 100 ticks per second).
    """
    boottime = time.clock_gettime(time.CLOCK_BOOTTIME)
    monotonic = time.clock_gettime(time.CLOCK_MONOTONIC)
    return start_ticks / CLOCK_TICKS_PER_SECOND - (boottime - monotonic)


def _read_bytes(path: str, dir_fd: int | None = None) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks = []
        while chunk := os.read(fd, _READ_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _is_expected(error: OSError) -> bool:
    return error.errno in _VANISHED_ERRNOS or error.errno in _DENIED_ERRNOS


class ProcFS:
    """Reader for the processes under a proc root such as /proc or /host/proc.

    Methods return None (or an empty list) when the process is gone or a file is
    not readable. OSErrors other than ESRCH, ENOENT, EACCES and EPERM are logged
    at debug level with the pid.
    """

    ticks_to_monotonic = staticmethod(ticks_to_monotonic)

    def __init__(self, root: str | os.PathLike[str] = "/proc") -> None:
        self.root = os.fspath(root)

    def list_pids(self) -> list[int]:
        """Return the pids of all processes in ascending order. Threads are not listed."""
        return sorted(int(name) for name in os.listdir(self.root) if name.isdecimal())

    def read_stat(self, pid: int) -> Stat | None:
        return self._read_parsed(pid, f"{pid}/stat", parse_stat)

    def read_status(self, pid: int) -> Status | None:
        return self._read_parsed(pid, f"{pid}/status", parse_status)

    def read_task_stat(self, pid: int, tid: int) -> Stat | None:
        return self._read_parsed(pid, f"{pid}/task/{tid}/stat", parse_stat)

    def read_task_comm(self, pid: int, tid: int) -> str | None:
        """Return a thread's comm, which unlike the status Name is not escaped."""
        data = self._read_path(pid, f"{pid}/task/{tid}/comm")
        if data is None:
            return None
        return data.decode("utf-8", errors="replace").removesuffix("\n")

    def read_pidns(self, pid: int) -> int | None:
        """Return the inode of /proc/PID/ns/pid, which identifies the process's PID namespace."""
        try:
            return os.stat(os.path.join(self.root, str(pid), "ns", "pid")).st_ino
        except OSError as error:
            self._log_unexpected(pid, f"{pid}/ns/pid", error)
            return None

    def read_cgroup(self, pid: int) -> str | None:
        """Return the text of /proc/PID/cgroup, or None when it is unreadable."""
        data = self._read_path(pid, f"{pid}/cgroup")
        return None if data is None else data.decode("utf-8", errors="replace")

    def read_cwd(self, pid: int) -> str | None:
        """Return the target of /proc/PID/cwd; reading another user's needs CAP_SYS_PTRACE."""
        try:
            return os.readlink(os.path.join(self.root, str(pid), "cwd"))
        except OSError as error:
            self._log_unexpected(pid, f"{pid}/cwd", error)
            return None

    def count_threads(self, pid: int) -> int | None:
        """Return the number of threads of a process from one stat(2), None when it is gone.

        Linux gives /proc/PID/task a link count of 2 plus the thread count
        (proc_task_getattr in fs/proc/base.c), which is cheaper than reading and
        parsing /proc/PID/stat.
        """
        try:
            return os.stat(os.path.join(self.root, str(pid), "task")).st_nlink - 2
        except OSError as error:
            self._log_unexpected(pid, f"{pid}/task", error)
            return None

    def list_tasks(self, pid: int) -> list[int]:
        """Return the thread ids of a process in ascending order, [] when it is gone."""
        try:
            names = os.listdir(os.path.join(self.root, str(pid), "task"))
        except OSError as error:
            self._log_unexpected(pid, f"{pid}/task", error)
            return []
        return sorted(int(name) for name in names if name.isdecimal())

    def read_info(self, pid: int) -> ProcessInfo | None:
        """Read one process, or return None when it is gone or is a thread, not a process.

        All files are read through one open /proc/PID directory fd. If the pid is
        reused during the reads, the fd still refers to the exited process and
        the reads fail, so the result never mixes two processes. Files other than
        stat that are unreadable give None (or ()) for their fields. A process in
        the middle of execve can show argv () until the kernel has set up its new
        stack.
        """
        try:
            dir_fd = os.open(
                os.path.join(self.root, str(pid)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            )
        except OSError as error:
            self._log_unexpected(pid, str(pid), error)
            return None
        try:
            return self._read_info_at(pid, dir_fd)
        except _Vanished:
            return None
        finally:
            os.close(dir_fd)

    def read_fork_info(self, pid: int) -> ProcessInfo | None:
        """Read only /proc/PID/stat: identity, parent and state of a just-forked child.

        Until it execs, a child runs its parent's program, so its argv, uid and
        namespaces are left empty here and filled in by the read at exec.
        """
        stat = self.read_stat(pid)
        if stat is None:
            return None
        return ProcessInfo(
            pid=pid, start_ticks=stat.start_ticks, ppid=stat.ppid, comm=stat.comm,
            state=stat.state, threads=stat.num_threads,
        )

    def scan(self, give_way: Callable[[], None] | None = None) -> dict[int, ProcessInfo]:
        """Read every process. A process that exits during the scan is left out.

        ``give_way()``, when given, is called before every 64 processes.
        """
        processes = {}
        for index, pid in enumerate(self.list_pids()):
            if give_way is not None and index % 64 == 0:
                give_way()
            info = self.read_info(pid)
            if info is not None:
                processes[pid] = info
        return processes

    def _read_info_at(self, pid: int, dir_fd: int) -> ProcessInfo | None:
        # cmdline first: a `kill` command lives for about a millisecond after its
        # exec, and its argv is the one field that is lost once it exits.
        cmdline = self._read_optional(pid, dir_fd, "cmdline")
        stat = self._read_stat_at(pid, dir_fd)
        if stat is None:
            return None
        status = self._read_status_at(pid, dir_fd)
        if status.tgid is not None and status.pid is not None and status.tgid != status.pid:
            return None
        return ProcessInfo(
            pid=pid,
            start_ticks=stat.start_ticks,
            ppid=stat.ppid,
            comm=stat.comm,
            state=stat.state,
            uid=status.uids[0] if status.uids else None,
            argv=parse_cmdline(cmdline) if cmdline is not None else (),
            nspid=status.nspid,
            pidns=self._read_pidns_at(pid, dir_fd),
            threads=status.threads if status.threads is not None else stat.num_threads,
        )

    def _read_stat_at(self, pid: int, dir_fd: int) -> Stat | None:
        try:
            text = _read_bytes("stat", dir_fd).decode("utf-8", errors="replace")
        except OSError as error:
            self._log_unexpected(pid, f"{pid}/stat", error)
            return None
        try:
            return parse_stat(text)
        except ValueError as error:
            logger.debug("Skipping pid %d because its stat file is invalid: %s", pid, error)
            return None

    def _read_status_at(self, pid: int, dir_fd: int) -> Status:
        data = self._read_optional(pid, dir_fd, "status")
        if data is None:
            return Status()
        try:
            return parse_status(data.decode("utf-8", errors="replace"))
        except ValueError as error:
            logger.debug("Ignoring the invalid status file of pid %d: %s", pid, error)
            return Status()

    def _read_pidns_at(self, pid: int, dir_fd: int) -> int | None:
        try:
            return os.stat("ns/pid", dir_fd=dir_fd).st_ino
        except OSError as error:
            self._handle_optional_error(pid, dir_fd, "ns/pid", error)
            return None

    def _read_optional(self, pid: int, dir_fd: int, name: str) -> bytes | None:
        try:
            return _read_bytes(name, dir_fd)
        except OSError as error:
            self._handle_optional_error(pid, dir_fd, name, error)
            return None

    def _handle_optional_error(self, pid: int, dir_fd: int, name: str, error: OSError) -> None:
        """Raise _Vanished when the process is gone, and otherwise leave the field unknown.

        ENOENT alone does not prove that the process is gone, because a kernel
        without CONFIG_PID_NS has no ns/pid. So the stat file is checked as well.
        """
        if error.errno == errno.ESRCH:
            raise _Vanished
        if error.errno == errno.ENOENT:
            try:
                os.stat("stat", dir_fd=dir_fd)
            except OSError:
                raise _Vanished from None
            return
        self._log_unexpected(pid, f"{pid}/{name}", error)

    def _read_parsed(
        self, pid: int, path: str, parse: Callable[[str], _Parsed]
    ) -> _Parsed | None:
        data = self._read_path(pid, path)
        if data is None:
            return None
        try:
            return parse(data.decode("utf-8", errors="replace"))
        except ValueError as error:
            logger.debug("Ignoring invalid %s for pid %d: %s", path, pid, error)
            return None

    def _read_path(self, pid: int, path: str) -> bytes | None:
        try:
            return _read_bytes(os.path.join(self.root, path))
        except OSError as error:
            self._log_unexpected(pid, path, error)
            return None

    def _log_unexpected(self, pid: int, path: str, error: OSError) -> None:
        if not _is_expected(error):
            logger.debug(
                "Reading %s failed for pid %d: %s", os.path.join(self.root, path), pid, error
            )
