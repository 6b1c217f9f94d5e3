"""Event-driven simulation of the operator's scheduling loop over a trace of AITasks.

The simulator plays the cluster: tasks arrive (annotation ``aitask.dev/submit-after-seconds``),
a sub-task becomes ready when its ``dependsOn`` have finished, and at every arrival or
completion it runs one cycle of the very same ``core.scheduler.schedule`` the operator runs,
starts what was admitted, and holds the pods' resources until they finish.

Truth and estimates:
- the *true* runtime of a sub-task on a class is ``estimate.secondsByClass[class]`` (oracle),
  or the estimator's hint-based value where the workload gives none;
- in oracle mode the scheduler sees those same numbers;
- in ``learn`` mode the scheduler sees no ``secondsByClass`` hints, only ``estimate.seconds``
  (scaled by the classes' prior speed) or the type prior, and learns from every completion
  through ``estimator.observe``, as the operator does from finished Jobs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from aitask.api import v1alpha1 as api
from aitask.core import dag, variants
from aitask.core.costmodel import accelerator_resource, cost
from aitask.core.estimator import Estimator, hint, observe
from aitask.core.scheduler import schedule
from aitask.core.snapshot import demand_for
from aitask.core.types import (
    Admission,
    ClassInfo,
    Demand,
    Learned,
    NodeInfo,
    Running,
    SchedulerParams,
    Snapshot,
    SubtaskKey,
)

SUBMIT_AFTER = "aitask.dev/submit-after-seconds"
_EPS = 1e-6


def arrival_of(task: api.AITask) -> float:
    """Arrival time of a task in a simulation trace (seconds after the start; default 0)."""
    raw = task.metadata.annotations.get(SUBMIT_AFTER, "0")
    try:
        value = float(raw)
    except ValueError as err:
        raise ValueError(f"{task.metadata.name}: annotation {SUBMIT_AFTER}={raw!r} is not a number") from err
    if value < 0 or math.isnan(value):
        raise ValueError(f"{task.metadata.name}: annotation {SUBMIT_AFTER} must be >= 0")
    return value


@dataclass(frozen=True)
class Placement:
    """One sub-task run: where and when (``node`` is the first pod's node; ``nodes`` all of them)."""

    task: str
    subtask: str
    class_name: str
    node: str
    start: float
    end: float
    nodes: tuple[str, ...] = ()
    cost: float = 0.0
    estimated_seconds: float = 0.0
    variant: str = ""  # the variant it ran, for a sub-task with variants


@dataclass(frozen=True)
class Observation:
    """A completion seen by the learner: its estimate before it ran, and the truth."""

    profile: str
    class_name: str
    seen_before: int  # completions of this profile (any class) before this one finished
    known_at_admission: int  # completions of this profile the scheduler had seen when it placed this one
    estimated_seconds: float
    actual_seconds: float
    source: str

    @property
    def relative_error(self) -> float:
        return abs(self.estimated_seconds - self.actual_seconds) / self.actual_seconds


@dataclass(frozen=True)
class SimResult:
    policy: str
    tasks: int
    completion_seconds: Mapping[str, float]
    avg_completion_seconds: float
    weighted_avg_completion_seconds: float
    makespan_seconds: float
    total_cost: float
    placements: tuple[Placement, ...]
    unschedulable: Mapping[str, str] = field(default_factory=dict)  # "task/subtask" -> why
    cycles: int = 0
    observations: tuple[Observation, ...] = ()
    learned: Mapping[tuple[str, str], Learned] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The stable `aitask simulate --format json` document (DESIGN.md section 6)."""
        return {
            "policy": self.policy,
            "tasks": self.tasks,
            "avg_completion_seconds": self.avg_completion_seconds,
            "weighted_avg_completion_seconds": self.weighted_avg_completion_seconds,
            "makespan_seconds": self.makespan_seconds,
            "total_cost": self.total_cost,
            "placements": [
                {
                    "task": p.task,
                    "subtask": p.subtask,
                    "class": p.class_name,
                    "node": p.node,
                    "start": p.start,
                    "end": p.end,
                    **({"variant": p.variant} if p.variant else {}),
                }
                for p in self.placements
            ],
        }


@dataclass
class _Task:
    task: api.AITask
    name: str
    arrival: float
    deps: dict[str, list[str]]
    succeeded: set[str] = field(default_factory=set)
    started: set[str] = field(default_factory=set)
    ready_since: dict[str, float] = field(default_factory=dict)
    demands: dict[str, Demand] = field(default_factory=dict)
    end: float = 0.0


@dataclass
class _Run:
    task: _Task
    subtask: str
    admission: Admission
    start: float
    end: float
    estimated: float
    source: str
    demand: Demand
    resource: str
    known: int = 0
    variant: str = ""


def _cluster_now(
    classes: Mapping[str, ClassInfo],
    base_nodes: Sequence[NodeInfo],
    free: Mapping[str, Mapping[str, float]],
    running: Mapping[SubtaskKey, _Run],
    learned: Mapping[tuple[str, str], Learned],
    now: float,
    *,
    learn: bool,
) -> tuple[tuple[NodeInfo, ...], tuple[Running, ...]]:
    """Free nodes and running work as the operator would see them: running work at its estimate with
    what is known now (in learn mode a job placed on a guess is re-estimated once its profile is learned)."""
    current = Estimator(classes, learned) if learn else None
    nodes = tuple(replace(n, free=dict(free[n.name])) for n in base_nodes)
    work = tuple(
        Running(
            key=r.admission.key,
            class_name=r.admission.class_name,
            remaining_seconds=max(
                0.0,
                r.start
                + (current.estimate(r.demand, r.admission.class_name).seconds if current is not None else r.estimated)
                - now,
            ),
            accelerators=r.admission.accelerators * len(r.admission.nodes),
            cpu=r.admission.cpu * len(r.admission.nodes),
        )
        for r in running.values()
    )
    return nodes, work


def simulate(
    classes: Mapping[str, ClassInfo],
    nodes: Sequence[NodeInfo],
    tasks: Iterable[api.AITask],
    *,
    params: SchedulerParams,
    learn: bool = False,
    learning_rate: float = 0.3,
    default_time_weight: float = 1.0,
    default_cost_weight: float = 0.0,
    learned: Mapping[tuple[str, str], Learned] | None = None,
    arrivals: Mapping[str, float] | None = None,
    told: Callable[[Demand], Demand] | None = None,
) -> SimResult:
    """Replay the trace through the scheduler until every task has finished (or cannot run).

    Returns completion times (end of a task's last sub-task minus its arrival), the
    placements and their cost at the true runtimes, and what was learned on the way.
    ``told`` rewrites what the scheduler is told about each demand (a benchmark's blind
    baseline); the true runtimes stay those of the trace.
    """
    state: list[_Task] = []
    for task in map(variants.expand_task, tasks):
        name = task.metadata.name
        arrival = arrivals[name] if arrivals is not None and name in arrivals else arrival_of(task)
        deps = {s.name: list(s.depends_on) for s in task.spec.subtasks}
        dag.topological_order(deps)  # reject cycles before simulating
        state.append(_Task(task=task, name=name, arrival=arrival, deps=deps))
    names = [t.name for t in state]
    if len(set(names)) != len(names):
        raise ValueError("task names in a workload must be unique")
    pending = sorted(state, key=lambda t: (t.arrival, t.name))
    free: dict[str, dict[str, float]] = {n.name: dict(n.free) for n in nodes if n.schedulable}
    base_nodes = [n for n in nodes if n.schedulable]
    learned_now: dict[tuple[str, str], Learned] = dict(learned or {})
    truth_estimator = Estimator(classes, {})
    events: list[tuple[float, int, _Run]] = []
    seq = 0
    active: list[_Task] = []
    placements: list[_Run] = []
    observations: list[Observation] = []
    seen: dict[str, int] = {}
    unschedulable: dict[str, str] = {}
    cycles = 0
    next_arrival = 0
    now = 0.0
    running: dict[SubtaskKey, _Run] = {}
    resolved: dict[tuple[str, str], api.Subtask] = {}  # (task, sub-task) -> the sub-task with its chosen variant
    chosen_variant: dict[tuple[str, str], str] = {}

    while True:
        candidates = []
        if next_arrival < len(pending):
            candidates.append(pending[next_arrival].arrival)
        if events:
            candidates.append(events[0][0])
        if not candidates:
            break
        now = min(candidates)
        while events and events[0][0] <= now + _EPS:
            _, _, run = heapq.heappop(events)
            del running[run.admission.key]
            _release(free, run)
            run.task.succeeded.add(run.subtask)
            run.task.end = max(run.task.end, run.end)
            if learn:
                profile = run.demand.profile
                actual = run.end - run.start
                observations.append(
                    Observation(
                        profile=profile,
                        class_name=run.admission.class_name,
                        seen_before=seen.get(profile, 0),
                        known_at_admission=run.known,
                        estimated_seconds=run.estimated,
                        actual_seconds=actual,
                        source=run.source,
                    )
                )
                seen[profile] = seen.get(profile, 0) + 1
                key = (profile, run.admission.class_name)
                learned_now[key] = observe(
                    learned_now.get(key),
                    actual_seconds=actual,
                    work_units=run.demand.work_units,
                    estimated_seconds=run.estimated,
                    learning_rate=learning_rate,
                )
        while next_arrival < len(pending) and pending[next_arrival].arrival <= now + _EPS:
            active.append(pending[next_arrival])
            next_arrival += 1

        seen_now: tuple[tuple[NodeInfo, ...], tuple[Running, ...]] | None = None
        demands: list[Demand] = []
        owner: dict[SubtaskKey, tuple[_Task, str]] = {}
        still_active: list[_Task] = []
        for t in active:
            if len(t.succeeded) == len(t.deps):
                continue
            still_active.append(t)
            for sub_name in dag.ready(t.deps, t.succeeded, t.started):
                demand = t.demands.get(sub_name)
                if demand is None:
                    t.ready_since[sub_name] = now
                    sub = t.task.spec.subtask(sub_name)
                    demand = demand_for(
                        t.task,
                        sub,
                        1,
                        now=now,
                        ready_since=now,
                        arrival=t.arrival,
                        default_time_weight=default_time_weight,
                        default_cost_weight=default_cost_weight,
                    )
                    if sub.variants:  # the variant is chosen when the sub-task becomes ready, as in the operator
                        seen_now = seen_now or _cluster_now(
                            classes, base_nodes, free, running, learned_now, now, learn=learn
                        )
                        chooser = variants.Chooser(classes, *seen_now, learned_now, params)
                        choice = chooser.choose(t.task, sub, demand)
                        demand, resolved[(t.name, sub_name)] = choice.demand, choice.subtask
                        chosen_variant[(t.name, sub_name)] = choice.name
                    if learn:
                        demand = replace(demand, estimate_by_class={})
                    if told is not None:
                        demand = told(demand)
                    t.demands[sub_name] = demand
                demands.append(demand)
                owner[demand.key] = (t, sub_name)
        active = still_active
        if not demands:
            continue
        nodes_now, running_now = seen_now or _cluster_now(
            classes, base_nodes, free, running, learned_now, now, learn=learn
        )
        snapshot = Snapshot(
            now=now,
            classes=classes,
            nodes=nodes_now,
            demands=tuple(demands),
            running=running_now,
            learned=learned_now,
        )
        result = schedule(snapshot, params)
        cycles += 1
        for adm in result.admitted:
            t, sub_name = owner[adm.key]
            demand = t.demands[sub_name]
            true_sub = resolved.get((t.name, sub_name)) or t.task.spec.subtask(sub_name)
            true_seconds = _truth(true_sub, demand, adm.class_name, classes, truth_estimator)
            run = _Run(
                task=t,
                subtask=sub_name,
                admission=adm,
                start=now,
                end=now + true_seconds,
                estimated=adm.chosen.runtime_seconds or true_seconds,
                source=adm.chosen.estimate_source,
                demand=demand,
                resource=accelerator_resource(classes[adm.class_name]),
                known=seen.get(demand.profile, 0),
                variant=chosen_variant.get((t.name, sub_name), ""),
            )
            _take(free, run)
            t.started.add(sub_name)
            running[adm.key] = run
            placements.append(run)
            seq += 1
            heapq.heappush(events, (run.end, seq, run))
        if not events and next_arrival >= len(pending):
            # Nothing runs and nothing will arrive: whatever is still ready can never start.
            for d in result.deferred:
                t, sub_name = owner[d.key]
                unschedulable[f"{t.name}/{sub_name}"] = d.message
            break

    return _summarise(params, state, placements, classes, unschedulable, cycles, observations, learned_now)


def _truth(
    subtask: api.Subtask, demand: Demand, class_name: str, classes: Mapping[str, ClassInfo], est: Estimator
) -> float:
    by_class = subtask.estimate.seconds_by_class
    if class_name in by_class:
        return float(by_class[class_name])
    full = replace(demand, estimate_by_class=dict(by_class))
    return hint(full, classes[class_name], est.classes).seconds


def _take(free: dict[str, dict[str, float]], run: _Run) -> None:
    _adjust(free, run, -1.0)


def _release(free: dict[str, dict[str, float]], run: _Run) -> None:
    _adjust(free, run, 1.0)


def _adjust(free: dict[str, dict[str, float]], run: _Run, sign: float) -> None:
    adm = run.admission
    resource = run.resource
    for node in adm.nodes:
        book = free[node]
        if adm.accelerators:
            book[resource] = book.get(resource, 0.0) + sign * adm.accelerators
        book["cpu"] = book.get("cpu", 0.0) + sign * adm.cpu
        book["memory"] = book.get("memory", 0.0) + sign * adm.memory


def _summarise(
    params: SchedulerParams,
    state: Sequence[_Task],
    runs: Sequence[_Run],
    classes: Mapping[str, ClassInfo],
    unschedulable: Mapping[str, str],
    cycles: int,
    observations: Sequence[Observation],
    learned: Mapping[tuple[str, str], Learned],
) -> SimResult:
    done = [t for t in state if len(t.succeeded) == len(t.deps)]
    completion = {t.name: t.end - t.arrival for t in done}
    weights = {t.name: t.task.spec.priority for t in done}
    total_weight = sum(weights.values())
    placements = []
    total_cost = 0.0
    for r in sorted(runs, key=lambda r: (r.start, r.task.name, r.subtask)):
        money = cost(r.demand, classes[r.admission.class_name], r.end - r.start)
        total_cost += money
        placements.append(
            Placement(
                task=r.task.name,
                subtask=r.subtask,
                class_name=r.admission.class_name,
                node=r.admission.nodes[0] if r.admission.nodes else "",
                start=r.start,
                end=r.end,
                nodes=r.admission.nodes,
                cost=money,
                estimated_seconds=r.estimated,
                variant=r.variant,
            )
        )
    first = min((t.arrival for t in state), default=0.0)
    last = max((r.end for r in runs), default=first)
    return SimResult(
        policy=str(params.policy),
        tasks=len(state),
        completion_seconds=completion,
        avg_completion_seconds=sum(completion.values()) / len(completion) if completion else 0.0,
        weighted_avg_completion_seconds=(
            sum(weights[n] * c for n, c in completion.items()) / total_weight if total_weight else 0.0
        ),
        makespan_seconds=last - first,
        total_cost=total_cost,
        placements=tuple(placements),
        unschedulable=dict(unschedulable),
        cycles=cycles,
        observations=tuple(observations),
        learned=dict(learned),
    )
