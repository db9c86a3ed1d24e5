"""The Grafana dashboards: committed JSON, the dashboard model, and every query against a real Prometheus."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
import uuid
from dataclasses import dataclass

import pytest
import yaml

from dashboards import generate
from tests.conftest import require_root
from tests.kubeapi import FakeKubeAPI
from tests.servers import REPO, ExporterProcess, Prometheus, free_port, http_get
from tests.stormtree import StormTrees
from tests.test_kubernetes_e2e import (
    NODE,
    inside_cgroup,
    kubelet_leaf,
    remove_tree,
    supervisor_pod,
    watch_flags,
)

PATHS = {generate.OPERATIONS_UID: generate.OPERATIONS_PATH, generate.REVIEW_UID: generate.REVIEW_PATH}
RULES = REPO / "alerts" / "storm-termination-exporter.rules.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's built-in variables, replaced by what a Prometheus query accepts.
BUILTINS = {"__range": "1h", "__rate_interval": "1m", "__interval": "15s"}
ALL = {"namespace": ".*", "topology": ".*", "node": ".*"}
RECORDED_NAME = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def load(uid: str) -> dict:
    return json.loads(PATHS[uid].read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Return every panel, rows and the panels inside collapsed rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def query_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in all_panels(dashboard) if panel["type"] != "row"]


def substitute(expression: str, values: dict[str, str]) -> str:
    """Replace dashboard and built-in variables; an unknown variable raises KeyError."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return BUILTINS[name] if name in BUILTINS else values[name]

    return VARIABLE.sub(replace, expression)


def variable_promql(query: str) -> str:
    """Turn a label_values(selector, label) variable query into the PromQL of the same series."""
    match = LABEL_VALUES.match(query)
    assert match, f"variable query {query!r} is not label_values(selector, label)"
    return f"group by ({match['label']}) ({match['selector']})"


def variable_queries(dashboard: dict) -> dict[str, str]:
    return {
        variable["name"]: variable["query"]["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    }


def targets_of(dashboard: dict) -> list[tuple[str, dict]]:
    return [(panel["title"], query) for panel in query_panels(dashboard) for query in panel["targets"]]


# The committed files and the dashboard model.


@pytest.mark.parametrize("uid", sorted(PATHS))
def test_committed_json_is_generated(uid):
    path = PATHS[uid]
    assert path.exists(), f"{path.name} is missing: run `python dashboards/generate.py`"
    expected = generate.generated_files()[path]
    message = f"{path.name} differs from its generator: run `python dashboards/generate.py`"
    assert path.read_text() == expected, message


@pytest.mark.parametrize("uid", sorted(PATHS))
def test_deploy_copy_is_generated(uid):
    copy = generate.DEPLOY_DIR / PATHS[uid].name
    assert copy.exists(), f"{copy.relative_to(REPO)} is missing: run `python dashboards/generate.py`"
    message = f"{copy.relative_to(REPO)} differs from its generator: run `python dashboards/generate.py`"
    assert copy.read_text() == generate.generated_files()[copy], message
    assert copy.read_text() == PATHS[uid].read_text()


@pytest.mark.parametrize("uid", sorted(PATHS))
def test_dashboard_settings(uid):
    dashboard = load(uid)
    assert dashboard["uid"] == uid
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["editable"] is True
    assert generate.TAG in dashboard["tags"]
    assert dashboard["title"]
    assert dashboard["description"]


@pytest.mark.parametrize("uid", sorted(PATHS))
def test_panel_ids_unique(uid):
    ids = [panel["id"] for panel in all_panels(load(uid))]
    duplicates = sorted({number for number in ids if ids.count(number) > 1})
    assert duplicates == []


@pytest.mark.parametrize("uid", sorted(PATHS))
def test_panels_do_not_overlap(uid):
    occupied: dict[tuple[int, int], str] = {}
    for panel in all_panels(load(uid)):
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        for x in range(position["x"], position["x"] + position["w"]):
            for y in range(position["y"], position["y"] + position["h"]):
                assert (x, y) not in occupied, f"{panel['title']!r} overlaps {occupied[(x, y)]!r}"
                occupied[(x, y)] = panel["title"]


@pytest.mark.parametrize("uid", sorted(PATHS))
def test_variables(uid):
    variables = {variable["name"]: variable for variable in load(uid)["templating"]["list"]}
    assert sorted(variables) == ["datasource", "namespace", "node", "topology"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "topology", "node"):
        variable = variables[name]
        assert variable["type"] == "query", name
        assert variable["datasource"] == DATASOURCE, name
        assert variable["multi"] is True, name
        assert variable["includeAll"] is True, name
        assert variable["allValue"] == ".*", name
        assert variable["definition"] == variable["query"]["query"], name
        assert variable["query"]["query"].startswith("label_values("), name


@pytest.mark.parametrize("uid", sorted(PATHS))
def test_panels_use_datasource_variable(uid):
    for panel in query_panels(load(uid)):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for query in panel["targets"]:
            assert query["datasource"] == DATASOURCE, f"{panel['title']} {query['refId']}"


@pytest.mark.parametrize("uid", sorted(PATHS))
def test_panels_have_description_and_unit(uid):
    for panel in query_panels(load(uid)):
        title = panel["title"]
        assert len(panel.get("description", "")) > 40, title
        assert panel["fieldConfig"]["defaults"].get("unit"), title
        if panel["type"] == "heatmap":
            assert panel["options"]["yAxis"]["unit"] == "s", title
            assert panel["options"]["cellValues"]["unit"], title


@pytest.mark.parametrize("uid", sorted(PATHS))
def test_table_columns_have_names_and_units(uid):
    tables = [panel for panel in query_panels(load(uid)) if panel["type"] == "table"]
    assert tables
    for panel in tables:
        organize = next(step for step in panel["transformations"] if step["id"] == "organize")
        renames = organize["options"]["renameByName"]
        units = {
            override["matcher"]["options"]: property_["value"]
            for override in panel["fieldConfig"]["overrides"]
            for property_ in override["properties"]
            if property_["id"] == "unit"
        }
        for query in panel["targets"]:
            assert query["format"] == "table", panel["title"]
            assert query["instant"] is True, panel["title"]
            field = generate.value_field(len(panel["targets"]), query["refId"])
            header = renames.get(field)
            assert header, f"{panel['title']}: {field} has no column name"
            assert units.get(header), f"{panel['title']}: column {header!r} has no unit"


@pytest.mark.parametrize("uid", sorted(PATHS))
def test_targets_name_their_series(uid):
    for title, query in targets_of(load(uid)):
        legend = query.get("legendFormat", "")
        assert legend and legend != "__auto", f"{title} {query['refId']}"


def test_review_time_range():
    dashboard = load(generate.REVIEW_UID)
    assert dashboard["time"] == {"from": "now-7d", "to": "now"}
    offered = {(entry["from"], entry["to"]) for entry in dashboard["timepicker"]["quick_ranges"]}
    assert ("now-7d", "now") in offered
    assert ("now-30d", "now") in offered


def test_heatmap_reads_buckets():
    heatmaps = [panel for panel in query_panels(load(generate.OPERATIONS_UID)) if panel["type"] == "heatmap"]
    assert len(heatmaps) == 1
    (query,) = heatmaps[0]["targets"]
    assert query["format"] == "heatmap"
    assert "storm_worker_shutdown_duration_seconds_bucket" in query["expr"]
    assert query["legendFormat"] == "{{le}}"


def test_recording_rules_used_exist():
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"]
                for rule in group["rules"] if "record" in rule}
    used = {
        name
        for uid in PATHS
        for _, query in targets_of(load(uid))
        for name in RECORDED_NAME.findall(query["expr"])
    }
    assert used, "the dashboards use no recording rule"
    assert sorted(used - recorded) == []


# Every query against a real Prometheus.


@pytest.fixture(scope="module")
def rules_prometheus():
    # Nothing listens on the target; Prometheus only has to parse the queries.
    prometheus = Prometheus([f"127.0.0.1:{free_port()}"], target_labels={"node": "test-node"},
                            rule_files=[RULES], evaluation_interval="1s")
    try:
        prometheus.wait_ready()
        yield prometheus
    finally:
        prometheus.stop()


@pytest.mark.parametrize("uid", sorted(PATHS))
def test_queries_accepted_by_prometheus(rules_prometheus, uid):
    dashboard = load(uid)
    expressions = {f"{title} {query['refId']}": query["expr"] for title, query in targets_of(dashboard)}
    for name, query in variable_queries(dashboard).items():
        expressions[f"variable {name}"] = variable_promql(query)
    rejected = {}
    for name, expression in expressions.items():
        promql = substitute(expression, ALL)
        assert "$" not in promql, name
        try:
            rules_prometheus.query(promql)
        except RuntimeError as error:
            rejected[name] = str(error)
    assert rejected == {}


# Panels against the data of real worker terminations.

# Panels of the operations dashboard that stay empty in the scenario below, by title and refId.
EXPECTED_EMPTY = {
    # The scenario's workers run in the host's PID namespace, so no container init is diagnosed.
    ("Containers whose PID 1 drops SIGTERM", "A"),
    # Every worker of the scenario has a port of its own and no leftover listens on one.
    ("Worker port conflicts", "A"),
}


@dataclass
class Scenario:
    """The Prometheus of the scenario, when it started and its topologies."""

    prometheus: Prometheus
    start: float
    topologies: dict[str, str]  # role in the scenario -> topology name

    @property
    def pattern(self) -> str:
        """Regex of the scenario's topologies; their names hold no regex or PromQL metacharacters."""
        return "|".join(sorted(self.topologies.values()))


def wait_for_data(prometheus: Prometheus, expression: str, timeout: float) -> list[dict]:
    """Wait until ``expression`` returns a series and return the result, or the last empty one."""
    deadline = time.monotonic() + timeout
    result = prometheus.query(expression)
    while not result and time.monotonic() < deadline:
        time.sleep(0.25)
        result = prometheus.query(expression)
    return result


def query_range(prometheus: Prometheus, expression: str, start: float) -> list[dict]:
    parameters = {"query": expression, "start": f"{start:.3f}", "end": f"{time.time():.3f}", "step": "1"}
    _, _, body = http_get(f"{prometheus.url}/api/v1/query_range?" + urllib.parse.urlencode(parameters))
    answer = json.loads(body)
    assert answer["status"] == "success", f"{expression}: {answer}"
    return answer["data"]["result"]


def has_finite_value(result: list[dict]) -> bool:
    samples = [series["value"] for series in result if "value" in series]
    samples += [point for series in result for point in series.get("values", [])]
    return any(math.isfinite(float(value)) for _, value in samples)


def evaluate(scenario: Scenario, query: dict, values: dict[str, str]) -> list[dict]:
    """Run a panel query the way Grafana does: instant at now, else over the scenario's time range."""
    expression = substitute(query["expr"], values)
    if query["instant"]:
        return scenario.prometheus.query(expression)
    return query_range(scenario.prometheus, expression, scenario.start)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """Run real worker trees in a kubelet-shaped pod cgroup, watched by the exporter and Prometheus.

    The exporter runs with the pod watch, and Prometheus with the recording rules.

    One worker keeps running while the tests read the panels; the others stop
    gracefully, need SIGKILL, leave a child behind or crash outside the pod. Two more
    pods of the workload are deleted, and the kubelet SIGKILLs their containers after
    the grace period.
    """
    require_root()
    api = FakeKubeAPI(bookmark_interval=0.2)
    api.start()
    pod_uid = str(uuid.uuid4())
    container_hex = uuid.uuid4().hex + uuid.uuid4().hex
    api.upsert(supervisor_pod("storm-supervisor-0", pod_uid, NODE, deleted_ago=None, exit_code=None,
                              container_hex=container_hex))
    leaf = kubelet_leaf(pod_uid, container_hex)
    flags = [
        "--leftover.grace=1s", "--scan.interval=2s", "--diagnostics.interval=1s",
        *watch_flags(api, tmp_path_factory.mktemp("kube")),
    ]
    try:
        with ExporterProcess(*flags) as exporter, StormTrees(shutdown_sleep=0.5) as trees:
            exporter.wait_ready()
            prometheus = Prometheus([exporter.address], target_labels={"node": "test-node"},
                                    rule_files=[RULES], evaluation_interval="1s")
            try:
                prometheus.wait_ready()
                yield _run_scenario(api, trees, prometheus, leaf)
            finally:
                prometheus.stop()
    finally:
        remove_tree(leaf)
        api.stop()


def _run_scenario(api: FakeKubeAPI, trees: StormTrees, prometheus: Prometheus, leaf) -> Scenario:
    # Prometheus applies new scrape targets after up to 5 s.
    assert prometheus.wait_scalar('up{job="storm-termination-exporter"}', 1) == 1
    start = time.time()
    launched = int(start)
    names = {role: f"dash-{role}-{index}-{launched}"
             for index, role in enumerate(("steady", "graceful", "stuck", "leaving", "crashing"), start=1)}
    # Trees inherit this process's cgroup: all but the crashing one run in the pod.
    with inside_cgroup(leaf):
        trees.start("graceful", names["steady"], port=6710)
        graceful = trees.start("graceful", names["graceful"], hook_secs=0.3, port=6711)
        restarted = trees.start("graceful", names["graceful"], hook_secs=0.3, port=6712)
        stuck = trees.start("ignore-term", names["stuck"], port=6713)
        leaving = trees.start("leave-children", names["leaving"], port=6714, leftover_secs=5.0)
    crashing = trees.start("crash", names["crashing"], port=6715, crash_secs=3.0)
    scenario = Scenario(prometheus, start, names)
    ours = f'topology=~"{scenario.pattern}"'
    running = prometheus.wait_scalar(f"sum(storm_workers{{{ours}}})", 6)
    assert running == 6, [(series["metric"]["topology"], series["metric"]["state"])
                          for series in prometheus.query(f"storm_workers{{{ours}}} > 0")]

    graceful.stop()
    stuck.stop()
    leaving.stop()
    crashing.wait_exit()
    for role, outcome in (("graceful", "graceful"), ("stuck", "sigkill"), ("leaving", "graceful"),
                          ("crashing", "crashed")):
        expression = f'storm_worker_exits_total{{topology="{names[role]}", outcome="{outcome}"}}'
        assert prometheus.wait_scalar(expression, 1) == 1, expression

    # A second shutdown of one topology and two pod deletions, each scraped before the
    # next, so the percentile panels see the histograms move more than once.
    graceful_series = f'topology="{names["graceful"]}", outcome="graceful"'
    count = f"storm_worker_shutdown_duration_seconds_count{{{graceful_series}}}"
    assert prometheus.wait_scalar(count, 1) == 1
    restarted.stop()
    assert prometheus.wait_scalar(count, 2) == 2
    pod_exits = 'sum(storm_pod_container_exits_total{outcome="sigkill"})'
    for index in (1, 2):
        name = f"storm-supervisor-{index}"
        api.upsert(supervisor_pod(name, str(uuid.uuid4()), NODE, deleted_ago=40, exit_code=137))
        assert prometheus.wait_scalar(pod_exits, index) == index

    conditions = [
        f'storm_worker_leftover_processes_detected_total{{topology="{names["leaving"]}"}} > 0',
        f'{generate.GRACE_PERIOD_MAX}{{topology="{names["steady"]}"}}',
        f'{generate.ESCALATIONS_INCREASE}{{topology="{names["stuck"]}"}} > 0',
        f'{generate.SHUTDOWN_BUCKET_RATE}{{topology="{names["graceful"]}", le="+Inf"}} > 0',
        # The diagnosis runs every second here, so its gauges cover every topology.
        f'storm_worker_sigterm_disposition{{topology="{names["steady"]}"}} > 0',
    ]
    for expression in conditions:
        assert wait_for_data(prometheus, expression, timeout=25.0), expression
    return scenario


def test_operations_panels_show_data(scenario):
    dashboard = load(generate.OPERATIONS_UID)
    titles = {panel["title"] for panel in query_panels(dashboard)}
    assert {title for title, _ in EXPECTED_EMPTY} <= titles
    values = {**ALL, "topology": scenario.pattern}
    empty = [
        f"{title} {query['refId']}"
        for title, query in targets_of(dashboard)
        if (title, query["refId"]) not in EXPECTED_EMPTY
        and not has_finite_value(evaluate(scenario, query, values))
    ]
    assert empty == []


def test_review_panels_show_data(scenario):
    values = {**ALL, "topology": scenario.pattern}
    empty = [
        f"{title} {query['refId']}"
        for title, query in targets_of(load(generate.REVIEW_UID))
        if not has_finite_value(evaluate(scenario, query, values))
    ]
    assert empty == []


def test_namespace_filter(scenario):
    dashboard = load(generate.OPERATIONS_UID)
    panel = next(panel for panel in query_panels(dashboard) if panel["title"] == "Oldest pending termination")
    (query,) = panel["targets"]
    ours = dict(scenario.topologies)

    def topologies(namespace: str) -> set[str]:
        values = {**ALL, "topology": scenario.pattern, "namespace": namespace}
        expression = substitute(query["expr"], values)
        return {series["metric"]["topology"] for series in scenario.prometheus.query(expression)}

    # "All" keeps the worker whose pod is unknown; a namespace keeps its pod's
    # topologies, also those whose workers have exited.
    assert topologies(".*") == set(ours.values())
    in_pod = {name for role, name in ours.items() if role != "crashing"}
    assert topologies("storm") == in_pod
    assert topologies("elsewhere") == set()

    namespace_query = variable_promql(variable_queries(dashboard)["namespace"])
    namespaces = scenario.prometheus.query(substitute(namespace_query, ALL))
    assert "storm" in {series["metric"].get("namespace") for series in namespaces}
