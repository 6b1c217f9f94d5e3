"""Test builders: short, readable construction of API objects and core values.

    make_aitask("a").subtask("train", gpus=1, seconds_by_class={"v100": 100}).obj()
    make_class("v100", gpu_mem=16, price=3.06)          # api.ExecutorClass
    make_node("n1", gpus=8, klass="v100")               # core/v1 Node dict
    make_demand("a/train", gpus=1, by_class={"v100": 100})  # core Demand

Every class built here selects nodes by the label ``aitask.dev/class=<name>`` unless given a
``selector``; ``make_node(..., klass=name)`` sets that label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aitask.api import v1alpha1 as api
from aitask.core.quantity import GIB, parse_quantity
from aitask.core.snapshot import class_info, node_info
from aitask.core.types import ClassInfo, Demand, NodeInfo, SubtaskKey

CLASS_LABEL = "aitask.dev/class"


class TaskBuilder:
    def __init__(self, name: str, namespace: str = "default") -> None:
        self._meta: dict[str, Any] = {"name": name, "namespace": namespace, "annotations": {}}
        self._spec: dict[str, Any] = {"subtasks": []}

    def priority(self, value: float) -> TaskBuilder:
        self._spec["priority"] = value
        return self

    def objective(self, time_weight: float | None = None, cost_weight: float | None = None) -> TaskBuilder:
        self._spec["objective"] = {"timeWeight": time_weight, "costWeight": cost_weight}
        return self

    def submit_after(self, seconds: float) -> TaskBuilder:
        self._meta["annotations"]["aitask.dev/submit-after-seconds"] = str(seconds)
        return self

    def annotate(self, key: str, value: str) -> TaskBuilder:
        self._meta["annotations"][key] = value
        return self

    def subtask(
        self,
        name: str,
        *,
        type: str | None = None,  # noqa: A002 - mirrors the API field
        gpus: int | None = None,
        cpu: str | None = None,
        memory: str | None = None,
        kinds: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        depends_on: Sequence[str] = (),
        seconds: float | None = None,
        on_class: str | None = None,
        seconds_by_class: Mapping[str, float] | None = None,
        profile: str | None = None,
        image: str = "registry.example/job:1",
        parallelism: int = 1,
        completions: int | None = None,
        gang: bool = False,
        work_units: float | None = None,
        min_accel_memory_gib: float | None = None,
        **extra: Any,
    ) -> TaskBuilder:
        executor: dict[str, Any] = {}
        if kinds is not None:
            executor["kinds"] = list(kinds)
        if classes is not None:
            executor["classes"] = list(classes)
        if gpus is not None:
            executor["accelerators"] = gpus
        if cpu is not None:
            executor["cpu"] = cpu
        if memory is not None:
            executor["memory"] = memory
        if min_accel_memory_gib is not None:
            executor["minAcceleratorMemoryGiB"] = min_accel_memory_gib
        estimate: dict[str, Any] = {}
        if seconds is not None:
            estimate["seconds"] = seconds
        if on_class is not None:
            estimate["onClass"] = on_class
        if seconds_by_class:
            estimate["secondsByClass"] = dict(seconds_by_class)
        sub: dict[str, Any] = {
            "name": name,
            "type": type or ("training" if gpus else "custom"),
            "image": image,
            "dependsOn": list(depends_on),
            "parallelism": parallelism,
            "gang": gang,
            "executor": executor,
            "estimate": estimate,
        }
        if profile is not None:
            sub["profile"] = profile
        if completions is not None:
            sub["completions"] = completions
        if work_units is not None:
            sub["work"] = {"units": work_units}
        sub.update(extra)
        self._spec["subtasks"].append(sub)
        return self

    def dict(self) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": "AITask",
            "metadata": self._meta,
            "spec": self._spec,
        }

    def obj(self) -> api.AITask:
        return api.AITask.model_validate(self.dict())


def make_aitask(name: str, namespace: str = "default") -> TaskBuilder:
    return TaskBuilder(name, namespace)


def make_class(
    name: str,
    *,
    gpu_mem: float | None = None,
    model: str | None = None,
    resource: str = "nvidia.com/gpu",
    price: float = 0.0,
    cpu_price: float = 0.0,
    memory_price: float = 0.0,
    speed: float = 1.0,
    speed_profiles: Mapping[str, float] | None = None,
    selector: Mapping[str, str] | None = None,
    tolerations: Iterable[Mapping[str, Any]] = (),
    learned: Mapping[str, Mapping[str, Any]] | None = None,
) -> api.ExecutorClass:
    """A GPU class when ``gpu_mem`` is given, else a CPU pool."""
    spec: dict[str, Any] = {
        "nodeSelector": dict(selector) if selector is not None else {CLASS_LABEL: name},
        "tolerations": list(tolerations),
        "price": {"acceleratorHour": price, "cpuHour": cpu_price, "memoryGiBHour": memory_price},
        "speed": {"default": speed, "profiles": dict(speed_profiles or {})},
    }
    if gpu_mem is not None:
        spec["accelerator"] = {"resourceName": resource, "model": model or name, "memoryGiB": gpu_mem}
    obj: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": "ExecutorClass",
        "metadata": {"name": name},
        "spec": spec,
    }
    if learned:
        obj["status"] = {"learned": {k: dict(v) for k, v in learned.items()}}
    return api.ExecutorClass.model_validate(obj)


def make_class_info(name: str, **kwargs: Any) -> ClassInfo:
    return class_info(make_class(name, **kwargs))


def make_node(
    name: str,
    *,
    gpus: int = 0,
    cpu: str = "32",
    memory: str = "256Gi",
    klass: str | None = None,
    labels: Mapping[str, str] | None = None,
    taints: Iterable[Mapping[str, Any]] = (),
    ready: bool | None = None,
    unschedulable: bool = False,
    resource: str = "nvidia.com/gpu",
) -> dict[str, Any]:
    """A core/v1 Node dict; ``ready=None`` leaves out conditions (as a cluster file would)."""
    all_labels = dict(labels or {})
    if klass is not None:
        all_labels[CLASS_LABEL] = klass
    allocatable: dict[str, str] = {"cpu": cpu, "memory": memory, "pods": "110"}
    if gpus:
        allocatable[resource] = str(gpus)
    status: dict[str, Any] = {"allocatable": allocatable, "capacity": dict(allocatable)}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "spec": {"taints": list(taints)} if taints else {},
        "status": status,
    }
    if unschedulable:
        node["spec"]["unschedulable"] = True
    return node


def make_node_info(
    name: str,
    classes: Sequence[str],
    *,
    gpus: float = 0,
    cpu: float = 32,
    memory_gib: float = 256,
    free: Mapping[str, float] | None = None,
    schedulable: bool = True,
    resource: str = "nvidia.com/gpu",
) -> NodeInfo:
    """A NodeInfo directly (for scheduler tests that skip node dicts)."""
    allocatable = {"cpu": float(cpu), "memory": memory_gib * GIB}
    if gpus:
        allocatable[resource] = float(gpus)
    left = dict(allocatable)
    if free:
        left.update(free)
    return NodeInfo(
        name=name, classes=tuple(classes), allocatable=allocatable, free=left, schedulable=schedulable
    )


def nodes_from_dicts(nodes: Iterable[Mapping[str, Any]], classes: Mapping[str, ClassInfo]) -> tuple[NodeInfo, ...]:
    infos = (node_info(n, classes, {}) for n in nodes)
    return tuple(n for n in infos if n is not None)


def make_demand(
    key: str = "default/a/train",
    *,
    gpus: int = 1,
    cpu: float = 4.0,
    memory: str | float = "16Gi",
    pods: int = 1,
    gang: bool = False,
    kinds: Iterable[str] = ("gpu",),
    classes: Iterable[str] | None = None,
    by_class: Mapping[str, float] | None = None,
    seconds: float | None = None,
    on_class: str | None = None,
    profile: str = "p",
    priority: float = 1.0,
    time_weight: float = 1.0,
    cost_weight: float = 0.0,
    work_units: float = 1.0,
    min_mem: float = 0.0,
    excluded: Iterable[str] = (),
    avoided: Iterable[str] = (),
    ready_since: float = 0.0,
    arrival: float = 0.0,
    attempt: int = 1,
    subtask_type: str = "training",
) -> Demand:
    parts = key.split("/")
    if len(parts) == 2:
        parts = ["default", *parts]
    namespace, task, sub = parts
    return Demand(
        key=SubtaskKey(namespace, task, sub),
        attempt=attempt,
        priority=priority,
        time_weight=time_weight,
        cost_weight=cost_weight,
        profile=profile,
        work_units=work_units,
        pods=pods,
        completions=pods,
        gang=gang,
        accelerators=gpus,
        cpu=cpu,
        memory=parse_quantity(memory),
        kinds=frozenset(kinds),
        classes=frozenset(classes) if classes is not None else None,
        min_accelerator_memory_gib=min_mem,
        excluded_classes=frozenset(excluded),
        avoided_classes=frozenset(avoided),
        estimate_seconds=seconds,
        estimate_on_class=on_class,
        estimate_by_class=dict(by_class or {}),
        ready_since=ready_since,
        arrival=arrival,
        subtask_type=subtask_type,
    )
