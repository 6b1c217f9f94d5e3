"""The cycle driver (handlers.scheduler.Engine) with fake indexes and a fake API adapter."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
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
        self.class_status: dict[str, dict[str, Any]] = {}
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
            self.class_status[name] = status

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
    written = eng.written["ns/t"].status
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


def finished_task(i: int) -> dict[str, Any]:
    body = task({"phase": "Succeeded", "observedGeneration": 1, "progress": "1/1"})
    body["metadata"] = {**body["metadata"], "name": f"done-{i}", "uid": f"u{i}"}
    return body


def test_idle_cycles_over_thousands_of_finished_tasks_write_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from aitask.control.cycle import FinishedTask
    from aitask.handlers.indexes import aitask_entry

    api = FakeApi(monkeypatch)
    eng = engine()
    entries = [aitask_entry(finished_task(i)) for i in range(2000)]
    assert all(isinstance(e, FinishedTask) for e in entries)  # the index keeps no body of a finished task
    asyncio.run(eng.run(indexes(entries), "first"))  # class status: capacity is written once
    api.calls.clear()
    seen = indexes(entries)
    seen["executorclass_index"] = {"all": [{**c, "status": api.class_status[c["metadata"]["name"]]} for c in CLASSES]}
    for n in range(5):
        asyncio.run(eng.run(seen, f"idle {n}"))
    assert api.calls == []
    assert eng.cycles == 6 and eng.ready()


def test_a_task_in_play_is_indexed_without_the_fields_the_cycle_does_not_read() -> None:
    from aitask.handlers.indexes import aitask_entry

    body = task()
    body["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    body["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "x" * 10000}
    entry = aitask_entry(body)
    assert isinstance(entry, dict)
    assert "managedFields" not in entry["metadata"] and "annotations" not in entry["metadata"]
    assert entry["spec"] == body["spec"] and entry["metadata"]["resourceVersion"] == "5"


def test_readiness_waits_for_the_first_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeApi(monkeypatch)
    eng = engine()
    assert eng.healthy() and not eng.ready()
    asyncio.run(eng.run(indexes([task()]), "first"))
    assert eng.ready()


class TimedApi:
    """A fake API whose calls each take ``delay`` s; records (verb, task) in completion order and the
    most calls it had in flight at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
        self.calls: list[tuple[str, str]] = []
        self.now = self.peak = 0

        async def timed(verb: str, what: str) -> None:
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(delay)
            self.calls.append((verb, what))
            self.now -= 1

        async def create_job(manifest: dict[str, Any]) -> bool:
            await timed("create_job", manifest["metadata"]["name"].split("-")[0])
            return True

        async def patch_task_status(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
            await timed("patch_status", name)
            return {"metadata": {"resourceVersion": "6"}}

        async def post_event(**kw: Any) -> None:
            await timed("event", kw["name"])

        async def patch_class_status(name: str, status: dict[str, Any]) -> None:
            return None

        for fn in (create_job, patch_task_status, post_event, patch_class_status):
            monkeypatch.setattr(kube, fn.__name__, fn)


def many_tasks(n: int) -> list[dict[str, Any]]:
    """``n`` one-step tasks t0..t{n-1}."""
    out = []
    for i in range(n):
        body = task()
        body["metadata"] = {**body["metadata"], "name": f"t{i}", "uid": f"u{i}"}
        out.append(body)
    return out


def test_writes_of_many_tasks_overlap_up_to_the_limit_and_keep_each_tasks_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = TimedApi(monkeypatch, 0.01)
    eng = Engine(settings=OperatorSettings(metrics_port=0, api_concurrency=4))
    asyncio.run(eng.run(indexes(many_tasks(20)), "burst"))
    calls = api.calls
    assert api.peak == 4  # bounded, and really concurrent
    admitted = [i for i in range(20) if ("create_job", f"t{i}") in calls]
    assert len(admitted) == 8  # the node has 8 cores: 8 one-core tasks start, 12 wait (status only)
    for i in range(20):
        mine = [verb for verb, what in calls if what == f"t{i}"]
        assert mine == (["create_job", "patch_status", "event"] if i in admitted else ["patch_status"])


def test_in_a_burst_every_job_goes_out_before_the_statuses_and_events_that_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With one API slot, the slot goes to a waiting Job create before any waiting status or Event."""
    api = TimedApi(monkeypatch, 0.001)
    eng = Engine(settings=OperatorSettings(metrics_port=0, api_concurrency=1))
    asyncio.run(eng.run(indexes(many_tasks(6)), "burst"))  # the node's 8 cores fit all six
    calls = api.calls
    verbs = [verb for verb, _ in calls]
    assert verbs.count("create_job") == 6 and verbs.count("patch_status") == 6 and verbs.count("event") == 6
    # The first task's writes start before the others are queued; every other Job precedes every status.
    assert max(i for i, v in enumerate(verbs) if v == "create_job") < sorted(
        i for i, v in enumerate(verbs) if v == "patch_status")[1]
    assert max(i for i, v in enumerate(verbs) if v == "patch_status") < min(
        i for i, v in enumerate(verbs) if v == "event")
    for i in range(6):  # and each task's own order holds
        assert [v for v, what in calls if what == f"t{i}"] == ["create_job", "patch_status", "event"]


def test_a_job_refused_by_the_api_server_is_not_retried_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(monkeypatch)

    async def create_job(manifest: dict[str, Any]) -> bool:
        api.calls.append(("create_job", manifest["metadata"]["name"]))
        raise ApiException(status=422, reason="Unprocessable Entity")

    monkeypatch.setattr(kube, "create_job", create_job)
    eng = engine()
    asyncio.run(eng.run(indexes([task()]), "admit"))
    assert [v for v, _ in api.calls] == ["create_job", "class_status"]  # no status write for a Job not created
    assert "ns/t" in eng.rejected
    api.calls.clear()
    asyncio.run(eng.run(indexes([task()]), "again"))
    assert [c for c in api.calls if c[0] != "class_status"] == [("patch_status", "t:Invalid"), ("event", "InvalidSpec")]


def test_a_409_from_a_job_of_another_class_records_nothing_until_it_is_adopted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeApi(monkeypatch)

    async def create_job(manifest: dict[str, Any]) -> bool:
        api.calls.append(("create_job", manifest["metadata"]["name"]))
        return False

    async def read_job(namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": {"aitask.dev/task": "t", "aitask.dev/class": "gpu-other"}}}

    monkeypatch.setattr(kube, "create_job", create_job)
    monkeypatch.setattr(kube, "read_job", read_job)
    eng = engine()
    asyncio.run(eng.run(indexes([task()]), "admit"))
    assert [v for v, _ in api.calls] == ["create_job", "class_status"]
    assert "ns/t" not in eng.written  # the next cycle decides from what the watch shows (and adopts the Job)


def test_a_ttl_patch_is_not_resent_while_the_watch_catches_up(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(monkeypatch)
    eng = engine()
    finished = task({"phase": "Succeeded", "observedGeneration": 1})
    done = job_view({"metadata": {"name": "t-a-1", "namespace": "ns", "labels": {
        "aitask.dev/task": "t", "aitask.dev/subtask": "a", "aitask.dev/attempt": "1", "aitask.dev/class": "cpu"}},
        "status": {"succeeded": 1, "completionTime": "2026-01-01T00:00:09Z",
                   "conditions": [{"type": "Complete", "status": "True"}]}})
    for _ in range(3):  # the watch still shows the Job without its TTL
        asyncio.run(eng.run(indexes([finished], [done]), "again"))
    assert [c for c in api.calls if c[0] == "expire_job"] == [("expire_job", "t-a-1:77")]


def test_the_overlay_holds_until_the_watch_shows_our_write_or_later() -> None:
    from aitask.handlers.scheduler import _at_least

    assert _at_least("6", "6") and _at_least("10", "9") and not _at_least("5", "6")
    assert not _at_least(None, "6") and not _at_least("abc", "6")


def test_a_manifest_the_client_refuses_makes_the_task_invalid_and_stops_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeApi(monkeypatch)

    async def create_job(manifest: dict[str, Any]) -> bool:
        if manifest["metadata"]["name"].startswith("bad"):
            raise ValueError("1 validation error for V1EnvVarSource")  # as the client's pydantic check does
        api.calls.append(("create_job", manifest["metadata"]["name"]))
        return True

    monkeypatch.setattr(kube, "create_job", create_job)
    bad = task()
    bad["metadata"] = {**bad["metadata"], "name": "bad", "uid": "ub"}
    eng = engine()
    asyncio.run(eng.run(indexes([bad, task()]), "admit"))
    assert ("create_job", "t-a-1") in api.calls and "ns/bad" in eng.rejected
    assert eng.healthy()
    asyncio.run(eng.run(indexes([bad]), "again"))
    assert ("patch_status", "bad:Invalid") in api.calls


def test_decisions_for_a_task_whose_write_has_not_started_are_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two cycles decide for the same task before its first write starts: one write, the newer status."""
    api = FakeApi(monkeypatch)
    fast_create = kube.create_job

    async def create_job(manifest: dict[str, Any]) -> bool:
        if manifest["metadata"]["name"].startswith("blocker"):
            await asyncio.sleep(0.5)  # holds the only writer while the second cycle decides
        return await fast_create(manifest)

    monkeypatch.setattr(kube, "create_job", create_job)
    eng = Engine(settings=OperatorSettings(metrics_port=0, api_concurrency=1))
    blocker = task()
    blocker["metadata"] = {**blocker["metadata"], "name": "blocker", "uid": "ub"}

    async def scenario() -> None:
        await eng.cycle(indexes([blocker, task()]), "first")  # both admitted; blocker's write goes first
        await asyncio.sleep(0.05)
        done = job_view({"metadata": {"name": "t-a-1", "namespace": "ns", "labels": {
            "aitask.dev/task": "t", "aitask.dev/subtask": "a", "aitask.dev/attempt": "1",
            "aitask.dev/class": "cpu"}},
            "status": {"succeeded": 1, "startTime": "2026-01-01T00:00:01Z",
                       "completionTime": "2026-01-01T00:00:09Z", "conditions": [{"type": "Complete",
                                                                                 "status": "True"}]}})
        await eng.cycle(indexes([blocker, task()], [done]), "second")  # decided from the overlay
        await eng.drain()

    asyncio.run(scenario())
    mine = [c for c in api.calls if c[1].startswith("t:") or c[1] == "t-a-1" or c[1].startswith("t-a-1:")]
    statuses = [c for c in mine if c[0] == "patch_status"]
    assert ("create_job", "t-a-1") in mine
    assert statuses == [("patch_status", "t:Succeeded")]  # the Running status never needed writing


def test_the_legacy_finalizer_is_removed_once_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    from aitask.control.cycle import FinishedTask

    removed: list[str] = []

    async def remove_finalizer(namespace: str, name: str, finalizer: str, finalizers: list[str]) -> None:
        removed.append(name)

    monkeypatch.setattr(kube, "remove_finalizer", remove_finalizer)
    old = FinishedTask(namespace="ns", name="old", uid="u1", phase="Succeeded", finalizers=("aitask.dev/finalizer",))
    new = FinishedTask(namespace="ns", name="new", uid="u2", phase="Succeeded")

    class Informers:
        synced = True
        entries: list[Any] = [old, new]

        def values(self, kind: str) -> list[Any]:
            return list(self.entries) if kind == "aitasks" else []

    eng = engine()
    eng.informers = Informers()  # type: ignore[assignment]

    async def scans() -> None:
        for _ in range(2):  # the informer still shows it: removed once, not again
            eng._clean_legacy_finalizers()
            assert eng.legacy_cleanup is not None
            await eng.legacy_cleanup
        assert not eng.legacy_done
        Informers.entries = [new]  # the watch shows it gone: scanning stops
        eng._clean_legacy_finalizers()
        assert eng.legacy_cleanup is not None
        await eng.legacy_cleanup
        assert eng.legacy_done
        eng._clean_legacy_finalizers()

    asyncio.run(scans())
    assert removed == ["old"]


def test_a_wake_up_sooner_than_the_period_asks_for_a_cycle_then(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sub-task in backoff for 0.3 s gets its cycle then, not at the next periodic cycle (60 s here)."""
    FakeApi(monkeypatch)
    eng = Engine(settings=OperatorSettings(metrics_port=0, scheduling_period_seconds=60))
    pokes: list[str] = []
    monkeypatch.setattr(eng, "poke", pokes.append)
    now = datetime.now(UTC)

    async def go() -> None:
        eng._wake_at(now + timedelta(seconds=0.3), now)  # noqa: SLF001 - what _run does after each cycle
        await asyncio.sleep(0.6)
        eng._wake_at(now + timedelta(seconds=120), now)  # noqa: SLF001 - later than the period: none
        await asyncio.sleep(0.1)

    asyncio.run(go())
    assert pokes == ["wake-up"]
    assert eng.wakeup is None


def test_an_idle_cluster_gets_the_slower_resync_and_a_task_brings_the_period_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Thousands of finished tasks and nothing to do: the periodic cycle runs every idle_resync_seconds;
    a task in play (or a write still in flight) brings back the scheduling period."""
    from aitask.handlers.indexes import aitask_entry

    api = FakeApi(monkeypatch)
    eng = Engine(settings=OperatorSettings(metrics_port=0, scheduling_period_seconds=0.1, idle_resync_seconds=0.8))
    entries = [aitask_entry(finished_task(i)) for i in range(50)]
    asyncio.run(eng.run(indexes(entries), "first"))  # writes the class status: not settled
    assert not eng.settled and eng.period() == 0.1
    seen = indexes(entries)
    seen["executorclass_index"] = {"all": [{**c, "status": api.class_status[c["metadata"]["name"]]} for c in CLASSES]}
    asyncio.run(eng.run(seen, "idle"))
    assert eng.settled and eng.quiet() and eng.period() == 0.8
    pokes: list[tuple[float, str]] = []

    async def watch_periodic(seconds: float) -> None:
        start = time.monotonic()
        monkeypatch.setattr(eng, "poke", lambda reason: pokes.append((time.monotonic() - start, reason)))
        eng.last_run = time.monotonic()
        loop = asyncio.create_task(eng.periodic())
        await asyncio.sleep(seconds)
        loop.cancel()

    asyncio.run(watch_periodic(1.2))
    assert pokes and all(reason == "period" for _, reason in pokes)
    assert pokes[0][0] >= 0.7  # not at 0.1 s: the idle resync
    eng.created[("ns", "job-in-flight")] = time.monotonic()  # a Job of ours the watch has not shown yet
    assert eng.period() == 0.1
    del eng.created[("ns", "job-in-flight")]
    asyncio.run(eng.run(indexes([task()], []), "new task"))  # a task in play: Job created
    assert not eng.settled and eng.period() == 0.1


def test_the_next_cycle_waits_a_share_of_the_last_ones_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Back to back, a long cycle left the writes and watches (the same process) no time; the next one
    starts cycle_gap_ratio x its duration later (at most a scheduling period), and pokes meanwhile merge."""
    starts: list[float] = []

    def engine_with(ratio: float, period: float = 5.0) -> Engine:
        eng = Engine(settings=OperatorSettings(metrics_port=0, cycle_gap_ratio=ratio,
                                               scheduling_period_seconds=period))

        async def slow_cycle(indexes: Any, reason: str) -> list[Any]:
            starts.append(time.monotonic())
            time.sleep(0.2)  # the cycle's computation holds the thread
            eng.last_duration, eng.last_end = 0.2, time.monotonic()
            if len(starts) == 1:
                eng.poke("during")  # arrives during the first cycle: one more cycle
            return []

        monkeypatch.setattr(eng, "cycle", slow_cycle)
        monkeypatch.setattr(eng, "sources", lambda: {})
        return eng

    async def two_cycles(eng: Engine) -> None:
        eng.poke("first")
        await asyncio.sleep(0.01)
        eng.poke("merged")  # within the debounce: the same first cycle
        while eng.runner is not None and not eng.runner.done():
            await asyncio.sleep(0.01)

    for ratio, period, low, high in ((1.0, 5.0, 0.2, 0.35), (0.0, 5.0, 0.0, 0.15), (3.0, 0.3, 0.3, 0.45)):
        starts.clear()
        eng = engine_with(ratio, period)
        assert eng.gap() == 0.05  # nothing ran yet: only the debounce
        asyncio.run(two_cycles(eng))
        assert len(starts) == 2, (ratio, starts)
        waited = starts[1] - starts[0] - 0.2  # from the end of the first cycle to the start of the second
        assert low <= waited <= high, (ratio, waited)
    eng = engine_with(1.0)
    eng.last_duration, eng.last_end = 0.5, time.monotonic() - 10.0
    assert eng.gap() == 0.05  # a poke long after a long cycle: only the debounce
    eng.last_end = time.monotonic() - 0.2
    assert 0.25 <= eng.gap() <= 0.3  # 0.2 s after a 0.5 s cycle: the rest of the gap
