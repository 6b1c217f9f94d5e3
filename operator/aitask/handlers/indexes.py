"""What the operator keeps of each watched object: small views, never whole bodies.

An AITask in play is kept as the parts the cycle parses (the metadata it reads, spec,
status); a finished one, which has nothing left to do, only as a ``FinishedTask`` record,
so the thousands of finished AITasks a cluster keeps cost a few hundred bytes each. Jobs
and pods become ``JobView``/``PodView`` (core.observed); nodes keep their labels, taints,
allocatable and the type and status of their conditions (not the heartbeat times, which
change every few seconds and mean nothing to the cycle).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from aitask.control.cycle import FinishedTask, is_finished
from aitask.core.budgets import spends

_META = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "finalizers",
)


def aitask_entry(body: Mapping[str, Any]) -> FinishedTask | dict[str, Any]:
    """What the cycle needs of one AITask.

    The informer hands over an object freshly decoded from the watch and keeps nothing else of it,
    so the entry shares its spec and status rather than copying them (every status write of ours
    comes back through here: copying both was a few percent of the operator in a burst). Nothing
    mutates an entry: the engine overlays a status by building a new dict.
    """
    meta = body.get("metadata") or {}
    if is_finished(body) and not meta.get("deletionTimestamp"):
        status = body.get("status") or {}
        return FinishedTask(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            phase=status["phase"],
            finalizers=tuple(meta.get("finalizers") or ()),
            spends=spends(body.get("spec") or {}, status),
        )
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in _META if meta.get(k) is not None},
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }


def node_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    return {
        "metadata": {"name": meta.get("name", ""), "labels": dict(meta.get("labels") or {})},
        "spec": {"taints": copy.deepcopy(spec.get("taints") or []), "unschedulable": bool(spec.get("unschedulable"))},
        "status": {
            "allocatable": dict(status.get("allocatable") or {}),
            "conditions": [{"type": c.get("type"), "status": c.get("status")} for c in status.get("conditions") or []],
        },
    }


def class_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {
        "metadata": {k: copy.deepcopy(meta[k]) for k in ("name", "uid", "generation") if meta.get(k) is not None},
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }


def budget_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """An AITaskBudget: what the limits phase parses (metadata it reads, spec, status)."""
    meta = body.get("metadata") or {}
    keep = ("name", "namespace", "uid", "generation", "resourceVersion")
    return {
        "metadata": {k: copy.deepcopy(meta[k]) for k in keep if meta.get(k) is not None},
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }
