"""Render a registry in the Prometheus text format or OpenMetrics, byte for byte as client_python does, faster.

client_python 0.26 formats every sample anew on every scrape, and its OpenMetrics
encoder checks the sample name one character at a time. A node with 200
topologies exports about 20,000 samples, most of them histogram buckets that do
not change between scrapes. ``Encoder`` keeps the rendered line of each Sample
object from one scrape to the next, so a collector that hands out the same Sample
objects while their values are unchanged (StormCollector does) costs a dict lookup
per sample. Names and label names are escaped once per distinct string.

Only the default name escaping (underscores) is rendered here. A registry with an
exemplar, a native histogram or a timestamp, or a request for another escaping or
version, is rendered by client_python itself.
"""

from __future__ import annotations

import re
import threading
from functools import partial
from itertools import chain
from typing import Callable

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.utils import floatToGoString

# A name in the legacy character set needs no escaping; any other character
# becomes "_" under the default escaping, as client_python does it.
_LEGACY_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# Sample names that the text format moves into gauges after their family.
_OPENMETRICS_ONLY_SUFFIXES = ("_created", "_gsum", "_gcount")


class _Unsupported(Exception):
    """The registry has a sample that only client_python renders."""


def _escape_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class Encoder:
    """Render a registry as ``choose_encoder`` would, keeping the lines of unchanged samples.

    One Encoder serves one registry. Concurrent renders return correct output,
    but one of them may drop the lines that the other cached.
    """

    def __init__(self) -> None:
        # Per format, the previous render's cache and its families, replaced together:
        # (family name, type, help, unit) -> (sample ids, text, line by sample id).
        self._previous: dict[bool, tuple[dict[tuple, tuple[tuple[int, ...], str, dict[int, str]]], list]] = {
            False: ({}, []), True: ({}, []),
        }
        self._names: dict[str, str] = {}
        self._label_names: dict[str, str] = {}

    def choose(self, accept_header: str) -> tuple[Callable[[CollectorRegistry], bytes], str]:
        """Return the encoder and content type for an Accept header, as client_python chooses them."""
        encoder, content_type = text_format.choose_encoder(accept_header)
        if encoder is text_format.generate_latest:
            return partial(self.render, openmetrics=False), content_type
        keywords = getattr(encoder, "keywords", {})
        default = {"escaping": openmetrics_format.UNDERSCORES, "version": "1.0.0"}
        if getattr(encoder, "func", None) is openmetrics_format.generate_latest and keywords == default:
            return partial(self.render, openmetrics=True), content_type
        return encoder, content_type

    def render(self, registry: CollectorRegistry, *, openmetrics: bool) -> bytes:
        try:
            return self._render(registry, openmetrics)
        except _Unsupported:
            if openmetrics:
                return openmetrics_format.generate_latest(registry)
            return text_format.generate_latest(registry)

    def _render(self, registry: CollectorRegistry, openmetrics: bool) -> bytes:
        # Lines are cached by id(sample). The families of the cached lines stay
        # referenced by this call until it returns, even when a concurrent render
        # replaces them, so no new sample can reuse the id of a cached one. A family
        # whose samples are all the same objects as last time reuses its whole text.
        previous, previous_families = self._previous[openmetrics]
        cache: dict[tuple, tuple[tuple[int, ...], str, dict[int, str]]] = {}
        families = []
        output: list[str] = []

        for metric in registry.collect():
            families.append(metric)
            key = (metric.name, metric.type, metric.documentation, metric.unit)
            ids = tuple(map(id, metric.samples))
            entry = previous.get(key)
            if entry is None or entry[0] != ids:
                lines = list(map(entry[2].get, ids)) if entry is not None else [None] * len(ids)
                index = 0
                while True:  # list.index finds the uncached lines in C
                    try:
                        index = lines.index(None, index)
                    except ValueError:
                        break
                    lines[index] = self._line(metric.samples[index])
                entry = (ids, self._family_text(metric, lines, openmetrics), dict(zip(ids, lines)))
            cache[key] = entry
            output.append(entry[1])

        if openmetrics:
            output.append("# EOF\n")
        self._previous[openmetrics] = (cache, families)
        del previous_families  # released only now, see above
        return "".join(output).encode("utf-8")

    def _family_text(self, metric, lines: list[str], openmetrics: bool) -> str:
        """Return the HELP, TYPE and sample lines of one family."""
        name = metric.name
        if openmetrics:
            escaped = self._name(name)
            header = f"# HELP {escaped} {_escape_value(metric.documentation)}\n# TYPE {escaped} {metric.type}\n"
            if metric.unit:
                header += f"# UNIT {escaped} {metric.unit}\n"
            return header + "".join(lines)
        exposed, kind = _text_name_and_type(name, metric.type)
        documentation = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        escaped = self._name(exposed)
        parts = [f"# HELP {escaped} {documentation}\n# TYPE {escaped} {kind}\n"]
        if not _has_moved_samples(metric):
            parts.extend(lines)
            return "".join(parts)
        moved: dict[str, list[str]] = {}
        for sample, line in zip(metric.samples, lines):
            suffix = sample.name[len(name):] if sample.name.startswith(name) else ""
            if suffix in _OPENMETRICS_ONLY_SUFFIXES:
                moved.setdefault(suffix, []).append(line)
            else:
                parts.append(line)
        for suffix, moved_lines in sorted(moved.items()):
            parts.append(f"# HELP {self._name(name + suffix)} {documentation}\n")
            parts.append(f"# TYPE {self._name(name + suffix)} gauge\n")
            parts.extend(moved_lines)
        return "".join(parts)

    def _line(self, sample) -> str:
        if sample.exemplar is not None or sample.timestamp is not None or sample.native_histogram is not None:
            raise _Unsupported()
        if ":" in sample.name:  # OpenMetrics and the text format escape ":" in sample names differently
            raise _Unsupported()
        labels = ""
        if sample.labels:
            labels = "{" + ",".join(
                f'{self._label_name(key)}="{_escape_value(value)}"' for key, value in sorted(sample.labels.items())
            ) + "}"
        return f"{self._name(sample.name)}{labels} {floatToGoString(sample.value)}\n"

    def _name(self, name: str) -> str:
        escaped = self._names.get(name)
        if escaped is None:
            escaped = name if _LEGACY_METRIC_NAME.match(name) else openmetrics_format.escape_metric_name(name)
            self._names[name] = escaped
        return escaped

    def _label_name(self, name: str) -> str:
        escaped = self._label_names.get(name)
        if escaped is None:
            escaped = name if _LEGACY_LABEL_NAME.match(name) else openmetrics_format.escape_label_name(name)
            self._label_names[name] = escaped
        return escaped


def _has_moved_samples(metric) -> bool:
    """Tell whether a family has samples that the text format moves into gauges after it."""
    moved = {metric.name + suffix for suffix in _OPENMETRICS_ONLY_SUFFIXES}
    return not moved.isdisjoint(map(_sample_name, metric.samples))


def _sample_name(sample) -> str:
    return sample.name


def _text_name_and_type(name: str, kind: str) -> tuple[str, str]:
    """Return the family name and type the text format uses for an OpenMetrics family."""
    if kind == "counter":
        return name + "_total", kind
    if kind == "info":
        return name + "_info", "gauge"
    if kind == "stateset":
        return name, "gauge"
    if kind == "gaugehistogram":
        return name, "histogram"
    if kind == "unknown":
        return name, "untyped"
    return name, kind


class SampleCache:
    """Sample objects of the previous collection, handed out again while a series' value is unchanged.

    A collector calls ``begin()`` at the start of each collection and adds each
    family's series with ``add_all`` or ``add_histograms``. These append the same
    Sample objects as the previous collection for every unchanged series, and the
    previous sample list as a whole when the family is unchanged, so that
    ``Encoder`` reuses the rendered lines. A family not added in a collection is
    dropped at the next ``begin()``, and a series not added when its family
    changes is dropped with it. Unchanged families allocate no new objects, which
    keeps the garbage collector's full collections rare.
    """

    def __init__(self) -> None:
        # family name -> [family state, samples, {(label values, series state): samples}, collection]
        self._families: dict[str, list] = {}
        self._collection = 0
        self._lock = threading.Lock()  # concurrent scrapes may collect at once

    def begin(self) -> None:
        with self._lock:
            last = self._collection
            if any(entry[3] != last for entry in self._families.values()):
                self._families = {name: entry for name, entry in self._families.items() if entry[3] == last}
            self._collection += 1

    def add_all(self, family, series: list[tuple[tuple[str, ...], float]]) -> None:
        """Add every (label values, value) of ``series`` to a gauge or counter family, in order.

        The samples are those that ``family.add_metric(list(labels), value)`` appends.
        """

        def build(labels: tuple[str, ...], value: float) -> list:
            scratch = type(family)(family.name, family.documentation, labels=family._labelnames)
            scratch.add_metric(list(labels), value)
            return scratch.samples

        self._add(family, tuple(series), None, build)

    def add_histograms(self, family, series: list[tuple[tuple[str, ...], object]], buckets: Callable) -> None:
        """Add histograms given as (label values, histogram) to a histogram family, in order.

        ``histogram.counts`` and ``histogram.total`` are a histogram's state, and
        ``buckets(histogram)`` returns the cumulative buckets for ``add_metric``.
        """

        def build(labels: tuple[str, ...], histogram) -> list:
            scratch = type(family)(family.name, family.documentation, labels=family._labelnames)
            scratch.add_metric(list(labels), buckets(histogram), histogram.total)
            return scratch.samples

        state = tuple((labels, (tuple(histogram.counts), histogram.total)) for labels, histogram in series)
        self._add(family, state, [histogram for _, histogram in series], build)

    def _add(self, family, state: tuple, objects: list | None, build: Callable) -> None:
        """Append the samples of ``state``, a tuple of (label values, series state), to ``family``.

        ``build(labels, value)`` makes the samples of a series not seen before,
        where value is the series state, or the matching item of ``objects``.
        """
        with self._lock:
            self._add_locked(family, state, objects, build)

    def _add_locked(self, family, state: tuple, objects: list | None, build: Callable) -> None:
        entry = self._families.get(family.name)
        if entry is not None and entry[0] == state:
            entry[3] = self._collection
            family.samples.extend(entry[1])
            return
        # (label values, series state) -> samples; set and dict operations keep
        # the work per unchanged series in C.
        by_series = entry[2] if entry is not None else {}
        new = set(state)
        new.difference_update(by_series)
        if new:
            values = dict(zip(state, objects)) if objects is not None else None
            for series in new:
                by_series[series] = build(series[0], series[1] if values is None else values[series])
        if len(by_series) > 2 * len(state) + 64:
            by_series = {series: by_series[series] for series in state}
        samples = list(chain.from_iterable(map(by_series.__getitem__, state)))
        family.samples.extend(samples)
        self._families[family.name] = [state, samples, by_series, self._collection]
