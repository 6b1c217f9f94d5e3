"""The cycle driver (handlers.scheduler.Engine) with fake indexes and a fake API adapter."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from aitask.adapters import kube
from aitask.core.observed import job_view
from aitask.handlers.scheduler import MAX_FAILED_CYCLES, Engine
from aitask.settings import OperatorSettings

CLASSES = [{"metadata": {"name": "cpu", "generation": 1}, "spec": {"nodeSelector": {"pool": "cpu"}}}]
NODES = [{"metadata": {"name": "n1", "labels": {"pool": "cpu"}}, "spec": {},
          "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                     "conditions": [{"type": "Ready", "status": "True"}]}}]


def task(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "aitask.dev/v1alpha1", "kind": "AITask",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u", "generation": 1, "resourceVersion": "5",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"subtasks": [{"name": "a", "image": "x/a:1"}]}, "status": status or {}}


class FakeApi:
    """Records the adapter calls in order; can fail a verb."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: str = "") -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

        async def create_job(manifest: dict[str, Any]) -> bool:
            self._record("create_job", manifest["metadata"]["name"])
            return True

        async def patch_task_status(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
            self._record("patch_status", f"{name}:{status.get('phase')}")
            return {"metadata": {"resourceVersion": "6"}}

        async def post_event(**kw: Any) -> None:
            self._record("event", kw["reason"])

        async def patch_class_status(name: str, status: dict[str, Any]) -> None:
            self._record("class_status", name)

        async def expire_job(namespace: str, name: str, ttl: int) -> None:
            self._record("expire_job", f"{name}:{ttl}")

        for fn in (create_job, patch_task_status, post_event, patch_class_status, expire_job):
            monkeypatch.setattr(kube, fn.__name__, fn)

    def _record(self, verb: str, what: str) -> None:
        if verb == self.fail:
            raise ApiException(status=500, reason="boom")
        self.calls.append((verb, what))


def indexes(tasks: list[dict[str, Any]], jobs: list[Any] | None = None) -> dict[str, Any]:
    return {"aitask_index": {"all": tasks}, "executorclass_index": {"all": CLASSES}, "job_index": {"all": jobs or []},
            "pod_index": {"all": []}, "node_index": {"all": NODES}}


def engine() -> Engine:
    return Engine(settings=OperatorSettings(metrics_port=0, job_ttl_seconds=77))


def test_a_cycle_creates_then_writes_status_then_posts_events(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(monkeypatch)
    eng = engine()
    asyncio.run(eng.run(indexes([task()]), "test"))
    verbs = [v for v, _ in api.calls]
    assert verbs.index("create_job") < verbs.index("patch_status") < verbs.index("event")
    assert ("create_job", "t-a-1") in api.calls
    assert eng.healthy()


def test_a_written_status_is_overlaid_until_the_watch_delivers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(monkeypatch)
    eng = engine()
    asyncio.run(eng.run(indexes([task()]), "first"))
    api.calls.clear()
    # The watch still shows the old status (resourceVersion 5): nothing is decided twice.
    asyncio.run(eng.run(indexes([task()]), "second"))
    assert [v for v, _ in api.calls if v in ("create_job", "patch_status", "event")] == []


def test_events_wait_for_a_successful_status_write(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(monkeypatch, fail="patch_status")
    asyncio.run(engine().run(indexes([task()]), "test"))
    assert [v for v, _ in api.calls] == ["create_job", "class_status"]  # no event for an unrecorded fact


def test_finished_jobs_get_the_configured_ttl_after_the_write(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(monkeypatch)
    eng = engine()
    asyncio.run(eng.run(indexes([task()]), "admit"))
    written = eng.written["ns/t"][2]
    done = job_view({"metadata": {"name": "t-a-1", "namespace": "ns", "labels": {
        "aitask.dev/task": "t", "aitask.dev/subtask": "a", "aitask.dev/attempt": "1", "aitask.dev/class": "cpu"}},
        "status": {"succeeded": 1, "startTime": "2026-01-01T00:00:01Z", "completionTime": "2026-01-01T00:00:09Z",
                   "conditions": [{"type": "Complete", "status": "True"}]}})
    api.calls.clear()
    asyncio.run(eng.run(indexes([task({**written})], [done]), "done"))
    verbs = [v for v, _ in api.calls]
    assert ("expire_job", "t-a-1:77") in api.calls
    assert verbs.index("patch_status") < verbs.index("expire_job")


def test_repeated_failures_make_the_operator_unhealthy(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeApi(monkeypatch)
    eng = engine()
    broken = indexes([task()])
    broken["node_index"] = None  # a bug or a broken index: the cycle raises
    for _ in range(MAX_FAILED_CYCLES):
        with pytest.raises(AttributeError):
            asyncio.run(eng.run(broken, "test"))
    assert not eng.healthy()
    asyncio.run(eng.run(indexes([task()]), "test"))
    assert eng.healthy()
