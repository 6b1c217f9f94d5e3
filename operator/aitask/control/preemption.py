"""The cycle's side of preemption: resumed demands, preemptible running work, stopped attempts.

The decision is ``core.scheduling.preempt`` (in ``core.scheduler.schedule``); this module only
translates status and Jobs into what it reads (``Demand.remaining``, ``Running.resume``) and
its ``Preemption`` records back into sub-task status (``core.resume.preempt_attempt``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from aitask.api.v1alpha1 import AITask, SubtaskStatus
from aitask.core import resume, snapshot
from aitask.core.observed import JobView, PodView
from aitask.core.quantity import parse_quantity
from aitask.core.types import Demand, Running, SubtaskKey


def resumed_demand(task: AITask, st: SubtaskStatus | None, demand: Demand) -> Demand:
    """A ready sub-task with work carried over asks for what is left, plus the resume overhead."""
    if st is None or st.progress <= 0:
        return demand
    sub = task.spec.subtask(st.name)
    return snapshot.resumed(demand, st.progress, sub.preemption.resume_overhead_seconds, resume.moved_to(st))


def running_entry(
    task: AITask,
    st: SubtaskStatus,
    base: Running,
    demand: Demand,
    pods: Sequence[PodView],
    now: datetime,
) -> Running:
    """``base`` with what preemption reads, for a preemptible sub-task's running attempt."""
    sub = task.spec.subtask(st.name)
    current = st.history[-1] if st.history else None
    if not sub.preemption.allowed or current is None or st.plan is None:
        return base
    done = resume.work_done(sub, current, st.plan, now, resume.reported_progress(pods))
    overhead = sub.preemption.resume_overhead_seconds
    again = snapshot.resumed(demand, done, overhead, None, attempt=st.attempts + 1)
    started = current.start_time or st.start_time or now
    count = max(1, len(st.plan.nodes))
    return replace(
        base,
        resume=again,
        nodes=tuple(st.plan.nodes),
        memory=parse_quantity(st.plan.memory or "0") * count,
        started=started.timestamp(),
        grace_seconds=float(sub.preemption.grace_period_seconds),
        preemptions=resume.preemptions(st),
    )


def stopping_entry(task: AITask, st: SubtaskStatus, jobs: Sequence[JobView]) -> Running | None:
    """A stopped attempt whose Job still ends: its units free soon (no second set of victims for them)."""
    job = resume.draining(st, {j.attempt: j for j in jobs if j.subtask == st.name})
    if job is None or st.plan is None:
        return None
    count = max(1, len(st.plan.nodes))
    return Running(
        key=SubtaskKey(task.metadata.namespace or "default", task.metadata.name, st.name),
        class_name=st.plan.class_name,
        remaining_seconds=float(task.spec.subtask(st.name).preemption.grace_period_seconds),
        accelerators=st.plan.accelerators * count,
        cpu=parse_quantity(st.plan.cpu or "0") * count,
        nodes=tuple(st.plan.nodes),
        memory=parse_quantity(st.plan.memory or "0") * count,
        stopping=True,
    )


def done_fraction(running: Sequence[Running]) -> Mapping[SubtaskKey, float]:
    """Work done per preemptible running sub-task, as the cycle computed it for the scheduler."""
    return {r.key: 1.0 - r.resume.remaining for r in running if r.resume is not None}
