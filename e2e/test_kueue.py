"""Kueue interop mode end to end: the operator picks the class, a real Kueue manager admits the Jobs.

The Kueue manager (v0.17, built from its Go module by e2e/tools/build-kueue.sh) runs as a process of
the test against the local control plane (see e2e/kueue.py for how, and why without admission
webhooks). One ClusterQueue with a ResourceFlavor per GPU model of e2e/nodes.yaml (node labels = the
ExecutorClass's node selector); the H100 flavor has a quota of QUOTA GPUs, the others their full
capacity. QUOTA + 1 one-GPU sub-tasks that the cost model puts on h100: QUOTA Jobs are admitted and
run on H100 nodes, the last one stays suspended (other flavors have room, but its node affinity
pins it to the H100 flavor) and its AITask says it waits for Kueue admission until a GPU of the
quota is released; then it is admitted and everything succeeds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster, ClusterError
from e2e.kueue import Kueue, cluster_queue, local_queue, resource_flavor
from e2e.operator import Operator
from e2e.util import get, list_objects, wait_for

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent
CLASSES = REPO / "manifests" / "samples" / "executorclasses.yaml"
NODES = Path(__file__).resolve().parent / "nodes.yaml"
QUOTA = 2  # H100 GPUs in the ClusterQueue
CQ = "aitask-e2e"
QUEUE = "default"  # the operator's default LocalQueue name (AITASK_KUEUE_DEFAULT_QUEUE)
PRODUCT = "nvidia.com/gpu.product"


def _gpu_flavors(classes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Flavor name (the ExecutorClass) -> (node labels, GPUs) for every GPU model of e2e/nodes.yaml."""
    nodes = [d for d in yaml.safe_load_all(NODES.read_text()) if d]
    out: dict[str, dict[str, Any]] = {}
    for ec in classes:
        selector = ec["spec"].get("nodeSelector") or {}
        if PRODUCT not in selector:
            continue
        members = [n for n in nodes if n["metadata"]["labels"].get(PRODUCT) == selector[PRODUCT]]
        gpus = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0)) for n in members)
        if members:
            out[ec["metadata"]["name"]] = {"labels": dict(selector), "gpus": gpus}
    models = {n["metadata"]["labels"][PRODUCT] for n in nodes if PRODUCT in n["metadata"]["labels"]}
    assert {f["labels"][PRODUCT] for f in out.values()} == models, "every GPU model needs an ExecutorClass"
    return out


@pytest.fixture
def kueue(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[tuple[Kueue, dict[str, Any]]]:
    """CRDs of both projects, the sample ExecutorClasses, Kueue running with its queue objects."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                    "crd/aitasks.aitask.dev", "crd/executorclasses.aitask.dev")
    classes = [d for d in yaml.safe_load_all(CLASSES.read_text()) if d]
    flavors = _gpu_flavors(classes)
    try:
        manager = Kueue(cluster, tmp_path / "kueue").start()
    except ClusterError as err:
        pytest.fail(f"the Kueue manager did not start: {err}", pytrace=False)
    shutil.rmtree(cluster.dir / "cache" / "kube", ignore_errors=True)  # discovery predates the new CRDs
    cluster.kubectl("apply", "--server-side", "-f", str(CLASSES))
    quotas = {name: {"cpu": "1000", "memory": "10Ti", "nvidia.com/gpu": str(QUOTA if name == "h100" else f["gpus"])}
              for name, f in flavors.items()}
    objects = [resource_flavor(name, f["labels"]) for name, f in flavors.items()]
    objects.append(cluster_queue(CQ, quotas))
    cluster.apply(objects)
    cluster.apply(local_queue(QUEUE, namespace, CQ))
    wait_for(lambda: _active(cluster, "clusterqueue", CQ) and _active(cluster, "localqueue", QUEUE, namespace),
             timeout=60, what="ClusterQueue and LocalQueue Active",
             describe=lambda: json.dumps(get(cluster, "clusterqueue", CQ), indent=1)[:3000] + "\n" + manager.log())
    # The CRDs' conversion webhook (registered by URL) answers: the ClusterQueue read as v1beta1.
    old_api = cluster.api("GET", f"/apis/kueue.x-k8s.io/v1beta1/clusterqueues/{CQ}")
    assert old_api["apiVersion"] == "kueue.x-k8s.io/v1beta1"
    try:
        yield manager, flavors
    finally:
        # Kueue removes its finalizers from the Workloads only while it runs: delete what the test made
        # (Jobs -> Workloads by owner references), wait, then the queue objects, then stop it.
        cluster.kubectl("delete", "aitasks", "--all", "-n", namespace, "--wait=true", "--timeout=30s", check=False)
        cluster.kubectl("delete", "jobs", "--all", "-n", namespace, "--cascade=foreground", "--wait=true",
                        "--timeout=30s", check=False)
        cluster.kubectl("delete", "workloads", "--all", "-n", namespace, "--wait=true", "--timeout=30s",
                        check=False)
        cluster.kubectl("delete", "localqueue", QUEUE, "-n", namespace, "--wait=true", "--timeout=30s",
                        check=False)
        cluster.kubectl("delete", "clusterqueue", CQ, "--wait=true", "--timeout=30s", check=False)
        cluster.kubectl("delete", "resourceflavors", *flavors, "--wait=true", "--timeout=30s", check=False)
        manager.stop()
        print(f"--- kueue log ---\n{manager.log(200)}")  # shown only when the test fails
        cluster.kubectl("delete", "-f", str(CLASSES), "--ignore-not-found", check=False)
        # Leave no CRD whose conversion webhook points at a stopped process behind for later suites.
        cluster.kubectl("delete", "-f", str(manager.bin_dir / "crds"), "--ignore-not-found", "--wait=false",
                        check=False)
        cluster.kubectl("delete", "namespace", "kueue-system", "--ignore-not-found", "--wait=false", check=False)


def _active(cluster: Cluster, kind: str, name: str, namespace: str | None = None) -> bool:
    obj = get(cluster, kind, name, namespace) or {}
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Active" and c["status"] == "True" for c in conds)


def _jobs(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    return {j["metadata"]["name"]: j for j in list_objects(cluster, "jobs", namespace, "aitask.dev/task=kq")}


def test_kueue_admits_the_operators_jobs_on_the_chosen_class_within_its_quota(
    cluster: Cluster, namespace: str, kueue: tuple[Kueue, dict[str, Any]], tmp_path: Path
) -> None:
    manager, flavors = kueue
    shards = [{"name": f"s{i}", "type": "inference", "image": "registry.example/infer:e2e",
               "executor": {"accelerators": 1, "cpu": "1", "memory": "1Gi"},
               "estimate": {"seconds": 600, "onClass": "a100-40gb"},
               "podMetadata": {"annotations": {"sim.aitask.dev/duration": "8s"}}} for i in range(QUOTA + 1)]
    op = Operator(cluster, namespace, tmp_path, {"AITASK_KUEUE_ENABLED": "true"}).start()
    try:
        cluster.apply({"apiVersion": "aitask.dev/v1alpha1", "kind": "AITask", "metadata": {"name": "kq"},
                       "spec": {"subtasks": shards}}, namespace=namespace)

        def describe() -> str:
            task = get(cluster, "aitask", "kq", namespace) or {}
            jobs = {n: (j["spec"].get("suspend"), j.get("status")) for n, j in _jobs(cluster, namespace).items()}
            return (json.dumps(task.get("status"), indent=1)[:4000] + "\njobs: " + json.dumps(jobs)[:2000]
                    + "\n--- operator ---\n" + op.log(60) + "\n--- kueue ---\n" + manager.log(60))

        # 1. QUOTA Jobs admitted (unsuspended), the last one held suspended while the AITask says why.
        def held() -> tuple[dict[str, Any], dict[str, Any]] | None:
            jobs = _jobs(cluster, namespace)
            suspended = [j for j in jobs.values() if j["spec"].get("suspend")]
            running = [j for j in jobs.values() if not j["spec"].get("suspend") and not j["status"].get("succeeded")]
            if len(jobs) != QUOTA + 1 or len(suspended) != 1 or len(running) != QUOTA:
                return None
            status = (get(cluster, "aitask", "kq", namespace) or {}).get("status") or {}
            sub = suspended[0]["metadata"]["labels"]["aitask.dev/subtask"]
            st = next((s for s in status.get("subtasks", []) if s["name"] == sub), {})
            cond = next((c for c in status.get("conditions", []) if c["type"] == "KueueAdmitted"), {})
            if st.get("message") != f"waiting for Kueue admission (queue {QUEUE})" or cond.get("status") != "False":
                return None
            return suspended[0], {"status": status, "condition": cond, "subtask": st}

        job, seen = wait_for(held, timeout=60, interval=0.3, describe=describe,
                             what=f"{QUOTA} Jobs admitted by Kueue and one held suspended, said in the status")
        assert seen["condition"]["reason"] == "WaitingForKueueAdmission"
        assert seen["subtask"]["phase"] == "Running" and seen["subtask"]["plan"]["class"] == "h100"
        held_name = job["metadata"]["name"]
        jobs = _jobs(cluster, namespace)
        for j in jobs.values():
            assert j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
            assert j["metadata"]["labels"]["aitask.dev/class"] == "h100"  # the cost model's choice
        assert not [p for p in list_objects(cluster, "pods", namespace) if p["metadata"]["labels"].get(
            "batch.kubernetes.io/job-name") == held_name], "a suspended Job has no pods"
        workload = next(w for w in list_objects(cluster, "workloads", namespace)
                        if w["metadata"]["ownerReferences"][0]["name"] == held_name)
        assert not (workload.get("status") or {}).get("admission"), "the held Job's Workload has no quota"

        # 2. Everything runs on H100 nodes, under the h100 flavor, and succeeds; the held Job only after
        #    one of the first ones finished.
        def succeeded() -> dict[str, Any] | None:
            task = get(cluster, "aitask", "kq", namespace) or {}
            return task if (task.get("status") or {}).get("phase") == "Succeeded" else None

        task = wait_for(succeeded, timeout=120, interval=0.5, describe=describe, what="AITask kq Succeeded")
        jobs = _jobs(cluster, namespace)
        h100_nodes = {n for n in cluster.node_names if n.startswith("gpu-h100-")}
        for pod in list_objects(cluster, "pods", namespace):
            assert pod["spec"]["nodeName"] in h100_nodes, pod["metadata"]["name"]
            # Kueue injected the flavor's node labels: the flavor is the chosen class's.
            assert pod["spec"].get("nodeSelector", {}).get(PRODUCT) == flavors["h100"]["labels"][PRODUCT]
        for w in list_objects(cluster, "workloads", namespace):
            assignment = w["status"]["admission"]["podSetAssignments"][0]
            assert assignment["flavors"]["nvidia.com/gpu"] == "h100"
        first_done = min(j["status"]["completionTime"] for n, j in jobs.items() if n != held_name)
        assert jobs[held_name]["status"]["startTime"] >= first_done, "admitted only once quota was released"
        assert all(j["status"].get("succeeded") == 1 for j in jobs.values())
        cond = next(c for c in task["status"]["conditions"] if c["type"] == "KueueAdmitted")
        assert (cond["status"], cond["reason"]) == ("True", "AdmittedByKueue")
        assert [s["attempts"] for s in task["status"]["subtasks"]] == [1] * (QUOTA + 1)
    finally:
        op.stop()
        print(f"--- operator log ---\n{op.log(200)}")
