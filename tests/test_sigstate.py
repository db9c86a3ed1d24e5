"""Signal dispositions and kill(2) permissions, checked against real processes and real signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.procfs import ProcFS
from exporter.sigstate import (
    CAP_KILL,
    DISPOSITIONS,
    Credentials,
    may_signal,
    parse_signal_set,
    read_credentials,
    signal_disposition,
)
from tests.conftest import require_root

UID_A = 1000620005
UID_B = 1000620006
UID_C = 1000620007

# Sets the SIGTERM disposition or mask named by argv[1], then replies to stdin
# lines: "ping" with "pong", "kill PID" with the result of kill(PID, 0), "zombie"
# with the pid of a child that has exited and is not yet waited for, and
# "reap PID" by waiting for that child.
SIGNAL_HELPER = r"""
import errno, os, signal, sys, threading, time

mode = sys.argv[1]
if mode == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode == "handler":
    signal.signal(signal.SIGTERM, lambda signum, frame: print("caught", signum, flush=True))
elif mode == "block-all":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
if mode in ("block-all", "block-main"):
    # A new thread starts with the mask of the thread that creates it.
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
if mode == "block-main":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
if mode == "setresuid":
    ruid, euid, suid = (int(word) for word in sys.argv[2:5])
    os.setgroups([])
    os.setresgid(ruid, ruid, ruid)
    os.setresuid(ruid, euid, suid)
print("ready", flush=True)
for line in sys.stdin:
    words = line.split()
    if words == ["ping"]:
        print("pong", flush=True)
    elif words[0] == "kill":
        try:
            os.kill(int(words[1]), 0)
            print("ok", flush=True)
        except OSError as error:
            print(errno.errorcode[error.errno], flush=True)
    elif words[0] == "reap":
        os.waitpid(int(words[1]), 0)
        print("reaped", flush=True)
    elif words == ["zombie"]:
        child = os.fork()
        if child == 0:
            os._exit(0)
        # WNOWAIT waits for the exit but leaves the child unreaped.
        os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)
        print(child, flush=True)
"""

SLEEPER_SOURCE = """
public class Sleeper {
    public static void main(String[] args) throws Exception {
        System.out.println("ready");
        System.out.flush();
        while (System.in.read() != -1) {
        }
    }
}
"""


def setpriv(uid: int, *extra: str) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *extra]


def start(argv: list[str], **options) -> subprocess.Popen:
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **options
    )
    line = process.stdout.readline()
    if line != "ready\n":
        stop(process)
        raise AssertionError(f"{argv[0]} printed {line!r} instead of 'ready'")
    return process


def start_helper(mode: str, *args: object, prefix: list[str] | None = None) -> subprocess.Popen:
    return start([*(prefix or []), sys.executable, "-c", SIGNAL_HELPER, mode, *map(str, args)])


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def request(process: subprocess.Popen, line: str) -> str:
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return process.stdout.readline().strip()


def test_parse_signal_set_java_sigcgt():
    expected = {1, 2, 3, 4, 7, 8, 11, 12, 13, 15, 25, 32, 33, 62}
    assert parse_signal_set("2000000181005ccf") == expected
    assert parse_signal_set("0x2000000181005ccf") == expected
    assert parse_signal_set("\t2000000181005CCF\n") == expected


def test_parse_signal_set_single_bits():
    assert parse_signal_set("0000000000000000") == frozenset()
    assert parse_signal_set("0000000000004000") == {15}
    assert parse_signal_set("0000000000000100") == {9}
    assert parse_signal_set("8000000000000000") == {64}


@pytest.mark.parametrize("value", ["", "0x", "12g4", "-4000", "40 00"])
def test_parse_signal_set_rejects_invalid(value):
    with pytest.raises(ValueError, match="invalid signal mask"):
        parse_signal_set(value)


def test_disposition_rejects_signal_zero():
    with pytest.raises(ValueError, match="invalid signal number 0"):
        signal_disposition(ProcFS(), os.getpid(), 0)


def test_disposition_ignored_survives_sigterm():
    helper = start_helper("ignore")
    try:
        assert signal_disposition(ProcFS(), helper.pid) == "ignored"
        os.kill(helper.pid, signal.SIGTERM)
        assert request(helper, "ping") == "pong"
    finally:
        stop(helper)


def test_disposition_handler_catches_sigterm():
    helper = start_helper("handler")
    try:
        assert signal_disposition(ProcFS(), helper.pid) == "handled"
        os.kill(helper.pid, signal.SIGTERM)
        assert helper.stdout.readline() == "caught 15\n"
    finally:
        stop(helper)


def test_disposition_default_dies_by_sigterm():
    helper = start_helper("default")
    try:
        assert signal_disposition(ProcFS(), helper.pid) == "default"
        os.kill(helper.pid, signal.SIGTERM)
        assert helper.wait(timeout=10) == -signal.SIGTERM
    finally:
        stop(helper)


def test_disposition_other_signals_of_one_process():
    helper = start_helper("ignore")
    try:
        # CPython installs a SIGINT handler and ignores SIGPIPE. SIGKILL can be neither.
        assert signal_disposition(ProcFS(), helper.pid, signal.SIGINT) == "handled"
        assert signal_disposition(ProcFS(), helper.pid, signal.SIGPIPE) == "ignored"
        assert signal_disposition(ProcFS(), helper.pid, signal.SIGKILL) == "default"
    finally:
        stop(helper)


def test_disposition_main_thread_blocking_is_not_enough():
    helper = start_helper("block-main")
    proc = ProcFS()
    try:
        leader = proc.read_status(helper.pid)
        assert signal.SIGTERM in parse_signal_set(f"{leader.sigblk:x}")
        assert len(proc.list_tasks(helper.pid)) == 2
        assert signal_disposition(proc, helper.pid) == "default"
        # The kernel hands the signal to the thread that does not block it, and the
        # default action ends the whole process.
        os.kill(helper.pid, signal.SIGTERM)
        assert helper.wait(timeout=10) == -signal.SIGTERM
    finally:
        stop(helper)


def test_disposition_blocked_in_all_threads():
    helper = start_helper("block-all")
    proc = ProcFS()
    try:
        tasks = proc.list_tasks(helper.pid)
        assert len(tasks) == 2
        for tid in tasks:
            mask = (Path(f"/proc/{helper.pid}/task/{tid}/status").read_text()
                    .split("SigBlk:")[1].split()[0])
            assert signal.SIGTERM in parse_signal_set(mask)
        assert signal_disposition(proc, helper.pid) == "blocked"
        os.kill(helper.pid, signal.SIGTERM)
        assert signal.SIGTERM in parse_signal_set(f"{proc.read_status(helper.pid).shdpnd:x}")
        assert request(helper, "ping") == "pong"
        assert signal_disposition(proc, helper.pid) == "blocked"
    finally:
        stop(helper)


def test_disposition_gone_and_zombie():
    helper = start_helper("default")
    proc = ProcFS()
    try:
        zombie = int(request(helper, "zombie"))
        assert proc.read_status(zombie).state == "Z"
        assert signal_disposition(proc, zombie) is None
        assert read_credentials(proc, zombie) is not None
        assert request(helper, f"reap {zombie}") == "reaped"
        assert signal_disposition(proc, zombie) is None
    finally:
        stop(helper)
    assert signal_disposition(proc, helper.pid) is None
    assert read_credentials(proc, helper.pid) is None


def test_disposition_in_fixture_proc_tree(tmp_path):
    pid_dir = tmp_path / "4242"
    (pid_dir / "task" / "4242").mkdir(parents=True)
    (pid_dir / "task" / "4243").mkdir(parents=True)
    leader = "Name:\tjava\nState:\tS (sleeping)\nSigBlk:\t{blk}\nSigIgn:\t{ign}\nSigCgt:\t{cgt}\n"
    # /proc/PID/status shows the leader thread's mask, the same as task/PID/status.
    (pid_dir / "status").write_text(leader.format(blk="0000000000004000", ign="0", cgt="2000000181005ccf"))
    (pid_dir / "task" / "4242" / "status").write_text(
        leader.format(blk="0000000000004000", ign="0", cgt="2000000181005ccf"))
    (pid_dir / "task" / "4243" / "status").write_text(
        "State:\tZ (zombie)\nSigBlk:\t0000000000000000\n")
    proc = ProcFS(tmp_path)
    # The only thread that does not block SIGTERM has exited, so it cannot take the signal.
    assert signal_disposition(proc, 4242) == "blocked"
    assert signal_disposition(proc, 4242, signal.SIGHUP) == "handled"
    assert signal_disposition(proc, 4242, signal.SIGUSR2) == "handled"
    assert signal_disposition(proc, 4242, signal.SIGCHLD) == "default"
    assert signal_disposition(proc, 4243) is None


def test_dispositions_constant():
    assert set(DISPOSITIONS) == {"handled", "ignored", "blocked", "default"}


@pytest.fixture(scope="module")
def sleeper_classes(tmp_path_factory) -> Path:
    javac = shutil.which("javac")
    assert javac, "javac comes with the Debian openjdk-17-jdk-headless package that `make test` installs"
    output = tmp_path_factory.mktemp("sleeper")
    (output / "Sleeper.java").write_text(SLEEPER_SOURCE)
    subprocess.run([javac, "-d", str(output), str(output / "Sleeper.java")], check=True, timeout=120)
    return output


def start_jvm(classes: Path, *options: str, ignore_sigterm: bool = False) -> subprocess.Popen:
    java = shutil.which("java")
    assert java, "java comes with the Debian openjdk-17-jdk-headless package that `make test` installs"
    argv = [java, "-Xmx32m", "-XX:TieredStopAtLevel=1", *options, "-cp", str(classes), "Sleeper"]
    disposition = signal.SIG_IGN if ignore_sigterm else signal.SIG_DFL
    return start(argv, preexec_fn=lambda: signal.signal(signal.SIGTERM, disposition))


def test_jvm_installs_sigterm_handler(sleeper_classes):
    jvm = start_jvm(sleeper_classes)
    proc = ProcFS()
    try:
        assert signal_disposition(proc, jvm.pid) == "handled"
        # The leader is the java launcher's first thread, which only waits for the
        # main Java thread, and blocks nothing. Threads that HotSpot creates block
        # SIGQUIT (SigBlk 0000000000000004) unless -Xrs is given.
        assert proc.read_status(jvm.pid).sigblk == 0
        os.kill(jvm.pid, signal.SIGTERM)
        assert jvm.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        stop(jvm)


def test_jvm_xrs_keeps_default(sleeper_classes):
    jvm = start_jvm(sleeper_classes, "-Xrs")
    try:
        assert signal_disposition(ProcFS(), jvm.pid) == "default"
        os.kill(jvm.pid, signal.SIGTERM)
        assert jvm.wait(timeout=30) == -signal.SIGTERM
    finally:
        stop(jvm)


def test_jvm_keeps_inherited_ignore(sleeper_classes):
    # HotSpot installs no shutdown handler for a signal that is ignored when it starts.
    jvm = start_jvm(sleeper_classes, ignore_sigterm=True)
    try:
        assert signal_disposition(ProcFS(), jvm.pid) == "ignored"
        os.kill(jvm.pid, signal.SIGTERM)
        assert signal_disposition(ProcFS(), jvm.pid) == "ignored"
        # Sleeper returns from main at end of input: exit status 0, not 143 or -15.
        jvm.stdin.close()
        assert jvm.wait(timeout=30) == 0
    finally:
        stop(jvm)


def test_read_credentials_setresuid():
    require_root()
    helper = start_helper("setresuid", UID_A, UID_C, UID_B)
    try:
        credentials = read_credentials(ProcFS(), helper.pid)
        assert credentials == Credentials(
            ruid=UID_A, euid=UID_C, suid=UID_B, fsuid=UID_C, cap_effective=0
        )
    finally:
        stop(helper)


def test_read_credentials_root_has_cap_kill():
    credentials = read_credentials(ProcFS(), os.getpid())
    assert (credentials.ruid, credentials.euid, credentials.suid) == os.getresuid()
    if os.geteuid() == 0:
        assert credentials.cap_effective >> CAP_KILL & 1


def launch(spec: tuple) -> subprocess.Popen:
    """Start a helper as ("setpriv", uid, *setpriv options) or ("setresuid", ruid, euid, suid)."""
    if spec[0] == "setpriv":
        return start_helper("idle", prefix=setpriv(spec[1], *spec[2:]))
    return start_helper("setresuid", *spec[1:])


KILL_CAPS = ("--inh-caps=+kill", "--ambient-caps=+kill")

PERMISSION_CASES = [
    # (target, sender, expected): the sender runs kill(target, 0) itself.
    pytest.param(("setpriv", UID_A), ("setpriv", UID_B), False, id="other-uid"),
    pytest.param(("setpriv", UID_A), ("setpriv", UID_A), True, id="same-uid"),
    pytest.param(("setpriv", UID_A), ("setpriv", UID_B, *KILL_CAPS), True, id="cap-kill"),
    pytest.param(("setresuid", UID_A, UID_C, UID_A), ("setpriv", UID_C), False,
                 id="target-euid-only"),
    pytest.param(("setresuid", UID_A, UID_A, UID_C), ("setpriv", UID_C), True,
                 id="target-saved-uid"),
    pytest.param(("setpriv", UID_A), ("setresuid", UID_A, UID_B, UID_B), True,
                 id="sender-real-uid"),
    pytest.param(("setpriv", UID_A), ("setresuid", UID_C, UID_A, UID_C), True,
                 id="sender-effective-uid"),
]


@pytest.mark.parametrize(("target_spec", "sender_spec", "expected"), PERMISSION_CASES)
def test_may_signal_matches_kill(target_spec, sender_spec, expected):
    require_root()
    proc = ProcFS()
    started = []
    try:
        target = launch(target_spec)
        started.append(target)
        sender = launch(sender_spec)
        started.append(sender)
        target_credentials = read_credentials(proc, target.pid)
        sender_credentials = read_credentials(proc, sender.pid)
        assert target_credentials is not None
        assert sender_credentials is not None
        if "--ambient-caps=+kill" in sender_spec:
            assert sender_credentials.cap_effective == 1 << CAP_KILL
        assert may_signal(sender_credentials, target_credentials) is expected
        assert request(sender, f"kill {target.pid}") == ("ok" if expected else "EPERM")
    finally:
        for process in started:
            stop(process)
