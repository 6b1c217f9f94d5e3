"""Variants, an ensemble and the workspace end to end: the claim is created, owned by the AITask,
bound by the real PersistentVolume controller to a volume the test creates, mounted by every
sub-task's pods, and deleted with the task; three ensemble members run each on its own class and
the fusion step after them, its environment listing the three outputs and weights."""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.cluster import Cluster, CommandError
from e2e.operator import Operator
from e2e.test_operator import aitask, classes, operator, sim, ts, wait_phase
from e2e.util import get, job_pods, list_objects, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["classes", "operator"]  # fixtures

MODELS = {
    "name": "models", "type": "inference", "image": "registry.example/models:e2e", "dependsOn": ["prep"],
    "executor": {"cpu": "1", "memory": "2Gi"}, "ensemble": {"topK": 3}, "podMetadata": sim("2s"),
    "variants": [
        {"name": "tiny", "quality": 0.8, "args": ["--model", "tiny"], "executor": {"kinds": ["cpu"]},
         "estimate": {"seconds": 30}},
        {"name": "mid", "quality": 0.9, "args": ["--model", "mid"],
         "executor": {"kinds": ["gpu"], "accelerators": 1, "classes": ["l4"]}, "estimate": {"seconds": 60}},
        {"name": "big", "quality": 0.95, "args": ["--model", "big"],
         "executor": {"kinds": ["gpu"], "accelerators": 1, "classes": ["h100"]}, "estimate": {"seconds": 120}},
    ],
}
STEPS = [
    {"name": "prep", "type": "preprocess", "image": "registry.example/prep:e2e", "executor": {"cpu": "1"},
     "podMetadata": sim("1s")},
    MODELS,
    {"name": "fuse", "type": "fusion", "image": "registry.example/fuse:e2e", "dependsOn": ["models"],
     "executor": {"cpu": "1"}, "podMetadata": sim("1s")},
]


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0].get("env", [])}


def test_ensemble_and_fusion_share_a_claim_owned_by_the_task(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    storage_class = f"ws-{namespace}"[:63]
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": storage_class},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": storage_class,
                   "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{storage_class}"}}}
    cluster.apply(pv)
    try:
        workspace = {"volumeClaimTemplate": {"storage": "1Gi", "storageClassName": storage_class}}
        cluster.apply(aitask("ens", STEPS, workspace=workspace), namespace=namespace)
        status = wait_phase(cluster, operator, namespace, "ens", "Succeeded", timeout=120)
        task = get(cluster, "aitask", "ens", namespace)
        assert task is not None
        claim = get(cluster, "pvc", "ens-workspace", namespace)
        assert claim is not None
        owner = claim["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("AITask", task["metadata"]["uid"])
        # Bound by kube-controller-manager's PersistentVolume binder to the volume of its class.
        assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == storage_class, claim["status"]

        subs = {s["name"]: s for s in status["subtasks"]}
        assert list(subs) == ["prep", "models-big", "models-mid", "models-tiny", "fuse"]
        members = ["models-big", "models-mid", "models-tiny"]
        placed = {m: (subs[m]["plan"]["variant"], subs[m]["plan"]["class"]) for m in members}
        assert placed == {"models-big": ("big", "h100"), "models-mid": ("mid", "l4"), "models-tiny": ("tiny", "cpu")}
        assert all(ts(subs[m]["startTime"]) >= ts(subs["prep"]["finishTime"]) for m in members)
        assert ts(subs["fuse"]["startTime"]) >= max(ts(subs[m]["finishTime"]) for m in members)

        pods = {name: job_pods(cluster, namespace, f"ens-{name}-1") for name in subs}
        for name, found in pods.items():
            assert found, f"no pod of {name}"
            for pod in found:
                volumes = pod["spec"]["volumes"]
                assert {"name": "aitask-workspace", "persistentVolumeClaim": {"claimName": "ens-workspace"}} in volumes
                mounts = pod["spec"]["containers"][0]["volumeMounts"]
                assert {"name": "aitask-workspace", "mountPath": "/workspace"} in mounts
                assert _env(pod)["AITASK_OUTPUT"] == f"/workspace/{name}"
        assert pods["models-mid"][0]["spec"]["containers"][0]["args"] == ["--model", "mid"]
        fuse = _env(pods["fuse"][0])
        assert json.loads(fuse["AITASK_MEMBERS"]) == [
            {"subtask": "models-big", "variant": "big", "weight": 0.95, "output": "/workspace/models-big"},
            {"subtask": "models-mid", "variant": "mid", "weight": 0.9, "output": "/workspace/models-mid"},
            {"subtask": "models-tiny", "variant": "tiny", "weight": 0.8, "output": "/workspace/models-tiny"},
        ]

        cluster.kubectl("delete", "aitask", "ens", "-n", namespace, "--wait=true", timeout=60)
        wait_for(lambda: get(cluster, "pvc", "ens-workspace", namespace) is None, timeout=60,
                 what="the workspace claim to be deleted with its AITask")
        assert not list_objects(cluster, "jobs", namespace, "aitask.dev/task=ens")
    finally:
        cluster.kubectl("delete", "pv", storage_class, "--ignore-not-found", "--wait=false", check=False)


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("spec.subtasks[0].ensemble.members", {"ensemble": {"members": ["tiny", "huge"]}}),
        ("spec.subtasks[0].variants[0].quality", {"variants": [{"name": "tiny", "quality": 1.5}]}),
        ("spec.subtasks[0].minQuality", {"minQuality": 0.99}),
        ("spec.workspace", None),
    ],
    ids=["unknown-variant", "quality-out-of-range", "min-quality-leaves-none", "workspace-without-storage"],
)
def test_bad_variant_or_workspace_is_rejected_by_the_api_server_naming_the_field(
    cluster: Cluster, namespace: str, classes: dict[str, Any], field: str, change: dict[str, Any] | None
) -> None:
    step = {"name": "m", "image": "x", "variants": [{"name": "tiny", "quality": 0.8}], **(change or {})}
    body = aitask("bad", [step], **({"workspace": {"mountPath": "/w"}} if change is None else {}))
    with pytest.raises(CommandError) as err:
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))
    assert field in err.value.stderr, err.value.stderr
    assert get(cluster, "aitask", "bad", namespace) is None
