"""Node books: what is free on every schedulable node during one cycle, and best-fit packing.

Nodes are bucketed per class by their free units (accelerators on a GPU class, whole cores on
a CPU pool), so the best fit (the node with the fewest free units that fits, which keeps big
nodes free for big pods) is found without scanning every node. Free capacity is decremented
as soon as a pod is placed, and every class sharing the node sees it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aitask.core.costmodel import accelerator_resource
from aitask.core.types import ClassInfo, NodeInfo

_EPS = 1e-9

#: One pod's request: (accelerators, cpu cores, memory bytes), as ``costmodel.pod_request``.
Request = tuple[int, float, float]


class NodeBooks:
    """Free resources per schedulable node, indexed per class for best-fit packing."""

    def __init__(self, classes: Mapping[str, ClassInfo], nodes: Sequence[NodeInfo]) -> None:
        self.nodes = [n for n in nodes if n.schedulable]
        self.names = [n.name for n in self.nodes]
        self.free: list[dict[str, float]] = [dict(n.free) for n in self.nodes]
        self.node_classes: list[tuple[str, ...]] = [tuple(c for c in n.classes if c in classes) for n in self.nodes]
        self.members: dict[str, list[int]] = {name: [] for name in classes}
        for i, names in enumerate(self.node_classes):
            for name in names:
                self.members[name].append(i)
        self.resource: dict[str, str] = {}
        self.is_gpu: dict[str, bool] = {}
        self.free_units: dict[str, float] = {}
        self.buckets: dict[str, dict[int, dict[int, None]]] = {}
        self.max_key: dict[str, int] = {}
        self._room: dict[str, bool] = {}  # accelerator_room per class, until a pod is placed or released
        for name, cls in classes.items():
            self.resource[name] = accelerator_resource(cls)
            self.is_gpu[name] = cls.kind == "gpu"
            buckets: dict[int, dict[int, None]] = {}
            units = 0.0
            top = 0
            for i in self.members[name]:
                key = self._key(name, i)
                buckets.setdefault(key, {})[i] = None
                units += self._units(name, i)
                top = max(top, key)
            self.buckets[name] = buckets
            self.max_key[name] = top
            self.free_units[name] = units

    def class_nodes(self, name: str) -> list[NodeInfo]:
        """The schedulable nodes of a class."""
        return [self.nodes[i] for i in self.members[name]]

    def _units(self, name: str, i: int) -> float:
        free = self.free[i]
        return free.get(self.resource[name], 0.0) if self.is_gpu[name] else free.get("cpu", 0.0)

    def _key(self, name: str, i: int) -> int:
        return int(self._units(name, i) + _EPS)

    def _fits(self, i: int, resource: str, request: Request) -> bool:
        accelerators, cpu, memory = request
        free = self.free[i]
        return (
            (accelerators <= 0 or free.get(resource, 0.0) >= accelerators - _EPS)
            and free.get("cpu", 0.0) >= cpu - _EPS
            and free.get("memory", 0.0) >= memory - _EPS
        )

    def _best_fit(self, name: str, request: Request) -> int | None:
        accelerators, cpu, _ = request
        resource = self.resource[name]
        start = accelerators if self.is_gpu[name] else int(cpu + _EPS) if cpu >= 1 else 0
        buckets = self.buckets[name]
        for key in range(start, self.max_key[name] + 1):
            bucket = buckets.get(key)
            if not bucket:
                continue
            for i in bucket:
                if self._fits(i, resource, request):
                    return i
        return None

    def _apply(self, i: int, resource: str, request: Request, sign: float) -> None:
        accelerators, cpu, memory = request
        before = {name: self._key(name, i) for name in self.node_classes[i]}
        units_before = {name: self._units(name, i) for name in self.node_classes[i]}
        free = self.free[i]
        self._room.clear()
        if accelerators:
            free[resource] = free.get(resource, 0.0) - sign * accelerators
        free["cpu"] = free.get("cpu", 0.0) - sign * cpu
        free["memory"] = free.get("memory", 0.0) - sign * memory
        for name in self.node_classes[i]:
            self.free_units[name] += self._units(name, i) - units_before[name]
            key = self._key(name, i)
            if key != before[name]:
                buckets = self.buckets[name]
                del buckets[before[name]][i]
                buckets.setdefault(key, {})[i] = None
                if key > self.max_key[name]:
                    self.max_key[name] = key

    def accelerator_room(self, name: str) -> bool:
        """Whether some node of the (GPU) class has a whole accelerator free."""
        room = self._room.get(name)
        if room is None:
            room = self._room[name] = any(bucket for key, bucket in self.buckets[name].items() if key >= 1)
        return room

    def place(self, name: str, request: Request, pods: int) -> tuple[list[int], int]:
        """Pack all pods or none; returns (nodes, how many fitted before giving up)."""
        resource = self.resource[name]
        placed: list[int] = []
        for _ in range(pods):
            i = self._best_fit(name, request)
            if i is None:
                fitted = len(placed)
                self.release(name, request, placed)
                return [], fitted
            self._apply(i, resource, request, 1.0)
            placed.append(i)
        return placed, pods

    def release(self, name: str, request: Request, placed: Sequence[int]) -> None:
        """Give back pods placed by ``place`` (a trial placement), last first."""
        resource = self.resource[name]
        for j in reversed(placed):
            self._apply(j, resource, request, -1.0)

    def shared_units(self, name: str, request: Request, placed: Sequence[int]) -> dict[str, float]:
        """Units the placed pods take from the *other* classes sharing their nodes.

        A GPU class shares accelerators with another GPU class of the same resource; every
        class shares the nodes' cores with a CPU pool.
        """
        accelerators, cpu, _ = request
        resource = self.resource[name]
        shared: dict[str, float] = {}
        for i in placed:
            for other in self.node_classes[i]:
                if other == name:
                    continue
                if self.is_gpu[other]:
                    if self.resource[other] == resource and accelerators:
                        shared[other] = shared.get(other, 0.0) + accelerators
                else:
                    shared[other] = shared.get(other, 0.0) + cpu
        return shared
