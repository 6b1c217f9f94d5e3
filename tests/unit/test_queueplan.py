"""The queue plan's Fenwick-tree assignment against the model it computes, summed naively.

Integer weights, works and extras, capacities that are powers of two and backlogs that are multiples
of them make every sum exact in floating point, in any order, so the two must give the same plan,
tie for tie: the tree layout (power-of-two trees, cached index paths, one complex tree for both sums)
and the improvement pass (a demand priced on its own class with its weight left out, instead of taken
out and put back) may change how the sums are formed, never what they are.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aitask.core.scheduling import queueplan
from aitask.core.types import SchedulerParams

CLASSES = ("k80", "p100", "v100")


def _reference(
    weights: list[float],
    cells: list[tuple[tuple[str, int, float, float, float], ...]],
    arrivals: list[float],
    planned: list[int],
    units: dict[str, float],
    backlog: dict[str, float],
    passes: int,
) -> dict[int, int]:
    """The module docstring's model, every sum taken over the demands planned on the class."""

    def key(i: int, c: int) -> tuple[float, float, int]:
        work = cells[i][c][2]
        return (-(weights[i] / work) if work > 0 else -math.inf, arrivals[i], i)

    on: dict[int, int] = {}

    def marginal(i: int, c: int) -> float:
        name, _, work, runtime, extra = cells[i][c]
        mine = key(i, c)
        ahead = behind = 0.0
        for x, cx in on.items():
            if x == i or cells[x][cx][0] != name:
                continue
            if key(x, cx) < mine:
                ahead += cells[x][cx][2]
            else:
                behind += weights[x]
        m = units[name]
        v = weights[i]
        return v * (backlog.get(name, 0.0) / m + runtime) + extra + (v * ahead + work * behind) / m

    # Ties go to the class that some demand named first (the module keeps its classes in that order).
    first: dict[str, int] = {}
    for row in cells:
        for name, *_ in row:
            first.setdefault(name, len(first))

    def best(i: int) -> int:
        tried = sorted(range(len(cells[i])), key=lambda c: first[cells[i][c][0]])
        costs = {c: marginal(i, c) for c in tried}
        return min(tried, key=lambda c: (costs[c], tried.index(c)))

    for i in planned:
        on[i] = best(i)
    for _ in range(passes):
        moved = False
        for i in planned:
            if len(cells[i]) < 2:
                continue
            new = best(i)
            moved = moved or new != on[i]
            on[i] = new
        if not moved:
            break
    return {i: cells[i][c][1] for i, c in on.items()}


@st.composite
def _queues(draw: Any) -> tuple[list[Any], list[Any], dict[str, float], dict[str, float]]:
    n = draw(st.integers(min_value=1, max_value=40))
    demands, evaluations = [], []
    for i in range(n):
        names = draw(st.lists(st.sampled_from(CLASSES), min_size=0, max_size=3, unique=True))
        cells = []
        for j, name in enumerate(names):
            runtime = float(draw(st.integers(min_value=1, max_value=50)))
            per = draw(st.sampled_from((1, 2, 4)))
            cells.append((name, j, per * runtime, runtime, float(draw(st.integers(min_value=0, max_value=30)))))
        demands.append(
            SimpleNamespace(
                priority=float(draw(st.integers(min_value=1, max_value=4))),
                time_weight=1.0,
                ready_since=0.0,
                arrival=float(draw(st.integers(min_value=0, max_value=5))),
                key=f"t{i}",
                attempt=1,
            )
        )
        evaluations.append(SimpleNamespace(cells=tuple(cells), feasible=tuple(range(len(cells)))))
    units = {c: float(draw(st.sampled_from((1, 2, 4, 8)))) for c in CLASSES}
    backlog = {c: units[c] * draw(st.integers(min_value=0, max_value=20)) for c in CLASSES}
    return demands, evaluations, units, backlog


@settings(max_examples=300, deadline=None)
@given(_queues(), st.integers(min_value=0, max_value=3))
def test_assignment_equals_the_model_summed_naively(queue: Any, passes: int) -> None:
    demands, evaluations, units, backlog = queue
    params = SchedulerParams(ageing_seconds=0.0, plan_passes=passes)
    weights, best_work, cands = queueplan._candidates(
        demands, evaluations, now=0.0, params=params, units=units, backlog=backlog
    )
    planned = [i for i in range(len(demands)) if cands[i]]
    planned.sort(key=lambda i: (weights[i] / best_work[i], -demands[i].arrival, -i))
    got = queueplan._assign(planned, cands, weights, passes)
    cells = [e.cells for e in evaluations]
    want = _reference(weights, cells, [d.arrival for d in demands], planned, units, backlog, passes)
    assert set(got) == set(planned)
    assert got == want


def test_the_property_sees_queues_where_the_pass_moves_demands() -> None:
    """The pass is exercised: on this queue the insertion alone and one pass plan differently."""
    a = SimpleNamespace(priority=1.0, time_weight=1.0, ready_since=0.0, arrival=0.0, key="a", attempt=1)
    b = SimpleNamespace(priority=1.0, time_weight=1.0, ready_since=0.0, arrival=0.0, key="b", attempt=1)
    # b is inserted first onto the fast class; a, a better fit for it, then pushes b to the slow one.
    evaluations = [
        SimpleNamespace(cells=(("v100", 0, 1.0, 1.0, 0.0), ("k80", 1, 40.0, 40.0, 0.0))),
        SimpleNamespace(cells=(("v100", 0, 2.0, 2.0, 0.0), ("k80", 1, 2.5, 2.5, 0.0))),
    ]
    units = {"v100": 1.0, "k80": 1.0}
    plans = []
    for passes in (0, 1):
        params = SchedulerParams(ageing_seconds=0.0, plan_passes=passes)
        weights, best_work, cands = queueplan._candidates(
            [a, b], evaluations, now=0.0, params=params, units=units, backlog={}
        )
        planned = sorted(range(2), key=lambda i: (weights[i] / best_work[i], -i))
        plans.append(queueplan._assign(planned, cands, weights, passes))
        cells = [e.cells for e in evaluations]
        assert plans[-1] == _reference(weights, cells, [0.0, 0.0], planned, units, {}, passes)
    assert plans[0] != plans[1]
