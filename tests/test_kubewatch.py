"""PodWatch through the real kubernetes client against the fake API server in tests/kubeapi.py."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from exporter.kubewatch import Backoff, PodWatch
from tests.kubeapi import FakeKubeAPI, make_pod

NODE = "node-a"
WAIT = 5.0


class RecordingConsumer:
    """Store every snapshot and event, and let tests wait for a condition on them."""

    def __init__(self) -> None:
        self.snapshots: list[list[str]] = []
        self.events: list[tuple[str, str, str]] = []
        self._changed = threading.Condition()

    def on_snapshot(self, pods: list[dict]) -> None:
        with self._changed:
            self.snapshots.append(sorted(pod["metadata"]["name"] for pod in pods))
            self._changed.notify_all()

    def on_event(self, kind: str, pod: dict) -> None:
        with self._changed:
            self.events.append((kind, pod["metadata"]["name"], pod["metadata"]["resourceVersion"]))
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        with self._changed:
            assert self._changed.wait_for(condition, timeout), "condition not met within timeout"


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met within timeout"
        time.sleep(0.01)


class RecordingBackoff:
    """A backoff of 10 ms that stores each attempt number and the watch's `up` flag at that moment."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.watch: PodWatch | None = None

    def __call__(self, attempt: int) -> float:
        self.calls.append((attempt, self.watch.up))
        return 0.01


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    server = FakeKubeAPI(bookmark_interval=0.2)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(api: FakeKubeAPI, tmp_path) -> str:
    return str(api.write_kubeconfig(tmp_path / "kubeconfig"))


@pytest.fixture
def start_watch(kubeconfig: str) -> Iterator[Callable[..., tuple[PodWatch, RecordingConsumer, RecordingBackoff]]]:
    started: list[PodWatch] = []

    def start(**options) -> tuple[PodWatch, RecordingConsumer, RecordingBackoff]:
        consumer = RecordingConsumer()
        backoff = RecordingBackoff()
        options.setdefault("timeout_seconds", 30)
        watch = PodWatch(consumer, node=NODE, kubeconfig=kubeconfig, backoff=backoff, **options)
        backoff.watch = watch
        started.append(watch)
        watch.start()
        return watch, consumer, backoff

    yield start
    for watch in started:
        watch.stop()


def test_initial_list_only_this_node(api, start_watch):
    api.upsert(make_pod("worker-1", NODE))
    api.upsert(make_pod("worker-2", "node-b"))
    api.upsert(make_pod("worker-3", NODE, namespace="storm"))

    watch, consumer, _ = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())

    assert consumer.snapshots == [["worker-1", "worker-3"]]
    assert watch.up is True
    assert api.list_requests()[0]["fieldSelector"] == "spec.nodeName=node-a"
    watch_query = api.watch_requests()[0]
    assert watch_query["fieldSelector"] == "spec.nodeName=node-a"
    assert watch_query["resourceVersion"] == "1003"
    assert watch_query["allowWatchBookmarks"] == "true"
    assert watch_query["timeoutSeconds"] == "30"


def test_label_selector_narrows(api, start_watch):
    api.upsert(make_pod("worker-1", NODE, labels={"app": "storm", "role": "worker"}))
    api.upsert(make_pod("supervisor", NODE, labels={"app": "storm", "role": "supervisor"}))
    api.upsert(make_pod("other", NODE, labels={"app": "kafka"}))

    watch, consumer, _ = start_watch(label_selector="app=storm,role!=supervisor")
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())
    api.upsert(make_pod("worker-2", NODE, labels={"app": "storm", "role": "worker"}))
    api.upsert(make_pod("supervisor-2", NODE, labels={"app": "storm", "role": "supervisor"}))
    consumer.wait_for(lambda: consumer.events)
    time.sleep(0.1)

    assert consumer.snapshots == [["worker-1"]]
    assert consumer.events == [("ADDED", "worker-2", "1004")]
    assert api.list_requests()[0]["labelSelector"] == "app=storm,role!=supervisor"
    assert api.watch_requests()[0]["labelSelector"] == "app=storm,role!=supervisor"


def test_added_modified_deleted_flow(api, start_watch):
    watch, consumer, _ = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())

    api.upsert(make_pod("worker-1", NODE))
    api.upsert(make_pod("worker-1", NODE, phase="Failed"))
    api.upsert(make_pod("elsewhere", "node-b"))
    api.delete("default", "worker-1")
    consumer.wait_for(lambda: len(consumer.events) == 3)

    assert consumer.snapshots == [[]]
    assert consumer.events == [
        ("ADDED", "worker-1", "1001"),
        ("MODIFIED", "worker-1", "1002"),
        ("DELETED", "worker-1", "1004"),
    ]
    wait_until(lambda: watch.resource_version == "1004")


def test_bookmark_sets_resume_point(api, start_watch):
    api.upsert(make_pod("worker-1", NODE))
    watch, consumer, _ = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())

    api.upsert(make_pod("worker-1", NODE, phase="Failed"))
    consumer.wait_for(lambda: consumer.events)
    for index in range(5):
        api.upsert(make_pod(f"elsewhere-{index}", "node-b"))
    # Only a BOOKMARK can carry this version to the watch: the changes after 1002 are on node-b.
    wait_until(lambda: watch.resource_version == "1007")
    api.reset_connections()
    wait_until(lambda: len(api.watch_requests()) == 2)
    api.upsert(make_pod("worker-1", NODE, phase="Succeeded"))
    consumer.wait_for(lambda: len(consumer.events) == 2)

    assert api.watch_requests()[1]["resourceVersion"] == "1007"
    assert consumer.events == [("MODIFIED", "worker-1", "1002"), ("MODIFIED", "worker-1", "1008")]
    assert watch.restarts["error"] == 1
    assert watch.restarts["gone"] == 0
    assert len(api.list_requests()) == 1


def test_expired_mid_watch_lists_again(api, start_watch):
    api.upsert(make_pod("worker-1", NODE))
    watch, consumer, _ = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())
    api.upsert(make_pod("worker-2", NODE))
    consumer.wait_for(lambda: consumer.events)

    api.compact()
    consumer.wait_for(lambda: len(consumer.snapshots) == 2)
    wait_until(lambda: len(api.watch_requests()) == 2)
    api.upsert(make_pod("worker-3", NODE))
    consumer.wait_for(lambda: len(consumer.events) == 2)

    assert consumer.snapshots == [["worker-1"], ["worker-1", "worker-2"]]
    assert consumer.events == [("ADDED", "worker-2", "1002"), ("ADDED", "worker-3", "1004")]
    assert watch.restarts["gone"] == 1
    assert watch.restarts["error"] == 0
    assert api.watch_requests()[1]["resourceVersion"] == "1003"
    assert all(query.get("resourceVersion") not in (None, "", "None") for query in api.watch_requests())


def test_expired_resume_version_lists_again(api, start_watch):
    watch, consumer, _ = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())
    api.stall()
    api.upsert(make_pod("worker-1", NODE))
    api.compact()
    api.reset_connections()
    api.resume()
    consumer.wait_for(lambda: len(consumer.snapshots) == 2)

    assert consumer.snapshots == [[], ["worker-1"]]
    assert consumer.events == []
    assert watch.restarts["gone"] == 1
    assert api.watch_requests()[1]["resourceVersion"] == "1000"


def test_repeated_410_backs_off(api, start_watch):
    api.fail_next(3, status=410, watch=True)
    watch, consumer, backoff = start_watch()
    consumer.wait_for(lambda: len(consumer.snapshots) == 4)
    wait_until(lambda: len(api.watch_requests()) == 4)

    assert watch.restarts["gone"] == 3
    assert [attempt for attempt, _ in backoff.calls] == [1, 2]
    assert len(api.list_requests()) == 4


def test_api_exception_410_on_first_watch(api, start_watch):
    api.upsert(make_pod("worker-1", NODE))
    api.fail_next(1, status=410, watch=True)
    watch, consumer, backoff = start_watch()
    consumer.wait_for(lambda: len(consumer.snapshots) == 2)
    wait_until(lambda: len(api.watch_requests()) == 2)
    api.upsert(make_pod("worker-2", NODE))
    consumer.wait_for(lambda: consumer.events)

    assert consumer.snapshots == [["worker-1"], ["worker-1"]]
    assert consumer.events == [("ADDED", "worker-2", "1002")]
    assert watch.restarts["gone"] == 1
    assert watch.restarts["error"] == 0
    assert backoff.calls == []
    assert [query["resourceVersion"] for query in api.watch_requests()] == ["1001", "1001"]


def test_connection_reset_resumes(api, start_watch):
    watch, consumer, backoff = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())
    api.upsert(make_pod("worker-1", NODE))
    consumer.wait_for(lambda: consumer.events)

    api.stall()
    api.upsert(make_pod("worker-1", NODE, phase="Failed"))
    api.reset_connections()
    api.resume()
    consumer.wait_for(lambda: len(consumer.events) == 2)
    time.sleep(0.1)

    assert consumer.events == [("ADDED", "worker-1", "1001"), ("MODIFIED", "worker-1", "1002")]
    assert watch.restarts["error"] == 1
    assert backoff.calls == [(1, False)]
    assert api.watch_requests()[1]["resourceVersion"] == "1001"
    assert len(api.list_requests()) == 1
    assert watch.up is True


def test_stalled_stream_times_out(api, start_watch):
    watch, consumer, _ = start_watch(timeout_seconds=1, read_timeout=1.5)
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())
    api.stall()
    stalled_at = time.monotonic()
    wait_until(lambda: watch.restarts["timeout"] == 1, timeout=4.0)
    detected_after = time.monotonic() - stalled_at
    api.resume()
    api.upsert(make_pod("worker-1", NODE))
    consumer.wait_for(lambda: consumer.events)

    assert 1.0 <= detected_after < 3.0
    assert watch.restarts["timeout"] == 1
    assert consumer.events == [("ADDED", "worker-1", "1001")]


def test_server_timeout_restarts_closed(api, start_watch):
    watch, consumer, backoff = start_watch(timeout_seconds=1, read_timeout=2.0)
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: watch.restarts["closed"] >= 1, timeout=3.0)
    wait_until(lambda: len(api.watch_requests()) >= 2)

    assert backoff.calls == []
    assert watch.restarts["error"] == 0
    assert watch.restarts["timeout"] == 0
    assert len(api.list_requests()) == 1


def test_empty_stream_backs_off(api, start_watch):
    api.fail_next(3, status=200, watch=True)
    watch, consumer, backoff = start_watch()
    wait_until(lambda: len(api.watch_requests()) == 4)
    api.upsert(make_pod("worker-1", NODE))
    consumer.wait_for(lambda: consumer.events)

    assert backoff.calls == [(1, False), (2, False), (3, False)]
    assert watch.restarts["error"] == 3
    assert watch.restarts["closed"] == 0
    assert [query["resourceVersion"] for query in api.watch_requests()] == ["1000"] * 4
    assert consumer.events == [("ADDED", "worker-1", "1001")]


def test_http_500_backs_off_then_up(api, start_watch):
    api.upsert(make_pod("worker-1", NODE))
    api.fail_next(2, status=500)
    watch, consumer, backoff = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)

    assert backoff.calls == [(1, False), (2, False)]
    assert watch.restarts["error"] == 2
    assert consumer.snapshots == [["worker-1"]]
    assert watch.up is True
    assert len(api.list_requests()) == 3


def test_http_500_on_watch_keeps_version(api, start_watch):
    watch, consumer, backoff = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())
    api.fail_next(1, status=500, watch=True)
    api.reset_connections()
    wait_until(lambda: len(api.watch_requests()) == 3)

    assert watch.restarts["error"] == 2
    assert backoff.calls == [(1, False), (2, False)]
    assert [query["resourceVersion"] for query in api.watch_requests()] == ["1000", "1000", "1000"]
    assert len(api.list_requests()) == 1


def test_malformed_line_skipped(api, start_watch, caplog):
    caplog.set_level(logging.WARNING, logger="exporter.kubewatch")
    watch, consumer, _ = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())

    api.inject_raw(b'{"type":"ADDED","object":{"metadata":\n')
    api.inject_raw(b"not json\n")
    api.upsert(make_pod("worker-1", NODE))
    consumer.wait_for(lambda: consumer.events)

    assert consumer.events == [("ADDED", "worker-1", "1001")]
    assert watch.malformed_lines == 2
    assert sum(watch.restarts.values()) == 0
    warnings = [record for record in caplog.records if "malformed watch line" in record.getMessage()]
    assert len(warnings) == 1


def test_consumer_error_lists_again(api, start_watch):
    watch, consumer, backoff = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())
    original_on_event = consumer.on_event

    def fail_once(kind: str, pod: dict) -> None:
        consumer.on_event = original_on_event
        raise KeyError("uid")

    consumer.on_event = fail_once
    api.upsert(make_pod("worker-1", NODE))
    consumer.wait_for(lambda: len(consumer.snapshots) == 2)

    assert consumer.snapshots == [[], ["worker-1"]]
    assert watch.restarts["error"] == 1
    assert backoff.calls == [(1, False)]
    assert watch._thread.is_alive()


def test_stop_is_quick(api, start_watch):
    watch, consumer, _ = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())

    started = time.monotonic()
    watch.stop()

    assert time.monotonic() - started < 1.0
    assert not watch._thread.is_alive()
    assert watch.up is False


def test_stop_during_stall_is_quick(api, start_watch):
    watch, consumer, _ = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    wait_until(lambda: api.watch_requests())
    api.stall()

    started = time.monotonic()
    watch.stop()

    assert time.monotonic() - started < 1.0
    assert not watch._thread.is_alive()


def test_token_not_logged(api, start_watch, caplog):
    caplog.set_level(logging.DEBUG)
    api.fail_next(1, status=500)
    watch, consumer, _ = start_watch()
    consumer.wait_for(lambda: consumer.snapshots)
    watch.stop()

    assert api.token not in caplog.text
    assert "retry 1" in caplog.text


def test_backoff_grows_and_is_bounded():
    backoff = Backoff(initial=0.2, maximum=30.0, rng=random.Random(7))
    delays = [backoff.delay(attempt) for attempt in range(1, 12)]

    assert 0.2 <= delays[0] <= 0.3
    assert 0.4 <= delays[1] <= 0.6
    assert 0.8 <= delays[2] <= 1.2
    assert delays[-1] == 30.0
    assert all(0.2 <= delay <= 30.0 for delay in delays)
