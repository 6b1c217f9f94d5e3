from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitask.core.quantity import GIB
from aitask.core.scheduler import schedule
from aitask.core.types import (
    ClassInfo,
    CycleResult,
    Demand,
    Learned,
    NodeInfo,
    Policy,
    Running,
    SchedulerParams,
    Snapshot,
    SubtaskKey,
)
from tests.builders import make_class_info, make_demand, make_node_info

V100 = make_class_info("v100", gpu_mem=16, price=3.06, speed=4.0)
P100 = make_class_info("p100", gpu_mem=16, price=1.46, speed=3.0)
K80 = make_class_info("k80", gpu_mem=12, price=0.9)
A100 = make_class_info("a100", gpu_mem=80, price=4.0, speed=6.0)
CPU = make_class_info("cpu", cpu_price=0.05)
ALL = {c.name: c for c in (V100, P100, K80, A100, CPU)}
BY_CLASS = {"v100": 100.0, "p100": 150.0, "k80": 400.0, "a100": 80.0}


def run(
    demands: Sequence[Demand],
    nodes: Sequence[NodeInfo],
    *,
    classes: dict[str, ClassInfo] | None = None,
    running: Sequence[Running] = (),
    learned: dict[tuple[str, str], Learned] | None = None,
    now: float = 0.0,
    **params: object,
) -> CycleResult:
    snapshot = Snapshot(
        now=now,
        classes=classes or ALL,
        nodes=tuple(nodes),
        demands=tuple(demands),
        running=tuple(running),
        learned=learned or {},
    )
    return schedule(snapshot, SchedulerParams(**params))  # type: ignore[arg-type]


def admitted(result: CycleResult) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {a.key.task: (a.class_name, a.nodes) for a in result.admitted}


def deferred(result: CycleResult) -> dict[str, str]:
    return {d.key.task: d.reason for d in result.deferred}


ONE_EACH = (
    make_node_info("v1", ["v100"], gpus=1),
    make_node_info("p1", ["p100"], gpus=1),
    make_node_info("k1", ["k80"], gpus=1),
    make_node_info("c1", ["cpu"], cpu=16),
)


@pytest.mark.parametrize(
    ("demands", "nodes", "params", "want_admitted", "want_deferred"),
    [
        pytest.param(
            [make_demand("a/s", by_class=BY_CLASS)], ONE_EACH, {},
            {"a": ("v100", ("v1",))}, {}, id="fastest-free-class",
        ),
        pytest.param(
            [make_demand("a/s", by_class=BY_CLASS, cost_weight=1e6)], ONE_EACH, {},
            {"a": ("p100", ("p1",))}, {}, id="cost-weight-picks-least-money",
        ),
        pytest.param(
            [make_demand("a/s", gpus=0, kinds=["cpu"], cpu=2, seconds=60)], ONE_EACH, {},
            {"a": ("cpu", ("c1",))}, {}, id="cpu-step-on-cpu-pool",
        ),
        pytest.param(
            [make_demand("a/s", by_class=BY_CLASS, classes=["p100", "k80"])], ONE_EACH, {},
            {"a": ("p100", ("p1",))}, {}, id="allowed-classes-only",
        ),
        pytest.param(
            [make_demand("a/s", by_class=BY_CLASS, excluded=["v100"])], ONE_EACH, {},
            {"a": ("p100", ("p1",))}, {}, id="oom-excluded-class",
        ),
        pytest.param(
            [make_demand("a/s", by_class=BY_CLASS, min_mem=20)], ONE_EACH, {},
            {}, {"a": "NoFeasibleClass"}, id="oom-escalation-needs-bigger-memory",
        ),
        pytest.param(
            # Two demands, one fast GPU: the shorter (Smith) goes first, the other waits for
            # the V100 rather than run 4x slower on the free K80.
            [make_demand("long/s", by_class={"v100": 100, "k80": 400}),
             make_demand("short/s", by_class={"v100": 10, "k80": 40})],
            (make_node_info("v1", ["v100"], gpus=1), make_node_info("k1", ["k80"], gpus=1)), {},
            {"short": ("v100", ("v1",))}, {"long": "InsufficientCapacity"}, id="smith-order-and-wait-for-fast",
        ),
        pytest.param(
            [make_demand("long/s", by_class={"v100": 100, "k80": 105}),
             make_demand("short/s", by_class={"v100": 10, "k80": 40})],
            (make_node_info("v1", ["v100"], gpus=1), make_node_info("k1", ["k80"], gpus=1)), {},
            {"short": ("v100", ("v1",)), "long": ("k80", ("k1",))}, {}, id="slow-class-when-it-finishes-sooner",
        ),
        pytest.param(
            [make_demand("new/s", by_class={"v100": 10}, arrival=5, priority=5),
             make_demand("old/s", by_class={"v100": 10}, arrival=0)],
            (make_node_info("v1", ["v100"], gpus=1),), {"policy": Policy.FIFO},
            {"old": ("v100", ("v1",))}, {"new": "InsufficientCapacity"}, id="fifo-arrival-order",
        ),
        pytest.param(
            [make_demand("new/s", by_class={"v100": 10}, arrival=5, priority=5),
             make_demand("old/s", by_class={"v100": 10}, arrival=0)],
            (make_node_info("v1", ["v100"], gpus=1),), {},
            {"new": ("v100", ("v1",))}, {"old": "InsufficientCapacity"}, id="cost-priority-first",
        ),
        pytest.param(
            [make_demand("new/s", by_class={"v100": 10}, arrival=5, priority=2, ready_since=5),
             make_demand("old/s", by_class={"v100": 10}, arrival=0, ready_since=-1300)],
            (make_node_info("v1", ["v100"], gpus=1),), {"ageing_seconds": 600},
            {"old": ("v100", ("v1",))}, {"new": "InsufficientCapacity"}, id="ageing-beats-priority",
        ),
        pytest.param(
            [make_demand("a/s", by_class=BY_CLASS)],
            (make_node_info("v1", ["v100"], gpus=1), make_node_info("k1", ["k80"], gpus=8)),
            {"policy": Policy.AGNOSTIC},
            {"a": ("k80", ("k1",))}, {}, id="agnostic-ignores-speed",
        ),
        pytest.param(
            [make_demand("a/s", by_class=BY_CLASS)],
            (make_node_info("v1", ["v100"], gpus=1), make_node_info("k1", ["k80"], gpus=8)),
            {"policy": Policy.FIFO},
            {"a": ("v100", ("v1",))}, {}, id="fifo-is-heterogeneity-aware",
        ),
        pytest.param(
            [make_demand("a/s", by_class=BY_CLASS, classes=["v100", "p100"])],
            (make_node_info("v1", ["v100"], gpus=1), make_node_info("k1", ["k80"], gpus=8)),
            {"policy": Policy.AGNOSTIC},
            {"a": ("v100", ("v1",))}, {}, id="agnostic-still-honours-allowed-classes",
        ),
    ],
)
def test_cycle(
    demands: list[Demand],
    nodes: tuple[NodeInfo, ...],
    params: dict[str, object],
    want_admitted: dict[str, tuple[str, tuple[str, ...]]],
    want_deferred: dict[str, str],
) -> None:
    result = run(demands, nodes, **params)
    assert admitted(result) == want_admitted
    assert deferred(result) == want_deferred


def test_best_fit_keeps_big_nodes_free() -> None:
    nodes = (
        make_node_info("big", ["v100"], gpus=8),
        make_node_info("small", ["v100"], gpus=8, free={"nvidia.com/gpu": 2.0}),
    )
    result = run([make_demand("one/s", by_class=BY_CLASS), make_demand("big/s", gpus=8, cpu=8, by_class=BY_CLASS)],
                 nodes)
    assert admitted(result) == {"one": ("v100", ("small",)), "big": ("v100", ("big",))}


def test_capacity_is_decremented_within_a_cycle() -> None:
    nodes = (make_node_info("v1", ["v100"], gpus=8, cpu=64),)
    demands = [make_demand(f"t{i}/s", gpus=4, by_class={"v100": 100 + i}) for i in range(3)]
    result = run(demands, nodes, lookahead=False)
    assert len(result.admitted) == 2
    assert {a.nodes for a in result.admitted} == {("v1",)}
    assert deferred(result) == {"t2": "InsufficientCapacity"}


def test_memory_and_cpu_limit_packing_too() -> None:
    nodes = (make_node_info("v1", ["v100"], gpus=8, cpu=8, memory_gib=64),)
    demands = [make_demand(f"t{i}/s", gpus=1, cpu=4, memory="16Gi", by_class={"v100": 100}) for i in range(3)]
    result = run(demands, nodes)
    assert len(result.admitted) == 2  # cpu runs out before the GPUs


@pytest.mark.parametrize("gang", [True, False], ids=["gang", "parallel"])
def test_multi_pod_demands_are_all_or_nothing(gang: bool) -> None:
    nodes = (make_node_info("v1", ["v100"], gpus=4), make_node_info("v2", ["v100"], gpus=4,
                                                                     free={"nvidia.com/gpu": 2.0}))
    demand = make_demand("g/s", gpus=4, pods=2, gang=gang, by_class={"v100": 100})
    small = make_demand("small/s", gpus=1, by_class={"v100": 1000})
    result = run([demand, small], nodes, lookahead=False)
    assert deferred(result)["g"] == "GangIncomplete"
    assert "only 1 of 2 pods fit at once on v100" in result.deferred[0].message
    # What the gang could not use is still free for others (rolled back).
    assert admitted(result) == {"small": ("v100", ("v2",))}
    two = (make_node_info("v1", ["v100"], gpus=4), make_node_info("v2", ["v100"], gpus=4))
    ok = run([demand], two)
    assert ok.admitted[0].nodes == ("v1", "v2")
    assert len(ok.admitted[0].nodes) == 2


def test_waiting_gang_holds_its_place_with_lookahead() -> None:
    nodes = (make_node_info("v1", ["v100"], gpus=4, free={"nvidia.com/gpu": 2.0}),)
    running = [Running(SubtaskKey("n", "r", "s"), "v100", 50.0, 2, 8.0)]
    gang = make_demand("g/s", gpus=4, pods=1, gang=True, by_class={"v100": 100}, ready_since=-10_000)
    small = make_demand("small/s", gpus=1, by_class={"v100": 1000})
    result = run([gang, small], nodes, running=running)
    # The old gang is first in order and reserves the 2 free GPUs; the small job cannot take them.
    assert admitted(result) == {}
    result = run([gang, small], nodes, running=running, lookahead=False)
    assert admitted(result) == {"small": ("v100", ("v1",))}


def test_running_work_makes_a_class_wait() -> None:
    nodes = (make_node_info("v1", ["v100"], gpus=1, free={"nvidia.com/gpu": 0.0}),
             make_node_info("p1", ["p100"], gpus=1))
    running = [Running(SubtaskKey("n", "r", "s"), "v100", 500.0, 1, 4.0)]
    result = run([make_demand("a/s", by_class=BY_CLASS)], nodes, running=running)
    assert admitted(result) == {"a": ("p100", ("p1",))}
    chosen = result.admitted[0]
    assert chosen.chosen.wait_seconds == 0.0
    v100 = next(o for o in chosen.alternatives if o.class_name == "v100")
    assert v100.wait_seconds == 500.0
    assert v100.score == 600.0


def test_rightsizing_moves_an_idle_profile_to_a_cheaper_class() -> None:
    nodes = (make_node_info("v1", ["v100"], gpus=1), make_node_info("p1", ["p100"], gpus=1))
    demand = make_demand("a/s", by_class={"v100": 100, "p100": 120})
    assert admitted(run([demand], nodes)) == {"a": ("v100", ("v1",))}
    learned = {("p", "v100"): Learned(seconds_per_unit=100, samples=5, gpu_util_avg=5.0)}
    result = run([demand], nodes, learned=learned)
    assert admitted(result) == {"a": ("p100", ("p1",))}
    v100 = next(o for o in result.admitted[0].alternatives if o.class_name == "v100")
    assert v100.penalty > 0


def test_messages_and_alternatives() -> None:
    result = run([make_demand("a/s", by_class=BY_CLASS)], ONE_EACH, max_alternatives=2)
    adm = result.admitted[0]
    assert adm.message.startswith("admitted on v100 (1 pod(s) of 1 accelerator(s), 4 cpu, 16Gi): T 100s")
    assert "next best p100" in adm.message
    assert [o.class_name for o in adm.alternatives] == ["p100", "k80"]
    assert (adm.accelerators, adm.cpu, adm.memory) == (1, 4.0, 16 * GIB)
    nothing = run([make_demand("b/s", min_mem=100)], ONE_EACH)
    assert nothing.deferred[0].reason == "NoFeasibleClass"
    assert "accelerator memory 16GiB < required 100GiB" in nothing.deferred[0].message
    assert nothing.deferred[0].best is None


def test_unschedulable_nodes_are_ignored() -> None:
    nodes = (make_node_info("v1", ["v100"], gpus=1, schedulable=False), make_node_info("p1", ["p100"], gpus=1))
    assert admitted(run([make_demand("a/s", by_class=BY_CLASS)], nodes)) == {"a": ("p100", ("p1",))}


def test_node_shared_by_two_classes_is_booked_once() -> None:
    classes = {"gpu": V100, "any": make_class_info("any")}
    nodes = (make_node_info("n1", ["v100", "any"], gpus=1, cpu=8),)
    demands = [
        make_demand("g/s", gpus=1, cpu=6, by_class={"v100": 10}),
        make_demand("c/s", gpus=0, kinds=["cpu"], cpu=4, seconds=10),
    ]
    result = run(demands, nodes, classes={"v100": V100, "any": classes["any"]})
    # 6 + 4 cores do not fit on one 8-core node, whichever class books it.
    assert len(result.admitted) == 1


# --------------------------------------------------------------------------- properties

CLASS_POOL = {
    "v100": V100,
    "k80": K80,
    "a100": A100,
    "cpu": CPU,
}


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    nodes = []
    for i in range(draw(st.integers(min_value=1, max_value=8))):
        cls = draw(st.sampled_from(sorted(CLASS_POOL)))
        gpus = 0 if cls == "cpu" else draw(st.sampled_from([1, 2, 4, 8]))
        cpu = draw(st.sampled_from([4, 8, 16, 32]))
        mem = draw(st.sampled_from([16, 64, 256]))
        free = {
            "cpu": draw(st.floats(min_value=0, max_value=cpu)),
            "memory": draw(st.floats(min_value=0, max_value=mem)) * GIB,
        }
        if gpus:
            free["nvidia.com/gpu"] = float(draw(st.integers(min_value=0, max_value=gpus)))
        nodes.append(
            make_node_info(f"n{i}", [cls], gpus=gpus, cpu=cpu, memory_gib=mem, free=free,
                           schedulable=draw(st.booleans()) or i == 0)
        )
    demands = []
    for i in range(draw(st.integers(min_value=0, max_value=12))):
        gpu = draw(st.booleans())
        demands.append(
            make_demand(
                f"t{i}/s",
                gpus=draw(st.integers(min_value=1, max_value=4)) if gpu else 0,
                kinds=["gpu"] if gpu else draw(st.sampled_from([["cpu"], ["cpu", "gpu"]])),
                cpu=draw(st.sampled_from([0.5, 1.0, 2.0, 4.0])),
                memory=draw(st.sampled_from([1, 4, 16])) * GIB,
                pods=draw(st.integers(min_value=1, max_value=3)),
                gang=draw(st.booleans()),
                classes=draw(st.one_of(st.none(), st.sets(st.sampled_from(sorted(CLASS_POOL)), min_size=1))),
                min_mem=draw(st.sampled_from([0.0, 0.0, 16.0, 40.0])),
                excluded=draw(st.sets(st.sampled_from(sorted(CLASS_POOL)), max_size=1)),
                by_class={c: draw(st.floats(min_value=1, max_value=1e4)) for c in ("v100", "k80", "a100")},
                seconds=draw(st.floats(min_value=1, max_value=1e4)),
                priority=draw(st.sampled_from([1.0, 2.0, 10.0])),
                cost_weight=draw(st.sampled_from([0.0, 100.0])),
                ready_since=-draw(st.floats(min_value=0, max_value=5000)),
            )
        )
    running = [
        Running(SubtaskKey("n", f"r{i}", "s"), draw(st.sampled_from(sorted(CLASS_POOL))),
                draw(st.floats(min_value=0, max_value=1e4)), 1, 1.0)
        for i in range(draw(st.integers(min_value=0, max_value=3)))
    ]
    return Snapshot(now=0.0, classes=CLASS_POOL, nodes=tuple(nodes), demands=tuple(demands), running=tuple(running))


@settings(max_examples=150, deadline=None)
@given(snapshot=snapshots(), policy=st.sampled_from(list(Policy)), lookahead=st.booleans())
def test_never_admits_more_than_free_capacity(snapshot: Snapshot, policy: Policy, lookahead: bool) -> None:
    result = schedule(snapshot, SchedulerParams(policy=policy, lookahead=lookahead))
    nodes = {n.name: n for n in snapshot.nodes}
    used: dict[str, dict[str, float]] = {}
    for adm in result.admitted:
        for name in adm.nodes:
            book = used.setdefault(name, {})
            if snapshot.classes[adm.class_name].kind == "gpu":
                book["nvidia.com/gpu"] = book.get("nvidia.com/gpu", 0.0) + adm.accelerators
            book["cpu"] = book.get("cpu", 0.0) + adm.cpu
            book["memory"] = book.get("memory", 0.0) + adm.memory
    for name, book in used.items():
        node = nodes[name]
        assert node.schedulable
        for resource, amount in book.items():
            assert amount <= node.free.get(resource, 0.0) + 1e-6, (name, resource)
    keys = [a.key for a in result.admitted] + [d.key for d in result.deferred]
    assert sorted(map(str, keys)) == sorted(str(d.key) for d in snapshot.demands)


@settings(max_examples=150, deadline=None)
@given(snapshot=snapshots(), policy=st.sampled_from(list(Policy)))
def test_never_places_on_a_disallowed_or_too_small_class(snapshot: Snapshot, policy: Policy) -> None:
    result = schedule(snapshot, SchedulerParams(policy=policy))
    demands = {d.key: d for d in snapshot.demands}
    nodes = {n.name: n for n in snapshot.nodes}
    for adm in result.admitted:
        d = demands[adm.key]
        cls = snapshot.classes[adm.class_name]
        assert cls.kind in d.kinds
        assert d.classes is None or adm.class_name in d.classes
        assert adm.class_name not in d.excluded_classes
        assert d.min_accelerator_memory_gib <= 0 or cls.accelerator_memory_gib >= d.min_accelerator_memory_gib
        assert len(adm.nodes) == d.pods
        assert all(adm.class_name in nodes[n].classes for n in adm.nodes)
        assert adm.chosen.class_name == adm.class_name
        assert adm.chosen.feasible


@settings(max_examples=200, deadline=None)
@given(snapshot=snapshots(), lookahead=st.booleans())
def test_without_reports_the_same_demands_start_and_only_waiting_ones_lose_their_report(
    snapshot: Snapshot, lookahead: bool
) -> None:
    """``schedule(report=False)`` (the simulator's) admits exactly what the full cycle admits, on the same
    nodes and with the same chosen option; it only leaves out the deferrals of demands that wait for room
    (an admission's alternatives may then show a full class's wait without their holds)."""
    params = SchedulerParams(lookahead=lookahead)
    full = schedule(snapshot, params)
    quiet = schedule(snapshot, params, report=False)
    assert [replace(a, alternatives=()) for a in quiet.admitted] == [replace(a, alternatives=()) for a in full.admitted]
    kept = {d.key for d in quiet.deferred}
    assert [d for d in full.deferred if d.key in kept] == list(quiet.deferred)
    assert all(d.reason in {"InsufficientCapacity", "GangIncomplete"} for d in full.deferred if d.key not in kept)


def test_without_reports_a_demand_behind_a_waiting_one_still_starts() -> None:
    """A demand planned on a class with room starts although a demand before it in the order waits (with no
    report) for a full class."""
    nodes = (
        make_node_info("v0", ["v100"], gpus=1, free={"nvidia.com/gpu": 0.0, "cpu": 8.0, "memory": 64 * GIB}),
        make_node_info("k0", ["k80"], gpus=1),
    )
    demands = (
        make_demand("a/s", gpus=1, classes={"v100"}, by_class={"v100": 10.0}),
        make_demand("b/s", gpus=1, classes={"k80"}, by_class={"k80": 100.0}),
    )
    snap = Snapshot(now=0.0, classes={"v100": V100, "k80": K80}, nodes=nodes, demands=demands, running=())
    full = schedule(snap, SchedulerParams())
    quiet = schedule(snap, SchedulerParams(), report=False)
    assert admitted(full) == admitted(quiet) == {"b": ("k80", ("k0",))}
    assert deferred(full) == {"a": "InsufficientCapacity"}
    assert quiet.deferred == ()
