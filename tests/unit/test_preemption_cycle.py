"""Preemption through the control cycle: status, Events, the Job's deletion after the status write,
at most one Job per sub-task, work carried over, and the resumed attempt's estimate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aitask.api.v1alpha1 import AITask, AttemptResult
from aitask.control.cycle import ClusterView, CycleParams, run_cycle
from aitask.core.observed import JobView, PodView
from aitask.core.progress import derive
from aitask.core.resume import work_done
from tests.unit.test_cycle_and_build import CLASSES, body, node

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
START = NOW - timedelta(hours=2)
NODES = [node("f1", gpus=1, product="FAST"), node("p1")]
PREEMPTIBLE = {"allowed": True, "gracePeriodSeconds": 120, "resumeOverheadSeconds": 60}


def long_step(preemption: dict[str, Any] | None = PREEMPTIBLE) -> dict[str, Any]:
    step: dict[str, Any] = {"name": "train", "type": "training", "image": "r/train:1", "executor": {"accelerators": 1},
                            "estimate": {"seconds": 100_000, "onClass": "fast"}}
    if preemption is not None:
        step["preemption"] = preemption
    return step


SHORT = {"name": "train", "type": "training", "image": "r/short:1",
         "executor": {"accelerators": 1, "classes": ["fast"]},
         "estimate": {"seconds": 600, "onClass": "fast"}}


def running_status(**attempt: Any) -> dict[str, Any]:
    return {"phase": "Running", "subtasks": [{
        "name": "train", "phase": "Running", "attempts": 1, "job": "long-train-1", "startTime": START.isoformat(),
        "nodes": ["f1"],
        "plan": {"class": "fast", "estimatedSeconds": 100_000, "estimatedCost": 10.0, "accelerators": 1, "cpu": "4",
                 "memory": "16Gi", "nodes": ["f1"]},
        "history": [{"number": 1, "job": "long-train-1", "class": "fast", "startTime": START.isoformat(), **attempt}],
    }]}


def job(name: str = "long-train-1", *, deleting: bool = False) -> JobView:
    return JobView(namespace="ns", name=name, task="long", subtask="train", attempt=1, class_name="fast", active=1,
                   succeeded=0, failed=0, complete=False, failed_final=False, failure_reason="", failure_message="",
                   start_time=START, completion_time=None, finished_at=None, deleting=deleting, spec_hash="")


def pod(progress: float | None = None) -> PodView:
    return PodView(namespace="ns", name="long-train-1-x", job="long-train-1", node="f1", phase="Running",
                   terminated_reason="", exit_code=None, deleting=False,
                   requests={"nvidia.com/gpu": "1", "cpu": "4", "memory": "16Gi"}, managed=True, progress=progress)


def cycle(tasks: list[dict[str, Any]], jobs: list[JobView], pods: list[PodView], now: datetime = NOW) -> Any:
    return run_cycle(ClusterView(tasks=tasks, jobs=jobs, pods=pods, nodes=NODES, classes=CLASSES),
                     CycleParams(), now)


def outcome(out: Any, name: str) -> Any:
    return next(t for t in out.tasks if t.name == name)


def test_a_short_task_preempts_a_long_preemptible_one_which_resumes_with_the_work_left() -> None:
    long_body = body("long", [long_step()], status=running_status())
    short_body = body("short", [SHORT], priority=10)
    first = cycle([long_body, short_body], [job()], [pod()])
    stopped = outcome(first, "long")
    sub = stopped.status["subtasks"][0]
    last = sub["history"][-1]
    assert last["result"] == "Preempted"
    assert last["preemptedBy"] == "ns/short/train"
    assert last["progress"] == pytest.approx(7200 / 100_000)
    assert sub["phase"] == "Queued"
    assert sub["progress"] == pytest.approx(0.072)
    assert [e.reason for e in stopped.events] == ["Preempted"]
    assert stopped.delete_jobs == ()  # the status write comes first; the next cycle deletes the Job
    assert [e.result for e in stopped.finished] == [AttemptResult.PREEMPTED]
    assert outcome(first, "short").create_jobs == ()  # the GPU is still held

    # Next cycle, status written, Job still there: it is deleted, and no second Job is started.
    written = body("long", [long_step()], status=stopped.status)
    second = cycle([written, short_body], [job()], [pod()], NOW + timedelta(seconds=1))
    assert outcome(second, "long").delete_jobs == ("long-train-1",)
    assert outcome(second, "long").create_jobs == ()
    # While the Job's pods end (grace period), still no second Job, and nothing else is stopped.
    third = cycle([written, short_body], [job(deleting=True)], [pod()], NOW + timedelta(seconds=30))
    assert outcome(third, "long").create_jobs == ()
    assert outcome(third, "long").delete_jobs == ()

    # The Job is gone and the short task runs elsewhere... here the only GPU is free: the short task
    # (higher ratio) is admitted first; alone, the long one resumes with what is left plus the overhead.
    alone = cycle([written], [], [], NOW + timedelta(seconds=200))
    (manifest,) = outcome(alone, "long").create_jobs
    assert manifest["metadata"]["name"] == "long-train-2"
    resumed = outcome(alone, "long").status["subtasks"][0]
    assert resumed["plan"]["estimatedSeconds"] == pytest.approx(100_000 * (1 - 0.072) + 60, rel=1e-3)
    assert resumed["history"][-1]["progressStart"] == pytest.approx(0.072)
    assert resumed["history"][0]["result"] == "Preempted"
    assert manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120


def test_a_non_preemptible_task_is_never_stopped() -> None:
    long_body = body("long", [long_step(None)], status=running_status())
    out = cycle([long_body, body("short", [SHORT], priority=10)], [job()], [pod()])
    assert outcome(out, "long").status is None or all(
        a.get("result", "Running") == "Running" for a in outcome(out, "long").status["subtasks"][0]["history"]
    )
    assert outcome(out, "long").events == ()


def test_the_workloads_progress_report_wins() -> None:
    out = cycle([body("long", [long_step()], status=running_status()), body("short", [SHORT], priority=10)],
                [job()], [pod(progress=0.5)])
    assert outcome(out, "long").status["subtasks"][0]["progress"] == pytest.approx(0.5)


def test_killed_between_delete_and_status_write_neither_loses_nor_duplicates() -> None:
    # Only the status write can record a preemption, and it comes before the delete: the one way to
    # be killed "between" them is with the status written and the Job not yet deleted.
    stopped = cycle([body("long", [long_step()], status=running_status()), body("short", [SHORT], priority=10)],
                    [job()], [pod()])
    written = outcome(stopped, "long").status
    t = AITask.model_validate(body("long", [long_step()], status=written))
    again = derive(t, [job()], [pod()], {}, NOW + timedelta(minutes=5))
    assert again.delete_jobs == ("long-train-1",)
    assert again.ready == ()  # the next attempt waits for the Job to go
    sub = again.status.subtask("train")
    assert sub is not None and [a.result for a in sub.history] == [AttemptResult.PREEMPTED]
    gone = derive(t, [], [], {}, NOW + timedelta(minutes=10))
    assert [r.attempt for r in gone.ready] == [2]
    assert gone.events == ()  # nothing counted as a failure or a retry


def test_a_suspended_preemptible_subtask_keeps_its_progress() -> None:
    t = AITask.model_validate(body("long", [long_step()], status=running_status(), suspend=True))
    prog = derive(t, [job()], [pod()], {}, NOW)
    sub = prog.status.subtask("train")
    assert sub is not None and sub.history[-1].result == AttemptResult.SUSPENDED
    assert sub.progress == pytest.approx(0.072)


def test_work_done_counts_the_resume_overhead_out() -> None:
    t = AITask.model_validate(body("long", [long_step()], status=running_status(progressStart=0.5)))
    sub = t.status.subtask("train")
    assert sub is not None and sub.plan is not None
    # 50% left of 100,000 s, plus 60 s overhead: the plan says 50,060 s; 7,200 s ran, 60 of them overhead.
    plan = sub.plan.model_copy(update={"estimated_seconds": 50_060.0})
    done = work_done(t.spec.subtasks[0], sub.history[-1], plan, NOW)
    assert done == pytest.approx(0.5 + (7200 - 60) / 100_000)


def test_the_plan_preview_shows_the_preemption_the_operator_would_make() -> None:
    """``aitask plan --kubeconfig`` plans on ``cluster_snapshot`` of the live cluster: the running
    preemptible work is in it with the demand it would resume as, so the preview of a short
    high-priority task names the work it would stop, and a non-preemptible one is never named."""
    from aitask.control.cycle import cluster_snapshot
    from aitask.core.planner import plan_task
    from aitask.core.types import SchedulerParams

    for preemption, expected in ((PREEMPTIBLE, ["ns/long/train"]), (None, [])):
        view = ClusterView(tasks=[body("long", [long_step(preemption)], status=running_status())], jobs=[job()],
                           pods=[pod()], nodes=NODES, classes=CLASSES)
        snap = cluster_snapshot(view, CycleParams(), NOW)
        assert [str(r.key) for r in snap.running] == ["ns/long/train"] and not snap.demands
        assert (snap.running[0].resume is not None) == (preemption is not None)
        short = AITask.model_validate(body("short", [SHORT], priority=10))
        plan = plan_task(short, snap.classes, snap.nodes, now=snap.now, learned=snap.learned, running=snap.running,
                         limits=snap.limits, params=SchedulerParams())
        sub = plan.subtasks[0]
        assert [str(p.key) for p in sub.preempts] == expected
        assert not sub.admissible_now  # the GPU is held until the stopped pod is gone
        if expected:
            assert sub.preempts[0].by is not None and str(sub.preempts[0].by) == "ns/short/train"
