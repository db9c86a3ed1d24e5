"""Tests for the proc connector source, against the real kernel where they can be."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from exporter.events import (
    Event,
    EventsLost,
    ProcessExeced,
    ProcessExited,
    ProcessForked,
    ProcessInfo,
)
from exporter.sources.netlink import (
    CN_IDX_PROC,
    CN_VAL_PROC,
    NLMSG_DONE,
    PROC_EVENT_EXEC,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    PROC_EVENT_NONE,
    AckRecord,
    ExecRecord,
    ExitRecord,
    ForkRecord,
    MalformedRecord,
    NetlinkSource,
    decode_datagram,
    encode_mcast_request,
)

REPO = Path(__file__).resolve().parent.parent
PROC_EVENT_COMM = 0x00000200

def needs_root(test: Callable[..., None]) -> Callable[..., None]:
    """Mark a test "root"; the conftest ``root`` fixture skips it for other users."""
    return pytest.mark.root(pytest.mark.usefixtures("root")(test))


def read_cmdline_info(pid: int) -> ProcessInfo | None:
    """Read the ProcessInfo fields that the tests check from /proc/PID/cmdline and stat."""
    try:
        argv_bytes = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    argv = tuple(part.decode() for part in argv_bytes.split(b"\0")[:-1])
    return ProcessInfo(
        pid=pid,
        start_ticks=int(fields[19]),
        ppid=int(fields[1]),
        comm=stat[stat.index("(") + 1 : stat.rindex(")")],
        state=fields[0],
        argv=argv,
    )


class Collector:
    """Thread-safe list of emitted events that tests can wait on."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._condition = threading.Condition()

    def emit(self, event: Event) -> None:
        with self._condition:
            self.events.append(event)
            self._condition.notify_all()

    def matching(self, predicate: Callable[[Event], bool]) -> list[Event]:
        with self._condition:
            return [event for event in self.events if predicate(event)]

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 5.0) -> Event:
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching event within {timeout} s")
                self._condition.wait(remaining)


def exited(pid: int) -> Callable[[Event], bool]:
    return lambda event: isinstance(event, ProcessExited) and event.pid == pid


class Running:
    """An opened NetlinkSource whose run() is on a thread, with its events."""

    def __init__(self, source: NetlinkSource) -> None:
        self.source = source
        self.collector = Collector()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.source.run(self.collector.emit, self.stop)
        except BaseException as error:  # reported by the test that owns the source
            self.error = error


@pytest.fixture
def start_source() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(run: bool = True, **kwargs: object) -> Running:
        source = NetlinkSource(**kwargs)
        source.open()
        running = Running(source)
        started.append(running)
        if run:
            running.thread.start()
        return running

    yield start
    for running in started:
        running.stop.set()
        if running.thread.is_alive():
            running.thread.join(timeout=2)
        running.source.close()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def fork_and_exit(code: int) -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(code)
    os.waitpid(pid, 0)
    return pid


# Kernel tests


@needs_root
def test_exit_code_is_wait_status(start_source: Callable[..., Running]) -> None:
    running = start_source()

    pid = fork_and_exit(20)

    event = running.collector.wait_for(exited(pid))
    assert event.status == 20 << 8
    assert running.error is None


@needs_root
def test_sigkill_status_and_time(
    start_source: Callable[..., Running], sleeper: subprocess.Popen[bytes]
) -> None:
    running = start_source()

    before = time.monotonic()
    subprocess.run(["kill", "-9", str(sleeper.pid)], check=True)
    sleeper.wait()
    after = time.monotonic()

    event = running.collector.wait_for(exited(sleeper.pid))
    assert event.status == 9
    assert before <= event.time <= after


@needs_root
def test_threads_exit_once(start_source: Callable[..., Running]) -> None:
    running = start_source()
    script = (
        "import os, sys, threading\n"
        "ready = threading.Barrier(6)\n"
        "release = threading.Event()\n"
        "def work():\n"
        "    ready.wait()\n"
        "    release.wait()\n"
        "threads = [threading.Thread(target=work) for _ in range(5)]\n"
        "for thread in threads:\n"
        "    thread.start()\n"
        "ready.wait()\n"
        "print(' '.join(os.listdir('/proc/self/task')), flush=True)\n"
        "sys.stdin.read()\n"
        "os._exit(3)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        task_ids = {int(tid) for tid in child.stdout.readline().split()}
        child.stdin.close()
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    running.collector.wait_for(exited(child.pid))
    time.sleep(0.3)  # any thread exits would have arrived by now
    thread_ids = task_ids - {child.pid}
    assert len(thread_ids) == 5
    assert len(running.collector.matching(exited(child.pid))) == 1
    assert running.collector.matching(
        lambda e: isinstance(e, ProcessExited) and e.pid in thread_ids
    ) == []
    assert running.collector.matching(
        lambda e: isinstance(e, ProcessForked) and e.pid in thread_ids
    ) == []


@needs_root
def test_fork_reports_parent(start_source: Callable[..., Running]) -> None:
    running = start_source(read_info=read_cmdline_info)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        event = running.collector.wait_for(
            lambda e: isinstance(e, ProcessForked) and e.pid == pid
        )
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)

    assert event.ppid == os.getpid()
    assert event.info is not None
    assert event.info.pid == pid
    assert event.info.ppid == os.getpid()


@needs_root
def test_thread_start_is_not_fork(start_source: Callable[..., Running]) -> None:
    running = start_source()
    native_ids: list[int] = []
    thread = threading.Thread(target=lambda: native_ids.append(threading.get_native_id()))
    thread.start()
    thread.join()
    pid = fork_and_exit(0)

    running.collector.wait_for(exited(pid))
    assert running.collector.matching(
        lambda e: isinstance(e, ProcessForked) and e.pid == native_ids[0]
    ) == []


@needs_root
def test_exec_reads_kill_argv(
    start_source: Callable[..., Running], sleeper: subprocess.Popen[bytes]
) -> None:
    running = start_source(read_info=read_cmdline_info)
    kill_argv = ("/bin/kill", "-0", str(sleeper.pid))
    script = f"sleep 0.1; exec {' '.join(kill_argv)}"

    # kill lives about 1 ms after exec. With every CPU busy (two to four `yes`
    # loops on a 2-CPU Linux 6.18 VM), the reader thread at nice -10 lost that race
    # in 1 to 12 of 90 runs, so five attempts are allowed. The shell execs kill
    # while this thread waits without holding the GIL, so the reader never waits
    # for this thread.
    kill_infos = []
    for _ in range(5):
        shell = subprocess.Popen(["sh", "-c", script])
        shell.wait()
        running.collector.wait_for(exited(shell.pid))
        execs = running.collector.matching(
            lambda e: isinstance(e, ProcessExeced) and e.pid == shell.pid
        )
        assert len(execs) == 2
        assert execs[0].info is not None
        assert execs[0].info.argv[:2] == ("sh", "-c")
        kill_infos.append(execs[1].info)
        if execs[1].info is not None and execs[1].info.argv == kill_argv:
            break

    assert kill_infos[-1] is not None
    assert kill_infos[-1].argv == kill_argv


@needs_root
def test_overrun_emits_events_lost(start_source: Callable[..., Running]) -> None:
    # The kernel doubles the request to 32 KiB, room for a few dozen messages, so a
    # burst of 2,000 messages overruns it, and a later fork and exit fit easily.
    running = start_source(run=False, rcvbuf=16384)
    for _ in range(1000):
        fork_and_exit(0)

    running.thread.start()
    lost = running.collector.wait_for(lambda e: isinstance(e, EventsLost))

    # Netlink drops every message until the reader has emptied the queue, so an
    # exit right after the overrun may be lost too. One of five must arrive.
    event = None
    for _ in range(5):
        pid = fork_and_exit(7)
        try:
            event = running.collector.wait_for(exited(pid), timeout=1.0)
            break
        except AssertionError:
            continue

    assert event is not None
    assert lost.source == "netlink"
    assert lost.count >= 1
    assert running.source.overruns >= 1
    assert event.status == 7 << 8
    assert running.error is None


@needs_root
def test_run_returns_after_stop(start_source: Callable[..., Running]) -> None:
    running = start_source()

    running.stop.set()
    # The reader wakes at least every 0.2 s to check the stop event; the join's
    # timeout only bounds a hang on a loaded machine.
    running.thread.join(timeout=10)

    assert not running.thread.is_alive()
    assert running.error is None


@needs_root
def test_close_twice() -> None:
    source = NetlinkSource()
    source.open()

    source.close()
    source.close()


def test_run_before_open_raises() -> None:
    source = NetlinkSource()

    with pytest.raises(RuntimeError, match="before open"):
        source.run(lambda event: None, threading.Event())


OPEN_SNIPPET = """
from exporter.sources.base import SourceUnavailable
from exporter.sources.netlink import NetlinkSource
source = NetlinkSource()
try:
    source.open()
except SourceUnavailable as error:
    print("unavailable:", error)
else:
    print("opened")
    source.close()
"""


def open_in_namespace(unshare_args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = ["unshare", *unshare_args, sys.executable, "-c", OPEN_SNIPPET]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, env=env, cwd=REPO
    )


@needs_root
def test_private_network_namespace_unavailable() -> None:
    result = open_in_namespace(["--net"])

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unavailable:")
    assert "network namespace" in result.stdout


@needs_root
def test_private_pid_namespace_unavailable() -> None:
    result = open_in_namespace(["--pid", "--fork"])

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unavailable:")
    assert "no event for probe child" in result.stdout


# Decoding crafted datagrams


def nlmsg(payload: bytes, msg_type: int = NLMSG_DONE) -> bytes:
    length = 16 + len(payload)
    padding = b"\0" * (-length % 4)
    return struct.pack("=IHHII", length, msg_type, 0, 0, 0) + payload + padding


def cn_msg(event: bytes, *, seq: int = 0, idx: int = CN_IDX_PROC) -> bytes:
    return struct.pack("=IIIIHH", idx, CN_VAL_PROC, seq, 0, len(event), 0) + event


def proc_event(what: int, timestamp_ns: int, body: bytes) -> bytes:
    return struct.pack("=IIQ", what, 1, timestamp_ns) + body


def exit_datagram(pid: int, tgid: int, code: int, timestamp_ns: int = 5_000_000_000) -> bytes:
    body = struct.pack("=iiIIii", pid, tgid, code, 17, 1, 1)
    return nlmsg(cn_msg(proc_event(PROC_EVENT_EXIT, timestamp_ns, body)))


def test_decode_exit() -> None:
    records = decode_datagram(exit_datagram(41, 40, 9))

    assert records == [ExitRecord(5_000_000_000, 41, 40, 9, 17, 1, 1)]


def test_decode_fork_exec_and_ack() -> None:
    fork = proc_event(PROC_EVENT_FORK, 1, struct.pack("=iiii", 10, 10, 11, 11))
    exec_ = proc_event(PROC_EVENT_EXEC, 2, struct.pack("=ii", 11, 11))
    ack = proc_event(PROC_EVENT_NONE, 3, struct.pack("=I", 1))
    data = nlmsg(cn_msg(fork)) + nlmsg(cn_msg(exec_)) + nlmsg(cn_msg(ack, seq=77))

    records = decode_datagram(data)

    assert records == [ForkRecord(1, 10, 10, 11, 11), ExecRecord(2, 11, 11), AckRecord(77, 1)]


def test_decode_short_exit_layout() -> None:
    body = struct.pack("=iiII", 50, 50, 256, 17)
    data = nlmsg(cn_msg(proc_event(PROC_EVENT_EXIT, 9, body)))

    records = decode_datagram(data)

    assert records == [ExitRecord(9, 50, 50, 256, 17, None, None)]


def test_decode_skips_other_events() -> None:
    comm = proc_event(PROC_EVENT_COMM, 1, struct.pack("=ii16s", 5, 5, b"java"))
    noop = nlmsg(cn_msg(comm), msg_type=1)

    records = decode_datagram(nlmsg(cn_msg(comm)) + noop + exit_datagram(5, 5, 0))

    assert records == [ExitRecord(5_000_000_000, 5, 5, 0, 17, 1, 1)]


def test_decode_every_truncation() -> None:
    data = exit_datagram(7, 7, 0)

    for length in range(len(data)):
        records = decode_datagram(data[:length])
        assert all(isinstance(record, MalformedRecord) for record in records), length
        assert (records == []) == (length == 0), length


def test_decode_truncated_event_body() -> None:
    body = struct.pack("=ii", 7, 7)  # an exit needs at least 16 bytes
    data = nlmsg(cn_msg(proc_event(PROC_EVENT_EXIT, 1, body)))

    records = decode_datagram(data)

    assert len(records) == 1
    assert isinstance(records[0], MalformedRecord)
    assert "truncated" in records[0].reason


def test_decode_wrong_connector_id() -> None:
    body = struct.pack("=iiIIii", 1, 1, 0, 17, 0, 0)
    data = nlmsg(cn_msg(proc_event(PROC_EVENT_EXIT, 1, body), idx=7))

    records = decode_datagram(data)

    assert len(records) == 1
    assert isinstance(records[0], MalformedRecord)
    assert "7:1" in records[0].reason


def test_decode_length_beyond_datagram() -> None:
    data = bytearray(exit_datagram(3, 3, 0))
    struct.pack_into("=I", data, 0, 4096)

    records = decode_datagram(bytes(data))

    assert len(records) == 1
    assert isinstance(records[0], MalformedRecord)
    assert "4096" in records[0].reason


def test_decode_zero_length_header() -> None:
    records = decode_datagram(b"\0" * 64)

    assert len(records) == 1
    assert isinstance(records[0], MalformedRecord)


def test_decode_random_garbage() -> None:
    generator = random.Random(1234)

    for _ in range(2000):
        data = generator.randbytes(generator.randrange(0, 200))
        records = decode_datagram(data)
        assert isinstance(records, list)


def test_mcast_request_layout() -> None:
    request = encode_mcast_request(1, seq=9, port_id=1234)

    assert len(request) == 40
    assert struct.unpack_from("=IHHII", request) == (40, NLMSG_DONE, 0, 9, 1234)
    assert struct.unpack_from("=IIIIHH", request, 16) == (CN_IDX_PROC, CN_VAL_PROC, 9, 0, 4, 0)
    assert struct.unpack_from("=I", request, 36) == (1,)


@needs_root
def test_kernel_filter_drops_thread_events() -> None:
    source = NetlinkSource(read_info=None)
    source.open()
    script = (
        "import threading\n"
        "threads = [threading.Thread(target=lambda: None) for _ in range(5)]\n"
        "for thread in threads:\n"
        "    thread.start()\n"
        "for thread in threads:\n"
        "    thread.join()\n"
    )
    records = []
    try:
        child = subprocess.Popen([sys.executable, "-c", script])
        child.wait(timeout=10)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                data = source._sock.recv(65536)
            except BlockingIOError:
                if any(isinstance(r, ExitRecord) and r.process_tgid == child.pid for r in records):
                    break
                time.sleep(0.01)
                continue
            records.extend(decode_datagram(data))
    finally:
        source.close()

    mine = [r for r in records if isinstance(r, (ForkRecord, ExitRecord))
            and getattr(r, "child_tgid", getattr(r, "process_tgid", None)) == child.pid]
    assert any(isinstance(r, ExitRecord) and r.process_pid == child.pid for r in mine)
    assert [r for r in mine if isinstance(r, ForkRecord) and r.child_pid != r.child_tgid] == []
    assert [r for r in mine if isinstance(r, ExitRecord) and r.process_pid != r.process_tgid] == []
