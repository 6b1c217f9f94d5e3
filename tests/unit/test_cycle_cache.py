"""The cycle's decision cache: a task whose inputs did not change is not decided again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from aitask.control import cycle as cycle_mod
from aitask.control.cycle import ClusterView, CycleCache, CycleParams, run_cycle
from tests.unit.test_cycle_and_build import CLASSES, NODES, NOW, body

STEP = {"name": "train", "type": "training", "image": "r/train:1",
        "executor": {"accelerators": 4, "classes": ["fast"]}, "estimate": {"seconds": 600, "onClass": "fast"}}


def test_unchanged_tasks_reuse_last_cycles_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = cycle_mod.decide_task

    def counting(task: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(task.metadata.name)
        return real(task, *args, **kwargs)

    monkeypatch.setattr(cycle_mod, "decide_task", counting)
    cache = CycleCache()
    view = ClusterView(tasks=[body("a", [STEP]), body("b", [STEP])], jobs=[], pods=[], nodes=NODES, classes=CLASSES)
    first = run_cycle(view, CycleParams(), NOW, cache)
    assert sorted(calls) == ["a", "b"]
    statuses = {t.name: t.status for t in first.tasks}
    # The statuses are written (the engine overlays them): a and b are parsed and derived again.
    written = ClusterView(tasks=[body(n, [STEP], status=statuses[n]) for n in ("a", "b")], jobs=[], pods=[],
                          nodes=NODES, classes=CLASSES)
    calls.clear()
    second = run_cycle(written, CycleParams(), NOW + timedelta(seconds=5), cache)
    assert sorted(calls) == ["a", "b"]  # new statuses: new progress, decided again
    assert all(t.status is None for t in second.tasks)
    calls.clear()
    third = run_cycle(written, CycleParams(), NOW + timedelta(seconds=10), cache)
    assert calls == []  # same progress, same kind of deferral for b, nothing for a: last decision again
    assert all(t.status is None for t in third.tasks)
    assert third.stats.tasks_by_phase == second.stats.tasks_by_phase
    # Another input of the decision (here the telemetry state) decides both again.
    calls.clear()
    faster = ClusterView(tasks=written.tasks, jobs=[], pods=[], nodes=NODES, classes=CLASSES,
                         telemetry="unavailable", telemetry_message="down")
    run_cycle(faster, CycleParams(), NOW + timedelta(seconds=15), cache)
    assert sorted(calls) == ["a", "b"]


def test_running_work_is_estimated_again_when_a_runtime_moves_by_two_percent_not_for_each_nudge() -> None:
    from types import SimpleNamespace

    from aitask.control.cycle import _learned_token

    def token(seconds: float) -> Any:
        return _learned_token({("p", "cpu"): SimpleNamespace(seconds_per_unit=seconds)})

    assert token(100.0) == token(100.4)  # an EWMA nudge: the cached T holds
    assert token(100.0) != token(103.0)  # a real move: every running T is estimated again
    assert _learned_token({}) == ()


def test_running_entries_kept_between_cycles_equal_fresh_ones_as_time_passes() -> None:
    """The scheduler's running work from the kept entries (whole T and start, less the time gone) is what a
    cycle without any cache computes, cycle after cycle; preemptible work is computed afresh each time."""
    from aitask.core.observed import job_view

    preemptible = {**STEP, "name": "long", "executor": {"accelerators": 4, "classes": ["cheap"]},
                   "estimate": {"seconds": 600}, "preemption": {"allowed": True, "gracePeriodSeconds": 30}}
    tasks = [body("a", [STEP]), body("b", [preemptible])]
    first = run_cycle(ClusterView(tasks=tasks, jobs=[], pods=[], nodes=NODES, classes=CLASSES), CycleParams(), NOW)
    written = [body(t.name, [STEP] if t.name == "a" else [preemptible], status=t.status) for t in first.tasks]
    jobs = []
    for out in first.tasks:
        for manifest in out.create_jobs:
            job = {**manifest, "metadata": {**manifest["metadata"], "creationTimestamp": "2026-01-01T00:00:00Z"},
                   "status": {"active": 1, "startTime": "2026-01-01T00:00:00Z"}}
            jobs.append(job_view(job))
    assert len(jobs) == 2
    view = ClusterView(tasks=written, jobs=jobs, pods=[], nodes=NODES, classes=CLASSES)
    cache = CycleCache()
    seen = []
    for seconds in (5, 10, 70, 400):
        now = NOW + timedelta(seconds=seconds)
        kept = cycle_mod._observe(view, CycleParams(), now, cache, [])[4].running  # noqa: SLF001
        fresh = cycle_mod._observe(view, CycleParams(), now, CycleCache(), [])[4].running  # noqa: SLF001
        assert len(kept) == 2
        for mine, theirs in zip(sorted(kept, key=str), sorted(fresh, key=str), strict=True):
            assert mine.key == theirs.key and mine.class_name == theirs.class_name
            assert mine.remaining_seconds == pytest.approx(theirs.remaining_seconds)
            assert mine == type(mine)(**{**mine.__dict__, "remaining_seconds": theirs.remaining_seconds})
            assert (mine.resume is None) == (theirs.resume is None)
        seen.append({r.key.task: r.remaining_seconds for r in kept})
    assert seen[0]["a"] > seen[1]["a"] > seen[2]["a"]  # the clock moves the kept entries too
    assert set(cache.running) == {"ns/a"}  # the preemptible task's entries are not kept
