"""Read-only cluster state for `aitask plan --kubeconfig`: nodes, ExecutorClasses, pod usage.

Only ``list`` calls, so the preview needs no write permission. Objects come back as plain
camelCase dicts (the shape ``core.snapshot.node_info`` reads).
"""

from __future__ import annotations

from typing import Any

from aitask.api import v1alpha1 as api
from aitask.core.quantity import parse_quantity

TERMINAL_PHASES = ("Succeeded", "Failed")


class ClusterReadError(RuntimeError):
    """The cluster could not be read (no kubeconfig, unreachable, forbidden): say it in one line."""


def list_cluster(
    kubeconfig: str | None = None, context: str | None = None
) -> tuple[list[api.ExecutorClass], list[dict[str, Any]], dict[str, dict[str, float]], str]:
    """(ExecutorClasses, Node dicts, requests in use per node, note); ``ClusterReadError`` on failure."""
    import urllib3
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    try:
        return _list_cluster(kubeconfig, context)
    except ConfigException as err:
        raise ClusterReadError(f"kubeconfig: {err}") from err
    except ApiException as err:
        raise ClusterReadError(f"API server answered {err.status} {err.reason}") from err
    except urllib3.exceptions.MaxRetryError as err:
        raise ClusterReadError(f"cannot reach the API server: {err.reason}") from err
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise ClusterReadError(f"cannot read the cluster: {err}") from err


def _list_cluster(
    kubeconfig: str | None = None, context: str | None = None
) -> tuple[list[api.ExecutorClass], list[dict[str, Any]], dict[str, dict[str, float]], str]:
    """(ExecutorClasses, Node dicts, requests in use per node, note).

    The usage comes from the non-terminal pods bound to each node; when listing pods is
    forbidden the usage is empty and ``note`` says so (the preview then assumes idle nodes).
    """
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    loader: Any = config.load_kube_config
    loader(config_file=kubeconfig, context=context)
    api_client: Any = client.ApiClient()
    core: Any = client.CoreV1Api(api_client)
    custom: Any = client.CustomObjectsApi(api_client)
    nodes = [api_client.sanitize_for_serialization(n) for n in core.list_node().items]
    raw: dict[str, Any] = custom.list_cluster_custom_object(api.GROUP, api.VERSION, "executorclasses")
    classes = [api.ExecutorClass.model_validate(item) for item in raw.get("items", [])]
    used: dict[str, dict[str, float]] = {}
    note = ""
    try:
        pods = core.list_pod_for_all_namespaces(
            field_selector=",".join(f"status.phase!={phase}" for phase in TERMINAL_PHASES)
        ).items
    except ApiException as err:
        if err.status != 403:
            raise
        pods = []
        note = "pods cannot be listed with these credentials: nodes are assumed idle"
    for pod in pods:
        node_name = pod.spec.node_name if pod.spec is not None else None
        if not node_name:
            continue
        book = used.setdefault(node_name, {})
        for name, amount in pod_requests(api_client.sanitize_for_serialization(pod)).items():
            book[name] = book.get(name, 0.0) + amount
    return classes, nodes, used, note


def pod_requests(pod: dict[str, Any]) -> dict[str, float]:
    """Effective requests of a pod as the kube-scheduler counts them: the sum over containers,
    or the largest init container where that is more."""
    spec = pod.get("spec") or {}
    total: dict[str, float] = {}
    for container in spec.get("containers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = total.get(name, 0.0) + parse_quantity(value)
    for container in spec.get("initContainers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = max(total.get(name, 0.0), parse_quantity(value))
    return total
