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

import functools
import math
from collections.abc import Mapping, Sequence

from aitask.core.scheduling.evaluation import Evaluation
from aitask.core.types import Demand, SchedulerParams

#: One candidate class of one demand in the plan, a plain tuple (the hot loop unpacks it; a NamedTuple's
#: constructor costs a Python-level call per candidate per cycle): (option: index into the demand's
#: feasible options, the Fenwick indices of the class's prefix strictly ahead of it in Smith order, of
#: its own position and those above it, the class's Fenwick tree of u*T + 1j*weight, total: one cell
#: with the class's total weight, 1 / the class's capacity m, offset: B / m, the admitted backlog's
#: wait, T, u * T, extra: beta*C + penalty). One complex tree holds both sums: complex addition adds
#: the two parts apart, so each sum is the same float sum as in a tree of its own, at one index a step.
_Candidate = tuple[int, tuple[int, ...], tuple[int, ...], list[complex], list[float], float, float, float, float, float]


@functools.lru_cache(maxsize=8)  # the sizes in use at once are few; one of 1,024 cells builds in a few ms
def _paths(cap: int) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Per position 0..cap of a Fenwick tree of ``cap`` cells (a power of two, so that every update
    path ends at ``cap``): the indices whose cells sum to the prefix [1, pos), and the indices a change
    at ``pos`` updates. They depend on the position and ``cap`` alone, so they are built once. A
    tree longer than its entries reads the same cells with the same sums: its extra cells are only
    ever written."""
    ahead: list[tuple[int, ...]] = []
    above: list[tuple[int, ...]] = []
    for pos in range(cap + 1):
        down, k = [], pos - 1
        while k > 0:
            down.append(k)
            k -= k & -k
        up, k = [], pos
        while 0 < k <= cap:
            up.append(k)
            k += k & -k
        ahead.append(tuple(down))
        above.append(tuple(up))
    return tuple(ahead), tuple(above)


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
    # Per class: a Fenwick tree of work + 1j*weight over its Smith order; totals of weight.
    cands: list[list[_Candidate]] = [[] for _ in range(n)]
    for name, entries in members.items():
        entries.sort()
        cap = 1 << len(entries).bit_length()
        ahead, above = _paths(cap)
        tree = [0j] * (cap + 1)
        total = [0.0]
        m = units[name]
        inv_m = 1.0 / m if m > 0 else 1.0
        offset = backlog.get(name, 0.0) * inv_m
        for rank, (_, _, i, j, runtime, work, extra) in enumerate(entries, start=1):
            cands[i].append((j, ahead[rank], above[rank], tree, total, inv_m, offset, runtime, work, extra))
    return weights, best_work, cands


def _assign(
    planned: Sequence[int], cands: Sequence[Sequence[_Candidate]], weights: Sequence[float], passes: int
) -> dict[int, int]:
    """Greedy insertion in ``planned`` order at the least marginal cost, then improvement passes."""

    def best_of(i: int, own: int = -1) -> int:
        """The index of demand i's candidate of least marginal cost. ``own``: the candidate it is planned
        on, whose class's total then leaves its own weight out (its prefix never holds it: a Fenwick
        prefix before a position reads none of the cells that an update at that position writes)."""
        v = weights[i]
        best_cost = math.inf
        best = 0  # an infinite (or NaN) marginal on every class still gets a class
        for at, (_, ahead, _, tree, total, inv_m, offset, runtime, work, extra) in enumerate(cands[i]):
            acc = 0j  # (u*T, weight) of the entries strictly ahead in Smith order
            for k in ahead:
                acc += tree[k]
            rest = total[0] - v if at == own else total[0]
            marginal = v * (offset + runtime) + extra + (v * acc.real + work * (rest - acc.imag)) * inv_m
            if marginal < best_cost:
                best_cost = marginal
                best = at
        return best

    def put(i: int, at: int, sign: float) -> None:
        _, _, above, tree, total, _, _, _, work, _ = cands[i][at]
        dv = sign * weights[i]
        dz = complex(sign * work, dv)
        for k in above:
            tree[k] += dz
        total[0] += dv

    at_of: dict[int, int] = {}
    for i in planned:
        at = best_of(i)
        at_of[i] = at
        put(i, at, 1.0)
    for _ in range(passes):
        moved = False
        for i in planned:
            if len(cands[i]) < 2:
                continue
            at = at_of[i]
            new = best_of(i, at)
            if new != at:
                moved = True
                put(i, at, -1.0)
                put(i, new, 1.0)
                at_of[i] = new
        if not moved:
            break
    return {i: cands[i][at][0] for i, at in at_of.items()}
