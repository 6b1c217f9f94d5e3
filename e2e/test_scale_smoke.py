"""A small scale smoke test (issue 9): a burst of one-step AITasks loses nothing and duplicates nothing, and
once they have finished the operator stays quiet. The full-size figures come from bench/scale.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.operator import Operator, running_operator
from e2e.util import list_objects, wait_for

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent
CLASSES = REPO / "manifests" / "samples" / "executorclasses.yaml"
N = 100
IDLE_SECONDS = float(os.environ.get("AITASK_SMOKE_IDLE_SECONDS", "20"))
# The window starts this long after the last AITask finished: the writes that trail a finished task
# (Kopf's timer-stop poll touches each task ~45-60 s after its timer stopped matching, measured on the
# current operator) must fall inside it, while the last status write and its Events are long done.
IDLE_DELAY_SECONDS = float(os.environ.get("AITASK_SMOKE_IDLE_DELAY_SECONDS", "35"))
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}


def one_step(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "aitask.dev/v1alpha1", "kind": "AITask", "metadata": {"name": name},
        "spec": {"subtasks": [{
            "name": "step", "type": "preprocess", "image": "registry.example/step:e2e",
            "executor": {"cpu": "100m", "memory": "64Mi"}, "estimate": {"seconds": 1},
            "podMetadata": {"annotations": {"sim.aitask.dev/duration": "1s"}},
        }]},
    }


@dataclass
class Burst:
    cluster: Cluster
    namespace: str
    operator: Operator
    names: list[str]
    seconds: float
    finished_at: float  # time.monotonic() when every AITask was seen finished


def _phases(cluster: Cluster, namespace: str) -> dict[str, str]:
    return {t["metadata"]["name"]: (t.get("status") or {}).get("phase", "")
            for t in list_objects(cluster, "aitasks", namespace)}


@pytest.fixture(scope="module")
def burst(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Burst]:
    """N one-step AITasks created at once (16 client threads) in a fresh namespace, all finished."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                    "crd/aitasks.aitask.dev", "crd/executorclasses.aitask.dev")
    shutil.rmtree(cluster.dir / "cache" / "kube", ignore_errors=True)
    cluster.kubectl("apply", "--server-side", "-f", str(CLASSES))
    ns = f"e2e-scale-smoke-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("label", "namespace", ns, "aitask.dev/e2e=true")
    sa = f"/api/v1/namespaces/{ns}/serviceaccounts/default"
    wait_for(lambda: cluster.api_status("GET", sa) == 200, timeout=30, what=f"ServiceAccount {ns}/default")
    try:
        with running_operator(cluster, ns, tmp_path_factory.mktemp("scale-smoke")) as op:
            op.wait_metrics()
            names = [f"smoke-{i:03d}" for i in range(N)]
            path = f"/apis/aitask.dev/v1alpha1/namespaces/{ns}/aitasks"
            t0 = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                codes = list(pool.map(lambda n: cluster.api_status("POST", path, one_step(n)), names))
            assert Counter(codes) == {201: N}, Counter(codes)

            def all_finished() -> bool:
                phases = _phases(cluster, ns)
                return sum(1 for p in phases.values() if p == "Succeeded") == N or any(
                    p in ("Failed", "Invalid") for p in phases.values())

            wait_for(all_finished, timeout=150, interval=1, what=f"{N} AITasks to finish",
                     describe=lambda: f"{Counter(_phases(cluster, ns).values())}\n{op.log(40)}")
            yield Burst(cluster, ns, op, names, time.monotonic() - t0, time.monotonic())
            print(f"--- operator log ({ns}) ---\n{op.log(200)}")  # shown only when a test fails
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def test_a_burst_of_one_step_aitasks_all_succeed_with_exactly_one_job_each(burst: Burst) -> None:
    phases = _phases(burst.cluster, burst.namespace)
    assert sorted(phases) == burst.names, "an AITask disappeared"
    assert Counter(phases.values()) == {"Succeeded": N}
    owners: Counter[str] = Counter()
    for job in list_objects(burst.cluster, "jobs", burst.namespace):
        for ref in job["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "AITask":
                owners[ref["name"]] += 1
    assert sorted(owners) == burst.names, f"AITasks without a Job: {sorted(set(burst.names) - set(owners))}"
    assert {k: v for k, v in owners.items() if v != 1} == {}, "an AITask got more than one Job"
    for task in list_objects(burst.cluster, "aitasks", burst.namespace):
        sub = task["status"]["subtasks"][0]
        assert sub.get("attempts") == 1 and len(sub.get("history") or []) == 1, (
            f"{task['metadata']['name']} was not admitted exactly once: {sub}")


def _write_counts(cluster: Cluster) -> Counter[str]:
    """``apiserver_request_total`` write verbs on aitasks and events (all clients, all namespaces)."""
    text = cluster.api("GET", "/metrics")
    out: Counter[str] = Counter()
    for line in str(text).splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("resource") in ("aitasks", "events") and labels.get("verb") in WRITE_VERBS:
            sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
            out[f"{labels['resource']}{sub} {labels['verb']}"] += int(float(line.rsplit(" ", 1)[1]))
    return out


def _versions(cluster: Cluster, namespace: str) -> dict[str, str]:
    """resourceVersion of every AITask, child Job and Event about an AITask in ``namespace``."""
    out = {f"aitask/{t['metadata']['name']}": t["metadata"]["resourceVersion"]
           for t in list_objects(cluster, "aitasks", namespace)}
    # Jobs too: their TTL patch used to be resent every cycle until the watch showed it.
    out.update({f"job/{j['metadata']['name']}": j["metadata"]["resourceVersion"]
                for j in list_objects(cluster, "jobs", namespace)})
    for ev in list_objects(cluster, "events", namespace):
        if (ev.get("involvedObject") or {}).get("kind") == "AITask":
            out[f"event/{ev['metadata']['name']}"] = ev["metadata"]["resourceVersion"]
    return out


def test_finished_aitasks_cause_no_writes_while_idle(burst: Burst) -> None:
    """With every AITask finished, IDLE_SECONDS pass without a single write to an AITask, a Job or an Event
    (from IDLE_DELAY_SECONDS after the last one finished).

    Exact for this namespace: every write changes a resourceVersion (AITasks, and Events about AITasks,
    Kopf's included). The API server's request counter for aitasks/events is shown alongside; it has no
    namespace or user label, so it is informational only.
    """
    time.sleep(max(0.0, burst.finished_at + IDLE_DELAY_SECONDS - time.monotonic()))
    before, metric_before = _versions(burst.cluster, burst.namespace), _write_counts(burst.cluster)
    time.sleep(IDLE_SECONDS)  # the measurement window itself, not a wait for a condition
    after, metric_after = _versions(burst.cluster, burst.namespace), _write_counts(burst.cluster)
    changed = sorted(k for k in after if before.get(k) != after[k])
    kinds = Counter(k.split("/", 1)[0] + ("" if k in before else " (new)") for k in changed)
    metric = {k: v for k, v in (metric_after - metric_before).items() if v}
    assert not changed, (f"{len(changed)} objects written in {IDLE_SECONDS} idle s: {dict(kinds)}; "
                         f"apiserver_request_total deltas (all clients): {json.dumps(metric)}; "
                         f"e.g. {changed[:5]}")
