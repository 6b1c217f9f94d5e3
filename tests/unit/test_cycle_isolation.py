"""One bad AITask must not stop the cluster; a cycle's work follows what changed; capacity books."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from aitask.api import v1alpha1 as api
from aitask.control import cycle as cycle_mod
from aitask.control.cycle import ClusterView, CycleCache, CycleParams, FinishedTask, parse_task, run_cycle
from aitask.core import progress
from aitask.core.observed import JobView, PodView, job_view, label_value
from tests.unit.test_cycle_and_build import CLASSES, GPU_STEP, NODES, NOW, body

CPU_STEP = {"name": "prep", "type": "preprocess", "image": "r/prep:1", "estimate": {"seconds": 60}}


def view(tasks: list[dict[str, Any]], **kw: Any) -> ClusterView:
    return ClusterView(tasks=tasks, jobs=kw.pop("jobs", []), pods=kw.pop("pods", []), nodes=NODES,
                       classes=kw.pop("classes", CLASSES), **kw)


def admitted(out: Any) -> set[str]:
    return {t.name for t in out.tasks if t.create_jobs}


# ------------------------------------------------------------------ values the API server accepted before


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"deadline": {"seconds": 10**12}}, "spec.deadline.seconds"),
        ({"subtasks": [{**CPU_STEP, "estimate": {"seconds": 1e308}}]}, "spec.subtasks[0].estimate.seconds"),
        ({"subtasks": [{**CPU_STEP, "estimate": {"secondsByClass": {"cpu": 1e308}}}]},
         "spec.subtasks[0].estimate.secondsByClass.cpu"),
        ({"subtasks": [{**CPU_STEP, "timeoutSeconds": 10**12}]}, "spec.subtasks[0].timeoutSeconds"),
        ({"subtasks": [{**CPU_STEP, "work": {"units": 1e300}}]}, "spec.subtasks[0].work.units"),
        ({"objective": {"timeWeight": 1e300}}, "spec.objective.timeWeight"),
        ({"subtasks": [{**CPU_STEP, "executor": {"cpu": "1e308"}}]}, "spec.subtasks[0].executor.cpu"),
    ],
    ids=["deadline", "estimate", "seconds-by-class", "timeout", "work", "weight", "quantity-exponent"],
)
def test_out_of_range_values_are_invalid_naming_the_field_and_the_rest_is_scheduled(
    spec: dict[str, Any], field: str
) -> None:
    bad = body("bad", spec.pop("subtasks", [CPU_STEP]), **spec)
    good = body("good", [CPU_STEP])
    out = run_cycle(view([bad, good]), CycleParams(), NOW)
    by_name = {t.name: t for t in out.tasks}
    assert by_name["bad"].status is not None
    assert by_name["bad"].status["phase"] == "Invalid"
    (condition,) = [c for c in by_name["bad"].status["conditions"] if c["type"] == "InvalidSpec"]
    assert field in condition["message"]
    assert admitted(out) == {"good"}


def test_the_crd_schema_carries_the_same_bounds() -> None:
    from aitask.api.crdgen import aitask_crd

    schema = aitask_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    sub = schema["properties"]["subtasks"]["items"]["properties"]
    assert schema["properties"]["deadline"]["properties"]["seconds"]["maximum"] == api.MAX_SECONDS
    assert sub["estimate"]["properties"]["seconds"]["maximum"] == api.MAX_SECONDS
    assert sub["estimate"]["properties"]["secondsByClass"]["additionalProperties"]["maximum"] == api.MAX_SECONDS
    assert sub["timeoutSeconds"]["maximum"] == api.MAX_SECONDS
    assert sub["work"]["properties"]["units"]["maximum"] == api.MAX_WORK_UNITS


# ------------------------------------------------------------------ a task whose processing raises


def test_a_task_whose_progress_raises_gets_internal_error_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = progress.derive

    def derive(task: api.AITask, *args: Any, **kw: Any) -> Any:
        if task.metadata.name == "boom":
            raise OverflowError("date value out of range")
        return real(task, *args, **kw)

    monkeypatch.setattr(progress, "derive", derive)
    out = run_cycle(view([body("boom", [CPU_STEP]), body("good", [CPU_STEP])]), CycleParams(), NOW)
    by_name = {t.name: t for t in out.tasks}
    assert admitted(out) == {"good"}
    status = by_name["boom"].status
    assert status is not None
    (condition,) = [c for c in status["conditions"] if c["type"] == "InternalError"]
    assert condition["status"] == "True" and "OverflowError: date value out of range" in condition["message"]
    assert [e.reason for e in by_name["boom"].events] == ["ProcessingFailed"]
    assert [(e.task, e.error) for e in out.stats.errors] == [("ns/boom", "OverflowError")]
    # The condition is written once: the same failure on the written status changes nothing.
    again = run_cycle(view([body("boom", [CPU_STEP], status=status)]), CycleParams(), NOW + timedelta(seconds=5))
    assert [t.status for t in again.tasks] == [None]
    assert [t.events for t in again.tasks] == [()]


def test_a_task_that_makes_the_scheduler_raise_is_found_and_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cycle_mod.scheduler.schedule

    def schedule(snap: Any, params: Any) -> Any:
        if any(d.key.task == "poison" for d in snap.demands):
            raise KeyError(-1)
        return real(snap, params)

    monkeypatch.setattr(cycle_mod.scheduler, "schedule", schedule)
    names = ["a", "b", "poison", "c", "d"]
    out = run_cycle(view([body(n, [CPU_STEP]) for n in names]), CycleParams(), NOW)
    assert admitted(out) == {"a", "b", "c", "d"}
    assert [(e.task, e.error) for e in out.stats.errors] == [("ns/poison", "KeyError")]
    poison = next(t for t in out.tasks if t.name == "poison")
    assert poison.status is not None and not poison.create_jobs


def test_a_scheduler_bug_on_the_whole_queue_still_fails_the_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    def schedule(snap: Any, params: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(cycle_mod.scheduler, "schedule", schedule)
    with pytest.raises(RuntimeError, match="bug"):  # not any task's fault: the cycle fails (liveness counts it)
        run_cycle(view([body("a", [CPU_STEP])]), CycleParams(), NOW)


def test_a_job_the_api_server_refused_makes_the_task_invalid_until_it_is_edited() -> None:
    t = body("t", [CPU_STEP])
    message = "the API server refused the child Job t-prep-1: metadata.labels: Invalid value"
    out = run_cycle(view([t], rejected={"ns/t": (1, message)}), CycleParams(), NOW)
    (task,) = out.tasks
    assert task.status is not None and task.status["phase"] == "Invalid" and not task.create_jobs
    (condition,) = [c for c in task.status["conditions"] if c["type"] == "InvalidSpec"]
    assert condition["reason"] == "JobRejected" and condition["message"] == message
    edited = {**t, "metadata": {**t["metadata"], "generation": 2}, "status": task.status}
    again = run_cycle(view([edited], rejected={"ns/t": (1, message)}), CycleParams(), NOW)
    assert admitted(again) == {"t"}


# ------------------------------------------------------------------ names longer than a label value


def test_long_names_get_hashed_label_values_and_the_full_name_in_annotations() -> None:
    name = "a" * 200
    out = run_cycle(view([body(name, [CPU_STEP])]), CycleParams(), NOW)
    (manifest,) = out.tasks[0].create_jobs
    labels = manifest["metadata"]["labels"]
    assert all(len(v) <= 63 for v in labels.values())
    assert labels["aitask.dev/task"] == label_value(name) != name
    assert manifest["metadata"]["annotations"]["aitask.dev/task-name"] == name
    assert len(manifest["metadata"]["name"]) <= 63
    pod_labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert all(len(v) <= 63 for v in pod_labels.values())
    seen = job_view(manifest)
    assert seen is not None and seen.task == name  # the Job is found again under its task
    assert label_value(name) == label_value(name) and label_value("b" * 200) != label_value(name)


# ------------------------------------------------------------------ incremental reconcile


def finished_records(n: int) -> list[FinishedTask]:
    return [FinishedTask(namespace="ns", name=f"done-{i}", uid=f"u{i}", phase="Succeeded") for i in range(n)]


def test_a_cycle_derives_only_the_tasks_whose_inputs_changed() -> None:
    cache = CycleCache()
    active = [body(f"t{i}", [{**CPU_STEP, "executor": {"cpu": "64"}}]) for i in range(10)]  # 1 fits at a time
    first = run_cycle(view(active, finished=finished_records(2000)), CycleParams(), NOW, cache)
    assert first.stats.parsed == 10 and first.stats.derived == 10
    assert first.stats.tasks_by_phase[("ns", "Succeeded")] == 2000
    statuses = {t.name: t.status for t in first.tasks}
    written = [{**b, "metadata": {**b["metadata"], "resourceVersion": "2"}, "status": statuses[b["metadata"]["name"]]}
               for b in active]
    second = run_cycle(view(written, finished=finished_records(2000)), CycleParams(), NOW + timedelta(seconds=1),
                       cache)
    assert second.stats.parsed == 10 and second.stats.derived == 10  # each changed once: its status was written
    third = run_cycle(view(written, finished=finished_records(2000)), CycleParams(), NOW + timedelta(seconds=2),
                      cache)
    assert third.stats.parsed == 0 and third.stats.derived == 0
    assert [t for t in third.tasks if t.writes or t.events] == []  # the queue still waits, with nothing to write


def test_a_time_a_task_waits_for_brings_it_back() -> None:
    failed = JobView(namespace="ns", name="t-prep-1", task="t", subtask="prep", attempt=1, class_name="cpu",
                     active=0, succeeded=0, failed=1, complete=False, failed_final=True,
                     failure_reason="BackoffLimitExceeded", failure_message="", start_time=NOW,
                     completion_time=None, finished_at=NOW + timedelta(seconds=5), deleting=False, spec_hash="")
    cache = CycleCache()
    params = CycleParams(backoff_seconds=30)
    first = run_cycle(view([body("t", [CPU_STEP])]), params, NOW, cache).tasks[0].status
    t = body("t", [CPU_STEP], status=first)
    t["metadata"]["resourceVersion"] = "2"
    backoff = run_cycle(view([t], jobs=[failed]), params, NOW + timedelta(seconds=6), cache).tasks[0].status
    assert backoff is not None and backoff["subtasks"][0]["phase"] == "Backoff"
    t = {**t, "metadata": {**t["metadata"], "resourceVersion": "3"}, "status": backoff}
    waiting = run_cycle(view([t], jobs=[failed]), params, NOW + timedelta(seconds=7), cache)
    assert waiting.stats.derived == 1 and not admitted(waiting)
    assert waiting.stats.next_wakeup is not None
    idle = run_cycle(view([t], jobs=[failed]), params, NOW + timedelta(seconds=8), cache)
    assert idle.stats.derived == 0
    due = run_cycle(view([t], jobs=[failed]), params, waiting.stats.next_wakeup + timedelta(seconds=1), cache)
    assert due.stats.derived == 1 and admitted(due) == {"t"}


def test_finished_tasks_are_left_alone_but_their_leftovers_are_cleaned() -> None:
    running = JobView(namespace="ns", name="done-0-x-1", task="done-0", subtask="x", attempt=1, class_name="cpu",
                      active=1, succeeded=0, failed=0, complete=False, failed_final=False, failure_reason="",
                      failure_message="", start_time=NOW, completion_time=None, finished_at=None, deleting=False,
                      spec_hash="")
    out = run_cycle(view([], finished=finished_records(3), jobs=[running]), CycleParams(), NOW)
    (leftover,) = out.tasks
    assert leftover.name == "done-0" and leftover.delete_jobs == ("done-0-x-1",) and leftover.status is None
    invalid = [FinishedTask(namespace="ns", name="done-0", uid="u", phase="Invalid")]
    assert run_cycle(view([], finished=invalid, jobs=[running]), CycleParams(), NOW).tasks == ()


# ------------------------------------------------------------------ capacity books


def shard_pod(i: int, node: str, phase: str) -> PodView:
    return PodView(namespace="ns", name=f"t-train-1-{i}", job="t-train-1", node=node, phase=phase,
                   terminated_reason="", exit_code=None, deleting=False,
                   requests={"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"})


def test_finished_shards_of_a_running_indexed_job_are_not_reserved() -> None:
    sharded = {**GPU_STEP, "parallelism": 4, "executor": {"accelerators": 1, "classes": ["fast"]}}
    first = run_cycle(view([body("t", [sharded])]), CycleParams(), NOW).tasks[0]
    (manifest,) = first.create_jobs
    assert first.status is not None
    job = job_view({**manifest, "status": {"active": 1, "succeeded": 3, "startTime": "2026-01-01T00:00:01Z"}})
    assert job is not None and job.parallelism == 4 and job.completions == 4
    pods = [shard_pod(0, "f1", "Succeeded"), shard_pod(1, "f1", "Succeeded"), shard_pod(2, "f1", "Succeeded"),
            shard_pod(3, "f1", "Running")]
    t = body("t", [sharded], status=first.status)
    out = run_cycle(view([t], jobs=[job], pods=pods), CycleParams(), NOW + timedelta(seconds=10))
    allocated = out.class_status["fast"]["allocated"]["accelerators"]
    assert allocated == 1  # 3 of 4 shards done: one GPU held, not four


def test_unbound_admitted_pods_are_reserved_at_their_planned_nodes() -> None:
    sharded = {**GPU_STEP, "parallelism": 4, "executor": {"accelerators": 1, "classes": ["fast"]}}
    first = run_cycle(view([body("t", [sharded])]), CycleParams(), NOW).tasks[0]
    t = body("t", [sharded], status=first.status)
    out = run_cycle(view([t]), CycleParams(), NOW + timedelta(seconds=1))  # the Job is not seen yet
    assert out.class_status["fast"]["allocated"]["accelerators"] == 4


# ------------------------------------------------------------------ the 409 path


def test_an_existing_job_of_another_class_is_what_the_status_records() -> None:
    first = run_cycle(view([body("t", [GPU_STEP])]), CycleParams(), NOW).tasks[0]
    (manifest,) = first.create_jobs
    assert first.status is not None
    chosen = first.status["subtasks"][0]["plan"]["class"]
    other = "cheap" if chosen != "cheap" else "fast"
    labels = {**manifest["metadata"]["labels"], "aitask.dev/class": other}
    annotations = {**manifest["metadata"]["annotations"], "aitask.dev/class-name": other,
                   "aitask.dev/planned-nodes": "c1"}
    theirs = job_view({**manifest, "metadata": {**manifest["metadata"], "labels": labels,
                                                "annotations": annotations},
                       "status": {"active": 1, "startTime": "2026-01-01T00:00:01Z"}})
    assert theirs is not None
    out = run_cycle(view([body("t", [GPU_STEP], status=first.status)], jobs=[theirs]), CycleParams(),
                    NOW + timedelta(seconds=2)).tasks[0]
    assert out.status is not None
    sub = out.status["subtasks"][0]
    assert sub["plan"]["class"] == other
    assert sub["history"][-1]["class"] == other
    assert not out.create_jobs


def test_a_job_found_without_its_status_write_is_adopted_with_an_event() -> None:
    first = run_cycle(view([body("t", [GPU_STEP])]), CycleParams(), NOW).tasks[0]
    seen = job_view({**first.create_jobs[0], "status": {"active": 1}})
    assert seen is not None
    out = run_cycle(view([body("t", [GPU_STEP])], jobs=[seen]), CycleParams(), NOW + timedelta(seconds=1)).tasks[0]
    assert out.status is not None and not out.create_jobs
    assert out.status["subtasks"][0]["phase"] == "Running"
    assert out.status["subtasks"][0]["plan"]["class"] == seen.class_name
    assert [e.reason for e in out.events] == ["AttemptAdopted"]


def test_parse_task_names_a_dependency_cycle() -> None:
    task, problem = parse_task(body("c", [{"name": "a", "image": "x", "dependsOn": ["a"]}]))
    assert task is None and "dependsOn" in problem


def test_the_status_carries_the_critical_path_estimate() -> None:
    steps = [{**CPU_STEP, "name": "a"}, {**CPU_STEP, "name": "b", "dependsOn": ["a"]},
             {**CPU_STEP, "name": "c", "dependsOn": ["a"], "estimate": {"seconds": 600}}]
    out = run_cycle(view([body("t", steps)]), CycleParams(), NOW).tasks[0]
    assert out.status is not None
    # Only "a" is ready and planned yet: the path is its T; the others join as they are planned.
    plan_a = out.status["subtasks"][0]["plan"]["estimatedSeconds"]
    assert out.status["estimatedSeconds"] == pytest.approx(plan_a)
    task = api.AITask.model_validate(body("t", steps, status=out.status))
    done = [s.model_copy(update={"phase": api.SubtaskPhase.SUCCEEDED, "actual_seconds": 5.0}) if s.name == "a"
            else s for s in task.status.subtasks]
    b = next(s for s in done if s.name == "b")
    c_plan = api.Plan(class_name="cpu", estimated_seconds=600.0)
    done = [s.model_copy(update={"plan": c_plan}) if s.name == "c" else s for s in done]
    assert b.plan is None
    assert progress.estimated_seconds(task, done) == pytest.approx(605.0)  # a (actual) then c, the longer branch


def test_a_job_we_created_is_not_taken_for_lost_however_late_the_watch_shows_it() -> None:
    first = run_cycle(view([body("t", [CPU_STEP])]), CycleParams(), NOW).tasks[0]
    assert first.status is not None
    name = first.create_jobs[0]["metadata"]["name"]
    later = NOW + timedelta(seconds=300)  # far past the visibility grace
    t = body("t", [CPU_STEP], status=first.status)
    lost = run_cycle(view([t]), CycleParams(), later).tasks[0]
    assert lost.status is not None and lost.status["subtasks"][0]["history"][0]["result"] == "Failed"
    waiting = run_cycle(view([t], unseen_jobs={"ns": frozenset({name})}), CycleParams(), later).tasks
    assert all(o.status is None and not o.create_jobs for o in waiting)


def test_a_one_step_task_costs_two_status_writes_and_two_events() -> None:
    """Admission and success. Seeing the Job is no news, nor its pod bound where it was planned."""
    writes, events = 0, []
    out = run_cycle(view([body("t", [CPU_STEP])]), CycleParams(), NOW).tasks[0]
    status = out.status
    writes += 1
    events += [e.reason for e in out.events]
    manifest = out.create_jobs[0]
    job = job_view({**manifest, "status": {"active": 1, "startTime": "2026-01-01T00:00:01Z"}})
    pod = PodView(namespace="ns", name="p", job=manifest["metadata"]["name"], node="p1", phase="Running",
                  terminated_reason="", exit_code=None, deleting=False, requests={"cpu": "1"}, managed=True)
    done = job_view({**manifest, "status": {"succeeded": 1, "startTime": "2026-01-01T00:00:01Z",
                                            "completionTime": "2026-01-01T00:00:09Z",
                                            "conditions": [{"type": "Complete", "status": "True"}]}})
    steps = [([job], []), ([job], [pod]), ([done], [replace_phase(pod, "Succeeded")])]
    for i, (jobs, pods) in enumerate(steps, start=1):
        out = run_cycle(view([body("t", [CPU_STEP], status=status)], jobs=jobs, pods=pods), CycleParams(),
                        NOW + timedelta(seconds=i)).tasks[0]
        if out.status is not None:
            writes += 1
            status = out.status
            events += [e.reason for e in out.events]
    assert status is not None and status["phase"] == "Succeeded"
    assert writes == 2
    assert events == ["AttemptStarted", "AllSucceeded"]


def replace_phase(pod: PodView, phase: str) -> PodView:
    from dataclasses import replace as dc_replace

    return dc_replace(pod, phase=phase)


def test_a_class_full_of_other_workloads_pods_is_not_planned_as_free() -> None:
    """fast is the better class but every GPU of it is held by pods the operator did not start."""
    foreign = [PodView(namespace="other", name=f"x{i}", job="", node="f1", phase="Running", terminated_reason="",
                       exit_code=None, deleting=False, requests={"nvidia.com/gpu": "1", "cpu": "1"})
               for i in range(4)]
    step = {**GPU_STEP, "executor": {"accelerators": 1, "classes": ["fast", "cheap"]}}
    out = run_cycle(view([body("t", [step])], pods=foreign), CycleParams(), NOW).tasks[0]
    assert [m["metadata"]["labels"]["aitask.dev/class"] for m in out.create_jobs] == ["cheap"]


def test_a_class_status_whose_allocation_alone_moved_is_written_at_most_every_ten_seconds() -> None:
    ExecutorClassStatus, Learned, ResourceTotals = api.ExecutorClassStatus, api.Learned, api.ResourceTotals
    due, refresh = cycle_mod._class_status_due, cycle_mod.CLASS_ALLOCATION_REFRESH_SECONDS
    old = ExecutorClassStatus(capacity=ResourceTotals(nodes=2, cpu=16), allocated=ResourceTotals(cpu=2),
                              observed_generation=1, updated_at=NOW)
    moved = old.model_copy(update={"allocated": ResourceTotals(cpu=3)})
    assert not due(old, old, NOW + timedelta(hours=1))  # nothing changed: never
    assert not due(old, moved, NOW + timedelta(seconds=refresh - 1))
    assert due(old, moved, NOW + timedelta(seconds=refresh))
    assert due(old.model_copy(update={"updated_at": None}), moved, NOW)  # never written by us
    # Capacity, what was learned and the spec generation are written at once.
    soon = NOW + timedelta(seconds=1)
    assert due(old, old.model_copy(update={"capacity": ResourceTotals(nodes=3, cpu=24)}), soon)
    assert due(old, old.model_copy(update={"observed_generation": 2}), soon)
    learned = {"p": Learned(samples=1, seconds_per_unit=60.0)}
    assert due(old, old.model_copy(update={"learned": learned}), soon)


def test_the_class_status_written_says_when() -> None:
    out = run_cycle(view([body("t", [GPU_STEP])]), CycleParams(), NOW)
    assert out.class_status
    for status in out.class_status.values():
        assert api.ExecutorClassStatus.model_validate(status).updated_at == NOW


def test_a_cycle_with_nothing_in_play_and_nothing_to_write_is_settled() -> None:
    """``settled`` lets the engine run its periodic cycle less often while the cluster is idle: only when
    no task is in play and the cycle writes nothing; an allocation change it holds back wakes it."""
    done = [FinishedTask(namespace="ns", name=f"d{i}", uid=f"u{i}", phase="Succeeded") for i in range(3)]
    busy = run_cycle(view([body("t", [CPU_STEP])], finished=done), CycleParams(), NOW)
    assert not busy.stats.settled  # a task in play
    first = run_cycle(view([], finished=done), CycleParams(), NOW)
    assert first.class_status and not first.stats.settled  # capacity written once
    written = [{**c, "status": first.class_status[c["metadata"]["name"]]} for c in CLASSES]
    idle = run_cycle(view([], finished=done, classes=written), CycleParams(), NOW)
    assert idle.stats.settled and not idle.class_status and idle.stats.next_wakeup is None
    assert not idle.tasks
    # A pod of another workload moves the allocation of a class: held back for the refresh interval,
    # and the cycle says when it is due.
    foreign = [PodView(namespace="other", name="x", job="", node="f1", phase="Running", terminated_reason="",
                       exit_code=None, deleting=False, requests={"nvidia.com/gpu": "1", "cpu": "1"})]
    soon = NOW + timedelta(seconds=1)
    held = run_cycle(view([], finished=done, classes=written, pods=foreign), CycleParams(), soon)
    assert held.stats.settled and not held.class_status
    assert held.stats.next_wakeup == NOW + timedelta(seconds=cycle_mod.CLASS_ALLOCATION_REFRESH_SECONDS)
    later = NOW + timedelta(seconds=cycle_mod.CLASS_ALLOCATION_REFRESH_SECONDS)
    due = run_cycle(view([], finished=done, classes=written, pods=foreign), CycleParams(), later)
    assert set(due.class_status) == {"fast"} and not due.stats.settled
