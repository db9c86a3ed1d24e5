import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exporter import procfs
from exporter.events import ProcessInfo
from exporter.procfs import (
    ProcFS,
    parse_cmdline,
    parse_stat,
    parse_status,
    signal_set,
    ticks_to_monotonic,
)

FIXTURE_PROC = Path(__file__).parent / "fixtures" / "proc"

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def read_fixture(pid: int, name: str) -> str:
    return (FIXTURE_PROC / str(pid) / name).read_text()


def read_info_after_exec(pid: int) -> ProcessInfo | None:
    """Read a new child once its argv is visible.

    Popen returns once the child has started execve, which can be before the
    kernel has set up the new argv, and until then cmdline reads as empty.
    """
    proc = ProcFS()
    deadline = time.monotonic() + 5
    info = proc.read_info(pid)
    while info is not None and not info.argv and time.monotonic() < deadline:
        time.sleep(0.001)
        info = proc.read_info(pid)
    return info


@pytest.fixture
def fixture_proc() -> ProcFS:
    return ProcFS(FIXTURE_PROC)


@pytest.fixture
def sleeper():
    child = subprocess.Popen(SLEEPER)
    try:
        yield child
    finally:
        child.kill()
        child.wait()


# parse_stat

COMM_CASES = [
    # pid, comm, state, ppid, pgrp, session, utime, stime, threads, start_ticks
    (1591, "Demo Media Serv", "S", 1, 1591, 1591, 257, 95, 17, 1353),
    (5768, "Demo New Transc", "S", 1264, 1252, 1252, 9260, 137, 8, 1430749),
    (25097, "sle ep", "S", 6632, 25097, 6632, 0, 0, 1, 9600533),
    (83875, "sleep (2) .sh", "S", 75750, 83875, 75750, 0, 0, 1, 18366278),
]


@pytest.mark.parametrize(
    "pid, comm, state, ppid, pgrp, session, utime, stime, threads, start_ticks", COMM_CASES
)
def test_parse_stat_comm_with_spaces(
    pid, comm, state, ppid, pgrp, session, utime, stime, threads, start_ticks
):
    stat = parse_stat(read_fixture(pid, "stat"))

    assert stat.pid == pid
    assert stat.comm == comm
    assert stat.state == state
    assert stat.ppid == ppid
    assert stat.pgrp == pgrp
    assert stat.session == session
    assert stat.utime == utime
    assert stat.stime == stime
    assert stat.num_threads == threads
    assert stat.start_ticks == start_ticks
    assert stat.exit_code == 0


def test_parse_stat_comm_with_closing_parens():
    stat = parse_stat("42 (a) b) c) R 7 42 42 0 -1 0 0 0 0 0 3 4 0 0 20 0 2 0 555 0 0\n")

    assert stat.comm == "a) b) c"
    assert stat.state == "R"
    assert stat.ppid == 7
    assert stat.num_threads == 2
    assert stat.start_ticks == 555


def test_parse_stat_exit_code_of_zombie():
    stat = parse_stat(read_fixture(990, "stat"))

    assert stat.state == "Z"
    assert stat.exit_code == 9


def test_parse_stat_without_exit_code_field():
    line = "42 (old) S 1 42 42 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 555 " + " ".join(["0"] * 22)

    assert parse_stat(line).exit_code is None


def test_parse_stat_truncated_line():
    text = read_fixture(777, "stat")

    with pytest.raises(ValueError, match="truncated") as raised:
        parse_stat(text)

    assert repr(text) in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1591 Demo S 1 1591 1591 0 -1 0 0 0 0 0 257 95 0 0 20 0 17 0 1353 0 0",
        "1591 (Demo S 1 1591 1591 0 -1 0 0 0 0 0 257 95 0 0 20 0 17 0 1353 0 0",
        "x (sh) S 1 1591 1591 0 -1 0 0 0 0 0 257 95 0 0 20 0 17 0 1353 0 0",
        "12 (sh) S one 1591 1591 0 -1 0 0 0 0 0 257 95 0 0 20 0 17 0 1353 0 0",
        "12 (sh) Serv S 1 1591 1591 0 -1 0 0 0 0 0 257 95 0 0 20 0 17 0 1353 0 0",
    ],
)
def test_parse_stat_invalid_line(text):
    with pytest.raises(ValueError):
        parse_stat(text)


# parse_status


def test_parse_status_jvm():
    status = parse_status(read_fixture(27246, "status"))

    assert status.name == "java"
    assert status.state == "S"
    assert status.tgid == 27246
    assert status.pid == 27246
    assert status.ppid == 21820
    assert status.uids == (1000, 1000, 1000, 1000)
    assert status.gids == (1000, 1000, 1000, 1000)
    assert status.threads == 201
    assert status.nstgid == (27246,)
    assert status.nspid == (27246,)
    assert status.nspgid == (27246,)
    assert status.nssid == (21820,)
    assert status.sigpnd == 0
    assert status.shdpnd == 0
    assert status.sigblk == 0
    assert status.sigign == 0
    assert status.sigcgt == 0x2000000181005CCF


def test_signal_set_of_jvm_sigcgt():
    caught = signal_set(0x2000000181005CCF)

    assert caught == {1, 2, 3, 4, 7, 8, 11, 12, 13, 15, 25, 32, 33, 62}
    assert 15 in caught
    assert 9 not in caught


def test_signal_set_of_empty_mask():
    assert signal_set(0) == frozenset()


def test_parse_status_nspid_with_spaces():
    status = parse_status("NSpid:  489666  1\n")

    assert status.nspid == (489666, 1)
    assert status.name is None
    assert status.uids == ()
    assert status.threads is None
    assert status.sigcgt is None


def test_parse_status_two_namespace_levels():
    status = parse_status(read_fixture(489702, "status"))

    assert status.nstgid == (489702, 31)
    assert status.nspid == (489702, 31)
    assert status.nspgid == (489666, 1)
    assert status.nssid == (489666, 1)
    assert status.threads == 57


def test_parse_status_unknown_and_missing_keys():
    text = "Name:\tsh\nFutureKey:\t12 ab\nno colon here\nUid:\t5\t6\t7\t8\n\n"

    status = parse_status(text)

    assert status.name == "sh"
    assert status.uids == (5, 6, 7, 8)
    assert status.state is None
    assert status.tgid is None
    assert status.nspid == ()
    assert status.sigcgt is None


def test_parse_status_name_escapes():
    assert parse_status("Name:\ta\\\\b\\nc d\n").name == "a\\b\nc d"
    assert parse_status("Name:\t lead\n").name == " lead"
    assert parse_status("Name:\tx\x1cy\n").name == "x\x1cy"


@pytest.mark.parametrize("line", ["Threads:\tmany", "SigCgt:\tzz", "State:\t", "Uid:\t1 x"])
def test_parse_status_invalid_value(line):
    with pytest.raises(ValueError, match="status line") as raised:
        parse_status(f"Name:\tjava\n{line}\n")

    assert repr(line) in str(raised.value)


# parse_cmdline


@pytest.mark.parametrize(
    "data, argv",
    [
        (b"", ()),
        (b"\0", ("",)),
        (b"java\0-server\0", ("java", "-server")),
        (b"sh\0-c\0\0", ("sh", "-c", "")),
        (b"caf\xe9\0na\xefve\xff\0", ("caf\ufffd", "na\ufffdve\ufffd")),
        (b"nginx: worker process", ("nginx: worker process",)),
        (b"last\0element\0no-nul", ("last", "element", "no-nul")),
    ],
)
def test_parse_cmdline(data, argv):
    assert parse_cmdline(data) == argv


# ProcFS on a fixture tree


def test_list_pids_skips_other_entries(fixture_proc):
    pids = fixture_proc.list_pids()

    assert pids == sorted(pids)
    assert 2001 in pids
    assert 489702 in pids
    assert len(pids) == 24


def test_read_info_jvm(fixture_proc):
    info = fixture_proc.read_info(27246)

    assert info is not None
    assert info.pid == 27246
    assert info.start_ticks == 4321987
    assert info.ppid == 21820
    assert info.comm == "java"
    assert info.state == "S"
    assert info.uid == 1000
    assert info.argv == ("java", "-Xss256k", "-cp", "target/classes", "demo.ThreadTooDeepDemo")
    assert info.nspid == (27246,)
    assert info.pidns is None
    assert info.threads == 201
    assert info.key == (27246, 4321987)


def test_read_info_with_only_stat(fixture_proc):
    info = fixture_proc.read_info(83875)

    assert info is not None
    assert info.comm == "sleep (2) .sh"
    assert info.ppid == 75750
    assert info.uid is None
    assert info.argv == ()
    assert info.nspid == ()
    assert info.threads == 1


def test_read_info_truncated_stat(fixture_proc, caplog):
    with caplog.at_level(logging.DEBUG, logger="exporter.procfs"):
        assert fixture_proc.read_info(777) is None

    assert "777" in caplog.text
    assert "truncated" in caplog.text


def test_read_info_logs_unexpected_errors(tmp_path, caplog):
    (tmp_path / "123" / "stat").mkdir(parents=True)
    (tmp_path / "124" / "cmdline").mkdir(parents=True)
    (tmp_path / "124" / "stat").write_text(read_fixture(5768, "stat"))
    proc = ProcFS(tmp_path)

    with caplog.at_level(logging.DEBUG, logger="exporter.procfs"):
        broken_stat = proc.read_info(123)
        broken_cmdline = proc.read_info(124)

    assert broken_stat is None
    assert broken_cmdline is not None
    assert broken_cmdline.argv == ()
    assert broken_cmdline.comm == "Demo New Transc"
    assert "for pid 123: [Errno 21] Is a directory" in caplog.text
    assert "124/cmdline failed for pid 124: [Errno 21] Is a directory" in caplog.text


def test_read_info_non_utf8_cmdline(fixture_proc):
    info = fixture_proc.read_info(888)

    assert info is not None
    assert info.argv == ("/usr/bin/caf\ufffd", "--name=na\ufffdve\ufffd")
    assert info.comm == "caf\ufffd"


def test_read_info_argv_rewritten_without_nul(fixture_proc):
    assert fixture_proc.read_info(889).argv == ("nginx: worker process",)


def test_read_info_kernel_thread(fixture_proc):
    info = fixture_proc.read_info(2)

    assert info is not None
    assert info.comm == "kthreadd"
    assert info.argv == ()
    assert info.uid == 0
    assert info.ppid == 0


def test_read_info_zombie(fixture_proc):
    info = fixture_proc.read_info(990)

    assert info is not None
    assert info.state == "Z"
    assert info.argv == ()
    assert info.ppid == 2310


def test_read_info_missing_pid(fixture_proc):
    assert fixture_proc.read_info(4242) is None


def test_read_stat_and_status(fixture_proc):
    assert fixture_proc.read_stat(990).exit_code == 9
    assert fixture_proc.read_status(489702).nspid == (489702, 31)
    assert fixture_proc.read_stat(4242) is None
    assert fixture_proc.read_stat(777) is None
    assert fixture_proc.read_status(1591) is None


def test_scan_fixture_tree(fixture_proc):
    processes = fixture_proc.scan()

    assert sorted(processes) == [pid for pid in fixture_proc.list_pids() if pid != 777]
    assert processes[15411].ppid == 15396
    assert processes[2325].argv[-1] == "8d3c2b1a-4f5e-4a6b-9c7d-0e1f2a3b4c5d"


def test_read_pidns_missing(fixture_proc):
    assert fixture_proc.read_pidns(27246) is None
    assert fixture_proc.read_pidns(4242) is None


def test_read_pidns_real_process():
    assert ProcFS().read_pidns(os.getpid()) == os.stat("/proc/self/ns/pid").st_ino


def test_list_tasks_missing_pid(fixture_proc):
    assert fixture_proc.list_tasks(4242) == []


# ProcFS on the real /proc


def test_read_info_real_child_argv():
    large = b"x" * 120_000
    argv = [os.fsencode(sys.executable), b"-c", b"import time; time.sleep(60)", b"caf\xe9", large]
    child = subprocess.Popen(argv)
    try:
        info = read_info_after_exec(child.pid)
    finally:
        child.kill()
        child.wait()

    assert info is not None
    assert info.pid == child.pid
    assert info.ppid == os.getpid()
    assert info.uid == os.getuid()
    assert info.argv == (
        sys.executable,
        "-c",
        "import time; time.sleep(60)",
        "caf\ufffd",
        "x" * 120_000,
    )
    assert info.nspid[0] == child.pid
    assert info.pidns == os.stat("/proc/self/ns/pid").st_ino
    assert info.state in {"R", "S"}


def test_read_info_after_exit(sleeper):
    proc = ProcFS()
    assert sleeper.pid in proc.list_pids()

    sleeper.kill()
    sleeper.wait()

    assert proc.read_info(sleeper.pid) is None
    assert sleeper.pid not in proc.scan()


def test_read_info_exit_between_files(sleeper, monkeypatch):
    real_read_bytes = procfs._read_bytes

    def read_then_reap(path, dir_fd=None):
        if path == "status":
            sleeper.kill()
            sleeper.wait()
        return real_read_bytes(path, dir_fd)

    monkeypatch.setattr(procfs, "_read_bytes", read_then_reap)

    assert ProcFS().read_info(sleeper.pid) is None


def test_start_ticks_stable_across_reads(sleeper):
    proc = ProcFS()

    first = proc.read_info(sleeper.pid)
    time.sleep(0.05)
    second = proc.read_info(sleeper.pid)

    assert first is not None
    assert second is not None
    assert first.key == second.key
    assert proc.read_stat(sleeper.pid).start_ticks == first.start_ticks


def test_ticks_to_monotonic_of_new_process():
    started = time.monotonic()
    child = subprocess.Popen(SLEEPER)
    try:
        stat = ProcFS().read_stat(child.pid)
    finally:
        child.kill()
        child.wait()

    assert stat is not None
    assert abs(ticks_to_monotonic(stat.start_ticks) - started) < 0.05
    assert ProcFS.ticks_to_monotonic(stat.start_ticks) == pytest.approx(
        ticks_to_monotonic(stat.start_ticks), abs=0.001
    )


def test_read_info_real_zombie():
    child = subprocess.Popen(["true"])
    proc = ProcFS()
    try:
        deadline = time.monotonic() + 5
        while proc.read_stat(child.pid).state != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        info = proc.read_info(child.pid)
    finally:
        child.wait()

    assert info is not None
    assert info.state == "Z"
    assert info.argv == ()
    assert info.ppid == os.getpid()


def test_thread_is_not_a_process():
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    proc = ProcFS()
    pid = os.getpid()
    try:
        tid = thread.native_id
        Path(f"/proc/self/task/{tid}/comm").write_text("pool (1) x")
        tasks = proc.list_tasks(pid)
        info = proc.read_info(tid)
        task_stat = proc.read_task_stat(pid, tid)
        task_comm = proc.read_task_comm(pid, tid)
    finally:
        release.set()
        thread.join()

    assert tid in tasks
    assert pid in tasks
    assert info is None
    assert task_stat.pid == tid
    assert task_stat.comm == "pool (1) x"
    assert task_comm == "pool (1) x"
    assert tid not in proc.list_pids()


def test_scan_includes_this_process():
    processes = ProcFS().scan()
    own = processes[os.getpid()]

    assert own.ppid == os.getppid()
    assert own.argv == parse_cmdline(Path("/proc/self/cmdline").read_bytes())
    assert own.threads >= 1


def test_count_threads_of_live_and_gone_process():
    release = threading.Event()
    threads = [threading.Thread(target=release.wait) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        expected = len(os.listdir(f"/proc/{os.getpid()}/task"))
        assert procfs.ProcFS().count_threads(os.getpid()) == expected
    finally:
        release.set()
        for thread in threads:
            thread.join()
    child = subprocess.Popen(SLEEPER)
    child.kill()
    child.wait()
    assert procfs.ProcFS().count_threads(child.pid) is None
