"""The scheduling cycle's driver: indexes -> control.cycle (pure) -> API calls.

Cycles run only from handlers (a timer on each unfinished AITask, and a short debounce
after any relevant watch event), so they pause with Kopf when another peer is active:
two replicas never both act. One cycle runs at a time; one status write per task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from aitask import metrics
from aitask.adapters import kube
from aitask.adapters.prom import PrometheusClient, PrometheusUnavailable, pod_regex_for_pods
from aitask.api.v1alpha1 import GROUP, VERSION
from aitask.control.cycle import ClusterView, CycleOutcome, CycleParams, run_cycle
from aitask.core.observed import LABEL_TASK, JobView, PodView
from aitask.settings import OperatorSettings, load_settings

log = logging.getLogger("aitask.scheduler")
SETTINGS = load_settings()
_FINISHED = ("Succeeded", "Failed", "Invalid")
_STATUS_CACHE_SECONDS = 30.0
MAX_FAILED_CYCLES = 5
# Attempt.result -> the bounded label values of aitask_subtask_attempts_total / _retries_total.
_RESULT_LABEL = {
    "Succeeded": "succeeded",
    "Failed": "failed",
    "OOMKilled": "oom_killed",
    "DeadlineExceeded": "deadline_exceeded",
    "Cancelled": "cancelled",
}


def _values(index: kopf.Index[str, Any]) -> list[Any]:
    store = index.get("all")
    return list(store) if store is not None else []


@dataclass
class Engine:
    """Holds the one-cycle-at-a-time lock and the statuses written but not yet seen in the watch."""

    settings: OperatorSettings
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_run: float = 0.0
    pending: asyncio.Task[None] | None = None
    written: dict[str, tuple[float, str, dict[str, Any]]] = field(default_factory=dict)
    # GPU feedback: sampled in the background so a slow Prometheus never delays a cycle.
    gpu_usage: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    telemetry: str = "disabled"
    telemetry_message: str = ""
    last_sample: float = 0.0
    sampler: asyncio.Task[None] | None = None
    prom: PrometheusClient | None = None
    failures: int = 0  # consecutive failed cycles; /healthz fails past MAX_FAILED_CYCLES

    def healthy(self) -> bool:
        """Liveness: a few failed cycles in a row (an API outage, a bug) make a restart worthwhile."""
        return self.failures < MAX_FAILED_CYCLES

    def __post_init__(self) -> None:
        if self.settings.prometheus_url:
            self.prom = PrometheusClient(
                self.settings.prometheus_url,
                self.settings.prometheus_timeout_seconds,
                observer=lambda op, seconds, ok: metrics.observe_api_request("prometheus", op, seconds, ok),
            )

    def _gpu_targets(self, view: ClusterView, now: datetime) -> list[tuple[tuple[str, str, str], list[str], float]]:
        """Running GPU attempts, their pods and how far back to look."""
        pods_by_job: dict[tuple[str, str], list[str]] = {}
        for pod in view.pods:
            if pod.job:
                pods_by_job.setdefault((pod.namespace, pod.job), []).append(pod.name)
        out = []
        for body in view.tasks:
            meta = body.get("metadata", {})
            for sub in (body.get("status") or {}).get("subtasks") or []:
                plan = sub.get("plan") or {}
                if sub.get("phase") != "Running" or not plan.get("accelerators") or not sub.get("job"):
                    continue
                pods = pods_by_job.get((meta.get("namespace", ""), sub["job"]), [])
                if not pods:
                    continue
                started = sub.get("startTime")
                elapsed = (
                    (now - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds() if started else 60
                )
                window = min(3600.0, max(30.0, elapsed))
                out.append(((meta.get("namespace", ""), meta.get("name", ""), sub["name"]), pods, window))
        return out

    async def _sample(self, targets: list[tuple[tuple[str, str, str], list[str], float]]) -> None:
        if self.prom is None:
            return
        try:
            for key, pods, window in targets:
                usage = await self.prom.call_async(self.prom.get_gpu_usage, key[0], pod_regex_for_pods(pods), window)
                if usage is not None:
                    self.gpu_usage[key] = usage.as_status()
        except PrometheusUnavailable as err:
            if self.telemetry != "unavailable":
                log.warning("GPU feedback degraded: Prometheus unavailable: %s", err)
            self.telemetry, self.telemetry_message = "unavailable", str(err)
            metrics.record_prometheus_up(False)
            return
        if self.telemetry == "unavailable":
            log.info("GPU feedback recovered: Prometheus answers again")
        self.telemetry, self.telemetry_message = "ok", ""
        metrics.record_prometheus_up(True)

    def maybe_sample(self, view: ClusterView, now: datetime) -> None:
        if self.prom is None or (self.sampler is not None and not self.sampler.done()):
            return
        if time.monotonic() - self.last_sample < self.settings.prometheus_period_seconds:
            return
        self.last_sample = time.monotonic()
        targets = self._gpu_targets(view, now)
        live = {key for key, _, _ in targets}
        for key in list(self.gpu_usage):
            if key not in live:
                del self.gpu_usage[key]  # finished attempts keep their last sample in status already
        self.sampler = asyncio.create_task(self._sample(targets))

    def params(self) -> CycleParams:
        s = self.settings
        return CycleParams(
            default_time_weight=s.default_time_weight,
            default_cost_weight=s.default_cost_weight,
            ageing_seconds=s.ageing_seconds,
            learning_rate=s.learning_rate,
            job_ttl_seconds=s.job_ttl_seconds,
            backoff_max_seconds=s.retry_backoff_max_seconds,
            backoff_seconds=s.retry_backoff_seconds,
            low_gpu_util_percent=s.gpu_util_low_percent,
        )

    def _fresh_tasks(self, bodies: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Overlay statuses this process wrote but the watch has not delivered yet.

        Without it a cycle right after a write would read the old status and decide again
        on the same facts (harmless, since Job names are deterministic, but noisy).
        """
        now = time.monotonic()
        out = []
        for body in bodies:
            meta = body.get("metadata", {})
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            cached = self.written.get(key)
            if cached is not None:
                at, rv, status = cached
                if meta.get("resourceVersion") == rv or now - at > _STATUS_CACHE_SECONDS:
                    self.written.pop(key, None)
                else:
                    body = {**body, "status": status}
            out.append(body)
        seen = {f"{b.get('metadata', {}).get('namespace')}/{b.get('metadata', {}).get('name')}" for b in out}
        for key in [k for k in self.written if k not in seen]:
            del self.written[key]  # the AITask is gone
        return out

    async def run(self, indexes: dict[str, kopf.Index[str, Any]], reason: str) -> None:
        try:
            await self._run(indexes, reason)
        except Exception:
            self.failures += 1
            raise
        self.failures = 0

    async def _run(self, indexes: dict[str, kopf.Index[str, Any]], reason: str) -> None:
        async with self.lock:
            start = time.perf_counter()
            self.last_run = time.monotonic()
            view = ClusterView(
                tasks=self._fresh_tasks(_values(indexes["aitask_index"])),
                jobs=[j for j in _values(indexes["job_index"]) if isinstance(j, JobView)],
                pods=[p for p in _values(indexes["pod_index"]) if isinstance(p, PodView)],
                nodes=_values(indexes["node_index"]),
                classes=_values(indexes["executorclass_index"]),
            )
            now = datetime.now(UTC)
            self.maybe_sample(view, now)
            view = replace(
                view, gpu_usage=dict(self.gpu_usage), telemetry=self.telemetry, telemetry_message=self.telemetry_message
            )
            outcome = await asyncio.to_thread(run_cycle, view, self.params(), now)
            await self.apply(outcome)
            duration = time.perf_counter() - start
            admitted: dict[str, int] = {}
            for cls_name, wait in outcome.stats.waits:
                admitted[cls_name] = admitted.get(cls_name, 0) + 1
                metrics.record_queue_wait(cls_name, wait)
            metrics.record_cycle(duration, admitted, outcome.stats.pending_by_class)
            metrics.record_task_phases(outcome.stats.tasks_by_phase)
            for _namespace, cls_name, actual, estimated, gpu_util in outcome.stats.observations:
                if estimated:
                    metrics.record_runtime(cls_name, estimated, actual)
                if gpu_util is not None:
                    metrics.record_gpu_utilization(cls_name, gpu_util)
            for warning in outcome.warnings:
                log.warning("%s", warning)
            if outcome.stats.admitted or any(t.status for t in outcome.tasks):
                log.info(
                    "cycle (%s): %d admitted, %d status writes in %.3fs",
                    reason,
                    outcome.stats.admitted,
                    sum(1 for t in outcome.tasks if t.status),
                    duration,
                )

    async def apply(self, outcome: CycleOutcome) -> None:
        """Create/delete Jobs, then one status write per task, then its Events."""
        for task in outcome.tasks:
            try:
                for manifest in task.create_jobs:
                    created = await kube.create_job(manifest)
                    if not created:
                        log.info("job %s/%s already existed", task.namespace, manifest["metadata"]["name"])
                for job in task.delete_jobs:
                    await kube.delete_job(task.namespace, job)
                if task.status is not None:
                    result = await kube.patch_task_status(task.namespace, task.name, task.status)
                    if result is None:
                        continue
                    rv = result.get("metadata", {}).get("resourceVersion", "")
                    self.written[f"{task.namespace}/{task.name}"] = (time.monotonic(), rv, task.status)
                    for cls_name, ended, estimated, actual in task.finished:
                        metrics.record_attempt(task.namespace, cls_name, _RESULT_LABEL.get(ended, "other"))
                        metrics.record_cost(task.namespace, cls_name, estimated or 0.0, actual)
                for cls_name, failed in task.retries:
                    metrics.record_retry(task.namespace, cls_name, _RESULT_LABEL.get(failed, "other"))
                for job in task.expire_jobs:
                    await kube.expire_job(task.namespace, job, self.settings.job_ttl_seconds)
                for event in task.events:
                    await kube.post_event(
                        namespace=task.namespace,
                        name=task.name,
                        uid=task.uid,
                        kind="AITask",
                        type_=event.type,
                        reason=event.reason,
                        message=event.message,
                    )
            except ApiException as err:
                # One task's trouble must not stop the others; the next cycle retries it.
                metrics.record_reconcile_error("AITask", f"api_{err.status}")
                log.warning("reconcile of %s/%s failed: %s %s", task.namespace, task.name, err.status, err.reason)
        for name, status in outcome.class_status.items():
            try:
                await kube.patch_class_status(name, status)
            except ApiException as err:
                metrics.record_reconcile_error("ExecutorClass", f"api_{err.status}")
                log.warning("status of ExecutorClass %s not written: %s", name, err.reason)


def engine(memo: kopf.Memo) -> Engine:
    """The operator's one Engine. Kopf hands each object a shallow copy of the global memo,
    so the Engine must be put there at start-up (see handlers.startup), never lazily here."""
    eng: Engine | None = getattr(memo, "engine", None)
    if eng is None:
        raise kopf.PermanentError("the scheduling engine was not initialised at start-up")
    return eng


async def _run_soon(eng: Engine, indexes: dict[str, kopf.Index[str, Any]], reason: str) -> None:
    await asyncio.sleep(0.2)  # coalesce a burst of watch events into one cycle
    eng.pending = None
    try:
        await eng.run(indexes, reason)
    except Exception:  # noqa: BLE001 - a detached task: nobody else would see it; the timer retries
        metrics.record_reconcile_error("Cycle", "unexpected")
        log.exception("scheduling cycle (%s) failed; the periodic cycle will try again", reason)


def poke(memo: kopf.Memo, indexes: dict[str, kopf.Index[str, Any]], reason: str) -> None:
    """Ask for a cycle soon; many pokes within the debounce window make one cycle."""
    eng = engine(memo)
    if eng.pending is None or eng.pending.done():
        eng.pending = asyncio.create_task(_run_soon(eng, indexes, reason))


def _indexes(kwargs: dict[str, Any]) -> dict[str, kopf.Index[str, Any]]:
    names = ("aitask_index", "executorclass_index", "job_index", "pod_index", "node_index")
    return {n: kwargs[n] for n in names}


@kopf.timer(
    GROUP,
    VERSION,
    "aitasks",
    interval=SETTINGS.scheduling_period_seconds,
    when=lambda status, **_: status.get("phase") not in _FINISHED,
)
async def aitask_tick(memo: kopf.Memo, **kwargs: Any) -> None:
    """Periodic cycle: ageing, backoff expiry and deadlines advance with time, not events."""
    eng = engine(memo)
    if time.monotonic() - eng.last_run >= SETTINGS.scheduling_period_seconds * 0.9:
        await eng.run(_indexes(kwargs), "period")


@kopf.on.event(GROUP, VERSION, "aitasks")
async def aitask_event(memo: kopf.Memo, type: str | None, **kwargs: Any) -> None:  # noqa: A002
    poke(memo, _indexes(kwargs), f"aitask {type or 'listed'}")


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_TASK: kopf.PRESENT})
async def job_event(memo: kopf.Memo, type: str | None, **kwargs: Any) -> None:  # noqa: A002
    poke(memo, _indexes(kwargs), f"job {type or 'listed'}")


@kopf.on.event("", "v1", "pods", labels={LABEL_TASK: kopf.PRESENT})
async def pod_event(memo: kopf.Memo, type: str | None, **kwargs: Any) -> None:  # noqa: A002
    poke(memo, _indexes(kwargs), f"pod {type or 'listed'}")


@kopf.on.event(GROUP, VERSION, "executorclasses")
async def executorclass_event(memo: kopf.Memo, type: str | None, **kwargs: Any) -> None:  # noqa: A002
    poke(memo, _indexes(kwargs), f"executorclass {type or 'listed'}")
