"""The per-task state machine (core.progress.derive), table-driven over observed Jobs and pods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aitask.api.v1alpha1 import AITask, SubtaskPhase, TaskPhase
from aitask.core.observed import JobView, PodView, job_view, pod_view
from aitask.core.progress import JOB_VISIBILITY_GRACE, derive, subtask_hash
from aitask.core.types import ClassInfo

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CLASSES = {
    "small": ClassInfo(name="small", kind="gpu", accelerator_resource="nvidia.com/gpu", accelerator_memory_gib=16),
    "big": ClassInfo(name="big", kind="gpu", accelerator_resource="nvidia.com/gpu", accelerator_memory_gib=80),
    "cpu": ClassInfo(name="cpu", kind="cpu"),
}


def task(subtasks: list[dict[str, Any]], status: dict[str, Any] | None = None, **spec: Any) -> AITask:
    return AITask.model_validate({
        "metadata": {"name": "t", "namespace": "ns", "uid": "u", "generation": 1,
                     "creationTimestamp": T0.isoformat()},
        "spec": {"subtasks": subtasks, **spec},
        "status": status or {},
    })


def job(sub: str, attempt: int, *, cls: str = "small", state: str = "active", reason: str = "",
        start: datetime = T0, end: datetime | None = None, spec_hash: str = "") -> JobView:
    return JobView(
        namespace="ns", name=f"t-{sub}-{attempt}", task="t", subtask=sub, attempt=attempt, class_name=cls,
        active=1 if state == "active" else 0, succeeded=1 if state == "complete" else 0,
        failed=1 if state == "failed" else 0, complete=state == "complete", failed_final=state == "failed",
        failure_reason=reason, failure_message="", start_time=start,
        completion_time=end if state == "complete" else None,
        finished_at=end, deleting=False, spec_hash=spec_hash,
    )


def failed_pod(job_name: str, reason: str = "Error", code: int = 1) -> PodView:
    return PodView(namespace="ns", name=f"{job_name}-x", job=job_name, node="n1", phase="Failed",
                   terminated_reason=reason, exit_code=code, deleting=False, requests={})


def running(sub: str, attempt: int, cls: str = "small", history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": sub, "phase": "Running", "attempts": attempt, "job": f"t-{sub}-{attempt}",
            "startTime": T0.isoformat(),
            "plan": {"class": cls, "estimatedSeconds": 100, "estimatedCost": 1.0},
            "history": history or [{"number": attempt, "job": f"t-{sub}-{attempt}", "class": cls,
                                    "startTime": T0.isoformat()}]}


PIPE = [
    {"name": "a", "image": "x/a:1", "type": "preprocess"},
    {"name": "b", "image": "x/b:1", "type": "inference", "dependsOn": ["a"], "retry": {"limit": 1}},
    {"name": "c", "image": "x/c:1", "dependsOn": ["b"]},
]


def test_fresh_task_makes_only_roots_ready() -> None:
    prog = derive(task(PIPE), [], [], CLASSES, T0)
    assert [r.subtask.name for r in prog.ready] == ["a"]
    assert prog.ready[0].attempt == 1
    phases = {s.name: s.phase for s in prog.status.subtasks}
    assert phases == {"a": SubtaskPhase.QUEUED, "b": SubtaskPhase.WAITING, "c": SubtaskPhase.WAITING}
    assert prog.status.phase == TaskPhase.PENDING
    assert prog.status.progress == "0/3"


def test_completed_dependency_releases_the_next_and_is_learned_once() -> None:
    now = T0 + timedelta(seconds=50)
    t = task(PIPE, {"subtasks": [running("a", 1, "cpu")]})
    prog = derive(t, [job("a", 1, cls="cpu", state="complete", end=T0 + timedelta(seconds=40))], [], CLASSES, now)
    a = prog.status.subtask("a")
    assert a is not None
    assert a.phase == SubtaskPhase.SUCCEEDED
    assert a.actual_seconds == 40
    assert a.history[0].learned is True
    assert [r.subtask.name for r in prog.ready] == ["b"]
    assert prog.ready[0].ready_since == T0 + timedelta(seconds=40)
    assert [(o.profile, o.class_name, o.seconds) for o in prog.observations] == [("x/a", "cpu", 40.0)]
    assert [(a.number, a.result, cost) for a, cost in prog.finished] == [(1, "Succeeded", 1.0)]
    # Re-deriving from the new status observes (and counts) nothing again.
    again = derive(t.model_copy(update={"status": prog.status}), [], [], CLASSES, now)
    assert again.observations == ()
    assert again.finished == ()


@pytest.mark.parametrize(
    ("pod_reason", "code", "job_reason", "expected"),
    [
        ("Error", 3, "BackoffLimitExceeded", "Failed"),
        ("OOMKilled", 137, "BackoffLimitExceeded", "OOMKilled"),
        ("", None, "DeadlineExceeded", "DeadlineExceeded"),
    ],
    ids=["exit-code", "oom", "deadline"],
)
def test_failed_attempt_is_classified_and_retried(pod_reason: str, code: int | None, job_reason: str,
                                                  expected: str) -> None:
    now = T0 + timedelta(seconds=30)
    t = task(PIPE, {"subtasks": [{"name": "a", "phase": "Succeeded", "attempts": 1},
                                 running("b", 1, "small")]})
    pods = [failed_pod("t-b-1", pod_reason, code)] if pod_reason else []
    prog = derive(t, [job("b", 1, state="failed", reason=job_reason, end=now)], pods, CLASSES, now)
    b = prog.status.subtask("b")
    assert b is not None
    assert b.phase == SubtaskPhase.BACKOFF
    assert b.history[0].result == expected
    if code is not None:
        assert b.history[0].exit_code == code
    assert b.retry_after == now + timedelta(seconds=10)
    assert prog.ready == ()  # backoff not over yet
    later = derive(t.model_copy(update={"status": prog.status}), [job("b", 1, state="failed", reason=job_reason,
                                                                        end=now)], pods, CLASSES,
                   now + timedelta(seconds=11))
    assert [(r.subtask.name, r.attempt) for r in later.ready] == [("b", 2)]
    if expected == "OOMKilled":
        assert later.ready[0].excluded_classes == frozenset({"small"})
        assert later.ready[0].min_accelerator_memory_gib > 16
    else:
        assert later.ready[0].excluded_classes == frozenset()


def test_retries_exhausted_fail_the_task_and_skip_dependents() -> None:
    now = T0 + timedelta(seconds=100)
    history = [
        {"number": 1, "job": "t-b-1", "class": "small", "result": "Failed"},
        {"number": 2, "job": "t-b-2", "class": "small", "startTime": T0.isoformat()},
    ]
    t = task(PIPE, {"subtasks": [{"name": "a", "phase": "Succeeded", "attempts": 1},
                                 running("b", 2, history=history)]})
    prog = derive(t, [job("b", 2, state="failed", reason="BackoffLimitExceeded", end=now)],
                  [failed_pod("t-b-2")], CLASSES, now)
    assert prog.status.phase == TaskPhase.FAILED
    phases = {s.name: s.phase for s in prog.status.subtasks}
    assert phases == {"a": SubtaskPhase.SUCCEEDED, "b": SubtaskPhase.FAILED, "c": SubtaskPhase.SKIPPED}
    failed = next(c for c in prog.status.conditions if c.type == "Failed")
    assert failed.reason == "RetriesExhausted"
    assert "RetriesExhausted" in [e.reason for e in prog.events]
    assert prog.ready == ()


def test_job_created_before_a_crash_is_adopted_not_duplicated() -> None:
    # The status write after creating t-a-1 was lost: status still says Queued, attempts 0.
    t = task(PIPE, {"subtasks": [{"name": "a", "phase": "Queued", "attempts": 0}]})
    prog = derive(t, [job("a", 1, cls="cpu")], [], CLASSES, T0 + timedelta(seconds=5))
    a = prog.status.subtask("a")
    assert a is not None
    assert a.phase == SubtaskPhase.RUNNING
    assert a.attempts == 1
    assert a.job == "t-a-1"
    assert prog.ready == ()


@pytest.mark.parametrize(("age", "phase"), [(5, SubtaskPhase.RUNNING), (120, SubtaskPhase.BACKOFF)],
                         ids=["not-visible-yet", "deleted-outside"])
def test_missing_job_is_waited_for_then_counted_as_failed(age: int, phase: SubtaskPhase) -> None:
    assert timedelta(seconds=120) > JOB_VISIBILITY_GRACE > timedelta(seconds=5)
    t = task(PIPE, {"subtasks": [running("a", 1, "cpu")]})
    prog = derive(t, [], [], CLASSES, T0 + timedelta(seconds=age))
    a = prog.status.subtask("a")
    assert a is not None
    assert a.phase == phase


def test_deadline_fails_the_task_and_stops_running_jobs() -> None:
    t = task(PIPE, {"subtasks": [running("a", 1, "cpu")]}, deadline={"seconds": 60})
    prog = derive(t, [job("a", 1, cls="cpu")], [], CLASSES, T0 + timedelta(seconds=61))
    assert prog.status.phase == TaskPhase.FAILED
    assert prog.delete_jobs == ("t-a-1",)
    assert next(c for c in prog.status.conditions if c.type == "Failed").reason == "DeadlineExceeded"


def test_edit_of_a_running_subtask_is_reported() -> None:
    t = task(PIPE, {"subtasks": [running("a", 1, "cpu")]})
    prog = derive(t, [job("a", 1, cls="cpu", spec_hash="0000")], [], CLASSES, T0)
    cond = next(c for c in prog.status.conditions if c.type == "SpecChangeIgnored")
    assert "a" in cond.message
    same = derive(t, [job("a", 1, cls="cpu", spec_hash=subtask_hash(t.spec.subtasks[0]))], [], CLASSES, T0)
    assert all(c.type != "SpecChangeIgnored" for c in same.status.conditions)


def test_all_succeeded_completes_the_task() -> None:
    subs = [{"name": n, "phase": "Succeeded", "attempts": 1, "finishTime": T0.isoformat()} for n in "ab"]
    subs.append(running("c", 1, "cpu"))
    t = task(PIPE, {"subtasks": subs})
    prog = derive(t, [job("c", 1, cls="cpu", state="complete", end=T0 + timedelta(seconds=9))], [], CLASSES,
                  T0 + timedelta(seconds=10))
    assert prog.status.phase == TaskPhase.SUCCEEDED
    assert prog.status.progress == "3/3"
    assert prog.status.completion_time == T0 + timedelta(seconds=9)
    assert prog.status.actual_cost == pytest.approx(1.0 * 9 / 100)


def test_views_reduce_real_objects() -> None:
    body = {
        "metadata": {"name": "t-b-1", "namespace": "ns",
                     "labels": {"aitask.dev/task": "t", "aitask.dev/subtask": "b", "aitask.dev/attempt": "1",
                                "aitask.dev/class": "small"}},
        "status": {"failed": 1, "startTime": "2026-01-01T00:00:00Z",
                   "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                   "lastTransitionTime": "2026-01-01T00:01:00Z"}]},
    }
    view = job_view(body)
    assert view is not None
    assert view.failed_final
    assert view.finished_at == T0 + timedelta(minutes=1)
    assert job_view({"metadata": {"name": "other"}}) is None
    pod = pod_view({
        "metadata": {"name": "p", "namespace": "ns", "labels": {"batch.kubernetes.io/job-name": "t-b-1"}},
        "spec": {"nodeName": "n1", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"},
                                                                  "requests": {"cpu": "500m"}}}]},
        "status": {"phase": "Failed", "containerStatuses": [
            {"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]},
    })
    assert (pod.job, pod.node, pod.terminated_reason, pod.exit_code) == ("t-b-1", "n1", "OOMKilled", 137)
    assert pod.requests == {"nvidia.com/gpu": "2", "cpu": "500m"}


@pytest.mark.parametrize(("own", "expected"), [(None, 3.0), (1.0, 1.0)], ids=["operator-default", "subtask-own"])
def test_retry_delay_uses_the_subtask_backoff_else_the_operator_default(own: float | None, expected: float) -> None:
    now = T0 + timedelta(seconds=30)
    step = {"name": "a", "image": "x/a:1", "retry": {"limit": 3, **({"backoffSeconds": own} if own else {})}}
    t = task([step], {"subtasks": [running("a", 1, "cpu")]})
    prog = derive(t, [job("a", 1, cls="cpu", state="failed", reason="BackoffLimitExceeded", end=now)],
                  [failed_pod("t-a-1")], CLASSES, now, backoff_seconds=3.0)
    a = prog.status.subtask("a")
    assert a is not None
    assert a.retry_after == now + timedelta(seconds=expected)


def test_attempts_stopped_by_a_failed_task_are_cancelled_and_counted_once() -> None:
    now = T0 + timedelta(seconds=100)
    history = [{"number": 1, "job": "t-b-1", "class": "small", "result": "Failed"},
               {"number": 2, "job": "t-b-2", "class": "small", "startTime": T0.isoformat()}]
    steps = [*PIPE, {"name": "d", "image": "x/d:1"}]
    t = task(steps, {"subtasks": [{"name": "a", "phase": "Succeeded", "attempts": 1},
                                  running("b", 2, history=history), running("d", 1, "cpu")]})
    prog = derive(t, [job("b", 2, state="failed", reason="BackoffLimitExceeded", end=now), job("d", 1, cls="cpu")],
                  [failed_pod("t-b-2")], CLASSES, now)
    d = prog.status.subtask("d")
    assert d is not None
    assert d.phase == SubtaskPhase.SKIPPED
    assert d.history[-1].result == "Cancelled"
    assert "t-d-1" in prog.delete_jobs
    assert sorted(a.result for a, _ in prog.finished) == ["Cancelled", "Failed"]
