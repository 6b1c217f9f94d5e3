"""Work done by stopped attempts, carried over to the next one (preemption, migration, suspend).

The fraction of the sub-task's work done is what a workload reports on its pods (annotation
``aitask.dev/progress``, a number in [0, 1] the workload writes as it checkpoints; the highest of
its pods wins), else the default: the attempt's run time, less the resume overhead it paid
first, over its plan's estimate of the whole work on that class ("elapsed x the class's speed
relative to the estimate"). The resumed attempt's estimate is what is left on its new class plus
the resume overhead (``snapshot.resumed``); a resumed attempt is never learned as a full run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aitask.api.v1alpha1 import Attempt, AttemptResult, Plan, Subtask, SubtaskPhase, SubtaskStatus
from aitask.core.observed import PodView
from aitask.core.reasons import Reason
from aitask.core.types import MIGRATED, Preemption

PROGRESS_ANNOTATION = "aitask.dev/progress"


def reported_progress(pods: Sequence[PodView]) -> float | None:
    """The workload's own report, if any of its pods carries one."""
    values = [p.progress for p in pods if p.progress is not None]
    return min(max(values), 1.0) if values else None


def work_done(sub: Subtask, attempt: Attempt, plan: Plan | None, now: datetime, reported: float | None = None) -> float:
    """Fraction of the whole work done once this attempt stops now (what came before included)."""
    if reported is not None:
        return max(attempt.progress_start, min(reported, 1.0))
    start = attempt.start_time
    if start is None or plan is None or plan.estimated_seconds <= 0:
        return attempt.progress_start
    overhead = sub.preemption.resume_overhead_seconds if attempt.progress_start > 0 else 0.0
    left = max(1.0 - attempt.progress_start, 1e-9)
    whole = max(plan.estimated_seconds - overhead, 1e-9) / left
    ran = max(0.0, (now - start).total_seconds() - overhead)
    return min(attempt.progress_start + ran / whole, 1.0)


def preemptions(st: SubtaskStatus) -> int:
    """How often the scheduler stopped this sub-task (each doubles its minimum run time)."""
    return sum(1 for a in st.history if a.result == AttemptResult.PREEMPTED)


def moved_to(st: SubtaskStatus) -> str | None:
    """The class a migration stopped the last attempt for: the next attempt runs there."""
    last = st.history[-1] if st.history else None
    if last is None or last.result != AttemptResult.PREEMPTED or last.preempted_by:
        return None
    return last.moved_to or None


def preempt_attempt(
    st: SubtaskStatus, pre: Preemption, done: float, now: datetime
) -> tuple[SubtaskStatus, Attempt, tuple[str, Reason, str]]:
    """Running -> Queued: the attempt ends Preempted (not a failure, no retry counted, nothing learned).

    Its Job is deleted by the next derive (the status write comes first, so a crash in between
    loses nothing: the recorded attempt says the Job must go, and the next attempt waits for it)."""
    attempt = st.history[-1]
    secs = (now - attempt.start_time).total_seconds() if attempt.start_time else None
    plan = st.plan
    cost = None
    if secs is not None and plan is not None and plan.estimated_seconds > 0:
        cost = plan.estimated_cost * secs / plan.estimated_seconds
    by = str(pre.by) if pre.by is not None else None
    attempt = attempt.model_copy(
        update={
            "result": AttemptResult.PREEMPTED,
            "reason": pre.message,
            "finish_time": now,
            "actual_seconds": secs,
            "actual_cost": cost,
            "progress": round(done, 6),
            "preempted_by": by,
            "moved_to": pre.target_class if pre.reason == MIGRATED else None,
        }
    )
    message = f"attempt {attempt.number} preempted ({done:.0%} of the work done): {pre.message}"
    new = st.model_copy(
        update={
            "phase": SubtaskPhase.QUEUED,
            "nodes": [],
            "ready_since": None,
            "progress": round(done, 6),
            "message": message,
            "history": [*st.history[:-1], attempt],
        }
    )
    reason = Reason.MIGRATED if pre.reason == MIGRATED else Reason.PREEMPTED
    return new, attempt, ("Normal", reason, f"{st.name}: {message}")


def draining(st: SubtaskStatus, jobs: dict[int, Any]) -> Any | None:
    """The Job of a stopped (Preempted or Suspended) last attempt that still exists: the next attempt
    waits for it to go, so a sub-task never has two Jobs running."""
    last = st.history[-1] if st.history else None
    if last is None or last.result not in (AttemptResult.PREEMPTED, AttemptResult.SUSPENDED):
        return None
    job = jobs.get(last.number)
    if job is None or job.finished:
        return None
    return job
