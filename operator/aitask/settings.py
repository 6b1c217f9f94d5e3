"""Operator settings, read once from the environment (prefix ``AITASK_``).

Every knob a platform team may want to turn lives here, with the default the
chart ships. Core code never reads these: handlers pass the values in.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Settings of `aitask run`; each field maps to env var ``AITASK_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="AITASK_", frozen=True, extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces to watch; empty means all namespaces (comma-separated in the env var).",
    )
    peering_name: str = Field("aitask-operator", description="Kopf peering object; one active replica per name.")
    standalone: bool = Field(False, description="Run without peering (single replica, tests).")
    peering_priority: int | None = Field(
        None,
        description="Kopf peering priority; unset: derived from the start time so the oldest replica is active.",
    )
    default_time_weight: float = Field(1.0, ge=0, description="alpha: default weight of time in F.")
    default_cost_weight: float = Field(0.0, ge=0, description="beta: default weight of cost (per currency unit) in F.")
    scheduling_period_seconds: float = Field(5.0, gt=0, description="Period of the scheduling cycle.")
    cycle_gap_ratio: float = Field(
        1.0,
        ge=0,
        le=10,
        description="After a cycle of d seconds the next starts no sooner than this x d later (at most one "
        "scheduling period), so in a burst the writes and watches get their share of the process; 0: back to back.",
    )
    idle_resync_seconds: float = Field(
        60.0,
        ge=0,
        description="While every AITask is finished and nothing is left to write, the periodic cycle runs this "
        "often instead (watch events still start a cycle at once); 0: always the scheduling period.",
    )
    ageing_seconds: float = Field(600.0, gt=0, description="Waiting this long doubles a sub-task's ordering weight.")
    learning_rate: float = Field(0.3, gt=0, le=1, description="EWMA weight of a new observed runtime.")
    job_ttl_seconds: int = Field(3600, ge=0, description="ttlSecondsAfterFinished on finished child Jobs.")
    retry_backoff_seconds: float = Field(10.0, ge=0, description="Base delay before a failed attempt is retried.")
    retry_backoff_max_seconds: float = Field(300.0, ge=0, description="Upper bound of the retry delay.")
    stuck_after_seconds: float = Field(
        300.0,
        gt=0,
        description="A running attempt with a pod Pending this long (unschedulable, image-pull back-off, ...), "
        "or a Job this long without a pod, is stuck: its Job is deleted and the sub-task retried.",
    )
    preemption: bool = Field(
        True,
        description="Stop running sub-tasks that opted in (preemption.allowed) for work of a higher ratio, "
        "or to move them to a faster class that is free (core.scheduling.preempt).",
    )
    preempt_min_run_seconds: float = Field(
        600.0, ge=0, description="An attempt runs this long before it may be preempted (doubled per earlier stop)."
    )
    preempt_factor: float = Field(
        2.0, ge=1, description="A demand's ratio must beat the running work's this many times to stop it."
    )
    migrate_factor: float = Field(
        1.5, ge=1, description="A move to a faster free class must cut the remaining time this many times."
    )
    metrics_port: int = Field(8080, ge=0, le=65535, description="Port of /metrics and /healthz (0 disables).")
    metrics_host: str = Field("0.0.0.0", description="Bind address of the metrics server.")  # noqa: S104
    prometheus_url: str = Field("", description="Prometheus base URL for GPU feedback; empty disables it.")
    prometheus_timeout_seconds: float = Field(3.0, gt=0, description="Timeout of one Prometheus query.")
    prometheus_period_seconds: float = Field(30.0, gt=0, description="How often running sub-tasks are sampled.")
    api_concurrency: int = Field(
        16,
        ge=1,
        le=256,
        description="API writes (Jobs, statuses, Events) in flight at once; Jobs go first when they queue.",
    )
    api_qps: float = Field(200.0, gt=0, description="Sustained Kubernetes API requests per second of the operator.")
    api_burst: int = Field(400, ge=1, description="Requests the operator may send at once above api_qps.")
    kueue_enabled: bool = Field(
        False,
        description=(
            "Kueue interop: child Jobs are created suspended with the kueue.x-k8s.io/queue-name label and Kueue "
            "admits them; the operator still picks the class (and its node selector) by the cost model."
        ),
    )
    kueue_default_queue: str = Field(
        "default",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="LocalQueue of an AITask without spec.queueName, in Kueue mode (each namespace creates it).",
    )
    gpu_util_low_percent: float = Field(
        30.0, ge=0, le=100, description="Average GPU utilisation under which a class is deemed oversized."
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def load_settings() -> OperatorSettings:
    """Read the settings from the process environment."""
    return OperatorSettings()
