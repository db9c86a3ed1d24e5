"""Misconfigured Storm nodes built from real processes, users and namespaces.

``Node`` starts supervisor -> LogWriter -> worker -> children trees of
tests/holder.py processes, as other UIDs, with their own /etc/passwd in a
private mount namespace, or in a new PID namespace behind a chosen PID 1, and
SIGKILLs every one of them by pid at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.holder import INTERPRETER, INTERPRETER_HOME, SCRIPT, SPEC_VARIABLE, start_child
from tests.servers import free_port
from tests.stormargv import logwriter_argv, supervisor_argv, worker_argv
from tests.stormtree import wait_gone

STORM_UID = 1001
OTHER_UID = 2001
ARBITRARY_UID = 1000620005  # an OpenShift-style runAsUser with no passwd entry
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    f"storm:x:{STORM_UID}:{STORM_UID}::/home/storm:/bin/sh\n"
    f"foo:x:{OTHER_UID}:{OTHER_UID}::/home/foo:/bin/sh\n"
)


@dataclass
class Tree:
    topology: str
    worker_id: str
    port: int
    supervisor: int  # pids as this machine's /proc numbers them
    logwriter: int
    worker: int
    children: list[int]


class Node:
    """Real processes started for one test; every one is SIGKILLed by pid at the end."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.chmod(directory, 0o1777)  # holders write their ready files as other users
        self.processes: list[subprocess.Popen] = []
        self.pids: set[int] = set()
        self.names = 0

    def passwd(self, text: str = PASSWD) -> str:
        path = os.path.join(self.directory, f"passwd-{self._name()}")
        Path(path).write_text(text)
        os.chmod(path, 0o644)
        return path

    def _name(self) -> str:
        self.names += 1
        return str(self.names)

    def ready_path(self) -> str:
        return os.path.join(self.directory, f"ready-{self._name()}.json")

    def wait_ready(self, path: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(path):
                document = json.loads(Path(path).read_text())
                return document
            time.sleep(0.02)
        raise TimeoutError(f"no ready file {path} after {timeout}s")

    def tree(
        self,
        topology: str,
        *,
        worker_sigterm: str = "handle",
        worker_uid: int | None = None,
        supervisor_uid: int | None = None,
        passwd: str | None = None,
        supervisor_passwd: str | None = None,
        port: int | None = None,
        worker_id: str | None = None,
        cwd: str | None = None,
        listen: bool = False,
        children: int = 0,
        child_sigterm: str = "handle",
        child_listen: int | None = None,
        pid_file_dir: str | None = None,
    ) -> Tree:
        """Start supervisor -> LogWriter -> worker -> children, each a holder."""
        worker_id = worker_id or str(uuid.uuid4())
        port = port or free_port()
        ready = {name: self.ready_path() for name in ("supervisor", "logwriter", "worker")}
        child_ready = [self.ready_path() for _ in range(children)]
        child_specs = [
            {"argv": ["python3", "splitsentence.py"], "cwd": cwd,
             "spec": {"sigterm": child_sigterm, "listen": child_listen, "ready": path}}
            for path in child_ready
        ]
        worker = {
            "argv": worker_argv(topology, worker_id, port),
            "cwd": cwd,
            "spec": {"sigterm": worker_sigterm, "listen": port if listen else None,
                     "children": child_specs, "ready": ready["worker"], "pid_file_dir": pid_file_dir},
        }
        logwriter = {
            "argv": logwriter_argv(topology, worker_id, port),
            "uid": worker_uid,
            "passwd": passwd,
            "cwd": cwd,
            "spec": {"sigterm": "handle", "children": [worker], "ready": ready["logwriter"],
                     "exit_with_child": True},
        }
        supervisor = {
            "argv": supervisor_argv(),
            "passwd": supervisor_passwd,
            "spec": {"sigterm": "handle", "children": [logwriter], "drop_uid": supervisor_uid,
                     "ready": ready["supervisor"]},
        }
        self.processes.append(start_child(supervisor))
        pids = {name: self.wait_ready(path)["pid"] for name, path in ready.items()}
        kids = [self.wait_ready(path)["pid"] for path in child_ready]
        self.pids.update(pids.values())
        self.pids.update(kids)
        return Tree(topology, worker_id, port, pids["supervisor"], pids["logwriter"], pids["worker"], kids)

    def namespace(self, topology: str, init: list[str] | None, **options) -> Tree:
        """Start a supervisor tree in a new PID namespace.

        ``init`` is the PID 1 command, given the supervisor command as its last
        argument (a shell string); None makes the supervisor itself PID 1.
        """
        worker_id = str(uuid.uuid4())
        port = free_port()
        ready = {name: self.ready_path() for name in ("supervisor", "logwriter", "worker")}
        worker = {"argv": worker_argv(topology, worker_id, port),
                  "spec": {"sigterm": options.get("worker_sigterm", "handle"), "ready": ready["worker"]}}
        logwriter = {"argv": logwriter_argv(topology, worker_id, port),
                     "spec": {"sigterm": "handle", "children": [worker], "ready": ready["logwriter"],
                              "exit_with_child": True}}
        spec = {"sigterm": "handle", "children": [logwriter], "ready": ready["supervisor"]}
        supervisor_command = [INTERPRETER, SCRIPT, *supervisor_argv()[1:]]
        environment = dict(os.environ, **{SPEC_VARIABLE: json.dumps(spec), "PYTHONHOME": INTERPRETER_HOME})
        if init is None:
            command = ["unshare", "--pid", "--fork", *supervisor_command]
        else:
            command = ["unshare", "--pid", "--fork", *init, " ".join(supervisor_command)]
        process = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL)
        self.processes.append(process)
        # Holders report pids of their own namespace; find the host pids from the tree.
        self.wait_ready(ready["worker"])
        init_pid = _only_child(process.pid)
        pids = {name: _host_pid_of(init_pid, self.wait_ready(path)["pid"]) for name, path in ready.items()}
        self.pids.update(pids.values())
        self.pids.add(init_pid)
        tree = Tree(topology, worker_id, port, pids["supervisor"], pids["logwriter"], pids["worker"], [])
        tree.init = init_pid  # type: ignore[attr-defined]
        return tree

    def close(self) -> None:
        for pid in sorted(self.pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        remaining = wait_gone(self.pids, timeout=5.0)
        assert not remaining, f"processes of the test survived SIGKILL: {remaining}"


def _children_of(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        found.extend(int(child) for child in text.split())
    return found


def _only_child(pid: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = _children_of(pid)
        if children:
            return children[0]
        time.sleep(0.02)
    raise TimeoutError(f"process {pid} started no child")


def _host_pid_of(init_pid: int, namespace_pid: int) -> int:
    """Find the host pid of a process of init's PID namespace from its NSpid line."""
    namespace = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    for name in os.listdir("/proc"):
        if not name.isdecimal():
            continue
        try:
            if os.stat(f"/proc/{name}/ns/pid").st_ino != namespace:
                continue
            for line in Path(f"/proc/{name}/status").read_text().splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == namespace_pid:
                    return int(name)
        except (OSError, ValueError):
            continue
    raise LookupError(f"no process with pid {namespace_pid} in the namespace of {init_pid}")


@pytest.fixture
def node():
    require_root()
    directory = tempfile.mkdtemp(prefix="diagnostics-")
    holders = Node(directory)
    try:
        yield holders
    finally:
        holders.close()
        subprocess.run(["rm", "-rf", directory], check=False)
