"""Measure what the exporter costs at cluster scale: pod watch load, series and scrape sizes.

Three parts, each printed as Markdown tables and written to one JSON file:

``watch``
    N pod watches shaped like the exporter's run against tests/kubeapi.py's fake API
    server on 127.0.0.1. The server runs in one process and the watches in another.
    Each watch is the exporter's own ``exporter.kubernetes.PodWatcher`` (PodWatch, the
    official ``kubernetes`` client and a PodTracker), with one LIST and then one
    ``fieldSelector=spec.nodeName=<node>`` WATCH per simulated node. Pods churn through
    a lifecycle of six watch events (ADDED, four MODIFIED, DELETED) on random nodes.
    Measured for each N: bytes the server writes per pod event, per BOOKMARK, per LIST
    and per watch request, events delivered, and the CPU seconds of the server process
    and of the watching process. A line fitted over N separates the server's cost per
    event from its cost per open watch, and a run without watchers gives the cost of
    making the changes themselves.
``series``
    The exporter's registry, wired as exporter/app.py wires it: StormCollector,
    DiagnosticsCollector, the pod collector (PodWatcher), the process and platform
    collectors and the scan histogram. A real Tracker is driven with synthetic process,
    signal and exit events for T topologies of W live workers, and the PodWatcher gets
    realistic pod objects for P pods. For each shape it counts the series and the
    ``/metrics`` size in the Prometheus text format and in OpenMetrics, uncompressed and
    as exporter/http.py serves them to a scrape that accepts gzip, including shapes beyond
    ``--topology.max`` and the 200-workload bound.
``cluster``
    The per-node figures of ``series`` and the fitted watch costs of ``watch`` applied
    to a cluster of ``--nodes`` nodes under the assumptions printed with the tables.

Usage, from the repository root:

    .venv/bin/python bench/scaling.py             # all parts, about 4 minutes on 2 cores
    .venv/bin/python bench/scaling.py --repeat 3  # as docs/scaling.md reports, about 12 minutes
    .venv/bin/python bench/scaling.py --quick     # smaller sizes, about 1 minute
    .venv/bin/python bench/scaling.py --parts series,cluster

Options:

    --quick                 watchers 10,50, 20 lifecycles/s for 4 s, fewer node shapes
    --parts LIST            comma list of watch, series, cluster (default: all three)
    --watchers LIST         watch counts to run (default 50,200,500,1000)
    --pods-per-node N       resident pods per node before the churn (default 10)
    --churn RATE            pod lifecycles per second during the churn (default 40)
    --churn-seconds S       how long new lifecycles start (default 20)
    --repeat K              run every watch round K times; CPU figures become medians
                            with their range (default 1)
    --nodes N               cluster size for the cluster part (default 5000)
    --output PATH           JSON results (default bench/results/scaling.json)

A part left out keeps the watch figures already in --output, so `--parts series,cluster`
reuses the last watch run. ``main(argv)`` runs the script in-process and returns its exit
status: 0 on success, 1 when a phase failed or timed out, 2 on invalid options (argparse
exits with 2). Needs no root. Every server and connection is on 127.0.0.1, and every process the
script starts is stopped by its pid before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import heapq
import json
import logging
import multiprocessing
import os
import platform
import random
import re
import resource
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(1, str(ROOT))

from aiohttp import web  # noqa: E402
from aiohttp.http import SERVER_SOFTWARE  # noqa: E402

from tests.kubeapi import TOKEN, FakeKubeAPI  # noqa: E402

logger = logging.getLogger("scaling")

DEFAULT_OUTPUT = BENCH / "results" / "scaling.json"
DEFAULT_WATCHERS = (50, 200, 500, 1000)
QUICK_WATCHERS = (10, 50)

# The timeoutSeconds PodWatch sends, after which the server ends each watch and PodWatch
# watches again. Rounds here are shorter, so no stream ends by itself.
WATCH_TIMEOUT_SECONDS = 300
# kube-apiserver's watch cache sends a BOOKMARK every minute to a watch that asked for
# them (defaultBookmarkFrequency in k8s.io/apiserver pkg/storage/cacher/cacher.go).
REAL_BOOKMARK_SECONDS = 60.0
# The bookmark phase uses a short interval so that each watch gets several.
BOOKMARK_PHASE_INTERVAL = 2.0
# Watch events of one pod lifecycle that its node's field-selected watch receives.
LIFECYCLE_EVENTS = 6
LIFECYCLE_STEP_SECONDS = 0.5
# Changes kept for resuming watches; older resourceVersions get 410 Gone, as after
# etcd compaction. Without a bound the fake server's history grows with every change.
HISTORY_KEPT = 2000
# Each phase of a round must finish within this, or the round fails.
PHASE_TIMEOUT = 150.0
# Offset of tcpi_bytes_acked in struct tcp_info (linux/tcp.h, since Linux 4.1).
TCP_INFO_BYTES_ACKED = 120
TCP_INFO_LENGTH = 232


class PhaseError(RuntimeError):
    """A phase of the simulation failed or did not finish within its time limit."""


def cpu_seconds() -> float:
    """Return user plus system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# Pod objects in the API's JSON shape, with the fields a real API server returns.

STAGES = ("pending", "creating", "running", "deleting", "terminated")


@dataclass(frozen=True)
class PodSpecShape:
    """Name, namespace, node, owner and containers of one synthetic pod."""

    name: str
    namespace: str
    node: str
    owner_kind: str  # ReplicaSet, DaemonSet, StatefulSet or Job
    owner_name: str
    containers: tuple[str, ...] = ("app",)
    template_hash: str = ""
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))


def container_id_for(uid: str, container: str) -> str:
    """Return a stable 64-hex container id for a pod's container."""
    return uuid.uuid5(uuid.NAMESPACE_OID, f"{uid}/{container}").hex * 2


def _managed_fields(shape: PodSpecShape, stage: str) -> list[dict]:
    container_fields = {
        f'k:{{"name":"{name}"}}': {
            ".": {}, "f:env": {".": {}, 'k:{"name":"JAVA_OPTS"}': {".": {}, "f:name": {}, "f:value": {}}},
            "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:ports": {".": {}},
            "f:resources": {".": {}, "f:limits": {".": {}, "f:memory": {}}, "f:requests": {".": {}, "f:cpu": {}, "f:memory": {}}},
            "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}, "f:volumeMounts": {".": {}},
        }
        for name in shape.containers
    }
    entries = [
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-12-04T09:12:03Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {
                    "f:generateName": {},
                    "f:labels": {".": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/component": {},
                                 "f:pod-template-hash": {}},
                    "f:ownerReferences": {".": {}, f'k:{{"uid":"{shape.uid}"}}': {}},
                },
                "f:spec": {
                    "f:containers": container_fields, "f:dnsPolicy": {}, "f:enableServiceLinks": {},
                    "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {},
                    "f:terminationGracePeriodSeconds": {}, "f:volumes": {".": {}},
                },
            },
        },
    ]
    if stage != "pending":
        entries.append({
            "manager": "kubelet",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-12-04T09:12:09Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:status": {
                    "f:conditions": {
                        'k:{"type":"ContainersReady"}': {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {},
                                                         "f:status": {}, "f:type": {}},
                        'k:{"type":"Initialized"}': {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {},
                                                     "f:status": {}, "f:type": {}},
                        'k:{"type":"PodReadyToStartContainers"}': {".": {}, "f:lastProbeTime": {},
                                                                   "f:lastTransitionTime": {}, "f:status": {},
                                                                   "f:type": {}},
                        'k:{"type":"Ready"}': {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {},
                                               "f:status": {}, "f:type": {}},
                    },
                    "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {}, "f:podIP": {},
                    "f:podIPs": {".": {}, 'k:{"ip":"10.42.17.23"}': {".": {}, "f:ip": {}}}, "f:startTime": {},
                },
            },
            "subresource": "status",
        })
    return entries


def _container_spec(name: str, shape: PodSpecShape) -> dict:
    return {
        "name": name,
        "image": f"registry.example.com/{shape.namespace}/{shape.owner_name}:2.6.2",
        "args": ["--config", "/etc/app/app.yaml"],
        "ports": [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}],
        "env": [
            {"name": "JAVA_OPTS", "value": "-Xmx768m -XX:+UseG1GC"},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
        ],
        "resources": {"limits": {"memory": "2Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app"},
            {"name": "kube-api-access-x7k2p", "readOnly": True,
             "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 1,
                          "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 1,
                           "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1001},
    }


def _conditions(stage: str) -> list[dict]:
    ready = "True" if stage in ("running", "deleting") else "False"
    started = "False" if stage == "pending" else "True"
    conditions = [{"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                   "lastTransitionTime": "2026-12-04T09:12:03Z"}]
    if stage == "pending":
        return conditions
    not_ready = {} if ready == "True" else {"reason": "ContainersNotReady",
                                            "message": "containers with unready status: [app]"}
    return [
        {"type": "PodReadyToStartContainers", "status": started, "lastProbeTime": None,
         "lastTransitionTime": "2026-12-04T09:12:05Z"},
        {"type": "Initialized", "status": "True", "lastProbeTime": None,
         "lastTransitionTime": "2026-12-04T09:12:03Z"},
        {"type": "Ready", "status": ready, "lastProbeTime": None,
         "lastTransitionTime": "2026-12-04T09:12:09Z", **not_ready},
        {"type": "ContainersReady", "status": ready, "lastProbeTime": None,
         "lastTransitionTime": "2026-12-04T09:12:09Z", **not_ready},
        *conditions,
    ]


def _container_status(name: str, shape: PodSpecShape, stage: str) -> dict:
    status: dict[str, Any] = {
        "name": name,
        "image": f"registry.example.com/{shape.namespace}/{shape.owner_name}:2.6.2",
        "imageID": "registry.example.com/" + shape.owner_name + "@sha256:" + "4e" * 32,
        "ready": stage in ("running", "deleting"),
        "restartCount": 0,
        "started": stage in ("running", "deleting"),
        "lastState": {},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}],
    }
    if stage == "creating":
        status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        return status
    status["containerID"] = "containerd://" + container_id_for(shape.uid, name)
    if stage == "terminated":
        status["state"] = {"terminated": {
            "exitCode": 143, "reason": "Error", "startedAt": "2026-12-04T09:12:08Z",
            "finishedAt": "2026-12-04T10:02:14Z", "containerID": status["containerID"]}}
    else:
        status["state"] = {"running": {"startedAt": "2026-12-04T09:12:08Z"}}
    return status


def pod_object(shape: PodSpecShape, stage: str, *, resource_version: str = "") -> dict:
    """Build a pod as the API server returns it at one stage of its life.

    The fields are modelled on a Deployment's pod with one container as a recent
    kube-apiserver returns it: owner reference, managedFields of the controller manager
    and the kubelet, the projected service-account volume, probes, and conditions.
    """
    metadata: dict[str, Any] = {
        "name": shape.name,
        "generateName": shape.name.rsplit("-", 1)[0] + "-",
        "namespace": shape.namespace,
        "uid": shape.uid,
        "resourceVersion": resource_version,
        "creationTimestamp": "2026-12-04T09:12:03Z",
        "labels": {"app.kubernetes.io/name": shape.owner_name, "app.kubernetes.io/component": "worker"},
        "ownerReferences": [{"apiVersion": "apps/v1" if shape.owner_kind != "Job" else "batch/v1",
                             "kind": shape.owner_kind, "name": shape.owner_name,
                             "uid": str(uuid.uuid5(uuid.NAMESPACE_OID, shape.owner_name)),
                             "controller": True, "blockOwnerDeletion": True}],
        "managedFields": _managed_fields(shape, stage),
    }
    if shape.template_hash:
        metadata["labels"]["pod-template-hash"] = shape.template_hash
    if stage in ("deleting", "terminated"):
        metadata["deletionTimestamp"] = "2026-12-04T10:02:40Z"
        metadata["deletionGracePeriodSeconds"] = 30
    spec = {
        "volumes": [
            {"name": "config", "configMap": {"name": f"{shape.owner_name}-config", "defaultMode": 420}},
            {"name": "kube-api-access-x7k2p", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                    "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ], "defaultMode": 420}},
        ],
        "containers": [_container_spec(name, shape) for name in shape.containers],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "nodeName": shape.node,
        "securityContext": {"fsGroup": 1001},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300},
        ],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    status: dict[str, Any] = {
        "phase": {"pending": "Pending", "creating": "Pending", "terminated": "Failed"}.get(stage, "Running"),
        "conditions": _conditions(stage),
        "qosClass": "Burstable",
    }
    if stage != "pending":
        status.update({
            "hostIP": "10.0.3.17", "hostIPs": [{"ip": "10.0.3.17"}],
            "startTime": "2026-12-04T09:12:03Z",
            "containerStatuses": [_container_status(name, shape, stage) for name in shape.containers],
        })
    if stage in ("running", "deleting", "terminated"):
        status.update({"podIP": "10.42.17.23", "podIPs": [{"ip": "10.42.17.23"}]})
    return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": spec, "status": status}


def node_name(index: int) -> str:
    return f"node-{index:05d}"


def churn_shape(sequence: int, node: str) -> PodSpecShape:
    deployment = f"service-{sequence % 97:02d}"
    return PodSpecShape(
        name=f"{deployment}-6d4cf56db6-{sequence:06d}", namespace=f"team-{sequence % 7}", node=node,
        owner_kind="ReplicaSet", owner_name=f"{deployment}-6d4cf56db6", template_hash="6d4cf56db6",
    )


# The fake API server, metered.


class Meter:
    """Bytes and counts of what the fake API server wrote and read, by kind."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.bytes: dict[str, int] = {}

    def add(self, kind: str, size: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.bytes[kind] = self.bytes.get(kind, 0) + size

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {"counts": dict(self.counts), "bytes": dict(self.bytes)}


def _chunk_size(payload_length: int) -> int:
    """Return the bytes of one HTTP/1.1 chunk: hex length, CRLF, payload, CRLF."""
    return len(f"{payload_length:x}") + 2 + payload_length + 2


def _header_size(status_line: str, headers: Any) -> int:
    return len(status_line) + 2 + sum(len(key) + 2 + len(value) + 2 for key, value in headers.items()) + 2


def _request_size(request: web.Request) -> int:
    line = f"{request.method} {request.path_qs} HTTP/{request.version.major}.{request.version.minor}"
    return len(line) + 2 + sum(len(key) + 2 + len(value) + 2 for key, value in request.raw_headers) + 2


def tcp_bytes_acked(sock: Any) -> int | None:
    """Return the bytes the peer has acknowledged on a TCP socket, from TCP_INFO."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LENGTH)
    except OSError:
        return None
    if len(info) < TCP_INFO_BYTES_ACKED + 8:
        return None
    return struct.unpack_from("Q", info, TCP_INFO_BYTES_ACKED)[0]


class MeteredKubeAPI(FakeKubeAPI):
    """The fake API server of tests/kubeapi.py with byte accounting and a pod churn.

    Bytes are counted at the HTTP layer as aiohttp writes them: status line, headers,
    and each watch line in its chunk framing. TCP, IP and TLS overheads are not
    included. The server also keeps only the last HISTORY_KEPT changes.
    """

    def __init__(self, *, bookmark_interval: float) -> None:
        super().__init__(bookmark_interval=bookmark_interval)
        self.meter = Meter()
        # Bytes written per connection, to check the accounting against TCP_INFO.
        self.connection_bytes: dict[Any, int] = {}
        self.changes = 0

    async def _serve(self) -> None:
        # The base server's routes, but a listen backlog of 1024 in place of aiohttp's 128,
        # so that the SYN queue does not drop some of 1000 watches connecting at once.
        app = web.Application()
        app.router.add_get("/api/v1/pods", self._handle_pods)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._handle_pods)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]

    # Accounting hooks on the base server.

    async def _handle_pods(self, request: web.Request) -> web.StreamResponse:
        is_watch = request.query.get("watch", "").lower() in ("1", "true")
        self.meter.add("watch_request_in" if is_watch else "list_request_in", _request_size(request))
        response = await super()._handle_pods(request)
        transport = request.transport
        if is_watch:
            self.meter.add("watch_end", 5)  # the last chunk, b"0\r\n\r\n"
            self._add_connection_bytes(transport, 5)
        elif isinstance(response, web.Response) and response.body is not None:
            body = len(response.body)
            # Headers as aiohttp will write them: the ones set so far plus its own
            # Content-Length, Date (29 characters) and Server.
            headers = dict(response.headers)
            headers.update({"Content-Length": str(body), "Date": "x" * 29, "Server": SERVER_SOFTWARE})
            size = _header_size(f"HTTP/1.1 {response.status} {response.reason}", headers) + body
            self.meter.add("list_response", size)
            self._add_connection_bytes(transport, size)
        return response

    def _queue_start(self, watcher: Any, start_version: str) -> None:
        response = watcher.response
        size = _header_size(f"HTTP/1.1 {response.status} {response.reason}", response.headers)
        self.meter.add("watch_response_headers", size)
        watcher.transport = watcher.request.transport
        self._add_connection_bytes(watcher.transport, size)
        super()._queue_start(watcher, start_version)

    async def _write_event(self, watcher: Any, event: dict) -> None:
        payload = json.dumps(event).encode() + b"\n"
        await watcher.response.write(payload)
        size = _chunk_size(len(payload))
        kind = event.get("type", "")
        self.meter.add("bookmark" if kind == "BOOKMARK" else f"event_{kind.lower()}", size)
        self._add_connection_bytes(getattr(watcher, "transport", None), size)

    def _add_connection_bytes(self, transport: Any, size: int) -> None:
        if transport is not None:
            self.connection_bytes[transport] = self.connection_bytes.get(transport, 0) + size

    def _record_change(self, old: dict | None, new: dict | None, deleted_state: dict | None = None) -> None:
        super()._record_change(old, new, deleted_state)
        self.changes += 1
        excess = len(self._history) - HISTORY_KEPT
        if excess > 0:
            del self._history[:excess]
            self._oldest_watchable = self._history[0].resource_version - 1

    # Commands, run on the server loop.

    async def add_pods(self, pods: list[dict]) -> None:
        for pod in pods:
            await self._upsert(pod)

    async def end_watches(self) -> int:
        """End every open watch stream cleanly, as the server does at timeoutSeconds."""
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.ended = True
            watcher.wake.set()
            watcher.queue.put_nowait(None)
        return len(watchers)

    async def send_bookmarks(self) -> int:
        """Queue one BOOKMARK with the current resourceVersion on every open watch."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(("event", self._bookmark()))
        return len(self._watchers)

    async def set_bookmark_interval(self, seconds: float) -> None:
        self.bookmark_interval = seconds

    async def state(self) -> dict:
        return {
            "watchers": len(self._watchers),
            "queued": sum(watcher.queue.qsize() for watcher in self._watchers),
            "changes": self.changes,
            "connections": len(self.connection_bytes),
            "meter": self.meter.snapshot(),
        }

    async def tcp_check(self) -> dict:
        """Compare counted bytes with TCP_INFO's acknowledged bytes on the open watch connections."""
        counted = acked = connections = 0
        for watcher in self._watchers:
            transport = getattr(watcher, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            sent = tcp_bytes_acked(sock) if sock is not None else None
            if sent is None:
                continue
            connections += 1
            acked += sent
            counted += self.connection_bytes.get(transport, 0)
        return {"connections": connections, "counted_bytes": counted, "tcp_bytes_acked": acked}

    async def churn(self, lifecycles_per_second: float, seconds: float, nodes: int, seed: int) -> dict:
        """Run pod lifecycles on random nodes: start `rate` a second for `seconds`, then finish them.

        Each lifecycle makes LIFECYCLE_EVENTS changes LIFECYCLE_STEP_SECONDS apart:
        create (bound to its node), ContainerCreating, Running, deletion requested,
        containers terminated, and the final delete.
        """
        rng = random.Random(seed)
        loop = asyncio.get_running_loop()
        total = int(lifecycles_per_second * seconds)
        start = loop.time()
        due: list[tuple[float, int, int]] = []  # (time, sequence, step)
        shapes: dict[int, PodSpecShape] = {}
        started = 0
        while started < total or due:
            now = loop.time()
            while started < total and start + started / lifecycles_per_second <= now:
                shapes[started] = churn_shape(started, node_name(rng.randrange(nodes)))
                heapq.heappush(due, (now, started, 0))
                started += 1
            while due and due[0][0] <= now:
                _, sequence, step = heapq.heappop(due)
                shape = shapes[sequence]
                if step < len(STAGES):
                    await self._upsert(pod_object(shape, STAGES[step]))
                    heapq.heappush(due, (now + LIFECYCLE_STEP_SECONDS, sequence, step + 1))
                else:
                    await self._delete(shape.namespace, shape.name)
                    del shapes[sequence]
            await asyncio.sleep(0.002)
        return {"lifecycles": total, "wall_seconds": loop.time() - start}


def _server_main(connection: Any, nodes: int, pods_per_node: int) -> None:
    """Run the metered fake API server and reply to the parent's commands over a pipe."""
    logging.basicConfig(level=logging.WARNING)
    # Watches start with the short interval of the bookmark phase, which comes first.
    api = MeteredKubeAPI(bookmark_interval=BOOKMARK_PHASE_INTERVAL)
    api.start()
    try:
        pods = []
        for index in range(nodes):
            for slot in range(pods_per_node):
                shape = churn_shape(index * pods_per_node + slot, node_name(index))
                shape = PodSpecShape(**{**asdict(shape), "name": f"resident-{index:05d}-{slot:03d}"})
                pods.append(pod_object(shape, "running"))
        api._call(api.add_pods(pods))
        del pods
        connection.send(("ready", api.port, rss_mib()))
        while True:
            command, *arguments = connection.recv()
            if command == "stop":
                break
            if command == "cpu":
                connection.send(cpu_seconds())
            elif command == "state":
                connection.send(api._call(api.state()))
            elif command == "tcp_check":
                connection.send(api._call(api.tcp_check()))
            elif command == "end_watches":
                connection.send(api._call(api.end_watches()))
            elif command == "send_bookmarks":
                connection.send(api._call(api.send_bookmarks()))
            elif command == "bookmarks":
                connection.send(api._call(api.set_bookmark_interval(*arguments)))
            elif command == "churn":
                rate, seconds, node_count, seed = arguments
                future = asyncio.run_coroutine_threadsafe(api.churn(rate, seconds, node_count, seed), api._loop)
                connection.send(future.result(PHASE_TIMEOUT))
            elif command == "rss":
                connection.send(rss_mib())
            else:
                connection.send(ValueError(f"unknown server command {command!r}"))
    finally:
        api.stop()
        connection.close()


# The watching side: one process with N exporter-shaped pod watches.


class _CountingHandler(logging.Handler):
    """Count the log records of warning level and above, such as urllib3's connect retries."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _clients_main(connection: Any, kubeconfig: str, nodes: int, list_timeout: float) -> None:
    """Start `nodes` PodWatchers, each for its own node, and reply to commands over a pipe."""
    logging.basicConfig(level=logging.WARNING)
    warnings = _CountingHandler()
    logging.getLogger().addHandler(warnings)
    from exporter.config import Config
    from exporter.kubernetes import PodWatcher

    lock = threading.Lock()
    totals = {"events": 0, "foreign": 0}

    class CountingPodWatcher(PodWatcher):
        """The exporter's PodWatcher, counting the events it applies and any of another node."""

        def on_event(self, kind: str, pod: dict) -> None:
            super().on_event(kind, pod)
            foreign = (pod.get("spec") or {}).get("nodeName") != self.watch.node
            with lock:
                totals["events"] += 1
                totals["foreign"] += foreign

    watchers = []
    try:
        started = time.monotonic()
        for index in range(nodes):
            config = Config(kubernetes="on", kubeconfig=kubeconfig, node_name=node_name(index))
            watcher = CountingPodWatcher(config)
            watcher.watch.timeout_seconds = WATCH_TIMEOUT_SECONDS
            watcher.start()
            watchers.append(watcher)
        deadline = started + list_timeout
        for watcher in watchers:
            if not watcher.listed.wait(max(0.0, deadline - time.monotonic())):
                raise PhaseError(f"{node_name(watchers.index(watcher))} did not list within {list_timeout:.0f} s")
        connection.send(("listed", time.monotonic() - started, cpu_seconds(), rss_mib()))
        while True:
            command, *_ = connection.recv()
            if command == "stop":
                break
            if command == "state":
                restarts: dict[str, int] = {}
                for watcher in watchers:
                    for reason, count in watcher.watch.restarts.items():
                        restarts[reason] = restarts.get(reason, 0) + count
                with lock:
                    events, foreign = totals["events"], totals["foreign"]
                connection.send({
                    "cpu": cpu_seconds(), "events": events, "foreign_events": foreign,
                    "restarts": restarts, "up": sum(watcher.watch.up for watcher in watchers),
                    "rss_mib": rss_mib(), "warnings_logged": warnings.count,
                })
            else:
                connection.send(ValueError(f"unknown client command {command!r}"))
    except Exception as error:  # reported to the parent, which fails the round
        connection.send(("failed", f"{type(error).__name__}: {error}"))
    finally:
        for watcher in watchers:
            watcher.stop()
        connection.close()


class Child:
    """A child process and its command pipe; stop() ends it by its pid."""

    def __init__(self, context: Any, target: Any, *arguments: Any) -> None:
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=target, args=(child_end, *arguments), daemon=True)
        self.process.start()
        child_end.close()

    def ask(self, *command: Any, timeout: float = PHASE_TIMEOUT) -> Any:
        """Send one command tuple, such as ("churn", rate, seconds, nodes, seed), and return the reply."""
        self.connection.send(command)
        return self.receive(timeout)

    def receive(self, timeout: float = PHASE_TIMEOUT) -> Any:
        if not self.connection.poll(timeout):
            raise PhaseError(f"child pid {self.process.pid} did not reply within {timeout:.0f} s")
        try:
            reply = self.connection.recv()
        except EOFError as error:
            raise PhaseError(f"child pid {self.process.pid} exited with status {self.process.exitcode}; "
                             "its traceback is on stderr") from error
        if isinstance(reply, Exception):
            raise PhaseError(f"child pid {self.process.pid} failed: {reply}")
        if isinstance(reply, tuple) and reply and reply[0] == "failed":
            raise PhaseError(f"child pid {self.process.pid} failed: {reply[1]}")
        return reply

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.connection.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            self.process.join(30)
        if self.process.is_alive():
            logger.warning("Child pid %d did not stop within 30 s; sending SIGTERM", self.process.pid)
            self.process.terminate()
            self.process.join(10)
        self.connection.close()


def _wait_until(condition: Any, description: str, timeout: float = PHASE_TIMEOUT, interval: float = 0.2) -> float:
    """Poll `condition` until it is true; return the seconds waited, or raise PhaseError."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise PhaseError(f"timed out after {timeout:.0f} s waiting for {description}")
        time.sleep(interval)
    return time.monotonic() - started


def _meter_delta(after: dict, before: dict) -> dict[str, dict[str, int]]:
    delta: dict[str, dict[str, int]] = {"counts": {}, "bytes": {}}
    for part in ("counts", "bytes"):
        for kind, value in after[part].items():
            change = value - before[part].get(kind, 0)
            if change:
                delta[part][kind] = change
    return delta


def _pod_events(meter: dict) -> tuple[int, int]:
    """Return (count, bytes) of pod events (ADDED, MODIFIED, DELETED) in a meter delta."""
    kinds = [kind for kind in meter["counts"] if kind.startswith("event_")]
    return sum(meter["counts"][kind] for kind in kinds), sum(meter["bytes"][kind] for kind in kinds)


@dataclass
class WatchOptions:
    watchers: tuple[int, ...]
    pods_per_node: int
    churn_rate: float
    churn_seconds: float
    bookmark_seconds: float
    quiet_seconds: float
    restart_rounds: int
    repeat: int = 1


def run_watch_round(context: Any, watchers: int, options: WatchOptions, workdir: Path) -> dict:
    """Run one server and `watchers` PodWatchers through the phases; return the measurements."""
    # With no watchers the churn still needs nodes to place pods on.
    nodes = watchers or 50
    result: dict[str, Any] = {"watchers": watchers, "nodes": nodes, "pods_per_node": options.pods_per_node}
    server = Child(context, _server_main, nodes, options.pods_per_node)
    clients: Child | None = None
    try:
        _, port, server_rss = server.receive(PHASE_TIMEOUT)
        result["server_rss_mib_before_watches"] = round(server_rss, 1)
        kubeconfig = workdir / f"kubeconfig-{watchers}"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }))

        if watchers:
            cpu_before = server.ask("cpu")
            meter_before = server.ask("state")["meter"]
            clients = Child(context, _clients_main, str(kubeconfig), watchers, PHASE_TIMEOUT)
            _, list_seconds, client_cpu, client_rss = clients.receive(PHASE_TIMEOUT)
            _wait_until(lambda: server.ask("state")["watchers"] == watchers, f"{watchers} open watches")
            meter = _meter_delta(server.ask("state")["meter"], meter_before)
            result["startup"] = {
                "seconds": round(list_seconds, 2),
                "server_cpu_seconds": server.ask("cpu") - cpu_before,
                "client_cpu_seconds": client_cpu,
                "client_rss_mib": round(client_rss, 1),
                "server_rss_mib": round(server.ask("rss"), 1),
                "list_requests": meter["counts"].get("list_response", 0),
                "list_response_bytes": meter["bytes"].get("list_response", 0),
                "list_request_bytes_in": meter["bytes"].get("list_request_in", 0),
                "watch_requests": meter["counts"].get("watch_request_in", 0),
                "watch_request_bytes_in": meter["bytes"].get("watch_request_in", 0),
                "watch_response_header_bytes": meter["bytes"].get("watch_response_headers", 0),
            }
            result["bookmarks"] = _bookmark_phase(server, clients, options.bookmark_seconds)
        else:
            server.ask("bookmarks", 3600.0)
        result["quiet"] = _quiet_phase(server, clients, options.quiet_seconds)

        result["churn"] = _churn_phase(server, clients, nodes, options)
        if watchers:
            result["tcp_check"] = server.ask("tcp_check")
            result["restarts"] = _restart_phase(server, clients, watchers, options.restart_rounds)
            result["client_warnings_logged"] = clients.ask("state")["warnings_logged"]
    finally:
        if clients is not None:
            clients.stop()
        server.stop()
    return result


def _quiet_phase(server: Child, clients: Child | None, seconds: float) -> dict:
    """Measure the idle CPU of both sides: open watches, no changes, no BOOKMARKs."""
    server_cpu = server.ask("cpu")
    client_cpu = clients.ask("state")["cpu"] if clients is not None else 0.0
    time.sleep(seconds)
    return {
        "seconds": seconds,
        "server_cpu_seconds": server.ask("cpu") - server_cpu,
        "client_cpu_seconds": clients.ask("state")["cpu"] - client_cpu if clients is not None else 0.0,
    }


def _bookmark_phase(server: Child, clients: Child, seconds: float) -> dict:
    """Measure BOOKMARKs at BOOKMARK_PHASE_INTERVAL, then switch them off for the later phases."""
    meter_before = server.ask("state")["meter"]
    server_cpu, client_cpu = server.ask("cpu"), clients.ask("state")["cpu"]
    time.sleep(seconds)
    server.ask("bookmarks", 3600.0)
    # Streams waiting with the short interval send one more BOOKMARK, then wait an hour.
    time.sleep(BOOKMARK_PHASE_INTERVAL + 0.5)
    meter = _meter_delta(server.ask("state")["meter"], meter_before)
    return {
        "seconds": seconds + BOOKMARK_PHASE_INTERVAL + 0.5,
        "bookmarks": meter["counts"].get("bookmark", 0),
        "bookmark_bytes": meter["bytes"].get("bookmark", 0),
        "server_cpu_seconds": server.ask("cpu") - server_cpu,
        "client_cpu_seconds": clients.ask("state")["cpu"] - client_cpu,
    }


def _churn_phase(server: Child, clients: Child | None, nodes: int, options: WatchOptions) -> dict:
    """Run the pod churn and measure it until every event is written and applied."""
    state = server.ask("state")
    meter_before, changes_before = state["meter"], state["changes"]
    client_before = clients.ask("state") if clients is not None else None
    server_cpu = server.ask("cpu")
    started = time.monotonic()
    churn = server.ask("churn", options.churn_rate, options.churn_seconds, nodes, 7)

    # Wait until every queued event is written and, with watchers, applied by them.
    _wait_until(lambda: server.ask("state")["queued"] == 0, "the server's watch queues to drain", interval=0.05)
    written, _ = _pod_events(_meter_delta(server.ask("state")["meter"], meter_before))
    if clients is not None:
        _wait_until(lambda: clients.ask("state")["events"] - client_before["events"] >= written,
                    f"the watchers to apply {written} events", interval=0.05)
    wall = time.monotonic() - started
    server_cpu = server.ask("cpu") - server_cpu

    state = server.ask("state")
    meter = _meter_delta(state["meter"], meter_before)
    events, event_bytes = _pod_events(meter)
    result = {
        "lifecycles": churn["lifecycles"],
        "changes": state["changes"] - changes_before,
        "events_written": events,
        "event_bytes": event_bytes,
        "event_bytes_by_type": {kind: meter["bytes"][kind] for kind in meter["bytes"] if kind.startswith("event_")},
        "event_counts_by_type": {kind: meter["counts"][kind] for kind in meter["counts"] if kind.startswith("event_")},
        "wall_seconds": round(wall, 2),
        "server_cpu_seconds": server_cpu,
    }
    if clients is not None:
        after = clients.ask("state")
        result.update({
            "events_applied": after["events"] - client_before["events"],
            "foreign_events": after["foreign_events"] - client_before["foreign_events"],
            "client_cpu_seconds": after["cpu"] - client_before["cpu"],
            "client_rss_mib": round(after["rss_mib"], 1),
        })
    return result


def _restart_phase(server: Child, clients: Child, watchers: int, rounds: int) -> dict:
    """End every watch `rounds` times and measure the re-watch each PodWatch makes.

    One BOOKMARK first moves every watch's resume point to the current resourceVersion,
    as kube-apiserver's BOOKMARKs every minute do. Without it, the watches of
    nodes that saw no change during the churn would resume from a version older than the
    kept history, get 410 Gone and LIST again.
    """
    server.ask("send_bookmarks")
    _wait_until(lambda: server.ask("state")["queued"] == 0, "the BOOKMARKs to be written", interval=0.05)
    time.sleep(0.5)
    state_before = server.ask("state")
    meter_before = state_before["meter"]
    restarts_before = clients.ask("state")["restarts"]
    server_cpu, client_cpu = server.ask("cpu"), clients.ask("state")["cpu"]
    ended = 0
    for _ in range(rounds):
        # A stream that ends within 1 s of its start without a line is taken as an
        # error by PodWatch, so every stream is older than that before it is ended.
        time.sleep(1.5)
        requests_before = server.ask("state")["meter"]["counts"].get("watch_request_in", 0)
        ended += server.ask("end_watches")
        _wait_until(lambda: server.ask("state")["meter"]["counts"].get("watch_request_in", 0)
                    - requests_before >= watchers and server.ask("state")["watchers"] == watchers,
                    f"{watchers} watches to resume")
    state = server.ask("state")
    meter = _meter_delta(state["meter"], meter_before)
    after = clients.ask("state")
    reasons = {reason: count - restarts_before.get(reason, 0) for reason, count in after["restarts"].items()}
    return {
        "ended": ended,
        "watch_requests": meter["counts"].get("watch_request_in", 0),
        "new_connections": state["connections"] - state_before["connections"],
        "list_requests": meter["counts"].get("list_response", 0),
        "restart_reasons": reasons,
        "watch_request_bytes_in": meter["bytes"].get("watch_request_in", 0),
        "watch_response_header_bytes": meter["bytes"].get("watch_response_headers", 0),
        "watch_end_bytes": meter["bytes"].get("watch_end", 0),
        "server_cpu_seconds": server.ask("cpu") - server_cpu,
        "client_cpu_seconds": after["cpu"] - client_cpu,
    }


def fit_line(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Fit y = intercept + slope * x by least squares; None with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    slope, intercept = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return {"intercept": intercept, "slope": slope}


def summarize_watch(rounds: list[dict]) -> dict:
    """Derive per-event, per-watch and per-request costs from the rounds, and fit them over N."""
    per_round = []
    for entry in rounds:
        churn, quiet = entry["churn"], entry["quiet"]
        idle_server = quiet["server_cpu_seconds"] / quiet["seconds"]
        server_cpu = max(0.0, churn["server_cpu_seconds"] - idle_server * churn["wall_seconds"])
        row: dict[str, Any] = {
            "watchers": entry["watchers"],
            "changes": churn["changes"],
            "events_written": churn["events_written"],
            "server_cpu_us_per_change": 1e6 * server_cpu / churn["changes"],
            "server_idle_cpu_per_second": idle_server,
        }
        if entry["watchers"]:
            idle_client = quiet["client_cpu_seconds"] / quiet["seconds"]
            client_cpu = max(0.0, churn["client_cpu_seconds"] - idle_client * churn["wall_seconds"])
            startup, bookmarks, restarts = entry["startup"], entry["bookmarks"], entry["restarts"]
            row.update({
                "events_applied": churn["events_applied"],
                "foreign_events": churn["foreign_events"],
                "bytes_per_event": churn["event_bytes"] / churn["events_written"],
                "bytes_per_event_by_type": {
                    kind.removeprefix("event_").upper(): churn["event_bytes_by_type"][kind]
                    / churn["event_counts_by_type"][kind]
                    for kind in churn["event_bytes_by_type"]
                },
                "client_cpu_us_per_event": 1e6 * client_cpu / churn["events_applied"],
                "list_bytes_per_node": startup["list_response_bytes"] / startup["list_requests"],
                "list_request_bytes_in": startup["list_request_bytes_in"] / startup["list_requests"],
                "startup_server_cpu_ms_per_watch": 1e3 * startup["server_cpu_seconds"] / entry["watchers"],
                "startup_seconds": startup["seconds"],
                "bytes_per_bookmark": bookmarks["bookmark_bytes"] / max(1, bookmarks["bookmarks"]),
                "server_cpu_us_per_bookmark": 1e6 * max(0.0, bookmarks["server_cpu_seconds"]
                                                        - idle_server * bookmarks["seconds"])
                / max(1, bookmarks["bookmarks"]),
                "rewatch_bytes_out": (restarts["watch_response_header_bytes"] + restarts["watch_end_bytes"])
                / restarts["watch_requests"],
                "rewatch_bytes_in": restarts["watch_request_bytes_in"] / restarts["watch_requests"],
                "rewatch_server_cpu_us": 1e6 * restarts["server_cpu_seconds"] / restarts["watch_requests"],
                "rewatch_client_cpu_us": 1e6 * restarts["client_cpu_seconds"] / restarts["watch_requests"],
                "rewatch_new_connections": restarts["new_connections"] / restarts["watch_requests"],
                "restart_reasons": restarts["restart_reasons"],
                "client_warnings_logged": entry["client_warnings_logged"],
                "tcp_check": entry["tcp_check"],
                "server_rss_mib_per_watch": (startup["server_rss_mib"] - entry["server_rss_mib_before_watches"])
                / entry["watchers"],
            })
        per_round.append(row)

    grouped = _median_rows(per_round)
    watched = [row for row in grouped if row["watchers"]]
    baseline = [row for row in grouped if not row["watchers"]]
    fit = fit_line([(row["watchers"], row["server_cpu_us_per_change"])
                    for row in per_round if row["watchers"]])
    summary: dict[str, Any] = {
        "rounds": grouped,
        "repeats": len(per_round) // max(1, len(grouped)),
        "server_cpu_per_change_fit": fit,
        # The watching process's RSS against its watch count: the memory of one PodWatcher.
        "client_rss_mib_fit": fit_line([(entry["watchers"], entry["churn"]["client_rss_mib"])
                                        for entry in rounds if entry["watchers"]]),
    }
    if baseline:
        summary["server_cpu_us_per_change_without_watches"] = baseline[0]["server_cpu_us_per_change"]
    if fit is not None and baseline:
        summary["server_cpu_us_per_delivered_event"] = fit["intercept"] - baseline[0]["server_cpu_us_per_change"]
    if watched:
        for key in ("bytes_per_event", "bytes_per_bookmark", "rewatch_bytes_out", "rewatch_bytes_in",
                    "list_bytes_per_node", "client_cpu_us_per_event", "server_cpu_us_per_bookmark",
                    "rewatch_server_cpu_us", "rewatch_client_cpu_us", "startup_server_cpu_ms_per_watch",
                    "rewatch_new_connections"):
            summary[key] = statistics.median(row[key] for row in watched)
        summary["bytes_per_event_by_type"] = watched[0]["bytes_per_event_by_type"]
        summary["pods_per_node"] = rounds[0]["pods_per_node"]
    return summary


# Figures of a round that vary from run to run; the summary gives their median and range.
CPU_KEYS = (
    "server_cpu_us_per_change", "client_cpu_us_per_event", "startup_server_cpu_ms_per_watch",
    "startup_seconds", "server_cpu_us_per_bookmark", "rewatch_server_cpu_us", "rewatch_client_cpu_us",
)


def _median_rows(rows: list[dict]) -> list[dict]:
    """Merge the rows of repeated rounds with the same watch count into one row.

    Numbers become their median, and each key of CPU_KEYS also gets its [min, max]
    under "spread". Counts (changes, events, warnings, the TCP check, restart reasons)
    are summed.
    """
    merged = []
    for watchers in sorted({row["watchers"] for row in rows}):
        group = [row for row in rows if row["watchers"] == watchers]
        row: dict[str, Any] = dict(group[0])
        for key, value in group[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "watchers":
                values = [entry[key] for entry in group]
                summed = key in ("changes", "events_written", "events_applied", "foreign_events",
                                 "client_warnings_logged")
                row[key] = sum(values) if summed else statistics.median(values)
        for key in ("tcp_check", "restart_reasons"):
            if key in row:
                row[key] = {name: sum(entry[key][name] for entry in group) for name in group[0][key]}
        row["spread"] = {key: [min(entry[key] for entry in group), max(entry[key] for entry in group)]
                         for key in CPU_KEYS if key in group[0]}
        row["repeats"] = len(group)
        merged.append(row)
    return merged


def watch_part(options: WatchOptions) -> dict:
    """Run a round without watches, then one per watch count, `repeat` times; summarize them."""
    context = multiprocessing.get_context("spawn")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as workdir:
        for repeat in range(options.repeat):
            for watchers in (0, *options.watchers):
                started = time.monotonic()
                logger.info("Watch round %d with %d watches: starting", repeat + 1, watchers)
                rounds.append(run_watch_round(context, watchers, options, Path(workdir)))
                logger.info("Watch round %d with %d watches: done in %.1f s", repeat + 1, watchers,
                            time.monotonic() - started)
    running = pod_object(churn_shape(0, node_name(0)), "running")
    return {
        "options": asdict(options),
        "pod_json_bytes": {stage: len(json.dumps(pod_object(churn_shape(0, node_name(0)), stage)))
                           for stage in STAGES},
        "running_pod_json_bytes": len(json.dumps(running)),
        "rounds": rounds,
        "summary": summarize_watch(rounds),
    }


# Series per node: the exporter's registry with synthetic state.

HOST_PIDNS = 4026531836
SUPERVISOR_PID = 100
STORM_NAMESPACE = "storm"
STORM_WORKLOAD = "storm-supervisor"
SIGTERM, SIGKILL = 15, 9


class Clock:
    """Monotonic seconds that the synthetic node moves forward."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class NodeShape:
    """The synthetic state of one node.

    `topologies` have `workers` live worker JVMs each. `idle_topologies` have no live
    worker but ran within --topology.retention, so their series stay. With `busy`,
    every topology has had one graceful stop, one watchdog halt, one SIGKILL escalation
    and one crash. `pods` counts the pods the pod watch receives: the Storm supervisor pod
    plus `pods - 1` others, each of its own workload with `containers` containers, and
    `deleted_workloads` more workloads whose only pod was deleted within the retention
    (Jobs, for example). `pods=0` means the pod watch is off.
    """

    name: str
    topologies: int
    workers: int = 1
    idle_topologies: int = 0
    busy: bool = True
    pods: int = 1
    containers: int = 1
    deleted_workloads: int = 0
    topology_max: int = 200


class SyntheticNode:
    """A Tracker fed with the process, signal and exit events of Storm worker trees."""

    def __init__(self, topology_max: int) -> None:
        from exporter.tracker import Tracker

        self.clock = Clock()
        self.infos: dict[int, Any] = {}
        self.cgroups: dict[int, str] = {}
        self.tracker = Tracker(
            clock=self.clock, lookup=self.infos.get, read_cgroup=self.cgroups.get,
            host_pidns=HOST_PIDNS, topology_max=topology_max,
        )
        self.tracker.signals_visible = True
        self.tracker.exits_known = True
        self.next_pid = 1000
        self.worker_cgroup = ""
        from tests.stormargv import supervisor_argv

        self._spawn(SUPERVISOR_PID, 1, supervisor_argv())

    def _spawn(self, pid: int, ppid: int, argv: list[str]) -> None:
        from exporter.events import ProcessForked, ProcessInfo

        info = ProcessInfo(pid=pid, start_ticks=pid * 10, ppid=ppid, comm=argv[0].rsplit("/", 1)[-1][:15],
                           state="S", uid=1001, argv=tuple(argv), nspid=(pid,), pidns=HOST_PIDNS)
        self.infos[pid] = info
        if self.worker_cgroup:
            self.cgroups[pid] = self.worker_cgroup
        self.tracker.handle(ProcessForked(time=self.clock.now, pid=pid, ppid=ppid, info=info))

    def _exit(self, pid: int, status: int) -> None:
        from exporter.events import ProcessExited

        self.tracker.handle(ProcessExited(time=self.clock.now, pid=pid, status=status))
        self.infos.pop(pid, None)

    def _kill(self, target: int, signum: int) -> None:
        """`kill -N target` run by the supervisor: fork and exec, the signal, then its exit."""
        from exporter.events import ProcessExeced, SignalGenerated

        pid = self._pid()
        self._spawn(pid, SUPERVISOR_PID, ["kill", f"-{signum}", str(target)])
        self.tracker.handle(ProcessExeced(time=self.clock.now, pid=pid, info=self.infos[pid]))
        self.tracker.handle(SignalGenerated(time=self.clock.now, pid=target, signal=signum, sender_pid=pid,
                                            sender_comm="kill", code=0))
        self._exit(pid, 0)

    def _pid(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def start_worker(self, topology: str, port: int) -> int:
        """Start a LogWriter and its worker JVM; return the worker's pid."""
        from tests.stormargv import logwriter_argv, worker_argv

        worker_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{topology}/{self.next_pid}"))
        logwriter = self._pid()
        self._spawn(logwriter, SUPERVISOR_PID, logwriter_argv(topology, worker_id, port))
        worker = self._pid()
        self._spawn(worker, logwriter, worker_argv(topology, worker_id, port))
        return worker

    def run_episodes(self, topology: str, port: int) -> None:
        """Stop four workers of a topology: graceful, halted, SIGKILL escalation, crashed."""
        for status, escalate, request in ((143 << 8, False, True), (20 << 8, False, True),
                                          (SIGKILL, True, True), (1 << 8, False, False)):
            worker = self.start_worker(topology, port)
            self.clock.now += 1.0
            if request:
                self._kill(worker, SIGTERM)
            self.clock.now += 3.0
            if escalate:
                self._kill(worker, SIGKILL)
            self._exit(worker, status)
            self._exit(worker - 1, status if status != SIGKILL else 143 << 8)
            self.clock.now += 6.0  # past the settle time and the leftover grace
            self.tracker.tick()


def _supervisor_pod_shape(node: str) -> PodSpecShape:
    return PodSpecShape(
        name=f"{STORM_WORKLOAD}-x7d2q", namespace=STORM_NAMESPACE, node=node,
        owner_kind="DaemonSet", owner_name=STORM_WORKLOAD, containers=("supervisor",),
        uid="5f0c6a51-9a57-4c71-a4f3-2d1b0e9c7a11",
    )


def _cgroup_of(shape: PodSpecShape, container: str) -> str:
    uid = shape.uid.replace("-", "_")
    return (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/"
            f"cri-containerd-{container_id_for(shape.uid, container)}.scope\n")


def _other_pod_shape(index: int, node: str, containers: int, kind: str = "ReplicaSet") -> PodSpecShape:
    names = tuple("app" if number == 0 else f"sidecar-{number}" for number in range(containers))
    if kind == "Job":
        return PodSpecShape(name=f"report-2026120{index % 10}-{index:05d}-8xk2d", namespace=f"team-{index % 7}",
                            node=node, owner_kind="Job", owner_name=f"report-2026120{index % 10}-{index:05d}",
                            containers=names)
    return PodSpecShape(
        name=f"service-{index:03d}-6d4cf56db6-q2x8z", namespace=f"team-{index % 7}", node=node,
        owner_kind="ReplicaSet", owner_name=f"service-{index:03d}-6d4cf56db6", template_hash="6d4cf56db6",
        containers=names,
    )


def topology_id(index: int) -> str:
    """Return a Storm topology id: name, counter and submission epoch."""
    return f"clickstream-enrich-{index:03d}-{index + 7}-{1764840000 + index * 61}"


def build_node(shape: NodeShape, procfs_root: str) -> tuple[Any, dict]:
    """Build the exporter's registry for one node shape; return it and what was fed to it."""
    from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector

    from exporter.collector import StormCollector
    from exporter.config import Config
    from exporter.diagmetrics import DiagnosticsCollector
    from exporter.diagnostics import Diagnoser, take_snapshot
    from exporter.kubernetes import PodWatcher
    from exporter.procfs import ProcFS

    node = SyntheticNode(shape.topology_max)
    supervisor_pod = _supervisor_pod_shape(node_name(1))
    if shape.pods:
        node.worker_cgroup = _cgroup_of(supervisor_pod, "supervisor")
    port = 6700
    for index in range(shape.topologies + shape.idle_topologies):
        if shape.busy:
            node.run_episodes(topology_id(index), port + index % 4)
    for index in range(shape.topologies):
        for worker in range(shape.workers):
            node.start_worker(topology_id(index), port + (index * shape.workers + worker) % 1000)
    node.clock.now += 1.0
    node.tracker.tick()

    # The registry as exporter/app.py builds it, with kernel sources active.
    lock = threading.Lock()
    registry = CollectorRegistry()
    collector = StormCollector(node.tracker, lock, sources=["tracefs", "netlink"])
    registry.register(collector)
    diagnostics = DiagnosticsCollector()
    registry.register(diagnostics)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    scans = Histogram("storm_termination_exporter_scan_duration_seconds", "Duration of a full /proc scan.",
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=registry)
    scans.observe(0.07)
    diagnoser = Diagnoser(ProcFS(procfs_root))
    fed = {"pods": 0, "workloads": 0}
    if shape.pods:
        watcher = PodWatcher(Config(kubernetes="on", node_name=node_name(1)))
        registry.register(watcher)
        collector.resolve_pod = watcher.resolve
        diagnostics.resolve_pod = watcher.resolve
        diagnoser.pre_stop = watcher.has_pre_stop
        for index in range(shape.deleted_workloads):
            job = pod_object(_other_pod_shape(index, node_name(1), shape.containers, kind="Job"), "terminated")
            watcher.on_event("ADDED", job)
            watcher.on_event("DELETED", job)
        pods = [pod_object(supervisor_pod, "running")]
        pods += [pod_object(_other_pod_shape(index, node_name(1), shape.containers), "running")
                 for index in range(shape.pods - 1)]
        watcher.on_snapshot(pods)
        fed = {"pods": len(pods), "workloads": len(watcher.pods.last_active)}
    with lock:
        snapshot = take_snapshot(node.tracker)
    diagnostics.latest = diagnoser.diagnose(snapshot)
    fed["topology_labels"] = len(node.tracker.labels.last_active)
    fed["live_workers"] = len(node.tracker.live_workers())
    return registry, fed


SERIES_GROUPS = (
    ("storm_worker_shutdown_duration_seconds", "worker duration histogram"),
    ("storm_pod_container_shutdown_duration_seconds", "pod duration histogram"),
    ("storm_worker_info", "storm_worker_info"),
    ("storm_pod", "other storm_pod_*"),
    ("storm_container_init_drops_sigterm", "diagnostics"),
    ("storm_worker_sigterm_disposition", "diagnostics"),
    ("storm_worker_signal_permission_denied", "diagnostics"),
    ("storm_worker_user_unresolvable", "diagnostics"),
    ("storm_worker_pod_stop_unsafe", "diagnostics"),
    ("storm_worker_port_conflicts", "diagnostics"),
    ("storm_worker", "other storm_worker_*"),
    ("storm_termination_exporter", "exporter's own"),
    ("", "process_* and python_info"),
)


# The metric_relabel_configs example of docs/scaling.md: drop 8 of the 23 buckets of both
# duration histograms. The boundaries around Storm's 3 s kill wait, the 30 s grace period
# and StormWorkerShutdownSlow's limit (0.8 of the shorter of the two, 2.4 s by default)
# stay. Prometheus matches the regex against "<__name__>;<le>".
BUCKET_DROP_REGEX = re.compile(
    r"storm_(worker|pod_container)_shutdown_duration_seconds_bucket;"
    r"(0\.1|0\.25|4(\.0)?|7\.5|15(\.0)?|45(\.0)?|120(\.0)?|300(\.0)?)"
)
_LE_LABEL = re.compile(r'[{,]le="([^"]*)"')


def _dropped_by_relabeling(line: str) -> bool:
    name = line.split("{", 1)[0].split(" ", 1)[0]
    le = _LE_LABEL.search(line)
    return BUCKET_DROP_REGEX.fullmatch(f"{name};{le.group(1) if le else ''}") is not None


def _group_of(sample_name: str) -> str:
    for prefix, group in SERIES_GROUPS:
        if sample_name.startswith(prefix):
            return group
    return "process_* and python_info"


# The headers of Prometheus 2.42's scrapes (Debian's package, seen on a test target).
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
TEXT_ACCEPT = "text/plain;version=0.0.4"
SCRAPES_PER_SHAPE = 5


async def _scrape(registry: Any) -> dict:
    """Serve `registry` with exporter/http.py on 127.0.0.1 and scrape it as Prometheus does.

    Returns the compressed bytes served for Prometheus's Accept header and for the text
    format, and the median time of SCRAPES_PER_SHAPE scrapes, which is the time the
    exporter spends building and compressing the body plus a loopback round trip.
    """
    import aiohttp

    from exporter.http import build_app

    app = build_app(registry=registry, telemetry_path="/metrics", ready=lambda: True,
                    describe_sources=lambda: "synthetic", version="scaling")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    result: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            timings = []
            for _ in range(SCRAPES_PER_SHAPE):
                started = time.perf_counter()
                async with session.get(url, headers={"Accept": PROMETHEUS_ACCEPT,
                                                     "Accept-Encoding": "gzip"}) as response:
                    body = await response.read()
                timings.append(time.perf_counter() - started)
                result.update({
                    "served_bytes": len(body),
                    "served_content_type": response.headers.get("Content-Type", ""),
                    "served_content_encoding": response.headers.get("Content-Encoding", ""),
                })
            result["scrape_ms"] = round(1e3 * statistics.median(timings), 2)
            async with session.get(url, headers={"Accept": TEXT_ACCEPT, "Accept-Encoding": "gzip"}) as response:
                result["served_text_bytes"] = len(await response.read())
    finally:
        await runner.cleanup()
    return result


def measure_node(shape: NodeShape, procfs_root: str) -> dict:
    """Count the series of one node shape and the size of its /metrics, plain and as served."""
    from prometheus_client import exposition, openmetrics

    registry, fed = build_node(shape, procfs_root)
    text = exposition.generate_latest(registry)
    open_metrics = openmetrics.exposition.generate_latest(registry)
    groups: dict[str, int] = {}
    series = dropped = 0
    for line in text.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        series += 1
        dropped += _dropped_by_relabeling(line)
        group = _group_of(line.split("{", 1)[0].split(" ", 1)[0])
        groups[group] = groups.get(group, 0) + 1
    return {
        "shape": asdict(shape),
        "fed": fed,
        "series": series,
        "series_by_group": groups,
        "series_after_bucket_drop": series - dropped,
        "text_bytes": len(text),
        "openmetrics_bytes": len(open_metrics),
        **asyncio.run(_scrape(registry)),
    }


def series_shapes(quick: bool) -> list[NodeShape]:
    """Return the node shapes of the series part: sweeps over T, W, P and the bounds."""
    topology_counts = (1, 4, 16, 50, 200, 250) if quick else (1, 2, 4, 8, 16, 50, 100, 200, 250, 400)
    shapes = [NodeShape(f"T={count}", topologies=count) for count in topology_counts]
    shapes += [NodeShape(f"T={count} fresh", topologies=count, busy=False) for count in (1, 4, 16)]
    shapes += [NodeShape(f"T=4 W={count}", topologies=4, workers=count) for count in (2, 4, 16)]
    shapes.append(NodeShape("T=200 W=4", topologies=200, workers=4))
    shapes += [NodeShape(f"T=4 P={count}", topologies=4, pods=count) for count in (0, 10, 30, 110)]
    shapes.append(NodeShape("T=4 P=110 C=2", topologies=4, pods=110, containers=2))
    shapes += [NodeShape(f"T=4 P=30 jobs={count}", topologies=4, pods=30, deleted_workloads=count)
               for count in ((100, 300) if quick else (100, 170, 300, 1000))]
    shapes.append(NodeShape("T=4 idle=16", topologies=4, idle_topologies=16))
    shapes.append(NodeShape("T=4 idle=300", topologies=4, idle_topologies=300))
    return shapes


def fit_series(results: dict[str, dict]) -> dict:
    """Fit series per topology, per worker and per workload from the sweeps."""
    def points(names: list[str], x_of: Any) -> list[tuple[float, float]]:
        return [(x_of(results[name]["shape"]), results[name]["series"]) for name in names if name in results]

    uncapped = [name for name, entry in results.items()
                if name.startswith("T=") and " " not in name and entry["shape"]["topologies"] <= 200]
    fresh = [name for name in results if name.endswith(" fresh")]
    workers = ["T=4"] + [name for name in results if name.startswith("T=4 W=")]
    pods = [name for name in results if name.startswith("T=4 P=") and "C=" not in name
            and "jobs" not in name and results[name]["shape"]["pods"] > 0] + ["T=4"]
    fits = {
        "per_topology_busy": fit_line(points(uncapped, lambda shape: shape["topologies"])),
        "per_topology_fresh": fit_line(points(fresh, lambda shape: shape["topologies"])),
        "per_live_worker": fit_line(points(workers, lambda shape: shape["workers"] * shape["topologies"])),
        "per_other_workload_1_container": fit_line(points(pods, lambda shape: shape["pods"] - 1)),
    }
    if "T=4 P=110 C=2" in results and "T=4 P=110" in results:
        fits["per_extra_container"] = (results["T=4 P=110 C=2"]["series"] - results["T=4 P=110"]["series"]) / 109
    if "T=4 P=0" in results:
        fits["storm_pod_watch_on"] = results["T=4"]["series"] - results["T=4 P=0"]["series"]
    return fits


def measure_shapes(shapes: list[NodeShape]) -> dict[str, dict]:
    """Measure each shape with an empty procfs for the diagnosis, so it reads no real process."""
    from prometheus_client import disable_created_metrics

    # As exporter.app.run does: no *_created series.
    disable_created_metrics()
    # The label bounds log a warning when they are reached, which the shapes beyond them do.
    exporter_logger = logging.getLogger("exporter")
    level = exporter_logger.level
    exporter_logger.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="scaling-procfs-") as procfs_root:
            return {shape.name: measure_node(shape, procfs_root) for shape in shapes}
    finally:
        exporter_logger.setLevel(level)


def series_part(quick: bool) -> dict:
    results = measure_shapes(series_shapes(quick))
    return {"shapes": results, "fits": fit_series(results)}


# The cluster: per-node figures times the node count, under stated assumptions.

CLUSTER_SCRAPE_INTERVALS = (15, 30, 60)
CLUSTER_LIFECYCLE_RATES = (1.0, 10.0, 100.0)
CLUSTER_PODS_PER_NODE = 30


def cluster_shapes() -> list[NodeShape]:
    """Return the node shapes the cluster part multiplies, from a Storm node to both bounds."""
    return [
        # Four worker slots (Storm's default supervisor.slots.ports), each topology
        # redeployed once within the 24 h retention, so 8 topology ids.
        NodeShape("Storm pods only", topologies=4, idle_topologies=4, pods=1),
        NodeShape("all 30 pods", topologies=4, idle_topologies=4, pods=CLUSTER_PODS_PER_NODE),
        NodeShape("both bounds", topologies=4, idle_topologies=300, pods=110, deleted_workloads=300),
        NodeShape("--topology.max=20, Storm pods only", topologies=4, idle_topologies=300, pods=1,
                  topology_max=20),
    ]


def cluster_part(watch: dict | None, nodes: int) -> dict:
    shapes = measure_shapes(cluster_shapes())
    scrape = {}
    for name, entry in shapes.items():
        per_node = entry["served_bytes"]
        scrape[name] = {
            "series_per_node": entry["series"],
            "series_per_node_after_bucket_drop": entry["series_after_bucket_drop"],
            "series": nodes * entry["series"],
            "intervals": {
                str(interval): {
                    "samples_per_second": nodes * entry["series"] / interval,
                    "served_bytes_per_interval": nodes * per_node,
                    "served_bytes_per_second": nodes * per_node / interval,
                    "plain_bytes_per_second": nodes * entry["openmetrics_bytes"] / interval,
                    "scrape_seconds_per_second": nodes * entry["scrape_ms"] / 1e3 / interval,
                }
                for interval in CLUSTER_SCRAPE_INTERVALS
            },
        }
    result: dict[str, Any] = {"nodes": nodes, "node_shapes": shapes, "scrape": scrape}
    if watch is None:
        return result

    summary = watch["summary"]
    rewatches = nodes / WATCH_TIMEOUT_SECONDS
    bookmarks = nodes / REAL_BOOKMARK_SECONDS
    idle_out = bookmarks * summary["bytes_per_bookmark"] + rewatches * summary["rewatch_bytes_out"]
    list_per_pod = summary["list_bytes_per_node"] / summary["pods_per_node"]
    churn = {}
    for rate in CLUSTER_LIFECYCLE_RATES:
        events = LIFECYCLE_EVENTS * rate
        entry = {
            "pod_events_per_second": events,
            "event_bytes_per_second": events * summary["bytes_per_event"],
            "bytes_per_second_without_field_selector": events * nodes * summary["bytes_per_event"],
            "exporter_events_per_node_per_second": events / nodes,
            "exporter_cpu_share_per_node": events / nodes * summary["client_cpu_us_per_event"] / 1e6,
        }
        if "server_cpu_us_per_delivered_event" in summary:
            fit = summary["server_cpu_per_change_fit"]
            entry["fake_server_delivery_cpu_share"] = events * summary["server_cpu_us_per_delivered_event"] / 1e6
            entry["fake_server_scan_cpu_share"] = events * fit["slope"] * nodes / 1e6
        churn[str(rate)] = entry
    result["watch"] = {
        "watches": nodes,
        "rewatches_per_second": rewatches,
        "bookmarks_per_second": bookmarks,
        "idle_bytes_per_second_out": idle_out,
        "idle_bytes_per_second_in": rewatches * summary["rewatch_bytes_in"],
        "new_connections_per_second": rewatches * summary.get("rewatch_new_connections", 1.0),
        "list_bytes_per_node": CLUSTER_PODS_PER_NODE * list_per_pod,
        "list_bytes_all_nodes": nodes * CLUSTER_PODS_PER_NODE * list_per_pod,
        "churn": churn,
    }
    return result


# Report.


def _si(value: float, unit: str = "B") -> str:
    """Format with a binary prefix for bytes and a decimal one otherwise."""
    base, prefixes = (1024.0, ("", "Ki", "Mi", "Gi", "Ti")) if unit == "B" else (1000.0, ("", "k", "M", "G", "T"))
    for prefix in prefixes:
        if abs(value) < base or prefix == prefixes[-1]:
            return f"{value:.1f} {prefix}{unit}" if prefix else f"{value:.0f} {unit}"
        value /= base
    return f"{value:.1f} {unit}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(results: dict) -> str:
    """Render the results as the Markdown tables that docs/scaling.md quotes."""
    parts = []
    watch = results.get("watch")
    if watch:
        summary = watch["summary"]
        parts.append("Pod JSON bytes by stage: " + ", ".join(
            f"{stage} {size}" for stage, size in watch["pod_json_bytes"].items()))
        def cpu(row: dict, key: str, digits: int = 0) -> str:
            low, high = row["spread"][key]
            text = f"{row[key]:.{digits}f}"
            return text if row["repeats"] == 1 else f"{text} ({low:.{digits}f}–{high:.{digits}f})"

        parts.append(f"Rounds per watch count: {summary['repeats']}. CPU figures are medians, "
                     "with the range in brackets when there is more than one round.")
        rows = []
        for row in summary["rounds"]:
            if not row["watchers"]:
                rows.append([0, row["changes"], "", "", cpu(row, "server_cpu_us_per_change"), "", "", "", ""])
                continue
            rows.append([
                row["watchers"], row["changes"], f"{row['events_applied']} ({row['foreign_events']} foreign)",
                f"{row['bytes_per_event']:.0f}", cpu(row, "server_cpu_us_per_change"),
                cpu(row, "client_cpu_us_per_event"), f"{row['bytes_per_bookmark']:.0f}",
                f"{row['rewatch_bytes_out']:.0f} out, {row['rewatch_bytes_in']:.0f} in",
                f"{row['tcp_check']['counted_bytes']} / {row['tcp_check']['tcp_bytes_acked']}",
            ])
        parts.append(_table(
            ["watches", "changes", "events applied", "bytes/event", "fake server CPU µs/change",
             "exporter CPU µs/event", "bytes/BOOKMARK", "bytes/re-watch", "counted / TCP bytes"], rows))
        fit = summary.get("server_cpu_per_change_fit")
        if fit:
            parts.append(
                f"Server CPU per change = {fit['intercept']:.0f} µs + {fit['slope']:.3f} µs × open watches; "
                f"without watches {summary.get('server_cpu_us_per_change_without_watches', float('nan')):.0f} µs, "
                f"so delivering one event costs {summary.get('server_cpu_us_per_delivered_event', float('nan')):.0f} µs "
                "in the fake server.")
        parts.append(_table(["event type", "bytes"], [[kind, f"{size:.0f}"]
                                                     for kind, size in summary["bytes_per_event_by_type"].items()]))
        parts.append(_table(
            ["watches", "LIST bytes/node", "startup s", "fake server CPU ms per LIST and WATCH",
             "re-watch fake server CPU µs", "re-watch exporter CPU µs", "new connections per re-watch",
             "fake server RSS MiB per watch", "warnings logged by the watchers"],
            [[row["watchers"], f"{row['list_bytes_per_node']:.0f}", cpu(row, "startup_seconds", 2),
              cpu(row, "startup_server_cpu_ms_per_watch", 2), cpu(row, "rewatch_server_cpu_us"),
              cpu(row, "rewatch_client_cpu_us"), f"{row['rewatch_new_connections']:.2f}",
              f"{row['server_rss_mib_per_watch']:.3f}", row["client_warnings_logged"]]
             for row in summary["rounds"] if row["watchers"]]))

    series = results.get("series")
    if series:
        rows = []
        for name, entry in series["shapes"].items():
            rows.append([
                name, entry["fed"]["topology_labels"], entry["fed"]["live_workers"], entry["fed"]["workloads"],
                entry["series"], _si(entry["text_bytes"]), _si(entry["served_text_bytes"]),
                _si(entry["openmetrics_bytes"]), _si(entry["served_bytes"]), entry["scrape_ms"],
            ])
        first = next(iter(series["shapes"].values()))
        parts.append(f"Served for Prometheus's request: {first['served_content_type']}, "
                     f"Content-Encoding {first['served_content_encoding'] or 'none'}.")
        parts.append(_table(["shape", "topology labels", "live workers", "workloads", "series", "text",
                             "text served", "OpenMetrics", "OpenMetrics served", "scrape ms"], rows))
        groups = sorted({group for entry in series["shapes"].values() for group in entry["series_by_group"]})
        picked = [name for name in ("T=1", "T=4", "T=4 P=30", "T=200 W=4", "T=4 idle=300")
                  if name in series["shapes"]]
        parts.append(_table(["group", *picked], [
            [group, *(series["shapes"][name]["series_by_group"].get(group, 0) for name in picked)]
            for group in groups]))
        parts.append("Fits: " + json.dumps(series["fits"]))

    cluster = results.get("cluster")
    if cluster:
        rows = []
        for name, entry in cluster["scrape"].items():
            for interval, figures in entry["intervals"].items():
                rows.append([
                    name, f"{entry['series_per_node']} ({entry['series_per_node_after_bucket_drop']})",
                    f"{entry['series'] / 1e6:.2f} M", f"{interval} s",
                    f"{figures['samples_per_second'] / 1e3:.0f} k", _si(figures["served_bytes_per_interval"]),
                    _si(figures["served_bytes_per_second"]) + "/s", _si(figures["plain_bytes_per_second"]) + "/s",
                ])
        parts.append(_table(["node shape", "series/node (after the bucket drop)",
                             f"series, {cluster['nodes']} nodes",
                             "scrape interval", "samples/s", "served per interval", "served",
                             "uncompressed"], rows))
        model = cluster.get("watch")
        if model:
            parts.append(
                f"{model['watches']} watches; {model['rewatches_per_second']:.1f} re-watches/s "
                f"({model['new_connections_per_second']:.1f} new connections/s); "
                f"{model['bookmarks_per_second']:.0f} BOOKMARKs/s; idle {_si(model['idle_bytes_per_second_out'])}/s "
                f"out, {_si(model['idle_bytes_per_second_in'])}/s in; LIST {_si(model['list_bytes_per_node'])} "
                f"per node, {_si(model['list_bytes_all_nodes'])} for all nodes.")
            rows = []
            for rate, entry in model["churn"].items():
                rows.append([
                    rate, f"{entry['pod_events_per_second']:.0f}", _si(entry["event_bytes_per_second"]) + "/s",
                    _si(entry["bytes_per_second_without_field_selector"]) + "/s",
                    f"{entry['exporter_events_per_node_per_second']:.4f}",
                    f"{100 * entry['exporter_cpu_share_per_node']:.5f} %",
                    f"{100 * entry.get('fake_server_delivery_cpu_share', float('nan')):.2f} %",
                    f"{100 * entry.get('fake_server_scan_cpu_share', float('nan')):.1f} %",
                ])
            parts.append(_table(["lifecycles/s", "pod events/s", "event bytes", "same without field selector",
                                 "events/s per exporter", "exporter CPU per node", "fake server delivery CPU",
                                 "fake server scan CPU"], rows))
    return "\n\n".join(parts) + "\n"


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        load = [float(value) for value in loadavg.read().split()[:3]]
    import aiohttp
    import kubernetes

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kubernetes_client": kubernetes.__version__,
        "aiohttp": aiohttp.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": load,
    }


def _positive_int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"invalid count list {text!r}: use positive integers such as 50,200,500")
    return values


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in parts if part not in ("watch", "series", "cluster")]
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f"invalid parts {text!r}: use a comma list of watch, series, cluster")
    return parts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Simulate the exporter's cost at cluster scale.")
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--parts", type=_parts, default=("watch", "series", "cluster"),
                        help="comma list of watch, series, cluster (default: all)")
    parser.add_argument("--watchers", type=_positive_int_list, default=None,
                        help=f"watch counts (default {','.join(map(str, DEFAULT_WATCHERS))}; "
                             f"{','.join(map(str, QUICK_WATCHERS))} with --quick)")
    parser.add_argument("--pods-per-node", type=int, default=10, help="resident pods per node (default 10)")
    parser.add_argument("--churn", type=float, default=None, help="pod lifecycles per second (default 40, 20 with --quick)")
    parser.add_argument("--churn-seconds", type=float, default=None,
                        help="seconds during which lifecycles start (default 20, 4 with --quick)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of every watch round; the tables show medians and ranges (default 1)")
    parser.add_argument("--nodes", type=int, default=5000, help="cluster size of the cluster part (default 5000)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"JSON results (default {DEFAULT_OUTPUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    for name in ("pods_per_node", "nodes", "repeat"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.churn is not None and args.churn <= 0:
        parser.error(f"--churn must be positive, got {args.churn}")
    if args.churn_seconds is not None and args.churn_seconds <= 0:
        parser.error(f"--churn-seconds must be positive, got {args.churn_seconds}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results: dict[str, Any] = {"machine": machine(), "command": ["bench/scaling.py", *(argv or sys.argv[1:])]}

    previous: dict[str, Any] = {}
    if args.output.exists():
        try:
            previous = json.loads(args.output.read_text())
        except ValueError:
            logger.warning("Ignored %s, which is not valid JSON: no earlier watch figures", args.output)

    options = WatchOptions(
        watchers=args.watchers or (QUICK_WATCHERS if args.quick else DEFAULT_WATCHERS),
        pods_per_node=args.pods_per_node,
        churn_rate=args.churn or (20.0 if args.quick else 40.0),
        churn_seconds=args.churn_seconds or (4.0 if args.quick else 20.0),
        bookmark_seconds=3.0 if args.quick else 6.0,
        quiet_seconds=2.0 if args.quick else 5.0,
        restart_rounds=2 if args.quick else 3,
        repeat=args.repeat,
    )

    try:
        if "watch" in args.parts:
            results["watch"] = watch_part(options)
            results["watch_measured_at"] = results["machine"]["date"]
        if "series" in args.parts:
            started = time.monotonic()
            results["series"] = series_part(args.quick)
            logger.info("Series part done in %.1f s", time.monotonic() - started)
        if "watch" not in args.parts and "watch" in previous:
            # Kept, so that the file always contains the watch figures the cluster part used.
            results["watch"] = previous["watch"]
            results["watch_measured_at"] = previous.get("watch_measured_at", previous["machine"]["date"])
        if "cluster" in args.parts:
            watch = results.get("watch")
            if watch is None:
                logger.warning("No watch results in this run or in %s; the cluster part has no watch model",
                               args.output)
            results["cluster"] = cluster_part(watch, args.nodes)
    except PhaseError as error:
        logger.error("Simulation failed: %s", error)
        return 1

    with open("/proc/loadavg", encoding="ascii") as loadavg:
        results["machine"]["load_average_at_end"] = [float(value) for value in loadavg.read().split()[:3]]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    sys.stdout.write(report(results))
    logger.info("Wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
