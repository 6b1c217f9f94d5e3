"""Chart, manifests and image files that need no cluster: the chart's CRD copy, the alerts, the values'
schema and documentation, the Dockerfile, the wheel it installs, and the samples.

The checks that need helm (lint, rendering, install.yaml drift) are in e2e/test_chart.py."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from aitask.api.v1alpha1 import AITask, ExecutorClass

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "aitask-operator"
SAMPLES = ROOT / "manifests" / "samples"
KOPF_CRDS = {"kopf.dev_clusterkopfpeerings.yaml": ("ClusterKopfPeering", "Cluster"),
             "kopf.dev_kopfpeerings.yaml": ("KopfPeering", "Namespaced")}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ---- CRDs --------------------------------------------------------------------------------------------


def test_chart_crds_are_a_byte_identical_copy_of_crds() -> None:
    ours = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert ours, "crds/ is empty"
    in_chart = sorted(p.name for p in (CHART / "crds").iterdir())
    assert in_chart == sorted([*ours, *KOPF_CRDS]), "run `make manifests`"
    for name in ours:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/aitask-operator/crds/{name} differs from crds/{name}: run `make manifests`")


@pytest.mark.parametrize(("file", "kind", "scope"), [(f, *v) for f, v in KOPF_CRDS.items()], ids=list(KOPF_CRDS))
def test_kopf_peering_crds_match_what_kopf_looks_up(file: str, kind: str, scope: str) -> None:
    from kopf._cogs.structs import references  # the selectors Kopf's peering uses

    (crd,) = _docs(CHART / "crds" / file)
    spec = crd["spec"]
    selector = references.CLUSTER_PEERINGS_K if scope == "Cluster" else references.NAMESPACED_PEERINGS_K
    assert (spec["group"], spec["names"]["plural"]) == (selector.group, selector.any_name)
    assert [v["name"] for v in spec["versions"]] == [selector.version]
    assert (spec["names"]["kind"], spec["scope"]) == (kind, scope)
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    status = spec["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True  # peers are keys of .status
    assert "subresources" not in spec["versions"][0]  # Kopf patches .status on the main resource


# ---- alerts ------------------------------------------------------------------------------------------


def test_prometheus_rule_is_the_documented_one() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    block = re.search(r"## Alerts.*?```yaml\n(.*?)```", doc, re.S)
    assert block, "docs/operations.md lost its Alerts yaml block"
    documented = yaml.safe_load(block.group(1))["spec"]
    shipped = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert shipped == documented


# ---- values ------------------------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def test_default_values_satisfy_the_schema() -> None:
    jsonschema.validate(_values(), _schema())


@pytest.mark.parametrize(("patch", "where"), [
    ({"replicaCount": -1}, "replicaCount"),
    ({"operator": {"schedulingPeriodSeconds": 0}}, "schedulingPeriodSeconds"),
    ({"operator": {"logLevel": "trace"}}, "logLevel"),
    ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "watchNamespaces"),
    ({"operator": {"prometheus": {"url": "prometheus:9090"}}}, "url"),
    ({"operator": {"learningRate": 1.5}}, "learningRate"),
    ({"operator": {"scheduligPeriod": 3}}, "scheduligPeriod"),
    ({"metrics": {"port": 0}}, "port"),
    ({"executorClasses": [{"name": "a100"}]}, "spec"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    ({"securityContext": {"privileged": True}}, "privileged"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_values_are_rejected(patch: dict[str, Any], where: str) -> None:
    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
                else value
        return out

    with pytest.raises(jsonschema.ValidationError) as err:
        jsonschema.validate(merge(_values(), patch), _schema())
    assert where in str(err.value)


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not key.endswith(("Context", "resources", "strategy")) \
                and key not in ("labels", "nodeSelector", "requests", "limits"):
            keys += _leaf_keys(value, f"{path}.")
        else:
            keys.append(path)
    return keys


def test_every_value_is_documented_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()
    table = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    keys = _leaf_keys(_values())
    missing = [k for k in keys if k not in table]
    assert not missing, f"values missing from the README table: {missing}"
    stale = sorted(k for k in table if not any(k == v or v.startswith(k + ".") for v in keys)
                   and "." in k and k.split(".")[0] in _values())
    assert not stale, f"README documents values that do not exist: {stale}"


def test_every_value_is_in_the_schema() -> None:
    def walk(values: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
        out = []
        props = schema.get("properties", {})
        for key, value in values.items():
            if key not in props:
                if schema.get("additionalProperties") is False:
                    out.append(f"{path}{key}")
            elif isinstance(value, dict) and props[key].get("properties"):
                out += walk(value, props[key], f"{path}{key}.")
        return out

    assert walk(_values(), _schema(), "") == []


# ---- Dockerfile --------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instr, _, args = line.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def test_dockerfile_is_multi_stage_on_a_pinned_python_slim() -> None:
    lines = _dockerfile()
    args = dict(a.split("=", 1) for i, a in lines if i == "ARG" and "=" in a)
    froms = [a for i, a in lines if i == "FROM"]
    assert len(froms) >= 2, "builder + runtime stages"
    for line in froms:
        image = line.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), f"{image}: pin python:3.11.<patch>-slim"
    assert froms[0].split()[-2:] == ["AS", "builder"]
    stages = [i for i, _ in lines]
    assert "COPY" in stages
    assert any(i == "COPY" and a.startswith("--from=builder") for i, a in lines)


def test_dockerfile_installs_the_wheel_and_runs_as_65532() -> None:
    lines = _dockerfile()
    runtime = lines[max(n for n, (i, _) in enumerate(lines) if i == "FROM"):]
    builder = lines[:max(n for n, (i, _) in enumerate(lines) if i == "FROM")]
    builder_run = " ".join(a for i, a in builder if i == "RUN")
    assert "pip wheel" in builder_run and ".whl" in builder_run
    assert [a for i, a in runtime if i == "USER"] == ["65532:65532"]
    assert [json.loads(a) for i, a in runtime if i == "ENTRYPOINT"] == [["aitask"]]
    assert [json.loads(a) for i, a in runtime if i == "CMD"] == [["run"]]
    assert [a for i, a in runtime if i == "EXPOSE"] == ["8080"]
    # The user is the last word: nothing after USER runs as root.
    last_user = max(n for n, (i, _) in enumerate(runtime) if i == "USER")
    assert all(i != "RUN" for i, _ in runtime[last_user:])


def test_dockerignore_keeps_only_the_build_inputs() -> None:
    lines = [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines()
             if x.strip() and not x.startswith("#")]
    assert lines[0] == "*"
    copied = {shlex.split(a)[0] for i, a in _dockerfile() if i == "COPY" and not a.startswith("--from")}
    copied |= {w for i, a in _dockerfile() if i == "COPY" and not a.startswith("--from") for w in shlex.split(a)[:-1]}
    for path in copied:
        assert f"!{path}" in lines, f"{path} is copied but excluded from the build context"


def test_pip_wheel_builds_with_pinned_dependencies(tmp_path: Path) -> None:
    """What the Dockerfile's builder does (``pip wheel --no-deps .``, with build isolation: it needs
    setuptools>=69 from the package index or pip's find-links)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("aitask_operator-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_dir = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(f"{meta_dir}/METADATA").decode()
        entry_points = zf.read(f"{meta_dir}/entry_points.txt").decode()
    assert {"aitask/cli.py", "aitask/py.typed", "aitask/handlers/__init__.py"} <= names
    assert not any(n.startswith(("operator/", "tests/")) for n in names)
    assert re.search(r"^aitask = aitask\.cli:main$", entry_points, re.M)
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert runtime, "no runtime dependencies in the wheel"
    unpinned = [r for r in runtime if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][^ ;,]*", r)]
    assert not unpinned, f"unpinned runtime dependencies: {unpinned}"


# ---- samples -----------------------------------------------------------------------------------------

SAMPLE_FILES = sorted(SAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.name for p in SAMPLE_FILES])
def test_sample_parses_with_the_models(path: Path) -> None:
    docs = _docs(path)
    assert docs
    for doc in docs:
        model = {"AITask": AITask, "ExecutorClass": ExecutorClass}[doc["kind"]]
        parsed = model.model_validate(doc)
        assert parsed.metadata.name == doc["metadata"]["name"]


def test_the_issue_samples_exist_and_have_their_shape() -> None:
    tasks = {d["metadata"]["name"]: AITask.model_validate(d) for p in SAMPLE_FILES for d in _docs(p)
             if d["kind"] == "AITask"}
    light = tasks["traffic-light"].spec
    assert {"gpu"} == light.subtask("detect").kinds and {"cpu"} == light.subtask("decide-phases").kinds
    fuse = tasks["train-eval-fuse"].spec
    types = {s.type.value for s in fuse.subtasks}
    assert {"training", "evaluation", "fusion"} <= types
    assert any(s.gang for s in fuse.subtasks)
    embed = tasks["embed-catalog"].spec.subtask("embed")
    assert (embed.parallelism, embed.effective_completions) == (8, 32)
