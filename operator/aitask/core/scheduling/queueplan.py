"""The queue plan of the ``cost`` policy: every ready demand on a class, total weighted F least.

Model (fluid, per class k with m units and admitted backlog B): the demands assigned to k run
in Smith order of ``v / (u * T)`` (v = weight * alpha, u = units), each starting after ``B/m``
plus the work of those before it over m. The marginal cost of putting demand j on k is its own
``v * (B/m + ahead/m + T) + beta*C + penalty`` plus the delay it imposes on the demands queued
behind it, ``u*T/m * sum(v behind)``. Demands are inserted from the back of the queue (lowest
Smith ratio first) at their least marginal cost, then ``plan_passes`` improvement passes move
any demand whose marginal cost is lower elsewhere. Fenwick trees over each class's Smith order
give the sums in O(log n), so the plan costs O(demands x candidate classes x log demands).
On the jobs-at-once benchmark instances this lands within 0.2-2% of the exact optimum (bench/quality.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from aitask.core.scheduling.evaluation import Evaluation
from aitask.core.types import Demand, SchedulerParams

#: One candidate class of one demand in the plan, a plain tuple (the hot loop unpacks it; a NamedTuple's
#: constructor costs a Python-level call per candidate per cycle): (option: index into the demand's
#: feasible options, rank: 1-based position in the class's Smith order, the class's Fenwick trees of
#: u*T and of weights, total: one cell with the class's total weight, 1 / the class's capacity m,
#: offset: B / m, the admitted backlog's wait, T, u * T, extra: beta*C + penalty).
_Candidate = tuple[int, int, list[float], list[float], list[float], float, float, float, float, float]


def ageing_weight(d: Demand, now: float, ageing_seconds: float) -> float:
    """Priority grown by ageing: waiting ``ageing_seconds`` doubles it, so nothing starves."""
    waited = max(0.0, now - d.ready_since)
    return d.priority * (1.0 + waited / ageing_seconds) if ageing_seconds > 0 else d.priority


def arrival_order(demands: Sequence[Demand]) -> list[int]:
    """The baselines' order: first come, first served."""
    return sorted(
        range(len(demands)),
        key=lambda i: (demands[i].arrival, demands[i].ready_since, str(demands[i].key), demands[i].attempt),
    )


def smith_order(
    demands: Sequence[Demand], evaluations: Sequence[Evaluation], *, now: float, ageing_seconds: float
) -> list[int]:
    """Weighted shortest first without a plan: Smith ratio on each demand's lowest-static-F class.

    The baselines' alternative to arrival order, so a benchmark can vary the order alone.
    """

    def key(i: int) -> tuple[float, float, float, str, int]:
        d = demands[i]
        evaluation = evaluations[i]
        ratio = -math.inf  # no feasible class: last
        if evaluation.feasible:
            c = evaluation.feasible[evaluation.ranked[0]]
            work = c.units * c.runtime
            v = ageing_weight(d, now, ageing_seconds) * d.time_weight
            ratio = v / work if work > 0 else math.inf
        return (-ratio, d.arrival, d.ready_since, str(d.key), d.attempt)

    return sorted(range(len(demands)), key=key)


def plan_queue(
    demands: Sequence[Demand],
    evaluations: Sequence[Evaluation],
    *,
    now: float,
    params: SchedulerParams,
    units: Mapping[str, float],
    backlog: Mapping[str, float],
) -> tuple[dict[int, int], list[int]]:
    """Assign every ready demand to a class so that the queue's total weighted F is least.

    ``units`` is each class's capacity m, ``backlog`` its admitted work B in unit-seconds.
    Returns the chosen option index per demand and the admission order (Smith ratio on the
    planned class, highest first; demands without a feasible class last).
    """
    weights, best_work, cands = _candidates(demands, evaluations, now=now, params=params, units=units, backlog=backlog)
    planned = [i for i in range(len(demands)) if cands[i]]

    def global_ratio(i: int) -> float:
        work = best_work[i]
        return weights[i] / work if work > 0 else math.inf

    # Back of the queue first: lowest Smith ratio on its best class.
    planned.sort(key=lambda i: (global_ratio(i), -demands[i].arrival, -i))
    plan = _assign(planned, cands, weights, params.plan_passes)

    def admission_key(i: int) -> tuple[float, float, float, str, int]:
        c = evaluations[i].feasible[plan[i]]
        work = c.units * c.runtime
        ratio = weights[i] / work if work > 0 else math.inf
        d = demands[i]
        return (-ratio, d.arrival, d.ready_since, str(d.key), d.attempt)

    order = sorted(planned, key=admission_key)
    order += [i for i in range(len(demands)) if not cands[i]]
    return plan, order


def _candidates(
    demands: Sequence[Demand],
    evaluations: Sequence[Evaluation],
    *,
    now: float,
    params: SchedulerParams,
    units: Mapping[str, float],
    backlog: Mapping[str, float],
) -> tuple[list[float], list[float], list[list[_Candidate]]]:
    """Per demand: its weight v, the work u*T on its best class, its plan cells (lowest static F first)."""
    n = len(demands)
    weights = [0.0] * n
    best_work = [0.0] * n
    members: dict[str, list[tuple[float, float, int, int, float, float, float]]] = {}
    ageing = params.ageing_seconds
    for i, d in enumerate(demands):
        cells = evaluations[i].cells
        if not cells:
            continue
        v = ageing_weight(d, now, ageing) * d.time_weight
        weights[i] = v
        best_work[i] = cells[0][2]
        for name, j, work, runtime, extra in cells:
            members.setdefault(name, []).append(
                (-(v / work) if work > 0 else -math.inf, d.arrival, i, j, runtime, work, extra)
            )
    # Per class: a Fenwick tree of (work, weight) over its Smith order; totals of weight.
    cands: list[list[_Candidate]] = [[] for _ in range(n)]
    for name, entries in members.items():
        entries.sort()
        size = len(entries)
        work_tree = [0.0] * (size + 1)
        weight_tree = [0.0] * (size + 1)
        total = [0.0]
        m = units[name]
        inv_m = 1.0 / m if m > 0 else 1.0
        offset = backlog.get(name, 0.0) * inv_m
        for rank, (_, _, i, j, runtime, work, extra) in enumerate(entries):
            cands[i].append((j, rank + 1, work_tree, weight_tree, total, inv_m, offset, runtime, work, extra))
    return weights, best_work, cands


def _assign(
    planned: Sequence[int], cands: Sequence[Sequence[_Candidate]], weights: Sequence[float], passes: int
) -> dict[int, int]:
    """Greedy insertion in ``planned`` order at the least marginal cost, then improvement passes."""

    def best_of(i: int) -> tuple[float, int]:
        v = weights[i]
        best_cost = math.inf
        best_j = cands[i][0][0]  # an infinite (or NaN) marginal on every class still gets a class
        for j, pos, work_tree, weight_tree, total, inv_m, offset, runtime, work, extra in cands[i]:
            ahead = 0.0
            before = 0.0
            k = pos - 1  # prefix [0, rank): entries strictly ahead in Smith order
            while k > 0:
                ahead += work_tree[k]
                before += weight_tree[k]
                k -= k & -k
            marginal = v * (offset + runtime) + extra + (v * ahead + work * (total[0] - before)) * inv_m
            if marginal < best_cost:
                best_cost = marginal
                best_j = j
        return best_cost, best_j

    def put(i: int, j: int, sign: float) -> None:
        for jj, pos, work_tree, weight_tree, total, _, _, _, work, _ in cands[i]:
            if jj != j:
                continue
            size = len(work_tree) - 1
            k = pos
            dw = sign * work
            dv = sign * weights[i]
            while k <= size:
                work_tree[k] += dw
                weight_tree[k] += dv
                k += k & -k
            total[0] += dv
            return

    plan: dict[int, int] = {}
    for i in planned:
        _, j = best_of(i)
        plan[i] = j
        put(i, j, 1.0)
    for _ in range(passes):
        moved = False
        for i in planned:
            if len(cands[i]) < 2:
                continue
            j = plan[i]
            put(i, j, -1.0)
            _, k = best_of(i)
            if k != j:
                moved = True
            plan[i] = k
            put(i, k, 1.0)
        if not moved:
            break
    return plan
