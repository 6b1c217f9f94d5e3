"""Small helpers for suites running against e2e.cluster.Cluster: deadline polls, JSON getters, and builders
for Jobs driven by the KWOK simulation annotations (see e2e/kwok/stages.yaml and e2e/README.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from e2e.cluster import Cluster

T = TypeVar("T")

# The fake-kubelet contract (annotations on the Pod / a Job's spec.template.metadata).
SIM_DURATION = "sim.aitask.dev/duration"
SIM_OUTCOME = "sim.aitask.dev/outcome"
SIM_EXIT_CODE = "sim.aitask.dev/exit-code"
OUTCOMES = ("succeed", "fail", "oom", "hang")
# Toleration for the tainted H100 pool (nvidia.com/gpu=present:NoSchedule).
GPU_TOLERATION: dict[str, str] = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
DEFAULT_IMAGE = "registry.example/sim:1"  # never pulled: KWOK runs no containers


class WaitTimeout(AssertionError):
    """A wait_for deadline passed. An AssertionError so pytest reports it as a test failure."""


def wait_for(check: Callable[[], T | None], *, timeout: float = 60.0, interval: float = 0.2,
             what: str = "condition", describe: Callable[[], str] | None = None,
             ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Polls ``check()`` every ``interval`` s until it returns something truthy, and returns that.

    After ``timeout`` s raises WaitTimeout naming ``what`` with ``describe()`` (or the last value) so the
    failure says what the cluster looked like. Exceptions of the types in ``ignore`` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            detail = describe() if describe else f"last value: {last!r}"
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}\n{detail}")
        time.sleep(interval)


# ---- getters ---------------------------------------------------------------------------------------------


def get(cluster: Cluster, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    """One object as a dict, or None when it does not exist."""
    ns = ["-n", namespace] if namespace else []
    proc = cluster.kubectl("get", kind, name, *ns, "--ignore-not-found", "-o", "json")
    if not proc.stdout.strip():
        return None
    obj: dict[str, Any] = json.loads(proc.stdout)
    return obj


def list_objects(cluster: Cluster, kind: str, namespace: str | None = None,
                 selector: str | None = None) -> list[dict[str, Any]]:
    """Objects of ``kind`` (in ``namespace``, matching the label ``selector``)."""
    args = ["get", kind]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    if selector:
        args += ["-l", selector]
    items: list[dict[str, Any]] = cluster.kubectl_json(*args)["items"]
    return items


def job_pods(cluster: Cluster, namespace: str, job: str) -> list[dict[str, Any]]:
    """The pods the Job controller created for ``job``."""
    return list_objects(cluster, "pods", namespace, f"batch.kubernetes.io/job-name={job}")


def condition(obj: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """The condition of ``type_`` in ``obj.status.conditions``, or None."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def has_condition(obj: Mapping[str, Any] | None, type_: str, status: str = "True") -> bool:
    cond = condition(obj, type_)
    return cond is not None and cond.get("status") == status


def terminated(pod: Mapping[str, Any], container: str | None = None) -> dict[str, Any] | None:
    """``state.terminated`` of the named (default: first) container of ``pod``, or None."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if container is None or status.get("name") == container:
            term = (status.get("state") or {}).get("terminated")
            return dict(term) if term else None
    return None


def events(cluster: Cluster, namespace: str, *, involved: str | None = None,
           reason: str | None = None) -> list[dict[str, Any]]:
    """core/v1 Events in ``namespace`` about object ``involved`` (by name), with ``reason``."""
    out = []
    for ev in list_objects(cluster, "events", namespace):
        if involved and ev.get("involvedObject", {}).get("name") != involved:
            continue
        if reason and ev.get("reason") != reason:
            continue
        out.append(ev)
    return out


def describe_namespace(cluster: Cluster, namespace: str) -> str:
    """Jobs, pods (wide) and events of a namespace, for failure messages."""
    parts = []
    for args in (["get", "jobs,pods", "-o", "wide"], ["get", "events", "--sort-by=.lastTimestamp"]):
        proc = cluster.kubectl(*args, "-n", namespace, check=False)
        parts.append(f"$ kubectl {' '.join(args)} -n {namespace}\n{proc.stdout}{proc.stderr}")
    return "\n".join(parts)


# ---- waits -----------------------------------------------------------------------------------------------


def wait_for_job(cluster: Cluster, namespace: str, name: str, cond: str = "Complete", *,
                 timeout: float = 60.0) -> dict[str, Any]:
    """Waits until Job ``name`` has condition ``cond`` (Complete, Failed, SuccessCriteriaMet, ...)=True."""
    def check() -> dict[str, Any] | None:
        job = get(cluster, "job", name, namespace)
        return job if has_condition(job, cond) else None

    return wait_for(check, timeout=timeout, what=f"Job {namespace}/{name} {cond}",
                    describe=lambda: describe_namespace(cluster, namespace))


def wait_for_job_pod(cluster: Cluster, namespace: str, job: str, predicate: Callable[[dict[str, Any]], bool],
                     *, what: str, timeout: float = 60.0) -> dict[str, Any]:
    """Waits until a pod of ``job`` satisfies ``predicate``; returns it."""
    def check() -> dict[str, Any] | None:
        return next((p for p in job_pods(cluster, namespace, job) if predicate(p)), None)

    return wait_for(check, timeout=timeout, what=f"a pod of Job {namespace}/{job} {what}",
                    describe=lambda: describe_namespace(cluster, namespace))


def wait_for_event(cluster: Cluster, namespace: str, *, reason: str, involved: str | None = None,
                   timeout: float = 60.0) -> dict[str, Any]:
    """Waits for an Event with ``reason`` (about ``involved``); returns the first one."""
    def check() -> dict[str, Any] | None:
        found = events(cluster, namespace, involved=involved, reason=reason)
        return found[0] if found else None

    return wait_for(check, timeout=timeout, what=f"event {reason} about {involved or 'anything'}",
                    describe=lambda: describe_namespace(cluster, namespace))


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    """Predicate for wait_for_job_pod: the pod's phase is one of ``phases``."""
    return lambda pod: (pod.get("status") or {}).get("phase") in phases


# ---- builders --------------------------------------------------------------------------------------------


def sim_annotations(duration: str | None = None, outcome: str | None = None,
                    exit_code: int | None = None) -> dict[str, str]:
    """Pod annotations that drive the fake kubelet: ``duration`` ("5s"), ``outcome`` (succeed, fail, oom,
    hang) and ``exit_code`` (for fail)."""
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
    ann: dict[str, str] = {}
    if duration is not None:
        ann[SIM_DURATION] = duration
    if outcome is not None:
        ann[SIM_OUTCOME] = outcome
    if exit_code is not None:
        ann[SIM_EXIT_CODE] = str(exit_code)
    return ann


def gpu_affinity(*products: str) -> dict[str, Any]:
    """Required node affinity on ``nvidia.com/gpu.product`` In ``products``."""
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(products)}]}]}}}


def make_job(name: str, *, gpus: int = 0, gpu_products: Iterable[str] = (), duration: str | None = None,
             outcome: str | None = None, exit_code: int | None = None,
             tolerations: Iterable[Mapping[str, Any]] = (), node_selector: Mapping[str, str] | None = None,
             backoff_limit: int = 0, cpu: str = "100m", memory: str = "128Mi", image: str = DEFAULT_IMAGE,
             labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None,
             ) -> dict[str, Any]:
    """A batch/v1 Job whose single pod requests ``gpus`` x nvidia.com/gpu (as a limit, like the device
    plugin needs), optionally pinned to GPU models by required node affinity, finishing as the
    simulation annotations say."""
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": image, "command": ["/bin/true"], "resources": resources}],
    }
    products = list(gpu_products)
    if products:
        spec["affinity"] = gpu_affinity(*products)
    if tolerations:
        spec["tolerations"] = [dict(t) for t in tolerations]
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    pod_annotations = {**sim_annotations(duration, outcome, exit_code), **(annotations or {})}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {
            "backoffLimit": backoff_limit,
            "ttlSecondsAfterFinished": 600,
            "template": {"metadata": {"labels": dict(labels or {}), "annotations": pod_annotations},
                         "spec": spec},
        },
    }
