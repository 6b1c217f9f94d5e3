"""Kopf indexes: the in-memory view of the cluster each scheduling cycle reads.

Indexes hold small plain values (views), not whole objects. An AITask in play is kept as
the parts the cycle parses (metadata it reads, spec, status); a finished one, which has
nothing left to do, only as a ``FinishedTask`` record, so the thousands of finished
AITasks a cluster keeps cost a few hundred bytes each.
"""

from __future__ import annotations

import copy
from typing import Any

import kopf

from aitask.api.v1alpha1 import GROUP, VERSION
from aitask.control.cycle import FinishedTask, is_finished
from aitask.core.observed import LABEL_TASK, JobView, PodView, job_view, pod_view


def _plain(body: kopf.Body) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


_META = ("name", "namespace", "uid", "generation", "resourceVersion", "creationTimestamp", "deletionTimestamp")


def aitask_entry(body: kopf.Body | dict[str, Any]) -> FinishedTask | dict[str, Any]:
    """What the cycle needs of one AITask."""
    meta = body.get("metadata") or {}
    if is_finished(body) and not meta.get("deletionTimestamp"):
        status = body.get("status") or {}
        return FinishedTask(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            phase=status["phase"],
        )
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: copy.deepcopy(meta[k]) for k in _META if meta.get(k) is not None},
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }


@kopf.index(GROUP, VERSION, "aitasks")
def aitask_index(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {"all": aitask_entry(body)}


@kopf.index(GROUP, VERSION, "executorclasses")
def executorclass_index(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {"all": _plain(body)}


@kopf.index("batch", "v1", "jobs", labels={LABEL_TASK: kopf.PRESENT})
def job_index(body: kopf.Body, **_: Any) -> dict[str, JobView] | None:
    view = job_view(body)
    return {"all": view} if view is not None else None


@kopf.index("", "v1", "pods")
def pod_index(body: kopf.Body, **_: Any) -> dict[str, PodView]:
    return {"all": pod_view(body)}


@kopf.index("", "v1", "nodes")
def node_index(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {
        "all": {
            "metadata": {
                "name": body.metadata.name,
                "labels": dict(body.metadata.labels),
            },
            "spec": {
                "taints": copy.deepcopy(body.spec.get("taints") or []),
                "unschedulable": bool(body.spec.get("unschedulable")),
            },
            "status": {
                "allocatable": dict(body.status.get("allocatable") or {}),
                "conditions": copy.deepcopy(body.status.get("conditions") or []),
            },
        }
    }
