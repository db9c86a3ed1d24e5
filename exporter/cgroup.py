"""Pod UID and container ID from /proc/PID/cgroup, as the kubelet and runtimes name cgroups.

The kubelet puts a pod in ``kubepods[/burstable|/besteffort]/pod<uid>`` (cgroupfs
driver) or ``kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice``
(systemd driver); Guaranteed pods sit directly under kubepods. The container's leaf is
the bare 64-hex id (cgroupfs, containerd and Docker), ``crio-<id>`` (cgroupfs, CRI-O),
or ``cri-containerd-<id>.scope``, ``crio-<id>.scope``, ``docker-<id>.scope`` (systemd).
CRI-O's monitor ``crio-conmon-<id>`` sits in the pod's cgroup too, but it is not the
container. The id matches ``containerStatuses[].containerID`` less its
``<runtime>://`` prefix.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import datetime

_POD_SYSTEMD = re.compile(
    r"kubepods(?:-(?P<qos>burstable|besteffort))?-pod(?P<uid>[0-9a-f]{8}(?:_[0-9a-f]{4}){3}_[0-9a-f]{12})\.slice$"
)
_POD_CGROUPFS = re.compile(r"pod(?P<uid>[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})$")
_CONTAINER = re.compile(
    r"(?:(?P<prefix>cri-containerd|crio|docker)-)?(?P<id>[0-9a-f]{64})(?:\.scope)?$"
)
_CONMON = re.compile(r"crio-conmon-[0-9a-f]{64}(?:\.scope)?$")

RUNTIMES = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}


@dataclass(frozen=True, slots=True)
class PodCgroup:
    """The pod and container of a process, from the kubelet's cgroup tree."""

    pod_uid: str
    qos: str  # "guaranteed", "burstable" or "besteffort"
    container_id: str | None  # None for a process in the pod cgroup itself, or conmon
    runtime: str | None  # "containerd", "cri-o", "docker", or None when the leaf is a bare id


def parse_cgroup_path(path: str) -> PodCgroup | None:
    """Find the pod and container in one cgroup path, or return None outside kubepods."""
    parts = [part for part in path.split("/") if part and part != ".."]
    for index, part in enumerate(parts):
        if not any(earlier.startswith("kubepods") for earlier in parts[:index]):
            continue
        pod = _match_pod(part, parts[index - 1])
        if pod is None:
            continue
        uid, qos = pod
        leaf = parts[index + 1] if index + 1 < len(parts) else ""
        if _CONMON.match(leaf):
            return PodCgroup(uid, qos, None, "cri-o")
        container = _CONTAINER.match(leaf)
        if container is None:
            return PodCgroup(uid, qos, None, None)
        runtime = RUNTIMES.get(container["prefix"] or "")
        return PodCgroup(uid, qos, container["id"], runtime)
    return None


def parse_cgroup_file(text: str) -> PodCgroup | None:
    """Parse /proc/PID/cgroup (v1 lines ``N:controllers:path`` and the v2 line ``0::path``).

    The first line naming a pod wins; v1 hierarchies of one process agree, and
    unknown controllers (such as ``files``) are read like any other.
    """
    best: PodCgroup | None = None
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        _, separator, path = rest.partition(":")
        if not separator:
            continue
        found = parse_cgroup_path(path)
        if found is None:
            continue
        if found.container_id is not None:
            return found
        best = best or found
    return best


def _match_pod(part: str, parent: str) -> tuple[str, str] | None:
    systemd = _POD_SYSTEMD.match(part)
    if systemd:
        return systemd["uid"].replace("_", "-"), systemd["qos"] or "guaranteed"
    cgroupfs = _POD_CGROUPFS.match(part)
    if cgroupfs:
        qos = parent if parent in ("burstable", "besteffort") else "guaranteed"
        return cgroupfs["uid"], qos
    return None


def container_id_of(status_id: str) -> tuple[str, str] | None:
    """Split an API containerID such as ``cri-o://<id>`` into (runtime, id)."""
    runtime, separator, identifier = status_id.partition("://")
    if not separator or not identifier:
        return None
    return runtime, identifier


class ContainerExits:
    """Exit times and statuses of containers' main processes, as the kernel reported them.

    The process tracker writes and the pod tracker reads on the watch thread. The
    lock is this object's own, so neither side waits on the other's lock.
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._exits: dict[str, tuple[datetime, int | None]] = {}

    def record(self, container_id: str, when: datetime, status: int | None) -> None:
        with self._lock:
            if len(self._exits) >= self.MAX_ENTRIES:
                self._exits.clear()
            self._exits[container_id] = (when, status)

    def get(self, container_id: str) -> tuple[datetime, int | None] | None:
        with self._lock:
            return self._exits.get(container_id)
