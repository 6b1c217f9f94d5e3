"""Stuck attempts: pods that are not created or stay Pending are noticed, reported, freed and retried."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from aitask.api.v1alpha1 import AttemptResult, SubtaskPhase, TaskPhase
from aitask.control.cycle import CycleCache, CycleParams, run_cycle
from aitask.core.observed import JobView, PodView, job_view, pod_view
from aitask.core.progress import STUCK_AFTER_SECONDS, derive, next_change, stuck_reason
from aitask.core.reasons import ConditionType, Reason
from aitask.core.scheduling.evaluation import AVOIDED_REASON
from tests.builders import make_demand, make_node_info
from tests.unit.test_cycle_and_build import NOW, body
from tests.unit.test_cycle_isolation import CPU_STEP, admitted, view
from tests.unit.test_progress import CLASSES, T0, job, running, task
from tests.unit.test_scheduler import ONE_EACH, run

AFTER = STUCK_AFTER_SECONDS
PULL = "ImagePullBackOff: Back-off pulling image \"registry.example/missing:1\""
UNSCHEDULABLE = "Unschedulable: 0/9 nodes are available: 9 Insufficient nvidia.com/gpu."
GPU = [{"name": "train", "image": "x/train:1", "type": "training", "retry": {"limit": 1, "backoffSeconds": 1}}]


def pending(job_name: str, waiting: str = PULL, *, created: float = 0.0, node: str | None = "n1") -> PodView:
    return PodView(namespace="ns", name=f"{job_name}-abc", job=job_name, node=node, phase="Pending",
                   terminated_reason="", exit_code=None, deleting=False, requests={}, managed=True,
                   created=T0 + timedelta(seconds=created), waiting=waiting)


def waiting_job(sub: str = "train", attempt: int = 1, *, cls: str = "small", suspended: bool = False) -> JobView:
    """A Job whose pods do not run: nothing active, started at T0."""
    return replace(job(sub, attempt, cls=cls), active=0, created=T0, suspended=suspended)


def at(seconds: float) -> Any:
    return T0 + timedelta(seconds=seconds)


# ------------------------------------------------------------------ the views


def test_pod_view_keeps_why_our_pending_pod_waits_and_nothing_for_other_pods() -> None:
    meta = {"name": "p", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"aitask.dev/task": "t", "batch.kubernetes.io/job-name": "t-train-1"}}
    pull = {"metadata": meta, "spec": {"nodeName": "n1"}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "main", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}}
    view = pod_view(pull)
    assert view.created == T0 and view.waiting == "ImagePullBackOff: Back-off pulling image"
    unsched = {"metadata": meta, "spec": {}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/9 nodes"}]}}
    assert pod_view(unsched).waiting == "Unschedulable: 0/9 nodes"
    creating = {"metadata": meta, "spec": {"nodeName": "n1"}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "main", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    assert pod_view(creating).waiting == "ContainerCreating"
    long = {"metadata": meta, "spec": {}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "main", "state": {"waiting": {"reason": "ErrImagePull", "message": "x" * 5000}}}]}}
    assert len(pod_view(long).waiting) == 200
    other = {**pull, "metadata": {**meta, "labels": {"batch.kubernetes.io/job-name": "theirs"}}}
    assert pod_view(other).created is None and pod_view(other).waiting == ""
    ran = {**pull, "status": {"phase": "Running"}}
    assert pod_view(ran).created is None and pod_view(ran).waiting == ""


def test_job_view_reads_creation_time_and_suspend() -> None:
    body = {"metadata": {"name": "t-a-1", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z",
                         "labels": {"aitask.dev/task": "t", "aitask.dev/subtask": "a", "aitask.dev/attempt": "1"}},
            "spec": {"suspend": True}, "status": {}}
    view = job_view(body)
    assert view is not None and view.created == T0 and view.suspended
    body["spec"] = {}
    view = job_view(body)
    assert view is not None and not view.suspended


# ------------------------------------------------------------------ what counts as stuck


@pytest.mark.parametrize(
    ("jobv", "pods", "seconds", "expected"),
    [
        (waiting_job(), [pending("t-train-1")], AFTER, f"pod t-train-1-abc Pending for 300s: {PULL}"),
        (waiting_job(), [pending("t-train-1", UNSCHEDULABLE, node=None)], AFTER + 12,
         f"pod t-train-1-abc Pending for 312s: {UNSCHEDULABLE}"),
        (waiting_job(), [], AFTER, "Job t-train-1 without a pod for 300s: no pod created (refused by a ResourceQuota "
                                   "or an admission webhook? kubectl describe job t-train-1)"),
        (waiting_job(), [pending("t-train-1")], AFTER - 1, None),
        (waiting_job(), [], AFTER - 1, None),
        (waiting_job(suspended=True), [], AFTER * 10, None),
        (replace(waiting_job(), created=at(-AFTER * 10), start_time=at(AFTER * 10 - 5)), [], AFTER * 10, None),
        (replace(waiting_job(), start_time=None), [], AFTER, "Job t-train-1 without a pod for 300s: no pod created "
                                                           "(refused by a ResourceQuota or an admission webhook? "
                                                           "kubectl describe job t-train-1)"),
        (waiting_job(), [replace(pending("t-train-1"), deleting=True)], AFTER * 10, None),
        (replace(job("train", 1), created=T0), [replace(pending("t-train-1"), phase="Running")], AFTER * 10, None),
        (replace(job("train", 1, state="complete"), created=T0), [], AFTER * 10, None),
    ],
    ids=["image-pull", "unschedulable", "podless", "pod-before-threshold", "podless-before-threshold",
         "suspended-for-kueue", "resumed-moments-ago", "never-synced", "pod-deleting", "pod-running", "finished"],
)
def test_stuck_reason(jobv: JobView, pods: list[PodView], seconds: float, expected: str | None) -> None:
    assert stuck_reason(jobv, pods, at(seconds), AFTER) == expected


def test_the_oldest_pending_pod_is_the_one_named() -> None:
    pods = [replace(pending("t-train-1", created=50), name="young"), replace(pending("t-train-1"), name="old")]
    reason = stuck_reason(waiting_job(), pods, at(AFTER), AFTER)
    assert reason is not None and reason.startswith("pod old Pending for 300s")


# ------------------------------------------------------------------ derive: end, report, free, retry


@pytest.mark.parametrize(
    ("pods", "detail"),
    [([pending("t-train-1")], PULL), ([pending("t-train-1", UNSCHEDULABLE, node=None)], UNSCHEDULABLE),
     ([], "no pod created")],
    ids=["image-pull", "unschedulable", "podless"],
)
def test_a_stuck_attempt_is_ended_reported_its_job_deleted_and_retried(pods: list[PodView], detail: str) -> None:
    t = task(GPU, {"subtasks": [running("train", 1, "small")]})
    prog = derive(t, [waiting_job()], pods, CLASSES, at(AFTER + 12), stuck_after_seconds=AFTER)
    st = prog.status.subtask("train")
    assert st is not None and st.phase == SubtaskPhase.BACKOFF
    (attempt,) = st.history
    assert attempt.result == AttemptResult.STUCK and attempt.finish_time == at(AFTER + 12)
    assert "for 312s" in attempt.reason and detail in attempt.reason
    assert prog.delete_jobs == ("t-train-1",)
    assert [(a.number, a.result) for a, _ in prog.finished] == [(1, AttemptResult.STUCK)]
    stuck_events = [e for e in prog.events if e.reason == Reason.ATTEMPT_STUCK]
    assert len(stuck_events) == 1 and stuck_events[0].type == "Warning" and detail in stuck_events[0].message
    assert any(e.reason == Reason.RETRYING and "avoids small" in e.message for e in prog.events)
    assert "avoids small if another class can run it" in st.message
    condition = next(c for c in prog.status.conditions if c.type == ConditionType.ATTEMPT_STUCK)
    assert condition.status == "True" and condition.reason == Reason.ATTEMPT_STUCK
    assert "train: attempt 1 on small" in condition.message and detail in condition.message
    # The retry avoids the class; once it runs, the condition turns False.
    later = derive(t.model_copy(update={"status": prog.status}), [], [], CLASSES, at(AFTER + 20))
    (ready,) = later.ready
    assert ready.attempt == 2 and ready.avoided_classes == frozenset({"small"})
    assert ready.excluded_classes == frozenset()  # not a hard exclusion: that is OOM escalation's


def test_not_stuck_before_the_threshold_and_no_condition_ever_set() -> None:
    t = task(GPU, {"subtasks": [running("train", 1, "small")]})
    prog = derive(t, [waiting_job()], [pending("t-train-1")], CLASSES, at(AFTER - 1), stuck_after_seconds=AFTER)
    st = prog.status.subtask("train")
    assert st is not None and st.phase == SubtaskPhase.RUNNING and st.history[0].result == AttemptResult.RUNNING
    assert prog.delete_jobs == ()
    assert all(c.type != ConditionType.ATTEMPT_STUCK for c in prog.status.conditions)


def test_a_suspended_job_is_never_stuck() -> None:
    t = task(GPU, {"subtasks": [running("train", 1, "small")]})
    jobs = [waiting_job(suspended=True)]
    prog = derive(t, jobs, [], CLASSES, at(AFTER * 100), stuck_after_seconds=AFTER)
    st = prog.status.subtask("train")
    assert st is not None and st.phase == SubtaskPhase.RUNNING and prog.delete_jobs == ()
    assert next_change(t, prog.status, jobs, [], stuck_after_seconds=AFTER) is None


def test_the_condition_turns_false_when_the_retry_runs() -> None:
    history = [{"number": 1, "job": "t-train-1", "class": "small", "result": "Stuck", "reason": "pod x Pending"},
               {"number": 2, "job": "t-train-2", "class": "big", "startTime": T0.isoformat()}]
    stuck_cond = {"type": "AttemptStuck", "status": "True", "reason": "AttemptStuck", "message": "train: ...",
                  "lastTransitionTime": T0.isoformat()}
    t = task(GPU, {"subtasks": [running("train", 2, "big", history)], "conditions": [stuck_cond]})
    prog = derive(t, [replace(job("train", 2, cls="big"), created=T0)], [], CLASSES, at(10))
    condition = next(c for c in prog.status.conditions if c.type == ConditionType.ATTEMPT_STUCK)
    assert condition.status == "False" and condition.reason == Reason.NO_STUCK_ATTEMPT


def test_a_stuck_attempt_counts_against_the_retry_limit() -> None:
    history = [{"number": 1, "job": "t-train-1", "class": "small", "result": "Stuck", "reason": "pod x Pending"},
               {"number": 2, "job": "t-train-2", "class": "small", "startTime": T0.isoformat()}]
    t = task(GPU, {"subtasks": [running("train", 2, "small", history)]})
    prog = derive(t, [waiting_job(attempt=2)], [pending("t-train-2")], CLASSES, at(AFTER), stuck_after_seconds=AFTER)
    st = prog.status.subtask("train")
    assert st is not None and st.phase == SubtaskPhase.FAILED
    assert [a.result for a in st.history] == [AttemptResult.STUCK, AttemptResult.STUCK]
    assert prog.status.phase == TaskPhase.FAILED
    assert prog.delete_jobs == ("t-train-2",)
    assert any(e.reason == Reason.RETRIES_EXHAUSTED for e in prog.events)
    condition = next(c for c in prog.status.conditions if c.type == ConditionType.ATTEMPT_STUCK)
    assert condition.status == "True"  # what ended the task stays visible


@pytest.mark.parametrize(
    ("pods", "wake"),
    [([pending("t-train-1", created=7)], 7 + AFTER), ([], AFTER),
     ([pending("t-train-1", created=9), pending("t-train-1", created=3)], 3 + AFTER)],
    ids=["pending-pod", "podless-job", "oldest-pod"],
)
def test_next_change_is_when_the_attempt_would_become_stuck(pods: list[PodView], wake: float) -> None:
    t = task(GPU, {"subtasks": [running("train", 1, "small")]})
    jobs = [waiting_job()]
    prog = derive(t, jobs, pods, CLASSES, at(1), stuck_after_seconds=AFTER)
    assert next_change(t, prog.status, jobs, pods, stuck_after_seconds=AFTER) == at(wake)
    due = derive(t, jobs, pods, CLASSES, at(wake), stuck_after_seconds=AFTER)
    assert due.delete_jobs == ("t-train-1",)


# ------------------------------------------------------------------ re-planning: a soft exclusion


def test_the_retry_goes_to_another_class_when_one_fits() -> None:
    result = run([make_demand("a/s", by_class={"v100": 100.0, "p100": 150.0, "k80": 400.0}, avoided={"v100"})],
                 ONE_EACH)
    (adm,) = result.admitted
    assert adm.class_name == "p100"
    assert any(o.class_name == "v100" and o.reason == AVOIDED_REASON for o in adm.alternatives)


def test_the_retry_stays_on_the_class_when_it_is_the_only_one() -> None:
    result = run([make_demand("a/s", classes=["v100"], avoided={"v100"})], ONE_EACH)
    (adm,) = result.admitted
    assert adm.class_name == "v100"
    nodes = (make_node_info("v1", ["v100"], gpus=1), make_node_info("c1", ["cpu"], cpu=16))
    # Another class that cannot run it (no node) does not count as one that fits.
    assert run([make_demand("a/s", avoided={"v100"})], nodes).admitted[0].class_name == "v100"


# ------------------------------------------------------------------ the cycle wakes without any event


def test_the_cycle_wakes_when_a_pending_pod_becomes_stuck_and_deletes_its_job() -> None:
    cache = CycleCache()
    params = CycleParams(stuck_after_seconds=30)
    first = run_cycle(view([body("t", [CPU_STEP])]), params, NOW, cache)
    assert admitted(first) == {"t"}
    t = body("t", [CPU_STEP], status=first.tasks[0].status)
    t["metadata"]["resourceVersion"] = "2"
    jobv = JobView(namespace="ns", name="t-prep-1", task="t", subtask="prep", attempt=1, class_name="cpu",
                   active=1, succeeded=0, failed=0, complete=False, failed_final=False, failure_reason="",
                   failure_message="", start_time=NOW, completion_time=None, finished_at=None, deleting=False,
                   spec_hash="", created=NOW)
    pod = PodView(namespace="ns", name="t-prep-1-x", job="t-prep-1", node=None, phase="Pending",
                  terminated_reason="", exit_code=None, deleting=False, requests={}, managed=True,
                  created=NOW + timedelta(seconds=1), waiting="ErrImagePull: not found")
    waiting = run_cycle(view([t], jobs=[jobv], pods=[pod]), params, NOW + timedelta(seconds=2), cache)
    assert waiting.stats.next_wakeup == NOW + timedelta(seconds=31)
    assert all(not o.delete_jobs for o in waiting.tasks)
    idle = run_cycle(view([t], jobs=[jobv], pods=[pod]), params, NOW + timedelta(seconds=20), cache)
    assert idle.stats.derived == 0
    due = run_cycle(view([t], jobs=[jobv], pods=[pod]), params, NOW + timedelta(seconds=31), cache)
    assert due.stats.derived == 1
    (out,) = due.tasks
    assert out.delete_jobs == ("t-prep-1",)
    assert out.status is not None
    (sub,) = out.status["subtasks"]
    assert sub["phase"] == "Backoff" and sub["history"][0]["result"] == "Stuck"
    assert "ErrImagePull: not found" in sub["history"][0]["reason"]
    assert [e.reason for e in out.events].count("AttemptStuck") == 1
