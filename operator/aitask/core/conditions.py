"""Kubernetes-style conditions as pure functions.

``lastTransitionTime`` moves only when a condition's status flips, ``observedGeneration``
is always stamped, and messages are bounded, so writing the same facts twice changes
nothing and a reconcile can tell whether it has anything to write at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from aitask.api.v1alpha1 import Condition

MAX_MESSAGE = 1024


def truncate(message: str, limit: int = MAX_MESSAGE) -> str:
    """Bound a message; status objects must stay small whatever a Job said."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


def set_condition(
    conditions: Sequence[Condition],
    *,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> tuple[list[Condition], bool]:
    """Return the list with the condition set, and whether anything changed."""
    value = "Unknown" if status is None else ("True" if status else "False")
    message = truncate(message)
    out: list[Condition] = []
    changed = True
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        transition = cond.last_transition_time if cond.status == value else now
        new = Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=transition,
            observed_generation=generation,
        )
        changed = new != cond
        out.append(new)
    if not found:
        out.append(
            Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
    return out, changed


def remove_condition(conditions: Sequence[Condition], type_: str) -> tuple[list[Condition], bool]:
    """Drop a condition type; ``changed`` tells whether it was there."""
    out = [c for c in conditions if c.type != type_]
    return out, len(out) != len(conditions)


def get_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    for cond in conditions:
        if cond.type == type_:
            return cond
    return None
