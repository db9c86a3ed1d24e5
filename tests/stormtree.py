"""Real Storm-shaped worker process trees for tests, stopped the way Storm's supervisor stops them.

A tree is LogWriter -> worker -> multilang children, with one of the behaviours that
exporter/simrole.py documents. Outside a PID namespace the harness plays the
supervisor. It starts the LogWriter with subprocess, so it gets the LogWriter's exit
status, and it runs the external ``kill -15`` / ``kill -9`` commands itself. In a PID
namespace a simulated supervisor runs as PID 1 (exporter.simulate.SupervisorProcess)
and the harness sends it launch and stop commands. The kill commands then run inside
the namespace with namespace pids, and that supervisor reports the LogWriter's status.

Ground truth comes from the kernel: CLOCK_MONOTONIC taken just before the first kill
command starts (the request), and the worker's exit time from a pidfd that becomes
readable when the worker exits. The pid attributes of a WorkerTree are host pids.

    from tests.stormtree import storm_trees  # the fixture

    def test_stuck_worker(storm_trees):
        tree = storm_trees.start("ignore-term", b"word\\"count-1-1700000000")
        result = tree.stop()
        assert result.logwriter_returncode == 137
        assert result.sigkill_sent

Every process a tree started, its namespace and the temporary directory are removed
when the StormTrees context (or the fixture) ends.
"""

from __future__ import annotations

import itertools
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable

import pytest

from exporter import simulate
from exporter.simrole import StormLayout, WorkerSettings
from exporter.simulate import KillCommand, ProcessIdentity

DEFAULT_SHUTDOWN_SLEEP = 0.5
_topology_counter = itertools.count(1)


@dataclass(frozen=True)
class Termination:
    """Ground truth of one worker's end.

    ``request_time`` and ``worker_exit_time`` are CLOCK_MONOTONIC seconds
    (``time.monotonic()``). ``logwriter_returncode`` follows subprocess: the LogWriter's
    exit code, which is the worker's code or 128 + the signal that killed it (143, 20,
    137, 11), or minus a signal number when the LogWriter itself was killed.
    """

    request_time: float | None  # None when no kill command ran
    worker_exit_time: float | None  # None when the worker was gone before the pidfd was opened
    logwriter_returncode: int | None  # None when the LogWriter did not exit in time
    kills: tuple[KillCommand, ...] = ()

    @property
    def shortest_duration(self) -> float | None:
        """Seconds from the end of the first kill command to the worker's exit.

        The signal was generated between the start and the end of that command, so
        the true shutdown duration lies between this and ``shutdown_duration``.
        """
        if not self.kills or self.worker_exit_time is None:
            return None
        return self.worker_exit_time - self.kills[0].finished

    @property
    def shutdown_duration(self) -> float | None:
        """Seconds from the first kill command to the worker's exit."""
        if self.request_time is None or self.worker_exit_time is None:
            return None
        return self.worker_exit_time - self.request_time

    @property
    def sigkill_sent(self) -> bool:
        return any(kill.signal == signal.SIGKILL for kill in self.kills)

    def killed_pids(self, signum: int) -> list[int]:
        """Pids that got a kill command with ``signum``, as the supervisor saw them."""
        return [kill.pid for kill in self.kills if kill.signal == signum]


class ExitWatch:
    """Exit time of one process, taken when its pidfd becomes readable.

    Opening the pidfd raises ProcessLookupError when the process is already gone.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.time: float | None = None
        self._pidfd = os.pidfd_open(pid)
        self._done = threading.Event()
        threading.Thread(target=self._watch, name=f"exit-watch-{pid}", daemon=True).start()

    def wait(self, timeout: float | None = None) -> float | None:
        self._done.wait(timeout)
        return self.time

    def _watch(self) -> None:
        select.select([self._pidfd], [], [])
        self.time = time.monotonic()
        os.close(self._pidfd)
        self._done.set()


class PidNamespace:
    """A simulated supervisor running as PID 1 of a new PID and mount namespace."""

    def __init__(self, layout: StormLayout, shutdown_sleep: float, log_path: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.supervisor = simulate.SupervisorProcess(
            layout, shutdown_sleep, pid_namespace=True, stderr=self._log
        )
        try:
            self.supervisor.start()
        except simulate.SupervisorError:
            self._log.close()
            raise

    @property
    def init_pid(self) -> int:
        """Host pid of the namespace's PID 1, the supervisor."""
        assert self.supervisor.pid is not None
        return self.supervisor.pid

    @property
    def inode(self) -> int:
        """Inode number of the namespace, as os.stat("/proc/PID/ns/pid").st_ino shows it."""
        assert self.supervisor.namespace_inode is not None
        return self.supervisor.namespace_inode

    def host_pid(self, namespace_pid: int) -> int | None:
        return self.supervisor.host_pid(namespace_pid)

    def log_text(self) -> str:
        """The supervisor's log so far, including its "Worker Process ... exited with code" lines."""
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, errors="replace") as file:
            return file.read()

    def signal_supervisor(self, signum: int = signal.SIGTERM) -> bool:
        """Send ``signum`` to the supervisor, as the container runtime does when a pod stops.

        The supervisor exits with 128 + signum and leaves its workers alone, so the
        kernel then SIGKILLs every other process of the namespace.
        """
        identity = self.supervisor.identity
        return identity is not None and simulate.signal_identity(identity, signum)

    def kill(self) -> None:
        """SIGKILL PID 1, which makes the kernel kill every process in the namespace."""
        self.supervisor.kill()
        self._log.close()


@dataclass
class WorkerTree:
    """One started worker tree. Pids are host pids, and ``namespace_pids`` maps them to namespace pids."""

    spec: simulate.WorkerSpec
    layout: StormLayout
    logwriter_pid: int
    worker_pid: int
    child_pids: list[int]
    unregistered_pids: list[
        int
    ]  # processes in the tree at start that are neither registered nor the LogWriter
    namespace: PidNamespace | None = None
    namespace_pids: dict[int, int] = field(default_factory=dict)
    logwriter_process: subprocess.Popen | None = None
    exit_watch: ExitWatch | None = None
    identities: set[ProcessIdentity] = field(default_factory=set)
    shutdown_sleep: float = DEFAULT_SHUTDOWN_SLEEP

    @property
    def topology_id(self) -> bytes:
        return os.fsencode(self.spec.topology_id)

    @property
    def worker_id(self) -> str:
        return self.spec.worker_id

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def behaviour(self) -> str:
        return self.spec.settings.behaviour

    @property
    def pids_dir(self) -> str:
        """The worker's pids directory; the namespaced supervisor removes it once the worker is stopped."""
        return self.layout.pids_dir(self.spec.worker_id)

    @property
    def resources_dir(self) -> str:
        return self.layout.resources_dir(self.spec.topology_id)

    @property
    def worker_log(self) -> str:
        """The LogWriter's copy of the worker's stdout and stderr."""
        return os.path.join(
            self.layout.artifacts_port_dir(self.spec.topology_id, self.spec.port), "worker.log"
        )

    def registered_pids(self) -> list[int]:
        """Return the pids in the pids directory now, which are namespace pids in a namespace."""
        return simulate.read_pids_dir(self.pids_dir)

    def host_pids(self) -> list[int]:
        """LogWriter, worker, registered children and unregistered processes, as started."""
        return [self.logwriter_pid, self.worker_pid, *self.child_pids, *self.unregistered_pids]

    def stop(self, shutdown_sleep: float | None = None, timeout: float = 30.0) -> Termination:
        """Stop the worker as Storm's supervisor does, wait until it is gone and return the ground truth."""
        sleep = self.shutdown_sleep if shutdown_sleep is None else shutdown_sleep
        if self.namespace is not None:
            return self._stop_in_namespace(sleep, timeout)
        report = simulate.stop_worker_processes(self.pids_dir, sleep, _run_command)
        return Termination(
            request_time=report.request_time,
            worker_exit_time=self._wait_worker_exit(timeout),
            logwriter_returncode=self._wait_logwriter(timeout),
            kills=tuple(report.kills),
        )

    def wait_exit(self, timeout: float = 10.0) -> Termination:
        """Wait for a worker that ends with no request, such as ``crash``, without any kill command."""
        return Termination(
            request_time=None,
            worker_exit_time=self._wait_worker_exit(timeout),
            logwriter_returncode=self._wait_logwriter(timeout),
        )

    def kill(self) -> None:
        """SIGKILL every process of the tree, by pid and start time, including reparented ones."""
        root = simulate.process_identity(self.logwriter_pid)
        if root is not None and root not in self.identities:
            root = None  # the LogWriter's pid was reused
        simulate.kill_process_tree(root, self.identities)
        if self.logwriter_process is not None:
            try:
                self.logwriter_process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass

    def _stop_in_namespace(self, shutdown_sleep: float, timeout: float) -> Termination:
        assert self.namespace is not None
        supervisor = self.namespace.supervisor
        worker_id = self.spec.worker_id
        start = len(supervisor.events())
        supervisor.stop(worker_id, shutdown_sleep)
        stopped = supervisor.wait_event(
            lambda event: event["event"] in ("stopped", "stop_failed")
            and event.get("worker_id") == worker_id,
            timeout,
            start,
        )
        if stopped is None:
            raise TimeoutError(f"supervisor did not finish stopping worker {worker_id} within {timeout} s")
        if stopped[1]["event"] == "stop_failed":
            raise RuntimeError(f"supervisor failed to stop worker {worker_id}: {stopped[1].get('message')}")
        kills = tuple(
            KillCommand(event["started"], event["signal"], event["pid"], event["returncode"], event["finished"])
            for event in supervisor.events(start)
            if event["event"] == "kill" and event.get("worker_id") == worker_id
        )
        return Termination(
            request_time=kills[0].time if kills else None,
            worker_exit_time=self._wait_worker_exit(timeout),
            logwriter_returncode=self._wait_logwriter(timeout),
            kills=kills,
        )

    def _wait_worker_exit(self, timeout: float) -> float | None:
        return None if self.exit_watch is None else self.exit_watch.wait(timeout)

    def _wait_logwriter(self, timeout: float) -> int | None:
        if self.logwriter_process is not None:
            try:
                return self.logwriter_process.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        assert self.namespace is not None
        worker_id = self.spec.worker_id
        found = self.namespace.supervisor.wait_event(
            lambda event: event["event"] == "exited" and event.get("worker_id") == worker_id, timeout
        )
        return None if found is None else os.waitstatus_to_exitcode(found[1]["status"])


class StormTrees:
    """Factory of worker trees that cleans every process, namespace and directory up on close."""

    def __init__(self, base_dir: str | None = None, shutdown_sleep: float = DEFAULT_SHUTDOWN_SLEEP) -> None:
        self._temporary = base_dir is None
        self.base_dir = (
            tempfile.mkdtemp(prefix="stormtree-") if base_dir is None else os.path.abspath(base_dir)
        )
        os.makedirs(self.base_dir, exist_ok=True)
        self.layout = StormLayout(self.base_dir)
        self.shutdown_sleep = shutdown_sleep
        self.supervisor_id = simulate.new_supervisor_id()
        self.trees: list[WorkerTree] = []
        self.namespaces: list[PidNamespace] = []

    def __enter__(self) -> StormTrees:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def namespace(self, shutdown_sleep: float | None = None) -> PidNamespace:
        """Start a supervisor as PID 1 of a new PID namespace, which needs root."""
        sleep = self.shutdown_sleep if shutdown_sleep is None else shutdown_sleep
        log_path = os.path.join(self.base_dir, f"supervisor-{len(self.namespaces) + 1}.log")
        namespace = PidNamespace(self.layout, sleep, log_path)
        self.namespaces.append(namespace)
        return namespace

    def start(
        self,
        behaviour: str = "graceful",
        topology_id: str | bytes | None = None,
        *,
        port: int = simulate.FIRST_SLOT_PORT,
        worker_id: str | None = None,
        children: int = 1,
        hook_secs: float = 0.2,
        halt_secs: float = 1.0,
        crash_secs: float = 2.0,
        leftover_secs: float = 10.0,
        pid_namespace: bool | PidNamespace = False,
        timeout: float = 10.0,
    ) -> WorkerTree:
        """Start a worker tree and return it once the worker and its children registered their pids.

        ``topology_id`` may be bytes that are not UTF-8. The default is a new
        ``wordcount-N-<now>``. ``pid_namespace=True`` starts a new namespace for this
        tree, and a PidNamespace from ``namespace()`` puts the tree in that one.
        """
        if topology_id is None:
            topology_id = f"wordcount-{next(_topology_counter)}-{int(time.time())}"
        settings = WorkerSettings(
            behaviour=behaviour,
            hook_secs=hook_secs,
            halt_secs=halt_secs,
            crash_secs=crash_secs,
            leftover_secs=leftover_secs,
            children=children,
        )
        spec = simulate.WorkerSpec(
            topology_id=topology_id,  # type: ignore[arg-type]  # bytes are decoded by WorkerSpec
            port=port,
            worker_id=worker_id or str(uuid.uuid4()),
            settings=settings,
        )
        namespace = self.namespace() if pid_namespace is True else pid_namespace or None
        if namespace is None:
            tree = self._start_here(spec, timeout)
        else:
            tree = self._start_in_namespace(spec, namespace, timeout)
        tree.shutdown_sleep = namespace.supervisor.shutdown_sleep if namespace else self.shutdown_sleep
        return tree

    def close(self) -> None:
        """SIGKILL every tree and namespace, check that nothing is left and remove the directory.

        Raises RuntimeError naming the processes that survived.
        """
        for tree in self.trees:
            tree.kill()
        for namespace in self.namespaces:
            namespace.kill()
        identities = set().union(*(tree.identities for tree in self.trees)) if self.trees else set()
        remaining = wait_gone(identities, timeout=5.0)
        self.trees.clear()
        self.namespaces.clear()
        if self._temporary:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if remaining:
            raise RuntimeError(f"processes of the test's worker trees survived SIGKILL: {remaining}")

    def _start_here(self, spec: simulate.WorkerSpec, timeout: float) -> WorkerTree:
        simulate.localize(spec, self.layout)
        command = simulate.logwriter_command(spec, self.layout, self.supervisor_id)
        log_path = os.path.join(self.base_dir, f"logwriter-{spec.worker_id}.log")
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command.args,
                executable=command.executable,
                cwd=command.cwd,
                env=command.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        tree = WorkerTree(spec, self.layout, process.pid, 0, [], [], logwriter_process=process)
        self.trees.append(tree)
        _remember(tree, [process.pid])
        worker_pid, child_pids = simulate.wait_registered(
            self.layout.pids_dir(spec.worker_id), process.pid, spec.settings.children, timeout
        )
        tree.worker_pid, tree.child_pids = worker_pid, child_pids
        _watch_and_snapshot(tree)
        return tree

    def _start_in_namespace(
        self, spec: simulate.WorkerSpec, namespace: PidNamespace, timeout: float
    ) -> WorkerTree:
        supervisor = namespace.supervisor
        start = len(supervisor.events())
        supervisor.launch(spec)
        launched = supervisor.wait_event(
            lambda event: event["event"] in ("launched", "error")
            and event.get("worker_id", spec.worker_id) == spec.worker_id,
            timeout,
            start,
        )
        if launched is None or launched[1]["event"] == "error":
            raise RuntimeError(f"namespaced supervisor did not launch worker {spec.worker_id}: {launched}")
        logwriter_nspid = launched[1]["logwriter_pid"]

        registered = supervisor.wait_event(
            lambda event: event["event"] in ("registered", "registration_failed")
            and event.get("worker_id") == spec.worker_id,
            timeout,
            start,
        )
        if registered is None or registered[1]["event"] == "registration_failed":
            raise RuntimeError(f"worker {spec.worker_id} did not register in the namespace: {registered}")
        worker_nspid = registered[1]["worker_pid"]
        child_nspids = registered[1]["child_pids"]
        hosts = supervisor.host_pids([logwriter_nspid, worker_nspid, *child_nspids])
        if None in hosts.values():
            raise RuntimeError(
                f"no host pid found for some namespace pids (namespace pid: host pid): {hosts}"
            )

        tree = WorkerTree(
            spec,
            self.layout,
            logwriter_pid=hosts[logwriter_nspid],
            worker_pid=hosts[worker_nspid],
            child_pids=[hosts[pid] for pid in child_nspids],
            unregistered_pids=[],
            namespace=namespace,
            namespace_pids={host: nspid for nspid, host in hosts.items()},
        )
        self.trees.append(tree)
        _watch_and_snapshot(tree)
        return tree


def _watch_and_snapshot(tree: WorkerTree) -> None:
    try:
        tree.exit_watch = ExitWatch(tree.worker_pid)
    except ProcessLookupError:
        tree.exit_watch = None  # the worker already exited
    descendants = simulate.descendant_pids(tree.logwriter_pid)
    registered = {tree.worker_pid, *tree.child_pids}
    tree.unregistered_pids = [
        pid for pid in descendants if pid not in registered and simulate.process_alive(pid)
    ]
    _remember(tree, [tree.logwriter_pid, *descendants])


def _remember(tree: WorkerTree, pids: Iterable[int]) -> None:
    for pid in pids:
        identity = simulate.process_identity(pid)
        if identity is not None:
            tree.identities.add(identity)


def _run_command(args: list[str]) -> int:
    return subprocess.run(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ).returncode


def alive_pids(pids: Iterable[int | ProcessIdentity]) -> list[int]:
    """Return the pids that still run and are not zombies. An identity also has to match its start time."""
    alive = []
    for item in pids:
        if isinstance(item, ProcessIdentity):
            if simulate.identity_alive(item):
                alive.append(item.pid)
        elif simulate.process_alive(item):
            alive.append(item)
    return sorted(alive)


def wait_gone(pids: Iterable[int | ProcessIdentity], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs, zombies counting as gone, and return those alive at the timeout."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        alive = alive_pids(pids)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.01)


def read_cmdline(pid: int) -> list[bytes]:
    """Return the argv of ``pid`` from /proc/PID/cmdline, element by element."""
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read().rstrip(b"\0").split(b"\0")


def thread_names(pid: int) -> list[str]:
    """Return the native names of the threads of ``pid`` from /proc/PID/task/*/comm."""
    names = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task")):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as file:
                names.append(file.read().rstrip("\n"))
        except FileNotFoundError:
            continue
    return names


def namespace_pid(host_pid: int) -> int:
    """Return the pid of ``host_pid`` in its innermost PID namespace (last NSpid field)."""
    with open(f"/proc/{host_pid}/status") as file:
        for line in file:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise ValueError(f"/proc/{host_pid}/status has no NSpid line")


def processes_in_dir(directory: str) -> list[int]:
    """Return the pids whose argv mentions ``directory`` or whose working directory is inside it."""
    directory = os.path.abspath(directory)
    encoded = os.fsencode(directory)
    found = []
    for pid in simulate.list_pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                argv = file.read()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if not simulate.process_alive(pid):
            continue
        if encoded in argv or cwd == directory or cwd.startswith(directory + os.sep):
            found.append(pid)
    return sorted(found)


@pytest.fixture
def storm_trees():
    """A StormTrees with a 0.5 s supervisor shutdown sleep, cleaned up after the test."""
    with StormTrees() as trees:
        yield trees
