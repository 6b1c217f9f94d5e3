"""One scheduling cycle from recorded inputs, the Job builder, conditions and the generated CRDs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aitask.api import v1alpha1 as api
from aitask.api.crdgen import aitask_crd, all_crds, executorclass_crd
from aitask.build.jobs import MAX_NAME, build_job, job_name
from aitask.control.cycle import ClusterView, CycleParams, parse_task, run_cycle
from aitask.core.conditions import set_condition
from aitask.core.observed import PodView
from aitask.core.types import Admission, Option, SubtaskKey

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def node(name: str, *, gpus: int = 0, product: str | None = None, cpu: str = "32") -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if product:
        labels["nvidia.com/gpu.product"] = product
    else:
        labels["aitask.dev/pool"] = "cpu"
    alloc = {"cpu": cpu, "memory": "256Gi", "pods": "110"}
    if gpus:
        alloc["nvidia.com/gpu"] = str(gpus)
    return {"metadata": {"name": name, "labels": labels}, "spec": {},
            "status": {"allocatable": alloc, "conditions": [{"type": "Ready", "status": "True"}]}}


CLASSES = [
    {"metadata": {"name": "fast", "generation": 1},
     "spec": {"nodeSelector": {"nvidia.com/gpu.product": "FAST"}, "accelerator": {"model": "FAST", "memoryGiB": 80},
              "price": {"acceleratorHour": 4.0}, "speed": {"default": 2.0}}},
    {"metadata": {"name": "cheap", "generation": 1},
     "spec": {"nodeSelector": {"nvidia.com/gpu.product": "CHEAP"}, "accelerator": {"model": "CHEAP", "memoryGiB": 24},
              "price": {"acceleratorHour": 0.5}, "speed": {"default": 0.5}}},
    {"metadata": {"name": "cpu", "generation": 1},
     "spec": {"nodeSelector": {"aitask.dev/pool": "cpu"}, "price": {"cpuHour": 0.04}}},
]
NODES = [node("f1", gpus=4, product="FAST"), node("c1", gpus=4, product="CHEAP"), node("p1")]


def body(name: str, subtasks: list[dict[str, Any]], status: dict[str, Any] | None = None,
         **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "aitask.dev/v1alpha1", "kind": "AITask",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "1"},
            "spec": {"subtasks": subtasks, **spec}, "status": status or {}}


GPU_STEP = {"name": "train", "type": "training", "image": "r/train:1", "executor": {"accelerators": 1},
            "estimate": {"seconds": 600, "onClass": "fast"}}


def cycle(tasks: list[dict[str, Any]], pods: list[PodView] | None = None, **view: Any) -> Any:
    return run_cycle(ClusterView(tasks=tasks, jobs=[], pods=pods or [], nodes=NODES, classes=CLASSES, **view),
                     CycleParams(), NOW)


@pytest.mark.parametrize(
    ("objective", "expected"),
    [({"timeWeight": 1.0, "costWeight": 0.0}, "fast"), ({"timeWeight": 0.0001, "costWeight": 100.0}, "cheap")],
    ids=["time", "cost"],
)
def test_cycle_admits_on_the_class_the_objective_prefers(objective: dict[str, float], expected: str) -> None:
    out = cycle([body("t", [GPU_STEP], objective=objective)])
    (task,) = out.tasks
    (manifest,) = task.create_jobs
    assert manifest["metadata"]["name"] == "t-train-1"
    assert manifest["metadata"]["labels"]["aitask.dev/class"] == expected
    assert task.status is not None
    plan = task.status["subtasks"][0]["plan"]
    assert plan["class"] == expected
    assert {a["class"] for a in plan["alternatives"]} >= {"fast", "cheap"} - {expected}
    assert [e.reason for e in task.events] == ["AttemptStarted"]
    assert out.stats.admitted == 1


def test_cycle_is_idempotent_once_its_status_is_written() -> None:
    first = cycle([body("t", [GPU_STEP])])
    written = first.tasks[0].status
    second = cycle([body("t", [GPU_STEP], status=written)])
    # Nothing new to write or create: the attempt is waiting for its Job to show up (grace period).
    assert second.tasks[0].create_jobs == ()
    assert second.tasks[0].status is None
    assert second.tasks[0].events == ()


def test_invalid_task_gets_invalid_spec_once_naming_the_field() -> None:
    bad = body("bad", [{"name": "a", "image": "x", "dependsOn": ["b"]},
                       {"name": "b", "image": "x", "dependsOn": ["a"]}])
    out = cycle([bad])
    (task,) = out.tasks
    assert task.status is not None
    assert task.status["phase"] == "Invalid"
    cond = task.status["conditions"][0]
    assert cond["type"] == "InvalidSpec"
    assert cond["reason"] == "DependencyCycle"
    assert "spec.subtasks[].dependsOn" in cond["message"]
    assert [e.reason for e in task.events] == ["InvalidSpec"]
    again = cycle([{**bad, "status": task.status}])
    assert again.tasks == ()  # Invalid for its current generation: settled, nothing to write or post
    assert again.stats.tasks_by_phase == {("ns", "Invalid"): 1}
    edited = cycle([{**bad, "metadata": {**bad["metadata"], "generation": 2}, "status": task.status}])
    (task,) = edited.tasks  # an edit brings it back: parsed and judged again
    assert task.status is not None and task.status["observedGeneration"] == 2


def test_parse_task_names_the_field_of_a_schema_error() -> None:
    task, message = parse_task(body("x", [{"name": "a", "image": "x", "executor": {"cpu": "lots"}}]))
    assert task is None
    assert message.startswith("spec.subtasks[0].executor.cpu:")


def test_capacity_held_by_other_pods_defers_with_the_reason() -> None:
    hog = PodView(namespace="other", name="hog", job="", node="f1", phase="Running", terminated_reason="",
                  exit_code=None, deleting=False, requests={"nvidia.com/gpu": "4"})
    step = {**GPU_STEP, "executor": {"accelerators": 4, "classes": ["fast"]}}
    out = cycle([body("t", [step])], pods=[hog])
    (task,) = out.tasks
    assert task.create_jobs == ()
    assert task.status is not None
    planned = next(c for c in task.status["conditions"] if c["type"] == "Planned")
    assert planned["status"] == "False"
    assert planned["reason"] == "WaitingForCapacity"
    assert out.stats.pending_by_class == {"fast": 1}


def test_gpu_usage_and_telemetry_state_reach_status() -> None:
    first = cycle([body("t", [GPU_STEP])]).tasks[0].status
    usage = {("ns", "t", "train"): {"gpuUtilAvg": 42.0, "gpuUtilMax": 90.0}}
    out = cycle([body("t", [GPU_STEP], status=first)], gpu_usage=usage, telemetry="unavailable",
                telemetry_message="connection refused")
    status = out.tasks[0].status
    assert status is not None
    assert status["subtasks"][0]["metrics"]["gpuUtilAvg"] == 42.0
    assert status["metrics"]["gpuUtilMax"] == 90.0
    cond = next(c for c in status["conditions"] if c["type"] == "MetricsUnavailable")
    assert cond["status"] == "True"
    assert "connection refused" in cond["message"]


# ----------------------------------------------------------------------------------------- build


@given(st.from_regex(r"[a-z][a-z0-9-]{0,60}[a-z0-9]", fullmatch=True),
       st.from_regex(r"[a-z][a-z0-9-]{0,38}[a-z0-9]", fullmatch=True), st.integers(1, 999))
def test_job_names_are_deterministic_valid_and_short(task: str, sub: str, attempt: int) -> None:
    name = job_name(task, sub, attempt)
    assert name == job_name(task, sub, attempt)
    assert len(name) <= MAX_NAME
    assert name.endswith(f"-{attempt}")
    assert name[0].isalnum()
    assert job_name(task, sub, attempt + 1) != name


def admission(attempt: int, class_name: str, nodes: tuple[str, ...], *, accelerators: int = 1) -> Admission:
    chosen = Option(class_name=class_name, feasible=True, runtime_seconds=300.0)
    return Admission(key=SubtaskKey("ns", "t", "train"), attempt=attempt, class_name=class_name, nodes=nodes,
                     accelerators=accelerators, cpu=4, memory=16 * 2**30, chosen=chosen, alternatives=(),
                     message="admitted")


def test_build_job_carries_resources_affinity_tolerations_and_owner() -> None:
    t = api.AITask.model_validate(body("t", [{**GPU_STEP, "parallelism": 4,
                                              "podMetadata": {"annotations": {"a": "b"}}}]))
    ec = api.ExecutorClassSpec.model_validate({
        "nodeSelector": {"nvidia.com/gpu.product": "FAST"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "accelerator": {"model": "FAST", "memoryGiB": 80}})
    manifest = build_job(t, t.spec.subtasks[0], admission(2, "fast", ("f1", "f1", "f2", "f2")), ec)
    spec = manifest["spec"]
    pod = spec["template"]["spec"]
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == "uid-t"
    assert spec["backoffLimit"] == 0
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == 4
    assert "ttlSecondsAfterFinished" not in spec  # set only once the operator has recorded the result
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "1"
    assert res["requests"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["FAST"]}]
    preferred = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert preferred["preference"]["matchExpressions"][0]["values"] == ["f1", "f2"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["template"]["metadata"]["annotations"] == {"a": "b"}
    assert spec["template"]["metadata"]["labels"]["aitask.dev/attempt"] == "2"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["AITASK_CLASS"] == "fast"
    again = build_job(t, t.spec.subtasks[0], admission(2, "fast", ("f1", "f1", "f2", "f2")), ec)
    assert again == manifest


# ------------------------------------------------------------------------------------ conditions


def test_condition_transition_time_moves_only_on_flips() -> None:
    conds, changed = set_condition([], type_="Running", status=True, reason="InProgress", message="a", now=NOW,
                                   generation=1)
    assert changed
    later = NOW + timedelta(minutes=1)
    same, changed = set_condition(conds, type_="Running", status=True, reason="InProgress", message="a", now=later,
                                  generation=1)
    assert not changed
    assert same[0].last_transition_time == NOW
    msg, changed = set_condition(conds, type_="Running", status=True, reason="InProgress", message="b", now=later,
                                 generation=1)
    assert changed
    assert msg[0].last_transition_time == NOW
    flipped, changed = set_condition(conds, type_="Running", status=False, reason="Idle", message="x" * 5000,
                                     now=later, generation=2)
    assert changed
    assert flipped[0].last_transition_time == later
    assert len(flipped[0].message) <= 1024


# ------------------------------------------------------------------------------------------ CRDs


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_crds_are_structural() -> None:
    for crd in all_crds().values():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        props = schema["properties"]
        for part in _walk([props["spec"], props["status"]]):
            assert "$ref" not in part
            assert "anyOf" not in part
            assert "title" not in part
            for bound in ("exclusiveMinimum", "exclusiveMaximum"):
                if bound in part:
                    assert isinstance(part[bound], bool)  # OpenAPI v3.0 form, not JSON Schema 2020
            if part.get("type") == "object":
                assert "properties" in part or "additionalProperties" in part or part.get(
                    "x-kubernetes-preserve-unknown-fields")


def test_aitask_crd_has_printer_columns_cel_rules_and_descriptions() -> None:
    crd = aitask_crd()
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]][:3] == ["Phase", "Progress", "Est-Cost"]
    assert crd["spec"]["names"]["shortNames"] == ["ait"]
    assert "aitask" not in crd["spec"]["names"]["categories"]  # a category named like the kind shadows it
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["x-kubernetes-validations"]
    item = spec["properties"]["subtasks"]["items"]
    assert spec["properties"]["subtasks"]["x-kubernetes-list-map-keys"] == ["name"]
    assert {r["fieldPath"] for r in item["x-kubernetes-validations"]} >= {".dependsOn", ".completions"}
    assert item["properties"]["executor"]["description"]
    assert executorclass_crd()["spec"]["scope"] == "Cluster"


def test_finished_jobs_get_their_ttl_only_once_the_status_records_them() -> None:
    from aitask.core.observed import JobView

    first = cycle([body("t", [GPU_STEP])]).tasks[0].status
    done = JobView(namespace="ns", name="t-train-1", task="t", subtask="train", attempt=1, class_name="fast",
                   active=0, succeeded=1, failed=0, complete=True, failed_final=False, failure_reason="",
                   failure_message="", start_time=NOW, completion_time=NOW + timedelta(seconds=30),
                   finished_at=NOW + timedelta(seconds=30), deleting=False, spec_hash="")
    view = ClusterView(tasks=[body("t", [GPU_STEP], status=first)], jobs=[done], pods=[], nodes=NODES,
                       classes=CLASSES)
    out = run_cycle(view, CycleParams(), NOW + timedelta(seconds=31)).tasks[0]
    assert out.status is not None
    assert out.status["phase"] == "Succeeded"
    assert out.expire_jobs == ("t-train-1",)
    # Once the TTL is set, nothing more to do; a finished task is otherwise left alone.
    again = run_cycle(ClusterView(tasks=[body("t", [GPU_STEP], status=out.status)],
                                  jobs=[done.__class__(**{**done.__dict__, "ttl_seconds": 3600})], pods=[],
                                  nodes=NODES, classes=CLASSES), CycleParams(), NOW + timedelta(seconds=40))
    assert again.tasks == ()
    # A crash between the final status write and the TTL patch is healed by the next cycle.
    healed = run_cycle(ClusterView(tasks=[body("t", [GPU_STEP], status=out.status)], jobs=[done], pods=[],
                                   nodes=NODES, classes=CLASSES), CycleParams(), NOW + timedelta(seconds=40))
    assert healed.tasks[0].expire_jobs == ("t-train-1",)
    assert healed.tasks[0].status is None


def test_running_work_is_reestimated_with_what_was_learned_since_admission() -> None:
    from aitask.control.cycle import _expected_runtime
    from aitask.core import estimator, snapshot
    from aitask.core.types import Learned

    first = cycle([body("t", [GPU_STEP])]).tasks[0].status
    t = api.AITask.model_validate(body("t", [GPU_STEP], status=first))
    st = t.status.subtask("train")
    assert st is not None
    assert st.plan is not None
    planned = st.plan.estimated_seconds
    infos = {c["metadata"]["name"]: snapshot.class_info(api.ExecutorClass.model_validate(c)) for c in CLASSES}
    cls = st.plan.class_name
    learned = {("r/train", cls): Learned(seconds_per_unit=planned / 10, samples=50)}
    now_known = _expected_runtime(t, st, infos, estimator.Estimator(infos, learned), CycleParams())
    assert now_known < planned / 2
    assert _expected_runtime(t, st, infos, estimator.Estimator(infos, {}), CycleParams()) == pytest.approx(planned)


def test_a_running_tasks_estimate_is_kept_30_s_when_what_was_learned_moves() -> None:
    """In a burst every cycle's finishes move the average all running tasks read: each task's T is estimated
    again when it moved, but not more than once per REESTIMATE_SECONDS (the same progress throughout)."""
    from types import SimpleNamespace

    from aitask.control.cycle import REESTIMATE_SECONDS, _expected_runtimes, _learned_token
    from aitask.core import estimator, snapshot
    from aitask.core.types import Learned

    first = cycle([body("t", [GPU_STEP])]).tasks[0].status
    t = api.AITask.model_validate(body("t", [GPU_STEP], status=first))
    st = t.status.subtask("train")
    assert st is not None and st.plan is not None
    planned, cls = st.plan.estimated_seconds, st.plan.class_name
    infos = {c["metadata"]["name"]: snapshot.class_info(api.ExecutorClass.model_validate(c)) for c in CLASSES}
    prog: Any = SimpleNamespace(status=t.status)
    moved = {("r/train", cls): Learned(seconds_per_unit=planned / 10, samples=50)}
    store: dict[str, Any] = {}

    def estimate(learned: dict[Any, Any], at: float) -> dict[str, float]:
        return _expected_runtimes(t, prog, infos, estimator.Estimator(infos, learned), CycleParams(),
                                  (store, _learned_token(learned)), at)

    before = estimate({}, 1000.0)
    assert before["train"] == pytest.approx(planned)
    assert estimate(moved, 1010.0) is before  # moved, but estimated 10 s ago: kept
    assert estimate({}, 1000.0 + REESTIMATE_SECONDS + 5) is before  # unmoved: kept however old
    after = estimate(moved, 1000.0 + REESTIMATE_SECONDS + 1)
    assert after["train"] < planned / 2  # moved and old enough: estimated again
