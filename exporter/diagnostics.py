"""Root causes of failed worker terminations, read from /proc while the workers still run.

Each diagnosis round takes a snapshot of the tracker's worker trees under the
tracker's lock, then reads /proc without it:

- the SIGTERM disposition of every worker JVM, LogWriter and multilang child;
- the PID 1 of each worker's PID namespace (the container's init): whether it
  handles SIGTERM, and whether it is a shell that did not exec;
- whether each worker's supervisor may signal it under the kill(2) rules;
- whether the worker's and the supervisor's UIDs have a passwd entry in their
  own root (/proc/PID/root/etc/passwd);
- whether the worker's pid file exists and whether its recorded worker-user is
  the user it runs as, in Storm's ``<storm.local.dir>/workers/<id>`` layout;
- worker ports claimed twice, or held in LISTEN by a leftover process;
- workers that a pod deletion ends by the kernel's PID-namespace teardown: those
  in a container's PID namespace together with their supervisor, which exits on
  SIGTERM without stopping them, unless the container has a preStop hook.

Kill commands that failed come from the tracker, which receives their exit status.
The same Diagnosis feeds the metrics, /debug/workers and ``diagnose``.

Each process is read through one /proc/PID directory fd, opened only while
its start time is the snapshot's, so a process that exits and whose pid is
reused during the round never lends its state to the snapshotted one.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from exporter import passwd, sigstate, sockets
from exporter.cgroup import PodCgroup, parse_cgroup_file
from exporter.procfs import ProcFS, parse_stat
from exporter.proctable import Key, Process
from exporter.tracker import KillFailure, Tracker

logger = logging.getLogger(__name__)

SERIOUS = "serious"
WARNING = "warning"
INFO = "info"
SEVERITIES = (SERIOUS, WARNING, INFO)

# Shells that run a script or a `-c` string as PID 1 of a container.
SHELLS = frozenset({"sh", "bash", "dash", "ash", "ksh", "mksh", "zsh", "busybox"})

# Parent links followed from a worker to its supervisor; Storm puts at most a
# LogWriter and a launcher script between them.
MAX_ANCESTORS = 16

# Reasons of storm_container_init_drops_sigterm.
DEFAULT_DISPOSITION = "default_disposition"
SHELL_WITHOUT_EXEC = "shell_without_exec"


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason why a worker's termination will fail or go wrong."""

    code: str  # stable identifier, such as "sigterm_ignored"
    severity: str  # serious, warning or info
    message: str  # the verdict, such as "will need SIGKILL: the worker ignores SIGTERM"
    pid: int | None = None  # the process the finding is about


@dataclass(frozen=True, slots=True)
class ProcessView:
    """The fields of a tracked process that a diagnosis needs, copied under the lock."""

    pid: int
    start_ticks: int
    ppid: int
    comm: str
    role: str | None
    uid: int | None
    nspid: tuple[int, ...]
    pidns: int | None

    @classmethod
    def of(cls, process: Process) -> ProcessView:
        return cls(
            process.pid, process.start_ticks, process.ppid, process.comm, process.role,
            process.uid, process.nspid, process.pidns,
        )

    @property
    def namespace_pid(self) -> int:
        """The pid as the process's own PID namespace numbers it."""
        return self.nspid[-1] if self.nspid else self.pid


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """One live worker tree, copied from the tracker."""

    key: Key
    topology: str
    label: str
    worker_id: str
    port: int | None
    cgroup: PodCgroup | None
    worker: ProcessView
    logwriter: ProcessView | None
    children: tuple[ProcessView, ...]
    supervisor: ProcessView | None
    init: ProcessView | None  # PID 1 of the worker's PID namespace, None on the host's
    supervisor_in_namespace: bool  # the supervisor runs in the worker's PID namespace
    request_age: float | None  # seconds since the termination request, None when none
    request_via: str | None
    request_trigger: str | None
    kill_failures: tuple[KillFailure, ...]


@dataclass(frozen=True, slots=True)
class LeftoverSnapshot:
    """Leftover processes of one exited worker."""

    topology: str
    label: str
    worker_id: str
    port: int | None
    processes: tuple[ProcessView, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a diagnosis reads from the tracker."""

    time: float
    labels: tuple[str, ...]
    workers: tuple[WorkerSnapshot, ...]
    leftovers: tuple[LeftoverSnapshot, ...]


@dataclass(slots=True)
class ProcessReport:
    """A process of a worker's tree, or its supervisor, as /proc showed it."""

    pid: int
    namespace_pid: int
    role: str  # worker, logwriter, child, supervisor
    comm: str
    uid: int | None
    user: str | None  # the passwd name in the process's root, None when not found
    user_known: bool | None  # None when the passwd file could not be read
    disposition: str | None  # of SIGTERM; None when the process was gone

    def as_dict(self) -> dict:
        return {
            "pid": self.pid,
            "namespace_pid": self.namespace_pid,
            "role": self.role,
            "comm": self.comm,
            "uid": self.uid,
            "user": self.user,
            "user_resolvable": "unknown" if self.user_known is None else self.user_known,
            "sigterm": self.disposition or "unknown",
        }


@dataclass(slots=True)
class ContainerInit:
    """PID 1 of a PID namespace that runs Storm processes."""

    pid: int
    comm: str
    role: str | None
    disposition: str | None
    shell: bool
    cgroup: PodCgroup | None
    reason: str | None  # why it drops SIGTERM; None when it passes SIGTERM on

    def as_dict(self) -> dict:
        return {
            "pid": self.pid,
            "comm": self.comm,
            "role": self.role,
            "sigterm": self.disposition or "unknown",
            "shell": self.shell,
            "drops_sigterm": self.reason,
        }


@dataclass(slots=True)
class WorkerReport:
    """Diagnosis of one live worker."""

    snapshot: WorkerSnapshot
    worker: ProcessReport
    logwriter: ProcessReport | None
    children: list[ProcessReport]
    supervisor: ProcessReport | None
    init: ContainerInit | None
    signal_permitted: bool | None  # None when either side's credentials were unreadable
    pod_stop_unsafe: bool
    findings: list[Finding] = field(default_factory=list)

    @property
    def serious(self) -> bool:
        return any(finding.severity == SERIOUS for finding in self.findings)

    @property
    def verdict(self) -> str:
        """The most severe finding's message, or the healthy verdict if the worker could be read."""
        for severity in SEVERITIES:
            for finding in self.findings:
                if finding.severity == severity:
                    return finding.message
        if self.worker.disposition is None:
            return "unknown: the worker exited during the diagnosis, or its /proc status was unreadable"
        return "ok: SIGTERM reaches the worker and its supervisor may send it"


@dataclass(slots=True)
class Diagnosis:
    """The result of one diagnosis round."""

    time: float  # monotonic seconds of the snapshot
    labels: tuple[str, ...]
    workers: list[WorkerReport]
    inits: list[ContainerInit]  # one per PID namespace with Storm workers
    port_conflicts: dict[int, int]  # port -> processes claiming it
    port_claimants: dict[int, list[int]]  # port -> their pids

    @property
    def serious(self) -> bool:
        return any(report.serious for report in self.workers)


EMPTY = Diagnosis(0.0, (), [], [], {}, {})


def take_snapshot(tracker: Tracker) -> Snapshot:
    """Copy the live worker trees and leftovers; the caller holds the tracker's lock."""
    now = tracker.clock()
    inits: dict[int, Process] = {}
    for process in tracker.table.by_pid.values():
        if process.pidns is not None and len(process.nspid) > 1 and process.nspid[-1] == 1:
            inits[process.pidns] = process
    workers = []
    leftovers = []
    for worker in tracker.workers.values():
        members = [tracker.table.by_key.get(key) for key in worker.members]
        alive = [m for m in members if m is not None and m.alive]
        if not worker.alive:
            if worker.leftovers:
                kept = [m for m in alive if m.key in worker.leftovers]
                if kept:
                    leftovers.append(LeftoverSnapshot(
                        worker.topology, worker.label, worker.worker_id, worker.port,
                        tuple(ProcessView.of(m) for m in kept),
                    ))
            continue
        jvm = tracker.table.by_key.get(worker.key)
        if jvm is None:
            continue
        logwriter = tracker.table.by_key.get(worker.logwriter) if worker.logwriter else None
        if logwriter is not None and not logwriter.alive:
            logwriter = None
        children = [m for m in alive if m.key not in (worker.key, worker.logwriter)]
        supervisor = _supervisor_of(tracker, logwriter or jvm)
        init = inits.get(jvm.pidns) if jvm.pidns is not None and jvm.pidns != tracker.host_pidns else None
        workers.append(WorkerSnapshot(
            key=worker.key,
            topology=worker.topology,
            label=worker.label,
            worker_id=worker.worker_id,
            port=worker.port,
            cgroup=worker.cgroup,
            worker=ProcessView.of(jvm),
            logwriter=ProcessView.of(logwriter) if logwriter is not None else None,
            children=tuple(ProcessView.of(c) for c in sorted(children, key=lambda p: p.pid)),
            supervisor=ProcessView.of(supervisor) if supervisor is not None else None,
            init=ProcessView.of(init) if init is not None else None,
            supervisor_in_namespace=(
                init is not None and supervisor is not None and supervisor.pidns == init.pidns
            ),
            request_age=None if worker.request_time is None else max(0.0, now - worker.request_time),
            request_via=worker.request_via,
            request_trigger=worker.request_trigger,
            kill_failures=tuple(worker.kill_failures),
        ))
    return Snapshot(now, tuple(tracker.labels.last_active), tuple(workers), tuple(leftovers))


def _supervisor_of(tracker: Tracker, process: Process) -> Process | None:
    """Return the nearest live ancestor with the supervisor role, following parent links."""
    current = tracker.table.parent_of(process)
    for _ in range(MAX_ANCESTORS):
        if current is None:
            return None
        if current.role == "supervisor" and current.alive:
            return current
        current = tracker.table.parent_of(current)
    return None


class Diagnoser:
    """Read /proc for a snapshot's processes and turn what it finds into findings.

    ``pre_stop`` returns, for a worker's pod cgroup, whether the container has a
    preStop hook, or None when the pod is unknown. The kubelet runs that hook
    before its SIGTERM, so the hook can stop the workers first.
    """

    def __init__(
        self,
        proc: ProcFS,
        pre_stop: Callable[[PodCgroup], bool | None] | None = None,
        give_way: Callable[[], None] | None = None,
    ) -> None:
        self.proc = proc
        self.pre_stop = pre_stop or (lambda cgroup: None)
        # Called before each worker, so that a round can pause while /metrics is scraped.
        self.give_way = give_way or (lambda: None)
        self._access_checked = False

    def _check_access(self, pid: int) -> None:
        """Log once when a worker's links cannot be read, which makes readings unknown."""
        self._access_checked = True
        path = os.path.join(self.proc.root, str(pid), "root")
        try:
            os.readlink(path)
        except PermissionError:
            logger.warning(
                "Cannot read %s of worker pid=%d: permission denied. Without CAP_SYS_PTRACE "
                "the diagnosis cannot read other users' passwd files, working directories and "
                "sockets, so their users, pid files and port holders are reported as unknown.",
                path, pid,
            )
        except OSError:
            pass

    def diagnose(self, snapshot: Snapshot) -> Diagnosis:
        """Read /proc for every process of the snapshot and turn what it shows into findings.

        A process that exited since the snapshot, or whose pid now belongs to
        another process, gets unknown fields and no finding from /proc.
        """
        if not self._access_checked and snapshot.workers:
            self._check_access(snapshot.workers[0].worker.pid)
        inits: dict[int, ContainerInit] = {}
        reports = []
        namespaces: dict[Key, int | None] = {}
        users: dict[tuple, dict[int, str]] = {}
        for worker in snapshot.workers:
            self.give_way()
            init = None
            if worker.init is not None:
                init = inits.get(worker.init.pid)
                if init is None:
                    init = self._container_init(worker.init)
                    inits[worker.init.pid] = init
            reports.append(self._worker(worker, init, namespaces, users))
        conflicts, claimants = self._port_conflicts(reports, namespaces, snapshot.leftovers)
        return Diagnosis(
            snapshot.time, snapshot.labels, reports, list(inits.values()), conflicts, claimants,
        )

    # Processes.

    def _report(
        self, view: ProcessView, role: str, directory: _ProcessDir, users: dict[tuple, dict[int, str]]
    ) -> ProcessReport:
        known = user = None
        names = directory.users(users) if view.uid is not None else None
        if names is not None:
            known = view.uid in names
            user = names.get(view.uid)
        return ProcessReport(
            pid=view.pid,
            namespace_pid=view.namespace_pid,
            role=role,
            comm=view.comm,
            uid=view.uid,
            user=user,
            user_known=known,
            disposition=directory.disposition(),
        )

    def _read_report(self, view: ProcessView, role: str, users: dict[tuple, dict[int, str]]) -> ProcessReport:
        with _ProcessDir(self.proc, view) as directory:
            return self._report(view, role, directory, users)

    def _container_init(self, view: ProcessView) -> ContainerInit:
        with _ProcessDir(self.proc, view) as directory:
            disposition = directory.disposition()
            cgroup_text = directory.cgroup()
        shell = view.role is None and view.comm in SHELLS
        reason = None
        # The kernel discards a signal for a namespace's init at its default
        # disposition, from inside the namespace and from its ancestors alike.
        # Only SIGKILL and SIGSTOP from an ancestor namespace get through, and an
        # ignored SIGTERM is lost as well.
        if disposition in ("default", "ignored"):
            reason = SHELL_WITHOUT_EXEC if shell else DEFAULT_DISPOSITION
        cgroup = parse_cgroup_file(cgroup_text or "")
        return ContainerInit(view.pid, view.comm, view.role, disposition, shell, cgroup, reason)

    def _worker(
        self,
        snap: WorkerSnapshot,
        init: ContainerInit | None,
        namespaces: dict[Key, int | None],
        users: dict[tuple, dict[int, str]],
    ) -> WorkerReport:
        with _ProcessDir(self.proc, snap.worker) as worker_dir, \
                _ProcessDir(self.proc, snap.supervisor) as supervisor_dir:
            report = self._read_worker(snap, init, worker_dir, supervisor_dir, users)
            self._storm_dir_findings(report, worker_dir)
            namespaces[snap.key] = worker_dir.network_namespace()
        for failure in snap.kill_failures[-1:]:
            report.findings.append(Finding(
                "kill_failed", SERIOUS,
                f"its stop commands fail: {len(snap.kill_failures)} kill command(s) aimed at it "
                f"failed, the last one ({failure.signal}, pid {failure.pid}) ended with "
                f"{failure.status}",
                failure.target_pid,
            ))
        return report

    def _read_worker(
        self,
        snap: WorkerSnapshot,
        init: ContainerInit | None,
        worker_dir: _ProcessDir,
        supervisor_dir: _ProcessDir,
        users: dict[tuple, dict[int, str]],
    ) -> WorkerReport:
        worker = self._report(snap.worker, "worker", worker_dir, users)
        logwriter = self._read_report(snap.logwriter, "logwriter", users) if snap.logwriter else None
        children = [self._read_report(child, "child", users) for child in snap.children]
        supervisor = (
            self._report(snap.supervisor, "supervisor", supervisor_dir, users) if snap.supervisor else None
        )

        permitted = None
        if snap.supervisor is not None:
            sender = supervisor_dir.credentials()
            target = worker_dir.credentials()
            if sender is not None and target is not None:
                permitted = sigstate.may_signal(sender, target)
        # When the container stops, its PID 1 exits: the supervisor itself, or an
        # init or shell whose child, the supervisor, exits on SIGTERM without
        # stopping its workers. The kernel then SIGKILLs the rest of the namespace.
        unsafe = init is not None and snap.supervisor_in_namespace

        report = WorkerReport(
            snapshot=snap,
            worker=worker,
            logwriter=logwriter,
            children=children,
            supervisor=supervisor,
            init=init,
            signal_permitted=permitted,
            pod_stop_unsafe=unsafe,
        )
        self._disposition_findings(report)
        self._init_findings(report)
        self._permission_findings(report)
        return report

    def _disposition_findings(self, report: WorkerReport) -> None:
        pid = report.worker.pid
        match report.worker.disposition:
            case "ignored":
                report.findings.append(Finding(
                    "sigterm_ignored", SERIOUS, "will need SIGKILL: the worker ignores SIGTERM", pid,
                ))
            case "blocked":
                report.findings.append(Finding(
                    "sigterm_blocked", SERIOUS,
                    "will need SIGKILL: every thread of the worker blocks SIGTERM", pid,
                ))
            case "default":
                report.findings.append(Finding(
                    "no_shutdown_hooks", WARNING,
                    "SIGTERM ends the worker at once without its shutdown hooks: it has no "
                    "SIGTERM handler (a JVM started with -Xrs)",
                    pid,
                ))
        for child in report.children:
            if child.disposition in ("ignored", "blocked"):
                report.findings.append(Finding(
                    "child_ignores_sigterm", WARNING,
                    f"child pid {child.pid} ({child.comm}) {child.disposition} SIGTERM and outlives "
                    "the worker unless it is SIGKILLed",
                    child.pid,
                ))

    def _init_findings(self, report: WorkerReport) -> None:
        init = report.init
        if init is not None and init.reason == SHELL_WITHOUT_EXEC:
            report.findings.append(Finding(
                "init_drops_sigterm", SERIOUS,
                f"a pod stop's SIGTERM goes nowhere: PID 1 of its container is the shell "
                f"{init.comm} (pid {init.pid}), which neither handles SIGTERM nor exec'd",
                init.pid,
            ))
        elif init is not None and init.reason == DEFAULT_DISPOSITION:
            report.findings.append(Finding(
                "init_drops_sigterm", SERIOUS,
                f"a pod stop's SIGTERM goes nowhere: PID 1 of its container ({init.comm}, "
                f"pid {init.pid}) does not handle SIGTERM, and the kernel drops it",
                init.pid,
            ))
        if not report.pod_stop_unsafe or init is None:
            return
        if init.role == "supervisor":
            front = "the supervisor is PID 1 of its PID namespace"
        else:
            front = f"PID 1 of its PID namespace is {init.comm} (pid {init.pid}), in front of the supervisor"
        has_hook = self.pre_stop(report.snapshot.cgroup) if report.snapshot.cgroup else None
        if has_hook:
            report.pod_stop_unsafe = False
            report.findings.append(Finding(
                "pod_stop_prestop", INFO,
                f"{front}; the container's preStop hook runs before the pod's SIGTERM and "
                "must stop the workers",
                report.worker.pid,
            ))
            return
        report.findings.append(Finding(
            "pod_stop_unsafe", WARNING,
            f"will be SIGKILLed without SIGTERM when its pod is deleted: {front}, and the "
            "supervisor does not stop its workers when it exits",
            report.worker.pid,
        ))

    def _permission_findings(self, report: WorkerReport) -> None:
        supervisor = report.supervisor
        if report.signal_permitted is False and supervisor is not None:
            report.findings.append(Finding(
                "signal_permission_denied", SERIOUS,
                f"cannot be stopped by its supervisor: uid {supervisor.uid} (pid {supervisor.pid}) "
                f"may not signal uid {report.worker.uid}, so kill fails with EPERM",
                report.worker.pid,
            ))
        if report.worker.user_known is False:
            report.findings.append(Finding(
                "user_unresolvable", SERIOUS,
                f"its owner cannot be resolved: uid {report.worker.uid} has no passwd entry in "
                "the worker's root, so the supervisor misreads who runs it",
                report.worker.pid,
            ))
        if supervisor is not None and supervisor.user_known is False:
            report.findings.append(Finding(
                "supervisor_user_unresolvable", SERIOUS,
                f"its supervisor's uid {supervisor.uid} (pid {supervisor.pid}) has no passwd "
                "entry in the supervisor's root",
                supervisor.pid,
            ))

    def _storm_dir_findings(self, report: WorkerReport, worker_dir: _ProcessDir) -> None:
        """Check the pid file and the worker-user file of Storm's worker directory.

        The worker runs in ``<storm.local.dir>/workers/<worker id>``; the supervisor
        finds its pids in ``pids/`` there and its user in
        ``<storm.local.dir>/workers-users/<worker id>``. Paths are read through
        /proc/PID/cwd, so they resolve inside the worker's own mount namespace.
        """
        snap = report.snapshot
        pid = snap.worker.pid
        cwd = worker_dir.cwd()
        if not snap.worker_id or cwd is None or not cwd.endswith(f"/workers/{snap.worker_id}"):
            return
        names = _list_beneath(worker_dir, ("pids",))
        expected = str(snap.worker.namespace_pid)
        if names is not None and expected not in names:
            report.findings.append(Finding(
                "pid_file_missing", SERIOUS,
                f"invisible to its supervisor: no pid file {expected} in {cwd}/pids, so the "
                "supervisor cannot kill it",
                pid,
            ))
        recorded = _read_user_file(worker_dir, snap.worker_id)
        actual = report.worker.user
        if recorded and actual is not None and recorded != actual:
            report.findings.append(Finding(
                "user_mismatch", SERIOUS,
                f"taken for dead by its supervisor: it runs as {actual} (uid {report.worker.uid}) "
                f"but the recorded worker-user is {recorded}",
                pid,
            ))

    # Ports.

    def _port_conflicts(
        self,
        reports: list[WorkerReport],
        namespaces: dict[Key, int | None],
        leftovers: Iterable[LeftoverSnapshot],
    ) -> tuple[dict[int, int], dict[int, list[int]]]:
        """Find worker ports claimed twice in one network namespace, or held by a leftover.

        Workers in different network namespaces (pods without hostNetwork) may use
        the same port without conflict, so claims are grouped by namespace. A
        worker that exited since the snapshot claims nothing. A leftover counts
        when it listens on its own worker's port, or on the port of a live worker
        in its network namespace.
        """
        claims: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for report in reports:
            port = report.snapshot.port
            namespace = namespaces.get(report.snapshot.key)
            if port is not None and namespace is not None:
                claims[(namespace, port)].add(report.worker.pid)
        held: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        ports = {port for _, port in claims}
        leftovers = list(leftovers)
        ports.update(group.port for group in leftovers if group.port is not None)
        views = {process.pid: (process, group) for group in leftovers for process in group.processes}
        if views and ports:
            start_ticks = {pid: view.start_ticks for pid, (view, _) in views.items()}
            holdings = sockets.port_holders(self.proc, list(views), ports, start_ticks)
            for port, holders in holdings.items():
                for holder in holders:
                    view, group = views[holder]
                    with _ProcessDir(self.proc, view) as directory:
                        namespace = directory.network_namespace()
                    if namespace is None:
                        continue
                    if port == group.port or (namespace, port) in claims:
                        held[(namespace, port)].add(holder)
        conflicting: dict[tuple[int, int], list[int]] = {}
        for key in set(claims) | set(held):
            if len(claims.get(key, ())) >= 2 or held.get(key):
                conflicting[key] = sorted(claims.get(key, set()) | held.get(key, set()))
        conflicts: defaultdict[int, int] = defaultdict(int)
        claimants: defaultdict[int, list[int]] = defaultdict(list)
        for (_, port), pids_here in conflicting.items():
            conflicts[port] += len(pids_here)
            claimants[port].extend(pids_here)
        for report in reports:
            port = report.snapshot.port
            namespace = namespaces.get(report.snapshot.key)
            pids_here = conflicting.get((namespace, port)) if namespace is not None else None
            if port is None or pids_here is None:
                continue
            others = [pid for pid in pids_here if pid != report.worker.pid]
            report.findings.append(Finding(
                "port_conflict", SERIOUS,
                f"its port {port} is claimed by {len(pids_here)} processes on this node "
                f"(also pids {', '.join(map(str, others))}), so a worker on it fails to bind",
                report.worker.pid,
            ))
        return dict(conflicts), dict(claimants)


class _ProcessDir:
    """/proc/PID of one snapshotted process, opened once so that every read is about it.

    ``fd`` is None when the process exited (a zombie counts as exited) or its
    pid belongs to another process now. Reads through the fd fail once the
    process is reaped, so they never describe a later process with the same pid.
    """

    def __init__(self, proc: ProcFS, view: ProcessView | None) -> None:
        self.fd = None if view is None else _open_process(proc, view)

    def __enter__(self) -> _ProcessDir:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def disposition(self) -> str | None:
        return None if self.fd is None else sigstate.signal_disposition_at(self.fd, signal.SIGTERM)

    def credentials(self) -> sigstate.Credentials | None:
        return None if self.fd is None else sigstate.read_credentials_at(self.fd)

    def users(self, cache: dict[tuple, dict[int, str]]) -> dict[int, str] | None:
        return None if self.fd is None else passwd.read_passwd_at(self.fd, cache)

    def cwd(self) -> str | None:
        try:
            return None if self.fd is None else os.readlink("cwd", dir_fd=self.fd)
        except OSError:
            return None

    def cgroup(self) -> str | None:
        data = self._read("cgroup")
        return None if data is None else data.decode("utf-8", errors="replace")

    def network_namespace(self) -> int | None:
        """Return the inode of the process's network namespace, None when it is gone."""
        try:
            return None if self.fd is None else os.stat("ns/net", dir_fd=self.fd).st_ino
        except OSError:
            return None

    def _read(self, name: str) -> bytes | None:
        return None if self.fd is None else _read_at(self.fd, name)


def _open_process(proc: ProcFS, view: ProcessView) -> int | None:
    """Open /proc/PID if it is still the process of ``view`` (same start time) and not a zombie."""
    try:
        fd = os.open(os.path.join(proc.root, str(view.pid)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    data = _read_at(fd, "stat")
    try:
        fields = parse_stat(data.decode("utf-8", errors="replace")) if data is not None else None
    except ValueError:
        fields = None
    # A zombie's status still shows its masks and ids, but it takes no signal and
    # sends none. A leader that exited before its other threads is not one.
    exited = fields is not None and fields.state in ("Z", "X") and fields.num_threads <= 1
    if fields is None or fields.start_ticks != view.start_ticks or exited:
        os.close(fd)
        return None
    return fd


def _read_at(dir_fd: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


# A user name as Storm writes it into workers-users/<worker id>.
_USER_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,63}")


def _open_beneath_cwd(worker_dir: _ProcessDir, names: Iterable[str], final: int) -> int:
    """Open a path relative to the process's working directory without following symlinks.

    The process owns these directories, so a symlink in them must not make the
    exporter open a file of its own choosing. Raise OSError on failure.
    """
    if worker_dir.fd is None:
        raise OSError(errno.ESRCH, "process exited")
    fd = os.open("cwd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=worker_dir.fd)
    try:
        names = list(names)
        for index, name in enumerate(names):
            flags = final if index == len(names) - 1 else os.O_RDONLY | os.O_DIRECTORY
            next_fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return fd
    except OSError:
        os.close(fd)
        raise


def _list_beneath(worker_dir: _ProcessDir, names: tuple[str, ...]) -> set[str] | None:
    try:
        fd = _open_beneath_cwd(worker_dir, names, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        return set(os.listdir(fd))
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_user_file(worker_dir: _ProcessDir, worker_id: str) -> str | None:
    """Return the user in <storm.local.dir>/workers-users/<worker id>, None when unreadable.

    Only a regular file counts. O_NONBLOCK keeps the open of a FIFO from waiting
    for a writer, and a device is never read.
    """
    if "/" in worker_id or worker_id in ("", ".", ".."):
        return None
    path = ("..", "..", "workers-users", worker_id)
    try:
        fd = _open_beneath_cwd(worker_dir, path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, 256)
    except OSError:
        return None
    finally:
        os.close(fd)
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    return line if _USER_NAME.fullmatch(line) else None
