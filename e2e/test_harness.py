"""Proves the harness: the control plane schedules GPU Jobs for real, KWOK finishes pods as the
simulation annotations say, lost nodes fail their pods, helm installs charts, Prometheus answers."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

import pytest
import yaml

from e2e.cluster import NODES_YAML, Cluster, Prometheus, prometheus_config
from e2e.util import (
    GPU_TOLERATION,
    condition,
    get,
    has_condition,
    job_pods,
    make_job,
    phase_is,
    terminated,
    wait_for,
    wait_for_event,
    wait_for_job,
    wait_for_job_pod,
)

pytestmark = pytest.mark.e2e

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-40GB"


def _seconds(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_control_plane_is_real_and_nodes_are_ready(cluster: Cluster) -> None:
    version = cluster.api("GET", "/version")
    assert version["gitVersion"] == "v1.36.3"
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    assert set(cluster.node_names) <= set(nodes)
    assert all(has_condition(nodes[n], "Ready") for n in cluster.node_names)
    gpus = {n: nodes[n]["status"]["allocatable"].get("nvidia.com/gpu") for n in cluster.node_names}
    assert gpus["gpu-h100-0"] == "8"
    assert gpus["gpu-l4-1"] == "4"
    assert gpus["gpu-t4-0"] == "1"
    assert gpus["cpu-0"] is None
    leases = cluster.kubectl_json("get", "leases", "-n", "kube-node-lease")["items"]
    assert {lease["metadata"]["name"] for lease in leases} >= set(cluster.node_names)


def test_service_account_tokens_are_signed_and_rbac_enforced(cluster: Cluster, namespace: str) -> None:
    assert get(cluster, "configmap", "kube-root-ca.crt", namespace) is not None  # --root-ca-file
    token = cluster.kubectl("create", "token", "default", "-n", namespace).stdout.strip()
    who = cluster.kubectl("auth", "whoami", "--token", token, "-o", "json").stdout
    assert json.loads(who)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:default"
    denied = cluster.kubectl("get", "pods", "-n", namespace, "--token", token, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()


def test_gpu_job_with_affinity_runs_on_that_model_and_completes(cluster: Cluster, namespace: str) -> None:
    cluster.apply(make_job("train", gpus=2, gpu_products=[A100], duration="4s"), namespace=namespace)
    job = wait_for_job(cluster, namespace, "train", "Complete", timeout=60)
    assert job["status"]["succeeded"] == 1
    (pod,) = job_pods(cluster, namespace, "train")
    node = get(cluster, "node", pod["spec"]["nodeName"])
    assert node is not None
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == A100
    assert pod["status"]["phase"] == "Succeeded"
    term = terminated(pod)
    assert term is not None
    assert (term["exitCode"], term["reason"]) == (0, "Completed")
    ran = _seconds(term["finishedAt"]) - _seconds(term["startedAt"])  # API timestamps have 1 s resolution
    assert 3 <= ran <= 6, f"sim.aitask.dev/duration=4s but the container ran {ran} s"


def test_job_larger_than_any_node_stays_pending(cluster: Cluster, namespace: str) -> None:
    cluster.apply(make_job("too-big", gpus=16), namespace=namespace)
    pod = wait_for_job_pod(cluster, namespace, "too-big", phase_is("Pending"), what="Pending")
    event = wait_for_event(cluster, namespace, reason="FailedScheduling", involved=pod["metadata"]["name"])
    assert "Insufficient nvidia.com/gpu" in event["message"]
    (pod,) = job_pods(cluster, namespace, "too-big")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
    assert has_condition(pod, "PodScheduled", "False")


@pytest.mark.parametrize(
    ("outcome", "exit_code", "expected_code", "expected_reason"),
    [("fail", 3, 3, "Error"), ("fail", None, 1, "Error"), ("oom", None, 137, "OOMKilled")],
    ids=["fail-exit-3", "fail-default-exit", "oom"],
)
def test_failing_pod_reports_exit_code(cluster: Cluster, namespace: str, outcome: str, exit_code: int | None,
                                       expected_code: int, expected_reason: str) -> None:
    cluster.apply(make_job("crash", gpus=1, gpu_products=["NVIDIA-L4"], duration="2s", outcome=outcome,
                           exit_code=exit_code), namespace=namespace)
    job = wait_for_job(cluster, namespace, "crash", "Failed", timeout=60)
    failed = condition(job, "Failed")
    assert failed is not None
    assert failed["reason"] == "BackoffLimitExceeded"
    assert job["status"]["failed"] == 1
    (pod,) = job_pods(cluster, namespace, "crash")
    assert pod["status"]["phase"] == "Failed"
    term = terminated(pod)
    assert term is not None
    assert (term["exitCode"], term["reason"]) == (expected_code, expected_reason)
    assert _seconds(term["finishedAt"]) - _seconds(term["startedAt"]) >= 1


def test_hanging_pod_keeps_running_while_a_twin_completes(cluster: Cluster, namespace: str) -> None:
    cluster.apply([make_job("hangs", duration="1s", outcome="hang"), make_job("twin", duration="1s")],
                  namespace=namespace)
    wait_for_job(cluster, namespace, "twin", "Complete", timeout=60)
    (pod,) = job_pods(cluster, namespace, "hangs")
    assert pod["status"]["phase"] == "Running"
    job = get(cluster, "job", "hangs", namespace)
    assert job is not None
    assert job["status"].get("active") == 1


def test_tainted_pool_needs_the_toleration(cluster: Cluster, namespace: str) -> None:
    cluster.apply([make_job("no-tol", gpus=8, gpu_products=[H100], duration="1s"),
                   make_job("with-tol", gpus=8, gpu_products=[H100], duration="1s", tolerations=[GPU_TOLERATION])],
                  namespace=namespace)
    job = wait_for_job(cluster, namespace, "with-tol", "Complete", timeout=60)
    assert job["status"]["succeeded"] == 1
    (pod,) = job_pods(cluster, namespace, "with-tol")
    assert pod["spec"]["nodeName"].startswith("gpu-h100-")
    (blocked,) = job_pods(cluster, namespace, "no-tol")
    event = wait_for_event(cluster, namespace, reason="FailedScheduling", involved=blocked["metadata"]["name"])
    assert "2 node(s) had untolerated taint(s)" in event["message"]  # the two H100 nodes
    (blocked,) = job_pods(cluster, namespace, "no-tol")
    assert not blocked["spec"].get("nodeName")


def _spare_node(name: str) -> dict[str, Any]:
    """A copy of gpu-l4-0 under another name, so deleting it leaves the shared pools intact."""
    docs = [d for d in yaml.safe_load_all(NODES_YAML.read_text()) if d]
    node: dict[str, Any] = copy.deepcopy(next(d for d in docs if d["metadata"]["name"] == "gpu-l4-0"))
    node["metadata"]["name"] = name
    node["metadata"]["labels"]["kubernetes.io/hostname"] = name
    node["metadata"]["labels"]["aitask.dev/pool"] = "doomed"
    return node


def test_deleting_a_node_fails_its_pods(cluster: Cluster, namespace: str) -> None:
    """What v1.36 really does: the PodGC controller notices pods bound to a node that no longer exists
    (after its fixed 40 s quarantine, checked every 20 s), patches them to phase Failed with condition
    DisruptionTarget (reason DeletionByPodGC) and force-deletes them; the Job controller counts the pod
    as failed. A finalizer of our own keeps the pod visible for the assertions."""
    node_name = f"doomed-{namespace[-6:]}"
    cluster.kubectl("create", "-f", "-", input=json.dumps(_spare_node(node_name)))
    try:
        wait_for(lambda: has_condition(get(cluster, "node", node_name), "Ready"), timeout=30,
                 what=f"node {node_name} Ready")
        cluster.apply(make_job("lost", gpus=1, outcome="hang",
                               node_selector={"kubernetes.io/hostname": node_name}), namespace=namespace)
        pod = wait_for_job_pod(cluster, namespace, "lost", phase_is("Running"), what="Running", timeout=60)
        pod_name = pod["metadata"]["name"]
        cluster.kubectl("patch", "pod", pod_name, "-n", namespace, "--type=json",
                        "-p", '[{"op": "add", "path": "/metadata/finalizers/-", "value": "e2e.aitask.dev/hold"}]')
        cluster.kubectl("delete", "node", node_name)

        job = wait_for_job(cluster, namespace, "lost", "Failed", timeout=150)
        assert job["status"]["failed"] == 1
        gone = get(cluster, "pod", pod_name, namespace)
        assert gone is not None
        assert gone["status"]["phase"] == "Failed"
        disruption = condition(gone, "DisruptionTarget")
        assert disruption is not None
        assert (disruption["status"], disruption["reason"]) == ("True", "DeletionByPodGC")
        assert gone["metadata"].get("deletionTimestamp")
        assert gone["metadata"]["finalizers"] == ["e2e.aitask.dev/hold"]  # the Job controller let go
    finally:
        cluster.kubectl("delete", "node", node_name, "--ignore-not-found", check=False)
        for pod in job_pods(cluster, namespace, "lost"):
            cluster.kubectl("patch", "pod", pod["metadata"]["name"], "-n", namespace, "--type=merge",
                            "-p", '{"metadata": {"finalizers": null}}', check=False)


def test_helm_install_and_uninstall(cluster: Cluster, namespace: str) -> None:
    chart = str(NODES_YAML.parent / "charts" / "smoke")
    cluster.helm("install", "smoke", chart, "-n", namespace, "--wait", "--timeout", "90s")
    deploy = get(cluster, "deployment", "smoke-smoke", namespace)
    assert deploy is not None
    assert deploy["status"].get("readyReplicas") == 1
    cm = get(cluster, "configmap", "smoke-smoke", namespace)
    assert cm is not None
    assert cm["data"]["kubeVersion"] == "v1.36.3"  # helm read the server's /version
    releases = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("smoke", "deployed")]
    cluster.helm("uninstall", "smoke", "-n", namespace, "--wait", "--timeout", "60s")
    wait_for(lambda: get(cluster, "configmap", "smoke-smoke", namespace) is None, timeout=30,
             what="the chart's ConfigMap gone")
    assert json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout) == []


def _up(prom: Prometheus, job: str) -> bool:
    result = prom.query(f'up{{job="{job}"}}')
    return bool(result) and result[0]["value"][1] == "1"


def test_prometheus_answers_reloads_and_restarts(cluster: Cluster, prometheus: Prometheus) -> None:
    wait_for(lambda: _up(prometheus, "prometheus"), timeout=30, what='up{job="prometheus"} == 1')

    scheduler = f"127.0.0.1:{cluster.ports['kube-scheduler']}"
    config = yaml.safe_load(prometheus_config({"prometheus": ["127.0.0.1:{port}"]}))
    config["scrape_configs"].append({"job_name": "kube-scheduler", "scheme": "https",
                                     "tls_config": {"insecure_skip_verify": True},
                                     "static_configs": [{"targets": [scheduler]}]})
    prometheus.reload(yaml.safe_dump(config))
    wait_for(lambda: _up(prometheus, "kube-scheduler"), timeout=30, what='up{job="kube-scheduler"} == 1')
    assert prometheus.query("scheduler_schedule_attempts_total")  # real metrics of the real scheduler

    url = prometheus.url
    prometheus.stop()
    assert not prometheus.running
    prometheus.start()
    assert prometheus.url == url
    wait_for(lambda: _up(prometheus, "kube-scheduler"), timeout=30, what="scraping again after a restart")
