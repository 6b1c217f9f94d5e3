"""Prometheus feedback: pure PromQL builders, checked by a real promtool where present, and the
client against a local stub of the HTTP API (answers, errors, and a server that never answers)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from aitask.adapters.prom import (
    GpuUsage,
    PodGpuUsage,
    PrometheusClient,
    PrometheusUnavailable,
    aggregate_pods,
    duration_literal,
    escape_label_value,
    gpu_memory_used_max_query,
    gpu_usage_query,
    gpu_util_avg_query,
    gpu_util_max_query,
    node_gpu_util_query,
    pod_regex_for_jobs,
    pod_regex_for_pods,
)

# -- builders ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "literal"), [(0, "1s"), (0.2, "1s"), (59.5, "60s"), (300, "300s")], ids=str)
def test_duration_literal(seconds: float, literal: str) -> None:
    assert duration_literal(seconds) == literal


def test_escape_label_value() -> None:
    assert escape_label_value('a"b\\c') == 'a\\"b\\\\c'


@pytest.mark.parametrize(
    ("jobs", "regex"),
    [
        (["t-train-0"], "(?:t-train-0)-(?:[0-9]+-)?[a-z0-9]{5}"),
        (["b-x-1", "a.b-x-0", "b-x-1"], "(?:a\\.b-x-0|b-x-1)-(?:[0-9]+-)?[a-z0-9]{5}"),
    ],
    ids=["one-job", "sorted-deduplicated-escaped"],
)
def test_pod_regex_for_jobs(jobs: list[str], regex: str) -> None:
    assert pod_regex_for_jobs(jobs) == regex


def test_pod_regex_for_pods_and_empty_input() -> None:
    assert pod_regex_for_pods(["p-2", "p-1"]) == "p-1|p-2"
    with pytest.raises(ValueError, match="at least one"):
        pod_regex_for_pods([])
    with pytest.raises(ValueError, match="at least one"):
        pod_regex_for_jobs([])


def test_util_avg_query_covers_both_label_layouts() -> None:
    query = gpu_util_avg_query("ml", "p-1", 300)
    assert query.startswith("avg by (namespace, pod) (avg_over_time(DCGM_FI_DEV_GPU_UTIL{")
    assert 'DCGM_FI_DEV_GPU_UTIL{namespace="ml",pod=~"p-1"}[300s]' in query
    assert 'DCGM_FI_DEV_GPU_UTIL{exported_namespace="ml",exported_pod=~"p-1"}[300s]' in query
    assert '"pod", "$1", "exported_pod", "(.+)"' in query


def test_max_and_memory_queries() -> None:
    assert gpu_util_max_query("ml", "p", 60).startswith("max by (namespace, pod) (max_over_time(DCGM_FI_DEV_GPU_UTIL")
    assert "max_over_time(DCGM_FI_DEV_FB_USED{" in gpu_memory_used_max_query("ml", "p", 60)
    assert node_gpu_util_query(120) == "avg by (Hostname) (avg_over_time(DCGM_FI_DEV_GPU_UTIL[120s]))"


def test_combined_query_tags_each_statistic() -> None:
    query = gpu_usage_query("ml", "p", 60)
    for stat in ("util_avg", "util_max", "mem_max_mib"):
        assert f'"aitask_stat", "{stat}", "", ""' in query


# -- the builders evaluated by a real Prometheus engine (promtool) ------------------------------

POD = "t-train-0-x7k2p"
OTHER = "t-eval-0-abcde"


def test_queries_evaluate_in_promtool(tmp_path: Path) -> None:
    # Never skipped: `make setup` installs promtool (Debian package prometheus); fail loudly without it.
    assert shutil.which("promtool"), "promtool not found: run `make setup` (installs the Debian package prometheus)"
    regex = pod_regex_for_jobs(["t-train-0"])
    # pod 1 reported with honorLabels (pod/namespace), on two GPUs; the same workload's second pod
    # through a ServiceMonitor that renamed the labels (exported_*); another job's pod; another namespace.
    series = [
        (f'DCGM_FI_DEV_GPU_UTIL{{namespace="ml",pod="{POD}",gpu="0",Hostname="n1"}}', "40 60 80"),
        (f'DCGM_FI_DEV_GPU_UTIL{{namespace="ml",pod="{POD}",gpu="1",Hostname="n1"}}', "20 20 20"),
        (
            'DCGM_FI_DEV_GPU_UTIL{namespace="gpu-operator",pod="dcgm-exporter-abcde",'
            'exported_namespace="ml",exported_pod="t-train-0-1-zz9zz",gpu="0",Hostname="n2"}',
            "90 90 90",
        ),
        (f'DCGM_FI_DEV_GPU_UTIL{{namespace="ml",pod="{OTHER}",gpu="0",Hostname="n2"}}', "5 5 5"),
        (f'DCGM_FI_DEV_GPU_UTIL{{namespace="other",pod="{POD}",gpu="0",Hostname="n3"}}', "1 1 1"),
        (f'DCGM_FI_DEV_FB_USED{{namespace="ml",pod="{POD}",gpu="0",Hostname="n1"}}', "1000 3000 2000"),
        (f'DCGM_FI_DEV_FB_USED{{namespace="ml",pod="{POD}",gpu="1",Hostname="n1"}}', "500 500 500"),
    ]
    pod2 = "t-train-0-1-zz9zz"
    tests: list[dict[str, Any]] = [
        {
            "expr": gpu_util_avg_query("ml", regex, 300),
            "exp": [({"namespace": "ml", "pod": POD}, 40), ({"namespace": "ml", "pod": pod2}, 90)],
        },
        {
            "expr": gpu_util_max_query("ml", regex, 300),
            "exp": [({"namespace": "ml", "pod": POD}, 80), ({"namespace": "ml", "pod": pod2}, 90)],
        },
        {
            "expr": gpu_memory_used_max_query("ml", regex, 300),
            "exp": [({"namespace": "ml", "pod": POD}, 3000)],
        },
        {
            "expr": gpu_usage_query("ml", pod_regex_for_pods([POD]), 300),
            "exp": [
                ({"namespace": "ml", "pod": POD, "aitask_stat": "util_avg"}, 40),
                ({"namespace": "ml", "pod": POD, "aitask_stat": "util_max"}, 80),
                ({"namespace": "ml", "pod": POD, "aitask_stat": "mem_max_mib"}, 3000),
            ],
        },
        {
            "expr": node_gpu_util_query(300),
            "exp": [({"Hostname": "n1"}, 40), ({"Hostname": "n2"}, 47.5), ({"Hostname": "n3"}, 1)],
        },
    ]

    def labels(mapping: dict[str, str]) -> str:
        return "{" + ",".join(f'{key}="{value}"' for key, value in sorted(mapping.items())) + "}"

    document = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": name, "values": values} for name, values in series],
                "promql_expr_test": [
                    {
                        "expr": test["expr"],
                        "eval_time": "2m",
                        "exp_samples": [{"labels": labels(lbl), "value": val} for lbl, val in test["exp"]],
                    }
                    for test in tests
                ],
            }
        ],
    }
    path = tmp_path / "queries_test.yaml"
    path.write_text(yaml.safe_dump(document))
    result = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- aggregation and status shape ----------------------------------------------------------------

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_aggregate_pods() -> None:
    usage = aggregate_pods(
        [
            PodGpuUsage("ml", "a", util_avg_percent=40, util_max_percent=80, memory_used_max_bytes=10),
            PodGpuUsage("ml", "b", util_avg_percent=60, util_max_percent=70),
        ],
        AT,
    )
    assert usage == GpuUsage(50, 80, 10, 2, AT)
    assert aggregate_pods([], AT) is None


def test_status_shape_leaves_out_unknowns() -> None:
    assert GpuUsage(33.333, None, 2**30, 1, AT).as_status() == {
        "gpuUtilAvg": 33.3,
        "gpuMemoryUsedMaxBytes": 2**30,
        "sampledAt": "2026-01-02T03:04:05Z",
    }


# -- client against a stub Prometheus HTTP API ---------------------------------------------------


class StubPrometheus(BaseHTTPRequestHandler):
    """Answers /api/v1/query from ``replies`` (keyed by the first word of the query), records queries."""

    replies: dict[str, tuple[int, Any]] = {}
    queries: list[dict[str, list[str]]] = []

    def do_GET(self) -> None:  # noqa: N802
        params = parse_qs(urlparse(self.path).query)
        type(self).queries.append(params)
        query = params["query"][0]
        status, payload = next(
            (reply for prefix, reply in self.replies.items() if query.startswith(prefix)),
            (200, {"status": "success", "data": {"resultType": "vector", "result": []}}),
        )
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def vector(*items: tuple[dict[str, str], float | str]) -> dict[str, Any]:
    result = [{"metric": labels, "value": [1700000000.0, str(value)]} for labels, value in items]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
def stub() -> Iterator[tuple[str, type[StubPrometheus]]]:
    handler = type("Stub", (StubPrometheus,), {"replies": {}, "queries": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_pod_gpu_usage_parses_the_combined_answer(stub: tuple[str, type[StubPrometheus]]) -> None:
    url, handler = stub
    handler.replies["label_replace("] = (
        200,
        vector(
            ({"namespace": "ml", "pod": "p-1", "aitask_stat": "util_avg"}, 42.5),
            ({"namespace": "ml", "pod": "p-1", "aitask_stat": "util_max"}, 97),
            ({"namespace": "ml", "pod": "p-1", "aitask_stat": "mem_max_mib"}, 1024),
            ({"namespace": "ml", "pod": "p-2", "aitask_stat": "util_avg"}, "NaN"),
        ),
    )
    observed: list[tuple[str, bool]] = []
    client = PrometheusClient(url, 2.0, observer=lambda op, _s, ok: observed.append((op, ok)))
    pods = client.get_pod_gpu_usage("ml", "p-.*", 300, at=AT)
    assert pods == {"p-1": PodGpuUsage("ml", "p-1", 42.5, 97, 1024 * 1024 * 1024)}
    assert handler.queries[0]["time"] == [f"{AT.timestamp():.3f}"]
    assert handler.queries[0]["timeout"] == ["2s"]
    assert observed == [("gpu_usage", True)]
    usage = client.get_gpu_usage("ml", "p-.*", 300, at=AT)
    assert usage == GpuUsage(42.5, 97, 2**30, 1, AT)


def test_no_series_means_no_usage(stub: tuple[str, type[StubPrometheus]]) -> None:
    url, _ = stub
    assert PrometheusClient(url, 2.0).get_gpu_usage("ml", "p", 60) is None


def test_class_gpu_util_from_node_util(stub: tuple[str, type[StubPrometheus]]) -> None:
    url, handler = stub
    handler.replies["avg by (Hostname)"] = (200, vector(({"Hostname": "n1"}, 10), ({"Hostname": "n2"}, 30)))
    client = PrometheusClient(url, 2.0)
    assert client.get_class_gpu_util({"v100": ["n1", "n2"], "a100": ["n3"], "k80": ["n2"]}, 600) == {
        "v100": 20,
        "k80": 30,
    }
    assert client.is_up()


@pytest.mark.parametrize(
    ("status", "payload"),
    [
        (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}),
        (503, b"unavailable"),
        (200, b"not json"),
        (200, {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}),
        (200, {"status": "success", "data": {}}),
    ],
    ids=["bad-query", "http-503", "not-json", "malformed-sample", "missing-result"],
)
def test_bad_answers_raise_unavailable(stub: tuple[str, type[StubPrometheus]], status: int, payload: Any) -> None:
    url, handler = stub
    handler.replies[""] = (status, payload)
    observed: list[bool] = []
    client = PrometheusClient(url, 2.0, observer=lambda _op, _s, ok: observed.append(ok))
    with pytest.raises(PrometheusUnavailable):
        client.get_gpu_usage("ml", "p", 60)
    assert observed == [False]
    assert not client.is_up()


def test_connection_refused_raises_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = PrometheusClient(f"http://127.0.0.1:{port}", 1.0)
    with pytest.raises(PrometheusUnavailable, match="ConnectionError"):
        client.query("vector(1)")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_silent_server_times_out(silent_server: str) -> None:
    client = PrometheusClient(silent_server, 0.5)
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailable, match="Timeout"):
        client.get_gpu_usage("ml", "p", 60)
    assert time.monotonic() - started < 2.0


def test_async_call_has_a_hard_deadline(silent_server: str) -> None:
    client = PrometheusClient(silent_server, 1.5, deadline_s=0.3)

    async def call() -> float:
        started = time.monotonic()
        with pytest.raises(PrometheusUnavailable, match="within 0.3s"):
            await client.call_async(client.get_gpu_usage, "ml", "p", 60)
        return time.monotonic() - started

    # The await ends at the deadline; asyncio.run then waits for the worker thread's own timeout.
    assert asyncio.run(call()) < 1.0


def test_async_call_returns_the_result(stub: tuple[str, type[StubPrometheus]]) -> None:
    url, _ = stub
    client = PrometheusClient(url, 2.0)
    assert asyncio.run(client.call_async(client.get_node_gpu_util, 60)) == {}


def test_empty_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="URL"):
        PrometheusClient("", 1.0)
