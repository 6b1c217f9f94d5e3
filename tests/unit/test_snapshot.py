from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from aitask.core.quantity import GIB
from aitask.core.snapshot import class_info, demand_for, learned_map, node_info, running_for, tolerates
from aitask.core.types import SubtaskKey, TolerationInfo
from tests.builders import make_aitask, make_class, make_class_info, make_node

GPU = make_class_info("v100", gpu_mem=16, price=3.06, selector={"gpu": "v100"},
                      tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
CPU = make_class_info("cpu", selector={"pool": "cpu"})
ANY = make_class_info("any", selector={})
CLASSES = {c.name: c for c in (GPU, CPU, ANY)}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def test_class_info() -> None:
    ec = make_class("v100", gpu_mem=16, price=3.06, cpu_price=0.1, memory_price=0.01, speed=4.0,
                    speed_profiles={"bert": 3.0}, selector={"gpu": "v100"},
                    tolerations=[{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute"}])
    info = class_info(ec)
    assert (info.name, info.kind, info.accelerator_resource, info.accelerator_memory_gib) == (
        "v100", "gpu", "nvidia.com/gpu", 16.0)
    assert (info.price_accelerator_hour, info.price_cpu_hour, info.price_memory_gib_hour) == (3.06, 0.1, 0.01)
    assert info.speed("bert") == 3.0
    assert info.speed("other") == 4.0
    assert info.tolerations == (TolerationInfo(key="k", operator="Equal", value="v", effect="NoExecute"),)
    assert class_info(make_class("cpu")).kind == "cpu"


@pytest.mark.parametrize(
    ("tolerations", "taint", "ok"),
    [
        ([], GPU_TAINT, False),
        ([TolerationInfo(key="nvidia.com/gpu", operator="Exists")], GPU_TAINT, True),
        ([TolerationInfo(operator="Exists")], GPU_TAINT, True),
        ([TolerationInfo(key="nvidia.com/gpu", value="present")], GPU_TAINT, True),
        ([TolerationInfo(key="nvidia.com/gpu", value="other")], GPU_TAINT, False),
        ([TolerationInfo(key="nvidia.com/gpu", operator="Exists", effect="NoExecute")], GPU_TAINT, False),
    ],
    ids=["none", "exists-key", "exists-all", "equal", "equal-other-value", "other-effect"],
)
def test_tolerates(tolerations: list[TolerationInfo], taint: dict[str, Any], ok: bool) -> None:
    assert tolerates(tolerations, taint) is ok


@pytest.mark.parametrize(
    ("node", "classes", "schedulable"),
    [
        (make_node("g", gpus=8, labels={"gpu": "v100"}, taints=[GPU_TAINT]), ("v100",), True),
        (make_node("g", gpus=8, labels={"gpu": "v100"}), ("v100", "any"), True),
        (make_node("g", gpus=0, labels={"gpu": "v100"}), ("any",), True),  # no GPUs: not in the GPU class
        (make_node("c", labels={"pool": "cpu"}), ("cpu", "any"), True),
        (make_node("c", labels={"pool": "cpu"}, taints=[{"key": "x", "effect": "PreferNoSchedule"}]),
         ("cpu", "any"), True),
        (make_node("c", labels={"pool": "cpu"}, taints=[{"key": "x", "effect": "NoExecute"}]), None, True),
        (make_node("c", labels={"pool": "cpu"}, ready=False), ("cpu", "any"), False),
        (make_node("c", labels={"pool": "cpu"}, ready=True, unschedulable=True), ("cpu", "any"), False),
    ],
    ids=["tainted-gpu", "untainted-gpu", "gpu-label-no-gpus", "cpu", "soft-taint", "hard-taint",
         "not-ready", "cordoned"],
)
def test_node_membership(node: dict[str, Any], classes: tuple[str, ...] | None, schedulable: bool) -> None:
    info = node_info(node, CLASSES, {})
    if classes is None:
        assert info is None
        return
    assert info is not None
    assert info.classes == classes
    assert info.schedulable is schedulable


def test_node_free_is_allocatable_minus_used_never_negative() -> None:
    info = node_info(make_node("g", gpus=8, cpu="32", memory="64Gi", labels={"gpu": "v100"}, taints=[GPU_TAINT]),
                     [GPU], {"nvidia.com/gpu": 3, "cpu": 40.0, "memory": 10 * GIB})
    assert info is not None
    assert info.allocatable["nvidia.com/gpu"] == 8
    assert info.free["nvidia.com/gpu"] == 5
    assert info.free["cpu"] == 0
    assert info.free["memory"] == 54 * GIB


def test_learned_map() -> None:
    ec = make_class("v100", gpu_mem=16, learned={"bert": {"secondsPerUnit": 10.0, "samples": 3, "gpuUtilAvg": 55.0}})
    got = learned_map([ec, make_class("cpu")])
    assert list(got) == [("bert", "v100")]
    assert got[("bert", "v100")].samples == 3
    assert got[("bert", "v100")].gpu_util_avg == 55.0


@pytest.mark.parametrize(
    ("kwargs", "expect"),
    [
        ({"type": "preprocess"}, {"kinds": {"cpu"}, "accelerators": 0, "cpu": 1.0, "memory": 2 * GIB}),
        ({"type": "training"}, {"kinds": {"gpu"}, "accelerators": 1, "cpu": 4.0, "memory": 16 * GIB}),
        ({"gpus": 2, "cpu": "500m", "memory": "3Gi"}, {"kinds": {"gpu"}, "accelerators": 2, "cpu": 0.5,
                                                        "memory": 3 * GIB}),
        ({"type": "custom", "kinds": ["cpu", "gpu"]}, {"kinds": {"cpu", "gpu"}, "accelerators": 1, "cpu": 4.0}),
        ({"type": "fusion", "parallelism": 4, "gang": True}, {"pods": 4, "gang": True, "completions": 4}),
    ],
    ids=["cpu-defaults", "gpu-defaults", "explicit", "either-kind", "shards"],
)
def test_demand_for_defaults(kwargs: dict[str, Any], expect: dict[str, Any]) -> None:
    task = make_aitask("a", "ml").subtask("s", **kwargs).obj()
    demand = demand_for(task, task.spec.subtasks[0], 1, now=100.0)
    for field, value in expect.items():
        got = getattr(demand, field)
        assert (set(got) if isinstance(got, frozenset) else got) == value, field


def test_demand_for_carries_task_settings_and_escalation() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    builder = make_aitask("a", "ml").priority(3).objective(cost_weight=5.0).subtask(
        "train", gpus=1, profile="bert", seconds=100, on_class="v100", seconds_by_class={"k80": 900},
        classes=["v100", "a100"], min_accel_memory_gib=16, work_units=2.5,
    )
    doc = builder.dict()
    doc["metadata"]["creationTimestamp"] = created.isoformat()
    from aitask.api import v1alpha1 as api

    task = api.AITask.model_validate(doc)
    demand = demand_for(task, task.spec.subtasks[0], 2, now=created.timestamp() + 50, ready_since=10.0,
                        default_time_weight=0.5, default_cost_weight=0.0, min_accel_memory_gib=32,
                        excluded=["v100"])
    assert demand.key == SubtaskKey("ml", "a", "train")
    assert demand.attempt == 2
    assert (demand.priority, demand.time_weight, demand.cost_weight) == (3.0, 0.5, 5.0)
    assert demand.profile == "bert"
    assert demand.work_units == 2.5
    assert demand.classes == frozenset({"v100", "a100"})
    assert demand.min_accelerator_memory_gib == 32
    assert demand.excluded_classes == frozenset({"v100"})
    assert (demand.estimate_seconds, demand.estimate_on_class) == (100, "v100")
    assert demand.estimate_by_class == {"k80": 900}
    assert demand.ready_since == 10.0
    assert demand.arrival == created.timestamp()
    assert demand.subtask_type == "training"


def test_running_for() -> None:
    key = SubtaskKey("ml", "a", "s")
    early = running_for(key, "v100", now=100, started_at=50, estimated_seconds=80, accelerators=2, cpu=8)
    late = running_for(key, "v100", now=200, started_at=50, estimated_seconds=80, accelerators=2, cpu=8)
    assert (early.remaining_seconds, late.remaining_seconds) == (30, 0)
