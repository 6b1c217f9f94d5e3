"""300 malformed or adversarial AITasks, each with what it must come to.

Expectations (``Case.expect``):
- ``reject``: the API server refuses it (schema, CEL) with a message naming ``field``;
- ``invalid``: accepted, then phase ``Invalid`` with the ``InvalidSpec`` condition;
- ``bad``: either of the two;
- ``run``: in fact valid: it gets its Job (e.g. a 200-character name, unknown fields the API server prunes);
- ``wait``: accepted and told why it cannot be placed (``Planned=False``, ``NoFeasibleClass``), or ``bad``;
- ``any``: any definite answer within the bound (rejected, Invalid, pods, unschedulable, Failed, or the
  ``InternalError`` condition of a task isolated because its processing raised), never silence.

A case with ``bug`` set reproduces an operator bug this suite found (fixed since): it is kept out of the
batch and runs alone, with a valid task beside it, so a regression shows on its own.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any

from e2e.chaos.lib import sim

BASE: dict[str, Any] = {"name": "a", "image": "registry.example/adv:1", "podMetadata": sim("1s")}


@dataclass
class Case:
    label: str
    body: dict[str, Any]
    expect: str
    field: str = ""  # what a rejection must name
    strict: bool = False  # POST with fieldValidation=Strict (unknown fields rejected instead of pruned)
    name: str = ""
    bug: str = ""  # a known operator bug this case reproduces (see the module docstring)

    def __post_init__(self) -> None:
        self.name = self.body["metadata"]["name"]


# Operator bugs this suite found, now fixed (reproductions in e2e/chaos/README.md): case label -> what went wrong.
BUGS = {
    "env valueFrom garbage": "the kubernetes client's own (pydantic) validation of the Job raises "
    "pydantic_core.ValidationError in Engine.apply, which catches only ApiException: every cycle fails, "
    "no task in the cluster is admitted any more",
    **dict.fromkeys(
        ("unicode label", "bad label key", "bad env name", "mount of a missing volume"),
        "the API server refuses the child Job (422): Engine.apply logs a warning and the next cycle tries the "
        "same create again, every cycle, forever; the AITask gets no condition (it should end Invalid with "
        "InvalidSpec naming the field, or the schema should refuse it)",
    ),
    "blank image": "the Job is created but the API server refuses its pods (image ' ': leading or trailing "
    "whitespace): the task stays Running with an attempt that has no pod and no condition, forever",
}


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        obj = obj.setdefault(key, {})
    obj[keys[-1]] = value


def _task(name: str, subtasks: Any = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "aitask.dev/v1alpha1", "kind": "AITask", "metadata": {"name": name},
                            "spec": {"subtasks": [copy.deepcopy(BASE)] if subtasks is None else subtasks}}
    body["spec"].update(spec)
    return body


def _chain(n: int, cycle: bool) -> list[dict[str, Any]]:
    subs = [{**copy.deepcopy(BASE), "name": f"s{i}", "dependsOn": [f"s{i - 1}"] if i else []} for i in range(n)]
    if cycle:
        subs[0]["dependsOn"] = [f"s{n - 1}"]
    return subs


def cases(count: int, rng: random.Random) -> list[Case]:
    out: list[Case] = []
    n = iter(range(10**6))

    def name() -> str:
        return f"adv-{next(n):03d}"

    def sub(label: str, path: str, value: Any, expect: str, fld: str = "") -> None:
        body = _task(name())
        _set(body["spec"]["subtasks"][0], path, value)
        out.append(Case(label, body, expect, fld or f"spec.subtasks[0].{path}"))

    def spec(label: str, path: str, value: Any, expect: str, fld: str = "") -> None:
        body = _task(name())
        _set(body["spec"], path, value)
        out.append(Case(label, body, expect, fld or f"spec.{path}"))

    # -- numbers out of range (huge, negative, zero) -------------------------------------------------
    numeric_sub = {
        "parallelism": [0, -1, 1025, 10**9, 2**63 - 1], "completions": [0, -5, 100001, 10**12],
        "executor.accelerators": [-1, 65, 10000, 10**9], "executor.minAcceleratorMemoryGiB": [0, -1, 1e7, 1e308],
        "estimate.seconds": [0, -1, 1e12, 1e308], "work.units": [0, -1, 1e10, 1e308],
        "retry.limit": [-1, 21, 10**9], "retry.backoffSeconds": [-1, 3601, 1e308],
        "timeoutSeconds": [0, -1, 1e12, 10**18],
    }
    for path, values in numeric_sub.items():
        for v in values:
            sub("number out of range", path, v, "bad")
    for v in (0, -1, 1e12, 1e308):
        sub("number out of range", "estimate.secondsByClass", {"l4": v}, "bad", "secondsByClass")
    numeric_spec = {"priority": [0, -1, 1001, 1e308], "objective.timeWeight": [-1, 1e7, 1e308],
                    "objective.costWeight": [-1, 1e7, 1e308], "deadline.seconds": [0, -1, 1e12, 1e308, 10**18]}
    for path, values in numeric_spec.items():
        for v in values:
            spec("number out of range", path, v, "bad")

    # -- wrong types ------------------------------------------------------------------------------------
    wrong_sub = {
        "name": [5, [], {}], "image": [5, [], {}], "command": ["ls", 5, {}], "args": ["x", {}],
        "dependsOn": ["a", 5], "parallelism": ["4", [], True, 1.5], "completions": ["x"], "gang": ["yes", 1],
        "executor": ["gpu", [], 5], "executor.kinds": ["gpu", ["tpu"]], "executor.classes": ["l4", [5]],
        "executor.accelerators": ["one", 1.5], "executor.cpu": [4, [], True], "executor.memory": [1024, {}],
        "estimate": ["fast", []], "estimate.seconds": ["fast", []], "estimate.onClass": [5],
        "retry": [5], "retry.limit": ["x", 1.5], "retry.oomEscalation": ["no"],
        "env": ["x", [{"value": "v"}], [{"name": 5}]], "podMetadata.labels": [{"a": 1}, "x"],
        "podMetadata.annotations": [{"a": 1}], "profile": [5], "type": ["gpu-thing", 5], "timeoutSeconds": ["1h"],
        "volumeMounts": [[{"name": "v"}], "x"], "work": [5], "work.units": ["many"],
    }
    for path, values in wrong_sub.items():
        for v in values:
            sub("wrong type", path, v, "reject")
    wrong_spec = {"priority": ["high", [], {}], "objective": ["fast"], "objective.timeWeight": ["x"],
                  "deadline": [5], "deadline.seconds": ["soon"], "subtasks": ["x", {}, 5],
                  "template": ["x"], "template.env": ["x"], "template.serviceAccountName": [5]}
    for path, values in wrong_spec.items():
        for v in values:
            spec("wrong type", path, v, "reject")
    out.append(Case("wrong type", {**_task(name()), "spec": "x"}, "reject", "spec"))

    # -- unknown fields: refused with fieldValidation=Strict, pruned (and so valid) otherwise ----------
    unknown = ["spec.foo", "spec.subtasks.0.foo", "spec.subtasks.0.executor.gpu", "spec.subtasks.0.estimate.minutes",
               "spec.subtasks.0.retry.max", "spec.objective.gamma", "spec.deadline.minutes", "spec.template.foo"]
    for strict in (True, False):
        for path in unknown:
            body = _task(name(), deadline={"seconds": 3600}, objective={"timeWeight": 1}, template={})
            target: Any = body
            keys = path.split(".")
            for key in keys[:-1]:
                target = target[int(key)] if key.isdigit() else target.setdefault(key, {})
            target[keys[-1]] = 1
            out.append(Case("unknown field", body, "reject" if strict else "run", keys[-1], strict=strict))

    # -- structure: sizes and dependencies --------------------------------------------------------------
    for k in (1000, 100, 65):
        subs = [{**copy.deepcopy(BASE), "name": f"s{i}"} for i in range(k)]
        out.append(Case(f"{k} sub-tasks", _task(name(), subs), "reject", "spec.subtasks"))
    out.append(Case("no sub-tasks", _task(name(), []), "reject", "spec.subtasks"))
    out.append(Case("no spec", {k: v for k, v in _task(name()).items() if k != "spec"}, "reject", "spec"))
    out.append(Case("null sub-tasks", _task(name(), None) | {"spec": {"subtasks": None}}, "reject", "spec.subtasks"))
    out.append(Case("self dependency", _task(name(), [{**BASE, "dependsOn": ["a"]}]), "bad", "dependsOn"))
    out.append(Case("missing dependency", _task(name(), [{**BASE, "dependsOn": ["nope"]}]), "bad", "dependsOn"))
    out.append(Case("duplicate names", _task(name(), [BASE, BASE]), "bad", "spec.subtasks"))
    for k in (2, 3, 10, 64):
        out.append(Case(f"dependency cycle of {k}", _task(name(), _chain(k, cycle=True)), "invalid"))
    out.append(Case("1000 dependencies", _task(name(), [BASE, {**BASE, "name": "b", "dependsOn": ["a"] * 1000}]),
                    "any", "dependsOn"))
    out.append(Case("duplicate dependency", _task(name(), [BASE, {**BASE, "name": "b", "dependsOn": ["a", "a"]}]),
                    "any", "dependsOn"))

    # -- names -------------------------------------------------------------------------------------------
    for k in (64, 100, 200, 253):
        out.append(Case(f"{k}-char name", _task(("long-" * 60)[: k - 4].rstrip("-") + f"-{next(n):03d}"), "run"))
    out.append(Case("200-char name, 40-char sub-task", _task(("x" * 196) + f"{next(n):03d}"[-3:] + "y",
                                                             [{**BASE, "name": "s" * 40}]), "run"))
    out.append(Case("dotted name", _task(f"a.b.c-{next(n):03d}"), "run"))
    for bad in ("x" * 254, "UPPER", "a..b", "-a", "a_b", "ünï"):
        out.append(Case("bad name", _task(bad), "reject", "metadata.name"))
    for bad in ("s" * 41, "A", "ü", "", "a_b", "a.b", "-a"):
        out.append(Case("bad sub-task name", _task(name(), [{**BASE, "name": bad}]), "reject",
                        "spec.subtasks[0].name"))

    # -- unicode, empty and huge values ------------------------------------------------------------------
    out.append(Case("unicode command", _task(name(), [{**BASE, "command": ["echo", "héllo wörld 🌍 日本"]}]), "run"))
    out.append(Case("unicode env", _task(name(), [{**BASE, "env": [{"name": "GREETING", "value": "привет 🌍"}]}]),
                    "run"))
    out.append(Case("unicode annotation", _task(name(), [{**BASE, "podMetadata": {
        "annotations": {**BASE["podMetadata"]["annotations"], "note": "σ∑ 🌍"}}}]), "run"))
    out.append(Case("unicode profile", _task(name(), [{**BASE, "profile": "模型-résumé"}]), "run"))
    out.append(Case("unicode image", _task(name(), [{**BASE, "image": "registry.example/ümage:1"}]), "any"))
    out.append(Case("unicode label", _task(name(), [{**BASE, "podMetadata": {"labels": {"k": "ü"}}}]), "any"))
    out.append(Case("empty image", _task(name(), [{**BASE, "image": ""}]), "reject", "image"))
    out.append(Case("blank image", _task(name(), [{**BASE, "image": " "}]), "any", "image"))
    out.append(Case("no image", _task(name(), [{"name": "a"}]), "reject", "image"))
    out.append(Case("empty command", _task(name(), [{**BASE, "command": []}]), "run"))
    out.append(Case("empty env name", _task(name(), [{**BASE, "env": [{"name": "", "value": "x"}]}]), "bad", "name"))
    out.append(Case("10,000 arguments", _task(name(), [{**BASE, "command": ["x" * 10] * 10000}]), "reject",
                    "spec.subtasks[0].command"))
    out.append(Case("256 long arguments", _task(name(), [{**BASE, "command": ["x" * 1000] * 256}]), "run"))
    out.append(Case("300,000 arguments", _task(name(), [{**BASE, "args": ["y" * 10] * 300000}]), "any", ""))
    out.append(Case("300 KB annotation", _task(name(), [{**BASE, "podMetadata": {
        "annotations": {"big": "z" * 300_000}}}]), "any", ""))

    # -- accelerators, classes, quantities ---------------------------------------------------------------
    out.append(Case("10,000 accelerators", _task(name(), [{**BASE, "executor": {"accelerators": 10000}}]),
                    "reject", "accelerators"))
    for k in (64, 9):
        out.append(Case(f"{k} accelerators per pod", _task(name(), [{**BASE, "executor": {"accelerators": k}}]),
                        "wait", "accelerators"))
    out.append(Case("unknown class", _task(name(), [{**BASE, "executor": {"classes": ["nope"]}}]), "wait", "classes"))
    out.append(Case("no classes", _task(name(), [{**BASE, "executor": {"classes": []}}]), "any", "classes"))
    out.append(Case("unknown onClass", _task(name(), [{**BASE, "estimate": {"seconds": 5, "onClass": "nope"}}]),
                    "any", "onClass"))
    out.append(Case("unknown class estimate", _task(name(), [{**BASE, "estimate": {"secondsByClass": {"nope": 5}}}]),
                    "any", "secondsByClass"))
    out.append(Case("unknown kind", _task(name(), [{**BASE, "executor": {"kinds": ["tpu"]}}]), "reject", "kinds"))
    for res, qty, expect in (("memory", "1Ei", "wait"), ("memory", "1e99", "wait"), ("cpu", "1e99", "wait"),
                             ("cpu", "100000", "wait"), ("cpu", "0", "any"), ("memory", "0", "any"),
                             ("cpu", "-1", "reject"), ("memory", "lots", "reject"), ("memory", "1Zi", "reject"),
                             ("cpu", "1m", "run"), ("memory", "1", "any"), ("cpu", "0.0000001", "any"),
                             ("memory", "9" * 40, "reject"), ("cpu", " 1", "reject")):
        out.append(Case(f"{res}: {qty[:12]}", _task(name(), [{**BASE, "executor": {res: qty}}]), expect, res))

    # -- deadlines and estimates at the bounds -------------------------------------------------------------
    out.append(Case("deadline at the bound", _task(name(), deadline={"seconds": 315360000}), "run"))
    out.append(Case("deadline 1 s", _task(name(), deadline={"seconds": 1}), "any"))
    out.append(Case("estimate at the bound", _task(name(), [{**BASE, "estimate": {"seconds": 315360000}}]), "any"))
    out.append(Case("both weights 0", _task(name(), objective={"timeWeight": 0, "costWeight": 0}), "run"))

    # -- pod-level garbage the schema lets through ----------------------------------------------------------
    out.append(Case("env valueFrom garbage", _task(name(), [{**BASE, "env": [{"name": "X", "valueFrom": {"foo": 1}}]}]),
                    "any", "env"))
    out.append(Case("volume without source", _task(name(), [{**BASE, "volumes": [{"name": "v"}]}]), "any", "volumes"))
    out.append(Case("mount of a missing volume", _task(name(), [{**BASE, "volumeMounts": [
        {"name": "nope", "mountPath": "/x"}]}]), "any", "volumeMounts"))
    out.append(Case("bad label key", _task(name(), [{**BASE, "podMetadata": {"labels": {"bad key!": "v"}}}]),
                    "any", "labels"))
    out.append(Case("bad env name", _task(name(), [{**BASE, "env": [{"name": "A=B", "value": "v"}]}]), "any", "env"))

    # -- the rest: random huge/negative numbers in random numeric fields ------------------------------------
    paths = [(p, "sub") for p in numeric_sub] + [(p, "spec") for p in numeric_spec]
    while len(out) < count:
        path, where = rng.choice(paths)
        value = rng.choice([-(10 ** rng.randint(1, 300)) * 1.0, 10.0 ** rng.randint(10, 308), -rng.randint(1, 10**9),
                            rng.randint(10**10, 2**63 - 1)])
        (sub if where == "sub" else spec)("random number out of range", path, value, "bad")
    for case in out:
        case.bug = BUGS.get(case.label, "")
    return out[:count]
