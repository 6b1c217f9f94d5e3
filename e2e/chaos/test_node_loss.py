"""Node loss under the operator: the Node of a running GPU shard is deleted. The PodGC controller fails the
shard's pod (DisruptionTarget) after its 40 s quarantine, the Job's podFailurePolicy ignores that failure
and the Job controller replaces the pod on another node of the class (docs/architecture.md): same attempt,
not a retry, not stuck, and the cost is counted once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.chaos.lib import Size, aitask, audit, create_tasks, needs_slow, sim, table, tasks_by_name, wait_all
from e2e.cluster import NODES_YAML, Cluster
from e2e.operator import Operator
from e2e.util import get, job_pods, list_objects, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
CLASS = "a100-40gb"
PRODUCT = "NVIDIA-A100-SXM4-40GB"
# Longer than PodGC takes to fail a pod of a deleted node (40-60 s): KWOK keeps finishing the pods of a node
# that is gone (measured: also after its kwok.x-k8s.io/node annotation was removed), so a shorter shard would
# complete on the dead node and nothing would be replaced.
SHARD_SECONDS = 75


@pytest.fixture
def restore_nodes(cluster: Cluster) -> Iterator[None]:
    """Puts back any node of e2e/nodes.yaml the test deleted, and waits until it is Ready again."""
    yield
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(Path(NODES_YAML).read_text()) if d}
    missing = [n for n in docs if n not in cluster.node_states()]
    for name in missing:
        cluster.kubectl("create", "-f", "-", input=json.dumps(docs[name]))
    wait_for(lambda: all(cluster.node_states().get(n) == "Ready" for n in missing), timeout=90,
             what=f"nodes {missing} Ready again")


def _alloc(cluster: Cluster) -> float:
    ec = get(cluster, "executorclass", CLASS) or {}
    return float(((ec.get("status") or {}).get("allocated") or {}).get("accelerators", 0))


def test_node_of_a_running_shard_deleted(cluster: Cluster, namespace: str, operators: Callable[..., Operator],
                                         restore_nodes: None, size: Size) -> None:
    needs_slow(size)
    op = operators()
    shard = {"name": "train", "type": "training", "image": "registry.example/train:chaos", "parallelism": 2,
             "executor": {"accelerators": 1, "cpu": "1", "memory": "2Gi", "classes": [CLASS]},
             "estimate": {"seconds": SHARD_SECONDS, "onClass": CLASS}, "podMetadata": sim(f"{SHARD_SECONDS}s")}
    create_tasks(cluster, namespace, [aitask("lossy", [shard])])
    job = "lossy-train-1"

    def running_pods() -> list[dict[str, Any]]:
        pods = [p for p in job_pods(cluster, namespace, job) if (p.get("status") or {}).get("phase") == "Running"]
        return pods if len(pods) == 2 else []

    pods = wait_for(running_pods, timeout=90, what="both shards Running", describe=lambda: op.log(60))
    lost_node = pods[0]["spec"]["nodeName"]
    lost_pods = {p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == lost_node}
    alloc_before = _alloc(cluster)
    t0 = time.monotonic()
    cluster.kubectl("delete", "node", lost_node, "--wait=false")

    def replaced() -> list[dict[str, Any]] | None:
        fresh = [p for p in job_pods(cluster, namespace, job)
                 if p["metadata"]["name"] not in lost_pods and p["spec"].get("nodeName") not in (None, lost_node)
                 and p["metadata"]["name"] not in {q["metadata"]["name"] for q in pods}]
        return fresh or None

    new_pods = wait_for(replaced, timeout=180, interval=1.0, what="a replacement pod on another node",
                        describe=lambda: op.log(40))
    replaced_after = time.monotonic() - t0
    # While the replacement runs, the class holds the shards' GPUs once, not the lost pods' on top.
    alloc_during = wait_for(lambda: _alloc(cluster) or None, timeout=20, what=f"{CLASS} allocation")
    for _ in range(5):
        time.sleep(1)
        alloc_during = max(alloc_during, _alloc(cluster))
    status = wait_all(cluster, namespace, ["lossy"], "Succeeded", timeout=240, describe=lambda: op.log(60))["lossy"]
    finished_after = time.monotonic() - t0
    wait_for(lambda: _alloc(cluster) == 0, timeout=30, what=f"{CLASS} allocation back to 0")
    sub = status["status"]["subtasks"][0]
    history = sub["history"]
    jobs = list_objects(cluster, "jobs", namespace)
    labels = {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in list_objects(cluster, "nodes")}
    result = audit(cluster, namespace, ["lossy"])
    table("node loss under a running GPU shard", {
        **result.rows(), "lost node": lost_node, "lost pods": len(lost_pods),
        "replacement pod s after node delete": round(replaced_after), "task done s after node delete":
        round(finished_after), "Job status.failed": jobs[0]["status"].get("failed", 0),
        "attempts": sub["attempts"], f"{CLASS} GPUs allocated before/during": f"{alloc_before:g}/{alloc_during:g}",
        "estimated cost": sub["plan"]["estimatedCost"], "actual cost": status["status"].get("actualCost"),
    })
    assert sub["attempts"] == 1 and len(history) == 1 and history[0]["result"] == "Succeeded", history
    assert [j["metadata"]["name"] for j in jobs] == [job]
    # The lost pods are not the program's fault: podFailurePolicy Ignore keeps them out of status.failed.
    assert jobs[0]["status"]["succeeded"] == 2 and jobs[0]["status"].get("failed", 0) == 0
    for pod in new_pods:
        assert labels[pod["spec"]["nodeName"]].get("nvidia.com/gpu.product") == PRODUCT, pod["spec"]["nodeName"]
    assert alloc_before == 2 and alloc_during == 2, (alloc_before, alloc_during)
    # One attempt's cost, from its observed runtime at the plan's rate.
    plan = sub["plan"]
    expected = plan["estimatedCost"] * history[0]["actualSeconds"] / plan["estimatedSeconds"]
    assert status["status"]["actualCost"] == pytest.approx(expected, rel=0.01)
    assert history[0]["actualCost"] == pytest.approx(expected, rel=0.01)
    assert (result.duplicates, result.lost, result.stuck, result.left_running) == (0, 0, 0, 0), result.problems
    assert tasks_by_name(cluster, namespace)["lossy"]["status"]["phase"] == "Succeeded"
