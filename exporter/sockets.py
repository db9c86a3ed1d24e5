"""Listening TCP sockets and the processes that hold them, from /proc/PID/net/tcp{,6} and /proc/PID/fd.

/proc/PID/net shows the network namespace of pid, so processes in different
pods are matched against their own pod's socket table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from exporter.procfs import ProcFS, parse_stat

TCP_LISTEN = 0x0A  # TCP_LISTEN in include/net/tcp_states.h, the "st" column of /proc/net/tcp

_TABLES = ("tcp", "tcp6")


def parse_tcp_listeners(text: str) -> dict[int, set[int]]:
    """Parse /proc/net/tcp or /proc/net/tcp6 text into socket inodes by local port, LISTEN only.

    Each data line is "sl local_address rem_address st ... uid timeout inode ...",
    where local_address is hex "ADDR:PORT", st is the hex TCP state and inode is
    decimal. The header line and lines that do not parse are skipped. Ports are
    keyed by number alone, so 127.0.0.1:6700 and [::]:6700 both count as 6700.
    """
    listeners: dict[int, set[int]] = {}
    for line in text.split("\n"):
        fields = line.split()
        if len(fields) < 10 or not fields[0].endswith(":"):
            continue
        _address, separator, port_hex = fields[1].rpartition(":")
        try:
            state = int(fields[3], 16)
            port = int(port_hex, 16)
            inode = int(fields[9])
        except ValueError:
            continue
        if separator and state == TCP_LISTEN:
            listeners.setdefault(port, set()).add(inode)
    return listeners


def listening_ports(proc: ProcFS, pid: int) -> dict[int, set[int]]:
    """Return LISTEN socket inodes by port in pid's network namespace, {} when unreadable."""
    listeners = _read_listeners(proc, pid)
    return {} if listeners is None else listeners


def socket_inodes(proc: ProcFS, pid: int) -> set[int]:
    """Return the inodes of the sockets that pid has open, from its socket:[N] fd links.

    Reading another user's /proc/PID/fd needs CAP_SYS_PTRACE, so the set is
    empty when the process is gone or the fd directory is unreadable. An fd
    closed during the listing is skipped.
    """
    pid_fd = _open_pid(proc, pid, None)
    if pid_fd is None:
        return set()
    try:
        return _socket_inodes(pid_fd)
    finally:
        os.close(pid_fd)


def port_holders(
    proc: ProcFS,
    pids: Iterable[int],
    ports: Iterable[int],
    start_ticks: Mapping[int, int] | None = None,
) -> dict[int, set[int]]:
    """Return, for every port in ports, the pids that hold a LISTEN socket on it.

    A pid holds a port when one of its fds is a socket that listens on that port
    in the pid's own network namespace. A socket inherited across fork counts
    for the parent and the child. Each network namespace's tables are read once,
    keyed by the /proc/PID/ns/net link. A pid whose namespace, tables or fds are
    unreadable is never listed. A pid in ``start_ticks`` is read only if its
    /proc/PID/stat start time (clock ticks) is that value, so a reused pid is skipped.
    A pid's stat, ns/net link and fds are read through one /proc/PID directory fd.
    """
    # NOTE: a socket that a process created before moving to another network
    # namespace (setns or unshare) is listed only in the old namespace's tables,
    # so that process does not count as a holder.
    requested_ports = set(ports)
    holders: dict[int, set[int]] = {port: set() for port in requested_ports}
    tables: dict[str, dict[int, set[int]]] = {}
    for pid in pids:
        pid_fd = _open_pid(proc, pid, None if start_ticks is None else start_ticks.get(pid))
        if pid_fd is None:
            continue
        try:
            for port in _held_ports(proc, pid, pid_fd, requested_ports, tables):
                holders[port].add(pid)
        finally:
            os.close(pid_fd)
    return holders


def _held_ports(
    proc: ProcFS, pid: int, pid_fd: int, ports: set[int], tables: dict[str, dict[int, set[int]]]
) -> list[int]:
    """Return the ports of ``ports`` on which the process open as pid_fd has a LISTEN socket."""
    namespace = _read_netns_at(pid_fd)
    if namespace is None:
        return []
    listeners = tables.get(namespace)
    if listeners is None:
        listeners = _read_listeners(proc, pid)
        # The tables were read by pid. They belong to this namespace only if the
        # process of pid_fd is still in it now, so that the pid was not reused meanwhile.
        if listeners is None or _read_netns_at(pid_fd) != namespace:
            # Not cached: the next pid of this namespace may still read the tables.
            return []
        tables[namespace] = listeners
    requested_inodes = {port: listeners[port] for port in ports if port in listeners}
    if not requested_inodes:
        return []
    open_sockets = _socket_inodes(pid_fd)
    return [port for port, inodes in requested_inodes.items() if inodes & open_sockets]


def _open_pid(proc: ProcFS, pid: int, start_ticks: int | None) -> int | None:
    """Open /proc/PID, None when it is gone or its start time is not ``start_ticks``."""
    try:
        pid_fd = os.open(os.path.join(proc.root, str(pid)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    if start_ticks is None:
        return pid_fd
    try:
        with open("stat", "rb", opener=lambda name, flags: os.open(name, flags, dir_fd=pid_fd)) as file:
            stat = parse_stat(file.read().decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        stat = None
    if stat is None or stat.start_ticks != start_ticks:
        os.close(pid_fd)
        return None
    return pid_fd


def _socket_inodes(pid_fd: int) -> set[int]:
    try:
        fd_dir = os.open("fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pid_fd)
    except OSError:
        return set()
    try:
        names = os.listdir(fd_dir)
        inodes = set()
        for name in names:
            try:
                target = os.readlink(name, dir_fd=fd_dir)
            except OSError:
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                number = target[len("socket:[") : -1]
                if number.isdecimal():
                    inodes.add(int(number))
        return inodes
    except OSError:
        return set()
    finally:
        os.close(fd_dir)


def _read_netns_at(pid_fd: int) -> str | None:
    """Return the ns/net link, such as "net:[4026531840]", or None when it is unreadable."""
    try:
        return os.readlink("ns/net", dir_fd=pid_fd)
    except OSError:
        return None


def _read_listeners(proc: ProcFS, pid: int) -> dict[int, set[int]] | None:
    """Read LISTEN sockets from pid's net/tcp and net/tcp6, None when neither is readable.

    A kernel without IPv6 has no tcp6 file, so one readable table is enough.
    """
    listeners: dict[int, set[int]] = {}
    readable = False
    for table in _TABLES:
        try:
            with open(os.path.join(proc.root, str(pid), "net", table), "rb") as file:
                text = file.read().decode("ascii", errors="replace")
        except OSError:
            continue
        readable = True
        for port, inodes in parse_tcp_listeners(text).items():
            listeners.setdefault(port, set()).update(inodes)
    return listeners if readable else None
