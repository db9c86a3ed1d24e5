"""Lookups in a process's own /etc/passwd, read from outside through /proc/PID/root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from exporter.passwd import parse_passwd, read_file_in_root, read_passwd, uid_known, user_name
from exporter.procfs import ProcFS
from tests.conftest import require_root

REPOSITORY = Path(__file__).resolve().parent.parent
CONTAINER_UID = 1000620005
READER_UID = 1000620006

IDLE = 'import sys; print("ready", flush=True); sys.stdin.read()'

# Changes its root directory to argv[1] and then waits for the end of stdin.
CHROOTED = (
    'import os, sys; os.chroot(sys.argv[1]); os.chdir("/"); '
    'print("ready", flush=True); sys.stdin.read()'
)


def start(argv: list[str]) -> subprocess.Popen:
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if line != "ready\n":
        stop(process)
        raise AssertionError(f"{argv[0]} printed {line!r} instead of 'ready'")
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def start_with_passwd(passwd_file: Path, uid: int) -> subprocess.Popen:
    """Start a process as uid in a private mount namespace whose /etc/passwd is passwd_file."""
    script = (
        'mount --bind "$1" /etc/passwd'
        ' && exec setpriv --reuid="$2" --regid="$2" --clear-groups "$3" -c "$4"'
    )
    return start([
        "unshare", "-m", "--propagation", "private", "sh", "-c", script,
        "sh", str(passwd_file), str(uid), sys.executable, IDLE,
    ])


def start_chrooted(root: Path) -> subprocess.Popen:
    return start([sys.executable, "-c", CHROOTED, str(root)])


def host_uids() -> set[int]:
    return set(parse_passwd(Path("/etc/passwd").read_bytes()))


def test_parse_passwd_defensive():
    data = (
        b"root:x:0:0:root:/root:/bin/bash\n"
        b"\n"
        b"# a comment:x:5:5\n"
        b"   \t\n"
        b"  daemon:x:1:1::/:/usr/sbin/nologin\n"
        b"short:x\n"
        b"noshell:x:7\n"
        b"crlf:x:8:8::/:/bin/sh\r\n"
        b"caf\xe9:x:9:9::/:/bin/sh\n"
        b"root2:x:0:0::/:/bin/sh\n"
        b":x:10:10::/:/bin/sh\n"
        b"+nisuser:x:11:11::/:/bin/sh\n"
        b"-blocked:x:12:12::/:/bin/sh\n"
        b"+\n"
        b"signed:x:+13:13::/:/bin/sh\n"
        b"spaced:x: 14:14::/:/bin/sh\n"
        b"hex:x:0x15:15::/:/bin/sh\n"
        b"big:x:4294967294:4294967294::/:/bin/sh\n"
        b"last:x:16:16::/:/bin/sh"
    )
    users = parse_passwd(data)
    assert users == {
        0: "root",
        1: "daemon",
        7: "noshell",
        8: "crlf",
        9: "caf\ufffd",
        4294967294: "big",
        16: "last",
    }


def test_parse_passwd_empty():
    assert parse_passwd(b"") == {}
    assert parse_passwd(b"\n\n# only comments\n") == {}


def test_private_mount_passwd_lacks_uid(tmp_path):
    require_root()
    passwd_file = tmp_path / "passwd"
    passwd_file.write_text("storm:x:4242:4242:Storm:/home/storm:/bin/sh\n")
    assert 0 in host_uids()
    assert 4242 not in host_uids()
    assert CONTAINER_UID not in host_uids()
    process = start_with_passwd(passwd_file, CONTAINER_UID)
    proc = ProcFS()
    try:
        assert proc.read_status(process.pid).uids[0] == CONTAINER_UID
        assert uid_known(proc, process.pid, CONTAINER_UID) is False
        assert user_name(proc, process.pid, CONTAINER_UID) is None
        # The entries are the namespace's, not the host's: no root, but 4242.
        assert uid_known(proc, process.pid, 0) is False
        assert uid_known(proc, process.pid, 4242) is True
        assert user_name(proc, process.pid, 4242) == "storm"
        assert read_passwd(proc, process.pid) == {4242: "storm"}
    finally:
        stop(process)


def test_private_mount_passwd_has_uid(tmp_path):
    require_root()
    passwd_file = tmp_path / "passwd"
    passwd_file.write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        f"storm:x:{CONTAINER_UID}:0:Storm:/home/storm:/bin/sh\n"
    )
    process = start_with_passwd(passwd_file, CONTAINER_UID)
    proc = ProcFS()
    try:
        assert uid_known(proc, process.pid, CONTAINER_UID) is True
        assert user_name(proc, process.pid, CONTAINER_UID) == "storm"
        assert user_name(proc, process.pid, 0) == "root"
    finally:
        stop(process)


def test_host_process_reads_host_passwd():
    proc = ProcFS()
    assert read_passwd(proc, os.getpid()) == parse_passwd(Path("/etc/passwd").read_bytes())
    assert uid_known(proc, os.getpid(), 0) is True
    assert user_name(proc, os.getpid(), 0) == "root"


def test_gone_process_is_unknown():
    process = start([sys.executable, "-c", IDLE])
    stop(process)
    proc = ProcFS()
    assert uid_known(proc, process.pid, 0) is None
    assert user_name(proc, process.pid, 0) is None
    assert read_passwd(proc, process.pid) is None


def test_chroot_without_passwd_is_unknown(tmp_path):
    require_root()
    process = start_chrooted(tmp_path)
    try:
        assert os.readlink(f"/proc/{process.pid}/root") == str(tmp_path)
        assert uid_known(ProcFS(), process.pid, 0) is None
        assert user_name(ProcFS(), process.pid, 0) is None
    finally:
        stop(process)


def test_chroot_symlinks_resolve_inside_root(tmp_path):
    require_root()
    (tmp_path / "etc").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "passwd").write_text("storm:x:4242:4242::/:/bin/sh\n")
    (tmp_path / "etc" / "passwd").symlink_to("/data/passwd")
    (tmp_path / "relative").symlink_to("../../../../data/passwd")
    (tmp_path / "escape").symlink_to("/../../../etc")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "directory").symlink_to("/etc")
    (tmp_path / "through-file").symlink_to("/data/passwd/../passwd")
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "passwd")

    assert not Path("/data/passwd").exists()
    process = start_chrooted(tmp_path)
    proc = ProcFS()
    expected = b"storm:x:4242:4242::/:/bin/sh\n"
    try:
        assert uid_known(proc, process.pid, 4242) is True
        assert uid_known(proc, process.pid, 0) is False

        assert read_file_in_root(proc, process.pid, "/etc/passwd") == expected
        assert read_file_in_root(proc, process.pid, "relative") == expected
        # ".." above the root stays at the root, so this ends at the root's etc/.
        assert read_file_in_root(proc, process.pid, "escape/passwd") == expected
        assert read_file_in_root(proc, process.pid, "loop") is None
        assert read_file_in_root(proc, process.pid, "directory") is None
        assert read_file_in_root(proc, process.pid, "etc/passwd/x") is None
        assert read_file_in_root(proc, process.pid, "through-file") is None
        assert read_file_in_root(proc, process.pid, "fifo/passwd") is None
    finally:
        stop(process)


def test_reader_without_ptrace_access(tmp_path):
    require_root()
    target = start([sys.executable, "-c", IDLE])
    try:
        assert uid_known(ProcFS(), target.pid, 0) is True
        reader = subprocess.run(
            [
                "setpriv", f"--reuid={READER_UID}", f"--regid={READER_UID}", "--clear-groups",
                sys.executable, "-c",
                "import sys; from exporter.passwd import uid_known; from exporter.procfs import ProcFS; "
                "print(uid_known(ProcFS(), int(sys.argv[1]), 0))",
                str(target.pid),
            ],
            cwd=REPOSITORY, capture_output=True, text=True, timeout=30,
        )
        assert reader.returncode == 0, reader.stderr
        assert reader.stdout == "None\n"
    finally:
        stop(target)


def test_fixture_proc_root(tmp_path):
    with_passwd = tmp_path / "with-passwd"
    (with_passwd / "etc").mkdir(parents=True)
    (with_passwd / "etc" / "passwd").write_bytes(b"storm:x:1000:1000::/:/bin/sh\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc_root = tmp_path / "proc"
    (proc_root / "101").mkdir(parents=True)
    (proc_root / "101" / "root").symlink_to(with_passwd)
    (proc_root / "102").mkdir()
    (proc_root / "102" / "root").symlink_to(empty)
    proc = ProcFS(proc_root)
    assert uid_known(proc, 101, 1000) is True
    assert uid_known(proc, 101, 1001) is False
    assert uid_known(proc, 102, 1000) is None
    assert uid_known(proc, 103, 1000) is None
