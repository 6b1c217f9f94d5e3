"""Variants (the model library), ensembles and the workspace contract: core.variants, build.workspace, the cycle."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from aitask.api import v1alpha1 as api
from aitask.build import workspace
from aitask.control.cycle import ClusterView, CycleParams, parse_task, run_cycle
from aitask.core import variants
from aitask.core.observed import JobView
from aitask.core.planner import plan_task
from aitask.core.simulator import simulate
from aitask.core.snapshot import class_info, node_info
from aitask.core.types import SchedulerParams
from tests.unit.test_cycle_and_build import CLASSES, NODES, NOW, body

# "fast": speed 2, 4/h per GPU; "cheap": speed 0.5, 0.5/h. The small model takes a quarter of the large one.
SMALL = {
    "name": "small",
    "quality": 0.80,
    "image": "r/small:1",
    "args": ["--model", "small"],
    "estimate": {"seconds": 600, "onClass": "fast"},
}
LARGE = {
    "name": "large",
    "quality": 0.97,
    "image": "r/large:1",
    "args": ["--model", "large"],
    "estimate": {"seconds": 2400, "onClass": "fast"},
    "executor": {"memory": "32Gi"},
}
STEP = {
    "name": "train",
    "type": "training",
    "image": "r/train:1",
    "executor": {"accelerators": 1},
    "variants": [SMALL, LARGE],
}
QUALITY_HIGH = {"timeWeight": 1.0, "costWeight": 0.0, "qualityWeight": 100000.0}
COST_HIGH = {"timeWeight": 0.0001, "costWeight": 100.0, "qualityWeight": 0.0}


def cycle(tasks: list[dict[str, Any]], jobs: list[JobView] | None = None, at: timedelta = timedelta()) -> Any:
    view = ClusterView(tasks=tasks, jobs=jobs or [], pods=[], nodes=NODES, classes=CLASSES)
    return run_cycle(view, CycleParams(), NOW + at)


def only(outcome: Any) -> Any:
    assert len(outcome.tasks) == 1
    return outcome.tasks[0]


@pytest.mark.parametrize(
    ("objective", "variant", "klass"),
    [(QUALITY_HIGH, "large", "fast"), (COST_HIGH, "small", "cheap")],
    ids=["quality-high-large-model-fast-gpu", "cost-high-small-model-cheap-gpu"],
)
def test_joint_variant_and_class_choice_flips_with_the_weights(
    objective: dict[str, float], variant: str, klass: str
) -> None:
    out = only(cycle([body("t", [STEP], objective=objective)]))
    (job,) = out.create_jobs
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"r/{variant}:1"
    assert container["args"] == ["--model", variant]
    assert {"name": "AITASK_VARIANT", "value": variant} in container["env"]
    assert job["metadata"]["labels"]["aitask.dev/variant"] == variant
    assert job["spec"]["template"]["metadata"]["labels"]["aitask.dev/variant"] == variant
    assert job["metadata"]["labels"]["aitask.dev/class"] == klass
    plan = out.status["subtasks"][0]["plan"]
    assert (plan["variant"], plan["class"]) == (variant, klass)
    other = "small" if variant == "large" else "large"
    pairs = {(a["variant"], a["class"]) for a in plan["alternatives"]}
    assert (other, "fast") in pairs and (other, "cheap") in pairs
    assert (other, "cpu") in pairs  # the CPU pool is infeasible for a GPU step: listed with its reason
    assert out.status["subtasks"][0]["history"][0]["variant"] == variant
    assert out.status["subtasks"][0]["message"].startswith(f"variant {variant} (quality ")
    assert any(e.message.startswith(f"train: variant {variant} ") for e in out.events)
    # Every feasible alternative scores no better than the chosen pair (F includes the quality term).
    assert all(a["score"] >= plan["score"] - 1e-6 for a in plan["alternatives"] if a["feasible"])


def test_the_large_model_needs_what_it_asks_for() -> None:
    out = only(cycle([body("t", [STEP], objective=QUALITY_HIGH)]))
    resources = out.create_jobs[0]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["memory"] == "32Gi"  # the variant's executor override
    assert resources["requests"]["nvidia.com/gpu"] == "1"  # the sub-task's, not overridden


def test_min_quality_excludes_a_variant_with_a_reason() -> None:
    step = {**STEP, "minQuality": 0.9}
    out = only(cycle([body("t", [step], objective=COST_HIGH)]))
    plan = out.status["subtasks"][0]["plan"]
    assert plan["variant"] == "large"  # the cheap small model is out, whatever it would save
    (excluded,) = [a for a in plan["alternatives"] if a["variant"] == "small"]
    assert excluded == {"variant": "small", "class": "*", "feasible": False, "reason": "quality 0.8 < minQuality 0.9"}


def test_learned_runtimes_are_kept_per_variant_profile() -> None:
    first = only(cycle([body("t", [STEP], objective=QUALITY_HIGH)]))
    job = first.create_jobs[0]
    done = JobView(
        namespace="ns",
        name="t-train-1",
        task="t",
        subtask="train",
        attempt=1,
        class_name="fast",
        active=0,
        succeeded=1,
        failed=0,
        complete=True,
        failed_final=False,
        failure_reason="",
        failure_message="",
        start_time=NOW,
        completion_time=NOW + timedelta(seconds=30),
        finished_at=NOW + timedelta(seconds=30),
        deleting=False,
        spec_hash=job["metadata"]["annotations"]["aitask.dev/spec-hash"],
    )
    out = cycle([body("t", [STEP], status=first.status, objective=QUALITY_HIGH)], [done], timedelta(seconds=31))
    assert only(out).status["phase"] == "Succeeded"
    learned = out.class_status["fast"]["learned"]
    assert set(learned) == {"r/train.large"}  # the variant's own profile, not the sub-task's
    conditions = {c["type"] for c in only(out).status["conditions"]}
    assert "SpecChangeIgnored" not in conditions  # the Job ran the resolved spec it was built from


def test_a_job_found_without_its_status_write_is_adopted_with_its_variant() -> None:
    job = only(cycle([body("t", [STEP], objective=QUALITY_HIGH)])).create_jobs[0]
    running = JobView(
        namespace="ns",
        name="t-train-1",
        task="t",
        subtask="train",
        attempt=1,
        class_name="fast",
        active=1,
        succeeded=0,
        failed=0,
        complete=False,
        failed_final=False,
        failure_reason="",
        failure_message="",
        start_time=NOW,
        completion_time=None,
        finished_at=None,
        deleting=False,
        spec_hash=job["metadata"]["annotations"]["aitask.dev/spec-hash"],
        variant=job["metadata"]["labels"]["aitask.dev/variant"],
    )
    out = only(cycle([body("t", [STEP], objective=QUALITY_HIGH)], [running], timedelta(seconds=5)))
    st = out.status["subtasks"][0]
    assert (st["phase"], st["plan"]["variant"], st["history"][0]["variant"]) == ("Running", "large", "large")
    assert out.create_jobs == ()
    assert "SpecChangeIgnored" not in {c["type"] for c in out.status["conditions"]}


def test_a_task_whose_variant_choice_raises_is_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(variants.Chooser, "choose", broken)
    plain = {k: v for k, v in STEP.items() if k != "variants"} | {"estimate": {"seconds": 60, "onClass": "fast"}}
    two = {**STEP, "name": "second", "variants": [{**SMALL, "name": "other"}]}
    out = cycle([body("bad", [STEP, two]), body("good", [plain])])
    by_name = {t.name: t for t in out.tasks}
    assert [c["type"] for c in by_name["bad"].status["conditions"] if c["status"] == "True"] == ["InternalError"]
    assert by_name["bad"].create_jobs == ()
    assert [j["metadata"]["name"] for j in by_name["good"].create_jobs] == ["good-train-1"]
    assert [e.task for e in out.stats.errors] == ["ns/bad"]  # isolated once, not once per sub-task


def test_a_variant_profile_and_env_override() -> None:
    sub = api.Subtask.model_validate({**STEP, "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "1"}]})
    large = api.Variant.model_validate({**LARGE, "profile": "big", "env": [{"name": "B", "value": "2"}]})
    resolved = variants.resolve(sub, large)
    assert resolved.effective_profile == "big"
    assert [(e.name, e.value) for e in resolved.env] == [("A", "1"), ("B", "2")]
    assert resolved.variants == [] and resolved.executor.accelerators == 1
    assert variants.for_attempt(sub, "") is sub


ENSEMBLE_TASK: list[dict[str, Any]] = [
    {"name": "prep", "type": "preprocess", "image": "r/prep:1", "estimate": {"seconds": 10}},
    {
        "name": "models",
        "type": "inference",
        "image": "r/m:1",
        "dependsOn": ["prep"],
        "ensemble": {"topK": 3},
        "variants": [
            {
                "name": "tiny",
                "quality": 0.7,
                "executor": {"kinds": ["cpu"], "accelerators": 0},
                "estimate": {"seconds": 60},
            },
            {"name": "mid", "quality": 0.9, "executor": {"classes": ["cheap"]}, "estimate": {"seconds": 60}},
            {"name": "big", "quality": 0.95, "estimate": {"seconds": 600, "onClass": "fast"}},
            {"name": "bad", "quality": 0.5},
        ],
    },
    {"name": "fuse", "type": "fusion", "image": "r/fuse:1", "dependsOn": ["models"], "estimate": {"seconds": 10}},
]
WORKSPACE = {"volumeClaimTemplate": {"storage": "1Gi", "storageClassName": "shared"}}


def test_ensemble_expands_into_members_each_placed_on_its_own_best_class() -> None:
    task, problem = parse_task(body("e", ENSEMBLE_TASK, workspace=WORKSPACE))
    assert task is not None, problem
    names = [s.name for s in task.spec.subtasks]
    assert names == ["prep", "models-big", "models-mid", "models-tiny", "fuse"]  # top 3 by quality
    assert task.spec.subtask("fuse").depends_on == ["models-big", "models-mid", "models-tiny"]
    done = {
        "phase": "Succeeded",
        "attempts": 1,
        "history": [{"number": 1, "job": "e-prep-1", "class": "cpu", "result": "Succeeded"}],
    }
    status = {"subtasks": [{"name": "prep", **done}]}
    out = only(cycle([body("e", ENSEMBLE_TASK, status=status, workspace=WORKSPACE)]))
    placed = {
        j["metadata"]["labels"]["aitask.dev/subtask"]: j["metadata"]["labels"]["aitask.dev/class"]
        for j in out.create_jobs
    }
    assert placed == {"models-big": "fast", "models-mid": "cheap", "models-tiny": "cpu"}
    for job in out.create_jobs:
        pod = job["spec"]["template"]["spec"]
        assert pod["volumes"] == [{"name": "aitask-workspace", "persistentVolumeClaim": {"claimName": "e-workspace"}}]
        assert pod["containers"][0]["volumeMounts"] == [{"name": "aitask-workspace", "mountPath": "/workspace"}]
    (claim,) = out.create_claims
    assert claim["metadata"]["name"] == "e-workspace"
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "uid-e"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "1Gi"}},
        "storageClassName": "shared",
    }


def _env(task: api.AITask, name: str, statuses: dict[str, api.SubtaskStatus] | None = None) -> dict[str, str]:
    sub = task.spec.subtask(name)
    variant = sub.variants[0] if len(sub.variants) == 1 else None
    ran = workspace.ran_variants(task, statuses or {})
    return workspace.contract_env(task, sub, root=workspace.root_of(task), variant=variant, ran=ran)


def test_env_contract_for_every_subtask() -> None:
    task, _ = parse_task(body("e", ENSEMBLE_TASK, workspace=WORKSPACE))
    assert task is not None
    prep = _env(task, "prep")
    assert prep == {
        "AITASK_WORKSPACE_KIND": "volume",
        "AITASK_WORKSPACE": "/workspace",
        "AITASK_OUTPUT": "/workspace/prep",
        "AITASK_INPUTS": "{}",
        "AITASK_VARIANT": "",
    }
    member = _env(task, "models-mid")
    assert member["AITASK_OUTPUT"] == "/workspace/models-mid"
    assert json.loads(member["AITASK_INPUTS"]) == {"prep": "/workspace/prep"}
    assert member["AITASK_INPUT_PREP"] == "/workspace/prep"
    assert (member["AITASK_VARIANT"], member["AITASK_QUALITY"]) == ("mid", "0.9")
    fuse = _env(task, "fuse")
    assert json.loads(fuse["AITASK_MEMBERS"]) == [
        {"subtask": "models-big", "variant": "big", "weight": 0.95, "output": "/workspace/models-big"},
        {"subtask": "models-mid", "variant": "mid", "weight": 0.9, "output": "/workspace/models-mid"},
        {"subtask": "models-tiny", "variant": "tiny", "weight": 0.7, "output": "/workspace/models-tiny"},
    ]
    assert fuse["AITASK_INPUT_MODELS_BIG"] == "/workspace/models-big"


def test_fusion_weights_come_from_the_variant_each_dependency_ran() -> None:
    steps = [STEP, {"name": "fuse", "type": "fusion", "image": "r/f:1", "dependsOn": ["train"]}]
    task, _ = parse_task(body("v", steps, workspace={"objectStore": {"uriPrefix": "s3://b/p/"}}))
    assert task is not None
    ran = api.SubtaskStatus.model_validate(
        {
            "name": "train",
            "history": [{"number": 1, "job": "j", "class": "fast", "result": "Succeeded", "variant": "large"}],
        }
    )
    fuse = _env(task, "fuse", {"train": ran})
    assert fuse["AITASK_WORKSPACE_KIND"] == "objectStore"
    assert fuse["AITASK_OUTPUT"] == "s3://b/p/ns/v/fuse"
    assert json.loads(fuse["AITASK_MEMBERS"]) == [
        {"subtask": "train", "variant": "large", "weight": 0.97, "output": "s3://b/p/ns/v/train"}
    ]


def test_existing_claim_and_retained_claim() -> None:
    existing, _ = parse_task(body("x", [STEP], workspace={"existingClaim": "team-data", "mountPath": "/data"}))
    assert existing is not None
    assert workspace.build_claim(existing) is None and workspace.claim_of(existing) == "team-data"
    kept, _ = parse_task(body("k", [STEP], workspace={**WORKSPACE, "reclaimPolicy": "Retain"}))
    assert kept is not None
    claim = workspace.build_claim(kept)
    assert claim is not None and "ownerReferences" not in claim["metadata"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"subtasks": [{**STEP, "ensemble": {"members": ["small", "huge"]}}]}, "ensemble.members: unknown variant"),
        ({"subtasks": [{**STEP, "variants": [{**SMALL, "quality": 1.5}]}]}, "variants[0].quality"),
        ({"subtasks": [STEP], "workspace": {"mountPath": "/w"}}, "spec.workspace"),
        ({"subtasks": [{**STEP, "minQuality": 0.99}]}, "minQuality: no variant"),
        ({"subtasks": [{**STEP, "ensemble": {"topK": 3}}]}, "ensemble.topK"),
        ({"subtasks": [{**STEP, "ensemble": {"topK": 1, "members": ["small"]}}]}, "exactly one of topK or members"),
    ],
    ids=["unknown-variant", "quality-out-of-range", "workspace-without-storage", "min-quality", "top-k", "both"],
)
def test_bad_variant_or_workspace_input_names_the_field(spec: dict[str, Any], field: str) -> None:
    task, problem = parse_task(body("bad", spec.pop("subtasks"), **spec))
    assert task is None
    assert field in problem


def test_crd_carries_the_variant_and_workspace_rules() -> None:
    from aitask.api.crdgen import aitask_crd

    spec = aitask_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    item = spec["properties"]["subtasks"]["items"]
    paths = {r.get("fieldPath") for r in item["x-kubernetes-validations"]}
    assert {".ensemble", ".ensemble.members", ".ensemble.topK", ".minQuality"} <= paths
    quality = item["properties"]["variants"]["items"]["properties"]["quality"]
    assert (quality["minimum"], quality["maximum"]) == (0, 1)
    assert "volumeClaimTemplate" in spec["properties"]["workspace"]["x-kubernetes-validations"][0]["rule"]


def _cluster() -> tuple[dict[str, Any], list[Any]]:
    ecs = [api.ExecutorClass.model_validate(c) for c in CLASSES]
    classes = {ec.metadata.name: class_info(ec) for ec in ecs}
    nodes = [n for n in (node_info(d, classes, {}) for d in NODES) if n is not None]
    return classes, nodes


@pytest.mark.parametrize(
    ("objective", "variant", "klass"),
    [(QUALITY_HIGH, "large", "fast"), (COST_HIGH, "small", "cheap")],
    ids=["quality", "cost"],
)
def test_plan_and_simulate_make_the_operators_choice(objective: dict[str, float], variant: str, klass: str) -> None:
    task = api.AITask.model_validate(body("t", [STEP], objective=objective))
    classes, nodes = _cluster()
    plan = plan_task(task, classes, nodes, now=0.0)
    (sub,) = plan.subtasks
    assert (sub.variant, sub.chosen.class_name if sub.chosen else None) == (variant, klass)
    assert len(sub.pairs) == 2 * len(classes)  # every variant x class, infeasible ones with a reason
    assert all(p.option.reason for p in sub.pairs if not p.option.feasible)
    assert sub.pairs[0].variant == variant and sub.pairs[0].option.class_name == klass
    sim = simulate(classes, nodes, [task], params=SchedulerParams())
    (placement,) = sim.placements
    assert (placement.class_name, placement.variant) == (klass, variant)
    assert sim.to_json()["placements"][0]["variant"] == variant  # type: ignore[index]
    # The variant's own runtime (2400 s for both pairs), not the sub-task's prior (1800 s on fast, 7200 on cheap).
    assert sim.makespan_seconds == pytest.approx(2400.0)
