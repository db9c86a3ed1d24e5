"""Listening TCP sockets and their holders, on real sockets in the host and in private network namespaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import sockets
from exporter.procfs import ProcFS
from exporter.sockets import listening_ports, parse_tcp_listeners, port_holders, socket_inodes
from tests.conftest import require_root

FIXTURES = Path(__file__).parent / "fixtures"

# Listens on argv[1]:argv[2] (port 0 picks a free one) and prints "ready PORT".
# On stdin, "fork" forks a child that inherits the socket and sleeps, and prints its
# pid. "close" closes the listening socket.
LISTENER = r"""
import os, socket, sys, time

family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
listener = socket.socket(family, socket.SOCK_STREAM)
listener.bind((sys.argv[1], int(sys.argv[2])))
listener.listen()
print("ready", listener.getsockname()[1], flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "fork":
        child = os.fork()
        if child == 0:
            while True:
                time.sleep(3600)
        print(child, flush=True)
    elif command == "close":
        listener.close()
        print("closed", flush=True)
"""

IDLE = 'import sys; print("ready", flush=True); sys.stdin.read()'

# Runs the rest of argv in a new network namespace whose loopback interface is up.
IN_NEW_NETNS = ("unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"')


def start(argv: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """Start argv and return it with the words after "ready" on its first line."""
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    words = process.stdout.readline().split()
    if words[:1] != ["ready"]:
        stop(process)
        raise AssertionError(f"{argv[0]} printed {words!r} instead of 'ready'")
    return process, words[1:]


def start_listener(host: str, port: int = 0, prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    process, words = start([*prefix, sys.executable, "-c", LISTENER, host, str(port)])
    return process, int(words[0])


def start_idle(prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    return start([*prefix, sys.executable, "-c", IDLE])[0]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def request(process: subprocess.Popen, line: str) -> str:
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return process.stdout.readline().strip()


@pytest.fixture
def table_reads(monkeypatch) -> list[int]:
    """Record the pid of every socket table read that port_holders makes."""
    reads = []
    real_read = sockets._read_listeners

    def counting_read(proc, pid):
        reads.append(pid)
        return real_read(proc, pid)

    monkeypatch.setattr(sockets, "_read_listeners", counting_read)
    return reads


def test_parse_fixture_tables():
    tcp6 = parse_tcp_listeners((FIXTURES / "net-tcp6.txt").read_text())
    tcp = parse_tcp_listeners((FIXTURES / "net-tcp.txt").read_text())
    # 1A2C is port 6700. The ESTABLISHED (01) and TIME_WAIT (06) lines on 6700 are not listeners.
    assert tcp6 == {6700: {40213}, 6701: {40290}}
    assert tcp == {6628: {39001}}


def test_parse_skips_invalid_lines():
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000:1A2C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0\n"
        "   1: 00000000:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 78 1 0\n"
        "   2: 000000001A2C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 79 1 0\n"
        "   3: 00000000:1A2C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 x 1 0\n"
        "   4: 00000000:1A2C 00000000:0000 0A\n"
        "\n"
        "   5: 00000000:1A2C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 80 1 0\n"
    )
    assert parse_tcp_listeners(text) == {6700: {77, 80}}


def build_fixture_process(proc_root: Path, pid: int, fds: dict[int, str]) -> None:
    process_dir = proc_root / str(pid)
    (process_dir / "net").mkdir(parents=True)
    (process_dir / "ns").mkdir()
    (process_dir / "fd").mkdir()
    for table in ("tcp", "tcp6"):
        shutil.copy(FIXTURES / f"net-{table}.txt", process_dir / "net" / table)
    (process_dir / "ns" / "net").symlink_to("net:[4026532301]")
    for fd, target in fds.items():
        (process_dir / "fd" / str(fd)).symlink_to(target)


def test_port_holders_fixture_tree(tmp_path):
    # A leftover worker (7701) still listens on 6700, and the new worker (9120) for
    # the same port holds only the socket whose bind failed.
    build_fixture_process(tmp_path, 7701, {
        0: "/dev/null", 213: "socket:[40213]", 214: "socket:[40555]", 215: "anon_inode:[eventpoll]",
    })
    build_fixture_process(tmp_path, 9120, {0: "/dev/null", 5: "socket:[40777]", 6: "pipe:[40778]"})
    proc = ProcFS(tmp_path)
    assert listening_ports(proc, 7701) == {6628: {39001}, 6700: {40213}, 6701: {40290}}
    assert socket_inodes(proc, 7701) == {40213, 40555}
    assert socket_inodes(proc, 9120) == {40777}
    assert port_holders(proc, [7701, 9120], [6700, 6701]) == {6700: {7701}, 6701: set()}
    assert listening_ports(proc, 4242) == {}
    assert socket_inodes(proc, 4242) == set()
    assert port_holders(proc, [4242], [6700]) == {6700: set()}


def test_ipv4_listener_found():
    listener, port = start_listener("127.0.0.1")
    idle = start_idle()
    proc = ProcFS()
    try:
        inodes = listening_ports(proc, listener.pid)[port]
        assert len(inodes) == 1
        assert inodes <= socket_inodes(proc, listener.pid)
        assert port_holders(proc, [listener.pid, idle.pid], [port]) == {port: {listener.pid}}
    finally:
        stop(listener)
        stop(idle)


def test_ipv6_listener_found():
    listener, port = start_listener("::1")
    proc = ProcFS()
    try:
        tcp6 = Path(f"/proc/{listener.pid}/net/tcp6").read_text()
        assert f":{port:04X} " in tcp6
        inodes = listening_ports(proc, listener.pid)[port]
        assert inodes <= socket_inodes(proc, listener.pid)
        assert port_holders(proc, [listener.pid], [port]) == {port: {listener.pid}}
    finally:
        stop(listener)


def test_forked_child_inherits_listener():
    listener, port = start_listener("127.0.0.1")
    child = None
    proc = ProcFS()
    try:
        child = int(request(listener, "fork"))
        inode = listening_ports(proc, listener.pid)[port]
        assert inode <= socket_inodes(proc, child)
        assert port_holders(proc, [listener.pid, child], [port]) == {port: {listener.pid, child}}
    finally:
        if child is not None:
            kill_pid(child)
        stop(listener)


def test_closed_socket_is_gone():
    listener, port = start_listener("127.0.0.1")
    proc = ProcFS()
    try:
        assert port_holders(proc, [listener.pid], [port]) == {port: {listener.pid}}
        assert request(listener, "close") == "closed"
        assert port not in listening_ports(proc, listener.pid)
        assert port_holders(proc, [listener.pid], [port]) == {port: set()}
    finally:
        stop(listener)


def test_gone_process_holds_nothing():
    listener, port = start_listener("127.0.0.1")
    stop(listener)
    proc = ProcFS()
    assert listening_ports(proc, listener.pid) == {}
    assert socket_inodes(proc, listener.pid) == set()
    assert port_holders(proc, [listener.pid], [port]) == {port: set()}


def test_same_port_in_two_network_namespaces(table_reads):
    require_root()
    proc = ProcFS()
    started = []
    try:
        host_listener, port = start_listener("127.0.0.1")
        started.append(host_listener)
        netns_listener, netns_port = start_listener("127.0.0.1", port, prefix=IN_NEW_NETNS)
        started.append(netns_listener)
        host_idle = start_idle()
        started.append(host_idle)
        netns_idle = start_idle(prefix=IN_NEW_NETNS)
        started.append(netns_idle)
        assert netns_port == port
        host_ns = os.readlink(f"/proc/{host_listener.pid}/ns/net")
        netns_ns = os.readlink(f"/proc/{netns_listener.pid}/ns/net")
        assert host_ns != netns_ns
        assert os.readlink(f"/proc/{netns_idle.pid}/ns/net") not in (host_ns, netns_ns)

        host_inodes = listening_ports(proc, host_listener.pid)[port]
        netns_inodes = listening_ports(proc, netns_listener.pid)[port]
        assert host_inodes.isdisjoint(netns_inodes)
        assert host_inodes <= socket_inodes(proc, host_listener.pid)
        assert netns_inodes <= socket_inodes(proc, netns_listener.pid)
        assert port not in listening_ports(proc, netns_idle.pid)

        table_reads.clear()
        pids = [host_listener.pid, netns_listener.pid, host_idle.pid, netns_idle.pid]
        holders = port_holders(proc, pids, [port])
        assert holders == {port: {host_listener.pid, netns_listener.pid}}
        # Three namespaces: the host's, the listener's and the idle process's own.
        assert table_reads == [host_listener.pid, netns_listener.pid, netns_idle.pid]
    finally:
        for process in started:
            stop(process)


def test_one_table_read_per_namespace(table_reads):
    first, port = start_listener("127.0.0.1")
    second, other_port = start_listener("::1")
    proc = ProcFS()
    try:
        holders = port_holders(proc, [first.pid, second.pid], [port, other_port, 9])
        assert holders == {port: {first.pid}, other_port: {second.pid}, 9: set()}
        assert table_reads == [first.pid]
    finally:
        stop(first)
        stop(second)
