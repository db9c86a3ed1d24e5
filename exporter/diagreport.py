"""The diagnosis for people: JSON for /debug/workers and the ``diagnose`` command.

Neither output contains a command line or an environment: processes are shown
by pid, comm, role and user, and workers by the fields the exporter parses from
their argv (topology, worker id, port).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Callable

from exporter.diagmetrics import PodResolver, unresolved
from exporter.diagnostics import Diagnoser, Diagnosis, WorkerReport, take_snapshot
from exporter.events import ScanCompleted
from exporter.procfs import ProcFS
from exporter.tracker import Tracker

logger = logging.getLogger(__name__)

# Exit statuses of `diagnose`.
EXIT_OK = 0
EXIT_SERIOUS = 1
EXIT_USAGE = 2


def to_json(diagnosis: Diagnosis, now: float, resolve_pod: PodResolver = unresolved) -> dict:
    """Return the diagnosis as the /debug/workers document; ``now`` is monotonic seconds."""
    containers = []
    for init in diagnosis.inits:
        entry = init.as_dict()
        entry.update(_pod_fields(init.cgroup, resolve_pod))
        containers.append(entry)
    return {
        "age_seconds": round(max(0.0, now - diagnosis.time), 3) if diagnosis.time else None,
        "serious": diagnosis.serious,
        "workers": [_worker_json(report, resolve_pod) for report in diagnosis.workers],
        "containers": containers,
        "port_conflicts": {
            str(port): {"processes": count, "pids": diagnosis.port_claimants.get(port, [])}
            for port, count in sorted(diagnosis.port_conflicts.items())
        },
    }


def _pod_fields(cgroup, resolve_pod: PodResolver) -> dict:
    namespace, pod, container, workload = resolve_pod(cgroup) if cgroup is not None else unresolved(cgroup)
    return {
        "namespace": namespace,
        "pod": pod,
        "container": container,
        "workload": workload,
        "pod_uid": cgroup.pod_uid if cgroup is not None else "",
        "container_id": (cgroup.container_id or "") if cgroup is not None else "",
    }


def _worker_json(report: WorkerReport, resolve_pod: PodResolver) -> dict:
    snap = report.snapshot
    termination = None
    if snap.request_age is not None:
        termination = {
            "requested_seconds_ago": round(snap.request_age, 3),
            "via": snap.request_via,
            "trigger": snap.request_trigger,
        }
    processes = [report.worker.as_dict()]
    if report.logwriter is not None:
        processes.insert(0, report.logwriter.as_dict())
    processes.extend(child.as_dict() for child in report.children)
    entry = {
        "topology": snap.topology,
        "topology_label": snap.label,
        "worker_id": snap.worker_id,
        "port": snap.port,
        "pid": snap.worker.pid,
        "state": "terminating" if termination else "running",
        "termination": termination,
        "processes": processes,
        "supervisor": report.supervisor.as_dict() if report.supervisor else None,
        "container_init": report.init.as_dict() if report.init else None,
        "signal_permitted": "unknown" if report.signal_permitted is None else report.signal_permitted,
        "pod_stop_unsafe": report.pod_stop_unsafe,
        "kill_failures": [
            {"pid": f.pid, "target_pid": f.target_pid, "signal": f.signal, "status": f.status}
            for f in snap.kill_failures
        ],
        "findings": [
            {"code": f.code, "severity": f.severity, "message": f.message, "pid": f.pid}
            for f in report.findings
        ],
        "verdict": report.verdict,
    }
    entry.update(_pod_fields(snap.cgroup, resolve_pod))
    return entry


def to_text(diagnosis: Diagnosis) -> str:
    """Return a table with one verdict line per worker, then every further finding."""
    if not diagnosis.workers:
        return "No Storm worker JVMs found.\n"
    rows = [("PID", "PORT", "TOPOLOGY", "USER", "SIGTERM", "VERDICT")]
    extra: list[str] = []
    for report in sorted(diagnosis.workers, key=lambda r: (r.snapshot.topology, r.snapshot.worker.pid)):
        worker = report.worker
        user = f"{worker.user or '?'}({worker.uid})" if worker.uid is not None else "?"
        severity = _severity(report)
        rows.append((
            str(worker.pid),
            "" if report.snapshot.port is None else str(report.snapshot.port),
            _printable(report.snapshot.topology),
            _printable(user),
            worker.disposition or "unknown",
            _printable(f"{severity}: {report.verdict}" if severity else report.verdict),
        ))
        for finding in report.findings:
            if finding.message != report.verdict:
                extra.append(f"{worker.pid}: {finding.severity}: {_printable(finding.message)}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    if extra:
        lines.append("")
        lines.append("Further findings:")
        lines.extend(extra)
    serious = sum(1 for report in diagnosis.workers if report.serious)
    lines.append("")
    lines.append(f"{len(diagnosis.workers)} worker(s), {serious} with a serious finding.")
    return "\n".join(lines) + "\n"


def _printable(text: str) -> str:
    """Escape backslashes and every character that str.isprintable() rejects.

    Topologies come from argv, user names from a container's passwd file and
    comms from the processes themselves, so each may hold newlines or terminal
    escape sequences that would forge table lines or drive the terminal.
    """
    return "".join(_escape(character) for character in text)


def _escape(character: str) -> str:
    if character == "\\":
        return "\\\\"
    if character.isprintable():
        return character
    code = ord(character)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _severity(report: WorkerReport) -> str:
    for finding in report.findings:
        if finding.message == report.verdict:
            return finding.severity
    return ""


def diagnose_node(proc: ProcFS, pre_stop: Callable | None = None) -> Diagnosis:
    """Scan ``proc`` once, build the worker trees and diagnose them."""
    tracker = Tracker(
        lookup=proc.read_info,
        read_cwd=proc.read_cwd,
        read_cgroup=proc.read_cgroup,
        host_pidns=proc.read_pidns(1),
    )
    started = time.monotonic()
    processes = proc.scan()
    tracker.handle(ScanCompleted(time=time.monotonic(), processes=processes, duration=time.monotonic() - started))
    return Diagnoser(proc, pre_stop).diagnose(take_snapshot(tracker))


def main(argv: list[str]) -> int:
    """Run ``storm-termination-exporter diagnose``; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="storm-termination-exporter diagnose",
        description="Diagnose the Storm workers of this node once from /proc and print one "
        "verdict per worker. Exits 1 when a worker has a serious finding.",
    )
    parser.add_argument("--path.procfs", dest="procfs", default="/proc", help="procfs mount point")
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default text)"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_USAGE if exit_.code else EXIT_OK
    proc = ProcFS(args.procfs)
    problem = _procfs_problem(proc)
    if problem is not None:
        sys.stderr.write(
            f"{parser.prog}: error: --path.procfs={args.procfs}: {problem}; "
            "give the mount point of a proc file system\n"
        )
        return EXIT_USAGE
    diagnosis = diagnose_node(proc)
    if args.format == "json":
        sys.stdout.write(json.dumps(to_json(diagnosis, time.monotonic()), indent=2) + "\n")
    else:
        sys.stdout.write(to_text(diagnosis))
    return EXIT_SERIOUS if diagnosis.serious else EXIT_OK


def _procfs_problem(proc: ProcFS) -> str | None:
    """Return why ``proc`` cannot be a proc mount, or None when it lists processes."""
    try:
        pids = proc.list_pids()
    except OSError as error:
        return error.strerror or str(error)
    # Every proc mount lists at least the reading process, even with hidepid.
    return None if pids else "no process directories found"
