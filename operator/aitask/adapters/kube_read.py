"""Read-only cluster state for `aitask plan --kubeconfig`: what the operator's informers would hold.

Only ``list`` calls, so the preview needs no write permission: nodes, ExecutorClasses, AITasks, our
child Jobs, pods, ResourceQuotas and AITaskBudgets, reduced to the views the scheduling cycle reads
(``control.cycle.ClusterView``). Lists that these credentials may not read are left empty, and the
note says what the preview then does not know.
"""

from __future__ import annotations

from typing import Any

from aitask.adapters import kube
from aitask.api import v1alpha1 as api
from aitask.control.cycle import ClusterView
from aitask.core.observed import LABEL_TASK, JobView, job_view, pod_view, quota_view


class ClusterReadError(RuntimeError):
    """The cluster could not be read (no kubeconfig, unreachable, forbidden): say it in one line."""


def read_cluster(kubeconfig: str | None = None, context: str | None = None) -> tuple[ClusterView, str]:
    """(the cluster as the cycle sees it, note); ``ClusterReadError`` on failure."""
    import urllib3
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    try:
        return _read_cluster(kubeconfig, context)
    except ConfigException as err:
        raise ClusterReadError(f"kubeconfig: {err}") from err
    except ApiException as err:
        raise ClusterReadError(f"API server answered {err.status} {err.reason}") from err
    except urllib3.exceptions.MaxRetryError as err:
        raise ClusterReadError(f"cannot reach the API server: {err.reason}") from err
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise ClusterReadError(f"cannot read the cluster: {err}") from err


# What the preview loses when a list is forbidden (403), or the kind is not installed (404).
_WITHOUT = {
    "pods": "pods: nodes are taken as idle",
    "aitasks": "AITasks: running work is not known (no preemption is previewed)",
    "jobs": "Jobs: running work is not known (no preemption is previewed)",
    "resourcequotas": "ResourceQuotas: quotas are not checked",
    "aitaskbudgets": "AITaskBudgets: namespace budgets are not checked",
}


def _read_cluster(kubeconfig: str | None, context: str | None) -> tuple[ClusterView, str]:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    loader: Any = config.load_kube_config
    loader(config_file=kubeconfig, context=context)
    api_client: Any = client.ApiClient()
    missing: list[str] = []

    def items(path: str, kind: str = "", **query: str) -> list[dict[str, Any]]:
        """One list call (``kube.send``); a forbidden or absent optional kind is empty."""
        try:
            listed = kube.send("GET", path, query=query, api_client=api_client) or {}
        except ApiException as err:
            if kind and err.status in (403, 404):
                missing.append(_WITHOUT[kind])
                return []
            raise
        return list(listed.get("items") or [])

    group = f"/apis/{api.GROUP}/{api.VERSION}"
    jobs = [job_view(b) for b in items("/apis/batch/v1/jobs", "jobs", labelSelector=LABEL_TASK)]
    view = ClusterView(
        nodes=items("/api/v1/nodes"),
        classes=items(f"{group}/executorclasses"),
        tasks=items(f"{group}/aitasks", "aitasks"),
        jobs=[j for j in jobs if isinstance(j, JobView)],
        pods=[pod_view(b) for b in items("/api/v1/pods", "pods")],
        quotas=[quota_view(b) for b in items("/api/v1/resourcequotas", "resourcequotas")],
        budgets=items(f"{group}/aitaskbudgets", "aitaskbudgets"),
    )
    note = f"cannot list {'; '.join(missing)}" if missing else ""
    return view, note
