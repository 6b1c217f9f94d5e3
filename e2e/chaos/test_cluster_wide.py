"""The operator cluster-wide (no -n: the chart's default) while foreign pods, which are not the operator's,
hold GPUs on some nodes: its books count them, so no child pod stays Pending that they said would fit
(the kube-scheduler would post FailedScheduling for it)."""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e.chaos.lib import Size, aitask, audit, create_tasks, pipeline, seed, sim, table, wait_all
from e2e.cluster import Cluster
from e2e.operator import Operator
from e2e.util import GPU_TOLERATION, events, list_objects, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
# GPUs held by foreign pods: one H100 node (the fastest class, which the default objective prefers) full,
# and most of one A100 node; the other node of each class is free.
HOLD = {"gpu-h100-0": 8, "gpu-a100-0": 6}
# Both H100 nodes full: the operator then waits for the H100 class "3600 s" (core.costmodel
# UNKNOWN_BUSY_SECONDS, re-estimated every cycle, so forever) instead of using the free A100/L4 nodes.
HOLD_ALL_H100 = {"gpu-h100-0": 8, "gpu-h100-1": 8, "gpu-a100-0": 6}


def _foreign_pod(name: str, node: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "foreign"}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "tolerations": [GPU_TOLERATION],
                     "containers": [{"name": "main", "image": "registry.example/foreign:1",
                                     "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}


@pytest.fixture
def foreign(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of bare pods (not Jobs: they stay Running) holding GPUs (HOLD, or the test's param)."""
    hold: dict[str, int] = getattr(request, "param", HOLD)
    ns = f"foreign-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(lambda: cluster.api_status("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default") == 200,
             timeout=30, what="the foreign namespace's ServiceAccount")
    cluster.apply([_foreign_pod(f"hog-{node}", node, n) for node, n in hold.items()], namespace=ns)
    wait_for(lambda: len([p for p in list_objects(cluster, "pods", ns)
                          if (p.get("status") or {}).get("phase") == "Running"]) == len(hold),
             timeout=60, what="the foreign pods Running")
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=true", timeout=120, check=False)


def _workload(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """``count`` three-step pipelines (4 GPU shards of 1) and ``count`` gang jobs of 4 shards of 2 GPUs."""
    bodies = [pipeline(f"cw-pipe-{i}", rng, gpu_parallelism=4) for i in range(count)]
    bodies += [aitask(f"cw-shard-{i}", [{"name": "train", "type": "training", "image": "registry.example/shard:chaos",
                                         "parallelism": 4, "gang": True,
                                         "executor": {"accelerators": 2, "cpu": "2", "memory": "8Gi"},
                                         "estimate": {"seconds": 60, "onClass": "a100-40gb"},
                                         "podMetadata": sim("5s")}])
               for i in range(count)]
    return bodies


def test_cluster_wide_books_count_foreign_pods(cluster: Cluster, namespace: str, foreign: str,
                                               operators: Callable[..., Operator], size: Size) -> None:
    rng = random.Random(s := seed())
    op = operators(watch=None)  # every namespace
    assert op.proc is not None and "-n" not in op.proc.args, "the operator was started namespaced"
    bodies = _workload(size.cluster_wide_tasks, rng)
    names = [b["metadata"]["name"] for b in bodies]
    create_tasks(cluster, namespace, bodies)
    tasks = wait_all(cluster, namespace, names, "Succeeded", timeout=180, describe=lambda: op.log(10))
    result = audit(cluster, namespace, names)
    pods = list_objects(cluster, "pods", namespace)
    unschedulable = [e for e in events(cluster, namespace, reason="FailedScheduling")]
    on_held = [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") == "gpu-h100-0"]
    # What the books planned: the nodes each admitted attempt was packed onto.
    planned = [(t, st["name"], node) for t, task in tasks.items() for st in task["status"]["subtasks"]
               for node in st["plan"].get("nodes") or []]
    classes = sorted({st["plan"]["class"] for t in tasks.values() for st in t["status"]["subtasks"]})
    table(f"cluster-wide operator with foreign GPU pods ({size.name}, seed {s})", {
        **result.rows(), "foreign GPUs held": sum(HOLD.values()), "child pods": len(pods),
        "child pods on the full H100 node": len(on_held), "FailedScheduling events": len(unschedulable),
        "pods planned onto the full H100 node": len([p for p in planned if p[2] == "gpu-h100-0"]),
        "classes used": ", ".join(classes),
    })
    assert pods and result.tasks == len(bodies) == result.succeeded
    assert (result.duplicates, result.lost, result.stuck, result.left_running) == (0, 0, 0, 0), result.problems
    # The books saw the foreign pods: nothing planned onto the full node, and no admitted pod that the
    # kube-scheduler could not place (it posts FailedScheduling for a pod it finds no room for).
    assert planned and not [p for p in planned if p[2] == "gpu-h100-0"], planned
    assert not unschedulable, [e.get("message") for e in unschedulable][:5]
    assert not on_held, on_held


@pytest.mark.parametrize("foreign", [HOLD_ALL_H100], indirect=True, ids=["both-h100-full"])
def test_cluster_wide_preferred_class_full_of_foreign_pods(
        cluster: Cluster, namespace: str, foreign: str, operators: Callable[..., Operator]) -> None:
    op = operators(watch=None)
    bodies = _workload(2, random.Random(1))
    create_tasks(cluster, namespace, bodies)
    wait_all(cluster, namespace, [b["metadata"]["name"] for b in bodies], "Succeeded", timeout=90,
             describe=lambda: op.log(10))
