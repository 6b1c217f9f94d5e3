"""The only module that writes to the Kubernetes API.

Every call is idempotent: creating a Job that exists (409) and deleting one that is
gone (404) are success, status writes are merge patches of the whole status we own.
The ``kubernetes`` client is synchronous, so each call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException

from aitask import metrics
from aitask.api.v1alpha1 import GROUP, VERSION

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_clients: dict[str, Any] = {}


def configure() -> None:
    """Load credentials: in-cluster service account first, then $KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    api = kubernetes.client.ApiClient()
    _clients["batch"] = kubernetes.client.BatchV1Api(api)
    _clients["core"] = kubernetes.client.CoreV1Api(api)
    _clients["custom"] = kubernetes.client.CustomObjectsApi(api)


def _client(name: str) -> Any:
    if not _clients:
        configure()
    return _clients[name]


async def _call(verb: str, resource: str, fn: Callable[[], _T]) -> _T:
    start = time.perf_counter()
    ok = False
    try:
        result = await asyncio.to_thread(fn)
        ok = True
        return result
    except ApiException as err:
        # 404/409 are expected answers of idempotent calls, not failures of the API.
        ok = err.status in (404, 409)
        raise
    finally:
        metrics.observe_api_request(resource, verb, time.perf_counter() - start, ok)


async def create_job(manifest: Mapping[str, Any]) -> bool:
    """Create a Job; False when it already existed (a retried or repeated cycle)."""
    namespace = manifest["metadata"]["namespace"]
    try:
        await _call("create", "jobs", lambda: _client("batch").create_namespaced_job(namespace, manifest))
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


async def delete_job(namespace: str, name: str) -> None:
    """Delete a Job and (in the background) its pods; a Job already gone is fine."""
    body = kubernetes.client.V1DeleteOptions(propagation_policy="Background")
    try:
        await _call("delete", "jobs", lambda: _client("batch").delete_namespaced_job(name, namespace, body=body))
    except ApiException as err:
        if err.status != 404:
            raise


async def expire_job(namespace: str, name: str, ttl_seconds: int) -> None:
    """Set a finished Job's ttlSecondsAfterFinished (mutable), once its result is recorded."""
    body = {"spec": {"ttlSecondsAfterFinished": ttl_seconds}}
    try:
        await _call("patch", "jobs", lambda: _client("batch").patch_namespaced_job(name, namespace, body))
    except ApiException as err:
        if err.status != 404:
            raise


async def patch_task_status(namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any] | None:
    """Merge-patch an AITask's status subresource; None when the AITask is gone."""
    try:
        result: dict[str, Any] = await _call(
            "patch",
            "aitasks/status",
            lambda: _client("custom").patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "aitasks", name, {"status": dict(status)}
            ),
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return result


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
    try:
        await _call("create", "events", lambda: _client("core").create_namespaced_event(namespace, body))
    except ApiException as err:
        log.warning("could not post event %s on %s/%s: %s", reason, namespace, name, err.reason)
