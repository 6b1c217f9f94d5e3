"""The only module that writes to the Kubernetes API.

Every call is idempotent: creating a Job that exists (409) and deleting one that is
gone (404) are success, status writes are merge patches of the whole status we own.
The ``kubernetes`` client is synchronous, so each call runs in a worker thread of a pool
sized for ``api_concurrency`` calls in flight. Calls are paced by a leaky bucket
(``api_qps``, ``api_burst``), and a 429 answer (API priority and fairness) is retried
after the server's Retry-After, a few times, before it is given up to the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import kubernetes
from aiolimiter import AsyncLimiter
from kubernetes.client.exceptions import ApiException

from aitask import metrics
from aitask.api.v1alpha1 import GROUP, VERSION

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_clients: dict[str, Any] = {}
_pace: dict[str, Any] = {}
MAX_429_RETRIES = 5


def configure(*, concurrency: int = 16, qps: float = 50.0, burst: int = 100) -> None:
    """Load credentials (in-cluster service account first, then $KUBECONFIG), size the pools, set the pace."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    config = kubernetes.client.Configuration.get_default_copy()
    config.connection_pool_maxsize = max(concurrency, 4)
    api = kubernetes.client.ApiClient(config)
    _pace["pool"] = ThreadPoolExecutor(max_workers=max(concurrency, 4), thread_name_prefix="aitask-api")
    _pace["limiter"] = AsyncLimiter(max(1, burst), max(1, burst) / qps)
    _clients["batch"] = kubernetes.client.BatchV1Api(api)
    _clients["core"] = kubernetes.client.CoreV1Api(api)
    _clients["custom"] = kubernetes.client.CustomObjectsApi(api)


def _client(name: str) -> Any:
    if not _clients:
        configure()
    return _clients[name]


_JSON = "application/json"
_MERGE = "application/merge-patch+json"
_JSON_PATCH = "application/json-patch+json"


def send(
    method: str,
    path: str,
    body: Any = None,
    content_type: str = _JSON,
    *,
    query: Mapping[str, str] | None = None,
    api_client: Any = None,
) -> dict[str, Any] | None:
    """One request with the client's credentials and connection pool, the body a plain dict (sync).

    The generated API methods validate their arguments into client models (pydantic) and turn
    every answer back into models (a V1Job for each create): most of the CPU of a write at
    hundreds per second. This path sends the JSON and reads the answer as a dict; errors raise
    the same ``ApiException`` (status, body, headers) as the generated methods. ``api_client``:
    another client than the operator's (``aitask plan`` reads with the user's kubeconfig).
    """
    api = api_client if api_client is not None else _client("core").api_client
    method, url, headers, payload, _ = api.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()),
        body=body,
        header_params={"Accept": _JSON, "Content-Type": content_type},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, body=payload)
    data = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException(http_resp=response)
    if not data:
        return None
    out: dict[str, Any] = json.loads(data)
    return out


def _retry_after(err: ApiException) -> float:
    headers = err.headers or {}
    try:
        return min(30.0, max(0.1, float(headers.get("Retry-After", "1"))))
    except (TypeError, ValueError):
        return 1.0


async def _call(verb: str, resource: str, fn: Callable[[], _T]) -> _T:
    loop = asyncio.get_running_loop()
    limiter: AsyncLimiter | None = _pace.get("limiter")
    for attempt in range(MAX_429_RETRIES + 1):
        if limiter is not None:
            await limiter.acquire()
        start = time.perf_counter()
        ok = False
        try:
            result = await loop.run_in_executor(_pace.get("pool"), fn)
            ok = True
            return result
        except ApiException as err:
            # 404/409 are expected answers of idempotent calls, not failures of the API.
            ok = err.status in (404, 409)
            if err.status != 429 or attempt == MAX_429_RETRIES:
                raise
            delay = _retry_after(err)
        finally:
            metrics.observe_api_request(resource, verb, time.perf_counter() - start, ok)
        log.info("%s %s: 429 from the API server, retrying in %.1fs", verb, resource, delay)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def error_message(err: ApiException) -> str:
    """The API server's own message of a refused request (it names the field), else the reason."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or err.reason or err.status)[:1000]


async def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    """A Job as a plain dict, or None when it does not exist."""
    try:
        job = await _call("get", "jobs", lambda: _client("batch").read_namespaced_job(name, namespace))
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    out: dict[str, Any] = _client("batch").api_client.sanitize_for_serialization(job)
    return out


async def create_job(manifest: Mapping[str, Any]) -> bool:
    """Create a Job; False when it already existed (a retried or repeated cycle)."""
    namespace = manifest["metadata"]["namespace"]
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    try:
        await _call("create", "jobs", lambda: send("POST", path, dict(manifest)))
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


async def create_claim(manifest: Mapping[str, Any]) -> bool:
    """Create a PersistentVolumeClaim; False when it already existed (it is created before every new Job)."""
    namespace = manifest["metadata"]["namespace"]
    path = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims"
    try:
        await _call("create", "persistentvolumeclaims", lambda: send("POST", path, dict(manifest)))
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


async def delete_job(namespace: str, name: str) -> None:
    """Delete a Job once its pods are gone (foreground: the Job stays, deleting, while they end within their
    grace period, so a stopped attempt's Job is there until its pods are; the next attempt waits); gone is fine."""
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
    try:
        await _call("delete", "jobs", lambda: send("DELETE", path, body))
    except ApiException as err:
        if err.status != 404:
            raise


async def expire_job(namespace: str, name: str, ttl_seconds: int) -> None:
    """Set a finished Job's ttlSecondsAfterFinished (mutable), once its result is recorded."""
    body = {"spec": {"ttlSecondsAfterFinished": ttl_seconds}}
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
    try:
        await _call("patch", "jobs", lambda: send("PATCH", path, body, _MERGE))
    except ApiException as err:
        if err.status != 404:
            raise


async def patch_task_status(namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any] | None:
    """Merge-patch an AITask's status subresource; None when the AITask is gone."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/aitasks/{name}/status"
    try:
        result = await _call("patch", "aitasks/status", lambda: send("PATCH", path, {"status": dict(status)}, _MERGE))
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return result


async def remove_finalizer(namespace: str, name: str, finalizer: str, finalizers: list[str]) -> None:
    """Remove one finalizer from an AITask (a JSON patch that tests it is still where we saw it)."""
    index = finalizers.index(finalizer)
    body = [
        {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
        {"op": "remove", "path": f"/metadata/finalizers/{index}"},
    ]
    try:
        await _call(
            "patch",
            "aitasks",
            lambda: _client("custom").patch_namespaced_custom_object(GROUP, VERSION, namespace, "aitasks", name, body),
        )
    except ApiException as err:
        if err.status not in (404, 422):  # gone, or the list changed meanwhile: the next look decides again
            raise


async def patch_class_status(name: str, status: Mapping[str, Any]) -> None:
    """Merge-patch an ExecutorClass's status (capacity, allocation, learned runtimes)."""
    try:
        await _call(
            "patch",
            "executorclasses/status",
            lambda: _client("custom").patch_cluster_custom_object_status(
                GROUP, VERSION, "executorclasses", name, {"status": dict(status)}
            ),
        )
    except ApiException as err:
        if err.status != 404:
            raise


async def patch_budget_status(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Merge-patch an AITaskBudget's status (period, spent, committed, remaining)."""
    try:
        await _call(
            "patch",
            "aitaskbudgets/status",
            lambda: _client("custom").patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "aitaskbudgets", name, {"status": dict(status)}
            ),
        )
    except ApiException as err:
        if err.status != 404:
            raise


async def post_event(
    *,
    namespace: str,
    name: str,
    uid: str,
    kind: str,
    type_: str,
    reason: str,
    message: str,
) -> None:
    """Record a core/v1 Event on an object; losing one is logged, never fatal."""
    now = datetime.now(UTC)
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "name": name,
            "namespace": namespace,
            "uid": uid,
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "aitask-operator"},
        "reportingComponent": "aitask.dev/operator",
        "reportingInstance": "aitask-operator",
        "firstTimestamp": now.isoformat(),
        "lastTimestamp": now.isoformat(),
        "count": 1,
    }
    path = f"/api/v1/namespaces/{namespace}/events"
    try:
        await _call("create", "events", lambda: send("POST", path, body))
    except ApiException as err:
        log.warning("could not post event %s on %s/%s: %s", reason, namespace, name, err.reason)
