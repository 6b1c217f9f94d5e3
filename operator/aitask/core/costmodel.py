"""The cost model: for a sub-task s and an executor class k, T, W, C and F = alpha*(W+T) + beta*C.

- ``T(s, k)``: estimated runtime (``core.estimator``).
- ``W(s, k)``: expected wait before the class can start it. The class's *units*
  (accelerators on a GPU class, CPU cores on a CPU pool) are a ``Timeline``: free units now,
  and when each busy unit is released by the work already admitted (``Running``, remaining
  seconds times its units). W is the time at which enough units are free for the demand if that
  backlog runs in order; in the fluid limit it is ``sum(remaining * units) / capacity``.
- ``C(s, k)``: ``T/3600 * pods * (acceleratorHour * accelerators + cpuHour * cpu + memoryGiBHour * GiB)``.
- ``F(s, k) = alpha * (W + T) + beta * C + penalty``: the lowest feasible F wins. ``penalty``
  is the right-sizing term: a class pricier than the cheapest feasible one, on which the
  profile has been measured to use its GPUs poorly, is made less attractive for that profile.

Infeasible classes are kept with a human reason so that `aitask plan` and the status can say
why a class was not used. Prices only ever enter F with a non-negative sign, so a higher price
never makes a class more attractive.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aitask.core.quantity import GIB
from aitask.core.types import ClassInfo, Demand, Learned, NodeInfo, Running, SchedulerParams

#: Units held by something the operator did not admit (another scheduler's pods) are assumed
#: to be released after this long; W needs some number, and an hour is a typical batch job.
UNKNOWN_BUSY_SECONDS = 3600.0
_EPS = 1e-9


def accelerator_resource(cls: ClassInfo) -> str:
    """The extended resource a GPU class's pods request."""
    return cls.accelerator_resource or "nvidia.com/gpu"


def pod_request(demand: Demand, cls: ClassInfo) -> tuple[int, float, float]:
    """(accelerators, cpu, memory bytes) one pod asks for on this class."""
    accelerators = demand.accelerators if cls.kind == "gpu" else 0
    return accelerators, demand.cpu, demand.memory


def demand_units(demand: Demand, cls: ClassInfo) -> float:
    """How many of the class's units (accelerators, or CPU cores) the demand holds while it runs."""
    if cls.kind == "gpu":
        return float(demand.pods * demand.accelerators)
    return demand.pods * demand.cpu


def running_units(item: Running, cls: ClassInfo) -> float:
    """The class's units held by admitted work: its accelerators on a GPU class, its cores on a CPU pool."""
    return float(item.accelerators) if cls.kind == "gpu" else item.cpu


def node_units(node: NodeInfo, cls: ClassInfo, *, free: bool) -> float:
    """A node's units for this class: its accelerators on a GPU class, its cores on a CPU pool."""
    source = node.free if free else node.allocatable
    if cls.kind == "gpu":
        return float(source.get(accelerator_resource(cls), 0.0))
    return float(source.get("cpu", 0.0))


@dataclass(frozen=True)
class ClassCapacity:
    """What a class could ever hold: its schedulable nodes grouped by allocatable shape."""

    name: str
    nodes: int
    units: float  # total allocatable units
    shapes: tuple[tuple[float, float, float, int], ...]  # (accelerators, cpu, memory, node count)

    def pods_per_node(self, shape: tuple[float, float, float, int], request: tuple[int, float, float]) -> int:
        accelerators, cpu, memory = request
        fits = math.inf
        for have, need in ((shape[0], accelerators), (shape[1], cpu), (shape[2], memory)):
            if need > 0:
                fits = min(fits, math.floor(have / need + _EPS))
        return shape[3] * (10**6 if fits == math.inf else int(fits))

    def max_pods(self, request: tuple[int, float, float]) -> int:
        return sum(self.pods_per_node(shape, request) for shape in self.shapes)


def class_capacity(cls: ClassInfo, nodes: Iterable[NodeInfo]) -> ClassCapacity:
    """Group the class's schedulable nodes by allocatable shape (usually a handful of shapes)."""
    resource = accelerator_resource(cls)
    shapes: Counter[tuple[float, float, float]] = Counter()
    units = 0.0
    count = 0
    for node in nodes:
        if not node.schedulable or cls.name not in node.classes:
            continue
        count += 1
        units += node_units(node, cls, free=False)
        alloc = node.allocatable
        shapes[
            (
                float(alloc.get(resource, 0.0)) if cls.kind == "gpu" else 0.0,
                float(alloc.get("cpu", 0.0)),
                float(alloc.get("memory", 0.0)),
            )
        ] += 1
    return ClassCapacity(
        name=cls.name,
        nodes=count,
        units=units,
        shapes=tuple((a, c, m, n) for (a, c, m), n in sorted(shapes.items())),
    )


def _describe(request: tuple[int, float, float], resource: str) -> str:
    accelerators, cpu, memory = request
    parts = [f"{accelerators} {resource}"] if accelerators else []
    parts += [f"{cpu:g} cpu", f"{memory / GIB:g}Gi memory"]
    return ", ".join(parts)


def infeasible_reason(demand: Demand, cls: ClassInfo, capacity: ClassCapacity) -> str:
    """Why the demand can never run on the class ("" if it could).

    Only permanent reasons belong here; a class that is merely full is feasible and
    shows up as a long wait W instead.
    """
    if demand.classes is not None and cls.name not in demand.classes:
        return f"not in executor.classes ({', '.join(sorted(demand.classes))})"
    if cls.kind not in demand.kinds:
        return f"kind {cls.kind} not allowed (executor kinds: {', '.join(sorted(demand.kinds))})"
    if cls.name in demand.excluded_classes:
        return "excluded after an OOM-killed attempt on it"
    if demand.min_accelerator_memory_gib > 0 and (
        cls.kind != "gpu" or cls.accelerator_memory_gib < demand.min_accelerator_memory_gib
    ):
        return (
            f"accelerator memory {cls.accelerator_memory_gib:g}GiB < required {demand.min_accelerator_memory_gib:g}GiB"
        )
    if capacity.nodes == 0:
        return "no ready node belongs to the class"
    request = pod_request(demand, cls)
    resource = accelerator_resource(cls)
    if not any(capacity.pods_per_node(shape, request) > 0 for shape in capacity.shapes):
        biggest = max(capacity.shapes, key=lambda s: (s[0], s[1], s[2]))
        largest = (
            _describe((int(biggest[0]), biggest[1], biggest[2]), resource)
            if cls.kind == "gpu"
            else (f"{biggest[1]:g} cpu, {biggest[2] / GIB:g}Gi memory")
        )
        return f"no node can ever fit one pod ({_describe(request, resource)}; largest node has {largest})"
    if demand.pods > 1:
        most = capacity.max_pods(request)
        if most < demand.pods:
            mode = "gang" if demand.gang else "parallelism"
            return f"{mode} needs {demand.pods} pods at once, the class can hold at most {most}"
    return ""


def cost(demand: Demand, cls: ClassInfo, runtime_seconds: float) -> float:
    """C: money spent holding the pods' resources for the runtime."""
    accelerators, cpu, memory = pod_request(demand, cls)
    per_pod_hour = (
        cls.price_accelerator_hour * accelerators + cls.price_cpu_hour * cpu + cls.price_memory_gib_hour * memory / GIB
    )
    return runtime_seconds / 3600.0 * demand.pods * per_pod_hour


def static_score(demand: Demand, runtime: float, money: float, penalty: float = 0.0) -> float:
    """The part of F that does not depend on W: ``alpha * T + beta * C + penalty``.

    The scheduler computes it once per (demand signature, class) and adds ``alpha * W`` per
    decision with ``score_with_wait``; ``score`` is the two together.
    """
    return demand.time_weight * runtime + demand.cost_weight * money + penalty


def score_with_wait(static: float, time_weight: float, wait: float) -> float:
    """F from its static part and W; a class that can never free enough units scores inf."""
    return math.inf if wait == math.inf else static + time_weight * wait


def score(demand: Demand, runtime: float, wait: float, money: float, penalty: float = 0.0) -> float:
    """F = alpha * (W + T) + beta * C (+ right-sizing penalty); lower is better."""
    return score_with_wait(static_score(demand, runtime, money, penalty), demand.time_weight, wait)


def rightsizing_penalty(
    demand: Demand,
    cls: ClassInfo,
    learned: Learned | None,
    *,
    cheapest_accelerator_price: float,
    runtime: float,
    money: float,
    params: SchedulerParams,
) -> float:
    """Extra F for a pricier class on which this profile leaves its GPUs mostly idle.

    Proportional to the utilisation shortfall and to the class's own F terms, so it is
    zero on the cheapest class, grows with the price, and vanishes at the threshold.
    """
    if (
        cls.kind != "gpu"
        or learned is None
        or learned.gpu_util_avg is None
        or params.low_gpu_util_percent <= 0
        or learned.gpu_util_avg >= params.low_gpu_util_percent
        or cls.price_accelerator_hour <= cheapest_accelerator_price
    ):
        return 0.0
    shortfall = (params.low_gpu_util_percent - max(learned.gpu_util_avg, 0.0)) / params.low_gpu_util_percent
    return params.rightsizing_penalty * shortfall * (demand.time_weight * runtime + demand.cost_weight * money)


class Timeline:
    """When the units of one class become free, relative to now: the basis of W.

    Entries are ``(time, units)`` sorted by time. ``reserve`` list-schedules a demand on the
    earliest units, so the wait seen by the next demand includes everything queued before it
    in the same cycle.
    """

    __slots__ = ("entries",)

    def __init__(self, free_now: float, releases: Iterable[tuple[float, float]] = ()) -> None:
        entries = [(max(0.0, t), u) for t, u in releases if u > 0]
        if free_now > 0:
            entries.append((0.0, free_now))
        entries.sort()
        self.entries: list[tuple[float, float]] = entries

    def free_now(self) -> float:
        total = 0.0
        for t, u in self.entries:
            if t > 0:
                break
            total += u
        return total

    def wait(self, units: float) -> float:
        """Seconds until ``units`` are free at once (inf if the class never has that many)."""
        if units <= 0:
            return 0.0
        acc = 0.0
        for t, u in self.entries:
            acc += u
            if acc >= units - _EPS:
                return t
        return math.inf

    def reserve(self, units: float, seconds: float) -> float:
        """Hold ``units`` from the earliest time they are free for ``seconds``; return the start."""
        if units <= 0:
            return 0.0
        acc = 0.0
        entries = self.entries
        for i, (t, u) in enumerate(entries):
            acc += u
            if acc >= units - _EPS:
                rest = entries[i + 1 :]
                leftover = acc - units
                if leftover > _EPS:
                    rest.insert(0, (t, leftover))
                bisect.insort(rest, (t + seconds, units))
                self.entries = rest
                return t
        return math.inf


def build_timeline(
    cls: ClassInfo,
    nodes: Sequence[NodeInfo],
    running: Iterable[Running],
    capacity: ClassCapacity,
) -> Timeline:
    """Free units now, plus each running demand's units released when it is estimated to end.

    Work queued outside the operator (``Running.queued``: a Job Kueue holds) holds no units now; it
    is reserved on the timeline after the rest, as a demand that chose to wait for the class would be.
    """
    free = sum(node_units(n, cls, free=True) for n in nodes if n.schedulable and cls.name in n.classes)
    releases: list[tuple[float, float]] = []
    queued: list[Running] = []
    busy_known = 0.0
    for item in running:
        if item.class_name != cls.name:
            continue
        if item.queued:
            queued.append(item)
            continue
        units = running_units(item, cls)
        busy_known += units
        releases.append((max(0.0, item.remaining_seconds), units))
    unknown = capacity.units - free - busy_known
    if unknown > _EPS:
        releases.append((UNKNOWN_BUSY_SECONDS, unknown))
    timeline = Timeline(free, releases)
    for item in queued:
        timeline.reserve(running_units(item, cls), max(0.0, item.remaining_seconds))
    return timeline


def unknown_busy_units(
    cls: ClassInfo, nodes: Sequence[NodeInfo], running: Iterable[Running], capacity: ClassCapacity
) -> float:
    """Units held by work the operator did not admit (other workloads' pods): of unknown length."""
    free = sum(node_units(n, cls, free=True) for n in nodes if n.schedulable and cls.name in n.classes)
    known = sum(running_units(item, cls) for item in running if item.class_name == cls.name and not item.queued)
    return max(0.0, capacity.units - free - known)


def backlog_unit_seconds(cls: ClassInfo, running: Iterable[Running]) -> float:
    """The admitted work still on the class: ``sum(remaining seconds * units)``."""
    backlog = 0.0
    for item in running:
        if item.class_name == cls.name:
            backlog += max(0.0, item.remaining_seconds) * running_units(item, cls)
    return backlog


def fluid_wait(cls: ClassInfo, running: Iterable[Running], capacity: ClassCapacity) -> float:
    """The backlog on the class spread over all its units: sum(remaining * units) / capacity."""
    if capacity.units <= 0:
        return math.inf
    return backlog_unit_seconds(cls, running) / capacity.units
