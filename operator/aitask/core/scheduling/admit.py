"""Admission and deferral records, with the human message each carries into status and events."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from aitask.core.costmodel import score_with_wait
from aitask.core.quantity import GIB
from aitask.core.scheduling.evaluation import Choice, Evaluation
from aitask.core.types import Admission, Deferral, Demand, Option

NO_FEASIBLE_CLASS = "NoFeasibleClass"
INSUFFICIENT_CAPACITY = "InsufficientCapacity"
GANG_INCOMPLETE = "GangIncomplete"


def options(
    d: Demand,
    evaluation: Evaluation,
    waits: Mapping[int, float],
    scores: Mapping[int, float],
    max_alternatives: int,
    first: int | None = None,
) -> list[Option]:
    """Options in the policy's order (``scores``), ``first`` leading; each carries F whatever the policy."""
    alpha = d.time_weight
    order = sorted(scores, key=lambda j: (j != first, scores[j], evaluation.feasible[j].name))
    limit = max(1, max_alternatives + 1)
    out = []
    for j in order[:limit]:
        c = evaluation.feasible[j]
        out.append(_feasible_option(c, waits[j], score_with_wait(c.base, alpha, waits[j])))
    room = max(0, limit - len(out))
    out.extend(evaluation.infeasible[:room])
    return out


def admission(d: Demand, choice: Choice, nodes: Sequence[str], opts: Sequence[Option]) -> Admission:
    chosen = opts[0]
    runner_up = next((o for o in opts[1:] if o.feasible), None)
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
        nodes=tuple(nodes),
        accelerators=accelerators,
        cpu=cpu,
        memory=memory,
        chosen=chosen,
        alternatives=tuple(opts[1:]),
        message=message,
    )


def handover(d: Demand, choice: Choice, wait: float, opts: Sequence[Option]) -> Admission:
    """A demand handed to an external queue (Kueue) on its best class: no planned nodes, nothing booked."""
    accelerators, cpu, memory = choice.request
    shape = f"{accelerators} accelerator(s), " if accelerators else ""
    message = (
        f"handed to Kueue on {choice.name} ({d.pods} pod(s) of {shape}{cpu:g} cpu, {memory / GIB:g}Gi): "
        f"T {_secs(choice.runtime)} ({choice.source}), expected wait {_secs(wait)}, cost {choice.money:.2f}, "
        f"F {_num(opts[0].score)}"
    )
    return Admission(
        key=d.key,
        attempt=d.attempt,
        class_name=choice.name,
        nodes=(),
        accelerators=accelerators,
        cpu=cpu,
        memory=memory,
        chosen=opts[0],
        alternatives=tuple(opts[1:]),
        message=message,
    )


def waiting(d: Demand, choice: Choice, wait: float, opts: Sequence[Option], *, planned: bool) -> Deferral:
    """A demand that waits for its busy class (the plan, or finishing sooner, says so)."""
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
        best=opts[0],
        alternatives=tuple(opts[1:]),
    )


def capacity_deferral(d: Demand, choice: Choice, opts: Sequence[Option], fitted: int) -> Deferral:
    if d.pods > 1 and fitted > 0:
        return Deferral(
            key=d.key,
            attempt=d.attempt,
            reason=GANG_INCOMPLETE,
            message=(
                f"only {fitted} of {d.pods} pods fit at once on {choice.name}; all must start together"
                f" (T {_secs(choice.runtime)}, {choice.source})"
            ),
            best=opts[0],
            alternatives=tuple(opts[1:]),
        )
    accelerators, cpu, memory = choice.request
    shape = f"{accelerators} accelerator(s), " if accelerators else ""
    return Deferral(
        key=d.key,
        attempt=d.attempt,
        reason=INSUFFICIENT_CAPACITY,
        message=f"no node of {choice.name} has room now for a pod of {shape}{cpu:g} cpu, {memory / GIB:g}Gi",
        best=opts[0],
        alternatives=tuple(opts[1:]),
    )


def no_class(d: Demand, evaluation: Evaluation, max_alternatives: int) -> Deferral:
    reasons = "; ".join(f"{o.class_name}: {o.reason}" for o in evaluation.infeasible[:5]) or "no executor classes"
    return Deferral(
        key=d.key,
        attempt=d.attempt,
        reason=NO_FEASIBLE_CLASS,
        message=f"no executor class can run it ({reasons})",
        best=None,
        alternatives=evaluation.infeasible[: max_alternatives + 1],
    )


_OPTION_TEMPLATE = Option(class_name="", feasible=True)
_OPTION_DEFAULTS: dict[str, object] | None = (
    dict(vars(_OPTION_TEMPLATE)) if hasattr(_OPTION_TEMPLATE, "__dict__") else None
)


def _feasible_option(c: Choice, wait: float, score: float) -> Option:
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


def _secs(value: float | None) -> str:
    if value is None:
        return "?"
    if value == math.inf:
        return "never"
    return f"{value:.0f}s"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def limited(d: Demand, reason: str, message: str, opts: Sequence[Option]) -> Deferral:
    """A demand held by a quota or a budget (``core.scheduling.limits`` says which and why)."""
    best = next((o for o in opts if o.feasible), None)
    return Deferral(
        key=d.key,
        attempt=d.attempt,
        reason=reason,
        message=message,
        best=best,
        alternatives=tuple(o for o in opts if o is not best),
    )
