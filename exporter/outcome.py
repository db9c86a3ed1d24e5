"""Wait statuses, signal names and the outcome of a worker exit."""

from __future__ import annotations

import signal

GRACEFUL = "graceful"
HALTED = "halted"
SIGKILL = "sigkill"
CRASHED = "crashed"
UNKNOWN = "unknown"
OUTCOMES = (GRACEFUL, HALTED, SIGKILL, CRASHED, UNKNOWN)

# Outcomes whose duration goes into the shutdown histogram. UNKNOWN is there only
# when a request was seen but no source reports exit statuses (polling alone).
TIMED_OUTCOMES = (GRACEFUL, HALTED, SIGKILL, UNKNOWN)

# Signals that ask a process to stop and count as a termination request.
REQUEST_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})

# Exit statuses of a JVM that stopped by itself after a request: 0, or 128 + 15
# when HotSpot's SIGTERM handler ran the shutdown hooks and exited normally.
GRACEFUL_CODES = frozenset({0, 143})

# Storm's worker watchdog halts the JVM with this status when the shutdown hooks
# take longer than supervisor.worker.shutdown.sleep.secs.
HALT_CODE = 20

SI_KERNEL = 0x80


def signal_name(number: int) -> str:
    """Return the name ``kill -l`` prints, with the SIG prefix (``SIGTERM``)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return f"SIG{number}"


def split_status(status: int) -> tuple[int | None, int | None]:
    """Split a wait status into (exit code, terminating signal); one is None."""
    if status & 0x7F == 0:
        return (status >> 8) & 0xFF, None
    return None, status & 0x7F


def classify_exit(
    *,
    status: int | None,
    requested: bool,
    request_signal: int | None,
    sigkill_seen: bool,
    signals_visible: bool,
) -> str:
    """Return the outcome of a worker exit.

    ``sigkill_seen`` is true when a SIGKILL was generated for the worker before it
    exited, and ``signals_visible`` when a source would have shown one. With no
    exit status, those two decide between ``sigkill`` and ``graceful``.
    """
    if status is None:
        if sigkill_seen:
            return SIGKILL
        if requested and signals_visible:
            return GRACEFUL
        return UNKNOWN
    code, killed_by = split_status(status)
    if killed_by == signal.SIGKILL:
        return SIGKILL
    if not requested:
        return CRASHED
    if code in GRACEFUL_CODES or (killed_by is not None and killed_by == request_signal):
        return GRACEFUL
    if code == HALT_CODE:
        return HALTED
    return CRASHED
