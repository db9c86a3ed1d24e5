"""The exporter process: HTTP endpoints, start-up errors and its own shutdown."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.servers import REPO, ExporterProcess, free_port, http_get

INSTANCES = Path("/sys/kernel/tracing/instances")


def instance_of(pid: int) -> Path:
    return INSTANCES / f"storm-termination-exporter-{pid}"


@pytest.fixture(scope="module")
def exporter():
    with ExporterProcess("--events.source=poll") as running:
        running.wait_ready()
        yield running


def test_healthz_and_readyz(exporter):
    assert http_get(f"http://{exporter.address}/healthz")[0] == 200
    status, _, body = http_get(f"http://{exporter.address}/readyz")
    assert status == 200
    assert body == b"ready\n"


def test_index_links_endpoints(exporter):
    status, headers, body = http_get(f"http://{exporter.address}/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    for link in (b'href="/metrics"', b'href="/healthz"', b'href="/readyz"'):
        assert link in body


def test_metrics_text_format(exporter):
    status, headers, body = http_get(f"http://{exporter.address}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b'storm_termination_exporter_event_source_info{source="poll"} 1.0' in body
    assert b"storm_termination_exporter_scan_duration_seconds_count" in body


def test_metrics_openmetrics_by_accept(exporter):
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    status, headers, body = http_get(f"http://{exporter.address}/metrics", headers=accept)
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_metrics_gzip_by_accept_encoding(exporter):
    status, headers, body = http_get(
        f"http://{exporter.address}/metrics", headers={"Accept-Encoding": "gzip"}
    )
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert b"storm_termination_exporter_build_info" in gzip.decompress(body)


def test_unknown_path_is_404(exporter):
    assert http_get(f"http://{exporter.address}/nothing")[0] == 404


def test_port_in_use_exits_nonzero():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{port}",
             "--events.source=poll"],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--web.listen-address" in result.stderr


def test_gzip_refused_with_zero_quality(exporter):
    status, headers, body = http_get(
        f"http://{exporter.address}/metrics", headers={"Accept-Encoding": "gzip;q=0, identity"}
    )
    assert status == 200
    assert "Content-Encoding" not in headers
    assert b"storm_termination_exporter_build_info" in body


def test_invalid_flag_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--poll.interval=fast"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "--poll.interval" in result.stderr
    assert "500ms" in result.stderr


def test_explicit_unavailable_source_exits_1(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{free_port()}",
         "--events.source=tracefs", f"--path.tracefs={tmp_path}/missing"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "event source tracefs is unavailable" in result.stderr


def test_auto_falls_back_when_tracefs_missing(tmp_path):
    with ExporterProcess(f"--path.tracefs={tmp_path}/missing") as running:
        running.wait_ready()
        assert running.value("storm_termination_exporter_event_source_info", source="tracefs") is None
        log = running.output()
    assert "unavailable=(tracefs:" in log


def test_kubernetes_on_without_cluster_exits_1():
    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")}
    result = subprocess.run(
        [sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{free_port()}",
         "--events.source=poll", "--kubernetes=on"],
        cwd=REPO, capture_output=True, text=True, timeout=30, env=env,
    )
    assert result.returncode == 1
    assert "no cluster is configured" in result.stderr


def test_sigterm_stops_within_a_second_and_cleans_up():
    require_root()
    running = ExporterProcess()
    try:
        running.wait_ready()
        assert instance_of(running.pid).is_dir()
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        status = running.process.wait(timeout=5)
        elapsed = time.monotonic() - started
        assert status == 0
        assert elapsed < 1.0
        assert not instance_of(running.pid).exists()
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", running.port)) != 0
        assert "Stopped" in running.output()
    finally:
        running.stop()


def test_repeated_signal_is_one_stop():
    running = ExporterProcess("--events.source=poll")
    try:
        running.wait_ready()
        running.process.send_signal(signal.SIGTERM)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=5) == 0
        assert "Stopped" in running.output()
    finally:
        running.stop()


def test_sighup_stops_cleanly():
    running = ExporterProcess("--events.source=poll")
    try:
        running.wait_ready()
        running.process.send_signal(signal.SIGHUP)
        assert running.process.wait(timeout=5) == 0
        assert "Received SIGHUP; stopping" in running.output()
    finally:
        running.stop()


def test_stale_tracefs_instance_removed_at_start():
    require_root()
    if not INSTANCES.is_dir():  # a new machine: nothing has mounted tracefs yet
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(INSTANCES.parent)], check=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = instance_of(dead.pid)
    stale.mkdir()
    running = ExporterProcess()
    try:
        running.wait_ready()
        assert not stale.exists()
    finally:
        running.stop()
        if stale.exists():
            stale.rmdir()


def test_custom_tracefs_path_is_never_mounted(tmp_path):
    require_root()
    result = subprocess.run(
        [sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{free_port()}",
         "--events.source=tracefs", f"--path.tracefs={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "is not a tracefs mount" in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
