"""A stuck attempt end to end: a pod held in image-pull back-off by the fake kubelet is noticed within
the threshold, its Job deleted, and the sub-task re-planned on another class, where it succeeds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.operator import Operator, running_operator
from e2e.test_operator import aitask, classes, sim, ts, wait_phase
from e2e.util import events, get, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["classes"]  # the module-scoped fixture: CRDs and the sample ExecutorClasses

STUCK_AFTER = 5


@pytest.fixture
def operator(cluster: Cluster, namespace: str, classes: dict[str, Any], tmp_path: Path) -> Iterator[Operator]:
    env = {"AITASK_STUCK_AFTER_SECONDS": str(STUCK_AFTER)}
    with running_operator(cluster, namespace, tmp_path, env) as op:
        yield op
        print(f"--- operator log ({namespace}) ---\n{op.log(200)}")  # shown only when the test fails


def test_a_pod_in_image_pull_backoff_is_stuck_its_job_deleted_and_retried_on_another_class(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    subtasks = [
        {"name": "infer", "type": "inference", "image": "registry.example/missing:e2e",
         "executor": {"accelerators": 1, "cpu": "2", "memory": "8Gi", "classes": ["l4", "a100-40gb"]},
         # costWeight picks the cheaper L4 first; the fake kubelet keeps pods of this sub-task on l4
         # Pending in ImagePullBackOff, so the attempt is stuck and the retry must go to a100-40gb.
         "estimate": {"seconds": 600, "onClass": "a100-40gb"},
         "retry": {"limit": 2, "backoffSeconds": 1},
         "podMetadata": sim("1s", **{"sim.aitask.dev/image-pull-backoff-on-class": "l4"})},
    ]
    cluster.apply(aitask("pull", subtasks, objective={"timeWeight": 0.0001, "costWeight": 100}), namespace=namespace)
    status = wait_phase(cluster, operator, namespace, "pull", "Succeeded", timeout=120)
    first, *rest = status["subtasks"][0]["history"]
    assert first["class"] == "l4" and first["result"] == "Stuck", first
    assert "ImagePullBackOff" in first["reason"] and "pull-infer-1-" in first["reason"], first
    # Noticed within the threshold (plus a scheduling period and the time to bind the pod), not minutes later;
    # not before it either (less the second the pod's creationTimestamp is truncated to).
    held = (ts(first["finishTime"]) - ts(first["startTime"])).total_seconds()
    assert STUCK_AFTER - 1 <= held <= STUCK_AFTER + 15, held
    assert [a["result"] for a in rest] == ["Succeeded"] and rest[0]["class"] == "a100-40gb", rest
    # The stuck attempt's Job was deleted (so its pod holds nothing); the successful one is kept.
    wait_for(lambda: get(cluster, "job", "pull-infer-1", namespace) is None, timeout=30,
             what="the stuck attempt's Job to be deleted")
    assert get(cluster, "job", "pull-infer-2", namespace) is not None
    stuck = events(cluster, namespace, involved="pull", reason="AttemptStuck")
    assert len(stuck) == 1 and "ImagePullBackOff" in stuck[0]["message"], stuck
    assert stuck[0]["type"] == "Warning"
    condition = next(c for c in status["conditions"] if c["type"] == "AttemptStuck")
    assert condition["status"] == "False" and condition["reason"] == "NoStuckAttempt", condition


def test_a_job_whose_pods_are_refused_is_stuck_retried_on_its_only_class_and_fails_at_the_retry_limit(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    # The LimitRanger admission plugin refuses every pod asking for more than 1 CPU: the Job controller
    # cannot create one (FailedCreate), so the Job stays without a pod, as under a ResourceQuota or a webhook.
    cluster.apply({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "small-pods"},
                   "spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}}]}}, namespace=namespace)
    subtasks = [
        {"name": "prep", "type": "preprocess", "image": "registry.example/prep:e2e",
         "executor": {"cpu": "2", "memory": "1Gi", "classes": ["cpu"]},
         "retry": {"limit": 1, "backoffSeconds": 1}, "podMetadata": sim("1s")},
    ]
    cluster.apply(aitask("refused", subtasks), namespace=namespace)
    status = wait_phase(cluster, operator, namespace, "refused", "Failed", timeout=90)
    history = status["subtasks"][0]["history"]
    # The only class is retried (the soft exclusion leaves it when nothing else fits), then the limit ends it.
    assert [(a["class"], a["result"]) for a in history] == [("cpu", "Stuck"), ("cpu", "Stuck")], history
    assert all("without a pod" in a["reason"] and "no pod created" in a["reason"] for a in history), history
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "RetriesExhausted", failed
    condition = next(c for c in status["conditions"] if c["type"] == "AttemptStuck")
    assert condition["status"] == "True" and "prep: attempt 2 on cpu" in condition["message"], condition
    for job in ("refused-prep-1", "refused-prep-2"):
        wait_for(lambda job=job: get(cluster, "job", job, namespace) is None, timeout=30,
                 what=f"the stuck attempt's Job {job} to be deleted")
    assert len(events(cluster, namespace, involved="refused", reason="AttemptStuck")) == 2
