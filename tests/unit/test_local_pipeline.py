"""`aitask local` runs the reference pipeline (manifests/samples/digits-ensemble.yaml) for real.

Three model variants of different cost and accuracy train side by side on scikit-learn's bundled
digits, each reading the preprocess step's output through the env contract, and the fusion step
votes with their qualities as weights. The accuracies are printed (pytest -s) and checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aitask.cli import main
from aitask.commands.local import best_quality, expand, local_steps
from aitask.files import load_workload

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "manifests" / "samples" / "digits-ensemble.yaml"


def test_the_reference_pipeline_runs_locally_and_reports_its_accuracies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["local", str(SAMPLE), "--workspace", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "fuse" / "metrics.json").read_text())
    members = {name: m["accuracy"] for name, m in report["members"].items()}
    with capsys.disabled():
        print(f"\nreference pipeline: members {members}, fused {report['fused_accuracy']:.4f}")
    assert set(members) == {"small", "medium", "large"}
    assert members["small"] < members["medium"] < members["large"]  # cost and accuracy grow together
    assert members["small"] > 0.75 and members["large"] > 0.95
    assert report["fused_accuracy"] > 0.95
    assert report["fused_accuracy"] >= members["medium"]  # the vote is at least as good as all but the best
    # Every member wrote under its own output folder, named after its sub-task.
    assert {p.name for p in tmp_path.iterdir()} == {"preprocess", "train-small", "train-medium", "train-large", "fuse"}
    declared = {m["variant"]: m["weight"] for m in json.loads(_fuse_env(tmp_path)["AITASK_MEMBERS"])}
    assert {name: m["weight"] for name, m in report["members"].items()} == declared


def _fuse_env(root: Path) -> dict[str, str]:
    (task,) = load_workload(SAMPLE)
    steps = local_steps(task, str(root), best_quality, "python3")
    return dict(steps[-1].env)


def test_local_steps_follow_the_dependency_order_with_the_contract(tmp_path: Path) -> None:
    (task,) = load_workload(SAMPLE)
    steps = local_steps(task, str(tmp_path), best_quality, "/usr/bin/python3")
    assert [s.subtask.name for s in steps] == ["preprocess", "train-large", "train-medium", "train-small", "fuse"]
    train = steps[1]
    assert train.argv == ("/usr/bin/python3", "digits/pipeline.py", "train", "--model", "large")
    assert train.env["AITASK_OUTPUT"] == f"{tmp_path}/train-large"
    assert json.loads(train.env["AITASK_INPUTS"]) == {"preprocess": f"{tmp_path}/preprocess"}
    assert train.env["AITASK_VARIANT"] == "large"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("$(AITASK_OUTPUT)/x", "/w/s/x"), ("$$(AITASK_OUTPUT)", "$(AITASK_OUTPUT)"), ("$(UNSET)", "$(UNSET)")],
    ids=["expanded", "escaped", "unknown-kept"],
)
def test_references_in_commands_expand_as_the_kubelet_does(value: str, expected: str) -> None:
    assert expand(value, {"AITASK_OUTPUT": "/w/s"}) == expected
