"""The scheduler's decisions for one task, as its next status and the Jobs to create (pure).

``decide_task`` is the "apply decisions to status" phase of the cycle: admissions become
attempts (through ``core.progress.start_attempt``, the owner of every sub-task transition)
and Job manifests; deferrals become plan previews; the task-level phase and conditions are
settled by ``core.progress.settle``. A status that did not change is not written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aitask.api.v1alpha1 import (
    AITask,
    AITaskBudgetStatus,
    AITaskStatus,
    Alternative,
    Attempt,
    AttemptResult,
    BudgetPolicy,
    ExecutorClass,
    ExecutorClassStatus,
    Plan,
    SubtaskMetrics,
    SubtaskPhase,
    SubtaskStatus,
    TaskMetrics,
    TaskPhase,
)
from aitask.build import workspace
from aitask.build.jobs import build_job
from aitask.core import conditions as cond
from aitask.core import progress, resume, variants
from aitask.core.progress import EventSpec, Ready, TaskProgress
from aitask.core.quantity import format_cpu, format_memory
from aitask.core.reasons import ConditionType, Reason, kueue_waiting_message
from aitask.core.scheduling import admit, limits
from aitask.core.types import Admission, Deferral, Demand, Option, Preemption, SubtaskKey
from aitask.core.usage import combine
from aitask.core.variants import VariantChoice


@dataclass(frozen=True)
class Telemetry:
    """GPU feedback as the handlers sampled it."""

    usage: Mapping[tuple[str, str, str], Mapping[str, Any]]  # (namespace, task, subtask) -> metrics
    state: str = "disabled"  # disabled | ok | unavailable
    message: str = ""


@dataclass(frozen=True)
class Retry:
    """A new attempt started after a failed one: counted in aitask_subtask_retries_total."""

    class_name: str  # of the new attempt
    after: AttemptResult  # how the failed one ended


@dataclass(frozen=True)
class TaskDecision:
    status: AITaskStatus
    creates: tuple[dict[str, Any], ...]
    events: tuple[EventSpec, ...]
    retries: tuple[Retry, ...]
    pending_classes: tuple[str, ...]  # best class of each deferral ("none" when no class is feasible)
    delete_jobs: tuple[str, ...] = ()  # running attempts stopped because the task failed here (budget)
    finished: tuple[tuple[Attempt, float | None], ...] = ()  # the attempts those ended


def wire(status: AITaskStatus | ExecutorClassStatus | AITaskBudgetStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def option_alt(opt: Option) -> Alternative:
    return Alternative(
        class_name=opt.class_name,
        feasible=opt.feasible,
        reason=opt.reason,
        estimated_seconds=_r(opt.runtime_seconds),
        wait_seconds=_r(opt.wait_seconds),
        estimated_cost=_r(opt.cost),
        score=_r(opt.score),
    )


def make_plan(
    opt: Option,
    alts: Sequence[Option],
    ec: ExecutorClass | None,
    *,
    accelerators: int,
    cpu: float,
    memory: float,
    nodes: Sequence[str],
    message: str,
) -> Plan:
    return Plan(
        class_name=opt.class_name,
        accelerators=accelerators if ec is not None and ec.spec.accelerator is not None else 0,
        cpu=format_cpu(cpu),
        memory=format_memory(memory),
        node_selector=dict(ec.spec.node_selector) if ec is not None else {},
        nodes=list(nodes),
        estimated_seconds=round(opt.runtime_seconds or 0.0, 3),
        estimated_cost=round(opt.cost or 0.0, 6),
        score=round(opt.score or 0.0, 6),
        estimate_source=opt.estimate_source,
        alternatives=[option_alt(a) for a in alts],
        message=message,
    )


def _preview(dfr: Deferral, demand: Demand, ecs: Mapping[str, ExecutorClass]) -> Plan | None:
    if dfr.best is not None:
        return make_plan(
            dfr.best,
            dfr.alternatives,
            ecs.get(dfr.best.class_name),
            accelerators=demand.accelerators,
            cpu=demand.cpu,
            memory=demand.memory,
            nodes=(),
            message=dfr.message,
        )
    if dfr.alternatives:
        return Plan(class_name="", alternatives=[option_alt(a) for a in dfr.alternatives], message=dfr.message)
    return None


def _deferred(prev: SubtaskStatus, dfr: Deferral, demand: Demand, ecs: Mapping[str, ExecutorClass]) -> SubtaskStatus:
    """A waiting sub-task's preview; kept as it is while its best class and reason stay the same.

    W and the alternatives' figures move every cycle; rewriting them would make every waiting
    task cost one status write per cycle. The preview is refreshed when the decision changes.
    """
    best = dfr.best.class_name if dfr.best is not None else ""
    old = prev.plan
    if old is not None and old.class_name == best and prev.message.split(":", 1)[0] == dfr.message.split(":", 1)[0]:
        return prev
    return prev.model_copy(update={"plan": _preview(dfr, demand, ecs), "message": dfr.message})


def _with_choice(st: SubtaskStatus, choice: VariantChoice | None) -> SubtaskStatus:
    """A waiting sub-task's preview with its variant (kept while the variant stays the same, like the class)."""
    if choice is None or st.plan is None or st.plan.variant == choice.name:
        return st
    return st.model_copy(update={"plan": variants.with_variant(st.plan, choice)})


def _with_usage(st: SubtaskStatus, telemetry: Telemetry, task: AITask) -> SubtaskStatus:
    usage = telemetry.usage.get((task.metadata.namespace or "", task.metadata.name, st.name))
    if usage is None or st.phase != SubtaskPhase.RUNNING:
        return st
    return st.model_copy(update={"metrics": SubtaskMetrics.model_validate(dict(usage))})


def _task_metrics(subtasks: Sequence[SubtaskStatus]) -> TaskMetrics | None:
    """Task-level GPU use: the sub-tasks' samples combined like pods into an attempt (core.usage)."""
    combined = combine(
        (m.gpu_util_avg, m.gpu_util_max, m.gpu_memory_used_max_bytes)
        for m in (s.metrics for s in subtasks)
        if m is not None
    )
    if combined is None:
        return None
    avg, peak, memory = combined
    return TaskMetrics(
        gpu_util_avg=None if avg is None else round(avg, 1), gpu_util_max=peak, gpu_memory_used_max_bytes=memory
    )


def _telemetry_condition(
    conds: Sequence[Any], telemetry: Telemetry, now: datetime, gen: int | None, *, active: bool
) -> list[Any]:
    """MetricsUnavailable says, on tasks with running work, that GPU feedback is degraded; nothing waits on it."""
    if telemetry.state == "unavailable" and active:
        out, _ = cond.set_condition(
            conds,
            type_=ConditionType.METRICS_UNAVAILABLE,
            status=True,
            reason=Reason.PROMETHEUS_UNREACHABLE,
            message=f"GPU utilisation is not being sampled: {telemetry.message}",
            now=now,
            generation=gen,
        )
        return out
    if telemetry.state == "ok" and cond.get_condition(conds, ConditionType.METRICS_UNAVAILABLE) is not None:
        out, _ = cond.set_condition(
            conds,
            type_=ConditionType.METRICS_UNAVAILABLE,
            status=False,
            reason=Reason.PROMETHEUS_OK,
            message="Prometheus answers again",
            now=now,
            generation=gen,
        )
        return out
    return list(conds)


#: The Planned condition's reason for each deferral reason of the scheduler; the first in this order is shown.
_DEFERRAL_REASONS: Mapping[str, Reason] = {
    admit.NO_FEASIBLE_CLASS: Reason.NO_FEASIBLE_CLASS,
    limits.BUDGET_EXCEEDED: Reason.BUDGET_EXCEEDED,
    limits.WAITING_FOR_QUOTA: Reason.WAITING_FOR_QUOTA,
    limits.WAITING_FOR_BUDGET: Reason.WAITING_FOR_BUDGET,
}
_SEVERITY = {name: i for i, name in enumerate(_DEFERRAL_REASONS)}


def _message_of(ordered: Sequence[SubtaskStatus], name: str, default: str) -> str:
    return next((s.message for s in ordered if s.name == name), default)


def _planned_condition(
    conds: Sequence[Any],
    deferrals: Sequence[Deferral],
    ordered: Sequence[SubtaskStatus],
    now: datetime,
    gen: int | None,
) -> list[Any]:
    if deferrals:
        worst = min(deferrals, key=lambda d: _SEVERITY.get(d.reason, len(_SEVERITY)))
        reason = _DEFERRAL_REASONS.get(worst.reason, Reason.WAITING_FOR_CAPACITY)
        out, _ = cond.set_condition(
            conds,
            type_=ConditionType.PLANNED,
            status=False,
            reason=reason,
            # The sub-task's message, which ``_deferred`` keeps while its decision holds: the deferral's
            # own carries W, which moves every cycle and would rewrite every waiting task's status.
            message=f"{worst.key.subtask}: {_message_of(ordered, worst.key.subtask, worst.message)}",
            now=now,
            generation=gen,
        )
        return out
    active = [s for s in ordered if s.phase in (SubtaskPhase.QUEUED, SubtaskPhase.RUNNING, SubtaskPhase.BACKOFF)]
    if all(s.plan is not None and s.plan.class_name for s in active) and any(s.plan for s in ordered):
        out, _ = cond.set_condition(
            conds,
            type_=ConditionType.PLANNED,
            status=True,
            reason=Reason.ALL_PLANNED,
            message="every ready sub-task has a placement",
            now=now,
            generation=gen,
        )
        return out
    return list(conds)


def _kueue_condition(
    conds: Sequence[Any], ordered: Sequence[SubtaskStatus], suspended: Mapping[str, str], now: datetime, gen: int | None
) -> list[Any]:
    """KueueAdmitted: False while a running sub-task's Job waits suspended in its Kueue queue, True after.

    Set only on tasks that went through Kueue (a suspended Job was seen once): outside Kueue mode the
    condition never appears.
    """
    waiting = [
        (s.name, suspended[s.job]) for s in ordered if s.phase == SubtaskPhase.RUNNING and s.job and s.job in suspended
    ]
    if waiting:
        queues = sorted({q for _, q in waiting})
        out, _ = cond.set_condition(
            conds,
            type_=ConditionType.KUEUE_ADMITTED,
            status=False,
            reason=Reason.WAITING_FOR_KUEUE_ADMISSION,
            message=f"{', '.join(n for n, _ in waiting)}: {kueue_waiting_message(', '.join(queues))}",
            now=now,
            generation=gen,
        )
        return out
    if cond.get_condition(conds, ConditionType.KUEUE_ADMITTED) is not None:
        out, _ = cond.set_condition(
            conds,
            type_=ConditionType.KUEUE_ADMITTED,
            status=True,
            reason=Reason.ADMITTED_BY_KUEUE,
            message="no sub-task waits for Kueue admission",
            now=now,
            generation=gen,
        )
        return out
    return list(conds)


def _fails_over_budget(task: AITask, deferrals: Sequence[Deferral]) -> Deferral | None:
    """The deferral that fails the task: its own budget rules out every class and it chose onExceeded: Fail."""
    budget = task.spec.budget
    if budget is None or budget.on_exceeded != BudgetPolicy.FAIL:
        return None
    return next((d for d in deferrals if d.reason == limits.BUDGET_EXCEEDED), None)


def _start_attempts(
    task: AITask,
    subs: dict[str, SubtaskStatus],
    admissions: Sequence[Admission],
    ready: Mapping[SubtaskKey, Ready],
    ecs: Mapping[str, ExecutorClass],
    queue: str | None,
    choices: Mapping[SubtaskKey, VariantChoice],
    events: list[EventSpec],
    now: datetime,
) -> tuple[list[dict[str, Any]], list[Retry]]:
    """Each admission's Job manifest and its attempt started in ``subs`` (an Event each in ``events``)."""
    creates: list[dict[str, Any]] = []
    retries: list[Retry] = []
    for adm in admissions:
        sub = ready[adm.key].subtask
        ec = ecs[adm.class_name]
        choice = choices.get(adm.key)
        manifest = build_job(task, sub, adm, ec.spec, queue_name=queue)
        manifest = workspace.with_contract(manifest, task, sub, choice.variant if choice else None, subs)
        creates.append(manifest)
        plan = make_plan(
            adm.chosen,
            adm.alternatives,
            ec,
            accelerators=adm.accelerators,
            cpu=adm.cpu,
            memory=adm.memory,
            nodes=adm.nodes,
            message=adm.message,
        )
        plan = variants.with_variant(plan, choice)
        prev = subs[sub.name]
        if prev.history and prev.history[-1].result.is_failure:
            retries.append(Retry(class_name=adm.class_name, after=prev.history[-1].result))
        subs[sub.name] = progress.start_attempt(
            prev, sub, adm.attempt, job=manifest["metadata"]["name"], plan=plan, message=plan.message, now=now
        )
        events.append(EventSpec("Normal", Reason.ATTEMPT_STARTED, f"{sub.name}: {plan.message}"))
    return creates, retries


def decide_task(
    task: AITask,
    prog: TaskProgress,
    admissions: Sequence[Admission],
    deferrals: Sequence[Deferral],
    ready: Mapping[SubtaskKey, Ready],
    demands: Mapping[SubtaskKey, Demand],
    ecs: Mapping[str, ExecutorClass],
    telemetry: Telemetry,
    now: datetime,
    *,
    kueue_queue: str | None = None,
    suspended: Mapping[str, str] | None = None,
    choices: Mapping[SubtaskKey, VariantChoice] | None = None,
    preempted: Sequence[tuple[Preemption, float]] = (),
) -> TaskDecision:
    """The task's next status after this cycle's admissions, deferrals and preemptions, and its new Jobs.

    ``kueue_queue`` (Kueue mode): the LocalQueue of a task without ``spec.queueName``; its Jobs are
    created suspended in that queue. ``suspended``: the task's suspended Jobs, name -> queue.
    ``choices``: the variant chosen for each demand of a sub-task with variants (core.variants).
    ``preempted``: the running attempts the scheduler stops, with the fraction of the work done.
    """
    status = prog.status
    subs = {s.name: s for s in status.subtasks}
    events = list(prog.events)
    stopped: list[tuple[Attempt, float | None]] = []
    for pre, done in preempted:
        prev = subs.get(pre.key.subtask)
        if prev is None or prev.phase != SubtaskPhase.RUNNING or not prev.history:
            continue
        subs[pre.key.subtask], attempt, event = resume.preempt_attempt(prev, pre, done, now)
        stopped.append((attempt, prev.plan.estimated_cost if prev.plan else None))
        events.append(EventSpec(*event))
    queue = (task.spec.queue_name or kueue_queue) if kueue_queue is not None else None
    creates, retries = _start_attempts(task, subs, admissions, ready, ecs, queue, choices or {}, events, now)
    pending: list[str] = []
    for dfr in deferrals:
        st = _deferred(subs[dfr.key.subtask], dfr, demands[dfr.key], ecs)
        subs[dfr.key.subtask] = _with_choice(st, (choices or {}).get(dfr.key))
        pending.append(dfr.best.class_name if dfr.best else "none")
    ordered = [_with_usage(subs[s.name], telemetry, task) for s in task.spec.subtasks]
    gen = task.metadata.generation
    conds = list(status.conditions)
    if not status.phase.final:
        conds = _planned_condition(conds, deferrals, ordered, now, gen)
    delete: list[str] = []
    ended: list[tuple[Attempt, float | None]] = []
    phase = status.phase
    over = None if admissions else _fails_over_budget(task, deferrals)
    if over is not None:
        phase, message = TaskPhase.FAILED, f"{over.key.subtask}: {over.message}"
        ordered = progress.release(ordered, phase, now, delete, ended)
        conds = progress.end_conditions(conds, phase, Reason.BUDGET_EXCEEDED, message, now, gen)
        events.append(EventSpec("Warning", Reason.BUDGET_EXCEEDED, f"task failed: {message}"))
        status = status.model_copy(update={"completion_time": now})
    phase, conds = progress.settle(phase, conds, ordered, now, gen)
    conds = _kueue_condition(conds, ordered, suspended or {}, now, gen)
    running = any(s.phase == SubtaskPhase.RUNNING for s in ordered)
    conds = _telemetry_condition(conds, telemetry, now, gen, active=running)
    est = [s.plan.estimated_cost for s in ordered if s.plan]
    new = status.model_copy(
        update={
            "subtasks": ordered,
            "conditions": conds,
            "phase": phase,
            "estimated_cost": round(sum(est), 6) if est else status.estimated_cost,
            "estimated_seconds": progress.estimated_seconds(task, ordered),
            "start_time": status.start_time or (now if running else None),
            "metrics": _task_metrics(ordered) or status.metrics,
        }
    )
    return TaskDecision(
        status=new,
        creates=tuple(creates),
        events=tuple(events),
        retries=tuple(retries),
        pending_classes=tuple(pending),
        delete_jobs=tuple(delete),
        finished=(*ended, *stopped),
    )
