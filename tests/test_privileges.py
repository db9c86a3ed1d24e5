"""Least privilege, measured: the exporter run under exactly the identity of each overlay.

For every profile the test renders deploy/overlays/<profile> with kubectl kustomize,
reads the exporter container's runAsUser and capabilities.add, and starts the
installed console script under that UID and capability set with setpriv, the way a
container runtime starts a container's process as UID 0:

- permitted, effective and bounding set are the added capabilities, the inheritable
  and ambient sets are empty, and no_new_privs is set (allowPrivilegeEscalation: false);
- the node's /proc is a read-only bind mount passed as --path.procfs, as the
  DaemonSet's read-only hostPath at /host/proc;
- tracefs is unmounted in the exporter's private mount namespace unless the profile
  mounts it.

Real worker trees run meanwhile, with a leftover of another UID that listens on a
worker's port. Then each capability of a profile is removed in turn, and the source
or the diagnosis reading that it enables must fall back, with the log line that says
why where the exporter logs one. docs/security.md lists these results per profile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from exporter.sources.netlink import DEFAULT_RCVBUF
from tests.conftest import require_root
from tests.servers import free_port, http_get
from tests.stormtree import StormTrees
from tests.test_deploy import (
    added_capabilities,
    effective_security,
    exporter_container,
    render,
    require_kubectl,
    run_as_user,
)

TRACEFS = "/sys/kernel/tracing"
INSTANCE_PREFIX = "storm-termination-exporter-"
EXPORTER = Path(sys.executable).parent / "storm-termination-exporter"
# Capability names in bit order, as include/uapi/linux/capability.h numbers them.
CAPABILITY_BITS = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
SCHED_RR = 2
READER_NICE = -10
LEFTOVER_UID = 2000  # a UID that is neither the exporter's nor the worker trees'
READY_SECONDS = 20.0
DIAGNOSIS_SECONDS = 10.0


# The identity of a rendered overlay.


@dataclass(frozen=True)
class Identity:
    """The UID, capabilities and arguments the DaemonSet of one profile gives the exporter."""

    profile: str
    uid: int
    gid: int
    capabilities: tuple[str, ...]
    args: tuple[str, ...]
    tracefs: bool  # the profile mounts tracefs

    def without(self, capability: str) -> Identity:
        assert capability in self.capabilities
        return replace(self, capabilities=tuple(c for c in self.capabilities if c != capability))


def identity_of(profile: str) -> Identity:
    objects = render(profile)
    pod = next(o for o in objects if o["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in exporter_container(objects).get("volumeMounts", [])}
    tracefs = any(
        volume.get("hostPath", {}).get("path") == TRACEFS and mounts.get(volume["name"]) == TRACEFS
        for volume in pod.get("volumes", [])
    )
    uid = run_as_user(objects)
    return Identity(
        profile=profile,
        uid=uid,
        gid=effective_security(objects).get("runAsGroup", uid),
        capabilities=tuple(added_capabilities(objects)),
        args=tuple(exporter_container(objects)["args"]),
        tracefs=tracefs,
    )


def capability_mask(names: tuple[str, ...]) -> int:
    mask = 0
    for name in names:
        assert name in CAPABILITY_BITS, f"unknown capability {name}"
        mask |= 1 << CAPABILITY_BITS.index(name)
    return mask


def setpriv_command(
    uid: int, gid: int, capabilities: tuple[str, ...], inheritable: tuple[str, ...] = ()
) -> list[str]:
    """Return the setpriv prefix that runs a command as ``uid`` with ``capabilities`` bounding it.

    For UID 0 the kernel gives the executed program permitted = effective = bounding,
    which is what a container runtime sets up for a container's root process.
    """
    def caps(names: tuple[str, ...]) -> str:
        return ",".join(["-all", *(f"+{name.lower()}" for name in names)])

    return [
        "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs",
        f"--bounding-set={caps(capabilities)}", f"--inh-caps={caps(inheritable)}", "--",
    ]


# The exporter under an identity.


class ConfinedExporter:
    """The console script run under one identity, in a mount namespace of its own.

    ``namespaces`` adds unshare options such as ``--net``. With ``--pid`` the
    exporter is a child of unshare, and ``pid`` is unshare's.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        namespaces: tuple[str, ...] = (),
        inheritable: tuple[str, ...] = (),
    ) -> None:
        self.identity = identity
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procfs = tempfile.mkdtemp(prefix="host-proc-")
        self.log = tempfile.NamedTemporaryFile(prefix="confined-exporter-", suffix=".log", delete=False)
        script = 'mount --rbind /proc "$1" && mount -o remount,bind,ro "$1" || exit 97\n'
        if not identity.tracefs:
            script += f"if mountpoint -q {TRACEFS}; then umount --lazy {TRACEFS} || exit 98; fi\n"
        script += 'shift\nexec "$@"\n'
        command = [
            "unshare", "--mount", "--propagation", "private", *namespaces, "--",
            "sh", "-c", script, "sh", self.procfs,
            *setpriv_command(identity.uid, identity.gid, identity.capabilities, inheritable),
            str(EXPORTER), *self._args(),
        ]
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_NAME": "privileges-test"}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=environment)

    def _args(self) -> list[str]:
        """Return the rendered arguments with the pod IP and /host/proc replaced for this machine."""
        args = list(self.identity.args)
        replaced = {"--web.listen-address": self.address, "--path.procfs": self.procfs}
        for index, arg in enumerate(args):
            flag = arg.split("=", 1)[0]
            if flag in replaced:
                args[index] = f"{flag}={replaced.pop(flag)}"
        assert not replaced, f"the rendered arguments lack {sorted(replaced)}"
        # A high --topology.max keeps the test's topologies out of "_other" when other
        # Storm-shaped processes run on the machine.
        return [*args, "--kubernetes=off", "--diagnostics.interval=1s", "--topology.max=100000"]

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"exporter exited with {self.process.returncode}:\n{self.output()}")
            try:
                if http_get(f"http://{self.address}/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"exporter not ready after {READY_SECONDS}s:\n{self.output()}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout=timeout)

    def status(self) -> dict[str, str]:
        """Return the exporter's /proc/PID/status fields."""
        with open(f"/proc/{self.pid}/status") as file:
            return dict(line.rstrip("\n").split(":\t", 1) for line in file if ":\t" in line)

    def metrics(self) -> str:
        return http_get(f"http://{self.address}/metrics")[2].decode()

    def sources(self) -> set[str]:
        prefix = 'storm_termination_exporter_event_source_info{source="'
        return {line[len(prefix):].split('"', 1)[0] for line in self.metrics().splitlines() if line.startswith(prefix)}

    def value(self, name: str, **labels: str) -> float | None:
        selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        expected = f"{name}{{{selector}}}" if labels else name
        for line in self.metrics().splitlines():
            sample, _, number = line.rpartition(" ")
            if sample == expected:
                return float(number)
        return None

    def diagnosis(self, pid: int) -> tuple[dict, dict]:
        """Return the /debug/workers document and its entry of a worker, once a diagnosis saw it."""
        deadline = time.monotonic() + DIAGNOSIS_SECONDS
        while time.monotonic() < deadline:
            document = json.loads(http_get(f"http://{self.address}/debug/workers")[2])
            for entry in document["workers"]:
                if entry["pid"] == pid:
                    return document, entry
            time.sleep(0.2)
        raise AssertionError(f"worker {pid} not diagnosed within {DIAGNOSIS_SECONDS}s:\n{self.output()}")

    def threads(self) -> list[list[str]]:
        """Return the stat fields of each exporter thread, field 3 (state) first."""
        found = []
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as file:
                    found.append(file.read().rsplit(")", 1)[1].split())
            except FileNotFoundError:
                continue
        return found

    def stop(self) -> int | None:
        """SIGTERM the exporter, wait for it, and remove a tracefs instance it left behind."""
        returncode = self.process.poll()
        if returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                returncode = self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        os.unlink(self.log.name)
        os.rmdir(self.procfs)
        return returncode

    def leftover_instances(self) -> list[str]:
        """Remove and return the tracefs instances named after this exporter's pid."""
        instances = os.path.join(TRACEFS, "instances")
        left = [name for name in os.listdir(instances) if name == f"{INSTANCE_PREFIX}{self.pid}"]
        for name in left:
            os.rmdir(os.path.join(instances, name))
        return left


@dataclass
class Run:
    """What one exporter run showed."""

    status: dict[str, str]
    sources: set[str]
    output: str
    worker: dict
    debug: dict
    leftovers: float | None  # storm_worker_leftover_processes of the other UID's leftover
    port_conflicts: float | None
    threads: list[list[str]]
    returncode: int | None
    instances_left: list[str]


@dataclass
class Workload:
    """The processes every run observes."""

    worker_pid: int
    port: int
    leftover_pid: int
    leftover_topology: str


def observe(identity: Identity, workload: Workload, **options) -> Run:
    """Run the exporter under ``identity`` until it diagnosed the workload, then stop it."""
    exporter = ConfinedExporter(identity, **options)
    try:
        exporter.wait_ready()
        debug, worker = exporter.diagnosis(workload.worker_pid)
        readings = {
            "status": exporter.status(),
            "sources": exporter.sources(),
            "worker": worker,
            "debug": debug,
            "leftovers": exporter.value("storm_worker_leftover_processes", topology=workload.leftover_topology),
            "port_conflicts": exporter.value("storm_worker_port_conflicts", port=str(workload.port)),
            "threads": exporter.threads(),
        }
    finally:
        output = exporter.output()
        returncode = exporter.stop()
        instances_left = exporter.leftover_instances()
    return Run(**readings, output=output, returncode=returncode, instances_left=instances_left)


def role_entry(worker: dict, role: str) -> dict:
    (entry,) = [process for process in worker["processes"] if process["role"] == role]
    return entry


def assert_identity(run: Run, identity: Identity) -> None:
    """Assert that the started exporter had exactly the UID and capabilities of ``identity``."""
    mask = f"{capability_mask(identity.capabilities):016x}"
    assert run.status["Uid"].split() == [str(identity.uid)] * 4
    assert run.status["Gid"].split() == [str(identity.gid)] * 4
    assert run.status["CapEff"] == mask
    assert run.status["CapPrm"] == mask
    assert run.status["CapBnd"] == mask
    assert run.status["CapInh"] == "0" * 16
    assert run.status["CapAmb"] == "0" * 16
    assert run.status["NoNewPrivs"] == "1"


def assert_clean_stop(run: Run) -> None:
    assert run.returncode == 0, run.output
    assert run.instances_left == [], "the exporter left its tracefs instance behind"


def any_thread_realtime(run: Run) -> bool:
    # Field 41 (policy) is index 38 when field 3 (state) is index 0.
    return any(int(fields[38]) == SCHED_RR for fields in run.threads)


def thread_nice_values(run: Run) -> set[int]:
    return {int(fields[16]) for fields in run.threads}  # field 19, nice


# Fixtures.


@pytest.fixture(scope="module")
def tracefs_mounted():
    """Make sure tracefs is mounted at /sys/kernel/tracing, as a node with the full profile has it."""
    require_root()
    mounted_here = False
    if not os.path.ismount(TRACEFS):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)
        mounted_here = True
    yield
    if mounted_here:
        subprocess.run(["umount", TRACEFS], check=True)


@pytest.fixture(scope="module")
def workload(tracefs_mounted):
    """A worker tree and, on its port, a listening leftover of another UID in a stormdist directory."""
    require_kubectl()
    assert EXPORTER.exists(), f"{EXPORTER} is missing: install the project with pip install -e ."
    port = free_port()
    with StormTrees() as trees, tempfile.TemporaryDirectory(prefix="storm-local-") as local:
        tree = trees.start("graceful", port=port)
        topology = f"leftover-{int(time.time())}"
        resources = Path(local, "supervisor", "stormdist", urllib.parse.quote(topology), "resources")
        resources.mkdir(parents=True)
        listener = (
            "import socket, time\n"
            f"server = socket.create_server(('127.0.0.1', {port}))\n"
            "print('listening', flush=True)\n"
            "time.sleep(600)\n"
        )
        leftover = subprocess.Popen(
            [*setpriv_command(LEFTOVER_UID, LEFTOVER_UID, ()), sys.executable, "-c", listener],
            cwd=resources, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        try:
            assert leftover.stdout.readline() == "listening\n"
            yield Workload(tree.worker_pid, port, leftover.pid, topology)
        finally:
            leftover.kill()
            leftover.wait()


@pytest.fixture(scope="module")
def full(workload) -> Identity:
    return identity_of("full")


@pytest.fixture(scope="module")
def netlink(workload) -> Identity:
    return identity_of("netlink")


@pytest.fixture(scope="module")
def minimal(workload) -> Identity:
    return identity_of("minimal")


# Profile full.


def assert_reads_everything(run: Run, workload: Workload) -> None:
    """The diagnosis readings that CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH give."""
    worker = role_entry(run.worker, "worker")
    assert worker["sigterm"] == "handled"
    assert worker["user_resolvable"] is True
    assert worker["user"] == "root"
    assert run.leftovers == 1
    assert run.port_conflicts == 2
    assert sorted(run.debug["port_conflicts"][str(workload.port)]["pids"]) == sorted(
        [workload.worker_pid, workload.leftover_pid]
    )
    assert "Without CAP_SYS_PTRACE" not in run.output


def test_full_profile(full, workload):
    run = observe(full, workload)
    assert_identity(run, full)
    assert run.sources == {"tracefs", "netlink"}
    assert "Event sources active=tracefs,netlink" in run.output
    assert_reads_everything(run, workload)
    assert any_thread_realtime(run)
    assert f"Listening to the proc connector with a {2 * DEFAULT_RCVBUF} byte receive buffer." in run.output
    assert_clean_stop(run)


def assert_without_sys_ptrace(run: Run) -> None:
    worker = role_entry(run.worker, "worker")
    assert worker["sigterm"] == "handled"  # /proc/PID/status needs no capability
    assert worker["user_resolvable"] == "unknown"
    assert worker["user"] is None
    assert run.leftovers is None  # its working directory was unreadable, so it was not found
    assert run.port_conflicts is None
    assert "permission denied. Without CAP_SYS_PTRACE the diagnosis" in run.output


def test_full_without_sys_ptrace(full, workload):
    identity = full.without("SYS_PTRACE")
    run = observe(identity, workload)
    assert_identity(run, identity)
    assert run.sources == {"tracefs", "netlink"}
    assert_without_sys_ptrace(run)
    # The orphan search reads working directories, which are denied too.
    assert "Leftover process of a worker that exited unseen" not in run.output
    assert_clean_stop(run)


def assert_without_dac_read_search(run: Run) -> None:
    worker = role_entry(run.worker, "worker")
    assert worker["user_resolvable"] is True
    assert run.leftovers == 1  # found by its working directory, which needs CAP_SYS_PTRACE only
    assert run.port_conflicts is None  # its /proc/PID/fd (mode 0500, UID 2000) was unreadable


def test_full_without_dac_read_search(full, workload):
    identity = full.without("DAC_READ_SEARCH")
    run = observe(identity, workload)
    assert_identity(run, identity)
    assert run.sources == {"tracefs", "netlink"}
    assert_without_dac_read_search(run)
    assert "Leftover process of a worker that exited unseen" in run.output
    assert_clean_stop(run)


def assert_without_sys_nice(run: Run) -> None:
    assert not any_thread_realtime(run)
    assert READER_NICE not in thread_nice_values(run)
    assert (
        "Could not set nice -10 on netlink reader thread" in run.output
        and "(Permission denied), so the argv of commands that exit within about a millisecond may be missed."
        in run.output
    )


def test_full_without_sys_nice(full, workload):
    identity = full.without("SYS_NICE")
    run = observe(identity, workload)
    assert_identity(run, identity)
    assert run.sources == {"tracefs", "netlink"}
    assert_without_sys_nice(run)
    assert_reads_everything(run, workload)
    assert_clean_stop(run)


def rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


def assert_without_net_admin(run: Run) -> None:
    # Without SO_RCVBUFFORCE the kernel caps the buffer at net.core.rmem_max and
    # reports twice the size it grants.
    # On a node whose net.core.rmem_max is at least 8 MiB both runs get the same
    # buffer; the warning names the missing capability either way.
    granted = 2 * min(DEFAULT_RCVBUF, rmem_max())
    assert f"Listening to the proc connector with a {granted} byte receive buffer." in run.output
    assert "receive buffer needs CAP_NET_ADMIN" in run.output


def test_full_without_net_admin(full, workload):
    identity = full.without("NET_ADMIN")
    run = observe(identity, workload)
    assert_identity(run, identity)
    # Linux 6.18 lets a process without CAP_NET_ADMIN subscribe to the proc connector.
    assert run.sources == {"tracefs", "netlink"}
    assert_without_net_admin(run)
    assert_reads_everything(run, workload)
    assert_clean_stop(run)


def test_full_profile_capabilities_covered(full):
    # Every capability the overlay adds has a removal test above.
    assert sorted(full.capabilities) == ["DAC_READ_SEARCH", "NET_ADMIN", "SYS_NICE", "SYS_PTRACE"]


def test_full_as_non_root(full, workload):
    # A container runtime with allowPrivilegeEscalation: false gives a non-root
    # process capabilities only through the ambient set, which Kubernetes never
    # sets: even with the capabilities in its bounding and inheritable sets, the
    # exporter runs with none, and tracefs (owned by root, mode 0700) is closed to it.
    identity = replace(full, uid=10001, gid=10001)
    run = observe(identity, workload, inheritable=full.capabilities)
    assert run.status["CapEff"] == "0" * 16
    assert run.status["CapPrm"] == "0" * 16
    assert run.status["CapAmb"] == "0" * 16
    assert run.status["CapInh"] == f"{capability_mask(full.capabilities):016x}"
    assert run.sources == {"netlink"}
    # /sys/kernel/tracing is mode 0700, and the log line names root as what is missing.
    assert "unavailable=(tracefs: cannot read /sys/kernel/tracing: permission denied." in run.output
    assert_without_sys_ptrace(run)
    assert_clean_stop(run)


# Profile netlink.


def test_netlink_profile(netlink, workload):
    run = observe(netlink, workload)
    assert_identity(run, netlink)
    assert run.sources == {"netlink"}
    assert "Event sources active=netlink" in run.output
    assert "tracefs instance" not in run.output
    assert_reads_everything(run, workload)
    assert any_thread_realtime(run)
    assert_clean_stop(run)


@pytest.mark.parametrize("capability", ["SYS_PTRACE", "DAC_READ_SEARCH", "SYS_NICE", "NET_ADMIN"])
def test_netlink_without_capability(netlink, workload, capability):
    identity = netlink.without(capability)
    run = observe(identity, workload)
    assert_identity(run, identity)
    assert run.sources == {"netlink"}
    {
        "SYS_PTRACE": assert_without_sys_ptrace,
        "DAC_READ_SEARCH": assert_without_dac_read_search,
        "SYS_NICE": assert_without_sys_nice,
        "NET_ADMIN": assert_without_net_admin,
    }[capability](run)
    assert_clean_stop(run)


def test_netlink_profile_capabilities_covered(netlink):
    assert sorted(netlink.capabilities) == ["DAC_READ_SEARCH", "NET_ADMIN", "SYS_NICE", "SYS_PTRACE"]


def test_netlink_needs_host_network(netlink, workload):
    exporter = ConfinedExporter(netlink, namespaces=("--net",))
    try:
        returncode = exporter.wait_exit()
        output = exporter.output()
    finally:
        exporter.stop()
    assert returncode == 1
    assert "event source netlink is unavailable: sending request 1 to the proc connector failed" in output
    assert "Is the exporter in a private network namespace?" in output


def test_netlink_needs_host_pid(netlink, workload):
    exporter = ConfinedExporter(netlink, namespaces=("--pid", "--fork", "--kill-child"))
    try:
        returncode = exporter.wait_exit()
        output = exporter.output()
    finally:
        exporter.stop()
    assert returncode == 1
    assert "event source netlink is unavailable: subscribed to the proc connector but no event" in output
    assert "Is the exporter in a private PID, user or network namespace?" in output


# Profile minimal.


def test_minimal_profile(minimal, workload):
    assert minimal.uid != 0
    assert minimal.capabilities == ()
    run = observe(minimal, workload)
    assert_identity(run, minimal)
    assert run.sources == {"poll"}
    assert "Event sources active=poll" in run.output
    assert "tracefs instance" not in run.output
    assert "proc connector" not in run.output
    worker = role_entry(run.worker, "worker")
    assert worker["sigterm"] == "handled"
    assert_without_sys_ptrace(run)
    assert_clean_stop(run)
