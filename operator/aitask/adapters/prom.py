"""Prometheus feedback: GPU utilisation and memory of running sub-tasks, GPU load per node and class.

The only module that queries Prometheus. Two halves:

- Pure query builders (``*_query``, ``pod_regex_*``) that return PromQL strings;
  unit tested, and readable in ``docs/telemetry.md``.
- :class:`PrometheusClient`, a thin client over prometheus-api-client's
  ``PrometheusConnect`` with a per-request timeout, no retries, and one exception
  type, :class:`PrometheusUnavailable`, for every failure (connection refused,
  timeout, HTTP error, malformed answer). The caller turns it into a
  ``MetricsUnavailable`` condition and carries on: feedback is best effort and
  must never block reconciliation.

Metric names are the DCGM exporter's (``DCGM_FI_DEV_GPU_UTIL`` in %,
``DCGM_FI_DEV_FB_USED`` in MiB), which the ``aitask agent`` also exports. The
workload's pod is in ``pod``/``namespace`` when the exporter's labels are kept
(``honorLabels: true``), or in ``exported_pod``/``exported_namespace`` when
Prometheus overwrote them with the exporter pod's own; the queries accept both.

The client is blocking (``requests``). From an asyncio handler call it through
:meth:`PrometheusClient.call_async`, which runs it in a worker thread
(``asyncio.to_thread``) under a hard deadline, so the event loop never waits on
Prometheus.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from aitask.core.usage import combine

logger = logging.getLogger(__name__)

GPU_UTIL_METRIC = "DCGM_FI_DEV_GPU_UTIL"
FB_USED_METRIC = "DCGM_FI_DEV_FB_USED"
_MIB = 1024 * 1024
_STAT_LABEL = "aitask_stat"

P = ParamSpec("P")
T = TypeVar("T")

#: (operation, seconds, ok): how the client reports each request, e.g.
#: ``functools.partial(aitask.metrics.observe_api_request, "prometheus")``.
RequestObserver = Callable[[str, float, bool], None]


class PrometheusUnavailable(Exception):
    """Prometheus could not answer: unreachable, too slow, an HTTP error, or a malformed reply."""


# -- pure query builders -------------------------------------------------------------------------


def escape_label_value(value: str) -> str:
    """Escape a value for a double-quoted PromQL string literal."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def duration_literal(seconds: float) -> str:
    """A PromQL range duration, whole seconds, at least ``1s``."""
    return f"{max(1, math.ceil(seconds))}s"


_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


def _re2_literal(text: str) -> str:
    """Escape RE2 metacharacters (DNS names only ever need the dot)."""
    return _RE2_SPECIAL.sub(r"\\\1", text)


def pod_regex_for_pods(pod_names: Iterable[str]) -> str:
    """An RE2 regex matching exactly these pod names (for ``pod=~``)."""
    names = sorted(set(pod_names))
    if not names:
        raise ValueError("at least one pod name is needed")
    return "|".join(_re2_literal(name) for name in names)


def pod_regex_for_jobs(job_names: Iterable[str]) -> str:
    """An RE2 regex for the pods of these Jobs: ``<job>-<5 chars>``, or ``<job>-<index>-<5 chars>`` (Indexed).

    Prefer :func:`pod_regex_for_pods` when the pod names are known: a Job named like
    another Job's indexed pod prefix (``a-b-1`` vs ``a-b``, index 1) is ambiguous.
    """
    names = sorted(set(job_names))
    if not names:
        raise ValueError("at least one Job name is needed")
    alternatives = "|".join(_re2_literal(name) for name in names)
    return f"(?:{alternatives})-(?:[0-9]+-)?[a-z0-9]{{5}}"


def _selector(metric: str, namespace: str, pod_regex: str, *, exported: bool) -> str:
    prefix = "exported_" if exported else ""
    return (
        f'{metric}{{{prefix}namespace="{escape_label_value(namespace)}",'
        f'{prefix}pod=~"{escape_label_value(pod_regex)}"}}'
    )


def _per_pod(metric: str, over_time: str, aggregate: str, namespace: str, pod_regex: str, window_s: float) -> str:
    """``aggregate by (namespace, pod)`` of ``over_time(metric[window])``, for both label layouts."""
    window = duration_literal(window_s)
    direct = f"{over_time}({_selector(metric, namespace, pod_regex, exported=False)}[{window}])"
    exported = f"{over_time}({_selector(metric, namespace, pod_regex, exported=True)}[{window}])"
    relabelled = (
        "label_replace(label_replace(label_replace(label_replace("
        f'{exported}, "namespace", "$1", "exported_namespace", "(.+)"), '
        '"pod", "$1", "exported_pod", "(.+)"), '
        '"exported_namespace", "", "", ""), "exported_pod", "", "", "")'
    )
    return f"{aggregate} by (namespace, pod) ({direct} or {relabelled})"


def gpu_util_avg_query(namespace: str, pod_regex: str, window_s: float) -> str:
    """Per pod: mean GPU utilisation (%) over the window, averaged over the pod's GPUs."""
    return _per_pod(GPU_UTIL_METRIC, "avg_over_time", "avg", namespace, pod_regex, window_s)


def gpu_util_max_query(namespace: str, pod_regex: str, window_s: float) -> str:
    """Per pod: peak GPU utilisation (%) over the window, on any of the pod's GPUs."""
    return _per_pod(GPU_UTIL_METRIC, "max_over_time", "max", namespace, pod_regex, window_s)


def gpu_memory_used_max_query(namespace: str, pod_regex: str, window_s: float) -> str:
    """Per pod: peak framebuffer memory used (MiB) over the window, on any of the pod's GPUs."""
    return _per_pod(FB_USED_METRIC, "max_over_time", "max", namespace, pod_regex, window_s)


def gpu_usage_query(namespace: str, pod_regex: str, window_s: float) -> str:
    """The three per-pod queries in one round trip, told apart by an ``aitask_stat`` label."""
    parts = {
        "util_avg": gpu_util_avg_query(namespace, pod_regex, window_s),
        "util_max": gpu_util_max_query(namespace, pod_regex, window_s),
        "mem_max_mib": gpu_memory_used_max_query(namespace, pod_regex, window_s),
    }
    return " or ".join(f'label_replace({query}, "{_STAT_LABEL}", "{stat}", "", "")' for stat, query in parts.items())


def node_gpu_util_query(window_s: float) -> str:
    """Per node (DCGM ``Hostname``): mean GPU utilisation (%) over the window, over its GPUs."""
    return f"avg by (Hostname) (avg_over_time({GPU_UTIL_METRIC}[{duration_literal(window_s)}]))"


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class PodGpuUsage:
    """GPU use of one pod over a window; ``None`` where Prometheus had no series."""

    namespace: str
    pod: str
    util_avg_percent: float | None = None
    util_max_percent: float | None = None
    memory_used_max_bytes: int | None = None


@dataclass(frozen=True)
class GpuUsage:
    """GPU use of one sub-task attempt (all its pods) over a window."""

    util_avg_percent: float | None
    util_max_percent: float | None
    memory_used_max_bytes: int | None
    pods: int
    sampled_at: datetime

    def as_status(self) -> dict[str, Any]:
        """The suggested ``status.subtasks[].metrics`` shape (camelCase, ``None`` left out)."""
        fields: dict[str, Any] = {
            "gpuUtilAvg": None if self.util_avg_percent is None else round(self.util_avg_percent, 1),
            "gpuUtilMax": None if self.util_max_percent is None else round(self.util_max_percent, 1),
            "gpuMemoryUsedMaxBytes": self.memory_used_max_bytes,
            "sampledAt": self.sampled_at.isoformat().replace("+00:00", "Z"),
        }
        return {key: value for key, value in fields.items() if value is not None}


def aggregate_pods(usages: Iterable[PodGpuUsage], sampled_at: datetime) -> GpuUsage | None:
    """Combine per-pod usage into one attempt's (core.usage.combine); None if no pod."""
    pods = list(usages)
    combined = combine((p.util_avg_percent, p.util_max_percent, p.memory_used_max_bytes) for p in pods)
    if combined is None:
        return None
    avg, peak, memory = combined
    return GpuUsage(
        util_avg_percent=avg,
        util_max_percent=peak,
        memory_used_max_bytes=None if memory is None else int(memory),
        pods=len(pods),
        sampled_at=sampled_at,
    )


def parse_vector(result: Any) -> list[Sample]:
    """Parse ``data.result`` of an instant query; raises PrometheusUnavailable on another shape."""
    if not isinstance(result, list):
        raise PrometheusUnavailable(f"unexpected Prometheus result: {type(result).__name__}")
    samples = []
    for item in result:
        try:
            labels = {str(key): str(value) for key, value in item["metric"].items()}
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise PrometheusUnavailable(f"malformed Prometheus sample {item!r:.200}") from error
        if math.isfinite(value):
            samples.append(Sample(labels, value))
    return samples


# -- client --------------------------------------------------------------------------------------


class PrometheusClient:
    """Blocking Prometheus queries with a timeout; every failure is :class:`PrometheusUnavailable`.

    ``timeout_s`` bounds connecting and each read of one request (``requests``),
    with no retry; ``deadline_s`` (default ``2 * timeout_s + 1``) bounds a whole
    :meth:`call_async` call, worker thread or not.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float,
        *,
        deadline_s: float | None = None,
        observer: RequestObserver | None = None,
        session: requests.Session | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not url:
            raise ValueError("a Prometheus URL is needed")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s if deadline_s is not None else 2 * timeout_s + 1
        self._observer = observer
        self._clock = clock
        self._connect = PrometheusConnect(
            url=self.url,
            retry=Retry(total=0, connect=0, read=0, redirect=0, status=0),
            session=session,
            timeout=timeout_s,  # requests accepts a float
        )

    def query(self, promql: str, *, at: datetime | None = None, operation: str = "query") -> list[Sample]:
        """Run an instant query (at ``at``, default now)."""
        params = {"time": f"{at.timestamp():.3f}"} if at is not None else {}
        params["timeout"] = duration_literal(self.timeout_s)
        started = time.perf_counter()
        ok = False
        try:
            result = self._connect.custom_query(promql, params=params, timeout=self.timeout_s)
            samples = parse_vector(result)
            ok = True
        except (
            requests.RequestException,
            PrometheusApiClientException,
            ValueError,
            KeyError,
            TypeError,
        ) as error:
            raise PrometheusUnavailable(f"Prometheus query failed ({type(error).__name__}): {error}") from error
        finally:
            if self._observer is not None:
                self._observer(operation, time.perf_counter() - started, ok)
        return samples

    def is_up(self) -> bool:
        """Whether Prometheus answers a trivial query."""
        try:
            self.query("vector(1)", operation="ping")
        except PrometheusUnavailable:
            return False
        return True

    def get_pod_gpu_usage(
        self, namespace: str, pod_regex: str, window_s: float, *, at: datetime | None = None
    ) -> dict[str, PodGpuUsage]:
        """GPU use per pod (by name) of the matching pods, over ``window_s`` ending at ``at``."""
        samples = self.query(gpu_usage_query(namespace, pod_regex, window_s), at=at, operation="gpu_usage")
        stats: dict[str, dict[str, float]] = {}
        for sample in samples:
            pod = sample.labels.get("pod")
            stat = sample.labels.get(_STAT_LABEL)
            if pod and stat:
                stats.setdefault(pod, {})[stat] = sample.value
        return {
            pod: PodGpuUsage(
                namespace=namespace,
                pod=pod,
                util_avg_percent=values.get("util_avg"),
                util_max_percent=values.get("util_max"),
                memory_used_max_bytes=(int(values["mem_max_mib"] * _MIB) if "mem_max_mib" in values else None),
            )
            for pod, values in sorted(stats.items())
        }

    def get_gpu_usage(
        self, namespace: str, pod_regex: str, window_s: float, *, at: datetime | None = None
    ) -> GpuUsage | None:
        """GPU use of one attempt (all matching pods); None when Prometheus has no series for them."""
        pods = self.get_pod_gpu_usage(namespace, pod_regex, window_s, at=at)
        return aggregate_pods(pods.values(), at if at is not None else self._clock())

    def get_node_gpu_util(self, window_s: float, *, at: datetime | None = None) -> dict[str, float]:
        """Mean GPU utilisation per node (DCGM ``Hostname``) over the window."""
        samples = self.query(node_gpu_util_query(window_s), at=at, operation="node_gpu_util")
        return {sample.labels["Hostname"]: sample.value for sample in samples if sample.labels.get("Hostname")}

    def get_class_gpu_util(
        self, nodes_by_class: Mapping[str, Sequence[str]], window_s: float, *, at: datetime | None = None
    ) -> dict[str, float]:
        """Mean GPU utilisation per executor class: the mean over its nodes that report GPUs."""
        by_node = self.get_node_gpu_util(window_s, at=at)
        result = {}
        for klass, nodes in nodes_by_class.items():
            values = [by_node[node] for node in nodes if node in by_node]
            if values:
                result[klass] = sum(values) / len(values)
        return result

    async def call_async(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking method in a worker thread under ``deadline_s``.

        ``await client.call_async(client.get_gpu_usage, ns, regex, 300)``. On the
        deadline the await ends with :class:`PrometheusUnavailable`; the worker thread
        finishes on its own within the request timeout.
        """
        try:
            return await asyncio.wait_for(asyncio.to_thread(func, *args, **kwargs), timeout=self.deadline_s)
        except TimeoutError as error:
            raise PrometheusUnavailable(f"Prometheus did not answer within {self.deadline_s:g}s") from error
