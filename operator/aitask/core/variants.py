"""The model library: a sub-task's variants, ensembles, and the joint (variant, class) choice (pure).

A sub-task may list ``variants``: alternative models for the same step, each with what differs
(image, command, args, env, profile, executor, estimate, work) and a ``quality`` in 0..1.

- ``resolve`` applies a variant's overrides: the result is an ordinary sub-task, so demands,
  Jobs, learned runtimes (per the variant's own profile) and spec hashes need nothing new.
- ``expand`` turns an ensemble sub-task into one sub-task per member, ``<name>-<variant>``, each
  with that single variant; its dependents depend on every member. Members are fixed when the
  task is parsed (topK ranks by declared quality, not by F, so an ensemble does not change
  with the load); each member's class is then chosen by the cost model like any sub-task's.
- ``Chooser`` picks the variant of a sub-task with several: for every (variant, class) pair
  ``F = alpha*(W+T) + beta*C + penalty + gamma*(1 - quality)`` with gamma the task's
  ``objective.qualityWeight``; variants below ``minQuality`` are out with a reason. The lowest
  F over all pairs wins; since the quality term does not depend on the class, the scheduler's
  class choice for the chosen variant (argmin over classes of the same F) is the joint argmin.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from aitask.api import v1alpha1 as api
from aitask.core.costmodel import Timeline, build_timeline, class_capacity, score_with_wait
from aitask.core.scheduling.evaluation import Evaluator
from aitask.core.snapshot import demand_for
from aitask.core.types import ClassInfo, Demand, Learned, NodeInfo, Option, Running, SchedulerParams

ALL_CLASSES = "*"
#: Pairs of the variants not chosen kept in the status plan, per variant (aitask plan shows all).
STATUS_PAIRS_PER_VARIANT = 3


def member_name(sub: api.Subtask, variant: str) -> str:
    """The sub-task an ensemble member runs as."""
    return f"{sub.name}-{variant}"


def qualifies(sub: api.Subtask, variant: api.Variant) -> bool:
    return sub.min_quality is None or variant.quality >= sub.min_quality


def ensemble_members(sub: api.Subtask) -> list[api.Variant]:
    """The named members, or the topK variants of highest quality that meet minQuality (ties: by name)."""
    ens = sub.ensemble
    if ens is None:
        return []
    if ens.members is not None:
        by_name = {v.name: v for v in sub.variants}
        return [by_name[m] for m in ens.members]
    ranked = sorted((v for v in sub.variants if qualifies(sub, v)), key=lambda v: (-v.quality, v.name))
    return ranked[: ens.top_k]


def expand(spec: api.AITaskSpec) -> api.AITaskSpec:
    """The spec with every ensemble sub-task replaced by its members (the spec itself when there is none)."""
    if not any(s.ensemble is not None for s in spec.subtasks):
        return spec
    renamed: dict[str, list[str]] = {}
    subtasks: list[api.Subtask] = []
    for sub in spec.subtasks:
        if sub.ensemble is None:
            subtasks.append(sub)
            continue
        members = ensemble_members(sub)
        renamed[sub.name] = [member_name(sub, v.name) for v in members]
        subtasks.extend(
            sub.model_copy(update={"name": member_name(sub, v.name), "variants": [v], "ensemble": None})
            for v in members
        )
    out = []
    for sub in subtasks:
        if any(d in renamed for d in sub.depends_on):
            deps = [m for d in sub.depends_on for m in renamed.get(d, [d])]
            sub = sub.model_copy(update={"depends_on": deps})
        out.append(sub)
    return spec.model_copy(update={"subtasks": out})


def expand_task(task: api.AITask) -> api.AITask:
    spec = expand(task.spec)
    return task if spec is task.spec else task.model_copy(update={"spec": spec})


def resolve(sub: api.Subtask, variant: api.Variant) -> api.Subtask:
    """The sub-task as it runs with ``variant``: its overrides applied, no variants left.

    Only the executor fields the variant sets replace the sub-task's; env entries of the same
    name are replaced. The profile defaults to ``<profile>.<variant>`` so that every variant
    learns its own runtimes.
    """
    executor = sub.executor
    if variant.executor is not None:
        fields = {f: getattr(variant.executor, f) for f in variant.executor.model_fields_set}
        executor = executor.model_copy(update=fields)
    overridden = {e.name for e in variant.env}
    return sub.model_copy(
        update={
            "image": variant.image or sub.image,
            "command": list(sub.command if variant.command is None else variant.command),
            "args": list(sub.args if variant.args is None else variant.args),
            "env": [e for e in sub.env if e.name not in overridden] + list(variant.env),
            "profile": variant.profile or f"{sub.effective_profile}.{variant.name}",
            "executor": executor,
            "estimate": variant.estimate or sub.estimate,
            "work": variant.work or sub.work,
            "variants": [],
            "min_quality": None,
            "ensemble": None,
        }
    )


def variant_of(sub: api.Subtask, name: str) -> api.Variant | None:
    return next((v for v in sub.variants if v.name == name), None)


def for_attempt(sub: api.Subtask, variant: str) -> api.Subtask:
    """The sub-task an attempt ran: resolved with its recorded variant (the spec's sub-task without one)."""
    chosen = variant_of(sub, variant) if variant else None
    return resolve(sub, chosen) if chosen is not None else sub


def variant_demand(task: api.AITask, resolved: api.Subtask, base: Demand) -> Demand:
    """The demand of one variant: the base demand's identity, timing, weights and escalation, its own resources."""
    own = demand_for(
        task,
        resolved,
        base.attempt,
        now=base.ready_since,
        ready_since=base.ready_since,
        arrival=base.arrival,
        default_time_weight=base.time_weight,
        default_cost_weight=base.cost_weight,
        min_accel_memory_gib=base.min_accelerator_memory_gib,
        excluded=base.excluded_classes,
        avoided=base.avoided_classes,
    )
    return replace(own, key=base.key, priority=base.priority)


@dataclass(frozen=True)
class Pair:
    """One (variant, class) considered: the option's score includes the quality term."""

    variant: str
    quality: float
    option: Option


@dataclass(frozen=True)
class VariantChoice:
    variant: api.Variant
    subtask: api.Subtask  # resolved with the chosen variant
    demand: Demand  # the chosen variant's demand
    pairs: tuple[Pair, ...]  # every pair: feasible ones by F, then the infeasible ones
    message: str
    quality_weight: float = 0.0  # gamma of the task's objective

    @property
    def name(self) -> str:
        return self.variant.name


def _rank(pair: Pair) -> tuple[int, float, float, str, str]:
    o = pair.option
    score = o.score if o.feasible and o.score is not None else math.inf
    return (0 if score < math.inf else 1, score, -pair.quality, pair.variant, o.class_name)


class Chooser:
    """Evaluates (variant, class) pairs against one snapshot's classes, nodes, running work and learned runtimes."""

    def __init__(
        self,
        classes: Mapping[str, ClassInfo],
        nodes: Sequence[NodeInfo],
        running: Iterable[Running],
        learned: Mapping[tuple[str, str], Learned],
        params: SchedulerParams,
    ) -> None:
        self.classes = classes
        running = tuple(running)
        capacity = {}
        self.timelines: dict[str, Timeline] = {}
        for name, cls in classes.items():
            members = [n for n in nodes if name in n.classes]
            capacity[name] = class_capacity(cls, members)
            self.timelines[name] = build_timeline(cls, members, running, capacity[name])
        self.evaluator = Evaluator(classes, capacity, learned, params)

    def pairs(self, sub: api.Subtask, variant: api.Variant, demand: Demand, quality_weight: float) -> list[Pair]:
        """Every class for one variant: T, W, C and F with the quality term, or why the pair is out."""
        if not qualifies(sub, variant):
            reason = f"quality {variant.quality:g} < minQuality {sub.min_quality:g}"
            return [Pair(variant.name, variant.quality, Option(class_name=ALL_CLASSES, feasible=False, reason=reason))]
        evaluation = self.evaluator.evaluate(demand)
        term = quality_weight * (1.0 - variant.quality)
        out = []
        for c in evaluation.feasible:
            wait = self.timelines[c.name].wait(c.units)
            option = Option(
                class_name=c.name,
                feasible=wait < math.inf,
                reason="" if wait < math.inf else "the class never has enough free units at once",
                runtime_seconds=c.runtime,
                wait_seconds=wait if wait < math.inf else None,
                cost=c.money,
                score=score_with_wait(c.base, demand.time_weight, wait) + term,
                estimate_source=c.source,
                penalty=c.penalty,
            )
            out.append(Pair(variant.name, variant.quality, option))
        out.extend(Pair(variant.name, variant.quality, o) for o in evaluation.infeasible)
        return out

    def choose(self, task: api.AITask, sub: api.Subtask, base: Demand) -> VariantChoice:
        """The variant whose best class has the lowest F (quality term included) among all pairs.

        With no feasible pair at all, the qualifying variant of highest quality is taken, so
        that its deferral says why no class can run it.
        """
        gamma = task.spec.objective.quality_weight or 0.0
        pairs: list[Pair] = []
        resolved: dict[str, tuple[api.Subtask, Demand]] = {}
        for variant in sub.variants:
            eff = resolve(sub, variant)
            demand = variant_demand(task, eff, base)
            resolved[variant.name] = (eff, demand)
            pairs.extend(self.pairs(sub, variant, demand, gamma))
        pairs.sort(key=_rank)
        best = pairs[0] if pairs and pairs[0].option.feasible else None
        if best is not None:
            chosen = variant_of(sub, best.variant)
            o = best.option
            message = (
                f"variant {best.variant} (quality {best.quality:g}) on {o.class_name}: "
                f"F={o.score:.1f} incl. quality term {gamma * (1 - best.quality):.1f}"
            )
        else:
            chosen = max((v for v in sub.variants if qualifies(sub, v)), key=lambda v: (v.quality, v.name))
            message = f"no (variant, class) pair is feasible; showing variant {chosen.name}"
        assert chosen is not None  # the API guarantees one variant meets minQuality
        eff, demand = resolved[chosen.name]
        return VariantChoice(
            variant=chosen, subtask=eff, demand=demand, pairs=tuple(pairs), message=message, quality_weight=gamma
        )


def with_quality_term(option: Option | None, choice: VariantChoice | None) -> Option | None:
    """The scheduler's option for the chosen variant with its F made comparable to the pairs' (quality term added)."""
    if option is None or choice is None or option.score is None:
        return option
    return replace(option, score=option.score + choice.quality_weight * (1.0 - choice.variant.quality))


Choice = tuple[Demand, api.Subtask, VariantChoice | None]


def lazy_choice(
    classes: Mapping[str, ClassInfo],
    nodes: Sequence[NodeInfo],
    running: Iterable[Running],
    learned: Mapping[tuple[str, str], Learned],
    params: SchedulerParams,
) -> Callable[[api.AITask, api.Subtask, Demand], Choice]:
    """``(task, sub, demand) -> (demand, sub, choice)``: the chosen variant's, or the same when it has none.

    The ``Chooser`` (its timelines and evaluator) is built on first use only.
    """
    made: list[Chooser] = []

    def choose(task: api.AITask, sub: api.Subtask, demand: Demand) -> Choice:
        if not sub.variants:
            return demand, sub, None
        if not made:
            made.append(Chooser(classes, nodes, running, learned, params))
        choice = made[0].choose(task, sub, demand)
        return choice.demand, choice.subtask, choice

    return choose


def alternative(pair: Pair) -> api.Alternative:
    o = pair.option

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return api.Alternative(
        variant=pair.variant,
        class_name=o.class_name,
        feasible=o.feasible,
        reason=o.reason,
        estimated_seconds=r(o.runtime_seconds),
        wait_seconds=r(o.wait_seconds),
        estimated_cost=r(o.cost),
        score=r(o.score),
    )


def with_variant(plan: api.Plan, choice: VariantChoice | None) -> api.Plan:
    """The plan with its variant, and the best pairs of the other variants (or why they are out) added
    (the plan itself for a sub-task without variants).

    The scheduler's alternatives are the chosen variant's classes; their F gains the same quality
    term as the other variants' pairs, so all figures compare.
    """
    if choice is None:
        return plan
    gamma_term = choice.quality_weight * (1.0 - choice.variant.quality)
    own = [
        a.model_copy(
            update={"variant": choice.name, "score": None if a.score is None else round(a.score + gamma_term, 4)}
        )
        for a in plan.alternatives
    ]
    others: list[api.Alternative] = []
    counts: dict[str, int] = {}
    for pair in choice.pairs:
        if pair.variant == choice.name or counts.get(pair.variant, 0) >= STATUS_PAIRS_PER_VARIANT:
            continue
        counts[pair.variant] = counts.get(pair.variant, 0) + 1
        others.append(alternative(pair))
    return plan.model_copy(
        update={
            "variant": choice.name,
            "quality": choice.variant.quality,
            "score": round(plan.score + gamma_term, 6) if plan.class_name else plan.score,
            "alternatives": own + others,
            "message": f"variant {choice.name} (quality {choice.variant.quality:g}): {plan.message}",
        }
    )
