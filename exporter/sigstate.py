"""Signal dispositions of a process, and the kill(2) permission of one process over another.

Everything is read from /proc/PID/status and /proc/PID/task/TID/status through a
ProcFS root, so a node agent can inspect processes in any container on the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from exporter.procfs import ProcFS, parse_status, signal_set

DISPOSITIONS = ("handled", "ignored", "blocked", "default")

# Bit number of CAP_KILL in the capability masks (include/uapi/linux/capability.h).
CAP_KILL = 5

# Threads in these states have exited, and the kernel delivers no signal to them.
_EXITED_STATES = frozenset({"Z", "X"})


def parse_signal_set(hex_mask: str) -> frozenset[int]:
    """Parse a SigCgt, SigIgn, SigBlk, SigPnd or ShdPnd value into signal numbers.

    Signal n is bit n - 1. The value may carry a "0x" prefix and surrounding
    whitespace. Raise ValueError when it is not hexadecimal.
    """
    text = hex_mask.strip()
    if text[:2].lower() == "0x":
        text = text[2:]
    if not text or not all(character in "0123456789abcdefABCDEF" for character in text):
        raise ValueError(f"invalid signal mask {hex_mask!r}, expected hexadecimal digits")
    return signal_set(int(text, 16))


@dataclass(frozen=True, slots=True)
class Credentials:
    """The ids and capabilities of a process that kill(2) checks."""

    ruid: int
    euid: int
    suid: int
    fsuid: int
    cap_effective: int  # CapEff mask, capability n is bit n


def signal_disposition(proc: ProcFS, pid: int, signum: int = 15) -> str | None:
    """Return what a process-directed signal would do to pid, as one of DISPOSITIONS.

    "ignored" means the signal is in SigIgn. "blocked" means every live thread
    blocks it, so it stays pending, because the kernel delivers a process-directed
    signal to any thread that does not block it. "handled" means a handler is
    installed (SigCgt), and "default" means the default action runs, which for
    SIGTERM ends the process. Return None when the process is gone or all its
    threads have exited (a zombie).

    All files are read through one /proc/PID directory fd, so a reused pid
    makes the reads fail instead of mixing two processes. Raise ValueError when
    signum is not a signal number from 1 to 64.
    """
    _check_signal(signum)
    try:
        pid_fd = os.open(
            os.path.join(proc.root, str(pid)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        )
    except OSError:
        return None
    try:
        return _disposition_at(pid_fd, signum)
    finally:
        os.close(pid_fd)


def signal_disposition_at(pid_fd: int, signum: int = 15) -> str | None:
    """Return signal_disposition for the process whose /proc/PID directory is open as pid_fd.

    The caller checks that the fd is the process it means, for example by its
    start time, and the reads fail once that process is reaped.
    """
    _check_signal(signum)
    return _disposition_at(pid_fd, signum)


def _check_signal(signum: int) -> None:
    if not 1 <= signum <= 64:
        raise ValueError(f"invalid signal number {signum}, expected 1 to 64")


@dataclass(frozen=True, slots=True)
class _SignalState:
    """The lines of /proc/PID/status that settle a signal's disposition."""

    state: str | None
    sigblk: int | None
    sigign: int | None
    sigcgt: int | None


def _signal_state(text: str) -> _SignalState | None:
    """Read State, SigBlk, SigIgn and SigCgt from status text; None when a value is invalid.

    Each key is looked up where a line starts, which is cheaper than parse_status
    for a round over every worker. Name is the only line that a process chooses,
    and the kernel escapes a newline in it, so it cannot forge a line.
    """
    text = "\n" + text  # so that the first line starts after a newline too
    values = []
    for key in ("State", "SigBlk", "SigIgn", "SigCgt"):
        start = text.find(f"\n{key}:")
        if start < 0:
            values.append(None)
            continue
        start += len(key) + 2
        end = text.find("\n", start)
        raw = text[start:] if end < 0 else text[start:end]
        try:
            values.append(raw.split()[0] if key == "State" else int(raw.strip(), 16))
        except (ValueError, IndexError):
            return None
    return _SignalState(*values)


def _read_signal_state(dir_fd: int, name: str) -> _SignalState | None:
    text = _read_text(name, dir_fd)
    return None if text is None else _signal_state(text)


def _disposition_at(pid_fd: int, signum: int) -> str | None:
    leader = _read_signal_state(pid_fd, "status")
    if leader is None or leader.sigign is None or leader.sigcgt is None:
        return None
    bit = 1 << (signum - 1)
    # Dispositions are shared by all threads, so the leader's SigIgn and SigCgt hold for all.
    if leader.sigign & bit:
        return "ignored"
    # A live leader that does not block the signal settles it without reading
    # every thread's status, which matters for JVMs with hundreds of threads.
    leader_takes_it = (
        leader.state not in _EXITED_STATES and leader.sigblk is not None and not leader.sigblk & bit
    )
    blocked = False if leader_takes_it else _blocked_in_every_thread(pid_fd, bit)
    if blocked is None:
        return None
    if blocked:
        return "blocked"
    if leader.sigcgt & bit:
        return "handled"
    return "default"


def _blocked_in_every_thread(pid_fd: int, bit: int) -> bool | None:
    """Return whether every live thread blocks the signal, None when no live thread is left."""
    try:
        task_fd = os.open("task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pid_fd)
    except OSError:
        return None
    try:
        tids = [name for name in os.listdir(task_fd) if name.isdecimal()]
        live_threads = 0
        for tid in tids:
            # A thread that exits after the listing is skipped: it can no longer take the signal.
            status = _read_signal_state(task_fd, f"{tid}/status")
            if status is None or status.sigblk is None or status.state in _EXITED_STATES:
                continue
            live_threads += 1
            if not status.sigblk & bit:
                return False
        return True if live_threads else None
    except OSError:
        return None
    finally:
        os.close(task_fd)


def read_credentials(proc: ProcFS, pid: int) -> Credentials | None:
    """Read the Uid and CapEff lines of /proc/PID/status, or return None if unreadable."""
    return _parse_credentials(_read_text(os.path.join(proc.root, str(pid), "status")))


def read_credentials_at(pid_fd: int) -> Credentials | None:
    """Return read_credentials for the process whose /proc/PID directory is open as pid_fd."""
    return _parse_credentials(_read_text("status", pid_fd))


def _parse_credentials(text: str | None) -> Credentials | None:
    if text is None:
        return None
    try:
        uids = parse_status(text).uids
    except ValueError:
        return None
    cap_effective = _find_hex_field(text, "CapEff")
    if len(uids) < 4 or cap_effective is None:
        return None
    return Credentials(
        ruid=uids[0], euid=uids[1], suid=uids[2], fsuid=uids[3], cap_effective=cap_effective
    )


def may_signal(sender: Credentials, target: Credentials) -> bool:
    """Return whether kill(2) from sender to target passes the kernel's permission check.

    The check passes when the sender's real or effective UID equals the target's
    real or saved set-user-ID, or when the sender has CAP_KILL in its effective set.
    The target's effective UID plays no part.
    """
    # NOTE: user namespaces are ignored. The kernel requires CAP_KILL in the target's user
    # namespace and compares kernel uids, while /proc shows uids mapped into the reader's
    # namespace. Also ignored: SIGCONT within one session, which needs no uid match, and
    # LSMs such as SELinux or AppArmor, which can reject a signal that this check allows.
    if sender.cap_effective >> CAP_KILL & 1:
        return True
    return bool({sender.ruid, sender.euid} & {target.ruid, target.suid})


def _find_hex_field(text: str, key: str) -> int | None:
    prefix = key + ":"
    for line in text.split("\n"):
        if line.startswith(prefix):
            try:
                return int(line[len(prefix) :].strip(), 16)
            except ValueError:
                return None
    return None


def _read_text(path: str, dir_fd: int | None = None) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")
