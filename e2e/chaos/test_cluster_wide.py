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
# GPUs held by foreign pods: both H100 nodes (the fastest class, which the default objective prefers)
# full, and most of one A100 node.
HOLD = {"gpu-h100-0": 8, "gpu-h100-1": 8, "gpu-a100-0": 6}


def _foreign_pod(name: str, node: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "foreign"}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "tolerations": [GPU_TOLERATION],
                     "containers": [{"name": "main", "image": "registry.example/foreign:1",
                                     "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}


@pytest.fixture
def foreign(cluster: Cluster) -> Iterator[str]:
    """A namespace of bare pods (not Jobs: they stay Running) holding the GPUs of HOLD."""
    ns = f"foreign-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(lambda: cluster.api_status("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default") == 200,
             timeout=30, what="the foreign namespace's ServiceAccount")
    cluster.apply([_foreign_pod(f"hog-{node}", node, n) for node, n in HOLD.items()], namespace=ns)
    wait_for(lambda: len([p for p in list_objects(cluster, "pods", ns)
                          if (p.get("status") or {}).get("phase") == "Running"]) == len(HOLD),
             timeout=60, what="the foreign pods Running")
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=true", timeout=120, check=False)


def test_cluster_wide_books_count_foreign_pods(cluster: Cluster, namespace: str, foreign: str,
                                               operators: Callable[..., Operator], size: Size) -> None:
    rng = random.Random(s := seed())
    op = operators(watch=None)  # every namespace
    assert "-n" not in (op.proc.args if op.proc else []), "the operator was started namespaced"  # type: ignore[operator]
    names = [f"cw-pipe-{i}" for i in range(size.cluster_wide_tasks)]
    bodies = [pipeline(n, rng, gpu_parallelism=4) for n in names]
    shards = [f"cw-shard-{i}" for i in range(size.cluster_wide_tasks)]
    bodies += [aitask(n, [{"name": "train", "type": "training", "image": "registry.example/shard:chaos",
                           "parallelism": 4, "gang": True,
                           "executor": {"accelerators": 2, "cpu": "2", "memory": "8Gi"},
                           "estimate": {"seconds": 60, "onClass": "a100-40gb"}, "podMetadata": sim("5s")}])
               for n in shards]
    create_tasks(cluster, namespace, bodies)
    tasks = wait_all(cluster, namespace, names + shards, "Succeeded", timeout=300, describe=lambda: op.log(80))
    result = audit(cluster, namespace, names + shards)
    pods = list_objects(cluster, "pods", namespace)
    unschedulable = [e for e in events(cluster, namespace, reason="FailedScheduling")]
    on_held = [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") in ("gpu-h100-0", "gpu-h100-1")]
    classes = sorted({st["plan"]["class"] for t in tasks.values() for st in t["status"]["subtasks"]})
    table(f"cluster-wide operator with foreign GPU pods ({size.name}, seed {s})", {
        **result.rows(), "foreign GPUs held": sum(HOLD.values()), "child pods": len(pods),
        "child pods on the full H100 nodes": len(on_held), "FailedScheduling events": len(unschedulable),
        "classes used": ", ".join(classes),
    })
    assert pods and result.tasks == len(bodies) == result.succeeded
    assert (result.duplicates, result.lost, result.stuck, result.left_running) == (0, 0, 0, 0), result.problems
    # The books saw the foreign pods: nothing planned onto the full nodes, no pod the scheduler could not place.
    assert not on_held, on_held
    assert not unschedulable, [e.get("message") for e in unschedulable][:5]
