"""exposition.Encoder against client_python's own encoders, byte for byte."""

from __future__ import annotations

import signal
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.collector import StormCollector
from exporter.diagmetrics import DiagnosticsCollector
from exporter.exposition import Encoder, SampleCache
from tests.test_collector import ODD_TOPOLOGY, episode
from tests.test_tracker import Node

OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def storm_registry(node: Node) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StormCollector(node.tracker, threading.Lock(), ["tracefs", "netlink"]))
    registry.register(DiagnosticsCollector())
    return registry


def test_text_matches_client_python():
    node = Node()
    episode(node, "wordcount-3-1700000000")
    episode(node, ODD_TOPOLOGY)
    registry = storm_registry(node)
    assert Encoder().render(registry, openmetrics=False) == generate_latest(registry)


def test_openmetrics_matches_client_python():
    node = Node()
    episode(node, "wordcount-3-1700000000")
    episode(node, ODD_TOPOLOGY)
    registry = storm_registry(node)
    assert Encoder().render(registry, openmetrics=True) == generate_openmetrics(registry)


def test_cached_lines_follow_changes():
    node = Node()
    episode(node, "wordcount-3-1700000000")
    registry = storm_registry(node)
    encoder = Encoder()
    first = encoder.render(registry, openmetrics=True)
    assert encoder.render(registry, openmetrics=True) == first
    node.at(20.0).worker_tree(topology="wordcount-3-1700000000", base=400)
    node.at(21.0).supervisor_kill(410, 401, int(signal.SIGTERM))
    node.at(22.0).exit(401, 143 << 8)
    node.tick(22.5)
    second = encoder.render(registry, openmetrics=True)
    assert second != first
    assert second == generate_openmetrics(registry)
    assert encoder.render(registry, openmetrics=False) == generate_latest(registry)


def test_library_metrics_and_moved_samples_match():
    registry = CollectorRegistry()
    Counter("requests", "Requests served.", ["path"], registry=registry).labels(path='/a"b').inc(3)
    Gauge("queue_length", "Queued\nitems \\ now.", registry=registry).set(2.5)
    encoder = Encoder()
    assert encoder.render(registry, openmetrics=False) == generate_latest(registry)
    assert encoder.render(registry, openmetrics=True) == generate_openmetrics(registry)


def test_timestamped_sample_falls_back_to_client_python():
    class Stamped:
        def collect(self):
            family = GaugeMetricFamily("stamped", "A gauge with a timestamp.", labels=["a"])
            family.add_metric(["x"], 1.0, timestamp=1700000000.5)
            yield family

    registry = CollectorRegistry()
    registry.register(Stamped())
    encoder = Encoder()
    assert encoder.render(registry, openmetrics=False) == generate_latest(registry)
    assert encoder.render(registry, openmetrics=True) == generate_openmetrics(registry)


def test_choose_keeps_client_python_negotiation():
    encoder = Encoder()
    render, content_type = encoder.choose(OPENMETRICS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert render.keywords == {"openmetrics": True}
    render, content_type = encoder.choose("text/plain;version=0.0.4")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert render.keywords == {"openmetrics": False}
    render, content_type = encoder.choose("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8")
    assert "escaping=allow-utf-8" in content_type
    assert getattr(render, "func", None) is generate_openmetrics


def test_sample_cache_reuses_unchanged_samples():
    cache = SampleCache()

    def collect(value: float) -> GaugeMetricFamily:
        cache.begin()
        family = GaugeMetricFamily("workers", "Workers.", labels=["topology"])
        cache.add_all(family, [(("a",), 1), (("b",), value)])
        return family

    first = collect(1)
    again = collect(1)
    changed = collect(2)
    assert again.samples == first.samples
    assert all(a is b for a, b in zip(again.samples, first.samples))
    assert changed.samples[0] is first.samples[0]
    assert changed.samples[1] is not first.samples[1]
    assert changed.samples[1].value == 2
    assert changed.samples[1].labels == {"topology": "b"}


def test_sample_cache_drops_families_not_collected():
    cache = SampleCache()
    cache.begin()
    first = GaugeMetricFamily("workers", "Workers.", labels=["topology"])
    cache.add_all(first, [(("a",), 1)])
    cache.begin()
    cache.begin()
    later = GaugeMetricFamily("workers", "Workers.", labels=["topology"])
    cache.add_all(later, [(("a",), 1)])
    assert later.samples == first.samples
    assert later.samples[0] is not first.samples[0]
