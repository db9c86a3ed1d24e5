"""Listening TCP sockets and the processes that hold them, from /proc/PID/net/tcp{,6} and /proc/PID/fd.

/proc/PID/net shows the network namespace of pid, so processes in different
pods are matched against their own pod's socket table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from exporter.procfs import ProcFS

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
    fd_dir = os.path.join(proc.root, str(pid), "fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return set()
    inodes = set()
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith("socket:[") and target.endswith("]"):
            number = target[len("socket:[") : -1]
            if number.isdecimal():
                inodes.add(int(number))
    return inodes


def port_holders(proc: ProcFS, pids: Iterable[int], ports: Iterable[int]) -> dict[int, set[int]]:
    """Return, for every port in ports, the pids that hold a LISTEN socket on it.

    A pid holds a port when one of its fds is a socket that listens on that port
    in the pid's own network namespace. A socket inherited across fork counts
    for the parent and the child. Each network namespace's tables are read once,
    keyed by the /proc/PID/ns/net link. A pid whose namespace, tables or fds are
    unreadable is never listed.
    """
    # NOTE: a socket that a process created before moving to another network
    # namespace (setns or unshare) is listed only in the old namespace's tables,
    # so that process does not count as a holder.
    requested_ports = set(ports)
    holders: dict[int, set[int]] = {port: set() for port in requested_ports}
    tables: dict[str, dict[int, set[int]]] = {}
    for pid in pids:
        namespace = _read_netns(proc, pid)
        if namespace is None:
            continue
        listeners = tables.get(namespace)
        if listeners is None:
            listeners = _read_listeners(proc, pid)
            if listeners is None:
                # Not cached: the next pid of this namespace may still read the tables.
                continue
            tables[namespace] = listeners
        requested_inodes = {port: listeners[port] for port in requested_ports if port in listeners}
        if not requested_inodes:
            continue
        open_sockets = socket_inodes(proc, pid)
        for port, inodes in requested_inodes.items():
            if inodes & open_sockets:
                holders[port].add(pid)
    return holders


def _read_netns(proc: ProcFS, pid: int) -> str | None:
    """Return the ns/net link of pid, such as "net:[4026531840]", or None when it is unreadable."""
    try:
        return os.readlink(os.path.join(proc.root, str(pid), "ns", "net"))
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
