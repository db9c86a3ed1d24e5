"""Tests for the tracefs signal source, against the real kernel where they can be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from exporter.events import Event, EventsLost, SignalGenerated
from exporter.sources.base import SourceUnavailable
from exporter.sources.tracefs import (
    EVENT_DIR,
    UNKNOWN_COMM,
    TracefsSource,
    build_filter,
    parse_line,
)

REPO = Path(__file__).resolve().parent.parent
TRACING = Path("/sys/kernel/tracing")
INSTANCES = TRACING / "instances"
TIMESTAMP_RESOLUTION = 1e-6  # trace_pipe prints the mono clock in microseconds

def needs_root(test: Callable[..., None]) -> Callable[..., None]:
    """Mark a test "root"; the conftest ``root`` fixture skips it for other users."""
    return pytest.mark.root(pytest.mark.usefixtures("root")(test))


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


def signalled(pid: int, number: int | None = None) -> Callable[[Event], bool]:
    def matches(event: Event) -> bool:
        if not isinstance(event, SignalGenerated) or event.pid != pid:
            return False
        return number is None or event.signal == number

    return matches


class Running:
    """An opened TracefsSource whose run() is on a thread, with its events."""

    def __init__(self, source: TracefsSource) -> None:
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


def remove_instances(prefix: str) -> None:
    for path in INSTANCES.glob(f"{prefix}-*"):
        enable = path / EVENT_DIR / "enable"
        try:
            enable.write_text("0")
        except OSError:
            pass
        for _ in range(20):
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique instance prefix, whose instances are all removed afterwards."""
    value = f"ste-test-{uuid.uuid4().hex[:10]}"
    try:
        yield value
    finally:
        remove_instances(value)


@pytest.fixture
def start_source(prefix: str) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(run: bool = True, **kwargs: object) -> Running:
        source = TracefsSource(instance_prefix=prefix, **kwargs)
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
def processes() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start child processes and kill whichever of them are still running afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(*argv: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(list(argv))
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def instance_names(prefix: str) -> list[str]:
    return sorted(path.name for path in INSTANCES.glob(f"{prefix}-*"))


# Kernel tests


@needs_root
def test_sigterm_from_kill_command(
    start_source: Callable[..., Running],
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    running = start_source()
    target = processes("sleep", "60")

    before = time.monotonic()
    kill = processes("kill", "-15", str(target.pid))
    kill.wait()
    target.wait()
    after = time.monotonic()

    event = running.collector.wait_for(signalled(target.pid, 15))
    assert event.sender_pid == kill.pid
    assert event.sender_comm == "kill"
    assert event.code == 0
    assert event.errno == 0
    assert event.result == 0
    assert event.group is True
    assert before - TIMESTAMP_RESOLUTION <= event.time <= after
    assert running.error is None


@needs_root
def test_filter_excludes_sigusr1(
    start_source: Callable[..., Running],
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    running = start_source()
    excluded = processes("sleep", "60")
    barrier = processes("sleep", "60")

    os.kill(excluded.pid, signal.SIGUSR1)
    excluded.wait()
    os.kill(barrier.pid, signal.SIGTERM)

    running.collector.wait_for(signalled(barrier.pid, 15))
    assert running.collector.matching(signalled(excluded.pid)) == []


@needs_root
def test_eperm_kill_generates_nothing(
    start_source: Callable[..., Running],
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    running = start_source()
    target = processes("sleep", "60")

    denied_kill = processes(
        "setpriv", "--reuid", "2000", "--regid", "2000", "--clear-groups",
        "kill", "-15", str(target.pid),
    )
    denied_status = denied_kill.wait()
    os.kill(target.pid, signal.SIGTERM)

    event = running.collector.wait_for(signalled(target.pid, 15))
    assert denied_status != 0
    assert event.sender_pid == os.getpid()
    assert running.collector.matching(signalled(target.pid)) == [event]
    assert running.collector.matching(
        lambda e: isinstance(e, SignalGenerated) and e.sender_pid == denied_kill.pid
    ) == []


@needs_root
def test_lost_events_reported(
    start_source: Callable[..., Running],
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    target = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert target.stdout.readline() == b"ready\n"
        running = start_source(run=False, signals=(signal.SIGUSR1,), buffer_kb=4)
        for _ in range(5000):
            os.kill(target.pid, signal.SIGUSR1)
        running.thread.start()

        lost = running.collector.wait_for(lambda e: isinstance(e, EventsLost))
        traced = running.collector.wait_for(signalled(target.pid, signal.SIGUSR1))
    finally:
        target.kill()
        target.wait()

    assert lost.source == "tracefs"
    assert lost.count > 0
    assert running.source.lost >= lost.count
    assert traced.result == 1  # the target ignores SIGUSR1
    assert running.error is None


@needs_root
def test_instance_lifecycle(prefix: str) -> None:
    source = TracefsSource(instance_prefix=prefix, signals=(9, 15), buffer_kb=64)

    source.open()
    instance = Path(source.instance_path)
    names_while_open = instance_names(prefix)
    clock = (instance / "trace_clock").read_text()
    filter_text = (instance / EVENT_DIR / "filter").read_text().strip()
    enabled = (instance / EVENT_DIR / "enable").read_text().strip()
    source.close()
    source.close()

    assert names_while_open == [f"{prefix}-{os.getpid()}"]
    assert "[mono]" in clock
    assert filter_text == "sig==9 || sig==15"
    assert enabled == "1"
    assert instance_names(prefix) == []
    assert source.instance_path is None


@needs_root
def test_stale_instance_removed_live_kept(
    prefix: str, processes: Callable[..., subprocess.Popen[bytes]]
) -> None:
    dead = processes("true")
    dead.wait()
    live = processes("sleep", "60")
    with pytest.raises(ProcessLookupError):
        os.kill(dead.pid, 0)
    (INSTANCES / f"{prefix}-{dead.pid}").mkdir()
    (INSTANCES / f"{prefix}-{dead.pid}" / EVENT_DIR / "enable").write_text("1")
    (INSTANCES / f"{prefix}-{live.pid}").mkdir()
    (INSTANCES / f"{prefix}-old").mkdir()
    source = TracefsSource(instance_prefix=prefix)

    source.open()
    try:
        names = instance_names(prefix)
    finally:
        source.close()

    assert f"{prefix}-{dead.pid}" not in names
    assert f"{prefix}-{live.pid}" in names
    assert f"{prefix}-old" in names
    assert f"{prefix}-{os.getpid()}" in names


@needs_root
def test_failed_setup_removes_instance(prefix: str) -> None:
    source = TracefsSource(instance_prefix=prefix, buffer_kb=2**40)

    with pytest.raises(SourceUnavailable, match="buffer_size_kb"):
        source.open()

    assert instance_names(prefix) == []
    assert source.instance_path is None


@needs_root
def test_run_returns_after_stop(start_source: Callable[..., Running]) -> None:
    running = start_source()

    running.stop.set()
    # The reader wakes at least every 0.2 s to check the stop event; the join's
    # timeout only bounds a hang on a loaded machine.
    running.thread.join(timeout=10)

    assert not running.thread.is_alive()
    assert running.error is None


MOUNT_SNIPPET = """
import sys
from exporter.sources.tracefs import TracefsSource
source = TracefsSource(tracing_root="/sys/kernel/tracing", instance_prefix=sys.argv[1])
source.open()
mounts = open("/proc/self/mounts").read()
print("mounted" if " /sys/kernel/tracing tracefs " in mounts else "not mounted")
source.close()
"""


@needs_root
def test_mounts_unmounted_tracefs(prefix: str) -> None:
    script = 'umount /sys/kernel/tracing && exec "$0" -c "$1" "$2"'
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    command += [sys.executable, MOUNT_SNIPPET, prefix]

    result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "mounted\n"
    assert instance_names(prefix) == []


def test_missing_root_without_mount_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "no-tracefs"
    source = TracefsSource(tracing_root=str(missing), mount=False)

    with pytest.raises(SourceUnavailable, match="not mounted") as raised:
        source.open()

    assert str(missing) in str(raised.value)


def test_custom_root_never_mounted(tmp_path: Path) -> None:
    for root in (tmp_path / "no-tracefs", tmp_path):
        source = TracefsSource(tracing_root=str(root), mount=True)

        with pytest.raises(SourceUnavailable, match="is not a tracefs mount"):
            source.open()
    assert list(tmp_path.iterdir()) == []


def test_run_before_open_raises() -> None:
    source = TracefsSource()

    with pytest.raises(RuntimeError, match="before open"):
        source.run(lambda event: None, threading.Event())


@pytest.mark.parametrize(
    "kwargs",
    [{"signals": ()}, {"signals": (0,)}, {"signals": (65,)}, {"buffer_kb": 0},
     {"instance_prefix": "a/b"}, {"instance_prefix": ""}],
)
def test_constructor_rejects_invalid(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TracefsSource(**kwargs)


def test_build_filter_sorted_unique() -> None:
    assert build_filter([15, 9, 15, 1]) == "sig==1 || sig==9 || sig==15"


# Parsing trace_pipe lines


PAYLOAD = "sig=15 errno=0 code=0 comm=sleep pid=4082 grp=1 res=0"


def test_parse_kill_line() -> None:
    line = f"            kill-4083    (   4083) [001] d..1.   457.556224: signal_generate: {PAYLOAD}\n"

    event = parse_line(line)

    assert event == SignalGenerated(
        time=457.556224, pid=4082, signal=15, sender_pid=4083, sender_comm="kill",
        code=0, errno=0, group=True, result=0,
    )


def test_parse_line_without_tgid_column() -> None:
    line = f"           <...>-12546   [000] d..1.   963.980715: signal_generate: {PAYLOAD}"

    event = parse_line(line)

    assert isinstance(event, SignalGenerated)
    assert event.sender_pid == 12546
    assert event.sender_comm == UNKNOWN_COMM
    assert event.time == 963.980715


def test_parse_unknown_tgid_uses_thread_id() -> None:
    line = f"           <...>-4144    (-------) [000] d..1.   465.026016: signal_generate: {PAYLOAD}"

    event = parse_line(line)

    assert isinstance(event, SignalGenerated)
    assert event.sender_pid == 4144


def test_parse_tgid_differs_from_thread() -> None:
    line = f"  Signal Dispatch-7001    (   6990) [003] ....1  12.000001: signal_generate: {PAYLOAD}"

    event = parse_line(line)

    assert isinstance(event, SignalGenerated)
    assert event.sender_pid == 6990
    assert event.sender_comm == "Signal Dispatch"


def test_parse_line_without_irq_flags() -> None:
    line = f"            kill-4083    [001]   457.556224: signal_generate: {PAYLOAD}"

    event = parse_line(line)

    assert isinstance(event, SignalGenerated)
    assert event.sender_pid == 4083


@pytest.mark.parametrize(
    ("sender", "target", "sender_pid", "target_pid"),
    [
        ("a-b (c) pid=7", "x pid=3 -9 [1]", 4084, 4125),
        ("my worker", "java main", 10, 11),
        ("-12", "pid=1 grp=1 res=0", 12, 13),
        ("x-1 [002] d..1.", "comm=y", 99, 100),
        ("(sd-pam)", "(sd-pam)", 5, 6),
        ("kworker/u8:2-ev", "sleep", 77, 78),
    ],
)
def test_parse_tricky_comms(
    sender: str, target: str, sender_pid: int, target_pid: int
) -> None:
    line = (
        f"{sender:>16}-{sender_pid:<7} ({sender_pid:>7}) [001] d..1.   100.000001: "
        f"signal_generate: sig=9 errno=0 code=0 comm={target} pid={target_pid} grp=1 res=0"
    )

    event = parse_line(line)

    assert isinstance(event, SignalGenerated)
    assert event.sender_comm == sender
    assert event.sender_pid == sender_pid
    assert event.pid == target_pid
    assert event.signal == 9


def test_parse_kernel_sigkill_fields() -> None:
    line = (
        "          <idle>-0       (-------) [000] d.h2.  50.5: signal_generate: "
        "sig=9 errno=0 code=128 comm=java pid=300 grp=0 res=2"
    )

    event = parse_line(line)

    assert isinstance(event, SignalGenerated)
    assert event.code == 0x80
    assert event.group is False
    assert event.result == 2
    assert event.sender_comm == "<idle>"


def test_parse_lost_line() -> None:
    assert parse_line("CPU:0 [LOST 4914 EVENTS]") == 4914
    assert parse_line("CPU:13 [LOST 1 EVENTS]\n") == 1


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        "garbage",
        "##### CPU 2 buffer started ####",
        "CPU:0 [LOST many EVENTS]",
        f"kill-4083 [001] d..1. 457.556224: signal_generate: {PAYLOAD[:30]}",
        "kill-4083 [001] d..1. 457.556224: signal_generate: ",
        f"kill [001] d..1. 457.556224: signal_generate: {PAYLOAD}",
        f"kill-4083 [001] d..1. notatime: signal_generate: {PAYLOAD}",
        f"kill-4083 [x] d..1. 457.556224: signal_generate: {PAYLOAD}",
        f"kill-4083 [001] d..1. 457.556224: signal_deliver: {PAYLOAD}",
        "kill-4083 [001] d..1. 457.556224: signal_generate: sig=x errno=0 code=0 comm=a pid=1 grp=1 res=0",
        "\x00\xff\ufffd: signal_generate: \ufffd",
    ],
)
def test_parse_rejects_malformed(line: str) -> None:
    assert parse_line(line) is None
