"""One scheduling cycle over the whole cluster, as a pure function.

    view (indexes) -> 1. parse & validate tasks -> 2. derive each task's progress
    -> 3. snapshot free capacity -> 4. schedule (cost model) -> 5. build Jobs
    -> 6. new statuses (one per task, only if changed) + learned runtimes per class

The handler layer turns the outcome into API calls; nothing here does I/O or reads
a clock, so a cycle can be replayed in a test from recorded inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from aitask.api.v1alpha1 import (
    AITask,
    AITaskStatus,
    Alternative,
    Attempt,
    ExecutorClass,
    ExecutorClassStatus,
    Learned,
    Plan,
    ResourceTotals,
    SubtaskMetrics,
    SubtaskPhase,
    TaskMetrics,
    TaskPhase,
)
from aitask.build.jobs import build_job, job_name
from aitask.core import conditions as cond
from aitask.core import estimator, progress, scheduler, snapshot
from aitask.core.dag import find_cycle
from aitask.core.observed import JobView, PodView
from aitask.core.progress import EventSpec, TaskProgress, subtask_hash
from aitask.core.quantity import GIB, format_cpu, format_memory, parse_quantity
from aitask.core.reasons import ConditionType, Reason
from aitask.core.types import (
    Admission,
    ClassInfo,
    Deferral,
    Demand,
    Option,
    Policy,
    Running,
    SchedulerParams,
    Snapshot,
    SubtaskKey,
)
from aitask.core.usage import combine


@dataclass(frozen=True)
class CycleParams:
    default_time_weight: float = 1.0
    default_cost_weight: float = 0.0
    ageing_seconds: float = 600.0
    learning_rate: float = 0.3
    job_ttl_seconds: int = 3600
    backoff_max_seconds: float = 300.0
    backoff_seconds: float = 10.0
    low_gpu_util_percent: float = 30.0
    policy: Policy = Policy.COST


@dataclass(frozen=True)
class ClusterView:
    """What the watches show, as plain data."""

    tasks: Sequence[Mapping[str, Any]]  # AITask bodies
    jobs: Sequence[JobView]  # our child Jobs
    pods: Sequence[PodView]  # every pod bound to a node, plus our unbound ones
    nodes: Sequence[Mapping[str, Any]]  # Node bodies
    classes: Sequence[Mapping[str, Any]]  # ExecutorClass bodies
    # GPU use sampled from Prometheus: (namespace, task, subtask) -> status.subtasks[].metrics
    gpu_usage: Mapping[tuple[str, str, str], Mapping[str, Any]] = field(default_factory=dict)
    telemetry: str = "disabled"  # disabled | ok | unavailable
    telemetry_message: str = ""


@dataclass(frozen=True)
class TaskOutcome:
    namespace: str
    name: str
    uid: str
    status: dict[str, Any] | None  # the whole new status when it changed, else None
    create_jobs: tuple[dict[str, Any], ...] = ()
    delete_jobs: tuple[str, ...] = ()
    events: tuple[EventSpec, ...] = ()
    # For the metrics, recorded once the status write that carries them succeeded:
    finished: tuple[tuple[str, str, float | None, float | None], ...] = ()  # (class, result, est. cost, cost)
    retries: tuple[tuple[str, str], ...] = ()  # (class of the new attempt, result of the failed one)
    expire_jobs: tuple[str, ...] = ()  # finished Jobs whose result the status records: give them their TTL


@dataclass(frozen=True)
class CycleStats:
    tasks_by_phase: Mapping[tuple[str, str], int]  # (namespace, phase) -> count
    admitted: int
    pending_by_class: Mapping[str, int]
    waits: tuple[tuple[str, float], ...]  # (class, seconds from ready to admission) for this cycle's admissions
    observations: tuple[tuple[str, str, float, float | None, float | None], ...]
    # (namespace, class, actual s, estimated s, average GPU utilisation %) per finished attempt
    errors: tuple[tuple[str, str], ...] = ()  # (task key, exception class) of tasks isolated this cycle


@dataclass(frozen=True)
class CycleOutcome:
    tasks: tuple[TaskOutcome, ...]
    class_status: Mapping[str, dict[str, Any]]  # class -> whole new status, only changed ones
    stats: CycleStats
    warnings: tuple[str, ...] = ()


def validation_message(err: ValidationError) -> str:
    """Name the offending field the way a user wrote it: ``spec.subtasks[1].executor.cpu: ...``."""
    parts = []
    for item in err.errors()[:5]:
        loc = ""
        for piece in item["loc"]:
            loc += f"[{piece}]" if isinstance(piece, int) else (f".{piece}" if loc else str(piece))
        msg = item["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_task(body: Mapping[str, Any]) -> tuple[AITask | None, str]:
    """Parse and validate an AITask; on failure return the message naming the field."""
    try:
        task = AITask.model_validate(body)
    except ValidationError as err:
        return None, validation_message(err)
    cycle = find_cycle({s.name: s.depends_on for s in task.spec.subtasks})
    if cycle:
        return None, "spec.subtasks[].dependsOn: dependency cycle " + " -> ".join([*cycle, cycle[0]])
    return task, ""


def _status_only(body: Mapping[str, Any]) -> AITaskStatus:
    try:
        return AITaskStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return AITaskStatus()


def _invalid(body: Mapping[str, Any], message: str, now: datetime) -> TaskOutcome:
    meta = body.get("metadata", {})
    prev = _status_only(body)
    gen = meta.get("generation")
    reason = Reason.DEPENDENCY_CYCLE if "dependency cycle" in message else Reason.INVALID_SCHEMA
    conds, changed = cond.set_condition(
        prev.conditions,
        type_=ConditionType.INVALID_SPEC,
        status=True,
        reason=reason,
        message=message,
        now=now,
        generation=gen,
    )
    new = prev.model_copy(update={"phase": TaskPhase.INVALID, "conditions": conds, "observed_generation": gen})
    status = _wire(new) if _wire(new) != _wire(prev) else None
    events = (
        (EventSpec("Warning", "InvalidSpec", message),)
        if status is not None and (changed or prev.phase != TaskPhase.INVALID)
        else ()
    )
    return TaskOutcome(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        status=status,
        events=events,
    )


def _internal_error(body: Mapping[str, Any], err: Exception, now: datetime) -> TaskOutcome:
    """The task whose processing raised: an InternalError condition and one Event; the cycle goes on."""
    meta = body.get("metadata", {})
    prev = _status_only(body)
    message = (
        f"the operator could not process this AITask ({type(err).__name__}: {str(err)[:400]}); "
        "it is tried again when the AITask changes"
    )
    conds, changed = cond.set_condition(
        prev.conditions,
        type_=ConditionType.INTERNAL_ERROR,
        status=True,
        reason=Reason.PROCESSING_FAILED,
        message=message,
        now=now,
        generation=meta.get("generation"),
    )
    new = prev.model_copy(update={"conditions": conds})
    status = _wire(new) if _wire(new) != _wire(prev) else None
    return TaskOutcome(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        status=status,
        events=(EventSpec("Warning", Reason.PROCESSING_FAILED, message),) if status is not None and changed else (),
    )


def _task_key(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata", {})
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"


def _wire(status: AITaskStatus | ExecutorClassStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def _parse_classes(bodies: Sequence[Mapping[str, Any]], warnings: list[str]) -> dict[str, ExecutorClass]:
    out: dict[str, ExecutorClass] = {}
    for body in bodies:
        try:
            ec = ExecutorClass.model_validate(body)
        except ValidationError as err:
            warnings.append(f"ExecutorClass {body.get('metadata', {}).get('name')}: {validation_message(err)}")
            continue
        out[ec.metadata.name] = ec
    return out


def _pod_requests(pod: PodView) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, joined in pod.requests.items():
        try:
            out[name] = sum(parse_quantity(q) for q in joined.split("+"))
        except ValueError:
            continue
    return out


def _usage(
    view: ClusterView,
    tasks: Mapping[str, AITask],
    progresses: Mapping[str, TaskProgress],
    infos: Mapping[str, ClassInfo],
) -> dict[str, dict[str, float]]:
    """Requests held on each node: bound pods, plus our admitted pods not bound yet (at their planned node)."""
    used: dict[str, dict[str, float]] = {}

    def add(node: str, requests: Mapping[str, float]) -> None:
        slot = used.setdefault(node, {})
        for name, amount in requests.items():
            slot[name] = slot.get(name, 0.0) + amount

    bound_by_job: dict[str, int] = {}
    for pod in view.pods:
        if pod.terminal or not pod.node:
            continue
        add(pod.node, _pod_requests(pod))
        if pod.job:
            key = f"{pod.namespace}/{pod.job}"
            bound_by_job[key] = bound_by_job.get(key, 0) + 1
    for key, prog in progresses.items():
        task = tasks[key]
        for sub_status in prog.status.subtasks:
            plan = sub_status.plan
            if sub_status.phase != SubtaskPhase.RUNNING or plan is None or not sub_status.job:
                continue
            bound = bound_by_job.get(f"{task.metadata.namespace}/{sub_status.job}", 0)
            per_pod = {"cpu": parse_quantity(plan.cpu or "0"), "memory": parse_quantity(plan.memory or "0")}
            info = infos.get(plan.class_name)
            if plan.accelerators and info is not None and info.accelerator_resource:
                per_pod[info.accelerator_resource] = float(plan.accelerators)
            for node in plan.nodes[bound:]:
                add(node, per_pod)
    return used


def _option_alt(opt: Option) -> Alternative:
    return Alternative(
        class_name=opt.class_name,
        feasible=opt.feasible,
        reason=opt.reason,
        estimated_seconds=_r(opt.runtime_seconds),
        wait_seconds=_r(opt.wait_seconds),
        estimated_cost=_r(opt.cost),
        score=_r(opt.score),
    )


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _plan(
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
        alternatives=[_option_alt(a) for a in alts],
        message=message,
    )


def _expected_runtime(
    task: AITask, st: Any, infos: Mapping[str, ClassInfo], estimates: estimator.Estimator, params: CycleParams
) -> float:
    """T of a running attempt on its class with today's knowledge; the plan's figure if it cannot be redone."""
    plan = st.plan
    if plan.class_name not in infos or st.name not in {s.name for s in task.spec.subtasks}:
        return float(plan.estimated_seconds)
    demand = snapshot.demand_for(
        task,
        task.spec.subtask(st.name),
        max(1, st.attempts),
        now=0.0,
        default_time_weight=params.default_time_weight,
        default_cost_weight=params.default_cost_weight,
    )
    return estimates.estimate(demand, plan.class_name).seconds


def _recorded_finished_jobs(jobs: Sequence[JobView], subtasks: Sequence[Any]) -> tuple[str, ...]:
    """Finished Jobs without a TTL whose attempt the status records as ended."""
    ended = {(s.name, a.number) for s in subtasks for a in s.history if a.result != "Running"}
    return tuple(
        sorted(j.name for j in jobs if j.finished and j.ttl_seconds is None and (j.subtask, j.attempt) in ended)
    )


def _with_usage(st: Any, view: ClusterView, task: AITask) -> Any:
    usage = view.gpu_usage.get((task.metadata.namespace or "", task.metadata.name, st.name))
    if usage is None or st.phase != SubtaskPhase.RUNNING:
        return st
    return st.model_copy(update={"metrics": SubtaskMetrics.model_validate(dict(usage))})


def _task_metrics(subtasks: Sequence[Any]) -> TaskMetrics | None:
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
    conds: Sequence[Any], view: ClusterView, now: datetime, gen: int | None, *, active: bool
) -> list[Any]:
    """MetricsUnavailable says, on tasks with running work, that GPU feedback is degraded; nothing waits on it."""
    if view.telemetry == "unavailable" and active:
        out, _ = cond.set_condition(
            conds,
            type_=ConditionType.METRICS_UNAVAILABLE,
            status=True,
            reason=Reason.PROMETHEUS_UNREACHABLE,
            message=f"GPU utilisation is not being sampled: {view.telemetry_message}",
            now=now,
            generation=gen,
        )
        return out
    if view.telemetry == "ok" and cond.get_condition(conds, ConditionType.METRICS_UNAVAILABLE) is not None:
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


def run_cycle(view: ClusterView, params: CycleParams, now: datetime) -> CycleOutcome:
    """Decide everything one cycle does; see the module docstring for the steps."""
    warnings: list[str] = []
    epoch = now.timestamp()
    # 1. classes and tasks
    ecs = _parse_classes(view.classes, warnings)
    infos: dict[str, ClassInfo] = {name: snapshot.class_info(ec) for name, ec in ecs.items()}
    jobs_by_task: dict[str, list[JobView]] = {}
    for job in view.jobs:
        jobs_by_task.setdefault(f"{job.namespace}/{job.task}", []).append(job)
    pods_by_ns_job: dict[str, list[PodView]] = {}
    for pod in view.pods:
        if pod.job:
            pods_by_ns_job.setdefault(f"{pod.namespace}/{pod.job}", []).append(pod)

    outcomes: list[TaskOutcome] = []
    tasks: dict[str, AITask] = {}
    progresses: dict[str, TaskProgress] = {}
    phases: dict[tuple[str, str], int] = {}
    for body in view.tasks:
        meta = body.get("metadata", {})
        if meta.get("deletionTimestamp"):
            continue
        task, problem = parse_task(body)
        if task is None:
            outcomes.append(_invalid(body, problem, now))
            ns = meta.get("namespace", "")
            phases[(ns, TaskPhase.INVALID)] = phases.get((ns, TaskPhase.INVALID), 0) + 1
            continue
        key = task.key
        tjobs = jobs_by_task.get(key, [])
        tpods = [p for j in tjobs for p in pods_by_ns_job.get(f"{j.namespace}/{j.name}", [])]
        if task.status.phase in (TaskPhase.SUCCEEDED, TaskPhase.FAILED) and not any(j.active for j in tjobs):
            phases[(task.metadata.namespace or "", task.status.phase)] = (
                phases.get((task.metadata.namespace or "", task.status.phase), 0) + 1
            )
            expire = _recorded_finished_jobs(tjobs, task.status.subtasks)
            if expire:  # a crash after the final status write left these without their TTL
                outcomes.append(
                    TaskOutcome(
                        namespace=task.metadata.namespace or "",
                        name=task.metadata.name,
                        uid=task.metadata.uid or "",
                        status=None,
                        expire_jobs=expire,
                    )
                )
            continue
        tasks[key] = task
        progresses[key] = progress.derive(
            task,
            tjobs,
            tpods,
            infos,
            now,
            backoff_max_seconds=params.backoff_max_seconds,
            backoff_seconds=params.backoff_seconds,
        )

    # 2. learning from finished attempts
    learned = snapshot.learned_map(list(ecs.values()))
    learned_changed: set[str] = set()
    observed_stats: list[tuple[str, str, float, float | None, float | None]] = []
    for key, prog in progresses.items():
        for obs in prog.observations:
            if obs.class_name not in ecs:
                continue
            k = (obs.profile, obs.class_name)
            if obs.oom:
                learned[k] = estimator.observe_oom(learned.get(k))
            else:
                learned[k] = estimator.observe(
                    learned.get(k),
                    actual_seconds=obs.seconds,
                    work_units=obs.work_units,
                    estimated_seconds=obs.estimated_seconds,
                    learning_rate=params.learning_rate,
                    gpu_util=obs.gpu_util,
                )
                observed_stats.append(
                    (
                        tasks[key].metadata.namespace or "",
                        obs.class_name,
                        obs.seconds,
                        obs.estimated_seconds,
                        obs.gpu_util,
                    )
                )
            learned_changed.add(obs.class_name)

    # 3. snapshot (running work is re-estimated with what was learned since its admission)
    estimates = estimator.Estimator(infos, learned)
    used = _usage(view, tasks, progresses, infos)
    nodes = []
    for body in view.nodes:
        info = snapshot.node_info(body, infos, used.get(body.get("metadata", {}).get("name", ""), {}))
        if info is not None:
            nodes.append(info)
    demands: list[Demand] = []
    ready_index: dict[SubtaskKey, tuple[str, progress.Ready]] = {}
    running: list[Running] = []
    for key, prog in progresses.items():
        task = tasks[key]
        created = (task.metadata.creation_timestamp or now).timestamp()
        for r in prog.ready:
            demand = snapshot.demand_for(
                task,
                r.subtask,
                r.attempt,
                now=epoch,
                ready_since=r.ready_since.timestamp(),
                arrival=created,
                default_time_weight=params.default_time_weight,
                default_cost_weight=params.default_cost_weight,
                min_accel_memory_gib=r.min_accelerator_memory_gib,
                excluded=r.excluded_classes,
            )
            demands.append(demand)
            ready_index[demand.key] = (key, r)
        for st in prog.status.subtasks:
            if st.phase == SubtaskPhase.RUNNING and st.plan is not None:
                current = st.history[-1] if st.history else None
                started = current.start_time if current is not None and current.start_time else st.start_time
                elapsed = (now - started).total_seconds() if started else 0.0
                pods = max(1, len(st.plan.nodes))
                running.append(
                    Running(
                        key=SubtaskKey(task.metadata.namespace or "default", task.metadata.name, st.name),
                        class_name=st.plan.class_name,
                        remaining_seconds=max(0.0, _expected_runtime(task, st, infos, estimates, params) - elapsed),
                        accelerators=st.plan.accelerators * pods,
                        cpu=parse_quantity(st.plan.cpu or "0") * pods,
                    )
                )
    demand_by_key = {d.key: d for d in demands}
    snap = Snapshot(
        now=epoch,
        classes=infos,
        nodes=tuple(nodes),
        demands=tuple(demands),
        running=tuple(running),
        learned=dict(learned),
    )
    # 4. schedule
    result = scheduler.schedule(
        snap,
        SchedulerParams(
            policy=params.policy,
            ageing_seconds=params.ageing_seconds,
            low_gpu_util_percent=params.low_gpu_util_percent,
        ),
    )
    admitted_by_task: dict[str, list[Admission]] = {}
    deferred_by_task: dict[str, list[Deferral]] = {}
    waits: list[tuple[str, float]] = []
    for adm in result.admitted:
        admitted_by_task.setdefault(ready_index[adm.key][0], []).append(adm)
        waits.append((adm.class_name, max(0.0, epoch - ready_index[adm.key][1].ready_since.timestamp())))
    for dfr in result.deferred:
        deferred_by_task.setdefault(ready_index[dfr.key][0], []).append(dfr)

    # 5./6. Jobs and statuses
    pending_by_class: dict[str, int] = {}
    for key, prog in progresses.items():
        task = tasks[key]
        status = prog.status
        creates: list[dict[str, Any]] = []
        events = list(prog.events)
        subs = {s.name: s for s in status.subtasks}
        retries: list[tuple[str, str]] = []
        for adm in admitted_by_task.get(key, []):
            ready = ready_index[adm.key][1]
            sub = ready.subtask
            ec = ecs[adm.class_name]
            name = job_name(task.metadata.name, sub.name, adm.attempt)
            creates.append(
                build_job(
                    task,
                    sub,
                    attempt=adm.attempt,
                    class_name=adm.class_name,
                    executor_class=ec.spec,
                    nodes=adm.nodes,
                    accelerators=adm.accelerators,
                    cpu=adm.cpu,
                    memory=adm.memory,
                    estimated_seconds=adm.chosen.runtime_seconds or 0.0,
                )
            )
            plan = _plan(
                adm.chosen,
                adm.alternatives,
                ec,
                accelerators=adm.accelerators,
                cpu=adm.cpu,
                memory=adm.memory,
                nodes=adm.nodes,
                message=adm.message,
            )
            prev = subs[sub.name]
            if prev.history:
                retries.append((adm.class_name, prev.history[-1].result))
            attempt = Attempt(
                number=adm.attempt, job=name, class_name=adm.class_name, start_time=now, spec_hash=subtask_hash(sub)
            )
            subs[sub.name] = prev.model_copy(
                update={
                    "phase": SubtaskPhase.RUNNING,
                    "attempts": adm.attempt,
                    "job": name,
                    "plan": plan,
                    "nodes": list(dict.fromkeys(adm.nodes)),
                    "retry_after": None,
                    "ready_since": None,
                    "start_time": prev.start_time or now,
                    "message": adm.message,
                    "history": [*prev.history, attempt],
                }
            )
            events.append(EventSpec("Normal", Reason.ATTEMPT_STARTED, f"{sub.name}: {adm.message}"))
        for dfr in deferred_by_task.get(key, []):
            sub_name = dfr.key.subtask
            prev = subs[sub_name]
            best_ec = ecs.get(dfr.best.class_name) if dfr.best else None
            demand = demand_by_key[dfr.key]
            preview: Plan | None = (
                _plan(
                    dfr.best,
                    dfr.alternatives,
                    best_ec,
                    accelerators=demand.accelerators,
                    cpu=demand.cpu,
                    memory=demand.memory,
                    nodes=(),
                    message=dfr.message,
                )
                if dfr.best is not None
                else None
            )
            if dfr.best is None and dfr.alternatives:
                preview = Plan(
                    class_name="", alternatives=[_option_alt(a) for a in dfr.alternatives], message=dfr.message
                )
            subs[sub_name] = prev.model_copy(update={"plan": preview, "message": dfr.message})
            cls_name = dfr.best.class_name if dfr.best else "none"
            pending_by_class[cls_name] = pending_by_class.get(cls_name, 0) + 1
        ordered = [_with_usage(st, view, task) for st in (subs[s.name] for s in task.spec.subtasks)]
        planned_all = all(
            s.plan is not None and s.plan.class_name
            for s in ordered
            if s.phase in (SubtaskPhase.QUEUED, SubtaskPhase.RUNNING, SubtaskPhase.BACKOFF)
        )
        deferrals = deferred_by_task.get(key, [])
        gen = task.metadata.generation
        conds = status.conditions
        if status.phase not in (TaskPhase.SUCCEEDED, TaskPhase.FAILED):
            if deferrals:
                worst = next((d for d in deferrals if d.reason == "NoFeasibleClass"), deferrals[0])
                reason = Reason.NO_FEASIBLE_CLASS if worst.reason == "NoFeasibleClass" else Reason.WAITING_FOR_CAPACITY
                conds, _ = cond.set_condition(
                    conds,
                    type_=ConditionType.PLANNED,
                    status=False,
                    reason=reason,
                    message=f"{worst.key.subtask}: {worst.message}",
                    now=now,
                    generation=gen,
                )
            elif planned_all and any(s.plan for s in ordered):
                conds, _ = cond.set_condition(
                    conds,
                    type_=ConditionType.PLANNED,
                    status=True,
                    reason=Reason.ALL_PLANNED,
                    message="every ready sub-task has a placement",
                    now=now,
                    generation=gen,
                )
        running_now = [s for s in ordered if s.phase == SubtaskPhase.RUNNING]
        phase = status.phase
        if phase == TaskPhase.PENDING and running_now:
            phase = TaskPhase.RUNNING
        if running_now and phase == TaskPhase.RUNNING:
            conds, _ = cond.set_condition(
                conds,
                type_=ConditionType.RUNNING,
                status=True,
                reason=Reason.IN_PROGRESS,
                message=", ".join(f"{s.name} ({s.job})" for s in running_now),
                now=now,
                generation=gen,
            )
        conds = _telemetry_condition(conds, view, now, gen, active=bool(running_now))
        est = [s.plan.estimated_cost for s in ordered if s.plan]
        new = status.model_copy(
            update={
                "subtasks": ordered,
                "conditions": conds,
                "phase": phase,
                "estimated_cost": round(sum(est), 6) if est else status.estimated_cost,
                "start_time": status.start_time or (now if running_now else None),
                "metrics": _task_metrics(ordered) or status.metrics,
            }
        )
        ns = task.metadata.namespace or ""
        phases[(ns, new.phase)] = phases.get((ns, new.phase), 0) + 1
        wire_new = _wire(new)
        changed = wire_new != _wire(task.status)
        outcomes.append(
            TaskOutcome(
                namespace=ns,
                name=task.metadata.name,
                uid=task.metadata.uid or "",
                status=wire_new if changed else None,
                create_jobs=tuple(creates),
                delete_jobs=prog.delete_jobs,
                events=tuple(events) if changed or creates else (),
                finished=tuple((a.class_name, a.result, est, a.actual_cost) for a, est in prog.finished)
                if changed
                else (),
                retries=tuple(retries),
                expire_jobs=_recorded_finished_jobs(jobs_by_task.get(key, []), ordered),
            )
        )

    # class statuses: capacity/allocated from member nodes, learned runtimes
    class_status: dict[str, dict[str, Any]] = {}
    for name, ec in ecs.items():
        members = [n for n in nodes if name in n.classes]
        res = ec.spec.accelerator.resource_name if ec.spec.accelerator else None

        def totals(pick: str, members: list[Any] = members, res: str | None = res) -> ResourceTotals:
            src = [
                n.allocatable
                if pick == "cap"
                else {k: n.allocatable.get(k, 0.0) - n.free.get(k, 0.0) for k in n.allocatable}
                for n in members
            ]
            return ResourceTotals(
                nodes=len(members),
                accelerators=round(sum(s.get(res, 0.0) for s in src), 3) if res else 0,
                cpu=round(sum(s.get("cpu", 0.0) for s in src), 3),
                memory_gi_b=round(sum(s.get("memory", 0.0) for s in src) / GIB, 3),
            )

        learned_api: dict[str, Learned] = dict(ec.status.learned)
        if name in learned_changed:
            for (profile, cls), value in learned.items():
                if cls == name:
                    learned_api[profile] = estimator.to_api(value, updated_at=now)
        new_cs = ec.status.model_copy(
            update={
                "capacity": totals("cap"),
                "allocated": totals("alloc"),
                "learned": learned_api,
                "observed_generation": ec.metadata.generation,
            }
        )
        if _wire(new_cs) != _wire(ec.status):
            class_status[name] = _wire(new_cs)

    stats = CycleStats(
        tasks_by_phase=phases,
        admitted=len(result.admitted),
        pending_by_class=pending_by_class,
        waits=tuple(waits),
        observations=tuple(observed_stats),
    )
    return CycleOutcome(tasks=tuple(outcomes), class_status=class_status, stats=stats, warnings=tuple(warnings))
