import random
import signal

import pytest

from exporter.killcmd import KillCommand, parse_kill_command, parse_signal

TERM = signal.SIGTERM
KILL = signal.SIGKILL


def kill(signum: int, *pids: int, groups: tuple[int, ...] = ()) -> KillCommand:
    return KillCommand(signal=signum, pids=pids, process_groups=groups, via="kill")


KILL_FORMS = [
    (["kill", "2325"], kill(TERM, 2325)),
    (["/bin/kill", "2325"], kill(TERM, 2325)),
    (["/usr/bin/kill", "-15", "2325"], kill(TERM, 2325)),
    (["kill", "-TERM", "2325"], kill(TERM, 2325)),
    (["kill", "-SIGTERM", "2325"], kill(TERM, 2325)),
    (["kill", "-term", "2325"], kill(TERM, 2325)),
    (["kill", "-s", "TERM", "2325"], kill(TERM, 2325)),
    (["kill", "-s", "SIGTERM", "2325"], kill(TERM, 2325)),
    (["kill", "-s", "15", "2325"], kill(TERM, 2325)),
    (["kill", "-n", "15", "2325"], kill(TERM, 2325)),
    (["kill", "--signal", "TERM", "2325"], kill(TERM, 2325)),
    (["kill", "--signal=KILL", "2325"], kill(KILL, 2325)),
    (["kill", "-9", "2325"], kill(KILL, 2325)),
    (["kill", "-KILL", "2325"], kill(KILL, 2325)),
    (["kill", "-s", "KILL", "2325"], kill(KILL, 2325)),
    (["kill", "-9", "2310", "2325", "2388"], kill(KILL, 2310, 2325, 2388)),
    (["kill", "--", "2325"], kill(TERM, 2325)),
    (["kill", "--", "-2310"], kill(TERM, groups=(2310,))),
    (["kill", "-9", "--", "-2310", "2325"], kill(KILL, 2325, groups=(2310,))),
    (["kill", "-s", "KILL", "-2310"], kill(KILL, groups=(2310,))),
    (["kill", "-9", "-1"], kill(KILL, -1)),
    (["kill", "--", "-1"], kill(TERM, -1)),
    (["kill", "-1", "2325"], kill(signal.SIGHUP, 2325)),
    (["kill", "0"], kill(TERM, 0)),
    (["kill", "-0", "2325"], kill(0, 2325)),
    (["kill", "-s", "0", "2325"], kill(0, 2325)),
    (["kill", "-HUP", "-USR1", "2325"], kill(signal.SIGUSR1, 2325)),
    (["kill", "-RTMIN+2", "2325"], kill(signal.SIGRTMIN + 2, 2325)),
    (["busybox", "kill", "-9", "2325"], kill(KILL, 2325)),
    (["/bin/busybox", "kill", "2325"], kill(TERM, 2325)),
]


@pytest.mark.parametrize("argv, expected", KILL_FORMS)
def test_kill_forms(argv, expected):
    assert parse_kill_command(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["kill", "-l"],
        ["kill", "-l", "9"],
        ["kill", "-L"],
        ["kill", "--list"],
        ["kill", "--table"],
        ["kill"],
        ["kill", "-9"],
        ["kill", "--"],
        ["kill", "-s"],
        ["kill", "-s", "NOSUCH", "2325"],
        ["kill", "-NOSUCH", "2325"],
        ["kill", "-SIG", "2325"],
        ["kill", "-65", "2325"],
        ["kill", "-RTMIN+40", "2325"],
        ["kill", "-9", "%1"],
        ["kill", "-9", "java"],
        ["kill", "-9", "$PID"],
        ["kill", "-9", "12a"],
        ["kill", "-9", "٣"],
        ["kill", "-9", "99999999999"],
        ["kill", "-p", "2325"],
        ["kill", "--timeout", "1000", "KILL", "2325"],
        ["kill", "-9", "2325", "x"],
        ["busybox", "ls", "2325"],
        ["killall", "-9", "java"],
        ["pkill", "-f", "org.apache.storm.daemon.worker.Worker"],
        ["skill", "2325"],
    ],
)
def test_not_kill(argv):
    assert parse_kill_command(argv) is None


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["worker-launcher", "storm", "signal", "2310", "15"],
            KillCommand(signal=TERM, process_groups=(2310,), via="worker-launcher"),
        ),
        (
            ["/usr/share/apache-storm/bin/worker-launcher", "foo", "signal", "2310", "9"],
            KillCommand(signal=KILL, process_groups=(2310,), via="worker-launcher"),
        ),
        (
            ["worker-launcher", "storm", "SIGNAL", "77", "0"],
            KillCommand(signal=0, process_groups=(77,), via="worker-launcher"),
        ),
        (
            ["worker-launcher", "storm", "signal", " +2310", "+15"],
            KillCommand(signal=TERM, process_groups=(2310,), via="worker-launcher"),
        ),
    ],
)
def test_worker_launcher_signal(argv, expected):
    assert parse_kill_command(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["worker-launcher", "storm", "signal", "2310"],
        ["worker-launcher", "storm", "signal", "2310", "15", "extra"],
        ["worker-launcher", "storm", "signal", "2310", "TERM"],
        ["worker-launcher", "storm", "signal", "0", "15"],
        ["worker-launcher", "storm", "signal", "-2310", "15"],
        ["worker-launcher", "storm", "signal", "abc", "15"],
        ["worker-launcher", "storm", "signal", "2310", "99"],
        ["worker-launcher", "storm", "signal", "2310 ", "15"],
        ["worker-launcher", "storm", "signal", "2310", "-15"],
        ["worker-launcher", "storm", "worker", "/var/storm/workers/w", "launch.sh"],
        ["worker-launcher", "storm", "rmr", "/var/storm/workers/w"],
        ["worker-launcher", "--checksetup"],
    ],
)
def test_worker_launcher_not_signal(argv):
    assert parse_kill_command(argv) is None


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sh", "-c", "kill -15 123 456"], kill(TERM, 123, 456)),
        (["/bin/bash", "-c", "kill -9 -- -2310"], kill(KILL, groups=(2310,))),
        (["bash", "-ec", "kill -s TERM 2325"], kill(TERM, 2325)),
        (["sh", "-x", "-c", "/bin/kill 2325"], kill(TERM, 2325)),
        (["dash", "-c", "  kill   -KILL\t2325  "], kill(KILL, 2325)),
        (["sh", "-c", "kill '2325'"], kill(TERM, 2325)),
        (["sh", "-c", "kill 2325 # stop the worker"], kill(TERM, 2325)),
        (["sh", "-c", "kill 2325", "sh", "ignored"], kill(TERM, 2325)),
    ],
)
def test_shell_kill(argv, expected):
    assert parse_kill_command(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["sh", "-c", "kill 1; rm -rf /tmp/x"],
        ["sh", "-c", "kill 1 && kill 2"],
        ["sh", "-c", "kill $(cat /var/storm/workers/w/pids/2325)"],
        ["sh", "-c", "kill `cat pidfile`"],
        ["sh", "-c", "kill $PID"],
        ["sh", "-c", "kill 2325 &"],
        ["sh", "-c", "kill 2325 >/dev/null"],
        ["sh", "-c", "kill 2325\nkill 2326"],
        ["sh", "-c", "echo kill 2325"],
        ["sh", "-c", "kill 'unterminated"],
        ["sh", "-c", ""],
        ["sh", "-c"],
        ["sh", "script.sh", "kill"],
        ["sh", "--norc", "-c", "kill 1"],
        ["sh", "-c", "sh -c 'kill 1'"],
        ["bash"],
    ],
)
def test_shell_not_single_kill(argv):
    assert parse_kill_command(argv) is None


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("15", 15),
        ("0", 0),
        ("TERM", 15),
        ("SIGKILL", 9),
        ("kill", 9),
        ("IOT", signal.SIGABRT),
        ("CLD", signal.SIGCHLD),
        ("RTMIN", signal.SIGRTMIN),
        ("RTMIN+1", signal.SIGRTMIN + 1),
        ("RTMAX-1", signal.SIGRTMAX - 1),
        ("SIGRTMAX", signal.SIGRTMAX),
        (str(signal.SIGRTMAX), signal.SIGRTMAX),
        (str(signal.SIGRTMAX + 1), None),
        ("-1", None),
        ("", None),
        ("SIG", None),
        ("RTMIN+", None),
        ("RTMIN+٣", None),
        ("SIG_DFL", None),
        ("TERM ", None),
    ],
)
def test_parse_signal(spec, expected):
    assert parse_signal(spec) == expected


def test_garbage_argv_never_raises():
    pieces = [
        "kill", "/bin/kill", "busybox", "worker-launcher", "sh", "bash", "-c", "-s", "-n",
        "--signal", "--signal=", "--", "-", "-9", "-0", "-KILL", "-RTMIN+", "signal", "storm",
        "123", "-123", "0", "-1", "", " ", "\x00", "\ufffd", "'", '"', "kill '", "$(", ";",
        "kill -9 1", "-l", "99999999999999999999", "+5", "\n",
    ]
    generator = random.Random(20240611)

    for _ in range(20_000):
        argv = [generator.choice(pieces) for _ in range(generator.randint(0, 6))]
        result = parse_kill_command(argv)
        assert result is None or isinstance(result, KillCommand)


def test_huge_numbers_rejected_not_fatal():
    digits = "9" * 5000
    assert parse_kill_command(["kill", f"-{digits}", "123"]) is None
    assert parse_kill_command(["kill", "-15", digits]) is None
    assert parse_kill_command(["worker-launcher", "storm", "signal", digits, "15"]) is None
    assert parse_kill_command(["kill", "-s", f"RTMIN+{digits}", "1"]) is None
