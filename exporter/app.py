"""The running exporter: sources on threads, the tracker, the HTTP server, shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from datetime import datetime

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from exporter import __version__
from exporter.collector import StormCollector
from exporter.config import Config
from exporter.diagmetrics import DiagnosticsCollector
from exporter.diagnostics import Diagnoser, take_snapshot
from exporter.diagreport import to_json
from exporter.events import Event, ScanCompleted
from exporter.foreground import ScrapeGate
from exporter.http import build_app
from exporter.kube import KubernetesUnavailable, kubernetes_mode
from exporter.kubernetes import PodWatcher
from exporter.procfs import ProcFS
from exporter.sources.base import Source, SourceUnavailable
from exporter.sources.netlink import NetlinkSource
from exporter.sources.poll import PollSource
from exporter.sources.tracefs import TracefsSource
from exporter.tracker import Tracker

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.1

# A signal this soon after the first is the same stop request, not an order to
# exit at once.
DUPLICATE_SIGNAL_SECONDS = 0.5


class StartupError(Exception):
    """The exporter cannot start; the message names the setting to change."""


class Exporter:
    """Everything one exporter process runs, wired together."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.procfs = ProcFS(config.procfs)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.tracker = Tracker(
            leftover_grace=config.leftover_grace,
            topology_max=config.topology_max,
            topology_retention=config.topology_retention,
            lookup=self.procfs.read_info,
            read_cwd=self.procfs.read_cwd,
            read_cgroup=self.procfs.read_cgroup,
            host_pidns=self.procfs.read_pidns(1),
        )
        self.registry = CollectorRegistry()
        self.collector = StormCollector(self.tracker, self.lock)
        self.registry.register(self.collector)
        self.scrapes = ScrapeGate()
        self.diagnoser = Diagnoser(self.procfs, give_way=self.scrapes.give_way)
        self.diagnostics = DiagnosticsCollector()
        self.registry.register(self.diagnostics)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.scan_duration = Histogram(
            "storm_termination_exporter_scan_duration_seconds",
            "Duration of a full /proc scan.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.sources: list[Source] = []
        self.poll: PollSource | None = None
        self.threads: list[threading.Thread] = []
        self.kubernetes: PodWatcher | None = None

    # Events from source threads.

    def emit(self, event: Event) -> None:
        """Apply one event; a failure is logged and counted, and never stops the source."""
        with self.lock:
            try:
                self.tracker.handle(event)
            except Exception:
                self.collector.event_errors += 1
                logger.exception(
                    "Applying %s failed pid=%s", type(event).__name__, getattr(event, "pid", "")
                )
                return
        if isinstance(event, ScanCompleted):
            self.ready.set()

    def tracked(self) -> list[tuple[int, int, bool]]:
        with self.lock:
            return self.tracker.tracked_processes()

    # Sources.

    def open_sources(self) -> None:
        """Open the requested sources, or in auto mode every one that works."""
        requested = self.config.sources or ("tracefs", "netlink")
        explicit = bool(self.config.sources)
        unavailable: dict[str, str] = {}
        for name in ("tracefs", "netlink"):
            if name not in requested:
                continue
            source = self._make(name)
            try:
                source.open()
            except SourceUnavailable as error:
                if explicit:
                    raise StartupError(f"event source {name} is unavailable: {error}") from error
                unavailable[name] = str(error)
                continue
            self.sources.append(source)
        active = [source.name for source in self.sources]
        self.poll = PollSource(
            self.procfs,
            interval=self.config.poll_interval,
            scan_interval=self.config.scan_interval,
            quick="netlink" not in active,
            signal_threads="tracefs" not in active,
            tracked=self.tracked,
            on_scan=self.scan_duration.observe,
            on_error=self._count_poll_error,
            give_way=self.scrapes.give_way,
        )
        self._set_capabilities()
        self._log_sources(unavailable)

    def _count_poll_error(self) -> None:
        self.collector.source_errors["poll"] += 1

    def _make(self, name: str) -> Source:
        if name == "tracefs":
            return TracefsSource(tracing_root=self.config.tracefs or None)
        return NetlinkSource(read_info=self.procfs.read_info, read_fork_info=self.procfs.read_fork_info)

    def active_sources(self) -> list[str]:
        names = [source.name for source in self.sources]
        if self.poll is not None and self.poll.quick:
            names.append("poll")
        return names

    def _set_capabilities(self) -> None:
        names = self.active_sources()
        with self.lock:
            self.tracker.signals_visible = "tracefs" in names
            self.tracker.exits_known = "netlink" in names
        self.collector.sources = names

    def _log_sources(self, unavailable: dict[str, str]) -> None:
        active = self.active_sources()
        skipped = "; ".join(f"{name}: {reason}" for name, reason in unavailable.items())
        logger.info(
            "Event sources active=%s full_scan_every=%.0fs%s",
            ",".join(active),
            self.config.scan_interval,
            f" unavailable=({skipped})" if skipped else "",
        )

    def start_sources(self) -> None:
        for source in [*self.sources, self.poll]:
            thread = threading.Thread(
                target=self._run_source, args=(source,), name=f"source-{source.name}", daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def start_diagnostics(self) -> None:
        thread = threading.Thread(target=self._run_diagnostics, name="diagnostics", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _run_diagnostics(self) -> None:
        """Diagnose the live workers every --diagnostics.interval, from the first scan on."""
        while not self.ready.wait(0.1):
            if self.stop.is_set():
                return
        while not self.stop.is_set():
            self.diagnose_once()
            self.stop.wait(self.config.diagnostics_interval)

    def diagnose_once(self) -> None:
        """Replace the exported diagnosis; a failure keeps the previous one and is logged."""
        try:
            self.scrapes.give_way()
            with self.lock:
                snapshot = take_snapshot(self.tracker)
            self.diagnostics.latest = self.diagnoser.diagnose(snapshot)
        except Exception:
            logger.exception("Diagnosing the workers failed; the previous diagnosis stays exported")

    def debug_workers(self) -> dict:
        return to_json(self.diagnostics.latest, time.monotonic(), self.diagnostics.resolve_pod)

    def _run_source(self, source: Source) -> None:
        try:
            source.run(self.emit, self.stop)
        except Exception:
            if self.stop.is_set():
                return
            logger.exception("Event source %s failed; falling back", source.name)
            self.collector.source_errors[source.name] += 1
            self._fall_back(source)

    def _fall_back(self, failed: Source) -> None:
        """Drop a failed source; without the proc connector, polling takes over exits."""
        try:
            failed.close()
        except OSError as error:
            logger.warning("Closing failed source %s: %s", failed.name, error)
        if failed in self.sources:
            self.sources.remove(failed)
        if failed is self.poll:
            logger.error("The /proc poll source failed; metrics stop updating until restart")
            return
        if failed.name == "netlink" and self.poll is not None:
            self.poll.quick = True
        if failed.name == "tracefs" and self.poll is not None:
            self.poll.signal_threads = True
        self._set_capabilities()
        logger.info("Event sources now active=%s", ",".join(self.active_sources()))

    def close_sources(self) -> None:
        for thread in self.threads:
            thread.join(timeout=0.5)
        for source in [*self.sources, self.poll]:
            if source is None:
                continue
            try:
                source.close()
            except OSError as error:
                logger.warning("Closing source %s failed: %s", source.name, error)

    def start_kubernetes(self) -> None:
        """Start the pod watch, export its metrics and name workers' pods from it."""
        watcher = PodWatcher(self.config, self._pod_terminating, self.tracker.container_exits)
        try:
            watcher.start()
        except Exception as error:  # the client raises its own types for bad configs
            raise StartupError(f"cannot start the pod watch: {error}; check --kubernetes.kubeconfig") from error
        self.kubernetes = watcher
        self.registry.register(watcher)
        self.collector.resolve_pod = watcher.resolve
        self.diagnostics.resolve_pod = watcher.resolve
        self.diagnoser.pre_stop = watcher.has_pre_stop

    def _pod_terminating(self, pod_uid: str, start: datetime) -> None:
        """Make a pod's termination start the request of the workers running in it."""
        monotonic = start.timestamp() - time.time() + time.monotonic()
        with self.lock:
            self.tracker.request_pod_termination(pod_uid, monotonic)

    def is_ready(self) -> bool:
        """Ready after the first full scan and, with the pod watch on, the first pod list."""
        if not self.ready.is_set():
            return False
        return self.kubernetes is None or self.kubernetes.listed.is_set()

    # Main loop.

    async def serve(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        first_signal: float | None = None

        def on_signal(signum: int) -> None:
            nonlocal first_signal
            name = signal.Signals(signum).name
            now = time.monotonic()
            if first_signal is None:
                first_signal = now
                logger.info("Received %s; stopping", name)
                stopping.set()
            elif now - first_signal < DUPLICATE_SIGNAL_SECONDS:
                # `timeout` and process managers signal the process and then its
                # group, so the same request often arrives twice.
                logger.debug("Received %s again while stopping; ignored", name)
            else:
                logger.warning("Second %s while stopping; exiting at once with status 1", name)
                os._exit(1)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, on_signal, signum)

        runner = await self._start_http()
        try:
            try:
                mode = kubernetes_mode(self.config)
            except KubernetesUnavailable as error:
                raise StartupError(str(error)) from error
            logger.info("Kubernetes pod watch mode=%s", mode)
            self.open_sources()
            self.start_sources()
            self.start_diagnostics()
            if mode != "off":
                self.start_kubernetes()
            frozen = False
            while not stopping.is_set():
                with self.lock:
                    self.tracker.tick()
                if not frozen and self.ready.is_set():
                    frozen = True
                    freeze_long_lived_objects()
                try:
                    await asyncio.wait_for(stopping.wait(), TICK_SECONDS)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.stop.set()
            if self.kubernetes is not None:
                await loop.run_in_executor(None, self.kubernetes.stop)
            await loop.run_in_executor(None, self.close_sources)
            await runner.cleanup()
            logger.info("Stopped")
        return 0

    async def _start_http(self) -> web.AppRunner:
        app = build_app(
            registry=self.registry,
            telemetry_path=self.config.telemetry_path,
            ready=self.is_ready,
            describe_sources=lambda: ", ".join(self.active_sources()) or "none yet",
            version=__version__,
            debug_workers=self.debug_workers,
            scraping=self.scrapes.scraping,
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host = self.config.listen_host or None
        site = web.TCPSite(runner, host, self.config.listen_port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            address = f"{self.config.listen_host}:{self.config.listen_port}"
            raise StartupError(
                f"cannot listen on {address}: {error.strerror or error}; "
                "check the host and port given with --web.listen-address"
            ) from error
        logger.info(
            "Listening address=%s:%d telemetry_path=%s",
            self.config.listen_host or "*", self.config.listen_port, self.config.telemetry_path,
        )
        return runner


def freeze_long_lived_objects() -> None:
    """Exclude the objects alive after start-up from later garbage collections.

    Imported modules (the kubernetes client among them) and the process table of
    the first full scan live as long as the exporter. Without this, each full
    collection traverses them again: with 800 workers such a collection took 30 to
    70 ms on the VM of docs/benchmarks.md, and a scrape that ran into one was
    delayed by as much.
    """
    gc.collect()
    gc.freeze()
    logger.debug("Froze %d objects alive after start-up", gc.get_freeze_count())


# A source thread waiting for the GIL gets it after at most this long. The
# netlink reader must read a `kill` command's argv within about a millisecond.
GIL_SWITCH_SECONDS = 0.0005


def run(config: Config) -> int:
    """Start the exporter with ``config`` and block until it stops."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    disable_created_metrics()  # no *_created series next to the exporter's own histogram
    logger.info(
        "Starting storm-termination-exporter version=%s pid=%d config=%s",
        __version__, os.getpid(), _describe(config),
    )
    try:
        return asyncio.run(Exporter(config).serve())
    except StartupError as error:
        logger.error("%s", error)
        return 1


def _describe(config: Config) -> str:
    fields = asdict(config)
    fields["kubeconfig"] = "set" if fields["kubeconfig"] else ""
    return " ".join(f"{key}={value!r}" for key, value in fields.items())
