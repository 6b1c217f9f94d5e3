"""Condition types and reasons: the vocabulary of status, Events and metrics labels."""

from __future__ import annotations

from enum import StrEnum


class ConditionType(StrEnum):
    PLANNED = "Planned"  # every ready sub-task has a placement
    RUNNING = "Running"  # at least one attempt Job is active
    SUCCEEDED = "Succeeded"
    COMPLETE = "Complete"  # the Job convention: True on success, False once the task failed or was cancelled
    FAILED = "Failed"  # True once the task failed or was cancelled (kubectl wait --for=condition=Failed)
    SUSPENDED = "Suspended"
    CANCELLED = "Cancelled"
    INVALID_SPEC = "InvalidSpec"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
    INTERNAL_ERROR = "InternalError"  # the operator failed processing this task; the others go on
    ATTEMPT_STUCK = "AttemptStuck"  # a sub-task's last attempt ended Stuck and no later one runs yet
    KUEUE_ADMITTED = "KueueAdmitted"  # Kueue mode: no running sub-task's Job waits in its Kueue queue


class Reason(StrEnum):
    INVALID_SCHEMA = "InvalidSchema"
    DEPENDENCY_CYCLE = "DependencyCycle"
    WAITING_FOR_CAPACITY = "WaitingForCapacity"
    NO_FEASIBLE_CLASS = "NoFeasibleClass"
    ALL_PLANNED = "AllPlanned"
    ATTEMPT_STARTED = "AttemptStarted"
    ATTEMPT_ADOPTED = "AttemptAdopted"
    ATTEMPT_SUCCEEDED = "AttemptSucceeded"
    ATTEMPT_FAILED = "AttemptFailed"
    OOM_KILLED = "OOMKilled"
    ATTEMPT_STUCK = "AttemptStuck"  # Event and condition: pods not created or Pending past the threshold
    NO_STUCK_ATTEMPT = "NoStuckAttempt"  # the stuck sub-tasks run again (or ended)
    RETRYING = "Retrying"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    ALL_SUCCEEDED = "AllSucceeded"
    IN_PROGRESS = "InProgress"
    IDLE = "Idle"
    PROMETHEUS_UNREACHABLE = "PrometheusUnreachable"
    PROMETHEUS_OK = "PrometheusOK"
    RUNNING_SUBTASK_CHANGED = "RunningSubtaskChanged"
    PROCESSING_FAILED = "ProcessingFailed"
    JOB_REJECTED = "JobRejected"
    SUSPENDED = "Suspended"
    PREEMPTED = "Preempted"  # Event: a preemptible attempt stopped for work of a higher ratio
    MIGRATED = "Migrated"  # Event: a preemptible attempt stopped to resume on a faster class
    RESUMED = "Resumed"
    CANCELLED = "Cancelled"
    WAITING_FOR_QUOTA = "WaitingForQuota"
    WAITING_FOR_BUDGET = "WaitingForBudget"
    BUDGET_EXCEEDED = "BudgetExceeded"
    WAITING_FOR_KUEUE_ADMISSION = "WaitingForKueueAdmission"  # a child Job is suspended until Kueue admits it
    ADMITTED_BY_KUEUE = "AdmittedByKueue"


def kueue_waiting_message(queue: str) -> str:
    """What a sub-task says while Kueue holds its Job suspended (status and the KueueAdmitted condition)."""
    return f"waiting for Kueue admission (queue {queue})"
