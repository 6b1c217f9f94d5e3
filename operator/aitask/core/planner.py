"""Plan preview of one AITask (`aitask plan`): what the scheduler would do with each sub-task.

Each sub-task, in topological order, is put alone through ``core.scheduler.schedule`` on the
given cluster state, as if it were ready now: the class it would get, its resources, T, W, C
and F, and every alternative with its terms or why it is infeasible. Totals: the critical path
(the longest chain of estimated runtimes, the least time the task can take) and the total
estimated cost. Pure: the command reads the files or the cluster and formats the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aitask.api import v1alpha1 as api
from aitask.core import dag, variants
from aitask.core.scheduler import schedule
from aitask.core.snapshot import demand_for
from aitask.core.types import (
    TASK_BUDGET,
    ClassInfo,
    CycleResult,
    Demand,
    Learned,
    Limit,
    NodeInfo,
    Option,
    Preemption,
    Running,
    SchedulerParams,
    Snapshot,
)


@dataclass(frozen=True)
class SubtaskPlan:
    name: str
    subtask_type: str
    profile: str
    depends_on: tuple[str, ...]
    demand: Demand
    chosen: Option | None  # None: no feasible class
    alternatives: tuple[Option, ...]
    admissible_now: bool  # it would be admitted at once if it were ready now
    nodes: tuple[str, ...]  # where its pods would go now (empty when it would wait)
    accelerators: int  # per pod on the chosen class (0 on a CPU pool)
    message: str
    start_seconds: float  # after its dependencies, plus its own wait when it has none
    finish_seconds: float
    variant: str = ""  # the chosen variant, when the sub-task lists variants
    quality: float | None = None
    pairs: tuple[variants.Pair, ...] = ()  # every (variant, class) pair, F with the quality term
    preempts: tuple[Preemption, ...] = ()  # running preemptible work the scheduler would stop for it now


@dataclass(frozen=True)
class TaskPlan:
    task: str
    namespace: str
    subtasks: tuple[SubtaskPlan, ...]
    critical_path_seconds: float
    critical_path: tuple[str, ...]
    estimated_completion_seconds: float
    total_cost: float
    feasible: bool  # every sub-task has a feasible class


def _variant_fields(choice: variants.VariantChoice | None, chosen: Option | None) -> dict[str, Any]:
    """The chosen option (its F with the quality term, as the pairs have it) and the variant's fields."""
    if choice is None:
        return {"chosen": chosen}
    return {
        "chosen": variants.with_quality_term(chosen, choice),
        "variant": choice.name,
        "quality": choice.variant.quality,
        "pairs": choice.pairs,
    }


def _read(result: CycleResult) -> tuple[Option | None, tuple[Option, ...], bool, tuple[str, ...], str]:
    """(chosen, alternatives, admissible now, nodes, message) of a one-demand schedule."""
    if result.admitted:
        adm = result.admitted[0]
        return adm.chosen, adm.alternatives, True, adm.nodes, adm.message
    deferral = result.deferred[0]
    return deferral.best, deferral.alternatives, False, (), deferral.message


def _own_budget(task: api.AITask, spent: float) -> tuple[Limit, ...]:
    budget = task.spec.budget
    if budget is None:
        return ()
    ns = task.metadata.namespace or "default"
    return (Limit(TASK_BUDGET, task.key, ns, {"cost": budget.max_cost}, {"cost": spent}, task=task.key),)


def plan_task(
    task: api.AITask,
    classes: Mapping[str, ClassInfo],
    nodes: Iterable[NodeInfo],
    *,
    now: float,
    learned: Mapping[tuple[str, str], Learned] | None = None,
    running: Iterable[Running] = (),
    params: SchedulerParams | None = None,
    default_time_weight: float = 1.0,
    default_cost_weight: float = 0.0,
    limits: Iterable[Limit] = (),
) -> TaskPlan:
    """Preview the placements of a task before it is submitted, with the alternatives.

    Runs the very scheduler the operator runs, one sub-task at a time, so the preview
    cannot drift from what the operator would decide on the same cluster state. ``limits``
    are the cluster's (quotas, namespace budgets); the task's own ``spec.budget`` is added,
    spent by the sub-tasks planned before each one.
    """
    cluster_limits = tuple(limits)
    spent = 0.0
    params = params or SchedulerParams()
    task = variants.expand_task(task)
    deps = {s.name: list(s.depends_on) for s in task.spec.subtasks}
    order = dag.topological_order(deps)
    node_tuple = tuple(nodes)
    running_tuple = tuple(running)
    choose = variants.lazy_choice(classes, node_tuple, running_tuple, learned or {}, params)
    plans: dict[str, SubtaskPlan] = {}
    runtimes: dict[str, float] = {}
    for name in order:
        sub = task.spec.subtask(name)
        demand = demand_for(
            task,
            sub,
            1,
            now=now,
            ready_since=now,
            arrival=now,
            default_time_weight=default_time_weight,
            default_cost_weight=default_cost_weight,
        )
        demand, sub, choice = choose(task, sub, demand)
        result = schedule(
            Snapshot(
                now=now,
                classes=classes,
                nodes=node_tuple,
                demands=(demand,),
                running=running_tuple,
                learned=learned or {},
                limits=cluster_limits + _own_budget(task, spent),
            ),
            params,
        )
        chosen, alternatives, admissible, placed, message = _read(result)
        preempts = tuple(p for p in result.preempted if p.by == demand.key)
        if preempts:  # the sub-tasks after this one do not stop the same work again
            stopped = {p.key for p in preempts}
            running_tuple = tuple(r for r in running_tuple if r.key not in stopped)
        spent += (chosen.cost or 0.0) if chosen is not None else 0.0
        runtime = (chosen.runtime_seconds or 0.0) if chosen is not None else 0.0
        wait = (chosen.wait_seconds or 0.0) if chosen is not None else 0.0
        start = max((plans[d].finish_seconds for d in sub.depends_on), default=wait)
        runtimes[name] = runtime
        plans[name] = SubtaskPlan(
            name=name,
            subtask_type=sub.type.value,
            profile=sub.effective_profile,
            depends_on=tuple(sub.depends_on),
            demand=demand,
            alternatives=alternatives,
            admissible_now=admissible,
            nodes=placed,
            message=message,
            accelerators=(
                demand.accelerators if chosen is not None and classes[chosen.class_name].kind == "gpu" else 0
            ),
            start_seconds=start,
            finish_seconds=start + runtime,
            preempts=preempts,
            **_variant_fields(choice, chosen),
        )
    length, path = dag.critical_path(deps, runtimes)
    ordered = tuple(plans[n] for n in order)
    return TaskPlan(
        task=task.metadata.name,
        namespace=task.metadata.namespace or "default",
        subtasks=ordered,
        critical_path_seconds=length,
        critical_path=tuple(path),
        estimated_completion_seconds=max((p.finish_seconds for p in ordered), default=0.0),
        total_cost=sum((p.chosen.cost or 0.0) for p in ordered if p.chosen is not None),
        feasible=all(p.chosen is not None for p in ordered),
    )
