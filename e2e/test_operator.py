"""The operator end to end: real kube-apiserver, job controller, scheduler and KWOK nodes.

Each test gets its own namespace and its own operator process (`python -m aitask run`),
watching only that namespace, with the ExecutorClasses of manifests/samples.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster, CommandError
from e2e.operator import Operator, running_operator
from e2e.util import events, get, list_objects, wait_for

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent
CLASSES = REPO / "manifests" / "samples" / "executorclasses.yaml"


@pytest.fixture(scope="module")
def classes(cluster: Cluster) -> Iterator[dict[str, dict[str, Any]]]:
    """CRDs and the sample ExecutorClasses, installed once for the module."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                    "crd/aitasks.aitask.dev", "crd/executorclasses.aitask.dev")
    # kubectl's discovery cache predates the CRDs and would not know the new kinds.
    shutil.rmtree(cluster.dir / "cache" / "kube", ignore_errors=True)
    cluster.kubectl("apply", "--server-side", "-f", str(CLASSES))
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(CLASSES.read_text())}
    yield docs
    cluster.kubectl("delete", "-f", str(CLASSES), "--ignore-not-found", check=False)


@pytest.fixture
def operator(
    cluster: Cluster, namespace: str, classes: dict[str, Any], tmp_path: Path
) -> Iterator[Operator]:
    with running_operator(cluster, namespace, tmp_path) as op:
        yield op
        print(f"--- operator log ({namespace}) ---\n{op.log(200)}")  # shown only when the test fails


def aitask(name: str, subtasks: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aitask.dev/v1alpha1",
        "kind": "AITask",
        "metadata": {"name": name},
        "spec": {"subtasks": subtasks, **spec},
    }


def sim(duration: str = "2s", outcome: str | None = None, **extra: str) -> dict[str, Any]:
    ann = {"sim.aitask.dev/duration": duration, **extra}
    if outcome:
        ann["sim.aitask.dev/outcome"] = outcome
    return {"annotations": ann}


def task_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj = get(cluster, "aitask", name, namespace) or {}
    status: dict[str, Any] = obj.get("status") or {}
    return status


def wait_phase(cluster: Cluster, op: Operator, namespace: str, name: str, phase: str,
               timeout: float = 90) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = task_status(cluster, namespace, name)
        return status if status.get("phase") == phase else None

    return wait_for(
        check, timeout=timeout, interval=0.5, what=f"AITask {name} to be {phase}",
        describe=lambda: json.dumps(task_status(cluster, namespace, name), indent=1)[:4000] + "\n" + op.log(60),
    )


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def node_labels(cluster: Cluster) -> dict[str, dict[str, str]]:
    return {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in list_objects(cluster, "nodes")}


PIPELINE = [
    {"name": "preprocess", "type": "preprocess", "image": "registry.example/prep:e2e",
     "executor": {"cpu": "2", "memory": "4Gi"}, "estimate": {"seconds": 60}, "podMetadata": sim("2s")},
    {"name": "inference", "type": "inference", "image": "registry.example/infer:e2e", "dependsOn": ["preprocess"],
     "parallelism": 4, "executor": {"accelerators": 1, "cpu": "4", "memory": "16Gi"},
     "estimate": {"seconds": 600, "onClass": "a100-40gb"}, "podMetadata": sim("3s")},
    {"name": "fusion", "type": "fusion", "image": "registry.example/fuse:e2e", "dependsOn": ["inference"],
     "estimate": {"seconds": 30}, "podMetadata": sim("1s")},
]


def test_pipeline_runs_in_order_on_the_right_pools(cluster: Cluster, namespace: str, operator: Operator) -> None:
    cluster.apply(aitask("pipe", PIPELINE), namespace=namespace)
    status = wait_phase(cluster, operator, namespace, "pipe", "Succeeded")

    jobs = {j["metadata"]["labels"]["aitask.dev/subtask"]: j
            for j in list_objects(cluster, "jobs", namespace, "aitask.dev/task=pipe")}
    assert sorted(jobs) == ["fusion", "inference", "preprocess"]
    # Dependency order: a dependent starts only after its dependency completed.
    assert ts(jobs["preprocess"]["status"]["completionTime"]) <= ts(jobs["inference"]["status"]["startTime"])
    assert ts(jobs["inference"]["status"]["completionTime"]) <= ts(jobs["fusion"]["status"]["startTime"])
    # Shards: an Indexed Job with 4 completions, each pod holding one GPU.
    infer = jobs["inference"]
    assert infer["spec"]["completionMode"] == "Indexed"
    assert infer["spec"]["completions"] == 4 and infer["status"]["succeeded"] == 4
    owner = infer["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "AITask" and owner["name"] == "pipe" and owner["controller"] is True

    labels = node_labels(cluster)
    pods = list_objects(cluster, "pods", namespace, "aitask.dev/task=pipe")
    by_sub: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        by_sub.setdefault(pod["metadata"]["labels"]["aitask.dev/subtask"], []).append(pod)
    for sub in ("preprocess", "fusion"):
        for pod in by_sub[sub]:
            assert labels[pod["spec"]["nodeName"]].get("aitask.dev/pool") == "cpu", pod["spec"]["nodeName"]
            assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"].get("limits", {})
    chosen = status["subtasks"][1]["plan"]["class"]
    selector = {d["metadata"]["name"]: d["spec"]["nodeSelector"] for d in yaml.safe_load_all(CLASSES.read_text())}
    assert len(by_sub["inference"]) == 4
    for pod in by_sub["inference"]:
        node = labels[pod["spec"]["nodeName"]]
        for key, value in selector[chosen].items():
            assert node.get(key) == value, (pod["spec"]["nodeName"], chosen)
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    # Status: plan with alternatives, progress, conditions, per-attempt history, costs.
    assert status["progress"] == "3/3"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    inference = status["subtasks"][1]
    assert inference["phase"] == "Succeeded" and inference["attempts"] == 1
    assert inference["history"][0]["result"] == "Succeeded" and inference["history"][0]["actualSeconds"] > 0
    assert len(inference["plan"]["alternatives"]) >= 3
    assert any(not a["feasible"] and a["reason"] for a in status["subtasks"][0]["plan"]["alternatives"])
    assert status["estimatedCost"] > 0 and status["actualCost"] > 0
    reasons = [e["reason"] for e in events(cluster, namespace, involved="pipe")]
    assert "AttemptStarted" in reasons and "AllSucceeded" in reasons

    # Finished Jobs get their TTL once their result is recorded (not at creation).
    wait_for(lambda: all(j["spec"].get("ttlSecondsAfterFinished") == 3600
                         for j in list_objects(cluster, "jobs", namespace, "aitask.dev/task=pipe")),
             timeout=30, what="the TTL on the finished Jobs")

    # What ran was learned per (profile, class) and persisted in the class status.
    learned = get(cluster, "executorclass", chosen)["status"]["learned"]  # type: ignore[index]
    assert learned["registry.example/infer"]["samples"] >= 1


def test_failing_subtask_is_retried_then_fails_the_task(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    subtasks = [
        {"name": "train", "type": "training", "image": "registry.example/fail:e2e",
         "executor": {"accelerators": 1, "classes": ["l4", "a100-40gb"]},
         "retry": {"limit": 1, "backoffSeconds": 1}, "estimate": {"seconds": 100},
         "podMetadata": sim("1s", "fail", **{"sim.aitask.dev/exit-code": "3"})},
        {"name": "eval", "type": "evaluation", "image": "registry.example/eval:e2e", "dependsOn": ["train"]},
    ]
    cluster.apply(aitask("flaky", subtasks), namespace=namespace)
    status = wait_phase(cluster, operator, namespace, "flaky", "Failed")
    train, evaluation = status["subtasks"]
    assert train["phase"] == "Failed" and train["attempts"] == 2
    assert [a["result"] for a in train["history"]] == ["Failed", "Failed"]
    assert all(a["exitCode"] == 3 for a in train["history"])
    assert evaluation["phase"] == "Skipped"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "RetriesExhausted"
    jobs = sorted(j["metadata"]["name"] for j in list_objects(cluster, "jobs", namespace, "aitask.dev/task=flaky"))
    assert jobs == ["flaky-train-1", "flaky-train-2"]  # the failed attempt is kept for inspection
    reasons = [e["reason"] for e in events(cluster, namespace, involved="flaky")]
    assert "Retrying" in reasons and "RetriesExhausted" in reasons


def test_oom_killed_attempt_is_retried_on_a_class_with_more_memory(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    subtasks = [
        {"name": "infer", "type": "inference", "image": "registry.example/big:e2e",
         "executor": {"accelerators": 1, "cpu": "2", "memory": "8Gi"},
         # costWeight first picks the cheapest class that fits (L4, 24 GiB); the fake kubelet OOM-kills
         # pods of this sub-task on the l4 class only, so the retry must move to more memory.
         "estimate": {"seconds": 600, "onClass": "a100-40gb"},
         "retry": {"limit": 2, "backoffSeconds": 1},
         "podMetadata": sim("1s", **{"sim.aitask.dev/oom-on-class": "l4"})},
    ]
    cluster.apply(aitask("oomy", subtasks, objective={"timeWeight": 0.0001, "costWeight": 100}),
                  namespace=namespace)
    status = wait_phase(cluster, operator, namespace, "oomy", "Succeeded")
    history = status["subtasks"][0]["history"]
    assert history[0]["class"] == "l4" and history[0]["result"] == "OOMKilled"
    assert history[-1]["result"] == "Succeeded"
    memory = {d["metadata"]["name"]: (d["spec"].get("accelerator") or {}).get("memoryGiB", 0)
              for d in yaml.safe_load_all(CLASSES.read_text())}
    assert memory[history[-1]["class"]] > memory["l4"]
    reasons = [e["reason"] for e in events(cluster, namespace, involved="oomy")]
    assert "OOMKilled" in reasons


def test_invalid_aitask_is_rejected_by_the_api_server_naming_the_field(
    cluster: Cluster, namespace: str, classes: dict[str, Any]
) -> None:
    cases = {
        "spec.subtasks[0].executor.cpu": [{"name": "a", "image": "x", "executor": {"cpu": "lots"}}],
        "spec.subtasks[0].dependsOn": [{"name": "a", "image": "x", "dependsOn": ["a"]}],
        "spec.subtasks[1]": [{"name": "a", "image": "x"}, {"name": "a", "image": "y"}],
        "spec.subtasks": [{"name": "a", "image": "x", "dependsOn": ["missing"]}],
        "spec.subtasks[0].completions": [{"name": "a", "image": "x", "parallelism": 4, "completions": 2}],
        "spec.priority": None,
    }
    for field, subtasks in cases.items():
        body = aitask("bad", subtasks or [{"name": "a", "image": "x"}])
        if subtasks is None:
            body["spec"]["priority"] = -1
        with pytest.raises(CommandError) as err:
            cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))
        assert field in err.value.stderr, err.value.stderr
    assert get(cluster, "aitask", "bad", namespace) is None


def test_dependency_cycle_gets_invalid_spec_once(cluster: Cluster, namespace: str, operator: Operator) -> None:
    subtasks = [
        {"name": "a", "image": "x", "dependsOn": ["c"]},
        {"name": "b", "image": "x", "dependsOn": ["a"]},
        {"name": "c", "image": "x", "dependsOn": ["b"]},
    ]
    cluster.apply(aitask("loop", subtasks), namespace=namespace)
    status = wait_phase(cluster, operator, namespace, "loop", "Invalid", timeout=30)
    cond = next(c for c in status["conditions"] if c["type"] == "InvalidSpec")
    assert cond["status"] == "True" and cond["reason"] == "DependencyCycle"
    assert "spec.subtasks[].dependsOn" in cond["message"] and "cycle" in cond["message"]
    # Never retried in a loop: the object and its events stay still over several scheduling periods.
    rv = get(cluster, "aitask", "loop", namespace)["metadata"]["resourceVersion"]  # type: ignore[index]
    time.sleep(4)
    assert get(cluster, "aitask", "loop", namespace)["metadata"]["resourceVersion"] == rv  # type: ignore[index]
    invalid = [e for e in events(cluster, namespace, involved="loop") if e["reason"] == "InvalidSpec"]
    assert len(invalid) == 1 and invalid[0].get("count", 1) == 1
    assert list_objects(cluster, "jobs", namespace) == []
    assert operator.alive()


def test_operator_killed_mid_run_resumes_without_duplicates(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    steps = [dict(s) for s in PIPELINE]
    steps[1] = {**steps[1], "podMetadata": sim("6s")}
    cluster.apply(aitask("crash", steps), namespace=namespace)

    def inference_running() -> bool:
        subs = task_status(cluster, namespace, "crash").get("subtasks") or []
        return len(subs) > 1 and subs[1].get("phase") == "Running"

    wait_for(inference_running, timeout=60, what="inference to be running", describe=operator.log)
    operator.kill()
    time.sleep(2)
    operator.start()
    status = wait_phase(cluster, operator, namespace, "crash", "Succeeded")
    names = sorted(j["metadata"]["name"] for j in list_objects(cluster, "jobs", namespace, "aitask.dev/task=crash"))
    assert names == ["crash-fusion-1", "crash-inference-1", "crash-preprocess-1"]
    assert [s["attempts"] for s in status["subtasks"]] == [1, 1, 1]
    # No sub-task was admitted twice. (An Event is posted after the status write that records its
    # transition, so a kill between the two may lose that one Event: Events are best-effort.)
    started = [e["message"].split(":")[0] for e in events(cluster, namespace, involved="crash")
               if e["reason"] == "AttemptStarted"]
    assert len(started) == len(set(started)), started
    assert set(started) <= {"preprocess", "inference", "fusion"}
    assert operator.starts == 2


def test_sigterm_stops_the_operator_cleanly(cluster: Cluster, namespace: str, operator: Operator) -> None:
    """A rollout or a node drain sends SIGTERM: the operator exits by itself, with its cleanup run,
    well within the pod's grace period (quiet watches used to hold it until SIGKILL)."""
    operator.wait_metrics()
    operator.stop(timeout=10)
    assert not operator.sigkilled, operator.log(40)
    assert "Activity 'shutdown' succeeded" in operator.log_path.read_text()


def test_deleting_the_aitask_removes_its_jobs_and_pods(cluster: Cluster, namespace: str, operator: Operator) -> None:
    steps = [{"name": "long", "type": "preprocess", "image": "registry.example/long:e2e", "podMetadata": sim("1h")}]
    cluster.apply(aitask("doomed", steps), namespace=namespace)
    wait_for(lambda: list_objects(cluster, "pods", namespace, "aitask.dev/task=doomed"), timeout=60,
             what="the sub-task's pod", describe=operator.log)
    cluster.kubectl("delete", "aitask", "doomed", "-n", namespace, "--wait=true", timeout=60)
    wait_for(lambda: not list_objects(cluster, "jobs", namespace, "aitask.dev/task=doomed")
             and not list_objects(cluster, "pods", namespace, "aitask.dev/task=doomed"),
             timeout=60, what="Jobs and pods to be garbage-collected")


@pytest.mark.parametrize(
    ("objective", "expected"),
    [({"timeWeight": 1.0, "costWeight": 0.0}, "h100"), ({"timeWeight": 0.0001, "costWeight": 100.0}, "l4")],
    ids=["alpha-high-picks-fastest", "beta-high-picks-cheapest"],
)
def test_objective_weights_choose_the_gpu_pool(
    cluster: Cluster, namespace: str, operator: Operator, objective: dict[str, float], expected: str
) -> None:
    steps = [{"name": "train", "type": "training", "image": f"registry.example/w-{expected}:e2e",
              "executor": {"accelerators": 1, "cpu": "2", "memory": "8Gi"},
              "estimate": {"seconds": 600, "onClass": "a100-40gb"}, "podMetadata": sim("1s")}]
    cluster.apply(aitask("weights", steps, objective=objective), namespace=namespace)
    status = wait_phase(cluster, operator, namespace, "weights", "Succeeded")
    plan = status["subtasks"][0]["plan"]
    assert plan["class"] == expected, json.dumps(plan, indent=1)
    considered = {a["class"] for a in plan["alternatives"]}
    assert {"h100", "a100-40gb", "l4"} - {expected} <= considered
    labels = node_labels(cluster)
    selector = {d["metadata"]["name"]: d["spec"]["nodeSelector"] for d in yaml.safe_load_all(CLASSES.read_text())}
    for pod in list_objects(cluster, "pods", namespace, "aitask.dev/task=weights"):
        for key, value in selector[expected].items():
            assert labels[pod["spec"]["nodeName"]][key] == value


def plan_live(cluster: Cluster, body: dict[str, Any], tmp_path: Path, *flags: str) -> Any:
    """``aitask plan --kubeconfig --format json`` of one AITask body against the test cluster."""
    path = tmp_path / f"{body['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(body))
    out = subprocess.run(
        [str(REPO / ".venv/bin/python"), "-m", "aitask", "plan", str(path), "--kubeconfig", str(cluster.kubeconfig),
         "--format", "json", *flags],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_plan_previews_against_the_live_cluster(cluster: Cluster, classes: dict[str, Any], tmp_path: Path) -> None:
    plan = plan_live(cluster, aitask("preview", PIPELINE), tmp_path)
    text = json.dumps(plan)
    for name in ("preprocess", "inference", "fusion", "h100", "cpu"):
        assert name in text
