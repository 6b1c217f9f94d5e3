"""Kueue interop mode: suspended Jobs in a LocalQueue, the scheduler's hand-over, and the status while Kueue waits."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aitask.api import v1alpha1 as api
from aitask.build.jobs import build_job
from aitask.control.cycle import ClusterView, CycleParams, run_cycle
from aitask.core.observed import LABEL_KUEUE_QUEUE, JobView, job_view
from aitask.core.scheduler import schedule
from aitask.core.types import Admission, Option, SchedulerParams, Snapshot, SubtaskKey
from tests.builders import make_class_info, make_demand, make_node_info

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CLASSES = [
    {"metadata": {"name": "fast", "generation": 1},
     "spec": {"nodeSelector": {"nvidia.com/gpu.product": "FAST"}, "accelerator": {"model": "FAST", "memoryGiB": 80},
              "price": {"acceleratorHour": 4.0}, "speed": {"default": 2.0}}},
    {"metadata": {"name": "cheap", "generation": 1},
     "spec": {"nodeSelector": {"nvidia.com/gpu.product": "CHEAP"}, "accelerator": {"model": "CHEAP", "memoryGiB": 24},
              "price": {"acceleratorHour": 0.5}, "speed": {"default": 0.5}}},
]


def _node(name: str, product: str, gpus: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "nvidia.com/gpu.product": product}},
            "spec": {}, "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110",
                                                   "nvidia.com/gpu": str(gpus)},
                                   "conditions": [{"type": "Ready", "status": "True"}]}}


NODES = [_node("f1", "FAST", 1), _node("c1", "CHEAP", 4)]
STEP = {"name": "train", "type": "training", "image": "r/train:1", "executor": {"accelerators": 1},
        "estimate": {"seconds": 600, "onClass": "fast"}}


def body(name: str, subtasks: list[dict[str, Any]], status: dict[str, Any] | None = None,
         **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "aitask.dev/v1alpha1", "kind": "AITask",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "1"},
            "spec": {"subtasks": subtasks, **spec}, "status": status or {}}


def kueue_params(queue: str | None = "default") -> CycleParams:
    return CycleParams(kueue_default_queue=queue)


# ------------------------------------------------------------------------------------------ the Job


def _admission() -> Admission:
    return Admission(key=SubtaskKey("ns", "t", "train"), attempt=1, class_name="fast", nodes=(), accelerators=1,
                     cpu=4, memory=16 * 2**30, chosen=Option(class_name="fast", feasible=True, runtime_seconds=300.0),
                     alternatives=(), message="handed to Kueue")


@pytest.mark.parametrize(("queue", "suspended"), [("team-a", True), (None, False)], ids=["kueue", "off"])
def test_job_carries_the_queue_label_and_is_created_suspended_only_in_kueue_mode(
    queue: str | None, suspended: bool
) -> None:
    task = api.AITask.model_validate(body("t", [STEP]))
    ec = api.ExecutorClassSpec.model_validate(CLASSES[0]["spec"])
    manifest = build_job(task, task.spec.subtasks[0], _admission(), ec, queue_name=queue)
    labels = manifest["metadata"]["labels"]
    assert labels.get(LABEL_KUEUE_QUEUE) == queue
    assert manifest["spec"].get("suspend", False) is suspended
    # The class's selector is still a required node affinity (what Kueue's flavor assignment matches).
    required = manifest["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["FAST"]}]
    view = job_view(manifest)
    assert view is not None
    assert (view.suspended, view.queue_name) == (suspended, queue or "")


def test_task_queue_name_wins_over_the_default_and_is_ignored_without_kueue() -> None:
    own = body("t", [STEP], queueName="team-b")
    out = run_cycle(ClusterView(tasks=[own], jobs=[], pods=[], nodes=NODES, classes=CLASSES), kueue_params(), NOW)
    (manifest,) = out.tasks[0].create_jobs
    assert manifest["metadata"]["labels"][LABEL_KUEUE_QUEUE] == "team-b"
    plain = run_cycle(ClusterView(tasks=[own], jobs=[], pods=[], nodes=NODES, classes=CLASSES), CycleParams(), NOW)
    (manifest,) = plain.tasks[0].create_jobs
    assert LABEL_KUEUE_QUEUE not in manifest["metadata"]["labels"]
    assert "suspend" not in manifest["spec"]


# ------------------------------------------------------------------------------------ the scheduler


def _snapshot(free_gpus: float, demands: int) -> Snapshot:
    classes = {"fast": make_class_info("fast", gpu_mem=80, speed=2.0)}
    node = make_node_info("f1", ["fast"], gpus=2, free={"nvidia.com/gpu": free_gpus})
    ds = tuple(make_demand(f"ns/t{i}/train", by_class={"fast": 100.0}) for i in range(demands))
    return Snapshot(now=0.0, classes=classes, nodes=(node,), demands=ds)


def test_external_queue_hands_demands_over_without_free_capacity_and_books_nothing() -> None:
    snap = _snapshot(free_gpus=0.0, demands=3)
    plain = schedule(snap, SchedulerParams())
    assert plain.admitted == ()  # no GPU free: the operator's own admission waits
    handed = schedule(snap, SchedulerParams(external_queue=True))
    assert [a.key.task for a in handed.admitted] == ["t0", "t1", "t2"]
    assert all(a.nodes == () and a.class_name == "fast" for a in handed.admitted)
    assert handed.deferred == ()
    assert "handed to Kueue on fast" in handed.admitted[0].message
    # W comes from the class timeline: the later hand-overs wait behind the earlier ones.
    waits = [a.chosen.wait_seconds for a in handed.admitted]
    assert waits[0] is not None and waits[2] is not None and waits[2] > waits[0]


def test_external_queue_leaves_free_capacity_unbooked() -> None:
    # Two free GPUs, three demands: the operator alone admits two (packing them); handed to Kueue,
    # all three go and none is packed onto a node, so nothing of the node is held by the operator.
    snap = _snapshot(free_gpus=2.0, demands=3)
    assert len(schedule(snap, SchedulerParams()).admitted) == 2
    handed = schedule(snap, SchedulerParams(external_queue=True))
    assert len(handed.admitted) == 3
    assert {n for a in handed.admitted for n in a.nodes} == set()


# ------------------------------------------------------------------------------------ the status


def _job(name: str, *, suspended: bool, queue: str = "default", **changes: Any) -> JobView:
    view = JobView(namespace="ns", name=name, task="t", subtask="train", attempt=1, class_name="fast", active=0,
                   succeeded=0, failed=0, complete=False, failed_final=False, failure_reason="", failure_message="",
                   start_time=None, completion_time=None, finished_at=None, deleting=False, spec_hash="",
                   accelerators=1, suspended=suspended, queue_name=queue)
    return replace(view, **changes)


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def test_status_says_it_waits_for_kueue_until_the_job_is_unsuspended() -> None:
    # The only FAST GPU is held by another workload: the operator hands the sub-task to Kueue anyway.
    from aitask.core.observed import PodView

    hog = PodView(namespace="other", name="hog", job="", node="f1", phase="Running", terminated_reason="",
                  exit_code=None, deleting=False, requests={"nvidia.com/gpu": "1"})

    def run(status: dict[str, Any] | None, jobs: list[JobView], at: datetime) -> Any:
        view = ClusterView(tasks=[body("t", [{**STEP, "executor": {"accelerators": 1, "classes": ["fast"]}}],
                                       status=status)], jobs=jobs, pods=[hog], nodes=NODES, classes=CLASSES)
        return run_cycle(view, kueue_params("lq"), at).tasks[0]

    first = run(None, [], NOW)
    (manifest,) = first.create_jobs
    assert manifest["spec"]["suspend"] is True
    assert manifest["metadata"]["labels"][LABEL_KUEUE_QUEUE] == "lq"
    assert first.status["subtasks"][0]["phase"] == "Running"
    assert first.status["subtasks"][0]["plan"]["nodes"] == []

    waiting = run(first.status, [_job("t-train-1", suspended=True, queue="lq")], NOW + timedelta(seconds=2))
    sub = waiting.status["subtasks"][0]
    assert sub["message"] == "waiting for Kueue admission (queue lq)"
    cond = _condition(waiting.status, "KueueAdmitted")
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("False", "WaitingForKueueAdmission")
    assert cond["message"] == "train: waiting for Kueue admission (queue lq)"

    # Long past the Job grace: a suspended Job is still the running attempt, not a lost one.
    later = run(waiting.status, [_job("t-train-1", suspended=True, queue="lq")], NOW + timedelta(minutes=30))
    assert later.status is None or later.status["subtasks"][0]["phase"] == "Running"

    admitted = run(waiting.status, [_job("t-train-1", suspended=False, queue="lq", active=1, start_time=NOW)],
                   NOW + timedelta(seconds=4))
    sub = admitted.status["subtasks"][0]
    assert sub["message"].startswith("admitted by Kueue (queue lq)")
    cond = _condition(admitted.status, "KueueAdmitted")
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("True", "AdmittedByKueue")


def test_no_kueue_condition_outside_kueue_mode() -> None:
    first = run_cycle(ClusterView(tasks=[body("t", [STEP])], jobs=[], pods=[], nodes=NODES, classes=CLASSES),
                      CycleParams(), NOW).tasks[0]
    later = run_cycle(ClusterView(tasks=[body("t", [STEP], status=first.status)],
                                  jobs=[_job("t-train-1", suspended=False, queue="", active=1)], pods=[],
                                  nodes=NODES, classes=CLASSES), CycleParams(), NOW + timedelta(seconds=2)).tasks[0]
    for status in (first.status, later.status):
        assert status is None or _condition(status, "KueueAdmitted") is None


@pytest.mark.parametrize(("suspended", "expected_wait"), [(True, 600.0), (False, 500.0)],
                         ids=["suspended-all-ahead", "admitted-100s-ago"])
def test_a_job_kueue_holds_keeps_all_of_its_runtime_in_the_class_wait(suspended: bool, expected_wait: float) -> None:
    # Task a was handed over 300 s ago on the only FAST GPU (T 600 s). Task b, pinned to FAST, then waits
    # behind all 600 s of it while Kueue holds a's Job (no pod, no unit held: reserved on the timeline);
    # once Kueue started it 100 s ago (its pod holds the GPU), behind the 500 s left.
    pinned = {**STEP, "executor": {"accelerators": 1, "classes": ["fast"]}}
    first = run_cycle(ClusterView(tasks=[body("a", [pinned])], jobs=[], pods=[], nodes=NODES, classes=CLASSES),
                      kueue_params(), NOW).tasks[0]
    later = NOW + timedelta(seconds=300)
    job = _job("a-train-1", suspended=suspended, start_time=None if suspended else later - timedelta(seconds=100),
               task="a")
    from aitask.core.observed import PodView

    pods = [] if suspended else [PodView(namespace="ns", name="a-train-1-x", job="a-train-1", node="f1",
                                         phase="Running", terminated_reason="", exit_code=None, deleting=False,
                                         requests={"nvidia.com/gpu": "1"}, managed=True)]
    b = body("b", [pinned])
    out = run_cycle(ClusterView(tasks=[body("a", [pinned], status=first.status), b], jobs=[job], pods=pods,
                                nodes=NODES, classes=CLASSES), kueue_params(), later)
    decided = next(t for t in out.tasks if t.name == "b")
    plan = decided.status["subtasks"][0]["plan"]
    assert plan["class"] == "fast"
    assert plan["score"] == pytest.approx(expected_wait + plan["estimatedSeconds"], abs=1.0)  # F = W + T (alpha 1)
