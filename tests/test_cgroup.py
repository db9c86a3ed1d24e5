"""Pod and container from /proc/PID/cgroup: fixtures from CRI-O nodes and real cgroups."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from exporter.cgroup import PodCgroup, container_id_of, parse_cgroup_file, parse_cgroup_path
from tests.conftest import require_root

FIXTURE = Path(__file__).parent / "fixtures" / "cgroup-crio.txt"
CRIO_V2_ID = "a8077b08a56c0c6e33d6716557d882ac940cb09475c50372e22e84c40d0733f2"
CRIO_V1_ID = "5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c"
HEX_ID = "3663f3d62f74a232344bd94e7b8a5f6a815201a52de3a24b4623b6c469321b2d"
UID = "c6090dfe-1f44-11e9-902b-062291b3f7b2"


def sections() -> dict[str, str]:
    """Split the fixture into its (a), (b), (c) samples, without comment lines."""
    found: dict[str, list[str]] = {}
    current = None
    for line in FIXTURE.read_text().splitlines():
        if line.startswith("## ("):
            current = line[4]
            found[current] = []
        elif current and line and not line.startswith("#"):
            found[current].append(line)
    return {key: "\n".join(lines) for key, lines in found.items()}


def test_crio_systemd_v2():
    found = parse_cgroup_file(sections()["a"])
    assert found == PodCgroup("30cea2cf-1b80-4807-abad-d81453e199c5", "burstable", CRIO_V2_ID, "cri-o")
    assert container_id_of(f"cri-o://{CRIO_V2_ID}") == ("cri-o", found.container_id)


def test_crio_systemd_v1_with_unknown_controller():
    found = parse_cgroup_file(sections()["b"])
    assert found == PodCgroup("a5c1f8d5-1919-434d-add7-4afaafdaef89", "burstable", CRIO_V1_ID, "cri-o")
    assert found.container_id.startswith("5eed917563583")


def test_crio_conmon_is_not_a_container():
    found = parse_cgroup_file(sections()["c"])
    assert found == PodCgroup("30cea2cf-1b80-4807-abad-d81453e199c5", "burstable", None, "cri-o")


@pytest.mark.parametrize(
    "path, expected",
    [
        (f"/kubepods/burstable/pod{UID}/{HEX_ID}", PodCgroup(UID, "burstable", HEX_ID, None)),
        (f"/kubepods/besteffort/pod{UID}/crio-{HEX_ID}", PodCgroup(UID, "besteffort", HEX_ID, "cri-o")),
        (f"/kubepods/pod{UID}/{HEX_ID}", PodCgroup(UID, "guaranteed", HEX_ID, None)),
        (
            f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-{HEX_ID}.scope",
            PodCgroup(UID, "guaranteed", HEX_ID, "containerd"),
        ),
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice"
            f"/docker-{HEX_ID}.scope",
            PodCgroup(UID, "besteffort", HEX_ID, "docker"),
        ),
        (f"/../../kubepods/burstable/pod{UID}/{HEX_ID}", PodCgroup(UID, "burstable", HEX_ID, None)),
        (f"/kubepods/burstable/pod{UID}", PodCgroup(UID, "burstable", None, None)),
        ("/user.slice/user-0.slice/session-1.scope", None),
        (f"/system.slice/pod{UID}/{HEX_ID}", None),
        ("/", None),
        ("", None),
    ],
)
def test_cgroup_paths(path, expected):
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize("text", ["", "garbage", "0::", "12:pids", ":::::", "\x00\xff"])
def test_garbage_cgroup_file(text):
    assert parse_cgroup_file(text) is None


def test_container_id_of_rejects_bare_ids():
    assert container_id_of(HEX_ID) is None
    assert container_id_of("containerd://") is None
    assert container_id_of(f"containerd://{HEX_ID}") == ("containerd", HEX_ID)


def kubelet_layouts(pod_uid: str, container_id: str) -> list[tuple[str, PodCgroup]]:
    systemd_uid = pod_uid.replace("-", "_")
    return [
        (
            f"/sys/fs/cgroup/unified/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{systemd_uid}.slice/cri-containerd-{container_id}.scope",
            PodCgroup(pod_uid, "burstable", container_id, "containerd"),
        ),
        (
            f"/sys/fs/cgroup/pids/kubepods/besteffort/pod{pod_uid}/{container_id}",
            PodCgroup(pod_uid, "besteffort", container_id, None),
        ),
        (
            f"/sys/fs/cgroup/memory/kubepods.slice/kubepods-pod{systemd_uid}.slice/crio-{container_id}.scope",
            PodCgroup(pod_uid, "guaranteed", container_id, "cri-o"),
        ),
        (
            f"/sys/fs/cgroup/unified/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod{systemd_uid}.slice/docker-{container_id}.scope",
            PodCgroup(pod_uid, "besteffort", container_id, "docker"),
        ),
        (
            f"/sys/fs/cgroup/unified/kubepods/burstable/pod{pod_uid}/crio-{container_id}",
            PodCgroup(pod_uid, "burstable", container_id, "cri-o"),
        ),
        (
            f"/sys/fs/cgroup/cpu/kubepods/pod{pod_uid}/{container_id}",
            PodCgroup(pod_uid, "guaranteed", container_id, None),
        ),
    ]


@pytest.mark.parametrize("layout", range(6))
def test_real_process_in_kubelet_cgroup(layout):
    require_root()
    pod_uid = str(uuid.uuid4())
    container_id = uuid.uuid4().hex + uuid.uuid4().hex
    directory, expected = kubelet_layouts(pod_uid, container_id)[layout]
    root = Path("/sys/fs/cgroup")
    mount = root / Path(directory).relative_to(root).parts[0]
    if not mount.is_dir():
        pytest.fail(f"cgroup hierarchy {mount} is missing on this machine")
    created = []
    path = Path(directory)
    for parent in reversed([path, *path.parents]):
        if parent.is_relative_to(mount) and parent != mount and not parent.exists():
            parent.mkdir()
            created.append(parent)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (path / "cgroup.procs").write_text(str(sleeper.pid))
        text = Path(f"/proc/{sleeper.pid}/cgroup").read_text()
        assert parse_cgroup_file(text) == expected
    finally:
        sleeper.kill()
        sleeper.wait()
        for directory_made in reversed(created):
            os.rmdir(directory_made)
    assert not any(made.exists() for made in created)
