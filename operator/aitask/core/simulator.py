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
from aitask.core.scheduler import preemptions_when_full, schedule
from aitask.core.scheduling.preempt import min_run_seconds
from aitask.core.snapshot import demand_for, resumed
from aitask.core.types import (
    MIGRATED,
    Admission,
    ClassInfo,
    Demand,
    Learned,
    NodeInfo,
    Preemption,
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
    preempted: str = ""  # "" ran to the end; else the Preemption reason (stopped at `end`, grace included)


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
    preemptions: int = 0  # attempts stopped for another demand
    migrations: int = 0  # attempts stopped to move to a faster class

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
                    **({"preempted": p.preempted} if p.preempted else {}),
                }
                for p in self.placements
            ],
            "preemptions": self.preemptions,
            "migrations": self.migrations,
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
    progress: dict[str, float] = field(default_factory=dict)  # work done by stopped attempts (fraction)
    attempts: dict[str, int] = field(default_factory=dict)
    stops: dict[str, int] = field(default_factory=dict)  # preemptions and migrations so far
    move_to: dict[str, str] = field(default_factory=dict)  # the class a migration resumes on
    ready: list[str] | None = None  # dag.ready of the sub-tasks; None: to compute (started or finished)


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
    progress: float = 0.0  # fraction of the work done before this attempt
    switch: float = 0.0  # resume overhead this attempt pays first
    full: float = 0.0  # true seconds of the whole work on its class
    preempted: str = ""  # set when it is stopped; its completion event is then void
    variant: str = ""
    grace: float = 0.0  # its sub-task's preemption.gracePeriodSeconds
    overhead: float = 0.0  # its sub-task's preemption.resumeOverheadSeconds


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

    Preemption (``params.preemption``, sub-tasks with ``preemption.allowed``): a stopped
    attempt holds its units for its grace period, then its sub-task is ready again with the
    work it did carried over (true elapsed run time over its true runtime on that class);
    the resumed attempt pays ``resumeOverheadSeconds`` before it makes progress. A stopped
    attempt is not learned (its runtime is partial), nor is a resumed one.
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
    sim = _Sim(
        classes,
        nodes,
        params,
        learn=learn,
        learning_rate=learning_rate,
        weights=(default_time_weight, default_cost_weight),
        learned=learned,
        told=told,
    )
    sim.run(state)
    return _summarise(
        params,
        state,
        sim.placements,
        classes,
        sim.unschedulable,
        sim.cycles,
        sim.observations,
        sim.learned,
        (sim.preemptions, sim.migrations),
    )


_DONE = 0
_STOPPED = 1


class _Sim:
    """The simulated cluster: free capacity, running attempts, the event queue, what was learned."""

    def __init__(
        self,
        classes: Mapping[str, ClassInfo],
        nodes: Sequence[NodeInfo],
        params: SchedulerParams,
        *,
        learn: bool,
        learning_rate: float,
        weights: tuple[float, float],
        learned: Mapping[tuple[str, str], Learned] | None,
        told: Callable[[Demand], Demand] | None,
    ) -> None:
        self.classes = classes
        if len(classes) <= params.plan_candidates:
            # The placements need only the chosen option; with every class on the cost policy's
            # shortlist either way, reporting no alternatives changes no decision, only the time.
            params = replace(params, max_alternatives=0)
        self.params = params
        self.learn = learn
        self.learning_rate = learning_rate
        self.weights = weights
        self.told = told
        self.free: dict[str, dict[str, float]] = {n.name: dict(n.free) for n in nodes if n.schedulable}
        self.base_nodes = [n for n in nodes if n.schedulable]
        self.learned: dict[tuple[str, str], Learned] = dict(learned or {})
        self.truth_estimator = Estimator(classes, {})
        self.events: list[tuple[float, int, int, _Run]] = []
        self.seq = 0
        self.placements: list[_Run] = []
        self.observations: list[Observation] = []
        self.seen: dict[str, int] = {}
        self.unschedulable: dict[str, str] = {}
        self.cycles = 0
        self.preemptions = 0
        self.migrations = 0
        self.running: dict[SubtaskKey, _Run] = {}
        self.stopping: dict[SubtaskKey, _Run] = {}
        self.resolved: dict[tuple[str, str], api.Subtask] = {}  # (task, sub-task) -> with its chosen variant
        self.chosen: dict[tuple[str, str], str] = {}
        resources = {accelerator_resource(c) for c in classes.values() if c.kind == "gpu"}
        self._resource = resources.pop() if len(resources) == 1 else ""  # "": never skip a cycle
        # Demands are reused across cycles, so their evaluations are too while nothing is learned.
        self.memo: dict[int, tuple[Demand, object]] | None = None if learn else {}

    def run(self, state: Sequence[_Task]) -> None:
        pending = sorted(state, key=lambda t: (t.arrival, t.name))
        active: list[_Task] = []
        next_arrival = 0
        while True:
            candidates = []
            if next_arrival < len(pending):
                candidates.append(pending[next_arrival].arrival)
            if self.events:
                candidates.append(self.events[0][0])
            if not candidates:
                break
            now = min(candidates)
            finished = False
            while self.events and self.events[0][0] <= now + _EPS:
                _, _, kind, item = heapq.heappop(self.events)
                if kind == _DONE and not item.preempted:
                    self._finish(item)
                    finished = True
                elif kind == _STOPPED:
                    self._stopped(item)
            while next_arrival < len(pending) and pending[next_arrival].arrival <= now + _EPS:
                active.append(pending[next_arrival])
                next_arrival += 1
            if finished:
                active = [t for t in active if len(t.succeeded) < len(t.deps)]
            demands, owner = self._ready(active, now)
            if not demands or not self._may_change(demands, now):
                continue
            snapshot = self._snapshot(now, demands)
            full = self._resource and not self._room() and all(d.accelerators and "gpu" in d.kinds for d in demands)
            if full:
                result = preemptions_when_full(snapshot, self.params)
            else:
                result = schedule(snapshot, self.params, report=False)
            self.cycles += 1
            for adm in result.admitted:
                self._start(adm, owner[adm.key], now)
            for p in result.preempted:
                self._preempt(p, now)
            if self.memo is not None and len(self.memo) > 4 * len(demands) + 1000:
                self.memo = {id(d): self.memo[id(d)] for d in demands if id(d) in self.memo}
            if not self.events and next_arrival >= len(pending):
                # Nothing runs and nothing will arrive: whatever is still ready can never start.
                for d in schedule(snapshot, self.params).deferred:
                    t, sub_name = owner[d.key]
                    self.unschedulable[f"{t.name}/{sub_name}"] = d.message
                break

    def _room(self) -> bool:
        return any(book.get(self._resource, 0.0) >= 1.0 for book in self.free.values())

    def _may_change(self, demands: Sequence[Demand], now: float) -> bool:
        """Whether a cycle now could admit or stop anything: not when every demand needs accelerators,
        no node has one free and no running work may be stopped yet (a saturated cluster between
        completions). Skipping such a cycle changes no decision, only the time a simulation takes."""
        if not self._resource or any(not d.accelerators or "gpu" not in d.kinds for d in demands):
            return True
        if self._room():
            return True
        if not self.params.preemption:
            return False
        return any(
            r.demand.preemptible and now - r.start >= min_run_seconds(self.params, r.task.stops.get(r.subtask, 0))
            for r in self.running.values()
        )

    def _finish(self, run: _Run) -> None:
        del self.running[run.admission.key]
        _release(self.free, run)
        run.task.succeeded.add(run.subtask)
        run.task.ready = None
        run.task.end = max(run.task.end, run.end)
        if not self.learn or run.progress > 0:
            return  # a resumed attempt ran part of the work: not a sample of the whole
        profile = run.demand.profile
        actual = run.end - run.start
        self.observations.append(
            Observation(
                profile=profile,
                class_name=run.admission.class_name,
                seen_before=self.seen.get(profile, 0),
                known_at_admission=run.known,
                estimated_seconds=run.estimated,
                actual_seconds=actual,
                source=run.source,
            )
        )
        self.seen[profile] = self.seen.get(profile, 0) + 1
        key = (profile, run.admission.class_name)
        self.learned[key] = observe(
            self.learned.get(key),
            actual_seconds=actual,
            work_units=run.demand.work_units,
            estimated_seconds=run.estimated,
            learning_rate=self.learning_rate,
        )

    def _stopped(self, run: _Run) -> None:
        """A preempted attempt's pods are gone: its units are free, its sub-task is ready again."""
        del self.stopping[run.admission.key]
        _release(self.free, run)
        run.task.started.discard(run.subtask)
        run.task.ready = None
        run.task.demands.pop(run.subtask, None)

    def _preempt(self, p: Preemption, now: float) -> None:
        run = self.running.pop(p.key)
        done = max(0.0, now - run.start - run.switch) / run.full if run.full > 0 else 0.0
        run.task.progress[run.subtask] = min(run.progress + done, 1.0)
        run.preempted = p.reason
        run.end = now + run.grace
        run.task.stops[run.subtask] = run.task.stops.get(run.subtask, 0) + 1
        if p.reason == MIGRATED:
            run.task.move_to[run.subtask] = p.target_class
            self.migrations += 1
        else:
            self.preemptions += 1
        self.stopping[p.key] = run
        self.seq += 1
        heapq.heappush(self.events, (run.end, self.seq, _STOPPED, run))

    def _ready(self, active: Sequence[_Task], now: float) -> tuple[list[Demand], dict[SubtaskKey, tuple[_Task, str]]]:
        demands: list[Demand] = []
        owner: dict[SubtaskKey, tuple[_Task, str]] = {}
        for t in active:
            if t.ready is None:
                t.ready = dag.ready(t.deps, t.succeeded, t.started)
            for sub_name in t.ready:
                demand = t.demands.get(sub_name)
                if demand is None:
                    demand = self._demand(t, sub_name, now)
                    t.demands[sub_name] = demand
                demands.append(demand)
                owner[demand.key] = (t, sub_name)
        return demands, owner

    def _demand(self, t: _Task, sub_name: str, now: float) -> Demand:
        t.ready_since.setdefault(sub_name, now)
        attempt = t.attempts.get(sub_name, 0) + 1
        subtask = t.task.spec.subtask(sub_name)
        demand = demand_for(
            t.task,
            subtask,
            attempt,
            now=now,
            ready_since=now,
            arrival=t.arrival,
            default_time_weight=self.weights[0],
            default_cost_weight=self.weights[1],
        )
        demand = self._variant(t, subtask, demand, now)
        progress = t.progress.get(sub_name, 0.0)
        if progress > 0:
            demand = resumed(
                demand, progress, subtask.preemption.resume_overhead_seconds, t.move_to.pop(sub_name, None)
            )
        if self.learn:
            demand = replace(demand, estimate_by_class={})
        if self.told is not None:
            demand = self.told(demand)
        return demand

    def _variant(self, t: _Task, subtask: api.Subtask, demand: Demand, now: float) -> Demand:
        """A sub-task with variants: the variant chosen when it first becomes ready, as in the operator
        (a resumed attempt keeps it: its work carries over)."""
        if not subtask.variants:
            return demand
        key = (t.name, subtask.name)
        if key not in self.chosen:
            snap = self._snapshot(now, ())
            choice = variants.Chooser(self.classes, snap.nodes, snap.running, self.learned, self.params).choose(
                t.task, subtask, demand
            )
            self.resolved[key], self.chosen[key] = choice.subtask, choice.name
            return choice.demand
        return replace(
            demand_for(
                t.task,
                self.resolved[key],
                demand.attempt,
                now=now,
                ready_since=now,
                arrival=t.arrival,
                default_time_weight=self.weights[0],
                default_cost_weight=self.weights[1],
            ),
            key=demand.key,
        )

    def _snapshot(self, now: float, demands: Sequence[Demand]) -> Snapshot:
        # Running work as the operator would see it: its estimate with what is known now
        # (in learn mode a job placed on a guess is re-estimated once its profile is learned).
        current = Estimator(self.classes, self.learned) if self.learn else None
        running = [self._running(r, now, current) for r in self.running.values()]
        running.extend(self._running(r, now, current, stopping=True) for r in self.stopping.values())
        return Snapshot(
            now=now,
            classes=self.classes,
            nodes=tuple(
                NodeInfo(n.name, n.classes, n.allocatable, dict(self.free[n.name]), n.schedulable)
                for n in self.base_nodes
            ),
            demands=tuple(demands),
            running=tuple(running),
            learned=self.learned,
            memo=self.memo,
        )

    def _running(self, r: _Run, now: float, current: Estimator | None, *, stopping: bool = False) -> Running:
        estimated = current.estimate(r.demand, r.admission.class_name).seconds if current is not None else r.estimated
        adm = r.admission
        resume = None
        stops = r.task.stops.get(r.subtask, 0)
        eligible = now - r.start >= min_run_seconds(self.params, stops)  # else never a victim: not built
        if r.demand.preemptible and self.params.preemption and not stopping and eligible:
            # The scheduler's view of the work done: elapsed run time over its estimate of the whole work.
            whole = (estimated - r.switch) / max(1.0 - r.progress, _EPS)
            done = min(r.progress + max(0.0, now - r.start - r.switch) / max(whole, _EPS), 1.0)
            resume = resumed(r.demand, done, r.overhead, None, attempt=r.demand.attempt + 1)
        return Running(
            key=adm.key,
            class_name=adm.class_name,
            remaining_seconds=max(0.0, (r.end if stopping else r.start + estimated) - now),
            accelerators=adm.accelerators * len(adm.nodes),
            cpu=adm.cpu * len(adm.nodes),
            resume=resume,
            nodes=adm.nodes,
            memory=adm.memory * len(adm.nodes),
            started=r.start,
            grace_seconds=r.grace,
            stopping=stopping,
            preemptions=stops,
        )

    def _start(self, adm: Admission, owned: tuple[_Task, str], now: float) -> None:
        t, sub_name = owned
        demand = t.demands[sub_name]
        spec = t.task.spec.subtask(sub_name)
        true_sub = self.resolved.get((t.name, sub_name)) or spec
        full = _truth(true_sub, demand, adm.class_name, self.classes, self.truth_estimator)
        progress = t.progress.get(sub_name, 0.0)
        switch = demand.switch_seconds
        true_seconds = full * (1.0 - progress) + switch
        run = _Run(
            task=t,
            subtask=sub_name,
            admission=adm,
            start=now,
            end=now + true_seconds,
            estimated=adm.chosen.runtime_seconds or true_seconds,
            source=adm.chosen.estimate_source,
            demand=demand,
            resource=accelerator_resource(self.classes[adm.class_name]),
            known=self.seen.get(demand.profile, 0),
            progress=progress,
            switch=switch,
            full=full,
            variant=self.chosen.get((t.name, sub_name), ""),
            grace=float(spec.preemption.grace_period_seconds),
            overhead=spec.preemption.resume_overhead_seconds,
        )
        _take(self.free, run)
        t.started.add(sub_name)
        t.ready = None
        t.attempts[sub_name] = demand.attempt
        self.running[adm.key] = run
        self.placements.append(run)
        self.seq += 1
        heapq.heappush(self.events, (run.end, self.seq, _DONE, run))


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
    switches: tuple[int, int] = (0, 0),
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
                preempted=r.preempted,
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
        preemptions=switches[0],
        migrations=switches[1],
    )
