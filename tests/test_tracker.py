"""Termination tracker rules, driven by plain events and a fake clock."""

from __future__ import annotations

import signal

import pytest

from exporter.events import (
    EventsLost,
    JvmSignalThreadSeen,
    ProcessExeced,
    ProcessExited,
    ProcessForked,
    ProcessInfo,
    ScanCompleted,
    SignalGenerated,
)
from exporter.tracker import Tracker
from tests.stormargv import logwriter_argv, supervisor_argv, worker_argv

TOPOLOGY = "wordcount-3-1700000000"
WORKER_ID = "8d3c2b1a-4f5e-4a6b-9c7d-0e1f2a3b4c5d"
SIGTERM, SIGKILL = int(signal.SIGTERM), int(signal.SIGKILL)


def exit_code(code: int) -> int:
    return code << 8


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A fake node: builds events, feeds the tracker, moves the clock."""

    def __init__(self, **options) -> None:
        self.clock = Clock()
        self.infos: dict[int, ProcessInfo] = {}
        options.setdefault("leftover_grace", 5.0)
        self.tracker = Tracker(clock=self.clock, lookup=self.infos.get, host_pidns=4026531836, **options)
        self.tracker.signals_visible = True
        self.tracker.exits_known = True

    def at(self, time: float) -> "Node":
        self.clock.now = time
        return self

    def spawn(self, pid: int, ppid: int, argv, *, start: int | None = None, nspid=(), pidns=4026531836):
        info = ProcessInfo(
            pid=pid, start_ticks=start if start is not None else pid * 10, ppid=ppid,
            comm=str(argv[0]).rsplit("/", 1)[-1][:15], state="S", uid=1000, argv=tuple(argv),
            nspid=tuple(nspid) or (pid,), pidns=pidns,
        )
        self.infos[pid] = info
        self.tracker.handle(ProcessForked(time=self.clock.now, pid=pid, ppid=ppid, info=info))
        return info

    def execute(self, pid: int, ppid: int, argv, **kwargs) -> ProcessInfo:
        """A short-lived command: fork then exec, as the supervisor runs `kill`."""
        info = self.spawn(pid, ppid, argv, **kwargs)
        self.tracker.handle(ProcessExeced(time=self.clock.now, pid=pid, info=info))
        return info

    def exit(self, pid: int, status: int | None) -> None:
        self.tracker.handle(ProcessExited(time=self.clock.now, pid=pid, status=status))
        self.infos.pop(pid, None)

    def signal(self, pid: int, signum: int, sender: int, comm: str = "kill", code: int = 0) -> None:
        self.tracker.handle(
            SignalGenerated(time=self.clock.now, pid=pid, signal=signum, sender_pid=sender,
                            sender_comm=comm, code=code)
        )

    def supervisor_kill(self, pid: int, target: int, signum: int, *, nspid=(), pidns=4026531836, target_ns=None):
        """`kill -N target` run by the supervisor: exec, then the signal it generates."""
        self.execute(pid, 100, ["kill", f"-{signum}", str(target_ns or target)], nspid=nspid, pidns=pidns)
        self.signal(target, signum, sender=pid)
        self.exit(pid, 0)

    def worker_tree(self, topology: str = TOPOLOGY, base: int = 200, port: int = 6700, **kwargs):
        """Supervisor 100, LogWriter base, worker base+1, multilang child base+2."""
        if 100 not in self.infos:
            self.spawn(100, 1, supervisor_argv())
        worker_id = kwargs.pop("worker_id", WORKER_ID)
        self.spawn(base, 100, logwriter_argv(topology, worker_id, port), **kwargs.get("lw", {}))
        self.spawn(base + 1, base, worker_argv(topology, worker_id, port), **kwargs.get("worker", {}))
        self.spawn(base + 2, base + 1, ["python3", "splitsentence.py"], **kwargs.get("child", {}))

    def tick(self, time: float) -> None:
        self.at(time).tracker.tick()


def histogram(tracker: Tracker, outcome: str, label: str = TOPOLOGY):
    return tracker.durations.get((label, outcome))


def test_graceful_exit_records_duration():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).supervisor_kill(300, 201, SIGTERM)
    node.at(10.5).exit(201, exit_code(143))
    node.exit(200, exit_code(143))
    tracker = node.tracker
    assert tracker.exits[(TOPOLOGY, "graceful")] == 1
    assert histogram(tracker, "graceful").total == pytest.approx(0.5)
    assert sum(histogram(tracker, "graceful").counts) == 1
    assert tracker.escalations[TOPOLOGY] == 0
    assert tracker.signals[(TOPOLOGY, "SIGTERM", "supervisor")] == 1
    assert tracker.kill_commands[(TOPOLOGY, "SIGTERM")] == 1


def test_watchdog_halt_is_halted():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).supervisor_kill(300, 201, SIGTERM)
    node.at(12.9).exit(201, exit_code(20))
    assert node.tracker.exits[(TOPOLOGY, "halted")] == 1
    assert histogram(node.tracker, "halted").total == pytest.approx(2.9)


def test_ignored_sigterm_escalates_once():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).supervisor_kill(300, 201, SIGTERM)
    node.at(13.0).supervisor_kill(301, 201, SIGKILL)
    node.at(13.0).supervisor_kill(302, 201, SIGKILL)
    node.at(13.002).exit(201, signal.SIGKILL)
    tracker = node.tracker
    assert tracker.exits[(TOPOLOGY, "sigkill")] == 1
    assert tracker.escalations[TOPOLOGY] == 1
    assert histogram(tracker, "sigkill").total == pytest.approx(3.002)
    assert tracker.signals[(TOPOLOGY, "SIGKILL", "supervisor")] == 2


def test_crash_without_request_has_no_duration():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(5.0).exit(201, exit_code(11))
    node.tick(5.1)
    assert node.tracker.exits.get((TOPOLOGY, "crashed"), 0) == 0  # still settling
    node.tick(5.5)
    assert node.tracker.exits[(TOPOLOGY, "crashed")] == 1
    assert node.tracker.durations == {}


def test_late_signal_within_settle_counts_as_request():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.2).exit(201, exit_code(143))
    node.at(10.0).signal(201, SIGTERM, sender=100, comm="java")
    node.tick(10.6)
    assert node.tracker.exits[(TOPOLOGY, "graceful")] == 1
    assert histogram(node.tracker, "graceful").total == pytest.approx(0.2)


def test_signal_to_logwriter_is_a_request():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).signal(200, SIGTERM, sender=100, comm="java")
    node.at(10.3).exit(201, exit_code(143))
    assert node.tracker.exits[(TOPOLOGY, "graceful")] == 1
    assert node.tracker.signals[(TOPOLOGY, "SIGTERM", "supervisor")] == 1


def test_signal_zero_probe_is_not_a_request():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).execute(300, 100, ["kill", "-0", "201"])
    node.at(11.0).exit(201, exit_code(1))
    node.tick(12.0)
    assert node.tracker.exits[(TOPOLOGY, "crashed")] == 1


def test_leftovers_after_grace_then_gone():
    node = Node(leftover_grace=5.0)
    node.at(1.0).worker_tree()
    node.at(10.0).supervisor_kill(300, 201, SIGTERM)
    node.at(10.5).exit(201, exit_code(143))
    node.exit(200, exit_code(143))
    node.tick(15.4)
    assert node.tracker.leftover_counts() == {}
    node.tick(15.6)
    assert node.tracker.leftover_counts() == {TOPOLOGY: 1}
    assert node.tracker.leftovers_detected[TOPOLOGY] == 1
    node.at(20.0).exit(202, signal.SIGKILL)
    node.tick(20.1)
    assert node.tracker.leftover_counts() == {}
    assert node.tracker.leftovers_detected[TOPOLOGY] == 1
    assert node.tracker.workers == {}


def test_child_forked_by_leftover_is_a_leftover():
    node = Node(leftover_grace=1.0)
    node.at(1.0).worker_tree()
    node.at(5.0).exit(201, signal.SIGKILL)
    node.tick(6.5)
    assert node.tracker.leftovers_detected[TOPOLOGY] == 2  # LogWriter 200 and child 202
    node.at(7.0).spawn(210, 202, ["sh", "-c", "sleep 100"])
    assert node.tracker.leftover_counts() == {TOPOLOGY: 3}
    assert node.tracker.leftovers_detected[TOPOLOGY] == 3


def test_reused_pid_has_no_history():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(5.0).exit(201, exit_code(1))
    node.tick(6.0)
    node.at(7.0).spawn(201, 1, ["sleep", "100"], start=99999)
    node.at(8.0).signal(201, SIGTERM, sender=1, comm="bash")
    node.at(8.5).exit(201, signal.SIGTERM)
    node.tick(9.0)
    tracker = node.tracker
    assert tracker.exits == {(TOPOLOGY, "crashed"): 1}
    assert (TOPOLOGY, "SIGTERM", "other") not in tracker.signals


def test_scan_replaces_reused_pid():
    node = Node()
    node.at(1.0).worker_tree()
    reused = ProcessInfo(pid=201, start_ticks=55555, ppid=1, comm="sleep", state="S", argv=("sleep", "9"))
    scan = {pid: info for pid, info in node.infos.items() if pid != 201}
    scan[201] = reused
    node.at(4.0).tracker.handle(ScanCompleted(time=4.0, processes=scan))
    node.tick(5.0)
    tracker = node.tracker
    assert tracker.table.get(201).start_ticks == 55555
    assert tracker.table.get(201).worker is None
    assert tracker.exits[(TOPOLOGY, "unknown")] == 1


def test_kill_in_pid_namespace_maps_namespace_pids():
    node = Node()
    ns = 4026532999
    node.at(1.0)
    node.spawn(100, 1, supervisor_argv(), nspid=(100, 1), pidns=ns)
    node.worker_tree(lw={"nspid": (200, 5), "pidns": ns}, worker={"nspid": (201, 6), "pidns": ns},
                     child={"nspid": (202, 7), "pidns": ns})
    # In the namespace, pid 201 is some unrelated process: the command means ns pid 6.
    node.spawn(6, 1, ["sleep", "1000"])
    node.at(10.0).execute(300, 100, ["kill", "-15", "6"], nspid=(300, 9), pidns=ns)
    node.at(10.4).exit(201, exit_code(143))
    tracker = node.tracker
    assert tracker.exits[(TOPOLOGY, "graceful")] == 1
    assert histogram(tracker, "graceful").total == pytest.approx(0.4)
    assert tracker.kill_commands[(TOPOLOGY, "SIGTERM")] == 1


def test_namespace_teardown_sigkill_is_not_escalation():
    node = Node()
    ns = 4026532999
    node.at(1.0)
    node.spawn(100, 1, supervisor_argv(), nspid=(100, 1), pidns=ns)
    node.worker_tree(worker={"nspid": (201, 6), "pidns": ns})
    node.at(20.0).signal(201, SIGKILL, sender=100, comm="java", code=0x80)
    node.at(20.01).exit(201, signal.SIGKILL)
    node.tick(20.5)
    tracker = node.tracker
    assert tracker.signals[(TOPOLOGY, "SIGKILL", "namespace_teardown")] == 1
    assert tracker.exits[(TOPOLOGY, "sigkill")] == 1
    assert tracker.escalations[TOPOLOGY] == 0
    assert tracker.durations == {}


def test_oom_kill_sender_is_kernel():
    node = Node()
    node.at(1.0).worker_tree()
    node.spawn(400, 1, ["stress"])
    node.at(3.0).signal(201, SIGKILL, sender=400, comm="stress", code=0x80)
    node.at(3.01).exit(201, signal.SIGKILL)
    node.tick(3.5)
    assert node.tracker.signals[(TOPOLOGY, "SIGKILL", "kernel")] == 1
    assert node.tracker.escalations[TOPOLOGY] == 0


def test_runtime_sender_is_container_runtime():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(2.0).signal(202, SIGTERM, sender=50, comm="runc")
    assert node.tracker.signals[(TOPOLOGY, "SIGTERM", "container_runtime")] == 1


def test_logwriter_fork_copy_is_not_a_worker():
    node = Node()
    node.at(1.0).spawn(100, 1, supervisor_argv())
    lw = logwriter_argv(TOPOLOGY, WORKER_ID, 6700)
    node.spawn(200, 100, lw)
    node.spawn(201, 200, lw)  # fork, before exec
    assert node.tracker.workers == {}
    info = ProcessInfo(pid=201, start_ticks=2010, ppid=200, comm="java", state="S",
                       argv=tuple(worker_argv(TOPOLOGY, WORKER_ID, 6700)))
    node.tracker.handle(ProcessExeced(time=1.1, pid=201, info=info))
    assert [w.key for w in node.tracker.workers.values()] == [(201, 2010)]
    assert node.tracker.workers[(201, 2010)].logwriter == (200, 2000)


def test_poll_only_request_without_status_is_unknown():
    node = Node()
    node.tracker.signals_visible = False
    node.tracker.exits_known = False
    node.at(1.0).worker_tree()
    node.tracker.handle(JvmSignalThreadSeen(time=10.0, pid=201, signal=SIGTERM))
    node.at(10.7).exit(201, None)
    node.tick(11.5)
    assert node.tracker.exits[(TOPOLOGY, "unknown")] == 1
    assert histogram(node.tracker, "unknown").total == pytest.approx(0.7)


def test_tracefs_without_status_uses_signals():
    node = Node()
    node.tracker.exits_known = False
    node.at(1.0).worker_tree()
    node.at(10.0).signal(201, SIGTERM, sender=100, comm="java")
    node.at(10.3).exit(201, None)
    node.tick(11.0)
    node.at(1.0).worker_tree(topology="other-1-1", base=500, port=6701, worker_id="w2")
    node.at(20.0).signal(501, SIGTERM, sender=100, comm="java")
    node.at(23.0).signal(501, SIGKILL, sender=100, comm="java")
    node.at(23.1).exit(501, None)
    node.tick(24.0)
    tracker = node.tracker
    assert tracker.exits[(TOPOLOGY, "graceful")] == 1
    assert tracker.exits[("other-1-1", "sigkill")] == 1
    assert tracker.escalations["other-1-1"] == 1


def test_topology_max_folds_into_other():
    node = Node(topology_max=2)
    node.at(1.0)
    for index in range(3):
        node.worker_tree(topology=f"topo{index}-1-1", base=200 + 10 * index, port=6700 + index,
                         worker_id=f"w{index}")
    labels = sorted(w.label for w in node.tracker.workers.values())
    assert labels == ["_other", "topo0-1-1", "topo1-1-1"]
    assert node.tracker.labels.overflowed == 1


def test_idle_topology_expires():
    node = Node(topology_retention=100.0)
    node.at(1.0).worker_tree()
    node.at(2.0).exit(201, exit_code(11))
    node.exit(200, exit_code(11))
    node.exit(202, 0)
    node.tick(3.0)
    assert node.tracker.exits[(TOPOLOGY, "crashed")] == 1
    node.tick(50.0)
    assert TOPOLOGY in node.tracker.labels.last_active
    node.tick(200.0)
    assert TOPOLOGY not in node.tracker.labels.last_active
    assert node.tracker.exits == {}


def test_scan_finds_missed_exit_and_counts_loss():
    node = Node()
    node.at(1.0).worker_tree()
    node.tracker.handle(ScanCompleted(time=1.5, processes=dict(node.infos)))
    scan = {pid: info for pid, info in node.infos.items() if pid != 201}
    node.tracker.handle(ScanCompleted(time=30.0, processes=scan))
    assert node.tracker.events_lost["netlink"] == 1
    node.tracker.handle(ProcessExited(time=29.0, pid=201, status=exit_code(11)))
    node.tick(31.0)
    assert node.tracker.exits[(TOPOLOGY, "crashed")] == 1


def test_events_lost_counted():
    node = Node()
    node.tracker.handle(EventsLost(time=1.0, source="tracefs", count=7))
    assert node.tracker.events_lost["tracefs"] == 7


def test_thread_exit_of_other_pid_ignored():
    node = Node()
    node.at(1.0).worker_tree()
    node.tracker.handle(ProcessExited(time=2.0, pid=201, status=0, start_ticks=1))
    assert node.tracker.table.get(201).alive


def test_signal_from_vanished_kill_is_supervisor():
    node = Node()
    node.at(1.0).worker_tree()
    node.tracker.handle(ProcessForked(time=10.0, pid=300, ppid=100, info=None))
    node.at(10.001).signal(201, SIGTERM, sender=300)
    assert node.tracker.signals[(TOPOLOGY, "SIGTERM", "supervisor")] == 1


def test_worker_signalling_child_is_other():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).signal(202, SIGTERM, sender=201, comm="SIGTERM handler")
    assert node.tracker.signals[(TOPOLOGY, "SIGTERM", "other")] == 1


def test_orphans_found_by_stormdist_cwd():
    # Three multilang children reparented to the container's init after their worker
    # was SIGKILLed before the exporter started; their cwd still names the topology.
    cwds = {pid: f"/var/storm/supervisor/stormdist/{TOPOLOGY}/resources" for pid in (2388, 2389, 2402)}
    cwds[3000] = "/home/storm"
    node = Node(read_cwd=cwds.get)
    node.at(100.0)
    scan = {}
    for pid, argv in ((2388, ["python3", "splitsentence.py"]), (2389, ["python3", "splitsentence.py"]),
                      (2402, ["node", "splitsentence.js"]), (3000, ["python3", "splitsentence.py"])):
        scan[pid] = ProcessInfo(pid=pid, start_ticks=pid, ppid=1, comm=argv[0], state="R", argv=tuple(argv))
    node.tracker.handle(ScanCompleted(time=100.0, processes=scan))
    tracker = node.tracker
    assert tracker.leftover_counts() == {TOPOLOGY: 3}
    assert tracker.leftovers_detected[TOPOLOGY] == 3
    assert tracker.exits == {}
    assert tracker.live_workers() == []
    for pid in (2388, 2389, 2402):
        node.at(110.0).exit(pid, signal.SIGKILL)
    node.tick(110.1)
    assert tracker.leftover_counts() == {}
    assert tracker.workers == {}


def test_orphan_cwd_checked_once():
    calls = []
    node = Node(read_cwd=lambda pid: calls.append(pid) or "/tmp")
    info = ProcessInfo(pid=700, start_ticks=7, ppid=1, comm="sleep", state="S", argv=("sleep", "9"))
    for time in (1.0, 31.0):
        node.tracker.handle(ScanCompleted(time=time, processes={700: info}))
    assert calls == [700]


def test_signal_to_exiting_child_counted():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).exit(202, signal.SIGTERM)
    node.at(10.002).signal(202, SIGTERM, sender=300)
    assert sum(v for k, v in node.tracker.signals.items() if k[:2] == (TOPOLOGY, "SIGTERM")) == 1


def test_exact_request_beats_signal_thread():
    node = Node()
    node.at(1.0).worker_tree()
    node.tracker.handle(JvmSignalThreadSeen(time=9.995, pid=201, signal=SIGTERM))
    node.at(10.0).supervisor_kill(300, 201, SIGTERM)
    node.tracker.handle(JvmSignalThreadSeen(time=9.994, pid=201, signal=SIGTERM))
    node.at(10.5).exit(201, exit_code(143))
    assert histogram(node.tracker, "graceful").total == pytest.approx(0.5)


def test_signal_thread_much_earlier_wins():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).supervisor_kill(300, 201, SIGTERM)
    node.tracker.handle(JvmSignalThreadSeen(time=9.5, pid=201, signal=SIGTERM))
    node.at(10.5).exit(201, exit_code(143))
    assert histogram(node.tracker, "graceful").total == pytest.approx(1.0)


def test_pod_deletion_is_request_of_its_workers():
    cgroup = "0::/kubepods/burstable/pod0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6/" + "ab" * 32 + "\n"
    node = Node(read_cgroup=lambda pid: cgroup if pid == 201 else None)
    node.at(1.0).worker_tree()
    node.tracker.request_pod_termination("0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6", 10.0)
    node.tracker.request_pod_termination("7a8b9c0d-1e2f-4a3b-9c4d-5e6f708192a3", 5.0)
    node.at(11.0).signal(201, SIGKILL, sender=100, comm="java", code=0x80)
    node.at(11.01).exit(201, signal.SIGKILL)
    tracker = node.tracker
    assert tracker.exits[(TOPOLOGY, "sigkill")] == 1
    assert tracker.escalations[TOPOLOGY] == 1
    assert histogram(tracker, "sigkill").total == pytest.approx(1.01)
    assert tracker.termination_requests[(TOPOLOGY, "pod_deletion")] == 1


def test_supervisor_kill_beats_rounded_pod_start():
    cgroup = "0::/kubepods/burstable/pod0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6/" + "ab" * 32 + "\n"
    node = Node(read_cgroup=lambda pid: cgroup if pid == 201 else None)
    node.at(1.0).worker_tree()
    node.tracker.request_pod_termination("0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6", 9.4)
    node.at(10.0).supervisor_kill(300, 201, SIGTERM)
    node.at(10.5).exit(201, exit_code(143))
    assert histogram(node.tracker, "graceful").total == pytest.approx(0.5)
    assert node.tracker.termination_requests[(TOPOLOGY, "supervisor")] == 1


def test_container_init_exit_is_recorded():
    container_id = "cd" * 32
    cgroup = f"0::/kubepods/burstable/pod0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6/{container_id}\n"
    node = Node(read_cgroup=lambda pid: cgroup if pid == 500 else None)
    node.at(1.0).spawn(500, 1, ["/usr/bin/tini", "--", "storm", "supervisor"], nspid=(500, 1))
    node.at(2.0).spawn(501, 1, ["sleep", "1"], nspid=(501, 4))
    node.at(5.0).exit(500, exit_code(143))
    node.exit(501, 0)
    seen = node.tracker.container_exits.get(container_id)
    assert seen is not None
    assert seen[1] == exit_code(143)
    assert node.tracker.container_exits.get("ab" * 32) is None


def test_failed_kill_command_is_counted():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).execute(300, 100, ["kill", "-15", "201"])
    node.at(10.001).exit(300, exit_code(1))
    worker = node.tracker.workers[(201, 2010)]
    assert node.tracker.kill_failures[(TOPOLOGY, "SIGTERM")] == 1
    assert len(worker.kill_failures) == 1
    assert worker.kill_failures[0].target_pid == 201
    assert worker.kill_failures[0].status == "exit 1"


def test_successful_kill_is_not_failure():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).supervisor_kill(300, 201, SIGTERM)
    assert node.tracker.kill_failures[(TOPOLOGY, "SIGTERM")] == 0
    assert node.tracker.kill_commands[(TOPOLOGY, "SIGTERM")] == 1


def test_kill_without_exit_status_is_not_failure():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).execute(300, 100, ["kill", "-9", "201"])
    node.at(10.001).exit(300, None)
    assert node.tracker.kill_failures[(TOPOLOGY, "SIGKILL")] == 0


def test_kill_failure_of_untracked_pid_is_ignored():
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).execute(300, 100, ["kill", "-15", "4242"])
    node.at(10.001).exit(300, exit_code(1))
    assert sum(node.tracker.kill_failures.values()) == 0


def test_replacement_that_dies_is_crash_not_sample():
    # A replacement worker that cannot bind its port exits within seconds with no
    # termination request: a crashed start, not a shutdown duration.
    node = Node()
    node.at(1.0).worker_tree("ingest-6-1529050000", base=500, worker_id="e0c1d2b3-a4f5-4e67-8899-aabbccddeeff")
    node.at(4.0).exit(501, exit_code(1))
    node.exit(500, exit_code(1))
    node.tick(5.0)
    assert node.tracker.exits[("ingest-6-1529050000", "crashed")] == 1
    assert not any(label == "ingest-6-1529050000" for label, _ in node.tracker.durations)


def test_kill_racing_worker_exit_is_not_failure():
    # The supervisor's kill -9 after the kill wait finds the worker gone (ESRCH).
    node = Node()
    node.at(1.0).worker_tree()
    node.at(10.0).supervisor_kill(300, 201, SIGTERM)
    node.at(13.0).execute(301, 100, ["kill", "-9", "201"])
    node.at(13.0005).exit(201, exit_code(20))
    node.at(13.001).exit(301, exit_code(1))
    assert node.tracker.kill_failures[(TOPOLOGY, "SIGKILL")] == 0
    assert node.tracker.kill_commands[(TOPOLOGY, "SIGKILL")] == 1
