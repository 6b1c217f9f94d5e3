"""The 409 path: the Job the operator creates for attempt 1 already exists (same deterministic name) but on
another class than the one just chosen. The create answers 409 ("already exists" is success); the status
must then record the class the Job really is, since the books reserve capacity by the plan's class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from e2e.chaos.lib import aitask, create_tasks, sim, table, wait_all
from e2e.cluster import Cluster
from e2e.operator import Operator
from e2e.util import list_objects, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
JOB_CLASS, PRODUCT = "l4", "NVIDIA-L4"


def _existing_job(name: str, task: str, sub: str) -> dict[str, Any]:
    """What another incarnation of the operator could have created for attempt 1 on the l4 class. It has no
    ``aitask.dev/task`` label yet, so the operator's Job index (which selects on it) cannot see it when it
    decides; the label is added once its create got the 409, as a watch that lags behind would deliver it."""
    labels = {"aitask.dev/subtask": sub, "aitask.dev/attempt": "1", "aitask.dev/class": JOB_CLASS,
              "app.kubernetes.io/managed-by": "aitask-operator"}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"aitask.dev/task-name": task, "aitask.dev/class-name": JOB_CLASS}},
            "spec": {"backoffLimit": 0, "template": {
                "metadata": {"labels": {**labels, "aitask.dev/task": task}, "annotations": sim("8s")["annotations"]},
                "spec": {"restartPolicy": "Never", "nodeSelector": {"nvidia.com/gpu.product": PRODUCT},
                         "containers": [{"name": "main", "image": "registry.example/train:chaos",
                                         "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}


def test_existing_job_of_another_class_is_recorded_as_it_is(
        cluster: Cluster, namespace: str, operators: Callable[..., Operator]) -> None:
    from aitask.build.jobs import job_name

    name = job_name("clash", "train", 1)
    cluster.apply(_existing_job(name, "clash", "train"), namespace=namespace)
    op = operators()
    op.wait_metrics(60)
    create_tasks(cluster, namespace, [aitask("clash", [
        {"name": "train", "type": "training", "image": "registry.example/train:chaos",
         "executor": {"accelerators": 1, "cpu": "1", "memory": "2Gi"},
         "estimate": {"seconds": 60, "onClass": "a100-40gb"}, "podMetadata": sim("8s")}])])
    wait_for(lambda: f"job {namespace}/{name} already exist" in op.log(400), timeout=60,
             what="the operator's create to get 409", describe=lambda: op.log(60))
    cluster.kubectl("label", "job", name, "-n", namespace, "aitask.dev/task=clash")
    status = wait_all(cluster, namespace, ["clash"], "Succeeded", timeout=120,
                      describe=lambda: op.log(60))["clash"]["status"]
    sub = status["subtasks"][0]
    jobs = list_objects(cluster, "jobs", namespace)
    table("409 path: the Job exists on another class", {
        "Jobs": len(jobs), "Job class": JOB_CLASS, "status plan class": sub["plan"]["class"],
        "status history class": sub["history"][0]["class"], "attempts": sub["attempts"],
    })
    assert [j["metadata"]["name"] for j in jobs] == [name] and sub["attempts"] == 1
    assert sub["plan"]["class"] != "" and len(sub["history"]) == 1
    assert sub["history"][0]["class"] == JOB_CLASS, sub["history"][0]
    assert sub["plan"]["class"] == JOB_CLASS, sub["plan"]
