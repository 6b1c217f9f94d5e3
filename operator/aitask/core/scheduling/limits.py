"""Limits on admission besides node capacity: ResourceQuotas, namespace budgets and task budgets.

One rule, owned here: a demand is admitted on a class only if what it would add there fits
every limit that applies to it. A limit is a set of ceilings (``hard``) with what is already
held (``used``, which includes work admitted but not yet visible to its owner, e.g. pods not
created yet), scoped to a namespace or to one task. What a demand adds on a class is its
*charge*, in the limit's vocabulary:

==============================  ==========================================================
``requests.cpu`` / ``cpu``      cores of all its pods
``requests.memory`` / ...       bytes of all its pods (``limits.memory`` too: pods set it)
``requests.<accelerator>``      accelerators of all its pods on a GPU class
``pods`` / ``count/pods``       its pods
``count/jobs.batch``            one Job
``cost``                        C, the estimated cost on the class
``acceleratorHours``            accelerators x T / 3600, on any class
``acceleratorHours/<class>``    the same, on that class only
==============================  ==========================================================

A quota on a resource the operator's pods never set (``limits.cpu``, ephemeral storage,
hugepages) would make the API server refuse every pod, so a class it would apply to is
infeasible with that reason rather than admitted and stuck.

Limits are checked twice: against the cycle's starting figures before the queue is planned
(an over-limit class is infeasible and the plan says why), and against the books at the
moment of admission (demands admitted earlier in the same cycle count).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from aitask.core.costmodel import accelerator_resource
from aitask.core.types import NAMESPACE_BUDGET, QUOTA, TASK_BUDGET, ClassInfo, Demand, Limit

_EPS = 1e-9

# Deferral reasons (the scheduler's vocabulary, read by control.decisions).
WAITING_FOR_QUOTA = "WaitingForQuota"
WAITING_FOR_BUDGET = "WaitingForBudget"
BUDGET_EXCEEDED = "BudgetExceeded"  # the task's own budget: no class fits what is left of it

_UNSUPPORTED_PREFIXES = (
    "limits.cpu",
    "requests.ephemeral-storage",
    "limits.ephemeral-storage",
    "ephemeral-storage",
    "requests.hugepages-",
    "limits.hugepages-",
    "hugepages-",
)


def pod_charge(pods: float, cpu: float, memory: float, accelerators: float, resource: str | None) -> dict[str, float]:
    """What ``pods`` pods of one shape hold of every ResourceQuota resource they count against.

    ``cpu``, ``memory`` and ``accelerators`` are per pod; ``resource`` is the accelerator's resource
    name (None on a CPU class). The one place that knows which quota keys a pod of ours fills.
    """
    out = {
        "requests.cpu": cpu * pods,
        "cpu": cpu * pods,
        "requests.memory": memory * pods,
        "memory": memory * pods,
        "limits.memory": memory * pods,
        "pods": pods,
        "count/pods": pods,
    }
    if resource and accelerators > 0:
        total = accelerators * pods
        out[f"requests.{resource}"] = total
        out[f"limits.{resource}"] = total
        out[resource] = total
    return out


def charge(
    d: Demand, cls: ClassInfo, request: tuple[int, float, float], runtime: float, money: float
) -> dict[str, float]:
    """What admitting ``d`` on ``cls`` adds to every resource a limit may cap."""
    accelerators, cpu, memory = request
    gpu = cls.kind == "gpu" and accelerators > 0
    out = pod_charge(float(d.pods), cpu, memory, accelerators, accelerator_resource(cls) if gpu else None)
    out["count/jobs.batch"] = 1.0
    out["cost"] = money
    if gpu:
        hours = accelerators * d.pods * runtime / 3600.0
        out["acceleratorHours"] = hours
        out[f"acceleratorHours/{cls.name}"] = hours
    return out


def _fmt(resource: str, value: float) -> str:
    if resource.endswith("memory"):
        return f"{value / 2**30:.4g}Gi"
    return f"{value:.4g}"


def unsupported(limit: Limit) -> str | None:
    """A quota resource the operator's pods never set: the API server would refuse every pod."""
    if limit.kind != QUOTA:
        return None
    for resource in sorted(limit.hard):
        if resource.startswith(_UNSUPPORTED_PREFIXES):
            return resource
    return None


class LimitBooks:
    """What every limit still allows during one cycle; admissions are booked as they happen."""

    def __init__(self, limits: Iterable[Limit]) -> None:
        self.limits = list(limits)
        self.used: list[dict[str, float]] = [dict(lim.used) for lim in self.limits]
        self.by_namespace: dict[str, list[int]] = {}
        for i, lim in enumerate(self.limits):
            self.by_namespace.setdefault(lim.namespace, []).append(i)

    def applicable(self, d: Demand) -> list[int]:
        return [i for i in self.by_namespace.get(d.key.namespace, ()) if self.limits[i].applies(d)]

    def violation(self, d: Demand, cls: ClassInfo, amounts: Mapping[str, float]) -> tuple[str, str] | None:
        """The first limit the charge would break, as (deferral reason, message); None when it fits.

        The task's own budget is looked at first: when it alone rules a class out, waiting for
        others to finish cannot help.
        """
        order = sorted(self.applicable(d), key=lambda i: self.limits[i].kind != TASK_BUDGET)
        for i in order:
            lim = self.limits[i]
            bad = unsupported(lim)
            if bad is not None:
                return WAITING_FOR_QUOTA, (
                    f"{lim.title} caps {bad}, which the operator's pods do not set: the API server would refuse them"
                )
            used = self.used[i]
            for resource, hard in lim.hard.items():
                amount = amounts.get(resource)
                if not amount:
                    continue
                have = used.get(resource, 0.0)
                if have + amount > hard + _EPS:
                    reason = {QUOTA: WAITING_FOR_QUOTA, NAMESPACE_BUDGET: WAITING_FOR_BUDGET}.get(
                        lim.kind, BUDGET_EXCEEDED
                    )
                    return reason, (
                        f"{lim.title}: {resource} would be {_fmt(resource, have + amount)} of "
                        f"{_fmt(resource, hard)} on {cls.name} (used {_fmt(resource, have)}, this needs "
                        f"{_fmt(resource, amount)})"
                    )
        return None

    def book(self, d: Demand, amounts: Mapping[str, float]) -> None:
        for i in self.applicable(d):
            used = self.used[i]
            for resource in self.limits[i].hard:
                amount = amounts.get(resource)
                if amount:
                    used[resource] = used.get(resource, 0.0) + amount


def blocking_reason(reasons: Sequence[str]) -> str:
    """The deferral reason when every class was ruled out by limits (``reasons``, one per class).

    Only when the task's own budget rules out every class is it exceeded for good; otherwise a
    quota or a namespace budget is what the demand waits for.
    """
    if reasons and all(r == BUDGET_EXCEEDED for r in reasons):
        return BUDGET_EXCEEDED
    if WAITING_FOR_QUOTA in reasons:
        return WAITING_FOR_QUOTA
    return WAITING_FOR_BUDGET
