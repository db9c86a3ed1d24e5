"""Recognition of commands that send a signal to given pids, read from their argv.

Covered are kill(1) from util-linux, procps and busybox, Storm's setuid
``worker-launcher <user> signal <pid> <signum>``, and ``sh -c`` or ``bash -c``
whose command string is one such command.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import signal
from dataclasses import dataclass
from typing import Literal, Sequence

SHELLS = frozenset({"sh", "bash", "dash", "ash", "ksh", "zsh"})

# Digit runs are bounded, because Python refuses to convert strings of over 4,300
# digits; a pid or signal number never needs more than 18.
_NUMBER = re.compile(r"-?[0-9]{1,18}")
_DIGITS = re.compile(r"[0-9]{1,18}")
# The numbers that strtol(s, &end, 10) accepts when *end must be the terminating NUL.
_STRTOL_NUMBER = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]{1,18}")
_SHELL_OPERATOR = re.compile(r"[();<>|&]+")
_LIST_OPTIONS = frozenset({"-l", "-L", "--list", "--table"})
_MAX_PID = 2**31 - 1


@dataclass(frozen=True, slots=True)
class KillCommand:
    """A signal sent to pids and process groups as a command line names them.

    ``pids`` keeps kill(2)'s special values: 0 is the sender's own process group
    and -1 every process the sender may signal. ``process_groups`` lists positive
    group ids, written as negative numbers on the command line.
    worker-launcher signals process group N when one exists and else process N,
    so its N is listed once, in ``process_groups``.
    """

    signal: int
    pids: tuple[int, ...] = ()
    process_groups: tuple[int, ...] = ()
    via: Literal["kill", "worker-launcher"] = "kill"


def parse_kill_command(argv: Sequence[str]) -> KillCommand | None:
    """Return the signal and targets of a kill command, or None for any other argv.

    ``kill -l`` and ``kill -L`` list signal names and return None. Unknown options,
    targets that are not numbers (job specs, process names, shell variables) and
    shell command strings with operators also return None.
    """
    if not argv:
        return None
    program = posixpath.basename(argv[0])
    if program == "kill":
        return _parse_kill_args(argv[1:])
    if program == "busybox" and len(argv) > 1 and argv[1] == "kill":
        return _parse_kill_args(argv[2:])
    if program == "worker-launcher":
        return _parse_worker_launcher(argv[1:])
    if program in SHELLS:
        return _parse_shell(argv[1:])
    return None


def parse_signal(spec: str) -> int | None:
    """Return the number of a signal written as 15, TERM, SIGTERM, term or RTMIN+2.

    Numbers run from 0 (no signal, only the permission check) to SIGRTMAX.
    """
    if _NUMBER.fullmatch(spec):
        number = int(spec)
        return number if 0 <= number <= signal.SIGRTMAX else None
    name = spec.upper().removeprefix("SIG")
    for base, sign in (("RTMIN+", 1), ("RTMAX-", -1)):
        offset = name.removeprefix(base)
        if offset != name and _DIGITS.fullmatch(offset):
            return _realtime_signal(base, sign, int(offset))
    try:
        return int(signal.Signals["SIG" + name])
    except KeyError:
        return None


def _realtime_signal(base: str, sign: int, offset: int) -> int | None:
    origin = signal.SIGRTMIN if base == "RTMIN+" else signal.SIGRTMAX
    number = origin + sign * offset
    return number if signal.SIGRTMIN <= number <= signal.SIGRTMAX else None


def _parse_kill_args(args: Sequence[str]) -> KillCommand | None:
    """Parse the arguments of kill(1), which are options followed by targets.

    After a signal option, -N is a target, so ``kill -9 -1`` signals every process.
    """
    signal_number: int | None = signal.SIGTERM
    signal_given = False
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            index += 1
            break
        if not arg.startswith("-") or (signal_given and _NUMBER.fullmatch(arg)):
            break
        if arg in _LIST_OPTIONS or arg.startswith(("--list=", "--table=")):
            return None
        if arg in ("-s", "-n", "--signal"):
            if index + 1 == len(args):
                return None
            signal_number = parse_signal(args[index + 1])
            index += 2
        elif arg.startswith("--signal="):
            signal_number = parse_signal(arg.removeprefix("--signal="))
            index += 1
        elif arg.startswith("--"):
            return None
        else:
            signal_number = parse_signal(arg[1:])
            index += 1
        if signal_number is None:
            return None
        signal_given = True
    return _kill_targets(signal_number, args[index:])


def _kill_targets(signal_number: int, targets: Sequence[str]) -> KillCommand | None:
    pids: list[int] = []
    groups: list[int] = []
    for target in targets:
        if not _NUMBER.fullmatch(target) or abs(int(target)) > _MAX_PID:
            return None
        number = int(target)
        if number < -1:
            groups.append(-number)
        else:
            pids.append(number)
    if not pids and not groups:
        return None
    return KillCommand(signal=signal_number, pids=tuple(pids), process_groups=tuple(groups))


def _parse_worker_launcher(args: Sequence[str]) -> KillCommand | None:
    """Parse ``<user> signal <pid> <signum>``. worker-launcher rejects a pid <= 0."""
    # worker-launcher compares the command name with strcasecmp().
    if len(args) != 4 or args[1].lower() != "signal":
        return None
    pid, signum = args[2], args[3]
    if not _STRTOL_NUMBER.fullmatch(pid) or not 0 < int(pid) <= _MAX_PID:
        return None
    if not _STRTOL_NUMBER.fullmatch(signum):
        return None
    signal_number = int(signum)
    if not 0 <= signal_number <= signal.SIGRTMAX:
        return None
    return KillCommand(signal=signal_number, process_groups=(int(pid),), via="worker-launcher")


def _parse_shell(args: Sequence[str]) -> KillCommand | None:
    """Parse ``-c <command string>``, which may follow other short options as in ``-ec``."""
    for index, arg in enumerate(args):
        if not arg.startswith("-") or arg.startswith("--") or arg == "-":
            return None
        if "c" in arg[1:]:
            if index + 1 == len(args):
                return None
            return _parse_command_string(args[index + 1])
    return None


def _parse_command_string(command: str) -> KillCommand | None:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return None
    if not tokens or any(_SHELL_OPERATOR.fullmatch(token) for token in tokens):
        return None
    if posixpath.basename(tokens[0]) in SHELLS:
        return None
    return parse_kill_command(tokens)
