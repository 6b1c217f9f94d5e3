"""Admission -> child Job manifest. Pure and deterministic: same inputs, same bytes.

The Job name is ``<task>-<subtask>-<attempt>``, so creating it twice is harmless
(the second create answers 409) and a restarted operator finds it again by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from aitask.api.v1alpha1 import API_VERSION, AITask, ExecutorClassSpec, Subtask
from aitask.core.observed import (
    ANNOTATION_CLASS,
    ANNOTATION_ESTIMATED_SECONDS,
    ANNOTATION_PLANNED_NODES,
    ANNOTATION_SPEC_HASH,
    ANNOTATION_TASK,
    LABEL_ATTEMPT,
    LABEL_CLASS,
    LABEL_KUEUE_QUEUE,
    LABEL_MANAGED_BY,
    LABEL_SUBTASK,
    LABEL_TASK,
    MANAGER,
    label_value,
)
from aitask.core.progress import subtask_hash
from aitask.core.quantity import format_cpu, format_memory
from aitask.core.types import Admission

MAX_NAME = 63  # Job names end up in the pods' job-name label, which is limited to 63 characters
CONTAINER = "main"


def job_name(task: str, subtask: str, attempt: int) -> str:
    """``<task>-<subtask>-<attempt>``, shortened with a stable hash when it would exceed 63 chars."""
    name = f"{task}-{subtask}-{attempt}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(f"{task}/{subtask}".encode()).hexdigest()[:8]
    tail = f"-{digest}-{attempt}"
    head = f"{task}-{subtask}"[: MAX_NAME - len(tail)].rstrip("-")
    return head + tail


def _labels(task: AITask, sub: Subtask, attempt: int, class_name: str) -> dict[str, str]:
    return {
        LABEL_TASK: label_value(task.metadata.name),
        LABEL_SUBTASK: sub.name,
        LABEL_ATTEMPT: str(attempt),
        LABEL_CLASS: label_value(class_name),
        LABEL_MANAGED_BY: MANAGER,
    }


def _affinity(ec: ExecutorClassSpec, nodes: Sequence[str]) -> dict[str, Any]:
    required = [{"key": key, "operator": "In", "values": [value]} for key, value in sorted(ec.node_selector.items())]
    affinity: dict[str, Any] = {}
    if required:
        affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": [{"matchExpressions": required}]
        }
    planned = sorted(set(nodes))
    if planned:
        # The cost model packed the pods onto these nodes; prefer them so its books stay true,
        # but let the kube-scheduler use any node of the class if they filled up meanwhile.
        affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [
            {
                "weight": 100,
                "preference": {
                    "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": planned}]
                },
            }
        ]
    return {"nodeAffinity": affinity} if affinity else {}


def _container(
    task: AITask,
    sub: Subtask,
    admission: Admission,
    executor_class: ExecutorClassSpec,
    extra_env: Mapping[str, str] | None,
) -> dict[str, Any]:
    """The one container: image, command, the environment contract, requests and limits."""
    accelerators, cpu, memory = admission.accelerators, admission.cpu, admission.memory
    requests: dict[str, str] = {"cpu": format_cpu(cpu), "memory": format_memory(memory)}
    limits: dict[str, str] = {"memory": format_memory(memory)}
    if accelerators and executor_class.accelerator is not None:
        resource = executor_class.accelerator.resource_name
        requests[resource] = str(accelerators)
        limits[resource] = str(accelerators)
    env = [e.wire() for e in task.spec.template.env] + [e.wire() for e in sub.env]
    builtin = {
        "AITASK_TASK": task.metadata.name,
        "AITASK_SUBTASK": sub.name,
        "AITASK_ATTEMPT": str(admission.attempt),
        "AITASK_CLASS": admission.class_name,
        **(extra_env or {}),
    }
    env += [{"name": k, "value": v} for k, v in builtin.items()]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": sub.image,
        "env": env,
        "resources": {"requests": requests, "limits": limits},
    }
    if sub.command:
        container["command"] = list(sub.command)
    if sub.args:
        container["args"] = list(sub.args)
    if sub.volume_mounts:
        container["volumeMounts"] = [m.wire() for m in sub.volume_mounts]
    return container


def _pod_spec(
    task: AITask, sub: Subtask, executor_class: ExecutorClassSpec, nodes: Sequence[str], container: dict[str, Any]
) -> dict[str, Any]:
    """The pod template's spec: the class's affinity and tolerations, the task's pod settings, volumes."""
    template = task.spec.template
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
    }
    affinity = _affinity(executor_class, nodes)
    if affinity:
        pod_spec["affinity"] = affinity
    if executor_class.tolerations:
        pod_spec["tolerations"] = [t.wire() for t in executor_class.tolerations]
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    if template.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [s.wire() for s in template.image_pull_secrets]
    if template.priority_class_name:
        pod_spec["priorityClassName"] = template.priority_class_name
    grace = template.termination_grace_period_seconds
    if sub.preemption.allowed:  # the pods checkpoint within it when the attempt is preempted
        grace = max(grace or 0, sub.preemption.grace_period_seconds)
    if grace is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    if sub.volumes:
        pod_spec["volumes"] = list(sub.volumes)
    return pod_spec


def build_job(
    task: AITask,
    sub: Subtask,
    admission: Admission,
    executor_class: ExecutorClassSpec,
    *,
    extra_env: Mapping[str, str] | None = None,
    queue_name: str | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job for one admitted attempt of one sub-task on the chosen executor class.

    With ``queue_name`` (Kueue mode) the Job carries Kueue's queue-name label and is created
    suspended: Kueue admits it (unsuspends it) when its ClusterQueue has quota. The class's node
    selector stays a required node affinity, which Kueue's flavor assignment honours, so the
    flavor Kueue picks is the one whose node labels match the class the cost model chose.
    """
    attempt, class_name, nodes = admission.attempt, admission.class_name, admission.nodes
    estimated_seconds = admission.chosen.runtime_seconds or 0.0
    meta = task.metadata
    name = job_name(meta.name, sub.name, attempt)
    labels = _labels(task, sub, attempt, class_name)
    job_labels = {**labels, LABEL_KUEUE_QUEUE: queue_name} if queue_name else labels
    template = task.spec.template
    pod_spec = _pod_spec(task, sub, executor_class, nodes, _container(task, sub, admission, executor_class, extra_env))
    pod_labels = {**template.metadata.labels, **sub.pod_metadata.labels, **labels}
    pod_annotations = {**template.metadata.annotations, **sub.pod_metadata.annotations}
    completions = sub.effective_completions
    job_spec: dict[str, Any] = {
        # Retries are the operator's (a new attempt may go to another class), so the Job never retries;
        # pods disrupted by a lost node are not the program's fault and are replaced by the Job itself.
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]},
        "parallelism": sub.parallelism,
        "completions": completions,
        # No ttlSecondsAfterFinished here: the operator sets it once the status records the result,
        # so a finished Job cannot be garbage-collected before the operator has read it.
        "template": {
            "metadata": {"labels": pod_labels, **({"annotations": pod_annotations} if pod_annotations else {})},
            "spec": pod_spec,
        },
    }
    if completions > 1 or sub.parallelism > 1:
        job_spec["completionMode"] = "Indexed"
    if sub.timeout_seconds:
        job_spec["activeDeadlineSeconds"] = sub.timeout_seconds
    if queue_name:
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta.namespace,
            "labels": job_labels,
            "annotations": {
                ANNOTATION_TASK: task.metadata.name,
                ANNOTATION_CLASS: class_name,
                ANNOTATION_SPEC_HASH: subtask_hash(sub),
                ANNOTATION_ESTIMATED_SECONDS: f"{estimated_seconds:.1f}",
                ANNOTATION_PLANNED_NODES: ",".join(nodes),
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "AITask",
                    "name": meta.name,
                    "uid": meta.uid or "",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": job_spec,
    }
