"""Operator metrics: helpers, bounded labels, and the /metrics, /healthz, /readyz server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

import aitask
from aitask import metrics
from aitask.metrics import OperatorMetrics, serve_metrics


@pytest.fixture
def m() -> OperatorMetrics:
    return OperatorMetrics(CollectorRegistry())


def value(m: OperatorMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_task_phases_are_set_zero_filled_and_pruned(m: OperatorMetrics) -> None:
    m.record_task_phases({("ml", "Running"): 2, ("ml", "Pending"): 1, ("cv", "Succeeded"): 4})
    assert value(m, "aitask_tasks", namespace="ml", phase="Running") == 2
    assert value(m, "aitask_tasks", namespace="cv", phase="Running") == 0

    m.record_task_phases({("ml", "Succeeded"): 3})
    assert value(m, "aitask_tasks", namespace="ml", phase="Running") == 0
    assert value(m, "aitask_tasks", namespace="ml", phase="Succeeded") == 3
    assert value(m, "aitask_tasks", namespace="cv", phase="Succeeded") is None


def test_budget_gauges_are_set_and_stale_series_removed(m: OperatorMetrics) -> None:
    m.record_budgets({("team", "daily", "cost"): (50.0, 12.5, 37.5), ("team", "daily", "acceleratorHours/h100"): (
        40.0, 41.0, 0.0)})
    assert value(m, "aitask_budget_limit", namespace="team", budget="daily", resource="cost") == 50.0
    assert value(m, "aitask_budget_spent", namespace="team", budget="daily", resource="cost") == 12.5
    assert value(m, "aitask_budget_remaining", namespace="team", budget="daily", resource="cost") == 37.5
    m.record_budgets({("team", "daily", "cost"): (50.0, 20.0, 30.0)})
    assert value(m, "aitask_budget_spent", namespace="team", budget="daily", resource="cost") == 20.0
    assert value(m, "aitask_budget_spent", namespace="team", budget="daily", resource="acceleratorHours/h100") is None


@pytest.mark.parametrize(
    ("given", "recorded"),
    [("succeeded", "succeeded"), ("OOM_Killed", "oom_killed"), ("pod-uid-1234", "other")],
    ids=["known", "case-insensitive", "unknown-becomes-other"],
)
def test_attempt_results_are_bounded(m: OperatorMetrics, given: str, recorded: str) -> None:
    m.record_attempt("ml", "v100", given)
    assert value(m, "aitask_subtask_attempts_total", namespace="ml", **{"class": "v100"}, result=recorded) == 1


def test_retry_reasons_are_bounded(m: OperatorMetrics) -> None:
    m.record_retry("ml", "a100", "oom_killed")
    m.record_retry("ml", "a100", "something else")
    assert value(m, "aitask_subtask_retries_total", namespace="ml", **{"class": "a100"}, reason="oom_killed") == 1
    assert value(m, "aitask_subtask_retries_total", namespace="ml", **{"class": "a100"}, reason="other") == 1


def test_cycle_records_duration_admissions_and_queue_depth(m: OperatorMetrics) -> None:
    m.record_cycle(0.02, {"v100": 2, "cpu": 0}, {"v100": 3, "cpu": 1})
    m.record_cycle(0.04, {"v100": 1}, {"cpu": 5})
    assert value(m, "aitask_scheduling_cycle_seconds_count") == 2
    assert value(m, "aitask_scheduling_cycle_seconds_sum") == pytest.approx(0.06)
    assert value(m, "aitask_admitted_subtasks_total", **{"class": "v100"}) == 3
    assert value(m, "aitask_admitted_subtasks_total", **{"class": "cpu"}) is None
    assert value(m, "aitask_pending_subtasks", **{"class": "v100"}) == 0
    assert value(m, "aitask_pending_subtasks", **{"class": "cpu"}) == 5


def test_queue_wait(m: OperatorMetrics) -> None:
    m.record_queue_wait("v100", 42.0)
    assert value(m, "aitask_queue_wait_seconds_bucket", **{"class": "v100"}, le="60.0") == 1
    assert value(m, "aitask_queue_wait_seconds_bucket", **{"class": "v100"}, le="30.0") == 0


def test_runtime_ratio_and_sums(m: OperatorMetrics) -> None:
    m.record_runtime("v100", estimated_s=100.0, actual_s=150.0)
    m.record_runtime("v100", estimated_s=0.0, actual_s=10.0)  # no estimate: runtime only
    assert value(m, "aitask_subtask_runtime_seconds_count", **{"class": "v100"}) == 2
    assert value(m, "aitask_runtime_estimate_ratio_count", **{"class": "v100"}) == 1
    assert value(m, "aitask_runtime_estimate_ratio_sum", **{"class": "v100"}) == 1.5
    assert value(m, "aitask_estimated_runtime_seconds_total", **{"class": "v100"}) == 100
    assert value(m, "aitask_actual_runtime_seconds_total", **{"class": "v100"}) == 150


def test_cost(m: OperatorMetrics) -> None:
    m.record_cost("ml", "v100", estimated=3.0, actual=None)
    m.record_cost("ml", "v100", estimated=0.0, actual=2.5)
    assert value(m, "aitask_estimated_cost_total", namespace="ml", **{"class": "v100"}) == 3
    assert value(m, "aitask_actual_cost_total", namespace="ml", **{"class": "v100"}) == 2.5


def test_reconcile_error_labels_are_sanitised(m: OperatorMetrics) -> None:
    m.record_reconcile_error("AITask", "kopf.TemporaryError: retry in 5s")
    assert value(m, "aitask_reconcile_errors_total", kind="AITask", reason="kopf_TemporaryError__retry_in_5s") == 1


def test_api_latency_counts_errors(m: OperatorMetrics) -> None:
    with m.api_latency("kubernetes", "create_job"):
        pass
    with pytest.raises(RuntimeError), m.api_latency("kubernetes", "create_job"):
        raise RuntimeError("boom")
    labels = {"target": "kubernetes", "operation": "create_job"}
    assert value(m, "aitask_api_request_seconds_count", **labels, outcome="ok") == 1
    assert value(m, "aitask_api_request_seconds_count", **labels, outcome="error") == 1


def test_gpu_utilisation_and_prometheus_up(m: OperatorMetrics) -> None:
    m.record_gpu_utilization("v100", 140.0)
    m.record_prometheus_up(False)
    assert value(m, "aitask_subtask_gpu_utilization_percent_sum", **{"class": "v100"}) == 100
    assert value(m, "aitask_prometheus_up") == 0


def test_module_helpers_use_the_operator_registry() -> None:
    before = metrics.REGISTRY.get_sample_value(
        "aitask_subtask_attempts_total", {"namespace": "h", "class": "k", "result": "failed"}
    )
    metrics.record_attempt("h", "k", "failed")
    after = metrics.REGISTRY.get_sample_value(
        "aitask_subtask_attempts_total", {"namespace": "h", "class": "k", "result": "failed"}
    )
    assert (after or 0) - (before or 0) == 1
    assert metrics.REGISTRY.get_sample_value("aitask_operator_info", {"version": aitask.__version__}) == 1


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_server_serves_metrics_and_probes(m: OperatorMetrics) -> None:
    ready = {"value": False}
    m.record_attempt("ml", "v100", "succeeded")
    stop = serve_metrics("127.0.0.1", 0, lambda: True, ready=lambda: ready["value"], registry=m.registry)
    try:
        base = f"http://127.0.0.1:{stop.port}"
        status, content_type, body = fetch(f"{base}/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        assert 'aitask_subtask_attempts_total{class="v100",namespace="ml",result="succeeded"} 1.0' in body
        assert fetch(f"{base}/healthz")[0] == 200
        assert fetch(f"{base}/readyz")[0] == 503
        ready["value"] = True
        assert fetch(f"{base}/readyz")[0] == 200
        assert fetch(f"{base}/nope")[0] == 404
    finally:
        stop()


# -- docs and dashboard stay in step with the metrics --------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "aitask-operator" / "dashboards" / "aitask-operator.json"
OPERATIONS = ROOT / "docs" / "operations.md"


def family_names() -> set[str]:
    registry = CollectorRegistry()
    OperatorMetrics(registry)
    names = set()
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        names.add(name + ("_info" if family.type == "info" else ""))
    return names


def test_every_metric_is_documented() -> None:
    table = OPERATIONS.read_text().split("## Metrics", 1)[1].split("## Alerts", 1)[0]
    documented = set(re.findall(r"^\| `(aitask_[a-z_]+)`", table, re.MULTILINE))
    assert documented == family_names()


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_uses_the_datasource_variable_and_known_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["templating"]["list"][0] == {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
    }
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    known = family_names()
    used = {name for expr in dashboard_exprs() for name in re.findall(r"\b(aitask_[a-z_]+)", expr)}
    suffixes = ("_bucket", "_sum", "_count")
    base = {next((n[: -len(s)] for s in suffixes if n.endswith(s)), n) for n in used}
    assert base - known <= {"aitask_agent_nvml_up"}


def test_dashboard_and_alert_expressions_parse(tmp_path: Path) -> None:
    # Never skipped: `make setup` installs promtool (Debian package prometheus); fail loudly without it.
    assert shutil.which("promtool"), "promtool not found: run `make setup` (installs the Debian package prometheus)"
    substitutions = {"$namespace": ".*", "$class": ".*", "$__rate_interval": "5m", "$__range": "1h"}
    rules: list[dict[str, str]] = []
    for index, expr in enumerate(dashboard_exprs()):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:expr{index}", "expr": expr})
    alerts_block = re.search(r"```yaml\n(.*?)```", OPERATIONS.read_text(), re.DOTALL)
    assert alerts_block is not None
    groups = yaml.safe_load(alerts_block.group(1))["spec"]["groups"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}, *groups]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _documented_metrics() -> list[tuple[str, list[str], str]]:
    """(metric, labels, meaning) of each row of the metrics table in docs/operations.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`aitask_"):
            labels = re.findall(r"`([a-z_]+)`", cells[2])
            rows.append((cells[0].strip("`"), labels, cells[3]))
    return rows


def _names(collector: object) -> set[str]:
    """The names a collector exposes (a counter's family name without its ``_total``)."""
    describe = getattr(collector, "describe", None)
    families = describe() if callable(describe) else []
    return {family.name + suffix for family in families for suffix in ("", "_total")}


def test_every_metric_and_label_in_the_operations_doc_exists(m: OperatorMetrics) -> None:
    rows = _documented_metrics()
    assert len(rows) >= 15
    for name, labels, _ in rows:
        if name == "aitask_operator_info":
            assert value(m, name, **{label: aitask.__version__ for label in labels}) == 1
            continue
        collector = next((c for c in vars(m).values() if name in _names(c)), None)
        assert collector is not None, f"{name} is documented but not registered"
        if labels:
            collector.labels(**{label: "x" for label in labels})  # ValueError unless exactly these labels
        else:
            with pytest.raises(ValueError, match="No label names"):
                collector.labels("x")  # a metric without labels takes none


def test_documented_label_values_are_the_bounded_sets() -> None:
    meanings = {name: meaning for name, _, meaning in _documented_metrics()}
    results = re.findall(r"`([a-z_]+)`", meanings["aitask_subtask_attempts_total"].split("∈", 1)[1])
    reasons = re.findall(r"`([a-z_]+)`", meanings["aitask_subtask_retries_total"].split("∈", 1)[1])
    assert set(results) == metrics.ATTEMPT_RESULTS
    assert set(reasons) == metrics.RETRY_REASONS
