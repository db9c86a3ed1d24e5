from datetime import datetime, timezone
from pathlib import Path

import pytest

from exporter.procfs import parse_cmdline
from exporter.storm import StormProcess, TopologyId, classify, parse_topology_id

FIXTURE_PROC = Path(__file__).parent / "fixtures" / "proc"

WORDCOUNT = "wordcount-3-1700000000"
WORDCOUNT_WORKER = "8d3c2b1a-4f5e-4a6b-9c7d-0e1f2a3b4c5d"
SUPERVISOR_2 = "5f0c9c3e-1111-4222-8333-944455556666"
TOPSERVER = "TopServer-2-1519631402"
TOPSERVER_WORKER = "1f2395b2-e9d9-4260-a200-acb0759fd03b"
TOPSERVER_SUPERVISOR = "df1415a8-b4b4-45fb-8a86-584c774cb55f"
WORKER_2 = "org.apache.storm.daemon.worker.Worker"
WORKER_1 = "org.apache.storm.daemon.worker"


def fixture_argv(pid: int) -> tuple[str, ...]:
    return parse_cmdline((FIXTURE_PROC / str(pid) / "cmdline").read_bytes())


def storm2_worker_argv(
    *, java: str = "java", topology_id: str = WORDCOUNT, tail: tuple[str, ...] | None = None
) -> list[str]:
    """Return a Storm 2 worker argv in the order the 2.x supervisor builds it."""
    if tail is None:
        tail = (topology_id, SUPERVISOR_2, "6628", "6702", WORDCOUNT_WORKER)
    return [
        java,
        "-server",
        "-Dlogging.sensitivity=S3",
        "-Dlogfile.name=worker.log",
        "-Dstorm.home=/opt/storm",
        f"-Dstorm.id={topology_id}",
        f"-Dworker.id={WORDCOUNT_WORKER}",
        "-Dworker.port=6702",
        "-Dstorm.local.dir=/var/storm",
        "-Dworker.memory_limit_mb=1024",
        "-Xmx768m",
        "-Dcom.sun.management.jmxremote.port=16702",
        "-cp",
        "/opt/storm/lib-worker/*:/opt/storm/conf",
        WORKER_2,
        *tail,
    ]


EXPECTED_WORDCOUNT_WORKER = StormProcess(
    role="worker",
    main_class=WORKER_2,
    topology_id=WORDCOUNT,
    worker_id=WORDCOUNT_WORKER,
    port=6702,
    supervisor_id=SUPERVISOR_2,
    supervisor_port=6628,
    memory_limit_mb=1024,
    storm_major=2,
)


# Storm 1.2.1: nimbus, supervisor, LogWriter and worker read from /proc/PID/cmdline


def test_storm1_nimbus():
    process = classify(fixture_argv(12291))

    assert process == StormProcess(
        role="nimbus", main_class="org.apache.storm.daemon.nimbus", storm_major=1
    )
    assert process.tracked is False


def test_storm1_supervisor():
    process = classify(fixture_argv(29950))

    assert process == StormProcess(
        role="supervisor", main_class="org.apache.storm.daemon.supervisor.Supervisor"
    )
    assert process.tracked is True


def test_storm1_logwriter_is_not_worker():
    process = classify(fixture_argv(15396))

    assert process == StormProcess(
        role="logwriter",
        main_class="org.apache.storm.LogWriter",
        topology_id=TOPSERVER,
        worker_id=TOPSERVER_WORKER,
        port=6701,
    )
    assert process.tracked is True


def test_storm1_worker_positional_args():
    process = classify(fixture_argv(15411))

    assert process == StormProcess(
        role="worker",
        main_class=WORKER_1,
        topology_id=TOPSERVER,
        worker_id=TOPSERVER_WORKER,
        port=6701,
        supervisor_id=TOPSERVER_SUPERVISOR,
        storm_major=1,
    )


def test_storm1_one_worker_per_slot():
    processes = [classify(fixture_argv(pid)) for pid in (12291, 29950, 15396, 15411)]

    workers = [p for p in processes if p.role == "worker" and p.port == 6701]

    assert len(workers) == 1


def test_storm1_worker_without_properties():
    argv = fixture_argv(15411)
    without_properties = [
        element
        for element in argv
        if not element.startswith(("-Dstorm.id=", "-Dworker.id=", "-Dworker.port="))
    ]

    process = classify(without_properties)

    assert process.topology_id == TOPSERVER
    assert process.supervisor_id == TOPSERVER_SUPERVISOR
    assert process.port == 6701
    assert process.worker_id == TOPSERVER_WORKER


def test_topserver_topology_id():
    topology = parse_topology_id(TOPSERVER)

    assert topology == TopologyId(name="TopServer", counter=2, launched=1519631402)
    launched = datetime.fromtimestamp(topology.launched, timezone.utc)
    assert launched.isoformat() == "2018-02-26T07:50:02+00:00"


# Storm 2.x argv as the supervisor builds it


def test_storm2_supervisor():
    assert classify(fixture_argv(2001)) == StormProcess(
        role="supervisor", main_class="org.apache.storm.daemon.supervisor.Supervisor"
    )


def test_storm2_logwriter():
    assert classify(fixture_argv(2310)) == StormProcess(
        role="logwriter",
        main_class="org.apache.storm.LogWriter",
        topology_id=WORDCOUNT,
        worker_id=WORDCOUNT_WORKER,
        port=6702,
        memory_limit_mb=1024,
    )


def test_storm2_worker():
    process = classify(fixture_argv(2325))

    assert process == EXPECTED_WORDCOUNT_WORKER
    assert process.port != 16702


def test_storm2_worker_numa_zone():
    process = classify(fixture_argv(2410))

    assert process.role == "worker"
    assert process.supervisor_id == SUPERVISOR_2
    assert process.numa_zone == "1"
    assert process.port == 6703
    assert process.supervisor_port == 6628
    assert process.worker_id == "8d3c2b1a-4f5e-4a6b-9c7d-0e1f2a3b4c5e"


def test_storm1_topology_on_storm2_supervisor():
    process = classify(fixture_argv(2510))

    assert process == StormProcess(
        role="worker",
        main_class=WORKER_1,
        topology_id="legacy-7-1699990000",
        worker_id="0b9e8f7a-6d5c-4b4a-9392-8170f6e5d4c3",
        port=6704,
        supervisor_id=SUPERVISOR_2,
        memory_limit_mb=1024,
        storm_major=1,
    )


def test_jmx_port_is_not_worker_port():
    argv = [
        element for element in storm2_worker_argv(tail=()) if element != "-Dworker.port=6702"
    ]

    process = classify(argv)

    assert process.role == "worker"
    assert process.port is None


@pytest.mark.parametrize("pid", [2388, 2389, 2402])
def test_multilang_children_not_storm(pid):
    assert classify(fixture_argv(pid)) is None


# Workers of two topologies on one slot port, from ps output split on spaces


def ps_argv(line: str) -> list[str]:
    return line.split()


def test_leftover_and_replacement_workers_share_port():
    old = classify(
        ps_argv(
            "java -server ... -Dstorm.id=ingest-5-1529000000"
            " -Dworker.id=4d67a6be-4c80-4622-96af-f94706d58553 -Dworker.port=6700 ..."
            " org.apache.storm.daemon.worker ingest-5-1529000000"
            " 7a1d0c55-2b3e-4f60-9d1e-3c4b5a697887 6700 4d67a6be-4c80-4622-96af-f94706d58553"
        )
    )
    new = classify(
        ps_argv(
            "java -server ... -Dstorm.id=ingest-6-1529050000"
            " -Dworker.id=e0c1d2b3-a4f5-4e67-8899-aabbccddeeff -Dworker.port=6700 ..."
            " org.apache.storm.daemon.worker ingest-6-1529050000"
            " 7a1d0c55-2b3e-4f60-9d1e-3c4b5a697887 6700 e0c1d2b3-a4f5-4e67-8899-aabbccddeeff"
        )
    )

    assert old.role == "worker"
    assert old.topology_id == "ingest-5-1529000000"
    assert old.worker_id == "4d67a6be-4c80-4622-96af-f94706d58553"
    assert old.port == 6700
    assert old.supervisor_id == "7a1d0c55-2b3e-4f60-9d1e-3c4b5a697887"
    assert new.topology_id == "ingest-6-1529050000"
    assert new.worker_id == "e0c1d2b3-a4f5-4e67-8899-aabbccddeeff"
    assert new.port == old.port


def test_worker_without_pid_file_and_replacement():
    old = classify(
        ps_argv(
            "java -server ... -Dstorm.id=TicketTopology-5-1463647641"
            " -Dworker.id=2eb07a90-a8b7-4a81-929c-93d6edb3c2ef -Dworker.port=6700 ..."
            " org.apache.storm.daemon.worker TicketTopology-5-1463647641"
            " 0274fa9c-c271-4a76-928e-28955db4ee34 6700 2eb07a90-a8b7-4a81-929c-93d6edb3c2ef"
        )
    )
    new = classify(
        ps_argv(
            "java -server ... -Dstorm.id=TicketTopology-6-1466000200"
            " -Dworker.id=5b6c7d8e-9f01-4a23-b456-789abcdef012 -Dworker.port=6700 ..."
            " org.apache.storm.daemon.worker TicketTopology-6-1466000200"
            " 0274fa9c-c271-4a76-928e-28955db4ee34 6700 5b6c7d8e-9f01-4a23-b456-789abcdef012"
        )
    )

    assert old.topology_id == "TicketTopology-5-1463647641"
    assert old.worker_id == "2eb07a90-a8b7-4a81-929c-93d6edb3c2ef"
    assert old.port == 6700
    assert old.supervisor_id == "0274fa9c-c271-4a76-928e-28955db4ee34"
    assert new.topology_id == "TicketTopology-6-1466000200"
    assert new.port == 6700
    assert parse_topology_id(new.topology_id).counter == 6


# Launch variations


def test_java_home_path():
    argv = storm2_worker_argv(java="/usr/lib/jvm/java-17-openjdk-amd64/bin/java")

    assert classify(argv) == EXPECTED_WORDCOUNT_WORKER


def test_exec_a_wrapper():
    argv = storm2_worker_argv(java="storm-worker-6702")

    assert classify(argv) == EXPECTED_WORDCOUNT_WORKER


def test_extra_script_element():
    argv = storm2_worker_argv()
    argv.insert(1, "/opt/storm-sim/fake_jvm.py")

    assert classify(argv) == EXPECTED_WORDCOUNT_WORKER


def test_argv_rewritten_into_one_string():
    joined = " ".join(storm2_worker_argv())

    assert classify([joined]) == EXPECTED_WORDCOUNT_WORKER
    assert classify([joined, "", ""]) == EXPECTED_WORDCOUNT_WORKER


def test_logwriter_in_one_string():
    joined = " ".join(fixture_argv(2310))

    process = classify([joined])

    assert process.role == "logwriter"
    assert process.topology_id == WORDCOUNT


def test_topology_id_with_special_characters():
    topology_id = 'we"ird\\top\nology \ufffd-3-1700000000'

    process = classify(storm2_worker_argv(topology_id=topology_id))

    assert process.topology_id == topology_id
    assert parse_topology_id(process.topology_id) == TopologyId(
        name='we"ird\\top\nology \ufffd', counter=3, launched=1700000000
    )


def test_positional_args_without_properties():
    argv = ["java", "-cp", "/opt/storm/lib/*", WORKER_2]
    argv += ["t-1-2", "sup-numa-0", "6628", "6799", "w"]

    process = classify(argv)

    assert process.topology_id == "t-1-2"
    assert process.supervisor_id == "sup"
    assert process.numa_zone == "0"
    assert process.supervisor_port == 6628
    assert process.port == 6799
    assert process.worker_id == "w"
    assert process.memory_limit_mb is None


def test_property_wins_over_positional():
    tail = ("other-9-1", SUPERVISOR_2, "6628", "6799", "other-worker")

    process = classify(storm2_worker_argv(tail=tail))

    assert process.topology_id == WORDCOUNT
    assert process.port == 6702
    assert process.worker_id == WORDCOUNT_WORKER


def test_last_property_wins():
    argv = storm2_worker_argv()
    argv.insert(3, "-Dworker.port=6710")
    argv.insert(-6, "-Dworker.port=6711")

    assert classify(argv).port == 6711


@pytest.mark.parametrize(
    "property_port, positional_port, expected",
    [
        ("abc", "6702", 6702),
        ("abc", "xyz", None),
        ("70000", "6702", 6702),
        ("0", "0", None),
        ("-5", "65536", None),
        ("", "6702", 6702),
        ("६७०२", "6703", 6703),
    ],
)
def test_invalid_port_values(property_port, positional_port, expected):
    argv = storm2_worker_argv(tail=(WORDCOUNT, SUPERVISOR_2, "6628", positional_port, "w"))
    argv[argv.index("-Dworker.port=6702")] = f"-Dworker.port={property_port}"

    assert classify(argv).port == expected


@pytest.mark.parametrize("value", ["1024.5", "0", "-1", "lots", ""])
def test_invalid_memory_limit(value):
    argv = storm2_worker_argv()
    argv[argv.index("-Dworker.memory_limit_mb=1024")] = f"-Dworker.memory_limit_mb={value}"

    assert classify(argv).memory_limit_mb is None


def test_truncated_worker_args():
    argv = storm2_worker_argv(tail=(WORDCOUNT, SUPERVISOR_2))
    properties_removed = [e for e in argv if not e.startswith(("-Dworker.", "-Dstorm.id"))]

    process = classify(argv)
    bare = classify(properties_removed)

    assert process.topology_id == WORDCOUNT
    assert process.port == 6702
    assert process.supervisor_id == SUPERVISOR_2
    assert process.supervisor_port is None
    assert bare.topology_id == WORDCOUNT
    assert bare.supervisor_id == SUPERVISOR_2
    assert bare.port is None
    assert bare.worker_id is None


def test_truncated_before_main_class():
    argv = storm2_worker_argv()

    assert classify(argv[: argv.index(WORKER_2)]) is None


def test_truncated_logwriter():
    argv = fixture_argv(2310)
    cut = argv[: argv.index("org.apache.storm.LogWriter") + 4]

    process = classify(cut)

    assert process.role == "logwriter"
    assert process.worker_id == WORDCOUNT_WORKER


@pytest.mark.parametrize(
    "argv",
    [
        [],
        [""],
        ["java", "-version"],
        ["grep", WORKER_2],
        ["pkill", "-f", WORKER_1],
        ["jcmd", WORKER_2, "Thread.print"],
        ["python3", "splitsentence.py"],
        ["java -server -Dstorm.id=t-1-2 com.example.Main"],
    ],
)
def test_not_storm(argv):
    assert classify(argv) is None


@pytest.mark.parametrize(
    "main_class, role, storm_major, tracked",
    [
        ("org.apache.storm.daemon.nimbus.Nimbus", "nimbus", 2, False),
        ("backtype.storm.daemon.nimbus", "nimbus", 0, False),
        ("org.apache.storm.daemon.supervisor", "supervisor", 1, True),
        ("backtype.storm.daemon.supervisor", "supervisor", 0, True),
        ("org.apache.storm.daemon.ui.UIServer", "other", 2, False),
        ("org.apache.storm.ui.core", "other", 1, False),
        ("org.apache.storm.daemon.logviewer.LogviewerServer", "other", 2, False),
        ("org.apache.storm.daemon.drpc.DRPCServer", "other", 2, False),
        ("org.apache.storm.daemon.drpc", "other", 1, False),
        ("org.apache.storm.pacemaker.Pacemaker", "other", 2, False),
        ("backtype.storm.LogWriter", "logwriter", 0, True),
    ],
)
def test_daemon_main_classes(main_class, role, storm_major, tracked):
    argv = ["java", "-server", "-Ddaemon.name=x", "-cp", "/opt/storm/lib/*", main_class]

    process = classify(argv)

    assert process.role == role
    assert process.main_class == main_class
    assert process.storm_major == storm_major
    assert process.tracked is tracked


def test_backtype_worker():
    argv = ["java", "-server", "-Dstorm.id=old-1-1400000000", "-cp", "x.jar"]
    argv += ["backtype.storm.daemon.worker", "old-1-1400000000", "sup-a", "6700", "wid-a"]

    process = classify(argv)

    assert process.role == "worker"
    assert process.storm_major == 0
    assert process.supervisor_id == "sup-a"
    assert process.port == 6700
    assert process.worker_id == "wid-a"
    assert process.supervisor_port is None


@pytest.mark.parametrize(
    "topology_id, expected",
    [
        ("TopServer-2-1519631402", TopologyId("TopServer", 2, 1519631402)),
        ("my topo-with-hyphens-12-1700000000", TopologyId("my topo-with-hyphens", 12, 1700000000)),
        ("a-1-2-3", TopologyId("a-1", 2, 3)),
        ("x--1-2", TopologyId("x-", 1, 2)),
        ("nohyphen", None),
        ("name-1", None),
        ("name-x-1", None),
        ("-1-2", None),
        ("name-1-2\n", None),
        ("name-1-2 ", None),
        ("", None),
    ],
)
def test_parse_topology_id(topology_id, expected):
    assert parse_topology_id(topology_id) == expected


def test_huge_digit_runs_are_invalid_not_fatal():
    digits = "9" * 5000
    argv = [
        "java", "-Dstorm.id=x-1-1", f"-Dworker.port={digits}", f"-Dworker.memory_limit_mb={digits}",
        "-cp", "x", "org.apache.storm.daemon.worker.Worker", f"x-{digits}-1", "sup", "6628", digits, "w",
    ]
    process = classify(argv)
    assert process is not None
    assert process.role == "worker"
    assert process.port is None
    assert process.memory_limit_mb is None
    assert parse_topology_id(f"x-{digits}-1") is None
