"""CPU per proc connector event of the netlink reader, in stages, under worker churn.

Usage: .venv/bin/python bench/reader_cost.py [--seconds 20] [--idle 500]   (as root)

The benchmark keeps 50 worker trees and 20 worker exits a second (bench/cost.py's
Churn) and starts one reader process per stage at the same time, each measuring
its own CPU with getrusage:

- decode: NetlinkSource with no /proc reads and a no-op emit (socket reads, the
  kernel filter, decoding);
- fork-reads: plus /proc/PID/stat at each fork (read_fork_info);
- all-reads: plus the full read at each exec (read_info);
- tracker: plus Tracker.handle under a lock, as the exporter applies events.

Each stage's CPU divided by the events it emitted is its cost per event; the
difference between stages is what that stage adds. Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(1, str(BENCH.parent))
sys.path.insert(2, str(BENCH.parent / "tests"))

STAGES = ("decode", "fork-reads", "all-reads", "tracker")


def read(stage: str, seconds: float) -> None:
    """Run one reader stage for ``seconds`` and print its cost."""
    from exporter.app import GIL_SWITCH_SECONDS
    from exporter.procfs import ProcFS
    from exporter.sources.netlink import NetlinkSource
    from exporter.tracker import Tracker

    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    procfs = ProcFS()
    if stage == "decode":
        source = NetlinkSource(read_info=None)
    elif stage == "fork-reads":
        source = NetlinkSource(read_info=None, read_fork_info=procfs.read_fork_info)
    else:
        source = NetlinkSource(read_info=procfs.read_info, read_fork_info=procfs.read_fork_info)
    tracker = Tracker(
        lookup=procfs.read_info, read_cwd=procfs.read_cwd, read_cgroup=procfs.read_cgroup,
        host_pidns=procfs.read_pidns(1),
    )
    lock = threading.Lock()
    count = 0

    def emit(event) -> None:
        nonlocal count
        count += 1
        if stage == "tracker":
            with lock:
                tracker.handle(event)

    source.open()
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(emit, stop))
    thread.start()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    time.sleep(seconds)
    after = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = time.monotonic() - started
    stop.set()
    thread.join()
    source.close()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(
        f"{stage:<11} events {count:>6}  {count / elapsed:6.1f}/s  CPU-s per minute {cpu * 60 / elapsed:5.3f}"
        f"  µs per event {cpu * 1e6 / max(1, count):6.1f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per stage (default 20)")
    parser.add_argument("--idle", type=int, default=500, help="idle processes kept alive (default 500)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # one reader process
    args = parser.parse_args()
    if args.stage:
        read(args.stage, args.seconds)
        return 0
    if os.geteuid() != 0:
        print("bench/reader_cost.py needs root for the proc connector", file=sys.stderr)
        return 1
    import cost
    from workload import Workload, build_holder

    directory = tempfile.mkdtemp(prefix="storm-bench-")
    workload = Workload(build_holder(directory))
    readers = []
    try:
        workload.start_idle(args.idle)
        churn = cost.Churn(workload, 0)
        churn.fill()
        readers = [
            subprocess.Popen([sys.executable, __file__, "--stage", stage, "--seconds", str(args.seconds)])
            for stage in STAGES
        ]
        time.sleep(1.0)  # the readers subscribe
        started = time.monotonic()
        churn.begin(started)
        while time.monotonic() < started + args.seconds + 1.0:
            churn.step(time.monotonic())
            time.sleep(max(0.0, min(started + args.seconds + 1.0, churn.next_due) - time.monotonic()))
        for reader in readers:
            reader.wait(timeout=30)
        churn.drain(timeout=5.0)
    finally:
        for reader in readers:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
        workload.close()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
