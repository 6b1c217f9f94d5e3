"""Shared pieces of the chaos suite: sizes, workloads, a Job watch to aim faults with, the audit of what
the operator left behind, and the count tables every scenario prints.

Sizes: ``small`` (the default; part of ``make test``/``make e2e``) and ``full`` (``make chaos``), chosen
with ``--chaos-size`` or ``AITASK_CHAOS_SIZE``; ``AITASK_CHAOS_SEED`` fixes the random faults.
"""

from __future__ import annotations

import json
import os
import queue
import random
import ssl
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from e2e.cluster import Cluster
from e2e.util import list_objects, wait_for

API = "/apis/aitask.dev/v1alpha1"


@dataclass(frozen=True)
class Size:
    name: str
    storm_tasks: int
    storm_kills: int
    storm_aimed: int
    storm_timeout: float
    outage_tasks: int  # created before the outage, and as many after it
    outage_seconds: float
    peer_tasks: int
    adversarial: int
    cluster_wide_tasks: int
    # Node loss (PodGC's 40 s quarantine plus a 75 s shard run twice) and the peer takeover (Kopf's 60 s
    # peering lifetime) take 2-3 min each whatever the size; the small size leaves them to make chaos
    # unless AITASK_CHAOS_SLOW=1, so that make test grows by about 6 minutes, not 11.
    slow_scenarios: bool = True


SIZES = {
    "small": Size("small", storm_tasks=20, storm_kills=6, storm_aimed=3, storm_timeout=300, outage_tasks=8,
                  outage_seconds=10, peer_tasks=6, adversarial=300, cluster_wide_tasks=2,
                  slow_scenarios=os.environ.get("AITASK_CHAOS_SLOW", "") not in ("", "0")),
    "full": Size("full", storm_tasks=200, storm_kills=16, storm_aimed=8, storm_timeout=1800, outage_tasks=40,
                 outage_seconds=15, peer_tasks=30, adversarial=300, cluster_wide_tasks=6),
}


def needs_slow(size: Size) -> None:
    """Skips a scenario whose fixed Kubernetes/Kopf delays make it slow, at the small size (see Size)."""
    import pytest

    if not size.slow_scenarios:
        pytest.skip(f"{size.name} size: slow scenario, run by make chaos (or AITASK_CHAOS_SLOW=1)")


def seed() -> int:
    return int(os.environ.get("AITASK_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))


# ---- reports ---------------------------------------------------------------------------------------------

REPORTS: list[str] = []  # printed in the terminal summary (e2e/chaos/conftest.py)


def table(title: str, rows: Mapping[str, object]) -> str:
    """A two-column table of counts (and a few figures), printed now and again in the session summary."""
    width = max(len(k) for k in rows)
    lines = [f"{title}", "-" * (width + 14)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows.items()]
    text = "\n".join(lines)
    REPORTS.append(text)
    print(text)
    return text


# ---- workloads -------------------------------------------------------------------------------------------


def sim(duration: str, **extra: str) -> dict[str, Any]:
    return {"annotations": {"sim.aitask.dev/duration": duration, **extra}}


def aitask(name: str, subtasks: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "aitask.dev/v1alpha1", "kind": "AITask", "metadata": {"name": name},
            "spec": {"subtasks": subtasks, **spec}}


def pipeline(name: str, rng: random.Random, *, gpu_parallelism: int = 1) -> dict[str, Any]:
    """CPU -> GPU -> CPU, each step 3-8 s on the fake kubelet."""
    d = [f"{rng.randint(3, 8)}s" for _ in range(3)]
    return aitask(name, [
        {"name": "prep", "type": "preprocess", "image": "registry.example/prep:chaos",
         "executor": {"cpu": "1", "memory": "1Gi"}, "estimate": {"seconds": 5}, "podMetadata": sim(d[0])},
        {"name": "infer", "type": "inference", "image": "registry.example/infer:chaos", "dependsOn": ["prep"],
         "parallelism": gpu_parallelism, "executor": {"accelerators": 1, "cpu": "1", "memory": "2Gi"},
         "estimate": {"seconds": 5, "onClass": "a100-40gb"}, "podMetadata": sim(d[1])},
        {"name": "fuse", "type": "fusion", "image": "registry.example/fuse:chaos", "dependsOn": ["infer"],
         "executor": {"cpu": "1", "memory": "1Gi"}, "estimate": {"seconds": 5}, "podMetadata": sim(d[2])},
    ])


def create_task(cluster: Cluster, namespace: str, body: Mapping[str, Any], *,
                strict: bool = False) -> tuple[int, Any]:
    """POST an AITask (raw, so a rejection's message comes back whole); (HTTP status, body)."""
    query = "?fieldValidation=Strict" if strict else ""
    return cluster.api_response("POST", f"{API}/namespaces/{namespace}/aitasks{query}", body)


def create_tasks(cluster: Cluster, namespace: str, bodies: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Creates each AITask; returns name -> time.monotonic() of its creation."""
    out = {}
    for body in bodies:
        code, data = create_task(cluster, namespace, body)
        assert code == 201, (code, data)
        out[body["metadata"]["name"]] = time.monotonic()
    return out


def tasks_by_name(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    return {t["metadata"]["name"]: t for t in cluster.api("GET", f"{API}/namespaces/{namespace}/aitasks")["items"]}


def phases(cluster: Cluster, namespace: str) -> Counter[str]:
    return Counter((t.get("status") or {}).get("phase", "-") for t in tasks_by_name(cluster, namespace).values())


def wait_all(cluster: Cluster, namespace: str, names: Sequence[str], phase: str, *, timeout: float,
             describe: Any = None) -> dict[str, dict[str, Any]]:
    """Waits until every task of ``names`` has ``phase`` (a task that ends in another final phase fails)."""
    assert names, "no tasks to wait for"

    def check() -> dict[str, dict[str, Any]] | None:
        tasks = tasks_by_name(cluster, namespace)
        bad = {n: (tasks.get(n, {}).get("status") or {}).get("phase") for n in names}
        final = {n: p for n, p in bad.items() if p in ("Failed", "Invalid") and p != phase}
        assert not final, f"tasks ended {final}"
        return tasks if all(p == phase for p in bad.values()) else None

    def report() -> str:
        tasks = tasks_by_name(cluster, namespace)
        lines = [f"{n}/{s.get('name')}: {s.get('phase')}: {s.get('message', '')[:300]}"
                 for n in names for s in (tasks.get(n, {}).get("status") or {}).get("subtasks") or []
                 if s.get("phase") != phase]
        return (f"phases: {dict(phases(cluster, namespace))}\n" + "\n".join(lines[:40]) + "\n"
                + (describe() if describe else ""))

    return wait_for(check, timeout=timeout, interval=1.0, what=f"{len(names)} AITasks to be {phase}",
                    describe=report)


# ---- a watch on Jobs, to aim faults and time admissions -------------------------------------------------


class JobWatch:
    """Streams ADDED events of Jobs in a namespace (reconnecting across API outages) and records when
    each Job was first seen (time.monotonic())."""

    def __init__(self, cluster: Cluster, namespace: str | None) -> None:
        self.cluster = cluster
        self.path = (f"/apis/batch/v1/namespaces/{namespace}/jobs" if namespace else "/apis/batch/v1/jobs")
        self.first_seen: dict[str, float] = {}  # "ns/name" -> monotonic
        self.added: queue.Queue[tuple[float, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-watch", daemon=True)

    def __enter__(self) -> JobWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.cluster.dir / "pki" / "ca.pem"))
        rv = ""
        while not self._stop.is_set():
            url = f"{self.cluster.server}{self.path}?watch=1&allowWatchBookmarks=true&timeoutSeconds=30"
            if rv:
                url += f"&resourceVersion={rv}"
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.cluster.token}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=35) as resp:
                    for line in resp:
                        if self._stop.is_set():
                            return
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":  # 410 Gone: start over from now
                            rv = ""
                            break
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if event.get("type") == "ADDED":
                            meta = obj["metadata"]
                            key = f"{meta['namespace']}/{meta['name']}"
                            if key not in self.first_seen:
                                now = time.monotonic()
                                self.first_seen[key] = now
                                self.added.put((now, key))
            except (OSError, ValueError):
                time.sleep(0.2)  # the API server is down or restarting: try again

    def next_added(self, *, after: float, timeout: float) -> tuple[float, str] | None:
        """The next Job first seen after ``after`` (monotonic), or None after ``timeout`` s."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                at, key = self.added.get(timeout=left)
            except queue.Empty:
                return None
            if at >= after:
                return at, key


# ---- the audit --------------------------------------------------------------------------------------------


@dataclass
class Audit:
    """What the operator left behind, counted against what must hold."""

    tasks: int = 0
    succeeded: int = 0
    subtasks: int = 0
    jobs: int = 0
    duplicates: int = 0  # two Jobs for one attempt, an attempt number used twice, more than one success
    extra_attempts: int = 0  # sub-tasks that needed more than one attempt
    lost: int = 0  # history entries without their Job, Jobs without a history entry, succeeded sub-tasks without a Job
    stuck: int = 0  # tasks not in the expected phase
    started_events: int = 0
    lost_events: int = 0  # attempts without an AttemptStarted Event
    duplicate_events: int = 0  # attempts with more than one
    left_running: int = 0  # pods not finished, Jobs still active
    problems: list[str] = field(default_factory=list)

    def rows(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "problems"}


def audit(cluster: Cluster, namespace: str, names: Sequence[str], *, phase: str = "Succeeded",
          one_attempt: bool = True) -> Audit:
    """Checks, for the tasks ``names``: each is in ``phase``; per sub-task exactly one successful attempt;
    no attempt number used twice; no two Jobs for one attempt; the status history equals the Jobs that
    exist; one AttemptStarted Event per attempt; nothing left running."""
    a = Audit()
    tasks = tasks_by_name(cluster, namespace)
    jobs = list_objects(cluster, "jobs", namespace)
    pods = list_objects(cluster, "pods", namespace)
    events = list_objects(cluster, "events", namespace)
    jobs_by_attempt: dict[tuple[str, str, int], list[str]] = {}
    for job in jobs:
        meta = job["metadata"]
        ann, labels = meta.get("annotations") or {}, meta.get("labels") or {}
        task = ann.get("aitask.dev/task-name") or labels.get("aitask.dev/task", "")
        if task in names:
            key = (task, labels.get("aitask.dev/subtask", ""), int(labels.get("aitask.dev/attempt", "0")))
            jobs_by_attempt.setdefault(key, []).append(meta["name"])
            if (job.get("status") or {}).get("active"):
                a.left_running += 1
                a.problems.append(f"Job {meta['name']} still active")
    a.jobs = sum(len(v) for v in jobs_by_attempt.values())
    for key, found in jobs_by_attempt.items():
        if len(found) > 1:
            a.duplicates += 1
            a.problems.append(f"{key}: {len(found)} Jobs {found}")
    started: Counter[tuple[str, str]] = Counter()
    for ev in events:
        if ev.get("reason") == "AttemptStarted" and ev.get("involvedObject", {}).get("kind") == "AITask":
            started[(ev["involvedObject"]["name"], ev.get("message", "").split(":")[0])] += 1
    a.started_events = sum(c for (t, _), c in started.items() if t in names)
    for name in names:
        a.tasks += 1
        task = tasks.get(name)
        status = (task or {}).get("status") or {}
        if status.get("phase") == "Succeeded":
            a.succeeded += 1
        if status.get("phase") != phase:
            a.stuck += 1
            a.problems.append(f"{name}: phase {status.get('phase')}")
        spec_subs = [s["name"] for s in ((task or {}).get("spec") or {}).get("subtasks", [])]
        recorded = {s["name"]: s for s in status.get("subtasks") or []}
        for sub in spec_subs:
            a.subtasks += 1
            st = recorded.get(sub, {})
            history = st.get("history") or []
            numbers = [h["number"] for h in history]
            if len(numbers) != len(set(numbers)):
                a.duplicates += 1
                a.problems.append(f"{name}/{sub}: attempt numbers {numbers}")
            wins = [h for h in history if h.get("result") == "Succeeded"]
            if phase == "Succeeded" and len(wins) != 1:
                a.duplicates += len(wins) > 1
                a.lost += not wins
                a.problems.append(f"{name}/{sub}: {len(wins)} successful attempts")
            if len(history) > 1:
                a.extra_attempts += 1
                if one_attempt:
                    a.problems.append(f"{name}/{sub}: {len(history)} attempts {[h.get('result') for h in history]}")
            in_history = {(h["number"], h.get("job")) for h in history}
            in_jobs = {(n, j) for (t, s, n), js in jobs_by_attempt.items() if t == name and s == sub for j in js}
            if in_history != in_jobs:
                a.lost += 1
                a.problems.append(f"{name}/{sub}: history {sorted(in_history)} != Jobs {sorted(in_jobs)}")
            count = started.get((name, sub), 0)
            a.lost_events += max(0, len(history) - count)
            a.duplicate_events += max(0, count - len(history))
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        if labels.get("aitask.dev/task") and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            a.left_running += 1
            a.problems.append(f"pod {pod['metadata']['name']} is {(pod.get('status') or {}).get('phase')}")
    return a


def unrecorded_jobs(cluster: Cluster, namespace: str) -> list[str]:
    """Jobs whose attempt the owning AITask's status does not record (yet): right after a kill, a Job
    here means the kill landed between the Job's creation and the status write."""
    tasks = tasks_by_name(cluster, namespace)
    out = []
    for job in list_objects(cluster, "jobs", namespace):
        meta = job["metadata"]
        labels, ann = meta.get("labels") or {}, meta.get("annotations") or {}
        task = tasks.get(ann.get("aitask.dev/task-name") or labels.get("aitask.dev/task", ""), {})
        subs = {s["name"]: s for s in (task.get("status") or {}).get("subtasks") or []}
        history = subs.get(labels.get("aitask.dev/subtask", ""), {}).get("history") or []
        if meta["name"] not in {h.get("job") for h in history}:
            out.append(meta["name"])
    return out


def remove_tasks(cluster: Cluster, namespace: str, timeout: float = 60.0) -> None:
    """Deletes every AITask of the namespace while the operator still runs (it removes Kopf's finalizer);
    whatever is left after ``timeout`` gets its finalizers stripped, so the namespace can go."""
    cluster.kubectl("delete", "aitasks", "--all", "-n", namespace, "--wait=false", check=False, timeout=120)
    end = time.monotonic() + timeout
    while time.monotonic() < end and tasks_by_name(cluster, namespace):
        time.sleep(1)
    for name in tasks_by_name(cluster, namespace):
        cluster.kubectl("patch", "aitask", name, "-n", namespace, "--type=merge",
                        "-p", '{"metadata":{"finalizers":null}}', check=False)


def has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text
