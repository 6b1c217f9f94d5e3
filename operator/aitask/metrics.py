"""Prometheus metrics of the operator, and the HTTP server that exposes them.

Call sites use the ``record_*`` / ``observe_*`` helpers only, never the metric
objects, so names, label sets and the bounding of label values live in one place
(as in Kueue's and JobSet's ``pkg/metrics/metrics.go``).

Label values are bounded: namespaces, executor class names, and small enums
(phases, results, reasons). Never a UID, a pod name or a user-chosen profile key:
per-profile learning lives in ``ExecutorClass.status.learned`` instead. Free-form
values that reach a label (``reason``, ``kind``, ``operation``) are reduced to
``[A-Za-z0-9_]`` and 63 characters; an attempt result outside
:data:`ATTEMPT_RESULTS` is recorded as ``other``.

Metrics live on a dedicated :data:`REGISTRY` (not prometheus_client's global one),
so that the operator's exposition holds only its own series and tests can build
an isolated :class:`OperatorMetrics` on a fresh ``CollectorRegistry``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder

from aitask import __version__

logger = logging.getLogger(__name__)

#: The operator's registry; ``serve_metrics`` exposes it by default.
REGISTRY = CollectorRegistry(auto_describe=True)

#: Values of the ``result`` label of ``aitask_subtask_attempts_total``.
ATTEMPT_RESULTS = frozenset(
    {"succeeded", "failed", "oom_killed", "deadline_exceeded", "stuck", "cancelled", "suspended", "preempted", "other"}
)

#: Values of the ``reason`` label of ``aitask_subtask_retries_total``.
RETRY_REASONS = frozenset({"failed", "oom_killed", "deadline_exceeded", "stuck", "other"})

#: Buckets for durations from a fraction of a second to a day.
_LONG_SECONDS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
#: Buckets for a scheduling cycle or one API request.
_SHORT_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Buckets for actual / estimated runtime; 1.0 is a perfect estimate.
_RATIO = (0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 4)
#: Buckets for a GPU utilisation in percent.
_PERCENT = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)

_LABEL_SAFE = re.compile(r"[^A-Za-z0-9_]")
_LABEL_MAX = 63


def _bounded(value: str, default: str = "unknown") -> str:
    """Reduce a free-form label value to a short identifier."""
    cleaned = _LABEL_SAFE.sub("_", value)[:_LABEL_MAX]
    return cleaned or default


def _result(value: str, allowed: frozenset[str]) -> str:
    normalised = value.strip().lower()
    return normalised if normalised in allowed else "other"


class OperatorMetrics:
    """All operator metrics, registered on one registry.

    The module-level helpers (``record_attempt`` ...) are the bound methods of the
    instance on :data:`REGISTRY`; tests build their own instance on a fresh registry.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._phase_keys: set[tuple[str, str]] = set()
        self._known_phases: set[str] = set()
        self._pending_classes: set[str] = set()

        self.info = Info("aitask_operator", "Version of the running operator.", registry=registry)
        self.info.info({"version": __version__})
        self.tasks = Gauge(
            "aitask_tasks",
            "AITasks by namespace and phase, as seen by the last reconcile of each.",
            ["namespace", "phase"],
            registry=registry,
        )
        self.attempts = Counter(
            "aitask_subtask_attempts_total",
            "Finished sub-task attempts (child Jobs) by result.",
            ["namespace", "class", "result"],
            registry=registry,
        )
        self.retries = Counter(
            "aitask_subtask_retries_total",
            "Sub-task attempts started as a retry of a failed one.",
            ["namespace", "class", "reason"],
            registry=registry,
        )
        self.cycle_seconds = Histogram(
            "aitask_scheduling_cycle_seconds",
            "Duration of one scheduling cycle's decision (parse, derive, schedule, statuses); its writes follow it.",
            buckets=_SHORT_SECONDS,
            registry=registry,
        )
        self.cycle_tasks = Counter(
            "aitask_cycle_tasks_total",
            "AITasks a cycle had to parse or derive again (the rest came from its cache), by step.",
            ["step"],
            registry=registry,
        )
        self.admitted = Counter(
            "aitask_admitted_subtasks_total",
            "Sub-tasks admitted (child Job created) by the scheduler, per executor class.",
            ["class"],
            registry=registry,
        )
        self.pending = Gauge(
            "aitask_pending_subtasks",
            "Ready sub-tasks waiting for admission at the end of the last cycle, per class.",
            ["class"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "aitask_queue_wait_seconds",
            "Time from a sub-task becoming ready to its admission, per class.",
            ["class"],
            buckets=_LONG_SECONDS,
            registry=registry,
        )
        self.runtime = Histogram(
            "aitask_subtask_runtime_seconds",
            "Observed runtime of successful sub-task attempts, per class.",
            ["class"],
            buckets=_LONG_SECONDS,
            registry=registry,
        )
        self.runtime_ratio = Histogram(
            "aitask_runtime_estimate_ratio",
            "Actual / estimated runtime of successful attempts (1 is a perfect estimate).",
            ["class"],
            buckets=_RATIO,
            registry=registry,
        )
        self.estimated_runtime = Counter(
            "aitask_estimated_runtime_seconds_total",
            "Sum of the runtime estimates of successful attempts (pairs with the actual sum).",
            ["class"],
            registry=registry,
        )
        self.actual_runtime = Counter(
            "aitask_actual_runtime_seconds_total",
            "Sum of the observed runtimes of successful attempts.",
            ["class"],
            registry=registry,
        )
        self.estimated_cost = Counter(
            "aitask_estimated_cost_total",
            "Estimated cost of finished attempts (the plan's, at admission), added when they end, in the price unit.",
            ["namespace", "class"],
            registry=registry,
        )
        self.actual_cost = Counter(
            "aitask_actual_cost_total",
            "Cost of finished attempts from their observed runtime, in the price unit.",
            ["namespace", "class"],
            registry=registry,
        )
        self.gpu_util = Histogram(
            "aitask_subtask_gpu_utilization_percent",
            "Average GPU utilisation of a finished attempt, from Prometheus feedback, per class.",
            ["class"],
            buckets=_PERCENT,
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "aitask_reconcile_errors_total",
            "Handler runs that ended in an error, by resource kind and reason.",
            ["kind", "reason"],
            registry=registry,
        )
        self.api_seconds = Histogram(
            "aitask_api_request_seconds",
            "Latency of calls to the Kubernetes API and to Prometheus.",
            ["target", "operation", "outcome"],
            buckets=_SHORT_SECONDS,
            registry=registry,
        )
        labels = ["namespace", "budget", "resource"]
        self.budget_limit = Gauge(
            "aitask_budget_limit",
            "An AITaskBudget's cap per period (resource: cost, acceleratorHours or acceleratorHours/<class>).",
            labels,
            registry=registry,
        )
        self.budget_spent = Gauge(
            "aitask_budget_spent",
            "Spent in the budget's current period, plus what running attempts are still expected to take.",
            labels,
            registry=registry,
        )
        self.budget_remaining = Gauge(
            "aitask_budget_remaining", "What the budget still allows in its current period.", labels, registry=registry
        )
        self._budget_keys: set[tuple[str, str, str]] = set()
        self.prometheus_up = Gauge(
            "aitask_prometheus_up",
            "1 when the last Prometheus feedback query succeeded, 0 when it failed.",
            registry=registry,
        )

    # -- tasks -----------------------------------------------------------------------------------

    def record_budgets(self, figures: Mapping[tuple[str, str, str], tuple[float, float, float]]) -> None:
        """Set the budget gauges: (namespace, budget, resource) -> (limit, spent, remaining); stale series go."""
        with self._lock:
            for key in self._budget_keys - set(figures):
                for gauge in (self.budget_limit, self.budget_spent, self.budget_remaining):
                    gauge.remove(*key)
            for key, (limit, spent, remaining) in figures.items():
                self.budget_limit.labels(*key).set(limit)
                self.budget_spent.labels(*key).set(spent)
                self.budget_remaining.labels(*key).set(remaining)
            self._budget_keys = set(figures)

    def record_task_phases(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set ``aitask_tasks`` to ``counts`` keyed by (namespace, phase).

        Phases seen before but absent now are set to 0 in every namespace still
        present; namespaces that are gone are removed, so no stale series remain.
        """
        with self._lock:
            namespaces = {namespace for namespace, _ in counts}
            self._known_phases.update(phase for _, phase in counts)
            new_keys = {(ns, phase) for ns in namespaces for phase in self._known_phases}
            for key in self._phase_keys - new_keys:
                self.tasks.remove(*key)
            for namespace, phase in new_keys:
                self.tasks.labels(namespace, phase).set(counts.get((namespace, phase), 0))
            self._phase_keys = new_keys

    def record_attempt(self, namespace: str, klass: str, result: str) -> None:
        """Count one finished attempt; ``result`` outside :data:`ATTEMPT_RESULTS` becomes ``other``."""
        self.attempts.labels(namespace, klass, _result(result, ATTEMPT_RESULTS)).inc()

    def record_retry(self, namespace: str, klass: str, reason: str) -> None:
        """Count one retry started on ``klass`` (the class of the new attempt)."""
        self.retries.labels(namespace, klass, _result(reason, RETRY_REASONS)).inc()

    # -- scheduler -------------------------------------------------------------------------------

    def record_cycle(self, duration_s: float, admitted: Mapping[str, int], pending_by_class: Mapping[str, int]) -> None:
        """Record one scheduling cycle.

        ``admitted`` counts the sub-tasks admitted in this cycle per class;
        ``pending_by_class`` the ready sub-tasks left waiting, keyed by the class the
        cost model prefers for them (``none`` when no class is feasible).
        Classes absent from ``pending_by_class`` are set to 0.
        """
        self.cycle_seconds.observe(max(duration_s, 0.0))
        for klass, count in admitted.items():
            if count > 0:
                self.admitted.labels(klass).inc(count)
        with self._lock:
            for klass in self._pending_classes - set(pending_by_class):
                self.pending.labels(klass).set(0)
            for klass, count in pending_by_class.items():
                self.pending.labels(klass).set(count)
            self._pending_classes |= set(pending_by_class)

    def record_cycle_work(self, parsed: int, derived: int) -> None:
        self.cycle_tasks.labels("parsed").inc(parsed)
        self.cycle_tasks.labels("derived").inc(derived)

    def record_queue_wait(self, klass: str, seconds: float) -> None:
        """Observe the time one sub-task waited between ready and admitted."""
        self.queue_wait.labels(klass).observe(max(seconds, 0.0))

    # -- feedback --------------------------------------------------------------------------------

    def record_runtime(self, klass: str, estimated_s: float, actual_s: float) -> None:
        """Observe a successful attempt's runtime against its estimate.

        The profile is deliberately not a label: it is a user-chosen string (unbounded);
        per-profile accuracy is in ``ExecutorClass.status.learned``.
        """
        actual = max(actual_s, 0.0)
        self.runtime.labels(klass).observe(actual)
        if estimated_s > 0:
            self.runtime_ratio.labels(klass).observe(actual / estimated_s)
            self.estimated_runtime.labels(klass).inc(estimated_s)
            self.actual_runtime.labels(klass).inc(actual)

    def record_cost(self, namespace: str, klass: str, estimated: float, actual: float | None) -> None:
        """Add a finished attempt's estimated cost and, when known, its actual cost."""
        if estimated > 0:
            self.estimated_cost.labels(namespace, klass).inc(estimated)
        if actual is not None and actual > 0:
            self.actual_cost.labels(namespace, klass).inc(actual)

    def record_gpu_utilization(self, klass: str, avg_percent: float) -> None:
        """Observe a finished attempt's average GPU utilisation (from Prometheus)."""
        self.gpu_util.labels(klass).observe(min(max(avg_percent, 0.0), 100.0))

    def record_prometheus_up(self, up: bool) -> None:
        """Record whether the last Prometheus feedback query succeeded."""
        self.prometheus_up.set(1 if up else 0)

    # -- errors and latency ----------------------------------------------------------------------

    def record_reconcile_error(self, kind: str, reason: str) -> None:
        """Count a failed handler run; ``reason`` is a Reason value or an exception class name."""
        self.reconcile_errors.labels(_bounded(kind), _bounded(reason)).inc()

    def observe_api_request(self, target: str, operation: str, seconds: float, ok: bool) -> None:
        """Observe one API call; the shape adapters accept as their ``observer`` hook."""
        self.api_seconds.labels(_bounded(target), _bounded(operation), "ok" if ok else "error").observe(
            max(seconds, 0.0)
        )

    @contextmanager
    def api_latency(self, target: str, operation: str) -> Iterator[None]:
        """Time the block as one call to ``target``; an exception escaping it counts as ``error``."""
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.observe_api_request(target, operation, time.perf_counter() - start, ok)


#: The operator's metrics; the helpers below are its bound methods.
METRICS = OperatorMetrics(REGISTRY)

record_task_phases = METRICS.record_task_phases
record_budgets = METRICS.record_budgets
record_attempt = METRICS.record_attempt
record_retry = METRICS.record_retry
record_cycle = METRICS.record_cycle
record_queue_wait = METRICS.record_queue_wait
record_cycle_work = METRICS.record_cycle_work
record_runtime = METRICS.record_runtime
record_cost = METRICS.record_cost
record_gpu_utilization = METRICS.record_gpu_utilization
record_prometheus_up = METRICS.record_prometheus_up
record_reconcile_error = METRICS.record_reconcile_error
observe_api_request = METRICS.observe_api_request
api_latency = METRICS.api_latency


# -- HTTP server ---------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Serves /metrics, /healthz and /readyz; configured through class attributes of a subclass."""

    registry: ClassVar[CollectorRegistry]
    health: ClassVar[Callable[[], bool]]
    ready: ClassVar[Callable[[], bool]]
    server_version = "aitask-metrics"

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            # Negotiates OpenMetrics or the text format from Accept (0.0.4 when absent).
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(HTTPStatus.OK, encoder(self.registry), content_type)
        elif path in ("/healthz", "/livez"):
            self._probe(type(self).health)
        elif path == "/readyz":
            self._probe(type(self).ready)
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")

    def _probe(self, check: Callable[[], bool]) -> None:
        if check():
            self._reply(HTTPStatus.OK, b"ok\n")
        else:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b"unhealthy\n")

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        logger.debug("metrics server: " + format, *args)  # noqa: G003 - stdlib hands us a %-format


class MetricsServer:
    """A running metrics server; :meth:`stop` shuts it down and closes the socket."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __call__(self) -> None:
        self.stop()


def serve_metrics(
    host: str,
    port: int,
    health: Callable[[], bool],
    *,
    ready: Callable[[], bool] | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` (liveness, ``health``) and ``/readyz`` (``ready`` or ``health``).

    Runs in a daemon thread. The returned object is callable: calling it stops the
    server (``stop = serve_metrics(...); ...; stop()``); ``.port`` is the bound port.
    """
    handler = type(
        "MetricsHandler",
        (_Handler,),
        {
            "registry": registry,
            "health": staticmethod(health),
            "ready": staticmethod(ready if ready is not None else health),
        },
    )
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.1,), name="aitask-metrics", daemon=True)
    thread.start()
    logger.info("Serving metrics on http://%s:%d/metrics", host, httpd.server_address[1])
    return MetricsServer(httpd, thread)
