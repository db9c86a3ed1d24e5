"""The ``simulate`` subcommand: a simulated Storm supervisor that runs and stops real workers.

The supervisor is a real process (``exporter/simrole.py`` in the supervisor role,
optionally PID 1 of a new PID namespace). It launches each LogWriter as its child and
stops a worker as Storm 2.x's Slot does. It runs ``kill -15 <pid>`` for every pid in
the worker's pids directory and sleeps ``supervisor.worker.shutdown.sleep.secs``.
Then, until all are gone, it runs ``kill -9 <pid>`` for each pid still alive and
sleeps again.

The command drives rounds of four workers on ports 6700-6703 (see ROUND_PLAN): one
that exits gracefully, one that only SIGKILL ends, one that leaves a process behind
and one that crashes. It stops the first three ``--stop-after`` after launch, waits
until all four are gone, and starts the next round with new topology and worker ids.

The supervisor is controlled with JSON lines on its stdin and reports JSON lines on
its stdout, so tests can drive it too:

  commands: {"op": "launch", "worker": <WorkerSpec.to_dict()>}
            {"op": "stop", "worker_id": ID, "shutdown_sleep": S (optional)}
  events:   ready, launched, registered, registration_failed, kill, stopped,
            stop_failed, exited, error; every event carries "event" and "time"
            (CLOCK_MONOTONIC seconds, which a PID namespace shares with the host)

Workers listed in the STORM_SIM_WORKERS environment variable (a JSON list of
WorkerSpec dicts) or in the JSON file named by ``-Dstorm.sim.workers=PATH`` are
launched at start. The supervisor exits with 0 once its stdin is closed and no worker
is running. On SIGTERM it exits at once with 143 and leaves its workers running, as
Storm's supervisor does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from exporter.procfs import ProcFS, Stat
from exporter.simrole import (
    StormLayout,
    WorkerSettings,
    interpreter_path,
    logwriter_argv,
    parse_storm_options,
    parse_system_properties,
    role_args,
    role_environment,
    set_child_subreaper,
    set_thread_name,
    supervisor_argv,
    validate_topology_id,
    write_topology_resources,
)

logger = logging.getLogger("exporter.simulate")

DEFAULT_SHUTDOWN_SLEEP = 3.0  # supervisor.worker.shutdown.sleep.secs in Storm's defaults.yaml
FIRST_SLOT_PORT = 6700
REGISTRATION_TIMEOUT = 10.0

# One round: topology name, worker behaviour, multilang children, stopped by the supervisor.
ROUND_PLAN = (
    ("wordcount", "graceful", 2, True),
    ("stuck-hooks", "ignore-term", 1, True),
    ("shell-helpers", "leave-children", 1, True),
    ("flaky-bolt", "crash", 1, False),
)


@dataclass(frozen=True)
class WorkerSpec:
    """One worker to launch: its Storm ids, slot port and simulated behaviour.

    ``topology_id`` may be given as bytes. It is stored as str, with surrogate escapes
    for bytes that are not UTF-8, so argv and paths carry the original bytes.
    ``stop_after`` makes the supervisor stop the worker that many seconds after launch.
    """

    topology_id: str
    port: int = FIRST_SLOT_PORT
    worker_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    settings: WorkerSettings = field(default_factory=WorkerSettings)
    stop_after: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.topology_id, bytes):
            object.__setattr__(self, "topology_id", os.fsdecode(self.topology_id))
        validate_topology_id(self.topology_id)
        # The worker id names directories that the supervisor removes after a stop.
        if (
            not self.worker_id
            or "/" in self.worker_id
            or "\0" in self.worker_id
            or self.worker_id in (".", "..")
        ):
            raise ValueError(f"invalid worker id {self.worker_id!r}: it must be usable as a directory name")
        if not 0 < self.port <= 65535:
            raise ValueError(f"invalid port {self.port!r}: expected 1-65535")

    def to_dict(self) -> dict:
        return {
            "topology_id": self.topology_id,
            "port": self.port,
            "worker_id": self.worker_id,
            "behaviour": self.settings.behaviour,
            "hook_secs": self.settings.hook_secs,
            "halt_secs": self.settings.halt_secs,
            "crash_secs": self.settings.crash_secs,
            "leftover_secs": self.settings.leftover_secs,
            "children": self.settings.children,
            "stop_after": self.stop_after,
        }

    @classmethod
    def from_dict(cls, data: dict) -> WorkerSpec:
        """Build a spec from ``to_dict()`` output, with defaults for missing keys.

        Raises ValueError for an invalid value.
        """
        if not isinstance(data, dict) or "topology_id" not in data:
            raise ValueError(f"invalid worker spec {data!r}: expected an object with topology_id")
        defaults = WorkerSettings()
        settings = WorkerSettings(
            behaviour=data.get("behaviour", defaults.behaviour),
            hook_secs=float(data.get("hook_secs", defaults.hook_secs)),
            halt_secs=float(data.get("halt_secs", defaults.halt_secs)),
            crash_secs=float(data.get("crash_secs", defaults.crash_secs)),
            leftover_secs=float(data.get("leftover_secs", defaults.leftover_secs)),
            children=int(data.get("children", defaults.children)),
        )
        stop_after = data.get("stop_after")
        return cls(
            topology_id=str(data["topology_id"]),
            port=int(data.get("port", FIRST_SLOT_PORT)),
            worker_id=str(data.get("worker_id") or uuid.uuid4()),
            settings=settings,
            stop_after=None if stop_after is None else float(stop_after),
        )


def new_supervisor_id() -> str:
    """Return an id shaped like StandaloneSupervisor's: a UUID, a hyphen and the host address."""
    return f"{uuid.uuid4()}-127.0.0.1"


def localize(spec: WorkerSpec, layout: StormLayout) -> None:
    """Create the directories Storm's supervisor prepares before a launch, and the topology's resources."""
    write_topology_resources(layout.resources_dir(spec.topology_id))
    os.makedirs(layout.pids_dir(spec.worker_id), exist_ok=True)
    os.makedirs(layout.worker_tmp_dir(spec.worker_id), exist_ok=True)
    os.makedirs(layout.artifacts_port_dir(spec.topology_id, spec.port), exist_ok=True)


@dataclass(frozen=True)
class LaunchCommand:
    """Arguments for subprocess.Popen that start one simulated role."""

    args: list[str]
    executable: str
    cwd: str
    env: dict[str, str]


def logwriter_command(spec: WorkerSpec, layout: StormLayout, supervisor_id: str) -> LaunchCommand:
    """Return the LogWriter launch for ``spec``, run in the worker directory as BasicContainer does."""
    argv = logwriter_argv(layout, spec.topology_id, spec.worker_id, spec.port, supervisor_id, spec.settings)
    return LaunchCommand(
        args=role_args(argv),
        executable=interpreter_path(),
        cwd=layout.worker_dir(spec.worker_id),
        env=role_environment(),
    )


def java_exit_code(wait_status: int) -> int:
    """Return the exit code a Java parent reports for a wait status: the code, or 128 + signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


# Processes as /proc shows them.


@dataclass(frozen=True, order=True)
class ProcessIdentity:
    """A process as (pid, start time). The start time distinguishes a reused pid from the original."""

    pid: int
    start_ticks: int  # /proc/PID/stat field 22, clock ticks after boot


def read_stat(pid: int, procfs: str = "/proc") -> Stat | None:
    """Return /proc/PID/stat parsed, or None when the process is gone."""
    return ProcFS(procfs).read_stat(pid)


def process_alive(pid: int, procfs: str = "/proc") -> bool:
    """True when /proc/PID exists and the process is not a zombie."""
    stat = read_stat(pid, procfs)
    return stat is not None and stat.state not in ("Z", "X")


def process_identity(pid: int, procfs: str = "/proc") -> ProcessIdentity | None:
    stat = read_stat(pid, procfs)
    return None if stat is None else ProcessIdentity(pid, stat.start_ticks)


def identity_alive(identity: ProcessIdentity, procfs: str = "/proc") -> bool:
    """True when the very process of ``identity`` still runs (not a zombie, pid not reused)."""
    stat = read_stat(identity.pid, procfs)
    return stat is not None and stat.start_ticks == identity.start_ticks and stat.state not in ("Z", "X")


def list_pids(procfs: str = "/proc") -> list[int]:
    return ProcFS(procfs).list_pids()


def descendant_pids(root: int, procfs: str = "/proc") -> list[int]:
    """Return the pids below ``root`` in the process tree, zombies included, parents first."""
    children: dict[int, list[int]] = {}
    for pid in list_pids(procfs):
        stat = read_stat(pid, procfs)
        if stat is not None:
            children.setdefault(stat.ppid, []).append(pid)
    found: list[int] = []
    pending = [root]
    while pending:
        for child in sorted(children.get(pending.pop(0), ())):
            found.append(child)
            pending.append(child)
    return found


def signal_identity(identity: ProcessIdentity, signum: int, procfs: str = "/proc") -> bool:
    """Send ``signum`` to the process of ``identity`` only. Return False when it is gone.

    The signal goes through a pidfd opened before the start time is checked, so a pid
    reused after that check cannot receive it.
    """
    try:
        pidfd = os.pidfd_open(identity.pid)
    except ProcessLookupError:
        return False
    try:
        stat = read_stat(identity.pid, procfs)
        if stat is None or stat.start_ticks != identity.start_ticks:
            return False
        signal.pidfd_send_signal(pidfd, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def kill_process_tree(
    root: ProcessIdentity | None, extra: Iterable[ProcessIdentity] = (), procfs: str = "/proc"
) -> int:
    """SIGKILL every descendant of ``root``, the processes in ``extra``, then ``root``, and return the count.

    Descendants go first and the scan repeats until none is left, so that orphans are
    found again under ``root`` when it is their subreaper.
    """
    extra = list(extra)
    killed = 0
    for _ in range(100):
        victims = set(identity for identity in extra if identity_alive(identity, procfs))
        if root is not None and identity_alive(root, procfs):
            for pid in descendant_pids(root.pid, procfs):
                identity = process_identity(pid, procfs)
                if identity is not None and identity_alive(identity, procfs):
                    victims.add(identity)
        if not victims:
            break
        for identity in sorted(victims):
            killed += signal_identity(identity, signal.SIGKILL, procfs)
        time.sleep(0.01)
    if root is not None and signal_identity(root, signal.SIGKILL, procfs):
        killed += 1
    return killed


def namespace_inode(pid: int, procfs: str = "/proc") -> int:
    """Return the inode number that identifies the PID namespace of ``pid``."""
    return os.stat(f"{procfs}/{pid}/ns/pid").st_ino


def namespace_pid_map(inode: int, procfs: str = "/proc") -> dict[int, int]:
    """Map each pid as seen inside the PID namespace ``inode`` to its pid in ``procfs``'s namespace.

    Reading another process's ns/pid link needs the ptrace access mode check, which
    root passes.
    """
    mapping = {}
    for pid in list_pids(procfs):
        try:
            if os.stat(f"{procfs}/{pid}/ns/pid").st_ino != inode:
                continue
            with open(f"{procfs}/{pid}/status") as file:
                for line in file:
                    if line.startswith("NSpid:"):
                        mapping[int(line.split()[-1])] = pid
                        break
        except (OSError, ValueError):
            continue
    return mapping


# Storm's kill sequence.


@dataclass(frozen=True)
class KillCommand:
    """One external ``kill`` command the supervisor ran."""

    time: float  # CLOCK_MONOTONIC just before the command was started
    signal: int
    pid: int  # in the supervisor's PID namespace
    returncode: int
    finished: float = 0.0  # CLOCK_MONOTONIC just after the command exited


@dataclass
class StopReport:
    """Kill commands of one stop sequence, in order, and the time the sequence ended."""

    kills: list[KillCommand] = field(default_factory=list)
    finished: float = 0.0

    @property
    def request_time(self) -> float | None:
        """Time of the first kill command, None when everything was already dead."""
        return self.kills[0].time if self.kills else None

    def killed_pids(self, signum: int) -> list[int]:
        return [kill.pid for kill in self.kills if kill.signal == signum]


def read_pids_dir(pids_dir: str) -> list[int]:
    """Return the pids named by the files in a worker's pids directory, which may be missing."""
    try:
        names = os.listdir(pids_dir)
    except FileNotFoundError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


def stop_worker_processes(
    pids_dir: str,
    shutdown_sleep: float,
    run_command: Callable[[list[str]], int],
    *,
    procfs: str = "/proc",
    on_kill: Callable[[KillCommand], None] | None = None,
) -> StopReport:
    """Stop a worker as Storm's Slot does, block until all its pids are gone and return the kill commands.

    The pids directory is read again before every step, as Container does, so pids
    registered during the shutdown are included. ``run_command`` runs an argv such as
    ``["kill", "-15", "123"]`` and returns its exit status. Liveness is "/proc/PID
    exists and is not a zombie". Storm also compares the process owner, which this
    simulation does not need because every process has the launcher's user.
    """
    report = StopReport()

    def kill(signum: int, pids: Sequence[int]) -> None:
        for pid in pids:
            started = time.monotonic()
            returncode = run_command(["kill", f"-{signum}", str(pid)])
            command = KillCommand(started, signum, pid, returncode, time.monotonic())
            report.kills.append(command)
            if on_kill is not None:
                on_kill(command)

    pids = read_pids_dir(pids_dir)
    if any(process_alive(pid, procfs) for pid in pids):
        kill(signal.SIGTERM, pids)
        time.sleep(shutdown_sleep)
        while True:
            alive = [pid for pid in read_pids_dir(pids_dir) if process_alive(pid, procfs)]
            if not alive:
                break
            kill(signal.SIGKILL, alive)
            time.sleep(shutdown_sleep)
    report.finished = time.monotonic()
    return report


class RegistrationError(RuntimeError):
    """A worker did not register its pids in time, or its LogWriter exited first."""


def wait_registered(
    pids_dir: str,
    logwriter_pid: int,
    children: int,
    timeout: float = REGISTRATION_TIMEOUT,
    procfs: str = "/proc",
) -> tuple[int, list[int]]:
    """Wait until the worker and ``children`` multilang children wrote pid files, and return their pids.

    The result is (worker pid, child pids).

    The worker is the registered pid whose parent is the LogWriter.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = read_pids_dir(pids_dir)
        workers = [pid for pid in pids if (stat := read_stat(pid, procfs)) and stat.ppid == logwriter_pid]
        if workers and len(pids) >= 1 + children:
            return workers[0], [pid for pid in pids if pid != workers[0]]
        if not process_alive(logwriter_pid, procfs):
            raise RegistrationError(
                f"LogWriter {logwriter_pid} exited with {len(pids)} pids registered in {pids_dir}"
            )
        if time.monotonic() > deadline:
            raise RegistrationError(
                f"timed out after {timeout} s waiting for {1 + children} pids in {pids_dir}, found {pids}"
            )
        time.sleep(0.01)


# The supervisor role.


class ExitSlot:
    """The wait status of one child, filled in by ChildReaper."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.status: int | None = None
        self._done = threading.Event()

    def set(self, status: int) -> None:
        self.status = status
        # ChildReaper reaps this child, so Popen cannot learn its returncode by itself.
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self._done.set()

    def wait(self, timeout: float | None = None) -> int | None:
        self._done.wait(timeout)
        return self.status


class ChildReaper:
    """Reaper of every child of this process, including orphans reparented to it.

    A PID 1 or a child subreaper must reap adopted orphans, and ``waitpid(-1)`` would
    steal the status of children that Popen waits for. So every child is started with
    ``popen()`` and only this thread reaps.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spawned = threading.Condition(self._lock)
        self._slots: dict[int, ExitSlot] = {}
        self._spawn_count = 0
        threading.Thread(target=self._run, name="reaper", daemon=True).start()

    def popen(self, args: Sequence[str], **kwargs) -> tuple[subprocess.Popen, ExitSlot]:
        # The child is registered under the lock that the reaper takes before it
        # looks a status up, so an early exit cannot be mistaken for an orphan's.
        with self._lock:
            process = subprocess.Popen(args, **kwargs)
            slot = ExitSlot(process)
            self._slots[process.pid] = slot
            self._spawn_count += 1
            self._spawned.notify_all()
        return process, slot

    def _run(self) -> None:
        while True:
            with self._lock:
                spawn_count = self._spawn_count
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                with self._lock:
                    if self._spawn_count == spawn_count:
                        self._spawned.wait(timeout=1.0)
                continue
            with self._lock:
                slot = self._slots.pop(pid, None)
            if slot is None:
                logger.debug("reaped orphan %d with wait status %d", pid, status)
            else:
                slot.set(status)


class EventWriter:
    """JSON-lines writer of supervisor events on stdout."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._broken = False

    def emit(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, "time": time.monotonic(), **fields})
        with self._lock:
            if self._broken:
                return
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (BrokenPipeError, ValueError) as error:
                self._broken = True
                logger.warning("event output closed, events are no longer reported: %s", error)


@dataclass
class _LaunchedWorker:
    spec: WorkerSpec
    process: subprocess.Popen
    exit_slot: ExitSlot
    stopping: bool = False
    exited: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)


class Supervisor:
    """Launcher and killer of simulated workers, with the process behaviour of Storm's supervisor.

    NOTE: unlike Storm's Slot, it never relaunches a worker that exited by itself, and it
    has no heartbeats or assignments: workers start and stop only on command.
    """

    def __init__(
        self,
        layout: StormLayout,
        shutdown_sleep: float,
        events: EventWriter,
        reaper: ChildReaper,
        supervisor_id: str | None = None,
    ) -> None:
        self.layout = layout
        self.shutdown_sleep = shutdown_sleep
        self.supervisor_id = supervisor_id or new_supervisor_id()
        self._events = events
        self._reaper = reaper
        self._lock = threading.Lock()
        self._workers: dict[str, _LaunchedWorker] = {}

    def launch(self, spec: WorkerSpec) -> None:
        with self._lock:
            if spec.worker_id in self._workers:
                raise ValueError(f"worker {spec.worker_id} was already launched")
            localize(spec, self.layout)
            command = logwriter_command(spec, self.layout, self.supervisor_id)
            process, slot = self._reaper.popen(
                command.args,
                executable=command.executable,
                cwd=command.cwd,
                env=command.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            worker = _LaunchedWorker(spec, process, slot)
            self._workers[spec.worker_id] = worker
        logger.info(
            "Launching worker %s for topology %r on port %d, LogWriter pid %d",
            spec.worker_id,
            spec.topology_id,
            spec.port,
            process.pid,
        )
        self._events.emit(
            "launched",
            worker_id=spec.worker_id,
            topology_id=spec.topology_id,
            port=spec.port,
            behaviour=spec.settings.behaviour,
            logwriter_pid=process.pid,
        )
        for target, name in (
            (self._copy_output, "output"),
            (self._wait_exit, "exit"),
            (self._watch_registration, "registration"),
        ):
            threading.Thread(target=target, args=(worker,), name=f"{name}-{spec.port}", daemon=True).start()
        if spec.stop_after is not None:
            timer = threading.Timer(spec.stop_after, self.stop, args=(spec.worker_id,))
            timer.daemon = True
            timer.start()

    def stop(self, worker_id: str, shutdown_sleep: float | None = None) -> None:
        """Start Storm's kill sequence for one worker on its own thread, as each Slot has its own."""
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None:
                raise ValueError(f"worker {worker_id} is unknown")
            if worker.stopping:
                logger.info("worker %s is already being stopped", worker_id)
                return
            worker.stopping = True
        sleep = self.shutdown_sleep if shutdown_sleep is None else shutdown_sleep
        threading.Thread(
            target=self._stop_worker, args=(worker, sleep), name=f"slot-{worker.spec.port}", daemon=True
        ).start()

    def running(self) -> bool:
        """True while some LogWriter is alive or some stop sequence is still running."""
        with self._lock:
            workers = list(self._workers.values())
        return any(not w.exited.is_set() or (w.stopping and not w.stopped.is_set()) for w in workers)

    def _copy_output(self, worker: _LaunchedWorker) -> None:
        for raw in worker.process.stdout:
            logger.info(
                "Worker Process %s:%s", worker.spec.worker_id, raw.decode(errors="replace").rstrip("\n")
            )

    def _wait_exit(self, worker: _LaunchedWorker) -> None:
        status = worker.exit_slot.wait()
        code = java_exit_code(status)
        logger.info("Worker Process %s exited with code: %d", worker.spec.worker_id, code)
        self._events.emit("exited", worker_id=worker.spec.worker_id, status=status, code=code)
        worker.exited.set()

    def _watch_registration(self, worker: _LaunchedWorker) -> None:
        spec = worker.spec
        try:
            worker_pid, child_pids = wait_registered(
                self.layout.pids_dir(spec.worker_id), worker.process.pid, spec.settings.children
            )
        except RegistrationError as error:
            logger.warning("worker %s did not register: %s", spec.worker_id, error)
            self._events.emit("registration_failed", worker_id=spec.worker_id, message=str(error))
            return
        self._events.emit(
            "registered", worker_id=spec.worker_id, worker_pid=worker_pid, child_pids=child_pids
        )

    def _stop_worker(self, worker: _LaunchedWorker, shutdown_sleep: float) -> None:
        spec = worker.spec
        logger.info(
            "Killing worker %s of topology %r on port %d", spec.worker_id, spec.topology_id, spec.port
        )

        def report_kill(command: KillCommand) -> None:
            if command.signal == signal.SIGKILL:
                logger.warning("SLOT %d force kill and wait, pid %d", spec.port, command.pid)
            self._events.emit(
                "kill",
                worker_id=spec.worker_id,
                signal=command.signal,
                pid=command.pid,
                started=command.time,
                finished=command.finished,
                returncode=command.returncode,
            )

        try:
            report = stop_worker_processes(
                self.layout.pids_dir(spec.worker_id), shutdown_sleep, self._run_command, on_kill=report_kill
            )
        except OSError as error:
            logger.error("stopping worker %s failed: %s", spec.worker_id, error)
            self._events.emit("stop_failed", worker_id=spec.worker_id, message=str(error))
            worker.stopped.set()
            return
        # Slot cleans the worker's directories up once all its processes are dead.
        shutil.rmtree(self.layout.worker_dir(spec.worker_id), ignore_errors=True)
        self._events.emit(
            "stopped",
            worker_id=spec.worker_id,
            request_time=report.request_time,
            finished=report.finished,
            sigterm_pids=report.killed_pids(signal.SIGTERM),
            sigkill_pids=report.killed_pids(signal.SIGKILL),
        )
        worker.stopped.set()

    def _run_command(self, args: list[str]) -> int:
        _, slot = self._reaper.popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        returncode = os.waitstatus_to_exitcode(slot.wait())
        if returncode != 0:
            logger.info("%s exited with %d, process is probably already dead", " ".join(args), returncode)
        return returncode


def serve_supervisor(argv: Sequence[str], main_index: int) -> int:
    """Run the supervisor role: launch the listed workers, then follow commands on stdin."""
    from exporter import logs

    logs.setup("info", "logfmt")
    properties = parse_system_properties(argv[:main_index])
    options = parse_storm_options(properties.get("storm.options", ""))
    local_dir = options.get("storm.local.dir")
    if not local_dir:
        logger.error("storm.local.dir is missing from -Dstorm.options")
        return 1
    try:
        shutdown_sleep = float(options.get("supervisor.worker.shutdown.sleep.secs", DEFAULT_SHUTDOWN_SLEEP))
        initial = _initial_workers(properties.get("storm.sim.workers"))
    except (OSError, ValueError) as error:
        logger.error("invalid supervisor settings: %s", error)
        return 1

    # In a container the supervisor is PID 1, so orphans of its workers are
    # reparented to it. A child subreaper gets the same outside a PID namespace.
    set_child_subreaper()
    events = EventWriter(sys.stdout)
    supervisor = Supervisor(StormLayout(local_dir), shutdown_sleep, events, ChildReaper())
    signal.signal(signal.SIGTERM, _supervisor_signal)
    signal.signal(signal.SIGINT, _supervisor_signal)
    logger.info(
        "Starting supervisor %s, pid %d, local dir %s", supervisor.supervisor_id, os.getpid(), local_dir
    )
    events.emit("ready", pid=os.getpid(), supervisor_id=supervisor.supervisor_id, local_dir=local_dir)
    for spec in initial:
        supervisor.launch(spec)
    for line in sys.stdin:
        if line.strip():
            _handle_command(supervisor, events, line)
    while supervisor.running():
        time.sleep(0.05)
    logger.info("Supervisor input closed and no worker running, exiting")
    return 0


def _initial_workers(path: str | None) -> list[WorkerSpec]:
    text = os.environ.get("STORM_SIM_WORKERS")
    if path:
        with open(path) as file:
            text = file.read()
    if not text:
        return []
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("the worker list must be a JSON array of worker specs")
    return [WorkerSpec.from_dict(item) for item in data]


def _handle_command(supervisor: Supervisor, events: EventWriter, line: str) -> None:
    try:
        command = json.loads(line)
        operation = command.get("op")
        if operation == "launch":
            supervisor.launch(WorkerSpec.from_dict(command.get("worker")))
        elif operation == "stop":
            sleep = command.get("shutdown_sleep")
            supervisor.stop(str(command.get("worker_id")), None if sleep is None else float(sleep))
        else:
            raise ValueError(f"unknown op {operation!r}: expected launch or stop")
    except (ValueError, TypeError, AttributeError, OSError) as error:
        logger.error("invalid supervisor command %r: %s", line.strip(), error)
        events.emit("error", message=str(error), command=line.strip())


def _supervisor_signal(signum: int, frame: object) -> None:
    name = f"{signal.Signals(signum).name} handler"
    threading.Thread(target=_supervisor_exit, args=(name, 128 + signum), name=name).start()


def _supervisor_exit(thread_name: str, status: int) -> None:
    # Storm's supervisor shutdown hook closes its timers and clients but never
    # touches the workers, which keep running.
    set_thread_name(thread_name)
    logger.info("Shutting down supervisor on %s, workers keep running", thread_name.split()[0])
    logging.shutdown()
    os._exit(status)


# The supervisor as a child process, seen from the launcher.


class SupervisorError(RuntimeError):
    """The simulated supervisor failed to start or exited while it was needed."""


class SupervisorProcess:
    """A simulated supervisor started as a child process and controlled over its stdin and stdout.

    With ``pid_namespace`` it runs as PID 1 of a new PID and mount namespace
    (``unshare --pid --fork --mount-proc``), so the pids it writes, reports and kills
    are namespace pids. Use ``host_pid()`` to translate them. Needs root.
    """

    def __init__(
        self,
        layout: StormLayout,
        shutdown_sleep: float = DEFAULT_SHUTDOWN_SLEEP,
        *,
        pid_namespace: bool = False,
        stderr=None,
    ) -> None:
        self.layout = layout
        self.shutdown_sleep = shutdown_sleep
        self.pid_namespace = pid_namespace
        self._stderr = stderr
        self._process: subprocess.Popen | None = None
        self._identity: ProcessIdentity | None = None
        self._inode: int | None = None
        self._events: list[dict] = []
        self._changed = threading.Condition()
        self._closed = False
        self._write_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.supervisor_id = ""

    def start(self, timeout: float = 10.0) -> None:
        """Start the supervisor and wait for its ready event. Raise SupervisorError when it fails."""
        argv = supervisor_argv(self.layout, self.shutdown_sleep)
        if self.pid_namespace:
            # unshare cannot set argv[0], so the role re-executes itself as "java".
            # --kill-child SIGKILLs the namespace's PID 1, and so the namespace, when unshare dies.
            args = [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                interpreter_path(),
                *role_args(argv)[1:],
            ]
            executable = None
        else:
            args, executable = role_args(argv), interpreter_path()

        self._process = subprocess.Popen(
            args,
            executable=executable,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=role_environment(),
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_events, name="supervisor-events", daemon=True)
        self._reader.start()

        found = self.wait_event(lambda event: event["event"] == "ready", timeout)
        if found is None:
            self.kill()
            raise SupervisorError(
                f"supervisor did not report ready within {timeout} s: {self.describe_exit()}"
            )
        self.supervisor_id = found[1]["supervisor_id"]
        host_pid = self._find_host_pid()
        self._identity = process_identity(host_pid)
        if self.pid_namespace:
            self._inode = namespace_inode(host_pid)

    @property
    def pid(self) -> int | None:
        """Host pid of the supervisor process (PID 1 of its namespace when namespaced)."""
        return None if self._identity is None else self._identity.pid

    @property
    def identity(self) -> ProcessIdentity | None:
        return self._identity

    @property
    def namespace_inode(self) -> int | None:
        return self._inode

    @property
    def closed(self) -> bool:
        """True once the supervisor's stdout reached EOF, normally because it exited."""
        return self._closed

    def host_pid(self, pid: int) -> int | None:
        """Translate a pid reported by the supervisor to a host pid, or None when no such process runs."""
        if self._inode is None:
            return pid
        return namespace_pid_map(self._inode).get(pid)

    def host_pids(self, pids: Iterable[int]) -> dict[int, int | None]:
        """Translate several supervisor pids at once, with one /proc scan."""
        if self._inode is None:
            return {pid: pid for pid in pids}
        mapping = namespace_pid_map(self._inode)
        return {pid: mapping.get(pid) for pid in pids}

    def launch(self, spec: WorkerSpec) -> None:
        self._send({"op": "launch", "worker": spec.to_dict()})

    def stop(self, worker_id: str, shutdown_sleep: float | None = None) -> None:
        command = {"op": "stop", "worker_id": worker_id}
        if shutdown_sleep is not None:
            command["shutdown_sleep"] = shutdown_sleep
        self._send(command)

    def close_input(self) -> None:
        """Close the supervisor's stdin, so that it exits once no worker is running."""
        with self._write_lock:
            if self._process is not None and self._process.stdin and not self._process.stdin.closed:
                try:
                    self._process.stdin.close()
                except BrokenPipeError:
                    pass

    def events(self, start: int = 0) -> list[dict]:
        with self._changed:
            return list(self._events[start:])

    def next_event(self, index: int, timeout: float) -> dict | None:
        """Return event number ``index`` once it arrived, or None after ``timeout`` or at EOF."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._events) <= index:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return None
                self._changed.wait(remaining)
            return self._events[index]

    def wait_event(
        self, predicate: Callable[[dict], bool], timeout: float, start: int = 0
    ) -> tuple[int, dict] | None:
        """Return the first matching event from index ``start`` on, with its index.

        Return None on timeout, or at EOF when no event matched.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            index = start
            while True:
                while index < len(self._events):
                    if predicate(self._events[index]):
                        return index, self._events[index]
                    index += 1
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the supervisor (or unshare) process to exit and return its returncode, None on timeout."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, extra: Iterable[ProcessIdentity] = ()) -> int:
        """SIGKILL the supervisor, all its descendants and ``extra``, and return how many got the signal.

        In a PID namespace, the SIGKILL of its PID 1 makes the kernel kill every other
        process of the namespace.
        """
        killed = 0
        if self._process is None:
            return 0
        if self.pid_namespace:
            killed += kill_process_tree(None, [identity for identity in (self._identity, *extra) if identity])
        else:
            killed += kill_process_tree(self._identity, extra)
        if self.wait(2.0) is None:
            self._process.kill()
            self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=1.0)
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return killed

    def _send(self, command: dict) -> None:
        line = json.dumps(command) + "\n"
        with self._write_lock:
            if self._process is None or self._process.stdin is None or self._process.stdin.closed:
                raise SupervisorError("supervisor input is closed")
            try:
                self._process.stdin.write(line.encode())
                self._process.stdin.flush()
            except BrokenPipeError as error:
                raise SupervisorError(f"supervisor exited: {self.describe_exit()}") from error

    def _read_events(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                logger.warning("supervisor wrote a line that is not JSON: %r", raw[:200])
                continue
            with self._changed:
                self._events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _find_host_pid(self) -> int:
        assert self._process is not None
        if not self.pid_namespace:
            return self._process.pid
        for pid in list_pids():
            stat = read_stat(pid)
            if stat is not None and stat.ppid == self._process.pid:
                return pid
        raise SupervisorError(f"no child of unshare {self._process.pid} found: {self.describe_exit()}")

    def describe_exit(self) -> str:
        if self._process is None:
            return "not started"
        returncode = self._process.poll()
        return "still running" if returncode is None else f"exited with {returncode}"


# The simulate command.


@dataclass
class _RoundWorker:
    spec: WorkerSpec
    stop_requested: bool
    registered: bool = False
    failed: bool = False
    exit_code: int | None = None
    stopped: bool = False


class RoundDriver:
    """Runs rounds of ROUND_PLAN against a SupervisorProcess and prints one line per worker event."""

    def __init__(
        self,
        supervisor: SupervisorProcess,
        stop_after: float,
        leftover_lifetime: float,
        shutdown: threading.Event,
        output=None,
    ) -> None:
        self.supervisor = supervisor
        self.shutdown_sleep = supervisor.shutdown_sleep
        self.stop_after = stop_after
        self.leftover_lifetime = leftover_lifetime
        self.shutdown = shutdown
        self.output = output or sys.stdout
        self.counter = 0
        self.processes: set[ProcessIdentity] = set()  # every tree process seen, for the final cleanup
        self.leftovers: set[ProcessIdentity] = set()
        self._cursor = 0
        self._workers: dict[str, _RoundWorker] = {}

    def run_round(self) -> bool:
        """Run one round. Return False when the shutdown event interrupted it."""
        launched = time.monotonic()
        epoch = int(time.time())
        # Hooks shorter than the shutdown sleep, so that the graceful workers stay graceful.
        hook_secs = min(0.5, self.shutdown_sleep / 3)
        for offset, (name, behaviour, children, stop_requested) in enumerate(ROUND_PLAN):
            self.counter += 1
            settings = WorkerSettings(
                behaviour=behaviour,
                hook_secs=hook_secs,
                crash_secs=self.stop_after / 2,
                leftover_secs=self.leftover_lifetime,
                children=children,
            )
            spec = WorkerSpec(f"{name}-{self.counter}-{epoch}", FIRST_SLOT_PORT + offset, settings=settings)
            self._workers[spec.worker_id] = _RoundWorker(spec, stop_requested)
            self.supervisor.launch(spec)
        round_ids = list(self._workers)

        def settled(worker: _RoundWorker) -> bool:
            return worker.registered or worker.failed or worker.exit_code is not None

        if not self._pump_until(lambda: all(settled(self._workers[i]) for i in round_ids)):
            return False
        if not self._pump_until(lambda: False, deadline=launched + self.stop_after):
            return False
        for worker_id in round_ids:
            worker = self._workers[worker_id]
            if worker.stop_requested and worker.exit_code is None:
                self.supervisor.stop(worker_id)
            else:
                worker.stop_requested = False

        def finished(worker: _RoundWorker) -> bool:
            return worker.exit_code is not None and (worker.stopped or not worker.stop_requested)

        if not self._pump_until(lambda: all(finished(self._workers[i]) for i in round_ids)):
            return False
        for worker_id in round_ids:
            del self._workers[worker_id]
        self.processes = {identity for identity in self.processes if identity_alive(identity)}
        self.leftovers = {identity for identity in self.leftovers if identity_alive(identity)}
        return True

    def wait_leftovers(self) -> None:
        """Wait until the leftover processes exit by themselves, at most their lifetime plus 2 s."""
        deadline = time.monotonic() + self.leftover_lifetime + 2.0
        while any(identity_alive(identity) for identity in self.leftovers):
            if not self._pump_until(lambda: False, deadline=min(deadline, time.monotonic() + 0.1)):
                return
            if time.monotonic() >= deadline:
                return

    def _pump_until(self, condition: Callable[[], bool], deadline: float | None = None) -> bool:
        """Handle events until ``condition()`` is true or ``deadline`` passes. Return False on shutdown."""
        while not condition():
            if self.shutdown.is_set():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return True
            event = self.supervisor.next_event(self._cursor, 0.1)
            if event is None:
                if self.supervisor.closed:
                    raise SupervisorError(f"supervisor exited: {self.supervisor.describe_exit()}")
                continue
            self._cursor += 1
            self._handle(event)
        return True

    def _handle(self, event: dict) -> None:
        worker = self._workers.get(event.get("worker_id", ""))
        if worker is None:
            if event["event"] == "error":
                logger.error("supervisor rejected a command: %s", event.get("message"))
            return
        kind = event["event"]
        spec = worker.spec
        prefix = f"topology={spec.topology_id} port={spec.port} worker={spec.worker_id}"
        if kind == "registered":
            worker.registered = True
            self._print(f"launched {prefix} behaviour={spec.settings.behaviour} {self._describe_pids(event)}")
        elif kind == "registration_failed":
            worker.failed = True
            self._print(f"failed {prefix} {event.get('message')}")
        elif kind == "stopped":
            worker.stopped = True
            request_time = event.get("request_time")
            sequence = event["finished"] - request_time if request_time is not None else 0.0
            self._print(
                f"stopped {prefix} sigterm_pids={_join(event['sigterm_pids'])} "
                f"sigkill_pids={_join(event['sigkill_pids'])} kill_sequence={sequence:.2f}s"
            )
        elif kind == "stop_failed":
            worker.stopped = True
            self._print(f"stop-failed {prefix} {event.get('message')}")
        elif kind == "exited":
            worker.exit_code = event["code"]
            self._print(f"exited {prefix} code={event['code']}")

    def _describe_pids(self, event: dict) -> str:
        """Describe a registered worker's pids, and remember its tree for the leftover wait and cleanup."""
        launched = self.supervisor.wait_event(
            lambda e: e["event"] == "launched" and e["worker_id"] == event["worker_id"], 0
        )
        logwriter = launched[1]["logwriter_pid"] if launched else None
        reported = [pid for pid in (logwriter, event["worker_pid"], *event["child_pids"]) if pid is not None]
        hosts = self.supervisor.host_pids(reported)
        worker_host = hosts.get(event["worker_pid"])
        children_hosts = [hosts.get(pid) for pid in event["child_pids"]]
        registered = {worker_host, *children_hosts}

        unregistered = []
        logwriter_host = hosts.get(logwriter) if logwriter is not None else None
        if logwriter_host is not None:
            for pid in [logwriter_host, *descendant_pids(logwriter_host)]:
                identity = process_identity(pid)
                if identity is None:
                    continue
                self.processes.add(identity)
                if pid != logwriter_host and pid not in registered:
                    unregistered.append(pid)
                    self.leftovers.add(identity)

        text = (
            f"pids: logwriter={_join([hosts.get(logwriter)])} worker={_join([worker_host])} "
            f"children={_join(children_hosts)} unregistered={_join(unregistered)}"
        )
        if self.supervisor.pid_namespace:
            text += (
                f" namespace_pids: logwriter={logwriter} worker={event['worker_pid']} "
                f"children={_join(event['child_pids'])}"
            )
        return text

    def _print(self, line: str) -> None:
        print(line, file=self.output, flush=True)


def _join(pids: Iterable[int | None]) -> str:
    text = ",".join("?" if pid is None else str(pid) for pid in pids)
    return text or "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from exporter.config import parse_duration

    parser.add_argument(
        "--rounds",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="rounds of four workers to run; 0 runs until SIGINT or SIGTERM (default 0)",
    )
    parser.add_argument(
        "--shutdown-sleep",
        type=parse_duration,
        default=DEFAULT_SHUTDOWN_SLEEP,
        metavar="DURATION",
        help=(
            "supervisor.worker.shutdown.sleep.secs: the wait after kill -15 and after each kill -9 "
            "round (default 3s)"
        ),
    )
    parser.add_argument(
        "--stop-after",
        type=parse_duration,
        default=3.0,
        metavar="DURATION",
        help=(
            "time from launch until the supervisor stops a round's workers; the crashing worker "
            "exits by itself after half of it (default 3s)"
        ),
    )
    parser.add_argument(
        "--leftover-lifetime",
        type=parse_duration,
        default=10.0,
        metavar="DURATION",
        help="lifetime of the process that the leave-children worker leaves behind (default 10s)",
    )
    parser.add_argument(
        "--pid-namespace",
        action="store_true",
        help="run the supervisor as PID 1 of a new PID and mount namespace, as in a container (needs root)",
    )
    parser.add_argument(
        "--local-dir",
        metavar="PATH",
        help="storm.local.dir for the simulation (default: a new temporary directory, removed on exit)",
    )


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected an integer of 0 or more")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the simulation until its rounds are done or SIGINT/SIGTERM arrives, and return the exit status.

    Whatever the simulation started is killed by pid before this returns.
    """
    if args.pid_namespace and os.geteuid() != 0:
        logger.error("--pid-namespace needs root, because unshare --pid needs CAP_SYS_ADMIN")
        return 2
    shutdown = threading.Event()
    previous_handlers = _install_shutdown_handlers(shutdown)
    temporary = args.local_dir is None
    local_dir = tempfile.mkdtemp(prefix="storm-sim-") if temporary else os.path.abspath(args.local_dir)
    os.makedirs(local_dir, exist_ok=True)
    supervisor = SupervisorProcess(
        StormLayout(local_dir), args.shutdown_sleep, pid_namespace=args.pid_namespace
    )
    driver = RoundDriver(supervisor, args.stop_after, args.leftover_lifetime, shutdown)
    status = 0
    try:
        supervisor.start()
        logger.info(
            "simulated supervisor %s running as pid %d, local dir %s",
            supervisor.supervisor_id,
            supervisor.pid,
            local_dir,
        )
        rounds = 0
        while args.rounds == 0 or rounds < args.rounds:
            if not driver.run_round():
                break
            rounds += 1
        if not shutdown.is_set():
            driver.wait_leftovers()
            supervisor.close_input()
            supervisor.wait(2.0)
    except SupervisorError as error:
        logger.error("simulation failed: %s", error)
        status = 1
    finally:
        killed = supervisor.kill(driver.processes)
        logger.info("simulation stopped, %d processes killed", killed)
        if temporary:
            shutil.rmtree(local_dir, ignore_errors=True)
        _restore_handlers(previous_handlers)
    return status


def _install_shutdown_handlers(shutdown: threading.Event) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def request_shutdown(signum: int, frame: object) -> None:
        logger.info("received %s, stopping the simulation", signal.Signals(signum).name)
        shutdown.set()

    return {signum: signal.signal(signum, request_shutdown) for signum in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    from exporter import logs

    parser = argparse.ArgumentParser(
        prog="storm-termination-exporter simulate",
        description=(
            "Run a simulated Storm supervisor whose real worker processes shut down in " "different ways."
        ),
    )
    add_arguments(parser)
    parser.add_argument(
        "--log.level", dest="log_level", choices=logs.LEVELS, default="info", help="log level (default info)"
    )
    args = parser.parse_args(argv)
    logs.setup(args.log_level, "logfmt")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
