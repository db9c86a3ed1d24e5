"""The interface every event source provides to the exporter."""

from __future__ import annotations

import threading
from typing import Callable, Protocol

from exporter.events import Event

Emit = Callable[[Event], None]


class SourceUnavailable(Exception):
    """The source cannot run here; the message gives the reason, for the start-up log line."""


class Source(Protocol):
    """An event source running on its own thread.

    ``open()`` acquires what the source needs (socket, tracefs instance) and raises
    SourceUnavailable when that is not possible. ``run()`` blocks, passing each fact
    to ``emit`` as it arrives, until ``stop`` is set; it returns within about 0.2 s
    of that and raises only on a failure the source cannot recover from.
    ``close()`` releases everything ``open()`` acquired and may be called twice.
    """

    name: str

    def open(self) -> None: ...

    def run(self, emit: Emit, stop: threading.Event) -> None: ...

    def close(self) -> None: ...
