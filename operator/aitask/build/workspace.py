"""The task's workspace (its claim) and the environment contract every sub-task gets (pure).

The contract, the same on the cluster and under ``aitask local``:

``AITASK_WORKSPACE``   the workspace root: the mount path, or ``<uriPrefix>/<namespace>/<task>``
``AITASK_OUTPUT``      where this sub-task writes its results: ``$AITASK_WORKSPACE/<subtask>``
``AITASK_INPUTS``      JSON object: dependency name -> its output location
``AITASK_INPUT_<DEP>`` the same, one variable per dependency (name upper-cased, ``-`` -> ``_``)
``AITASK_VARIANT``     the variant (model) this attempt runs, ``""`` without variants
``AITASK_QUALITY``     that variant's quality
``AITASK_MEMBERS``     fusion sub-tasks: JSON list of ``{"subtask", "variant", "weight", "output"}``,
                       one per dependency that has variants (all dependencies when none has),
                       weight = the quality of the variant it ran (1.0 without variants)
``AITASK_WORKSPACE_KIND`` ``volume`` or ``objectStore`` (absent without a workspace)

Without a workspace only the variant and member variables are set (locations are absent).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from aitask.api.v1alpha1 import API_VERSION, AITask, ReclaimPolicy, Subtask, SubtaskStatus, SubtaskType, Variant
from aitask.core.observed import ANNOTATION_TASK, LABEL_MANAGED_BY, LABEL_TASK, LABEL_VARIANT, MANAGER, label_value

VOLUME = "aitask-workspace"
MAX_CLAIM_NAME = 253


def claim_name(task: str) -> str:
    """``<task>-workspace``, shortened with a stable hash past 253 characters."""
    name = f"{task}-workspace"
    if len(name) <= MAX_CLAIM_NAME:
        return name
    digest = hashlib.sha256(task.encode()).hexdigest()[:8]
    return f"{task[: MAX_CLAIM_NAME - 20].rstrip('-.')}-{digest}-workspace"


def claim_of(task: AITask) -> str | None:
    """The claim the sub-tasks mount, or None (no workspace, or an object store)."""
    ws = task.spec.workspace
    if ws is None:
        return None
    if ws.volume_claim_template is not None:
        return claim_name(task.metadata.name)
    return ws.existing_claim


def build_claim(task: AITask) -> dict[str, Any] | None:
    """The PersistentVolumeClaim of a task with a ``volumeClaimTemplate`` (None otherwise).

    Owned by the AITask, so the garbage collector deletes it with the task, unless the reclaim
    policy is Retain: then it has no owner and outlives the task (labelled with its name).
    """
    ws = task.spec.workspace
    if ws is None or ws.volume_claim_template is None:
        return None
    tmpl = ws.volume_claim_template
    meta = task.metadata
    spec: dict[str, Any] = {
        "accessModes": list(tmpl.access_modes),
        "resources": {"requests": {"storage": tmpl.storage}},
    }
    if tmpl.storage_class_name is not None:
        spec["storageClassName"] = tmpl.storage_class_name
    metadata: dict[str, Any] = {
        "name": claim_name(meta.name),
        "namespace": meta.namespace,
        "labels": {LABEL_TASK: label_value(meta.name), LABEL_MANAGED_BY: MANAGER},
        "annotations": {ANNOTATION_TASK: meta.name},
    }
    if ws.reclaim_policy == ReclaimPolicy.DELETE:
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": "AITask",
                "name": meta.name,
                "uid": meta.uid or "",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec}


def root_of(task: AITask) -> str:
    """The workspace root as the sub-tasks see it ("" without a workspace)."""
    ws = task.spec.workspace
    if ws is None:
        return ""
    if ws.object_store is not None:
        ns = task.metadata.namespace or "default"
        return f"{ws.object_store.uri_prefix.rstrip('/')}/{ns}/{task.metadata.name}"
    return ws.mount_path.rstrip("/") or "/"


def env_name(dep: str) -> str:
    return "AITASK_INPUT_" + re.sub(r"[^A-Za-z0-9]", "_", dep).upper()


def ran_variants(task: AITask, statuses: Mapping[str, SubtaskStatus]) -> dict[str, str]:
    """Sub-task -> the variant its successful attempt ran (from the status history)."""
    out: dict[str, str] = {}
    for sub in task.spec.subtasks:
        st = statuses.get(sub.name)
        done = [a for a in (st.history if st else []) if a.result == "Succeeded"]
        if done:
            out[sub.name] = done[-1].variant
        elif len(sub.variants) == 1:  # an ensemble member: its variant is fixed
            out[sub.name] = sub.variants[0].name
    return out


def _members(task: AITask, sub: Subtask, root: str, ran: Mapping[str, str]) -> list[dict[str, Any]]:
    deps = [task.spec.subtask(d) for d in sub.depends_on]
    chosen = [d for d in deps if d.variants] or deps
    out = []
    for dep in chosen:
        variant = next((v for v in dep.variants if v.name == ran.get(dep.name, "")), None)
        entry: dict[str, Any] = {
            "subtask": dep.name,
            "variant": variant.name if variant else "",
            "weight": variant.quality if variant else 1.0,
        }
        if root:
            entry["output"] = f"{root}/{dep.name}"
        out.append(entry)
    return out


def contract_env(
    task: AITask, sub: Subtask, *, root: str, variant: Variant | None, ran: Mapping[str, str]
) -> dict[str, str]:
    """The contract's variables for one sub-task (``sub`` as in the task's expanded spec)."""
    env: dict[str, str] = {}
    if root:
        ws = task.spec.workspace
        env["AITASK_WORKSPACE_KIND"] = "objectStore" if ws is not None and ws.object_store is not None else "volume"
        env["AITASK_WORKSPACE"] = root
        env["AITASK_OUTPUT"] = f"{root}/{sub.name}"
        inputs = {d: f"{root}/{d}" for d in sub.depends_on}
        env["AITASK_INPUTS"] = json.dumps(inputs, sort_keys=True)
        env.update({env_name(d): where for d, where in inputs.items()})
    env["AITASK_VARIANT"] = variant.name if variant else ""
    if variant is not None:
        env["AITASK_QUALITY"] = f"{variant.quality:g}"
    if sub.type == SubtaskType.FUSION:
        env["AITASK_MEMBERS"] = json.dumps(_members(task, sub, root, ran), sort_keys=True)
    return env


def with_contract(
    manifest: Mapping[str, Any],
    task: AITask,
    sub: Subtask,
    variant: Variant | None,
    statuses: Mapping[str, SubtaskStatus],
) -> dict[str, Any]:
    """The Job with the contract's variables in its container, the workspace claim mounted, and the
    label ``aitask.dev/variant`` on the Job and its pods when it runs a variant."""
    job = copy.deepcopy(dict(manifest))
    if variant is not None:
        job["metadata"]["labels"][LABEL_VARIANT] = variant.name
        job["spec"]["template"]["metadata"]["labels"][LABEL_VARIANT] = variant.name
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = contract_env(task, sub, root=root_of(task), variant=variant, ran=ran_variants(task, statuses))
    container["env"] = [*container.get("env", []), *({"name": k, "value": v} for k, v in env.items())]
    claim = claim_of(task)
    ws = task.spec.workspace
    if claim is not None and ws is not None:
        pod["volumes"] = [*pod.get("volumes", []), {"name": VOLUME, "persistentVolumeClaim": {"claimName": claim}}]
        mount = {"name": VOLUME, "mountPath": ws.mount_path}
        container["volumeMounts"] = [*container.get("volumeMounts", []), mount]
    return job
