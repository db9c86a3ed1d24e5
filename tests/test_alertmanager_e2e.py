"""End to end: a SIGKILL escalation reaches a webhook through a real Prometheus and Alertmanager.

The chain is exporter (real kernel sources) -> Prometheus (scrape and rule evaluation
every second, rules from ``alerts.rules`` with ``Config().fast()``) -> Alertmanager
(group_wait and group_interval of 1 s) -> a webhook receiver in this process.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import pytest

from alerts.rules import Config, render_yaml, rule_groups
from tests.alerting import Alertmanager, WebhookReceiver
from tests.conftest import require_root
from tests.servers import ExporterProcess, Prometheus
from tests.stormtree import StormTrees

ALERT = "StormWorkerSigkillEscalation"
NODE = "alerting-e2e-node"
# Seconds from the stuck worker's exit to the webhook: one scrape and one evaluation
# (1 s each), the alert's `for` (at most 10 s in Config.fast()), group_wait (1 s), and
# slack for a loaded machine. A missing alert thus fails the test within about a minute.
DELIVERY_TIMEOUT = 40.0
LOG_TAIL = 6000


@dataclass
class Chain:
    exporter: ExporterProcess
    prometheus: Prometheus
    alertmanager: Alertmanager
    webhook: WebhookReceiver
    config: Config

    def logs(self) -> str:
        """Return the end of Prometheus' and Alertmanager's logs, Alertmanager's alerts and the webhook payloads."""
        try:
            stored = repr(self.alertmanager.alerts())
        except (OSError, RuntimeError, ValueError) as error:
            stored = f"GET /api/v2/alerts failed: {error!r}"
        return (
            f"\n--- prometheus log (end) ---\n{self.prometheus.output()[-LOG_TAIL:]}"
            f"\n--- alertmanager log (end) ---\n{self.alertmanager.output()[-LOG_TAIL:]}"
            f"\n--- alerts stored in alertmanager ---\n{stored}"
            f"\n--- webhook payloads ---\n{self.webhook.payloads()}"
        )


@pytest.fixture
def chain():
    require_root()
    config = Config().fast()
    with contextlib.ExitStack() as cleanup:
        webhook = cleanup.enter_context(WebhookReceiver())

        alertmanager = Alertmanager(webhook.url, group_wait="1s", group_interval="1s", repeat_interval="1h")
        cleanup.callback(alertmanager.stop)
        alertmanager.wait_ready()

        exporter = cleanup.enter_context(ExporterProcess())
        exporter.wait_ready()

        prometheus = Prometheus(
            [exporter.address],
            target_labels={"node": NODE},
            rule_files=[write_rule_file(cleanup, config)],
            evaluation_interval="1s",
            alertmanager=alertmanager.address,
        )
        cleanup.callback(prometheus.stop)
        prometheus.wait_ready()

        yield Chain(exporter, prometheus, alertmanager, webhook, config)


def write_rule_file(cleanup: contextlib.ExitStack, config: Config) -> str:
    """Write the rule groups of ``config`` to a temporary file removed by ``cleanup``."""
    directory = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="alert-rules-"))
    path = os.path.join(directory, "storm-termination-exporter.rules.yml")
    with open(path, "w") as file:
        file.write(render_yaml(rule_groups(config)))
    return path


def is_escalation_of(topology: str) -> Callable[[dict], bool]:
    def matches(alert: dict) -> bool:
        labels = alert.get("labels", {})
        return labels.get("alertname") == ALERT and labels.get("topology") == topology

    return matches


def test_sigkill_escalation_reaches_webhook(chain):
    prometheus, webhook = chain.prometheus, chain.webhook
    launched = int(time.time())
    graceful_topology = f"alerting-graceful-1-{launched}"
    stuck_topology = f"alerting-stuck-2-{launched}"

    with StormTrees(shutdown_sleep=0.5) as trees:
        graceful = trees.start("graceful", graceful_topology, hook_secs=0.3, port=6720)
        stuck = trees.start("ignore-term", stuck_topology, port=6721)
        # The exporter starts a topology's counters at 0 when it first detects the
        # topology, so increase() in the rules covers the first termination once
        # Prometheus has scraped both workers alive.
        ours = f'sum(storm_workers{{topology=~"alerting-.*-{launched}"}})'
        assert prometheus.wait_scalar(ours, 2) == 2, f"Prometheus did not see both workers{chain.logs()}"

        # The graceful tree stops first, so any alert its termination caused would
        # be pending or firing no later than the stuck tree's.
        graceful_truth = graceful.stop()
        stuck_truth = stuck.stop()
    assert not graceful_truth.sigkill_sent
    assert stuck_truth.sigkill_sent
    assert stuck_truth.logwriter_returncode == 137

    alert = webhook.wait_alert(is_escalation_of(stuck_topology), timeout=DELIVERY_TIMEOUT)
    assert alert is not None, f"no {ALERT} for {stuck_topology} at the webhook{chain.logs()}"
    labels = alert["labels"]
    annotations = alert["annotations"]
    assert alert["status"] == "firing", alert
    assert labels["alertname"] == ALERT
    assert labels.get("severity") == "warning", labels
    assert labels.get("topology") == stuck_topology, labels
    assert labels.get("node") == NODE, labels
    assert annotations.get("summary"), annotations
    assert stuck_topology in annotations.get("description", ""), annotations
    assert annotations.get("runbook_url") == f"{chain.config.runbook_url_base}#{ALERT.lower()}", annotations

    # The graceful exit reached Prometheus before the stuck worker's escalation did,
    # so the evaluation that fired the alert above also saw the graceful termination.
    graceful_exits = f'storm_worker_exits_total{{topology="{graceful_topology}",outcome="graceful"}}'
    assert prometheus.wait_scalar(graceful_exits, 1) == 1, f"graceful exit not in Prometheus{chain.logs()}"
    graceful_escalations = f'storm_worker_sigkill_escalations_total{{topology="{graceful_topology}"}}'
    assert prometheus.scalar(graceful_escalations) == 0, f"graceful tree counted as escalated{chain.logs()}"
    graceful_alert_series = prometheus.query(
        f'count_over_time(ALERTS{{alertname="{ALERT}",topology="{graceful_topology}"}}[10m])'
    )
    assert graceful_alert_series == [], f"{ALERT} was pending or firing for {graceful_topology}{chain.logs()}"
    graceful_deliveries = [alert for alert in webhook.alerts() if is_escalation_of(graceful_topology)(alert)]
    assert graceful_deliveries == [], f"{ALERT} for {graceful_topology} reached the webhook{chain.logs()}"
