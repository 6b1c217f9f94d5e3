"""Suspend, resume and cancel (spec.suspend / spec.cancel) and the end conditions kubectl wait reads."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aitask.api.v1alpha1 import AITask, AttemptResult, SubtaskPhase, TaskPhase
from aitask.core.conditions import get_condition
from aitask.core.progress import derive
from aitask.core.reasons import ConditionType
from tests.unit.test_progress import CLASSES, PIPE, T0, job, running, task

NOW = T0 + timedelta(seconds=60)


def _cond(t: Any, type_: str) -> tuple[str, str] | None:
    c = get_condition(t.conditions, type_)
    return None if c is None else (c.status, c.reason)


def _next(t: AITask, status: Any, **spec: Any) -> AITask:
    body = t.model_dump(by_alias=True, mode="json")
    body["spec"].update(spec)
    body["status"] = status.model_dump(by_alias=True, mode="json")
    body["metadata"]["generation"] = (t.metadata.generation or 0) + 1
    return AITask.model_validate(body)


def test_suspend_stops_the_running_attempt_and_admits_nothing() -> None:
    t = task(PIPE, {"subtasks": [running("a", 1, "cpu")]}, suspend=True)
    prog = derive(t, [job("a", 1, cls="cpu")], [], CLASSES, NOW)
    a = prog.status.subtask("a")
    assert a is not None
    assert prog.delete_jobs == ("t-a-1",)
    assert a.phase == SubtaskPhase.QUEUED
    assert a.history[-1].result == AttemptResult.SUSPENDED
    assert a.history[-1].actual_seconds == 60
    assert a.history[-1].actual_cost is not None  # what it ran for is charged (budgets)
    assert prog.ready == ()
    assert prog.status.phase == TaskPhase.SUSPENDED
    assert _cond(prog.status, ConditionType.SUSPENDED) == ("True", "Suspended")
    assert _cond(prog.status, ConditionType.RUNNING) == ("False", "Idle")
    assert [e.reason for e in prog.events] == ["Suspended"]
    assert [(att.result, cost) for att, cost in prog.finished] == [(AttemptResult.SUSPENDED, 1.0)]
    # The next cycle (Job being deleted, then gone) changes nothing and posts nothing.
    again = derive(t.model_copy(update={"status": prog.status}), [], [], CLASSES, NOW + timedelta(seconds=5))
    assert again.delete_jobs == ()
    assert again.events == ()
    assert again.ready == ()
    assert again.status.phase == TaskPhase.SUSPENDED


def test_resume_starts_a_new_attempt_not_counted_as_a_retry() -> None:
    t = task(PIPE, {"subtasks": [running("a", 1, "cpu")]}, suspend=True)
    stopped = derive(t, [job("a", 1, cls="cpu")], [], CLASSES, NOW)
    resumed = derive(_next(t, stopped.status, suspend=False), [], [], CLASSES, NOW + timedelta(seconds=30))
    assert [(r.subtask.name, r.attempt) for r in resumed.ready] == [("a", 2)]
    assert resumed.status.phase == TaskPhase.PENDING
    assert _cond(resumed.status, ConditionType.SUSPENDED) == ("False", "Resumed")
    assert [e.reason for e in resumed.events] == ["Resumed"]
    assert not AttemptResult.SUSPENDED.is_failure


def test_a_job_that_finished_before_the_suspend_is_recorded_as_it_ended() -> None:
    t = task(PIPE, {"subtasks": [running("a", 1, "cpu")]}, suspend=True)
    prog = derive(t, [job("a", 1, cls="cpu", state="complete", end=NOW)], [], CLASSES, NOW)
    a = prog.status.subtask("a")
    assert a is not None and a.phase == SubtaskPhase.SUCCEEDED
    assert prog.delete_jobs == ()
    b = prog.status.subtask("b")
    assert b is not None and b.phase == SubtaskPhase.QUEUED and "suspended" in b.message
    assert prog.ready == ()


def test_operator_killed_after_the_delete_suspends_once_from_the_missing_job() -> None:
    # The Job was deleted, the status write was lost: the next cycle sees no Job and still suspends.
    t = task(PIPE, {"subtasks": [running("a", 1, "cpu")]}, suspend=True)
    prog = derive(t, [], [], CLASSES, NOW + timedelta(seconds=600))
    a = prog.status.subtask("a")
    assert a is not None
    assert a.history[-1].result == AttemptResult.SUSPENDED  # not "the Job disappeared"
    assert len(a.history) == 1


def test_cancel_ends_the_task_keeping_its_history() -> None:
    status = {"subtasks": [{"name": "a", "phase": "Succeeded", "attempts": 1,
                            "history": [{"number": 1, "job": "t-a-1", "class": "cpu", "result": "Succeeded"}]},
                           running("b", 1, "small")]}
    t = task(PIPE, status, cancel=True)
    prog = derive(t, [job("b", 1)], [], CLASSES, NOW)
    st = prog.status
    assert st.phase == TaskPhase.CANCELLED
    assert st.completion_time == NOW
    assert prog.delete_jobs == ("t-b-1",)
    phases = {s.name: s.phase for s in st.subtasks}
    assert phases == {"a": SubtaskPhase.SUCCEEDED, "b": SubtaskPhase.SKIPPED, "c": SubtaskPhase.SKIPPED}
    b = st.subtask("b")
    assert b is not None and b.history[-1].result == AttemptResult.CANCELLED
    a = st.subtask("a")
    assert a is not None and a.history[0].result == AttemptResult.SUCCEEDED  # history kept
    assert _cond(st, ConditionType.CANCELLED) == ("True", "Cancelled")
    assert _cond(st, ConditionType.FAILED) == ("True", "Cancelled")
    assert _cond(st, ConditionType.COMPLETE) == ("False", "Cancelled")
    assert [e.reason for e in prog.events] == ["Cancelled"]
    assert prog.ready == ()
    assert st.phase.final


def test_success_sets_complete_and_failure_sets_failed_the_job_way() -> None:
    done = task([{"name": "a", "image": "x/a:1"}], {"subtasks": [running("a", 1, "cpu")]})
    ok = derive(done, [job("a", 1, cls="cpu", state="complete", end=NOW)], [], CLASSES, NOW).status
    assert _cond(ok, ConditionType.COMPLETE) == ("True", "AllSucceeded")
    assert _cond(ok, ConditionType.SUCCEEDED) == ("True", "AllSucceeded")
    assert _cond(ok, ConditionType.FAILED) is None
    bad = task([{"name": "a", "image": "x/a:1", "retry": {"limit": 0}}], {"subtasks": [running("a", 1, "cpu")]})
    ko = derive(bad, [job("a", 1, cls="cpu", state="failed", reason="BackoffLimitExceeded", end=NOW)], [],
                CLASSES, NOW).status
    assert ko.phase == TaskPhase.FAILED
    assert _cond(ko, ConditionType.FAILED) == ("True", "RetriesExhausted")
    assert _cond(ko, ConditionType.COMPLETE) == ("False", "RetriesExhausted")
    late = task([{"name": "a", "image": "x/a:1"}], {}, deadline={"seconds": 30})
    dl = derive(late, [], [], CLASSES, NOW).status
    assert _cond(dl, ConditionType.FAILED) == ("True", "DeadlineExceeded")
    assert _cond(dl, ConditionType.COMPLETE) == ("False", "DeadlineExceeded")


def test_cancel_is_ignored_once_the_task_has_finished() -> None:
    status = {"phase": "Succeeded", "subtasks": [{"name": "a", "phase": "Succeeded", "attempts": 1}]}
    t = task([{"name": "a", "image": "x/a:1"}], status, cancel=True)
    prog = derive(t, [], [], CLASSES, NOW)
    assert prog.status.phase == TaskPhase.SUCCEEDED
    assert prog.events == ()
