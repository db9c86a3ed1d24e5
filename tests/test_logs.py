"""Log formats and the rate limit on repeated records."""

from __future__ import annotations

import json
import logging

from exporter.logs import JsonFormatter, LogfmtFormatter, RateLimit


def record(message: str, *args, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("exporter.test", level, __file__, 1, message, args, None)


def test_logfmt_quotes_and_escapes():
    line = LogfmtFormatter().format(record('topology=%r said "%s"', "a b", 'x\ny'))
    assert " level=warning " in line
    assert " logger=exporter.test " in line
    assert line.endswith('msg="topology=\'a b\' said \\"x\\ny\\""')


def test_logfmt_plain_value_unquoted():
    assert LogfmtFormatter().format(record("Stopped")).endswith(" msg=Stopped")


def test_json_is_one_object():
    entry = json.loads(JsonFormatter().format(record("pid=%d gone", 42, level=logging.ERROR)))
    assert entry["level"] == "error"
    assert entry["msg"] == "pid=42 gone"
    assert entry["logger"] == "exporter.test"
    assert entry["time"].endswith("Z")


def test_rate_limit_drops_repeats_then_reports():
    limit = RateLimit(burst=2, period=60.0)
    passed = [limit.filter(record("Read failed pid=%d", pid)) for pid in range(5)]
    assert passed == [True, True, False, False, False]
    limit._windows[("exporter.test", logging.WARNING, "Read failed pid=%d")][0] -= 61
    late = record("Read failed pid=%d", 9)
    assert limit.filter(late)
    assert "dropped 3 times" in late.getMessage()


def test_rate_limit_keeps_debug():
    limit = RateLimit(burst=1, period=60.0)
    assert all(limit.filter(record("Signal %d", n, level=logging.DEBUG)) for n in range(10))
