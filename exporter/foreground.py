"""Background work that gives way to a scrape while /metrics is being built.

The exporter is one Python process: a diagnosis round or a full /proc scan
competes with a scrape for the interpreter lock, and takes the tracker's lock
that the scrape needs. With 800 workers a diagnosis round took about 60 ms of
CPU, against about 10 ms for a scrape (docs/benchmarks.md). So these loops call
``give_way()`` between small units of work, which waits while a scrape runs.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

# Longer than one scrape of a large node (about 10 ms), so that a waiting loop
# resumes when the scrape ends, not before.
# NOTE: back-to-back scrapes with no pause would hold each unit of background work
# this long, so a diagnosis round or a scan would then take many times longer.
GIVE_WAY_SECONDS = 0.025


class ScrapeGate:
    """Counts the scrapes in progress; background loops wait on it between units."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._idle = threading.Event()
        self._idle.set()

    @contextmanager
    def scraping(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
            self._idle.clear()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if not self._active:
                    self._idle.set()

    def give_way(self) -> None:
        """Wait until no scrape is in progress, at most GIVE_WAY_SECONDS."""
        if not self._idle.is_set():
            self._idle.wait(GIVE_WAY_SECONDS)
