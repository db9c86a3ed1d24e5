"""Prometheus recording and alerting rules for storm-termination-exporter.

This module is the source of the committed rule files. ``python -m alerts.rules``
writes alerts/storm-termination-exporter.rules.yml (a plain rule file) and
deploy/base/prometheusrule.yaml (the same groups as a Prometheus Operator
PrometheusRule). Every threshold, ``for`` and range window is a field of Config.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
RULES_PATH = REPO / "alerts" / "storm-termination-exporter.rules.yml"
PROMETHEUS_RULE_PATH = REPO / "deploy" / "base" / "prometheusrule.yaml"

# Recording rule names. The dashboards use them, so they do not change with Config.
SHUTDOWN_BUCKET_RATE = "node_topology:storm_worker_shutdown_duration_seconds_bucket:rate30m"
SHUTDOWN_QUANTILE = "node_topology_quantile:storm_worker_shutdown_duration_seconds:rate30m"
GRACE_PERIOD_MAX = "node_topology:storm_worker_grace_period_seconds:max"
ESCALATIONS_INCREASE = "node_topology:storm_worker_sigkill_escalations:increase1h"
REQUESTS_INCREASE = "node_topology:storm_worker_termination_requests:increase1h"
SHUTDOWN_QUANTILES = ("0.5", "0.95", "0.99")


@dataclass(frozen=True)
class Config:
    """Job selector, label names and every threshold, ``for`` and range window of the rules.

    Durations are Prometheus duration strings. Fields ending in ``_for`` are
    alert ``for`` durations and fields ending in ``_window`` are range-vector
    windows. Config.fast() relies on that naming.
    """

    # Matcher that selects the exporter's series. It is also the `up` selector of
    # StormTerminationExporterDown, so it must match the scrape job's target labels.
    job_selector: str = 'job="storm-termination-exporter"'
    # Target label with the Kubernetes node name. A ServiceMonitor or PodMonitor
    # relabels it from __meta_kubernetes_pod_node_name.
    node_label: str = "node"
    # Page with one "## <AlertName>" section per alert. Each alert links to its anchor.
    runbook_url_base: str = (
        "https://github.com/storm-termination-exporter/storm-termination-exporter/blob/main/docs/runbooks.md"
    )
    # Seconds, Storm's supervisor.worker.shutdown.sleep.secs (default 3): the time a
    # worker gets between the supervisor's SIGTERM and its SIGKILL.
    supervisor_kill_wait_seconds: float = 3.0

    # Recording rules. NOTE: the rule names keep "rate30m" and "increase1h" even
    # when these windows are changed, because the dashboards query those names.
    # Window of the shutdown-duration rates and quantiles: long enough to hold
    # several shutdowns of a topology, short enough to show a change within the hour.
    shutdown_quantile_window: str = "30m"
    # Window of the escalation and termination-request counts per topology.
    escalation_ratio_window: str = "1h"

    # StormWorkerSigkillEscalation. One escalation is already worth a look, so the
    # alert fires at once (for 0m), and the window keeps it firing for 15 minutes
    # so that Alertmanager can group and send it.
    sigkill_escalation_window: str = "15m"
    sigkill_escalation_for: str = "0m"
    # StormWorkerSigkillEscalationsFrequent: the share of requested terminations in
    # escalation_ratio_window that ended by SIGKILL. A quarter means Storm's kill
    # wait or the pod grace is routinely too short, not one stuck worker.
    sigkill_escalations_frequent_ratio: float = 0.25
    # At least this many requested terminations in the window, so that one SIGKILL
    # among two or three terminations does not page.
    sigkill_escalations_frequent_min_terminations: int = 4
    # Holds the alert through a few evaluations, because the ratio jumps whenever
    # a termination enters or leaves the window.
    sigkill_escalations_frequent_for: str = "5m"
    # StormWorkerShutdownSlow: fraction of the time before SIGKILL (the supervisor's
    # kill wait, or the pods' grace period when shorter) that the p99 shutdown time may use.
    # At 0.8 the workers still finish, but a little more delay ends in SIGKILL.
    shutdown_slow_grace_fraction: float = 0.8
    # The p99 already spans shutdown_quantile_window; 10 minutes more rules out a
    # single slow shutdown in a topology that rarely stops workers.
    shutdown_slow_for: str = "10m"
    # StormWorkerTerminationStuck: seconds a requested termination may stay unfinished.
    # Storm's supervisor sends SIGKILL after 3 s and Kubernetes after the grace
    # period (30 s by default), so 5 minutes means the kill itself failed.
    termination_stuck_seconds: float = 300.0
    # The pending gauge already measures the age, so this only needs to cover
    # a worker that exits right at the limit.
    termination_stuck_for: str = "1m"
    # StormWorkerLeftoverProcesses. A multilang child exits on its next read of
    # stdin after the worker died, so leftovers that survive 10 minutes are leaked.
    leftover_processes_for: str = "10m"
    # StormWorkerCrashing: worker exits of outcome crashed, with no termination
    # request or after one with an error status such as 1.
    crashing_window: str = "30m"
    # Three crashes in the window is a restart loop rather than one failure.
    crashing_min_exits: int = 3
    # The count over the window is the evidence, so the alert fires at once.
    crashing_for: str = "0m"

    # StormPodSigkillEscalation: containers killed at the end of their pod's grace.
    # Like StormWorkerSigkillEscalation, one is a finding and the window keeps it firing.
    pod_sigkill_escalation_window: str = "15m"
    pod_sigkill_escalation_for: str = "0m"
    # StormPodTerminationOverdue: seconds a pod may stay past its deletionTimestamp.
    # At the deadline the runtime SIGKILLs the containers and the kubelet deletes
    # the pod within seconds, so 5 minutes past it means the termination is stuck.
    pod_termination_overdue_seconds: float = 300.0
    # The overdue gauge already measures the age, as for termination_stuck_for.
    pod_termination_overdue_for: str = "1m"

    # StormTerminationExporterDown. Long enough for an exporter restart and the
    # image pull on a new node.
    exporter_down_for: str = "5m"
    # PromQL vector with one series per node that must run the exporter, labelled
    # with node_label. kube-state-metrics' kube_node_info has a `node` label. An
    # empty string drops the check for nodes without an exporter target.
    expected_nodes: str = "kube_node_info"
    # StormTerminationExporterDegraded: only polling runs. The exporter does not
    # return to a kernel source that failed, so this state lasts until a restart.
    # 10 minutes skips exporters that are being replaced.
    exporter_degraded_for: str = "10m"
    # StormTerminationExporterEventsLost: a burst of lost kernel events is repaired
    # by the next full scan. Losses in every 10-minute window for 15 minutes mean
    # the node produces events faster than the exporter reads them.
    events_lost_window: str = "10m"
    events_lost_for: str = "15m"
    # StormTerminationExporterKubernetesWatchDown. The pod watch retries with a
    # back-off capped at 30 s, so 5 minutes is several failed retries.
    kubernetes_watch_down_for: str = "5m"
    # StormTerminationExporterTopologyOverflow: an hour keeps the info alert visible.
    # It fires at once because each overflow is a lasting labelling decision.
    topology_overflow_window: str = "1h"
    topology_overflow_for: str = "0m"

    # Diagnostics. The gauges describe live processes, which pass through other
    # states while they start (a JVM before it installs its handlers, a shell
    # before it execs), so each gauge alert waits for a steady state.
    # StormWorkerIgnoresSigterm: `default` is a JVM started with -Xrs, which dies
    # at SIGTERM without running Storm's shutdown hooks.
    ignores_sigterm_dispositions: tuple[str, ...] = ("ignored", "blocked", "default")
    ignores_sigterm_for: str = "10m"
    # StormContainerDropsSigterm: an entrypoint shell may run setup steps before it
    # execs the program.
    container_drops_sigterm_for: str = "10m"
    # StormSupervisorCannotSignalWorker and StormWorkerUserUnresolvable: steady
    # properties of the workers' UIDs, so 10 minutes loses nothing.
    cannot_signal_worker_for: str = "10m"
    user_unresolvable_for: str = "10m"
    # StormWorkerKillFailures: one failed kill of a live tracked process is a finding.
    kill_failures_window: str = "15m"
    kill_failures_for: str = "0m"
    # StormWorkerPortConflict. Storm relaunches a slot only after its old worker
    # is gone, so a conflict lasting 5 minutes is not a hand-over.
    port_conflict_for: str = "5m"
    # StormWorkerPodStopUnsafe: a property of how the supervisor pod starts its
    # workers, so 30 minutes loses nothing. Severity info, because it harms only
    # at a pod deletion, where the escalation alerts report the damage.
    pod_stop_unsafe_for: str = "30m"

    def fast(self) -> "Config":
        """Return a copy for end-to-end tests: every ``for`` at most 10s, every window at most 1m.

        The age thresholds of StormWorkerTerminationStuck and
        StormPodTerminationOverdue drop to 10 seconds as well, so that a test can
        hold a termination past them. Never ship these rules.
        """
        changes: dict[str, object] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_for"):
                changes[field.name] = _shorter(value, "10s")
            elif field.name.endswith("_window"):
                changes[field.name] = _shorter(value, "1m")
        changes["termination_stuck_seconds"] = min(self.termination_stuck_seconds, 10.0)
        changes["pod_termination_overdue_seconds"] = min(self.pod_termination_overdue_seconds, 10.0)
        return dataclasses.replace(self, **changes)


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def duration_seconds(duration: str) -> float:
    """Convert a Prometheus duration such as ``1h30m`` to seconds, raising ValueError if invalid."""
    parts = _DURATION_PART.findall(duration)
    if not parts or "".join(number + unit for number, unit in parts) != duration:
        raise ValueError(f"invalid Prometheus duration {duration!r}: expected e.g. 30s, 15m or 1h30m")
    return sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts)


def _shorter(duration: str, limit: str) -> str:
    return duration if duration_seconds(duration) <= duration_seconds(limit) else limit


# Expression helpers.


def _select(config: Config, metric: str, *matchers: str) -> str:
    """Return ``metric{job selector, matchers}``."""
    return metric + "{" + ", ".join((config.job_selector, *matchers)) + "}"


def _by(config: Config, *labels: str) -> str:
    """Return the ``by`` clause that keeps the node label and ``labels``."""
    return "by (" + ", ".join((config.node_label, *labels)) + ")"


def _on(config: Config, *labels: str) -> str:
    return "on (" + ", ".join((config.node_label, *labels)) + ")"


def _expr(text: str) -> str:
    """Strip the common indentation of a multi-line expression and its outer blank lines."""
    return textwrap.dedent(text).strip("\n")


# Recording rules.


def recording_rules(config: Config) -> list[dict]:
    """Return the recording rules whose names the dashboards and alerts use."""
    return [
        *_shutdown_duration_rules(config),
        _grace_period_rule(config),
        *_escalation_count_rules(config),
    ]


def _shutdown_duration_rules(config: Config) -> list[dict]:
    buckets = _select(config, "storm_worker_shutdown_duration_seconds_bucket")
    rules = [
        {
            "record": SHUTDOWN_BUCKET_RATE,
            "expr": f"sum {_by(config, 'topology', 'le')} "
            f"(rate({buckets}[{config.shutdown_quantile_window}]))",
        },
    ]
    for quantile in SHUTDOWN_QUANTILES:
        # Only topologies with at least one shutdown in the window get a quantile,
        # because histogram_quantile of all-zero buckets is NaN.
        expr = f"""
            histogram_quantile(
              {quantile},
              {SHUTDOWN_BUCKET_RATE}
              and {_on(config, 'topology')}
              ({SHUTDOWN_BUCKET_RATE}{{le="+Inf"}} > 0)
            )
            """
        rules.append({"record": SHUTDOWN_QUANTILE, "expr": _expr(expr), "labels": {"quantile": quantile}})
    return rules


def _grace_period_rule(config: Config) -> dict:
    # storm_worker_info carries the workload label of the worker's pod, and
    # storm_pod_grace_period_seconds has one series per workload of an exporter,
    # so the join is many-to-one on the exporter (node, instance) and the workload.
    info = _select(config, "storm_worker_info", 'workload!=""')
    grace = _select(config, "storm_pod_grace_period_seconds")
    expr = f"""
        max {_by(config, 'topology')} (
          {info}
          * {_on(config, 'instance', 'namespace', 'workload')} group_left ()
          {grace}
        )
        """
    return {"record": GRACE_PERIOD_MAX, "expr": _expr(expr)}


def _escalation_count_rules(config: Config) -> list[dict]:
    window = config.escalation_ratio_window
    escalations = _select(config, "storm_worker_sigkill_escalations_total")
    requests = _select(config, "storm_worker_termination_requests_total")
    return [
        {
            "record": ESCALATIONS_INCREASE,
            "expr": f"sum {_by(config, 'topology')} (increase({escalations}[{window}]))",
        },
        {
            "record": REQUESTS_INCREASE,
            "expr": f"sum {_by(config, 'topology')} (increase({requests}[{window}]))",
        },
    ]


# Alert helpers.


def _alert(
    config: Config, name: str, expr: str, for_: str, severity: str, summary: str, description: str
) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{config.runbook_url_base}#{name.lower()}",
        },
    }


def _label(name: str) -> str:
    """Return the alert template that expands to the value of label ``name``."""
    return "{{ $labels." + name + " }}"


def _node(config: Config) -> str:
    return _label(config.node_label)


def _count() -> str:
    """Return the template of the alert value as a whole number, for counts from increase().

    increase() extrapolates to the window's edges, so its counts are estimates
    with fractions.
    """
    return '{{ printf "%.0f" $value }}'


def _query_value(config: Config, metric: str, *labels: str) -> str:
    """Return ``{{ with <query> }}``, querying ``metric`` for the alert's node and ``labels``.

    The caller writes the rest: inside the block ``.`` is the query result
    (``. | first | value`` is its value), and ``{{ else }}`` covers an empty
    result, before ``{{ end }}``. printf's %q quoting follows Go's escapes, as
    PromQL string literals do, so label values with quotes stay intact.
    """
    names = (config.node_label, *labels)
    matchers = ", ".join(f"{name}=%q" for name in names)
    arguments = " ".join(f"$labels.{name}" for name in names)
    return f'{{{{ with printf "{metric}{{{matchers}}}" {arguments} | query }}}}'


# Worker alerts: storm_worker_* series, by node and topology.


def worker_alerts(config: Config) -> list[dict]:
    """Return the alerts about worker terminations, shutdown times and leftovers."""
    return [
        _sigkill_escalation(config),
        _sigkill_escalations_frequent(config),
        _shutdown_slow(config),
        _termination_stuck(config),
        _leftover_processes(config),
        _crashing(config),
    ]


def _sigkill_escalation(config: Config) -> dict:
    # Counts only requested terminations, so an unrequested SIGKILL (an OOM kill,
    # exits{outcome="sigkill"} without a request) does not fire it.
    escalations = _select(config, "storm_worker_sigkill_escalations_total")
    window = config.sigkill_escalation_window
    return _alert(
        config,
        "StormWorkerSigkillEscalation",
        _expr(
            f"""
            sum {_by(config, 'topology')} (
              increase({escalations}[{window}])
            ) > 0
            """
        ),
        config.sigkill_escalation_for,
        "warning",
        "Storm worker terminations ended by SIGKILL.",
        f"{_count()} of the requested terminations of workers of topology "
        f"{_label('topology')} on node {_node(config)} in the last {window} ended by "
        "SIGKILL: the workers were still running when the supervisor's kill wait or "
        "the pod's grace period ran out.",
    )


def _sigkill_escalations_frequent(config: Config) -> dict:
    ratio = config.sigkill_escalations_frequent_ratio
    minimum = config.sigkill_escalations_frequent_min_terminations
    requests = _query_value(config, REQUESTS_INCREASE, "topology")
    return _alert(
        config,
        "StormWorkerSigkillEscalationsFrequent",
        _expr(
            f"""
            (
              {ESCALATIONS_INCREASE}
              / {REQUESTS_INCREASE}
            ) > {ratio:g}
            and
            {REQUESTS_INCREASE} >= {minimum}
            """
        ),
        config.sigkill_escalations_frequent_for,
        "critical",
        "Many Storm worker terminations end by SIGKILL.",
        f"{{{{ $value | humanizePercentage }}}} of the "
        f"{requests}{{{{ . | first | value | printf \"%.0f\" }}}} {{{{ end }}}}"
        f"requested terminations of workers of topology {_label('topology')} on node "
        f"{_node(config)} in the last {config.escalation_ratio_window} ended by SIGKILL: "
        "the workers' shutdown regularly takes longer than the supervisor's kill wait "
        "or the pod's grace period.",
    )


def _shutdown_slow(config: Config) -> dict:
    # A worker gets the supervisor's kill wait, and no more than its pods' grace
    # period: the supervisor's own stops, and `storm kill_workers` in a preStop
    # hook, SIGKILL after the kill wait whatever the grace, while a grace shorter
    # than the kill wait cuts every stop short.
    # NOTE: with the default buckets the limits fall inside a bucket ((2, 2.5]
    # for 2.4 s, (20, 25] for 24 s), and histogram_quantile interpolates linearly
    # within it, so shutdowns just above the bucket's lower bound can already fire.
    fraction = config.shutdown_slow_grace_fraction
    kill_wait = config.supervisor_kill_wait_seconds
    p99 = f'{SHUTDOWN_QUANTILE}{{quantile="0.99"}}'
    grace = _query_value(config, GRACE_PERIOD_MAX, "topology")
    kill_wait_text = f"the supervisor's kill wait of {kill_wait:g}s"
    return _alert(
        config,
        "StormWorkerShutdownSlow",
        _expr(
            f"""
            (
              {p99}
              > {_on(config, 'topology')} group_left ()
              {fraction:g} * clamp_max({GRACE_PERIOD_MAX}, {kill_wait:g})
            )
            or
            (
              {p99} > {fraction * kill_wait:g}
              unless {_on(config, 'topology')}
              {GRACE_PERIOD_MAX}
            )
            """
        ),
        config.shutdown_slow_for,
        "warning",
        "Storm workers take most of their time before SIGKILL to shut down.",
        f"The 99th percentile of the shutdown times of workers of topology "
        f"{_label('topology')} on node {_node(config)} over the last "
        f"{config.shutdown_quantile_window} is {{{{ $value | humanizeDuration }}}}, more than "
        f"{fraction:.0%} of "
        f"{grace}{{{{ if lt (. | first | value) {float(kill_wait)!r} }}}}"
        f"the pods' grace period of {{{{ . | first | value | humanizeDuration }}}}"
        f"{{{{ else }}}}{kill_wait_text}{{{{ end }}}}"
        f"{{{{ else }}}}{kill_wait_text}{{{{ end }}}}: "
        "a little more delay and the workers are killed by SIGKILL.",
    )


def _termination_stuck(config: Config) -> dict:
    pending = _select(config, "storm_worker_termination_pending_seconds")
    return _alert(
        config,
        "StormWorkerTerminationStuck",
        f"max {_by(config, 'topology')} ({pending}) > {config.termination_stuck_seconds:g}",
        config.termination_stuck_for,
        "critical",
        "A Storm worker is still alive long after its termination request.",
        f"A worker of topology {_label('topology')} on node {_node(config)} was asked to "
        "stop {{ $value | humanizeDuration }} ago and is still alive, long after the "
        "supervisor's SIGKILL and any pod grace period should have ended it.",
    )


def _leftover_processes(config: Config) -> dict:
    leftovers = _select(config, "storm_worker_leftover_processes")
    return _alert(
        config,
        "StormWorkerLeftoverProcesses",
        f"max {_by(config, 'topology')} ({leftovers}) > 0",
        config.leftover_processes_for,
        "warning",
        "Processes of exited Storm workers are still running.",
        f"Processes of exited workers of topology {_label('topology')} are still running "
        f"on node {_node(config)}, at least {config.leftover_processes_for} after the "
        "leftover grace: {{ $value | humanize }} now. They hold memory, files and "
        "possibly the worker's port.",
    )


def _crashing(config: Config) -> dict:
    crashed = _select(config, "storm_worker_exits_total", 'outcome="crashed"')
    window = config.crashing_window
    return _alert(
        config,
        "StormWorkerCrashing",
        _expr(
            f"""
            sum {_by(config, 'topology')} (
              increase({crashed}[{window}])
            ) >= {config.crashing_min_exits}
            """
        ),
        config.crashing_for,
        "warning",
        "Storm workers keep exiting on their own.",
        f"{_count()} workers of topology {_label('topology')} on node {_node(config)} "
        f"exited in the last {window} on their own: with no termination request, or "
        "after one with an error status such as 1.",
    )


# Pod alerts: storm_pod_* series, by node, namespace and workload.


def pod_alerts(config: Config) -> list[dict]:
    """Return the alerts about the terminations of the pods that run Storm workers."""
    return [_pod_sigkill_escalation(config), _pod_termination_overdue(config)]


def _pod_sigkill_escalation(config: Config) -> dict:
    # Counts only exit 137 at the end of the grace period, so an OOM kill
    # (exits{outcome="oomkilled"}) does not fire it.
    escalations = _select(config, "storm_pod_sigkill_escalations_total")
    window = config.pod_sigkill_escalation_window
    return _alert(
        config,
        "StormPodSigkillEscalation",
        _expr(
            f"""
            sum {_by(config, 'namespace', 'workload')} (
              increase({escalations}[{window}])
            ) > 0
            """
        ),
        config.pod_sigkill_escalation_for,
        "warning",
        "Containers of terminating Storm pods were killed by SIGKILL after the grace period.",
        f"Containers of workload {_label('workload')} in namespace {_label('namespace')} "
        f"on node {_node(config)} were killed by SIGKILL at the end of their pod's grace "
        f"period: {_count()} in the last {window}.",
    )


def _pod_termination_overdue(config: Config) -> dict:
    overdue = _select(config, "storm_pod_termination_overdue_seconds")
    cause = (
        '{{ if eq $labels.cause "finalizers" }}its containers are gone but finalizers '
        "keep the pod object"
        '{{ else if eq $labels.cause "containers_running" }}some of its containers are '
        "still running"
        "{{ else }}the kubelet has not reported its containers as stopped or has not "
        "deleted the pod{{ end }}"
    )
    return _alert(
        config,
        "StormPodTerminationOverdue",
        _expr(
            f"""
            max {_by(config, 'namespace', 'workload', 'cause')} (
              {overdue}
            ) > {config.pod_termination_overdue_seconds:g}
            """
        ),
        config.pod_termination_overdue_for,
        "critical",
        "A terminating Storm pod is long past its deletion deadline.",
        f"A pod of workload {_label('workload')} in namespace {_label('namespace')} on node "
        f"{_node(config)} is {{{{ $value | humanizeDuration }}}} past its deletionTimestamp "
        f"(cause {_label('cause')}): {cause}.",
    )


# Exporter alerts: the exporter's own health, by node and instance.


def exporter_alerts(config: Config) -> list[dict]:
    """Return the alerts about the exporter's targets, event sources and pod watch."""
    return [
        _exporter_down(config),
        _exporter_degraded(config),
        _events_lost(config),
        _kubernetes_watch_down(config),
        _topology_overflow(config),
    ]


def _exporter_down(config: Config) -> dict:
    # Three ways a node loses its exporter, distinguished by the value and the node
    # label: a target that fails its scrapes (0), a node that kube-state-metrics
    # lists but no target runs on (1, node label), or no target at all (1, from
    # absent(), no node label).
    up = _select(config, "up")
    branches = [f"max {_by(config)} ({up}) == 0"]
    if config.expected_nodes:
        branches.append(
            _expr(
                f"""
                (
                  max {_by(config)} ({config.expected_nodes})
                  unless {_on(config)}
                  max {_by(config)} ({up})
                )
                """
            )
        )
    branches.append(f"absent({up})")
    node = _node(config)
    return _alert(
        config,
        "StormTerminationExporterDown",
        "\nor\n".join(branches),
        config.exporter_down_for,
        "critical",
        "A node has no working storm-termination-exporter.",
        f"{{{{ if eq $value 0.0 }}}}Prometheus cannot scrape the exporter target on node {node}, "
        "so worker and pod terminations there go unrecorded."
        f"{{{{ else if $labels.{config.node_label} }}}}Node {node} has no exporter target (the "
        "DaemonSet has no pod there, or its target lacks the node label), so worker and "
        "pod terminations there go unrecorded."
        f"{{{{ else }}}}Prometheus has no target matching {{{config.job_selector}}} (the "
        "DaemonSet, its scrape configuration or its target labels are missing), so no "
        "node records worker and pod terminations.{{ end }}",
    )


def _exporter_degraded(config: Config) -> dict:
    sources = "storm_termination_exporter_event_source_info"
    poll = _select(config, sources, 'source="poll"')
    kernel = _select(config, sources, 'source=~"tracefs|netlink"')
    return _alert(
        config,
        "StormTerminationExporterDegraded",
        _expr(
            f"""
            max {_by(config, 'instance')} ({poll})
            unless {_on(config, 'instance')}
            {kernel}
            """
        ),
        config.exporter_degraded_for,
        "warning",
        "The storm-termination-exporter runs on /proc polling alone.",
        f"The exporter {_label('instance')} on node {_node(config)} has neither the tracefs "
        "nor the netlink event source and only polls /proc: it sees no signals or exit "
        "statuses, so outcomes become unknown and short-lived processes are missed.",
    )


def _events_lost(config: Config) -> dict:
    lost = _select(config, "storm_termination_exporter_events_lost_total")
    window = config.events_lost_window
    return _alert(
        config,
        "StormTerminationExporterEventsLost",
        _expr(
            f"""
            sum {_by(config, 'instance', 'source')} (
              increase({lost}[{window}])
            ) > 0
            """
        ),
        config.events_lost_for,
        "warning",
        "The storm-termination-exporter keeps losing kernel events.",
        f"The exporter {_label('instance')} on node {_node(config)} lost "
        f"{_label('source')} events: {_count()} in the last {window}, and the losses have "
        f"gone on for {config.events_lost_for}. Signals, exit statuses and durations of "
        "some workers are missing.",
    )


def _kubernetes_watch_down(config: Config) -> dict:
    watch = _select(config, "storm_termination_exporter_kubernetes_up")
    return _alert(
        config,
        "StormTerminationExporterKubernetesWatchDown",
        f"max {_by(config, 'instance')} ({watch}) == 0",
        config.kubernetes_watch_down_for,
        "warning",
        "The storm-termination-exporter's pod watch is failing.",
        f"The exporter {_label('instance')} on node {_node(config)} has had no working "
        f"pod watch for {config.kubernetes_watch_down_for}: storm_pod_* series are stale "
        "and workers are not joined to their pods.",
    )


def _topology_overflow(config: Config) -> dict:
    overflow = _select(config, "storm_termination_exporter_topology_overflow_total")
    window = config.topology_overflow_window
    return _alert(
        config,
        "StormTerminationExporterTopologyOverflow",
        _expr(
            f"""
            sum {_by(config, 'instance')} (
              increase({overflow}[{window}])
            ) > 0
            """
        ),
        config.topology_overflow_for,
        "info",
        "Workers are exported under topology=\"_other\".",
        f"The exporter {_label('instance')} on node {_node(config)} exported workers as "
        'topology="_other", because --topology.max topologies already have their own '
        f"label value: {_count()} in the last {window}.",
    )


# Diagnostics alerts: conditions that make a graceful termination impossible.


def diagnostics_alerts(config: Config) -> list[dict]:
    """Return the alerts on the diagnostics gauges and kill failures."""
    return [
        _ignores_sigterm(config),
        _container_drops_sigterm(config),
        _cannot_signal_worker(config),
        _user_unresolvable(config),
        _kill_failures(config),
        _port_conflict(config),
        _pod_stop_unsafe(config),
    ]


def _ignores_sigterm(config: Config) -> dict:
    dispositions = "|".join(config.ignores_sigterm_dispositions)
    workers = _select(
        config, "storm_worker_sigterm_disposition", 'role="worker"', f'disposition=~"{dispositions}"'
    )
    effect = (
        '{{ if eq $labels.disposition "default" }}The JVMs run with -Xrs, so SIGTERM '
        "kills them without running Storm's shutdown hooks"
        "{{ else }}SIGTERM does not reach the JVMs, so they run until SIGKILL{{ end }}"
    )
    return _alert(
        config,
        "StormWorkerIgnoresSigterm",
        f"max {_by(config, 'topology', 'disposition')} ({workers}) > 0",
        config.ignores_sigterm_for,
        "warning",
        "Storm worker JVMs will not shut down gracefully on SIGTERM.",
        f"Workers of topology {_label('topology')} on node {_node(config)} have SIGTERM "
        f"disposition {_label('disposition')}: {{{{ $value | humanize }}}} live now. {effect}.",
    )


def _container_drops_sigterm(config: Config) -> dict:
    containers = _select(config, "storm_container_init_drops_sigterm")
    reason = (
        '{{ if eq $labels.reason "shell_without_exec" }}PID 1 is a shell that runs the '
        "program as a child and does not pass SIGTERM on"
        "{{ else }}PID 1 has no SIGTERM handler, and the kernel drops signals without a "
        "handler for a namespace's init{{ end }}"
    )
    return _alert(
        config,
        "StormContainerDropsSigterm",
        f"max {_by(config, 'namespace', 'pod', 'container', 'reason')} ({containers}) > 0",
        config.container_drops_sigterm_for,
        "warning",
        "A Storm container's PID 1 will not pass SIGTERM on.",
        f"Container {_label('container')} of pod {_label('pod')} in namespace "
        f"{_label('namespace')} on node {_node(config)} drops the runtime's SIGTERM "
        f"(reason {_label('reason')}): {reason}. A pod deletion ends it by SIGKILL "
        "at the end of the grace period.",
    )


def _cannot_signal_worker(config: Config) -> dict:
    denied = _select(config, "storm_worker_signal_permission_denied")
    return _alert(
        config,
        "StormSupervisorCannotSignalWorker",
        f"max {_by(config, 'topology')} ({denied}) > 0",
        config.cannot_signal_worker_for,
        "warning",
        "A Storm supervisor lacks the permission to signal its workers.",
        f"Workers of topology {_label('topology')} on node {_node(config)} run under a UID "
        "their supervisor cannot signal, because it has neither that UID nor CAP_KILL: "
        "{{ $value | humanize }} live now. Its kill commands fail and the workers outlive "
        "their slot.",
    )


def _user_unresolvable(config: Config) -> dict:
    unresolvable = _select(config, "storm_worker_user_unresolvable")
    return _alert(
        config,
        "StormWorkerUserUnresolvable",
        f"max {_by(config, 'topology', 'role')} ({unresolvable}) > 0",
        config.user_unresolvable_for,
        "warning",
        "Storm processes run under a UID without a passwd entry.",
        f"Processes with role {_label('role')} of topology {_label('topology')} on node "
        f"{_node(config)} run under a UID with no passwd entry in their root: "
        "{{ $value | humanize }} live now. Storm's user checks can misjudge live workers "
        "as dead, and supervisors before Storm 2.6.3 can exit with status 20 while killing them.",
    )


def _kill_failures(config: Config) -> dict:
    failures = _select(config, "storm_worker_kill_failures_total")
    window = config.kill_failures_window
    return _alert(
        config,
        "StormWorkerKillFailures",
        _expr(
            f"""
            sum {_by(config, 'topology', 'signal')} (
              increase({failures}[{window}])
            ) > 0
            """
        ),
        config.kill_failures_for,
        "warning",
        "Kill commands aimed at Storm workers fail.",
        f"Kill commands with signal {_label('signal')} aimed at live processes of topology "
        f"{_label('topology')} on node {_node(config)} exited non-zero, so the processes "
        f"did not get the signal: {_count()} in the last {window}.",
    )


def _port_conflict(config: Config) -> dict:
    conflicts = _select(config, "storm_worker_port_conflicts")
    return _alert(
        config,
        "StormWorkerPortConflict",
        f"max {_by(config, 'port')} ({conflicts}) > 0",
        config.port_conflict_for,
        "warning",
        "A Storm worker port is claimed twice or held by a leftover process.",
        f"Worker port {_label('port')} on node {_node(config)} is claimed by two live "
        "worker JVMs, or held in LISTEN by a leftover (claiming processes: "
        "{{ $value | humanize }}). The worker Storm launches on that port cannot bind it.",
    )


def _pod_stop_unsafe(config: Config) -> dict:
    unsafe = _select(config, "storm_worker_pod_stop_unsafe")
    return _alert(
        config,
        "StormWorkerPodStopUnsafe",
        f"max {_by(config, 'topology')} ({unsafe}) > 0",
        config.pod_stop_unsafe_for,
        "info",
        "Deleting a Storm pod will kill its workers by SIGKILL without SIGTERM.",
        f"Workers of topology {_label('topology')} on node {_node(config)} have the "
        "supervisor JVM, or a shell in front of it, as init of their PID namespace: "
        "{{ $value | humanize }} live now. When a pod deletion stops that init, the kernel "
        "kills the workers by SIGKILL and they get no SIGTERM.",
    )


# Documents.


def rule_groups(config: Config = Config()) -> dict:
    """Return the rule-file document ``{"groups": [...]}``."""
    return {
        "groups": [
            {"name": "storm-termination-exporter.recording", "rules": recording_rules(config)},
            {"name": "storm-termination-exporter.workers", "rules": worker_alerts(config)},
            {"name": "storm-termination-exporter.pods", "rules": pod_alerts(config)},
            {"name": "storm-termination-exporter.exporter", "rules": exporter_alerts(config)},
            {"name": "storm-termination-exporter.diagnostics", "rules": diagnostics_alerts(config)},
        ]
    }


def prometheus_rule(
    config: Config = Config(), name: str = "storm-termination-exporter", namespace: str = "monitoring"
) -> dict:
    """Return a monitoring.coreos.com/v1 PrometheusRule with the groups of rule_groups(config)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "storm-termination-exporter",
                "app.kubernetes.io/component": "alerting-rules",
            },
        },
        "spec": rule_groups(config),
    }


class _RuleDumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_RuleDumper.add_representer(str, _represent_str)


def render_yaml(document: dict) -> str:
    """Render a rule document as YAML text that is identical for identical input."""
    return yaml.dump(
        document,
        Dumper=_RuleDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1000,
        indent=2,
    )


GENERATED_HEADER = "# Generated by `python -m alerts.rules` from alerts/rules.py; do not edit.\n"


def generated_files(config: Config = Config()) -> dict[Path, str]:
    """Return the committed generated files and their expected text."""
    return {
        RULES_PATH: GENERATED_HEADER + render_yaml(rule_groups(config)),
        PROMETHEUS_RULE_PATH: GENERATED_HEADER + render_yaml(prometheus_rule(config)),
    }


def main() -> int:
    for path, text in generated_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
