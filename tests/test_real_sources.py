"""The exporter on this machine's /proc and kernel, measuring real Storm-shaped trees.

Each test runs once per source mode against an exporter subprocess. Worker trees are
real processes stopped as Storm's supervisor stops them: `kill -15` for the worker and
its registered multilang children, a wait, then `kill -9` for what is still alive.
Ground truth comes from the harness: the time just before the first kill command and
the worker's exit time from a pidfd.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import require_root
from tests.servers import ExporterProcess
from tests.stormtree import StormTrees, wait_gone

KERNEL_TOLERANCE = 0.020  # seconds between the exporter's duration and the ground truth
POLL_INTERVAL = 0.5
LEFTOVER_GRACE = 1.0
MODES = ("tracefs,netlink", "netlink", "poll")


@pytest.fixture(scope="module", params=MODES)
def exporter(request):
    require_root()
    flags = [
        f"--events.source={request.param}",
        f"--poll.interval={int(POLL_INTERVAL * 1000)}ms",
        f"--leftover.grace={LEFTOVER_GRACE}s",
        "--scan.interval=10s",
    ]
    with ExporterProcess(*flags) as running:
        running.wait_ready()
        running.mode = request.param
        yield running


@pytest.fixture
def trees():
    with StormTrees(shutdown_sleep=0.5) as made:
        yield made


def label(tree) -> str:
    return tree.topology_id.decode("utf-8", "replace")


def kernel(exporter) -> bool:
    return exporter.mode != "poll"


def expected_outcome(exporter, outcome: str) -> str:
    """Return the outcome expected in this mode: polling reads no exit status, so ``unknown``."""
    return outcome if kernel(exporter) else "unknown"


def tolerance(exporter) -> float:
    return KERNEL_TOLERANCE if kernel(exporter) else POLL_INTERVAL


def wait_tracked(exporter, tree, timeout: float = 10.0) -> None:
    """Wait until the exporter lists the worker, and in poll mode until it saw the children."""
    value = exporter.wait_value("storm_workers", 1, timeout, topology=label(tree), state="running")
    assert value == 1, exporter.output()[-3000:]
    if not kernel(exporter):
        time.sleep(2 * POLL_INTERVAL)


def wait_exit(exporter, tree, outcome: str, timeout: float = 15.0) -> None:
    value = exporter.wait_value("storm_worker_exits_total", 1, timeout, topology=label(tree), outcome=outcome)
    assert value == 1, exporter.output()[-3000:]


def assert_duration(exporter, total: float, truth) -> None:
    """Check a recorded duration against the ground truth.

    With kernel sources the request is the signal or the kill command's exec, which
    happen while the first kill command runs, so the duration lies between the
    truth measured from the command's end and from its start, within the tolerance.
    """
    margin = tolerance(exporter)
    if kernel(exporter):
        assert total >= truth.shortest_duration - margin
        assert total <= truth.shutdown_duration + margin
    else:
        assert total == pytest.approx(truth.shutdown_duration, abs=margin)


def duration(exporter, tree, outcome: str) -> tuple[float | None, float | None]:
    labels = {"topology": label(tree), "outcome": outcome}
    return (
        exporter.value("storm_worker_shutdown_duration_seconds_sum", **labels),
        exporter.value("storm_worker_shutdown_duration_seconds_count", **labels),
    )


def assert_one_timed_exit(exporter, tree, truth, outcome: str) -> None:
    """Wait for the worker's exit with ``outcome`` (as this mode reports it) and check its duration."""
    outcome = expected_outcome(exporter, outcome)
    wait_exit(exporter, tree, outcome)
    total, count = duration(exporter, tree, outcome)
    assert count == 1
    assert_duration(exporter, total, truth)


def test_graceful_worker(exporter, trees):
    tree = trees.start("graceful", hook_secs=0.3)
    wait_tracked(exporter, tree)
    truth = tree.stop()
    assert_one_timed_exit(exporter, tree, truth, "graceful")
    assert exporter.value("storm_worker_sigkill_escalations_total", topology=label(tree)) == 0
    if "tracefs" in exporter.mode:
        # The harness's kill commands, plus the worker's own SIGTERM to each
        # multilang child as ShellBolt.cleanup() sends it: all from "other".
        # The worker's SIGTERM reaches a child only if the child is still alive.
        sent = exporter.value("storm_worker_signals_total", topology=label(tree), signal="SIGTERM", sender="other")
        assert sent >= len(truth.killed_pids(signal.SIGTERM))
        assert sent <= len(truth.killed_pids(signal.SIGTERM)) + len(tree.child_pids)


def test_watchdog_halt(exporter, trees):
    tree = trees.start("halt", halt_secs=0.3)
    wait_tracked(exporter, tree)
    truth = tree.stop()
    assert truth.logwriter_returncode == 20
    assert_one_timed_exit(exporter, tree, truth, "halted")


def test_kill_inside_pid_namespace(exporter, trees):
    tree = trees.start("graceful", hook_secs=0.3, pid_namespace=True)
    assert tree.namespace_pids[tree.worker_pid] != tree.worker_pid
    wait_tracked(exporter, tree)
    truth = tree.stop()
    assert_one_timed_exit(exporter, tree, truth, "graceful")
    if "netlink" in exporter.mode:
        commands = exporter.value("storm_worker_kill_commands_total", topology=label(tree), signal="SIGTERM")
        assert commands == 1
    if "tracefs" in exporter.mode:
        sent = exporter.value("storm_worker_signals_total", topology=label(tree), signal="SIGTERM",
                              sender="supervisor")
        assert sent == len(truth.killed_pids(signal.SIGTERM)), exporter.output()[-6000:]


def test_ignored_sigterm_escalates(exporter, trees):
    tree = trees.start("ignore-term")
    wait_tracked(exporter, tree)
    truth = tree.stop()
    assert truth.logwriter_returncode == 137
    assert truth.sigkill_sent
    assert_one_timed_exit(exporter, tree, truth, "sigkill")
    escalations = exporter.value("storm_worker_sigkill_escalations_total", topology=label(tree))
    assert escalations == (1 if kernel(exporter) else 0)


def test_children_left_behind(exporter, trees):
    tree = trees.start("leave-children", leftover_secs=LEFTOVER_GRACE + 2.5)
    assert len(tree.unregistered_pids) == 1
    wait_tracked(exporter, tree)
    tree.stop()
    gauge = exporter.wait_value("storm_worker_leftover_processes", 1, 5.0, topology=label(tree))
    assert gauge == 1, exporter.output()[-3000:]
    assert exporter.value("storm_worker_leftover_processes_detected_total", topology=label(tree)) == 1
    assert wait_gone(tree.unregistered_pids, timeout=10.0) == []
    gauge = exporter.wait_value("storm_worker_leftover_processes", 0, 5.0, topology=label(tree))
    assert gauge == 0
    assert exporter.value("storm_worker_leftover_processes_detected_total", topology=label(tree)) == 1


def test_crash_without_request(exporter, trees):
    tree = trees.start("crash", crash_secs=1.0)
    wait_tracked(exporter, tree)
    truth = tree.wait_exit()
    assert truth.logwriter_returncode == 11
    outcome = expected_outcome(exporter, "crashed")
    wait_exit(exporter, tree, outcome)
    # No request, so no duration sample: the series is absent or still at 0.
    assert duration(exporter, tree, outcome) in ((None, None), (0.0, 0.0))
    assert exporter.value("storm_workers", topology=label(tree), state="terminating") == 0


def test_reused_pid_inherits_nothing(exporter, trees):
    tree = trees.start("graceful", hook_secs=0.1)
    wait_tracked(exporter, tree)
    tree.stop()
    outcome = expected_outcome(exporter, "graceful")
    wait_exit(exporter, tree, outcome)
    impostor = spawn_with_pid(tree.worker_pid)
    try:
        time.sleep(2 * POLL_INTERVAL)
        subprocess.run(["kill", "-15", str(impostor.pid)], check=True)
        impostor.wait(timeout=5)
        time.sleep(2 * POLL_INTERVAL)
        samples = exporter.samples()
    finally:
        if impostor.poll() is None:
            impostor.kill()
            impostor.wait()
    topology = label(tree)
    exits = {k: v for k, v in samples.items() if k[0] == "storm_worker_exits_total" and ("topology", topology) in k[1]}
    assert sum(exits.values()) == 1
    assert samples[("storm_workers", (("state", "running"), ("topology", topology)))] == 0
    assert samples[("storm_workers", (("state", "terminating"), ("topology", topology)))] == 0


def spawn_with_pid(pid: int, attempts: int = 50) -> subprocess.Popen:
    """Start `sleep` under a given pid by setting the kernel's last-pid counter."""
    for _ in range(attempts):
        with open("/proc/sys/kernel/ns_last_pid", "w") as counter:
            counter.write(str(pid - 1))
        process = subprocess.Popen(["sleep", "30"])
        if process.pid == pid:
            return process
        process.kill()
        process.wait()
    pytest.fail(f"could not start a process with pid {pid} after {attempts} attempts")


def test_odd_topology_id(exporter, trees):
    topology = b'we"ird\\topo \xff\nname-3-1700000000'
    tree = trees.start("graceful", topology, hook_secs=0.1)
    assert label(tree) == 'we"ird\\topo \ufffd\nname-3-1700000000'
    wait_tracked(exporter, tree)
    tree.stop()
    wait_exit(exporter, tree, expected_outcome(exporter, "graceful"))


def test_namespace_teardown_kills_without_request(exporter, trees):
    namespace = trees.namespace()
    tree = trees.start("graceful", pid_namespace=namespace)
    wait_tracked(exporter, tree)
    assert namespace.signal_supervisor(signal.SIGTERM)
    assert wait_gone([tree.worker_pid], timeout=10.0) == []
    outcome = expected_outcome(exporter, "sigkill")
    wait_exit(exporter, tree, outcome)
    assert exporter.value("storm_worker_sigkill_escalations_total", topology=label(tree)) == 0
    # No request, so no duration sample: the series is absent or still at 0.
    assert duration(exporter, tree, outcome) in ((None, None), (0.0, 0.0))
    if "tracefs" in exporter.mode:
        sent = exporter.value("storm_worker_signals_total", topology=label(tree), signal="SIGKILL",
                              sender="namespace_teardown")
        assert sent is not None and sent >= 1


def test_topology_max_overflow():
    require_root()
    with StormTrees(shutdown_sleep=0.3) as made, ExporterProcess("--topology.max=2") as running:
        running.wait_ready()
        for index in range(3):
            made.start("graceful", port=6700 + index)
        overflow = running.wait_value("storm_termination_exporter_topology_overflow_total", 1, 10.0)
        assert overflow is not None and overflow >= 1
        # Other Storm-shaped processes on the machine count too, so check the bound
        # rather than which topologies won the two slots.
        samples = running.samples()
        named = {dict(labels)["topology"] for name, labels in samples if name == "storm_workers"}
        assert "_other" in named
        assert len(named - {"_other"}) == 2
        assert running.value("storm_workers", topology="_other", state="running") >= 1
