"""One scheduling cycle: snapshot -> admissions and deferrals (pure, no clock, no API calls).

Steps, as in Kueue's scheduler, each reading only the snapshot and this cycle's books:

1. **Index** the cluster per class: schedulable nodes bucketed by free units (accelerators on a
   GPU class, whole cores on a CPU pool) for best-fit packing, the class's capacity shapes for
   feasibility, and its ``Timeline`` (free units now, and when running work releases the rest).
2. **Evaluate** each demand once per distinct (estimate inputs, shape, weights) signature:
   T, C, the right-sizing penalty and the feasibility of every class. Demands of one profile
   share the work, so a cycle costs O(signatures x classes + demands x classes).
3. **Plan and order** (``cost``): assign the whole queue to classes so that its total
   weighted F is least, in a fluid model of each class where its demands run in Smith order
   (``priority * (1 + waited/ageing) * alpha / (units * T)``: weighted shortest first, and a
   demand that waited ``ageing_seconds`` counts double, so none starves). A demand's marginal
   cost on a class is its own ``alpha*(W+T) + beta*C + penalty`` plus the delay it imposes on
   the demands queued behind it there (``_plan``). Demands are then taken in Smith order on
   their planned class. ``fifo`` and ``agnostic`` take them by arrival.
4. **Assign**: ``cost`` the planned class; ``fifo`` the class that finishes first (W+T);
   ``agnostic`` any feasible class that has room now (the one with most free units, as a
   spreading scheduler would), blind to speed. W comes from the class timeline, which holds
   everything admitted *and* everything that chose to wait for that class earlier in this
   cycle (``lookahead``): a demand whose class is busy waits for it and holds its place, so
   the demands behind it cannot take the units it waits for.
5. **Admit** what fits now: pods are packed best-fit (the node with the fewest free units that
   fits, so big nodes stay free for big pods), and free capacity is decremented at once.
   Multi-pod demands are admitted only when all ``pods`` fit together, gang or not: a Job
   with ``parallelism: n`` is expected to run its n pods at once, and half-started shards
   would hold accelerators while waiting for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aitask.core.costmodel import (
    ClassCapacity,
    Timeline,
    accelerator_resource,
    build_timeline,
    class_capacity,
    cost,
    demand_units,
    infeasible_reason,
    pod_request,
    rightsizing_penalty,
)
from aitask.core.estimator import Estimate, Estimator
from aitask.core.quantity import GIB
from aitask.core.types import (
    Admission,
    ClassInfo,
    CycleResult,
    Deferral,
    Demand,
    NodeInfo,
    Option,
    Policy,
    Running,
    SchedulerParams,
    Snapshot,
)

_EPS = 1e-9

NO_FEASIBLE_CLASS = "NoFeasibleClass"
INSUFFICIENT_CAPACITY = "InsufficientCapacity"
GANG_INCOMPLETE = "GangIncomplete"


@dataclass(frozen=True, slots=True)
class _Choice:
    """The static part of one (signature, feasible class): everything but W."""

    name: str
    runtime: float
    money: float
    penalty: float
    base: float  # alpha*T + beta*C + penalty; F = base + alpha*W
    units: float
    request: tuple[int, float, float]
    source: str


@dataclass(frozen=True, slots=True)
class _Static:
    feasible: tuple[_Choice, ...]
    infeasible: tuple[Option, ...]
    best_runtime: float
    ranked: tuple[int, ...]  # feasible indices, lowest static F (alpha*T + beta*C + penalty) first


class _Fenwick:
    """Prefix sums with point updates in O(log n) (the plan's per-class running totals)."""

    __slots__ = ("size", "tree")

    def __init__(self, size: int) -> None:
        self.size = size
        self.tree = [0.0] * (size + 1)

    def add(self, index: int, value: float) -> None:
        i = index + 1
        tree = self.tree
        while i <= self.size:
            tree[i] += value
            i += i & -i

    def prefix(self, end: int) -> float:
        """Sum of entries [0, end)."""
        total = 0.0
        tree = self.tree
        i = end
        while i > 0:
            total += tree[i]
            i -= i & -i
        return total


class _Cycle:
    def __init__(self, snapshot: Snapshot, params: SchedulerParams) -> None:
        self.snapshot = snapshot
        self.params = params
        self.classes: Mapping[str, ClassInfo] = snapshot.classes
        nodes = [n for n in snapshot.nodes if n.schedulable]
        self.node_names = [n.name for n in nodes]
        self.free: list[dict[str, float]] = [dict(n.free) for n in nodes]
        self.node_classes: list[tuple[str, ...]] = [tuple(c for c in n.classes if c in self.classes) for n in nodes]
        members: dict[str, list[int]] = {name: [] for name in self.classes}
        for i, names in enumerate(self.node_classes):
            for name in names:
                members[name].append(i)
        running_by_class: dict[str, list[Running]] = {}
        self.backlog: dict[str, float] = {}
        for item in snapshot.running:
            running_by_class.setdefault(item.class_name, []).append(item)
            cls = self.classes.get(item.class_name)
            if cls is not None:
                units = float(item.accelerators) if cls.kind == "gpu" else item.cpu
                self.backlog[item.class_name] = (
                    self.backlog.get(item.class_name, 0.0) + max(0.0, item.remaining_seconds) * units
                )

        self.resource: dict[str, str] = {}
        self.is_gpu: dict[str, bool] = {}
        self.capacity: dict[str, ClassCapacity] = {}
        self.timeline: dict[str, Timeline] = {}
        self.free_units: dict[str, float] = {}
        self.buckets: dict[str, dict[int, dict[int, None]]] = {}
        self.max_key: dict[str, int] = {}
        for name, cls in self.classes.items():
            class_nodes: Sequence[NodeInfo] = [nodes[i] for i in members[name]]
            self.resource[name] = accelerator_resource(cls)
            self.is_gpu[name] = cls.kind == "gpu"
            cap = class_capacity(cls, class_nodes)
            self.capacity[name] = cap
            self.timeline[name] = build_timeline(cls, class_nodes, running_by_class.get(name, ()), cap)
            buckets: dict[int, dict[int, None]] = {}
            units = 0.0
            top = 0
            for i in members[name]:
                key = self._key(name, i)
                buckets.setdefault(key, {})[i] = None
                units += self._units(name, i)
                top = max(top, key)
            self.buckets[name] = buckets
            self.max_key[name] = top
            self.free_units[name] = units
        self.estimator = Estimator(self.classes, snapshot.learned)
        self._static: dict[tuple[object, ...], _Static] = {}
        self._shapes: dict[
            tuple[object, ...],
            tuple[tuple[tuple[str, ClassInfo, float, tuple[int, float, float]], ...], tuple[Option, ...], float],
        ] = {}
        self._estimates: dict[tuple[object, str], Estimate] = {}

    # ------------------------------------------------------------------ node books

    def _units(self, name: str, i: int) -> float:
        free = self.free[i]
        return free.get(self.resource[name], 0.0) if self.is_gpu[name] else free.get("cpu", 0.0)

    def _key(self, name: str, i: int) -> int:
        return int(self._units(name, i) + _EPS)

    def _fits(self, i: int, resource: str, request: tuple[int, float, float]) -> bool:
        accelerators, cpu, memory = request
        free = self.free[i]
        return (
            (accelerators <= 0 or free.get(resource, 0.0) >= accelerators - _EPS)
            and free.get("cpu", 0.0) >= cpu - _EPS
            and free.get("memory", 0.0) >= memory - _EPS
        )

    def _best_fit(self, name: str, request: tuple[int, float, float]) -> int | None:
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

    def _apply(self, i: int, resource: str, request: tuple[int, float, float], sign: float) -> None:
        accelerators, cpu, memory = request
        before = {name: self._key(name, i) for name in self.node_classes[i]}
        units_before = {name: self._units(name, i) for name in self.node_classes[i]}
        free = self.free[i]
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

    def _place(self, name: str, request: tuple[int, float, float], pods: int) -> tuple[list[int], int]:
        """Pack all pods or none; returns (nodes, how many fitted before giving up)."""
        resource = self.resource[name]
        placed: list[int] = []
        for _ in range(pods):
            i = self._best_fit(name, request)
            if i is None:
                fitted = len(placed)
                for j in reversed(placed):
                    self._apply(j, resource, request, -1.0)
                return [], fitted
            self._apply(i, resource, request, 1.0)
            placed.append(i)
        return placed, pods

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, d: Demand) -> _Static:
        """T, C, penalty and feasibility of every class for the demand, cached by signature.

        Feasibility depends only on the demand's shape, estimates only on its estimate
        inputs: separate caches keep a cycle over many similar demands cheap.
        """
        shape = (
            d.kinds,
            d.classes,
            d.min_accelerator_memory_gib,
            d.excluded_classes,
            d.accelerators,
            d.cpu,
            d.memory,
            d.pods,
            d.gang,
        )
        inputs = (
            d.profile,
            d.work_units,
            d.subtask_type,
            d.estimate_seconds,
            d.estimate_on_class,
            tuple(sorted(d.estimate_by_class.items())) if d.estimate_by_class else (),
        )
        sig = (shape, inputs, d.time_weight, d.cost_weight)
        found = self._static.get(sig)
        if found is not None:
            return found
        fit = self._shapes.get(shape)
        if fit is None:
            fit = self._feasibility(d)
            self._shapes[shape] = fit
        feasible, infeasible, cheapest = fit
        choices: list[_Choice] = []
        for name, cls, units, request in feasible:
            est = self._estimates.get((inputs, name))
            if est is None:
                est = self.estimator.estimate(d, name)
                self._estimates[(inputs, name)] = est
            money = cost(d, cls, est.seconds)
            penalty = rightsizing_penalty(
                d,
                cls,
                self.snapshot.learned.get((d.profile, name)),
                cheapest_accelerator_price=cheapest,
                runtime=est.seconds,
                money=money,
                params=self.params,
            )
            choices.append(
                _Choice(
                    name=name,
                    runtime=est.seconds,
                    money=money,
                    penalty=penalty,
                    base=d.time_weight * est.seconds + d.cost_weight * money + penalty,
                    units=units,
                    request=request,
                    source=est.source,
                )
            )
        best = min((c.runtime for c in choices), default=math.inf)
        ranked = tuple(sorted(range(len(choices)), key=lambda j: (choices[j].base, choices[j].name)))
        static = _Static(feasible=tuple(choices), infeasible=infeasible, best_runtime=best, ranked=ranked)
        self._static[sig] = static
        return static

    def _feasibility(
        self, d: Demand
    ) -> tuple[tuple[tuple[str, ClassInfo, float, tuple[int, float, float]], ...], tuple[Option, ...], float]:
        feasible = []
        infeasible = []
        for name, cls in self.classes.items():
            reason = infeasible_reason(d, cls, self.capacity[name])
            if reason:
                infeasible.append(Option(class_name=name, feasible=False, reason=reason))
            else:
                feasible.append((name, cls, demand_units(d, cls), pod_request(d, cls)))
        prices = [cls.price_accelerator_hour for _, cls, _, _ in feasible if cls.kind == "gpu"]
        infeasible.sort(key=lambda o: o.class_name)
        return tuple(feasible), tuple(infeasible), min(prices) if prices else 0.0

    def _arrival_order(self, demands: Sequence[Demand]) -> list[int]:
        """The baselines' order: first come, first served."""
        return sorted(
            range(len(demands)),
            key=lambda i: (demands[i].arrival, demands[i].ready_since, str(demands[i].key), demands[i].attempt),
        )

    # ------------------------------------------------------------------ the cycle

    def run(self) -> CycleResult:
        demands = self.snapshot.demands
        statics = [self._evaluate(d) for d in demands]
        admitted: list[Admission] = []
        deferred: list[Deferral] = []
        policy = self.params.policy
        plan: dict[int, int] = {}
        shortlist = max(self.params.plan_candidates, self.params.max_alternatives + 1, 1)
        if policy == Policy.COST:
            plan, order = self._plan(demands, statics)
        else:
            order = self._arrival_order(demands)
        for i in order:
            d = demands[i]
            static = statics[i]
            if not static.feasible:
                deferred.append(self._no_class(d, static))
                continue
            # The cost policy only looks at its shortlist (lowest static F first; the plan's
            # candidates are among them); the baselines look at every feasible class.
            view = static.ranked[:shortlist] if policy == Policy.COST else range(len(static.feasible))
            feasible = static.feasible
            waits = {j: self.timeline[feasible[j].name].wait(feasible[j].units) for j in view}
            if policy == Policy.FIFO:
                scores = {j: feasible[j].runtime + waits[j] for j in view}
            else:
                scores = {j: _f(feasible[j].base, d.time_weight, waits[j]) for j in view}
            if policy == Policy.AGNOSTIC:
                result = self._agnostic(d, static, waits, scores)
            else:
                best = plan.get(i)
                if best is None:
                    best = min(scores, key=lambda j: (scores[j], feasible[j].name))
                result = self._decide(d, static, waits, scores, best, planned=i in plan)
            if isinstance(result, Admission):
                admitted.append(result)
            else:
                deferred.append(result)
        return CycleResult(admitted=tuple(admitted), deferred=tuple(deferred))

    def _weight(self, d: Demand) -> float:
        """Priority grown by ageing: waiting ``ageing_seconds`` doubles it, so nothing starves."""
        ageing = self.params.ageing_seconds
        waited = max(0.0, self.snapshot.now - d.ready_since)
        return d.priority * (1.0 + waited / ageing) if ageing > 0 else d.priority

    def _plan(self, demands: Sequence[Demand], statics: Sequence[_Static]) -> tuple[dict[int, int], list[int]]:
        """Assign every ready demand to a class so that the queue's total weighted F is least.

        Model (fluid, per class k with m units and admitted backlog B): the demands
        assigned to k run in Smith order of ``v / (u * T)`` (v = weight * alpha, u = units),
        each starting after ``B/m`` plus the work of those before it over m. The marginal
        cost of putting demand j on k is its own ``v * (B/m + ahead/m + T) + beta*C + penalty``
        plus the delay it imposes on the demands queued behind it, ``u*T/m * sum(v behind)``.
        Demands are inserted from the back of the queue (lowest Smith ratio first) at their
        least marginal cost, then ``plan_passes`` improvement passes move any demand whose
        marginal cost is lower elsewhere. Fenwick trees over each class's Smith order give the
        sums in O(log n), so the plan costs O(demands x candidate classes x log demands).
        On the benchmark instances this lands within 1% of the exact optimum (bench/quality.py).

        Returns the chosen option index per demand and the admission order (Smith ratio on
        the planned class, highest first).
        """
        limit = max(1, self.params.plan_candidates)
        n = len(demands)
        weights = [0.0] * n
        ranked: list[list[int]] = [[] for _ in range(n)]
        members: dict[str, list[tuple[float, float, int, int]]] = {}
        for i, d in enumerate(demands):
            feasible = statics[i].feasible
            if not feasible:
                continue
            v = self._weight(d) * d.time_weight
            weights[i] = v
            best = list(statics[i].ranked[:limit])
            ranked[i] = best
            for j in best:
                c = feasible[j]
                work = c.units * c.runtime
                members.setdefault(c.name, []).append((-(v / work) if work > 0 else -math.inf, d.arrival, i, j))
        # Per class: a Fenwick tree of (work, weight) over its Smith order; totals of weight.
        work_trees: dict[str, list[float]] = {}
        weight_trees: dict[str, list[float]] = {}
        totals: dict[str, list[float]] = {}
        # Per demand: its candidates as (j, rank, work tree, weight tree, total cell, 1/m, offset, T, u*T, extra).
        cands: list[list[tuple[int, int, list[float], list[float], list[float], float, float, float, float, float]]]
        cands = [[] for _ in range(n)]
        for name, entries in members.items():
            entries.sort()
            size = len(entries)
            work_tree = [0.0] * (size + 1)
            weight_tree = [0.0] * (size + 1)
            total = [0.0]
            work_trees[name], weight_trees[name], totals[name] = work_tree, weight_tree, total
            m = self.capacity[name].units
            inv_m = 1.0 / m if m > 0 else 1.0
            offset = self.backlog.get(name, 0.0) * inv_m
            for rank, (_, _, i, j) in enumerate(entries):
                c = statics[i].feasible[j]
                extra = c.base - demands[i].time_weight * c.runtime  # beta*C + penalty
                cands[i].append(
                    (j, rank + 1, work_tree, weight_tree, total, inv_m, offset, c.runtime, c.units * c.runtime, extra)
                )

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

        planned = [i for i in range(n) if cands[i]]

        def global_ratio(i: int) -> float:
            c = statics[i].feasible[ranked[i][0]]
            work = c.units * c.runtime
            return weights[i] / work if work > 0 else math.inf

        # Back of the queue first: lowest Smith ratio on its best class.
        planned.sort(key=lambda i: (global_ratio(i), -demands[i].arrival, -i))
        plan: dict[int, int] = {}
        for i in planned:
            _, j = best_of(i)
            plan[i] = j
            put(i, j, 1.0)
        for _ in range(self.params.plan_passes):
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

        def admission_key(i: int) -> tuple[float, float, float, str, int]:
            c = statics[i].feasible[plan[i]]
            work = c.units * c.runtime
            ratio = weights[i] / work if work > 0 else math.inf
            d = demands[i]
            return (-ratio, d.arrival, d.ready_since, str(d.key), d.attempt)

        order = sorted(planned, key=admission_key)
        order += [i for i in range(n) if not cands[i]]
        return plan, order

    def _decide(
        self, d: Demand, static: _Static, waits: dict[int, float], scores: dict[int, float], best: int, *, planned: bool
    ) -> Admission | Deferral:
        choice = static.feasible[best]
        wait = waits[best]
        options = self._options(d, static, waits, scores, first=best)
        if wait <= _EPS:
            placed, fitted = self._place(choice.name, choice.request, d.pods)
            if placed:
                self._book(choice, placed)
                return self._admission(d, choice, placed, options, planned=planned)
            if self.params.lookahead:
                self.timeline[choice.name].reserve(choice.units, choice.runtime)
            return self._capacity_deferral(d, choice, options, fitted)
        if self.params.lookahead and wait < math.inf:
            self.timeline[choice.name].reserve(choice.units, choice.runtime)
        if d.pods > 1:
            # Say how far a multi-pod demand is from fitting (try, then roll back).
            placed, fitted = self._place(choice.name, choice.request, d.pods)
            for i in reversed(placed):
                self._apply(i, self.resource[choice.name], choice.request, -1.0)
            if 0 < fitted < d.pods:
                return self._capacity_deferral(d, choice, options, fitted)
        why = (
            "the plan for the whole queue finishes sooner this way" + (" or cheaper" if d.cost_weight > 0 else "")
            if planned
            else "it still finishes sooner than on any class free now"
        )
        return Deferral(
            key=d.key,
            attempt=d.attempt,
            reason=INSUFFICIENT_CAPACITY,
            message=(
                f"waiting for {choice.name}: expected wait {_secs(wait)} then {_secs(choice.runtime)} "
                f"({choice.source}); {why}"
            ),
            best=options[0],
            alternatives=tuple(options[1:]),
        )

    def _agnostic(
        self, d: Demand, static: _Static, waits: dict[int, float], scores: dict[int, float]
    ) -> Admission | Deferral:
        candidates = sorted(
            (j for j, c in enumerate(static.feasible) if self.free_units[c.name] >= c.units - _EPS),
            key=lambda j: (-self.free_units[static.feasible[j].name], static.feasible[j].name),
        )
        fitted_best = 0
        for j in candidates:
            choice = static.feasible[j]
            placed, fitted = self._place(choice.name, choice.request, d.pods)
            if placed:
                self._book(choice, placed)
                return self._admission(d, choice, placed, self._options(d, static, waits, scores, first=j))
            fitted_best = max(fitted_best, fitted)
        options = self._options(d, static, waits, scores)
        first = next(c for c in static.feasible if c.name == options[0].class_name)
        return self._capacity_deferral(d, first, options, fitted_best)

    def _book(self, choice: _Choice, placed: list[int]) -> None:
        """Hold the admitted units on the chosen class's timeline, and on classes sharing its nodes."""
        self.timeline[choice.name].reserve(choice.units, choice.runtime)
        accelerators, cpu, _ = choice.request
        resource = self.resource[choice.name]
        shared: dict[str, float] = {}
        for i in placed:
            for other in self.node_classes[i]:
                if other == choice.name:
                    continue
                if self.is_gpu[other]:
                    if self.resource[other] == resource and accelerators:
                        shared[other] = shared.get(other, 0.0) + accelerators
                else:
                    shared[other] = shared.get(other, 0.0) + cpu
        for other, units in shared.items():
            self.timeline[other].reserve(units, choice.runtime)

    # ------------------------------------------------------------------ decisions

    def _options(
        self,
        d: Demand,
        static: _Static,
        waits: dict[int, float],
        scores: dict[int, float],
        first: int | None = None,
    ) -> list[Option]:
        """Options in the policy's order (``scores``), ``first`` leading; each carries F whatever the policy."""
        alpha = d.time_weight
        order = sorted(scores, key=lambda j: (j != first, scores[j], static.feasible[j].name))
        limit = max(1, self.params.max_alternatives + 1)
        options = []
        for j in order[:limit]:
            c = static.feasible[j]
            options.append(_feasible_option(c, waits[j], _f(c.base, alpha, waits[j])))
        room = max(0, limit - len(options))
        options.extend(static.infeasible[:room])
        return options

    def _admission(
        self, d: Demand, choice: _Choice, placed: list[int], options: list[Option], *, planned: bool = False
    ) -> Admission:
        chosen = options[0]
        runner_up = next((o for o in options[1:] if o.feasible), None)
        why = (
            f"; next best {runner_up.class_name} (T {_secs(runner_up.runtime_seconds)}, "
            f"W {_secs(runner_up.wait_seconds)}, F {_num(runner_up.score)})"
            if runner_up is not None
            else ""
        )
        accelerators, cpu, memory = choice.request
        shape = f"{accelerators} accelerator(s), " if accelerators else ""
        message = (
            f"admitted on {choice.name} ({d.pods} pod(s) of {shape}{cpu:g} cpu, {memory / GIB:g}Gi): "
            f"T {_secs(choice.runtime)} ({choice.source}), cost {choice.money:.2f}, F {_num(chosen.score)}{why}"
        )
        return Admission(
            key=d.key,
            attempt=d.attempt,
            class_name=choice.name,
            nodes=tuple(self.node_names[i] for i in placed),
            accelerators=accelerators,
            cpu=cpu,
            memory=memory,
            chosen=chosen,
            alternatives=tuple(options[1:]),
            message=message,
        )

    def _capacity_deferral(self, d: Demand, choice: _Choice, options: list[Option], fitted: int) -> Deferral:
        if d.pods > 1 and fitted > 0:
            return Deferral(
                key=d.key,
                attempt=d.attempt,
                reason=GANG_INCOMPLETE,
                message=(
                    f"only {fitted} of {d.pods} pods fit at once on {choice.name}; all must start together"
                    f" (T {_secs(choice.runtime)}, {choice.source})"
                ),
                best=options[0],
                alternatives=tuple(options[1:]),
            )
        accelerators, cpu, memory = choice.request
        shape = f"{accelerators} accelerator(s), " if accelerators else ""
        return Deferral(
            key=d.key,
            attempt=d.attempt,
            reason=INSUFFICIENT_CAPACITY,
            message=f"no node of {choice.name} has room now for a pod of {shape}{cpu:g} cpu, {memory / GIB:g}Gi",
            best=options[0],
            alternatives=tuple(options[1:]),
        )

    def _no_class(self, d: Demand, static: _Static) -> Deferral:
        reasons = "; ".join(f"{o.class_name}: {o.reason}" for o in static.infeasible[:5]) or "no executor classes"
        return Deferral(
            key=d.key,
            attempt=d.attempt,
            reason=NO_FEASIBLE_CLASS,
            message=f"no executor class can run it ({reasons})",
            best=None,
            alternatives=static.infeasible[: self.params.max_alternatives + 1],
        )


_OPTION_TEMPLATE = Option(class_name="", feasible=True)
_OPTION_DEFAULTS: dict[str, object] | None = (
    dict(vars(_OPTION_TEMPLATE)) if hasattr(_OPTION_TEMPLATE, "__dict__") else None
)


def _feasible_option(c: _Choice, wait: float, score: float) -> Option:
    """The Option of a feasible class, built without the frozen dataclass ``__init__``.

    A cycle builds about ``max_alternatives + 1`` of these per demand, and the generated
    ``__init__`` (one ``object.__setattr__`` per field) was a fifth of a 10k-demand cycle.
    Starting from a default instance's fields keeps fields added to Option later correct.
    """
    values = {
        "class_name": c.name,
        "feasible": True,
        "runtime_seconds": c.runtime,
        "wait_seconds": wait,
        "cost": c.money,
        "score": score,
        "estimate_source": c.source,
        "penalty": c.penalty,
    }
    if _OPTION_DEFAULTS is None:
        return Option(**values)  # type: ignore[arg-type]
    option = object.__new__(Option)
    fields = option.__dict__
    fields.update(_OPTION_DEFAULTS)
    fields.update(values)
    return option


def _f(base: float, alpha: float, wait: float) -> float:
    """F from its static part and W; a class that can never free enough units scores inf."""
    return math.inf if wait == math.inf else base + alpha * wait


def _secs(value: float | None) -> str:
    if value is None:
        return "?"
    if value == math.inf:
        return "never"
    return f"{value:.0f}s"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def schedule(snapshot: Snapshot, params: SchedulerParams) -> CycleResult:
    """Decide which ready demands start now, on which class and nodes, and why the rest wait.

    Pure over the snapshot, so the operator, `aitask simulate` and `aitask plan` share it
    and its decisions can be replayed in tests and benchmarks.
    """
    return _Cycle(snapshot, params).run()
