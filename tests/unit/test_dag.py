from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitask.core.dag import (
    CycleError,
    UnknownDependencyError,
    critical_path,
    descendants,
    find_cycle,
    ready,
    topological_order,
)


@pytest.mark.parametrize(
    ("deps", "expected"),
    [
        ({}, []),
        ({"a": []}, ["a"]),
        ({"train": ["prep"], "prep": [], "eval": ["train"]}, ["prep", "train", "eval"]),
        ({"a": [], "b": [], "c": ["a", "b"]}, ["a", "b", "c"]),
        ({"b": [], "a": []}, ["b", "a"]),  # ties keep the spec order
        ({"fuse": ["x", "y"], "x": ["p"], "y": ["p"], "p": []}, ["p", "x", "y", "fuse"]),
    ],
    ids=["empty", "single", "chain", "join", "spec-order", "diamond"],
)
def test_topological_order(deps: dict[str, list[str]], expected: list[str]) -> None:
    assert topological_order(deps) == expected


@pytest.mark.parametrize(
    ("deps", "cycle"),
    [
        ({"a": ["a"]}, ["a", "a"]),
        ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
        ({"p": [], "a": ["c"], "b": ["a"], "c": ["b"]}, ["a", "c", "b", "a"]),
    ],
    ids=["self", "pair", "triangle"],
)
def test_cycle_is_named(deps: dict[str, list[str]], cycle: list[str]) -> None:
    assert find_cycle(deps) == cycle
    with pytest.raises(CycleError, match="dependency cycle: " + " -> ".join(cycle)):
        topological_order(deps)


def test_unknown_dependency() -> None:
    with pytest.raises(UnknownDependencyError, match="'train' depends on unknown sub-task 'prep'"):
        topological_order({"train": ["prep"]})


@pytest.mark.parametrize(
    ("succeeded", "started", "expected"),
    [
        (set(), set(), ["prep"]),
        ({"prep"}, set(), ["train", "lint"]),
        ({"prep"}, {"train"}, ["lint"]),
        ({"prep", "train", "lint"}, set(), ["fuse"]),
        ({"prep", "train"}, {"lint"}, []),
    ],
    ids=["root", "fan-out", "started-excluded", "join-ready", "join-waits"],
)
def test_ready(succeeded: set[str], started: set[str], expected: list[str]) -> None:
    deps = {"prep": [], "train": ["prep"], "lint": ["prep"], "fuse": ["train", "lint"]}
    assert ready(deps, succeeded, started) == expected


def test_descendants_and_critical_path() -> None:
    deps = {"prep": [], "train": ["prep"], "lint": ["prep"], "fuse": ["train", "lint"]}
    assert descendants(deps, "prep") == ["train", "lint", "fuse"]
    assert descendants(deps, "lint") == ["fuse"]
    length, path = critical_path(deps, {"prep": 10, "train": 100, "lint": 5, "fuse": 1})
    assert length == 111
    assert path == ["prep", "train", "fuse"]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.lists(st.sets(st.integers(min_value=0, max_value=n - 1), max_size=3), min_size=n, max_size=n)
))
def test_order_respects_every_edge_of_an_acyclic_graph(edges: list[set[int]]) -> None:
    # Only edges to lower indices: acyclic by construction.
    deps = {f"s{i}": [f"s{j}" for j in sorted(e) if j < i] for i, e in enumerate(edges)}
    order = topological_order(deps)
    position = {name: i for i, name in enumerate(order)}
    assert sorted(order) == sorted(deps)
    for name, requires in deps.items():
        assert all(position[d] < position[name] for d in requires)
