"""The measured servers: this exporter and process-exporter, each its own process on 127.0.0.1.

Each server is started by the benchmark, measured by its pid (utime + stime from
/proc/PID/stat, VmHWM from /proc/PID/status), scraped over HTTP, and stopped by
that pid with SIGTERM, then SIGKILL after 5 s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from exporter.procfs import CLOCK_TICKS_PER_SECOND, ProcFS

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# The tree whose exporter/ package the exporters run; bench/run.py --exporter-tree
# points it at another checkout to compare two versions with the same benchmark.
EXPORTER_TREE = ROOT
TRACEFS_INSTANCES = "/sys/kernel/tracing/instances"
PROCESS_EXPORTER = "prometheus-process-exporter"
PROCESS_EXPORTER_CONFIG = BENCH / "process-exporter.yaml"

# Headers that Prometheus 2.42 sends with every scrape.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_HEADERS = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}

# Topologies the benchmark's exporters export by name. Other Storm-shaped
# processes on a shared machine could otherwise fill the default 200 slots and
# merge the benchmark's workers into topology="_other".
TOPOLOGY_MAX = 100_000

_procfs = ProcFS()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A measured server process with its output in a log file."""

    name = "server"

    def __init__(self, label: str, log_dir: Path) -> None:
        self.label = label
        self.port = free_port()
        self.log_path = log_dir / f"{label}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=EXPORTER_TREE, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=self.environment(),
            )

    def wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with status {self.process.returncode}; see {self.log_path}"
                )
            if self.get(path, timeout=2.0) is not None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.label} was not ready within {timeout:g} s; see {self.log_path}")

    def get(self, path: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> bytes | None:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def scrape(self, timeout: float = 10.0) -> str:
        body = self.get("/metrics", timeout=timeout)
        if body is None:
            raise RuntimeError(f"scraping {self.url}/metrics of {self.label} failed; see {self.log_path}")
        return body.decode("utf-8", errors="replace")

    def cpu_seconds(self) -> float:
        """Return utime + stime of the whole process, in seconds."""
        stat = _procfs.read_stat(self.pid)
        if stat is None:
            raise RuntimeError(f"{self.label} pid {self.pid} is gone; see {self.log_path}")
        return (stat.utime + stat.stime) / CLOCK_TICKS_PER_SECOND

    def memory_kb(self) -> dict[str, int]:
        """Return VmHWM and VmRSS in KiB."""
        values = {}
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    values[key] = int(value.split()[0])
        return values

    def stop(self) -> dict[str, object]:
        """Stop the process with SIGTERM, and SIGKILL after 5 s."""
        if self.process is None:
            return {}
        killed = False
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                killed = True
        return {"exit_status": self.process.returncode, "killed_after_5s": killed}


class StormExporter(Server):
    """``python -m exporter`` with the given sources on 127.0.0.1.

    With ``record`` set, the process is bench/probe.py instead: the same exporter
    that also writes when each worker exit was applied to the file ``record``.
    """

    name = "storm-termination-exporter"

    def __init__(
        self, label: str, log_dir: Path, sources: str, *extra: str, record: Path | None = None
    ) -> None:
        super().__init__(label, log_dir)
        self.sources = sources
        self.extra = extra
        self.record = record

    def command(self) -> list[str]:
        program = [str(BENCH / "probe.py")] if self.record is not None else ["-m", "exporter"]
        return [
            sys.executable, *program,
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--events.source={self.sources}",
            f"--topology.max={TOPOLOGY_MAX}",
            "--kubernetes=off",
            *self.extra,
        ]

    def environment(self) -> dict[str, str] | None:
        if self.record is None:
            return None
        return {**os.environ, "BENCH_RECORD": str(self.record), "BENCH_EXPORTER_TREE": str(EXPORTER_TREE)}

    def wait_ready(self, path: str = "/readyz", timeout: float = 90.0) -> None:
        super().wait_ready(path, timeout)

    def stop(self) -> dict[str, object]:
        result = super().stop()
        if self.process is not None:
            instance = os.path.join(TRACEFS_INSTANCES, f"storm-termination-exporter-{self.process.pid}")
            left_behind = os.path.isdir(instance)
            if left_behind:
                os.rmdir(instance)
            result["tracefs_instance_left_behind"] = left_behind
        return result


class ProcessExporter(Server):
    """Debian's prometheus-process-exporter with bench/process-exporter.yaml.

    The config groups processes by the -Dstorm.id in their command line, one
    group per topology. Every other flag keeps its default.
    """

    name = "process-exporter"

    def command(self) -> list[str]:
        binary = shutil.which(PROCESS_EXPORTER)
        if binary is None:
            raise RuntimeError(f"{PROCESS_EXPORTER} not found: run `make bench-deps` as root")
        return [
            binary,
            f"-web.listen-address=127.0.0.1:{self.port}",
            f"-config.path={PROCESS_EXPORTER_CONFIG}",
        ]

    def wait_ready(self, path: str = "/metrics", timeout: float = 30.0) -> None:
        super().wait_ready(path, timeout)


_NUM_PROCS = re.compile(r'^namedprocess_namegroup_num_procs\{groupname="([^"]*)"\} (\S+)$', re.MULTILINE)


def group_sizes(text: str) -> dict[str, float]:
    """Return num_procs by group name from a process-exporter scrape."""
    return {match[1]: float(match[2]) for match in _NUM_PROCS.finditer(text)}


def start_profile(server: Server, seconds: float, output: Path) -> subprocess.Popen | None:
    """Start ``py-spy record`` on ``server`` for ``seconds``, writing a flame graph SVG to ``output``.

    --nonblocking samples without stopping the process, so the profile costs the
    server little, but py-spy's own CPU is not counted in any figure.
    """
    binary = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if binary is None:
        print("py-spy not found; install the bench extra (pip install -e '.[bench]')", flush=True)
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [binary, "record", "--pid", str(server.pid), "--duration", str(max(1, int(seconds))),
         "--rate", "200", "--nonblocking", "--threads", "--format", "flamegraph", "-o", str(output)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def finish_profile(profile: subprocess.Popen | None) -> None:
    if profile is None:
        return
    try:
        profile.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profile.kill()
        profile.wait()


def process_exporter_version() -> str | None:
    binary = shutil.which(PROCESS_EXPORTER)
    if binary is None:
        return None
    completed = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=10)
    match = re.search(r"revision: ([^)\s]+)", completed.stdout + completed.stderr)
    return match[1] if match else (completed.stdout + completed.stderr).strip()[:80]
