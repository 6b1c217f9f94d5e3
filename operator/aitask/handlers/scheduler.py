"""The scheduling loop's driver: indexes -> control.cycle (pure) -> API writes.

Reads. Informers (adapters.watch) list and watch AITasks, ExecutorClasses, our Jobs, pods and
nodes, and keep small views of them (handlers.indexes). Kopf runs the peering, start-up and
one daemon per ExecutorClass; it no longer handles each object, so start-up does not grow
with the square of the objects and finished AITasks cost nothing.

Triggers. A change of an AITask, an ExecutorClass, one of our Jobs or their pods asks for a
cycle (``poke``); pokes within the debounce window make one cycle, and a poke during a cycle
makes exactly one more. Time-based changes (backoff expiry, deadlines, ageing, capacity of
other workloads) are served by one periodic cycle from the ExecutorClass daemons. Cycles run
only while the gate is open: in standalone mode always, with peering while Kopf lets this
replica run its daemons (they stop when another peer is active), and never before every
informer has listed once (a partial view would mistake unseen Jobs for lost ones).

Writes. A cycle only computes (under the lock); its writes go out afterwards, up to
``api_concurrency`` API calls at a time, each task's in order: Jobs created or deleted, then its
one status write, then its TTLs and Events. Calls waiting for a slot are served by arrival plus
rank x 5 s (Jobs, then statuses, then the rest), so in a burst the Jobs do not queue behind other
tasks' statuses and Events, and no write waits behind newer ones for longer than that.
What a cycle decided is overlaid on the task's status
until the watch shows it, so the next cycle (which may run while writes are in flight)
decides from it; a write that fails drops the overlay and every later decision made from
it, and the next cycle decides again from what the cluster shows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from aitask import metrics
from aitask.adapters import kube
from aitask.adapters.prom import PrometheusClient, PrometheusUnavailable, pod_regex_for_pods
from aitask.adapters.slots import RankedSlots
from aitask.adapters.watch import Informers
from aitask.api.v1alpha1 import GROUP, VERSION
from aitask.control.cycle import (
    ClusterView,
    CycleCache,
    CycleOutcome,
    CycleParams,
    FinishedTask,
    TaskOutcome,
    run_cycle,
    task_key,
)
from aitask.core.observed import JobView, PodView, QuotaView
from aitask.handlers import peering
from aitask.settings import OperatorSettings, load_settings

log = logging.getLogger("aitask.scheduler")
SETTINGS = load_settings()
# A decided status stays overlaid until the watch shows it (or anything newer); this long at most.
_STATUS_CACHE_SECONDS = 300.0
# A Job patch (TTL) or delete already sent is not sent again this soon while the watch catches up.
_RESEND_SECONDS = 120.0
# A Job we created and the watch has not shown: forgotten (taken as lost) after this long.
_UNSEEN_SECONDS = 600.0
MAX_FAILED_CYCLES = 5
DEBOUNCE_SECONDS = 0.05
# A Job the API server refuses with these codes will be refused again: the task becomes Invalid.
_REJECTED = (400, 422)
LEGACY_FINALIZER = "aitask.dev/finalizer"


# Ranks of API writes (lower goes first when calls queue for a slot): what a user waits for first.
RANK_JOBS = 0  # workspace claims, Job creates and deletes
RANK_STATUS = 1  # AITask status writes
RANK_AFTER = 2  # Job TTLs, Events, ExecutorClass and AITaskBudget statuses


@dataclass
class _Held:
    """The rank of the API slot a writer holds; None between two (it holds none)."""

    rank: int | None


def _first_rank(out: TaskOutcome) -> int:
    if out.create_claims or out.create_jobs or out.delete_jobs:
        return RANK_JOBS
    return RANK_STATUS if out.status is not None else RANK_AFTER


def _values(index: kopf.Index[str, Any] | Mapping[str, Any]) -> list[Any]:
    store = index.get("all")
    return list(store) if store is not None else []


@dataclass
class _Overlay:
    status: dict[str, Any]
    serial: int
    at: float
    written_rv: str | None = None  # None while the write is in flight


@dataclass
class Engine:
    """One cycle at a time, the status overlay, the write pipeline and the GPU sampler."""

    settings: OperatorSettings
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_run: float = 0.0
    last_duration: float = 0.0  # seconds the last cycle computed (the gap before the next follows it)
    last_end: float = 0.0  # monotonic time the last cycle's computation ended
    cycles: int = 0  # cycles completed since start (readiness waits for the first)
    runner: asyncio.Task[None] | None = None
    dirty: bool = False
    dirty_reason: str = ""
    written: dict[str, _Overlay] = field(default_factory=dict)
    cache: CycleCache = field(default_factory=CycleCache)
    rejected: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    inflight: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # one writer per task key
    queued: dict[str, tuple[TaskOutcome, int, set[int]]] = field(default_factory=dict)  # waiting writes
    failed_serials: set[int] = field(default_factory=set)
    serial: int = 0
    writers: RankedSlots | None = None  # API calls in flight (settings.api_concurrency), by rank
    # GPU feedback: sampled in the background so a slow Prometheus never delays a cycle.
    gpu_usage: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    telemetry: str = "disabled"
    telemetry_message: str = ""
    last_sample: float = 0.0
    sampler: asyncio.Task[None] | None = None
    prom: PrometheusClient | None = None
    failures: int = 0  # consecutive failed cycles; /healthz fails past MAX_FAILED_CYCLES
    standalone: bool = True  # no peering: the gate is always open
    peering: tuple[str, tuple[str, ...], str, int] = ("", (), "", 0)  # (name, scopes, identity, priority)
    periodic_task: asyncio.Task[None] | None = None
    informers: Informers | None = None
    finalizers_removed: set[str] = field(default_factory=set)
    legacy_cleanup: asyncio.Task[None] | None = None  # background removal of the old finalizer
    legacy_done: bool = False  # a scan found no AITask left with it
    sent: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (verb, ns, job) -> when
    created: dict[tuple[str, str], float] = field(default_factory=dict)  # (ns, job) created, not seen yet
    budget_written: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # last budget statuses
    wakeup: asyncio.TimerHandle | None = None  # the cycle at stats.next_wakeup, when sooner than the period
    settled: bool = False  # the last cycle found nothing in play and wrote nothing (the idle resync applies)

    def healthy(self) -> bool:
        """Liveness: a few failed cycles in a row (an API outage, a bug) make a restart worthwhile."""
        return self.failures < MAX_FAILED_CYCLES

    def may_act(self) -> bool:
        """Peering: no other live replica has a priority as high as ours (Kopf's rule, on Kopf's objects)."""
        if self.standalone:
            return True
        if self.informers is None:
            return False
        name, scopes, identity, priority = self.peering
        return peering.may_act(
            self.informers.values("peerings"),
            name=name,
            scopes=scopes,
            identity=identity,
            priority=priority,
            now=datetime.now(UTC),
        )

    def active(self) -> bool:
        """Whether this replica may act now and has the whole cluster listed."""
        synced = self.informers is None or self.informers.synced
        return synced and self.may_act()

    def ready(self) -> bool:
        """Readiness: everything listed, and the first cycle has run (or this replica is a standby)."""
        synced = self.informers is None or self.informers.synced
        return synced and self.healthy() and (self.cycles > 0 or not self.may_act())

    async def periodic(self) -> None:
        """The periodic cycle: ageing, backoff expiry, deadlines and other workloads' pods move with time."""
        period = self.settings.scheduling_period_seconds
        while True:
            await asyncio.sleep(period / 2)
            if time.monotonic() - self.last_run >= self.period() * 0.9:
                self.poke("period")

    def period(self) -> float:
        """Seconds between periodic cycles: the scheduling period, or the idle resync while settled."""
        if self.settled and self.settings.idle_resync_seconds > 0 and self.quiet():
            return max(self.settings.scheduling_period_seconds, self.settings.idle_resync_seconds)
        return self.settings.scheduling_period_seconds

    def quiet(self) -> bool:
        """No write of ours queued, in flight or still to be seen by the watch."""
        return not (self.queued or self.inflight or self.written or self.created)

    def sources(self) -> dict[str, Mapping[str, Any]]:
        """The informers' stores in the shape ``run`` reads."""
        inf = self.informers
        if inf is None:
            raise RuntimeError("the informers were not started")
        return {
            "aitask_index": {"all": inf.values("aitasks")},
            "executorclass_index": {"all": inf.values("executorclasses")},
            "job_index": {"all": inf.values("jobs")},
            "pod_index": {"all": inf.values("pods")},
            "node_index": {"all": inf.values("nodes")},
            "quota_index": {"all": inf.values("resourcequotas")},
            "budget_index": {"all": inf.values("aitaskbudgets")},
        }

    def changed(self, kind: str, old: Any, new: Any) -> None:
        """An informer saw a change: the ones that can change a decision ask for a cycle."""
        if kind == "peerings":
            self.poke("peering")  # may let this replica act (a peer left); the runner checks the gate
            return
        if kind == "nodes":
            return  # capacity is refreshed by the periodic cycle; a node's heartbeat is not news
        if kind == "pods" and not (getattr(old, "managed", False) or getattr(new, "managed", False)):
            return  # other workloads' pods: the periodic cycle counts them
        self.poke(f"{kind} changed")

    def __post_init__(self) -> None:
        if self.settings.prometheus_url:
            self.prom = PrometheusClient(
                self.settings.prometheus_url,
                self.settings.prometheus_timeout_seconds,
                observer=lambda op, seconds, ok: metrics.observe_api_request("prometheus", op, seconds, ok),
            )

    # ------------------------------------------------------------------ GPU feedback

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

    # ------------------------------------------------------------------ the cycle

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
            stuck_after_seconds=s.stuck_after_seconds,
            low_gpu_util_percent=s.gpu_util_low_percent,
            kueue_default_queue=s.kueue_default_queue if s.kueue_enabled else None,
            preemption=s.preemption,
            preempt_min_run_seconds=s.preempt_min_run_seconds,
            preempt_factor=s.preempt_factor,
            migrate_factor=s.migrate_factor,
        )

    def _fresh_tasks(self, entries: Iterable[Any]) -> tuple[list[dict[str, Any]], list[FinishedTask], dict[str, int]]:
        """Split the index into task bodies and finished records; overlay statuses decided but not seen yet.

        Returns the bodies, the finished records and, per overlaid task, the serial of the
        overlay it carries (a decision made from an overlay is dropped if that overlay's write fails).
        """
        now = time.monotonic()
        bodies: list[dict[str, Any]] = []
        finished: list[FinishedTask] = []
        based: dict[str, int] = {}
        seen: set[str] = set()
        for entry in entries:
            if isinstance(entry, FinishedTask):
                key = f"{entry.namespace}/{entry.name}"
                seen.add(key)
                over = self.written.get(key)
                if over is not None and over.written_rv is None:
                    continue  # finished per the watch, but a decision about it is still being written
                self.written.pop(key, None)
                finished.append(entry)
                continue
            meta = entry.get("metadata", {})
            key = task_key(entry)
            seen.add(key)
            over = self.written.get(key)
            if over is not None:
                caught_up = over.written_rv is not None and _at_least(meta.get("resourceVersion"), over.written_rv)
                expired = over.written_rv is not None and now - over.at > _STATUS_CACHE_SECONDS
                if caught_up or expired:
                    self.written.pop(key, None)
                else:
                    entry = {**entry, "status": over.status}
                    based[key] = over.serial
            bodies.append(entry)
        for key in [k for k in self.written if k not in seen]:
            del self.written[key]  # the AITask is gone
        for key in [k for k in self.rejected if k not in seen]:
            del self.rejected[key]
        return bodies, finished, based

    async def run(self, indexes: Mapping[str, Any], reason: str) -> None:
        """One cycle, returning when its writes are done (the loop itself does not wait for them)."""
        writes = await self.cycle(indexes, reason)
        if writes:
            await asyncio.gather(*writes, return_exceptions=True)

    async def cycle(self, indexes: Mapping[str, Any], reason: str) -> list[asyncio.Task[None]]:
        """Compute one cycle and start its writes; counts consecutive failures for liveness."""
        try:
            writes = await self._run(indexes, reason)
        except Exception:
            self.failures += 1
            self.settled = False
            raise
        self.failures = 0
        return writes

    async def _run(self, indexes: Mapping[str, Any], reason: str) -> list[asyncio.Task[None]]:
        async with self.lock:
            start = time.perf_counter()
            self.last_run = time.monotonic()
            bodies, finished, based = self._fresh_tasks(_values(indexes["aitask_index"]))
            view = ClusterView(
                tasks=bodies,
                finished=finished,
                jobs=[j for j in _values(indexes["job_index"]) if isinstance(j, JobView)],
                pods=[p for p in _values(indexes["pod_index"]) if isinstance(p, PodView)],
                nodes=_values(indexes["node_index"]),
                classes=_values(indexes["executorclass_index"]),
                rejected=dict(self.rejected),
                quotas=[q for q in _values(indexes.get("quota_index", {})) if isinstance(q, QuotaView)],
                budgets=_values(indexes.get("budget_index", {})),
            )
            view = replace(view, unseen_jobs=self._unseen(view.jobs))
            now = datetime.now(UTC)
            self.maybe_sample(view, now)
            view = replace(
                view, gpu_usage=dict(self.gpu_usage), telemetry=self.telemetry, telemetry_message=self.telemetry_message
            )
            outcome = await asyncio.to_thread(run_cycle, view, self.params(), now, self.cache)
            writes = self._dispatch(outcome, based)
            self.settled = outcome.stats.settled and not writes
            self._wake_at(outcome.stats.next_wakeup, now)
            self.cycles += 1
            self.last_duration = time.perf_counter() - start
            self.last_end = time.monotonic()
            self._record(outcome, self.last_duration, reason)
            return writes

    def _record(self, outcome: CycleOutcome, duration: float, reason: str) -> None:
        admitted: dict[str, int] = {}
        for adm in outcome.stats.waits:
            admitted[adm.class_name] = admitted.get(adm.class_name, 0) + 1
            metrics.record_queue_wait(adm.class_name, adm.waited_seconds)
        metrics.record_cycle(duration, admitted, outcome.stats.pending_by_class)
        metrics.record_cycle_work(outcome.stats.parsed, outcome.stats.derived)
        metrics.record_task_phases(outcome.stats.tasks_by_phase)
        figures: dict[tuple[str, str, str], tuple[float, float, float]] = {}
        for (namespace, name), use in outcome.budgets.items():
            for resource, limit in use.limit.hard.items():
                spent = use.limit.used.get(resource, 0.0)
                figures[(namespace, name, resource)] = (limit, spent, max(0.0, limit - spent))
        metrics.record_budgets(figures)
        for run in outcome.stats.observations:
            if run.estimated_seconds:
                metrics.record_runtime(run.class_name, run.estimated_seconds, run.actual_seconds)
            if run.gpu_util is not None:
                metrics.record_gpu_utilization(run.class_name, run.gpu_util)
        for isolated in outcome.stats.errors:
            metrics.record_reconcile_error("AITask", "isolated")
            log.error(
                "AITask %s isolated from the cycle: %s (see its InternalError condition)", isolated.task, isolated.error
            )
        for warning in outcome.warnings:
            log.warning("%s", warning)
        writes = sum(1 for t in outcome.tasks if t.status)
        if outcome.stats.admitted or writes:
            log.info(
                "cycle (%s): %d admitted, %d status writes, %d parsed, %d derived in %.3fs",
                reason,
                outcome.stats.admitted,
                writes,
                outcome.stats.parsed,
                outcome.stats.derived,
                duration,
            )

    def _unseen(self, jobs: Iterable[JobView]) -> dict[str, frozenset[str]]:
        """Jobs this process created that the watch has not delivered yet (forgotten once seen)."""
        if not self.created:
            return {}
        seen = {(j.namespace, j.name) for j in jobs}
        now = time.monotonic()
        for key in [k for k, at in self.created.items() if k in seen or now - at > _UNSEEN_SECONDS]:
            del self.created[key]
        out: dict[str, set[str]] = {}
        for ns, name in self.created:
            out.setdefault(ns, set()).add(name)
        return {ns: frozenset(names) for ns, names in out.items()}

    def _once(self, verb: str, namespace: str, job: str) -> bool:
        """True when this Job write was not sent recently (the watch may not show its effect yet)."""
        now = time.monotonic()
        if len(self.sent) > 10_000:
            self.sent = {k: at for k, at in self.sent.items() if now - at <= _RESEND_SECONDS}
        at = self.sent.get((verb, namespace, job))
        if at is not None and now - at <= _RESEND_SECONDS:
            return False
        self.sent[(verb, namespace, job)] = now
        return True

    # ------------------------------------------------------------------ writes

    def _dispatch(self, outcome: CycleOutcome, based: Mapping[str, int]) -> list[asyncio.Task[None]]:
        """Queue the writes of every task that has any; overlay each decided status at once.

        Each task has at most one write in flight and one waiting: a newer decision for a task
        whose write has not started yet is merged into it (its status supersedes the older one,
        which it was decided from; Jobs, deletes, TTLs and Events add up), so a busy cluster
        costs fewer writes, not a growing queue.
        """
        tasks: list[asyncio.Task[None]] = []
        for out in outcome.tasks:
            if not out.writes and not out.events:
                continue
            serial = 0
            if out.status is not None:
                self.serial += 1
                serial = self.serial
                self.written[out.key] = _Overlay(status=out.status, serial=serial, at=time.monotonic())
            base = based.get(out.key)
            waiting = self.queued.get(out.key)
            if waiting is not None:
                older, older_serial, bases = waiting
                self.queued[out.key] = (_merge(older, out), serial or older_serial, bases)
            else:
                self.queued[out.key] = (out, serial, {base} if base is not None else set())
            worker = self.inflight.get(out.key)
            if worker is None or worker.done():
                worker = asyncio.create_task(self._writer(out.key))
                self.inflight[out.key] = worker
                worker.add_done_callback(functools.partial(self._done, out.key))
            tasks.append(worker)
        if outcome.class_status:
            tasks.append(asyncio.create_task(self._write_classes(outcome.class_status)))
        budgets = {k: v for k, v in outcome.budget_status.items() if self.budget_written.get(k) != v}
        if budgets:
            self.budget_written.update(budgets)
            tasks.append(asyncio.create_task(self._write_budgets(budgets)))
        return tasks

    def _done(self, key: str, task: asyncio.Task[None]) -> None:
        if self.inflight.get(key) is task:
            del self.inflight[key]

    def _abandon(self, out: TaskOutcome, serial: int) -> None:
        over = self.written.get(out.key)
        if over is not None and over.serial == serial:
            del self.written[out.key]
        if serial:
            self.failed_serials.add(serial)

    async def _writer(self, key: str) -> None:
        """Write what is queued for one task, oldest first, until nothing is.

        Each step of a task's writes takes an API slot of its own rank (``RANK_*``), served as if it
        had arrived rank x 5 s later (``RankedSlots``): in a burst the Jobs go out ahead of the statuses
        and Events queued in the last seconds, and nothing waits behind newer work for longer. One
        task's steps still go in order. What is queued for the task is taken when its first slot is
        granted, so decisions that arrive while it waits merge.
        """
        slots = self._slots()
        while key in self.queued:
            rank = _first_rank(self.queued[key][0])
            await slots.acquire(rank)
            held = _Held(rank)
            try:
                waiting = self.queued.pop(key, None)
                if waiting is None:
                    return
                out, serial, bases = waiting
                if bases & self.failed_serials:
                    self._abandon(out, serial)  # decided from a status that never reached the API server
                    continue
                await self._write_one(out, serial, held)
            finally:
                if held.rank is not None:
                    slots.release()

    def _slots(self) -> RankedSlots:
        if self.writers is None:
            self.writers = RankedSlots(self.settings.api_concurrency)
        return self.writers

    async def _step(self, held: _Held, rank: int) -> None:
        """Trade the writer's slot for one of ``rank`` (kept when it is of that rank already)."""
        if held.rank == rank:
            return
        slots = self._slots()
        slots.release()
        held.rank = None
        await slots.acquire(rank)
        held.rank = rank

    async def _write_one(self, out: TaskOutcome, serial: int, held: _Held) -> None:
        try:
            await self._write_steps(out, serial, held)
        except ApiException as err:
            # One task's trouble must not stop the others; the next cycle decides again.
            self._abandon(out, serial)
            metrics.record_reconcile_error("AITask", f"api_{err.status}")
            log.warning("writes of %s failed: %s %s", out.key, err.status, err.reason)
        except Exception:  # noqa: BLE001 - a bug in one task's writes must not go unseen or stop others
            self._abandon(out, serial)
            metrics.record_reconcile_error("AITask", "write_error")
            log.exception("writes of %s failed; the next cycle decides again", out.key)

    async def _write_steps(self, out: TaskOutcome, serial: int, held: _Held) -> None:
        """The task's writes in order: claims and Jobs, deletes, the status, TTLs, Events."""
        for claim in out.create_claims:
            if not await self._create_claim(out, claim):
                self._abandon(out, serial)
                return
        for manifest in out.create_jobs:
            if not await self._create(out, manifest):
                self._abandon(out, serial)
                return
        for job in out.delete_jobs:
            if self._once("delete", out.namespace, job):
                await kube.delete_job(out.namespace, job)
        if out.status is not None:
            await self._step(held, RANK_STATUS)
            result = await kube.patch_task_status(out.namespace, out.name, out.status)
            if result is None:
                self._abandon(out, serial)
                return
            over = self.written.get(out.key)
            if over is not None and over.serial == serial:
                over.written_rv = result.get("metadata", {}).get("resourceVersion", "")
                over.at = time.monotonic()
            for ended in out.finished:
                metrics.record_attempt(out.namespace, ended.class_name, ended.result.label)
                metrics.record_cost(out.namespace, ended.class_name, ended.estimated_cost or 0.0, ended.actual_cost)
        for retry in out.retries:
            metrics.record_retry(out.namespace, retry.class_name, retry.after.label)
        if out.expire_jobs or out.events:
            await self._step(held, RANK_AFTER)
        for job in out.expire_jobs:
            if self._once("expire", out.namespace, job):
                await kube.expire_job(out.namespace, job, self.settings.job_ttl_seconds)
        for event in out.events:
            await kube.post_event(
                namespace=out.namespace,
                name=out.name,
                uid=out.uid,
                kind="AITask",
                type_=event.type,
                reason=event.reason,
                message=event.message,
            )

    async def _create_claim(self, out: TaskOutcome, claim: Mapping[str, Any]) -> bool:
        """Create the task's workspace claim (409: it exists); False when the API server refuses it."""
        try:
            await kube.create_claim(claim)
        except ApiException as err:
            if err.status not in _REJECTED:
                raise
            message = (
                f"the API server refused the workspace claim {claim['metadata']['name']}: {kube.error_message(err)}"
            )
            log.warning("%s: %s", out.key, message)
            self.rejected[out.key] = (out.generation, message)
            return False
        return True

    async def _create(self, out: TaskOutcome, manifest: Mapping[str, Any]) -> bool:
        """Create one Job; False when the decision that asked for it must not be recorded."""
        name = manifest["metadata"]["name"]
        self.created[(out.namespace, name)] = time.monotonic()
        try:
            created = await kube.create_job(manifest)
        except ApiException as err:
            if err.status not in _REJECTED:
                self.created.pop((out.namespace, name), None)
                raise
            message = f"the API server refused the child Job {name}: {kube.error_message(err)}"
            log.warning("%s: %s", out.key, message)
            self.rejected[out.key] = (out.generation, message)
            self.created.pop((out.namespace, name), None)
            return False
        except (ValueError, TypeError) as err:  # the client's own validation of the manifest (pydantic)
            message = f"the child Job {name} is not a valid Job: {str(err)[:800]}"
            log.warning("%s: %s", out.key, message)
            self.rejected[out.key] = (out.generation, message)
            self.created.pop((out.namespace, name), None)
            return False
        if created:
            return True
        # 409: the Job exists. Ours, of the class we chose: the same decision again, record it.
        existing = await kube.read_job(out.namespace, name)
        labels = manifest["metadata"]["labels"]
        theirs = (existing or {}).get("metadata", {}).get("labels") or {}
        if all(theirs.get(k) == v for k, v in labels.items()):
            return True
        # Another class (or not ours): record nothing now; the next cycle adopts what really runs.
        log.info("job %s/%s already exists with other labels %s; adopting it next cycle", out.namespace, name, theirs)
        return False

    async def _write_classes(self, statuses: Mapping[str, dict[str, Any]]) -> None:
        for name, status in statuses.items():
            try:
                async with self._slots().slot(RANK_AFTER):
                    await kube.patch_class_status(name, status)
            except ApiException as err:
                metrics.record_reconcile_error("ExecutorClass", f"api_{err.status}")
                log.warning("status of ExecutorClass %s not written: %s", name, err.reason)

    async def _write_budgets(self, statuses: Mapping[tuple[str, str], dict[str, Any]]) -> None:
        for (namespace, name), status in statuses.items():
            try:
                async with self._slots().slot(RANK_AFTER):
                    await kube.patch_budget_status(namespace, name, status)
            except ApiException as err:
                self.budget_written.pop((namespace, name), None)
                metrics.record_reconcile_error("AITaskBudget", f"api_{err.status}")
                log.warning("status of AITaskBudget %s/%s not written: %s", namespace, name, err.reason)

    def _clean_legacy_finalizers(self) -> None:
        """Start (in the background, never in the way of a cycle) the removal of the old finalizer."""
        if self.legacy_done or self.informers is None:
            return
        if self.legacy_cleanup is None or self.legacy_cleanup.done():
            self.legacy_cleanup = asyncio.create_task(self._finalizers())

    async def _finalizers(self) -> None:
        """AITasks from operator versions that kept a Kopf finalizer on them: remove it, once each.

        Without it nothing here blocks their deletion; left in place, deleting one would hang
        now that Kopf no longer handles AITasks. New AITasks never get it, so once a scan finds
        none left, the scans stop.
        """
        if self.informers is None:
            return
        left = False
        for entry in self.informers.values("aitasks"):
            if isinstance(entry, FinishedTask):
                ns, name, uid, finalizers = entry.namespace, entry.name, entry.uid, entry.finalizers
            else:
                meta = entry.get("metadata") or {}
                ns, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
                finalizers = tuple(meta.get("finalizers") or ())
            if LEGACY_FINALIZER not in finalizers:
                continue
            left = True
            if uid in self.finalizers_removed:
                continue  # removed; the informer has not shown it yet
            try:
                await kube.remove_finalizer(ns, name, LEGACY_FINALIZER, list(finalizers))
                self.finalizers_removed.add(uid)
            except ApiException as err:
                log.warning("could not remove %s from %s/%s: %s", LEGACY_FINALIZER, ns, name, err.reason)
        self.legacy_done = not left

    async def drain(self) -> None:
        """Wait for every write in flight (tests, shutdown)."""
        while self.inflight:
            await asyncio.gather(*list(self.inflight.values()), return_exceptions=True)

    # ------------------------------------------------------------------ triggers

    def _wake_at(self, when: datetime | None, now: datetime) -> None:
        """A cycle at the earliest time a task waits for (a backoff, a deadline, a stuck threshold, a budget
        period), when that comes before the next periodic cycle; one timer, replaced by each cycle."""
        if self.wakeup is not None:
            self.wakeup.cancel()
            self.wakeup = None
        if when is None:
            return
        delay = (when - now).total_seconds()
        if 0 <= delay < self.period():
            self.wakeup = asyncio.get_running_loop().call_later(delay + 0.01, self.poke, "wake-up")

    def poke(self, reason: str) -> None:
        """Ask for a cycle soon: pokes within the debounce window, or during a cycle, make one more cycle."""
        self.dirty = True
        self.dirty_reason = reason
        if self.runner is None or self.runner.done():
            self.runner = asyncio.create_task(self._runner())

    def gap(self) -> float:
        """Seconds to wait before the next cycle: the debounce, or a share of the last cycle's duration.

        The cycle computes in a thread that holds the interpreter for most of its run; back to back
        in a burst, the writes and the watches (the same process) got what little was left, so Jobs
        went out slower and each cycle found more tasks in play. A gap of ``cycle_gap_ratio`` x the
        last cycle's duration (at most one scheduling period), counted from its end, leaves them their
        share, and the next cycle takes everything that arrived meanwhile at once. A poke long after
        the last cycle waits only the debounce.
        """
        paced = min(self.settings.cycle_gap_ratio * self.last_duration, self.settings.scheduling_period_seconds)
        return max(DEBOUNCE_SECONDS, paced - (time.monotonic() - self.last_end))

    async def _runner(self) -> None:
        while self.dirty:
            await asyncio.sleep(self.gap())  # coalesce a burst of watch events into one cycle
            if not self.active():
                if self.informers is not None and not self.informers.synced:
                    continue  # still listing: keep the request, look again after the debounce
                self.dirty = False  # a standby: the active peer acts; the periodic loop looks again
                return
            self.dirty = False
            self._clean_legacy_finalizers()
            try:
                await self.cycle(self.sources(), self.dirty_reason)
            except Exception:  # noqa: BLE001 - a detached task: nobody else would see it; the timer retries
                metrics.record_reconcile_error("Cycle", "unexpected")
                log.exception("scheduling cycle (%s) failed; the periodic cycle will try again", self.dirty_reason)


def _merge(older: TaskOutcome, newer: TaskOutcome) -> TaskOutcome:
    """Two decisions for one task not written yet, as one: the newer status, everything else added up."""
    names = {m["metadata"]["name"] for m in older.create_jobs}
    return replace(
        newer,
        status=newer.status if newer.status is not None else older.status,
        create_jobs=older.create_jobs + tuple(m for m in newer.create_jobs if m["metadata"]["name"] not in names),
        create_claims=newer.create_claims or older.create_claims,
        delete_jobs=tuple(dict.fromkeys(older.delete_jobs + newer.delete_jobs)),
        expire_jobs=tuple(dict.fromkeys(older.expire_jobs + newer.expire_jobs)),
        events=older.events + newer.events,
        finished=older.finished + newer.finished,
        retries=older.retries + newer.retries,
    )


def _at_least(version: str | None, wanted: str) -> bool:
    """Whether the watch shows ``wanted`` or a later resourceVersion.

    Equal is exact. resourceVersions are opaque, but the API server's are etcd revisions, whole
    numbers that only grow; a relist can skip straight past ours, so a larger number counts too.
    """
    if version is None:
        return False
    if version == wanted:
        return True
    try:
        return int(version) > int(wanted)
    except ValueError:
        return False


def engine(memo: kopf.Memo) -> Engine:
    """The operator's one Engine. Kopf hands each object a shallow copy of the global memo,
    so the Engine must be put there at start-up (see handlers.startup), never lazily here."""
    eng: Engine | None = getattr(memo, "engine", None)
    if eng is None:
        raise kopf.PermanentError("the scheduling engine was not initialised at start-up")
    return eng


@kopf.on.event(GROUP, VERSION, "executorclasses")
async def executorclass_event(memo: kopf.Memo, type: str | None, **_: Any) -> None:  # noqa: A002
    """Kopf's one resource handler: it keeps Kopf (and its peering) running; the informers do the reading."""
    engine(memo).poke(f"executorclass {type or 'listed'}")
