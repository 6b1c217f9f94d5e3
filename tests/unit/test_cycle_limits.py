"""Quotas and budgets through one whole cycle: from recorded views to statuses, Jobs and budget writes."""

from __future__ import annotations

from typing import Any

from aitask.control.cycle import ClusterView, CycleParams, FinishedTask, run_cycle
from aitask.core.budgets import spends
from aitask.core.observed import QuotaView
from tests.unit.test_cycle_and_build import CLASSES, GPU_STEP, NODES, NOW, body


def cycle(tasks: list[dict[str, Any]], **view: Any) -> Any:
    return run_cycle(ClusterView(tasks=tasks, jobs=[], pods=[], nodes=NODES, classes=CLASSES, **view), CycleParams(),
                     NOW)


def gpu_quota(hard: str = "2", used: str = "0", scopes: tuple[str, ...] = ()) -> QuotaView:
    return QuotaView("ns", "gpus", {"requests.nvidia.com/gpu": hard}, {"requests.nvidia.com/gpu": used}, scopes)


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def test_quota_holds_what_it_would_refuse_with_waiting_for_quota() -> None:
    out = cycle([body(f"t{i}", [GPU_STEP]) for i in range(3)], quotas=[gpu_quota()])
    created = [t for t in out.tasks if t.create_jobs]
    held = [t for t in out.tasks if not t.create_jobs]
    assert len(created) == 2 and len(held) == 1
    status = held[0].status
    assert status is not None
    planned = _cond(status, "Planned")
    assert planned is not None and planned["reason"] == "WaitingForQuota"
    assert "ResourceQuota gpus" in planned["message"]
    assert "requests.nvidia.com/gpu" in status["subtasks"][0]["message"]


def test_admitted_attempts_whose_pods_do_not_exist_yet_count_against_the_quota() -> None:
    # Cycle 1 admits two; their Jobs and pods are not visible yet and the quota still says 0 used.
    first = cycle([body(f"t{i}", [GPU_STEP]) for i in range(2)], quotas=[gpu_quota()])
    running = [body(t.name, [GPU_STEP], status=t.status) for t in first.tasks]
    assert all(t.create_jobs for t in first.tasks)
    second = cycle([*running, body("t9", [GPU_STEP])], quotas=[gpu_quota()])
    newcomer = next(t for t in second.tasks if t.name == "t9")
    assert newcomer.create_jobs == ()
    # A quota scoped to pods ours are not (BestEffort) is not read.
    scoped = cycle([*running, body("t9", [GPU_STEP])], quotas=[gpu_quota(scopes=("BestEffort",))])
    assert next(t for t in scoped.tasks if t.name == "t9").create_jobs


def test_task_budget_fail_policy_fails_the_task_with_budget_exceeded() -> None:
    tiny = {"maxCost": 0.0001, "onExceeded": "Fail"}
    out = cycle([body("t", [GPU_STEP], budget=tiny)])
    (task,) = out.tasks
    assert task.create_jobs == ()
    assert task.status is not None and task.status["phase"] == "Failed"
    failed = _cond(task.status, "Failed")
    assert failed is not None and failed["reason"] == "BudgetExceeded"
    assert [e.reason for e in task.events] == ["BudgetExceeded"]
    waiting = cycle([body("t", [GPU_STEP], budget={"maxCost": 0.0001})])
    (w,) = waiting.tasks
    assert w.status is not None and w.status["phase"] == "Pending"
    planned = _cond(w.status, "Planned")
    assert planned is not None and planned["reason"] == "BudgetExceeded"
    plan = w.status["subtasks"][0]["plan"]
    assert plan["class"] == ""
    assert all(not a["feasible"] for a in plan["alternatives"])
    assert any("the task's budget" in a["reason"] for a in plan["alternatives"])


def test_namespace_budget_counts_finished_tasks_and_writes_its_status() -> None:
    done_status = {"phase": "Succeeded", "subtasks": [{"name": "train", "phase": "Succeeded", "history": [
        {"number": 1, "job": "old-train-1", "class": "fast", "result": "Succeeded",
         "startTime": "2026-01-01T00:00:00Z", "finishTime": "2026-01-01T00:00:00Z", "actualSeconds": 0,
         "actualCost": 0}]}]}
    old = FinishedTask("ns", "old", "u-old", "Succeeded",
                       spends=spends({"subtasks": [GPU_STEP]}, done_status))
    budget = {"metadata": {"name": "daily", "namespace": "ns", "generation": 1},
              "spec": {"period": "Day", "maxCost": 100.0}, "status": {}}
    out = cycle([body("t", [GPU_STEP])], finished=[old], budgets=[budget])
    assert ("ns", "daily") in out.budget_status
    written = out.budget_status[("ns", "daily")]
    assert written["windowStart"] == "2026-01-01T00:00:00Z"
    assert written["spentCost"] == 0
    assert written["remainingCost"] == 100.0
    assert out.stats.next_wakeup is not None  # the period's end
    # The same figures again are not written again.
    again = cycle([body("t", [GPU_STEP])], finished=[old], budgets=[{**budget, "status": written}])
    assert again.budget_status == {}


def test_a_waiting_task_is_not_rewritten_while_only_its_expected_wait_moves() -> None:
    from datetime import timedelta

    step = {"name": "train", "type": "training", "image": "r/train:1",
            "executor": {"accelerators": 4, "classes": ["fast"]}, "estimate": {"seconds": 600, "onClass": "fast"}}
    first = cycle([body("a", [step]), body("b", [step])])
    statuses = {t.name: t.status for t in first.tasks}
    assert [t.name for t in first.tasks if t.create_jobs] == ["a"]
    later = run_cycle(ClusterView(tasks=[body(n, [step], status=statuses[n]) for n in ("a", "b")], jobs=[], pods=[],
                                  nodes=NODES, classes=CLASSES), CycleParams(), NOW + timedelta(seconds=5))
    b = next(t for t in later.tasks if t.name == "b")
    assert b.status is None  # W went from 600 s to 595 s: the decision is the same, nothing to write
