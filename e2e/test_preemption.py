"""Preemption and migration end to end (issue 10) on the real apiserver, job controller, scheduler and
KWOK nodes: a long low-weight preemptible sub-task is stopped for a short high-weight one and resumes with
the work it did; a non-preemptible one beside it is never touched; the operator killed right after the
preemption is recorded neither loses nor duplicates the attempt; a preemptible sub-task on a slow pool
moves to a faster one when it frees."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.operator import Operator, running_operator
from e2e.test_operator import aitask, classes, plan_live, sim, task_status
from e2e.util import events, get, list_objects, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["classes"]  # the module-scoped fixture: CRDs and the sample ExecutorClasses

GRACE = 5
OVERHEAD = 2
PREEMPTIBLE = {"allowed": True, "gracePeriodSeconds": GRACE, "resumeOverheadSeconds": OVERHEAD}
MIN_RUN = "2"  # seconds an attempt runs before it may be preempted (the operator's and the preview's)


@pytest.fixture
def operator(cluster: Cluster, namespace: str, classes: dict[str, Any], tmp_path: Path) -> Iterator[Operator]:
    env = {"AITASK_PREEMPT_MIN_RUN_SECONDS": MIN_RUN}
    with running_operator(cluster, namespace, tmp_path, env) as op:
        yield op
        print(f"--- operator log ({namespace}) ---\n{op.log(200)}")  # shown only when the test fails


def step(profile: str, *, pools: list[str], seconds: float, on: str, duration: str, gpus: int = 1, pods: int = 1,
         preemption: dict[str, Any] | None = None) -> dict[str, Any]:
    """A training step; its own ``profile``, so what one task's runs teach does not change another's estimate."""
    out: dict[str, Any] = {
        "name": "train", "type": "training", "image": "registry.example/train:e2e", "profile": profile,
        "executor": {"accelerators": gpus, "cpu": "1", "memory": "1Gi", "classes": pools},
        "estimate": {"seconds": seconds, "onClass": on}, "podMetadata": sim(duration),
    }
    if pods > 1:
        out.update(parallelism=pods, gang=True)
    if preemption is not None:
        out["preemption"] = preemption
    return out


def history(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    subs = task_status(cluster, namespace, name).get("subtasks") or []
    return list(subs[0].get("history") or []) if subs else []


def wait_attempt(cluster: Cluster, op: Operator, namespace: str, name: str, number: int, result: str,
                 timeout: float = 60) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        h = history(cluster, namespace, name)
        return h if len(h) >= number and h[number - 1].get("result", "Running") == result else None

    return wait_for(check, timeout=timeout, interval=0.3, what=f"{name} attempt {number} {result}",
                    describe=lambda: json.dumps(task_status(cluster, namespace, name), indent=1)[:3000]
                    + "\n" + op.log(60))


def finished(cluster: Cluster, op: Operator, namespace: str, name: str) -> None:
    """Wait for the task to succeed: a pod still running when the test's namespace is deleted would stay
    Terminating on its KWOK node (holding its GPU for the tests after this one)."""
    wait_for(lambda: task_status(cluster, namespace, name).get("phase") == "Succeeded", timeout=90, interval=0.5,
             what=f"{name} to succeed", describe=lambda: op.log(60))


class JobWatch:
    """Polls the namespace's Jobs in the background: the most Jobs of one task seen at once."""

    def __init__(self, cluster: Cluster, namespace: str, task: str) -> None:
        self.cluster, self.namespace, self.task = cluster, namespace, task
        self.most = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(0.3):
            jobs = [j for j in list_objects(self.cluster, "jobs", self.namespace)
                    if j["metadata"]["name"].startswith(f"{self.task}-train-")]
            self.most = max(self.most, len(jobs))

    def __enter__(self) -> JobWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)


def test_a_preemptible_task_on_a_slow_pool_migrates_when_a_faster_one_frees(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    # Both L4 nodes (4 GPUs each) are held by a gang that ends after 8 s, though its estimate says hours:
    # the mover starts on a T4 (0.2 vs the L4's 0.45), and moves once the L4s free (2.25x faster).
    blocker = step("blocker", pools=["l4"], seconds=36_000, on="l4", duration="8s", gpus=4, pods=2)
    cluster.apply(aitask("blocker", [blocker]), namespace=namespace)
    wait_attempt(cluster, operator, namespace, "blocker", 1, "Running")
    cluster.apply(aitask("mover", [step("mover", pools=["t4", "l4"], seconds=36_000, on="t4", duration="20s",
                                        preemption=PREEMPTIBLE)]), namespace=namespace)
    h = wait_attempt(cluster, operator, namespace, "mover", 1, "Running")
    assert h[0]["class"] == "t4"
    h = wait_attempt(cluster, operator, namespace, "mover", 1, "Preempted", timeout=90)
    assert h[0]["movedTo"] == "l4" and not h[0].get("preemptedBy")
    h = wait_attempt(cluster, operator, namespace, "mover", 2, "Running", timeout=60)
    assert h[1]["class"] == "l4"
    assert events(cluster, namespace, involved="mover", reason="Migrated")
    finished(cluster, operator, namespace, "mover")


def test_preempted_for_a_short_task_resumes_and_the_operator_killed_meanwhile_loses_nothing(
    cluster: Cluster, namespace: str, operator: Operator, tmp_path: Path
) -> None:
    # The estimate on a T4 says ten hours, so the short task's ratio is far higher; the pods themselves end
    # within a minute (KWOK), so nothing of this test holds a GPU for long after it.
    hours = 36_000.0
    cluster.apply([
        aitask("steady", [step("steady", pools=["t4"], seconds=hours, on="t4", duration="40s")]),
        aitask("long", [step("long", pools=["t4"], seconds=hours, on="t4", duration="20s", preemption=PREEMPTIBLE)]),
    ], namespace=namespace)
    wait_attempt(cluster, operator, namespace, "steady", 1, "Running")
    wait_attempt(cluster, operator, namespace, "long", 1, "Running")
    job = wait_for(lambda: get(cluster, "job", "long-train-1", namespace), timeout=30, what="Job long-train-1")
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == GRACE  # what its pods get
    short = aitask("short", [step("short", pools=["t4"], seconds=60, on="t4", duration="4s")], priority=10)
    # Previewed first: `aitask plan` on the live cluster names the work the operator is about to stop, once
    # the long attempt has run its minimum run time (the short task does not exist yet: nothing is stopped).
    body = {**short, "metadata": {**short["metadata"], "namespace": namespace}}
    preempts = wait_for(
        lambda: plan_live(cluster, body, tmp_path, "--preempt-min-run-seconds", MIN_RUN)["subtasks"][0]["preempts"],
        timeout=15, interval=0.5, what="the plan to name the work it would preempt (the operator's minimum run time)")
    assert [(p["task"], p["subtask"]) for p in preempts] == [(f"{namespace}/long", "train")]
    with JobWatch(cluster, namespace, "long") as watch:
        cluster.apply(short, namespace=namespace)
        h = wait_attempt(cluster, operator, namespace, "long", 1, "Preempted")
        # Killed right after the preemption was recorded, before or while its Job goes: a fresh operator
        # neither loses the attempt (no failure, no retry) nor starts a second Job beside the first.
        operator.kill()
        assert h[0]["preemptedBy"] == f"{namespace}/short/train"
        assert 0 < h[0]["progress"] < 1
        operator.start()
        finished(cluster, operator, namespace, "short")
        h = wait_attempt(cluster, operator, namespace, "long", 2, "Running")
    assert [a.get("result", "Running") for a in h] == ["Preempted", "Running"]
    assert h[1]["progressStart"] == pytest.approx(h[0]["progress"])
    assert watch.most == 1, "two Jobs of the sub-task existed at once"
    long_status = task_status(cluster, namespace, "long")["subtasks"][0]
    # The resumed attempt's estimate: the work left on the class plus the resume overhead.
    left = (1 - h[0]["progress"]) * hours + OVERHEAD
    assert long_status["plan"]["estimatedSeconds"] == pytest.approx(left, rel=0.01)
    assert long_status["progress"] == pytest.approx(h[0]["progress"])
    preempted = events(cluster, namespace, involved="long", reason="Preempted")
    assert len(preempted) == 1 and "short" in preempted[0]["message"]
    assert not events(cluster, namespace, involved="long", reason="AttemptFailed")
    assert len(events(cluster, namespace, involved="long", reason="AttemptStarted")) == 2
    # The non-preemptible task beside it was never touched; both end (the resumed attempt runs to its end).
    finished(cluster, operator, namespace, "steady")
    assert [a["result"] for a in history(cluster, namespace, "steady")] == ["Succeeded"]
    finished(cluster, operator, namespace, "long")
    assert [a["result"] for a in history(cluster, namespace, "long")] == ["Preempted", "Succeeded"]
