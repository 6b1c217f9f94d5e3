"""The cycle's limits phase: ResourceQuotas, namespace budgets and task budgets as scheduler limits (pure).

A ResourceQuota's ``status.used`` counts the pods and Jobs that exist. What the operator has
admitted but the API server does not hold yet (a Job created moments ago, pods its controller
has not created) is added here, so that two cycles in a row cannot both spend the same quota.
Budgets are counted by ``core.budgets``; their new status is written only when a figure moved
materially (the cost of running work grows every second; Prometheus has the exact figures).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from aitask.api.v1alpha1 import AITask, AITaskBudget, SubtaskPhase
from aitask.control.decisions import wire
from aitask.core import budgets
from aitask.core.budgets import BudgetUse, Spend
from aitask.core.observed import JobView, PodView, QuotaView, parse_time
from aitask.core.progress import TaskProgress
from aitask.core.quantity import parse_quantity
from aitask.core.scheduling.limits import pod_charge
from aitask.core.types import QUOTA, ClassInfo, Limit

# A budget's status is rewritten when what is left moved by this share of its cap (or the period turned).
MATERIAL_SHARE = 0.005
REFRESH_SECONDS = 30.0


@dataclass(frozen=True)
class InPlay:
    """One task the cycle works on: its parsed object, progress, Jobs and raw body."""

    task: AITask
    progress: TaskProgress
    jobs: Sequence[JobView]
    body: Mapping[str, Any]


@dataclass
class LimitsResult:
    limits: tuple[Limit, ...] = ()
    budgets: dict[tuple[str, str], BudgetUse] = field(default_factory=dict)
    writes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # only material changes
    wakeups: list[datetime] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _uncounted(
    play: InPlay, live_pods: Mapping[tuple[str, str], int], infos: Mapping[str, ClassInfo]
) -> dict[str, float]:
    """What the task's running attempts will hold that no quota counts yet: Jobs not created, pods not created."""
    out: dict[str, float] = {}
    ns = play.task.metadata.namespace or "default"
    by_name = {j.name: j for j in play.jobs}

    def add(resource: str, amount: float) -> None:
        if amount:
            out[resource] = out.get(resource, 0.0) + amount

    for st in play.progress.status.subtasks:
        plan = st.plan
        if st.phase != SubtaskPhase.RUNNING or plan is None or not st.job:
            continue
        job = by_name.get(st.job)
        at_once = max(1, len(plan.nodes))
        if job is None:
            add("count/jobs.batch", 1.0)
        else:
            at_once = min(at_once, job.parallelism, max(0, job.completions - job.succeeded))
        missing = max(0, at_once - live_pods.get((ns, st.job), 0))
        if not missing:
            continue
        info = infos.get(plan.class_name)
        resource = info.accelerator_resource if info is not None and plan.accelerators else None
        cpu, memory = parse_quantity(plan.cpu or "0"), parse_quantity(plan.memory or "0")
        for key, amount in pod_charge(float(missing), cpu, memory, float(plan.accelerators), resource).items():
            add(key, amount)
    return out


def _quota_limits(
    quotas: Iterable[QuotaView], uncounted: Mapping[str, Mapping[str, float]], warnings: list[str]
) -> list[Limit]:
    out = []
    for q in quotas:
        if not q.applies_to_ours:
            continue
        try:
            hard = {k: parse_quantity(v) for k, v in q.hard.items()}
            used = {k: parse_quantity(v) for k, v in q.used.items()}
        except ValueError as err:
            warnings.append(f"ResourceQuota {q.namespace}/{q.name}: {err}")
            continue
        extra = uncounted.get(q.namespace, {})
        for key, amount in extra.items():
            if key in hard:
                used[key] = used.get(key, 0.0) + amount
        out.append(Limit(QUOTA, q.name, q.namespace, hard, used))
    return out


def material(old: Mapping[str, Any], new: Mapping[str, Any], max_cost: float | None, now: datetime) -> bool:
    """Whether a budget's new status is worth a write.

    Yes when the period, the spec generation or a condition changed, or a figure moved by
    ``MATERIAL_SHARE`` of its cap; any smaller change is written once the last write is
    ``REFRESH_SECONDS`` old. The cost of running work grows every second: this bounds the writes.
    """
    for key in ("windowStart", "observedGeneration"):
        if old.get(key) != new.get(key):
            return True
    if [(c.get("type"), c.get("status")) for c in old.get("conditions") or []] != [
        (c.get("type"), c.get("status")) for c in new.get("conditions") or []
    ]:
        return True
    moved = False
    steps = [
        (key, MATERIAL_SHARE * (max_cost or 0.0), old, new) for key in ("spentCost", "committedCost", "remainingCost")
    ]
    old_h, new_h = old.get("acceleratorHours") or {}, new.get("acceleratorHours") or {}
    if set(old_h) != set(new_h):
        return True
    for cls, figures in new_h.items():
        share = MATERIAL_SHARE * float(figures.get("limit") or 0.0)
        steps.extend((key, share, old_h.get(cls) or {}, figures) for key in ("used", "committed", "remaining"))
    for key, step, before, after in steps:
        delta = abs(float(before.get(key) or 0.0) - float(after.get(key) or 0.0))
        if step > 0 and delta >= step:
            return True
        moved = moved or delta > 1e-9
    if not moved:
        return False
    written = parse_time(old.get("updatedAt"))
    return written is None or (now - written).total_seconds() >= REFRESH_SECONDS


def limits_phase(
    plays: Iterable[InPlay],
    pods: Iterable[PodView],
    quotas: Sequence[QuotaView],
    budget_bodies: Sequence[Mapping[str, Any]],
    finished_spends: Iterable[tuple[str, Spend]],
    infos: Mapping[str, ClassInfo],
    now: datetime,
    spend_cache: dict[str, tuple[TaskProgress, tuple[Spend, ...]]] | None = None,
) -> LimitsResult:
    """Every limit that applies to this cycle's admissions, and the namespace budgets' figures.

    ``spend_cache`` (owned by the caller, e.g. ``CycleCache.spends``) keeps each task's spends
    while its derived progress is unchanged, so a budgeted namespace costs no re-reading of
    every running task per cycle."""
    result = LimitsResult()
    plays = list(plays)
    limits: list[Limit] = []
    if quotas:
        live: dict[tuple[str, str], int] = {}
        for pod in pods:
            if pod.job and not pod.terminal:
                live[(pod.namespace, pod.job)] = live.get((pod.namespace, pod.job), 0) + 1
        quota_ns = {q.namespace for q in quotas}
        uncounted: dict[str, dict[str, float]] = {}
        for play in plays:
            ns = play.task.metadata.namespace or "default"
            if ns in quota_ns:
                slot = uncounted.setdefault(ns, {})
                for key, amount in _uncounted(play, live, infos).items():
                    slot[key] = slot.get(key, 0.0) + amount
        limits.extend(_quota_limits(quotas, uncounted, result.warnings))
    for play in plays:
        if play.task.spec.budget is not None:
            own = budgets.task_budget(play.task.model_copy(update={"status": play.progress.status}))
            if own is not None:
                limits.append(own)
    if budget_bodies:
        kept = spend_cache if spend_cache is not None else {}
        in_play = {play.task.key for play in plays}
        for gone in [k for k in kept if k not in in_play]:
            del kept[gone]
        limits.extend(_namespace_budgets(plays, budget_bodies, finished_spends, infos, now, result, kept))
    result.limits = tuple(limits)
    return result


def _spends(play: InPlay, cache: dict[str, tuple[TaskProgress, tuple[Spend, ...]]]) -> tuple[Spend, ...]:
    """A task's attempts as budgets see them, kept while its derived progress is the same object."""
    key = play.task.key
    hit = cache.get(key)
    if hit is not None and hit[0] is play.progress:
        return hit[1]
    found = budgets.spends(play.body.get("spec") or {}, wire(play.progress.status))
    cache[key] = (play.progress, found)
    return found


def _namespace_budgets(
    plays: Sequence[InPlay],
    bodies: Sequence[Mapping[str, Any]],
    finished_spends: Iterable[tuple[str, Spend]],
    infos: Mapping[str, ClassInfo],
    now: datetime,
    result: LimitsResult,
    cache: dict[str, tuple[TaskProgress, tuple[Spend, ...]]],
) -> list[Limit]:
    parsed: list[AITaskBudget] = []
    for body in bodies:
        try:
            parsed.append(AITaskBudget.model_validate(body))
        except ValidationError as err:
            meta = body.get("metadata") or {}
            result.warnings.append(f"AITaskBudget {meta.get('namespace')}/{meta.get('name')}: {err.errors()[:1]}")
    wanted = {b.metadata.namespace or "default" for b in parsed}
    spent: dict[str, list[Spend]] = {}
    for ns, s in finished_spends:
        if ns in wanted:
            spent.setdefault(ns, []).append(s)
    for play in plays:
        ns = play.task.metadata.namespace or "default"
        if ns in wanted:
            spent.setdefault(ns, []).extend(_spends(play, cache))
    gpu = frozenset(name for name, info in infos.items() if info.kind == "gpu")
    out = []
    for budget in parsed:
        ns = budget.metadata.namespace or "default"
        use = budgets.namespace_budget(budget, spent.get(ns, ()), gpu, now)
        key = (ns, budget.metadata.name)
        result.budgets[key] = use
        result.wakeups.append(use.window_end)
        new = wire(use.status)
        if material(wire(budget.status), new, budget.spec.max_cost, now):
            result.writes[key] = new
        out.append(use.limit)
    return out
