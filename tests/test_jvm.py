"""A real HotSpot JVM as the worker: SIGTERM handling and exit status are the JVM's own."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.servers import ExporterProcess, free_port
from tests.stormargv import common_properties

SOURCE = Path(__file__).parent / "java" / "org" / "apache" / "storm" / "daemon" / "worker" / "Worker.java"
HOOK_MS = 400


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    javac = shutil.which("javac")
    assert javac, "javac comes with the Debian openjdk-17-jdk-headless package that `make test` installs"
    output = tmp_path_factory.mktemp("classes")
    subprocess.run([javac, "-d", str(output), str(SOURCE)], check=True, timeout=120)
    return output


def start_jvm(classes: Path, topology: str, *options: str, port: int = 6700) -> subprocess.Popen:
    worker_id = str(uuid.uuid4())
    argv = [
        "java", "-server", "-Xmx64m", "-XX:TieredStopAtLevel=1", "-Xshare:auto", *options,
        *common_properties(topology, worker_id, port), f"-Dstorm.test.hook.ms={HOOK_MS}",
        "-cp", str(classes), "org.apache.storm.daemon.worker.Worker",
        topology, "sup-1", "6628", str(port), worker_id,
    ]
    jvm = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert jvm.stdout.readline().startswith("ready"), "the JVM did not start"
    return jvm


def stop_like_supervisor(jvm: subprocess.Popen) -> tuple[float, float, int]:
    """`kill -15` the JVM; return (request, exit, returncode) measured here."""
    pidfd = os.pidfd_open(jvm.pid)
    try:
        request = time.monotonic()
        subprocess.run(["kill", "-15", str(jvm.pid)], check=True)
        select.select([pidfd], [], [], 30)
        exited = time.monotonic()
    finally:
        os.close(pidfd)
    return request, exited, jvm.wait(timeout=30)


@pytest.mark.parametrize("mode", ["tracefs,netlink", "poll"])
def test_jvm_sigterm_shutdown(classes, mode):
    require_root()
    topology = f"jvm-{mode.replace(',', '-')}-1-{int(time.time())}"
    with ExporterProcess(f"--events.source={mode}", "--poll.interval=500ms") as exporter:
        exporter.wait_ready()
        jvm = start_jvm(classes, topology)
        try:
            tracked = exporter.wait_value("storm_workers", 1, 10.0, topology=topology, state="running")
            assert tracked == 1
            time.sleep(1.0)
            request, exited, returncode = stop_like_supervisor(jvm)
        finally:
            if jvm.poll() is None:
                jvm.kill()
                jvm.wait()
        assert returncode == 143
        outcome = "graceful" if mode != "poll" else "unknown"
        assert exporter.wait_value("storm_worker_exits_total", 1, 10.0, topology=topology, outcome=outcome) == 1
        total = exporter.value("storm_worker_shutdown_duration_seconds_sum", topology=topology, outcome=outcome)
        tolerance = 0.02 if mode != "poll" else 0.5
        assert total == pytest.approx(exited - request, abs=tolerance)
        assert total >= HOOK_MS / 1000 - 0.02


@pytest.mark.parametrize(("options", "disposition"), [((), "handled"), (("-Xrs",), "default")])
def test_jvm_sigterm_disposition(classes, options, disposition):
    # HotSpot installs its SIGTERM handler, which runs the shutdown hooks, unless
    # -Xrs is given, which leaves the signal alone.
    from exporter.diagnostics import WorkerReport
    from exporter.diagreport import diagnose_node
    from exporter.procfs import ProcFS

    require_root()
    topology = f"jvm-disposition-{len(options)}-{int(time.time())}"
    # A port of its own, so Storm-shaped processes elsewhere on the machine cannot
    # make a port conflict.
    jvm = start_jvm(classes, topology, *options, port=free_port())
    try:
        reports: list[WorkerReport] = [
            r for r in diagnose_node(ProcFS()).workers if r.snapshot.worker.pid == jvm.pid
        ]
    finally:
        jvm.kill()
        jvm.wait()
    assert len(reports) == 1
    assert reports[0].worker.disposition == disposition
    codes = [finding.code for finding in reports[0].findings]
    assert codes == ([] if disposition == "handled" else ["no_shutdown_hooks"])
