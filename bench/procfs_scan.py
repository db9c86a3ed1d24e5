"""Time full /proc scans by ProcFS.scan() and by psutil with many idle processes running.

Both sides read ppid, uid and cmdline of every process. ProcFS.scan() also reads
state, comm, threads, NSpid and the PID namespace inode. psutil keeps its Process
objects between process_iter() calls, as a long-running program would.

Usage: python bench/procfs_scan.py [--processes 2000] [--runs 9]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.procfs import ProcFS  # noqa: E402


def start_sleepers(count: int) -> list[subprocess.Popen]:
    sleepers = []
    for _ in range(count):
        sleepers.append(
            subprocess.Popen(
                ["sleep", "600"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return sleepers


def stop_sleepers(sleepers: list[subprocess.Popen]) -> None:
    for sleeper in sleepers:
        sleeper.kill()
    for sleeper in sleepers:
        sleeper.wait()


def scan_procfs() -> int:
    return len(ProcFS().scan())


def scan_psutil() -> int:
    return len([process.info for process in psutil.process_iter(["ppid", "uids", "cmdline"])])


def time_scans(scans: dict[str, Callable[[], int]], runs: int) -> dict[str, list[float]]:
    """Run each scan once to warm up, then ``runs`` times, alternating between them."""
    for scan in scans.values():
        scan()
    durations: dict[str, list[float]] = {name: [] for name in scans}
    for _ in range(runs):
        for name, scan in scans.items():
            started = time.perf_counter()
            scan()
            durations[name].append(time.perf_counter() - started)
    return durations


def print_machine() -> None:
    print(f"nproc: {len(os.sched_getaffinity(0))}")
    print(f"kernel: {platform.release()}")
    print(f"python: {platform.python_version()} ({sys.executable})")
    print(f"psutil: {psutil.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--processes", type=int, default=2000, help="number of idle sleep processes to start"
    )
    parser.add_argument("--runs", type=int, default=9, help="number of timed scans per method")
    args = parser.parse_args()

    print_machine()
    sleepers = start_sleepers(args.processes)
    try:
        print(f"processes seen: ProcFS {scan_procfs()}, psutil {scan_psutil()}")
        durations = time_scans({"ProcFS.scan": scan_procfs, "psutil": scan_psutil}, args.runs)
    finally:
        stop_sleepers(sleepers)

    procfs_median = statistics.median(durations["ProcFS.scan"])
    psutil_median = statistics.median(durations["psutil"])
    print(f"runs: {args.runs} per method, {args.processes} idle sleep processes started")
    print(f"ProcFS.scan median: {procfs_median * 1000:.1f} ms")
    print(f"psutil median: {psutil_median * 1000:.1f} ms")
    print(f"ratio psutil / ProcFS.scan: {psutil_median / procfs_median:.2f}")


if __name__ == "__main__":
    main()
