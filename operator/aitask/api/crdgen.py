"""Generate the CRDs from the pydantic models, so the schema has one source of truth.

Pydantic emits JSON Schema 2020-12; the API server wants a *structural* OpenAPI v3
schema. The translation inlines ``$ref``s, turns ``X | None`` into ``nullable: true``,
maps ``exclusiveMinimum: n`` to ``minimum: n, exclusiveMinimum: true``, drops titles
and non-scalar defaults, and adds what pydantic cannot say: list semantics for
``kubectl apply`` merges, and CEL rules so the API server itself rejects a bad
object with a message that names the field.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from aitask.api import v1alpha1 as api

SchemaDict = dict[str, Any]

_DROP = {"title", "discriminator", "examples"}


def _resolve(node: Any, defs: SchemaDict) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return _resolve(target, defs)
    out: SchemaDict = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _resolve(value, defs)
    return _structural(out)


def _structural(node: SchemaDict) -> SchemaDict:
    # X | None  ->  X with nullable
    for union in ("anyOf", "oneOf"):
        options = node.get(union)
        if options and any(o.get("type") == "null" for o in options):
            rest = [o for o in options if o.get("type") != "null"]
            node.pop(union)
            if len(rest) == 1:
                merged = {**rest[0], **node, "nullable": True}
                if "default" in merged and merged["default"] is None:
                    merged.pop("default")
                return _structural(merged)
            node[union] = rest
            node["nullable"] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, base in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[base] = node.pop(bound)
            node[bound] = True
    if "default" in node and isinstance(node["default"], dict | list):
        node.pop("default")
    if node.get("type") == "object" and "additionalProperties" in node:
        extra = node["additionalProperties"]
        if extra is True or extra == {}:
            node.pop("additionalProperties")
            node["x-kubernetes-preserve-unknown-fields"] = True
        elif extra is False:
            node.pop("additionalProperties")
    if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    return node


def schema_of(model: type[BaseModel]) -> SchemaDict:
    """Structural OpenAPI v3 schema of a pydantic model (validation view, camelCase names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    resolved: SchemaDict = _resolve(raw, defs)
    return resolved


def _bound_strings_and_lists(node: Any) -> None:
    """CEL cost estimation needs bounds: give every list and string one if pydantic had none."""
    if isinstance(node, dict):
        if node.get("type") == "array":
            node.setdefault("maxItems", 256)
        if node.get("type") == "string" and "enum" not in node and "format" not in node:
            node.setdefault("maxLength", 4096)
        for value in node.values():
            _bound_strings_and_lists(value)
    elif isinstance(node, list):
        for value in node:
            _bound_strings_and_lists(value)


# --------------------------------------------------------------------------- AITask


def _aitask_spec() -> SchemaDict:
    spec = schema_of(api.AITaskSpec)
    _bound_strings_and_lists(spec)
    spec["description"] = "An AI workload made of sub-tasks; each becomes one child Job per attempt."
    subtasks = spec["properties"]["subtasks"]
    subtasks["x-kubernetes-list-type"] = "map"
    subtasks["x-kubernetes-list-map-keys"] = ["name"]
    subtasks["description"] = "The pipeline's steps; dependsOn orders them, the rest may run in parallel."
    item = subtasks["items"]
    item["properties"]["dependsOn"]["maxItems"] = api.MAX_SUBTASKS
    item["properties"]["dependsOn"]["items"]["maxLength"] = api.MAX_SUBTASK_NAME
    item["properties"]["dependsOn"]["x-kubernetes-list-type"] = "set"
    item["x-kubernetes-validations"] = [
        {
            "rule": "!has(self.dependsOn) || !(self.name in self.dependsOn)",
            "message": "a sub-task cannot depend on itself",
            "fieldPath": ".dependsOn",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.completions) || self.completions >= self.parallelism",
            "message": "completions must be at least parallelism",
            "fieldPath": ".completions",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.estimate) || !has(self.estimate.onClass) || has(self.estimate.seconds)",
            "message": "estimate.onClass needs estimate.seconds",
            "fieldPath": ".estimate.onClass",
            "reason": "FieldValueRequired",
        },
        {
            "rule": "!has(self.executor) || !has(self.executor.kinds) || !has(self.executor.accelerators)"
            " || self.executor.accelerators == 0 || 'gpu' in self.executor.kinds",
            "message": "executor.accelerators > 0 needs 'gpu' in executor.kinds",
            "fieldPath": ".executor.accelerators",
            "reason": "FieldValueInvalid",
        },
    ]
    item["x-kubernetes-validations"] += _variant_rules(item)
    _workspace_rules(spec["properties"]["workspace"])
    executor = item["properties"]["executor"]
    executor["properties"]["kinds"]["x-kubernetes-list-type"] = "set"
    executor["properties"]["kinds"]["minItems"] = 1
    executor["properties"]["classes"]["x-kubernetes-list-type"] = "set"
    executor["properties"]["classes"]["minItems"] = 1
    spec["x-kubernetes-validations"] = [
        {
            "rule": "self.subtasks.all(s, !has(s.dependsOn)"
            " || s.dependsOn.all(d, self.subtasks.exists(t, t.name == d)))",
            "message": "every subtasks[].dependsOn entry must name a sub-task of this AITask",
            "fieldPath": ".subtasks",
            "reason": "FieldValueInvalid",
        },
        {
            # A transition rule: checked on update only. Cancelling is for good (the task's Jobs are gone).
            "rule": "!has(oldSelf.cancel) || !oldSelf.cancel || (has(self.cancel) && self.cancel)",
            "message": "spec.cancel cannot be set back to false: a cancelled AITask stays cancelled",
            "fieldPath": ".cancel",
            "reason": "FieldValueForbidden",
        },
    ]
    return spec


def _variant_rules(item: SchemaDict) -> list[SchemaDict]:
    """Variants are a map keyed by name; an ensemble names variants that exist; minQuality leaves one."""
    variants = item["properties"]["variants"]
    variants["x-kubernetes-list-type"] = "map"
    variants["x-kubernetes-list-map-keys"] = ["name"]
    ensemble = item["properties"]["ensemble"]
    ensemble["properties"]["members"]["x-kubernetes-list-type"] = "set"
    ensemble["properties"]["members"]["items"]["maxLength"] = api.MAX_VARIANT_NAME
    ensemble["x-kubernetes-validations"] = [
        {
            "rule": "has(self.topK) != has(self.members)",
            "message": "an ensemble needs exactly one of topK or members",
            "reason": "FieldValueInvalid",
        }
    ]
    return [
        {
            "rule": "!has(self.ensemble) || (has(self.variants) && size(self.variants) > 0)",
            "message": "an ensemble needs variants",
            "fieldPath": ".ensemble",
            "reason": "FieldValueRequired",
        },
        {
            "rule": "!has(self.ensemble) || !has(self.ensemble.members) || (has(self.variants)"
            " && self.ensemble.members.all(m, self.variants.exists(v, v.name == m)))",
            "message": "every ensemble.members entry must name one of the sub-task's variants",
            "fieldPath": ".ensemble.members",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.ensemble) || !has(self.ensemble.topK) || (has(self.variants)"
            " && self.ensemble.topK <= size(self.variants))",
            "message": "ensemble.topK cannot exceed the number of variants",
            "fieldPath": ".ensemble.topK",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.minQuality) || (has(self.variants)"
            " && self.variants.exists(v, v.quality >= self.minQuality))",
            "message": "no variant has a quality of at least minQuality",
            "fieldPath": ".minQuality",
            "reason": "FieldValueInvalid",
        },
    ]


def _workspace_rules(workspace: SchemaDict) -> None:
    workspace["x-kubernetes-validations"] = [
        {
            "rule": "(has(self.volumeClaimTemplate) ? 1 : 0) + (has(self.existingClaim) ? 1 : 0)"
            " + (has(self.objectStore) ? 1 : 0) == 1",
            "message": "a workspace needs exactly one of volumeClaimTemplate, existingClaim or objectStore",
            "reason": "FieldValueRequired",
        }
    ]
    modes = workspace["properties"]["volumeClaimTemplate"]["properties"]["accessModes"]
    modes["x-kubernetes-list-type"] = "set"


def _status_of(model: type[BaseModel]) -> SchemaDict:
    status = schema_of(model)
    _mark_condition_lists(status)
    return status


def _mark_condition_lists(node: Any) -> None:
    if isinstance(node, dict):
        props = node.get("properties", {})
        if "conditions" in props:
            props["conditions"]["x-kubernetes-list-type"] = "map"
            props["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
        for value in node.values():
            _mark_condition_lists(value)
    elif isinstance(node, list):
        for value in node:
            _mark_condition_lists(value)


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    scope: str,
    short_names: list[str],
    spec: SchemaDict,
    status: SchemaDict,
    columns: list[SchemaDict],
    description: str,
) -> SchemaDict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "aitask-operator"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": ["aitask-operator"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def aitask_crd() -> SchemaDict:
    """The AITask CRD: namespaced, short name ``ait``, status subresource, CEL cross-field rules."""
    return _crd(
        kind="AITask",
        plural="aitasks",
        singular="aitask",
        scope="Namespaced",
        short_names=["ait"],
        spec=_aitask_spec(),
        status=_status_of(api.AITaskStatus),
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
            {"name": "Est-Cost", "type": "number", "jsonPath": ".status.estimatedCost", "format": "float"},
            {"name": "Cost", "type": "number", "jsonPath": ".status.actualCost", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        description="An AI workload whose sub-tasks the operator places on executor classes by a cost model.",
    )


def executorclass_crd() -> SchemaDict:
    """The ExecutorClass CRD: cluster-scoped pools of interchangeable nodes with prices and speeds."""
    spec = schema_of(api.ExecutorClassSpec)
    _bound_strings_and_lists(spec)
    spec["description"] = "A pool of interchangeable nodes (a GPU model or a CPU pool) with prices and speed."
    return _crd(
        kind="ExecutorClass",
        plural="executorclasses",
        singular="executorclass",
        scope="Cluster",
        short_names=["ec"],
        spec=spec,
        status=_status_of(api.ExecutorClassStatus),
        columns=[
            {"name": "Accelerator", "type": "string", "jsonPath": ".spec.accelerator.model"},
            {"name": "Price/h", "type": "number", "jsonPath": ".spec.price.acceleratorHour"},
            {"name": "Capacity", "type": "number", "jsonPath": ".status.capacity.accelerators"},
            {"name": "Allocated", "type": "number", "jsonPath": ".status.allocated.accelerators"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        description="A pool of interchangeable nodes that sub-tasks can be placed on.",
    )


def aitaskbudget_crd() -> SchemaDict:
    """The AITaskBudget CRD: a namespace's spending cap per period, with spent and remaining in its status."""
    spec = schema_of(api.AITaskBudgetSpec)
    _bound_strings_and_lists(spec)
    spec["description"] = "What the AITasks of this namespace may spend per period."
    return _crd(
        kind="AITaskBudget",
        plural="aitaskbudgets",
        singular="aitaskbudget",
        scope="Namespaced",
        short_names=["aitb"],
        spec=spec,
        status=_status_of(api.AITaskBudgetStatus),
        columns=[
            {"name": "Period", "type": "string", "jsonPath": ".spec.period"},
            {"name": "Max-Cost", "type": "number", "jsonPath": ".spec.maxCost"},
            {"name": "Spent", "type": "number", "jsonPath": ".status.spentCost"},
            {"name": "Remaining", "type": "number", "jsonPath": ".status.remainingCost"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        description="A namespace budget for AITasks: cost and accelerator-hours per period.",
    )


def all_crds() -> dict[str, SchemaDict]:
    """File name -> CRD, as committed under crds/."""
    return {
        "aitask.dev_aitaskbudgets.yaml": aitaskbudget_crd(),
        "aitask.dev_aitasks.yaml": aitask_crd(),
        "aitask.dev_executorclasses.yaml": executorclass_crd(),
    }
