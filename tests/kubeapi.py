"""A fake Kubernetes API server for pods: LIST and WATCH over real HTTP on 127.0.0.1.

It speaks the wire protocol of `GET /api/v1/pods` and `GET /api/v1/namespaces/{ns}/pods`
closely enough for the official `kubernetes` client: a PodList with
metadata.resourceVersion, and with `watch=1` a chunked stream of JSON lines
`{"type": ..., "object": ...}`. Tests drive it from their own thread through
`upsert`, `delete`, `compact`, `inject_raw`, `fail_next`, `reset_connections`, `stall`
and `resume`. Each call runs on the server's event loop and returns once applied.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

TOKEN = "fake-token-for-tests"

_SUPPORTED_FIELDS = {
    "spec.nodeName": lambda pod: (pod.get("spec") or {}).get("nodeName", ""),
    "metadata.name": lambda pod: pod["metadata"].get("name", ""),
    "metadata.namespace": lambda pod: pod["metadata"].get("namespace", ""),
}


class SelectorError(ValueError):
    """A field or label selector that the API server would reject with 400."""


def _parse_requirements(selector: str) -> list[tuple[str, str, str]]:
    """Split "a=b,c!=d,e,!f" into (key, operator, value) triples."""
    requirements = []
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            requirements.append((key.strip(), "!=", value.strip()))
        elif "==" in term:
            key, value = term.split("==", 1)
            requirements.append((key.strip(), "=", value.strip()))
        elif "=" in term:
            key, value = term.split("=", 1)
            requirements.append((key.strip(), "=", value.strip()))
        elif term.startswith("!"):
            requirements.append((term[1:].strip(), "!exists", ""))
        else:
            requirements.append((term, "exists", ""))
    return requirements


@dataclass
class PodFilter:
    """The fieldSelector and labelSelector of one request, checked against pod dicts."""

    fields: list[tuple[str, str, str]] = field(default_factory=list)
    labels: list[tuple[str, str, str]] = field(default_factory=list)
    namespace: str | None = None

    @classmethod
    def from_query(cls, query: Any, namespace: str | None) -> "PodFilter":
        fields = _parse_requirements(query.get("fieldSelector", ""))
        for key, operator, _ in fields:
            if key not in _SUPPORTED_FIELDS or operator not in ("=", "!="):
                raise SelectorError(f'"{key}" is not a known field selector: only "spec.nodeName", '
                                    '"metadata.name", "metadata.namespace"')
        labels = _parse_requirements(query.get("labelSelector", ""))
        return cls(fields=fields, labels=labels, namespace=namespace)

    def matches(self, pod: dict | None) -> bool:
        if pod is None:
            return False
        if self.namespace is not None and pod["metadata"].get("namespace") != self.namespace:
            return False
        for key, operator, value in self.fields:
            if (_SUPPORTED_FIELDS[key](pod) == value) != (operator == "="):
                return False
        pod_labels = pod["metadata"].get("labels") or {}
        for key, operator, value in self.labels:
            if operator == "exists" and key not in pod_labels:
                return False
            if operator == "!exists" and key in pod_labels:
                return False
            if operator == "=" and pod_labels.get(key) != value:
                return False
            if operator == "!=" and pod_labels.get(key) == value:
                return False
        return True


@dataclass
class Change:
    """One stored change: the object before (None for a create) and after (None for a delete)."""

    resource_version: int
    old: dict | None
    new: dict | None


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


_REASONS = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 410: "Expired",
            429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


def watch_event_for(change: Change, pod_filter: PodFilter) -> dict | None:
    """Return the event that one watcher receives for a change, as the API server's watch cache does.

    An object that starts matching the selectors arrives as ADDED and one that stops
    matching arrives as DELETED, so a filtered watch stays consistent with a filtered LIST.
    """
    old_matches = pod_filter.matches(change.old)
    new_matches = pod_filter.matches(change.new)
    if change.new is None:
        return {"type": "DELETED", "object": change.old} if old_matches else None
    if old_matches and new_matches:
        return {"type": "MODIFIED", "object": change.new}
    if new_matches:
        return {"type": "ADDED", "object": change.new}
    if old_matches:
        return {"type": "DELETED", "object": change.new}
    return None


class _Watcher:
    """One open watch stream and the queue of items to write to it."""

    def __init__(self, request: web.Request, response: web.StreamResponse, pod_filter: PodFilter):
        self.request = request
        self.response = response
        self.filter = pod_filter
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ended = False
        self.wake = asyncio.Event()


class FakeKubeAPI:
    """The fake API server: pod store, change history and open watches.

    `bookmark_interval` is the period of BOOKMARK events for watches that ask for them
    (the real API server sends about one a minute). `requests` records the path and
    query of every request in arrival order.
    """

    def __init__(self, *, bookmark_interval: float = 0.5, token: str = TOKEN):
        self.bookmark_interval = bookmark_interval
        self.token = token
        self.requests: list[dict] = []
        self._resource_version = 1000
        self._oldest_watchable = 0
        self._pods: dict[tuple[str, str], dict] = {}
        self._history: list[Change] = []
        self._watchers: set[_Watcher] = set()
        self._failures: list[tuple[int, bool | None]] = []
        self._flowing = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # Lifecycle.

    def start(self) -> None:
        """Start the server on a free port of 127.0.0.1 in a background thread."""
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())
            started.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-kube-api", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake Kubernetes API server did not start within 10 s")

    def stop(self) -> None:
        """End open watches, close the listener and join the server thread."""
        if self._loop is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig for this server: plain http and the fake bearer token."""
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(kubeconfig))
        return path

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/pods", self._handle_pods)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._handle_pods)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        for watcher in list(self._watchers):
            watcher.ended = True
            watcher.wake.set()
            watcher.queue.put_nowait(None)
        await self._runner.cleanup()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    # Test API: each method runs on the server loop and returns after it took effect.

    @property
    def resource_version(self) -> int:
        """The resourceVersion of the latest change."""
        return self._resource_version

    def upsert(self, pod: dict) -> dict:
        """Create or replace a pod; return the stored copy with its new resourceVersion."""
        return self._call(self._upsert(copy.deepcopy(pod)))

    def delete(self, namespace: str, name: str) -> dict:
        """Delete a pod; return its last state, which DELETED events carry."""
        return self._call(self._delete(namespace, name))

    def compact(self) -> None:
        """Forget the history up to now, as etcd compaction does.

        Every resourceVersion issued so far becomes too old to watch from: open watches get
        an ERROR event with a 410 Status and end, and later watches from those versions get
        the same. The current version is bumped so that a LIST made afterwards returns a
        resourceVersion that can be watched from.
        """
        self._call(self._compact())

    def inject_raw(self, line: bytes) -> None:
        """Write raw bytes, such as a malformed line, into every open watch stream."""
        self._call(self._broadcast(("raw", line)))

    def fail_next(self, count: int, status: int = 500, *, watch: bool | None = None) -> None:
        """Reply to the next `count` requests with `status` and a Status body.

        status=200 sends an empty 200 instead, which the API server has been seen to return
        for an Events watch from a stale resourceVersion. watch=True limits this to watch
        requests, watch=False to LIST requests.
        """
        self._call(self._add_failures(count, status, watch))

    def reset_connections(self) -> None:
        """Break every open watch stream in the middle of a chunk and abort its socket."""
        self._call(self._reset_connections())

    def stall(self) -> None:
        """Keep open and new watch streams open but send nothing, not even BOOKMARKs.

        A stalled stream also outlives its timeoutSeconds, like a stream whose connection
        went silent without being closed.
        """
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        """Let stalled watch streams continue where they stopped."""
        self._call(self._set_flowing(True))

    def watch_requests(self) -> list[dict]:
        """Return the query of every watch request so far."""
        return [entry["query"] for entry in self.requests if entry["watch"]]

    def list_requests(self) -> list[dict]:
        """Return the query of every LIST request so far."""
        return [entry["query"] for entry in self.requests if not entry["watch"]]

    async def _upsert(self, pod: dict) -> dict:
        metadata = pod.setdefault("metadata", {})
        metadata.setdefault("namespace", "default")
        key = (metadata["namespace"], metadata["name"])
        old = self._pods.get(key)
        metadata["uid"] = old["metadata"]["uid"] if old else metadata.get("uid") or str(uuid.uuid4())
        pod.setdefault("kind", "Pod")
        pod.setdefault("apiVersion", "v1")
        self._record_change(old, pod)
        self._pods[key] = pod
        return copy.deepcopy(pod)

    async def _delete(self, namespace: str, name: str) -> dict:
        old = self._pods.pop((namespace, name))
        last = copy.deepcopy(old)
        self._record_change(old, None, deleted_state=last)
        return copy.deepcopy(last)

    def _record_change(self, old: dict | None, new: dict | None, deleted_state: dict | None = None) -> None:
        self._resource_version += 1
        version = str(self._resource_version)
        if new is not None:
            new["metadata"]["resourceVersion"] = version
        else:
            deleted_state["metadata"]["resourceVersion"] = version
            old = deleted_state
        change = Change(self._resource_version, copy.deepcopy(old), copy.deepcopy(new))
        self._history.append(change)
        for watcher in self._watchers:
            event = watch_event_for(change, watcher.filter)
            if event is not None:
                watcher.queue.put_nowait(("event", event))

    async def _compact(self) -> None:
        self._resource_version += 1
        self._oldest_watchable = self._resource_version
        self._history.clear()
        await self._broadcast(("expired", None))

    async def _broadcast(self, item: tuple) -> None:
        for watcher in self._watchers:
            watcher.queue.put_nowait(item)

    async def _reset_connections(self) -> None:
        # A chunk header that promises more bytes than follow, then an aborted socket.
        for watcher in list(self._watchers):
            watcher.ended = True
            self._watchers.discard(watcher)
            transport = watcher.request.transport
            if transport is not None:
                transport.write(b'40\r\n{"type":"MODIFIED","obj')
                transport.abort()
            watcher.wake.set()
            watcher.queue.put_nowait(None)

    async def _add_failures(self, count: int, status: int, watch: bool | None) -> None:
        self._failures.extend([(status, watch)] * count)

    async def _set_flowing(self, flowing: bool) -> None:
        self._flowing = flowing
        for watcher in self._watchers:
            watcher.wake.set()

    async def _wait_flowing(self, watcher: _Watcher) -> None:
        while not self._flowing and not watcher.ended:
            watcher.wake.clear()
            await watcher.wake.wait()

    # HTTP handling.

    def _take_failure(self, is_watch: bool) -> int | None:
        for index, (status, applies_to) in enumerate(self._failures):
            if applies_to is None or applies_to == is_watch:
                del self._failures[index]
                return status
        return None

    async def _handle_pods(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        is_watch = query.get("watch", "").lower() in ("1", "true")
        self.requests.append({"path": request.path, "query": query, "watch": is_watch})

        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(401, "Unauthorized")
        status = self._take_failure(is_watch)
        if status == 200:
            return web.Response(status=200, body=b"", content_type="application/json")
        if status is not None:
            return self._error(status, f"injected failure with HTTP status {status}")
        try:
            pod_filter = PodFilter.from_query(query, request.match_info.get("namespace"))
        except SelectorError as error:
            return self._error(400, str(error))
        if not is_watch:
            return self._list(pod_filter)
        return await self._watch(request, query, pod_filter)

    @staticmethod
    def _error(code: int, message: str) -> web.Response:
        reason = _REASONS.get(code, "InternalError")
        return web.json_response(_status(code, reason, message), status=code)

    def _list(self, pod_filter: PodFilter) -> web.Response:
        items = [pod for pod in self._pods.values() if pod_filter.matches(pod)]
        return web.json_response({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self._resource_version)},
            "items": items,
        })

    async def _watch(self, request: web.Request, query: dict, pod_filter: PodFilter) -> web.StreamResponse:
        start_version = query.get("resourceVersion", "")
        if start_version not in ("", "0") and not start_version.isdigit():
            # The API server rejects an unparsable version, e.g. "None", with 500.
            return self._error(500, f'resourceVersion: Invalid value: "{start_version}": '
                                    f'strconv.ParseUint: parsing "{start_version}": invalid syntax')

        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        watcher = _Watcher(request, response, pod_filter)
        self._queue_start(watcher, start_version)
        self._watchers.add(watcher)
        try:
            await self._stream(watcher, query)
        except ConnectionError:
            pass  # The client went away, or reset_connections() aborted the socket.
        finally:
            self._watchers.discard(watcher)
        return response

    def _queue_start(self, watcher: _Watcher, start_version: str) -> None:
        """Queue what a new watch receives first: current pods, an expiry, or the history after its version."""
        if start_version in ("", "0"):
            for pod in self._pods.values():
                if watcher.filter.matches(pod):
                    watcher.queue.put_nowait(("event", {"type": "ADDED", "object": copy.deepcopy(pod)}))
            return
        if int(start_version) < self._oldest_watchable:
            watcher.queue.put_nowait(("expired", int(start_version)))
            return
        for change in self._history:
            if change.resource_version > int(start_version):
                event = watch_event_for(change, watcher.filter)
                if event is not None:
                    watcher.queue.put_nowait(("event", event))

    async def _stream(self, watcher: _Watcher, query: dict) -> None:
        loop = asyncio.get_running_loop()
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        deadline = loop.time() + timeout if timeout else None
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("1", "true")
        while not watcher.ended:
            await self._wait_flowing(watcher)
            if watcher.ended:
                return
            wait = self.bookmark_interval if bookmarks else None
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                wait = remaining if wait is None else min(wait, remaining)
            try:
                item = await asyncio.wait_for(watcher.queue.get(), wait)
            except asyncio.TimeoutError:
                if bookmarks and self._flowing and watcher.queue.empty():
                    await self._write_event(watcher, self._bookmark())
                continue
            if item is None:
                return
            await self._wait_flowing(watcher)
            if watcher.ended:
                return
            if not await self._write_item(watcher, item):
                return

    async def _write_item(self, watcher: _Watcher, item: tuple) -> bool:
        """Write one queued item; return False when the stream has ended."""
        kind, payload = item
        if kind == "event":
            await self._write_event(watcher, payload)
            return True
        if kind == "raw":
            await watcher.response.write(payload)
            return True
        if kind == "expired":
            message = f"too old resource version: {payload or self._oldest_watchable - 1} ({self._resource_version})"
            await self._write_event(watcher, {"type": "ERROR", "object": _status(410, "Expired", message)})
            return False
        raise ValueError(f"unknown watch queue item {kind!r}")

    def _bookmark(self) -> dict:
        return {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                               "metadata": {"resourceVersion": str(self._resource_version)}}}

    @staticmethod
    async def _write_event(watcher: _Watcher, event: dict) -> None:
        await watcher.response.write(json.dumps(event).encode() + b"\n")


def make_pod(name: str, node: str, *, namespace: str = "default", labels: dict | None = None,
             phase: str = "Running") -> dict:
    """Build a minimal pod in the API's JSON shape."""
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {"nodeName": node, "containers": [{"name": "worker", "image": "storm:2.6"}]},
        "status": {"phase": phase},
    }
