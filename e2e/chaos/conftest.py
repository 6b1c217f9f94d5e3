"""Fixtures of the chaos suite: the size, operators that are always stopped (and their AITasks cleaned up
while they still run), and the count tables in the terminal summary."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.chaos.lib import REPORTS, SIZES, Size, remove_tasks
from e2e.cluster import Cluster
from e2e.operator import Operator
from e2e.test_operator import classes  # noqa: F401  (the CRDs and sample ExecutorClasses, a fixture)


@pytest.fixture(scope="session")
def size(request: pytest.FixtureRequest) -> Size:
    name = request.config.getoption("--chaos-size", None) or os.environ.get("AITASK_CHAOS_SIZE") or "small"
    return SIZES[name]


@pytest.fixture
def operators(cluster: Cluster, namespace: str, classes: dict[str, Any],  # noqa: F811
              tmp_path: Path) -> Iterator[Callable[..., Operator]]:
    """``operators(name=..., standalone=..., namespace=..., env=...)`` starts an operator; every one is
    stopped after the test, after the test namespace's AITasks were deleted while one still ran."""
    started: list[Operator] = []

    def start(*, name: str = "operator", standalone: bool = True, watch: str | None | bool = True,
              env: dict[str, str] | None = None) -> Operator:
        ns = namespace if watch is True else (watch or None)
        op = Operator(cluster, ns, tmp_path, env, name=name, standalone=standalone).start()
        started.append(op)
        return op

    yield start
    try:
        if any(op.alive() for op in started):
            remove_tasks(cluster, namespace, timeout=60)
    finally:
        for op in started:
            print(f"--- {op.name} log (tail) ---\n{op.log(120)}")  # shown when the test fails
            op.stop()
        assert not [op.name for op in started if op.alive()]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTS:
        terminalreporter.write_sep("-", "chaos suite: counts per scenario")
        for text in REPORTS:
            terminalreporter.write_line(text)
            terminalreporter.write_line("")
