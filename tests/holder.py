"""A process that plays one part of a misconfigured Storm node for the diagnosis tests.

It is started with a Storm-shaped argv (``java tests/holder.py -server ...
org.apache.storm.daemon.worker.Worker ...``, with the interpreter as the
executable) and reads what to do from the JSON in $STORM_TEST_HOLDER:

    {"sigterm": "handle" | "ignore" | "default" | "block",
     "listen": 6700,                  # LISTEN on 127.0.0.1:6700, optional
     "children": [CHILD, ...],        # started before dropping privileges
     "drop_uid": 2001,                # setresuid after the children started, optional
     "pid_file_dir": "/dir/pids",     # create a file named by the holder's pid there
     "exit_with_child": true,         # exit when the first child exits, as the LogWriter does
     "ready": "/tmp/x/name.json"}     # written with {"pid": ..., "children": [...]} when set up

    CHILD = {"argv": [...], "spec": {...}, "uid": 1001, "cwd": "/dir",
             "passwd": "/tmp/passwd"}  # bind-mounted over /etc/passwd in a new mount namespace

Children are started with the same script, so a tree of any depth can be built.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

SPEC_VARIABLE = "STORM_TEST_HOLDER"
SCRIPT = os.path.abspath(__file__)
# Debian's interpreter, because holders run as other users too, who may not
# read the test's own interpreter (a virtualenv or pyenv under /root).
INTERPRETER = "/usr/bin/python3"
INTERPRETER_HOME = "/usr"

_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


def holder_args(argv: list[str]) -> tuple[list[str], str]:
    """Return (args, executable) for Popen that run this script under a Storm argv."""
    return [argv[0], SCRIPT, *argv[1:]], INTERPRETER


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _private_passwd(path: str) -> None:
    """Enter a new mount namespace and bind-mount ``path`` over /etc/passwd there."""
    libc = _libc()
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    _check(libc.mount(path.encode(), b"/etc/passwd", None, _MS_BIND, None), "mount --bind passwd")


def _become(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def start_child(child: dict) -> subprocess.Popen:
    args, executable = holder_args(child["argv"])
    environment = dict(os.environ)
    environment[SPEC_VARIABLE] = json.dumps(child.get("spec", {}))
    # With argv[0] "java" the interpreter cannot find its prefix from argv.
    environment["PYTHONHOME"] = INTERPRETER_HOME

    def prepare() -> None:
        if child.get("passwd"):
            _private_passwd(child["passwd"])
        if child.get("uid") is not None:
            _become(child["uid"])

    return subprocess.Popen(
        args, executable=executable, env=environment, cwd=child.get("cwd"),
        stdin=subprocess.DEVNULL, preexec_fn=prepare,
    )


def _set_disposition(mode: str) -> None:
    if mode == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif mode == "handle":
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(143))
    elif mode == "block":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main() -> None:
    spec = json.loads(os.environ.get(SPEC_VARIABLE) or "{}")
    _set_disposition(spec.get("sigterm", "handle"))
    listener = None
    if spec.get("listen"):
        listener = socket.socket()
        try:
            listener.bind(("127.0.0.1", spec["listen"]))
            listener.listen()
        except OSError as error:
            # A real worker dies here; the holder stays, as a worker that claims the port.
            sys.stderr.write(f"holder: cannot listen on port {spec['listen']}: {error}\n")
    if spec.get("pid_file_dir"):
        # As Storm's worker does: an empty file named by its pid in the pids directory.
        open(os.path.join(spec["pid_file_dir"], str(os.getpid())), "w").close()
    children = [start_child(child) for child in spec.get("children", [])]
    if spec.get("drop_uid") is not None:
        _become(spec["drop_uid"])
    if spec.get("ready"):
        temporary = spec["ready"] + ".part"
        with open(temporary, "w") as file:
            json.dump({"pid": os.getpid(), "children": [child.pid for child in children]}, file)
        os.rename(temporary, spec["ready"])
    while True:
        # Reap children that exit, so that they do not stay zombies.
        codes = [child.poll() for child in children]
        if spec.get("exit_with_child") and codes and codes[0] is not None:
            # Storm's LogWriter exits with its worker's status, 128 + signal for a signal.
            os._exit(codes[0] if codes[0] >= 0 else 128 - codes[0])
        time.sleep(0.05)
    del listener


if __name__ == "__main__":
    sys.exit(main())
