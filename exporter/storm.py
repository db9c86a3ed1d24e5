"""Recognition of Apache Storm daemons and workers from their argv.

Only the Java main class and the -D system properties identify a Storm process.
The executable path, comm and argument positions vary with JAVA_HOME, childopts
and ``exec -a`` wrappers, so they are not used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

Role = Literal["supervisor", "logwriter", "worker", "nimbus", "other"]

TRACKED_ROLES: frozenset[str] = frozenset({"supervisor", "logwriter", "worker"})

NUMA_ID_SEPARATOR = "-numa-"


@dataclass(frozen=True, slots=True)
class _MainClass:
    role: Role
    storm_major: int | None  # None when the class exists in more than one major release


# Main classes as bin/storm.py (1.x and 2.x) and the supervisor's BasicContainer start
# them. backtype.storm.* is the package of the releases before 1.0, so 0 there. A 2.x
# supervisor picks the worker and LogWriter classes by the topology's Storm version.
# NOTE: classes set in supervisor.worker.version.main.map or
# supervisor.worker.version.logwriter.map are not recognised unless they are listed here.
MAIN_CLASSES: dict[str, _MainClass] = {
    "org.apache.storm.LogWriter": _MainClass("logwriter", None),
    "backtype.storm.LogWriter": _MainClass("logwriter", 0),
    "org.apache.storm.daemon.worker.Worker": _MainClass("worker", 2),
    "org.apache.storm.daemon.worker": _MainClass("worker", 1),
    "backtype.storm.daemon.worker": _MainClass("worker", 0),
    "org.apache.storm.daemon.supervisor.Supervisor": _MainClass("supervisor", None),
    "org.apache.storm.daemon.supervisor": _MainClass("supervisor", 1),
    "backtype.storm.daemon.supervisor": _MainClass("supervisor", 0),
    "org.apache.storm.daemon.nimbus.Nimbus": _MainClass("nimbus", 2),
    "org.apache.storm.daemon.nimbus": _MainClass("nimbus", 1),
    "backtype.storm.daemon.nimbus": _MainClass("nimbus", 0),
    "org.apache.storm.daemon.ui.UIServer": _MainClass("other", 2),
    "org.apache.storm.ui.core": _MainClass("other", 1),
    "backtype.storm.ui.core": _MainClass("other", 0),
    "org.apache.storm.daemon.logviewer.LogviewerServer": _MainClass("other", 2),
    "org.apache.storm.daemon.logviewer": _MainClass("other", 1),
    "backtype.storm.daemon.logviewer": _MainClass("other", 0),
    "org.apache.storm.daemon.drpc.DRPCServer": _MainClass("other", 2),
    "org.apache.storm.daemon.drpc": _MainClass("other", 1),
    "backtype.storm.daemon.drpc": _MainClass("other", 0),
    "org.apache.storm.pacemaker.Pacemaker": _MainClass("other", 2),
    "org.apache.storm.pacemaker.pacemaker": _MainClass("other", 1),
}

# Positional arguments after the worker main class. Storm 2 Worker.main requires
# exactly five. The Storm 1 worker, also run by 2.x supervisors for topologies built
# against Storm < 2.0.0, takes no supervisor port.
_STORM2_WORKER_ARGS = ("topology_id", "supervisor_id", "supervisor_port", "port", "worker_id")
_STORM1_WORKER_ARGS = ("topology_id", "supervisor_id", "port", "worker_id")

_CLASSPATH_OPTIONS = frozenset({"-cp", "-classpath", "--class-path"})

# Digit runs are bounded: Python refuses to convert strings of over 4,300 digits,
# and no counter, epoch, port or size in Storm needs more than 18.
_TOPOLOGY_ID = re.compile(r"(?P<name>.+)-(?P<counter>[0-9]{1,18})-(?P<launched>[0-9]{1,18})", re.DOTALL)
_DECIMAL = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True, slots=True)
class StormProcess:
    """A Storm JVM recognised from its argv. None marks a field that the argv does not contain."""

    role: Role
    main_class: str
    topology_id: str | None = None
    worker_id: str | None = None
    port: int | None = None  # the worker slot port, -Dworker.port
    supervisor_id: str | None = None  # without the NUMA suffix
    supervisor_port: int | None = None  # the supervisor's Thrift port, Storm 2 workers only
    numa_zone: str | None = None
    memory_limit_mb: int | None = None
    storm_major: int | None = None  # major release of the main class, 0 for backtype.storm

    @property
    def tracked(self) -> bool:
        """True for the roles the exporter tracks: supervisors, LogWriters and workers."""
        return self.role in TRACKED_ROLES


@dataclass(frozen=True, slots=True)
class TopologyId:
    """The parts of a topology id ``<name>-<counter>-<launch time>``."""

    name: str
    counter: int  # Nimbus submission counter
    launched: int  # submission time, Unix epoch seconds


def parse_topology_id(topology_id: str) -> TopologyId | None:
    """Split a topology id from the right, because the name may contain hyphens and spaces."""
    match = _TOPOLOGY_ID.fullmatch(topology_id)
    if match is None:
        return None
    return TopologyId(match["name"], int(match["counter"]), int(match["launched"]))


def classify(argv: Sequence[str]) -> StormProcess | None:
    """Recognise a Storm process from its argv, or return None for any other process.

    The role comes from the first element that equals a known main class. This
    matters for the LogWriter, because its argv continues with the whole worker
    command, including the worker main class. Some JVM option (-D or a classpath)
    must come before the main class, so that ``grep``, ``pkill -f`` or ``jcmd``
    with a class name as argument do not count. An argv rewritten into one
    space-separated string is split on whitespace first, which cuts any value
    that contained a space.
    """
    index = _find_main_class(argv)
    if index is None and _is_single_string(argv):
        argv = "".join(argv).split()
        index = _find_main_class(argv)
    if index is None:
        return None
    main_class = MAIN_CLASSES[argv[index]]
    properties = _system_properties(argv[:index])
    positional: dict[str, str] = {}
    if main_class.role == "worker":
        names = _STORM2_WORKER_ARGS if main_class.storm_major == 2 else _STORM1_WORKER_ARGS
        positional = dict(zip(names, argv[index + 1 :]))
    return _build(argv[index], main_class, properties, positional)


def _find_main_class(argv: Sequence[str]) -> int | None:
    for index, element in enumerate(argv):
        if element in MAIN_CLASSES:
            return index if _has_jvm_option(argv[:index]) else None
    return None


def _has_jvm_option(elements: Sequence[str]) -> bool:
    return any(element.startswith("-D") or element in _CLASSPATH_OPTIONS for element in elements)


def _is_single_string(argv: Sequence[str]) -> bool:
    non_empty = [element for element in argv if element]
    return len(non_empty) == 1 and len(non_empty[0].split()) > 1


def _system_properties(options: Sequence[str]) -> dict[str, str]:
    """Return the -Dkey=value options. A repeated key keeps its last value, as in the JVM."""
    properties = {}
    for option in options:
        if option.startswith("-D"):
            key, separator, value = option[2:].partition("=")
            if separator:
                properties[key] = value
    return properties


def _build(
    class_name: str,
    main_class: _MainClass,
    properties: dict[str, str],
    positional: dict[str, str],
) -> StormProcess:
    # A -D value wins over the positional one, and an invalid value counts as missing.
    supervisor_id, numa_zone = _split_numa(positional.get("supervisor_id"))
    return StormProcess(
        role=main_class.role,
        main_class=class_name,
        topology_id=_text(properties.get("storm.id")) or _text(positional.get("topology_id")),
        worker_id=_text(properties.get("worker.id")) or _text(positional.get("worker_id")),
        port=_port(properties.get("worker.port")) or _port(positional.get("port")),
        supervisor_id=supervisor_id,
        supervisor_port=_port(positional.get("supervisor_port")),
        numa_zone=numa_zone,
        memory_limit_mb=_positive_integer(properties.get("worker.memory_limit_mb")),
        storm_major=main_class.storm_major,
    )


def _split_numa(value: str | None) -> tuple[str | None, str | None]:
    """Split ``<supervisor-id>-numa-<zone>``, the id a NUMA-pinned worker receives."""
    if not value:
        return None, None
    supervisor_id, separator, zone = value.rpartition(NUMA_ID_SEPARATOR)
    if separator and supervisor_id and zone:
        return supervisor_id, zone
    return value, None


def _text(value: str | None) -> str | None:
    return value or None


def _positive_integer(value: str | None) -> int | None:
    if value is None or not _DECIMAL.fullmatch(value):
        return None
    number = int(value)
    return number if number > 0 else None


def _port(value: str | None) -> int | None:
    number = _positive_integer(value)
    return number if number is not None and number <= 65535 else None
