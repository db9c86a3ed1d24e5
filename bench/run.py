"""Compare this exporter with process-exporter and API timestamps, and write the figures and plots.

What ``make bench`` runs. The detection section is repeated ``--detection-repeats``
times and the others ``--repeats`` times. The summary gives the median of the
repeats and their spread (min to max):

1. Exit-detection latency and 2. shutdown-duration error (bench/detection.py), then
4. a fork storm (bench/forkstorm.py), with one exporter per event source and a
   process-exporter watching the same workers (bench/session.py).
3. CPU and peak RSS of every exporter at once with 500, 2,000 and 5,000 idle
   processes, 50 workers and 20 worker exits a second (bench/cost.py).
5. /metrics latency with 200 topologies of 4 workers and the diagnosis running
   (bench/scrape_latency.py).

Needs root (tracefs, the proc connector), gcc for bench/holder.c and Debian's
prometheus-process-exporter (``make bench-deps``). Writes bench/results/latest.json,
bench/results/summary.md, the servers' logs in bench/results/logs/, and the plots
in docs/benchmarks/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
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
import forkstorm  # noqa: E402
import report  # noqa: E402
import scrape_latency  # noqa: E402
import servers  # noqa: E402
from kernel_truth import KernelTimes  # noqa: E402
from session import Session  # noqa: E402
from workload import Workload, build_holder  # noqa: E402

RESULTS_DIR = BENCH / "results"
LOG_DIR = RESULTS_DIR / "logs"
PLOT_DIR = ROOT / "docs" / "benchmarks"
SECTIONS = ("detection", "cost", "scrape")
DETECTION_WORKERS = 100


def exporter_commit() -> str | None:
    """Return the checked-out commit, with "+changes" when the work tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "exporter"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def machine() -> dict[str, object]:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        load = loadavg.read().split()[:3]
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        memory_kb = int(meminfo.readline().split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "cpu_model": model,
        "python": platform.python_version(),
        "process_exporter": servers.process_exporter_version(),
        "exporter_commit": exporter_commit() if servers.EXPORTER_TREE == ROOT else str(servers.EXPORTER_TREE),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": [float(value) for value in load],
        "live_processes_at_start": cost.live_processes(),
    }


def run_detection(binary: str, repeats: int, workers: int) -> dict:
    """Run the detection and fork-storm measurements, each repeat with fresh servers."""
    runs: list[dict] = []
    truth = KernelTimes()
    truth.start()
    try:
        for repeat in range(repeats):
            workload = Workload(binary)
            work_dir = Path(tempfile.mkdtemp(prefix="storm-bench-records-"))
            session = Session(LOG_DIR, work_dir, repeat)
            run: dict = {}
            try:
                session.start()
                print(f"  repeat {repeat + 1}: detection, {workers} workers", flush=True)
                run["detection"] = detection.measure(session, workload, truth, workers, repeat)
                print(f"  repeat {repeat + 1}: fork storm", flush=True)
                run["fork_storm"] = forkstorm.measure(session, workload, truth, repeat)
            finally:
                run["stopped"] = session.close()
                workload.close()
                shutil.rmtree(work_dir, ignore_errors=True)
            runs.append(run)
    finally:
        truth.close()
    return {"runs": runs}


def run_cost(binary: str, repeats: int) -> dict:
    runs: list[dict] = []
    kernel = KernelTimes()
    kernel.start()
    try:
        for repeat in range(repeats):
            run = {}
            for population in cost.POPULATIONS:
                print(f"  repeat {repeat + 1}: {population} idle processes", flush=True)
                workload = Workload(binary)
                try:
                    run[str(population)] = cost.measure_population(workload, kernel, population, LOG_DIR, repeat)
                finally:
                    workload.close()
            runs.append(run)
    finally:
        kernel.close()
    return {"runs": runs}


def run_scrape(binary: str, repeats: int) -> dict:
    workload = Workload(binary)
    try:
        return scrape_latency.measure(workload, LOG_DIR, repeats)
    finally:
        workload.close()


def quick() -> None:
    """Shrink every measurement for a trial run of a few minutes; its figures are not comparable."""
    global DETECTION_WORKERS
    DETECTION_WORKERS = 40
    forkstorm.STORM_WORKERS = 20
    forkstorm.STORM_PROCESSES = 2000
    cost.POPULATIONS = (500, 2000)
    cost.WINDOW_SECONDS = 15.0
    scrape_latency.TOPOLOGIES = 50
    scrape_latency.SCRAPES = {scrape_latency.EXPORTER: 30, scrape_latency.PEER: 5}


def plan(args: argparse.Namespace) -> str:
    lines = [
        f"repeats: {args.detection_repeats} of detection, {args.repeats} of the others; "
        f"sections: {', '.join(args.sections)}",
        f"detection: {DETECTION_WORKERS} workers per repeat, sources {', '.join(detection.MODES)}, "
        "process-exporter scraped back to back",
        f"fork storm: {forkstorm.STORM_PROCESSES} processes in {forkstorm.STORM_MILLISECONDS} ms "
        f"while {forkstorm.STORM_WORKERS} workers stop",
        f"cost: populations {', '.join(map(str, cost.POPULATIONS))}, {cost.LIVE_TREES} workers, "
        f"{cost.EXITS_PER_SECOND} exits/s, {cost.WINDOW_SECONDS:g} s windows",
        f"/metrics latency: {scrape_latency.TOPOLOGIES} topologies x {scrape_latency.WORKERS_PER_TOPOLOGY} "
        f"workers, --diagnostics.interval={scrape_latency.DIAGNOSTICS_INTERVAL}",
        f"results: {RESULTS_DIR}/latest.json and summary.md; plots: {PLOT_DIR}"
        + ("; py-spy flame graphs in the results" if args.profile else ""),
    ]
    return "\n".join(lines)


def check_prerequisites() -> list[str]:
    """Return what is missing for a real run."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (tracefs and the proc connector)")
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        missing.append("a C compiler (gcc) for bench/holder.c")
    if shutil.which(servers.PROCESS_EXPORTER) is None:
        missing.append(f"{servers.PROCESS_EXPORTER} (run `make bench-deps` as root)")
    if shutil.which("kill") is None:
        missing.append("the kill command (procps)")
    return missing


def dry_run(args: argparse.Namespace) -> int:
    """Print the plan, compile the holder and check the plotting library, without measuring."""
    print(plan(args))
    import matplotlib  # noqa: F401  (the plots need it)

    directory = tempfile.mkdtemp(prefix="storm-bench-dry-")
    try:
        build_holder(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    missing = check_prerequisites()
    for item in missing:
        print(f"missing for a real run: {item}")
    print("dry run: nothing measured")
    return 0


def replot() -> int:
    path = RESULTS_DIR / "latest.json"
    if not path.exists():
        print(f"{path} not found: run bench/run.py first", file=sys.stderr)
        return 1
    results = json.loads(path.read_text(encoding="utf-8"))
    results["summary"] = report.summarize(results)
    write(results)
    (RESULTS_DIR / "summary.md").write_text(report.markdown(results), encoding="utf-8")
    for plotted in report.plot(results, PLOT_DIR):
        print(f"plot: {plotted}")
    return 0


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks that end every started process


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare storm-termination-exporter with process-exporter and API timestamps.",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of the cost and /metrics sections (default 3)")
    parser.add_argument(
        "--detection-repeats", type=int, default=5,
        help="runs of the detection and fork-storm section, about 30 s each (default 5)",
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS),
        help=f"comma list of sections to run, of {', '.join(SECTIONS)} (default all)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts and shorter windows, for trials")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check the set-up, then exit")
    parser.add_argument(
        "--exporter-tree", type=Path,
        help="run the exporter package of another checkout, such as an older commit extracted with "
        "`git archive COMMIT | tar -x -C DIR` (default: this repository)",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS_DIR,
        help=f"directory for latest.json, summary.md and the logs (default {RESULTS_DIR})",
    )
    parser.add_argument(
        "--replot", action="store_true",
        help=f"redraw the plots and summary.md from {RESULTS_DIR}/latest.json without measuring",
    )
    parser.add_argument(
        "--profile", action="store_true",
        help=f"profile the tracefs,netlink exporter with py-spy during the cost windows and the first "
        f"/metrics block; flame graphs go to {RESULTS_DIR}",
    )
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)}; expected some of {', '.join(SECTIONS)}")
    if args.repeats < 1 or args.detection_repeats < 1:
        parser.error(f"--repeats and --detection-repeats must be at least 1, got {args.repeats}, {args.detection_repeats}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.quick:
        quick()
    if args.exporter_tree is not None:
        if not (args.exporter_tree / "exporter" / "__main__.py").is_file():
            print(f"--exporter-tree {args.exporter_tree} has no exporter/__main__.py", file=sys.stderr)
            return 2
        servers.EXPORTER_TREE = args.exporter_tree.resolve()
    set_results_dir(args.results)
    if args.profile:
        cost.PROFILE_DIR = RESULTS_DIR
        scrape_latency.PROFILE_DIR = RESULTS_DIR
    if args.dry_run:
        return dry_run(args)
    if args.replot:
        return replot()
    missing = check_prerequisites()
    if missing:
        print("bench/run.py cannot run; missing: " + "; ".join(missing), file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    print(plan(args), flush=True)
    started = time.monotonic()
    results: dict = {"command": " ".join(["bench/run.py", *(argv or sys.argv[1:])]),
                     "machine": machine(), "repeats": args.repeats,
                     "detection_repeats": args.detection_repeats, "quick": args.quick}
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="storm-bench-")
    failed = []
    try:
        binary = build_holder(directory)
        sections = {
            "detection": lambda: run_detection(binary, args.detection_repeats, DETECTION_WORKERS),
            "cost": lambda: run_cost(binary, args.repeats),
            "scrape": lambda: run_scrape(binary, args.repeats),
        }
        for name in args.sections:
            print(f"{name}:", flush=True)
            section_started = time.monotonic()
            try:
                results[name] = sections[name]()
            except Exception as error:  # record it and go on with the next section
                traceback.print_exc()
                results[name] = {"error": f"{type(error).__name__}: {error}"}
                failed.append(name)
            results.setdefault("section_seconds", {})[name] = round(time.monotonic() - section_started, 1)
            write(results)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    results["summary"] = report.summarize(results)
    write(results)
    (RESULTS_DIR / "summary.md").write_text(report.markdown(results), encoding="utf-8")
    for path in report.plot(results, PLOT_DIR):
        print(f"plot: {path}")
    print(report.markdown(results))
    return 1 if failed else 0


def set_results_dir(directory: Path) -> None:
    """Write results to ``directory``, and the plots too unless it is the default."""
    global RESULTS_DIR, LOG_DIR, PLOT_DIR
    if directory.resolve() != RESULTS_DIR.resolve():
        PLOT_DIR = directory.resolve()
    RESULTS_DIR = directory.resolve()
    LOG_DIR = RESULTS_DIR / "logs"


def write(results: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "latest.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
