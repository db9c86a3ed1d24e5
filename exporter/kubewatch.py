"""The pods of this node from the Kubernetes API: one LIST, then a WATCH kept alive.

The official `kubernetes` client is synchronous: every call, and every read of a watch
stream, blocks its thread until bytes arrive or the read timeout fires. Run on the
asyncio loop, one silent stream would freeze the metrics endpoint, so `PodWatch` runs the
client on its own thread and hands results to a consumer through callbacks, which run on
that thread.

Pods reach the consumer as plain dicts in the API's JSON shape. Requests are made with
`_preload_content=False` and the JSON is parsed here, which keeps the wire format (camelCase
keys, RFC 3339 strings) and lets a malformed line be skipped instead of ending the stream.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

logger = logging.getLogger(__name__)

RESTART_REASONS = ("gone", "error", "timeout", "closed")

# A stream that ends cleanly this soon without a single line counts as an error and backs off.
# Without this, an API server that returns an empty 200 to every watch would drive a hot loop.
_EMPTY_STREAM_SECONDS = 1.0


class PodConsumer(Protocol):
    """Receiver of the watched pods; both methods run on the watch thread."""

    def on_snapshot(self, pods: list[dict]) -> None:
        """Replace all known pods of the node with `pods` (after every LIST)."""

    def on_event(self, kind: str, pod: dict) -> None:
        """Apply one change; `kind` is "ADDED", "MODIFIED" or "DELETED"."""


@dataclass
class Backoff:
    """Exponential backoff with jitter: attempt n waits initial * 2**(n-1), times 1 to 1.5, capped."""

    initial: float = 0.2
    maximum: float = 30.0
    rng: random.Random | None = None

    def delay(self, attempt: int) -> float:
        rng = self.rng or random
        return min(self.maximum, self.initial * 2 ** (attempt - 1) * rng.uniform(1.0, 1.5))


class _Restart(Exception):
    """Ends one watch request; `reason` is one of RESTART_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def load_api_client(kubeconfig: str | None) -> client.ApiClient:
    """Build an API client from a kubeconfig file, or from the in-cluster service account."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


class PodWatch:
    """LIST and WATCH the pods scheduled to `node`, on a thread of its own.

    `timeout_seconds` is sent to the API server, which then ends each watch request after
    that long. `read_timeout` is the client's limit on silence and defaults to
    timeout_seconds + 30, so that a stream that stops sending without closing is detected.
    With `allow_watch_bookmarks` the server sends about one BOOKMARK a minute, which moves
    the resume point forward without any pod changing.
    """

    def __init__(
        self,
        consumer: PodConsumer,
        *,
        node: str,
        api_client: client.ApiClient | None = None,
        kubeconfig: str | None = None,
        label_selector: str = "",
        namespace: str | None = None,
        timeout_seconds: int = 300,
        read_timeout: float | None = None,
        connect_timeout: float = 10.0,
        backoff: Backoff | Callable[[int], float] | None = None,
    ):
        if not node:
            raise ValueError("node is empty: the pod watch needs the node name (spec.nodeName)")
        self.consumer = consumer
        self.node = node
        self.label_selector = label_selector
        self.namespace = namespace
        self.timeout_seconds = timeout_seconds
        self.read_timeout = read_timeout if read_timeout is not None else timeout_seconds + 30.0
        self.connect_timeout = connect_timeout
        backoff = backoff or Backoff()
        self._delay_for = backoff.delay if isinstance(backoff, Backoff) else backoff
        self._api_client = api_client
        self._kubeconfig = kubeconfig

        self.up = False
        self.restarts = {reason: 0 for reason in RESTART_REASONS}
        self.resource_version = ""
        self.malformed_lines = 0
        self._failures = 0
        self._expiries = 0
        self._stopping = threading.Event()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._thread: threading.Thread | None = None
        self._last_malformed_log = 0.0

    @property
    def field_selector(self) -> str:
        return f"spec.nodeName={self.node}"

    def start(self) -> None:
        """Start the watch thread; it LISTs first, then watches until stop()."""
        if self._api_client is None:
            self._api_client = load_api_client(self._kubeconfig)
        self._core = client.CoreV1Api(self._api_client)
        self._thread = threading.Thread(target=self._run, name=f"pod-watch-{self.node}", daemon=True)
        self._thread.start()
        logger.info(
            "Pod watch started for node %s (label selector %r, timeoutSeconds %d, read timeout %.1f s)",
            self.node, self.label_selector, self.timeout_seconds, self.read_timeout,
        )

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the watch: close the open stream and join the thread for up to `timeout` seconds."""
        self._stopping.set()
        self._close_response()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("Pod watch thread for node %s still running %.1f s after stop", self.node, timeout)
        self.up = False
        logger.info("Pod watch stopped for node %s", self.node)

    # The loop.

    def _run(self) -> None:
        needs_list = True
        while not self._stopping.is_set():
            try:
                if needs_list:
                    self._list()
                    needs_list = False
                self._watch_once()
            except _Restart as restart:
                needs_list = self._handle_restart(restart)
            except ApiException as error:
                needs_list = self._handle_api_exception(error, needs_list)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
                if self._stopping.is_set():
                    break
                self._handle_restart(_Restart("error", f"{type(error).__name__}: {error}"))
            except Exception as error:
                # A consumer callback failed, so its state may have missed a change: list again.
                logger.exception("Pod consumer failed for node %s", self.node)
                self._handle_restart(_Restart("error", f"consumer raised {type(error).__name__}: {error}"))
                needs_list = True

    def _handle_restart(self, restart: _Restart) -> bool:
        """Count a restart, wait if it calls for a backoff, and return whether to LIST again."""
        if self._stopping.is_set():
            return False
        self.restarts[restart.reason] += 1
        if restart.reason == "gone":
            self._expiries += 1
            logger.info("Pod watch for node %s expired (%s); listing again, expiry %d in a row",
                        self.node, restart, self._expiries)
            if self._expiries > 1:
                self._stopping.wait(self._delay_for(self._expiries - 1))
            return True
        if restart.reason == "closed":
            logger.debug("Pod watch for node %s ended (%s); watching again from %s", self.node, restart,
                         self.resource_version)
            return False
        self.up = False
        self._failures += 1
        delay = self._delay_for(self._failures)
        logger.error("Pod watch for node %s failed (%s: %s); retry %d in %.2f s", self.node,
                     restart.reason, restart, self._failures, delay)
        self._stopping.wait(delay)
        return not self.resource_version

    def _handle_api_exception(self, error: ApiException, listing: bool) -> bool:
        if error.status == 410:
            return self._handle_restart(_Restart("gone", f"HTTP 410 {error.reason}"))
        self._handle_restart(_Restart("error", f"HTTP {error.status} {error.reason}"))
        return listing or not self.resource_version

    def _request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "field_selector": self.field_selector,
            "_preload_content": False,
            "_request_timeout": (self.connect_timeout, self.read_timeout),
        }
        if self.label_selector:
            kwargs["label_selector"] = self.label_selector
        return kwargs

    def _call_list(self, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        if self.namespace:
            return self._core.list_namespaced_pod(self.namespace, **kwargs)
        return self._core.list_pod_for_all_namespaces(**kwargs)

    def _list(self) -> None:
        response = self._call_list(**self._request_kwargs())
        try:
            pod_list = json.loads(response.data)
        finally:
            response.release_conn()
        version = (pod_list.get("metadata") or {}).get("resourceVersion")
        if not version:
            raise ValueError("pod list has no metadata.resourceVersion")
        self.resource_version = version
        self._failures = 0
        self.up = True
        pods = pod_list.get("items") or []
        logger.debug("Listed %d pods on node %s at resourceVersion %s", len(pods), self.node, version)
        self.consumer.on_snapshot(pods)

    def _watch_once(self) -> None:
        """Run one watch request from self.resource_version until it ends, then raise _Restart."""
        kwargs = self._request_kwargs()
        kwargs.update(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                      timeout_seconds=self.timeout_seconds)
        started = time.monotonic()
        response = self._call_list(**kwargs)
        self._response = response
        if self._stopping.is_set():
            self._close_response()
        self.up = True
        lines = 0
        try:
            for line in iter_resp_lines(response):
                lines += 1
                self._handle_line(line)
        except urllib3.exceptions.ReadTimeoutError as error:
            raise _Restart("timeout", f"no data for {self.read_timeout:.1f} s: {error}") from error
        except (urllib3.exceptions.ProtocolError, OSError) as error:
            raise _Restart("error", f"stream broken: {error}") from error
        finally:
            self._close_response()
        if lines == 0 and time.monotonic() - started < _EMPTY_STREAM_SECONDS:
            raise _Restart("error", "stream ended at once without any event")
        raise _Restart("closed", "the API server ended the stream")

    def _handle_line(self, line: str) -> None:
        if not line.strip():
            return
        try:
            event = json.loads(line)
            kind = event["type"]
            obj = event["object"]
            if not isinstance(obj, dict):
                raise TypeError("object is not a JSON object")
        except (ValueError, KeyError, TypeError) as error:
            self._log_malformed(line, error)
            return
        if kind == "ERROR":
            self._handle_error_event(obj)
            return
        version = (obj.get("metadata") or {}).get("resourceVersion")
        # Only a pod event or a BOOKMARK resets the backoff, so a server that replies with an
        # empty 200 or an ERROR event each time still waits longer at each retry.
        self._failures = 0
        self._expiries = 0
        if kind == "BOOKMARK":
            if version:
                self.resource_version = version
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            self._log_malformed(line, ValueError(f"unknown event type {kind!r}"))
            return
        if version:
            self.resource_version = version
        self.consumer.on_event(kind, obj)

    def _handle_error_event(self, status: dict) -> None:
        code = status.get("code")
        detail = f"ERROR event {code} {status.get('reason')}: {status.get('message')}"
        if code == 410:
            raise _Restart("gone", detail)
        raise _Restart("error", detail)

    def _log_malformed(self, line: str, error: Exception) -> None:
        """Count a skipped line and log at most one warning every 10 s."""
        self.malformed_lines += 1
        now = time.monotonic()
        if now - self._last_malformed_log >= 10.0 or self.malformed_lines == 1:
            self._last_malformed_log = now
            logger.warning("Skipped malformed watch line for node %s (%s; %d skipped so far): %.200r",
                           self.node, error, self.malformed_lines, line)

    def _close_response(self) -> None:
        """Shut down the socket of the open stream, which wakes a read blocked on it."""
        response = self._response
        if response is None:
            return
        connection = getattr(response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        response.close()
        self._response = None
