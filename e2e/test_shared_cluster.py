"""Shared-cluster features end to end (issue 12): ResourceQuota, budgets, suspend/resume/cancel and the
conditions ``kubectl wait`` reads, on the real apiserver, job controller, scheduler and KWOK nodes."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from typing import Any

import pytest

from e2e.cluster import Cluster, CommandError
from e2e.operator import Operator
from e2e.test_operator import CLASSES, REPO, aitask, sim, task_status, wait_phase
from e2e.test_operator import operator as operator  # noqa: PLC0414 - the fixture, re-exported for this module
from e2e.util import events, get, list_objects, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def classes(cluster: Cluster) -> None:
    """Every CRD (AITaskBudget included) and the sample ExecutorClasses."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/aitasks.aitask.dev",
                    "crd/executorclasses.aitask.dev", "crd/aitaskbudgets.aitask.dev")
    shutil.rmtree(cluster.dir / "cache" / "kube", ignore_errors=True)
    cluster.kubectl("apply", "--server-side", "-f", str(CLASSES))


def gpu_step(duration: str = "6s", **extra: Any) -> dict[str, Any]:
    return {"name": "train", "type": "training", "image": "registry.example/train:e2e",
            "executor": {"accelerators": 1, "cpu": "1", "memory": "1Gi", "classes": ["a100-40gb"]},
            "estimate": {"seconds": 600}, "podMetadata": sim(duration), **extra}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def patch_spec(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any], *, check: bool = True) -> Any:
    return cluster.kubectl("patch", "aitask", name, "-n", namespace, "--type=merge",
                           "-p", json.dumps({"spec": spec}), check=check)


def running_job(cluster: Cluster, namespace: str, op: Operator, task: str, attempt: int) -> dict[str, Any]:
    name = f"{task}-train-{attempt}"

    def check() -> dict[str, Any] | None:
        job = get(cluster, "job", name, namespace)
        return job if job and (job.get("status") or {}).get("active") else None

    return wait_for(check, timeout=60, interval=0.3, what=f"Job {name} running", describe=lambda: op.log(60))


def test_kubectl_wait_returns_on_complete_and_on_failed(cluster: Cluster, namespace: str, operator: Operator) -> None:
    ok = {"name": "a", "image": "registry.example/a:e2e", "podMetadata": sim("1s")}
    bad = {"name": "a", "image": "registry.example/a:e2e", "retry": {"limit": 0}, "podMetadata": sim("1s", "fail")}
    cluster.apply([aitask("ok", [ok]), aitask("bad", [bad])], namespace=namespace)
    done = cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "--timeout=90s", "aitask/ok")
    assert "condition met" in done.stdout
    failed = cluster.kubectl("wait", "-n", namespace, "--for=condition=Failed", "--timeout=90s", "aitask/bad")
    assert "condition met" in failed.stdout
    # And the other way round they do not hold: Complete is False on failure, Failed absent on success.
    bad_status = task_status(cluster, namespace, "bad")
    complete = condition(bad_status, "Complete")
    assert complete is not None and complete["status"] == "False" and complete["reason"] == "RetriesExhausted"
    assert condition(task_status(cluster, namespace, "ok"), "Failed") is None
    quick = cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "--timeout=2s", "aitask/bad",
                            check=False)
    assert quick.returncode != 0


def test_resource_quota_holds_the_fifth_gpu_until_one_finishes(cluster: Cluster, namespace: str,
                                                               operator: Operator) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "gpus"},
                   "spec": {"hard": {"requests.nvidia.com/gpu": "4"}}}, namespace=namespace)
    durations = ["8s", "8s", "8s", "4s", "2s"]  # the fifth arrives last
    for i, duration in enumerate(durations):
        cluster.apply(aitask(f"q{i}", [gpu_step(duration)]), namespace=namespace)

    def four_running_one_held() -> str | None:
        statuses = {f"q{i}": task_status(cluster, namespace, f"q{i}") for i in range(5)}
        held = [n for n, s in statuses.items() if (condition(s, "Planned") or {}).get("reason") == "WaitingForQuota"]
        jobs = list_objects(cluster, "jobs", namespace)
        return held[0] if len(held) == 1 and len(jobs) == 4 else None

    held = wait_for(four_running_one_held, timeout=60, interval=0.5, what="4 Jobs and one WaitingForQuota",
                    describe=lambda: operator.log(60))
    message = condition(task_status(cluster, namespace, held), "Planned")["message"]  # type: ignore[index]
    assert "ResourceQuota gpus" in message and "requests.nvidia.com/gpu" in message
    # No pod was ever refused by the quota: the operator did not create what it would refuse.
    assert not events(cluster, namespace, reason="FailedCreate")
    for i in range(5):
        wait_phase(cluster, operator, namespace, f"q{i}", "Succeeded", timeout=120)
    assert len(list_objects(cluster, "jobs", namespace)) == 5
    assert not events(cluster, namespace, reason="FailedCreate")


def test_budgets_task_ceiling_in_the_plan_and_namespace_spent(cluster: Cluster, namespace: str,
                                                              operator: Operator) -> None:
    cluster.apply({"apiVersion": "aitask.dev/v1alpha1", "kind": "AITaskBudget", "metadata": {"name": "daily"},
                   "spec": {"period": "Day", "maxCost": 50.0, "acceleratorHours": {"*": 100}}}, namespace=namespace)
    # Own budget: 10 minutes on an H100 (8 GPUs) costs far more than 1.0; on a T4 it fits.
    # A profile of its own: ExecutorClasses are cluster-wide and learn runtimes from other tests.
    step = {"name": "train", "type": "training", "image": "registry.example/train:e2e", "profile": namespace,
            "executor": {"accelerators": 1, "cpu": "1", "memory": "1Gi", "classes": ["h100", "t4"]},
            "estimate": {"seconds": 600, "onClass": "h100"}, "podMetadata": sim("1s")}
    cluster.apply(aitask("capped", [step], budget={"maxCost": 1.0}), namespace=namespace)
    status = wait_phase(cluster, operator, namespace, "capped", "Succeeded")
    plan = status["subtasks"][0]["plan"]
    assert plan["class"] == "t4"
    h100 = next(a for a in plan["alternatives"] if a["class"] == "h100")
    assert h100["feasible"] is False and "the task's budget" in h100["reason"]
    # Namespace budget: spent equals what the three tasks (and the first) cost.
    for i in range(3):
        cluster.apply(aitask(f"b{i}", [gpu_step("2s")]), namespace=namespace)
    costs = [wait_phase(cluster, operator, namespace, f"b{i}", "Succeeded")["actualCost"] for i in range(3)]
    total = sum(costs) + status["actualCost"]
    assert total > 0

    def settled() -> dict[str, Any] | None:
        budget = get(cluster, "aitaskbudget", "daily", namespace) or {}
        st = budget.get("status") or {}
        spent = st.get("spentCost")
        return st if spent is not None and abs(spent - total) < 1e-4 and st.get("committedCost") == 0 else None

    st = wait_for(settled, timeout=60, interval=1, what="AITaskBudget spent = the tasks' costs",
                  describe=lambda: json.dumps(get(cluster, "aitaskbudget", "daily", namespace), indent=1))
    assert st["remainingCost"] == pytest.approx(50.0 - total, abs=1e-4)
    assert st["acceleratorHours"]["*"]["used"] > 0
    # The same figures in Prometheus, from the operator's /metrics.
    text = urllib.request.urlopen(f"{operator.metrics_url}/metrics", timeout=10).read().decode()
    labels = f'budget="daily",namespace="{namespace}",resource="cost"'
    spent = re.search(r"^aitask_budget_spent\{" + re.escape(labels) + r"\} (\S+)$", text, re.M)
    remaining = re.search(r"^aitask_budget_remaining\{" + re.escape(labels) + r"\} (\S+)$", text, re.M)
    assert spent is not None and remaining is not None, text[-2000:]
    assert float(spent.group(1)) == pytest.approx(total, abs=1e-4)
    assert float(remaining.group(1)) == pytest.approx(50.0 - total, abs=1e-4)


def test_suspend_stops_the_job_and_resume_continues(cluster: Cluster, namespace: str, operator: Operator) -> None:
    cluster.apply(aitask("s", [gpu_step("20s")], template={"terminationGracePeriodSeconds": 7}),
                  namespace=namespace)
    job = running_job(cluster, namespace, operator, "s", 1)
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 7  # what the pods get on stop
    patch_spec(cluster, namespace, "s", {"suspend": True})
    status = wait_phase(cluster, operator, namespace, "s", "Suspended", timeout=30)
    wait_for(lambda: get(cluster, "job", "s-train-1", namespace) is None, timeout=60, interval=0.3,
             what="Job s-train-1 deleted")
    assert condition(status, "Suspended")["status"] == "True"  # type: ignore[index]
    history = status["subtasks"][0]["history"]
    assert [a["result"] for a in history] == ["Suspended"]
    assert events(cluster, namespace, involved="s", reason="Suspended")
    # Nothing is admitted while suspended.
    assert get(cluster, "job", "s-train-2", namespace) is None
    patch_spec(cluster, namespace, "s", {"suspend": False})
    running_job(cluster, namespace, operator, "s", 2)
    status = wait_phase(cluster, operator, namespace, "s", "Running", timeout=30)
    assert condition(status, "Suspended")["reason"] == "Resumed"  # type: ignore[index]
    assert events(cluster, namespace, involved="s", reason="Resumed")
    # At most one Job of the sub-task at a time.
    assert [j["metadata"]["name"] for j in list_objects(cluster, "jobs", namespace)] == ["s-train-2"]


def test_cancel_ends_the_task_and_keeps_its_history(cluster: Cluster, namespace: str, operator: Operator) -> None:
    prep = {"name": "prep", "image": "registry.example/a:e2e", "podMetadata": sim("1s")}
    cluster.apply(aitask("c", [prep, gpu_step("30s", dependsOn=["prep"])]), namespace=namespace)
    running_job(cluster, namespace, operator, "c", 1)
    patch_spec(cluster, namespace, "c", {"cancel": True})
    status = wait_phase(cluster, operator, namespace, "c", "Cancelled", timeout=30)
    wait_for(lambda: get(cluster, "job", "c-train-1", namespace) is None, timeout=60, interval=0.3,
             what="Job c-train-1 deleted")
    subs = {s["name"]: s for s in status["subtasks"]}
    assert subs["prep"]["phase"] == "Succeeded" and subs["prep"]["history"][0]["result"] == "Succeeded"
    assert subs["train"]["history"][-1]["result"] == "Cancelled"
    assert condition(status, "Cancelled")["status"] == "True"  # type: ignore[index]
    assert condition(status, "Failed")["reason"] == "Cancelled"  # type: ignore[index]
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Failed", "--timeout=10s", "aitask/c")
    # Cancelling is for good: the API server refuses to take it back, naming the field.
    with pytest.raises(CommandError) as refused:
        patch_spec(cluster, namespace, "c", {"cancel": False})
    assert "spec.cancel" in str(refused.value)
    assert task_status(cluster, namespace, "c")["phase"] == "Cancelled"

