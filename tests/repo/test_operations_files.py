"""The Grafana dashboard and the Prometheus alert rules only use metrics the worker and the
lag exporter export; the rules' thresholds are those of `alert_thresholds`, and promtool
checks the rules and runs their unit tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from usage_ingest import alert_thresholds
from usage_ingest.kafka.admin import GroupDescription, PartitionPosition
from usage_ingest.lag import build_report
from usage_ingest.lag_exporter import LagCollector, LagSnapshot
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
    worker = {sample.name for family in metrics.registry.collect() for sample in family.samples}
    return worker | {sample.name for family in exporter_families() for sample in family.samples}


def exporter_families() -> list[Metric]:
    """Every family the lag exporter exports, from a report with a committed partition."""
    group = GroupDescription("usage-ingest", "Stable", ("worker-1@10.0.0.1",))
    positions = [PartitionPosition("usage.events", 0, 5, 0, 9, 1_000)]
    snapshot = LagSnapshot("usage-ingest", stale_after_s=1e12)
    snapshot.succeeded(build_report(group, positions, 2_000), now=1.0)
    registry = CollectorRegistry()
    registry.register(LagCollector(snapshot, clock=lambda: 1.0))
    return list(registry.collect())


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
    families |= {family.name for family in exporter_families()}
    for family in families:
        assert f"`{family}" in readme, f"{family} is not in the README's metrics table"


def rule(name: str) -> dict[str, object]:
    [found] = [r for r in alert_rules() if r.get("alert") == name]
    return found


def test_lag_alerts_read_the_broker_side_exporter_not_the_workers() -> None:
    for name in ("UsageIngestLagGrowing", "UsageIngestTimeLagHigh"):
        used = set(METRIC_NAME.findall(str(rule(name)["expr"])))
        assert used, name
        assert all(metric.startswith("usage_ingest_group_") for metric in used), (name, used)
    # With DNS discovery a dead worker leaves no `up` series: only absent() sees them all gone.
    assert "absent(" in str(rule("UsageIngestWorkersAbsent")["expr"])
    assert 'job="usage-ingest"' in str(rule("UsageIngestWorkersAbsent")["expr"])
    assert "absent(" in str(rule("UsageIngestLagExporterDown")["expr"])


def thresholds_in(expr: str) -> set[float]:
    """The numbers the expression compares with `>`, but 0 (growing, non-empty)."""
    return {float(n) for n in re.findall(r">\s*([0-9]+(?:\.[0-9]+)?)", expr)} - {0.0}


def test_the_rules_thresholds_are_those_of_alert_thresholds() -> None:
    """The console highlights a figure past `alert_thresholds`: the same numbers as here."""
    expected = {
        "UsageIngestLagGrowing": alert_thresholds.OFFSET_LAG,
        "UsageIngestTimeLagHigh": alert_thresholds.TIME_LAG_S,
        "UsageIngestRejectionRateHigh": alert_thresholds.REJECTION_RATIO,
    }
    for name, threshold in expected.items():
        assert thresholds_in(str(rule(name)["expr"])) == {float(threshold)}, name


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool is missing: install the Debian package prometheus (make debian-packages)"
    return subprocess.run(
        [path, *args], capture_output=True, text=True, timeout=120, check=False, cwd=OPS
    )


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", "prometheus-alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_unit_tests_pass() -> None:
    """ops/prometheus-alerts.test.yml: a stopped group with a growing backlog and all workers
    gone fire the alerts; a healthy group, and one catching up, leave them silent."""
    tested = promtool("test", "rules", "prometheus-alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tests = yaml.safe_load((OPS / "prometheus-alerts.test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    for name in (
        "UsageIngestLagGrowing",
        "UsageIngestTimeLagHigh",
        "UsageIngestGroupEmptyWithBacklog",
        "UsageIngestWorkersAbsent",
        "UsageIngestLagExporterDown",
        "UsageIngestLagUnknown",
    ):
        assert name in fired, f"no unit test shows {name} firing"
    silent = next(t for t in tests if t["name"] == "a healthy group stays silent")
    unchecked = {str(r["alert"]) for r in alert_rules()} - {
        case["alertname"] for case in silent["alert_rule_test"]
    }
    assert not unchecked, f"the healthy group does not check {unchecked}"
