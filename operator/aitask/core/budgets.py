"""What AITasks spend, and the limits that follow from it: task budgets and namespace budgets (pure).

Every attempt of every AITask (finished ones included) is reduced to a ``Spend``: its class,
when it ran, its cost rate and its accelerators. A namespace budget (``AITaskBudget``) counts,
over its current period, the runtime of each attempt that falls in the period at the attempt's
rate (``spent``) plus what running attempts are still expected to cost (``committed``): what is
left is ``max - spent - committed``. A task's own budget (``spec.budget.maxCost``) counts all of
its attempts' actual costs plus the estimated cost of the running ones. Both become
``core.types.Limit`` records that the scheduler checks admissions against
(``core.scheduling.limits``), and the namespace budgets' figures are written to their status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aitask.api.v1alpha1 import (
    AcceleratorHoursStatus,
    AITask,
    AITaskBudget,
    AITaskBudgetStatus,
    AttemptResult,
    BudgetPeriod,
    SubtaskPhase,
)
from aitask.core import conditions as cond
from aitask.core.observed import parse_time
from aitask.core.types import NAMESPACE_BUDGET, TASK_BUDGET, Limit

ANY_CLASS = "*"


@dataclass(frozen=True, slots=True)
class Spend:
    """One attempt as budgets see it."""

    class_name: str
    start: datetime
    end: datetime | None  # None while it runs
    cost_per_second: float
    accelerators: float  # on a GPU class: accelerators per pod x pods (0 on a CPU class is decided by the caller)
    estimated_cost: float = 0.0  # a running attempt's plan: what it is expected to cost in all

    def committed(self, now: datetime) -> float:
        """What a running attempt is still expected to cost (its plan's estimate not accrued yet)."""
        if self.end is not None:
            return 0.0
        accrued = self.cost_per_second * max(0.0, (now - self.start).total_seconds())
        return max(0.0, self.estimated_cost - accrued)


def window(period: BudgetPeriod, now: datetime) -> tuple[datetime, datetime]:
    """The calendar period (UTC) that contains ``now``."""
    now = now.astimezone(UTC)
    if period == BudgetPeriod.HOUR:
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.DAY:
        return day, day + timedelta(days=1)
    if period == BudgetPeriod.WEEK:
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, nxt


def spends(spec: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[Spend, ...]:
    """The attempts of one AITask, from its wire spec and status (cheap: no model parsing).

    An ended attempt runs at ``actualCost / actualSeconds``; a running one at its plan's rate,
    and what its plan's estimate has not accrued yet is committed (``Spend.committed``).
    """
    subs = {s.get("name"): s for s in spec.get("subtasks") or () if isinstance(s, Mapping)}
    out: list[Spend] = []
    for st in status.get("subtasks") or ():
        sub = subs.get(st.get("name")) or {}
        executor = sub.get("executor") or {}
        per_pod = executor.get("accelerators")
        accelerators = float((1 if per_pod is None else per_pod) * int(sub.get("parallelism") or 1))
        plan = st.get("plan") or {}
        for attempt in st.get("history") or ():
            start = parse_time(attempt.get("startTime"))
            if start is None:
                continue
            cls = attempt.get("class") or ""
            if attempt.get("result", AttemptResult.RUNNING) == AttemptResult.RUNNING:
                seconds = float(plan.get("estimatedSeconds") or 0.0)
                est = float(plan.get("estimatedCost") or 0.0)
                rate = est / seconds if seconds > 0 else 0.0
                out.append(Spend(cls, start, None, rate, accelerators, estimated_cost=est))
                continue
            end = parse_time(attempt.get("finishTime")) or start
            seconds = float(attempt.get("actualSeconds") or 0.0)
            cost = float(attempt.get("actualCost") or 0.0)
            out.append(Spend(cls, start, end, cost / seconds if seconds > 0 else 0.0, accelerators))
    return tuple(out)


def _overlap(spend: Spend, start: datetime, end: datetime, now: datetime) -> float:
    finish = spend.end or now
    return max(0.0, (min(finish, end) - max(spend.start, start)).total_seconds())


@dataclass(frozen=True)
class BudgetUse:
    """One namespace budget in the current period: its limit for the scheduler and its new status."""

    limit: Limit
    status: AITaskBudgetStatus
    window_end: datetime


def namespace_budget(
    budget: AITaskBudget, spent: Iterable[Spend], gpu_classes: frozenset[str], now: datetime
) -> BudgetUse:
    """Spent, committed and remaining of one AITaskBudget over its current period."""
    spec = budget.spec
    start, end = window(spec.period, now)
    cost = committed = 0.0
    hours: dict[str, float] = {}
    hours_committed: dict[str, float] = {}
    for s in spent:
        seconds = _overlap(s, start, end, now)
        left = s.committed(now)
        cost += s.cost_per_second * seconds
        committed += left
        if s.class_name in gpu_classes:
            used_h = s.accelerators * seconds / 3600.0
            left_h = s.accelerators * (left / s.cost_per_second) / 3600.0 if s.cost_per_second > 0 else 0.0
            for key in (s.class_name, ANY_CLASS):
                hours[key] = hours.get(key, 0.0) + used_h
                hours_committed[key] = hours_committed.get(key, 0.0) + left_h
    hard: dict[str, float] = {}
    used: dict[str, float] = {}
    if spec.max_cost is not None:
        hard["cost"] = spec.max_cost
        used["cost"] = cost + committed
    acc: dict[str, AcceleratorHoursStatus] = {}
    for key, cap in sorted(spec.accelerator_hours.items()):
        resource = "acceleratorHours" if key == ANY_CLASS else f"acceleratorHours/{key}"
        h, c = hours.get(key, 0.0), hours_committed.get(key, 0.0)
        hard[resource] = cap
        used[resource] = h + c
        acc[key] = AcceleratorHoursStatus(
            used=round(h, 6), committed=round(c, 6), limit=cap, remaining=round(max(0.0, cap - h - c), 6)
        )
    remaining = None if spec.max_cost is None else round(max(0.0, spec.max_cost - cost - committed), 6)
    exhausted = (remaining is not None and remaining <= 0) or any(a.remaining <= 0 for a in acc.values())
    conds, _ = cond.set_condition(
        budget.status.conditions,
        type_="Exhausted",
        status=exhausted,
        reason="NothingLeft" if exhausted else "Available",
        message=f"period {start.isoformat()} to {end.isoformat()}",
        now=now,
        generation=budget.metadata.generation,
    )
    status = AITaskBudgetStatus(
        window_start=start,
        window_end=end,
        spent_cost=round(cost, 6),
        committed_cost=round(committed, 6),
        remaining_cost=remaining,
        accelerator_hours=acc,
        conditions=conds,
        observed_generation=budget.metadata.generation,
        updated_at=now,
    )
    ns = budget.metadata.namespace or "default"
    return BudgetUse(Limit(NAMESPACE_BUDGET, budget.metadata.name, ns, hard, used), status, end)


def task_budget(task: AITask) -> Limit | None:
    """The task's own cost ceiling: actual costs of ended attempts plus the plans of running ones."""
    budget = task.spec.budget
    if budget is None:
        return None
    spent = 0.0
    for st in task.status.subtasks:
        for attempt in st.history:
            if attempt.result == AttemptResult.RUNNING:
                spent += st.plan.estimated_cost if st.plan is not None and st.phase == SubtaskPhase.RUNNING else 0.0
            else:
                spent += attempt.actual_cost or 0.0
    ns = task.metadata.namespace or "default"
    return Limit(TASK_BUDGET, task.key, ns, {"cost": budget.max_cost}, {"cost": spent}, task=task.key)
