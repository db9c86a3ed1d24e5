"""Termination tracker: turns process and signal facts into worker shutdown episodes.

The tracker owns the process table and applies the definitions the metrics
promise:

- termination request: the first SIGTERM, SIGINT or SIGQUIT generated for the
  worker JVM or its LogWriter, a SIGKILL sent to them from user space, or a
  ``kill``-style command aimed at them, whichever is earliest;
- shutdown duration: from the request to the worker JVM's exit;
- outcome: see ``exporter.outcome.classify_exit``;
- SIGKILL escalation: a requested termination that ended by SIGKILL;
- leftover process: a member of the worker's tree (LogWriter, worker, any
  descendant) still alive ``leftover_grace`` seconds after the worker exited.

It is single-threaded logic with an injected clock: the caller serialises
``handle`` and ``tick``.
"""

from __future__ import annotations

import bisect
import logging
from datetime import datetime, timedelta, timezone
import re
import urllib.parse
import signal
import time as _time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from exporter import outcome as oc
from exporter.events import (
    Event,
    EventsLost,
    JvmSignalThreadSeen,
    ProcessExeced,
    ProcessExited,
    ProcessForked,
    ProcessInfo,
    ScanCompleted,
    SignalGenerated,
)
from exporter.cgroup import ContainerExits, PodCgroup, parse_cgroup_file
from exporter.killcmd import parse_kill_command
from exporter.labels import TopologyLabels
from exporter.procfs import CLOCK_TICKS_PER_SECOND
from exporter.proctable import Key, Process, ProcessTable
from exporter.storm import classify

logger = logging.getLogger(__name__)

# Shutdown durations run from well under Storm's 3 s kill sleep to past
# Kubernetes' default 30 s grace period; both boundaries get buckets around them.
DURATION_BUCKETS = (
    0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 7.5, 10.0,
    15.0, 20.0, 25.0, 30.0, 32.5, 35.0, 45.0, 60.0, 120.0, 300.0,
)

# A request seen from HotSpot's signal thread is known to one clock tick, and a pod's
# termination start to one second (API timestamps). An exact kernel-stamped request
# within that precision of such a time is the same request and replaces it.
COARSE_REQUEST = "jvm-signal-thread"
POD_DELETION = "pod_deletion"
COARSE_REQUESTS = {COARSE_REQUEST: 1.0 / CLOCK_TICKS_PER_SECOND, POD_DELETION: 1.0}
TRIGGERS = ("supervisor", POD_DELETION, "other")

# How long exited keys are remembered; longer than any full scan takes.
RECENT_EXIT_SECONDS = 10.0

# Working directory of multilang children: <local>/supervisor/stormdist/<id>/resources.
_STORMDIST = re.compile(r"/supervisor/stormdist/([^/]+)/resources(?:/|$)")

# Comms of container runtimes and their helpers that stop containers.
RUNTIME_COMMS = frozenset(
    {"runc", "crun", "conmon", "crio", "containerd", "dockerd", "kubelet", "youki", "tini"}
)


@dataclass(slots=True)
class Worker:
    """One worker JVM and its shutdown episode."""

    key: Key
    topology: str
    label: str  # the topology label value, "_other" past --topology.max
    worker_id: str
    port: int | None
    uid: int | None
    logwriter: Key | None = None
    members: set[Key] = field(default_factory=set)
    request_time: float | None = None
    request_signal: int | None = None
    request_via: str | None = None
    request_trigger: str | None = None  # supervisor, pod_deletion or other
    sigkill_time: float | None = None
    exit_time: float | None = None
    exit_status: int | None = None
    outcome: str | None = None
    leftovers: set[Key] | None = None  # None until the leftover grace has passed
    cgroup: PodCgroup | None = None  # the pod and container the worker runs in
    kill_failures: list[KillFailure] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.exit_time is None


@dataclass(frozen=True, slots=True)
class KillFailure:
    """A kill command aimed at a worker or its LogWriter that exited non-zero."""

    time: float  # monotonic seconds of the command's exit
    pid: int  # the command's pid
    target_pid: int  # host pid of the worker or LogWriter it named
    signal: str  # the signal it was to send, such as "SIGTERM"
    status: str  # "exit 1", or the signal that ended the command


# Kill failures kept per worker for /debug/workers; the counter keeps counting.
MAX_KILL_FAILURES_KEPT = 8


@dataclass(slots=True)
class Histogram:
    """Cumulative-ready bucket counts for one label set."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, value)] += 1
        self.total += value


class Tracker:
    """Process table plus worker episodes, counters and histograms."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = _time.monotonic,
        leftover_grace: float = 5.0,
        settle: float = 0.3,
        topology_max: int = 200,
        topology_retention: float = 86400.0,
        lookup: Callable[[int], ProcessInfo | None] | None = None,
        read_cwd: Callable[[int], str | None] | None = None,
        read_cgroup: Callable[[int], str | None] | None = None,
        host_pidns: int | None = None,
        container_exits: ContainerExits | None = None,
    ) -> None:
        self.clock = clock
        self.leftover_grace = leftover_grace
        self.settle = settle
        self.lookup = lookup or (lambda pid: None)
        self.read_cwd = read_cwd or (lambda pid: None)
        self.read_cgroup = read_cgroup or (lambda pid: None)
        self.container_exits = container_exits or ContainerExits()
        self._container_inits: dict[Key, str] = {}  # init process -> its container id
        self.host_pidns = host_pidns
        self.table = ProcessTable()
        self.labels = TopologyLabels(topology_max, topology_retention)
        self.workers: dict[Key, Worker] = {}
        self.signals_visible = False  # a signal source (tracefs) is active
        self.exits_known = False  # an exit source with statuses (netlink) is active
        self.exits: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.escalations: defaultdict[str, int] = defaultdict(int)
        self.durations: defaultdict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self.leftovers_detected: defaultdict[str, int] = defaultdict(int)
        self.signals: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.kill_commands: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.kill_failures: defaultdict[tuple[str, str], int] = defaultdict(int)
        # Kill commands aimed at workers, until their exit: command key -> (worker key,
        # target key, signal name). Their exit status shows whether the signal was sent.
        self._pending_kills: dict[Key, list[tuple[Key, Key, str]]] = {}
        self.termination_requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.events_lost: defaultdict[str, int] = defaultdict(int)
        self.scans = 0
        self._reconciled: dict[int, tuple[Process, float]] = {}
        # Parents of processes that exited before /proc could be read, such as a
        # `kill` command, to classify the signals they sent.
        self._vanished_forks: dict[int, tuple[int, float]] = {}

    # Events.

    def handle(self, event: Event) -> None:
        """Apply one fact from a source."""
        match event:
            case ProcessForked():
                if event.info is not None:
                    self._add(event.info, event.time)
                else:
                    self._vanished_forks[event.pid] = (event.ppid, event.time)
            case ProcessExeced():
                if event.info is not None:
                    process = self._add(event.info, event.time)
                    self._check_kill_command(process, event.info.argv, event.time)
            case ProcessExited():
                self._exited(event)
            case SignalGenerated():
                self._signal(event)
            case JvmSignalThreadSeen():
                worker = self._worker_of_target(self.table.get(event.pid))
                if worker is not None:
                    self._request(worker, event.time, event.signal, COARSE_REQUEST)
            case ScanCompleted():
                self._reconcile(event)
            case EventsLost():
                self.events_lost[event.source] += event.count

    def _add(self, info: ProcessInfo, time: float) -> Process:
        process, replaced = self.table.add(info, time)
        if replaced is not None:
            self._process_exit(replaced, time, None)
        self._attach(process)
        if len(info.nspid) > 1 and info.nspid[-1] == 1 and process.key not in self._container_inits:
            self._note_container_init(process)
        return process

    def _note_container_init(self, process: Process) -> None:
        """Remember the container whose main process (pid 1 of its namespace) this is."""
        cgroup = parse_cgroup_file(self.read_cgroup(process.pid) or "")
        if cgroup is not None and cgroup.container_id is not None:
            self._container_inits[process.key] = cgroup.container_id

    def _attach(self, process: Process) -> None:
        """Give a process its worker tree: a new worker, or its parent's tree."""
        if process.role == "worker" and process.key not in self.workers:
            self._new_worker(process)
            return
        if process.worker is not None:
            return
        parent = self.table.parent_of(process)
        if parent is None or parent.worker is None:
            return
        worker = self.workers.get(parent.worker)
        if worker is None:
            return
        process.worker = worker.key
        process.topology = worker.topology
        worker.members.add(process.key)
        if worker.leftovers is not None and process.alive:
            worker.leftovers.add(process.key)
            self.leftovers_detected[worker.label] += 1

    def _new_worker(self, process: Process) -> None:
        storm = process.storm
        topology = storm.topology_id or "unknown"
        worker = Worker(
            key=process.key,
            topology=topology,
            label=self.labels.admit(topology, self.clock()),
            worker_id=storm.worker_id or "",
            port=storm.port,
            uid=process.uid,
        )
        process.worker = worker.key
        process.topology = topology
        worker.members.add(process.key)
        worker.cgroup = parse_cgroup_file(self.read_cgroup(process.pid) or "")
        parent = self.table.parent_of(process)
        if parent is not None and parent.role == "logwriter" and parent.alive:
            worker.logwriter = parent.key
            parent.worker = worker.key
            parent.topology = topology
            worker.members.add(parent.key)
        self.workers[worker.key] = worker
        logger.debug(
            "Tracking worker pid=%d topology=%r worker_id=%s port=%s",
            process.pid, topology, worker.worker_id, worker.port,
        )

    def _exited(self, event: ProcessExited) -> None:
        process = self.table.get(event.pid)
        if process is None:
            self._late_exit(event)
            return
        if event.start_ticks is not None and event.start_ticks != process.start_ticks:
            return
        self._process_exit(process, event.time, event.status)

    def _late_exit(self, event: ProcessExited) -> None:
        """Correct an exit that a scan recorded before the kernel's event arrived."""
        entry = self._reconciled.pop(event.pid, None)
        if entry is None:
            return
        process, _ = entry
        process.exit_time = min(process.exit_time or event.time, event.time)
        process.exit_status = event.status
        worker = self.workers.get(process.key)
        if worker is not None and worker.outcome is None:
            worker.exit_time = process.exit_time
            worker.exit_status = event.status
            self._maybe_finish(worker, self.clock())

    def _process_exit(self, process: Process, time: float, status: int | None) -> None:
        self.table.mark_exited(process, time, status)
        aimed = self._pending_kills.pop(process.key, None)
        if aimed is not None:
            self._kill_command_exited(process, aimed, time, status)
        container_id = self._container_inits.pop(process.key, None)
        if container_id is not None and status is not None:
            wall = datetime.now(timezone.utc) - timedelta(seconds=self.clock() - time)
            self.container_exits.record(container_id, wall, status)
        worker = self.workers.get(process.key)
        if worker is not None:
            worker.exit_time = time
            worker.exit_status = status
            self._maybe_finish(worker, self.clock())
        elif process.worker is None:
            self.table.forget(process.key)

    # Requests and signals.

    def _worker_of_target(self, process: Process | None) -> Worker | None:
        """Return the worker when ``process`` is that worker or its LogWriter."""
        if process is None or process.worker is None:
            return None
        worker = self.workers.get(process.worker)
        if worker is None or process.key not in (worker.key, worker.logwriter):
            return None
        return worker

    def _request(self, worker: Worker, time: float, signum: int, via: str, trigger: str = "other") -> None:
        if worker.outcome is not None:
            return
        if worker.exit_time is not None and time > worker.exit_time:
            return
        if worker.request_time is None or self._earlier(worker, time, via):
            if worker.request_time is None:
                logger.debug(
                    "Termination requested pid=%d topology=%r signal=%s via=%s",
                    worker.key[0], worker.topology, oc.signal_name(signum), via,
                )
            worker.request_time = time
            worker.request_signal = signum
            worker.request_via = via
            worker.request_trigger = trigger

    @staticmethod
    def _earlier(worker: Worker, time: float, via: str) -> bool:
        """Tell whether a request at ``time`` by ``via`` replaces the one recorded.

        Signals and kill commands carry kernel timestamps; the coarse requests of
        COARSE_REQUESTS are known only to their precision, so an exact time within
        that precision of one is the same request, and the exact time is kept.
        """
        new_precision = COARSE_REQUESTS.get(via, 0.0)
        old_precision = COARSE_REQUESTS.get(worker.request_via or "", 0.0)
        if new_precision > old_precision:
            return time < worker.request_time - new_precision
        if old_precision > new_precision:
            return time <= worker.request_time + old_precision
        return time < worker.request_time

    def _signal(self, event: SignalGenerated) -> None:
        target = self.table.holder_at(event.pid, event.time)
        if target is None or target.worker is None:
            return
        tree = self.workers.get(target.worker)
        if tree is None:
            return
        sender = self._classify_sender(event)
        self.signals[(tree.label, oc.signal_name(event.signal), sender)] += 1
        logger.debug(
            "Signal %s for pid=%d topology=%r from pid=%d comm=%r sender=%s code=%d",
            oc.signal_name(event.signal), event.pid, tree.topology, event.sender_pid,
            event.sender_comm, sender, event.code,
        )
        worker = self._worker_of_target(target)
        if worker is None:
            return
        user_sent = event.code != oc.SI_KERNEL
        trigger = "supervisor" if sender == "supervisor" else "other"
        if event.signal == signal.SIGKILL:
            if target.key == worker.key and worker.sigkill_time is None:
                worker.sigkill_time = event.time
            if user_sent:
                self._request(worker, event.time, event.signal, "signal", trigger)
        elif event.signal in oc.REQUEST_SIGNALS:
            self._request(worker, event.time, event.signal, "signal", trigger)

    def _classify_sender(self, event: SignalGenerated) -> str:
        """Map the sender of a signal onto the fixed set of ``sender`` label values.

        A sender with a Storm role is classified by that role. A sender without
        one, such as a `kill` command, is classified by its parent, because the
        supervisor signals through `kill` and the runtime through its helpers.
        """
        sender = self._process_or_lookup(event.sender_pid)
        if event.code == oc.SI_KERNEL:
            # zap_pid_ns_processes() sends the SIGKILL of a PID-namespace teardown
            # from the dying init itself, which is pid 1 in its own namespace.
            if sender is not None and len(sender.nspid) > 1 and sender.nspid[-1] == 1:
                return "namespace_teardown"
            return "kernel"
        if sender is not None and sender.role is not None:
            return sender.role if sender.role in ("supervisor", "logwriter") else "other"
        parent = self._parent_or_lookup(sender)
        if sender is None and event.sender_pid in self._vanished_forks:
            parent = self.table.latest(self._vanished_forks[event.sender_pid][0])
        if parent is not None and parent.role in ("supervisor", "logwriter"):
            return parent.role
        comms = [event.sender_comm] + [p.comm for p in (sender, parent) if p is not None]
        if any(_is_runtime(comm) for comm in comms):
            return "container_runtime"
        return "other"

    def _process_or_lookup(self, pid: int) -> Process | None:
        """Find a sender: in the table (also just after its exit, which netlink may
        report before the signal it sent reaches us), else in /proc."""
        process = self.table.latest(pid)
        if process is not None:
            return process
        info = self.lookup(pid) if pid > 0 else None
        return _detached(info) if info is not None else None

    def _parent_or_lookup(self, process: Process | None) -> Process | None:
        if process is None:
            return None
        parent = self.table.parent_of(process)
        return parent if parent is not None else self._process_or_lookup(process.ppid)

    def _check_kill_command(self, process: Process, argv: tuple[str, ...], time: float) -> None:
        command = parse_kill_command(argv)
        if command is None or command.signal == 0:
            return
        for pid in command.pids + command.process_groups:
            target = self._resolve_pid(process, pid)
            worker = self._worker_of_target(target)
            if worker is None:
                continue
            self.kill_commands[(worker.label, oc.signal_name(command.signal))] += 1
            self._pending_kills.setdefault(process.key, []).append(
                (worker.key, target.key, oc.signal_name(command.signal))
            )
            parent = self._parent_or_lookup(process)
            trigger = "supervisor" if parent is not None and parent.role == "supervisor" else "other"
            self._request(worker, time, command.signal, command.via, trigger)

    def _kill_command_exited(
        self, command: Process, aimed: list[tuple[Key, Key, str]], time: float, status: int | None
    ) -> None:
        """Count a kill command that failed: a non-zero exit or a death by signal.

        Without an exit status (no netlink) the outcome is unknown and nothing is
        counted. `kill` exits 1 when kill(2) failed for any of its pids, for
        example with EPERM or ESRCH. A command whose target exited before the
        command did is not counted: the supervisor's `kill -9` races the worker's
        own exit at the end of the kill wait, and ESRCH then harms nothing.
        """
        if status is None or status == 0:
            return
        text = _format_status(status)
        for worker_key, target_key, signame in aimed:
            worker = self.workers.get(worker_key)
            target = self.table.by_key.get(target_key)
            if worker is None or target is None:
                continue
            if target.exit_time is not None and target.exit_time <= time:
                logger.debug(
                    "Kill command failed after its target exited pid=%d target_pid=%d signal=%s status=%s",
                    command.pid, target.pid, signame, text,
                )
                continue
            target_pid = target.pid
            self.kill_failures[(worker.label, signame)] += 1
            worker.kill_failures.append(KillFailure(time, command.pid, target_pid, signame, text))
            del worker.kill_failures[:-MAX_KILL_FAILURES_KEPT]
            logger.warning(
                "Kill command failed pid=%d target_pid=%d signal=%s status=%s topology=%r worker_id=%s",
                command.pid, target_pid, signame, text, worker.topology, worker.worker_id,
            )

    def request_pod_termination(self, pod_uid: str, start: float) -> None:
        """Record a pod's termination start (monotonic seconds) as a request of its workers.

        When the supervisor is the container's PID 1 and exits without stopping its
        workers, the kernel SIGKILLs them; the pod deletion is then their request.
        """
        for worker in self.live_workers():
            if worker.cgroup is not None and worker.cgroup.pod_uid == pod_uid:
                self._request(worker, start, signal.SIGTERM, POD_DELETION, POD_DELETION)

    def _resolve_pid(self, command: Process, pid: int) -> Process | None:
        """Map a pid written in a command to a process of the host PID namespace.

        A command run inside a container names pids of that container's PID
        namespace. The target is then the process in the command's namespace
        whose innermost NSpid entry is that pid.
        """
        if command.pidns is None or command.pidns == self.host_pidns or len(command.nspid) <= 1:
            return self.table.get(pid)
        for worker in self.workers.values():
            for key in worker.members:
                member = self.table.by_key.get(key)
                if member is None or not member.alive or member.pidns != command.pidns:
                    continue
                if member.nspid and member.nspid[-1] == pid:
                    return member
        return None

    # Scans.

    def _reconcile(self, scan: ScanCompleted) -> None:
        """Bring the table in line with a full /proc scan, counting exits events missed.

        Only processes known before the scan began can be missing from it, and a
        process that exited while the scan ran is not brought back.
        """
        self.scans += 1
        started = scan.time - scan.duration
        counting = self.exits_known and self.scans > 1
        missed = 0
        for pid, process in list(self.table.by_pid.items()):
            if process.added >= started:
                continue
            seen = scan.processes.get(pid)
            if seen is not None and seen.start_ticks == process.start_ticks:
                if seen.state == "Z":
                    self._process_exit(process, scan.time, None)
                continue
            self._reconciled[pid] = (process, scan.time)
            self._process_exit(process, scan.time, None)
            missed += 1
        for info in sorted(scan.processes.values(), key=lambda i: (i.start_ticks, i.pid)):
            if info.state == "Z" or info.key in self.table.recent_exits:
                continue
            known = self.table.get(info.pid)
            if known is None or known.start_ticks != info.start_ticks:
                self._add(info, scan.time)
            elif info.argv and hash(info.argv) != known.argv_digest:
                self._add(info, scan.time)
        self._adopt_orphans(scan.time)
        if counting and missed:
            self.events_lost["netlink"] += missed

    def _adopt_orphans(self, now: float) -> None:
        """Attribute processes that outlived an unseen worker, by their working directory.

        Storm starts multilang children in <storm.local.dir>/supervisor/stormdist/
        <topology id>/resources. A process there that belongs to no live worker tree
        was left by a worker the exporter never saw exit (it started later, or the
        events were lost), so it is a leftover of that topology from now on. Each
        process is checked once.
        """
        for process in list(self.table.by_pid.values()):
            if process.worker is not None or process.cwd_checked or process.role is not None:
                continue
            process.cwd_checked = True
            topology = _stormdist_topology(self.read_cwd(process.pid) or "")
            if topology is None:
                continue
            worker = Worker(
                key=process.key, topology=topology, label=self.labels.admit(topology, now),
                worker_id="", port=None, uid=process.uid, exit_time=now, outcome="orphaned",
            )
            worker.members.add(process.key)
            worker.leftovers = {process.key}
            process.worker = worker.key
            process.topology = topology
            self.workers[worker.key] = worker
            self.leftovers_detected[worker.label] += 1
            logger.warning(
                "Leftover process of a worker that exited unseen pid=%d topology=%r comm=%r",
                process.pid, topology, process.comm,
            )

    # Time.

    def tick(self, now: float | None = None) -> None:
        """Finish settled exits, find leftovers, drop finished workers and old topologies."""
        now = self.clock() if now is None else now
        for worker in list(self.workers.values()):
            if worker.outcome is None and worker.exit_time is not None:
                self._maybe_finish(worker, now)
            if worker.exit_time is None:
                continue
            if worker.leftovers is None and now >= worker.exit_time + self.leftover_grace:
                self._find_leftovers(worker)
            if worker.outcome is not None and worker.leftovers is not None:
                if not any(self._alive(key) for key in worker.leftovers):
                    self._drop_worker(worker)
        for pid, (_, seen) in list(self._reconciled.items()):
            if now - seen > self.settle:
                del self._reconciled[pid]
        self.table.prune_recent_exits(now - RECENT_EXIT_SECONDS)
        for pid, (_, forked) in list(self._vanished_forks.items()):
            if now - forked > RECENT_EXIT_SECONDS:
                del self._vanished_forks[pid]
        for key in [k for k in self._pending_kills if k not in self.table.by_key]:
            del self._pending_kills[key]
        active = {w.label for w in self.workers.values()}
        for label in self.labels.expire(now, active):
            self._drop_label(label)

    def _maybe_finish(self, worker: Worker, now: float) -> None:
        if worker.outcome is not None or worker.exit_time is None:
            return
        status_final = worker.exit_status is not None and worker.request_time is not None
        if not status_final and now < worker.exit_time + self.settle:
            return
        requested = worker.request_time is not None
        result = oc.classify_exit(
            status=worker.exit_status,
            requested=requested,
            request_signal=worker.request_signal,
            sigkill_seen=worker.sigkill_time is not None,
            signals_visible=self.signals_visible,
        )
        worker.outcome = result
        self.exits[(worker.label, result)] += 1
        if requested and result in oc.TIMED_OUTCOMES:
            duration = max(0.0, worker.exit_time - worker.request_time)
            self.durations[(worker.label, result)].observe(duration)
        if requested and result == oc.SIGKILL:
            self.escalations[worker.label] += 1
        if requested:
            self.termination_requests[(worker.label, worker.request_trigger or "other")] += 1
        self.labels.touch(worker.label, now)
        logger.info(
            "Worker exited pid=%d topology=%r worker_id=%s port=%s outcome=%s status=%s duration=%s",
            worker.key[0], worker.topology, worker.worker_id, worker.port, result,
            _format_status(worker.exit_status),
            f"{worker.exit_time - worker.request_time:.3f}s" if requested else "none",
        )

    def _find_leftovers(self, worker: Worker) -> None:
        worker.leftovers = {k for k in worker.members if k != worker.key and self._alive(k)}
        if worker.leftovers:
            self.leftovers_detected[worker.label] += len(worker.leftovers)
            pids = sorted(key[0] for key in worker.leftovers)
            logger.warning(
                "Leftover processes alive %.1fs after their worker exited "
                "topology=%r worker_id=%s pids=%s",
                self.leftover_grace, worker.topology, worker.worker_id, pids,
            )

    def _alive(self, key: Key) -> bool:
        process = self.table.by_key.get(key)
        return process is not None and process.alive

    def _drop_worker(self, worker: Worker) -> None:
        del self.workers[worker.key]
        for key in worker.members:
            self.table.forget(key)
        self.labels.touch(worker.label, self.clock())

    def _drop_label(self, label: str) -> None:
        for table in (
            self.exits, self.durations, self.signals, self.kill_commands, self.kill_failures,
            self.termination_requests,
        ):
            for key in [k for k in table if k[0] == label]:
                del table[key]
        for table in (self.escalations, self.leftovers_detected):
            table.pop(label, None)
        logger.info("Expired series of topology=%r after its retention", label)

    # Views for the collector and the poll source.

    def tracked_processes(self) -> list[tuple[int, int, bool]]:
        """Return (pid, start ticks, is a JVM) of every live member of a worker tree."""
        found = []
        for worker in self.workers.values():
            for key in worker.members:
                process = self.table.by_key.get(key)
                if process is not None and process.alive:
                    found.append((process.pid, process.start_ticks, process.role in ("worker", "logwriter")))
        return found

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.alive]

    def leftover_counts(self) -> dict[str, int]:
        counts: defaultdict[str, int] = defaultdict(int)
        for worker in self.workers.values():
            for key in worker.leftovers or ():
                if self._alive(key):
                    counts[worker.label] += 1
        return counts


def _stormdist_topology(cwd: str) -> str | None:
    match = _STORMDIST.search(cwd)
    return urllib.parse.unquote(match.group(1)) if match else None


def _is_runtime(comm: str) -> bool:
    return comm in RUNTIME_COMMS or comm.startswith("containerd-shim")


def _detached(info: ProcessInfo) -> Process:
    """Build a Process for sender classification without adding it to the table."""
    process = Process(pid=info.pid, start_ticks=info.start_ticks, ppid=info.ppid)
    process.update(info)
    process.storm = classify(info.argv) if info.argv else None
    return process


def _format_status(status: int | None) -> str:
    if status is None:
        return "unknown"
    code, killed_by = oc.split_status(status)
    return f"exit {code}" if killed_by is None else oc.signal_name(killed_by)
