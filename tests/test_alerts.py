"""The generated alert and recording rules, checked and unit-tested with Debian's promtool."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from alerts.rules import (
    Config,
    ESCALATIONS_INCREASE,
    GRACE_PERIOD_MAX,
    PROMETHEUS_RULE_PATH,
    REQUESTS_INCREASE,
    RULES_PATH,
    SHUTDOWN_BUCKET_RATE,
    SHUTDOWN_QUANTILE,
    duration_seconds,
    generated_files,
    prometheus_rule,
    render_yaml,
    rule_groups,
)

REPO = Path(__file__).resolve().parent.parent
UNIT_TEST_FILES = sorted((REPO / "alerts" / "tests").glob("*.yml"))
RUNBOOKS = REPO / "docs" / "runbooks.md"

ALERT_NAMES = {
    "StormWorkerSigkillEscalation",
    "StormWorkerSigkillEscalationsFrequent",
    "StormWorkerShutdownSlow",
    "StormWorkerTerminationStuck",
    "StormWorkerLeftoverProcesses",
    "StormWorkerCrashing",
    "StormPodSigkillEscalation",
    "StormPodTerminationOverdue",
    "StormTerminationExporterDown",
    "StormTerminationExporterDegraded",
    "StormTerminationExporterEventsLost",
    "StormTerminationExporterKubernetesWatchDown",
    "StormTerminationExporterTopologyOverflow",
    "StormWorkerIgnoresSigterm",
    "StormContainerDropsSigterm",
    "StormSupervisorCannotSignalWorker",
    "StormWorkerUserUnresolvable",
    "StormWorkerKillFailures",
    "StormWorkerPortConflict",
    "StormWorkerPodStopUnsafe",
}
RECORDING_NAMES = {
    SHUTDOWN_BUCKET_RATE,
    SHUTDOWN_QUANTILE,
    GRACE_PERIOD_MAX,
    ESCALATIONS_INCREASE,
    REQUESTS_INCREASE,
}
SEVERITIES = {"info", "warning", "critical"}
RANGE_WINDOW = re.compile(r"\[([0-9a-z]+)\]")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's prometheus package (make system-deps)"
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def alerts(document: dict) -> list[dict]:
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def recordings(document: dict) -> list[dict]:
    return [rule for group in document["groups"] for rule in group["rules"] if "record" in rule]


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """Write the generated rule file and copies of the unit-test files into a temp dir.

    The unit-test files name ../storm-termination-exporter.rules.yml, so they
    test the generated text, not whatever is committed.
    """
    (tmp_path / RULES_PATH.name).write_text(generated_files()[RULES_PATH])
    (tmp_path / "tests").mkdir()
    for path in UNIT_TEST_FILES:
        shutil.copy(path, tmp_path / "tests" / path.name)
    return tmp_path


def test_check_rules_passes(rules_dir: Path):
    result = run_promtool("check", "rules", str(rules_dir / RULES_PATH.name))
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_rules_passes_for_fast_config(tmp_path: Path):
    path = tmp_path / "fast.rules.yml"
    path.write_text(render_yaml(rule_groups(Config().fast())))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_test_files_exist():
    names = {path.name for path in UNIT_TEST_FILES}
    assert {"recording.yml", "workers.yml", "pods.yml", "exporter.yml", "diagnostics.yml"} <= names


@pytest.mark.parametrize("test_file", UNIT_TEST_FILES, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(rules_dir: Path, test_file: Path):
    result = run_promtool("test", "rules", f"tests/{test_file.name}", cwd=rules_dir)
    assert result.returncode == 0, f"{test_file.name}:\n{result.stdout}{result.stderr}"


def test_unit_tests_cover_every_rule():
    tested_alerts: set[str] = set()
    tested_expressions: list[str] = []
    for path in UNIT_TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested_alerts.update(test["alertname"] for test in case.get("alert_rule_test", []))
            tested_expressions.extend(test["expr"] for test in case.get("promql_expr_test", []))
    assert tested_alerts == ALERT_NAMES
    for name in RECORDING_NAMES:
        assert name in tested_expressions, f"no promql_expr_test queries {name}"


@pytest.mark.parametrize("path", [RULES_PATH, PROMETHEUS_RULE_PATH], ids=lambda path: path.name)
def test_committed_file_matches_generated(path: Path):
    expected = generated_files()[path]
    assert path.exists(), f"{path.relative_to(REPO)} is missing: run `python -m alerts.rules`"
    assert path.read_text() == expected, (
        f"{path.relative_to(REPO)} differs from alerts/rules.py: run `python -m alerts.rules`"
    )


def test_alert_names_are_fixed():
    names = {rule["alert"] for rule in alerts(rule_groups())}
    assert names == ALERT_NAMES


def test_recording_rule_names_are_fixed():
    document = rule_groups()
    names = {rule["record"] for rule in recordings(document)}
    assert names == RECORDING_NAMES
    quantiles = [
        rule["labels"]["quantile"] for rule in recordings(document) if rule["record"] == SHUTDOWN_QUANTILE
    ]
    assert quantiles == ["0.5", "0.95", "0.99"]


@pytest.mark.parametrize("rule", alerts(rule_groups()), ids=lambda rule: rule["alert"])
def test_alert_has_required_fields(rule: dict):
    name = rule["alert"]
    assert "for" in rule
    duration_seconds(rule["for"])
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"]
    assert "{{" not in annotations["summary"], "summary must be static"
    assert "$labels." in annotations["description"]
    assert annotations["runbook_url"] == f"{Config().runbook_url_base}#{name.lower()}"


def test_rules_select_only_the_exporter_job():
    # Recording-rule names such as node_topology:storm_... follow a colon and are skipped.
    selector = "{" + Config().job_selector
    metric = re.compile(r"(?<![\w:])(storm_[a-z_]+|up\b)(\{[^}]*\})?")
    for rule in [*alerts(rule_groups()), *recordings(rule_groups())]:
        name = rule.get("alert") or rule["record"]
        for series, matchers in metric.findall(rule["expr"]):
            assert matchers.startswith(selector), f"{series} in {name} lacks {selector}}}"


def test_fast_config_shortens_every_for_and_window():
    document = rule_groups(Config().fast())
    for rule in alerts(document):
        assert duration_seconds(rule["for"]) <= 10, rule["alert"]
    for rule in [*alerts(document), *recordings(document)]:
        for window in RANGE_WINDOW.findall(rule["expr"]):
            assert duration_seconds(window) <= 60, f"{window} in {rule.get('alert') or rule['record']}"


def test_custom_node_label_reaches_clauses_and_templates(tmp_path: Path):
    config = Config(
        node_label="kubernetes_node",
        expected_nodes='label_replace(kube_node_info, "kubernetes_node", "$1", "node", "(.*)")',
    )
    document = rule_groups(config)
    for rule in [*alerts(document), *recordings(document)]:
        name = rule.get("alert") or rule["record"]
        for clause in re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"]):
            labels = [label.strip() for label in clause.split(",")]
            assert "node" not in labels, f"{name}: {clause}"
    for rule in alerts(document):
        description = rule["annotations"]["description"]
        assert "$labels.kubernetes_node" in description, rule["alert"]
        assert "$labels.node " not in description, rule["alert"]
    path = tmp_path / "custom.rules.yml"
    path.write_text(render_yaml(document))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_expected_nodes_empty_drops_kube_node_info():
    down = {rule["alert"]: rule for rule in alerts(rule_groups(Config(expected_nodes="")))}
    assert "kube_node_info" not in down["StormTerminationExporterDown"]["expr"]
    assert "absent(" in down["StormTerminationExporterDown"]["expr"]


def test_prometheus_rule_wraps_the_same_groups():
    document = prometheus_rule()
    assert document["apiVersion"] == "monitoring.coreos.com/v1"
    assert document["kind"] == "PrometheusRule"
    assert document["metadata"]["name"] == "storm-termination-exporter"
    assert document["metadata"]["namespace"] == "monitoring"
    assert document["spec"] == rule_groups()


def test_prometheus_rule_takes_name_and_namespace():
    document = prometheus_rule(Config().fast(), name="storm-alerts-fast", namespace="storm")
    assert document["metadata"]["name"] == "storm-alerts-fast"
    assert document["metadata"]["namespace"] == "storm"
    assert document["spec"] == rule_groups(Config().fast())


def test_render_yaml_round_trips_with_literal_blocks():
    document = rule_groups()
    text = render_yaml(document)
    assert yaml.safe_load(text) == document
    assert "expr: |-\n" in text
    assert render_yaml(document) == text


def test_duration_seconds_parses_and_rejects():
    assert duration_seconds("1h30m") == 5400
    assert duration_seconds("0m") == 0
    assert duration_seconds("10s") == 10
    with pytest.raises(ValueError, match="invalid Prometheus duration"):
        duration_seconds("5 minutes")
    with pytest.raises(ValueError, match="invalid Prometheus duration"):
        duration_seconds("")


def test_runbook_has_a_section_per_alert():
    assert RUNBOOKS.exists(), "docs/runbooks.md is missing: it needs one '## <AlertName>' section per alert"
    headings = set(re.findall(r"^## (\S+)\s*$", RUNBOOKS.read_text(), flags=re.MULTILINE))
    missing = sorted(ALERT_NAMES - headings)
    assert not missing, f"docs/runbooks.md has no '## <name>' heading for: {', '.join(missing)}"


def test_readme_documents_every_config_field():
    text = (REPO / "alerts" / "README.md").read_text()
    for field in dataclasses.fields(Config):
        assert f"`{field.name}`" in text, f"alerts/README.md does not document Config.{field.name}"
