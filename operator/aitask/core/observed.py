"""What the cluster says about our child Jobs and their pods, reduced to plain values.

Kopf indexes hold these views (not whole objects), so memory stays small and the
reconcile logic reads typed values instead of digging through dicts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aitask.core.quantity import parse_quantity

LABEL_TASK = "aitask.dev/task"
LABEL_SUBTASK = "aitask.dev/subtask"
LABEL_ATTEMPT = "aitask.dev/attempt"
LABEL_CLASS = "aitask.dev/class"
LABEL_VARIANT = "aitask.dev/variant"  # the variant (model) an attempt of a sub-task with variants runs
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "aitask-operator"
ANNOTATION_SPEC_HASH = "aitask.dev/spec-hash"
# Label values are limited to 63 characters while AITask and ExecutorClass names may have 253:
# the labels carry a shortened value (``label_value``) and these annotations the full names.
ANNOTATION_TASK = "aitask.dev/task-name"
ANNOTATION_CLASS = "aitask.dev/class-name"
MAX_LABEL_VALUE = 63
ANNOTATION_ESTIMATED_SECONDS = "aitask.dev/estimated-seconds"
ANNOTATION_PLANNED_NODES = "aitask.dev/planned-nodes"
# Kueue interop: the LocalQueue a child Job is submitted to (Kueue's own label).
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"


def label_value(name: str) -> str:
    """``name`` as a valid label value: unchanged up to 63 characters, else a prefix and a stable hash."""
    if len(name) <= MAX_LABEL_VALUE:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    head = name[: MAX_LABEL_VALUE - len(digest) - 1].rstrip("-._")
    return f"{head}-{digest}"


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass(frozen=True)
class JobView:
    namespace: str
    name: str
    task: str
    subtask: str
    attempt: int
    class_name: str
    active: int
    succeeded: int
    failed: int
    complete: bool
    failed_final: bool  # the Job has a Failed condition
    failure_reason: str  # the Failed condition's reason (BackoffLimitExceeded, DeadlineExceeded, ...)
    failure_message: str
    start_time: datetime | None
    completion_time: datetime | None
    finished_at: datetime | None  # completion, or the Failed condition's transition
    deleting: bool
    spec_hash: str
    ttl_seconds: int | None = None  # spec.ttlSecondsAfterFinished; set by us once the result is recorded
    # What the Job asks for per pod and where it was planned (to adopt a Job the status does not record).
    accelerators: int = 0
    cpu: str = ""
    memory: str = ""
    planned_nodes: tuple[str, ...] = ()
    estimated_seconds: float = 0.0
    parallelism: int = 1
    completions: int = 1
    created: datetime | None = None  # metadata.creationTimestamp: a Job with no pod long after it is stuck
    # spec.suspend: held by Kueue (or a user), so having no pod is expected: never a stuck attempt.
    suspended: bool = False
    queue_name: str = ""  # its kueue.x-k8s.io/queue-name label, "" outside Kueue mode
    variant: str = ""  # label aitask.dev/variant: what an adopted attempt runs

    @property
    def finished(self) -> bool:
        return self.complete or self.failed_final


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    job: str
    node: str | None
    phase: str
    terminated_reason: str  # of the first terminated container, e.g. OOMKilled, Error
    exit_code: int | None
    deleting: bool
    requests: Mapping[str, str]  # summed container requests, as quantities
    managed: bool = False  # one of our child Jobs' pods (carries the aitask.dev/task label)
    # Only for our own pods while Pending (other pods keep the defaults, so the views stay small):
    # when it was created, and why it is not running yet ("ImagePullBackOff: Back-off pulling
    # image ...", "Unschedulable: 0/9 nodes are available ..."); "" when nothing is said.
    created: datetime | None = None
    waiting: str = ""
    progress: float | None = None  # our pods: the workload's report of the work done (aitask.dev/progress)

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def job_view(body: Mapping[str, Any]) -> JobView | None:
    """Reduce a Job we own to a JobView; None for Jobs without our labels."""
    meta = body.get("metadata", {})
    labels = meta.get("labels") or {}
    if LABEL_TASK not in labels or LABEL_SUBTASK not in labels:
        return None
    try:
        attempt = int(labels.get(LABEL_ATTEMPT, "0"))
    except ValueError:
        return None
    annotations = meta.get("annotations") or {}
    status = body.get("status") or {}
    conditions = status.get("conditions") or []
    complete = any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions)
    failed_cond = next((c for c in conditions if c.get("type") == "Failed" and c.get("status") == "True"), None)
    finished = parse_time(status.get("completionTime"))
    if failed_cond is not None:
        finished = parse_time(failed_cond.get("lastTransitionTime")) or finished
    return JobView(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        task=annotations.get(ANNOTATION_TASK) or labels[LABEL_TASK],
        subtask=labels[LABEL_SUBTASK],
        attempt=attempt,
        class_name=annotations.get(ANNOTATION_CLASS) or labels.get(LABEL_CLASS, ""),
        active=int(status.get("active") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        complete=complete,
        failed_final=failed_cond is not None,
        failure_reason=(failed_cond or {}).get("reason", "") or "",
        failure_message=(failed_cond or {}).get("message", "") or "",
        start_time=parse_time(status.get("startTime")),
        completion_time=parse_time(status.get("completionTime")),
        finished_at=finished,
        deleting=bool(meta.get("deletionTimestamp")),
        spec_hash=annotations.get(ANNOTATION_SPEC_HASH, ""),
        variant=labels.get(LABEL_VARIANT, ""),
        ttl_seconds=(body.get("spec") or {}).get("ttlSecondsAfterFinished"),
        parallelism=int((body.get("spec") or {}).get("parallelism") or 1),
        completions=int((body.get("spec") or {}).get("completions") or 1),
        created=parse_time(meta.get("creationTimestamp")),
        suspended=bool((body.get("spec") or {}).get("suspend")),
        queue_name=labels.get(LABEL_KUEUE_QUEUE, ""),
        **_pod_shape(body, annotations),
    )


def _pod_shape(body: Mapping[str, Any], annotations: Mapping[str, str]) -> dict[str, Any]:
    template = ((body.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = template.get("containers") or [{}]
    requests = (containers[0].get("resources") or {}).get("requests") or {}
    accelerators = 0
    for name, qty in requests.items():
        if name not in ("cpu", "memory", "ephemeral-storage") and str(qty).isdigit():
            accelerators = int(qty)
    try:
        estimated = float(annotations.get(ANNOTATION_ESTIMATED_SECONDS, "0") or 0)
    except ValueError:
        estimated = 0.0
    nodes = annotations.get(ANNOTATION_PLANNED_NODES, "")
    return {
        "accelerators": accelerators,
        "cpu": str(requests.get("cpu", "")),
        "memory": str(requests.get("memory", "")),
        "planned_nodes": tuple(n for n in nodes.split(",") if n),
        "estimated_seconds": estimated,
    }


def _container_requests(container: Mapping[str, Any]) -> dict[str, Any]:
    resources = container.get("resources") or {}
    requests = dict(resources.get("limits") or {})  # a limit without a request is the request
    requests.update(resources.get("requests") or {})
    return requests


def _sum_requests(spec: Mapping[str, Any]) -> dict[str, str]:
    """A pod's requests as the kube-scheduler counts them: the sum over its containers, or its largest
    init container where that is more. Quantities stay strings joined by "+" (the snapshot builder
    parses them once per cycle), except where an init container decides."""
    out: dict[str, list[str]] = {}
    for container in spec.get("containers") or []:
        for name, qty in _container_requests(container).items():
            out.setdefault(name, []).append(str(qty))
    joined = {name: "+".join(values) for name, values in out.items()}
    for container in spec.get("initContainers") or []:
        for name, qty in _container_requests(container).items():
            try:
                alone = parse_quantity(str(qty))
                summed = sum(parse_quantity(q) for q in joined[name].split("+")) if name in joined else 0.0
            except ValueError:
                continue
            if alone > summed:
                joined[name] = repr(alone)
    return joined


MAX_WAITING = 200  # characters of a pending pod's reason kept in its view (and shown in Events)


def _waiting(status: Mapping[str, Any]) -> str:
    """Why a pending pod does not run: a container's waiting reason, else PodScheduled=False's."""
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if reason and reason not in ("ContainerCreating", "PodInitializing"):
            message = waiting.get("message") or ""
            return (f"{reason}: {message}" if message else reason)[:MAX_WAITING]
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            reason = cond.get("reason") or "Unschedulable"
            message = cond.get("message") or ""
            return (f"{reason}: {message}" if message else reason)[:MAX_WAITING]
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason") or ""
        if reason:
            return reason[:MAX_WAITING]
    return ""


def pod_view(body: Mapping[str, Any]) -> PodView:
    """Reduce any pod to what capacity accounting and failure diagnosis need."""
    meta = body.get("metadata", {})
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    labels = meta.get("labels") or {}
    terminated_reason = ""
    exit_code: int | None = None
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            terminated_reason = term.get("reason", "") or ""
            exit_code = term.get("exitCode")
            if terminated_reason == "OOMKilled" or (exit_code not in (0, None)):
                break
    job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name") or ""
    phase = status.get("phase", "Pending") or "Pending"
    managed = LABEL_TASK in labels
    pending = managed and phase == "Pending"
    return PodView(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        job=job,
        node=spec.get("nodeName"),
        phase=phase,
        terminated_reason=terminated_reason or (status.get("reason", "") or ""),
        exit_code=exit_code,
        deleting=bool(meta.get("deletionTimestamp")),
        requests=_sum_requests(spec),
        managed=managed,
        created=parse_time(meta.get("creationTimestamp")) if pending else None,
        waiting=_waiting(status) if pending else "",
        progress=_progress(meta) if managed else None,
    )


def _progress(meta: Mapping[str, Any]) -> float | None:
    """The workload's progress report (annotation aitask.dev/progress: a fraction in [0, 1])."""
    raw = (meta.get("annotations") or {}).get("aitask.dev/progress")
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if 0.0 <= value <= 1.0 else None


#: ResourceQuota scopes that every pod of ours falls in (they set requests and no activeDeadlineSeconds);
#: a quota with any other scope (Terminating, BestEffort, PriorityClass, ...) is not read.
OUR_QUOTA_SCOPES = frozenset({"NotTerminating", "NotBestEffort"})


@dataclass(frozen=True)
class QuotaView:
    """A ResourceQuota: its ceilings and what its namespace holds (quantities as strings)."""

    namespace: str
    name: str
    hard: Mapping[str, str]
    used: Mapping[str, str]
    scopes: tuple[str, ...] = ()

    @property
    def applies_to_ours(self) -> bool:
        return all(scope in OUR_QUOTA_SCOPES for scope in self.scopes)


def quota_view(body: Mapping[str, Any]) -> QuotaView:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    scopes = list(spec.get("scopes") or [])
    for expr in (spec.get("scopeSelector") or {}).get("matchExpressions") or []:
        scopes.append(str(expr.get("scopeName", "")))
    return QuotaView(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        hard={str(k): str(v) for k, v in (status.get("hard") or spec.get("hard") or {}).items()},
        used={str(k): str(v) for k, v in (status.get("used") or {}).items()},
        scopes=tuple(scopes),
    )
