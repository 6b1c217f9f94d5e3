"""Which running preemptible work to stop, for whom, and which to move to a faster class (pure).

Runs after the cycle's admissions (``core.scheduler.schedule``), on the cost policy only, and
only over running work that opted in (``Running.resume`` is the demand it would become:
the work it has left and its resume overhead). Two decisions:

1. **Displace.** The deferred demands that wait for capacity are taken by their ratio, highest
   first. A demand *d* may stop victims on one of its classes *k* when, for every victim *r*,
   ``ratio(d on k) > preempt_factor * ratio(r)``, where with ``preempt_order="remaining"``
   ``ratio = priority * alpha / (units * seconds left)`` (weighted shortest remaining time) and
   *d*'s seconds include the switch it causes (the victim's grace period and resume overhead):
   the exchange argument of Smith's rule with the switch cost inside F. With
   ``preempt_order="attained"`` the ratio is ``1 / (units * (attained seconds + 1))``
   (least attained service; no runtime knowledge needed). Victims are chosen node by node:
   each pod of *d* goes to a node that has room, else to the node where the least stopped
   work (fewest units, then the lowest ratio) makes room for it, so a 4-GPU pod empties one
   node rather than stopping victims spread over several; a gang victim is freed whole, on
   every node it holds, and what the victims free beyond *d*'s pods stays for the next demand.
2. **Migrate.** A running attempt whose remaining time on its class is more than
   ``migrate_factor`` times its remaining time on another class that has room now (its
   resume overhead and grace period included, and by at least the minimum run time) is
   stopped to resume there; biggest saving first.

Never stopped: work that did not opt in, work that runs for less than
``preempt_min_run_seconds`` times two to the number of its earlier stops (hysteresis, so
nothing bounces), work of a higher priority than
the demand, work already stopping. Work being stopped counts as free for the demands here, so a
demand does not stop a second set of victims while the first set ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from aitask.core.costmodel import accelerator_resource, demand_units
from aitask.core.scheduling import admit
from aitask.core.scheduling.evaluation import Choice, Evaluator
from aitask.core.types import (
    MIGRATED,
    PREEMPTED_FOR,
    ClassInfo,
    CycleResult,
    Demand,
    NodeInfo,
    Preemption,
    Running,
    SchedulerParams,
    Snapshot,
    SubtaskKey,
)

_EPS = 1e-9
_CAPACITY = frozenset({admit.INSUFFICIENT_CAPACITY, admit.GANG_INCOMPLETE})


@dataclass
class _Victim:
    item: Running
    demand: Demand
    units: float
    ratio: float
    switch: float  # what stopping it costs in time: grace period + resume overhead


@dataclass
class _View:
    """Free resources per node as this decision sees them (admissions taken, stopping work freed)."""

    classes: Mapping[str, ClassInfo]
    free: dict[str, dict[str, float]]
    members: dict[str, list[str]] = field(default_factory=dict)

    def add(self, item: Running, sign: float) -> None:
        pods = max(1, len(item.nodes))
        cls = self.classes.get(item.class_name)
        resource = accelerator_resource(cls) if cls is not None else "nvidia.com/gpu"
        for node in item.nodes:
            book = self.free.get(node)
            if book is None:
                continue
            book[resource] = book.get(resource, 0.0) + sign * item.accelerators / pods
            book["cpu"] = book.get("cpu", 0.0) + sign * item.cpu / pods
            book["memory"] = book.get("memory", 0.0) + sign * item.memory / pods

    def fit(self, class_name: str, choice: Choice, pods: int) -> list[str] | None:
        """Nodes for ``pods`` pods of the choice's request (best fit), or None; books nothing."""
        resource = accelerator_resource(self.classes[class_name])
        taken: dict[str, int] = {}
        out: list[str] = []
        for _ in range(pods):
            best: str | None = None
            best_left = 0.0
            for node in self.members.get(class_name, ()):
                left = _left(self.free[node], resource, choice, taken.get(node, 0) + 1)
                if left is not None and (best is None or left < best_left):
                    best, best_left = node, left
            if best is None:
                return None
            taken[best] = taken.get(best, 0) + 1
            out.append(best)
        return out

    def fits_on(self, node: str, class_name: str, choice: Choice) -> bool:
        """Whether one pod of the choice's request fits on the node now."""
        return _left(self.free[node], accelerator_resource(self.classes[class_name]), choice, 1) is not None

    def has_room(self, class_name: str) -> bool:
        """Whether some node of the class has a free unit (accelerator, or core on a CPU pool)."""
        cls = self.classes[class_name]
        unit = accelerator_resource(cls) if cls.kind == "gpu" else "cpu"
        return any(self.free[n].get(unit, 0.0) >= 1.0 - _EPS for n in self.members.get(class_name, ()))

    def take(self, class_name: str, choice: Choice, nodes: Sequence[str], sign: float = 1.0) -> None:
        """Book one pod of the choice on each node (``sign`` -1: give it back)."""
        accelerators, cpu, memory = choice.request
        resource = accelerator_resource(self.classes[class_name])
        for node in nodes:
            book = self.free[node]
            book[resource] = book.get(resource, 0.0) - sign * accelerators
            book["cpu"] = book.get("cpu", 0.0) - sign * cpu
            book["memory"] = book.get("memory", 0.0) - sign * memory


def _left(book: Mapping[str, float], resource: str, choice: Choice, pods: int) -> float | None:
    """Accelerators a node (its free ``book``) has left once ``pods`` pods of the choice are on it;
    None: they do not fit."""
    accelerators, cpu, memory = choice.request
    left = book.get(resource, 0.0) - pods * accelerators
    if left < -_EPS or book.get("cpu", 0.0) - pods * cpu < -_EPS or book.get("memory", 0.0) - pods * memory < -_EPS:
        return None
    return left


def _view(snapshot: Snapshot, result: CycleResult | None) -> _View:
    nodes: Sequence[NodeInfo] = [n for n in snapshot.nodes if n.schedulable]
    view = _View(snapshot.classes, {n.name: dict(n.free) for n in nodes})
    for n in nodes:
        for c in n.classes:
            if c in snapshot.classes:
                view.members.setdefault(c, []).append(n.name)
    for adm in result.admitted if result is not None else ():
        resource = accelerator_resource(snapshot.classes[adm.class_name])
        for node in adm.nodes:
            book = view.free.get(node)
            if book is not None:
                book[resource] = book.get(resource, 0.0) - adm.accelerators
                book["cpu"] = book.get("cpu", 0.0) - adm.cpu
                book["memory"] = book.get("memory", 0.0) - adm.memory
    for item in snapshot.running:
        if item.stopping:
            view.add(item, 1.0)
    return view


def min_run(params: SchedulerParams, item: Running) -> float:
    """Hysteresis: how long the attempt must have run before it may be stopped."""
    return min_run_seconds(params, item.preemptions)


def min_run_seconds(params: SchedulerParams, stops: int) -> float:
    """The minimum run time after ``stops`` earlier stops: doubled for each."""
    return params.preempt_min_run_seconds * 2.0 ** min(stops, 30)


def _attained(d: Demand, seconds_left: float) -> float:
    """Seconds of work already done, on the scale of the class whose remaining time is given."""
    left = max(seconds_left - d.switch_seconds, 0.0)
    if d.remaining <= _EPS:
        return left
    return left / d.remaining * (1.0 - d.remaining)


def _ratio(order: str, d: Demand, units: float, seconds_left: float, *, attained: float) -> float:
    if order == "attained":
        return 1.0 / (max(units, _EPS) * (attained + 1.0))
    return d.priority * d.time_weight / (max(units, _EPS) * max(seconds_left, _EPS))


def _victims(snapshot: Snapshot, params: SchedulerParams) -> dict[str, list[_Victim]]:
    """Eligible running work per class, lowest ratio first."""
    out: dict[str, list[_Victim]] = {}
    for item in snapshot.running:
        d = item.resume
        if d is None or item.stopping or snapshot.now - item.started < min_run(params, item):
            continue
        cls = snapshot.classes.get(item.class_name)
        if cls is None:
            continue
        units = demand_units(d, cls)
        attained = _attained(d, item.remaining_seconds) + snapshot.now - item.started
        ratio = _ratio(params.preempt_order, d, units, item.remaining_seconds, attained=attained)
        out.setdefault(item.class_name, []).append(
            _Victim(item, d, units, ratio, item.grace_seconds + d.switch_seconds)
        )
    for victims in out.values():
        victims.sort(key=lambda v: (v.ratio, str(v.item.key)))
    return out


@dataclass
class _Pool:
    """The victims of this decision per class (lowest ratio first), the largest switch among them, and
    what was tried since the view last changed (emptied at every change):

    - ``no_fit``: (class, pod request, pods) that do not fit in the view as it is;
    - ``failed``: per (class, pod request), the (ratio on the class, priority) of single-pod demands for
      which no victims made room. A later demand of the same request whose ratio and priority are no
      higher has a subset of their victims to choose from (``_eligible``), so it finds no room either.
    """

    victims: Mapping[str, list[_Victim]]
    switch: dict[str, float] = field(init=False)
    no_fit: set[tuple[str, tuple[int, float, float], int]] = field(default_factory=set)
    failed: dict[tuple[str, tuple[int, float, float]], list[tuple[float, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.switch = {c: max(v.switch for v in items) for c, items in self.victims.items() if items}

    def changed(self) -> None:
        self.no_fit.clear()
        self.failed.clear()


def _displace(
    d: Demand, choices: Sequence[Choice], view: _View, pool: _Pool, params: SchedulerParams
) -> tuple[str, list[_Victim]] | None:
    """The class and victims that make room for the demand now, or None (books the room in the view).
    ``choices``: the classes it may displace work on, fastest first (``_standing``)."""
    for choice in choices:
        shape = (choice.name, choice.request, d.pods)
        nodes = None if shape in pool.no_fit else view.fit(choice.name, choice, d.pods)
        if nodes is not None:  # room is being freed for it already (stopping work)
            view.take(choice.name, choice, nodes)
            pool.changed()
            return None
        pool.no_fit.add(shape)
        here = pool.victims.get(choice.name, ())
        mine = _ratio(
            params.preempt_order,
            d,
            choice.units,
            choice.runtime + pool.switch.get(choice.name, 0.0),  # the most that stopping any of them costs
            attained=_attained(d, choice.runtime),
        )
        tried = pool.failed.get((choice.name, choice.request)) if d.pods == 1 else None
        if tried and any(mine <= ratio and d.priority <= priority for ratio, priority in tried):
            continue
        eligible = _eligible(d, mine, here, params)
        chosen = _room_by_node(d, choice, view, eligible) if eligible else None
        if chosen is None:
            if d.pods == 1:
                pool.failed.setdefault((choice.name, choice.request), []).append((mine, d.priority))
            continue
        switch = max(v.switch for v in chosen)
        mine = _ratio(
            params.preempt_order, d, choice.units, choice.runtime + switch, attained=_attained(d, choice.runtime)
        )
        nodes = view.fit(choice.name, choice, d.pods)
        if nodes is not None and all(mine > params.preempt_factor * v.ratio for v in chosen):
            view.take(choice.name, choice, nodes)
            for c in chosen:
                c.item = _stopping(c.item)
            pool.changed()
            return choice.name, chosen
        for v in chosen:
            view.add(v.item, -1.0)
    return None


def _eligible(d: Demand, mine: float, victims: Sequence[_Victim], params: SchedulerParams) -> list[_Victim]:
    """The class's victims the demand beats by the factor (``mine``: its ratio there, the largest switch
    included). Victims come lowest ratio first, so the first one it does not beat ends the scan."""
    out: list[_Victim] = []
    for v in victims:
        if mine <= params.preempt_factor * v.ratio:
            break
        if not v.item.stopping and v.demand.priority <= d.priority:
            out.append(v)
    return out


def _room_by_node(d: Demand, choice: Choice, view: _View, eligible: Sequence[_Victim]) -> list[_Victim] | None:
    """Victims (added back to the view) that free room for every pod of the demand, node by node: each
    pod goes to a node that has room, else to the node where the least stopped work makes room (fewest
    units, then the lowest ratio), so a 4-GPU pod empties one node instead of victims spread over many.
    None, with the view as it was, when the eligible victims cannot make room for all the pods."""
    chosen: list[_Victim] = []
    booked: list[str] = []  # one pod held per entry while the next one is placed
    ok = True
    for _ in range(d.pods):
        free = view.fit(choice.name, choice, 1)
        if free is not None:
            view.take(choice.name, choice, free)
            booked.extend(free)
            continue
        best: tuple[tuple[float, float], list[_Victim], str] | None = None
        for node in view.members.get(choice.name, ()):
            trial = _free_node(node, choice, view, [v for v in eligible if node in v.item.nodes and v not in chosen])
            if trial is None:
                continue
            cost = (sum(v.units for v in trial), max((v.ratio for v in trial), default=0.0))
            if best is None or cost < best[0]:
                best = (cost, trial, node)
        if best is None:
            ok = False
            break
        for v in best[1]:
            view.add(v.item, 1.0)
            chosen.append(v)
        view.take(choice.name, choice, [best[2]])
        booked.append(best[2])
    view.take(choice.name, choice, booked, sign=-1.0)
    if ok:
        return chosen
    for v in chosen:
        view.add(v.item, -1.0)
    return None


def _free_node(node: str, choice: Choice, view: _View, here: Sequence[_Victim]) -> list[_Victim] | None:
    """The lowest-ratio victims on the node whose stop lets one pod of the choice fit there; the view unchanged."""
    trial: list[_Victim] = []
    fits = False
    for v in sorted(here, key=lambda v: (v.ratio, str(v.item.key))):
        view.add(v.item, 1.0)
        trial.append(v)
        if view.fits_on(node, choice.name, choice):
            fits = True
            break
    for v in trial:
        view.add(v.item, -1.0)
    return trial if fits else None


def _stopping(item: Running) -> Running:
    return replace(item, stopping=True)


def _migrations(
    snapshot: Snapshot,
    params: SchedulerParams,
    evaluator: Evaluator,
    view: _View,
    victims: Mapping[str, list[_Victim]],
) -> list[Preemption]:
    moves: list[tuple[float, _Victim, Choice]] = []
    roomy = {c for c in view.classes if view.has_room(c)}
    if not roomy:
        return []  # a full cluster: no move can start now, and no victim need be evaluated
    for class_name, items in victims.items():
        if not roomy - {class_name}:
            continue
        for v in items:
            if v.item.stopping:
                continue
            for choice in evaluator.evaluate(v.demand).feasible:
                if choice.name == class_name:
                    continue
                there = choice.runtime + v.item.grace_seconds
                here = v.item.remaining_seconds
                if here > params.migrate_factor * there and here - there >= params.preempt_min_run_seconds:
                    moves.append(((here - there) * v.demand.priority / max(v.units, _EPS), v, choice))
    out: list[Preemption] = []
    moves.sort(key=lambda m: (-m[0], str(m[1].item.key), m[2].name))
    for _, v, choice in moves:
        if v.item.stopping:
            continue
        nodes = view.fit(choice.name, choice, v.demand.pods)
        if nodes is None:
            continue
        view.take(choice.name, choice, nodes)
        v.item = _stopping(v.item)
        here = v.item.remaining_seconds
        out.append(
            Preemption(
                key=v.item.key,
                class_name=v.item.class_name,
                reason=MIGRATED,
                by=None,
                target_class=choice.name,
                message=(
                    f"migrated from {v.item.class_name} to {choice.name}, which has room: "
                    f"{here:.0f}s left on {v.item.class_name}, {choice.runtime:.0f}s on {choice.name} "
                    "with the resume overhead"
                ),
            )
        )
    return out


def _standing(
    d: Demand, feasible: Sequence[Choice], params: SchedulerParams, memo: dict[int, tuple[Demand, object]] | None
) -> tuple[float, tuple[Choice, ...]]:
    """The demand's highest ratio over its classes, and the classes on which it may displace work
    (its ``plan_candidates`` fastest). Both depend on the demand alone, so they are kept in the memo."""
    hit = _standing_memo(d, params, memo)
    if hit is not None:
        return hit
    best = max(_ratio(params.preempt_order, d, c.units, c.runtime, attained=_attained(d, c.runtime)) for c in feasible)
    top = tuple(sorted(feasible, key=lambda c: (c.runtime, c.name))[: max(params.plan_candidates, 1)])
    if memo is not None:
        memo[-1 - id(d)] = (d, (params.preempt_order, best, top))  # beside the evaluations, keyed by id(d) >= 0
    return best, top


def _standing_memo(
    d: Demand, params: SchedulerParams, memo: dict[int, tuple[Demand, object]] | None
) -> tuple[float, tuple[Choice, ...]] | None:
    hit = memo.get(-1 - id(d)) if memo is not None else None
    if hit is None or hit[0] is not d or not isinstance(hit[1], tuple) or hit[1][0] != params.preempt_order:
        return None
    return float(hit[1][1]), hit[1][2]


def waiting_for_capacity(result: CycleResult, also: Iterable[SubtaskKey] = ()) -> frozenset[SubtaskKey]:
    """The demands that wait for room (the only ones that may displace running work): those deferred
    for capacity, and ``also`` (named apart, without a deferral)."""
    return frozenset(d.key for d in result.deferred if d.reason in _CAPACITY).union(also)


def choose(
    snapshot: Snapshot,
    params: SchedulerParams,
    result: CycleResult | None,
    evaluator: Evaluator,
    *,
    waiting: frozenset[SubtaskKey] | None = None,
) -> tuple[Preemption, ...]:
    """The preemptions of this cycle: victims for the deferred demands, then migrations.

    ``result`` is the cycle's admissions and deferrals; ``waiting``, when given, names the demands
    that wait for capacity instead (a cycle known to admit nothing)."""
    victims = _victims(snapshot, params)
    if not victims:
        return ()
    view = _view(snapshot, result)
    if waiting is None:
        waiting = waiting_for_capacity(result) if result else frozenset()
    # A demand whose best ratio does not beat the lowest victim's by the factor displaces nothing: left
    # out before its evaluation is even read (the demands are taken highest ratio first).
    threshold = params.preempt_factor * min(v.ratio for items in victims.values() for v in items)
    candidates: list[tuple[float, Demand, tuple[Choice, ...], tuple[Choice, ...]]] = []
    for d in snapshot.demands:
        if d.key not in waiting:
            continue
        known = _standing_memo(d, params, snapshot.memo)
        if known is not None and known[0] <= threshold:
            continue
        feasible = evaluator.evaluate(d).feasible
        if not feasible:
            continue
        best, top = known or _standing(d, feasible, params, snapshot.memo)
        if best > threshold:
            candidates.append((best, d, feasible, top))
    candidates.sort(key=lambda c: (-c[0], str(c[1].key)))
    out: list[Preemption] = []
    pool = _Pool(victims)
    for _, d, feasible, top in candidates:
        found = _displace(d, top, view, pool, params)
        if found is None:
            continue
        class_name, chosen = found
        for v in chosen:
            out.append(
                Preemption(
                    key=v.item.key,
                    class_name=v.item.class_name,
                    reason=PREEMPTED_FOR,
                    by=d.key,
                    target_class=class_name,
                    message=(
                        f"preempted for {d.key} on {class_name}: {v.item.remaining_seconds:.0f}s left here, "
                        f"it needs {next(c.runtime for c in feasible if c.name == class_name):.0f}s"
                    ),
                )
            )
    out.extend(_migrations(snapshot, params, evaluator, view, victims))
    return tuple(out)
