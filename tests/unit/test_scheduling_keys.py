"""The evaluation cache keys cover every Demand field that can change an evaluation."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from aitask.core.scheduler import schedule
from aitask.core.scheduling.evaluation import IGNORED_DEMAND_FIELDS, evaluation_key, key_fields
from aitask.core.types import Demand, Policy, SchedulerParams, Snapshot, SubtaskKey
from tests.builders import make_class_info, make_demand, make_node_info

DEMAND_FIELDS = frozenset(f.name for f in fields(Demand))

#: A different value for every field some key reads.
CHANGED: dict[str, Any] = {
    "time_weight": 2.0,
    "cost_weight": 1.0,
    "profile": "other",
    "work_units": 3.0,
    "pods": 2,
    "gang": True,
    "accelerators": 2,
    "cpu": 8.0,
    "memory": 1.0,
    "kinds": frozenset({"cpu"}),
    "classes": frozenset({"v100"}),
    "min_accelerator_memory_gib": 24.0,
    "excluded_classes": frozenset({"k80"}),
    "avoided_classes": frozenset({"k80"}),
    "estimate_seconds": 60.0,
    "estimate_on_class": "v100",
    "estimate_by_class": {"v100": 60.0},
    "subtask_type": "inference",
    "remaining": 0.5,
    "switch_seconds": 60.0,
}


def test_every_demand_field_is_in_a_key_or_ignored() -> None:
    keyed = key_fields()
    assert keyed, "no key fields"
    assert keyed <= DEMAND_FIELDS, keyed - DEMAND_FIELDS
    assert IGNORED_DEMAND_FIELDS <= DEMAND_FIELDS, IGNORED_DEMAND_FIELDS - DEMAND_FIELDS
    assert not keyed & IGNORED_DEMAND_FIELDS
    assert keyed | IGNORED_DEMAND_FIELDS == DEMAND_FIELDS, DEMAND_FIELDS - keyed - IGNORED_DEMAND_FIELDS


def test_changed_values_cover_every_key_field() -> None:
    assert set(CHANGED) == key_fields()


@pytest.mark.parametrize("name", sorted(CHANGED), ids=sorted(CHANGED))
def test_changing_a_key_field_changes_the_key(name: str) -> None:
    demand = make_demand()
    changed = replace(demand, **{name: CHANGED[name]})
    assert getattr(changed, name) != getattr(demand, name)
    assert evaluation_key(changed) != evaluation_key(demand)


@pytest.mark.parametrize("name", sorted(IGNORED_DEMAND_FIELDS), ids=sorted(IGNORED_DEMAND_FIELDS))
def test_ignored_fields_do_not_change_the_key(name: str) -> None:
    demand = make_demand()
    value: Any = {
        "key": SubtaskKey("x", "y", "z"),
        "attempt": 7,
        "priority": 9.0,
        "completions": 9,
        "ready_since": -50.0,
        "arrival": -70.0,
        "preemptible": True,
    }[name]
    assert evaluation_key(replace(demand, **{name: value})) == evaluation_key(demand)


def test_estimate_by_class_order_does_not_matter() -> None:
    a = make_demand(by_class={"v100": 1.0, "k80": 2.0})
    b = make_demand(by_class={"k80": 2.0, "v100": 1.0})
    assert evaluation_key(a) == evaluation_key(b)


def test_demands_differing_in_a_key_field_are_evaluated_apart() -> None:
    """Two demands in one cycle, alike but for their accelerator memory: only one class fits the second."""
    classes = {c.name: c for c in (make_class_info("v100", gpu_mem=16), make_class_info("a100", gpu_mem=80))}
    nodes = (make_node_info("v1", ["v100"], gpus=4), make_node_info("a1", ["a100"], gpus=4))
    small = make_demand("ns/a/s", by_class={"v100": 10.0, "a100": 20.0})
    big = replace(small, key=SubtaskKey("ns", "b", "s"), min_accelerator_memory_gib=40.0)
    result = schedule(Snapshot(now=0.0, classes=classes, nodes=nodes, demands=(small, big)), SchedulerParams())
    placed = {str(a.key): a.class_name for a in result.admitted}
    assert placed == {"ns/a/s": "v100", "ns/b/s": "a100"}


@pytest.mark.parametrize(
    ("order", "first"), [("arrival", "ns/long/s"), ("smith", "ns/short/s")], ids=["arrival", "smith"]
)
def test_baseline_order_arrival_or_weighted_shortest_first(order: str, first: str) -> None:
    """One free GPU, two demands: the baselines take the earlier arrival, or the shorter with "smith"."""
    classes = {"v100": make_class_info("v100", gpu_mem=16)}
    nodes = (make_node_info("v1", ["v100"], gpus=1),)
    long = make_demand("ns/long/s", by_class={"v100": 1000.0}, arrival=0.0)
    short = make_demand("ns/short/s", by_class={"v100": 10.0}, arrival=5.0)
    snapshot = Snapshot(now=10.0, classes=classes, nodes=nodes, demands=(long, short))
    for policy in (Policy.AGNOSTIC, Policy.FIFO):
        result = schedule(snapshot, SchedulerParams(policy=policy, baseline_order=order))
        assert [str(a.key) for a in result.admitted] == [first]
