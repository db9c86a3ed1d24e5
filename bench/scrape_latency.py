"""/metrics latency with TOPOLOGIES topologies of WORKERS_PER_TOPOLOGY workers and the diagnosis running.

``python -m exporter`` runs with --diagnostics.interval=DIAGNOSTICS_INTERVAL, so its
diagnosis thread reads /proc for every worker tree once a second, and
process-exporter runs with bench/process-exporter.yaml on the same processes.
Once the exporter exports its first diagnosis, each server is scraped
SCRAPES[label] times per block with Prometheus' Accept and Accept-Encoding headers,
one scrape at a time with SCRAPE_GAP between them, over BLOCKS blocks that
alternate between the servers. The latency is the client's time from the request
to the last byte of the body.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from servers import PROMETHEUS_HEADERS, ProcessExporter, Server, StormExporter, finish_profile, start_profile
from stats import summarize_ms
from workload import Workload

TOPOLOGIES = 200
WORKERS_PER_TOPOLOGY = 4
DIAGNOSTICS_INTERVAL = "1s"
EXPORTER = "storm-termination-exporter (tracefs,netlink)"
PEER = "process-exporter"
SCRAPES = {EXPORTER: 100, PEER: 20}
SCRAPE_GAP = 0.05
TOPOLOGY_PREFIX = "bench-scrape-"
DIAGNOSIS_TIMEOUT = 60.0
# Each worker gets a port of its own, as the slots of many supervisors would give
# them. Shared ports would make every worker a port_conflict finding.
FIRST_PORT = 6700
PROFILE_DIR: Path | None = None  # bench/run.py --profile: profile the exporter during the first block
PROFILE_SECONDS = 10.0


def measure(workload: Workload, log_dir: Path, blocks: int) -> dict:
    port = FIRST_PORT
    for topology in range(TOPOLOGIES):
        name = f"{TOPOLOGY_PREFIX}{topology}-{os.getpid()}"
        for _ in range(WORKERS_PER_TOPOLOGY):
            workload.start_tree(name, port=port)
            port += 1
    servers: dict[str, Server] = {
        EXPORTER: StormExporter(
            "scrape-exporter", log_dir, "tracefs,netlink", f"--diagnostics.interval={DIAGNOSTICS_INTERVAL}"
        ),
        PEER: ProcessExporter("scrape-process-exporter", log_dir),
    }
    result: dict = {"topologies": TOPOLOGIES, "workers": TOPOLOGIES * WORKERS_PER_TOPOLOGY}
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        result["diagnosis_wait_s"] = _wait_diagnosis(servers[EXPORTER])
        samples: dict[str, list[list[float]]] = {label: [] for label in servers}
        sizes: dict[str, int] = {}
        profile = None
        if PROFILE_DIR is not None:
            profile = start_profile(servers[EXPORTER], PROFILE_SECONDS, PROFILE_DIR / "profile-scrape.svg")
        for _ in range(blocks):
            for label, server in servers.items():
                block, sizes[label] = _scrape_block(server, SCRAPES[label])
                samples[label].append(block)
        result["blocks"] = {
            label: [summarize_ms(block) for block in blocks_of] for label, blocks_of in samples.items()
        }
        finish_profile(profile)
        result["all_samples_s"] = {
            label: [round(value, 6) for block in blocks_of for value in block]
            for label, blocks_of in samples.items()
        }
        result["gzip_body_bytes"] = sizes
        result["cpu_seconds_total"] = {label: round(server.cpu_seconds(), 2) for label, server in servers.items()}
    finally:
        result["stopped"] = {label: server.stop() for label, server in servers.items()}
        workload.close()
    return result


def _wait_diagnosis(server: Server) -> float:
    """Wait until the exporter exports a SIGTERM disposition for the benchmark's workers."""
    started = time.monotonic()
    marker = f'topology="{TOPOLOGY_PREFIX}'
    while time.monotonic() - started < DIAGNOSIS_TIMEOUT:
        text = server.scrape()
        if any(line.startswith("storm_worker_sigterm_disposition{") and marker in line
               for line in text.splitlines()):
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    raise RuntimeError(f"{server.label} exported no diagnosis within {DIAGNOSIS_TIMEOUT:g} s")


def _scrape_block(server: Server, count: int) -> tuple[list[float], int]:
    latencies = []
    size = 0
    for _ in range(count):
        started = time.monotonic()
        body = server.get("/metrics", timeout=10.0, headers=PROMETHEUS_HEADERS)
        latencies.append(time.monotonic() - started)
        if body is None:
            raise RuntimeError(f"scraping {server.label} failed; see {server.log_path}")
        size = len(body)
        time.sleep(SCRAPE_GAP)
    return latencies, size
