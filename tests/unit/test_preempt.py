"""The preemptive policy (core.scheduling.preempt) through core.scheduler.schedule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from aitask.core.quantity import GIB
from aitask.core.scheduler import schedule
from aitask.core.scheduling.preempt import min_run
from aitask.core.types import (
    MIGRATED,
    PREEMPTED_FOR,
    CycleResult,
    Demand,
    NodeInfo,
    Running,
    SchedulerParams,
    Snapshot,
    SubtaskKey,
)
from tests.builders import make_class_info, make_demand, make_node_info

V100 = make_class_info("v100", gpu_mem=16)
K80 = make_class_info("k80", gpu_mem=12)
CLASSES = {"v100": V100, "k80": K80}
NOW = 100_000.0
LONG = {"v100": 100_000.0, "k80": 400_000.0}
SHORT = {"v100": 600.0, "k80": 2400.0}


def busy(name: str, cls: str, gpus: float = 4) -> NodeInfo:
    return make_node_info(name, [cls], gpus=gpus, free={"nvidia.com/gpu": 0.0, "cpu": 0.0, "memory": 0.0})


def running(
    key: str,
    nodes: Sequence[str],
    *,
    cls: str = "v100",
    gpus: int = 4,
    left: float = 90_000.0,
    ran: float = 10_000.0,
    priority: float = 1.0,
    preemptible: bool = True,
    stops: int = 0,
    stopping: bool = False,
) -> Running:
    """Work holding ``gpus`` accelerators (and the whole node's cpu and memory) on each of ``nodes``."""
    demand = make_demand(key, gpus=gpus, cpu=32.0, memory=256 * GIB, pods=len(nodes), gang=len(nodes) > 1,
                         by_class=LONG, priority=priority)
    done = ran / (ran + left)
    return Running(
        key=demand.key,
        class_name=cls,
        remaining_seconds=left,
        accelerators=gpus * len(nodes),
        cpu=32.0 * len(nodes),
        resume=replace(demand, remaining=1 - done, switch_seconds=60.0, preemptible=True) if preemptible else None,
        nodes=tuple(nodes),
        memory=256 * GIB * len(nodes),
        started=NOW - ran,
        grace_seconds=120.0,
        stopping=stopping,
        preemptions=stops,
    )


def newcomer(key: str = "default/short/train", *, priority: float = 1.0, by_class: dict[str, float] | None = None,
             pods: int = 1) -> Demand:
    return make_demand(key, gpus=4, cpu=32.0, memory=256 * GIB, pods=pods, gang=pods > 1,
                       by_class=by_class or SHORT, priority=priority, ready_since=NOW, arrival=NOW)


def cycle(demands: Sequence[Demand], nodes: Sequence[NodeInfo], run: Sequence[Running],
          **params: object) -> CycleResult:
    snap = Snapshot(now=NOW, classes=CLASSES, nodes=tuple(nodes), demands=tuple(demands), running=tuple(run))
    return schedule(snap, SchedulerParams(**params))  # type: ignore[arg-type]


def test_a_long_job_is_preempted_for_a_short_one() -> None:
    result = cycle([newcomer()], [busy("v0", "v100")], [running("default/long/train", ["v0"])])
    assert not result.admitted
    [p] = result.preempted
    assert p.key == SubtaskKey("default", "long", "train")
    assert p.reason == PREEMPTED_FOR
    assert p.by == SubtaskKey("default", "short", "train")
    assert p.target_class == "v100"
    assert "preempted for default/short/train" in p.message


@pytest.mark.parametrize(
    ("victim", "demand", "params"),
    [
        (running("default/long/train", ["v0"], preemptible=False), newcomer(), {}),
        (running("default/long/train", ["v0"], priority=5.0), newcomer(priority=1.0), {}),
        (running("default/long/train", ["v0"], ran=300.0), newcomer(), {}),
        (running("default/long/train", ["v0"], ran=1000.0, stops=1), newcomer(), {}),
        (running("default/long/train", ["v0"], left=1000.0), newcomer(), {}),
        (running("default/long/train", ["v0"]), newcomer(), {"preemption": False}),
        (running("default/long/train", ["v0"], stopping=True), newcomer(), {}),
        # The switch cost is inside the comparison: 600 s of work does not displace 1,500 s left
        # (factor 2) once the victim's grace period and resume overhead (180 s) are added.
        (running("default/long/train", ["v0"], left=1500.0), newcomer(), {}),
    ],
    ids=["non-preemptible", "higher-priority", "ran-less-than-min-run", "min-run-doubles-per-stop",
         "almost-done", "preemption-off", "already-stopping", "switch-cost"],
)
def test_never_preempted(victim: Running, demand: Demand, params: dict[str, object]) -> None:
    result = cycle([demand], [busy("v0", "v100")], [victim], **params)
    assert result.preempted == ()


def test_the_switch_cost_is_what_tips_it() -> None:
    victim = running("default/long/train", ["v0"], left=1500.0)
    bare = replace(victim, grace_seconds=0.0, resume=replace(victim.resume, switch_seconds=0.0))  # type: ignore[arg-type]
    assert len(cycle([newcomer()], [busy("v0", "v100")], [bare]).preempted) == 1


def test_min_run_doubles_with_every_stop() -> None:
    params = SchedulerParams(preempt_min_run_seconds=600.0)
    assert [min_run(params, running("a/b/c", ["v0"], stops=n)) for n in range(3)] == [600.0, 1200.0, 2400.0]


def test_a_gang_is_preempted_whole_and_frees_both_nodes() -> None:
    gang = running("default/gang/train", ["v0", "v1"])
    two = [newcomer("default/s1/train"), newcomer("default/s2/train")]
    result = cycle(two, [busy("v0", "v100"), busy("v1", "v100")], [gang])
    # One stop of the gang makes room for both newcomers: no second victim, one Preemption.
    assert [p.key.task for p in result.preempted] == ["gang"]


def test_lowest_ratio_victim_first_and_only_as_many_as_needed() -> None:
    victims = [running("default/a/train", ["v0"], left=50_000.0), running("default/b/train", ["v1"], left=90_000.0)]
    result = cycle([newcomer()], [busy("v0", "v100"), busy("v1", "v100")], victims)
    assert [p.key.task for p in result.preempted] == ["b"]


def test_stopping_work_counts_as_free() -> None:
    victims = [running("default/a/train", ["v0"], stopping=True), running("default/b/train", ["v1"])]
    result = cycle([newcomer()], [busy("v0", "v100"), busy("v1", "v100")], victims)
    assert result.preempted == ()


def test_migration_to_a_faster_free_class() -> None:
    slow = running("default/long/train", ["k0"], cls="k80", left=300_000.0, ran=100_000.0)
    nodes = [busy("k0", "k80"), make_node_info("v0", ["v100"], gpus=4)]
    result = cycle([], nodes, [slow])
    [p] = result.preempted
    assert "300000s left on k80, 75060s on v100" in p.message
    assert (p.reason, p.by, p.class_name, p.target_class) == (MIGRATED, None, "k80", "v100")


def test_no_migration_when_the_gain_is_small() -> None:
    slow = running("default/long/train", ["k0"], cls="k80", left=100_000.0, ran=300_000.0)  # 75% done: 1.33x
    slow = replace(slow, resume=replace(slow.resume, estimate_by_class={"v100": 300_000.0, "k80": 400_000.0}))  # type: ignore[arg-type]
    nodes = (busy("k0", "k80"), make_node_info("v0", ["v100"], gpus=4))
    result = schedule(Snapshot(now=NOW, classes=CLASSES, nodes=nodes, demands=(), running=(slow,)), SchedulerParams())
    assert result.preempted == ()


def test_attained_order_stops_the_job_that_ran_longest() -> None:
    victims = [running("default/a/train", ["v0"], left=10_000.0, ran=80_000.0),
               running("default/b/train", ["v1"], left=90_000.0, ran=5_000.0)]
    result = cycle([newcomer()], [busy("v0", "v100"), busy("v1", "v100")], victims, preempt_order="attained")
    assert [p.key.task for p in result.preempted] == ["a"]


def test_the_full_cluster_shortcut_makes_the_same_preemptions() -> None:
    from aitask.core.scheduler import preemptions_when_full

    demands = (newcomer(),)
    nodes = (busy("v0", "v100"), busy("v1", "v100"))
    victims = (running("default/a/train", ["v0"], left=50_000.0), running("default/b/train", ["v1"]))
    snap = Snapshot(now=NOW, classes=CLASSES, nodes=nodes, demands=demands, running=victims)
    full = preemptions_when_full(snap, SchedulerParams())
    assert full.preempted == schedule(snap, SchedulerParams()).preempted
    assert [p.key.task for p in full.preempted] == ["b"]
    assert full.admitted == ()


# --------------------------------------------------------------------------- the simulator


def _trace(learn_units: bool = False) -> list[object]:
    from aitask.api import v1alpha1 as api

    def doc(name: str, after: float, seconds: float, units: float) -> api.AITask:
        sub: dict[str, object] = {
            "name": "train", "type": "training", "image": f"r/{name}:1",
            "executor": {"accelerators": 4, "cpu": "1", "memory": "1Gi", "classes": ["v100"]},
            "estimate": {"secondsByClass": {"v100": seconds}},
            "preemption": {"allowed": True, "gracePeriodSeconds": 120, "resumeOverheadSeconds": 60},
        }
        if learn_units:
            sub["work"] = {"units": units}
        return api.AITask.model_validate({
            "apiVersion": api.API_VERSION, "kind": "AITask",
            "metadata": {"name": name, "namespace": "default",
                         "annotations": {"aitask.dev/submit-after-seconds": str(after)}},
            "spec": {"subtasks": [sub]},
        })

    return [doc("long", 0, 100_000, 100), doc("short", 1000, 600, 1)]


def test_simulated_preemption_carries_the_work_over_and_pays_grace_and_overhead() -> None:
    from aitask.core.simulator import simulate

    nodes = (make_node_info("v0", ["v100"], gpus=4),)
    result = simulate(CLASSES, nodes, _trace(), params=SchedulerParams())  # type: ignore[arg-type]
    assert (result.preemptions, result.migrations) == (1, 0)
    # short: waits for the grace period, then runs; long: 1,000 s done, stopped (120 s), waits for
    # short (600 s), then the 99,000 s left plus the 60 s overhead.
    assert result.completion_seconds["short"] == pytest.approx(120 + 600)
    assert result.completion_seconds["long"] == pytest.approx(1000 + 120 + 600 + 60 + 99_000)
    [stopped] = [p for p in result.placements if p.preempted]
    assert (stopped.task, stopped.start, stopped.end) == ("long", 0.0, 1120.0)
    off = simulate(CLASSES, nodes, _trace(), params=SchedulerParams(preemption=False))  # type: ignore[arg-type]
    assert off.preemptions == 0 and off.completion_seconds["short"] == pytest.approx(99_000 + 600)


def test_a_resumed_attempt_is_not_learned() -> None:
    from aitask.core.simulator import simulate

    nodes = (make_node_info("v0", ["v100"], gpus=4),)
    result = simulate(CLASSES, nodes, _trace(learn_units=True), params=SchedulerParams(), learn=True)  # type: ignore[arg-type]
    assert result.preemptions == 1
    assert [o.profile for o in result.observations] == ["r/short"]


def test_victims_are_chosen_per_node_so_a_whole_node_pod_stops_no_more_than_it_needs() -> None:
    """A 4-GPU pod needs one whole node. Node a holds two 2-GPU victims (the lowest and the highest ratio),
    node b one 4-GPU victim: stopping b alone frees a node; taking the lowest ratio across nodes first
    would stop a1 as well, for nothing."""
    nodes = [busy("a", "v100"), busy("b", "v100")]
    a1 = running("default/a1/train", ["a"], gpus=2, left=180_000.0)
    a2 = running("default/a2/train", ["a"], gpus=2, left=100_000.0)
    b = running("default/b/train", ["b"], gpus=4, left=60_000.0)
    out = cycle([newcomer(by_class={"v100": 600.0})], nodes, [a1, a2, b])
    assert [str(p.key) for p in out.preempted] == ["default/b/train"]
    assert out.preempted[0].reason == PREEMPTED_FOR and out.preempted[0].target_class == "v100"


def test_a_gang_gets_room_on_as_many_nodes_as_it_has_pods() -> None:
    """Two 4-GPU pods: one node each; one victim per node is stopped, the third node's victim is not."""
    nodes = [busy("a", "v100"), busy("b", "v100"), busy("c", "v100")]
    run = [running(f"default/{n}/train", [n], left=left) for n, left in (("a", 90_000.0), ("b", 80_000.0),
                                                                         ("c", 10_000.0))]
    out = cycle([newcomer(pods=2, by_class={"v100": 600.0})], nodes, run)
    assert sorted(str(p.key) for p in out.preempted) == ["default/a/train", "default/b/train"]


def test_the_simulator_without_reports_decides_as_the_full_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """`aitask simulate` schedules with ``report=False``; forced to build every report, the same trace gives
    the same placements, preemptions and migrations (a random trace of 1- and 4-GPU jobs on two classes)."""
    import random

    from aitask.api import v1alpha1 as api
    from aitask.core import simulator

    rng = random.Random(7)
    docs = []
    for i in range(40):
        v100 = rng.choice([600.0, 3600.0, 20_000.0, 90_000.0])
        sub = {
            "name": "train", "type": "training", "image": "r/t:1",
            "executor": {"accelerators": rng.choice([1, 4]), "cpu": "1", "memory": "1Gi", "classes": ["v100", "k80"]},
            "estimate": {"secondsByClass": {"v100": v100, "k80": v100 * rng.choice([2.0, 4.0])}},
            "preemption": {"allowed": True, "gracePeriodSeconds": 60, "resumeOverheadSeconds": 60},
        }
        docs.append(api.AITask.model_validate({
            "apiVersion": api.API_VERSION, "kind": "AITask",
            "metadata": {"name": f"j{i}", "namespace": "default",
                         "annotations": {"aitask.dev/submit-after-seconds": str(i * 900.0)}},
            "spec": {"subtasks": [sub]},
        }))
    nodes = (make_node_info("v0", ["v100"], gpus=4), make_node_info("k0", ["k80"], gpus=4),
             make_node_info("k1", ["k80"], gpus=4))
    quiet = simulator.simulate(CLASSES, nodes, docs, params=SchedulerParams())  # type: ignore[arg-type]
    monkeypatch.setattr(simulator, "schedule", lambda snap, params, report=True: schedule(snap, params))
    full = simulator.simulate(CLASSES, nodes, docs, params=SchedulerParams())  # type: ignore[arg-type]
    assert quiet.preemptions > 0 and quiet.migrations > 0
    assert quiet.placements == full.placements
    assert (quiet.preemptions, quiet.migrations) == (full.preemptions, full.migrations)
