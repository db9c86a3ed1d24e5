"""End to end: a real Prometheus scrapes the exporter while real worker trees stop."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.conftest import require_root
from tests.servers import ExporterProcess, Prometheus
from tests.stormtree import StormTrees, wait_gone


@pytest.fixture(scope="module")
def stack():
    require_root()
    with ExporterProcess("--leftover.grace=1s") as exporter:
        exporter.wait_ready()
        prometheus = Prometheus([exporter.address])
        try:
            prometheus.wait_ready()
            yield exporter, prometheus
        finally:
            prometheus.stop()


def topology_of(tree) -> str:
    return tree.topology_id.decode("utf-8", "replace")


def test_scrape_is_up_with_kernel_sources(stack):
    _, prometheus = stack
    assert prometheus.wait_scalar('up{job="storm-termination-exporter"}', 1) == 1
    sources = prometheus.wait_scalar("count(storm_termination_exporter_event_source_info)", 2)
    assert sources == 2
    assert prometheus.scalar('storm_termination_exporter_event_source_info{source="tracefs"}') == 1
    assert prometheus.scalar('storm_termination_exporter_event_source_info{source="netlink"}') == 1


def test_terminations_read_back_through_prometheus(stack):
    exporter, prometheus = stack
    with StormTrees(shutdown_sleep=0.5) as trees:
        # Topology names of this test only: other Storm-shaped processes on the
        # machine are exported too.
        launched = int(time.time())
        graceful = trees.start("graceful", f"e2e-graceful-1-{launched}", hook_secs=0.3, port=6700)
        stuck = trees.start("ignore-term", f"e2e-stuck-2-{launched}", port=6701)
        leaving = trees.start("leave-children", f"e2e-leaving-3-{launched}", port=6702, leftover_secs=8.0)
        crashing = trees.start("crash", f"e2e-crashing-4-{launched}", port=6703, crash_secs=1.5)
        ours = f'sum(storm_workers{{topology=~"e2e-.*-{launched}"}})'
        assert prometheus.wait_scalar(ours, 4) == 4

        graceful_truth = graceful.stop()
        stuck_truth = stuck.stop()
        leaving.stop()
        crashing.wait_exit()

        def exits(tree, outcome):
            expression = f'storm_worker_exits_total{{topology="{topology_of(tree)}",outcome="{outcome}"}}'
            return prometheus.wait_scalar(expression, 1)

        assert exits(graceful, "graceful") == 1
        assert exits(stuck, "sigkill") == 1
        assert exits(leaving, "graceful") == 1
        assert exits(crashing, "crashed") == 1

        escalations = f'storm_worker_sigkill_escalations_total{{topology="{topology_of(stuck)}"}}'
        assert prometheus.wait_scalar(escalations, 1) == 1
        graceful_sum = (
            f'storm_worker_shutdown_duration_seconds_sum{{topology="{topology_of(graceful)}",outcome="graceful"}}'
        )
        assert prometheus.wait_scalar(graceful_sum, graceful_truth.shutdown_duration, tolerance=0.02) == (
            pytest.approx(graceful_truth.shutdown_duration, abs=0.02)
        )
        stuck_sum = f'storm_worker_shutdown_duration_seconds_sum{{topology="{topology_of(stuck)}",outcome="sigkill"}}'
        assert prometheus.wait_scalar(stuck_sum, stuck_truth.shutdown_duration, tolerance=0.02) == (
            pytest.approx(stuck_truth.shutdown_duration, abs=0.02)
        )
        leftovers = f'storm_worker_leftover_processes{{topology="{topology_of(leaving)}"}}'
        assert prometheus.wait_scalar(leftovers, 1) == 1
        assert wait_gone(leaving.unregistered_pids, timeout=10.0) == []
        assert prometheus.wait_scalar(leftovers, 0) == 0
        detected = f'storm_worker_leftover_processes_detected_total{{topology="{topology_of(leaving)}"}}'
        assert prometheus.scalar(detected) == 1
        crashed_count = (
            f'storm_worker_shutdown_duration_seconds_count{{topology="{topology_of(crashing)}",outcome="crashed"}}'
        )
        assert prometheus.scalar(crashed_count) is None
        assert prometheus.wait_scalar(ours, 0) == 0


def test_exposition_passes_promtool(stack):
    exporter, _ = stack
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with the Debian prometheus package"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exporter.metrics_text(), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
