"""Storm 2.x command lines, built as the supervisor's BasicContainer builds them."""

from __future__ import annotations

LOCAL = "/var/storm"
CLASSPATH = "/opt/storm/lib-worker/*:/opt/storm/extlib/*:/opt/storm/conf"


def common_properties(topology: str, worker_id: str, port: int) -> list[str]:
    return [
        "-Dlogging.sensitivity=S3",
        "-Dlogfile.name=worker.log",
        "-Dstorm.home=/opt/storm",
        "-Dworkers.artifacts=/opt/storm/logs/workers-artifacts",
        f"-Dstorm.id={topology}",
        f"-Dworker.id={worker_id}",
        f"-Dworker.port={port}",
        "-Dstorm.log.dir=/opt/storm/logs",
        f"-Dstorm.local.dir={LOCAL}",
    ]


def worker_argv(topology: str, worker_id: str, port: int, supervisor_id: str = "sup-1") -> list[str]:
    return [
        "/usr/lib/jvm/java-17/bin/java",
        "-server",
        *common_properties(topology, worker_id, port),
        "-Xmx768m",
        f"-Djava.io.tmpdir={LOCAL}/workers/{worker_id}/tmp",
        "-cp",
        CLASSPATH,
        "org.apache.storm.daemon.worker.Worker",
        topology,
        supervisor_id,
        "6628",
        str(port),
        worker_id,
    ]


def logwriter_argv(topology: str, worker_id: str, port: int) -> list[str]:
    return [
        "/usr/lib/jvm/java-17/bin/java",
        "-cp",
        CLASSPATH,
        *common_properties(topology, worker_id, port),
        "org.apache.storm.LogWriter",
        *worker_argv(topology, worker_id, port),
    ]


def supervisor_argv() -> list[str]:
    return [
        "/usr/lib/jvm/java-17/bin/java",
        "-server",
        "-Ddaemon.name=supervisor",
        "-cp",
        "/opt/storm/*:/opt/storm/lib/*",
        "org.apache.storm.daemon.supervisor.Supervisor",
    ]
