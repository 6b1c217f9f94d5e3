from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitask.core.costmodel import (
    Timeline,
    build_timeline,
    class_capacity,
    cost,
    fluid_wait,
    infeasible_reason,
    rightsizing_penalty,
    score,
    score_with_wait,
    static_score,
)
from aitask.core.quantity import GIB
from aitask.core.scheduler import schedule
from aitask.core.types import (
    ClassInfo,
    Demand,
    Learned,
    NodeInfo,
    Option,
    Running,
    SchedulerParams,
    Snapshot,
    SubtaskKey,
)
from tests.builders import make_class_info, make_demand, make_node_info

V100 = make_class_info("v100", gpu_mem=16, price=3.06, speed=4.0)
A100 = make_class_info("a100", gpu_mem=80, price=4.0, speed=6.0)
K80 = make_class_info("k80", gpu_mem=12, price=0.9)
CPU = make_class_info("cpu", cpu_price=0.05, memory_price=0.01)
CLASSES = {c.name: c for c in (V100, A100, K80, CPU)}
NODES = (
    make_node_info("v1", ["v100"], gpus=4, cpu=32, memory_gib=128),
    make_node_info("v2", ["v100"], gpus=4, cpu=32, memory_gib=128),
    make_node_info("a1", ["a100"], gpus=8, cpu=64, memory_gib=512),
    make_node_info("k1", ["k80"], gpus=8, cpu=16, memory_gib=64),
    make_node_info("c1", ["cpu"], cpu=16, memory_gib=64),
)
CAPS = {name: class_capacity(cls, NODES) for name, cls in CLASSES.items()}


@pytest.mark.parametrize(
    ("kwargs", "cls", "reason"),
    [
        ({}, "v100", ""),
        ({"classes": ["k80"]}, "v100", "not in executor.classes (k80)"),
        ({}, "cpu", "kind cpu not allowed (executor kinds: gpu)"),
        ({"excluded": ["v100"]}, "v100", "excluded after an OOM-killed attempt on it"),
        ({"min_mem": 24}, "v100", "accelerator memory 16GiB < required 24GiB"),
        ({"min_mem": 24}, "a100", ""),
        (
            {"gpus": 6},
            "v100",
            "no node can ever fit one pod (6 nvidia.com/gpu, 4 cpu, 16Gi memory; largest node has "
            "4 nvidia.com/gpu, 32 cpu, 128Gi memory)",
        ),
        (
            {"gpus": 1, "cpu": 20},
            "k80",
            "no node can ever fit one pod (1 nvidia.com/gpu, 20 cpu, 16Gi memory; "
            "largest node has 8 nvidia.com/gpu, 16 cpu, 64Gi memory)",
        ),
        ({"gpus": 4, "pods": 3, "gang": True}, "v100", "gang needs 3 pods at once, the class can hold at most 2"),
        ({"gpus": 4, "pods": 3}, "v100", "parallelism needs 3 pods at once, the class can hold at most 2"),
        ({"gpus": 4, "pods": 2, "gang": True}, "v100", ""),
        (
            {"gpus": 0, "kinds": ["cpu"], "cpu": 32},
            "cpu",
            "no node can ever fit one pod (32 cpu, 16Gi memory; largest node has 16 cpu, 64Gi memory)",
        ),
    ],
    ids=[
        "feasible",
        "not-allowed-class",
        "not-allowed-kind",
        "oom-excluded",
        "too-little-accelerator-memory",
        "enough-accelerator-memory",
        "pod-too-big",
        "cpu-too-big-on-gpu-node",
        "gang-too-big",
        "parallel-too-big",
        "gang-fits",
        "cpu-pod-too-big",
    ],
)
def test_infeasible_reason(kwargs: dict[str, object], cls: str, reason: str) -> None:
    demand = make_demand(**kwargs)  # type: ignore[arg-type]
    assert infeasible_reason(demand, CLASSES[cls], CAPS[cls]) == reason


def test_no_ready_node() -> None:
    cap = class_capacity(V100, [make_node_info("v1", ["v100"], gpus=4, schedulable=False)])
    assert infeasible_reason(make_demand(), V100, cap) == "no ready node belongs to the class"


@pytest.mark.parametrize(
    ("kwargs", "cls", "seconds", "expected"),
    [
        ({"gpus": 1}, V100, 3600, 3.06),
        ({"gpus": 2, "pods": 3}, V100, 1800, 3.06 * 2 * 3 / 2),
        ({"gpus": 0, "kinds": ["cpu"], "cpu": 4, "memory": "10Gi"}, CPU, 3600, 4 * 0.05 + 10 * 0.01),
        ({"gpus": 1}, CPU, 3600, 4 * 0.05 + 16 * 0.01),  # accelerators are not bought on a CPU pool
    ],
    ids=["one-gpu-hour", "pods-and-gpus", "cpu-and-memory", "cpu-pool-ignores-gpus"],
)
def test_cost(kwargs: dict[str, object], cls: ClassInfo, seconds: float, expected: float) -> None:
    assert cost(make_demand(**kwargs), cls, seconds) == pytest.approx(expected)  # type: ignore[arg-type]


def test_score_and_infinite_wait() -> None:
    demand = make_demand(time_weight=2.0, cost_weight=10.0)
    assert score(demand, runtime=100, wait=50, money=3.0, penalty=1.0) == 2 * 150 + 30 + 1
    assert score(make_demand(time_weight=0.0, cost_weight=1.0), 100, math.inf, 1.0) == math.inf


@pytest.mark.parametrize(
    ("util", "price", "cheapest", "expected"),
    [
        (None, 3.06, 0.9, 0.0),
        (80.0, 3.06, 0.9, 0.0),
        (10.0, 0.9, 0.9, 0.0),  # the cheapest class is never penalised
        (15.0, 3.06, 0.9, 0.5 * 0.5 * 1000),
        (0.0, 3.06, 0.9, 0.5 * 1.0 * 1000),
    ],
    ids=["unknown", "busy-enough", "cheapest", "half-shortfall", "idle"],
)
def test_rightsizing_penalty(util: float | None, price: float, cheapest: float, expected: float) -> None:
    cls = replace(V100, price_accelerator_hour=price)
    learned = Learned(seconds_per_unit=1000, samples=3, gpu_util_avg=util)
    got = rightsizing_penalty(
        make_demand(),
        cls,
        learned,
        cheapest_accelerator_price=cheapest,
        runtime=1000,
        money=0.0,
        params=SchedulerParams(low_gpu_util_percent=30.0, rightsizing_penalty=0.5),
    )
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("free", "releases", "units", "wait"),
    [
        (2, [], 1, 0.0),
        (2, [], 2, 0.0),
        (2, [], 3, math.inf),
        (0, [(100, 1), (50, 1)], 1, 50.0),
        (1, [(100, 1), (50, 1)], 2, 50.0),
        (1, [(100, 1), (50, 1)], 3, 100.0),
        (0, [], 0, 0.0),
    ],
    ids=["free", "all-free", "too-many", "earliest-release", "mix", "last-release", "zero-units"],
)
def test_timeline_wait(free: float, releases: list[tuple[float, float]], units: float, wait: float) -> None:
    assert Timeline(free, releases).wait(units) == wait


def test_timeline_reserve_queues_behind() -> None:
    line = Timeline(2, [(100, 2)])
    assert line.reserve(1, 30) == 0.0  # one free unit, busy until 30
    assert line.wait(1) == 0.0
    assert line.reserve(2, 10) == 30.0  # the other free unit and the one released at 30
    assert line.wait(1) == 40.0
    assert line.free_now() == 0.0


def test_build_timeline_and_fluid_wait() -> None:
    nodes = [make_node_info("v1", ["v100"], gpus=4, free={"nvidia.com/gpu": 1.0})]
    running = [
        Running(SubtaskKey("n", "a", "s"), "v100", 300.0, 2, 8.0),
        Running(SubtaskKey("n", "b", "s"), "k80", 999.0, 1, 4.0),
    ]
    cap = class_capacity(V100, nodes)
    line = build_timeline(V100, nodes, running, cap)
    assert line.wait(1) == 0.0
    assert line.wait(3) == 300.0
    # One unit is held by something not in `running`: assumed released after an hour.
    assert line.wait(4) == 3600.0
    assert fluid_wait(V100, running, cap) == pytest.approx(300 * 2 / 4)


def _options(
    demand: Demand, classes: dict[str, ClassInfo], nodes: tuple[NodeInfo, ...], learned: dict[tuple[str, str], Learned]
) -> list[Option]:
    """Every class as the scheduler scored it for a lone demand: the chosen one first."""
    snapshot = Snapshot(now=0.0, classes=classes, nodes=nodes, demands=(demand,), learned=learned)
    result = schedule(snapshot, SchedulerParams(max_alternatives=len(classes)))
    decision = result.admitted[0] if result.admitted else result.deferred[0]
    first = decision.chosen if result.admitted else decision.best  # type: ignore[union-attr]
    return ([first] if first is not None else []) + list(decision.alternatives)


def test_schedule_orders_feasible_by_f_then_infeasible() -> None:
    demand = make_demand(by_class={"v100": 100, "a100": 80, "k80": 300}, cost_weight=0.0)
    options = _options(demand, CLASSES, NODES, {})
    assert [o.class_name for o in options] == ["a100", "v100", "k80", "cpu"]
    assert [o.feasible for o in options] == [True, True, True, False]
    assert options[0].score == 80.0
    assert options[0].cost == pytest.approx(80 / 3600 * 4.0)
    # With a cost weight the cheap K80 wins despite being slower.
    cheap = _options(replace(demand, cost_weight=1e6), CLASSES, NODES, {})
    assert cheap[0].class_name == "k80"


def test_f_is_its_static_part_plus_weighted_wait() -> None:
    demand = make_demand(time_weight=2.0, cost_weight=10.0)
    static = static_score(demand, runtime=100.0, money=3.0, penalty=5.0)
    assert static == 2.0 * 100.0 + 10.0 * 3.0 + 5.0
    assert score(demand, 100.0, 40.0, 3.0, 5.0) == score_with_wait(static, 2.0, 40.0) == static + 2.0 * 40.0
    assert score(demand, 100.0, math.inf, 3.0) == math.inf


@settings(max_examples=80, deadline=None)
@given(
    base_price=st.floats(min_value=0.0, max_value=10.0),
    increase=st.floats(min_value=0.0, max_value=10.0),
    cpu_price=st.floats(min_value=0.0, max_value=1.0),
    beta=st.floats(min_value=0.0, max_value=1000.0),
    util=st.one_of(st.none(), st.floats(min_value=0.0, max_value=100.0)),
    seconds=st.floats(min_value=1.0, max_value=1e5),
    other_price=st.floats(min_value=0.0, max_value=10.0),
)
def test_higher_price_never_more_attractive(
    base_price: float,
    increase: float,
    cpu_price: float,
    beta: float,
    util: float | None,
    seconds: float,
    other_price: float,
) -> None:
    other = make_class_info("other", gpu_mem=16, price=other_price)
    demand = make_demand(by_class={"v100": seconds, "other": seconds * 1.5}, cost_weight=beta)
    learned = {("p", "v100"): Learned(seconds, 5, gpu_util_avg=util)}
    nodes = (make_node_info("v1", ["v100"], gpus=4), make_node_info("o1", ["other"], gpus=4))

    def options_for(price: float) -> tuple[dict[str, float], str]:
        cls = replace(V100, price_accelerator_hour=price, price_cpu_hour=cpu_price)
        opts = _options(demand, {"v100": cls, "other": other}, nodes, learned)
        scores = {o.class_name: o.score for o in opts if o.score is not None}
        assert set(scores) == {"v100", "other"}
        return scores, opts[0].class_name

    before, chosen_before = options_for(base_price)
    after, chosen_after = options_for(base_price + increase)
    # A dearer v100 is never chosen where the cheaper one was not.
    assert chosen_after != "v100" or chosen_before == "v100"
    assert after["v100"] >= before["v100"] - 1e-9
    # Relative to the other class, v100 never gains.
    assert after["v100"] - after["other"] >= before["v100"] - before["other"] - 1e-6 * max(1.0, abs(before["v100"]))


def test_memory_units_in_describe() -> None:
    demand = make_demand(gpus=1, memory=200 * GIB)
    assert "200Gi memory" in infeasible_reason(demand, V100, CAPS["v100"])
