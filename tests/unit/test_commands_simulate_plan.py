from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from aitask.commands import plan, simulate
from aitask.files import FileFormatError, load_cluster, load_workload
from tests.builders import make_aitask, make_class, make_node


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="aitask")
    sub = root.add_subparsers(dest="command", required=True)
    simulate.add_parser(sub)
    plan.add_parser(sub)
    return root


def call(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    cluster = [
        make_class("v100", gpu_mem=16, price=3.06, speed=4.0).wire(),
        make_class("k80", gpu_mem=12, price=0.9).wire(),
        make_class("cpu", cpu_price=0.05).wire(),
        {"kind": "List", "apiVersion": "v1", "items": [
            make_node("v1", gpus=2, klass="v100"),
            make_node("k1", gpus=4, klass="k80"),
            make_node("c1", klass="cpu"),
        ]},
    ]
    workload = [
        make_aitask("pipe").submit_after(0)
        .subtask("prep", type="preprocess", seconds=60)
        .subtask("train", gpus=1, depends_on=["prep"], seconds_by_class={"v100": 600, "k80": 2400})
        .subtask("fuse", type="fusion", depends_on=["train"], seconds=30)
        .dict(),
        make_aitask("solo").submit_after(30).subtask("train", gpus=1, seconds_by_class={"v100": 100, "k80": 300})
        .dict(),
    ]
    c = tmp_path / "cluster.yaml"
    w = tmp_path / "workload.yaml"
    c.write_text(yaml.safe_dump_all(cluster))
    w.write_text(yaml.safe_dump_all(workload))
    return c, w


@pytest.mark.parametrize("policy", ["cost", "fifo", "agnostic"])
def test_simulate_json(files: tuple[Path, Path], policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    cluster, workload = files
    assert call(["simulate", str(cluster), str(workload), "--policy", policy, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == [
        "policy", "tasks", "avg_completion_seconds", "weighted_avg_completion_seconds",
        "makespan_seconds", "total_cost", "placements", "preemptions", "migrations",
    ]
    assert doc["policy"] == policy
    assert doc["tasks"] == 2
    assert {(p["task"], p["subtask"]) for p in doc["placements"]} == {
        ("pipe", "prep"), ("pipe", "train"), ("pipe", "fuse"), ("solo", "train")}


def test_simulate_table_and_learn(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cluster, workload = files
    assert call(["simulate", str(cluster), str(workload), "--learn"]) == 0
    out = capsys.readouterr().out
    assert "avg completion:" in out
    assert "pipe" in out


def test_simulate_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nmetadata: {name: x}\n")
    assert call(["simulate", str(bad), str(bad)]) == 2
    assert "expected Node or ExecutorClass objects, found 'Pod' 'x'" in capsys.readouterr().err


def test_plan_json(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cluster, _ = files
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(
        make_aitask("pipe").subtask("prep", type="preprocess", seconds=60)
        .subtask("train", gpus=1, depends_on=["prep"], seconds_by_class={"v100": 600, "k80": 2400})
        .subtask("big", gpus=1, depends_on=["prep"], min_accel_memory_gib=40)
        .dict()))
    assert call(["plan", str(one), "--cluster", str(cluster), "--format", "json"]) == 1  # "big" cannot run
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert doc["task"] == "pipe"
    assert doc["feasible"] is False
    subs = {s["name"]: s for s in doc["subtasks"]}
    assert [s["name"] for s in doc["subtasks"]] == ["prep", "train", "big"]
    assert subs["prep"]["class"] == "cpu"
    assert (subs["train"]["class"], subs["train"]["accelerators"], subs["train"]["estimated_seconds"]) == (
        "v100", 1, 600.0)
    assert subs["train"]["estimated_cost"] == pytest.approx(600 / 3600 * (3.06 + 4 * 0.0))
    alternatives = {a["class"]: a for a in subs["train"]["alternatives"]}
    assert alternatives["k80"]["estimated_seconds"] == 2400.0
    assert alternatives["cpu"]["feasible"] is False
    assert subs["big"]["class"] is None
    assert "accelerator memory" in subs["big"]["message"]
    assert doc["critical_path"] == ["prep", "train"]
    assert doc["critical_path_seconds"] == 660.0


def test_plan_table(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cluster, workload = files
    assert call(["plan", str(workload), "--cluster", str(cluster)]) == 0
    out = capsys.readouterr().out
    assert "AITask default/pipe" in out
    assert "critical path: 690 s (prep -> train -> fuse)" in out
    assert "infeasible: kind cpu not allowed" in out


def test_plan_needs_a_source() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["plan", "x.yaml"])


def test_loaders(files: tuple[Path, Path], tmp_path: Path) -> None:
    cluster, workload = files
    classes, nodes = load_cluster(cluster)
    assert [c.metadata.name for c in classes] == ["v100", "k80", "cpu"]
    assert [n["metadata"]["name"] for n in nodes] == ["v1", "k1", "c1"]
    assert [t.metadata.name for t in load_workload(workload)] == ["pipe", "solo"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"apiVersion": "aitask.dev/v1alpha1", "kind": "AITask",
                                      "metadata": {"name": "x"}, "spec": {"subtasks": []}}))
    with pytest.raises(FileFormatError, match="AITask 'x'"):
        load_workload(broken)
    with pytest.raises(FileFormatError, match="No such file"):
        load_workload(tmp_path / "missing.yaml")


def test_plan_kubeconfig_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = tmp_path / "t.yaml"
    task.write_text(yaml.safe_dump(make_aitask("a").subtask("s", gpus=1).dict()))
    assert call(["plan", str(task), "--kubeconfig", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aitask plan: kubeconfig:")
    assert "Traceback" not in err


def test_pod_requests_count_init_containers_like_the_scheduler() -> None:
    """The pod view (what the cycle and the live preview count) sums the containers, or takes the largest
    init container where that is more."""
    from aitask.control.cycle import _pod_requests
    from aitask.core.observed import pod_view

    def pod_requests(body: dict[str, Any]) -> dict[str, float]:
        return _pod_requests(pod_view(body))

    pod = {"spec": {
        "containers": [
            {"resources": {"requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"}}},
            {"resources": {"requests": {"cpu": "1"}}},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "4", "memory": "512Mi"}}}],
    }}
    assert pod_requests(pod) == {"cpu": 4.0, "memory": 2.0**30, "nvidia.com/gpu": 1.0}


def test_plan_honours_the_task_budget_across_its_subtasks(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cluster, _ = files
    body = (make_aitask("capped")
            .subtask("a", gpus=1, seconds_by_class={"v100": 600, "k80": 1200})
            .subtask("b", gpus=1, depends_on=["a"], seconds_by_class={"v100": 600, "k80": 1200})
            .dict())
    # v100: 0.51 per sub-task (faster), k80: 0.30; a budget of 0.9 fits one v100, then only a k80.
    body["spec"]["budget"] = {"maxCost": 0.9}
    one = tmp_path / "capped.yaml"
    one.write_text(yaml.safe_dump(body))
    assert call(["plan", str(one), "--cluster", str(cluster), "--format", "json"]) == 0
    subs = {s["name"]: s for s in json.loads(capsys.readouterr().out)["subtasks"]}
    assert subs["a"]["class"] == "v100"
    assert subs["b"]["class"] == "k80"
    v100 = next(a for a in subs["b"]["alternatives"] if a["class"] == "v100")
    assert v100["feasible"] is False and "the task's budget" in v100["reason"]
