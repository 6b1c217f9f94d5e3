"""Class feasibility and evaluation: T, C, the right-sizing penalty and the static part of F.

Every demand is evaluated once per distinct signature, read only from the snapshot: which
classes could ever run it (its *shape*), what it would take and cost there (its *estimate
inputs*), and the weights of F. Demands of one profile share the work, so a cycle costs
O(signatures x classes + demands x classes).

The cache keys are records whose field names are ``Demand`` field names, built from the demand
by those names: a field added to ``Demand`` must be put in one of them or on
``IGNORED_DEMAND_FIELDS`` (a test checks), so a new field that changes feasibility or runtime
cannot silently reuse another demand's result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

from aitask.core.costmodel import (
    ClassCapacity,
    cost,
    demand_units,
    infeasible_reason,
    pod_request,
    rightsizing_penalty,
    static_score,
)
from aitask.core.estimator import Estimate, Estimator
from aitask.core.scheduling.books import Request
from aitask.core.types import ClassInfo, Demand, Learned, Option, SchedulerParams


class ShapeKey(NamedTuple):
    """What feasibility depends on: the demand's allowed classes and its pods' shape."""

    kinds: frozenset[str]
    classes: frozenset[str] | None
    min_accelerator_memory_gib: float
    excluded_classes: frozenset[str]
    avoided_classes: frozenset[str]
    accelerators: int
    cpu: float
    memory: float
    pods: int
    gang: bool


class EstimateKey(NamedTuple):
    """What the runtime estimate depends on (``estimate_by_class`` as sorted items)."""

    profile: str
    work_units: float
    subtask_type: str
    estimate_seconds: float | None
    estimate_on_class: str | None
    estimate_by_class: tuple[tuple[str, float], ...]
    remaining: float
    switch_seconds: float


class EvaluationKey(NamedTuple):
    """The whole signature of an evaluation: shape, estimate inputs and the weights of F."""

    shape: ShapeKey
    inputs: EstimateKey
    time_weight: float
    cost_weight: float


AVOIDED_REASON = "avoided: an earlier attempt got stuck on it (pods Pending or not created), and another class fits"

#: Demand fields that do not change an evaluation: identity, and what only the queue order reads.
IGNORED_DEMAND_FIELDS = frozenset(
    {"key", "attempt", "priority", "completions", "ready_since", "arrival", "preemptible"}
)

_shape_fields = attrgetter(*ShapeKey._fields)
_estimate_fields = attrgetter(*EstimateKey._fields)
_BY_CLASS = EstimateKey._fields.index("estimate_by_class")


def shape_key(d: Demand) -> ShapeKey:
    return ShapeKey._make(_shape_fields(d))


def estimate_key(d: Demand) -> EstimateKey:
    values = list(_estimate_fields(d))
    by_class: Mapping[str, float] = values[_BY_CLASS]
    values[_BY_CLASS] = tuple(sorted(by_class.items())) if by_class else ()
    return EstimateKey._make(values)


def evaluation_key(d: Demand) -> EvaluationKey:
    return EvaluationKey(shape_key(d), estimate_key(d), d.time_weight, d.cost_weight)


def key_fields() -> frozenset[str]:
    """Every Demand field some cache key reads."""
    nested = {"shape", "inputs"}
    return frozenset(ShapeKey._fields) | frozenset(EstimateKey._fields) | (set(EvaluationKey._fields) - nested)


@dataclass(frozen=True, slots=True)
class Choice:
    """The static part of one (signature, feasible class): everything but W."""

    name: str
    runtime: float
    money: float
    penalty: float
    base: float  # alpha*T + beta*C + penalty (costmodel.static_score); F = base + alpha*W
    units: float
    request: Request
    source: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    feasible: tuple[Choice, ...]
    infeasible: tuple[Option, ...]
    best_runtime: float
    ranked: tuple[int, ...]  # feasible indices, lowest static F (alpha*T + beta*C + penalty) first
    # The queue plan's static part of each of its candidates (the first ``plan_candidates`` of ranked):
    # (class, feasible index, u * T, T, beta*C + penalty), built once per signature, not per cycle.
    cells: tuple[tuple[str, int, float, float, float], ...] = ()


def plan_cells(
    choices: Sequence[Choice], ranked: Sequence[int], limit: int, time_weight: float
) -> tuple[tuple[str, int, float, float, float], ...]:
    """``Evaluation.cells`` for the first ``limit`` ranked choices of a demand of that time weight."""
    out = []
    for j in ranked[: max(1, limit)]:
        c = choices[j]
        out.append((c.name, j, c.units * c.runtime, c.runtime, c.base - time_weight * c.runtime))
    return tuple(out)


_Fit = tuple[tuple[tuple[str, ClassInfo, float, Request], ...], tuple[Option, ...], float]


class Evaluator:
    """Evaluations for one cycle, cached by signature; feasibility and estimates cached apart."""

    def __init__(
        self,
        classes: Mapping[str, ClassInfo],
        capacity: Mapping[str, ClassCapacity],
        learned: Mapping[tuple[str, str], Learned],
        params: SchedulerParams,
        memo: dict[int, tuple[Demand, object]] | None = None,
    ) -> None:
        self.memo = memo
        self.classes = classes
        self.capacity = capacity
        self.learned = learned
        self.params = params
        self.estimator = Estimator(classes, learned)
        self._evaluations: dict[EvaluationKey, Evaluation] = {}
        self._shapes: dict[ShapeKey, _Fit] = {}
        self._estimates: dict[tuple[EstimateKey, str], Estimate] = {}

    def evaluate(self, d: Demand) -> Evaluation:
        """T, C, penalty and feasibility of every class for the demand, cached by signature.

        Feasibility depends only on the demand's shape, estimates only on its estimate
        inputs: separate caches keep a cycle over many similar demands cheap.
        """
        if self.memo is not None:
            hit = self.memo.get(id(d))
            if hit is not None and hit[0] is d and isinstance(hit[1], Evaluation):
                return hit[1]
        evaluation = self._evaluate(d)
        if self.memo is not None:
            self.memo[id(d)] = (d, evaluation)
        return evaluation

    def _evaluate(self, d: Demand) -> Evaluation:
        sig = evaluation_key(d)
        found = self._evaluations.get(sig)
        if found is not None:
            return found
        fit = self._shapes.get(sig.shape)
        if fit is None:
            fit = self._feasibility(d)
            self._shapes[sig.shape] = fit
        feasible, infeasible, cheapest = fit
        choices: list[Choice] = []
        for name, cls, units, request in feasible:
            est = self._estimates.get((sig.inputs, name))
            if est is None:
                est = self.estimator.estimate(d, name)
                self._estimates[(sig.inputs, name)] = est
            money = cost(d, cls, est.seconds)
            penalty = rightsizing_penalty(
                d,
                cls,
                self.learned.get((d.profile, name)),
                cheapest_accelerator_price=cheapest,
                runtime=est.seconds,
                money=money,
                params=self.params,
            )
            choices.append(
                Choice(
                    name=name,
                    runtime=est.seconds,
                    money=money,
                    penalty=penalty,
                    base=static_score(d, est.seconds, money, penalty),
                    units=units,
                    request=request,
                    source=est.source,
                )
            )
        best = min((c.runtime for c in choices), default=math.inf)
        ranked = tuple(sorted(range(len(choices)), key=lambda j: (choices[j].base, choices[j].name)))
        evaluation = Evaluation(
            feasible=tuple(choices),
            infeasible=infeasible,
            best_runtime=best,
            ranked=ranked,
            cells=plan_cells(choices, ranked, self.params.plan_candidates, d.time_weight),
        )
        self._evaluations[sig] = evaluation
        return evaluation

    def _feasibility(self, d: Demand) -> _Fit:
        feasible = []
        infeasible = []
        for name, cls in self.classes.items():
            reason = infeasible_reason(d, cls, self.capacity[name])
            if reason:
                infeasible.append(Option(class_name=name, feasible=False, reason=reason))
            else:
                feasible.append((name, cls, demand_units(d, cls), pod_request(d, cls)))
        if d.avoided_classes and any(f[0] not in d.avoided_classes for f in feasible):
            # A soft exclusion (OOM escalation's is hard): a class where an attempt got stuck is
            # left out only while another class can run the demand; alone, it is retried.
            infeasible.extend(
                Option(class_name=f[0], feasible=False, reason=AVOIDED_REASON)
                for f in feasible
                if f[0] in d.avoided_classes
            )
            feasible = [f for f in feasible if f[0] not in d.avoided_classes]
        prices = [cls.price_accelerator_hour for _, cls, _, _ in feasible if cls.kind == "gpu"]
        infeasible.sort(key=lambda o: o.class_name)
        return tuple(feasible), tuple(infeasible), min(prices) if prices else 0.0
