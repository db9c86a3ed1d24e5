#!/usr/bin/env python3
"""Generate the Grafana dashboards of storm-termination-exporter.

``python dashboards/generate.py`` rewrites storm-worker-termination.json (operations)
and storm-termination-review.json (capacity and reliability reviews) next to this
file. It writes the same bytes into deploy/base/dashboards/ too, because kustomize reads
no file outside its kustomization root, and the base turns each copy into a ConfigMap
for the Grafana sidecar. The dashboards are plain dicts in Grafana's dashboard JSON model,
schemaVersion 39, and every query reads the job selector, the node label and the
recording-rule names from alerts/rules.py.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as a script, Python puts dashboards/ first on sys.path, not the repository root.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from alerts.rules import (  # noqa: E402
    ESCALATIONS_INCREASE,
    GRACE_PERIOD_MAX,
    REQUESTS_INCREASE,
    SHUTDOWN_BUCKET_RATE,
    Config,
)

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TAG = "storm-termination-exporter"
OPERATIONS_UID = "storm-worker-termination"
REVIEW_UID = "storm-termination-review"
OPERATIONS_PATH = REPO / "dashboards" / f"{OPERATIONS_UID}.json"
REVIEW_PATH = REPO / "dashboards" / f"{REVIEW_UID}.json"
DEPLOY_DIR = REPO / "deploy" / "base" / "dashboards"

OUTCOME_COLORS = {
    "graceful": "green",
    "halted": "orange",
    "sigkill": "red",
    "crashed": "purple",
    "unknown": "text",
}
CONTAINER_OUTCOMES = ("graceful", "sigkill", "oomkilled", "error", "unknown")
DISPOSITION_COLORS = {"handled": "green", "default": "orange", "ignored": "red", "blocked": "red"}


# PromQL.


class Queries:
    """PromQL fragments with the dashboard variables and the rules' job selector."""

    def __init__(self, config: Config) -> None:
        self.job = config.job_selector
        self.node = config.node_label
        self.kill_wait = config.supervisor_kill_wait_seconds

    def exporter(self, metric: str, *matchers: str) -> str:
        """Select an exporter series on the selected nodes."""
        return metric + "{" + ", ".join((self.job, f'{self.node}=~"$node"', *matchers)) + "}"

    def worker(self, metric: str, *matchers: str) -> str:
        """Select a worker series of the selected nodes and topologies."""
        return self.exporter(metric, 'topology=~"$topology"', *matchers)

    def pod(self, metric: str, *matchers: str) -> str:
        """Select a pod series of the selected nodes and namespaces."""
        return self.exporter(metric, 'namespace=~"$namespace"', *matchers)

    def recorded(self, metric: str, *matchers: str) -> str:
        """Select a recording rule's series, which keep only the node and topology labels."""
        return metric + "{" + ", ".join((f'{self.node}=~"$node"', 'topology=~"$topology"', *matchers)) + "}"

    def in_namespace(self, expression: str) -> str:
        """Keep the series of ``expression`` whose topology ran in a selected namespace.

        Worker series carry no namespace, so the filter goes through storm_worker_info
        over the dashboard's range, which also keeps topologies whose workers have
        exited. storm_workers has no namespace label either, so the matcher
        namespace=~"$namespace" selects all of its series when "All" (.*) is chosen
        and none otherwise. With "All", workers whose pod is unknown thus stay visible.
        """
        workers = self.exporter("storm_workers", 'namespace=~"$namespace"')
        info = self.exporter("storm_worker_info", 'namespace=~"$namespace"')
        return f"{expression} and on ({self.node}, topology) ({workers} or max_over_time({info}[$__range]))"

    def increase(self, selector: str, window: str) -> str:
        return f"increase({selector}[{window}])"

    def worker_sum(self, by: str, metric: str, window: str | None = None, *matchers: str) -> str:
        """Sum a worker series (its increase over ``window`` for counters) by ``by``, namespace-filtered."""
        selector = self.worker(metric, *matchers)
        inner = selector if window is None else self.increase(selector, window)
        grouping = f" by ({by}) " if by else ""
        return f"sum{grouping}({self.in_namespace(inner)})"

    def worker_buckets(self, window: str) -> str:
        """Return the namespace-filtered increase of the worker shutdown-duration buckets over ``window``."""
        buckets = self.worker("storm_worker_shutdown_duration_seconds_bucket")
        return self.in_namespace(self.increase(buckets, window))

    def exporter_sum(self, by: str, metric: str, window: str = "$__interval") -> str:
        """Sum the increase of an exporter counter over ``window`` by the node label and ``by``."""
        labels = ", ".join(filter(None, (self.node, by)))
        return f"sum by ({labels}) ({self.increase(self.exporter(metric), window)})"

    def legend(self, *labels: str) -> str:
        """Return a legend naming the node and ``labels`` of a series."""
        return " ".join("{{" + label + "}}" for label in (self.node, *labels))

    def quantile(self, q: float, by: str, buckets: str) -> str:
        """Return histogram_quantile(q) of ``buckets`` summed by ``by`` and ``le``.

        The trailing ``>= 0`` drops the NaN that histogram_quantile returns for a
        group with no observation in the window.
        """
        group = f"{by}, le" if by else "le"
        return f"histogram_quantile({q:g}, sum by ({group}) ({buckets})) >= 0"


# Panels.


def target(expression: str, legend: str, *, instant: bool = False, query_format: str = "time_series") -> dict:
    """Build a Prometheus query of a panel, which sets its refId."""
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expression,
        "format": query_format,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
    }


def _with_ref_ids(targets: list[dict]) -> list[dict]:
    for letter, query in zip(string.ascii_uppercase, targets):
        query["refId"] = letter
    return targets


def _thresholds(*steps: tuple[float, str], base: str = "green") -> dict:
    return {
        "mode": "absolute",
        "steps": [
            {"color": base, "value": None},
            *({"color": color, "value": value} for value, color in steps),
        ],
    }


def _override(matcher: str, name: str, **properties: object) -> dict:
    return {
        "matcher": {"id": matcher, "options": name},
        "properties": [{"id": key, "value": value} for key, value in sorted(properties.items())],
    }


def color_override(name: str, color: str) -> dict:
    return _override("byName", name, color={"fixedColor": color, "mode": "fixed"})


def dashed_override(ref_id: str, color: str) -> dict:
    """Draw the series of query ``ref_id`` as a dashed reference line in ``color``."""
    return _override(
        "byFrameRefID",
        ref_id,
        **{
            "color": {"fixedColor": color, "mode": "fixed"},
            "custom.fillOpacity": 0,
            "custom.lineStyle": {"dash": [10, 10], "fill": "dash"},
        },
    )


def timeseries(
    title: str,
    description: str,
    targets: list[dict],
    unit: str,
    *,
    bars: bool = False,
    stacked: bool = False,
    interval: str | None = None,
    max_value: float | None = None,
    thresholds: dict | None = None,
    overrides: list[dict] | None = None,
) -> dict:
    """Build a time series panel.

    ``bars`` draws counts per interval, and ``thresholds`` adds dashed limit lines.
    """
    custom = {
        "axisSoftMin": 0,
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 80 if bars else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
        "thresholdsStyle": {"mode": "dashed" if thresholds else "off"},
    }
    defaults = {
        "color": {"mode": "palette-classic"},
        "custom": custom,
        "thresholds": thresholds or _thresholds(),
        "unit": unit,
    }
    if max_value is not None:
        defaults["max"] = max_value
    panel = {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {
                "calcs": ["max", "lastNotNull"],
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": _with_ref_ids(targets),
        "title": title,
        "type": "timeseries",
    }
    if interval is not None:
        panel["interval"] = interval
    return panel


def stat(
    title: str, description: str, query: dict, unit: str, thresholds: dict, decimals: int | None = None
) -> dict:
    defaults = {"color": {"mode": "thresholds"}, "thresholds": thresholds, "unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value",
        },
        "targets": _with_ref_ids([query]),
        "title": title,
        "type": "stat",
    }


def heatmap(title: str, description: str, query: dict, interval: str) -> dict:
    """Build a heatmap of histogram bucket counts, with the bucket bounds in seconds on the y axis."""
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {
            "defaults": {"custom": {"scaleDistribution": {"type": "linear"}}, "unit": "short"},
            "overrides": [],
        },
        "interval": interval,
        "options": {
            "calculate": False,
            "cellGap": 1,
            "cellValues": {"unit": "short"},
            "color": {
                "exponent": 0.5,
                "fill": "dark-orange",
                "mode": "scheme",
                "scale": "exponential",
                "scheme": "Oranges",
                "steps": 64,
            },
            "filterValues": {"le": 1e-09},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto", "value": "Shutdowns"},
            "tooltip": {"mode": "single", "showColorScale": False, "yHistogram": True},
            "yAxis": {"axisLabel": "shutdown duration", "axisPlacement": "left", "unit": "s"},
        },
        "targets": _with_ref_ids([query]),
        "title": title,
        "type": "heatmap",
    }


def value_field(query_count: int, ref_id: str) -> str:
    """Name Grafana gives the value column of a table-format Prometheus query.

    Grafana's Prometheus data source calls it "Value" when the table frames of a
    response come from one query and "Value #<refId>" when they come from several.
    """
    return "Value" if query_count == 1 else f"Value #{ref_id}"


def table(
    title: str,
    description: str,
    labels: dict[str, str],
    columns: list[tuple[str, str, str, dict]],
    *,
    sort_by: str | None = None,
    column_overrides: list[dict] | None = None,
) -> dict:
    """Build an instant table that merges one query per value column on the label columns.

    ``labels`` maps label names to column headers in display order. Each entry of
    ``columns`` is (header, unit, expression, extra field properties) of a value column.
    """
    targets = _with_ref_ids([
        target(expression, header, instant=True, query_format="table")
        for header, _, expression, _ in columns
    ])
    renames = dict(labels)
    order = {name: index for index, name in enumerate(labels)}
    overrides = []
    for (header, unit, _, extra), query in zip(columns, targets):
        field = value_field(len(targets), query["refId"])
        renames[field] = header
        order[field] = len(order)
        overrides.append(_override("byName", header, unit=unit, **extra))
    hidden = {"Time": True, "__name__": True}
    options = {
        "cellHeight": "sm",
        "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
        "showHeader": True,
    }
    if sort_by is not None:
        options["sortBy"] = [{"desc": True, "displayName": sort_by}]
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True},
                "thresholds": _thresholds(),
                "unit": "short",
            },
            "overrides": overrides + (column_overrides or []),
        },
        "options": options,
        "targets": targets,
        "title": title,
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": hidden, "indexByName": order, "renameByName": renames},
            },
        ],
        "type": "table",
    }


class Layout:
    """Panels placed left to right on Grafana's 24-column grid, numbered in order."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.x = 0
        self.y = 0
        self.line_height = 0

    def row(self, title: str) -> None:
        self._new_line()
        self.panels.append({
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            "panels": [],
            "title": title,
            "type": "row",
        })
        self.y += 1

    def add(self, panel: dict, width: int, height: int = 8) -> None:
        if self.x + width > 24:
            self._new_line()
        panel["gridPos"] = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += width
        self.line_height = max(self.line_height, height)

    def numbered(self) -> list[dict]:
        for number, panel in enumerate(self.panels, start=1):
            panel["id"] = number
        return self.panels

    def _new_line(self) -> None:
        self.y += self.line_height
        self.x = 0
        self.line_height = 0


# Variables and dashboards.


def datasource_variable() -> dict:
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def query_variable(name: str, label: str, query: str) -> dict:
    """Build a multi-value variable with "All" as the regex .*, refreshed when the time range changes."""
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE,
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def variables(q: Queries) -> list[dict]:
    # Storm workers' namespaces come from storm_worker_info, other pods' from the pod gauges.
    namespaces = q.exporter("", '__name__=~"storm_worker_info|storm_pods_terminating"')
    workers = q.exporter("storm_worker_info", 'namespace=~"$namespace"')
    exporters = "storm_termination_exporter_build_info{" + q.job + "}"
    return [
        datasource_variable(),
        query_variable("node", "Node", f"label_values({exporters}, {q.node})"),
        query_variable("namespace", "Namespace", f"label_values({namespaces}, namespace)"),
        query_variable("topology", "Topology", f"label_values({workers}, topology)"),
    ]


def dashboard(
    uid: str, title: str, description: str, tags: list[str], panels: list[dict], q: Queries, **settings
) -> dict:
    return {
        "annotations": {"list": []},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "icon": "dashboard",
                "includeVars": True,
                "keepTime": False,
                "tags": [TAG],
                "targetBlank": False,
                "title": "Storm termination dashboards",
                "type": "dashboards",
            }
        ],
        "panels": panels,
        "schemaVersion": SCHEMA_VERSION,
        "tags": [TAG, "storm", *tags],
        "templating": {"list": variables(q)},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
        **settings,
    }


# The operations dashboard.


def operations_dashboard(config: Config = Config()) -> dict:
    q = Queries(config)
    layout = Layout()
    for add_rows in (
        _overview_row,
        _shutdown_row,
        _exits_row,
        _pending_row,
        _pod_row,
        _diagnostics_row,
        _exporter_row,
    ):
        add_rows(layout, q)
    return dashboard(
        OPERATIONS_UID,
        "Storm worker termination",
        "How Storm worker JVMs shut down on each node: durations against the supervisor's kill "
        "wait and the pods' grace period, SIGKILL escalations, leftover processes, pod terminations, "
        "why terminations fail, and the exporter's own health.",
        ["operations"],
        layout.numbered(),
        q,
        refresh="1m",
        time={"from": "now-6h", "to": "now"},
        timepicker={},
    )


def _overview_row(layout: Layout, q: Queries) -> None:
    layout.row("Overview")
    kill_wait = q.kill_wait
    layout.add(stat(
        "SIGKILL escalations in range",
        "Requested worker terminations in the dashboard's time range that ended by SIGKILL, on the "
        "selected nodes and topologies. Anything above 0 is bad: those workers did not exit within "
        f"the supervisor's {kill_wait:g} s kill wait or their pod's grace period, so their shutdown "
        "hooks were cut off.",
        target(q.worker_sum("", "storm_worker_sigkill_escalations_total", "$__range"), "escalations",
               instant=True),
        "short",
        _thresholds((1, "red")),
        decimals=0,
    ), 6, 4)

    layout.add(stat(
        "Leftover processes now",
        "Processes of exited workers' trees (LogWriter, worker, multilang children) still alive "
        "after --leftover.grace. Anything above 0 is bad: they hold worker ports and memory and "
        "can make the next worker on that slot fail.",
        target(f"sum({q.in_namespace(q.worker('storm_worker_leftover_processes'))})", "leftover processes",
               instant=True),
        "short",
        _thresholds((1, "red")),
        decimals=0,
    ), 6, 4)

    terminating = q.worker("storm_workers", 'state="terminating"')
    layout.add(stat(
        "Terminations pending now",
        "Worker JVMs that received a termination request and are still alive. A few during a "
        "rebalance or rollout are normal; a count that does not return to 0 within the kill wait "
        "means workers that nothing kills (see the oldest pending termination).",
        target(f"sum({q.in_namespace(terminating)})", "terminating workers", instant=True),
        "short",
        _thresholds((1, "orange")),
        decimals=0,
    ), 6, 4)

    buckets = q.worker_buckets("$__range")
    layout.add(stat(
        "p99 shutdown duration in range",
        "99th percentile of the time from a worker's termination request to its JVM's exit, over "
        f"the dashboard's time range. At or above the supervisor's {kill_wait:g} s kill wait the "
        "supervisor SIGKILLs workers before their shutdown hooks finish.",
        target(q.quantile(0.99, "", buckets), "p99", instant=True),
        "s",
        _thresholds((kill_wait * 0.8, "orange"), (kill_wait, "red")),
    ), 6, 4)


def _shutdown_row(layout: Layout, q: Queries) -> None:
    layout.row("Shutdown duration")
    buckets = q.in_namespace(q.recorded(SHUTDOWN_BUCKET_RATE))
    percentiles = [
        target(q.quantile(quantile, "topology", buckets), f"{{{{topology}}}} p{name}")
        for quantile, name in ((0.5, "50"), (0.95, "95"), (0.99, "99"))
    ]
    grace = target(
        f"max by (topology) ({q.in_namespace(q.recorded(GRACE_PERIOD_MAX))})", "{{topology}} pod grace period"
    )
    kill_wait = target(f"vector({q.kill_wait:g})", "supervisor kill wait")
    layout.add(timeseries(
        "Shutdown duration percentiles by topology",
        "p50, p95 and p99 of the time from a worker's termination request to its JVM's exit, over "
        f"the previous 30 minutes ({SHUTDOWN_BUCKET_RATE}), per topology. Dashed: the grace period "
        f"of the topology's pods and the supervisor's {q.kill_wait:g} s kill wait. A percentile that "
        "reaches the kill wait means the supervisor SIGKILLs workers; one that reaches the grace "
        "period means the kubelet does.",
        [*percentiles, grace, kill_wait],
        "s",
        overrides=[dashed_override("D", "blue"), dashed_override("E", "red")],
    ), 12, 9)

    layout.add(heatmap(
        "Shutdown duration distribution",
        "Worker shutdowns per duration bucket in each interval, all selected topologies together. "
        f"A band at {q.kill_wait:g}-4 s shows workers the supervisor killed after its kill wait; a "
        "band at 25-35 s shows pods that ran into Kubernetes' default 30 s grace period. Healthy "
        "shutdowns sit well below the kill wait.",
        target(
            f"sum by (le) ({q.worker_buckets('$__interval')})",
            "{{le}}",
            query_format="heatmap",
        ),
        "1m",
    ), 12, 9)


def _exits_row(layout: Layout, q: Queries) -> None:
    layout.row("Exits and escalations")
    layout.add(timeseries(
        "Worker exits by outcome",
        "Worker JVM exits in each interval by outcome. graceful is healthy. sigkill (ended by "
        "SIGKILL), halted (Storm's shutdown watchdog cut the hooks short, exit status 20) and "
        "crashed (exit without a request) are bad; unknown means only polling runs and the exit "
        "status is not known.",
        [target(q.worker_sum("outcome", "storm_worker_exits_total", "$__interval"), "{{outcome}}")],
        "short",
        bars=True,
        stacked=True,
        interval="1m",
        overrides=[color_override(outcome, color) for outcome, color in OUTCOME_COLORS.items()],
    ), 12)

    escalations = f"sum by (topology) ({q.in_namespace(q.recorded(ESCALATIONS_INCREASE))})"
    requests = f"sum by (topology) ({q.in_namespace(q.recorded(REQUESTS_INCREASE))})"
    layout.add(timeseries(
        "SIGKILL escalation ratio by topology",
        "Share of the requested worker terminations in the previous hour that ended by SIGKILL, "
        f"per topology ({ESCALATIONS_INCREASE} / {REQUESTS_INCREASE}). Healthy topologies stay "
        "at 0%; a topology at 100% never shuts down by itself, so its shutdown hooks never finish.",
        [target(f"{escalations} / ({requests} > 0)", "{{topology}}")],
        "percentunit",
        max_value=1,
    ), 12)

    layout.add(timeseries(
        "Termination requests by trigger",
        "Requested worker terminations in each interval by where the request came from: the "
        "supervisor (its kill commands or signals), the pod's deletion, or other senders. Requests "
        "from other senders mean something outside Storm stops workers; pod_deletion requests "
        "during a rollout are expected.",
        [target(
            q.worker_sum("trigger", "storm_worker_termination_requests_total", "$__interval"), "{{trigger}}"
        )],
        "short",
        bars=True,
        stacked=True,
        interval="1m",
    ), 12)

    layout.add(timeseries(
        "Signals by sender",
        "Signals generated for processes of worker trees in each interval, by signal and sender "
        "(tracefs source only). SIGTERM from the supervisor is the normal stop. SIGKILL from the "
        "supervisor is its kill -9 after the kill wait; SIGKILL from namespace_teardown means the "
        "container's PID 1 exited and the kernel killed the workers without a SIGTERM.",
        [target(
            q.worker_sum("signal, sender", "storm_worker_signals_total", "$__interval"),
            "{{signal}} from {{sender}}",
        )],
        "short",
        bars=True,
        stacked=True,
        interval="1m",
    ), 12)


def _pending_row(layout: Layout, q: Queries) -> None:
    layout.row("Leftovers and pending terminations")
    layout.add(timeseries(
        "Leftover processes by topology",
        "alive: processes of exited workers' trees still running after --leftover.grace. found: "
        "leftover processes detected in each interval. Any alive leftover is bad: it holds the "
        "worker's port and memory, and multilang children that outlive their worker usually "
        "never exit.",
        [
            target(q.worker_sum("topology", "storm_worker_leftover_processes"), "{{topology}} alive"),
            target(q.worker_sum("topology", "storm_worker_leftover_processes_detected_total", "$__interval"),
                   "{{topology}} found"),
        ],
        "short",
        interval="1m",
        overrides=[_override("byFrameRefID", "B", **{"custom.drawStyle": "bars", "custom.fillOpacity": 80})],
    ), 8)

    layout.add(timeseries(
        "Workers terminating",
        "Live worker JVMs that received a termination request, per topology. Short spikes during "
        "stops are normal; a line that stays above 0 means workers that do not exit and are not "
        "killed.",
        [target(q.worker_sum("topology", "storm_workers", None, 'state="terminating"'), "{{topology}}")],
        "short",
    ), 8)

    layout.add(timeseries(
        "Oldest pending termination",
        "Age of the oldest termination request whose worker is still alive, per topology; 0 when "
        f"none. Above the dashed {q.kill_wait:g} s line the supervisor's kill -9 should already have "
        "ended the worker: a growing age means a worker nothing can kill, such as one whose "
        "supervisor may not signal it.",
        [target(
            f"max by (topology) ({q.in_namespace(q.worker('storm_worker_termination_pending_seconds'))})",
            "{{topology}}",
        )],
        "s",
        thresholds=_thresholds((q.kill_wait, "red"), base="transparent"),
    ), 8)


def _pod_row(layout: Layout, q: Queries) -> None:
    layout.row("Pods")
    layout.add(timeseries(
        "Pods terminating",
        "Pods on the selected nodes with a deletionTimestamp, per namespace and workload (needs the "
        "pod watch). Pods stay here for their shutdown; a count that does not fall within the "
        "grace period points to the overdue panel.",
        [target(
            f"sum by (namespace, workload) ({q.pod('storm_pods_terminating')})", "{{namespace}} {{workload}}"
        )],
        "short",
    ), 8)

    layout.add(timeseries(
        "Pod termination overdue by cause",
        "Seconds the oldest pod of a workload is past its deletionTimestamp (the end of its grace "
        "period), by cause: finalizers (no container running), containers_running, or not_reported "
        "(the kubelet sent no container states). Any value above 0 is bad: the pod should be gone.",
        [target(
            f"max by (namespace, workload, cause) ({q.pod('storm_pod_termination_overdue_seconds')})",
            "{{namespace}} {{workload}} {{cause}}",
        )],
        "s",
    ), 8)

    layout.add(timeseries(
        "Container exits during pod termination",
        "Container exits of terminating pods in each interval by outcome (needs the pod watch). "
        "graceful is healthy; sigkill means the kubelet killed the container (after the grace "
        "period, or at once on an eviction without grace), oomkilled and error are failed "
        "shutdowns.",
        [target(
            f"sum by (outcome) ({q.increase(q.pod('storm_pod_container_exits_total'), '$__interval')})",
            "{{outcome}}",
        )],
        "short",
        bars=True,
        stacked=True,
        interval="1m",
        overrides=[
            color_override(outcome, OUTCOME_COLORS.get(outcome, "orange")) for outcome in CONTAINER_OUTCOMES
        ],
    ), 8)


def _diagnostics_row(layout: Layout, q: Queries) -> None:
    layout.row("Why terminations fail")
    mapped = {
        name: {"color": color, "index": index}
        for index, (name, color) in enumerate(DISPOSITION_COLORS.items())
    }
    disposition_colors = {
        "mappings": [{"options": mapped, "type": "value"}],
        "custom.cellOptions": {"type": "color-text"},
    }
    dispositions = q.worker_sum(f"{q.node}, topology, role, disposition", "storm_worker_sigterm_disposition")
    layout.add(table(
        "SIGTERM disposition by role",
        "Live worker JVMs and LogWriters by what SIGTERM does to them. handled is healthy for a JVM "
        "(HotSpot installs a handler that runs the shutdown hooks). ignored or blocked means SIGTERM "
        "does nothing and only SIGKILL ends the process; default on a worker means a JVM started "
        "with -Xrs, which SIGTERM ends at once without running its shutdown hooks.",
        {q.node: "Node", "topology": "Topology", "role": "Role", "disposition": "Disposition"},
        [("Processes", "short", f"{dispositions} > 0", {})],
        column_overrides=[_override("byName", "Disposition", **disposition_colors)],
    ), 12)

    init_drops = q.pod("storm_container_init_drops_sigterm")
    init_drops = f"sum by ({q.node}, namespace, pod, container, reason) ({init_drops})"
    layout.add(table(
        "Containers whose PID 1 drops SIGTERM",
        "Live containers running Storm workers whose PID 1 will not pass the kubelet's SIGTERM on: "
        "it leaves SIGTERM at its default disposition, or it is a shell that did not exec the "
        "supervisor. Every row is bad: a pod deletion then reaches the workers only as the "
        "kernel's SIGKILL at the end of the grace period.",
        {
            q.node: "Node",
            "namespace": "Namespace",
            "pod": "Pod",
            "container": "Container",
            "reason": "Reason",
        },
        [("Containers", "short", f"{init_drops} > 0", {})],
    ), 12)

    layout.add(timeseries(
        "Workers the supervisor cannot signal",
        "Live workers that their supervisor may not signal under the kill(2) rules: no matching UID "
        "and no CAP_KILL. Any value above 0 is bad: the supervisor's kill -15 and kill -9 fail (its "
        "log calls the process \"probably already dead\"), so those workers outlive every stop.",
        [target(q.worker_sum("topology", "storm_worker_signal_permission_denied"), "{{topology}}")],
        "short",
    ), 8)

    layout.add(timeseries(
        "Processes with an unresolvable user",
        "Live workers, and supervisors of live workers, whose UID has no passwd entry in their own "
        "root, as with an arbitrary runAsUser. Any value above 0 is bad: Storm's supervisor checks "
        "worker processes by user name, so it can take a live worker for a dead one and start "
        "another on its slot, and before Storm 2.6.3 it could exit instead of stopping the worker.",
        [target(q.worker_sum("topology, role", "storm_worker_user_unresolvable"), "{{topology}} {{role}}")],
        "short",
    ), 8)

    layout.add(timeseries(
        "Workers a pod deletion would SIGKILL",
        "Live workers whose PID namespace's init is the supervisor JVM or a shell in front of it, "
        "with no preStop hook. Any value above 0 is bad: deleting the pod ends them by the kernel's "
        "SIGKILL without any SIGTERM, so their shutdown hooks never run.",
        [target(q.worker_sum("topology", "storm_worker_pod_stop_unsafe"), "{{topology}}")],
        "short",
    ), 8)

    layout.add(timeseries(
        "Failed kill commands",
        "kill and worker-launcher commands aimed at a worker or its LogWriter that exited non-zero, "
        "in each interval, by signal (netlink source only). Any failure is bad: the signal was not "
        "sent, usually because the supervisor runs as another user than the worker.",
        [target(q.worker_sum("topology, signal", "storm_worker_kill_failures_total", "$__interval"),
                "{{topology}} {{signal}}")],
        "short",
        bars=True,
        interval="1m",
    ), 12)

    conflicts = q.exporter("storm_worker_port_conflicts")
    layout.add(table(
        "Worker port conflicts",
        "Worker ports on a node claimed by two live worker JVMs, or held in LISTEN by a leftover "
        "process, with the number of claiming processes. Every row is bad: the next worker "
        "assigned to that slot cannot bind its port.",
        {q.node: "Node", "port": "Port"},
        [("Claiming processes", "short", f"max by ({q.node}, port) ({conflicts})", {})],
    ), 12)


def _exporter_row(layout: Layout, q: Queries) -> None:
    layout.row("Exporter health")
    layout.add(timeseries(
        "Exporter targets up",
        "Scrape targets of the exporter (one per node) and how many of them are up. A gap between "
        "the lines is bad: on those nodes nothing records worker terminations.",
        [
            target(f"count({q.exporter('up')})", "targets"),
            target(f"sum({q.exporter('up')})", "up"),
        ],
        "short",
    ), 8)

    sources = q.exporter("storm_termination_exporter_event_source_info")
    layout.add(timeseries(
        "Event sources in use",
        "Nodes using each event source. Healthy nodes use tracefs and netlink. poll appears only "
        "when netlink is not available: exits then carry no status, so outcomes are less exact; "
        "without tracefs the senders of signals are not known.",
        [target(f"count by (source) ({sources})", "{{source}}")],
        "short",
    ), 8)

    layout.add(timeseries(
        "Events lost",
        "Kernel events known to be lost in each interval, per node and source: reported by the "
        "kernel or found missing by a full /proc scan. Occasional losses are repaired by the next "
        "scan; steady losses mean exits and signals are missed between scans.",
        [target(
            q.exporter_sum("source", "storm_termination_exporter_events_lost_total"), q.legend("source")
        )],
        "short",
        bars=True,
        interval="1m",
    ), 8)

    layout.add(timeseries(
        "Source failures and skipped events",
        "Failures of an event source after it started (the exporter fell back to polling, or "
        "retries a failed poll round) and events whose processing raised an error and were "
        "skipped, per node. Any value above 0 is bad and is explained in the exporter's log.",
        [
            target(
                q.exporter_sum("source", "storm_termination_exporter_event_source_errors_total"),
                q.legend("source") + " failures",
            ),
            target(
                q.exporter_sum("", "storm_termination_exporter_event_errors_total"),
                q.legend() + " skipped events",
            ),
        ],
        "short",
        bars=True,
        interval="1m",
    ), 8)

    layout.add(timeseries(
        "Pod watch up",
        "1 while a node's pod watch is healthy, 0 after an error until the next successful list; "
        "no series when the exporter runs without the Kubernetes API. 0 is bad: pod terminations "
        "and the namespace, pod and container of workers are not known.",
        [target(f"min by ({q.node}) ({q.exporter('storm_termination_exporter_kubernetes_up')})", q.legend())],
        "short",
        max_value=1,
    ), 8)

    layout.add(timeseries(
        "Pod watch restarts",
        "Restarts of the pod watch in each interval, by reason. gone (410, the watch re-lists) and "
        "timeout are routine every few minutes; steady error or closed restarts mean the API "
        "server is unreachable or rejects the exporter.",
        [target(
            q.exporter_sum("reason", "storm_termination_exporter_kubernetes_watch_restarts_total"),
            q.legend("reason"),
        )],
        "short",
        bars=True,
        interval="1m",
    ), 8)

    scans = q.exporter("storm_termination_exporter_scan_duration_seconds_sum")
    counts = q.exporter("storm_termination_exporter_scan_duration_seconds_count")
    layout.add(timeseries(
        "Full /proc scan duration",
        "Mean time of a full /proc scan per node. It grows with the number of processes on the "
        "node; a scan that takes a large part of --scan.interval (30 s by default) is bad, because "
        "the exporter then spends much of a core re-reading /proc.",
        [target(
            f"max by ({q.node}) (rate({scans}[$__rate_interval]) / rate({counts}[$__rate_interval]))",
            q.legend(),
        )],
        "s",
    ), 12)

    layout.add(timeseries(
        "Workers beyond --topology.max",
        "Workers exported as topology=\"_other\" in each interval because --topology.max topologies "
        "were already exported on that node. Any value above 0 means per-topology panels lump "
        "those topologies together.",
        [target(q.exporter_sum("", "storm_termination_exporter_topology_overflow_total"), q.legend())],
        "short",
        bars=True,
        interval="1m",
    ), 12)


# The review dashboard.


def review_dashboard(config: Config = Config()) -> dict:
    q = Queries(config)
    layout = Layout()
    layout.row("Worker terminations per topology")
    layout.add(_topology_table(q), 24, 10)
    layout.add(_review_percentiles(q), 12, 9)
    layout.add(timeseries(
        "Worker exits per day by outcome",
        "Worker JVM exits per day by outcome, all selected topologies together. A growing share of "
        "sigkill, halted or crashed exits is the trend to discuss; graceful exits are healthy.",
        [target(q.worker_sum("outcome", "storm_worker_exits_total", "$__interval"), "{{outcome}}")],
        "short",
        bars=True,
        stacked=True,
        interval="1d",
        overrides=[color_override(outcome, color) for outcome, color in OUTCOME_COLORS.items()],
    ), 12, 9)

    layout.row("Pod shutdowns per workload")
    layout.add(_workload_table(q), 24, 10)
    return dashboard(
        REVIEW_UID,
        "Storm termination review",
        "Worker terminations per topology and pod shutdowns per workload over the selected range "
        "(7 days by default), for capacity and reliability reviews.",
        ["review"],
        layout.numbered(),
        q,
        refresh="",
        time={"from": "now-7d", "to": "now"},
        timepicker={
            "quick_ranges": [
                {"display": "Last 7 days", "from": "now-7d", "to": "now"},
                {"display": "Last 30 days", "from": "now-30d", "to": "now"},
                {"display": "Previous 7 days", "from": "now-14d", "to": "now-7d"},
            ],
        },
    )


def _topology_table(q: Queries) -> dict:
    def increase(metric: str, *matchers: str) -> str:
        return q.worker_sum("topology", metric, "$__range", *matchers)

    buckets = q.worker_buckets("$__range")
    requests = increase("storm_worker_termination_requests_total")
    escalations = increase("storm_worker_sigkill_escalations_total")
    leftovers = increase("storm_worker_leftover_processes_detected_total")
    counts = {"decimals": 0}
    ratio = {
        "custom.cellOptions": {"mode": "basic", "type": "color-background"},
        "thresholds": _thresholds((0.01, "orange"), (0.1, "red")),
    }
    slow = {"custom.cellOptions": {"type": "color-text"}, "thresholds": _thresholds((q.kill_wait, "red"))}
    return table(
        "Worker terminations per topology",
        "One row per topology over the dashboard's time range: requested terminations, shutdown "
        "duration percentiles (request to JVM exit), SIGKILL escalations and their share of the "
        "requests, leftover processes found after workers exited, and crashes (exits without a "
        f"request). Bad: an escalation ratio above 0, a p99 at or above the supervisor's "
        f"{q.kill_wait:g} s kill wait (red), any leftover or crash. Sorted by escalation ratio.",
        {"topology": "Topology"},
        [
            ("Requested terminations", "short", requests, counts),
            ("Shutdown p50", "s", q.quantile(0.5, "topology", buckets), slow),
            ("Shutdown p95", "s", q.quantile(0.95, "topology", buckets), slow),
            ("Shutdown p99", "s", q.quantile(0.99, "topology", buckets), slow),
            ("SIGKILL escalations", "short", escalations, counts),
            ("Escalation ratio", "percentunit", f"{escalations} / ({requests} > 0)", ratio),
            ("Leftover processes found", "short", leftovers, counts),
            ("Crashes", "short", increase("storm_worker_exits_total", 'outcome="crashed"'), counts),
        ],
        sort_by="Escalation ratio",
    )


def _review_percentiles(q: Queries) -> dict:
    buckets = q.in_namespace(q.recorded(SHUTDOWN_BUCKET_RATE))
    return timeseries(
        "p99 shutdown duration by topology",
        "99th percentile of the worker shutdown duration over sliding 30-minute windows "
        f"({SHUTDOWN_BUCKET_RATE}), per topology, against the supervisor's {q.kill_wait:g} s kill "
        "wait (dashed). A topology that creeps toward the line will soon need SIGKILL to stop.",
        [
            target(q.quantile(0.99, "topology", buckets), "{{topology}}"),
            target(f"vector({q.kill_wait:g})", "supervisor kill wait"),
        ],
        "s",
        overrides=[dashed_override("B", "red")],
    )


def _workload_table(q: Queries) -> dict:
    def increase(metric: str, *matchers: str) -> str:
        return f"sum by (namespace, workload) ({q.increase(q.pod(metric, *matchers), '$__range')})"

    counts = {"decimals": 0}
    exits = [
        (f"{name} exits", "short", increase("storm_pod_container_exits_total", f'outcome="{outcome}"'),
         counts)
        for outcome, name in (
            ("graceful", "Graceful"),
            ("sigkill", "SIGKILL"),
            ("oomkilled", "OOMKilled"),
            ("error", "Error"),
            ("unknown", "Unknown"),
        )
    ]
    buckets = q.increase(q.pod("storm_pod_container_shutdown_duration_seconds_bucket"), "$__range")
    grace = q.pod("storm_pod_grace_period_seconds")
    grace = f"max by (namespace, workload) (max_over_time({grace}[$__range]))"
    return table(
        "Pod shutdowns per workload",
        "One row per namespace and workload over the dashboard's time range (needs the pod watch): "
        "container exits during pod termination by outcome, the kubelet's SIGKILLs after the grace "
        "period, the p99 time from the pod's termination start to a container's exit, and the "
        "largest grace period of its pods. Bad: SIGKILL escalations, and a p99 close to the grace "
        "period, which means containers need almost all of it or more.",
        {"namespace": "Namespace", "workload": "Workload"},
        [
            *exits,
            ("SIGKILL escalations", "short", increase("storm_pod_sigkill_escalations_total"), counts),
            ("Container shutdown p99", "s", q.quantile(0.99, "namespace, workload", buckets), {}),
            ("Grace period", "s", grace, {}),
        ],
        sort_by="SIGKILL escalations",
    )


# Output.


def render(document: dict) -> str:
    """Return the committed text of a dashboard: sorted keys, 2-space indent, final newline."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def generated_files(config: Config = Config()) -> dict[Path, str]:
    """Return each committed dashboard file, copies in DEPLOY_DIR included, and its text."""
    dashboards = {
        OPERATIONS_PATH: render(operations_dashboard(config)),
        REVIEW_PATH: render(review_dashboard(config)),
    }
    copies = {DEPLOY_DIR / path.name: text for path, text in dashboards.items()}
    return {**dashboards, **copies}


def main() -> int:
    for path, text in generated_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
