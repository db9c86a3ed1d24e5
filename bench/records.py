"""Read the record file that bench/probe.py writes while an exporter runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


def _float(text: str) -> float | None:
    return None if text == "-" else float(text)


def _int(text: str) -> int | None:
    return None if text == "-" else int(text)


@dataclass
class Applied:
    """The moment the exporter's state first showed a worker's exit."""

    time: float
    exit_time: float | None
    event: str


@dataclass
class Finished:
    """A worker exit as the exporter classified and counted it."""

    outcome: str
    exit_time: float | None
    request_time: float | None
    request_via: str | None
    exit_status: int | None


class Record:
    """Everything one probe wrote so far, keyed by worker pid; read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tracked: dict[int, float] = {}
        self.applied: dict[int, Applied] = {}
        self.finished: dict[int, Finished] = {}
        self._offset = 0
        self._partial = ""

    def read(self) -> None:
        """Read the lines appended since the last call."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as file:
            file.seek(self._offset)
            text = file.read()
            self._offset = file.tell()
        text = self._partial + text
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._parse(line.split(" "))

    def _parse(self, fields: list[str]) -> None:
        kind, pid = fields[0], int(fields[1])
        if kind == "tracked":
            self.tracked[pid] = float(fields[3])
        elif kind == "applied":
            self.applied[pid] = Applied(float(fields[3]), _float(fields[4]), fields[5])
        elif kind == "finished":
            via = None if fields[6] == "-" else fields[6]
            self.finished[pid] = Finished(fields[3], _float(fields[4]), _float(fields[5]), via, _int(fields[7]))

    def forget(self, pids: list[int]) -> None:
        """Drop what is known about ``pids``, whose numbers the kernel may reuse."""
        for pid in pids:
            self.tracked.pop(pid, None)
            self.applied.pop(pid, None)
            self.finished.pop(pid, None)


def wait_for(records: list[Record], done, timeout: float, step: float = 0.02) -> bool:
    """Read ``records`` until ``done(record)`` holds for all of them; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        for record in records:
            record.read()
        if all(done(record) for record in records):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
