from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitask.api import v1alpha1 as api
from aitask.core.simulator import arrival_of, simulate
from aitask.core.types import ClassInfo, NodeInfo, Policy, SchedulerParams
from tests.builders import make_aitask, make_class_info, make_node_info

V100 = make_class_info("v100", gpu_mem=16, price=3.0, speed=4.0)
K80 = make_class_info("k80", gpu_mem=12, price=1.0, speed=1.0)
CPU = make_class_info("cpu", cpu_price=0.1)
CLASSES = {c.name: c for c in (V100, K80, CPU)}
NODES = (
    make_node_info("v1", ["v100"], gpus=1, cpu=8, memory_gib=64),
    make_node_info("k1", ["k80"], gpus=1, cpu=8, memory_gib=64),
    make_node_info("c1", ["cpu"], cpu=4, memory_gib=16),
)


def sim(tasks: list[api.AITask], *, classes: dict[str, ClassInfo] = CLASSES,
        nodes: tuple[NodeInfo, ...] = NODES, **kwargs: object) -> object:
    params = kwargs.pop("params", SchedulerParams())
    return simulate(classes, nodes, tasks, params=params, **kwargs)  # type: ignore[arg-type]


def pipeline(name: str, after: float = 0, priority: float = 1) -> api.AITask:
    return (
        make_aitask(name)
        .priority(priority)
        .submit_after(after)
        .subtask("prep", type="preprocess", seconds=50)
        .subtask("train", gpus=1, depends_on=["prep"], seconds_by_class={"v100": 100, "k80": 400})
        .subtask("eval", gpus=1, depends_on=["train"], seconds_by_class={"v100": 20, "k80": 80})
        .obj()
    )


def test_pipeline_runs_in_dependency_order_on_the_right_classes() -> None:
    result = simulate(CLASSES, NODES, [pipeline("a")], params=SchedulerParams())
    rows = [(p.subtask, p.class_name, p.node, p.start, p.end) for p in result.placements]
    assert rows == [
        ("prep", "cpu", "c1", 0.0, 50.0),
        ("train", "v100", "v1", 50.0, 150.0),
        ("eval", "v100", "v1", 150.0, 170.0),
    ]
    assert result.completion_seconds == {"a": 170.0}
    assert result.makespan_seconds == 170.0
    assert result.total_cost == pytest.approx(50 / 3600 * 0.1 * 1 + 120 / 3600 * 3.0)


def test_json_document_has_exactly_the_stable_keys() -> None:
    doc = simulate(CLASSES, NODES, [pipeline("a"), pipeline("b", after=10, priority=3)],
                   params=SchedulerParams()).to_json()
    assert list(doc) == [
        "policy", "tasks", "avg_completion_seconds", "weighted_avg_completion_seconds",
        "makespan_seconds", "total_cost", "placements", "preemptions", "migrations",
    ]
    assert doc["policy"] == "cost"
    assert doc["tasks"] == 2
    placements = doc["placements"]
    assert isinstance(placements, list)
    assert set(placements[0]) == {"task", "subtask", "class", "node", "start", "end"}


def test_completion_is_measured_from_arrival_and_weighted_by_priority() -> None:
    tasks = [
        make_aitask("a").submit_after(0).subtask("s", gpus=1, seconds_by_class={"v100": 100, "k80": 1000}).obj(),
        make_aitask("b").priority(3).submit_after(10)
        .subtask("s", gpus=1, seconds_by_class={"v100": 100, "k80": 1000}).obj(),
    ]
    result = simulate(CLASSES, NODES, tasks, params=SchedulerParams())
    assert result.completion_seconds == {"a": 100.0, "b": 190.0}  # b waits for the v100 (better than 1000 s)
    assert result.avg_completion_seconds == 145.0
    assert result.weighted_avg_completion_seconds == pytest.approx((100 + 3 * 190) / 4)


@pytest.mark.parametrize(
    ("policy", "expected_classes"),
    [
        (Policy.COST, ["v100", "v100"]),
        (Policy.FIFO, ["v100", "v100"]),
        (Policy.AGNOSTIC, ["k80", "v100"]),  # the agnostic baseline spreads to the idle K80
    ],
    ids=["cost", "fifo", "agnostic"],
)
def test_policies(policy: Policy, expected_classes: list[str]) -> None:
    tasks = [
        make_aitask(n).subtask("s", gpus=1, seconds_by_class={"v100": 10, "k80": 100}).obj() for n in ("a", "b")
    ]
    result = simulate(CLASSES, NODES, tasks, params=SchedulerParams(policy=policy))
    assert sorted(p.class_name for p in result.placements) == sorted(expected_classes)
    assert result.policy == policy.value


def test_true_runtime_falls_back_to_hint_without_seconds_by_class() -> None:
    task = make_aitask("a").subtask("s", gpus=1, seconds=400, on_class="k80", classes=["v100"]).obj()
    result = simulate(CLASSES, NODES, [task], params=SchedulerParams())
    assert result.placements[0].end == 100.0  # 400 s on k80 (speed 1) = 100 s on v100 (speed 4)


def test_unschedulable_subtasks_are_reported() -> None:
    task = make_aitask("a").subtask("s", gpus=1, min_accel_memory_gib=80).obj()
    result = simulate(CLASSES, NODES, [task], params=SchedulerParams())
    assert list(result.unschedulable) == ["a/s"]
    assert "accelerator memory" in result.unschedulable["a/s"]
    assert result.completion_seconds == {}


def test_learn_mode_hides_per_class_hints_and_learns() -> None:
    tasks = [
        make_aitask(f"t{i}").submit_after(i * 1000)
        .subtask("s", gpus=1, profile="resnet", seconds_by_class={"v100": 300, "k80": 1200}).obj()
        for i in range(4)
    ]
    result = simulate(CLASSES, NODES, tasks, params=SchedulerParams(), learn=True, learning_rate=0.3)
    first, *rest = result.observations
    assert first.source.startswith("prior(training)")
    assert first.relative_error > 0.5
    assert all(o.relative_error < 0.1 for o in rest)
    assert result.learned[("resnet", "v100")].samples == 4


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [({}, 0.0), ({"aitask.dev/submit-after-seconds": "12.5"}, 12.5)],
    ids=["default", "given"],
)
def test_arrival_of(annotations: dict[str, str], expected: float) -> None:
    builder = make_aitask("a").subtask("s")
    for k, v in annotations.items():
        builder.annotate(k, v)
    assert arrival_of(builder.obj()) == expected


@pytest.mark.parametrize("raw", ["soon", "-5"], ids=["not-a-number", "negative"])
def test_bad_arrival(raw: str) -> None:
    with pytest.raises(ValueError, match="submit-after-seconds"):
        arrival_of(make_aitask("a").annotate("aitask.dev/submit-after-seconds", raw).subtask("s").obj())


# --------------------------------------------------------------------------- properties


@st.composite
def dag_tasks(draw: st.DrawFn) -> list[api.AITask]:
    tasks = []
    for t in range(draw(st.integers(min_value=1, max_value=4))):
        builder = make_aitask(f"t{t}").submit_after(draw(st.integers(min_value=0, max_value=300)))
        for s in range(draw(st.integers(min_value=1, max_value=5))):
            deps = sorted(draw(st.sets(st.integers(min_value=0, max_value=max(0, s - 1)), max_size=2))) if s else []
            gpu = draw(st.booleans())
            builder.subtask(
                f"s{s}",
                type="training" if gpu else "preprocess",
                gpus=1 if gpu else None,
                depends_on=[f"s{d}" for d in deps],
                seconds_by_class={"v100": draw(st.integers(1, 200)), "k80": draw(st.integers(1, 800))} if gpu else None,
                seconds=None if gpu else draw(st.integers(1, 100)),
                parallelism=draw(st.integers(min_value=1, max_value=2)) if not gpu else 1,
            )
        tasks.append(builder.obj())
    return tasks


@settings(max_examples=40, deadline=None)
@given(tasks=dag_tasks(), policy=st.sampled_from(list(Policy)))
def test_never_starts_before_dependencies_finish(tasks: list[api.AITask], policy: Policy) -> None:
    nodes = (
        make_node_info("v1", ["v100"], gpus=1, cpu=8, memory_gib=64),
        make_node_info("k1", ["k80"], gpus=2, cpu=16, memory_gib=64),
        make_node_info("c1", ["cpu"], cpu=4, memory_gib=16),
        make_node_info("c2", ["cpu"], cpu=4, memory_gib=16),
    )
    result = simulate(CLASSES, nodes, tasks, params=SchedulerParams(policy=policy))
    runs = {(p.task, p.subtask): p for p in result.placements}
    assert not result.unschedulable
    for task in tasks:
        arrival = arrival_of(task)
        for sub in task.spec.subtasks:
            p = runs[(task.metadata.name, sub.name)]
            assert p.start >= arrival
            for dep in sub.depends_on:
                assert p.start >= runs[(task.metadata.name, dep)].end - 1e-9


@settings(max_examples=15, deadline=None)
@given(
    long_seconds=st.integers(min_value=50, max_value=200),
    short_seconds=st.integers(min_value=5, max_value=20),
    short_priority=st.integers(min_value=1, max_value=5),
)
def test_ageing_admits_a_long_low_priority_task_during_a_stream(
    long_seconds: int, short_seconds: int, short_priority: int
) -> None:
    """A stream of higher-ratio short tasks keeps one GPU busy; the long task must still run.

    Its ordering weight grows as 1 + wait/ageing, so it overtakes the stream's ratio after at
    most ageing * (ratio gap) seconds: the stream is made twice that long.
    """
    ageing = 10.0
    gap = (short_priority / short_seconds) / (1.0 / long_seconds)
    horizon = 2 * ageing * gap + 200
    count = int(horizon / short_seconds) + 1
    classes = {"v100": V100}
    nodes = (make_node_info("v1", ["v100"], gpus=1),)
    tasks = [make_aitask("long").subtask("s", gpus=1, seconds_by_class={"v100": long_seconds}).obj()]
    tasks += [
        make_aitask(f"short{i:04d}").priority(short_priority).submit_after(i * short_seconds)
        .subtask("s", gpus=1, seconds_by_class={"v100": short_seconds}).obj()
        for i in range(count)
    ]
    result = simulate(classes, nodes, tasks, params=SchedulerParams(ageing_seconds=ageing))
    start = next(p.start for p in result.placements if p.task == "long")
    last_arrival = (count - 1) * short_seconds
    assert start < last_arrival


def test_told_changes_what_the_scheduler_sees_not_the_truth() -> None:
    """Told that both GPUs take 100 s, the scheduler picks the first free class by name (k80),
    and the run still takes the K80's true 400 s."""
    from dataclasses import replace

    task = make_aitask("a").subtask("train", gpus=1, seconds_by_class={"v100": 100, "k80": 400}).obj()
    told = simulate(CLASSES, NODES, [task], params=SchedulerParams(),
                    told=lambda d: replace(d, estimate_by_class={}, estimate_seconds=100.0, estimate_on_class=None))
    speeds_one = {n: ClassInfo(**{**vars(c), "speed_default": 1.0}) for n, c in CLASSES.items()}
    blind = simulate(speeds_one, NODES, [task], params=SchedulerParams(),
                     told=lambda d: replace(d, estimate_by_class={}, estimate_seconds=100.0, estimate_on_class=None))
    oracle = simulate(CLASSES, NODES, [task], params=SchedulerParams())
    assert [(p.class_name, p.end - p.start) for p in oracle.placements] == [("v100", 100.0)]
    # With the prior speeds the scheduler still prefers the V100 (4x); with speeds all 1.0 it cannot tell.
    assert [p.class_name for p in told.placements] == ["v100"]
    assert [(p.class_name, p.end - p.start) for p in blind.placements] == [("k80", 400.0)]
