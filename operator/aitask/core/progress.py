"""The per-task state machine: from the AITask, its Jobs and their pods to the next status.

``derive`` is pure. It is the operator's whole memory model: what happened is read
from the child Jobs (whose names are deterministic), what was decided is read from
the status, and the result is a new status plus the actions to take. Running it
twice on the same inputs gives the same answer, which is what makes a restart at
any moment safe: a Job created just before a crash is found again by its name and
adopted, a lost status write is recomputed from the Jobs.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from aitask.api.v1alpha1 import (
    AITask,
    AITaskStatus,
    Attempt,
    AttemptResult,
    Plan,
    Subtask,
    SubtaskPhase,
    SubtaskStatus,
    TaskPhase,
)
from aitask.core import conditions as cond
from aitask.core import resume, variants
from aitask.core.dag import critical_path
from aitask.core.observed import JobView, PodView
from aitask.core.reasons import ConditionType, Reason, kueue_waiting_message
from aitask.core.types import ClassInfo

# A Job created by the last cycle may not be in the watch cache yet; until this
# long after admission, a missing Job is "not seen yet" rather than "deleted".
JOB_VISIBILITY_GRACE = timedelta(seconds=60)
# An attempt whose pods are not created, or stay Pending, this long is stuck (AITASK_STUCK_AFTER_SECONDS).
STUCK_AFTER_SECONDS = 300.0
_TERMINAL = frozenset({SubtaskPhase.SUCCEEDED, SubtaskPhase.FAILED, SubtaskPhase.SKIPPED})


_M = TypeVar("_M", bound=Any)


def _upd(model: _M, **changes: Any) -> _M:
    """A copy of a frozen API model with some fields changed (no re-validation)."""
    return model.model_copy(update=changes)  # type: ignore[no-any-return]


def _adopted_plan(job: JobView) -> Plan:
    """What an existing Job says of its placement, for an attempt the status did not record as such."""
    return Plan(
        class_name=job.class_name,
        variant=job.variant,
        accelerators=job.accelerators,
        cpu=job.cpu,
        memory=job.memory,
        nodes=list(job.planned_nodes),
        estimated_seconds=job.estimated_seconds,
        message=f"adopted Job {job.name} on {job.class_name or '?'}",
    )


_HASHES: dict[int, tuple[weakref.ref[Subtask], str]] = {}
_MAX_HASHES = 100_000


def subtask_hash(sub: Subtask) -> str:
    """A stable fingerprint of a sub-task's spec, to notice edits of a running sub-task.

    Memoised per (immutable) Subtask object, held weakly so that the memo keeps no finished
    task's spec alive: the cycle keeps parsed AITasks between cycles, and hashing the spec was a
    tenth of a busy cycle.
    """
    hit = _HASHES.get(id(sub))
    if hit is not None and hit[0]() is sub:
        return hit[1]
    blob = json.dumps(sub.wire(), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    if len(_HASHES) >= _MAX_HASHES:
        _HASHES.clear()
    _HASHES[id(sub)] = (weakref.ref(sub), digest)
    return digest


@dataclass(frozen=True)
class Ready:
    """A sub-task whose next attempt may be admitted now."""

    subtask: Subtask
    attempt: int
    ready_since: datetime
    min_accelerator_memory_gib: float
    excluded_classes: frozenset[str]
    avoided_classes: frozenset[str] = frozenset()  # an earlier attempt got stuck there: used if nothing else fits


@dataclass(frozen=True)
class Observation:
    """A finished attempt the estimator should learn from."""

    profile: str
    class_name: str
    seconds: float
    work_units: float
    estimated_seconds: float | None
    oom: bool
    gpu_util: float | None = None  # last sampled average GPU utilisation of the attempt, percent


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class TaskProgress:
    status: AITaskStatus
    ready: tuple[Ready, ...] = ()
    delete_jobs: tuple[str, ...] = ()
    events: tuple[EventSpec, ...] = ()
    observations: tuple[Observation, ...] = ()
    # Attempts that ended in this derive (each appears exactly once: the status written with it
    # records the end), with the plan's estimated cost: what the metrics count.
    finished: tuple[tuple[Attempt, float | None], ...] = ()


def _retry_delay(sub: Subtask, failures: int, cap: float, default_base: float) -> float:
    base = sub.retry.backoff_seconds if sub.retry.backoff_seconds is not None else default_base
    return float(min(cap, base * (2 ** max(0, failures - 1))))


def _attempt_result(job: JobView, pods: Sequence[PodView]) -> tuple[AttemptResult, int | None, str]:
    """Classify a failed Job: OOMKilled beats DeadlineExceeded beats a plain failure."""
    exit_code: int | None = None
    detail = job.failure_message or job.failure_reason
    for pod in pods:
        if pod.terminated_reason == "OOMKilled":
            return AttemptResult.OOM_KILLED, pod.exit_code, f"pod {pod.name} was OOM-killed (exit code {pod.exit_code})"
        if pod.phase == "Failed" and pod.exit_code not in (None, 0) and exit_code is None:
            exit_code = pod.exit_code
            detail = f"pod {pod.name} failed with exit code {pod.exit_code} ({pod.terminated_reason or 'Error'})"
    if job.failure_reason == "DeadlineExceeded":
        return AttemptResult.DEADLINE_EXCEEDED, exit_code, "the attempt ran past timeoutSeconds"
    return AttemptResult.FAILED, exit_code, detail or "the Job failed"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _cost_of(seconds: float | None, plan_cost: float, plan_seconds: float) -> float | None:
    # The plan's cost is rate * estimated seconds with a fixed resource shape, so the
    # actual cost scales with the actual runtime at the same rate.
    if seconds is None or plan_seconds <= 0:
        return None
    return plan_cost * seconds / plan_seconds


@dataclass
class _Derivation:
    """One derive's fixed inputs and what it collects as it goes through the sub-tasks."""

    classes: Mapping[str, ClassInfo]
    now: datetime
    backoff: tuple[float, float]  # (default base, cap)
    unseen: frozenset[str]
    stuck_after_seconds: float
    stop: Stop | None
    pods_by_job: dict[str, list[PodView]]
    events: list[EventSpec] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    finished: list[tuple[Attempt, float | None]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    changed_while_running: list[str] = field(default_factory=list)
    held: set[str] = field(default_factory=set)  # stopped attempts whose Job still ends: the next one waits


def derive(
    task: AITask,
    jobs: Sequence[JobView],
    pods: Sequence[PodView],
    classes: Mapping[str, ClassInfo],
    now: datetime,
    *,
    backoff_max_seconds: float = 300.0,
    backoff_seconds: float = 10.0,
    unseen: frozenset[str] = frozenset(),
    stuck_after_seconds: float = STUCK_AFTER_SECONDS,
) -> TaskProgress:
    """Compute the task's next status and actions from what the cluster shows now.

    ``unseen`` names Jobs the operator created that the watch has not shown yet: whatever the
    watch's delay, such a Job is never taken for one deleted outside the operator. One pass over
    the sub-tasks in spec order follows each one's attempts (``_adopt``, ``_follow``), a second
    decides what may start (``_readiness``), then the task-level phase and conditions.
    """
    spec = task.spec
    prev = task.status
    jobs_by_sub: dict[str, dict[int, JobView]] = {}
    for job in jobs:
        jobs_by_sub.setdefault(job.subtask, {})[job.attempt] = job
    pods_by_job: dict[str, list[PodView]] = {}
    for pod in pods:
        pods_by_job.setdefault(pod.job, []).append(pod)
    acc = _Derivation(
        classes=classes,
        now=now,
        backoff=(backoff_seconds, backoff_max_seconds),
        unseen=unseen,
        stuck_after_seconds=stuck_after_seconds,
        stop=stop_request(task),
        pods_by_job=pods_by_job,
    )
    out: dict[str, SubtaskStatus] = {}
    for sub in spec.subtasks:
        seen = jobs_by_sub.get(sub.name, {})
        st, history = _adopt(sub, prev.subtask(sub.name) or SubtaskStatus(name=sub.name), seen, acc)
        if st.phase not in _TERMINAL and st.phase != SubtaskPhase.RUNNING:
            ending = _draining(sub, st, seen)
            if ending is not None:  # a stopped attempt's Job still ends: the next attempt waits for it
                acc.held.add(sub.name)
                if not ending.deleting:
                    acc.delete.append(ending.name)  # a Preempted attempt's Job: the status was written first
        if st.phase == SubtaskPhase.RUNNING and st.attempts > 0:
            st = _follow(sub, st, history, seen, acc)
        out[sub.name] = _upd(st, history=sorted(history.values(), key=lambda a: a.number))
    ready = _readiness(task, out, acc)
    # Sub-tasks removed from the spec: stop their running Jobs, forget them.
    spec_names = {s.name for s in spec.subtasks}
    for old in prev.subtasks:
        if old.name not in spec_names and old.phase == SubtaskPhase.RUNNING and old.job:
            acc.delete.append(old.job)
    status = _task_level(task, out, now, acc.events, acc.delete, ready, acc.changed_while_running, acc.finished)
    status = _stuck_condition(status, now, task.metadata.generation)
    return TaskProgress(
        status=status,
        ready=tuple(ready) if not status.phase.final else (),
        delete_jobs=tuple(acc.delete),
        events=tuple(acc.events),
        observations=tuple(acc.observations),
        finished=tuple(acc.finished),
    )


def _adopt(
    sub: Subtask, st: SubtaskStatus, seen: Mapping[int, JobView], acc: _Derivation
) -> tuple[SubtaskStatus, dict[int, Attempt]]:
    """The sub-task's attempts as its Jobs show them: a Job whose status write was lost is adopted."""
    latest = max([st.attempts, *seen.keys()])
    history = {a.number: a for a in st.history}
    for number, job in seen.items():
        if number not in history:
            history[number] = Attempt(
                number=number,
                job=job.name,
                class_name=job.class_name,
                spec_hash=job.spec_hash,
                start_time=job.start_time,
                variant=job.variant,
            )
            acc.events.append(
                EventSpec(
                    "Normal",
                    Reason.ATTEMPT_ADOPTED,
                    f"{sub.name}: attempt {number} found as Job {job.name} on {job.class_name or '?'} "
                    "(the status write that recorded it was lost)",
                )
            )
        elif history[number].class_name != job.class_name and job.class_name:
            # The Job that exists is what runs: a status that says otherwise is corrected.
            history[number] = _upd(history[number], class_name=job.class_name)
    if latest > st.attempts:
        newest = seen[latest]
        kept = st.plan if st.plan is not None and st.plan.class_name == newest.class_name else None
        st = _upd(st, attempts=latest, phase=SubtaskPhase.RUNNING, job=newest.name, plan=kept or _adopted_plan(newest))
    elif st.phase == SubtaskPhase.RUNNING and latest in seen and st.plan is not None:
        newest = seen[latest]
        if newest.class_name and st.plan.class_name != newest.class_name:
            st = _upd(st, plan=_adopted_plan(newest))  # e.g. a Job of another class answered our create with 409
    return st, history


def _follow(
    sub: Subtask, st: SubtaskStatus, history: dict[int, Attempt], seen: Mapping[int, JobView], acc: _Derivation
) -> SubtaskStatus:
    """The running attempt against its Job: stopped by the user, gone, succeeded, failed, stuck or running.

    ``history`` gets the attempt as it is now; an attempt that ended here is counted once in ``acc.finished``.
    """
    now = acc.now
    number = st.attempts
    current = seen.get(number)
    attempt = history.get(number) or Attempt(number=number, job=st.job or "", class_name="")
    plan = st.plan
    sub = variants.for_attempt(sub, plan.variant if plan is not None else "")
    stop = acc.stop
    if stop is not None and (current is None or not current.finished):
        # Suspended or cancelled: the attempt ends here, its Job (if any) goes with the pods' grace period.
        if current is not None and not current.deleting:
            acc.delete.append(current.name)
        attempt, st = _stopped(st, attempt, plan, stop, now)
        if sub.preemption.allowed and stop.result == AttemptResult.SUSPENDED:
            # A preemptible sub-task keeps what it did: the next attempt resumes from it.
            reported = resume.reported_progress(acc.pods_by_job.get(current.name, [])) if current else None
            done = resume.work_done(sub, attempt, plan, now, reported)
            attempt, st = _upd(attempt, progress=round(done, 6)), _upd(st, progress=round(done, 6))
    elif current is None:
        admitted = attempt.start_time or st.start_time or now
        if now - admitted > JOB_VISIBILITY_GRACE and (st.job or "") not in acc.unseen:
            attempt = _upd(
                attempt,
                result=AttemptResult.FAILED,
                reason="the Job disappeared (deleted outside the operator)",
                finish_time=now,
            )
            st = _after_failure(sub, st, attempt, acc.classes, now, acc.backoff, acc.events)
        # else: created moments ago and not in the watch cache yet: still running
    else:
        if current.spec_hash and current.spec_hash != subtask_hash(sub):
            acc.changed_while_running.append(sub.name)
        if current.complete:
            attempt, st = _succeeded(sub, st, attempt, current, acc)
        elif current.failed_final:
            attempt, st = _failed(sub, st, attempt, current, acc)
        else:
            attempt, st = _running(sub, st, attempt, current, acc)
    recorded = history.get(number)
    if attempt.result != AttemptResult.RUNNING and (recorded is None or recorded.result == AttemptResult.RUNNING):
        acc.finished.append((attempt, plan.estimated_cost if plan else None))
    history[number] = attempt
    return st


def _succeeded(
    sub: Subtask, st: SubtaskStatus, attempt: Attempt, job: JobView, acc: _Derivation
) -> tuple[Attempt, SubtaskStatus]:
    """The attempt's Job completed: recorded with its runtime and cost, and learned from once."""
    plan = st.plan
    start = job.start_time or attempt.start_time
    secs = _seconds(job.start_time, job.completion_time)
    cost = _cost_of(secs, plan.estimated_cost, plan.estimated_seconds) if plan else None
    attempt = _upd(
        attempt,
        result=AttemptResult.SUCCEEDED,
        start_time=start,
        finish_time=job.completion_time,
        actual_seconds=secs,
        actual_cost=cost,
    )
    if not attempt.learned and secs is not None and job.class_name and not attempt.progress_start:
        acc.observations.append(
            Observation(
                profile=sub.effective_profile,
                class_name=job.class_name,
                seconds=secs,
                work_units=sub.work.units,
                estimated_seconds=plan.estimated_seconds if plan else None,
                oom=False,
                gpu_util=st.metrics.gpu_util_avg if st.metrics else None,
            )
        )
        attempt = _upd(attempt, learned=True)
    st = _upd(
        st,
        phase=SubtaskPhase.SUCCEEDED,
        finish_time=job.completion_time or acc.now,
        start_time=st.start_time or start,
        actual_seconds=secs,
        actual_cost=cost,
        message=f"attempt {attempt.number} succeeded on {job.class_name} in {secs or 0:.0f}s",
    )
    acc.events.append(EventSpec("Normal", Reason.ATTEMPT_SUCCEEDED, f"{sub.name}: {st.message}"))
    return attempt, st


def _failed(
    sub: Subtask, st: SubtaskStatus, attempt: Attempt, job: JobView, acc: _Derivation
) -> tuple[Attempt, SubtaskStatus]:
    """The attempt's Job failed: classified (OOM kills are learned from), then retried or the sub-task fails."""
    plan = st.plan
    result, code, detail = _attempt_result(job, acc.pods_by_job.get(job.name, []))
    secs = _seconds(job.start_time, job.finished_at)
    cost = _cost_of(secs, plan.estimated_cost, plan.estimated_seconds) if plan else None
    attempt = _upd(
        attempt,
        result=result,
        exit_code=code,
        reason=detail,
        start_time=job.start_time or attempt.start_time,
        finish_time=job.finished_at or acc.now,
        actual_seconds=secs,
        actual_cost=cost,
    )
    if result == AttemptResult.OOM_KILLED and not attempt.learned and job.class_name:
        acc.observations.append(
            Observation(
                profile=sub.effective_profile,
                class_name=job.class_name,
                seconds=secs or 0.0,
                work_units=sub.work.units,
                estimated_seconds=None,
                oom=True,
            )
        )
        attempt = _upd(attempt, learned=True)
    return attempt, _after_failure(sub, st, attempt, acc.classes, acc.now, acc.backoff, acc.events)


def _running(
    sub: Subtask, st: SubtaskStatus, attempt: Attempt, job: JobView, acc: _Derivation
) -> tuple[Attempt, SubtaskStatus]:
    """The attempt's Job is neither complete nor failed: stuck (ended, Job deleted), or where it runs."""
    job_pods = acc.pods_by_job.get(job.name, [])
    start = job.start_time or attempt.start_time
    attempt = _upd(attempt, start_time=attempt.start_time or start)
    stuck = stuck_reason(job, job_pods, acc.now, acc.stuck_after_seconds)
    if stuck is not None:
        attempt = _upd(attempt, result=AttemptResult.STUCK, reason=stuck, finish_time=acc.now)
        acc.delete.append(job.name)  # its pods stop holding nodes and quota
        return attempt, _after_failure(sub, st, attempt, acc.classes, acc.now, acc.backoff, acc.events)
    st = _kueue_admission(st, job)
    nodes = sorted({p.node for p in job_pods if p.node and not p.terminal})
    if nodes and nodes != st.nodes:  # where it runs: news once its pods are bound
        st = _upd(
            st,
            nodes=nodes,
            start_time=st.start_time or start,
            message=f"attempt {attempt.number} running on {job.class_name} ({', '.join(nodes)})",
        )
    return attempt, st


def _readiness(task: AITask, out: dict[str, SubtaskStatus], acc: _Derivation) -> list[Ready]:
    """What may start: dependencies decide; failures propagate as skips; a suspended task admits nothing."""
    created = task.metadata.creation_timestamp or acc.now
    stop = acc.stop
    ready: list[Ready] = []
    for sub in task.spec.subtasks:
        st = out[sub.name]
        if st.phase in _TERMINAL or st.phase == SubtaskPhase.RUNNING:
            continue
        deps = [out[d] for d in sub.depends_on]
        if any(d.phase in (SubtaskPhase.FAILED, SubtaskPhase.SKIPPED) for d in deps):
            out[sub.name] = _upd(st, phase=SubtaskPhase.SKIPPED, message="skipped: a dependency did not succeed")
            continue
        if not all(d.phase == SubtaskPhase.SUCCEEDED for d in deps):
            out[sub.name] = _upd(
                st,
                phase=SubtaskPhase.WAITING,
                message="waiting for " + ", ".join(d.name for d in deps if d.phase != SubtaskPhase.SUCCEEDED),
            )
            continue
        if st.phase == SubtaskPhase.BACKOFF and st.retry_after and acc.now < st.retry_after:
            continue
        if sub.name in acc.held:
            continue
        if stop is not None:  # suspended: ready, but nothing is admitted (a cancelled task skips it later)
            if stop.result == AttemptResult.SUSPENDED and (
                st.phase != SubtaskPhase.QUEUED or st.message != SUSPENDED_MESSAGE
            ):
                out[sub.name] = _upd(st, phase=SubtaskPhase.QUEUED, message=SUSPENDED_MESSAGE)
            continue
        since = st.ready_since or max([created, *[d.finish_time for d in deps if d.finish_time]])
        min_mem, excluded = _escalation(st, acc.classes)
        ready.append(Ready(sub, st.attempts + 1, since, min_mem, excluded, _stuck_classes(st)))
        if st.phase != SubtaskPhase.QUEUED or st.ready_since is None:
            out[sub.name] = _upd(st, phase=SubtaskPhase.QUEUED, ready_since=since)
    return ready


def _kueue_admission(st: SubtaskStatus, job: JobView) -> SubtaskStatus:
    """Kueue mode: while Kueue holds the attempt's Job suspended, the sub-task says it waits for admission.

    Once Kueue unsuspends the Job the message says so until its pods are bound (then "running on").
    A Job without Kueue's queue label is left alone.
    """
    if not job.queue_name:
        return st
    waiting = kueue_waiting_message(job.queue_name)
    if job.suspended:
        message = waiting
    elif st.message == waiting:
        message = f"admitted by Kueue (queue {job.queue_name}); starting on {job.class_name}"
    else:
        return st
    return st if st.message == message else _upd(st, message=message)


def settle(
    phase: TaskPhase, conds: Sequence[Any], ordered: Sequence[SubtaskStatus], now: datetime, gen: int | None
) -> tuple[TaskPhase, list[Any]]:
    """The task phase and Running condition that follow from its sub-tasks (the one place that sets them)."""
    running = [s for s in ordered if s.phase == SubtaskPhase.RUNNING]
    if phase == TaskPhase.PENDING and running:
        phase = TaskPhase.RUNNING
    active = phase == TaskPhase.RUNNING and bool(running)
    out, _ = cond.set_condition(
        conds,
        type_=ConditionType.RUNNING,
        status=active,
        reason=Reason.IN_PROGRESS if active else Reason.IDLE,
        message=", ".join(f"{s.name} ({s.job})" for s in running) if active else "no attempt is running",
        now=now,
        generation=gen,
    )
    return phase, out


def estimated_seconds(task: AITask, subtasks: Sequence[SubtaskStatus]) -> float | None:
    """The critical path of the task: succeeded sub-tasks at their actual runtime, the rest at their plan's T."""
    by_name = {s.name: s for s in subtasks}
    seconds: dict[str, float] = {}
    for sub in task.spec.subtasks:
        st = by_name.get(sub.name)
        if st is None:
            continue
        if st.phase == SubtaskPhase.SUCCEEDED and st.actual_seconds is not None:
            seconds[sub.name] = st.actual_seconds
        elif st.plan is not None and st.plan.class_name:
            seconds[sub.name] = st.plan.estimated_seconds
    if not seconds:
        return None
    total, _ = critical_path({s.name: s.depends_on for s in task.spec.subtasks}, seconds)
    return round(total, 3)


def start_attempt(
    prev: SubtaskStatus, sub: Subtask, number: int, *, job: str, plan: Plan, message: str, now: datetime
) -> SubtaskStatus:
    """Queued -> Running: the admitted attempt, recorded before its Job is known to exist."""
    attempt = Attempt(
        number=number,
        job=job,
        class_name=plan.class_name,
        start_time=now,
        spec_hash=subtask_hash(sub),
        variant=plan.variant,
        progress_start=prev.progress,
    )
    return _upd(
        prev,
        phase=SubtaskPhase.RUNNING,
        attempts=number,
        job=job,
        plan=plan,
        nodes=list(dict.fromkeys(plan.nodes)),
        retry_after=None,
        ready_since=None,
        start_time=prev.start_time or now,
        message=message,
        history=[*prev.history, attempt],
    )


def next_change(
    task: AITask,
    status: AITaskStatus,
    jobs: Sequence[JobView],
    pods: Sequence[PodView] = (),
    *,
    stuck_after_seconds: float = STUCK_AFTER_SECONDS,
) -> datetime | None:
    """The earliest time at which ``derive`` could answer differently with the same inputs.

    A backoff expiring, the task's deadline, the grace for a Job not seen yet running out, or a
    running attempt's pending pod (or pod-less Job) becoming stuck; None when only a change of
    the task, its Jobs or its pods can change the result.
    """
    if status.phase.final:
        return None
    times: list[datetime] = []
    created = task.metadata.creation_timestamp
    if task.spec.deadline is not None and created is not None:
        times.append(created + timedelta(seconds=task.spec.deadline.seconds))
    seen = {(j.subtask, j.attempt) for j in jobs}
    times.extend(_stuck_times(status, jobs, pods, stuck_after_seconds))
    for st in status.subtasks:
        if st.phase == SubtaskPhase.BACKOFF and st.retry_after is not None:
            times.append(st.retry_after)
        if st.phase == SubtaskPhase.RUNNING and (st.name, st.attempts) not in seen:
            current = st.history[-1] if st.history else None
            admitted = current.start_time if current is not None and current.start_time else st.start_time
            if admitted is not None:
                times.append(admitted + JOB_VISIBILITY_GRACE + timedelta(seconds=1))
    return min(times) if times else None


SUSPENDED_MESSAGE = "the task is suspended (spec.suspend): nothing is admitted until it is resumed"


@dataclass(frozen=True)
class Stop:
    """Why running attempts are being stopped by the user: spec.cancel or spec.suspend."""

    result: AttemptResult  # Cancelled or Suspended
    reason: str


def stop_request(task: AITask) -> Stop | None:
    """What the spec asks of the running work: cancel beats suspend; a finished task is left alone."""
    if task.status.phase.final:
        return None
    if task.spec.cancel:
        return Stop(AttemptResult.CANCELLED, "the task was cancelled (spec.cancel)")
    if task.spec.suspend:
        return Stop(AttemptResult.SUSPENDED, "the task was suspended (spec.suspend)")
    return None


def _stopped(
    st: SubtaskStatus, attempt: Attempt, plan: Plan | None, stop: Stop, now: datetime
) -> tuple[Attempt, SubtaskStatus]:
    """The running attempt ended by the user: not a failure, no retry counted, nothing learned from it.

    What it ran for is recorded, and costs what its plan's rate says (budgets count it)."""
    secs = _seconds(attempt.start_time, now)
    attempt = _upd(
        attempt,
        result=stop.result,
        reason=stop.reason,
        finish_time=now,
        actual_seconds=secs,
        actual_cost=_cost_of(secs, plan.estimated_cost, plan.estimated_seconds) if plan else None,
    )
    what = f"attempt {attempt.number} stopped: {stop.reason}"
    if stop.result == AttemptResult.CANCELLED:
        return attempt, _upd(st, phase=SubtaskPhase.SKIPPED, nodes=[], finish_time=now, message=what)
    return attempt, _upd(st, phase=SubtaskPhase.QUEUED, nodes=[], ready_since=None, message=what)


def _draining(sub: Subtask, st: SubtaskStatus, seen: Mapping[int, JobView]) -> JobView | None:
    """The Job of a Preempted last attempt (or a Suspended one of a preemptible sub-task) still there."""
    last = st.history[-1] if st.history else None
    if last is None or (last.result == AttemptResult.SUSPENDED and not sub.preemption.allowed):
        return None
    job = resume.draining(st, dict(seen))
    return job if isinstance(job, JobView) else None


def _pending_since(job: JobView, pods: Sequence[PodView]) -> tuple[datetime, str, str] | None:
    """Since when a running attempt waits for its pods, what waits, and what the cluster says of it.

    The oldest Pending pod of the Job; or, for a Job with no pod at all, the Job itself (its pods
    were refused: a ResourceQuota, an admission webhook), counted from its ``startTime`` (set when
    the Job controller first syncs it, and again when it is resumed: a Job Kueue admitted after an
    hour in the queue is not stuck at once), else its creation. A suspended Job waits for Kueue (or
    a user) and a finished one waits for nothing: neither is ever stuck.
    """
    if job.suspended or job.finished:
        return None
    pending = [(p.created, p.name, p.waiting) for p in pods if p.phase == "Pending" and not p.deleting and p.created]
    if pending:
        since, name, waiting = min(pending)
        return since, f"pod {name} Pending", waiting
    started = job.start_time or job.created
    if not pods and job.active == 0 and job.succeeded == 0 and job.failed == 0 and started is not None:
        why = f"no pod created (refused by a ResourceQuota or an admission webhook? kubectl describe job {job.name})"
        return started, f"Job {job.name} without a pod", why
    return None


def stuck_reason(job: JobView, pods: Sequence[PodView], now: datetime, after_seconds: float) -> str | None:
    """Why a running attempt counts as stuck now (its Job is neither complete nor failed), or None.

    A pod Pending for ``after_seconds`` (unschedulable, image-pull back-off, a bad config...) or a
    Job that long without any pod holds capacity and quota while it makes no progress: the caller
    ends the attempt, deletes its Job and retries, rather than leave it ``Running`` forever.
    """
    found = _pending_since(job, pods)
    if found is None:
        return None
    since, what, detail = found
    waited = (now - since).total_seconds()
    if waited < after_seconds:
        return None
    return f"{what} for {waited:.0f}s" + (f": {detail}" if detail else "")


def _stuck_times(
    status: AITaskStatus, jobs: Sequence[JobView], pods: Sequence[PodView], after_seconds: float
) -> list[datetime]:
    """When each running attempt's pending pod (or pod-less Job) would become stuck."""
    current = {(st.name, st.attempts) for st in status.subtasks if st.phase == SubtaskPhase.RUNNING}
    by_job: dict[str, list[PodView]] = {}
    for pod in pods:
        by_job.setdefault(pod.job, []).append(pod)
    times = []
    for job in jobs:
        if (job.subtask, job.attempt) in current:
            found = _pending_since(job, by_job.get(job.name, []))
            if found is not None:
                times.append(found[0] + timedelta(seconds=after_seconds))
    return times


def _stuck_classes(st: SubtaskStatus) -> frozenset[str]:
    """Classes where an attempt of the sub-task got stuck: the next one goes elsewhere if it can."""
    return frozenset(a.class_name for a in st.history if a.result == AttemptResult.STUCK and a.class_name)


def _stuck_condition(status: AITaskStatus, now: datetime, generation: int | None) -> AITaskStatus:
    """``AttemptStuck``: True while some sub-task's last attempt ended stuck (until a later one runs).

    Absent until an attempt of the task gets stuck, then False once every such sub-task runs again
    or ended, so ``kubectl describe`` shows what was stuck, and why, next to the phase.
    """
    stuck = [s for s in status.subtasks if s.history and s.history[-1].result == AttemptResult.STUCK]
    if not stuck and cond.get_condition(status.conditions, ConditionType.ATTEMPT_STUCK) is None:
        return status
    message = "; ".join(
        f"{s.name}: attempt {s.history[-1].number} on {s.history[-1].class_name or '?'}: {s.history[-1].reason}"
        for s in stuck
    )
    conds, changed = cond.set_condition(
        status.conditions,
        type_=ConditionType.ATTEMPT_STUCK,
        status=bool(stuck),
        reason=Reason.ATTEMPT_STUCK if stuck else Reason.NO_STUCK_ATTEMPT,
        message=message or "no sub-task's last attempt is stuck",
        now=now,
        generation=generation,
    )
    return _upd(status, conditions=conds) if changed else status


def _escalation(st: SubtaskStatus, classes: Mapping[str, ClassInfo]) -> tuple[float, frozenset[str]]:
    """After OOM kills, ask for strictly more accelerator memory and avoid the classes that failed."""
    excluded = frozenset(a.class_name for a in st.history if a.result == AttemptResult.OOM_KILLED and a.class_name)
    floor = 0.0
    for name in excluded:
        info = classes.get(name)
        if info is not None:
            floor = max(floor, info.accelerator_memory_gib + 0.001)
    return floor, excluded


def _after_failure(
    sub: Subtask,
    st: SubtaskStatus,
    attempt: Attempt,
    classes: Mapping[str, ClassInfo],
    now: datetime,
    backoff: tuple[float, float],  # (default base, cap)
    events: list[EventSpec],
) -> SubtaskStatus:
    failures = sum(1 for a in st.history if a.result.is_failure and a.number != attempt.number)
    failures += 1
    what = f"attempt {attempt.number} on {attempt.class_name or '?'}: {attempt.result}: {attempt.reason}"
    reason = {AttemptResult.OOM_KILLED: Reason.OOM_KILLED, AttemptResult.STUCK: Reason.ATTEMPT_STUCK}.get(
        attempt.result, Reason.ATTEMPT_FAILED
    )
    events.append(EventSpec("Warning", reason, f"{sub.name}: {what}"))
    if failures > sub.retry.limit:
        events.append(EventSpec("Warning", Reason.RETRIES_EXHAUSTED, f"{sub.name}: failed after {failures} attempt(s)"))
        return _upd(
            st,
            phase=SubtaskPhase.FAILED,
            finish_time=attempt.finish_time or now,
            message=f"failed after {failures} attempt(s); last {what}",
        )
    delay = _retry_delay(sub, failures, backoff[1], backoff[0])
    retry_after = now + timedelta(seconds=delay)
    escalate = ""
    if attempt.result == AttemptResult.OOM_KILLED and sub.retry.oom_escalation:
        info = classes.get(attempt.class_name)
        mem = info.accelerator_memory_gib if info else 0
        escalate = f"; next attempt needs more than {mem:g} GiB of accelerator memory"
    elif attempt.result == AttemptResult.STUCK and attempt.class_name:
        escalate = f"; next attempt avoids {attempt.class_name} if another class can run it"
    events.append(
        EventSpec(
            "Normal",
            Reason.RETRYING,
            f"{sub.name}: retry {failures}/{sub.retry.limit} in {delay:.0f}s{escalate}",
        )
    )
    return _upd(
        st,
        phase=SubtaskPhase.BACKOFF,
        retry_after=retry_after,
        ready_since=retry_after,
        message=f"{what}; retry {failures}/{sub.retry.limit} after {delay:.0f}s{escalate}",
    )


def _ending(
    task: AITask, ordered: Sequence[SubtaskStatus], failed: Sequence[SubtaskStatus], done: int, now: datetime
) -> tuple[TaskPhase, Reason, str] | None:
    """Whether the task ends in this derive, and how: cancel, then deadline, then failure, then success."""
    created = task.metadata.creation_timestamp or now
    deadline = task.spec.deadline
    if task.spec.cancel:
        return TaskPhase.CANCELLED, Reason.CANCELLED, "the task was cancelled (spec.cancel); its history is kept"
    if deadline is not None and now >= created + timedelta(seconds=deadline.seconds):
        return (
            TaskPhase.FAILED,
            Reason.DEADLINE_EXCEEDED,
            f"the task did not finish within its deadline of {deadline.seconds}s",
        )
    if failed:
        return TaskPhase.FAILED, Reason.RETRIES_EXHAUSTED, "; ".join(f"{s.name}: {s.message}" for s in failed)
    if done == len(ordered):
        return TaskPhase.SUCCEEDED, Reason.ALL_SUCCEEDED, f"all {done} sub-tasks succeeded"
    return None


def end_conditions(
    conds: Sequence[Any], phase: TaskPhase, reason: str, message: str, now: datetime, gen: int | None
) -> list[Any]:
    """The conditions of a task that ended, in the Job convention that ``kubectl wait`` reads.

    Success: ``Complete`` and ``Succeeded`` True. Failure or cancellation: ``Failed`` True and
    ``Complete`` False (with the same reason), and ``Cancelled`` True when it was cancelled. So
    ``kubectl wait --for=condition=Complete`` returns on success and ``--for=condition=Failed``
    on every other end.
    """
    out = list(conds)
    success = phase == TaskPhase.SUCCEEDED
    updates: list[tuple[str, bool]] = [(ConditionType.COMPLETE, success)]
    updates.append((ConditionType.SUCCEEDED, True) if success else (ConditionType.FAILED, True))
    if phase == TaskPhase.CANCELLED:
        updates.append((ConditionType.CANCELLED, True))
    for type_, value in updates:
        out, _ = cond.set_condition(
            out, type_=type_, status=value, reason=reason, message=message, now=now, generation=gen
        )
    return out


def release(
    ordered: Sequence[SubtaskStatus],
    phase: TaskPhase,
    now: datetime,
    delete: list[str],
    finished: list[tuple[Attempt, float | None]],
) -> list[SubtaskStatus]:
    """A task that failed or was cancelled frees what it holds: running attempts stop, the rest is skipped."""
    why = "the task was cancelled" if phase == TaskPhase.CANCELLED else "the task failed"
    out: list[SubtaskStatus] = []
    for s in ordered:
        if s.phase == SubtaskPhase.RUNNING and s.job:
            delete.append(s.job)
            history = list(s.history)
            if history and history[-1].result == AttemptResult.RUNNING:
                secs = _seconds(history[-1].start_time, now)
                plan = s.plan
                history[-1] = _upd(
                    history[-1],
                    result=AttemptResult.CANCELLED,
                    reason=why,
                    finish_time=now,
                    actual_seconds=secs,
                    actual_cost=_cost_of(secs, plan.estimated_cost, plan.estimated_seconds) if plan else None,
                )
                finished.append((history[-1], s.plan.estimated_cost if s.plan else None))
            out.append(_upd(s, phase=SubtaskPhase.SKIPPED, message=f"stopped: {why}", history=history))
        elif s.phase not in _TERMINAL:
            out.append(_upd(s, phase=SubtaskPhase.SKIPPED, message=f"skipped: {why}"))
        else:
            out.append(s)
    return out


def _suspension(
    task: AITask,
    conds: Sequence[Any],
    phase: TaskPhase | None,
    ordered: Sequence[SubtaskStatus],
    events: list[EventSpec],
    now: datetime,
    gen: int | None,
) -> list[Any]:
    """The Suspended condition and its Events: True while spec.suspend holds, False once resumed."""
    was = cond.get_condition(conds, ConditionType.SUSPENDED)
    suspended = bool(task.spec.suspend) and phase is None
    if suspended:
        stopped = [
            s.name
            for s in ordered
            if s.history and s.history[-1].result == AttemptResult.SUSPENDED and s.phase == SubtaskPhase.QUEUED
        ]
        msg = "spec.suspend is true: nothing is admitted" + (f"; stopped: {', '.join(stopped)}" if stopped else "")
        if was is None or was.status != "True":
            events.append(EventSpec("Normal", Reason.SUSPENDED, msg))
        out, _ = cond.set_condition(
            conds,
            type_=ConditionType.SUSPENDED,
            status=True,
            reason=Reason.SUSPENDED,
            message=msg,
            now=now,
            generation=gen,
        )
        return out
    if was is not None and was.status == "True" and phase is None:
        events.append(EventSpec("Normal", Reason.RESUMED, "spec.suspend is false: the task runs again"))
        out, _ = cond.set_condition(
            conds,
            type_=ConditionType.SUSPENDED,
            status=False,
            reason=Reason.RESUMED,
            message="resumed",
            now=now,
            generation=gen,
        )
        return out
    return list(conds)


def _task_level(
    task: AITask,
    subs: Mapping[str, SubtaskStatus],
    now: datetime,
    events: list[EventSpec],
    delete: list[str],
    ready: list[Ready],
    changed_while_running: list[str],
    finished: list[tuple[Attempt, float | None]],
) -> AITaskStatus:
    prev = task.status
    gen = task.metadata.generation
    ordered = [subs[s.name] for s in task.spec.subtasks]
    total = len(ordered)
    done = sum(1 for s in ordered if s.phase == SubtaskPhase.SUCCEEDED)
    failed = [s for s in ordered if s.phase == SubtaskPhase.FAILED]
    running = [s for s in ordered if s.phase == SubtaskPhase.RUNNING]
    conds = list(prev.conditions)
    conds, _ = cond.remove_condition(conds, ConditionType.INVALID_SPEC)
    phase: TaskPhase | None = prev.phase if prev.phase.final else None
    completion = prev.completion_time
    if phase is None:
        ending = _ending(task, ordered, failed, done, now)
        if ending is not None:
            phase, reason, msg = ending
            completion = (
                max([s.finish_time for s in ordered if s.finish_time] or [now]) if phase == TaskPhase.SUCCEEDED else now
            )
            conds = end_conditions(conds, phase, reason, msg, now, gen)
            if phase == TaskPhase.SUCCEEDED:
                # The attempts that ended the task are told in its one closing Event, not in one each.
                last = [e for e in events if e.reason == Reason.ATTEMPT_SUCCEEDED]
                events[:] = [e for e in events if e.reason != Reason.ATTEMPT_SUCCEEDED]
                detail = "; ".join(e.message for e in last)
                events.append(EventSpec("Normal", reason, msg + (f" ({detail})" if detail else "")))
            elif phase == TaskPhase.CANCELLED:
                events.append(EventSpec("Normal", reason, msg))
            else:
                events.append(
                    EventSpec("Warning", reason, msg if reason != Reason.RETRIES_EXHAUSTED else f"task failed: {msg}")
                )
            if phase != TaskPhase.SUCCEEDED:
                ordered = release(ordered, phase, now, delete, finished)
                ready.clear()
    conds = _suspension(task, conds, phase, ordered, events, now, gen)
    if phase is None and task.spec.suspend:
        phase = TaskPhase.SUSPENDED
    if phase is None:
        phase = TaskPhase.RUNNING if running or done else TaskPhase.PENDING
    phase, conds = settle(phase, conds, ordered, now, gen)
    if changed_while_running:
        conds, _ = cond.set_condition(
            conds,
            type_=ConditionType.SPEC_CHANGE_IGNORED,
            status=True,
            reason=Reason.RUNNING_SUBTASK_CHANGED,
            message="spec of running sub-task(s) "
            + ", ".join(changed_while_running)
            + " changed: the running attempt keeps its spec; a retry would use the new one",
            now=now,
            generation=gen,
        )
    else:
        conds, _ = cond.remove_condition(conds, ConditionType.SPEC_CHANGE_IGNORED)
    est_cost = [s.plan.estimated_cost for s in ordered if s.plan]
    actual = [a.actual_cost for s in ordered for a in s.history if a.actual_cost is not None]
    starts = [s.start_time for s in ordered if s.start_time]
    return _upd(
        prev,
        phase=phase,
        progress=f"{done}/{total}",
        succeeded=done,
        total=total,
        conditions=conds,
        subtasks=ordered,
        estimated_cost=round(sum(est_cost), 6) if est_cost else prev.estimated_cost,
        actual_cost=round(sum(actual), 6) if actual else None,
        start_time=prev.start_time or (min(starts) if starts else None),
        completion_time=completion,
        observed_generation=gen,
    )
