"""Command-line flags, their parsing and validation."""

from __future__ import annotations

import argparse
import os
import socket
import re
from dataclasses import dataclass

from exporter import __version__, logs

DEFAULT_PORT = 19715
SOURCES = ("tracefs", "netlink", "poll")
KUBERNETES_MODES = ("auto", "on", "off")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class Config:
    """Effective settings; each field is one flag."""

    listen_host: str = ""
    listen_port: int = DEFAULT_PORT
    telemetry_path: str = "/metrics"
    procfs: str = "/proc"
    tracefs: str = ""  # empty: /sys/kernel/tracing, mounted when missing
    kubernetes: str = "auto"
    kubeconfig: str = ""
    node_name: str = ""
    pod_selector: str = ""
    sources: tuple[str, ...] = ()  # empty: auto
    leftover_grace: float = 5.0
    poll_interval: float = 1.0
    # A full scan reconciles lost kernel events; 30 s keeps a 2,000-process node
    # at a fraction of a percent of one core (one scan takes about 70 ms there).
    scan_interval: float = 30.0
    # Each diagnosis round reads a few /proc files per worker process and the
    # socket tables of the network namespaces with leftovers.
    diagnostics_interval: float = 15.0
    topology_max: int = 200
    # A topology idle this long loses its series: a day keeps yesterday's
    # episodes queryable as counters while a node's series stay bounded.
    topology_retention: float = 86400.0
    log_level: str = "info"
    log_format: str = "logfmt"


def parse_duration(text: str) -> float:
    """Parse ``500ms``, ``5s``, ``2m``, ``1h30m`` into seconds."""
    text = text.strip()
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with a unit, such as 500ms, 5s, 2m or 1h30m"
        )
    return total


def parse_listen_address(text: str) -> tuple[str, int]:
    """Split ``host:port``, ``:port`` or ``[v6]:port``."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"invalid listen address {text!r}: use HOST:PORT or :PORT, such as :{DEFAULT_PORT}"
        )
    return host.strip("[]"), int(port)


def parse_sources(text: str) -> tuple[str, ...]:
    """Parse ``auto`` or a comma list of tracefs, netlink and poll."""
    if text.strip() == "auto":
        return ()
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in SOURCES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"invalid event source list {text!r}: use auto or a comma list of {', '.join(SOURCES)}"
        )
    return tuple(dict.fromkeys(names))


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use a whole number of 1 or more")
    return int(text)


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: it must be more than 0")
    return seconds


def _telemetry_path(text: str) -> str:
    if not text.startswith("/") or text in ("/", "/healthz", "/readyz"):
        raise argparse.ArgumentTypeError(
            f"invalid telemetry path {text!r}: use an absolute path other than /, /healthz and /readyz"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storm-termination-exporter",
        description="Export how Apache Storm workers on this node shut down, per topology. "
        "Run `storm-termination-exporter simulate --help` for the simulated supervisor.",
    )
    add = parser.add_argument
    add("--version", action="version", version=f"%(prog)s {__version__}")
    add("--web.listen-address", dest="listen", type=parse_listen_address, default=("", DEFAULT_PORT),
        metavar="HOST:PORT", help=f"address of the HTTP server (default :{DEFAULT_PORT}, all interfaces)")
    add("--web.telemetry-path", dest="telemetry_path", type=_telemetry_path, default="/metrics",
        help="path of the metrics endpoint (default /metrics)")
    add("--path.procfs", dest="procfs", default="/proc",
        help="procfs mount point; /host/proc in a DaemonSet (default /proc)")
    add("--path.tracefs", dest="tracefs", default="",
        help="tracefs mount point (default /sys/kernel/tracing, mounted there when missing)")
    add("--kubernetes", choices=KUBERNETES_MODES, default="auto",
        help="watch this node's pods: auto uses the API when a cluster is configured (default auto)")
    add("--kubernetes.kubeconfig", dest="kubeconfig", default=os.environ.get("KUBECONFIG", ""),
        help="kubeconfig file; empty uses the in-cluster service account (default $KUBECONFIG)")
    add("--kubernetes.node-name", dest="node_name", default=os.environ.get("NODE_NAME", ""),
        help="name of this node, for the pod watch's field selector (default $NODE_NAME, "
        "else the host name)")
    add("--kubernetes.pod-selector", dest="pod_selector", default="", metavar="SELECTOR",
        help="label selector narrowing the pod watch, applied by the API server (default none)")
    add("--events.source", dest="sources", type=parse_sources, default=(), metavar="SOURCES",
        help="auto, or a comma list of tracefs, netlink, poll (default auto: every one that works)")
    add("--leftover.grace", dest="leftover_grace", type=parse_duration, default=5.0, metavar="DURATION",
        help="how long a process of a worker's tree may outlive the worker before it counts "
        "as a leftover (default 5s)")
    add("--poll.interval", dest="poll_interval", type=_positive_duration, default=1.0, metavar="DURATION",
        help="/proc poll interval when the proc connector is not in use (default 1s)")
    add("--scan.interval", dest="scan_interval", type=_positive_duration, default=30.0, metavar="DURATION",
        help="interval of the full /proc scan that recovers lost events (default 30s)")
    add("--diagnostics.interval", dest="diagnostics_interval", type=_positive_duration, default=15.0,
        metavar="DURATION", help="interval of the diagnosis of live workers: SIGTERM dispositions, "
        "users, permissions, container inits and ports (default 15s)")
    add("--topology.max", dest="topology_max", type=_positive_int, default=200, metavar="N",
        help="topologies exported by name; later ones share topology=\"_other\" (default 200)")
    add("--topology.retention", dest="topology_retention", type=_positive_duration, default=86400.0,
        metavar="DURATION", help="how long the series of a topology with no live worker are kept (default 24h)")
    add("--log.level", dest="log_level", choices=logs.LEVELS, default="info",
        help="minimum level of log records (default info)")
    add("--log.format", dest="log_format", choices=logs.FORMATS, default="logfmt",
        help="log line format (default logfmt)")
    return parser


def parse_args(argv: list[str] | None = None) -> Config:
    """Parse flags into a Config; invalid flags exit 2 with a message naming them."""
    args = build_parser().parse_args(argv)
    host, port = args.listen
    return Config(
        listen_host=host,
        listen_port=port,
        telemetry_path=args.telemetry_path,
        procfs=args.procfs,
        tracefs=args.tracefs,
        kubernetes=args.kubernetes,
        kubeconfig=args.kubeconfig,
        node_name=args.node_name or socket.gethostname(),
        pod_selector=args.pod_selector,
        sources=args.sources,
        leftover_grace=args.leftover_grace,
        poll_interval=args.poll_interval,
        scan_interval=args.scan_interval,
        diagnostics_interval=args.diagnostics_interval,
        topology_max=args.topology_max,
        topology_retention=args.topology_retention,
        log_level=args.log_level,
        log_format=args.log_format,
    )
