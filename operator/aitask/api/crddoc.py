"""Render the CRD schemas as a Markdown field reference (docs/crd-reference.md), so the docs can't drift."""

from __future__ import annotations

from typing import Any

from aitask.api.crdgen import aitask_crd, executorclass_crd


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type", "object" if node.get("x-kubernetes-preserve-unknown-fields") else "")
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if kind == "object" and "additionalProperties" in node:
        return f"map[string]{_type(node['additionalProperties'])}"
    return kind or "any"


def _rows(node: dict[str, Any], path: str, required: set[str], out: list[str]) -> None:
    for name, sub in node.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        bounds = []
        for key, label in (
            ("minimum", ">="),
            ("maximum", "<="),
            ("minItems", "min items"),
            ("maxItems", "max items"),
            ("maxLength", "max length"),
        ):
            if key in sub and not (key in ("maxItems", "maxLength") and sub[key] in (256, 4096)):
                op = ">" if key == "minimum" and sub.get("exclusiveMinimum") else label
                bounds.append(f"{op} {sub[key]}")
        if "pattern" in sub:
            bounds.append(f"pattern `{sub['pattern']}`")
        default = f"`{sub['default']}`" if "default" in sub else ""
        desc = (sub.get("description") or "").replace("\n", " ").replace("|", "\\|")
        req = "yes" if name in required else ""
        out.append(f"| `{here}` | {_type(sub)} | {req} | {default} | {desc} {'; '.join(bounds)} |")
        target = sub.get("items", {}) if sub.get("type") == "array" else sub
        if target.get("properties"):
            _rows(target, here + ("[]" if sub.get("type") == "array" else ""), set(target.get("required", [])), out)


def _rules(node: dict[str, Any], path: str, out: list[str]) -> None:
    for rule in node.get("x-kubernetes-validations", []):
        out.append(f"| `{path}{rule.get('fieldPath', '')}` | `{rule['rule']}` | {rule['message']} |")
    for name, sub in node.get("properties", {}).items():
        target = sub.get("items", {}) if sub.get("type") == "array" else sub
        _rules(target, f"{path}.{name}" + ("[]" if sub.get("type") == "array" else ""), out)


def render() -> str:
    lines = [
        "# CRD reference",
        "",
        "Generated from the pydantic models by `python -m aitask crds --markdown` (`make crds`); do not edit.",
        "The same text is served by `kubectl explain aitask.spec.subtasks` and friends.",
    ]
    for crd in (aitask_crd(), executorclass_crd()):
        names = crd["spec"]["names"]
        version = crd["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        lines += [
            "",
            f"## {names['kind']} (`{crd['spec']['group']}/{version['name']}`, {crd['spec']['scope'].lower()}, "
            f"short name `{names['shortNames'][0]}`)",
            "",
            schema.get("description", ""),
        ]
        for part in ("spec", "status"):
            node = schema["properties"][part]
            lines += [
                "",
                f"### {part}",
                "",
                "| field | type | required | default | description |",
                "|---|---|---|---|---|",
            ]
            _rows(node, part, set(node.get("required", [])), lines)
        rules: list[str] = []
        _rules(schema["properties"]["spec"], "spec", rules)
        if rules:
            lines += [
                "",
                "### Validation rules (CEL, enforced by the API server)",
                "",
                "| field | rule | message |",
                "|---|---|---|",
                *rules,
            ]
        lines += ["", "Printer columns: " + ", ".join(c["name"] for c in version["additionalPrinterColumns"]) + "."]
    return "\n".join(lines) + "\n"
