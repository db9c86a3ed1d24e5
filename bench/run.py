"""Run every benchmark once, print the figures and write them to bench/results/latest.json.

Measured, in this order:

1. bench/procfs_scan.py: full /proc scan by ProcFS.scan() against psutil.
2. Exit-detection latency and shutdown-duration error per source mode
   (bench/detection.py), with an in-process exporter and 200 workers per mode.
3. CPU and peak RSS of ``python -m exporter`` with 2,000 idle processes and 50
   worker trees, without and with 20 worker exits a second (bench/cost.py).

Needs root (tracefs, the proc connector) and a C compiler for bench/holder.c.
Usage: .venv/bin/python bench/run.py   (what ``make bench`` runs)
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(1, str(ROOT))
sys.path.insert(2, str(ROOT / "tests"))

import cost  # noqa: E402
import detection  # noqa: E402
from exporter import logs  # noqa: E402
from kernel_truth import KernelTimes  # noqa: E402
from workload import Workload, build_holder  # noqa: E402

RESULTS = BENCH / "results" / "latest.json"
EXPORTER_LOG = BENCH / "results" / "exporter.log"  # the exporter of the cost phases
DETECTION_LOG = BENCH / "results" / "detection.log"  # the in-process exporters
WORKERS_PER_MODE = 200
PROCFS_SCAN_TIMEOUT = 300

TARGET_DETECTION_P99_MS = 5.0  # with kernel sources
TARGET_DURATION_ERROR_MS = 5.0
TARGET_CPU_SECONDS_PER_MINUTE = 0.6  # 1% of one core
TARGET_PEAK_RSS_MB = 80.0


def machine() -> dict[str, object]:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        load = loadavg.read().split()[:3]
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "cpu_model": model,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": [float(value) for value in load],
    }


def run_procfs_scan() -> dict[str, object]:
    """Run bench/procfs_scan.py and return its two medians and their ratio."""
    completed = subprocess.run(
        [sys.executable, str(BENCH / "procfs_scan.py")],
        capture_output=True,
        text=True,
        timeout=PROCFS_SCAN_TIMEOUT,
    )
    print(completed.stdout, end="")
    if completed.returncode != 0:
        raise RuntimeError(f"procfs_scan.py exited with status {completed.returncode}:\n{completed.stderr}")
    patterns = {
        "procfs_median_ms": r"ProcFS\.scan median: ([0-9.]+) ms",
        "psutil_median_ms": r"psutil median: ([0-9.]+) ms",
        "ratio_psutil_to_procfs": r"ratio psutil / ProcFS\.scan: ([0-9.]+)",
        "processes_seen": r"processes seen: (.*)",
    }
    result: dict[str, object] = {}
    for key, pattern in patterns.items():
        match = re.search(pattern, completed.stdout)
        if match is None:
            raise RuntimeError(f"procfs_scan.py printed no line matching {pattern!r}")
        result[key] = match[1] if key == "processes_seen" else float(match[1])
    return result


def log_to_file(path: Path) -> None:
    """Send log records at info and above to ``path`` as the exporter formats and filters them.

    The in-process exporters then pay what ``python -m exporter`` pays for logging,
    without writing into the benchmark's output.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logs.LogfmtFormatter())
    handler.addFilter(logs.RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def run_detection(binary: str) -> dict[str, object]:
    log_to_file(DETECTION_LOG)
    results: dict[str, object] = {}
    truth = KernelTimes()
    truth.start()
    workload = Workload(binary)
    try:
        for mode in detection.MODES:
            print(f"exit detection: mode {mode}, {WORKERS_PER_MODE} workers", flush=True)
            try:
                results[mode] = detection.measure_mode(mode, workload, truth, WORKERS_PER_MODE)
            except Exception as error:  # one failed mode must not hide the others
                traceback.print_exc()
                results[mode] = {"error": f"{type(error).__name__}: {error}"}
            finally:
                workload.close()
    finally:
        workload.close()
        truth.close()
    return results


def run_cost(binary: str) -> dict[str, object]:
    workload = Workload(binary)
    EXPORTER_LOG.parent.mkdir(parents=True, exist_ok=True)
    EXPORTER_LOG.unlink(missing_ok=True)
    log_path = str(EXPORTER_LOG)
    print(
        f"steady-state cost: {cost.IDLE_PROCESSES} idle processes, {cost.LIVE_TREES} worker trees, "
        f"{cost.PHASE_SECONDS:.0f} s without exits, {cost.PHASE_SECONDS:.0f} s with "
        f"{cost.EXITS_PER_SECOND} exits/s",
        flush=True,
    )
    kernel = KernelTimes()
    kernel.start()
    try:
        result = cost.measure_cost(workload, kernel, log_path)
    finally:
        workload.close()
        kernel.close()
    result["exporter_log_warnings"] = _log_warnings(log_path)
    return result


def _log_warnings(log_path: str) -> list[str]:
    """Return the exporter's warning and error lines, at most 20."""
    lines = []
    with open(log_path, encoding="utf-8", errors="replace") as log:
        for line in log:
            if "level=warning" in line or "level=error" in line:
                lines.append(line.rstrip())
    return lines[:20]


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "no data"
    return "met" if value <= limit else "missed"


def print_summary(results: dict) -> None:
    print()
    print("Exit detection (ms)                 p50      p99      max   target         |duration error| p50/p99/max")
    for mode, figures in results.get("exit_detection", {}).items():
        if "error" in figures:
            print(f"  {mode:<18} failed: {figures['error']}")
            continue
        latency = figures["detection_latency"]
        error = figures["duration_error"]
        target = "p99 <= 5" if mode != "poll" else "(none)"
        print(
            f"  {mode:<18} {latency['p50_ms']:>12} {latency['p99_ms']:>8} {latency['max_ms']:>8}   {target:<14}"
            f" {error['p50_ms']} / {error['p99_ms']} / {error['max_ms']}"
            f"   outcomes {figures['outcomes']}"
        )
    costs = results.get("steady_state_cost", {})
    if "error" in costs:
        print(f"Steady-state cost failed: {costs['error']}")
    for phase in ("steady", "churn"):
        figures = costs.get(phase)
        if not figures:
            continue
        print(
            f"Cost {phase:<6} {figures['cpu_seconds_per_minute']} CPU-s/min "
            f"({figures['percent_of_one_core']}% of one core, target 0.6), "
            f"peak RSS {figures['peak_rss_mb']} MB (target 80)"
        )
    scan = results.get("procfs_scan", {})
    if "procfs_median_ms" in scan:
        print(
            f"/proc scan: ProcFS {scan['procfs_median_ms']} ms, psutil {scan['psutil_median_ms']} ms, "
            f"ratio {scan['ratio_psutil_to_procfs']}"
        )
    print()
    for name, check in results["targets"].items():
        print(f"  {name}: {check['value']} (target <= {check['limit']}) {check['verdict']}")
    print(f"\nwritten to {RESULTS}")


def judge(results: dict) -> dict[str, dict]:
    checks = {}
    for mode, figures in results.get("exit_detection", {}).items():
        if "error" in figures:
            continue
        if mode != "poll":
            value = figures["detection_latency"]["p99_ms"]
            checks[f"detection p99 ms, {mode}"] = (value, TARGET_DETECTION_P99_MS)
        value = figures["duration_error"]["p99_ms"]
        checks[f"duration error p99 ms, {mode}"] = (value, TARGET_DURATION_ERROR_MS)
    for phase in ("steady", "churn"):
        figures = results.get("steady_state_cost", {}).get(phase)
        if figures:
            checks[f"CPU-s per minute, {phase}"] = (figures["cpu_seconds_per_minute"], TARGET_CPU_SECONDS_PER_MINUTE)
            checks[f"peak RSS MB, {phase}"] = (figures["peak_rss_mb"], TARGET_PEAK_RSS_MB)
    return {
        name: {"value": value, "limit": limit, "verdict": verdict(value, limit)}
        for name, (value, limit) in checks.items()
    }


def write(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks that end every started process


def main() -> int:
    if os.geteuid() != 0:
        print("bench/run.py needs root for tracefs and the proc connector; run it as root", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started = time.monotonic()
    results: dict = {"command": "make bench", "machine": machine()}
    directory = tempfile.mkdtemp(prefix="storm-bench-")
    try:
        binary = build_holder(directory)
        sections = (
            ("procfs_scan", run_procfs_scan),
            ("exit_detection", lambda: run_detection(binary)),
            ("steady_state_cost", lambda: run_cost(binary)),
        )
        for name, section in sections:
            try:
                results[name] = section()
            except Exception as error:  # record it and go on with the next benchmark
                traceback.print_exc()
                results[name] = {"error": f"{type(error).__name__}: {error}"}
            write(results)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    results["targets"] = judge(results)
    write(results)
    print_summary(results)
    failed = [name for name in ("procfs_scan", "exit_detection", "steady_state_cost") if "error" in results[name]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
