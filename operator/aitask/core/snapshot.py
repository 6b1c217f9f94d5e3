"""Building the scheduler's snapshot from API objects (pure: plain dicts and pydantic models in).

The operator feeds these from its Kopf indexes, `aitask simulate` and `aitask plan` from
YAML files; both get the same ClassInfo/NodeInfo/Demand, so a plan preview is what the
operator would do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from aitask.api import v1alpha1 as api
from aitask.core.estimator import from_api
from aitask.core.quantity import parse_quantity
from aitask.core.types import ClassInfo, Demand, Learned, NodeInfo, Running, SubtaskKey, TolerationInfo

NO_SCHEDULE_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


def class_info(ec: api.ExecutorClass) -> ClassInfo:
    """Flatten an ExecutorClass into what the cost model reads."""
    spec = ec.spec
    accel = spec.accelerator
    return ClassInfo(
        name=ec.metadata.name,
        kind=spec.kind,
        node_selector=dict(spec.node_selector),
        accelerator_resource=accel.resource_name if accel is not None else None,
        accelerator_model=accel.model if accel is not None else None,
        accelerator_memory_gib=accel.memory_gi_b if accel is not None else 0.0,
        price_accelerator_hour=spec.price.accelerator_hour,
        price_cpu_hour=spec.price.cpu_hour,
        price_memory_gib_hour=spec.price.memory_gi_b_hour,
        speed_default=spec.speed.default,
        speed_profiles=dict(spec.speed.profiles),
        tolerations=tuple(
            TolerationInfo(key=t.key, operator=t.operator or "Equal", value=t.value, effect=t.effect)
            for t in spec.tolerations
        ),
    )


def tolerates(tolerations: Iterable[TolerationInfo], taint: Mapping[str, Any]) -> bool:
    """Kubernetes toleration matching (``Exists`` with no key tolerates everything)."""
    for tol in tolerations:
        if tol.effect is not None and tol.effect != taint.get("effect"):
            continue
        if tol.operator == "Exists":
            if tol.key is None or tol.key == taint.get("key"):
                return True
            continue
        if tol.key == taint.get("key") and (tol.value or "") == (taint.get("value") or ""):
            return True
    return False


def belongs(labels: Mapping[str, str], taints: Iterable[Mapping[str, Any]], cls: ClassInfo) -> bool:
    """A node is in a class when it matches the selector and the class tolerates its hard taints."""
    if any(labels.get(k) != v for k, v in cls.node_selector.items()):
        return False
    return all(tolerates(cls.tolerations, taint) for taint in taints if taint.get("effect") in NO_SCHEDULE_EFFECTS)


def _is_ready(status: Mapping[str, Any]) -> bool:
    conditions = status.get("conditions") or []
    for cond in conditions:
        if cond.get("type") == "Ready":
            return str(cond.get("status")) == "True"
    # A node without conditions (a cluster file for `aitask simulate`) counts as ready.
    return True


def node_info(
    node: Mapping[str, Any],
    classes: Mapping[str, ClassInfo] | Iterable[ClassInfo],
    used: Mapping[str, float],
) -> NodeInfo | None:
    """The node as the scheduler sees it, or None when it belongs to no executor class.

    ``used`` is what bound pods and the operator's own reservations already hold on it
    (resource name -> cores, bytes or count). A GPU class only takes nodes that actually
    offer its accelerator resource, so a loose selector cannot count CPU nodes as GPU capacity.
    """
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    labels: Mapping[str, str] = metadata.get("labels") or {}
    taints: list[Mapping[str, Any]] = list(spec.get("taints") or [])
    allocatable = {
        str(k): parse_quantity(v) for k, v in (status.get("allocatable") or status.get("capacity") or {}).items()
    }
    infos = classes.values() if isinstance(classes, Mapping) else classes
    member: list[str] = []
    for cls in infos:
        if not belongs(labels, taints, cls):
            continue
        if cls.kind == "gpu" and allocatable.get(cls.accelerator_resource or "nvidia.com/gpu", 0.0) <= 0:
            continue
        member.append(cls.name)
    if not member:
        return None
    free = {k: max(0.0, v - float(used.get(k, 0.0))) for k, v in allocatable.items()}
    return NodeInfo(
        name=str(metadata.get("name", "")),
        classes=tuple(member),
        allocatable=allocatable,
        free=free,
        schedulable=not bool(spec.get("unschedulable")) and _is_ready(status),
    )


def learned_map(classes: Iterable[api.ExecutorClass]) -> dict[tuple[str, str], Learned]:
    """(profile, class) -> learned runtime, from every class's ``status.learned``."""
    out: dict[tuple[str, str], Learned] = {}
    for ec in classes:
        for profile, value in ec.status.learned.items():
            out[(profile, ec.metadata.name)] = from_api(value)
    return out


def demand_for(
    task: api.AITask,
    subtask: api.Subtask,
    attempt: int,
    *,
    now: float,
    ready_since: float | None = None,
    arrival: float | None = None,
    default_time_weight: float = 1.0,
    default_cost_weight: float = 0.0,
    min_accel_memory_gib: float = 0.0,
    excluded: Iterable[str] = (),
    avoided: Iterable[str] = (),
) -> Demand:
    """The scheduler's view of one ready sub-task attempt.

    Defaults when the executor does not say: ``api.POD_DEFAULTS`` (a sub-task that may use a
    GPU gets 1 accelerator, cpu "4" and memory "16Gi" per pod; a CPU-only one cpu "1", "2Gi").
    ``arrival`` is when the task was submitted (the FIFO order): the operator passes
    ``creationTimestamp``, the simulator the ``aitask.dev/submit-after-seconds`` time;
    without it, creationTimestamp or else ``now``. ``min_accel_memory_gib`` and ``excluded``
    carry OOM escalation from earlier attempts, ``avoided`` the classes where one got stuck.
    """
    spec = task.spec
    executor = subtask.executor
    kinds = subtask.kinds
    defaults = api.POD_DEFAULTS["gpu" if "gpu" in kinds else "cpu"]
    accelerators = executor.accelerators if executor.accelerators is not None else defaults.accelerators
    if arrival is None:
        created = task.metadata.creation_timestamp
        arrival = created.timestamp() if created is not None else now
    time_weight = spec.objective.time_weight
    cost_weight = spec.objective.cost_weight
    return Demand(
        key=SubtaskKey(task.metadata.namespace or "default", task.metadata.name, subtask.name),
        attempt=attempt,
        priority=spec.priority,
        time_weight=default_time_weight if time_weight is None else time_weight,
        cost_weight=default_cost_weight if cost_weight is None else cost_weight,
        profile=subtask.effective_profile,
        work_units=subtask.work.units,
        pods=subtask.parallelism,
        completions=subtask.effective_completions,
        gang=subtask.gang,
        accelerators=accelerators,
        cpu=parse_quantity(executor.cpu or defaults.cpu),
        memory=parse_quantity(executor.memory or defaults.memory),
        kinds=kinds,
        classes=frozenset(executor.classes) if executor.classes else None,
        min_accelerator_memory_gib=max(executor.min_accelerator_memory_gi_b or 0.0, min_accel_memory_gib),
        excluded_classes=frozenset(excluded),
        estimate_seconds=subtask.estimate.seconds,
        estimate_on_class=subtask.estimate.on_class,
        estimate_by_class=dict(subtask.estimate.seconds_by_class),
        ready_since=now if ready_since is None else ready_since,
        arrival=arrival,
        subtask_type=subtask.type.value,
        avoided_classes=frozenset(avoided),
        preemptible=subtask.preemption.allowed,
    )


def resumed(
    demand: Demand, progress: float, overhead_seconds: float, move_to: str | None, *, attempt: int | None = None
) -> Demand:
    """The demand of an attempt that resumes stopped work: the work left, the resume overhead in T,
    and, after a migration, only the class it moves to (the move was decided for that class)."""
    classes = frozenset({move_to}) if move_to else demand.classes
    return replace(
        demand,
        attempt=demand.attempt if attempt is None else attempt,
        remaining=min(max(1.0 - progress, 0.0), 1.0),
        switch_seconds=overhead_seconds if progress > 0 else 0.0,
        classes=classes,
    )


def running_for(
    key: SubtaskKey,
    class_name: str,
    *,
    now: float,
    started_at: float,
    estimated_seconds: float,
    accelerators: int,
    cpu: float,
) -> Running:
    """Admitted work for W: what is left of its estimate (never negative; overruns count as done soon)."""
    return Running(
        key=key,
        class_name=class_name,
        remaining_seconds=max(0.0, started_at + estimated_seconds - now),
        accelerators=accelerators,
        cpu=cpu,
    )
