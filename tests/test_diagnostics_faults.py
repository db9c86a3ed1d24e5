"""Faults and hostile input for the diagnosis, with real processes wherever possible.

Processes exit, are reused or turn into zombies while a diagnosis reads them.
Containers put FIFOs, symlinks, huge files and odd bytes where the diagnosis
reads. Workers have hundreds of threads, listeners in other network namespaces
and secrets in their argv and environment. The diagnosis must keep to the
processes it snapshotted, never hang or raise, and never print argv.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import sigstate
from exporter.diagnostics import Diagnoser, Diagnosis, Snapshot, WorkerReport, take_snapshot
from exporter.diagreport import to_json, to_text
from exporter.events import ScanCompleted
from exporter.procfs import ProcFS
from exporter.tracker import Tracker
from tests.holder import INTERPRETER, INTERPRETER_HOME
from tests.misconfig import ARBITRARY_UID, Node, node  # noqa: F401
from tests.servers import REPO, ExporterProcess, free_port, http_get
from tests.stormargv import logwriter_argv, supervisor_argv, worker_argv
from tests.stormtree import wait_gone

SPEC_VARIABLE = "STORM_FAULT_SPEC"

# A worker-like process. It is started with a Storm argv (the script path after
# argv[0]) and reads what to do from the JSON in $STORM_FAULT_SPEC:
#   sigterm            handle | ignore | default | block (in the main thread)
#   netns              enter a new network namespace first
#   listen             [[host, port], ...] to LISTEN on, IPv6 only for a host with ":"
#   flap               [host, port] to listen on and close again in a loop
#   threads            idle threads to start; the first "unblocked_threads" of
#                      them unblock SIGTERM for themselves
#   children           [{"argv": [...], "spec": {...}, "cwd": "/dir"}, ...]
#   exit_with_child    exit when the first child exits, as Storm's LogWriter does
#   comm               a new comm, set with prctl(PR_SET_NAME)
#   root, cwd_in_root  chroot there once everything else is set up
# When set up, it prints one JSON line {"pid": ..., "children": [...]} with the
# same document of every child, so the caller learns the pids of the whole tree.
PROGRAM = r'''
import ctypes, json, os, signal, socket, subprocess, sys, threading, time

spec = json.loads(os.environ.pop("STORM_FAULT_SPEC"))
libc = ctypes.CDLL(None, use_errno=True)


def check(result, what):
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, what + ": " + os.strerror(error))


mode = spec.get("sigterm", "handle")
if mode == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode == "handle":
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(143))
elif mode == "block":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
if spec.get("netns"):
    check(libc.unshare(0x40000000), "unshare(CLONE_NEWNET)")


def listener(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen()
    return sock


listeners = [listener(host, port) for host, port in spec.get("listen", [])]


def flap(host, port):
    while True:
        listener(host, port).close()


def idle(unblock):
    if unblock:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    while True:
        time.sleep(3600)


if spec.get("flap"):
    threading.Thread(target=flap, args=tuple(spec["flap"]), daemon=True).start()
for index in range(spec.get("threads", 0)):
    unblock = index < spec.get("unblocked_threads", 0)
    threading.Thread(target=idle, args=(unblock,), daemon=True).start()
children, documents = [], []
for child in spec.get("children", []):
    environment = dict(os.environ, STORM_FAULT_SPEC=json.dumps(child["spec"]))
    process = subprocess.Popen(
        [child["argv"][0], __file__, *child["argv"][1:]], executable=os.readlink("/proc/self/exe"),
        env=environment, cwd=child.get("cwd"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    )
    children.append(process)
    documents.append(json.loads(process.stdout.readline()))
if spec.get("comm"):
    check(libc.prctl(15, spec["comm"].encode(), 0, 0, 0), "prctl(PR_SET_NAME)")
if spec.get("root"):
    os.chroot(spec["root"])
    os.chdir(spec.get("cwd_in_root", "/"))
print(json.dumps({"pid": os.getpid(), "children": documents}), flush=True)
while True:
    codes = [child.poll() for child in children]
    if spec.get("exit_with_child") and codes and codes[0] is not None:
        os._exit(codes[0] if codes[0] >= 0 else 128 - codes[0])
    time.sleep(0.05)
'''


class Tree:
    """Host pids of one started tree; ``pids`` lists every process in it."""

    def __init__(self, document: dict, topology: str, worker_id: str, port: int) -> None:
        self.document = document
        self.topology = topology
        self.worker_id = worker_id
        self.port = port
        self.pids = _all_pids(document)

    def pid(self, *path: int) -> int:
        """Return the pid at ``path`` of child indexes, () for the top process."""
        document = self.document
        for index in path:
            document = document["children"][index]
        return document["pid"]


def _all_pids(document: dict) -> list[int]:
    pids = [document["pid"]]
    for child in document["children"]:
        pids.extend(_all_pids(child))
    return pids


class Processes:
    """Starts PROGRAM trees for one test; the Node fixture SIGKILLs them all at the end."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.script = os.path.join(node.directory, "worker_like.py")
        Path(self.script).write_text(PROGRAM)
        os.chmod(self.script, 0o644)

    def start(self, argv: list[str], spec: dict, *, cwd: str | None = None,
              environment: dict | None = None) -> dict:
        """Start one process (and its children) and return its ready document."""
        variables = dict(os.environ, **(environment or {}))
        variables[SPEC_VARIABLE] = json.dumps(spec)
        variables["PYTHONHOME"] = INTERPRETER_HOME
        process = subprocess.Popen(
            [argv[0], self.script, *argv[1:]], executable=INTERPRETER, env=variables, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        )
        self.node.processes.append(process)
        self.node.pids.add(process.pid)
        line = process.stdout.readline()
        process.stdout.close()
        if not line:
            raise RuntimeError(f"process {argv[:3]} exited with {process.wait(timeout=10)} before it was ready")
        document = json.loads(line)
        self.node.pids.update(_all_pids(document))
        return document

    def worker(self, topology: str, spec: dict | None = None, *, port: int | None = None,
               worker_id: str | None = None, cwd: str | None = None,
               extra_argv: tuple[str, ...] = (), environment: dict | None = None) -> Tree:
        """Start a lone worker JVM look-alike, without LogWriter and supervisor."""
        worker_id = worker_id or str(uuid.uuid4())
        port = port or free_port()
        argv = _with_options(worker_argv(topology, worker_id, port), extra_argv)
        document = self.start(argv, spec or {}, cwd=cwd, environment=environment)
        return Tree(document, topology, worker_id, port)

    def tree(self, topology: str, worker_spec: dict | None = None, *, port: int | None = None,
             worker_id: str | None = None, cwd: str | None = None,
             extra_argv: tuple[str, ...] = (), environment: dict | None = None) -> Tree:
        """Start supervisor -> LogWriter -> worker; the worker is pid(0, 0)."""
        worker_id = worker_id or str(uuid.uuid4())
        port = port or free_port()
        worker = {"argv": _with_options(worker_argv(topology, worker_id, port), extra_argv),
                  "spec": worker_spec or {}, "cwd": cwd}
        logwriter = {"argv": _with_options(logwriter_argv(topology, worker_id, port), extra_argv),
                     "spec": {"children": [worker], "exit_with_child": True}, "cwd": cwd}
        document = self.start(supervisor_argv(), {"children": [logwriter]}, environment=environment)
        return Tree(document, topology, worker_id, port)


def _with_options(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """Insert JVM options after the executable, before the main class."""
    return [argv[0], *options, *argv[1:]]


@pytest.fixture
def processes(node):
    return Processes(node)


class Scanner:
    """A tracker fed by full scans of this machine's /proc, as `diagnose` builds one."""

    def __init__(self) -> None:
        self.proc = ProcFS()
        self.tracker = Tracker(
            leftover_grace=0.0, settle=0.0,
            lookup=self.proc.read_info, read_cwd=self.proc.read_cwd,
            read_cgroup=self.proc.read_cgroup, host_pidns=self.proc.read_pidns(1),
        )

    def snapshot(self) -> Snapshot:
        self.tracker.handle(ScanCompleted(time=time.monotonic(), processes=self.proc.scan()))
        self.tracker.tick()
        return take_snapshot(self.tracker)

    def diagnose(self, snapshot: Snapshot | None = None) -> Diagnosis:
        return Diagnoser(self.proc).diagnose(snapshot or self.snapshot())


def report_of(diagnosis: Diagnosis, worker_pid: int) -> WorkerReport:
    found = [r for r in diagnosis.workers if r.snapshot.worker.pid == worker_pid]
    assert len(found) == 1, f"worker {worker_pid} not diagnosed once: {found}"
    return found[0]


def codes(report: WorkerReport) -> list[str]:
    return sorted(finding.code for finding in report.findings)


def topology_name(kind: str) -> str:
    return f"fault-{kind}-{next(_counter)}-{int(time.time())}"


def _counter_values():
    value = 0
    while True:
        value += 1
        yield value


_counter = _counter_values()


def run_diagnose(*flags: str, limit_memory: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if limit_memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_memory, limit_memory))

    return subprocess.run(
        [sys.executable, "-m", "exporter", "diagnose", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=60, preexec_fn=limit,
    )


def diagnose_in_thread(diagnoser: Diagnoser, snapshot: Snapshot, timeout: float) -> Diagnosis | None:
    """Run one diagnosis on a daemon thread; None when it is still running after ``timeout``."""
    result: list[Diagnosis] = []
    thread = threading.Thread(target=lambda: result.append(diagnoser.diagnose(snapshot)), daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else None


def start_with_pid(pid: int, argv: list[str], preexec_fn=None, attempts: int = 200) -> subprocess.Popen:
    """Start a process that gets ``pid``, by setting the kernel's last allocated pid.

    Other processes of the machine may take the pid first, so this retries.
    """
    for _ in range(attempts):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)
        if process.pid == pid:
            return process
        process.kill()
        process.wait()
    raise RuntimeError(f"could not start a process with pid {pid} in {attempts} attempts")


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"{what} not met after {timeout}s")


def kill_and_wait(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert wait_gone(pids, timeout=5.0) == []


def snapshot_pids(snapshot: Snapshot) -> set[int]:
    """Every pid the snapshot names, for checking that findings stay within it."""
    pids = set()
    for worker in snapshot.workers:
        views = [worker.worker, worker.logwriter, worker.supervisor, worker.init, *worker.children]
        pids.update(view.pid for view in views if view is not None)
        pids.update(failure.target_pid for failure in worker.kill_failures)
    for group in snapshot.leftovers:
        pids.update(process.pid for process in group.processes)
    return pids


# Processes that exit, are reused or become zombies while they are read.


def test_reused_pid_gets_no_finding(node, processes):
    tree = processes.tree(topology_name("reuse"))
    worker, logwriter = tree.pid(0, 0), tree.pid(0)
    scanner = Scanner()
    snapshot = scanner.snapshot()
    assert report_of(scanner.diagnose(snapshot), worker).findings == []
    # The LogWriter reaps its worker and exits with it, and the supervisor reaps the LogWriter.
    os.kill(worker, signal.SIGKILL)
    for pid in (worker, logwriter):
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what=f"pid {pid} reaped")

    def ignore_sigterm_as_unknown_user() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.setgroups([])
        os.setresgid(ARBITRARY_UID, ARBITRARY_UID, ARBITRARY_UID)
        os.setresuid(ARBITRARY_UID, ARBITRARY_UID, ARBITRARY_UID)

    strangers = []
    for pid in (worker, logwriter):
        stranger = start_with_pid(pid, ["sleep", "60"], preexec_fn=ignore_sigterm_as_unknown_user)
        node.processes.append(stranger)
        node.pids.add(stranger.pid)
        strangers.append(stranger)
    for stranger in strangers:
        wait_for(lambda: sigstate.signal_disposition(ProcFS(), stranger.pid) == "ignored",
                 what=f"pid {stranger.pid} ignoring SIGTERM")
    # The same pids now belong to processes that ignore SIGTERM and run as a
    # user without a passwd entry. None of that is true of the snapshotted tree.
    diagnosis = scanner.diagnose(snapshot)
    report = report_of(diagnosis, worker)
    assert report.findings == []
    assert report.worker.disposition is None
    assert report.worker.user_known is None
    assert report.logwriter is not None
    assert report.logwriter.disposition is None
    assert not report.verdict.startswith("ok"), report.verdict
    entry = next(w for w in to_json(diagnosis, time.monotonic())["workers"] if w["pid"] == worker)
    assert entry["findings"] == []
    assert entry["processes"][0]["sigterm"] == "unknown"


def test_vanished_logwriter_and_supervisor(processes):
    tree = processes.tree(topology_name("vanish"), {"sigterm": "ignore"})
    worker = tree.pid(0, 0)
    scanner = Scanner()
    snapshot = scanner.snapshot()
    # The worker lives on, reparented, after its LogWriter and supervisor are gone.
    kill_and_wait(tree.pid(), tree.pid(0))
    report = report_of(scanner.diagnose(snapshot), worker)
    assert codes(report) == ["sigterm_ignored"]
    assert report.logwriter is not None
    assert report.logwriter.disposition is None
    assert report.supervisor is not None
    assert report.supervisor.disposition is None
    assert report.signal_permitted is None


def test_zombie_worker_is_not_diagnosed_as_healthy(node, processes):
    tree = processes.tree(topology_name("zombie"), {"sigterm": "ignore"})
    worker, logwriter = tree.pid(0, 0), tree.pid(0)
    scanner = Scanner()
    snapshot = scanner.snapshot()
    # A stopped LogWriter cannot reap its worker, which stays a zombie.
    os.kill(logwriter, signal.SIGSTOP)
    try:
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                 what=f"worker {worker} a zombie")
        report = report_of(scanner.diagnose(snapshot), worker)
        assert report.findings == []
        assert report.worker.disposition is None
        assert not report.verdict.startswith("ok"), report.verdict
        # A new scan takes the zombie for exited.
        assert worker not in [r.snapshot.worker.pid for r in scanner.diagnose().workers]
    finally:
        os.kill(logwriter, signal.SIGCONT)


def test_trees_killed_during_diagnosis(node, processes):
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        # Kill each tree in another order: worker, LogWriter, supervisor, all at once.
        rounds = 0
        try:
            while not stop.is_set():
                tree = processes.tree(topology_name("churn"), {"sigterm": "ignore", "threads": 20,
                                                               "children": [{"argv": ["python3", "x.py"],
                                                                             "spec": {}}]})
                order = [tree.pid(0, 0), tree.pid(0), tree.pid(), tree.pid(0, 0, 0)]
                victims = [order[rounds % 3]] if rounds % 4 != 3 else order
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
                kill_and_wait(*tree.pids)
                rounds += 1
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    scanner = Scanner()
    diagnoser = Diagnoser(scanner.proc)
    rounds = 0
    deadline = time.monotonic() + 3.0
    try:
        while time.monotonic() < deadline:
            snapshot = scanner.snapshot()
            for _ in range(3):
                diagnosis = diagnoser.diagnose(snapshot)
                allowed = snapshot_pids(snapshot)
                for report in diagnosis.workers:
                    for finding in report.findings:
                        assert finding.pid is None or finding.pid in allowed, finding
                to_text(diagnosis)
                json.dumps(to_json(diagnosis, time.monotonic()))
                rounds += 1
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not errors, errors
    assert rounds > 10


# Hostile files in Storm's worker directory, which the worker's own user controls.


def storm_local_dir(node: Node, worker_id: str) -> tuple[str, str]:
    """Create <storm.local.dir>/workers/<id>/pids and workers-users/; return (local, worker dir)."""
    local = os.path.join(node.directory, f"storm-local-{node._name()}")
    worker_dir = os.path.join(local, "workers", worker_id)
    os.makedirs(os.path.join(worker_dir, "pids"))
    os.makedirs(os.path.join(local, "workers-users"))
    return local, worker_dir


def make_user_file(kind: str, path: str, outside: str) -> None:
    """Create workers-users/<id> as ``kind``; ``outside`` is a file that names user foo."""
    if kind == "regular":
        Path(path).write_text("foo\n")
    elif kind == "symlink":
        # Like a link to /etc/shadow, but to a file whose content passes for a user name.
        os.symlink(outside, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        with open(path, "wb") as file:
            file.write(b"foo\n")
            file.truncate(1 << 36)  # sparse, 64 GiB
    elif kind == "non_utf8":
        Path(path).write_bytes(b"f\xff\xfeo\n")
    elif kind == "directory":
        os.mkdir(path)


@pytest.mark.parametrize(("kind", "mismatch"), [
    ("regular", True),  # the control: the worker runs as root, the file names foo
    ("symlink", False),
    ("fifo", False),
    ("huge", True),  # only the first line is read
    ("non_utf8", False),
    ("directory", False),
])
def test_hostile_worker_user_file(node, processes, kind, mismatch):
    worker_id = str(uuid.uuid4())
    local, worker_dir = storm_local_dir(node, worker_id)
    outside = os.path.join(node.directory, "outside-user-file")
    Path(outside).write_text("foo\n")
    user_file = os.path.join(local, "workers-users", worker_id)
    make_user_file(kind, user_file, outside)
    tree = processes.worker(topology_name(kind), worker_id=worker_id, cwd=worker_dir)
    snapshot = Scanner().snapshot()
    diagnosis = diagnose_in_thread(Diagnoser(ProcFS()), snapshot, timeout=10.0)
    if diagnosis is None and kind == "fifo":
        # Release the diagnosis thread, which waits in open() for a writer.
        os.close(os.open(user_file, os.O_WRONLY | os.O_NONBLOCK))
    assert diagnosis is not None, f"the diagnosis hangs on a workers-users file of kind {kind}"
    report = report_of(diagnosis, tree.pid())
    assert report.worker.user == "root"
    assert ("user_mismatch" in codes(report)) is mismatch
    # No pid file in pids/, whatever the user file is.
    assert "pid_file_missing" in codes(report)


def test_pids_directory_symlink_not_followed(node, processes):
    worker_id = str(uuid.uuid4())
    _, worker_dir = storm_local_dir(node, worker_id)
    elsewhere = os.path.join(node.directory, "other-pids")
    os.mkdir(elsewhere)
    os.rmdir(os.path.join(worker_dir, "pids"))
    os.symlink(elsewhere, os.path.join(worker_dir, "pids"))
    tree = processes.worker(topology_name("pids-link"), worker_id=worker_id, cwd=worker_dir)
    report = report_of(Scanner().diagnose(), tree.pid())
    # The directory behind the link has no pid file, but it is not the worker's own.
    assert report.findings == []


@pytest.mark.parametrize("worker_id", ["nested/id", ".."])
def test_worker_id_with_path_characters(node, processes, worker_id):
    local = os.path.join(node.directory, "storm-local")
    worker_dir = os.path.normpath(os.path.join(local, "workers", worker_id))
    os.makedirs(os.path.join(worker_dir, "pids"), exist_ok=True)
    os.makedirs(os.path.join(local, "workers-users", "nested"))
    # A user file where "workers-users/<id>" would lead, if the id were used as a path.
    Path(local, "workers-users", "nested", "id").write_text("foo\n")
    tree = processes.worker(topology_name("id-path"), worker_id=worker_id, cwd=worker_dir)
    report = report_of(Scanner().diagnose(), tree.pid())
    assert report.snapshot.worker_id == worker_id
    assert "user_mismatch" not in codes(report)


def test_deleted_working_directory(node, processes):
    worker_id = str(uuid.uuid4())
    _, worker_dir = storm_local_dir(node, worker_id)
    tree = processes.worker(topology_name("deleted-cwd"), worker_id=worker_id, cwd=worker_dir)
    os.rmdir(os.path.join(worker_dir, "pids"))
    os.rmdir(worker_dir)
    assert os.readlink(f"/proc/{tree.pid()}/cwd").endswith(" (deleted)")
    report = report_of(Scanner().diagnose(), tree.pid())
    assert report.findings == []
    assert report.worker.disposition == "handled"


# Hostile /etc/passwd files in a worker's own root.


def make_root(node: Node, passwd_kind: str, host_file: str) -> str:
    """Create a root directory whose etc/passwd is of ``passwd_kind``."""
    root = os.path.join(node.directory, f"root-{node._name()}")
    os.makedirs(os.path.join(root, "etc"))
    path = os.path.join(root, "etc", "passwd")
    if passwd_kind == "symlink_outside":
        # Climbs above the root, towards a file that has an entry for the worker's uid.
        os.symlink("../../../../../../../.." + host_file, path)
    elif passwd_kind == "fifo":
        os.mkfifo(path)
    elif passwd_kind == "large":
        line = b"user%07d:x:%d:%d::/home/user:/bin/sh\n"
        with open(path, "wb") as file:
            for start in range(0, 1_200_000, 100_000):
                file.write(b"".join(line % (i, i + 5000, i + 5000) for i in range(start, start + 100_000)))
            file.write(b"root:x:0:0::/root:/bin/sh\n")
    elif passwd_kind == "sparse":
        with open(path, "wb") as file:
            file.write(b"root:x:0:0::/root:/bin/sh\n")
            file.truncate(1 << 36)  # 64 GiB
    elif passwd_kind == "odd_lines":
        Path(path).write_bytes(
            b"\x1b[31mred:x:0:0::/:/bin/sh\n"  # the first entry of uid 0 wins, as in glibc
            b"root:x:0:0:root:/root:/bin/sh\n"
            b"::::::\n"
            b"nul\x00name:x:1:1::/:/bin/sh\n"
            b"huge:x:" + b"9" * 5000 + b":0::/:/bin/sh\n"  # more digits than int() converts
            b"long:x:2:2:" + b"g" * 1_000_000 + b":/:/bin/sh\n"
            b"\xff\xfe:x:3:3::/:/bin/sh\r\n"
            b"neg:x:-4:4::/:/bin/sh\n"
        )
    return root


@pytest.mark.parametrize(("kind", "resolvable"), [
    ("symlink_outside", "unknown"),
    ("fifo", "unknown"),
    ("large", "unknown"),
    ("odd_lines", True),
])
def test_hostile_passwd_in_worker_root(node, processes, kind, resolvable):
    host_file = os.path.join(node.directory, "host-passwd")
    Path(host_file).write_text("root:x:0:0::/root:/bin/sh\n")
    root = make_root(node, kind, host_file)
    tree = processes.worker(topology_name(kind), {"root": root})
    assert os.readlink(f"/proc/{tree.pid()}/root") == root
    snapshot = Scanner().snapshot()
    started = time.monotonic()
    diagnosis = diagnose_in_thread(Diagnoser(ProcFS()), snapshot, timeout=20.0)
    elapsed = time.monotonic() - started
    assert diagnosis is not None, f"the diagnosis hangs on an etc/passwd of kind {kind}"
    report = report_of(diagnosis, tree.pid())
    entry = next(w for w in to_json(diagnosis, time.monotonic())["workers"] if w["pid"] == tree.pid())
    assert entry["processes"][0]["user_resolvable"] == resolvable, f"{kind} took {elapsed:.2f}s"
    assert "user_unresolvable" not in codes(report)
    if kind == "odd_lines":
        assert report.worker.user == "\x1b[31mred"
        assert "\x1b" not in to_text(diagnosis)
        assert "\\x1b[31mred(0)" in to_text(diagnosis)


def test_sparse_passwd_is_not_read(node, processes):
    root = make_root(node, "sparse", "")
    tree = processes.worker(topology_name("sparse"), {"root": root})
    # Reading the 64 GiB file would exceed this address-space limit at once.
    result = run_diagnose("--format=json", limit_memory=1 << 30)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    entry = next(w for w in json.loads(result.stdout)["workers"] if w["pid"] == tree.pid())
    assert entry["processes"][0]["user_resolvable"] == "unknown"


def test_text_output_escapes_control_characters(node, processes):
    local = os.path.join(os.fsencode(node.directory), b"st\xffrm-local")
    worker_id = str(uuid.uuid4())
    worker_dir = os.path.join(local, b"workers", worker_id.encode())
    os.makedirs(os.path.join(worker_dir, b"pids"))
    topology = f"evil\n{os.getpid()}  6700  forged  root(0)  handled  ok-1-{int(time.time())}"
    child = {"argv": ["python3", "splitsentence.py"],
             "spec": {"sigterm": "ignore", "comm": "\x1b]0;owned\x07"}}
    tree = processes.worker(topology, {"children": [child]}, worker_id=worker_id, cwd=worker_dir)
    diagnosis = Scanner().diagnose()
    report = report_of(diagnosis, tree.pid())
    assert codes(report) == ["child_ignores_sigterm", "pid_file_missing"]
    text = to_text(diagnosis)
    lines = [line for line in text.splitlines() if line.startswith(f"{tree.pid()} ")]
    assert len(lines) == 1, text
    assert "evil\\x0a" in lines[0]
    assert f"\n{os.getpid()}  6700  forged" not in text
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\\udcff" in text  # the non-UTF-8 byte of the worker directory
    result = run_diagnose()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith(f"{tree.pid()} ")]) == 1


# Threads.


@pytest.mark.parametrize(("unblocked", "disposition", "code"), [
    (1, "default", "no_shutdown_hooks"),
    (0, "blocked", "sigterm_blocked"),
])
def test_one_thread_of_500_takes_sigterm(processes, unblocked, disposition, code):
    # The main thread blocks SIGTERM, and so do the threads that inherit its mask,
    # but the kernel delivers a process-directed SIGTERM to any thread that does not.
    tree = processes.worker(topology_name("threads"),
                            {"sigterm": "block", "threads": 499, "unblocked_threads": unblocked})
    pid = tree.pid()
    assert len(os.listdir(f"/proc/{pid}/task")) == 500
    report = report_of(Scanner().diagnose(), pid)
    assert report.worker.disposition == disposition
    assert codes(report) == [code]


# Ports.


def leftover_of(processes: Processes, scanner: Scanner, kind: str, child_spec: dict,
                port: int | None = None) -> tuple[Tree, int]:
    """Start a worker with one child, SIGKILL the worker, and return (tree, leftover pid)."""
    child = {"argv": ["python3", "splitsentence.py"], "spec": child_spec}
    tree = processes.worker(topology_name(kind), {"children": [child]}, port=port)
    scanner.snapshot()  # the child joins the worker's tree
    kill_and_wait(tree.pid())
    return tree, tree.pid(0)


def test_leftover_listening_on_ipv6_only(processes):
    scanner = Scanner()
    port = free_port()
    _, leftover = leftover_of(processes, scanner, "ipv6", {"listen": [["::1", port]]}, port=port)
    with open(f"/proc/{leftover}/net/tcp6") as table:
        assert f":{port:04X} 00000000000000000000000000000000:0000 0A" in table.read()
    snapshot = scanner.snapshot()
    assert [p.pid for group in snapshot.leftovers for p in group.processes if group.port == port] == [leftover]
    diagnosis = scanner.diagnose(snapshot)
    assert diagnosis.port_conflicts.get(port) == 1
    assert diagnosis.port_claimants[port] == [leftover]


def test_leftover_in_other_network_namespace(processes):
    scanner = Scanner()
    live_port = free_port()
    live = processes.worker(topology_name("live"), {"listen": [["127.0.0.1", live_port]]}, port=live_port)
    # This leftover listens on the live worker's port, but in a namespace of its own.
    _, elsewhere = leftover_of(processes, scanner, "netns",
                               {"netns": True, "listen": [["0.0.0.0", live.port]]})
    # And this one keeps its own worker's port in this namespace: a real conflict.
    own_port = free_port()
    _, here = leftover_of(processes, scanner, "own-port", {"listen": [["127.0.0.1", own_port]]},
                          port=own_port)
    assert os.readlink(f"/proc/{elsewhere}/ns/net") != os.readlink(f"/proc/{live.pid()}/ns/net")
    diagnosis = scanner.diagnose()
    assert live.port not in diagnosis.port_conflicts
    assert "port_conflict" not in codes(report_of(diagnosis, live.pid()))
    assert diagnosis.port_conflicts.get(own_port) == 1
    assert diagnosis.port_claimants[own_port] == [here]


def test_workers_exited_before_port_check(processes):
    # Two live workers on one port in different network namespaces do not
    # conflict; once both have exited, neither claims the port any more.
    port = free_port()
    first = processes.worker(topology_name("gone"), port=port)
    second = processes.worker(topology_name("gone"), {"netns": True}, port=port)
    scanner = Scanner()
    snapshot = scanner.snapshot()
    assert port not in scanner.diagnose(snapshot).port_conflicts
    kill_and_wait(first.pid(), second.pid())
    diagnosis = scanner.diagnose(snapshot)
    assert port not in diagnosis.port_conflicts
    assert codes(report_of(diagnosis, first.pid())) == []


def test_listener_closing_between_reads(processes):
    scanner = Scanner()
    port = free_port()
    _, leftover = leftover_of(processes, scanner, "flap", {"flap": ["127.0.0.1", port]}, port=port)
    snapshot = scanner.snapshot()
    diagnoser = Diagnoser(scanner.proc)
    counts = set()
    for _ in range(200):
        diagnosis = diagnoser.diagnose(snapshot)
        counts.add(diagnosis.port_conflicts.get(port, 0))
        assert diagnosis.port_claimants.get(port, [leftover]) == [leftover]
    assert counts <= {0, 1}


# The diagnose command.


@pytest.mark.parametrize(("flags", "message"), [
    (("--bogus",), "unrecognized arguments: --bogus"),
    (("--format=xml",), "invalid choice: 'xml'"),
    (("--path.procfs",), "expected one argument"),
    (("--path.procfs={tmp}/missing",), "--path.procfs={tmp}/missing: No such file or directory"),
    (("--path.procfs={tmp}/file",), "--path.procfs={tmp}/file: Not a directory"),
])
def test_diagnose_rejects_bad_flags(tmp_path, flags, message):
    (tmp_path / "file").write_text("not a proc mount\n")
    message = message.format(tmp=tmp_path)
    result = run_diagnose(*(flag.format(tmp=tmp_path) for flag in flags))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_diagnose_rejects_directory_without_processes(tmp_path):
    result = run_diagnose(f"--path.procfs={tmp_path}")
    assert result.returncode == 2
    assert "no process directories found" in result.stderr
    assert "No Storm worker JVMs found" not in result.stdout


# The running exporter: churn, secrets and label values.


SECRET = "s3cr3t"


def debug_workers(exporter: ExporterProcess) -> list[dict]:
    status, _, body = http_get(f"http://{exporter.address}/debug/workers")
    assert status == 200
    return json.loads(body)["workers"]


def test_exporter_under_churn_leaks_no_secret(node, processes):
    stop = threading.Event()
    errors: list[BaseException] = []
    secrets = {"extra_argv": (f"-Dsome.password={SECRET}",), "environment": {"SECRET_TOKEN": SECRET}}

    def churn() -> None:
        try:
            while not stop.is_set():
                tree = processes.tree(topology_name("churn"), {"sigterm": "ignore"}, **secrets)
                os.kill(tree.pid(0, 0), signal.SIGKILL)
                kill_and_wait(*tree.pids)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    with ExporterProcess("--diagnostics.interval=100ms", "--leftover.grace=1s") as exporter:
        exporter.wait_ready()
        topology = f'quote"d \\ back\nslash-1-{int(time.time())}'
        tree = processes.tree(topology, {"sigterm": "ignore"}, **secrets)
        labels = {"topology": topology, "role": "worker", "disposition": "ignored"}
        thread = threading.Thread(target=churn, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 3.0
            seen = None
            while time.monotonic() < deadline:
                # Parsing raises on an invalid exposition.
                families = list(text_string_to_metric_families(exporter.metrics_text()))
                assert families
                seen = exporter.value("storm_worker_sigterm_disposition", **labels) or seen
                debug_workers(exporter)
        finally:
            stop.set()
            thread.join(timeout=20)
        assert not errors, errors
        assert seen == 1
        # The diagnosis thread still runs: a tree started now is diagnosed.
        after = processes.tree(topology_name("after"), **secrets)
        wait_for(lambda: any(w["pid"] == after.pid(0, 0) for w in debug_workers(exporter)),
                 what="a diagnosis of a tree started after the churn")
        entry = next(w for w in debug_workers(exporter) if w["pid"] == tree.pid(0, 0))
        assert entry["topology"] == topology
        outputs = {
            "/metrics": exporter.metrics_text(),
            "/debug/workers": http_get(f"http://{exporter.address}/debug/workers")[2].decode(),
            "diagnose": run_diagnose().stdout,
            "diagnose --format=json": run_diagnose("--format=json").stdout,
        }
        log = exporter.output()
    assert "Tracking worker" in log  # the log is at debug level
    outputs["log"] = log
    for name, text in outputs.items():
        assert SECRET not in text, f"{name} contains a secret from a worker's argv or environment"
        assert "org.apache.storm" not in text, f"{name} contains a command line"
    assert "Traceback" not in log
    assert "Diagnosing the workers failed" not in log
