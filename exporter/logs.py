"""Logging set-up: logfmt or JSON lines on stderr, with repeats rate-limited."""

from __future__ import annotations

import json
import logging
import sys
import time

FORMATS = ("logfmt", "json")
LEVELS = ("debug", "info", "warning", "error")


class LogfmtFormatter(logging.Formatter):
    """Format records as ``time=... level=... logger=... msg="..."`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        fields = [
            ("time", _timestamp(record)),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        if record.exc_info:
            fields.append(("error", self.formatException(record.exc_info)))
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields)


class JsonFormatter(logging.Formatter):
    """Format records as one JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RateLimit(logging.Filter):
    """Let through ``burst`` records per message template and ``period``, then drop.

    Debug records are never dropped.

    The first record after a dropped run carries the number dropped, so a flood
    of the same error stays visible without filling the log.
    """

    def __init__(self, burst: int = 5, period: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self._windows: dict[tuple[str, int, str], list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return True  # debug output is asked for explicitly and kept whole
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.period:
            dropped = window[2] if window else 0
            self._windows[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} (repeated message dropped {dropped} times)"
            if len(self._windows) > 10_000:
                self._windows.clear()
            return True
        if window[1] < self.burst:
            window[1] += 1
            return True
        window[2] += 1
        return False


def setup(level: str = "info", fmt: str = "logfmt") -> None:
    """Send the root logger's records to stderr in ``fmt`` at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' "=\\\n\t'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
