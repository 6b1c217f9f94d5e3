"""One scheduling cycle: snapshot -> admissions and deferrals (pure, no clock, no API calls).

The steps live in ``core.scheduling``: ``books`` (node capacity and best-fit packing),
``evaluation`` (class feasibility, T, C and the static part of F, cached by signature),
``queueplan`` (the ``cost`` policy's plan and order) and ``admit`` (the records and their
messages); this module runs them in order. F itself is ``core.costmodel``'s.

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
   the demands queued behind it there (``queueplan.plan_queue``). Demands are then taken in
   Smith order on their planned class. ``fifo`` and ``agnostic`` take them by arrival, or in
   Smith order on their best class with ``baseline_order="smith"`` (a benchmark baseline).
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
from dataclasses import replace

from aitask.core.costmodel import (
    UNKNOWN_BUSY_SECONDS,
    ClassCapacity,
    Timeline,
    backlog_unit_seconds,
    build_timeline,
    class_capacity,
    score_with_wait,
    unknown_busy_units,
)
from aitask.core.scheduling import admit, limits, preempt
from aitask.core.scheduling.books import NodeBooks
from aitask.core.scheduling.evaluation import Choice, Evaluation, Evaluator, plan_cells
from aitask.core.scheduling.queueplan import arrival_order, plan_queue, smith_order
from aitask.core.types import (
    Admission,
    CycleResult,
    Deferral,
    Demand,
    Option,
    Policy,
    Running,
    SchedulerParams,
    Snapshot,
    SubtaskKey,
)

_EPS = 1e-9

# Re-exported: the deferral reasons are the scheduler's vocabulary.
NO_FEASIBLE_CLASS = admit.NO_FEASIBLE_CLASS
INSUFFICIENT_CAPACITY = admit.INSUFFICIENT_CAPACITY
GANG_INCOMPLETE = admit.GANG_INCOMPLETE


class _Cycle:
    def __init__(self, snapshot: Snapshot, params: SchedulerParams) -> None:
        self.snapshot = snapshot
        self.params = params
        classes = snapshot.classes
        self.books = NodeBooks(classes, snapshot.nodes)
        running_by_class: dict[str, list[Running]] = {}
        for item in snapshot.running:
            running_by_class.setdefault(item.class_name, []).append(item)
        self.capacity: dict[str, ClassCapacity] = {}
        self.timeline: dict[str, Timeline] = {}
        self.backlog: dict[str, float] = {}
        for name, cls in classes.items():
            class_nodes = self.books.class_nodes(name)
            cap = class_capacity(cls, class_nodes)
            running = running_by_class.get(name, ())
            self.capacity[name] = cap
            self.timeline[name] = build_timeline(cls, class_nodes, running, cap)
            # The plan sees units held by other workloads as backlog of the same unknown length the
            # timeline assumes (UNKNOWN_BUSY_SECONDS): a class full of foreign pods is not planned as free.
            backlog = backlog_unit_seconds(cls, running) if running else 0.0
            backlog += UNKNOWN_BUSY_SECONDS * unknown_busy_units(cls, class_nodes, running, cap)
            if backlog > 0:
                self.backlog[name] = backlog
        self.evaluator = Evaluator(classes, self.capacity, snapshot.learned, params, snapshot.memo)
        self.limits = limits.LimitBooks(snapshot.limits)
        self.waiting: list[SubtaskKey] = []  # report=False: demands left out of the deferrals, waiting for room

    def _within_limits(self, d: Demand, evaluation: Evaluation) -> tuple[Evaluation, tuple[str, str] | None]:
        """The evaluation with the classes a quota or budget rules out (at the cycle's start) made infeasible;
        when that leaves none, the deferral reason and message."""
        kept: list[Choice] = []
        out: list[Option] = []
        reasons: list[str] = []
        for c in evaluation.feasible:
            amounts = limits.charge(d, self.snapshot.classes[c.name], c.request, c.runtime, c.money)
            broken = self.limits.violation(d, self.snapshot.classes[c.name], amounts)
            if broken is None:
                kept.append(c)
            else:
                reasons.append(broken[0])
                out.append(
                    Option(
                        class_name=c.name,
                        feasible=False,
                        reason=broken[1],
                        runtime_seconds=c.runtime,
                        cost=c.money,
                        estimate_source=c.source,
                    )
                )
        if not out:
            return evaluation, None
        ranked = tuple(sorted(range(len(kept)), key=lambda j: (kept[j].base, kept[j].name)))
        limited = Evaluation(
            feasible=tuple(kept),
            infeasible=(*out, *evaluation.infeasible),
            best_runtime=min((c.runtime for c in kept), default=math.inf),
            ranked=ranked,
            cells=plan_cells(kept, ranked, self.params.plan_candidates, d.time_weight),
        )
        if kept:
            return limited, None
        return limited, (limits.blocking_reason(reasons), "; ".join(o.reason for o in out[:3]))

    def _book_limits(self, d: Demand, choice: Choice) -> None:
        if self.snapshot.limits:
            cls = self.snapshot.classes[choice.name]
            self.limits.book(d, limits.charge(d, cls, choice.request, choice.runtime, choice.money))

    def _over_limit(self, d: Demand, choice: Choice) -> tuple[str, str] | None:
        if not self.snapshot.limits:
            return None
        amounts = limits.charge(d, self.snapshot.classes[choice.name], choice.request, choice.runtime, choice.money)
        return self.limits.violation(d, self.snapshot.classes[choice.name], amounts)

    def run(self, *, report: bool = True) -> CycleResult:
        demands = self.snapshot.demands
        evaluations = [self.evaluator.evaluate(d) for d in demands]
        # Without reports, a demand that cannot start now is only named in self.waiting.
        quick = not report and self._plain_cost()
        blocked: dict[int, tuple[str, str]] = {}
        if self.snapshot.limits:
            for i, d in enumerate(demands):
                if self.limits.applicable(d):
                    evaluations[i], why = self._within_limits(d, evaluations[i])
                    if why is not None:
                        blocked[i] = why
        admitted: list[Admission] = []
        deferred: list[Deferral] = []
        policy = self.params.policy
        plan: dict[int, int] = {}
        shortlist = max(self.params.plan_candidates, self.params.max_alternatives + 1, 1)
        if policy == Policy.COST:
            plan, order = plan_queue(
                demands,
                evaluations,
                now=self.snapshot.now,
                params=self.params,
                units={name: cap.units for name, cap in self.capacity.items()},
                backlog=self.backlog,
            )
        elif self.params.baseline_order == "smith":
            order = smith_order(demands, evaluations, now=self.snapshot.now, ageing_seconds=self.params.ageing_seconds)
        else:
            order = arrival_order(demands)
        for i in order:
            d = demands[i]
            evaluation = evaluations[i]
            if not evaluation.feasible:
                if i in blocked:
                    alts = evaluation.infeasible[: self.params.max_alternatives + 1]
                    deferred.append(admit.limited(d, *blocked[i], alts))
                else:
                    deferred.append(admit.no_class(d, evaluation, self.params.max_alternatives))
                continue
            if quick and self._waits(evaluation.feasible[plan[i]]):
                self.waiting.append(d.key)
                continue
            # The cost policy only looks at its shortlist (lowest static F first; the plan's
            # candidates are among them); the baselines look at every feasible class.
            view = evaluation.ranked[:shortlist] if policy == Policy.COST else range(len(evaluation.feasible))
            feasible = evaluation.feasible
            waits = {j: self.timeline[feasible[j].name].wait(feasible[j].units) for j in view}
            if policy == Policy.FIFO:
                scores = {j: feasible[j].runtime + waits[j] for j in view}
            else:
                scores = {j: score_with_wait(feasible[j].base, d.time_weight, waits[j]) for j in view}
            if policy == Policy.AGNOSTIC:
                result = self._agnostic(d, evaluation, waits, scores)
            else:
                best = plan.get(i)
                if best is None:
                    best = min(scores, key=lambda j: (scores[j], feasible[j].name))
                result = self._decide(d, evaluation, waits, scores, best, planned=i in plan)
            if isinstance(result, Admission):
                admitted.append(result)
            else:
                deferred.append(result)
        return CycleResult(admitted=tuple(admitted), deferred=tuple(deferred))

    def _plain_cost(self) -> bool:
        """The cost policy with no limit and no external queue: only node room decides an admission."""
        return self.params.policy == Policy.COST and not self.snapshot.limits and not self.params.external_queue

    def _waits(self, choice: Choice) -> bool:
        """``report=False``: whether the demand cannot start now on its planned class (then it is left out
        of the deferrals). As ``_decide``, a demand that waits holds its place on the class's timeline,
        except on a GPU class with no accelerator free on any node: every later demand planned there
        waits too (the books only shrink in a cycle), so no admission of this cycle reads that timeline."""
        if choice.request[0] >= 1 and self.books.is_gpu[choice.name] and not self.books.accelerator_room(choice.name):
            return True
        timeline = self.timeline[choice.name]
        wait = timeline.wait(choice.units)
        if wait <= _EPS:
            return False
        if self.params.lookahead and wait < math.inf:
            timeline.reserve(choice.units, choice.runtime)
        return True

    def _decide(
        self,
        d: Demand,
        evaluation: Evaluation,
        waits: dict[int, float],
        scores: dict[int, float],
        best: int,
        *,
        planned: bool,
    ) -> Admission | Deferral:
        choice = evaluation.feasible[best]
        wait = waits[best]
        options = admit.options(d, evaluation, waits, scores, self.params.max_alternatives, first=best)
        if self.params.external_queue:
            # Kueue holds the queue: hand the demand over now on its best class, book no node
            # (quotas and budgets still hold it: Kueue does not know them).
            broken = self._over_limit(d, choice)
            if broken is not None:
                return admit.limited(d, *broken, options)
            self.timeline[choice.name].reserve(choice.units, choice.runtime)
            self._book_limits(d, choice)
            return admit.handover(d, choice, wait, options)
        if wait <= _EPS:
            broken = self._over_limit(d, choice)
            if broken is not None:  # an admission earlier in this cycle took what the limit had left
                return self._within_books(d, evaluation, waits, scores, broken, options)
            placed, fitted = self.books.place(choice.name, choice.request, d.pods)
            if placed:
                return self._admit(d, choice, placed, options)
            if self.params.lookahead:
                self.timeline[choice.name].reserve(choice.units, choice.runtime)
            return admit.capacity_deferral(d, choice, options, fitted)
        if self.params.lookahead and wait < math.inf:
            self.timeline[choice.name].reserve(choice.units, choice.runtime)
        if d.pods > 1:
            # Say how far a multi-pod demand is from fitting (try, then roll back).
            placed, fitted = self.books.place(choice.name, choice.request, d.pods)
            self.books.release(choice.name, choice.request, placed)
            if 0 < fitted < d.pods:
                return admit.capacity_deferral(d, choice, options, fitted)
        return admit.waiting(d, choice, wait, options, planned=planned)

    def _within_books(
        self,
        d: Demand,
        evaluation: Evaluation,
        waits: dict[int, float],
        scores: dict[int, float],
        broken: tuple[str, str],
        options: list[Option],
    ) -> Admission | Deferral:
        """The planned class broke a limit: the next best class free now and within every limit, else wait."""
        for j in sorted(scores, key=lambda j: (scores[j], evaluation.feasible[j].name)):
            other = evaluation.feasible[j]
            if waits[j] > _EPS or self._over_limit(d, other) is not None:
                continue
            placed, _ = self.books.place(other.name, other.request, d.pods)
            if placed:
                limit = self.params.max_alternatives
                return self._admit(d, other, placed, admit.options(d, evaluation, waits, scores, limit, first=j))
        return admit.limited(d, *broken, options)

    def _agnostic(
        self, d: Demand, evaluation: Evaluation, waits: dict[int, float], scores: dict[int, float]
    ) -> Admission | Deferral:
        free_units = self.books.free_units
        feasible = evaluation.feasible
        candidates = sorted(
            (j for j, c in enumerate(feasible) if free_units[c.name] >= c.units - _EPS),
            key=lambda j: (-free_units[feasible[j].name], feasible[j].name),
        )
        limit = self.params.max_alternatives
        fitted_best = 0
        for j in candidates:
            choice = feasible[j]
            if self._over_limit(d, choice) is not None:
                continue
            placed, fitted = self.books.place(choice.name, choice.request, d.pods)
            if placed:
                return self._admit(d, choice, placed, admit.options(d, evaluation, waits, scores, limit, first=j))
            fitted_best = max(fitted_best, fitted)
        options = admit.options(d, evaluation, waits, scores, limit)
        first = next(c for c in feasible if c.name == options[0].class_name)
        return admit.capacity_deferral(d, first, options, fitted_best)

    def _admit(self, d: Demand, choice: Choice, placed: list[int], options: list[Option]) -> Admission:
        """Book the placed pods on the timelines and the limits, and return the admission."""
        self.timeline[choice.name].reserve(choice.units, choice.runtime)
        self._book_limits(d, choice)
        for other, units in self.books.shared_units(choice.name, choice.request, placed).items():
            self.timeline[other].reserve(units, choice.runtime)
        return admit.admission(d, choice, [self.books.names[i] for i in placed], options)


def preemptions_when_full(snapshot: Snapshot, params: SchedulerParams) -> CycleResult:
    """``schedule`` for a cycle in which nothing can be admitted (the caller knows that no node has a
    free accelerator, every demand needs one and no limit applies): every demand waits, and only the
    preemption decision is computed (``aitask simulate`` on a saturated cluster). Its preemptions are
    those ``schedule`` would make; its deferrals carry no report."""
    cycle = _Cycle(snapshot, params)
    waiting = frozenset(d.key for d in snapshot.demands)
    if not (params.preemption and params.policy == Policy.COST):
        return CycleResult(admitted=(), deferred=())
    return CycleResult(
        admitted=(), deferred=(), preempted=preempt.choose(snapshot, params, None, cycle.evaluator, waiting=waiting)
    )


def schedule(snapshot: Snapshot, params: SchedulerParams, *, report: bool = True) -> CycleResult:
    """Decide which ready demands start now, on which class and nodes, and why the rest wait.

    Pure over the snapshot, so the operator, `aitask simulate` and `aitask plan` share it
    and its decisions can be replayed in tests and benchmarks. ``report=False`` (the simulator)
    makes the same admissions (same nodes, same chosen option) and preemptions, but (cost policy, no
    limits) the demands that cannot start now on their planned class are left out of ``deferred``: no
    report is built for them, and an admission's alternatives may show a full class's wait without
    their holds on it.
    """
    cycle = _Cycle(snapshot, params)
    result = cycle.run(report=report)
    if params.preemption and params.policy == Policy.COST and any(r.resume is not None for r in snapshot.running):
        waiting = preempt.waiting_for_capacity(result, also=cycle.waiting) if cycle.waiting else None
        result = replace(result, preempted=preempt.choose(snapshot, params, result, cycle.evaluator, waiting=waiting))
    return result
