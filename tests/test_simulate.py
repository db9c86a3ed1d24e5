"""The simulated Storm supervisor and workers, run as real processes with real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter import simrole, simulate
from exporter.simrole import StormLayout
from tests.conftest import require_root
from tests.stormtree import (
    StormTrees,
    alive_pids,
    namespace_pid,
    processes_in_dir,
    read_cmdline,
    storm_trees,  # noqa: F401  (fixture)
    thread_names,
    wait_gone,
)

REPO = Path(__file__).resolve().parent.parent
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def _sigignore_mask(pid: int) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("SigIgn:"):
                return int(line.split()[1], 16)
    raise AssertionError(f"/proc/{pid}/status has no SigIgn line")


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


# Exit statuses and timing of each behaviour.


def test_graceful_worker_exits_143(storm_trees):
    tree = storm_trees.start("graceful", hook_secs=0.2, children=2)

    result = tree.stop(shutdown_sleep=1.0)

    assert result.logwriter_returncode == 143
    assert not result.sigkill_sent
    assert result.killed_pids(signal.SIGTERM) == sorted([tree.worker_pid, *tree.child_pids])
    assert tree.logwriter_pid not in result.killed_pids(signal.SIGTERM)
    assert 0.2 <= result.shutdown_duration < 1.0
    assert wait_gone(tree.host_pids(), 2.0) == []


def test_halt_worker_exits_20(storm_trees):
    tree = storm_trees.start("halt", halt_secs=0.3)

    result = tree.stop(shutdown_sleep=1.0)

    assert result.logwriter_returncode == 20
    assert not result.sigkill_sent
    assert 0.3 <= result.shutdown_duration < 1.0


def test_ignore_term_worker_needs_sigkill(storm_trees):
    tree = storm_trees.start("ignore-term")

    result = tree.stop(shutdown_sleep=0.5)

    assert result.logwriter_returncode == 137
    assert result.sigkill_sent
    # The multilang child ends at its SIGTERM, so only the worker gets kill -9.
    assert result.killed_pids(signal.SIGKILL) == [tree.worker_pid]
    assert result.shutdown_duration >= 0.5
    kill_times = [kill.time for kill in result.kills]
    assert kill_times == sorted(kill_times)
    assert result.request_time == kill_times[0]


def test_crash_worker_exits_11_unrequested(storm_trees):
    started = time.monotonic()
    tree = storm_trees.start("crash", crash_secs=0.5)

    result = tree.wait_exit(timeout=5.0)

    assert result.logwriter_returncode == 11
    assert result.request_time is None
    assert result.kills == ()
    assert result.worker_exit_time - started >= 0.5
    # The multilang child reads EOF on stdin once the worker is gone.
    assert wait_gone(tree.child_pids, 2.0) == []


def test_leave_children_leftover_outlives_worker(storm_trees):
    tree = storm_trees.start("leave-children", leftover_secs=1.5)
    assert len(tree.unregistered_pids) == 1
    helper = tree.unregistered_pids[0]
    assert helper not in tree.registered_pids()
    # The helper may still be starting, because the worker registers once the bolt replied to its handshake.
    assert _wait_for(lambda: _sigignore_mask(helper) & SIGTERM_BIT, 2.0)
    assert read_cmdline(helper) == [b"python3", b"warmcache.py"]

    result = tree.stop(shutdown_sleep=0.5)

    assert result.logwriter_returncode == 143
    assert helper not in result.killed_pids(signal.SIGTERM)
    assert wait_gone([tree.worker_pid], 1.0) == []
    assert alive_pids([helper]) == [helper]
    assert wait_gone([helper], 3.0) == []


def test_leave_children_wrapper_registers_bolt(storm_trees):
    tree = storm_trees.start("leave-children", children=2)
    wrapped = tree.child_pids[0]

    # The shell wrapper execs the bolt, so the registered pid is the wrapper's.
    assert read_cmdline(wrapped) == [b"python3", b"splitsentence.py"]
    assert simulate.read_stat(wrapped).ppid == tree.worker_pid
    assert simulate.read_stat(tree.unregistered_pids[0]).ppid == wrapped


# Command lines, pid files and threads as /proc shows them.


def test_logwriter_argv_layout(storm_trees):
    tree = storm_trees.start("graceful", "wordcount-7-1700000000", port=6701)
    argv = read_cmdline(tree.logwriter_pid)

    assert argv[0] == b"java"
    assert argv[1] == simrole.SCRIPT_PATH.encode()
    assert argv[2:5] == [b"-cp", argv[3], b"-Xmx64m"]
    assert argv[5] == b"-Dlogging.sensitivity=S3"
    main_index = argv.index(b"org.apache.storm.LogWriter")
    options = argv[:main_index]
    assert b"-Dstorm.id=wordcount-7-1700000000" in options
    assert f"-Dworker.id={tree.worker_id}".encode() in options
    assert b"-Dworker.port=6701" in options
    assert f"-Dstorm.local.dir={storm_trees.base_dir}".encode() in options
    assert argv[main_index + 1 : main_index + 3] == [b"java", b"-server"]
    assert argv[main_index + 1 :] == [b"java", *read_cmdline(tree.worker_pid)[2:]]


def test_worker_argv_layout(storm_trees):
    tree = storm_trees.start("halt", "wordcount-7-1700000000", port=6702)
    argv = read_cmdline(tree.worker_pid)

    assert argv[:3] == [b"java", simrole.SCRIPT_PATH.encode(), b"-server"]
    main_index = argv.index(b"org.apache.storm.daemon.worker.Worker")
    assert argv[main_index - 2] == b"-cp"
    assert argv[main_index + 1 :] == [
        b"wordcount-7-1700000000",
        storm_trees.supervisor_id.encode(),
        b"6628",
        b"6702",
        tree.worker_id.encode(),
    ]
    options = argv[:main_index]
    assert b"-Dstorm.id=wordcount-7-1700000000" in options
    assert b"-Dworker.port=6702" in options
    assert b"-Dworker.memory_limit_mb=768" in options
    assert b"-Dstorm.sim.behaviour=halt" in options
    tmpdir = os.path.join(storm_trees.base_dir, "workers", tree.worker_id, "tmp")
    assert f"-Djava.io.tmpdir={tmpdir}".encode() in options
    with open(f"/proc/{tree.worker_pid}/comm") as file:
        assert file.read().strip() == "java"


def test_multilang_child_argv_and_cwd(storm_trees):
    tree = storm_trees.start("graceful", children=2)

    for child in tree.child_pids:
        assert read_cmdline(child) == [b"python3", b"splitsentence.py"]
        assert os.readlink(f"/proc/{child}/cwd") == tree.resources_dir
        assert simulate.read_stat(child).ppid == tree.worker_pid
    assert simulate.read_stat(tree.worker_pid).ppid == tree.logwriter_pid


def test_pids_dir_lists_worker_and_children(storm_trees):
    tree = storm_trees.start("graceful", children=3)

    assert tree.registered_pids() == sorted([tree.worker_pid, *tree.child_pids])
    assert tree.logwriter_pid not in tree.registered_pids()
    for pid in tree.registered_pids():
        assert os.path.getsize(os.path.join(tree.pids_dir, str(pid))) == 0
    artifact = os.path.join(os.path.dirname(tree.worker_log), "worker.pid")
    with open(artifact) as file:
        assert file.read() == str(tree.worker_pid)


@pytest.mark.parametrize(
    "behaviour, settings",
    [
        ("graceful", {"hook_secs": 2.0}),
        ("halt", {"halt_secs": 2.0}),
        ("ignore-term", {}),
        ("leave-children", {"hook_secs": 2.0, "leftover_secs": 1.0}),
        ("crash", {"hook_secs": 2.0, "crash_secs": 5.0}),
    ],
)
def test_sigterm_handler_thread_appears(storm_trees, behaviour, settings):
    tree = storm_trees.start(behaviour, **settings)
    assert "SIGTERM handler" not in thread_names(tree.worker_pid)

    subprocess.run(["kill", "-15", str(tree.worker_pid)], check=True)

    assert _wait_for(lambda: "SIGTERM handler" in thread_names(tree.worker_pid), 2.0)
    assert thread_names(tree.worker_pid)[0] == "java"


def test_second_sigterm_starts_blocked_thread(storm_trees):
    tree = storm_trees.start("ignore-term")

    # A second SIGTERM still pending with the first would be merged into it.
    os.kill(tree.worker_pid, signal.SIGTERM)
    assert _wait_for(lambda: "SIGTERM handler" in thread_names(tree.worker_pid), 2.0)
    os.kill(tree.worker_pid, signal.SIGTERM)

    assert _wait_for(lambda: thread_names(tree.worker_pid).count("SIGTERM handler") == 2, 2.0)


def test_topology_id_bytes_in_argv(storm_trees):
    topology_id = b'we"ird\\topo \xff\xfe-3-1700000000'
    tree = storm_trees.start("graceful", topology_id)

    for pid in (tree.logwriter_pid, tree.worker_pid):
        assert b"-Dstorm.id=" + topology_id in read_cmdline(pid)
    assert read_cmdline(tree.worker_pid)[-5] == topology_id
    assert tree.topology_id == topology_id
    assert tree.resources_dir.endswith("/stormdist/we%22ird%5Ctopo+%FF%FE-3-1700000000/resources")
    assert tree.stop().logwriter_returncode == 143


def test_worker_log_receives_worker_output(storm_trees):
    tree = storm_trees.start("graceful")
    tree.stop()

    with open(tree.worker_log, errors="replace") as file:
        text = file.read()
    assert "STDERR" in text
    assert "exiting with 143" in text


def test_cleanup_kills_unstopped_trees():
    with StormTrees() as trees:
        stuck = trees.start("ignore-term")
        leaving = trees.start("leave-children", port=6701, leftover_secs=30.0)
        pids = [*stuck.host_pids(), *leaving.host_pids()]
        base_dir = trees.base_dir
        assert len(alive_pids(pids)) == len(pids)

    assert alive_pids(pids) == []
    assert not os.path.exists(base_dir)


def test_wait_gone_reports_survivors():
    process = subprocess.Popen(["sleep", "5"])
    try:
        assert wait_gone([process.pid], 0.1) == [process.pid]
        process.kill()
        process.wait()
        assert wait_gone([process.pid], 1.0) == []
    finally:
        process.kill()
        process.wait()


# The supervisor role, outside and inside a PID namespace.


def test_supervisor_process_launches_and_stops(tmp_path):
    layout = StormLayout(str(tmp_path))
    supervisor = simulate.SupervisorProcess(layout, 0.3, stderr=subprocess.DEVNULL)
    supervisor.start()
    try:
        argv = read_cmdline(supervisor.pid)
        main_index = argv.index(b"org.apache.storm.daemon.supervisor.Supervisor")
        assert argv[0] == b"java"
        assert b"-Ddaemon.name=supervisor" in argv[:main_index]

        spec = simulate.WorkerSpec("wordcount-1-1700000000", settings=simrole.WorkerSettings("ignore-term"))
        supervisor.launch(spec)
        launched = supervisor.wait_event(lambda event: event["event"] == "launched", 5.0)
        registered = supervisor.wait_event(lambda event: event["event"] == "registered", 5.0)
        assert launched is not None
        assert registered is not None
        logwriter = launched[1]["logwriter_pid"]
        assert simulate.read_stat(logwriter).ppid == supervisor.pid

        supervisor.stop(spec.worker_id)
        stopped = supervisor.wait_event(lambda event: event["event"] == "stopped", 5.0)
        exited = supervisor.wait_event(lambda event: event["event"] == "exited", 5.0)
        assert stopped is not None
        assert exited is not None
        assert exited[1]["code"] == 137
        assert stopped[1]["sigkill_pids"] == [registered[1]["worker_pid"]]
        assert not os.path.exists(layout.worker_dir(spec.worker_id))

        supervisor.close_input()
        assert supervisor.wait(5.0) == 0
    finally:
        supervisor.kill()


def test_supervisor_launches_listed_workers(tmp_path):
    specs = [
        simulate.WorkerSpec("wordcount-1-1700000000", port=6700, stop_after=0.3).to_dict(),
        simulate.WorkerSpec(
            "wordcount-2-1700000000", port=6701, settings=simrole.WorkerSettings("crash", crash_secs=0.3)
        ).to_dict(),
    ]
    workers_file = tmp_path / "workers.json"
    workers_file.write_text(json.dumps(specs))
    argv = simrole.supervisor_argv(StormLayout(str(tmp_path)), 0.3)
    argv.insert(-1, f"-Dstorm.sim.workers={workers_file}")

    completed = subprocess.run(
        simrole.role_args(argv),
        executable=simrole.interpreter_path(),
        env=simrole.role_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=20,
    )

    assert completed.returncode == 0
    events = [json.loads(line) for line in completed.stdout.splitlines()]
    codes = {event["worker_id"]: event["code"] for event in events if event["event"] == "exited"}
    assert codes == {specs[0]["worker_id"]: 143, specs[1]["worker_id"]: 11}
    log = completed.stderr.decode()
    assert f"Worker Process {specs[0]['worker_id']} exited with code: 143" in log
    assert f"Worker Process {specs[1]['worker_id']} exited with code: 11" in log


def test_pid_namespace_uses_namespace_pids(storm_trees):
    require_root()
    namespace = storm_trees.namespace()
    tree = storm_trees.start("ignore-term", pid_namespace=namespace)

    assert namespace_pid(namespace.init_pid) == 1
    assert b"org.apache.storm.daemon.supervisor.Supervisor" in read_cmdline(namespace.init_pid)
    assert os.stat(f"/proc/{tree.worker_pid}/ns/pid").st_ino == namespace.inode
    assert namespace.inode != os.stat("/proc/self/ns/pid").st_ino
    expected = sorted(namespace_pid(pid) for pid in (tree.worker_pid, *tree.child_pids))
    assert tree.registered_pids() == expected
    assert tree.worker_pid not in tree.registered_pids()
    assert tree.namespace_pids[tree.worker_pid] == namespace_pid(tree.worker_pid)

    result = tree.stop(shutdown_sleep=0.5)

    assert result.logwriter_returncode == 137
    assert result.killed_pids(signal.SIGTERM) == expected
    assert result.killed_pids(signal.SIGKILL) == [tree.namespace_pids[tree.worker_pid]]
    assert all(kill.returncode == 0 for kill in result.kills)
    assert result.shutdown_duration >= 0.5
    assert f"Worker Process {tree.worker_id} exited with code: 137" in namespace.log_text()


def test_pid_namespace_graceful_stop(storm_trees):
    require_root()
    tree = storm_trees.start("graceful", pid_namespace=True, children=2)

    result = tree.stop(shutdown_sleep=1.0)

    assert result.logwriter_returncode == 143
    assert not result.sigkill_sent
    assert 0.2 <= result.shutdown_duration < 1.0


def test_pid_namespace_teardown_kills_workers(storm_trees):
    require_root()
    namespace = storm_trees.namespace()
    first = storm_trees.start("ignore-term", pid_namespace=namespace)
    second = storm_trees.start("leave-children", port=6701, pid_namespace=namespace, leftover_secs=30.0)
    pids = [*first.host_pids(), *second.host_pids()]

    assert namespace.signal_supervisor(signal.SIGTERM)

    assert namespace.supervisor.wait(2.0) == 143
    assert wait_gone(pids, 2.0) == []


# The simulate command.


def _simulate_command(*options: str) -> list[str]:
    return [sys.executable, "-m", "exporter.simulate", *options]


def _lines(output: str, kind: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(kind + " ")]


def _exit_codes(output: str) -> dict[str, int]:
    codes = {}
    for line in _lines(output, "exited"):
        match = re.search(r"topology=(\S+)-\d+-\d+ .* code=(\d+)", line)
        assert match, line
        codes[match[1]] = int(match[2])
    return codes


def test_simulate_one_round_exits_clean(tmp_path):
    local_dir = tmp_path / "storm"
    completed = subprocess.run(
        _simulate_command(
            "--rounds",
            "1",
            "--shutdown-sleep",
            "300ms",
            "--stop-after",
            "1s",
            "--leftover-lifetime",
            "1s",
            "--local-dir",
            str(local_dir),
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert completed.returncode == 0, completed.stderr
    assert len(_lines(completed.stdout, "launched")) == 4
    assert len(_lines(completed.stdout, "stopped")) == 3
    assert _exit_codes(completed.stdout) == {
        "wordcount": 143,
        "stuck-hooks": 137,
        "shell-helpers": 143,
        "flaky-bolt": 11,
    }
    assert "exited with code: 137" in completed.stderr
    helpers = [line for line in _lines(completed.stdout, "launched") if "topology=shell-helpers-" in line]
    assert len(helpers) == 1
    assert re.search(r" unregistered=\d+", helpers[0])
    assert processes_in_dir(str(local_dir)) == []


def test_simulate_sigterm_stops_within_1s(tmp_path):
    process = subprocess.Popen(
        _simulate_command("--stop-after", "20s"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        launched = 0
        while launched < 4:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            launched += line.startswith("launched ")
        local_dir = re.search(
            r"-Dstorm\.local\.dir=(\S+)",
            " ".join(arg.decode() for arg in read_cmdline(_first_child_logwriter(process.pid))),
        )[1]
        assert processes_in_dir(local_dir) != []

        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=5)
        elapsed = time.monotonic() - signalled
    finally:
        process.kill()
        process.wait()

    assert returncode == 0
    assert elapsed < 1.0
    assert processes_in_dir(local_dir) == []
    assert not os.path.exists(local_dir)


def _first_child_logwriter(simulate_pid: int) -> int:
    for pid in simulate.descendant_pids(simulate_pid):
        if b"org.apache.storm.LogWriter" in read_cmdline(pid):
            return pid
    raise AssertionError(f"no LogWriter below pid {simulate_pid}")


def test_simulate_pid_namespace_round(tmp_path):
    require_root()
    local_dir = tmp_path / "storm"
    completed = subprocess.run(
        _simulate_command(
            "--rounds",
            "1",
            "--shutdown-sleep",
            "300ms",
            "--stop-after",
            "1s",
            "--leftover-lifetime",
            "1s",
            "--pid-namespace",
            "--local-dir",
            str(local_dir),
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert completed.returncode == 0, completed.stderr
    launched = _lines(completed.stdout, "launched")
    assert len(launched) == 4
    assert all("namespace_pids:" in line for line in launched)
    assert _exit_codes(completed.stdout)["stuck-hooks"] == 137
    assert processes_in_dir(str(local_dir)) == []


def test_simulate_rejects_duration_without_unit():
    completed = subprocess.run(
        _simulate_command("--shutdown-sleep", "3"), cwd=REPO, capture_output=True, text=True, timeout=10
    )

    assert completed.returncode == 2
    assert "invalid duration '3'" in completed.stderr
