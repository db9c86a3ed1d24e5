"""The benchmark script starts: its help and its dry run, which measures nothing."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import REPO

RUN = REPO / "bench" / "run.py"


def test_bench_help_lists_options():
    completed = subprocess.run([sys.executable, str(RUN), "--help"], capture_output=True, text=True, timeout=10)
    assert completed.returncode == 0, completed.stderr
    assert "--dry-run" in completed.stdout
    assert "--repeats" in completed.stdout


def test_bench_dry_run_prints_plan():
    completed = subprocess.run(
        [sys.executable, str(RUN), "--dry-run"], capture_output=True, text=True, timeout=10
    )
    assert completed.returncode == 0, completed.stderr
    assert "fork storm: 5000 processes in 1000 ms" in completed.stdout
    assert "cost: populations 500, 2000, 5000" in completed.stdout
    assert completed.stdout.rstrip().endswith("dry run: nothing measured")


def test_bench_rejects_unknown_section():
    completed = subprocess.run(
        [sys.executable, str(RUN), "--sections=nosuch"], capture_output=True, text=True, timeout=10
    )
    assert completed.returncode == 2
    assert "unknown section nosuch" in completed.stderr
