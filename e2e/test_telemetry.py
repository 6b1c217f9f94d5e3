"""Telemetry end to end: the real Prometheus scrapes the operator and a DCGM-style exporter.

The exporter stands in for dcgm-exporter (or `aitask agent`) on GPU nodes: it publishes
DCGM_FI_DEV_GPU_UTIL / DCGM_FI_DEV_FB_USED for the KWOK pods of a running sub-task, and
the operator must read them back through Prometheus into the AITask's status, keep working
when Prometheus goes away, and say so with a MetricsUnavailable condition until it returns.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster, Prometheus, free_port, prometheus_config
from e2e.operator import Operator, running_operator
from e2e.test_operator import aitask, classes, sim, task_status, wait_phase  # noqa: F401  (classes: fixture)
from e2e.util import get, list_objects, wait_for

pytestmark = pytest.mark.e2e


class FakeDcgm:
    """A tiny exporter whose exposition text the test sets."""

    def __init__(self) -> None:
        self.text = ""
        parent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = parent.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def publish(self, namespace: str, pods: list[dict[str, Any]], util: float, fb_used_mib: int) -> None:
        lines = ["# TYPE DCGM_FI_DEV_GPU_UTIL gauge", "# TYPE DCGM_FI_DEV_FB_USED gauge"]
        for i, pod in enumerate(pods):
            labels = (f'gpu="0",UUID="GPU-{i:08d}",modelName="NVIDIA H100 80GB HBM3",'
                      f'Hostname="{pod["spec"].get("nodeName", "")}",namespace="{namespace}",'
                      f'pod="{pod["metadata"]["name"]}",container="main"')
            lines.append(f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} {util}")
            lines.append(f"DCGM_FI_DEV_FB_USED{{{labels}}} {fb_used_mib}")
        self.text = "\n".join(lines) + "\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dcgm() -> Iterator[FakeDcgm]:
    exporter = FakeDcgm()
    yield exporter
    exporter.close()


@pytest.fixture
def observed(
    cluster: Cluster, namespace: str, classes: dict[str, Any], tmp_path: Path, dcgm: FakeDcgm  # noqa: F811
) -> Iterator[tuple[Operator, Prometheus]]:
    """An operator with GPU feedback from a real Prometheus that scrapes it and the fake exporter."""
    port = free_port()
    with running_operator(cluster, namespace, tmp_path, env={
        "AITASK_PROMETHEUS_URL": f"http://127.0.0.1:{port}",
        "AITASK_PROMETHEUS_PERIOD_SECONDS": "1",
        "AITASK_PROMETHEUS_TIMEOUT_SECONDS": "1",
    }) as op:
        prom = Prometheus(tmp_path / "prometheus", prometheus_config({
            "prometheus": ["127.0.0.1:{port}"],
            "aitask-operator": [f"127.0.0.1:{op.metrics_port}"],
            "dcgm": [dcgm.target],
        }), port=port)
        prom.start()
        try:
            yield op, prom
        finally:
            prom.stop()
            print(f"--- operator log ---\n{op.log(200)}\n--- prometheus ---\n{prom.logs()}")


def test_prometheus_feedback_reaches_status_and_survives_an_outage(
    cluster: Cluster, namespace: str, observed: tuple[Operator, Prometheus], dcgm: FakeDcgm
) -> None:
    op, prom = observed
    op.wait_metrics()
    steps = [{"name": "infer", "type": "inference", "image": "registry.example/telemetry:e2e",
              "parallelism": 2, "executor": {"accelerators": 1, "cpu": "2", "memory": "8Gi", "classes": ["h100"]},
              "estimate": {"seconds": 60}, "podMetadata": sim("40s")}]
    cluster.apply(aitask("watched", steps), namespace=namespace)
    pods = wait_for(lambda: [p for p in list_objects(cluster, "pods", namespace, "aitask.dev/task=watched")
                             if p["status"].get("phase") == "Running"] or None,
                    timeout=60, what="running GPU pods", describe=op.log)
    dcgm.publish(namespace, pods, util=73.0, fb_used_mib=12000)

    def sampled() -> dict[str, Any] | None:
        subs = task_status(cluster, namespace, "watched").get("subtasks") or [{}]
        metrics: dict[str, Any] | None = subs[0].get("metrics")
        return metrics if metrics and metrics.get("gpuUtilAvg") is not None else None

    metrics = wait_for(sampled, timeout=60, what="GPU utilisation in status", describe=op.log)
    assert 70.0 <= metrics["gpuUtilAvg"] <= 76.0
    assert metrics["gpuMemoryUsedMaxBytes"] == 12000 * 2**20
    assert task_status(cluster, namespace, "watched")["metrics"]["gpuUtilMax"] >= 70.0

    # Prometheus scrapes the operator's own /metrics.
    scraped = wait_for(lambda: prom.query('aitask_scheduling_cycle_seconds_count{job="aitask-operator"} > 0'),
                       timeout=30, what="the operator's metrics in Prometheus", describe=prom.logs)
    assert scraped

    # Outage: reconciliation goes on, the condition says why the feedback stopped.
    prom.stop()

    def unavailable() -> dict[str, Any] | None:
        conds = task_status(cluster, namespace, "watched").get("conditions") or []
        return next((c for c in conds if c["type"] == "MetricsUnavailable" and c["status"] == "True"), None)

    cond = wait_for(unavailable, timeout=30, what="MetricsUnavailable=True", describe=op.log)
    assert cond["reason"] == "PrometheusUnreachable"
    assert op.alive()
    prom.start()

    def recovered() -> bool:
        conds = task_status(cluster, namespace, "watched").get("conditions") or []
        return any(c["type"] == "MetricsUnavailable" and c["status"] == "False" for c in conds)

    wait_for(recovered, timeout=30, what="MetricsUnavailable cleared", describe=op.log)
    status = wait_phase(cluster, op, namespace, "watched", "Succeeded", timeout=90)
    # The finished attempt is counted once, with bounded labels, and Prometheus has it.
    counted = wait_for(lambda: prom.query(
        f'aitask_subtask_attempts_total{{namespace="{namespace}",class="h100",result="succeeded"}}'),
        timeout=30, what="the attempt counter in Prometheus", describe=prom.logs)
    assert float(counted[0]["value"][1]) == 1.0
    assert status["subtasks"][0]["metrics"]["gpuUtilAvg"] >= 70.0
    learned = get(cluster, "executorclass", "h100")["status"]["learned"]["registry.example/telemetry"]  # type: ignore[index]
    assert learned["gpuUtilAvg"] >= 70.0
