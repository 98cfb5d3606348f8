"""The Grafana dashboard and the Prometheus alert rules only use metrics the worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from usage_ingest.worker.metrics import WorkerMetrics

OPS = Path(__file__).parents[2] / "ops"
METRIC_NAME = re.compile(r"\busage_ingest_[a-z0-9_]+")


def exported_sample_names() -> set[str]:
    """Every series name the worker can export, with each label set touched once."""
    metrics = WorkerMetrics()
    metrics.events.labels("created", "").inc()
    metrics.db_round_trip.labels("store_usages").observe(0.01)
    metrics.retries.labels("store_usages").inc()
    metrics.waiting.labels("store_usages").inc(0.1)
    metrics.batch_size.observe(10)
    metrics.batch_duration.observe(0.1)
    metrics.end_to_end.observe(0.2)
    progress = metrics.progress(("usage.events", 0))
    progress.committed, progress.high_watermark = 5, 9
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict[str, object]]:
    rules = yaml.safe_load((OPS / "prometheus-alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_dashboard_uses_only_exported_metrics() -> None:
    used = {name for expr in dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    assert used, "the dashboard queries no usage-ingest metric"
    assert used <= exported_sample_names(), used - exported_sample_names()


def test_alert_rules_use_only_exported_metrics() -> None:
    used = {name for rule in alert_rules() for name in METRIC_NAME.findall(str(rule["expr"]))}
    assert used <= exported_sample_names(), used - exported_sample_names()


def test_the_issue_alerts_exist_with_a_runbook_in_the_readme() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    names = [str(rule["alert"]) for rule in alert_rules()]
    for needed in ("LagGrowing", "TimeLagHigh", "RejectionRate", "NotReady"):
        assert any(needed in name for name in names), needed
    for name in names:
        assert f"`{name}`" in readme, f"no runbook line for {name} in the README"


def test_every_exported_metric_is_documented() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    families = {family.name for family in WorkerMetrics().registry.collect()}
    for family in families:
        assert f"`{family}" in readme, f"{family} is not in the README's metrics table"
