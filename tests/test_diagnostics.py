"""Diagnosis of real misconfigured process trees: users, signals, namespaces, ports.

Every tree is built from real processes (tests/holder.py) with Storm-shaped argv,
real UIDs, private mount namespaces with their own /etc/passwd, and real PID
namespaces, then diagnosed once from this machine's /proc the way
`storm-termination-exporter diagnose` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter import sockets
from exporter.diagmetrics import DiagnosticsCollector
from exporter.diagnostics import Diagnosis, WorkerReport
from exporter.diagreport import diagnose_node, to_json
from exporter.procfs import ProcFS
from tests.holder import INTERPRETER, INTERPRETER_HOME, SCRIPT, SPEC_VARIABLE
from tests.misconfig import ARBITRARY_UID, OTHER_UID, PASSWD, STORM_UID, Node, Tree, node  # noqa: F401
from tests.servers import REPO, free_port
from tests.stormargv import worker_argv


def topology_name(kind: str) -> str:
    return f"diag-{kind}-{next(_counter)}-{int(time.time())}"


def _counter_values():
    value = 0
    while True:
        value += 1
        yield value


_counter = _counter_values()


def diagnose() -> Diagnosis:
    return diagnose_node(ProcFS())


def report_of(diagnosis: Diagnosis, tree: Tree) -> WorkerReport:
    found = [r for r in diagnosis.workers if r.snapshot.worker.pid == tree.worker]
    assert len(found) == 1, f"worker {tree.worker} of {tree.topology} not diagnosed once: {found}"
    return found[0]


def codes(report: WorkerReport) -> list[str]:
    return sorted(finding.code for finding in report.findings)


def metrics(diagnosis: Diagnosis) -> CollectorRegistry:
    registry = CollectorRegistry()
    collector = DiagnosticsCollector()
    collector.latest = diagnosis
    registry.register(collector)
    return registry


def gauge(registry: CollectorRegistry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, labels)


def run_diagnose(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "diagnose", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


def verdict_line(output: str, tree: Tree) -> str:
    lines = [line for line in output.splitlines() if line.startswith(f"{tree.worker} ")]
    assert len(lines) == 1, output
    return lines[0]


# Healthy trees.


def test_healthy_tree_has_no_finding(node):
    passwd = node.passwd()
    tree = node.tree(topology_name("healthy"), worker_uid=STORM_UID, supervisor_uid=STORM_UID,
                     passwd=passwd, supervisor_passwd=passwd, children=1)
    diagnosis = diagnose()
    report = report_of(diagnosis, tree)
    assert report.findings == []
    assert report.verdict.startswith("ok")
    assert report.signal_permitted is True
    assert report.worker.user == "storm"
    assert report.supervisor is not None and report.supervisor.pid == tree.supervisor
    registry = metrics(diagnosis)
    for role in ("worker", "logwriter"):
        assert gauge(registry, "storm_worker_sigterm_disposition", topology=tree.topology, role=role,
                     disposition="handled") == 1
        for other in ("ignored", "blocked", "default"):
            assert gauge(registry, "storm_worker_sigterm_disposition", topology=tree.topology,
                         role=role, disposition=other) == 0
    assert gauge(registry, "storm_worker_signal_permission_denied", topology=tree.topology) == 0
    assert gauge(registry, "storm_worker_user_unresolvable", topology=tree.topology, role="worker") == 0
    assert gauge(registry, "storm_worker_user_unresolvable", topology=tree.topology, role="supervisor") == 0
    assert gauge(registry, "storm_worker_pod_stop_unsafe", topology=tree.topology) == 0
    assert gauge(registry, "storm_worker_port_conflicts", port=str(tree.port)) is None


def test_diagnose_command_passes_healthy_tree(node):
    passwd = node.passwd()
    tree = node.tree(topology_name("healthy"), passwd=passwd, supervisor_passwd=passwd)
    result = run_diagnose()
    assert "ok: SIGTERM reaches the worker" in verdict_line(result.stdout, tree)
    document = json.loads(run_diagnose("--format=json").stdout)
    entries = [w for w in document["workers"] if w["pid"] == tree.worker]
    assert entries[0]["findings"] == []


# SIGTERM dispositions.


@pytest.mark.parametrize(("mode", "disposition", "code"), [
    ("ignore", "ignored", "sigterm_ignored"),
    ("block", "blocked", "sigterm_blocked"),
])
def test_worker_that_will_need_sigkill(node, mode, disposition, code):
    passwd = node.passwd()
    tree = node.tree(topology_name(mode), worker_sigterm=mode, passwd=passwd, supervisor_passwd=passwd)
    diagnosis = diagnose()
    report = report_of(diagnosis, tree)
    assert codes(report) == [code]
    assert report.verdict.startswith("will need SIGKILL")
    registry = metrics(diagnosis)
    assert gauge(registry, "storm_worker_sigterm_disposition", topology=tree.topology, role="worker",
                 disposition=disposition) == 1
    assert gauge(registry, "storm_worker_sigterm_disposition", topology=tree.topology, role="worker",
                 disposition="handled") == 0
    result = run_diagnose()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "serious: will need SIGKILL" in verdict_line(result.stdout, tree)


def test_child_ignoring_sigterm_is_warning(node):
    passwd = node.passwd()
    tree = node.tree(topology_name("child"), children=1, child_sigterm="ignore",
                     passwd=passwd, supervisor_passwd=passwd)
    report = report_of(diagnose(), tree)
    assert codes(report) == ["child_ignores_sigterm"]
    assert report.findings[0].pid == tree.children[0]
    assert report.findings[0].severity == "warning"
    assert not report.serious


# Users and permissions.


def test_supervisor_of_other_user_cannot_signal(node):
    passwd = node.passwd()
    tree = node.tree(topology_name("eperm"), worker_uid=STORM_UID, supervisor_uid=OTHER_UID,
                     passwd=passwd, supervisor_passwd=passwd)
    report = report_of(diagnose(), tree)
    assert codes(report) == ["signal_permission_denied"]
    assert report.signal_permitted is False
    assert "uid 2001" in report.verdict
    assert "uid 1001" in report.verdict
    # The kernel agrees: a real kill from the supervisor's user fails with EPERM.
    kill = subprocess.run(
        ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
         "kill", "-0", str(tree.worker)],
        capture_output=True, text=True, timeout=10,
    )
    assert kill.returncode == 1
    assert "Operation not permitted" in kill.stderr
    assert gauge(metrics(diagnose()), "storm_worker_signal_permission_denied", topology=tree.topology) == 1


def test_supervisor_of_same_user_may_signal(node):
    passwd = node.passwd()
    tree = node.tree(topology_name("same-user"), worker_uid=STORM_UID, supervisor_uid=STORM_UID,
                     passwd=passwd, supervisor_passwd=passwd)
    report = report_of(diagnose(), tree)
    assert report.signal_permitted is True
    kill = subprocess.run(
        ["setpriv", f"--reuid={STORM_UID}", f"--regid={STORM_UID}", "--clear-groups",
         "kill", "-0", str(tree.worker)],
        capture_output=True, text=True, timeout=10,
    )
    assert kill.returncode == 0, kill.stderr


def test_arbitrary_uid_without_passwd_entry(node):
    missing = node.passwd()
    present = node.passwd(PASSWD + f"app:x:{ARBITRARY_UID}:0::/home/app:/bin/sh\n")
    lost = node.tree(topology_name("no-user"), worker_uid=ARBITRARY_UID, supervisor_uid=ARBITRARY_UID,
                     passwd=missing, supervisor_passwd=present)
    found = node.tree(topology_name("user"), worker_uid=ARBITRARY_UID, supervisor_uid=ARBITRARY_UID,
                      passwd=present, supervisor_passwd=present)
    diagnosis = diagnose()
    report = report_of(diagnosis, lost)
    assert codes(report) == ["user_unresolvable"]
    assert report.worker.user_known is False
    assert report_of(diagnosis, found).findings == []
    assert report_of(diagnosis, found).worker.user == "app"
    registry = metrics(diagnosis)
    assert gauge(registry, "storm_worker_user_unresolvable", topology=lost.topology, role="worker") == 1
    assert gauge(registry, "storm_worker_user_unresolvable", topology=lost.topology, role="supervisor") == 0
    assert gauge(registry, "storm_worker_user_unresolvable", topology=found.topology, role="worker") == 0


def test_supervisor_uid_without_passwd_entry(node):
    passwd = node.passwd()
    tree = node.tree(topology_name("no-sup-user"), worker_uid=ARBITRARY_UID, supervisor_uid=ARBITRARY_UID,
                     passwd=node.passwd(PASSWD + f"app:x:{ARBITRARY_UID}:0::/:/bin/sh\n"),
                     supervisor_passwd=passwd)
    diagnosis = diagnose()
    assert codes(report_of(diagnosis, tree)) == ["supervisor_user_unresolvable"]
    registry = metrics(diagnosis)
    assert gauge(registry, "storm_worker_user_unresolvable", topology=tree.topology, role="supervisor") == 1
    assert gauge(registry, "storm_worker_user_unresolvable", topology=tree.topology, role="worker") == 0


# Storm's worker directory: the user-mismatch and missing pid file reports.


def storm_local_dir(node: Node, worker_id: str, user: str | None) -> tuple[str, str]:
    """Create <storm.local.dir>/workers/<id>/pids and, with ``user``, workers-users/<id>."""
    local = os.path.join(node.directory, f"storm-local-{node._name()}")
    worker_dir = os.path.join(local, "workers", worker_id)
    os.makedirs(os.path.join(worker_dir, "pids"))
    os.makedirs(os.path.join(local, "workers-users"))
    if user is not None:
        Path(local, "workers-users", worker_id).write_text(user + "\n")
    for directory in (local, os.path.join(local, "workers"), worker_dir, os.path.join(worker_dir, "pids")):
        os.chmod(directory, 0o1777)
    return local, worker_dir


def test_recorded_worker_user_differs(node):
    # Storm's supervisor recorded worker-user foo, while the JVM runs as storm,
    # so a pid-and-user liveness check takes the live worker for dead.
    passwd = node.passwd()
    worker_id = "4d67a6be-4c80-4622-96af-f94706d58553"
    _, worker_dir = storm_local_dir(node, worker_id, "foo")
    old = node.tree(f"ingest-5-{int(time.time())}", worker_uid=STORM_UID, passwd=passwd,
                    supervisor_passwd=passwd, worker_id=worker_id, cwd=worker_dir, listen=True,
                    pid_file_dir=os.path.join(worker_dir, "pids"))
    replacement = node.tree(f"ingest-6-{int(time.time())}", port=old.port, passwd=passwd,
                            supervisor_passwd=passwd, listen=True)
    diagnosis = diagnose()
    report = report_of(diagnosis, old)
    assert codes(report) == ["port_conflict", "user_mismatch"]
    mismatch = next(f for f in report.findings if f.code == "user_mismatch")
    assert "runs as storm (uid 1001)" in mismatch.message
    assert "worker-user is foo" in mismatch.message
    assert os.path.exists(f"/proc/{old.worker}")  # alive by pid, whatever the user
    assert codes(report_of(diagnosis, replacement)) == ["port_conflict"]
    assert gauge(metrics(diagnosis), "storm_worker_port_conflicts", port=str(old.port)) == 2


def test_missing_pid_file_and_port_holder(node):
    passwd = node.passwd()
    worker_id = "2eb07a90-a8b7-4a81-929c-93d6edb3c2ef"
    _, worker_dir = storm_local_dir(node, worker_id, None)
    old = node.tree(f"TicketTopology-5-{int(time.time())}", passwd=passwd, supervisor_passwd=passwd,
                    worker_id=worker_id, cwd=worker_dir, listen=True)
    new = node.tree(f"TicketTopology-6-{int(time.time())}", port=old.port, passwd=passwd,
                    supervisor_passwd=passwd, listen=True)
    diagnosis = diagnose()
    report = report_of(diagnosis, old)
    assert codes(report) == ["pid_file_missing", "port_conflict"]
    assert f"no pid file {old.worker}" in next(f for f in report.findings if f.code == "pid_file_missing").message
    # The listener of the port is the old worker, as ss -ltnp shows it.
    holders = sockets.port_holders(ProcFS(), [old.worker, new.worker], [old.port])
    assert holders == {old.port: {old.worker}}
    assert gauge(metrics(diagnosis), "storm_worker_port_conflicts", port=str(old.port)) == 2
    assert diagnosis.port_claimants[old.port] == sorted([old.worker, new.worker])


def test_pid_file_present_is_no_finding(node):
    passwd = node.passwd()
    worker_id = str(uuid.uuid4())
    _, worker_dir = storm_local_dir(node, worker_id, "storm")
    tree = node.tree(topology_name("pidfile"), worker_uid=STORM_UID, supervisor_uid=STORM_UID,
                     passwd=passwd, supervisor_passwd=passwd, worker_id=worker_id, cwd=worker_dir,
                     pid_file_dir=os.path.join(worker_dir, "pids"))
    assert report_of(diagnose(), tree).findings == []


def test_workers_in_two_network_namespaces_do_not_conflict(node):
    passwd = node.passwd()
    port = free_port()
    here = node.tree(topology_name("netns"), port=port, passwd=passwd, supervisor_passwd=passwd, listen=True)
    ready = node.ready_path()
    spec = {"sigterm": "handle", "listen": port, "ready": ready}
    worker_id = str(uuid.uuid4())
    command = ["unshare", "--net", "sh", "-c",
               'ip link set lo up && exec "$0" "$@"', INTERPRETER, SCRIPT,
               *worker_argv(f"diag-netns-2-{int(time.time())}", worker_id, port)[1:]]
    process = subprocess.Popen(
        command, env=dict(os.environ, **{SPEC_VARIABLE: json.dumps(spec), "PYTHONHOME": INTERPRETER_HOME}),
        stdin=subprocess.DEVNULL,
    )
    node.processes.append(process)
    node.pids.add(node.wait_ready(ready)["pid"])
    diagnosis = diagnose()
    assert "port_conflict" not in codes(report_of(diagnosis, here))
    assert port not in diagnosis.port_conflicts


# PID namespaces: container inits and pod stops.


def test_init_without_sigterm_handler(node):
    # PID 1 is a process with SIGTERM at its default disposition, so the kernel
    # drops the SIGTERM of a pod stop.
    init = [INTERPRETER, "-c",
            "import os, signal, subprocess, sys, time\n"
            "child = subprocess.Popen(sys.argv[1].split(), env=os.environ)\n"
            "while True: time.sleep(1)\n"]
    tree = node.namespace(topology_name("init"), init)
    diagnosis = diagnose()
    report = report_of(diagnosis, tree)
    assert report.init is not None and report.init.pid == tree.init
    assert report.init.disposition == "default"
    assert codes(report) == ["init_drops_sigterm", "pod_stop_unsafe"]
    registry = metrics(diagnosis)
    assert gauge(registry, "storm_container_init_drops_sigterm", namespace="", pod="", container="",
                 reason="default_disposition") >= 1
    assert gauge(registry, "storm_worker_pod_stop_unsafe", topology=tree.topology) == 1


def test_shell_init_without_exec(node):
    # `sh -c "CMD; exit $?"` cannot exec CMD, so the shell stays PID 1.
    tree = node.namespace(topology_name("shell"), ["sh", "-c", '$0; exit $?'])
    diagnosis = diagnose()
    report = report_of(diagnosis, tree)
    assert report.init is not None and report.init.shell
    assert report.init.reason == "shell_without_exec"
    assert codes(report) == ["init_drops_sigterm", "pod_stop_unsafe"]
    assert "neither handles SIGTERM nor exec'd" in next(
        f.message for f in report.findings if f.code == "init_drops_sigterm"
    )
    registry = metrics(diagnosis)
    assert gauge(registry, "storm_container_init_drops_sigterm", namespace="", pod="", container="",
                 reason="shell_without_exec") >= 1


def test_supervisor_as_init_is_pod_stop_unsafe(node):
    tree = node.namespace(topology_name("sup-init"), None)
    report = report_of(diagnose(), tree)
    assert report.init is not None and report.init.pid == tree.supervisor
    assert report.init.reason is None
    assert codes(report) == ["pod_stop_unsafe"]
    assert "the supervisor is PID 1 of its PID namespace" in report.verdict
    assert not report.serious


def test_pre_stop_hook_makes_pod_stop_safe(node):
    tree = node.namespace(topology_name("prestop"), None)
    snapshot_cgroups = []

    def pre_stop(cgroup):
        snapshot_cgroups.append(cgroup)
        return True

    from exporter.diagnostics import Diagnoser, take_snapshot
    from exporter.tracker import Tracker
    from exporter.events import ScanCompleted

    proc = ProcFS()
    tracker = Tracker(read_cgroup=proc.read_cgroup, host_pidns=proc.read_pidns(1))
    tracker.handle(ScanCompleted(time=time.monotonic(), processes=proc.scan()))
    snapshot = take_snapshot(tracker)
    # Outside Kubernetes a worker has no pod cgroup; give this one a fake pod.
    from dataclasses import replace
    from exporter.cgroup import PodCgroup
    fake = PodCgroup(pod_uid="0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6", qos="burstable",
                     runtime="containerd", container_id="a" * 64)
    workers = tuple(replace(w, cgroup=fake) if w.worker.pid == tree.worker else w for w in snapshot.workers)
    diagnosis = Diagnoser(proc, pre_stop).diagnose(replace(snapshot, workers=workers))
    report = report_of(diagnosis, tree)
    assert codes(report) == ["pod_stop_prestop"]
    assert report.pod_stop_unsafe is False
    assert fake in snapshot_cgroups
    assert gauge(metrics(diagnosis), "storm_worker_pod_stop_unsafe", topology=tree.topology) == 0


def test_debug_document_matches_findings(node):
    passwd = node.passwd()
    tree = node.tree(topology_name("doc"), worker_sigterm="ignore", worker_uid=STORM_UID,
                     supervisor_uid=OTHER_UID, passwd=passwd, supervisor_passwd=passwd, children=1)
    diagnosis = diagnose()
    document = to_json(diagnosis, time.monotonic())
    entry = next(w for w in document["workers"] if w["pid"] == tree.worker)
    assert [f["code"] for f in entry["findings"]] == [f.code for f in report_of(diagnosis, tree).findings]
    assert entry["signal_permitted"] is False
    assert [p["role"] for p in entry["processes"]] == ["logwriter", "worker", "child"]
    assert entry["processes"][1]["sigterm"] == "ignored"
    assert entry["supervisor"]["uid"] == OTHER_UID
    assert entry["verdict"] == "will need SIGKILL: the worker ignores SIGTERM"
    text = json.dumps(document)
    assert "org.apache.storm" not in text  # no command line in the document
    assert "-Dstorm" not in text
