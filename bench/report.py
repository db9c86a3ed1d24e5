"""Medians and spreads of the repeated runs, the target verdicts, Markdown tables and plots."""

from __future__ import annotations

from pathlib import Path

from detection import KSM_METHOD
from session import FAST_SCRAPE, MODES
from stats import ratio, spread, summarize_ms

TARGET_DETECTION_P99_MS = 5.0
TARGET_DURATION_ERROR_MS = 5.0
TARGET_CPU_RATIO = 1.0  # to process-exporter at a 15 s scrape interval
TARGET_PEAK_RSS_MB = 80.0
TARGET_SCRAPE_P99_MS = 20.0
# Modes whose worker exits come from a kernel event (the proc connector). With
# tracefs alone or polling alone, exits come from pidfds that the poll thread reads.
KERNEL_MODES = ("tracefs,netlink", "netlink")
PE_15S = "process-exporter, 15 s scrape"
PE_1S = "process-exporter, 1 s scrape"


def _samples(entry: dict, key: str) -> tuple[list[float], int]:
    """Return the samples in seconds of one run, and how many were negative and left out.

    A negative detection latency is a process-exporter scrape that showed the
    worker's group smaller before the kernel's exit time of the worker.
    """
    samples = entry.get("latency_s" if key == "detection_latency" else "duration_error_s", [])
    kept = [value for value in samples if value >= 0]
    return kept, len(samples) - len(kept)


def _figures(runs: list[dict], key: str, label: str) -> dict:
    values = {name: [] for name in ("p50_ms", "p99_ms", "max_ms")}
    pooled: list[float] = []
    negative = 0
    for run in runs:
        entry = run["detection"].get(label)
        if not entry:
            continue
        samples, left_out = _samples(entry, key)
        negative += left_out
        figures = summarize_ms(samples)
        if not figures["count"]:
            continue
        for name in values:
            values[name].append(figures[name])
        pooled.extend(samples)
    summary = {name: spread(samples) for name, samples in values.items()}
    summary["pooled"] = summarize_ms(pooled)
    summary["negative_left_out"] = negative
    return summary


def summarize(results: dict) -> dict:
    summary: dict = {}
    detection = results.get("detection", {})
    if "runs" in detection:
        runs = detection["runs"]
        labels = [*MODES, FAST_SCRAPE, KSM_METHOD]
        summary["detection"] = {label: _figures(runs, "detection_latency", label) for label in labels}
        summary["duration_error"] = {
            label: _figures(runs, "duration_error", label) for label in [*MODES, KSM_METHOD]
        }
        summary["fork_storm"] = _fork_storm(runs)
    costs = results.get("cost", {})
    if "runs" in costs:
        summary["cost"] = _cost(costs["runs"])
    scrape = results.get("scrape", {})
    if "blocks" in scrape:
        summary["scrape"] = {
            label: {
                "p50_ms": spread([block["p50_ms"] for block in blocks]),
                "p99_ms": spread([block["p99_ms"] for block in blocks]),
                "pooled": summarize_ms(scrape["all_samples_s"][label]),
            }
            for label, blocks in scrape["blocks"].items()
        }
    summary["targets"] = _targets(summary)
    return summary


def _fork_storm(runs: list[dict]) -> dict:
    storms = [run["fork_storm"] for run in runs if "fork_storm" in run]
    result: dict = {
        "processes_forked": spread([storm["storm_processes_forked"] for storm in storms], 0),
        "storm_ms": spread([storm["storm_ms_reported"] for storm in storms], 1),
        "workers_stopped": spread([storm["workers_stopped"] for storm in storms], 0),
        "ground_truth_events_lost": spread([storm["ground_truth_events_lost"] for storm in storms], 0),
    }
    for label in MODES:
        entries = [storm[label] for storm in storms if label in storm]
        result[label] = {
            name: spread([entry[name] for entry in entries], 0)
            for name in ("measured_exactly", "measured_late", "reconciled", "missed", "exits_counted_in_metrics")
        }
        result[label]["max_late_ms"] = spread([entry["max_late_ms"] for entry in entries], 1)
        result[label]["events_lost"] = spread([sum(entry["events_lost"].values()) for entry in entries], 0)
        result[label]["missed_total"] = sum(entry["missed"] for entry in entries)
    entries = [storm[FAST_SCRAPE] for storm in storms if FAST_SCRAPE in storm]
    result[FAST_SCRAPE] = {
        "workers_seen_gone": spread([entry["workers_seen_gone"] for entry in entries], 0),
        "missed": spread([entry["missed"] for entry in entries], 0),
    }
    return result


def _cost(runs: list[dict]) -> dict:
    populations = sorted({population for run in runs for population in run}, key=int)
    result: dict = {}
    for population in populations:
        entries = [run[population] for run in runs if "servers" in run.get(population, {})]
        labels = list(entries[0]["servers"]) if entries else []
        figures: dict = {
            "live_processes": spread([entry["live_processes_at_start"] for entry in entries], 0),
            "events_per_second": spread([entry["machine_process_events_per_second"] for entry in entries], 1),
            "exits_per_second": spread([entry["exits_per_second"] for entry in entries], 2),
        }
        for label in labels:
            figures[label] = {
                "cpu_seconds_per_minute": spread([e["servers"][label]["cpu_seconds_per_minute"] for e in entries]),
                "peak_rss_mb": spread([e["servers"][label]["peak_rss_mb"] for e in entries], 1),
            }
        for label in labels:
            cpu = figures[label]["cpu_seconds_per_minute"]["median"]
            figures[label]["ratio_to_15s"] = ratio(cpu, figures.get(PE_15S, {}).get("cpu_seconds_per_minute", {}).get("median"))
            figures[label]["ratio_to_1s"] = ratio(cpu, figures.get(PE_1S, {}).get("cpu_seconds_per_minute", {}).get("median"))
            # The ratio in each run, to show its spread as well.
            per_run = [
                ratio(e["servers"][label]["cpu_seconds_per_minute"], e["servers"][PE_15S]["cpu_seconds_per_minute"])
                for e in entries if PE_15S in e["servers"]
            ]
            figures[label]["ratio_to_15s_runs"] = spread(per_run, 2)
        result[population] = figures
    return result


def _verdict(value: float | None, limit: float | None) -> str:
    if limit is None:
        return "no target (exits from pidfds)"
    if value is None:
        return "no data"
    return "met" if value <= limit else "missed"


def _targets(summary: dict) -> list[dict]:
    checks = []
    for label in MODES:
        value = summary.get("detection", {}).get(label, {}).get("p99_ms", {}).get("median")
        limit = TARGET_DETECTION_P99_MS if label in KERNEL_MODES else None
        checks.append(("detection p99 (ms)", label, value, limit))
    for label in MODES:
        value = summary.get("duration_error", {}).get(label, {}).get("p99_ms", {}).get("median")
        checks.append(("duration error p99 (ms)", label, value, TARGET_DURATION_ERROR_MS))
    for population, figures in summary.get("cost", {}).items():
        for label in MODES:
            if label in figures:
                checks.append((f"CPU ratio to process-exporter at 15 s, {population} idle", label,
                               figures[label]["ratio_to_15s"], TARGET_CPU_RATIO))
    for label in MODES:
        peaks = [figures[label]["peak_rss_mb"]["max"] for figures in summary.get("cost", {}).values()
                 if label in figures]
        checks.append(("peak RSS (MB), max over populations and runs", label, max(peaks) if peaks else None,
                       TARGET_PEAK_RSS_MB))
    for label in MODES:
        storm = summary.get("fork_storm", {}).get(label)
        checks.append(("fork storm: worker exits missed, all runs", label,
                       None if storm is None else storm["missed_total"], 0))
    scrape = summary.get("scrape", {})
    for label, figures in scrape.items():
        if label.startswith("storm-termination-exporter"):
            checks.append(("/metrics p99 (ms)", label, figures["p99_ms"]["median"], TARGET_SCRAPE_P99_MS))
    return [
        {"target": name, "exporter": label, "value": value, "limit": limit, "verdict": _verdict(value, limit)}
        for name, label, value, limit in checks
    ]


# Markdown.


def _cell(figure: dict | None, unit: str = "") -> str:
    if not figure or figure.get("median") is None:
        return "n/a"
    median, low, high = figure["median"], figure["min"], figure["max"]
    if low == high:
        return f"{_number(median)}{unit}"
    return f"{_number(median)}{unit} ({_number(low)}–{_number(high)})"


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 10:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown(results: dict) -> str:
    summary = results.get("summary", {})
    parts = ["# Benchmark summary", "", "Medians of the repeats, with the spread (min–max) in brackets.", ""]
    if "detection" in summary:
        parts += _latency_table("Exit-detection latency", summary["detection"], "ms", FAST_SCRAPE)
        parts += _latency_table("Shutdown-duration error", summary["duration_error"], "ms", KSM_METHOD)
        parts += _storm_table(summary["fork_storm"])
    if "cost" in summary:
        parts += _cost_table(summary["cost"])
    if "scrape" in summary:
        parts += ["## /metrics latency", "", "| server | p50 | p99 | pooled p99 |", "| --- | --- | --- | --- |"]
        for label, figures in summary["scrape"].items():
            parts.append(f"| {label} | {_cell(figures['p50_ms'], ' ms')} | {_cell(figures['p99_ms'], ' ms')} "
                         f"| {figures['pooled']['p99_ms']} ms |")
        parts.append("")
    parts += ["## Targets", "", "| target | exporter | measured | limit | verdict |", "| --- | --- | --- | --- | --- |"]
    for check in summary.get("targets", []):
        parts.append(f"| {check['target']} | {check['exporter']} | {check['value']} | {check['limit']} "
                     f"| {check['verdict']} |")
    parts.append("")
    return "\n".join(parts)


def _latency_table(title: str, figures: dict, unit: str, reference: str) -> list[str]:
    lines = [f"## {title}", "", f"| source or peer | p50 | p99 | max | pooled p99 | p99 / p99 of {reference} |",
             "| --- | --- | --- | --- | --- | --- |"]
    base = figures.get(reference, {}).get("p99_ms", {}).get("median")
    for label, entry in figures.items():
        value = entry["p99_ms"]["median"]
        lines.append(
            f"| {label} | {_cell(entry['p50_ms'], ' ' + unit)} | {_cell(entry['p99_ms'], ' ' + unit)} "
            f"| {_cell(entry['max_ms'], ' ' + unit)} | {entry['pooled']['p99_ms']} {unit} "
            f"| {_ratio_text(ratio(value, base))} |"
        )
    lines.append("")
    for label, entry in figures.items():
        if entry.get("negative_left_out"):
            lines += [f"{label}: {entry['negative_left_out']} samples below 0 left out.", ""]
    return lines


def _storm_table(storm: dict) -> list[str]:
    lines = [
        "## Fork storm",
        "",
        f"{_cell(storm['processes_forked'])} processes in {_cell(storm['storm_ms'], ' ms')}, "
        f"{_cell(storm['workers_stopped'])} workers stopped; ground-truth listener lost "
        f"{_cell(storm['ground_truth_events_lost'])} events.",
        "",
        "| exporter | measured exactly | measured late (max) | reconciled | missed | counted in metrics | events lost |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label in MODES:
        entry = storm.get(label)
        if entry is None:
            continue
        lines.append(
            f"| {label} | {_cell(entry['measured_exactly'])} | {_cell(entry['measured_late'])} "
            f"({_cell(entry['max_late_ms'], ' ms')}) | {_cell(entry['reconciled'])} | "
            f"{_cell(entry['missed'])} | {_cell(entry['exits_counted_in_metrics'])} | {_cell(entry['events_lost'])} |"
        )
    entry = storm.get(FAST_SCRAPE)
    if entry:
        lines.append(f"| {FAST_SCRAPE} | n/a | n/a | n/a | {_cell(entry['missed'])} (not seen gone) | n/a | n/a |")
    lines.append("")
    return lines


def _cost_table(costs: dict) -> list[str]:
    lines = ["## CPU and peak RSS", ""]
    for population, figures in costs.items():
        lines += [
            f"### {population} idle processes ({_cell(figures['live_processes'])} live in all, "
            f"{_cell(figures['exits_per_second'])} worker exits/s, "
            f"{_cell(figures['events_per_second'])} process events/s)",
            "",
            "| server | CPU-s per minute | ratio to PE 15 s | ratio to PE 1 s | peak RSS |",
            "| --- | --- | --- | --- | --- |",
        ]
        for label, entry in figures.items():
            if not isinstance(entry, dict) or "cpu_seconds_per_minute" not in entry:
                continue
            lines.append(
                f"| {label} | {_cell(entry['cpu_seconds_per_minute'])} | {_ratio_text(entry['ratio_to_15s'])} "
                f"({_cell(entry['ratio_to_15s_runs'])}) | {_ratio_text(entry['ratio_to_1s'])} "
                f"| {_cell(entry['peak_rss_mb'], ' MB')} |"
            )
        lines.append("")
    return lines


# Plots.


def plot(results: dict, directory: Path) -> list[Path]:
    """Draw the latency CDFs and the cost curves as PNG files in ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    detection = results.get("detection", {})
    if "runs" in detection:
        runs = detection["runs"]
        path = directory / "detection-latency-cdf.png"
        _cdf(plt, runs, [*MODES, FAST_SCRAPE, KSM_METHOD], "latency_s",
             "Exit-detection latency: worker exit to the metric changing", "latency (ms, log scale above 0.01)", path)
        written.append(path)
        path = directory / "duration-error-cdf.png"
        _cdf(plt, runs, [*MODES, KSM_METHOD], "duration_error_s",
             "Shutdown-duration error against the kernel's times", "|error| (ms, log scale above 0.01)", path)
        written.append(path)
    summary = results.get("summary", {})
    if "cost" in summary:
        for key, title, unit, name in (
            ("cpu_seconds_per_minute", "CPU seconds per minute, 50 workers, 20 exits/s", "CPU-s per minute",
             "cpu-by-processes.png"),
            ("peak_rss_mb", "Peak RSS (VmHWM)", "MB", "rss-by-processes.png"),
        ):
            path = directory / name
            _cost_plot(plt, summary["cost"], key, title, unit, path)
            written.append(path)
    return written


def _cdf(plt, runs: list[dict], labels: list[str], key: str, title: str, xlabel: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 5.6), dpi=110)
    metric = "detection_latency" if key == "latency_s" else "duration_error"
    for label in labels:
        samples = sorted(
            value * 1000 for run in runs if label in run["detection"]
            for value in _samples(run["detection"][label], metric)[0]
        )
        if not samples:
            continue
        fractions = [(index + 1) / len(samples) for index in range(len(samples))]
        if samples[-1] == 0:  # drawn as a thick line at 0, which a step from the first sample would hide
            axes.plot([0.0, 0.0], [0.0, 1.0], linewidth=4, alpha=0.6, label=f"{label} (n={len(samples)}, all exactly 0)")
            continue
        axes.step(samples, fractions, where="post", label=f"{label} (n={len(samples)})")
    # Linear below 0.01 ms, so that errors of exactly 0 are drawn at 0.
    axes.set_xscale("symlog", linthresh=0.01, linscale=0.5)
    axes.set_xlim(left=-0.004)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("fraction of worker exits")
    axes.set_title(title)
    axes.axvline(5.0, color="grey", linestyle=":", linewidth=1)
    axes.text(5.0, 0.02, " 5 ms target", color="grey", fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _cost_plot(plt, costs: dict, key: str, title: str, unit: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 4.8), dpi=110)
    populations = list(costs)
    labels = [label for label in costs[populations[0]] if isinstance(costs[populations[0]][label], dict)
              and key in costs[populations[0]][label]]
    for label in labels:
        xs, ys, low, high = [], [], [], []
        for population in populations:
            figure_of = costs[population].get(label, {}).get(key)
            if not figure_of or figure_of["median"] is None:
                continue
            xs.append(costs[population]["live_processes"]["median"])
            ys.append(figure_of["median"])
            low.append(figure_of["median"] - figure_of["min"])
            high.append(figure_of["max"] - figure_of["median"])
        style = "--" if label.startswith("process-exporter") else "-"
        axes.errorbar(xs, ys, yerr=[low, high], marker="o", linestyle=style, capsize=3, label=label)
    axes.set_xlabel("live processes on the machine")
    axes.set_ylabel(unit)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    if key == "peak_rss_mb":
        axes.axhline(TARGET_PEAK_RSS_MB, color="grey", linestyle=":", linewidth=1)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
