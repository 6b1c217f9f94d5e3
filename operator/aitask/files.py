"""Reading cluster and workload files for `aitask simulate` and `aitask plan` (I/O, not core).

A cluster file is multi-document YAML of ``v1 Node`` and ``ExecutorClass`` objects (a
``kind: List`` document is unpacked); a workload file is multi-document YAML of ``AITask``
objects. Errors name the file and the document so a typo is quick to find.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aitask.api import v1alpha1 as api

# libyaml's safe loader where PyYAML was built with it (same documents, several times faster).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class FileFormatError(ValueError):
    """A file could not be read as the objects it should hold."""


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """Every object in a multi-document YAML file, ``kind: List`` items unpacked."""
    source = Path(path)
    try:
        text = source.read_text()
    except OSError as err:
        raise FileFormatError(f"{source}: {err.strerror or err}") from err
    try:
        docs = list(yaml.load_all(text, Loader=_SAFE_LOADER))
    except yaml.YAMLError as err:
        raise FileFormatError(f"{source}: not valid YAML: {err}") from err
    return list(_flatten(source, docs))


def _flatten(source: Path, docs: list[Any]) -> Iterator[dict[str, Any]]:
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise FileFormatError(f"{source}: document {index + 1} is not a mapping")
        if doc.get("kind") == "List" or (str(doc.get("kind", "")).endswith("List") and "items" in doc):
            for item in doc.get("items") or []:
                if not isinstance(item, dict):
                    raise FileFormatError(f"{source}: document {index + 1} has an item that is not a mapping")
                yield item
            continue
        yield doc


def _name(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return str(meta.get("name", "?")) if isinstance(meta, dict) else "?"


def load_cluster(path: str | Path) -> tuple[list[api.ExecutorClass], list[dict[str, Any]]]:
    """(ExecutorClasses, Node dicts) of a cluster file; other kinds are an error (likely a mix-up)."""
    classes: list[api.ExecutorClass] = []
    nodes: list[dict[str, Any]] = []
    for doc in load_documents(path):
        kind = doc.get("kind")
        if kind == "ExecutorClass":
            try:
                classes.append(api.ExecutorClass.model_validate(doc))
            except ValidationError as err:
                raise FileFormatError(f"{path}: ExecutorClass {_name(doc)!r}: {err}") from err
        elif kind == "Node":
            nodes.append(doc)
        else:
            raise FileFormatError(f"{path}: expected Node or ExecutorClass objects, found {kind!r} {_name(doc)!r}")
    if not classes:
        raise FileFormatError(f"{path}: no ExecutorClass objects")
    return classes, nodes


def load_workload(path: str | Path) -> list[api.AITask]:
    """The AITasks of a workload file, validated by the API models (as the API server would)."""
    tasks: list[api.AITask] = []
    for doc in load_documents(path):
        if doc.get("kind") != "AITask":
            raise FileFormatError(f"{path}: expected AITask objects, found {doc.get('kind')!r} {_name(doc)!r}")
        try:
            tasks.append(api.AITask.model_validate(doc))
        except ValidationError as err:
            raise FileFormatError(f"{path}: AITask {_name(doc)!r}: {err}") from err
    if not tasks:
        raise FileFormatError(f"{path}: no AITask objects")
    return tasks
