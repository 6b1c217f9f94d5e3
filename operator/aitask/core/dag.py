"""Dependencies between the sub-tasks of one AITask: order, cycles, and what may start.

``deps`` maps every sub-task name to the names it depends on (``spec.subtasks[].dependsOn``).
The functions are deterministic: ties keep the order of ``deps`` (the spec's order), so
plans, status and child Job creation come out the same on every run.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence


class CycleError(ValueError):
    """The dependencies form a cycle; ``cycle`` names it, first name repeated at the end."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        super().__init__("dependency cycle: " + " -> ".join(self.cycle))


class UnknownDependencyError(ValueError):
    """A sub-task depends on a name that is not a sub-task of the task."""

    def __init__(self, name: str, missing: str) -> None:
        self.name = name
        self.missing = missing
        super().__init__(f"sub-task {name!r} depends on unknown sub-task {missing!r}")


def _check_known(deps: Mapping[str, Sequence[str]]) -> None:
    for name, requires in deps.items():
        for dep in requires:
            if dep not in deps:
                raise UnknownDependencyError(name, dep)


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle as ``[a, b, ..., a]`` so an error message can name it, else None.

    Unknown dependency names are ignored here (``topological_order`` reports them).
    Iterative DFS, so a long chain cannot hit Python's recursion limit.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(deps, white)
    for root in deps:
        if colour[root] != white:
            continue
        path: list[str] = [root]
        iters = [iter(deps[root])]
        colour[root] = grey
        while path:
            advanced = False
            for dep in iters[-1]:
                state = colour.get(dep)
                if state is None or state == black:
                    continue
                if state == grey:
                    start = path.index(dep)
                    return [*path[start:], dep]
                colour[dep] = grey
                path.append(dep)
                iters.append(iter(deps[dep]))
                advanced = True
                break
            if not advanced:
                colour[path.pop()] = black
                iters.pop()
    return None


def topological_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Every name after all of its dependencies; ties in the spec's order.

    Raises ``CycleError`` (naming the cycle) or ``UnknownDependencyError`` because an
    AITask with either can never finish and must be reported as invalid, not retried.
    """
    _check_known(deps)
    cycle = find_cycle(deps)
    if cycle is not None:
        raise CycleError(cycle)
    position = {name: i for i, name in enumerate(deps)}
    dependants: dict[str, list[str]] = {name: [] for name in deps}
    missing = {name: len(set(requires)) for name, requires in deps.items()}
    for name, requires in deps.items():
        for dep in set(requires):
            dependants[dep].append(name)
    # Kahn's algorithm with the spec position as tie-break.
    heap = [(position[name], name) for name, count in missing.items() if count == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, name = heapq.heappop(heap)
        order.append(name)
        for child in dependants[name]:
            missing[child] -= 1
            if missing[child] == 0:
                heapq.heappush(heap, (position[child], child))
    return order


def ready(deps: Mapping[str, Sequence[str]], succeeded: set[str], started: set[str]) -> list[str]:
    """Sub-tasks that may start now: all dependencies succeeded, not started or finished yet.

    ``started`` holds everything that already has (or had) an attempt, so a running or
    failed sub-task is never offered twice. Order follows the spec.
    """
    return [
        name
        for name, requires in deps.items()
        if name not in succeeded and name not in started and all(dep in succeeded for dep in requires)
    ]


def descendants(deps: Mapping[str, Sequence[str]], name: str) -> list[str]:
    """Everything that (transitively) depends on ``name``: skipped when ``name`` fails."""
    dependants: dict[str, list[str]] = {n: [] for n in deps}
    for n, requires in deps.items():
        for dep in requires:
            if dep in dependants:
                dependants[dep].append(n)
    seen: set[str] = set()
    stack = [name]
    while stack:
        for child in dependants.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return [n for n in deps if n in seen]


def critical_path(deps: Mapping[str, Sequence[str]], seconds: Mapping[str, float]) -> tuple[float, list[str]]:
    """Longest chain of estimated runtimes: the least time the task can take with free capacity."""
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for name in topological_order(deps):
        best_dep: str | None = None
        start = 0.0
        for dep in deps[name]:
            if best_dep is None or finish[dep] > start:
                start = finish[dep]
                best_dep = dep
        finish[name] = start + seconds.get(name, 0.0)
        via[name] = best_dep
    if not finish:
        return 0.0, []
    last = max(finish, key=lambda n: finish[n])
    path: list[str] = []
    node: str | None = last
    while node is not None:
        path.append(node)
        node = via[node]
    return finish[last], path[::-1]
