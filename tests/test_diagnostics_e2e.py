"""The running exporter's diagnosis: metrics, /debug/workers and `diagnose` agree.

The exporter runs with its kernel sources, so it also observes kill commands fail
(netlink exit statuses) and leftovers that keep a worker's port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import require_root
from tests.misconfig import OTHER_UID, STORM_UID, Node, node  # noqa: F401
from tests.servers import REPO, ExporterProcess, http_get
from tests.stormtree import StormTrees

FLAGS = ("--diagnostics.interval=500ms", "--leftover.grace=1s")


@pytest.fixture
def exporter():
    require_root()
    with ExporterProcess(*FLAGS) as running:
        running.wait_ready()
        yield running


def debug_workers(exporter: ExporterProcess) -> dict:
    status, _, body = http_get(f"http://{exporter.address}/debug/workers")
    assert status == 200
    return json.loads(body)


def debug_entry(exporter: ExporterProcess, worker_pid: int, timeout: float = 10.0, until=None) -> dict:
    """Wait for the worker's /debug/workers entry, and for ``until(entry)`` when given."""
    deadline = time.monotonic() + timeout
    entry = None
    while time.monotonic() < deadline:
        entries = [w for w in debug_workers(exporter)["workers"] if w["pid"] == worker_pid]
        entry = entries[0] if entries else None
        if entry is not None and (until is None or until(entry)):
            return entry
        time.sleep(0.2)
    raise AssertionError(f"no matching /debug/workers entry for pid {worker_pid}: {entry}")


def test_metrics_debug_and_diagnose_agree(exporter, node):
    passwd = node.passwd()
    tree = node.tree(f"e2e-diag-1-{int(time.time())}", worker_sigterm="ignore", worker_uid=STORM_UID,
                     supervisor_uid=OTHER_UID, passwd=passwd, supervisor_passwd=passwd)
    labels = {"topology": tree.topology}
    assert exporter.wait_value("storm_worker_signal_permission_denied", 1, 10.0, **labels) == 1
    assert exporter.value("storm_worker_sigterm_disposition", role="worker", disposition="ignored", **labels) == 1
    assert exporter.value("storm_worker_sigterm_disposition", role="logwriter", disposition="handled", **labels) == 1
    assert exporter.value("storm_worker_user_unresolvable", role="worker", **labels) == 0
    entry = debug_entry(exporter, tree.worker)
    served = sorted(finding["code"] for finding in entry["findings"])
    assert served == ["signal_permission_denied", "sigterm_ignored"]
    result = subprocess.run([sys.executable, "-m", "exporter", "diagnose", "--format=json"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    printed = [w for w in json.loads(result.stdout)["workers"] if w["pid"] == tree.worker]
    assert sorted(finding["code"] for finding in printed[0]["findings"]) == served
    assert printed[0]["verdict"] == entry["verdict"]


def test_failed_kill_command_counted(exporter, node):
    passwd = node.passwd()
    tree = node.tree(f"e2e-killfail-1-{int(time.time())}", worker_uid=STORM_UID,
                     passwd=passwd, supervisor_passwd=passwd)
    labels = {"topology": tree.topology, "signal": "SIGTERM"}
    assert exporter.wait_value("storm_worker_kill_failures_total", 0, 10.0, **labels) == 0
    # A kill from another user fails with EPERM and exits 1; the worker lives on.
    kill = subprocess.run(
        ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
         "kill", "-15", str(tree.worker)],
        capture_output=True, text=True, timeout=10,
    )
    assert kill.returncode == 1, kill.stderr
    assert exporter.wait_value("storm_worker_kill_failures_total", 1, 10.0, **labels) == 1
    assert exporter.value("storm_worker_kill_commands_total", **labels) == 1
    entry = debug_entry(exporter, tree.worker, until=lambda e: e["kill_failures"])
    assert entry["kill_failures"][0]["status"] == "exit 1"
    assert entry["kill_failures"][0]["target_pid"] == tree.worker
    assert "kill_failed" in [finding["code"] for finding in entry["findings"]]


def test_leftover_holding_worker_port(exporter, node):
    passwd = node.passwd()
    first = node.tree(f"e2e-port-1-{int(time.time())}", passwd=passwd, supervisor_passwd=passwd,
                      children=1, child_listen=None)
    port = first.port
    # The multilang child takes the worker's port; the worker is then SIGKILLed alone.
    second = node.tree(f"e2e-port-2-{int(time.time())}", passwd=passwd, supervisor_passwd=passwd,
                       children=1, child_listen=port, port=port)
    os.kill(second.worker, signal.SIGKILL)
    assert exporter.wait_value("storm_worker_leftover_processes", 1, 15.0, topology=second.topology) == 1
    # Now the live first worker and the leftover both claim the port.
    assert exporter.wait_value("storm_worker_port_conflicts", 2, 10.0, port=str(port)) == 2
    document = debug_workers(exporter)
    assert sorted(document["port_conflicts"][str(port)]["pids"]) == sorted([first.worker, second.children[0]])
    os.kill(first.worker, signal.SIGKILL)
    # The leftover alone still holds the port that the next worker would bind.
    assert exporter.wait_value("storm_worker_port_conflicts", 1, 15.0, port=str(port)) == 1


def test_pod_stop_of_supervisor_init(exporter):
    launched = int(time.time())
    with StormTrees(shutdown_sleep=0.3) as trees:
        unsafe = trees.start("graceful", f"e2e-podstop-1-{launched}", pid_namespace=True)
        stopped = trees.start("graceful", f"e2e-podstop-2-{launched}", pid_namespace=True)
        for tree in (unsafe, stopped):
            topology = tree.topology_id.decode()
            assert exporter.wait_value("storm_worker_pod_stop_unsafe", 1, 10.0, topology=topology) == 1
        # A pod stop without preStop: PID 1 (the supervisor) exits, and the kernel
        # SIGKILLs the worker that never saw a SIGTERM.
        assert unsafe.namespace.signal_supervisor(signal.SIGTERM)
        topology = unsafe.topology_id.decode()
        assert exporter.wait_value("storm_worker_exits_total", 1, 10.0, topology=topology, outcome="sigkill") == 1
        assert exporter.value("storm_worker_exits_total", topology=topology, outcome="graceful") == 0
        # The same layout with the workers stopped first, as a preStop hook does.
        stopped.stop()
        assert stopped.namespace.signal_supervisor(signal.SIGTERM)
        topology = stopped.topology_id.decode()
        assert exporter.wait_value("storm_worker_exits_total", 1, 10.0, topology=topology, outcome="graceful") == 1
        assert exporter.value("storm_worker_exits_total", topology=topology, outcome="sigkill") == 0
        assert exporter.wait_value("storm_worker_pod_stop_unsafe", 0, 10.0, topology=topology) == 0
