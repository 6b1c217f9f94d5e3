"""One scheduling cycle over the cluster, as a pure function made of named phases.

    view (indexes) -> parse -> progress -> learning -> snapshot -> schedule
    -> decisions (statuses and Jobs, ``control.decisions``) -> class status

The cost of a cycle follows the work that is active, not every AITask ever created:

* finished tasks reach the cycle as small ``FinishedTask`` records (the handlers keep no
  body for them) and cost a counter and a look at their Jobs (TTL, leftovers);
* a task is parsed again only when its resourceVersion (or the status overlaid on it)
  changed, and derived again only when that, its Jobs or its pods changed, or a time it
  waits for has come (``core.progress.next_change``): both results live in ``CycleCache``;
* one task whose processing raises is isolated (an ``InternalError`` condition and one
  Event); every other task is scheduled as usual.

Nothing here does I/O or reads a clock, so a cycle can be replayed from recorded inputs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from aitask.api.v1alpha1 import (
    FINAL_TASK_PHASES,
    AITask,
    AITaskStatus,
    AttemptResult,
    ExecutorClass,
    ExecutorClassStatus,
    Learned,
    ResourceTotals,
    SubtaskPhase,
    TaskPhase,
)
from aitask.build import workspace
from aitask.control import preemption
from aitask.control.decisions import Retry, TaskDecision, Telemetry, decide_task, wire
from aitask.control.limits import InPlay, LimitsResult, limits_phase
from aitask.core import conditions as cond
from aitask.core import estimator, progress, scheduler, snapshot, variants
from aitask.core.budgets import BudgetUse, Spend
from aitask.core.dag import find_cycle
from aitask.core.observed import JobView, PodView, QuotaView
from aitask.core.progress import EventSpec, Ready, TaskProgress
from aitask.core.quantity import GIB, parse_quantity
from aitask.core.reasons import ConditionType, Reason
from aitask.core.types import (
    Admission,
    ClassInfo,
    CycleResult,
    Deferral,
    Demand,
    NodeInfo,
    Policy,
    Preemption,
    Running,
    SchedulerParams,
    Snapshot,
    SubtaskKey,
)

FINISHED_PHASES = FINAL_TASK_PHASES
# A class status whose allocation alone changed is written at most this often (the periodic cycle
# writes the last change of a burst).
CLASS_ALLOCATION_REFRESH_SECONDS = 10.0


@dataclass(frozen=True)
class CycleParams:
    default_time_weight: float = 1.0
    default_cost_weight: float = 0.0
    ageing_seconds: float = 600.0
    learning_rate: float = 0.3
    job_ttl_seconds: int = 3600
    backoff_max_seconds: float = 300.0
    backoff_seconds: float = 10.0
    stuck_after_seconds: float = progress.STUCK_AFTER_SECONDS
    preemption: bool = True
    preempt_min_run_seconds: float = 600.0
    preempt_factor: float = 2.0
    migrate_factor: float = 1.5
    low_gpu_util_percent: float = 30.0
    policy: Policy = Policy.COST
    # Kueue mode: the LocalQueue of a task without spec.queueName; None runs without Kueue.
    kueue_default_queue: str | None = None


@dataclass(frozen=True)
class FinishedTask:
    """What the cycle needs of an AITask that has nothing left to do."""

    namespace: str
    name: str
    uid: str
    phase: str  # Succeeded | Failed | Invalid | Cancelled
    finalizers: tuple[str, ...] = ()
    spends: tuple[Spend, ...] = ()  # its attempts, for namespace budgets (core.budgets)


@dataclass(frozen=True)
class ClusterView:
    """What the watches show, as plain data."""

    tasks: Sequence[Mapping[str, Any]]  # AITask bodies (finished ones may also come as ``finished``)
    jobs: Sequence[JobView]  # our child Jobs
    pods: Sequence[PodView]  # every pod bound to a node, plus our unbound ones
    nodes: Sequence[Mapping[str, Any]]  # Node bodies
    classes: Sequence[Mapping[str, Any]]  # ExecutorClass bodies
    finished: Sequence[FinishedTask] = ()
    # GPU use sampled from Prometheus: (namespace, task, subtask) -> status.subtasks[].metrics
    gpu_usage: Mapping[tuple[str, str, str], Mapping[str, Any]] = field(default_factory=dict)
    telemetry: str = "disabled"  # disabled | ok | unavailable
    telemetry_message: str = ""
    # Tasks whose child Job the API server refused (422/400): key -> (generation, message).
    rejected: Mapping[str, tuple[int | None, str]] = field(default_factory=dict)
    # Jobs the operator created that the watch has not shown yet: namespace -> names.
    unseen_jobs: Mapping[str, frozenset[str]] = field(default_factory=dict)
    quotas: Sequence[QuotaView] = ()  # ResourceQuotas of the watched namespaces
    budgets: Sequence[Mapping[str, Any]] = ()  # AITaskBudget bodies


@dataclass(frozen=True)
class EndedAttempt:
    """An attempt that ended in this cycle's status (each appears once): what the metrics count."""

    class_name: str
    result: AttemptResult
    estimated_cost: float | None
    actual_cost: float | None


@dataclass(frozen=True)
class ObservedRun:
    """A finished attempt the estimator learned from, for the runtime and utilisation metrics."""

    namespace: str
    class_name: str
    actual_seconds: float
    estimated_seconds: float | None
    gpu_util: float | None  # average GPU utilisation, percent


@dataclass(frozen=True)
class Admitted:
    class_name: str
    waited_seconds: float  # from ready to admission


@dataclass(frozen=True)
class Isolated:
    task: str  # namespace/name
    error: str  # the exception's class


@dataclass(frozen=True)
class TaskOutcome:
    namespace: str
    name: str
    uid: str
    status: dict[str, Any] | None  # the whole new status when it changed, else None
    create_jobs: tuple[dict[str, Any], ...] = ()
    create_claims: tuple[dict[str, Any], ...] = ()  # the workspace claim, created (409: exists) before the Jobs
    delete_jobs: tuple[str, ...] = ()
    events: tuple[EventSpec, ...] = ()
    # For the metrics, recorded once the status write that carries them succeeded:
    finished: tuple[EndedAttempt, ...] = ()
    retries: tuple[Retry, ...] = ()
    expire_jobs: tuple[str, ...] = ()  # finished Jobs whose result the status records: give them their TTL
    base_version: str = ""  # resourceVersion of the AITask this outcome was decided from
    generation: int | None = None  # metadata.generation of that AITask

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def writes(self) -> bool:
        return bool(self.status is not None or self.create_jobs or self.delete_jobs or self.expire_jobs)


@dataclass(frozen=True)
class CycleStats:
    tasks_by_phase: Mapping[tuple[str, str], int]  # (namespace, phase) -> count
    admitted: int
    pending_by_class: Mapping[str, int]
    waits: tuple[Admitted, ...]  # this cycle's admissions
    observations: tuple[ObservedRun, ...]
    errors: tuple[Isolated, ...] = ()  # tasks isolated this cycle
    parsed: int = 0  # tasks parsed this cycle (the rest came from the cache)
    derived: int = 0  # tasks whose progress was derived this cycle
    next_wakeup: datetime | None = None  # earliest time a waiting task needs a cycle without any event
    # Nothing in play and nothing to write: until a watch event or ``next_wakeup``, a cycle decides the same.
    settled: bool = False


@dataclass(frozen=True)
class CycleOutcome:
    tasks: tuple[TaskOutcome, ...]
    class_status: Mapping[str, dict[str, Any]]  # class -> whole new status, only changed ones
    stats: CycleStats
    warnings: tuple[str, ...] = ()
    budget_status: Mapping[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # material changes only
    budgets: Mapping[tuple[str, str], BudgetUse] = field(default_factory=dict)  # every budget's figures (metrics)


@dataclass
class CycleCache:
    """Parsed tasks and derived progress kept between cycles (owned by the caller, plain data)."""

    # key -> (uid, generation, deleting), the status object parsed, the result, its serial number
    parsed: dict[str, tuple[tuple[Any, ...], Any, AITask | None, str, int]] = field(default_factory=dict)
    # key -> (parse serial, Jobs, pods), when it must be derived again at the latest, the result
    derived: dict[str, tuple[tuple[Any, ...], datetime | None, TaskProgress]] = field(default_factory=dict)
    classes: Mapping[str, ClassInfo] | None = None
    serial: int = 0
    spends: dict[str, tuple[TaskProgress, tuple[Spend, ...]]] = field(default_factory=dict)  # namespace budgets
    # key -> (progress, other inputs, decision, its status as written, the status it was decided from,
    #         the raw status last compared with, whether they differed,
    #         and (whether it differed, the Jobs, the outcome built from them))
    decided: dict[
        str,
        tuple[
            TaskProgress, tuple[Any, ...], Any, dict[str, Any], dict[str, Any], Any, bool, tuple[bool, Any, TaskOutcome]
        ],
    ] = field(default_factory=dict)
    class_bodies: dict[str, tuple[Mapping[str, Any], ExecutorClass | None, str]] = field(default_factory=dict)
    # key -> (progress, learned token, running T by sub-task, when estimated)
    expected: dict[str, tuple[TaskProgress, Any, dict[str, float], float]] = field(default_factory=dict)
    running: _RunningCache = field(default_factory=dict)  # running entries kept per task (_running_work)


# --------------------------------------------------------------------------- parsing


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
    dag_cycle = find_cycle({s.name: s.depends_on for s in task.spec.subtasks})
    if dag_cycle:
        return None, "spec.subtasks[].dependsOn: dependency cycle " + " -> ".join([*dag_cycle, dag_cycle[0]])
    return variants.expand_task(task), ""


def _status_only(body: Mapping[str, Any]) -> AITaskStatus:
    try:
        return AITaskStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return AITaskStatus()


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = body.get("metadata") or {}
    return meta


def task_key(body: Mapping[str, Any]) -> str:
    meta = _meta(body)
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"


def _outcome(body: Mapping[str, Any], **fields: Any) -> TaskOutcome:
    meta = _meta(body)
    return TaskOutcome(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        base_version=meta.get("resourceVersion", "") or "",
        **fields,
    )


def _invalid(body: Mapping[str, Any], message: str, now: datetime, reason: Reason | None = None) -> TaskOutcome:
    prev = _status_only(body)
    gen = _meta(body).get("generation")
    if reason is None:
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
    status = wire(new) if wire(new) != wire(prev) else None
    events = (
        (EventSpec("Warning", "InvalidSpec", message),)
        if status is not None and (changed or prev.phase != TaskPhase.INVALID)
        else ()
    )
    return _outcome(body, status=status, events=events)


def internal_error(body: Mapping[str, Any], err: Exception, now: datetime) -> TaskOutcome:
    """The task whose processing raised: an InternalError condition and one Event; the cycle goes on."""
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
        generation=_meta(body).get("generation"),
    )
    new = prev.model_copy(update={"conditions": conds})
    status = wire(new) if wire(new) != wire(prev) else None
    events = (EventSpec("Warning", Reason.PROCESSING_FAILED, message),) if status is not None and changed else ()
    return _outcome(body, status=status, events=events)


def _parse_classes(
    bodies: Sequence[Mapping[str, Any]], warnings: list[str], cache: CycleCache | None = None
) -> dict[str, ExecutorClass]:
    """The ExecutorClasses, each parsed again only when the informer holds a new body for it."""
    out: dict[str, ExecutorClass] = {}
    kept: dict[str, tuple[Mapping[str, Any], ExecutorClass | None, str]] = {}
    previous = cache.class_bodies if cache is not None else {}
    for body in bodies:
        name = str(_meta(body).get("name"))
        hit = previous.get(name)
        if hit is not None and hit[0] is body:
            ec, problem = hit[1], hit[2]
        else:
            try:
                ec, problem = ExecutorClass.model_validate(body), ""
            except ValidationError as err:
                ec, problem = None, f"ExecutorClass {name}: {validation_message(err)}"
        kept[name] = (body, ec, problem)
        if ec is None:
            warnings.append(problem)
            continue
        out[ec.metadata.name] = ec
    if cache is not None:
        cache.class_bodies = kept
    return out


@dataclass
class _Work:
    """The cycle's working set: the tasks still in play and what was decided for the others."""

    now: datetime
    bodies: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    tasks: dict[str, AITask] = field(default_factory=dict)
    jobs: dict[str, list[JobView]] = field(default_factory=dict)
    progresses: dict[str, TaskProgress] = field(default_factory=dict)
    pods: dict[str, list[PodView]] = field(default_factory=dict)  # the task's Jobs' pods (progress reports)
    outcomes: list[TaskOutcome] = field(default_factory=list)
    phases: dict[tuple[str, str], int] = field(default_factory=dict)
    errors: list[Isolated] = field(default_factory=list)
    wakeups: list[datetime] = field(default_factory=list)
    parsed: int = 0
    derived: int = 0

    def count(self, namespace: str, phase: str) -> None:
        self.phases[(namespace, phase)] = self.phases.get((namespace, phase), 0) + 1

    def fail(self, key: str, err: Exception) -> None:
        """Take a task out of the cycle: it gets its InternalError outcome, the others go on."""
        body = self.bodies.pop(key, None)
        self.tasks.pop(key, None)
        self.progresses.pop(key, None)
        self.errors.append(Isolated(task=key, error=type(err).__name__))
        if body is not None:
            self.outcomes.append(internal_error(body, err, self.now))


def isolated(work: _Work, key: str, fn: Callable[[], None]) -> None:
    """Run one task's step; an exception takes that task (only) out of the cycle."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - any bug or bad input of one task must not stop the others
        work.fail(key, err)


def _finished_outcome(namespace: str, name: str, uid: str, phase: str, jobs: Sequence[JobView]) -> TaskOutcome | None:
    """A finished task's leftovers: finished Jobs get their TTL; a Succeeded or Failed task's running Jobs
    are stopped (an Invalid one's are left alone: a bad edit must not kill the work it had started)."""
    stop = phase in FINISHED_PHASES
    delete = tuple(sorted(j.name for j in jobs if stop and j.active and not j.deleting))
    expire = tuple(sorted(j.name for j in jobs if j.finished and j.ttl_seconds is None))
    if not delete and not expire:
        return None
    return TaskOutcome(namespace=namespace, name=name, uid=uid, status=None, delete_jobs=delete, expire_jobs=expire)


def is_finished(body: Mapping[str, Any]) -> bool:
    """Nothing left to do: Succeeded, Failed, or Invalid for the spec generation it has now."""
    status = body.get("status") or {}
    phase = status.get("phase")
    if phase in FINISHED_PHASES:
        return True
    return phase == TaskPhase.INVALID and status.get("observedGeneration") == _meta(body).get("generation")


def parse_phase(view: ClusterView, work: _Work, cache: CycleCache) -> None:
    """Tasks in play (parsed, from the cache where unchanged); invalid and finished ones settled here."""
    # Tasks with a Job that may need something of a finished task (its TTL set, or it stopped): a
    # finished task without one costs a count here, nothing more.
    leftovers: set[str] = set()
    for job in view.jobs:
        key = f"{job.namespace}/{job.task}"
        work.jobs.setdefault(key, []).append(job)
        if (job.active and not job.deleting) or (job.ttl_seconds is None and job.finished):
            leftovers.add(key)
    finished = Counter((rec.namespace, rec.phase) for rec in view.finished)
    for (ns, phase), n in finished.items():
        work.phases[(ns, phase)] = work.phases.get((ns, phase), 0) + n
    for rec in view.finished:
        key = f"{rec.namespace}/{rec.name}"
        if key not in leftovers:
            continue
        done = _finished_outcome(rec.namespace, rec.name, rec.uid, rec.phase, work.jobs[key])
        if done is not None:
            work.outcomes.append(done)
    seen: dict[str, tuple[tuple[Any, ...], Any, AITask | None, str, int]] = {}
    for body in view.tasks:
        meta = _meta(body)
        if meta.get("deletionTimestamp"):
            continue
        key = task_key(body)
        ns = meta.get("namespace", "")
        rejected = view.rejected.get(key)
        if is_finished(body) and not (rejected and rejected[0] == meta.get("generation")):
            phase = (body.get("status") or {}).get("phase", "")
            work.count(ns, phase)
            done = _finished_outcome(ns, meta.get("name", ""), meta.get("uid", ""), phase, work.jobs.get(key, ()))
            if done is not None:
                work.outcomes.append(done)
            continue
        work.bodies[key] = body
        # Not the resourceVersion: when the watch brings back our own status write, the AITask is
        # the one already parsed (same spec generation, equal status) and its progress still holds.
        sig = (meta.get("uid"), meta.get("generation"), bool(meta.get("deletionTimestamp")))
        status_obj = body.get("status")
        hit = cache.parsed.get(key)
        if hit is not None and hit[0] == sig and (hit[1] is status_obj or hit[1] == status_obj):
            task, problem, serial = hit[2], hit[3], hit[4]
        else:
            try:
                task, problem = parse_task(body)
            except Exception as err:  # noqa: BLE001 - isolated like every other step of one task
                work.fail(key, err)
                continue
            work.parsed += 1
            cache.serial += 1
            serial = cache.serial
        seen[key] = (sig, status_obj, task, problem, serial)
        if rejected is not None and rejected[0] == meta.get("generation"):
            task, problem = None, rejected[1]
        if task is None:
            reason = Reason.JOB_REJECTED if rejected is not None and problem == rejected[1] else None
            work.outcomes.append(_invalid(body, problem, work.now, reason))
            work.bodies.pop(key, None)
            work.count(ns, TaskPhase.INVALID)
            continue
        work.tasks[key] = task
    cache.parsed = seen


# --------------------------------------------------------------------------- progress


def progress_phase(
    view: ClusterView, work: _Work, infos: Mapping[str, ClassInfo], params: CycleParams, cache: CycleCache
) -> None:
    """Each task's state machine, derived again only when one of its inputs changed."""
    if cache.classes != infos:
        cache.derived = {}
        cache.classes = dict(infos)
    pods_by_job: dict[str, list[PodView]] = {}
    for pod in view.pods:
        if pod.job:
            pods_by_job.setdefault(f"{pod.namespace}/{pod.job}", []).append(pod)
    kept: dict[str, tuple[tuple[Any, ...], datetime | None, TaskProgress]] = {}
    for key, task in list(work.tasks.items()):
        tjobs = work.jobs.get(key, [])
        tpods = [p for j in tjobs for p in pods_by_job.get(f"{j.namespace}/{j.name}", [])]
        work.pods[key] = tpods

        def step(
            key: str = key, task: AITask = task, tjobs: list[JobView] = tjobs, tpods: list[PodView] = tpods
        ) -> None:
            # Only this task's own unseen Jobs: in a burst the namespace's set changes every cycle, and a
            # task whose inputs did not change must not be derived again for another task's new Job.
            in_ns = view.unseen_jobs.get(task.metadata.namespace or "", frozenset())
            unseen = frozenset(s.job for s in task.status.subtasks if s.job and s.job in in_ns) if in_ns else in_ns
            sig = (cache.parsed[key][4], tuple(tjobs), tuple(tpods), unseen)
            hit = cache.derived.get(key)
            if hit is not None and hit[0] == sig and (hit[1] is None or work.now < hit[1]):
                prog = hit[2]
            else:
                prog = progress.derive(
                    task,
                    tjobs,
                    tpods,
                    infos,
                    work.now,
                    backoff_max_seconds=params.backoff_max_seconds,
                    backoff_seconds=params.backoff_seconds,
                    unseen=unseen,
                    stuck_after_seconds=params.stuck_after_seconds,
                )
                work.derived += 1
                hit = None
            # next_change reads the same inputs as derive: a cached result keeps its wake-up time.
            wake = (
                hit[1]
                if hit is not None
                else progress.next_change(
                    task, prog.status, tjobs, tpods, stuck_after_seconds=params.stuck_after_seconds
                )
            )
            kept[key] = (sig, wake, prog)
            if wake is not None:
                work.wakeups.append(wake)
            work.progresses[key] = prog

        isolated(work, key, step)
    cache.derived = kept


# --------------------------------------------------------------------------- learning


@dataclass(frozen=True)
class _Learning:
    learned: dict[tuple[str, str], Any]
    changed: frozenset[str]
    observed: tuple[ObservedRun, ...]


def learning_phase(work: _Work, ecs: Mapping[str, ExecutorClass], params: CycleParams) -> _Learning:
    """Fold this cycle's finished attempts into the learned runtimes per (profile, class)."""
    learned = snapshot.learned_map(list(ecs.values()))
    changed: set[str] = set()
    observed: list[ObservedRun] = []
    for key, prog in work.progresses.items():
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
                ns = work.tasks[key].metadata.namespace or ""
                observed.append(ObservedRun(ns, obs.class_name, obs.seconds, obs.estimated_seconds, obs.gpu_util))
            changed.add(obs.class_name)
    return _Learning(learned=learned, changed=frozenset(changed), observed=tuple(observed))


# --------------------------------------------------------------------------- snapshot


def _pod_requests(pod: PodView) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, joined in pod.requests.items():
        try:
            out[name] = sum(parse_quantity(q) for q in joined.split("+"))
        except ValueError:
            continue
    return out


def reservations(
    task: AITask,
    prog: TaskProgress,
    jobs: Sequence[JobView],
    live_bound: Mapping[str, int],
    infos: Mapping[str, ClassInfo],
) -> list[tuple[str, dict[str, float]]]:
    """(node, requests) the operator holds for a task's admitted pods that are not bound yet.

    A running attempt holds its planned nodes for the pods it still has to run at once: not
    for pods already bound (the pod index counts those), nor for shards that have finished.
    """
    by_name = {j.name: j for j in jobs}
    out: list[tuple[str, dict[str, float]]] = []
    for st in prog.status.subtasks:
        plan = st.plan
        if st.phase != SubtaskPhase.RUNNING or plan is None or not st.job:
            continue
        job = by_name.get(st.job)
        at_once = len(plan.nodes)
        if job is not None:
            at_once = min(at_once, job.parallelism, max(0, job.completions - job.succeeded))
        bound = live_bound.get(f"{task.metadata.namespace}/{st.job}", 0)
        per_pod = {"cpu": parse_quantity(plan.cpu or "0"), "memory": parse_quantity(plan.memory or "0")}
        info = infos.get(plan.class_name)
        if plan.accelerators and info is not None and info.accelerator_resource:
            per_pod[info.accelerator_resource] = float(plan.accelerators)
        out.extend((node, per_pod) for node in plan.nodes[bound:at_once])
    return out


def _usage(view: ClusterView, work: _Work, infos: Mapping[str, ClassInfo]) -> dict[str, dict[str, float]]:
    """Requests held on each node: bound pods, plus our admitted pods not bound yet (at their planned node)."""
    used: dict[str, dict[str, float]] = {}

    def add(node: str, requests: Mapping[str, float]) -> None:
        slot = used.setdefault(node, {})
        for name, amount in requests.items():
            slot[name] = slot.get(name, 0.0) + amount

    live_bound: dict[str, int] = {}
    for pod in view.pods:
        if pod.terminal or not pod.node:
            continue
        add(pod.node, _pod_requests(pod))
        if pod.job:
            key = f"{pod.namespace}/{pod.job}"
            live_bound[key] = live_bound.get(key, 0) + 1
    for key, prog in list(work.progresses.items()):

        def step(key: str = key, prog: TaskProgress = prog) -> None:
            for node, requests in reservations(work.tasks[key], prog, work.jobs.get(key, []), live_bound, infos):
                add(node, requests)

        isolated(work, key, step)
    return used


def _expected_runtime(
    task: AITask, st: Any, infos: Mapping[str, ClassInfo], estimates: estimator.Estimator, params: CycleParams
) -> float:
    """T of a running attempt on its class with today's knowledge; the plan's figure if it cannot be redone."""
    plan = st.plan
    if plan.class_name not in infos or st.name not in {s.name for s in task.spec.subtasks}:
        return float(plan.estimated_seconds)
    return estimates.estimate(_running_demand(task, st, params), plan.class_name).seconds


def _parallelism(task: AITask, name: str) -> int:
    return next((s.parallelism for s in task.spec.subtasks if s.name == name), 1)


# A running attempt's T, estimated again when what was learned moved, is kept at least this long.
REESTIMATE_SECONDS = 30.0
# (the store of CycleCache.expected, this cycle's fingerprint of what was learned)
_ExpectedCache = tuple[dict[str, tuple[TaskProgress, Any, dict[str, float], float]], Any]
# CycleCache.running: key -> ((progress, T map, Kueue Jobs), each entry with the whole T and its start)
_RunningCache = dict[str, tuple[Any, tuple[tuple[Running, float | None], ...]]]


def _as_of(base: Running, started: float | None, epoch: float) -> Running:
    """A running entry kept with its whole T, less the time gone since it started (none while waiting)."""
    return Running(
        key=base.key,
        class_name=base.class_name,
        remaining_seconds=max(0.0, base.remaining_seconds - (epoch - started if started is not None else 0.0)),
        accelerators=base.accelerators,
        cpu=base.cpu,
        queued=base.queued,
    )


@dataclass
class _Queue:
    demands: dict[SubtaskKey, Demand] = field(default_factory=dict)
    owner: dict[SubtaskKey, str] = field(default_factory=dict)  # demand -> task key
    ready: dict[SubtaskKey, Ready] = field(default_factory=dict)
    running: list[Running] = field(default_factory=list)
    choices: dict[SubtaskKey, variants.VariantChoice] = field(default_factory=dict)  # sub-tasks with variants


def _task_queue(
    task: AITask,
    prog: TaskProgress,
    work: _Work,
    infos: Mapping[str, ClassInfo],
    estimates: estimator.Estimator,
    params: CycleParams,
    queued: Mapping[str, JobView] | None = None,
    expected_cache: _ExpectedCache | None = None,
    bases: _RunningCache | None = None,
) -> tuple[list[tuple[Demand, Ready]], list[Running]]:
    """The task's ready demands and its running work; ``queued``: its Jobs submitted to Kueue, by name."""
    now = work.now
    epoch = now.timestamp()
    created = (task.metadata.creation_timestamp or now).timestamp()
    demands = []
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
            avoided=r.avoided_classes,
        )
        demand = preemption.resumed_demand(task, prog.status.subtask(r.subtask.name), demand)
        for name in infos:  # every figure the scheduler will compute must be a number
            seconds = estimates.estimate(demand, name).seconds
            if not 0.0 <= seconds < float("inf"):
                raise ValueError(f"sub-task {r.subtask.name}: runtime estimate on {name} is {seconds}")
        demands.append((demand, r))
    return demands, _running_work(task, prog, work, infos, estimates, params, queued or {}, expected_cache, bases)


def _running_work(
    task: AITask,
    prog: TaskProgress,
    work: _Work,
    infos: Mapping[str, ClassInfo],
    estimates: estimator.Estimator,
    params: CycleParams,
    queued: Mapping[str, JobView],
    expected_cache: _ExpectedCache | None = None,
    bases: _RunningCache | None = None,
) -> list[Running]:
    """The task's running (and stopping) work, each entry's remaining time as of now.

    A task's entries change only with its progress, its T estimates (``_expected_runtimes``) and
    its Kueue Jobs, and only their remaining time moves with the clock: unless one
    may be preempted or is stopping (what those read moves with the pods), they are kept in
    ``bases`` with the whole T and their start, and only the subtraction is done again.
    """
    epoch = work.now.timestamp()
    expected = _expected_runtimes(task, prog, infos, estimates, params, expected_cache, epoch)
    sig = (prog, expected, tuple(queued.values()))
    hit = bases.get(task.key) if bases is not None else None
    if hit is not None and hit[0][0] is prog and hit[0][1] is expected and hit[0][2] == sig[2]:
        return [_as_of(base, started, epoch) for base, started in hit[1]]
    now = work.now
    names = {s.name for s in task.spec.subtasks}
    running: list[Running] = []
    kept: list[tuple[Running, float | None]] = []
    dynamic = False
    for st in prog.status.subtasks:
        if st.phase == SubtaskPhase.RUNNING and st.plan is not None:
            current = st.history[-1] if st.history else None
            started = current.start_time if current is not None and current.start_time else st.start_time
            kueue_job = queued.get(st.job or "")
            waiting = kueue_job is not None and kueue_job.suspended
            if kueue_job is not None:  # it starts when Kueue unsuspends it: until then all of T is ahead
                started = None if waiting else kueue_job.start_time or started
            # Pods it runs at once: one planned node each; a Job handed to Kueue has none planned.
            pods = max(1, len(st.plan.nodes) or _parallelism(task, st.name))
            base = Running(
                key=SubtaskKey(task.metadata.namespace or "default", task.metadata.name, st.name),
                class_name=st.plan.class_name,
                remaining_seconds=expected[st.name],
                accelerators=st.plan.accelerators * pods,
                cpu=parse_quantity(st.plan.cpu or "0") * pods,
                queued=waiting,
            )
            since = started.timestamp() if started else None
            kept.append((base, since))
            entry = _as_of(base, since, epoch)
            if st.name in names and task.spec.subtask(st.name).preemption.allowed:
                dynamic = True
                demand = _running_demand(task, st, params)
                entry = preemption.running_entry(task, st, entry, demand, _job_pods(work, task, st), now)
            running.append(entry)
        elif st.name in names:
            stopping = preemption.stopping_entry(task, st, work.jobs.get(task_key_of(task), []))
            if stopping is not None:
                dynamic = True
                running.append(stopping)
    if bases is not None:
        if dynamic:
            bases.pop(task.key, None)
        else:
            bases[task.key] = (sig, tuple(kept))
    return running


def _expected_runtimes(
    task: AITask,
    prog: TaskProgress,
    infos: Mapping[str, ClassInfo],
    estimates: estimator.Estimator,
    params: CycleParams,
    expected_cache: _ExpectedCache | None,
    epoch: float = 0.0,
) -> dict[str, float]:
    """T of each running sub-task with today's knowledge, kept while the progress and what was learned hold.

    ``expected_cache`` is (the store, this cycle's fingerprint of the learned runtimes): estimating
    every running sub-task of every task in play again each cycle was a fifth of a busy cycle. A
    task's T is kept for ``REESTIMATE_SECONDS`` even when the fingerprint moved: in a burst of
    similar tasks every cycle's finishes move the one average they share, and re-estimating all
    the running work each cycle was again most of the snapshot.
    """
    if expected_cache is not None:
        hit = expected_cache[0].get(task.key)
        fresh = hit is not None and (hit[1] == expected_cache[1] or 0.0 <= epoch - hit[3] < REESTIMATE_SECONDS)
        if hit is not None and hit[0] is prog and fresh:
            return hit[2]
    out = {
        st.name: _expected_runtime(task, st, infos, estimates, params)
        for st in prog.status.subtasks
        if st.phase == SubtaskPhase.RUNNING and st.plan is not None
    }
    if expected_cache is not None:
        expected_cache[0][task.key] = (prog, expected_cache[1], out, epoch)
    return out


def task_key_of(task: AITask) -> str:
    return f"{task.metadata.namespace or 'default'}/{task.metadata.name}"


def _job_pods(work: _Work, task: AITask, st: Any) -> list[PodView]:
    return [p for p in work.pods.get(task_key_of(task), []) if p.job == st.job]


def _running_demand(task: AITask, st: Any, params: CycleParams) -> Demand:
    """A running attempt's demand: its variant's, resumed from the work an earlier attempt did."""
    demand = snapshot.demand_for(
        task,
        variants.for_attempt(task.spec.subtask(st.name), st.plan.variant if st.plan is not None else ""),
        max(1, st.attempts),
        now=0.0,
        default_time_weight=params.default_time_weight,
        default_cost_weight=params.default_cost_weight,
    )
    current = st.history[-1] if st.history else None
    if current is None or current.progress_start <= 0:
        return demand
    overhead = task.spec.subtask(st.name).preemption.resume_overhead_seconds
    return snapshot.resumed(demand, current.progress_start, overhead, None)


def _learned_token(learned: Mapping[tuple[str, str], Any]) -> tuple[tuple[tuple[str, str], int], ...]:
    """What was learned, in 2% steps: a running attempt's T is estimated again when a runtime it may
    read moved by that much. Every finish nudges an average; re-estimating all running work for each
    nudge made a burst's cycles grow with the work in flight."""
    return tuple(
        sorted((k, round(math.log(max(v.seconds_per_unit, 1e-9)) / math.log(1.02))) for k, v in learned.items())
    )


def snapshot_phase(
    view: ClusterView,
    work: _Work,
    infos: Mapping[str, ClassInfo],
    learning: _Learning,
    params: CycleParams,
    cache: CycleCache | None = None,
) -> tuple[Snapshot, _Queue]:
    """Free capacity per node and the queue of ready demands (running work re-estimated with today's knowledge)."""
    estimates = estimator.Estimator(infos, learning.learned)
    expected_cache = None
    if cache is not None:
        token = _learned_token(learning.learned)
        for store in (cache.expected, cache.running):
            for gone in [k for k in store if k not in work.progresses]:
                del store[gone]
        expected_cache = (cache.expected, token)
    used = _usage(view, work, infos)
    nodes: list[NodeInfo] = []
    for body in view.nodes:
        info = snapshot.node_info(body, infos, used.get(_meta(body).get("name", ""), {}))
        if info is not None:
            nodes.append(info)
    queue = _Queue()
    for key, prog in list(work.progresses.items()):

        def step(key: str = key, prog: TaskProgress = prog) -> None:
            queued = {j.name: j for j in work.jobs.get(key, []) if j.queue_name}
            demands, running = _task_queue(
                work.tasks[key],
                prog,
                work,
                infos,
                estimates,
                params,
                queued,
                expected_cache,
                cache.running if cache is not None else None,
            )
            for demand, r in demands:
                queue.demands[demand.key] = demand
                queue.owner[demand.key] = key
                queue.ready[demand.key] = r
            queue.running.extend(running)

        isolated(work, key, step)
    snap = Snapshot(
        now=work.now.timestamp(),
        classes=infos,
        nodes=tuple(nodes),
        demands=tuple(queue.demands.values()),
        running=tuple(queue.running),
        learned=dict(learning.learned),
    )
    return snap, queue


def variants_phase(snap: Snapshot, queue: _Queue, work: _Work, params: SchedulerParams) -> Snapshot:
    """Each ready sub-task with variants gets its (variant, class) choice; its demand becomes the variant's."""
    chooser: variants.Chooser | None = None
    for key, r in list(queue.ready.items()):
        if not r.subtask.variants:
            continue
        owner = queue.owner[key]
        if owner not in work.tasks:  # isolated by a sub-task before this one
            continue
        chooser = chooser or variants.Chooser(snap.classes, snap.nodes, snap.running, snap.learned, params)

        def step(key: SubtaskKey = key, r: Ready = r, owner: str = owner, chooser: variants.Chooser = chooser) -> None:
            choice = chooser.choose(work.tasks[owner], r.subtask, queue.demands[key])
            queue.choices[key] = choice
            queue.demands[key] = choice.demand
            queue.ready[key] = replace(r, subtask=choice.subtask)

        isolated(work, owner, step)
    if chooser is None:  # no sub-task with variants is ready
        return snap
    return replace(snap, demands=tuple(d for d in queue.demands.values() if queue.owner[d.key] in work.tasks))


# --------------------------------------------------------------------------- schedule


def _without(snap: Snapshot, queue: _Queue, keep: set[str]) -> Snapshot:
    return Snapshot(
        now=snap.now,
        classes=snap.classes,
        nodes=snap.nodes,
        demands=tuple(d for d in snap.demands if queue.owner[d.key] in keep),
        running=tuple(r for r in snap.running if f"{r.key.namespace}/{r.key.task}" in keep),
        learned=snap.learned,
    )


def schedule_phase(snap: Snapshot, queue: _Queue, work: _Work, params: SchedulerParams) -> CycleResult:
    """The scheduler over every ready demand; a task that makes it raise is found by bisection and dropped."""
    try:
        return scheduler.schedule(snap, params)
    except Exception as err:  # noqa: BLE001 - isolate the culprit(s) below
        first: Exception = err
    owners = sorted(set(queue.owner.values()) | {f"{r.key.namespace}/{r.key.task}" for r in snap.running})

    def raises(group: list[str]) -> Exception | None:
        try:
            scheduler.schedule(_without(snap, queue, set(group)), params)
        except Exception as err:  # noqa: BLE001
            return err
        return None

    def culprits(group: list[str]) -> dict[str, Exception]:
        err = raises(group)
        if err is None:
            return {}
        if len(group) == 1:
            return {group[0]: err}
        mid = len(group) // 2
        return {**culprits(group[:mid]), **culprits(group[mid:])}

    if raises([]) is not None:
        raise first  # it fails without any task's work: not one task's fault, fail the cycle
    bad = culprits(owners)
    if not bad:  # it raised on the whole queue only, never on a part: nothing can be isolated
        raise first
    for key, problem in bad.items():
        work.fail(key, problem)
    return scheduler.schedule(_without(snap, queue, set(owners) - set(bad)), params)


# --------------------------------------------------------------------------- decisions


def decisions_phase(
    view: ClusterView,
    work: _Work,
    result: CycleResult,
    queue: _Queue,
    ecs: Mapping[str, ExecutorClass],
    kueue_queue: str | None = None,
    cache: CycleCache | None = None,
) -> tuple[dict[str, int], list[Admitted]]:
    """Each task's next status and Jobs; returns pending demands per class and this cycle's waits.

    A task admitted nothing this cycle and whose progress (the same derived object), deferrals
    (their class and kind of reason), GPU samples and Kueue holds are as last cycle gets last
    cycle's decision again, from ``cache``: ``decide_task`` and the two status dumps were most of
    a busy cycle, once per task in play and cycle.
    """
    admitted: dict[str, list[Admission]] = {}
    deferred: dict[str, list[Deferral]] = {}
    waits: list[Admitted] = []
    epoch = work.now.timestamp()
    for adm in result.admitted:
        if queue.owner[adm.key] in work.tasks:
            admitted.setdefault(queue.owner[adm.key], []).append(adm)
            waited = max(0.0, epoch - queue.ready[adm.key].ready_since.timestamp())
            waits.append(Admitted(class_name=adm.class_name, waited_seconds=waited))
    for dfr in result.deferred:
        deferred.setdefault(queue.owner[dfr.key], []).append(dfr)
    stopped: dict[str, list[Preemption]] = {}
    for pre in result.preempted:
        stopped.setdefault(f"{pre.key.namespace}/{pre.key.task}", []).append(pre)
    done = preemption.done_fraction(queue.running)
    telemetry = Telemetry(usage=view.gpu_usage, state=view.telemetry, message=view.telemetry_message)
    pending: dict[str, int] = {}
    for key, prog in list(work.progresses.items()):

        def step(key: str = key, prog: TaskProgress = prog) -> None:
            task = work.tasks[key]
            held = {j.name: j.queue_name for j in work.jobs.get(key, []) if j.suspended and not j.finished}
            mine, theirs = admitted.get(key, []), deferred.get(key, [])
            sig = (_decision_inputs(task, theirs, telemetry, held), _variants_of(queue, key))
            stops = [(p, done.get(p.key, 0.0)) for p in stopped.get(key, [])]
            reuse = cache is not None and not mine and not stops
            hit = cache.decided.get(key) if reuse and cache is not None else None
            raw = work.bodies[key].get("status") or {}
            same = hit is not None and hit[0] is prog and hit[1] == sig
            if hit is not None and same:
                decision, wire_new, wire_old = hit[2], hit[3], hit[4]
                # The same raw status as last cycle compares the same way (deep dict comparisons of every
                # task in play were a tenth of a busy cycle).
                changed = hit[6] if hit[5] is raw else raw is not wire_new and wire_new != raw and wire_new != wire_old
            else:
                decision = decide_task(
                    task,
                    prog,
                    mine,
                    theirs,
                    queue.ready,
                    queue.demands,
                    ecs,
                    telemetry,
                    work.now,
                    kueue_queue=kueue_queue,
                    suspended=held,
                    choices=queue.choices,
                    preempted=stops,
                )
                wire_new, wire_old = wire(decision.status), wire(task.status)
                changed = raw is not wire_new and wire_new != raw and wire_new != wire_old
            jobs = tuple(work.jobs.get(key, ()))
            if hit is not None and same and hit[7][0] == changed and hit[7][1] == jobs:
                outcome = hit[7][2]  # the same decision, status and Jobs: the same writes
            else:
                outcome = _task_outcome(task, prog, decision, wire_new if changed else None, jobs)
            if cache is not None and reuse:
                cache.decided[key] = (prog, sig, decision, wire_new, wire_old, raw, changed, (changed, jobs, outcome))
            for cls_name in decision.pending_classes:
                pending[cls_name] = pending.get(cls_name, 0) + 1
            work.count(task.metadata.namespace or "", decision.status.phase)
            work.outcomes.append(outcome)

        isolated(work, key, step)
    if cache is not None:
        for gone in [k for k in cache.decided if k not in work.progresses]:
            del cache.decided[gone]
    return pending, waits


def _task_outcome(
    task: AITask, prog: TaskProgress, decision: TaskDecision, status: dict[str, Any] | None, jobs: Sequence[JobView]
) -> TaskOutcome:
    """What one task's decision writes: ``status`` when it changed (Events and finished attempts go with it)."""
    changed = status is not None
    return TaskOutcome(
        namespace=task.metadata.namespace or "",
        name=task.metadata.name,
        uid=task.metadata.uid or "",
        status=status,
        create_jobs=decision.creates,
        create_claims=_claims(task) if decision.creates else (),
        delete_jobs=prog.delete_jobs + decision.delete_jobs,
        events=decision.events if changed or decision.creates else (),
        finished=tuple(
            EndedAttempt(a.class_name, a.result, est, a.actual_cost) for a, est in (*prog.finished, *decision.finished)
        )
        if changed
        else (),
        retries=decision.retries,
        expire_jobs=_recorded_finished_jobs(jobs, decision.status.subtasks),
        base_version=task.metadata.resource_version or "",
        generation=task.metadata.generation,
    )


def _claims(task: AITask) -> tuple[dict[str, Any], ...]:
    claim = workspace.build_claim(task)
    return (claim,) if claim is not None else ()


def _variants_of(queue: _Queue, key: str) -> tuple[tuple[str, str], ...]:
    """The variants chosen this cycle for the task's ready sub-tasks: a change is a new decision."""
    return tuple(sorted((k.subtask, c.name) for k, c in queue.choices.items() if queue.owner[k] == key))


def _decision_inputs(
    task: AITask, deferrals: Sequence[Deferral], telemetry: Telemetry, held: Mapping[str, str]
) -> tuple[Any, ...]:
    """What ``decide_task`` reads besides the progress, as far as it can change the decision.

    Of a deferral only its class and the kind of its reason count: ``decisions._deferred`` keeps
    the status while those hold, and the Planned condition quotes the sub-task's kept message.
    """
    ns = task.metadata.namespace or ""
    usage = tuple(telemetry.usage.get((ns, task.metadata.name, s.name)) for s in task.spec.subtasks)
    kinds = tuple(
        (d.key.subtask, d.reason, d.best.class_name if d.best else "", d.message.split(":", 1)[0]) for d in deferrals
    )
    return (kinds, usage, telemetry.state, telemetry.message, tuple(sorted(held.items())))


def _recorded_finished_jobs(jobs: Sequence[JobView], subtasks: Sequence[Any]) -> tuple[str, ...]:
    """Finished Jobs without a TTL whose attempt the status records as ended."""
    ended = {(s.name, a.number) for s in subtasks for a in s.history if a.result != AttemptResult.RUNNING}
    return tuple(
        sorted(j.name for j in jobs if j.finished and j.ttl_seconds is None and (j.subtask, j.attempt) in ended)
    )


# --------------------------------------------------------------------------- class status


def class_status_phase(
    ecs: Mapping[str, ExecutorClass],
    nodes: Sequence[NodeInfo],
    learning: _Learning,
    now: datetime,
    wakeups: list[datetime] | None = None,
) -> dict[str, dict[str, Any]]:
    """Capacity and allocation (bound pods plus the operator's reservations) per class, learned runtimes.

    An allocation change held back by the refresh interval adds its due time to ``wakeups``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, ec in ecs.items():
        members = [n for n in nodes if name in n.classes]
        res = ec.spec.accelerator.resource_name if ec.spec.accelerator else None

        def totals(pick: str, members: list[NodeInfo] = members, res: str | None = res) -> ResourceTotals:
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
        if name in learning.changed:
            for (profile, cls), value in learning.learned.items():
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
        if _class_status_due(ec.status, new_cs, now):
            out[name] = wire(new_cs.model_copy(update={"updated_at": now}))
        elif wakeups is not None and ec.status.allocated != new_cs.allocated and ec.status.updated_at is not None:
            wakeups.append(ec.status.updated_at + timedelta(seconds=CLASS_ALLOCATION_REFRESH_SECONDS))
    return out


def _class_status_due(old: ExecutorClassStatus, new: ExecutorClassStatus, now: datetime) -> bool:
    """Whether a class's new status is worth a write: at once for a change of capacity, learning or
    generation; a change of the allocation alone (every pod start and end moves it) once the last write
    is ``CLASS_ALLOCATION_REFRESH_SECONDS`` old. What is not written now is by a later cycle."""
    if (old.capacity, old.learned, old.observed_generation) != (new.capacity, new.learned, new.observed_generation):
        return True
    if old.allocated == new.allocated:
        return False
    return old.updated_at is None or (now - old.updated_at).total_seconds() >= CLASS_ALLOCATION_REFRESH_SECONDS


# --------------------------------------------------------------------------- the cycle


def _limits(
    view: ClusterView, work: _Work, infos: Mapping[str, ClassInfo], now: datetime, cache: CycleCache
) -> LimitsResult:
    """Quotas and budgets as the tasks in play and the finished tasks' spends leave them."""
    return limits_phase(
        [InPlay(work.tasks[k], p, work.jobs.get(k, []), work.bodies[k]) for k, p in work.progresses.items()],
        view.pods,
        view.quotas,
        view.budgets,
        [(rec.namespace, s) for rec in view.finished for s in rec.spends],
        infos,
        now,
        cache.spends,
    )


def _observe(
    view: ClusterView, params: CycleParams, now: datetime, cache: CycleCache, warnings: list[str]
) -> tuple[dict[str, ExecutorClass], _Work, _Learning, LimitsResult, Snapshot, _Queue]:
    """The phases up to the snapshot (classes, parse, progress, learning, limits), shared by
    ``run_cycle`` and ``cluster_snapshot``; the snapshot carries the limits."""
    ecs = _parse_classes(view.classes, warnings, cache)
    infos: dict[str, ClassInfo] = {name: snapshot.class_info(ec) for name, ec in ecs.items()}
    work = _Work(now=now)
    parse_phase(view, work, cache)
    progress_phase(view, work, infos, params, cache)
    learning = learning_phase(work, ecs, params)
    limited = _limits(view, work, infos, now, cache)
    warnings.extend(limited.warnings)
    work.wakeups.extend(limited.wakeups)
    snap, queue = snapshot_phase(view, work, infos, learning, params, cache)
    return ecs, work, learning, limited, replace(snap, limits=limited.limits), queue


def cluster_snapshot(view: ClusterView, params: CycleParams, now: datetime) -> Snapshot:
    """The state a cycle would schedule on, without its own queue: nodes less every pod and reservation,
    the running work (preemptible work with the demand it would resume as), what was learned, and the
    quotas and budgets. ``aitask plan`` previews a new task against it, so it sees what the operator sees."""
    snap = _observe(view, params, now, CycleCache(), [])[4]
    return replace(snap, demands=())


def run_cycle(view: ClusterView, params: CycleParams, now: datetime, cache: CycleCache | None = None) -> CycleOutcome:
    """Decide everything one cycle does; see the module docstring for the phases."""
    cache = cache if cache is not None else CycleCache()
    warnings: list[str] = []
    ecs, work, learning, limited, snap, queue = _observe(view, params, now, cache, warnings)
    sched_params = SchedulerParams(
        policy=params.policy,
        ageing_seconds=params.ageing_seconds,
        low_gpu_util_percent=params.low_gpu_util_percent,
        external_queue=params.kueue_default_queue is not None,
        preemption=params.preemption,
        preempt_min_run_seconds=params.preempt_min_run_seconds,
        preempt_factor=params.preempt_factor,
        migrate_factor=params.migrate_factor,
    )
    snap = variants_phase(snap, queue, work, sched_params)
    result = schedule_phase(snap, queue, work, sched_params)
    pending, waits = decisions_phase(view, work, result, queue, ecs, params.kueue_default_queue, cache)
    class_status = class_status_phase(ecs, snap.nodes, learning, now, work.wakeups)
    settled = not (
        work.tasks
        or work.errors
        or class_status
        or limited.writes
        or any(o.writes or o.events or o.create_claims for o in work.outcomes)
    )
    stats = CycleStats(
        tasks_by_phase=work.phases,
        admitted=sum(1 for a in result.admitted if queue.owner[a.key] in work.tasks),
        pending_by_class=pending,
        waits=tuple(waits),
        observations=learning.observed,
        errors=tuple(work.errors),
        parsed=work.parsed,
        derived=work.derived,
        next_wakeup=min(work.wakeups) if work.wakeups else None,
        settled=settled,
    )
    return CycleOutcome(
        tasks=tuple(work.outcomes),
        class_status=class_status,
        stats=stats,
        warnings=tuple(warnings),
        budget_status=limited.writes,
        budgets=limited.budgets,
    )
