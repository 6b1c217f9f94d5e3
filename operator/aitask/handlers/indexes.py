"""Kopf indexes: the in-memory view of the cluster each scheduling cycle reads.

Indexes hold small plain values (views), not whole objects, except for AITasks and
ExecutorClasses, which the cycle parses with the API models.
"""

from __future__ import annotations

import copy
from typing import Any

import kopf

from aitask.api.v1alpha1 import GROUP, VERSION
from aitask.core.observed import LABEL_TASK, JobView, PodView, job_view, pod_view


def _plain(body: kopf.Body) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


@kopf.index(GROUP, VERSION, "aitasks")
def aitask_index(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {"all": _plain(body)}


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
