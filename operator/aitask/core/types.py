"""Plain value types the pure core works on: the scheduler's snapshot and its decisions.

The operator (from its Kopf indexes), ``aitask simulate`` (from a cluster file and a
trace) and ``aitask plan`` all build the same ``Snapshot`` and call the same
``core.scheduler.schedule``; nothing in here knows about Kubernetes clients or clocks.

Units everywhere: seconds, CPU cores, bytes of memory, accelerators as counts,
money in the currency of ``ExecutorClass.spec.price``. ``now`` is epoch seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

ACCELERATOR_DEFAULT = "nvidia.com/gpu"


class Policy(StrEnum):
    """Scheduling policies: ours, and the two baselines of the benchmarks."""

    COST = "cost"  # weighted-shortest-first with ageing, class by minimum F
    FIFO = "fifo"  # arrival order, earliest-finishing class (heterogeneity-aware)
    AGNOSTIC = "agnostic"  # arrival order, any free executor of an allowed kind, all GPUs equal


@dataclass(frozen=True)
class SubtaskKey:
    """Identifies one sub-task of one AITask across the cluster."""

    namespace: str
    task: str
    subtask: str
    # "namespace/task/subtask" and the hash, made once: the schedulers sort by the one and look keys up
    # by the other at every cycle.
    _text: str = field(init=False, repr=False, compare=False, default="")
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_text", f"{self.namespace}/{self.task}/{self.subtask}")
        object.__setattr__(self, "_hash", hash((self.namespace, self.task, self.subtask)))

    def __str__(self) -> str:
        return self._text

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[SubtaskKey], tuple[str, str, str]]:
        # Rebuilt from its fields: a string's hash differs from one process to the next.
        return (SubtaskKey, (self.namespace, self.task, self.subtask))


@dataclass(frozen=True)
class TolerationInfo:
    """A pod toleration of a class, enough to decide whether a node's taint is tolerated."""

    key: str | None = None
    operator: str = "Equal"  # "Equal" | "Exists"
    value: str | None = None
    effect: str | None = None  # None tolerates every effect


@dataclass(frozen=True)
class ClassInfo:
    """An ExecutorClass, flattened for the cost model."""

    name: str
    kind: str  # "gpu" | "cpu"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    accelerator_resource: str | None = None  # e.g. "nvidia.com/gpu"; None for CPU pools
    accelerator_model: str | None = None
    accelerator_memory_gib: float = 0.0
    price_accelerator_hour: float = 0.0
    price_cpu_hour: float = 0.0
    price_memory_gib_hour: float = 0.0
    speed_default: float = 1.0
    speed_profiles: Mapping[str, float] = field(default_factory=dict)
    tolerations: tuple[TolerationInfo, ...] = ()

    def speed(self, profile: str) -> float:
        return self.speed_profiles.get(profile, self.speed_default)


@dataclass(frozen=True)
class NodeInfo:
    """A node with what is still free on it after every bound pod and every reservation."""

    name: str
    classes: tuple[str, ...]  # the classes whose selector it matches (and whose tolerations cover its taints)
    allocatable: Mapping[str, float]  # resource name -> amount (cpu cores, memory bytes, accelerators)
    free: Mapping[str, float]  # same keys; never above allocatable
    schedulable: bool = True  # Ready and not cordoned


@dataclass(frozen=True)
class Learned:
    """Runtime learned for one (profile, class): seconds per work unit, from `samples` runs."""

    seconds_per_unit: float
    samples: int
    relative_error: float | None = None
    gpu_util_avg: float | None = None
    oom_kills: int = 0


@dataclass(frozen=True)
class Demand:
    """One ready sub-task attempt asking to be admitted."""

    key: SubtaskKey
    attempt: int
    priority: float  # weight in weighted completion time (> 0)
    time_weight: float  # alpha
    cost_weight: float  # beta
    profile: str
    work_units: float
    pods: int  # pods running at once (parallelism)
    completions: int
    gang: bool
    accelerators: int  # per pod, on GPU classes
    cpu: float  # cores per pod
    memory: float  # bytes per pod
    kinds: frozenset[str]  # allowed kinds
    classes: frozenset[str] | None  # allowed class names; None = any
    min_accelerator_memory_gib: float  # raised by OOM escalation
    excluded_classes: frozenset[str]  # e.g. classes an earlier attempt was OOM-killed on
    estimate_seconds: float | None  # hint: runtime on `estimate_on_class` (or at speed 1.0)
    estimate_on_class: str | None
    estimate_by_class: Mapping[str, float]  # hint (and oracle in simulation)
    ready_since: float  # epoch seconds when it became ready (ageing)
    arrival: float  # epoch seconds when its task was submitted (FIFO order)
    subtask_type: str = "custom"  # api SubtaskType value; picks the runtime prior when there is no hint
    # Classes where an earlier attempt got stuck (pods Pending, not created): feasible only when no
    # other class is, so a retry moves elsewhere if it can and stays where it is if it cannot.
    avoided_classes: frozenset[str] = frozenset()
    # Preemption (core.scheduling.preempt): a resumed attempt has ``remaining`` of the work left
    # and pays ``switch_seconds`` (resume overhead) on top, so its T is what is left plus that.
    remaining: float = 1.0
    switch_seconds: float = 0.0
    preemptible: bool = False


@dataclass(frozen=True)
class Running:
    """Admitted work still occupying a class: it feeds the expected wait W."""

    key: SubtaskKey
    class_name: str
    remaining_seconds: float  # estimated; >= 0
    accelerators: int  # total over its pods (0 on CPU classes)
    cpu: float  # total cores over its pods
    # Waiting in an external queue (a Job Kueue holds suspended): it holds no units yet and takes
    # them, for all of remaining_seconds, when they are free (the timeline reserves it).
    queued: bool = False
    # Only for work that may be preempted (core.scheduling.preempt); the rest keeps the defaults.
    resume: Demand | None = None  # the demand it becomes if stopped now (work left, overhead); None: never stopped
    nodes: tuple[str, ...] = ()  # node of each pod
    memory: float = 0.0  # total bytes over its pods
    started: float = 0.0  # when this attempt started (hysteresis: minimum run time before a preemption)
    grace_seconds: float = 0.0  # what a stop takes (the pods' grace period: the units stay held)
    stopping: bool = False  # a stop was decided and its pods are still ending: their units free soon
    preemptions: int = 0  # times this sub-task was stopped before: each doubles the minimum run time


QUOTA = "ResourceQuota"
NAMESPACE_BUDGET = "AITaskBudget"
TASK_BUDGET = "TaskBudget"


@dataclass(frozen=True)
class Limit:
    """One object that caps admission: a ResourceQuota, an AITaskBudget, or a task's own budget."""

    kind: str  # QUOTA | NAMESPACE_BUDGET | TASK_BUDGET
    name: str  # object name (the task's key for a task budget)
    namespace: str
    hard: Mapping[str, float]
    used: Mapping[str, float] = field(default_factory=dict)
    task: str | None = None  # "namespace/name": applies to that task's demands only

    def applies(self, d: Demand) -> bool:
        if d.key.namespace != self.namespace:
            return False
        return self.task is None or self.task == f"{d.key.namespace}/{d.key.task}"

    @property
    def title(self) -> str:
        if self.kind == TASK_BUDGET:
            return "the task's budget"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Snapshot:
    """Everything one scheduling cycle may look at. Built fresh for every cycle."""

    now: float
    classes: Mapping[str, ClassInfo]
    nodes: tuple[NodeInfo, ...]
    demands: tuple[Demand, ...]
    running: tuple[Running, ...] = ()
    learned: Mapping[tuple[str, str], Learned] = field(default_factory=dict)  # (profile, class)
    limits: tuple[Limit, ...] = ()  # ResourceQuotas and budgets (core.scheduling.limits)
    # Evaluations kept across cycles by demand identity (id -> (demand, evaluation)), for a caller that
    # reuses its Demand objects while classes, capacity, learned runtimes and params stay the same
    # (`aitask simulate` in oracle mode). None: every cycle evaluates afresh (the operator).
    memo: dict[int, tuple[Demand, object]] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SchedulerParams:
    policy: Policy = Policy.COST
    # Preemption of preemptible running work (core.scheduling.preempt; the cost policy only).
    preemption: bool = True
    preempt_order: str = "remaining"  # "remaining" (weighted shortest remaining) | "attained" (least attained)
    preempt_factor: float = 2.0  # hysteresis: the newcomer's ratio must beat the victim's this many times
    # Hysteresis: an attempt runs this long before it can be stopped, doubled for every earlier stop
    # of the same sub-task (so a long job displaced again and again is stopped O(log runtime) times).
    preempt_min_run_seconds: float = 600.0
    migrate_factor: float = 1.5  # a move to a faster free class must cut the remaining time this many times
    ageing_seconds: float = 600.0  # waiting this long doubles a demand's ordering weight
    max_alternatives: int = 5
    low_gpu_util_percent: float = 30.0  # right-sizing: learned GPU utilisation under this is "oversized"
    rightsizing_penalty: float = 0.5  # F += this * shortfall * (alpha*T + beta*C) on a pricier class
    lookahead: bool = True  # cost/fifo: a demand waiting for a busy class holds its place there
    plan_candidates: int = 4  # cost: classes (lowest static F first) the queue plan considers per demand
    plan_passes: int = 1  # cost: improvement passes of the queue plan after the greedy insertion
    # fifo/agnostic: take demands by arrival, or weighted shortest first (Smith order on the best
    # class, with ageing) as the cost policy does; "smith" is for the benchmarks' ordered baselines.
    baseline_order: str = "arrival"  # "arrival" | "smith"
    # Kueue interop (the operator only; plan and simulate leave it off): an external queue (Kueue) admits
    # the Jobs, so a ready demand is handed over on its best class by F (W from the class timeline) at
    # once, without waiting for free nodes, and books no node capacity (its Job is created suspended
    # and holds no pods until Kueue admits it). The timeline still counts it, so W stays honest.
    external_queue: bool = False


@dataclass(frozen=True)
class Option:
    """One class considered for a demand, with the terms of F (or why it was infeasible)."""

    class_name: str
    feasible: bool
    reason: str = ""  # why infeasible, human readable
    runtime_seconds: float | None = None  # T
    wait_seconds: float | None = None  # W
    cost: float | None = None  # C
    score: float | None = None  # F
    estimate_source: str = ""  # "learned(n=3)", "hint:secondsByClass", "hint:seconds@v100*speed", "prior"
    penalty: float = 0.0  # right-sizing penalty included in `score`


@dataclass(frozen=True)
class Admission:
    """A demand admitted this cycle onto `class_name`, its pods packed onto `nodes`."""

    key: SubtaskKey
    attempt: int
    class_name: str
    nodes: tuple[str, ...]  # one entry per pod (len == pods), in pod-index order
    accelerators: int  # per pod
    cpu: float  # per pod
    memory: float  # per pod
    chosen: Option
    alternatives: tuple[Option, ...]  # the other classes, best first, infeasible last
    message: str  # human sentence for status/events


@dataclass(frozen=True)
class Deferral:
    """A demand not admitted this cycle, and why (best feasible class so far, if any)."""

    key: SubtaskKey
    attempt: int
    reason: str  # "NoFeasibleClass" | "InsufficientCapacity" | "GangIncomplete"
    message: str
    best: Option | None
    alternatives: tuple[Option, ...]


PREEMPTED_FOR = "PreemptedFor"  # stopped so that a demand of a higher ratio can start
MIGRATED = "Migrated"  # stopped to resume on a faster class that is free


@dataclass(frozen=True)
class Preemption:
    """Running preemptible work to stop now (its Job deleted with the grace period), and why."""

    key: SubtaskKey
    class_name: str  # where it runs now
    reason: str  # PREEMPTED_FOR | MIGRATED
    by: SubtaskKey | None  # the demand it makes room for (None for a migration)
    target_class: str  # where the room is made (by's class), or the faster class it moves to
    message: str


@dataclass(frozen=True)
class CycleResult:
    admitted: tuple[Admission, ...]
    deferred: tuple[Deferral, ...]
    preempted: tuple[Preemption, ...] = ()
