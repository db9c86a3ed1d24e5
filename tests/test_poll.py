"""The /proc poll source on real processes: discovery, pidfd exits, JVM signal threads."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from exporter.events import JvmSignalThreadSeen, ProcessExited, ProcessForked, ScanCompleted
from exporter.procfs import ProcFS
from exporter.sources.poll import PollSource

# A process that, on SIGTERM, starts a thread and names it "SIGTERM handler" only
# after a delay, as a slow HotSpot thread start would.
LATE_NAMER = r"""
import ctypes, signal, sys, threading, time
libc = ctypes.CDLL(None)
def handler_thread():
    time.sleep(float(sys.argv[1]))
    libc.prctl(15, b"SIGTERM handler", 0, 0, 0)
    time.sleep(5)
def on_term(signum, frame):
    threading.Thread(target=handler_thread, daemon=True).start()
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def late_namer():
    process = subprocess.Popen([sys.executable, "-c", LATE_NAMER, "0.3"], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    yield process
    process.kill()
    process.wait()


def start_ticks(pid: int) -> int:
    return ProcFS().read_stat(pid).start_ticks


def test_signal_thread_named_late_is_seen(late_namer):
    events = []
    source = PollSource(
        ProcFS(), interval=0.5, scan_interval=60, quick=False, signal_threads=True,
        tracked=lambda: [(late_namer.pid, start_ticks(late_namer.pid), True)],
    )
    source.check_jvms(events.append)
    sent = time.monotonic()
    late_namer.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not events:
        source.check_jvms(events.append)
        time.sleep(0.05)
    assert len(events) == 1
    assert isinstance(events[0], JvmSignalThreadSeen)
    assert events[0].signal == signal.SIGTERM
    assert events[0].time == pytest.approx(sent, abs=0.05)
    source.check_jvms(events.append)
    assert len(events) == 1


def test_quick_poll_reports_new_and_exited():
    events = []
    stop = threading.Event()
    procfs = ProcFS()
    child = None
    tracked = []
    source = PollSource(procfs, interval=0.1, scan_interval=60, quick=True, tracked=lambda: list(tracked))
    runner = threading.Thread(target=source.run, args=(events.append, stop))
    runner.start()
    try:
        time.sleep(0.3)
        child = subprocess.Popen(["sleep", "30"])
        deadline = time.monotonic() + 3
        while not any(isinstance(e, ProcessForked) and e.pid == child.pid for e in events):
            assert time.monotonic() < deadline, "the new process was not reported"
            time.sleep(0.05)
        tracked.append((child.pid, start_ticks(child.pid), False))
        time.sleep(0.3)  # the next poll opens a pidfd for it
        killed = time.monotonic()
        child.kill()
        child.wait()
        deadline = time.monotonic() + 3
        while not any(isinstance(e, ProcessExited) and e.pid == child.pid for e in events):
            assert time.monotonic() < deadline, "the exit was not reported"
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join(timeout=2)
        source.close()
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
    exit_event = next(e for e in events if isinstance(e, ProcessExited) and e.pid == child.pid)
    assert exit_event.time == pytest.approx(killed, abs=0.05)
    assert any(isinstance(e, ScanCompleted) for e in events)


def test_poll_survives_missing_procfs(tmp_path):
    errors = []
    events = []
    stop = threading.Event()
    source = PollSource(
        ProcFS(tmp_path / "gone"), interval=0.05, scan_interval=0.05, quick=True,
        on_error=lambda: errors.append(1),
    )
    runner = threading.Thread(target=source.run, args=(events.append, stop))
    runner.start()
    time.sleep(0.4)
    (tmp_path / "gone").mkdir()
    time.sleep(0.4)
    stop.set()
    runner.join(timeout=2)
    assert not runner.is_alive()
    assert len(errors) >= 1
    assert any(isinstance(e, ScanCompleted) for e in events)
