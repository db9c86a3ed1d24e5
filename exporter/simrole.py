"""Bodies of the simulated Apache Storm processes, and the Storm command lines that start them.

Every role runs as ``java <this file> <Storm JVM argv after the java executable>``.
The Python interpreter is executed with argv[0] set to "java", as an ``exec -a java``
wrapper would, so /proc/PID/cmdline reads like a Storm JVM's. The role is the first
Storm main class in that argv:

- ``org.apache.storm.daemon.supervisor.Supervisor``: the supervisor loop of
  ``exporter.simulate`` (worker launches and Storm's kill sequence).
- ``org.apache.storm.LogWriter``: runs the rest of its argv (from the second "java")
  as its child and exits with the child's exit code, or 128 + signal number when the
  child died by a signal, as a Java parent reports it. It copies the child's stdout and
  stderr to ``worker.log`` in the worker's artifacts directory. It installs no signal
  handler, so SIGTERM and SIGINT end it by their default action.
- ``org.apache.storm.daemon.worker.Worker``: writes its pid file, starts its
  multilang children and shuts down according to its behaviour.

The worker reads its behaviour from JVM system properties in its own argv, at the
place where Storm puts ``topology.worker.childopts``:

  -Dstorm.sim.behaviour=NAME   one of BEHAVIOURS, default graceful
  -Dstorm.sim.hook.secs=S      shutdown hook run time of graceful, leave-children, crash (0.2)
  -Dstorm.sim.halt.secs=S      halt: delay before the watchdog halts with status 20 (1.0)
  -Dstorm.sim.crash.secs=S     crash: delay before the worker exits with status 11 (2.0)
  -Dstorm.sim.leftover.secs=S  leave-children: lifetime of the leftover process (10.0)
  -Dstorm.sim.children=N       multilang children that register their pids (1)

Behaviours, all measured from the first SIGTERM:

- ``graceful``: the shutdown hooks send SIGTERM to the multilang children, as
  ShellBolt.cleanup() does, run for the hook time, and the worker exits with 143.
- ``halt``: the hooks hang, and a watchdog halts the worker with exit status 20 after
  the halt delay, as Storm's shutdown watchdog does.
- ``ignore-term``: the hooks hang and there is no watchdog, so only SIGKILL ends it.
- ``leave-children``: graceful, but its first multilang child is started through a
  shell wrapper that also forks a helper. The helper ignores SIGTERM, is not in the
  pids directory, survives the worker and exits by itself after its lifetime.
- ``crash``: with no request, the worker exits with status 11 after the crash delay,
  the status of a worker whose ShellBolt subprocess died. A SIGTERM before then is
  handled as in ``graceful``.

On every SIGTERM (and SIGINT) a worker starts a thread whose native name is
"SIGTERM handler" ("SIGINT handler"), because HotSpot runs the shutdown for a signal
in a new thread of that name. A second signal starts another such thread that blocks,
as a second ``Shutdown.exit`` call blocks in a JVM.

Multilang children run ``python3 splitsentence.py`` in
``<storm.local.dir>/supervisor/stormdist/<url-encoded topology id>/resources``. Like
storm.py they read a handshake (conf, context, pidDir) on stdin, create an empty file
named after their pid in pidDir, reply with their pid, and exit with status 1 when
stdin reaches EOF. Their default SIGTERM action ends them.

Launchers must set PYTHONHOME (``role_environment()`` does): the interpreter cannot
find its standard library from an argv[0] of "java" or "python3".
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

SCRIPT_PATH = str(Path(__file__).resolve())

SUPERVISOR_CLASS = "org.apache.storm.daemon.supervisor.Supervisor"
LOGWRITER_CLASS = "org.apache.storm.LogWriter"
WORKER_CLASS = "org.apache.storm.daemon.worker.Worker"
MAIN_CLASSES = (SUPERVISOR_CLASS, LOGWRITER_CLASS, WORKER_CLASS)

BEHAVIOURS = ("graceful", "halt", "ignore-term", "leave-children", "crash")

# Exit statuses of a Storm 2.x worker JVM: 128 + 15 after the SIGTERM shutdown
# hooks, 20 from the shutdown watchdog's halt, 11 when a ShellBolt subprocess died.
EXIT_SIGTERM = 143
EXIT_HALTED = 20
EXIT_SHELL_DIED = 11

# The paths below only appear in argv, and nothing reads them.
STORM_HOME = "/apache-storm-2.8.8"
JAVA = "java"
SUPERVISOR_THRIFT_PORT = "6628"
CLASSPATH_WORKER = f"{STORM_HOME}/lib-worker/*:{STORM_HOME}/extlib/*:/conf"
CLASSPATH_DAEMON = (
    f"{STORM_HOME}/*:{STORM_HOME}/lib/*:{STORM_HOME}/extlib/*:{STORM_HOME}/extlib-daemon/*:/conf"
)
LIBRARY_PATH = "/usr/local/lib:/opt/local/lib:/usr/lib:/usr/lib64"
LOG4J_CONTEXT_SELECTOR = "org.apache.logging.log4j.core.selector.BasicContextSelector"
WORKER_MEMORY_MB = 768

_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_TASK_COMM_LEN = 16  # includes the terminating NUL

# Multilang resources, written into the topology's resources directory as Storm's
# supervisor extracts them from the topology jar.
MULTILANG_BOLT = "splitsentence.py"
MULTILANG_WRAPPER = "splitsentence.sh"
LEFTOVER_HELPER = "warmcache.py"

_BOLT_SOURCE = '''\
"""Multilang bolt that follows storm.py: handshake, pid file, exit at EOF on stdin."""
import json
import os
import sys


def read_message():
    lines = []
    while True:
        line = sys.stdin.readline()
        if not line:
            # storm.py raises Exception("Read EOF from stdin") here, which exits with 1.
            sys.stderr.write("Read EOF from stdin\\n")
            sys.stderr.flush()
            os._exit(1)
        line = line.rstrip("\\n")
        if line == "end":
            return json.loads("\\n".join(lines))
        lines.append(line)


def send_message(message):
    sys.stdout.write(json.dumps(message) + "\\nend\\n")
    sys.stdout.flush()


setup = read_message()
pid = os.getpid()
open(os.path.join(setup["pidDir"], str(pid)), "w").close()
send_message({"pid": pid})
while True:
    read_message()
'''

_WRAPPER_SOURCE = """\
# Multilang wrapper: forks a cache warmer that nothing registers, then becomes the bolt.
python3 warmcache.py </dev/null >/dev/null 2>&1 &
exec python3 splitsentence.py
"""

_HELPER_SOURCE = '''\
"""Cache warmer forked by the multilang wrapper: ignores SIGTERM, exits after its lifetime."""
import os
import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(float(os.environ.get("STORM_SIM_LEFTOVER_SECS", "10")))
'''


@dataclass(frozen=True)
class StormLayout:
    """Directory layout under one ``storm.local.dir``, as Storm's ConfigUtils builds it.

    The simulator keeps ``storm.log.dir`` under the local directory too, so that one
    directory contains everything a simulation writes.
    """

    local_dir: str

    @property
    def log_dir(self) -> str:
        return os.path.join(self.local_dir, "logs")

    @property
    def artifacts_dir(self) -> str:
        return os.path.join(self.log_dir, "workers-artifacts")

    def worker_dir(self, worker_id: str) -> str:
        return os.path.join(self.local_dir, "workers", worker_id)

    def pids_dir(self, worker_id: str) -> str:
        return os.path.join(self.worker_dir(worker_id), "pids")

    def worker_tmp_dir(self, worker_id: str) -> str:
        return os.path.join(self.worker_dir(worker_id), "tmp")

    def stormdist_dir(self, topology_id: str) -> str:
        return os.path.join(self.local_dir, "supervisor", "stormdist", url_encode(topology_id))

    def resources_dir(self, topology_id: str) -> str:
        return os.path.join(self.stormdist_dir(topology_id), "resources")

    def artifacts_port_dir(self, topology_id: str, port: int | str) -> str:
        return os.path.join(self.artifacts_dir, topology_id, str(port))


@dataclass(frozen=True)
class WorkerSettings:
    """Simulated worker behaviour, carried in ``-Dstorm.sim.*`` system properties."""

    behaviour: str = "graceful"
    hook_secs: float = 0.2
    halt_secs: float = 1.0
    crash_secs: float = 2.0
    leftover_secs: float = 10.0
    children: int = 1

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"invalid behaviour {self.behaviour!r}: expected one of {', '.join(BEHAVIOURS)}")
        for name in ("hook_secs", "halt_secs", "crash_secs", "leftover_secs"):
            if getattr(self, name) < 0:
                raise ValueError(f"invalid {name} {getattr(self, name)!r}: must not be negative")
        if self.children < 0:
            raise ValueError(f"invalid children {self.children!r}: must not be negative")
        if self.behaviour == "leave-children" and self.children < 1:
            raise ValueError("leave-children needs at least one multilang child for its shell wrapper")

    def to_properties(self) -> list[str]:
        return [
            f"-Dstorm.sim.behaviour={self.behaviour}",
            f"-Dstorm.sim.hook.secs={self.hook_secs}",
            f"-Dstorm.sim.halt.secs={self.halt_secs}",
            f"-Dstorm.sim.crash.secs={self.crash_secs}",
            f"-Dstorm.sim.leftover.secs={self.leftover_secs}",
            f"-Dstorm.sim.children={self.children}",
        ]

    @classmethod
    def from_properties(cls, properties: dict[str, str]) -> WorkerSettings:
        defaults = cls()
        return cls(
            behaviour=properties.get("storm.sim.behaviour", defaults.behaviour),
            hook_secs=float(properties.get("storm.sim.hook.secs", defaults.hook_secs)),
            halt_secs=float(properties.get("storm.sim.halt.secs", defaults.halt_secs)),
            crash_secs=float(properties.get("storm.sim.crash.secs", defaults.crash_secs)),
            leftover_secs=float(properties.get("storm.sim.leftover.secs", defaults.leftover_secs)),
            children=int(properties.get("storm.sim.children", defaults.children)),
        )


def url_encode(text: str) -> str:
    """Encode like Java's URLEncoder with UTF-8, as Storm names a topology's stormdist directory.

    Bytes that are not UTF-8, carried in ``text`` as surrogate escapes, are encoded one by one.
    """
    return urllib.parse.quote_plus(os.fsencode(text), safe="*").replace("~", "%7E")


def validate_topology_id(topology_id: str) -> None:
    """Raise ValueError for a topology id that cannot name a directory or an argv element."""
    if not topology_id:
        raise ValueError("invalid topology id: empty")
    if "/" in topology_id or "\0" in topology_id or topology_id in (".", ".."):
        raise ValueError(
            f"invalid topology id {topology_id!r}: it names directories, so it must not contain '/' "
            "or NUL and must not be '.' or '..'"
        )


# Storm command lines, element by element as BasicContainer builds them in Storm 2.x.


def common_properties(layout: StormLayout, topology_id: str, worker_id: str, port: int) -> list[str]:
    """Return the system properties that the LogWriter and the worker command share."""
    return [
        "-Dlogging.sensitivity=S3",
        "-Dlogfile.name=worker.log",
        f"-Dstorm.home={STORM_HOME}",
        f"-Dworkers.artifacts={layout.artifacts_dir}",
        f"-Dstorm.id={topology_id}",
        f"-Dworker.id={worker_id}",
        f"-Dworker.port={port}",
        f"-Dstorm.log.dir={layout.log_dir}",
        f"-DLog4jContextSelector={LOG4J_CONTEXT_SELECTOR}",
        f"-Dstorm.local.dir={layout.local_dir}",
        f"-Dworker.memory_limit_mb={WORKER_MEMORY_MB}",
    ]


def worker_argv(
    layout: StormLayout,
    topology_id: str,
    worker_id: str,
    port: int,
    supervisor_id: str,
    settings: WorkerSettings,
) -> list[str]:
    """Return the worker JVM's argv, starting with the java executable."""
    resources = layout.resources_dir(topology_id)
    return [
        JAVA,
        "-server",
        *common_properties(layout, topology_id, worker_id, port),
        f"-Dlog4j.configurationFile={STORM_HOME}/log4j2/worker.xml",
        # worker.childopts, then topology.worker.childopts with the simulated behaviour
        f"-Xmx{WORKER_MEMORY_MB}m",
        *settings.to_properties(),
        # worker.gc.childopts
        "-XX:+UseG1GC",
        f"-Djava.library.path={resources}/Linux-amd64:{resources}:{LIBRARY_PATH}",
        "-Dstorm.conf.file=",
        "-Dstorm.options=",
        f"-Djava.io.tmpdir={layout.worker_tmp_dir(worker_id)}",
        "-cp",
        f"{CLASSPATH_WORKER}:{layout.stormdist_dir(topology_id)}/stormjar.jar",
        WORKER_CLASS,
        topology_id,
        supervisor_id,
        SUPERVISOR_THRIFT_PORT,
        str(port),
        worker_id,
    ]


def logwriter_argv(
    layout: StormLayout,
    topology_id: str,
    worker_id: str,
    port: int,
    supervisor_id: str,
    settings: WorkerSettings,
) -> list[str]:
    """Return the LogWriter JVM's argv, which ends with the whole worker argv."""
    return [
        JAVA,
        "-cp",
        f"{CLASSPATH_WORKER}:{layout.stormdist_dir(topology_id)}/stormjar.jar",
        # topology.worker.logwriter.childopts default
        "-Xmx64m",
        *common_properties(layout, topology_id, worker_id, port),
        f"-Dlog4j.configurationFile={STORM_HOME}/log4j2/worker.xml",
        LOGWRITER_CLASS,
        *worker_argv(layout, topology_id, worker_id, port, supervisor_id, settings),
    ]


def supervisor_argv(layout: StormLayout, shutdown_sleep: float) -> list[str]:
    """Return the supervisor JVM's argv, in the element order that bin/storm.py uses.

    Settings reach it in ``-Dstorm.options``, where storm.py puts each ``-c key=value``
    URL-encoded and joined with commas.
    """
    options = {
        "storm.local.dir": layout.local_dir,
        "supervisor.worker.shutdown.sleep.secs": repr(float(shutdown_sleep)),
    }
    encoded = ",".join(urllib.parse.quote_plus(f"{key}={value}") for key, value in options.items())
    return [
        JAVA,
        "-server",
        "-Ddaemon.name=supervisor",
        f"-Dstorm.options={encoded}",
        f"-Dstorm.home={STORM_HOME}",
        f"-Dstorm.log.dir={layout.log_dir}",
        f"-Djava.library.path={LIBRARY_PATH}",
        "-Dstorm.conf.file=",
        "-cp",
        CLASSPATH_DAEMON,
        "-Xmx256m",
        "-Dlogfile.name=supervisor.log",
        f"-Dlog4j.configurationFile={STORM_HOME}/log4j2/cluster.xml",
        SUPERVISOR_CLASS,
    ]


def parse_storm_options(value: str) -> dict[str, str]:
    """Decode a ``-Dstorm.options`` value into its settings."""
    options = {}
    for item in value.split(","):
        if item:
            key, _, setting = urllib.parse.unquote_plus(item).partition("=")
            options[key] = setting
    return options


def parse_system_properties(options: Sequence[str]) -> dict[str, str]:
    """Return the ``-Dkey=value`` options as a dict. A repeated key keeps its last value, as in the JVM."""
    properties = {}
    for option in options:
        if option.startswith("-D"):
            key, _, value = option[2:].partition("=")
            properties[key] = value
    return properties


def find_main_class(argv: Sequence[str]) -> int | None:
    """Return the index of the first Storm main class in ``argv``, or None."""
    for index, element in enumerate(argv):
        if element in MAIN_CLASSES:
            return index
    return None


# Process helpers shared by the roles and the launchers.


def interpreter_path() -> str:
    """Return the running interpreter's executable, which sys.executable misses when argv[0] is "java"."""
    return os.readlink("/proc/self/exe")


def role_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment with PYTHONHOME set, for starting any simulated role."""
    environment = dict(os.environ)
    environment["PYTHONHOME"] = sys.base_prefix
    environment.update(extra or {})
    return environment


def role_args(storm_argv: Sequence[str]) -> list[str]:
    """Turn a Storm JVM argv into the argv that runs this script under the same argv[0]."""
    return [storm_argv[0], SCRIPT_PATH, *storm_argv[1:]]


def set_thread_name(name: str) -> None:
    """Set the calling thread's native name, shown in /proc/PID/task/TID/comm."""
    encoded = name.encode()[: _TASK_COMM_LEN - 1]
    _prctl(_PR_SET_NAME, ctypes.c_char_p(encoded))


def set_child_subreaper() -> None:
    """Make orphaned descendants of this process its children instead of PID 1's."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _prctl(option: int, argument: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, argument, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}) failed: {os.strerror(errno)}")


def write_topology_resources(resources_dir: str) -> None:
    """Write the multilang scripts into a topology's resources directory.

    Each file is replaced atomically, because a worker of the same topology may be
    starting a child from it at that moment.
    """
    os.makedirs(resources_dir, exist_ok=True)
    for name, source in (
        (MULTILANG_BOLT, _BOLT_SOURCE),
        (MULTILANG_WRAPPER, _WRAPPER_SOURCE),
        (LEFTOVER_HELPER, _HELPER_SOURCE),
    ):
        path = os.path.join(resources_dir, name)
        temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(temporary, "w") as file:
            file.write(source)
        os.replace(temporary, path)


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        print(f"{stamp} {message}", file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        pass  # the LogWriter reading this pipe is gone


def _fail(message: str, status: int = 1) -> None:
    _log(message)
    os._exit(status)


# LogWriter role.


def run_logwriter(argv: Sequence[str], main_index: int) -> None:
    """Run the worker command after the LogWriter class as a child and exit with its status."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    child_argv = list(argv[main_index + 1 :])
    if not child_argv:
        _fail("LogWriter expects the worker command after its main class")
    properties = parse_system_properties(argv[:main_index])
    log_file = _open_worker_log(properties)
    child = subprocess.Popen(
        role_args(child_argv),
        executable=interpreter_path(),
        env=role_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    copiers = [
        threading.Thread(target=_copy_lines, args=(child.stdout, log_file, "STDOUT"), daemon=True),
        threading.Thread(target=_copy_lines, args=(child.stderr, log_file, "STDERR"), daemon=True),
    ]
    for copier in copiers:
        copier.start()
    returncode = child.wait()
    # A process that inherited the child's pipes may keep them open after the child
    # exits, so the copiers get a short time to drain and are not joined for good.
    for copier in copiers:
        copier.join(timeout=0.2)
    log_file.flush()
    os._exit(returncode if returncode >= 0 else 128 - returncode)


def _open_worker_log(properties: dict[str, str]):
    artifacts = properties.get("workers.artifacts")
    topology_id = properties.get("storm.id")
    port = properties.get("worker.port")
    if not (artifacts and topology_id and port):
        return open(os.devnull, "w")
    directory = os.path.join(artifacts, topology_id, port)
    os.makedirs(directory, exist_ok=True)
    return open(
        os.path.join(directory, properties.get("logfile.name", "worker.log")), "a", errors="surrogateescape"
    )


_copy_lock = threading.Lock()


def _copy_lines(stream, log_file, logger: str) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip("\n")
        with _copy_lock:
            log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {logger} {line}\n")
            log_file.flush()


# Worker role.


class SimulatedWorker:
    """A worker JVM's life: pid files, multilang children, shutdown by behaviour."""

    def __init__(self, argv: Sequence[str], main_index: int) -> None:
        properties = parse_system_properties(argv[:main_index])
        arguments = list(argv[main_index + 1 :])
        if len(arguments) != 5:
            _fail(
                "Worker expects 5 arguments (topology id, supervisor id, supervisor port, port, worker id), "
                f"got {len(arguments)}"
            )
        self.topology_id, self.supervisor_id, _, self.port, self.worker_id = arguments
        local_dir = properties.get("storm.local.dir")
        if not local_dir:
            _fail("Worker argv has no -Dstorm.local.dir")
        try:
            self.settings = WorkerSettings.from_properties(properties)
        except ValueError as error:
            _fail(f"invalid simulated worker settings: {error}")
        self.layout = StormLayout(local_dir)
        self.tmp_dir = properties.get("java.io.tmpdir") or self.layout.worker_tmp_dir(self.worker_id)
        self.artifacts_dir = properties.get("workers.artifacts") or self.layout.artifacts_dir
        self.children: list[subprocess.Popen] = []
        self._shutdown_lock = threading.Lock()
        self._shutdown_started = False

    def run(self) -> None:
        # Worker.main registers the shutdown hook before it starts anything else.
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._write_pid_files()
        self._start_children()
        if self.settings.behaviour == "crash":
            threading.Thread(target=self._crash_later, name="Thread-crash", daemon=True).start()
        _log(
            f"Worker {self.worker_id} for {self.topology_id!r} on port {self.port} started, "
            f"behaviour {self.settings.behaviour}"
        )
        while True:
            signal.pause()

    def _write_pid_files(self) -> None:
        pid = str(os.getpid())
        pids_dir = self.layout.pids_dir(self.worker_id)
        os.makedirs(pids_dir, exist_ok=True)
        open(os.path.join(pids_dir, pid), "w").close()
        port_dir = os.path.join(self.artifacts_dir, self.topology_id, self.port)
        os.makedirs(port_dir, exist_ok=True)
        with open(os.path.join(port_dir, "worker.pid"), "w") as file:
            file.write(pid)
        os.makedirs(self.tmp_dir, exist_ok=True)

    def _start_children(self) -> None:
        resources = self.layout.resources_dir(self.topology_id)
        for index in range(self.settings.children):
            through_wrapper = self.settings.behaviour == "leave-children" and index == 0
            try:
                child = self._start_multilang(resources, index + 1, through_wrapper)
            except (OSError, ValueError) as error:
                _fail(f"multilang subprocess {index + 1} failed to start: {error}", EXIT_SHELL_DIED)
            self.children.append(child)
            _log(f"multilang subprocess {index + 1} started with pid {child.pid}")

    def _start_multilang(self, resources: str, task_id: int, through_wrapper: bool) -> subprocess.Popen:
        if through_wrapper:
            # The wrapper finds "python3" on PATH, so it gets this interpreter.
            bin_dir = os.path.join(self.tmp_dir, "bin")
            os.makedirs(bin_dir, exist_ok=True)
            link = os.path.join(bin_dir, "python3")
            if not os.path.lexists(link):
                os.symlink(interpreter_path(), link)
            environment = role_environment(
                {
                    "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                    "STORM_SIM_LEFTOVER_SECS": str(self.settings.leftover_secs),
                }
            )
            args, executable = ["sh", MULTILANG_WRAPPER], None
        else:
            environment = role_environment()
            args, executable = ["python3", MULTILANG_BOLT], interpreter_path()
        child = subprocess.Popen(
            args,
            executable=executable,
            cwd=resources,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        handshake = {
            "conf": {"storm.id": self.topology_id, "storm.sim.behaviour": self.settings.behaviour},
            "context": {
                "taskid": task_id,
                "componentid": "split",
                "task->component": {str(task_id): "split"},
            },
            "pidDir": self.layout.pids_dir(self.worker_id),
        }
        child.stdin.write(json.dumps(handshake).encode() + b"\nend\n")
        child.stdin.flush()
        reply = _read_multilang_message(child.stdout)
        if reply.get("pid") != child.pid:
            raise ValueError(f"handshake reply {reply!r} does not carry pid {child.pid}")
        return child

    def _on_signal(self, signum: int, frame: object) -> None:
        name = f"{signal.Signals(signum).name} handler"
        threading.Thread(target=self._shutdown, args=(name, 128 + signum), name=name).start()

    def _shutdown(self, thread_name: str, status: int) -> None:
        set_thread_name(thread_name)
        with self._shutdown_lock:
            first = not self._shutdown_started
            self._shutdown_started = True
        if not first:
            threading.Event().wait()
        behaviour = self.settings.behaviour
        _log(f"{thread_name}: running shutdown hooks, behaviour {behaviour}")
        if behaviour == "ignore-term":
            threading.Event().wait()
        if behaviour == "halt":
            threading.Thread(target=self._halt_later, name="Thread-watchdog", daemon=True).start()
            threading.Event().wait()
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        time.sleep(self.settings.hook_secs)
        _log(f"shutdown hooks done, exiting with {status}")
        os._exit(status)

    def _halt_later(self) -> None:
        time.sleep(self.settings.halt_secs)
        _log(f"shutdown hooks still running after {self.settings.halt_secs} s, halting with {EXIT_HALTED}")
        os._exit(EXIT_HALTED)

    def _crash_later(self) -> None:
        time.sleep(self.settings.crash_secs)
        with self._shutdown_lock:
            if self._shutdown_started:
                return
            self._shutdown_started = True
        _log(f"ShellBolt subprocess died, halting with {EXIT_SHELL_DIED}")
        os._exit(EXIT_SHELL_DIED)


def _read_multilang_message(stream) -> dict:
    lines = []
    while True:
        line = stream.readline()
        if not line:
            raise ValueError("multilang subprocess closed stdout before its handshake reply")
        line = line.decode().rstrip("\n")
        if line == "end":
            return json.loads("\n".join(lines))
        lines.append(line)


# Entry point.


def main() -> None:
    argv = sys.argv[1:]
    with open("/proc/self/cmdline", "rb") as file:
        argv0 = file.read().split(b"\0", 1)[0]
    if argv0 != JAVA.encode():
        # Started by a launcher that cannot set argv[0], such as unshare.
        os.execve(interpreter_path(), [JAVA, SCRIPT_PATH, *argv], role_environment())
    set_thread_name(JAVA)
    main_index = find_main_class(argv)
    if main_index is None:
        _fail(f"no Storm main class ({', '.join(MAIN_CLASSES)}) in argv")
    main_class = argv[main_index]
    if main_class == LOGWRITER_CLASS:
        run_logwriter(argv, main_index)
    elif main_class == WORKER_CLASS:
        SimulatedWorker(argv, main_index).run()
    else:
        sys.path.insert(0, str(Path(SCRIPT_PATH).parent.parent))
        from exporter import simulate

        sys.exit(simulate.serve_supervisor(argv, main_index))


if __name__ == "__main__":
    main()
