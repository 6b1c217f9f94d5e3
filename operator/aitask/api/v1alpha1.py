"""The AITask and ExecutorClass APIs (group ``aitask.dev``, version ``v1alpha1``).

These pydantic models are the one source of truth: ``aitask crds`` turns them into
the CRDs' structural schemas (see ``api.crdgen``), the operator parses objects with
them, and ``aitask plan``/``aitask simulate`` read the same YAML through them.
Field names follow Kubernetes conventions (camelCase on the wire, snake_case here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "aitask.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "aitask.dev/v1alpha1"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^[+]?([0-9]{1,30}(\.[0-9]{0,30})?|\.[0-9]{1,30})([eE][+-]?[0-9]{1,2}|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$"
MAX_SUBTASKS = 64
MAX_SUBTASK_NAME = 40
# Sane ranges for numbers the cycle computes with: every value the API server accepts must keep
# times, runtimes and costs finite (a deadline of 1e12 s overflowed datetime, an estimate of 1e308
# made every score infinite). Ten years is longer than any batch job; speeds span a 1000x range.
MAX_SECONDS = 10 * 365 * 24 * 3600
MAX_WEIGHT = 1e6
MAX_PRICE = 1e6
MAX_GIB = 1e6
MIN_SPEED, MAX_SPEED = 1e-3, 1e3
MAX_WORK_UNITS = 1e9
MAX_VARIANTS = 16
MAX_EXPANDED_SUBTASKS = 4 * MAX_SUBTASKS  # sub-tasks once every ensemble is one sub-task per member
MAX_VARIANT_NAME = 22  # an ensemble member is the sub-task "<subtask>-<variant>": at most 63 characters


Quantity = Annotated[str, Field(pattern=QUANTITY, max_length=64)]
# Map values with a range (speeds, runtimes); the CRD schema carries the bounds, so the API
# server rejects a value out of range with the key in the field path.
SpeedValue = Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED)]
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]


class Model(BaseModel):
    """Base of every API model: camelCase on the wire, immutable, strict about unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="forbid",
    )

    def wire(self) -> dict[str, Any]:
        """The object as it is written to the API server (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(Model):
    """Status parts tolerate fields written by newer operator versions."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


# --------------------------------------------------------------------------- shared parts


class Toleration(Model):
    """A pod toleration, copied as-is into the child Jobs' pod templates."""

    key: str | None = Field(
        None, description="Taint key the toleration matches; empty with operator Exists matches all keys."
    )
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (default Equal).")
    value: str | None = Field(None, description="Taint value to match with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class Condition(StatusModel):
    """A Kubernetes-style condition; ``lastTransitionTime`` moves only when ``status`` flips."""

    type: str = Field(
        description="Condition type, e.g. Running, Succeeded, Failed, Planned, InvalidSpec, MetricsUnavailable."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        max_length=1024,
        description="One CamelCase word for machines.",
    )
    message: str = Field("", max_length=32768, description="A sentence for people.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(None, description="The spec generation this condition was computed from.")


# --------------------------------------------------------------------------- ExecutorClass


class Accelerator(Model):
    """The accelerator every node of the class carries; omitted for a CPU pool."""

    resource_name: str = Field(
        "nvidia.com/gpu", description="Extended resource requested per pod, e.g. nvidia.com/gpu."
    )
    model: str = Field(description="Product name, as in the node label nvidia.com/gpu.product.")
    memory_gi_b: float = Field(
        gt=0, le=MAX_GIB, alias="memoryGiB", description="Memory of one accelerator in GiB (OOM escalation uses it)."
    )


class Price(Model):
    """What an hour of each resource costs, in the platform's currency."""

    accelerator_hour: float = Field(0.0, ge=0, le=MAX_PRICE, description="Price of one accelerator for one hour.")
    cpu_hour: float = Field(0.0, ge=0, le=MAX_PRICE, description="Price of one CPU core for one hour.")
    memory_gi_b_hour: float = Field(
        0.0, ge=0, le=MAX_PRICE, alias="memoryGiBHour", description="Price of one GiB of memory for one hour."
    )


class Speed(Model):
    """Prior relative throughput (higher is faster), used before any runtime is observed."""

    default: float = Field(
        1.0, ge=MIN_SPEED, le=MAX_SPEED, description="Relative speed for profiles not listed (0.001 to 1000)."
    )
    profiles: dict[str, SpeedValue] = Field(
        default_factory=dict, description="Relative speed per workload profile (each 0.001 to 1000)."
    )


class ExecutorClassSpec(Model):
    """A pool of interchangeable nodes: one GPU model, or a CPU pool."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Labels a node must carry to belong to this class."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations added to pods placed on this class."
    )
    accelerator: Accelerator | None = Field(None, description="Omit for a CPU-only pool.")
    price: Price = Field(default_factory=Price, description="Prices used by the cost term C.")
    speed: Speed = Field(default_factory=Speed, description="Prior speed used by the runtime term T.")

    @property
    def kind(self) -> Literal["gpu", "cpu"]:
        return "gpu" if self.accelerator is not None else "cpu"


class Learned(StatusModel):
    """Runtime learned from completed attempts of one profile on this class."""

    seconds_per_unit: float = Field(ge=0)
    samples: int = Field(ge=0)
    relative_error: float | None = Field(None, description="EWMA of |estimate - actual| / actual over the samples.")
    gpu_util_avg: float | None = Field(None, description="EWMA of average GPU utilisation, percent.")
    oom_kills: int = 0
    updated_at: datetime | None = None


class ResourceTotals(StatusModel):
    nodes: int = Field(0, description="Number of member nodes.")
    accelerators: float = Field(0, description="Accelerators.")
    cpu: float = Field(0, description="CPU cores.")
    memory_gi_b: float = Field(0, alias="memoryGiB", description="Memory in GiB.")


class ExecutorClassStatus(StatusModel):
    capacity: ResourceTotals = Field(
        default_factory=ResourceTotals, description="Allocatable resources of the Ready nodes of this class."
    )
    allocated: ResourceTotals = Field(
        default_factory=ResourceTotals,
        description="Resources held on those nodes: requests of the pods bound to them and of the sub-tasks "
        "the operator admitted there whose pods are not bound yet.",
    )
    learned: dict[str, Learned] = Field(default_factory=dict, description="Per workload profile.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Reserved: this version of the operator sets no class conditions."
    )
    observed_generation: int | None = Field(None, description="The spec generation last processed.")
    updated_at: datetime | None = Field(
        None,
        description="When this status was written. A change of capacity, of what was learned or of the spec is "
        "written at once; a change of the allocation alone 10 s after the last write at the soonest (it moves "
        "with every pod; Prometheus has it every cycle).",
    )


class ObjectMeta(StatusModel):
    """The part of metadata the operator reads."""

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


class ExecutorClass(StatusModel):
    api_version: Literal["aitask.dev/v1alpha1"] = API_VERSION
    kind: Literal["ExecutorClass"] = "ExecutorClass"
    metadata: ObjectMeta
    spec: ExecutorClassSpec
    status: ExecutorClassStatus = Field(default_factory=ExecutorClassStatus)


# --------------------------------------------------------------------------- AITask spec


class SubtaskType(StrEnum):
    """Classification of a sub-task; it sets the default executor kind and the runtime prior."""

    PREPROCESS = "preprocess"
    INFERENCE = "inference"
    TRAINING = "training"
    EVALUATION = "evaluation"
    POSTPROCESS = "postprocess"
    FUSION = "fusion"
    CUSTOM = "custom"


@dataclass(frozen=True)
class SubtaskTypeDefaults:
    """What a sub-task type sets when the sub-task does not say."""

    kind: Literal["gpu", "cpu"]  # executor kind allowed when neither executor.kinds nor accelerators is set
    prior_seconds: float  # runtime at speed 1.0 per unit of work, before anything is learned or hinted


#: The one table of per-type defaults (read by ``Subtask.kinds`` and ``core.estimator``).
SUBTASK_TYPE_DEFAULTS: Mapping[SubtaskType, SubtaskTypeDefaults] = {
    SubtaskType.PREPROCESS: SubtaskTypeDefaults("cpu", 600.0),
    SubtaskType.INFERENCE: SubtaskTypeDefaults("gpu", 900.0),
    SubtaskType.TRAINING: SubtaskTypeDefaults("gpu", 3600.0),
    SubtaskType.EVALUATION: SubtaskTypeDefaults("gpu", 600.0),
    SubtaskType.POSTPROCESS: SubtaskTypeDefaults("cpu", 300.0),
    SubtaskType.FUSION: SubtaskTypeDefaults("cpu", 300.0),
    SubtaskType.CUSTOM: SubtaskTypeDefaults("cpu", 1800.0),
}


@dataclass(frozen=True)
class PodDefaults:
    """Per-pod requests when the executor does not say, by the largest kind the sub-task may use."""

    accelerators: int
    cpu: str
    memory: str


#: A CPU step is small; a GPU step needs enough host CPU and memory to feed its accelerator. Keyed by
#: kind, not type: a sub-task that may run on a GPU gets the GPU-sized requests whatever its type.
POD_DEFAULTS: Mapping[Literal["gpu", "cpu"], PodDefaults] = {
    "gpu": PodDefaults(accelerators=1, cpu="4", memory="16Gi"),
    "cpu": PodDefaults(accelerators=0, cpu="1", memory="2Gi"),
}

GPU_BY_DEFAULT = frozenset(t for t, d in SUBTASK_TYPE_DEFAULTS.items() if d.kind == "gpu")


class Objective(Model):
    """Weights of F = timeWeight * (wait + runtime in s) + costWeight * cost; unset uses operator defaults."""

    time_weight: float | None = Field(None, ge=0, le=MAX_WEIGHT, description="alpha, per second of wait + runtime.")
    cost_weight: float | None = Field(None, ge=0, le=MAX_WEIGHT, description="beta, per currency unit of cost.")
    quality_weight: float | None = Field(
        None,
        ge=0,
        le=MAX_WEIGHT,
        description="gamma: F of a variant gains gamma * (1 - quality), so a better model may cost more time or "
        "money (e.g. 36000 with timeWeight 1: one point of quality is worth 360 s); unset: 0.",
    )


class EnvVar(Model):
    name: str = Field(min_length=1, description="Variable name.")
    value: str | None = Field(None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        None,
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef ...).",
    )


class VolumeMount(Model):
    name: str = Field(description="Name of a volume in `volumes`.")
    mount_path: str = Field(description="Path in the container.")
    read_only: bool | None = Field(None, description="Mount read-only.")
    sub_path: str | None = Field(None, description="Sub-path of the volume to mount.")


class PodMetadata(Model):
    """Labels and annotations added to the child Jobs' pods."""

    labels: dict[str, str] = Field(default_factory=dict, description="Labels added to the pods.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations added to the pods.")


class LocalObjectReference(Model):
    name: str = Field(description="Name of the object in the AITask's namespace.")


class PodTemplatePart(Model):
    """Pod settings shared by every sub-task of the task."""

    service_account_name: str | None = Field(None, description="ServiceAccount the pods run as.")
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, description="Secrets for pulling the images."
    )
    env: list[EnvVar] = Field(default_factory=list, description="Added to every container.")
    metadata: PodMetadata = Field(default_factory=PodMetadata)
    priority_class_name: str | None = Field(None, description="PriorityClass of the pods (kube-scheduler preemption).")
    termination_grace_period_seconds: int | None = Field(
        None,
        ge=0,
        le=3600,
        description="Seconds a pod gets between SIGTERM and SIGKILL when its attempt is stopped (suspend, cancel, "
        "task failure); default: the cluster's (30 s).",
    )


class Executor(Model):
    """Constraints on where a sub-task may run; what is unset is chosen by the cost model."""

    kinds: list[Literal["gpu", "cpu"]] | None = Field(
        None, description="Allowed executor kinds; default from the sub-task type (and accelerators)."
    )
    classes: list[str] | None = Field(None, description="Allowed ExecutorClass names; default: any.")
    accelerators: int | None = Field(
        None, ge=0, le=64, description="Accelerators per pod on GPU classes; default 1 on GPU classes."
    )
    cpu: Quantity | None = Field(None, description="CPU request per pod; default by type (e.g. '1').")
    memory: Quantity | None = Field(None, description="Memory request per pod; default by type.")
    min_accelerator_memory_gi_b: float | None = Field(
        None, gt=0, le=MAX_GIB, alias="minAcceleratorMemoryGiB", description="Only classes with at least this much."
    )


class Estimate(Model):
    """Runtime hints used before the operator has learned this profile."""

    seconds: float | None = Field(
        None, gt=0, le=MAX_SECONDS, description="Runtime on the class `onClass` (at most ten years)."
    )
    on_class: str | None = Field(None, description="Reference class of `seconds`; default: speed 1.0.")
    seconds_by_class: dict[str, Seconds] = Field(
        default_factory=dict, description="Runtime per class name (oracle for `aitask simulate`)."
    )


class Work(Model):
    units: float = Field(1.0, gt=0, le=MAX_WORK_UNITS, description="Size of the work; learned runtimes are per unit.")


class RetryPolicy(Model):
    limit: int = Field(2, ge=0, le=20, description="Retries after the first attempt.")
    backoff_seconds: float | None = Field(
        None,
        ge=0,
        le=3600,
        description="Delay before retry n is 2^(n-1) * this, capped by the operator; unset: the operator default "
        "(AITASK_RETRY_BACKOFF_SECONDS, 10 s).",
    )
    oom_escalation: bool = Field(
        True, description="Retry an OOM-killed attempt on a class with more accelerator memory."
    )


class Variant(Model):
    """One model of the library that can do a sub-task's step: what differs from the sub-task, and its quality."""

    name: str = Field(pattern=DNS_LABEL, max_length=MAX_VARIANT_NAME, description="Unique within the sub-task.")
    quality: float = Field(
        ge=0, le=1, description="How good its results are, 0..1 (e.g. accuracy on the team's validation set)."
    )
    image: str | None = Field(None, min_length=1, pattern=r"^\S+$", description="Image; default: the sub-task's.")
    command: list[str] | None = Field(None, description="Entrypoint; default: the sub-task's.")
    args: list[str] | None = Field(None, description="Arguments; default: the sub-task's.")
    env: list[EnvVar] = Field(default_factory=list, description="Added to the sub-task's env (same name: replaced).")
    profile: str | None = Field(
        None,
        max_length=253,
        description="Profile key of its learned runtimes; default: '<the sub-task's profile>.<variant name>'.",
    )
    executor: Executor | None = Field(
        None, description="Only the fields set here replace the sub-task's (e.g. accelerators, memory)."
    )
    estimate: Estimate | None = Field(None, description="Runtime hints; replaces the sub-task's when set.")
    work: Work | None = Field(None, description="Size of the work; default: the sub-task's.")


class Ensemble(Model):
    """Run several variants side by side, each as its own sub-task and Job placed on its own best class."""

    top_k: int | None = Field(
        None, ge=1, le=MAX_VARIANTS, description="The k variants of highest quality (that meet minQuality)."
    )
    members: list[str] | None = Field(
        None, min_length=1, max_length=MAX_VARIANTS, description="A named set of variants instead of topK."
    )

    @model_validator(mode="after")
    def _one(self) -> Ensemble:
        if (self.top_k is None) == (self.members is None):
            raise ValueError("exactly one of topK or members")
        return self


AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]


def _shared() -> list[AccessMode]:
    return ["ReadWriteMany"]


class ClaimTemplate(Model):
    """The PersistentVolumeClaim the operator creates for the task (one per AITask)."""

    access_modes: list[AccessMode] = Field(
        default_factory=_shared,
        min_length=1,
        description="Access modes; ReadWriteMany lets sub-tasks on different nodes share it.",
    )
    storage: Quantity = Field(description="Requested size, e.g. 10Gi.")
    storage_class_name: str | None = Field(None, description="StorageClass; unset: the cluster's default.")


class ObjectStore(Model):
    """For clusters without shared volumes: sub-tasks read and write under a URI prefix themselves."""

    uri_prefix: str = Field(
        pattern=r"^[a-z][a-z0-9+.-]*://\S+$", max_length=1024, description="e.g. s3://bucket/teams/vision."
    )


class ReclaimPolicy(StrEnum):
    DELETE = "Delete"
    RETAIN = "Retain"


class Workspace(Model):
    """Where sub-tasks hand data to each other: a claim per task, an existing claim, or an object store."""

    volume_claim_template: ClaimTemplate | None = Field(
        None, description="The operator creates one claim per AITask, owned by it."
    )
    existing_claim: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=253,
        description="A PersistentVolumeClaim of the namespace to use as it is (never deleted by the operator).",
    )
    object_store: ObjectStore | None = Field(None, description="No volume: locations are URIs under this prefix.")
    mount_path: str = Field("/workspace", pattern=r"^/\S*$", max_length=253, description="Where the volume is mounted.")
    reclaim_policy: ReclaimPolicy = Field(
        ReclaimPolicy.DELETE,
        description="Delete: the claim from volumeClaimTemplate goes with the AITask; Retain: it is kept.",
    )

    @model_validator(mode="after")
    def _one(self) -> Workspace:
        given = [self.volume_claim_template, self.existing_claim, self.object_store]
        if sum(g is not None for g in given) != 1:
            raise ValueError("exactly one of volumeClaimTemplate, existingClaim or objectStore")
        return self


class Preemption(Model):
    """Opt-in: the operator may stop this sub-task (its Job deleted, pods get the grace period to
    checkpoint) to make room for work of a higher ratio, or to move it to a faster class, and
    start it again later; the work done carries over (core.scheduling.preempt)."""

    allowed: bool = Field(False, description="The sub-task checkpoints and may be stopped and resumed.")
    grace_period_seconds: int = Field(
        120, ge=0, le=3600, description="Seconds its pods get between SIGTERM and SIGKILL to write a checkpoint."
    )
    resume_overhead_seconds: float = Field(
        60.0, ge=0, le=MAX_SECONDS, description="Seconds a resumed attempt spends before it makes progress again."
    )


class Subtask(Model):
    """One step of the pipeline: one child Job per attempt."""

    name: str = Field(pattern=DNS_LABEL, max_length=MAX_SUBTASK_NAME, description="Unique within the task (DNS label).")
    type: SubtaskType = Field(
        SubtaskType.CUSTOM, description="Classification; sets the default executor kind and runtime prior."
    )
    profile: str | None = Field(
        None,
        max_length=253,
        description="Workload profile key for learned runtimes; default: the image without its tag.",
    )
    image: str = Field(min_length=1, pattern=r"^\S+$", description="Container image (no whitespace).")
    command: list[str] = Field(default_factory=list, description="Entrypoint (overrides the image's).")
    args: list[str] = Field(default_factory=list, description="Arguments.")
    env: list[EnvVar] = Field(default_factory=list, description="Environment of the container.")
    volume_mounts: list[VolumeMount] = Field(default_factory=list, description="Volume mounts of the container.")
    volumes: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Pod volumes (core/v1 Volume objects).",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    depends_on: list[str] = Field(default_factory=list, description="Sub-tasks that must succeed first.")
    parallelism: int = Field(1, ge=1, le=1024, description="Pods running at once (shards).")
    completions: int | None = Field(None, ge=1, le=100000, description="Indexed completions; default: parallelism.")
    gang: bool = Field(False, description="Admit all `parallelism` pods together or none (distributed).")
    executor: Executor = Field(default_factory=Executor)
    work: Work = Field(default_factory=Work, description="Size of the work, for learned per-unit runtimes.")
    estimate: Estimate = Field(default_factory=Estimate)
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retries, backoff and OOM escalation.")
    timeout_seconds: int | None = Field(
        None, ge=1, le=MAX_SECONDS, description="activeDeadlineSeconds of each attempt (at most ten years)."
    )
    pod_metadata: PodMetadata = Field(default_factory=PodMetadata)
    preemption: Preemption = Field(default_factory=Preemption, description="Whether it may be preempted, and how.")
    variants: list[Variant] = Field(
        default_factory=list,
        max_length=MAX_VARIANTS,
        description="Alternative models for this step; the cost model picks the (variant, class) pair jointly.",
    )
    min_quality: float | None = Field(None, ge=0, le=1, description="Variants of lower quality are never chosen.")
    ensemble: Ensemble | None = Field(
        None,
        description="Run several variants, each as the sub-task '<name>-<variant>'; dependents wait for all of them.",
    )

    @model_validator(mode="after")
    def _variants(self) -> Subtask:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variants: duplicate variant name")
        if self.min_quality is not None and not any(v.quality >= self.min_quality for v in self.variants):
            raise ValueError(f"minQuality: no variant has quality >= {self.min_quality:g}")
        ens = self.ensemble
        if ens is not None:
            if not self.variants:
                raise ValueError("ensemble: needs variants")
            unknown = [m for m in ens.members or [] if m not in names]
            if unknown:
                raise ValueError(f"ensemble.members: unknown variant {unknown[0]!r}")
            if ens.top_k is not None and ens.top_k > len(names):
                raise ValueError(f"ensemble.topK: {ens.top_k} > {len(names)} variants")
        return self

    @property
    def effective_completions(self) -> int:
        return self.completions if self.completions is not None else self.parallelism

    @property
    def effective_profile(self) -> str:
        if self.profile:
            return self.profile
        image = self.image.split("@", 1)[0]
        slash = image.rfind("/")
        colon = image.rfind(":")
        return image[:colon] if colon > slash else image

    @property
    def kinds(self) -> frozenset[str]:
        if self.executor.kinds:
            return frozenset(self.executor.kinds)
        if self.executor.accelerators:
            return frozenset({"gpu"})
        return frozenset({SUBTASK_TYPE_DEFAULTS[self.type].kind})


class Deadline(Model):
    seconds: int = Field(
        ge=1, le=MAX_SECONDS, description="The task fails if not finished this long after creation (at most ten years)."
    )


class BudgetPolicy(StrEnum):
    WAIT = "Wait"
    FAIL = "Fail"


class TaskBudget(Model):
    """A ceiling on what the whole task may cost, in the currency of the ExecutorClass prices."""

    max_cost: float = Field(
        ge=0,
        le=MAX_PRICE * 1e3,
        description="What the task may spend in all: the attempts' actual costs plus the estimated cost of the "
        "running ones. A class whose estimated cost C exceeds what is left is infeasible for the next attempt.",
    )
    on_exceeded: BudgetPolicy = Field(
        BudgetPolicy.WAIT,
        description="When no class fits what is left: Wait (until the budget is raised) or Fail the task.",
    )


class AITaskSpec(Model):
    priority: float = Field(1.0, gt=0, le=1000, description="Weight in weighted completion time.")
    objective: Objective = Field(default_factory=Objective)
    deadline: Deadline | None = Field(
        None, description="The whole task fails if it has not finished this long after creation."
    )
    template: PodTemplatePart = Field(default_factory=PodTemplatePart)
    queue_name: str | None = Field(
        None,
        pattern=DNS_LABEL,
        max_length=63,
        description=(
            "Kueue LocalQueue (in the task's namespace) its child Jobs are submitted to when the operator "
            "runs in Kueue mode (AITASK_KUEUE_ENABLED); default: the operator's AITASK_KUEUE_DEFAULT_QUEUE. "
            "Ignored otherwise."
        ),
    )
    subtasks: list[Subtask] = Field(min_length=1, max_length=MAX_SUBTASKS)
    budget: TaskBudget | None = Field(None, description="A cost ceiling for the whole task.")
    workspace: Workspace | None = Field(
        None, description="Shared storage for the sub-tasks' outputs, and the environment contract that names it."
    )
    suspend: bool = Field(
        False,
        description="True stops the running attempts (their Jobs are deleted; the pods get the template's grace "
        "period) and admits nothing more; false resumes, each stopped sub-task with a new attempt.",
    )
    cancel: bool = Field(
        False,
        description="True ends the task as Cancelled: running attempts are stopped, nothing more starts, status and "
        "history are kept. It cannot be undone.",
    )

    @model_validator(mode="after")
    def _references(self) -> AITaskSpec:
        names = [s.name for s in self.subtasks]
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                raise ValueError(f"subtasks[{i}].name: duplicate sub-task name {name!r}")
            seen.add(name)
        for i, sub in enumerate(self.subtasks):
            for dep in sub.depends_on:
                if dep == sub.name:
                    raise ValueError(f"subtasks[{i}].dependsOn: {sub.name!r} depends on itself")
                if dep not in seen:
                    raise ValueError(f"subtasks[{i}].dependsOn: unknown sub-task {dep!r}")
        expanded = sum(
            len(s.ensemble.members or []) or (s.ensemble.top_k or 1) if s.ensemble else 1 for s in self.subtasks
        )
        if expanded > MAX_EXPANDED_SUBTASKS:
            raise ValueError(
                f"subtasks: {expanded} sub-tasks with the ensemble members, at most {MAX_EXPANDED_SUBTASKS}"
            )
        for i, sub in enumerate(self.subtasks):
            if sub.ensemble is None:
                continue
            for member in sub.ensemble.members or [v.name for v in sub.variants]:
                if f"{sub.name}-{member}" in seen:
                    raise ValueError(f"subtasks[{i}].ensemble: member {sub.name}-{member} is also a sub-task's name")
        return self

    def subtask(self, name: str) -> Subtask:
        for sub in self.subtasks:
            if sub.name == name:
                return sub
        raise KeyError(name)


# --------------------------------------------------------------------------- AITask status


class TaskPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    INVALID = "Invalid"
    SUSPENDED = "Suspended"  # spec.suspend: nothing runs, nothing is admitted
    CANCELLED = "Cancelled"  # spec.cancel: ended for good, history kept

    @property
    def final(self) -> bool:
        """Nothing will ever run again for the task (whatever its spec says next)."""
        return self in FINAL_TASK_PHASES


FINAL_TASK_PHASES = frozenset({TaskPhase.SUCCEEDED, TaskPhase.FAILED, TaskPhase.CANCELLED})


class SubtaskPhase(StrEnum):
    WAITING = "Waiting"  # dependencies not finished
    QUEUED = "Queued"  # ready, waiting for capacity
    BACKOFF = "Backoff"  # failed attempt, retry delayed
    RUNNING = "Running"  # a Job exists for the current attempt
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"  # a dependency failed


class Alternative(StatusModel):
    variant: str = Field("", description="The variant of this pair ('' for a sub-task without variants).")
    class_name: str = Field(alias="class", description="ExecutorClass considered ('*': every class).")
    feasible: bool = Field(description="Whether the sub-task could run there at all.")
    reason: str = Field("", description="Why not, when infeasible.")
    estimated_seconds: float | None = Field(None, description="T: estimated runtime there.")
    wait_seconds: float | None = Field(None, description="W: expected wait for that class's backlog.")
    estimated_cost: float | None = Field(None, description="C: estimated cost there.")
    score: float | None = Field(None, description="F = alpha*(W+T) + beta*C; lowest wins.")


class Plan(StatusModel):
    """Where the cost model put (or would put) the current attempt, and why."""

    class_name: str = Field(alias="class", description="Chosen ExecutorClass (empty when no class is feasible).")
    variant: str = Field("", description="Chosen variant (model), when the sub-task lists variants.")
    quality: float | None = Field(None, description="Quality of the chosen variant.")
    accelerators: int = Field(0, description="Accelerators per pod.")
    cpu: str = Field("", description="CPU request per pod.")
    memory: str = Field("", description="Memory request per pod.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="The class's node selector, used as required node affinity."
    )
    nodes: list[str] = Field(default_factory=list, description="Nodes the pods were packed onto.")
    estimated_seconds: float = Field(0, description="T on the chosen class.")
    estimated_cost: float = Field(0, description="C on the chosen class.")
    score: float = Field(0, description="F on the chosen class.")
    estimate_source: str = Field(
        "", description="Where T came from: learned(n=..), hint:secondsByClass, hint:seconds@class*speed, prior."
    )
    alternatives: list[Alternative] = Field(
        default_factory=list, description="The other classes considered, best first, infeasible last."
    )
    message: str = Field("", description="Human summary of the decision.")


class AttemptResult(StrEnum):
    """How an attempt ended (or that it has not): the one vocabulary of history, Events and metrics."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    OOM_KILLED = "OOMKilled"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    STUCK = "Stuck"  # its pods could not be created or stayed Pending past AITASK_STUCK_AFTER_SECONDS
    CANCELLED = "Cancelled"
    SUSPENDED = "Suspended"  # stopped by spec.suspend: not a failure, the sub-task resumes with a new attempt
    PREEMPTED = "Preempted"  # stopped by the scheduler (preemption or migration): not a failure, resumed later

    @property
    def label(self) -> str:
        """The bounded label value of the attempt metrics: succeeded, oom_killed, ..."""
        return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", self.value).lower()

    @property
    def is_failure(self) -> bool:
        return self not in (
            AttemptResult.RUNNING,
            AttemptResult.SUCCEEDED,
            AttemptResult.SUSPENDED,
            AttemptResult.PREEMPTED,
        )


class Attempt(StatusModel):
    number: int = Field(description="Attempt number, from 1.")
    job: str = Field(description="Name of the attempt's Job.")
    class_name: str = Field(alias="class", description="ExecutorClass of the attempt.")
    result: AttemptResult = Field(
        AttemptResult.RUNNING,
        description="Running, Succeeded, Failed, OOMKilled, DeadlineExceeded, Stuck (its pods were not created or "
        "stayed Pending too long; the Job was deleted), Cancelled (stopped because the task failed or was "
        "cancelled), Suspended (stopped by spec.suspend; not a failure) or Preempted (stopped by the scheduler for "
        "other work or a faster class; not a failure); a pod lost with its node is replaced by "
        "the Job, not an attempt result.",
    )
    exit_code: int | None = Field(None, description="Exit code of the failed container, if any.")
    reason: str = Field("", description="Why it ended this way.")
    start_time: datetime | None = Field(None, description="When it was admitted / started.")
    finish_time: datetime | None = Field(None, description="When it ended.")
    actual_seconds: float | None = Field(None, description="Runtime of its Job.")
    actual_cost: float | None = Field(None, description="Cost at the plan's rate for the actual runtime.")
    spec_hash: str = Field("", description="Fingerprint of the sub-task spec it ran with.")
    variant: str = Field("", description="The variant (model) it ran, when the sub-task lists variants.")
    learned: bool = Field(False, description="Whether its runtime was folded into the class's learned estimates.")
    progress_start: float = Field(0.0, ge=0, le=1, description="Fraction of the work done before it started.")
    progress: float | None = Field(
        None, ge=0, le=1, description="Fraction of the work done when it stopped (Suspended or Preempted attempts)."
    )
    preempted_by: str | None = Field(
        None, description="The sub-task (namespace/task/subtask) it was preempted for; empty for a migration."
    )
    moved_to: str | None = Field(None, description="After a migration: the class the next attempt runs on.")


class SubtaskMetrics(StatusModel):
    gpu_util_avg: float | None = Field(
        None, description="Average GPU utilisation of its pods, percent (from Prometheus)."
    )
    gpu_util_max: float | None = Field(None, description="Peak GPU utilisation, percent.")
    gpu_memory_used_max_bytes: float | None = Field(None, description="Peak GPU memory used, bytes.")
    sampled_at: datetime | None = Field(None, description="When Prometheus was last asked.")


class SubtaskStatus(StatusModel):
    name: str = Field(description="Sub-task name.")
    phase: SubtaskPhase = Field(
        SubtaskPhase.WAITING, description="Waiting, Queued, Backoff, Running, Succeeded, Failed or Skipped."
    )
    attempts: int = Field(0, description="Attempts started so far.")
    job: str | None = Field(None, description="Job of the current (or last) attempt.")
    nodes: list[str] = Field(default_factory=list, description="Nodes its pods run on.")
    ready_since: datetime | None = Field(None, description="When it became ready to run (ageing starts here).")
    retry_after: datetime | None = Field(None, description="Earliest time of the next attempt after a failure.")
    start_time: datetime | None = Field(None, description="When its first attempt started.")
    finish_time: datetime | None = Field(None, description="When it finished.")
    actual_seconds: float | None = Field(None, description="Runtime of the successful attempt.")
    actual_cost: float | None = Field(None, description="Cost of the successful attempt.")
    message: str = Field("", description="What is happening, for people.")
    plan: Plan | None = Field(None, description="Where the cost model placed (or would place) the current attempt.")
    history: list[Attempt] = Field(default_factory=list, description="Every attempt, oldest first.")
    progress: float = Field(
        0.0, ge=0, le=1, description="Fraction of the work done by its stopped (Preempted, Suspended) attempts."
    )
    metrics: SubtaskMetrics | None = Field(None, description="GPU use sampled while it ran.")


class TaskMetrics(StatusModel):
    gpu_util_avg: float | None = Field(None, description="Mean of the sub-tasks' average GPU utilisation, percent.")
    gpu_util_max: float | None = Field(None, description="Peak GPU utilisation over the sub-tasks, percent.")
    gpu_memory_used_max_bytes: float | None = Field(None, description="Peak GPU memory used by any sub-task, bytes.")


class AITaskStatus(StatusModel):
    phase: TaskPhase = Field(
        TaskPhase.PENDING, description="Pending, Running, Succeeded, Failed, Invalid, Suspended or Cancelled."
    )
    progress: str = Field("", description="Succeeded sub-tasks / all, e.g. 2/3.")
    succeeded: int = Field(0, description="Succeeded sub-tasks.")
    total: int = Field(0, description="All sub-tasks.")
    estimated_cost: float | None = Field(None, description="Sum of the plans' estimated costs.")
    actual_cost: float | None = Field(None, description="Sum of the attempts' costs.")
    estimated_seconds: float | None = Field(
        None,
        description="Estimated critical-path time: succeeded sub-tasks at their actual runtime, the others at "
        "their plan's T (waits not included).",
    )
    start_time: datetime | None = Field(None, description="When the first attempt started.")
    completion_time: datetime | None = Field(None, description="When the task succeeded or failed.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Complete and Failed (the Job convention, for kubectl wait), Succeeded, Planned, Running, "
        "Suspended, Cancelled, InvalidSpec, MetricsUnavailable, SpecChangeIgnored, InternalError.",
    )
    subtasks: list[SubtaskStatus] = Field(default_factory=list, description="Per-sub-task plan and progress.")
    metrics: TaskMetrics | None = Field(None, description="Task-level GPU use.")
    observed_generation: int | None = Field(None, description="The spec generation this status was computed from.")

    def subtask(self, name: str) -> SubtaskStatus | None:
        for sub in self.subtasks:
            if sub.name == name:
                return sub
        return None


class AITask(StatusModel):
    api_version: Literal["aitask.dev/v1alpha1"] = API_VERSION
    kind: Literal["AITask"] = "AITask"
    metadata: ObjectMeta
    spec: AITaskSpec
    status: AITaskStatus = Field(default_factory=AITaskStatus)

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace or 'default'}/{self.metadata.name}"


# --------------------------------------------------------------------------- AITaskBudget


class BudgetPeriod(StrEnum):
    """The window a namespace budget is counted over: calendar periods in UTC (weeks start on Monday)."""

    HOUR = "Hour"
    DAY = "Day"
    WEEK = "Week"
    MONTH = "Month"


class AITaskBudgetSpec(Model):
    """What the AITasks of one namespace may spend per period; admission holds what would exceed it."""

    period: BudgetPeriod = Field(BudgetPeriod.DAY, description="Hour, Day, Week or Month (UTC calendar).")
    max_cost: float | None = Field(
        None,
        ge=0,
        le=MAX_PRICE * 1e3,
        description="Cost per period in the ExecutorClass prices' currency: attempts' runtime in the period at "
        "their plan's rate, plus what running attempts are still expected to cost.",
    )
    accelerator_hours: dict[str, Annotated[float, Field(ge=0, le=1e9)]] = Field(
        default_factory=dict,
        description="Accelerator-hours per period per ExecutorClass name; the key '*' caps all classes together.",
    )


class AcceleratorHoursStatus(StatusModel):
    used: float = Field(0, description="Accelerator-hours run in the period so far.")
    committed: float = Field(0, description="Accelerator-hours running attempts are still expected to take.")
    limit: float = Field(0, description="The spec's cap.")
    remaining: float = Field(0, description="limit - used - committed (never below 0).")


class AITaskBudgetStatus(StatusModel):
    window_start: datetime | None = Field(None, description="Start of the current period.")
    window_end: datetime | None = Field(None, description="End of the current period (the budget resets then).")
    spent_cost: float = Field(0, description="Cost of the attempts' runtime within the period so far.")
    committed_cost: float = Field(0, description="What the running attempts are still expected to cost.")
    remaining_cost: float | None = Field(None, description="maxCost - spent - committed (never below 0).")
    accelerator_hours: dict[str, AcceleratorHoursStatus] = Field(
        default_factory=dict, description="Per capped class (or '*')."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Exhausted: True when nothing is left.")
    observed_generation: int | None = Field(None, description="The spec generation last processed.")
    updated_at: datetime | None = Field(
        None,
        description="When these figures were computed. They are rewritten when one moves by 0.5% of its cap, or "
        "30 s after any smaller change; Prometheus has them every cycle.",
    )


class AITaskBudget(StatusModel):
    api_version: Literal["aitask.dev/v1alpha1"] = API_VERSION
    kind: Literal["AITaskBudget"] = "AITaskBudget"
    metadata: ObjectMeta
    spec: AITaskBudgetSpec
    status: AITaskBudgetStatus = Field(default_factory=AITaskBudgetStatus)
