"""The API models: defaults the user relies on, and errors that name the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from aitask.api import v1alpha1 as api
from aitask.api.v1alpha1 import AITask, AITaskSpec, ExecutorClass
from aitask.control.cycle import validation_message
from aitask.core.estimator import PRIOR_SECONDS


def spec(*subtasks: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"subtasks": list(subtasks), **extra}


@pytest.mark.parametrize(
    ("image", "profile"),
    [("reg.io/team/train:1.2", "reg.io/team/train"), ("reg.io:5000/train", "reg.io:5000/train"),
     ("train@sha256:abc", "train"), ("localhost:5000/x/y:tag", "localhost:5000/x/y")],
    ids=["tag", "registry-port", "digest", "port-and-tag"],
)
def test_profile_defaults_to_the_image_without_tag(image: str, profile: str) -> None:
    sub = AITaskSpec.model_validate(spec({"name": "a", "image": image})).subtasks[0]
    assert sub.effective_profile == profile


@pytest.mark.parametrize(
    ("subtask", "kinds"),
    [({"type": "training"}, {"gpu"}), ({"type": "preprocess"}, {"cpu"}), ({"type": "custom"}, {"cpu"}),
     ({"type": "custom", "executor": {"accelerators": 2}}, {"gpu"}),
     ({"type": "inference", "executor": {"kinds": ["cpu", "gpu"]}}, {"cpu", "gpu"})],
    ids=["training", "preprocess", "custom", "accelerators-imply-gpu", "explicit"],
)
def test_executor_kind_defaults_follow_the_type(subtask: dict[str, Any], kinds: set[str]) -> None:
    sub = AITaskSpec.model_validate(spec({"name": "a", "image": "x", **subtask})).subtasks[0]
    assert sub.kinds == frozenset(kinds)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (spec({"name": "a", "image": "x"}, {"name": "a", "image": "y"}), "subtasks[1].name"),
        (spec({"name": "a", "image": "x", "dependsOn": ["zz"]}), "subtasks[0].dependsOn"),
        (spec({"name": "a", "image": "x", "dependsOn": ["a"]}), "subtasks[0].dependsOn"),
        (spec({"name": "a", "image": "x", "executor": {"memory": "lots"}}), "spec.subtasks[0].executor.memory"),
        (spec({"name": "Bad_Name", "image": "x"}), "spec.subtasks[0].name"),
        (spec({"name": "a", "image": "x", "estimate": {"secondsByClass": {"v100": 0}}}),
         "spec.subtasks[0].estimate.secondsByClass"),
        (spec(), "spec.subtasks"),
        (spec({"name": "a", "image": "x", "unknown": 1}), "spec.subtasks[0].unknown"),
    ],
    ids=["duplicate", "unknown-dep", "self-dep", "quantity", "dns-label", "positive-runtime", "empty", "typo"],
)
def test_invalid_specs_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        AITask.model_validate({"metadata": {"name": "t"}, "spec": body})
    assert field in validation_message(err.value)


def test_executor_class_kind_and_wire_format() -> None:
    ec = ExecutorClass.model_validate({"metadata": {"name": "v100"}, "spec": {
        "nodeSelector": {"nvidia.com/gpu.product": "V100"},
        "accelerator": {"model": "V100", "memoryGiB": 16}, "price": {"acceleratorHour": 3.06}}})
    assert ec.spec.kind == "gpu"
    wire = ec.spec.wire()
    assert wire["accelerator"]["memoryGiB"] == 16
    assert wire["price"]["acceleratorHour"] == 3.06
    assert ExecutorClass.model_validate({"metadata": {"name": "c"}, "spec": {}}).spec.kind == "cpu"


def test_every_setting_is_documented_in_the_operations_guide() -> None:
    from pathlib import Path

    from aitask.settings import OperatorSettings

    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    missing = [n for n in OperatorSettings.model_fields if f"`AITASK_{n.upper()}`" not in text]
    assert not missing, f"add these to docs/operations.md ## Configuration: {missing}"


@pytest.mark.parametrize("kind", list(api.SubtaskType), ids=[t.value for t in api.SubtaskType])
def test_every_subtask_type_has_its_defaults(kind: api.SubtaskType) -> None:
    defaults = api.SUBTASK_TYPE_DEFAULTS[kind]
    sub = api.Subtask.model_validate({"name": "s", "image": "i", "type": kind.value})
    assert sub.kinds == frozenset({defaults.kind})
    assert PRIOR_SECONDS[kind.value] == defaults.prior_seconds > 0
    assert api.POD_DEFAULTS[defaults.kind].accelerators == (1 if defaults.kind == "gpu" else 0)


def test_user_guide_table_of_type_defaults_is_the_code_table() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "user-guide.md").read_text()
    rows = re.findall(r"^\| `([a-z]+)` \| (gpu|cpu) \| (\d+) \|$", text, flags=re.MULTILINE)
    documented = {name: (kind, float(seconds)) for name, kind, seconds in rows}
    assert documented == {t.value: (d.kind, d.prior_seconds) for t, d in api.SUBTASK_TYPE_DEFAULTS.items()}
