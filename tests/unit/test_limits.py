"""Quotas and budgets as admission limits (core.scheduling.limits, core.budgets, control.limits)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aitask.api.v1alpha1 import AITaskBudget, BudgetPeriod
from aitask.control.limits import material
from aitask.core import budgets
from aitask.core.quantity import GIB
from aitask.core.scheduler import schedule
from aitask.core.scheduling import limits
from aitask.core.types import (
    NAMESPACE_BUDGET,
    QUOTA,
    TASK_BUDGET,
    CycleResult,
    Demand,
    Limit,
    SchedulerParams,
    Snapshot,
)
from tests.builders import make_class_info, make_demand, make_node_info

V100 = make_class_info("v100", gpu_mem=16, price=3.0, speed=4.0)
K80 = make_class_info("k80", gpu_mem=12, price=0.5)
CLASSES = {"v100": V100, "k80": K80}
NODES = (make_node_info("v1", ["v100"], gpus=8), make_node_info("k1", ["k80"], gpus=8))
BY_CLASS = {"v100": 3600.0, "k80": 7200.0}  # cost: v100 3.0, k80 1.0


def run(demands: Sequence[Demand], lims: Sequence[Limit]) -> CycleResult:
    return schedule(
        Snapshot(now=0.0, classes=CLASSES, nodes=NODES, demands=tuple(demands), limits=tuple(lims)), SchedulerParams()
    )


def gpu_demand(i: int, ns: str = "team", **kw: Any) -> Demand:
    return make_demand(f"{ns}/t{i}/train", by_class=BY_CLASS, arrival=float(i), **kw)


def quota(hard: dict[str, float], used: dict[str, float] | None = None, ns: str = "team") -> Limit:
    return Limit(QUOTA, "gpus", ns, hard, used or {})


def test_a_quota_of_four_gpus_holds_the_fifth_with_the_quota_and_resource_named() -> None:
    result = run([gpu_demand(i) for i in range(5)], [quota({"requests.nvidia.com/gpu": 4})])
    assert len(result.admitted) == 4
    assert len(result.deferred) == 1
    held = result.deferred[0]
    assert held.reason == limits.WAITING_FOR_QUOTA
    assert "ResourceQuota gpus" in held.message and "requests.nvidia.com/gpu" in held.message
    # Another namespace is not held by it.
    other = run([gpu_demand(i, ns="other") for i in range(5)], [quota({"requests.nvidia.com/gpu": 4})])
    assert len(other.admitted) == 5


def test_quota_usage_counts_and_frees() -> None:
    full = quota({"requests.nvidia.com/gpu": 4}, {"requests.nvidia.com/gpu": 4})
    result = run([gpu_demand(0)], [full])
    assert result.admitted == ()
    assert result.deferred[0].reason == limits.WAITING_FOR_QUOTA
    assert result.deferred[0].best is None  # every class ruled out at the cycle's start: the plan says why
    freed = quota({"requests.nvidia.com/gpu": 4}, {"requests.nvidia.com/gpu": 3})
    assert len(run([gpu_demand(0)], [freed]).admitted) == 1


@pytest.mark.parametrize(
    ("hard", "fits"),
    [
        ({"pods": 2}, 2),
        ({"count/jobs.batch": 3}, 3),
        ({"requests.cpu": 8}, 2),  # 4 cpu per pod
        ({"limits.memory": 40 * GIB}, 2),  # 16Gi per pod, and our pods set memory limits
        ({"requests.storage": 1}, 5),  # not about pods
    ],
)
def test_every_quota_resource_our_pods_use_is_charged(hard: dict[str, float], fits: int) -> None:
    assert len(run([gpu_demand(i) for i in range(5)], [quota(hard)]).admitted) == fits


def test_a_quota_on_limits_cpu_rules_out_our_pods_with_a_reason() -> None:
    result = run([gpu_demand(0)], [quota({"limits.cpu": 100})])
    assert result.admitted == ()
    assert "limits.cpu" in result.deferred[0].message
    assert "refuse" in result.deferred[0].message


def test_a_task_budget_makes_the_expensive_class_infeasible_and_says_so() -> None:
    own = Limit(TASK_BUDGET, "team/t0", "team", {"cost": 2.0}, {"cost": 0.0}, task="team/t0")
    d = gpu_demand(0, time_weight=1.0)
    free = run([d], [])
    assert free.admitted[0].class_name == "v100"  # the fast one when money does not count
    held = run([d], [own])
    assert held.admitted[0].class_name == "k80"
    out = {o.class_name: o for o in held.admitted[0].alternatives}
    assert out["v100"].feasible is False
    assert "the task's budget" in out["v100"].reason and "cost" in out["v100"].reason
    # Only this task's demands are held by it.
    assert run([gpu_demand(1)], [own]).admitted[0].class_name == "v100"


def test_no_class_within_the_task_budget_is_budget_exceeded_not_a_wait() -> None:
    own = Limit(TASK_BUDGET, "team/t0", "team", {"cost": 0.5}, {"cost": 0.0}, task="team/t0")
    result = run([gpu_demand(0)], [own])
    assert result.deferred[0].reason == limits.BUDGET_EXCEEDED
    mixed = run([gpu_demand(0)], [own, quota({"requests.nvidia.com/gpu": 0})])
    assert mixed.deferred[0].reason == limits.BUDGET_EXCEEDED  # the task's own budget is looked at first


def test_a_namespace_budget_is_booked_across_one_cycle() -> None:
    ns_budget = Limit(NAMESPACE_BUDGET, "daily", "team", {"cost": 2.5}, {"cost": 0.0})
    result = run([gpu_demand(i, time_weight=0.0, cost_weight=1.0) for i in range(4)], [ns_budget])
    assert [a.class_name for a in result.admitted] == ["k80", "k80"]  # 1.0 each; the third would make 3.0
    assert {d.reason for d in result.deferred} == {limits.WAITING_FOR_BUDGET}


def test_accelerator_hours_per_class() -> None:
    capped = Limit(NAMESPACE_BUDGET, "hours", "team", {"acceleratorHours/v100": 1.5}, {})
    result = run([gpu_demand(i) for i in range(3)], [capped])
    assert sorted(a.class_name for a in result.admitted) == ["k80", "k80", "v100"]


T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        (BudgetPeriod.HOUR, T0, T0 + timedelta(hours=1)),
        (BudgetPeriod.DAY, datetime(2026, 12, 2, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC)),
        (BudgetPeriod.WEEK, datetime(2026, 11, 30, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC)),
        (BudgetPeriod.MONTH, datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_budget_windows_are_utc_calendar_periods(period: BudgetPeriod, start: datetime, end: datetime) -> None:
    assert budgets.window(period, T0 + timedelta(minutes=5)) == (start, end)


def _status(attempts: list[dict[str, Any]], plan: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"subtasks": [{"name": "train", "plan": plan or {}, "history": attempts}]}


SPEC = {"subtasks": [{"name": "train", "image": "x", "executor": {"accelerators": 2}}]}


def test_namespace_budget_spent_committed_and_remaining() -> None:
    now = T0
    yesterday = T0 - timedelta(days=1)
    spends = [
        # ended today: 1 h at 3.0/h
        *budgets.spends(
            SPEC,
            _status(
                [
                    {
                        "class": "v100",
                        "result": "Succeeded",
                        "startTime": (T0 - timedelta(hours=2)).isoformat(),
                        "finishTime": (T0 - timedelta(hours=1)).isoformat(),
                        "actualSeconds": 3600,
                        "actualCost": 3.0,
                    }
                ]
            ),
        ),
        # ended yesterday: not in today's window
        *budgets.spends(
            SPEC,
            _status(
                [
                    {
                        "class": "v100",
                        "result": "Failed",
                        "startTime": yesterday.isoformat(),
                        "finishTime": (yesterday + timedelta(hours=1)).isoformat(),
                        "actualSeconds": 3600,
                        "actualCost": 3.0,
                    }
                ]
            ),
        ),
        # running for 30 min of a 1 h plan costing 2.0: 1.0 accrued, 1.0 committed
        *budgets.spends(
            SPEC,
            _status(
                [{"class": "k80", "result": "Running", "startTime": (T0 - timedelta(minutes=30)).isoformat()}],
                {"estimatedSeconds": 3600, "estimatedCost": 2.0},
            ),
        ),
    ]
    assert len(spends) == 3
    budget = AITaskBudget.model_validate(
        {
            "metadata": {"name": "daily", "namespace": "team", "generation": 1},
            "spec": {"period": "Day", "maxCost": 10, "acceleratorHours": {"v100": 4, "*": 10}},
        }
    )
    use = budgets.namespace_budget(budget, spends, frozenset({"v100", "k80"}), now)
    assert use.status.spent_cost == pytest.approx(4.0)
    assert use.status.committed_cost == pytest.approx(1.0)
    assert use.status.remaining_cost == pytest.approx(5.0)
    assert use.status.accelerator_hours["v100"].used == pytest.approx(2.0)  # 2 GPUs x 1 h
    assert use.status.accelerator_hours["*"].used == pytest.approx(3.0)  # + 2 GPUs x 0.5 h on k80
    assert use.status.accelerator_hours["*"].committed == pytest.approx(1.0)
    assert use.limit.used["cost"] == pytest.approx(5.0)
    assert use.window_end == datetime(2026, 12, 3, tzinfo=UTC)


def test_budget_status_is_rewritten_only_for_material_changes() -> None:
    written = T0.isoformat()
    old = {
        "windowStart": "a",
        "spentCost": 1.0,
        "committedCost": 0.0,
        "remainingCost": 9.0,
        "conditions": [],
        "updatedAt": written,
    }
    small = {**old, "spentCost": 1.001, "remainingCost": 8.999}
    assert not material(old, small, 10.0, T0 + timedelta(seconds=5))
    assert material(old, small, 10.0, T0 + timedelta(seconds=31))  # a small change is written after 30 s
    assert not material(old, {**old}, 10.0, T0 + timedelta(hours=1))  # no change: never
    assert material(old, {**old, "spentCost": 1.2, "remainingCost": 8.8}, 10.0, T0 + timedelta(seconds=1))
    assert material(old, {**old, "windowStart": "b"}, 10.0, T0)


def test_kueue_hand_overs_are_held_and_booked_by_limits_too() -> None:
    ns_budget = Limit(NAMESPACE_BUDGET, "daily", "team", {"cost": 2.5}, {"cost": 0.0})
    full = tuple(make_node_info(n.name, n.classes, gpus=8, free={"nvidia.com/gpu": 0.0}) for n in NODES)
    snap = Snapshot(
        now=0.0,
        classes=CLASSES,
        nodes=full,
        demands=tuple(gpu_demand(i, time_weight=0.0, cost_weight=1.0) for i in range(4)),
        limits=(ns_budget,),
    )
    result = schedule(snap, SchedulerParams(external_queue=True))
    assert len(result.admitted) == 2  # handed over with no node free; the budget still counts them
    assert {d.reason for d in result.deferred} == {limits.WAITING_FOR_BUDGET}
