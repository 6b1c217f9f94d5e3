"""``aitask local AITASK.yaml --workspace DIR``: run a pipeline's sub-tasks as local processes.

The sub-tasks run one at a time in dependency order (ensembles expanded into their members, as
the operator does), each with the environment contract of ``build.workspace`` rooted at
``DIR``: the same variables a pod gets, so a program that works here works on the cluster.
The image is not used: ``command`` + ``args`` run in ``--cwd`` (default: the YAML file's
folder), a leading ``python``/``python3`` is the running interpreter (``--python``), and
``$(VAR)`` references in them are expanded from the contract as the kubelet would.

The variant of a sub-task with several is ``--variant SUB=NAME``, else the cost model's choice
on ``--cluster CLUSTER.yaml`` (the same ``core.variants.Chooser`` as the operator), else the one
of highest quality that meets ``minQuality``. Exit status: 0 when every sub-task succeeded.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aitask.api import v1alpha1 as api
from aitask.build import workspace
from aitask.core import dag, variants
from aitask.core.snapshot import class_info, demand_for, learned_map, node_info
from aitask.core.types import SchedulerParams
from aitask.files import FileFormatError, load_cluster, load_workload

PYTHONS = ("python", "python3")
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """``$(VAR)`` in a command or argument, as the kubelet expands it: ``$$`` escapes, unknown names stay."""
    return _REFERENCE.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


@dataclass(frozen=True)
class Step:
    """One sub-task as it runs locally: the spec's (expanded) sub-task, the variant, what runs it."""

    subtask: api.Subtask
    variant: api.Variant | None
    argv: tuple[str, ...]
    env: Mapping[str, str]


Choose = Callable[[api.AITask, api.Subtask], api.Variant]


def best_quality(_task: api.AITask, sub: api.Subtask) -> api.Variant:
    return max((v for v in sub.variants if variants.qualifies(sub, v)), key=lambda v: (v.quality, v.name))


def local_steps(task: api.AITask, root: str, choose: Choose, python: str) -> list[Step]:
    """The expanded task's sub-tasks in dependency order, each with its argv and contract env (pure).

    Fusion weights are the variants chosen here, exactly what the dependencies will have run.
    """
    task = variants.expand_task(task)
    order = dag.topological_order({s.name: list(s.depends_on) for s in task.spec.subtasks})
    ran: dict[str, str] = {}
    steps = []
    for name in order:
        sub = task.spec.subtask(name)
        variant = None
        if len(sub.variants) == 1:
            variant = sub.variants[0]
        elif sub.variants:
            variant = choose(task, sub)
        ran[name] = variant.name if variant else ""
        resolved = variants.resolve(sub, variant) if variant is not None else sub
        argv = [*resolved.command, *resolved.args]
        if argv and argv[0] in PYTHONS:
            argv[0] = python
        env = {e.name: e.value or "" for e in (*task.spec.template.env, *resolved.env) if e.value_from is None}
        env |= {
            "AITASK_TASK": task.metadata.name,
            "AITASK_SUBTASK": name,
            "AITASK_ATTEMPT": "1",
            "AITASK_CLASS": "local",
        }
        env |= workspace.contract_env(task, sub, root=root, variant=variant, ran=ran)
        argv = [expand(a, env) for a in argv]
        steps.append(Step(subtask=sub, variant=variant, argv=tuple(argv), env=env))
    return steps


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "local",
        help="run an AITask's sub-tasks as local processes with the workspace contract",
        description="Run the sub-tasks in dependency order as local processes, with the same environment "
        "contract (AITASK_OUTPUT, AITASK_INPUTS, AITASK_VARIANT, AITASK_MEMBERS ...) rooted at --workspace.",
    )
    parser.add_argument("aitask", help="YAML file with the AITask (the first one is run)")
    parser.add_argument("--workspace", required=True, help="folder standing for the task's workspace volume")
    parser.add_argument("--cwd", default=None, help="working directory of the processes (default: the file's)")
    parser.add_argument("--cluster", default=None, help="choose variants with the cost model on this cluster file")
    parser.add_argument("--variant", action="append", default=[], metavar="SUB=NAME", help="pin a variant")
    parser.add_argument("--python", default=sys.executable, help="interpreter for a leading python/python3")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per sub-task (default 3600)")
    parser.set_defaults(func=run)


def _chooser(args: argparse.Namespace) -> Choose:
    pinned = dict(v.split("=", 1) for v in args.variant if "=" in v)
    fallback: Choose = best_quality
    if args.cluster:
        ecs, node_docs = load_cluster(args.cluster)
        classes = {ec.metadata.name: class_info(ec) for ec in ecs}
        nodes = [n for n in (node_info(d, classes, {}) for d in node_docs) if n is not None]
        chooser = variants.Chooser(classes, nodes, (), learned_map(ecs), SchedulerParams())

        def by_cost(task: api.AITask, sub: api.Subtask) -> api.Variant:
            return chooser.choose(task, sub, demand_for(task, sub, 1, now=0.0)).variant

        fallback = by_cost

    def choose(task: api.AITask, sub: api.Subtask) -> api.Variant:
        if sub.name in pinned:
            found = variants.variant_of(sub, pinned[sub.name])
            if found is None:
                raise FileFormatError(f"--variant {sub.name}={pinned[sub.name]}: no such variant")
            return found
        return fallback(task, sub)

    return choose


def _run_steps(steps: Sequence[Step], cwd: Path, root: Path, timeout: float) -> int:
    failed: set[str] = set()
    rows: list[tuple[str, str, str, str]] = []
    for step in steps:
        name = step.subtask.name
        label = f"{name} [{step.variant.name}]" if step.variant else name
        if failed & set(step.subtask.depends_on) or not step.argv:
            failed.add(name)
            rows.append((label, "-", "-", "skipped" if step.argv else "no command"))
            continue
        (root / name).mkdir(parents=True, exist_ok=True)
        print(f"==> {label}: {' '.join(step.argv)}", flush=True)
        started = time.monotonic()
        try:
            done = subprocess.run(  # noqa: S603 - the user's own command, as the pod would run it
                list(step.argv), cwd=cwd, env={**os.environ, **step.env}, timeout=timeout, check=False
            )
            code = done.returncode
        except (OSError, subprocess.TimeoutExpired) as err:
            print(f"aitask local: {name}: {err}", file=sys.stderr)
            code = -1
        seconds = time.monotonic() - started
        if code != 0:
            failed.add(name)
        rows.append((label, f"{seconds:.1f}", str(code), "Succeeded" if code == 0 else "Failed"))
    widths = [max(len(r[i]) for r in [("SUBTASK", "SECONDS", "EXIT", "RESULT"), *rows]) for i in range(4)]
    for row in [("SUBTASK", "SECONDS", "EXIT", "RESULT"), *rows]:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    try:
        tasks = load_workload(args.aitask)
        if not tasks:
            raise FileFormatError(f"{args.aitask}: no AITask")
        root = Path(args.workspace).resolve()
        steps = local_steps(tasks[0], str(root), _chooser(args), args.python)
    except (FileFormatError, dag.CycleError, dag.UnknownDependencyError) as err:
        print(f"aitask local: {err}", file=sys.stderr)
        return 2
    cwd = Path(args.cwd) if args.cwd else Path(args.aitask).resolve().parent
    root.mkdir(parents=True, exist_ok=True)
    return _run_steps(steps, cwd, root, args.timeout)
