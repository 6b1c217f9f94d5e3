"""``aitask plan AITASK.yaml [--cluster CLUSTER.yaml | --kubeconfig PATH] [--format table|json]``.

Preview where each sub-task would run and what it would cost, with the alternatives the cost
model considered, before anything is submitted. With ``--cluster`` the nodes are taken as idle;
with ``--kubeconfig`` the cluster is read (list calls only) and reduced by the operator's own cycle
(``control.cycle.cluster_snapshot``): nodes less every pod and reservation, the running AITasks'
work (so the preview shows which preemptible work would be stopped for the task), what the
ExecutorClasses learned, ResourceQuotas and AITaskBudgets.

JSON: one object per AITask (a list when the file holds several) with ``task``,
``namespace``, ``feasible``, ``critical_path_seconds``, ``critical_path``,
``estimated_completion_seconds``, ``total_cost`` and ``subtasks`` (``name``, ``type``,
``profile``, ``dependsOn``, ``class``, ``pods``, ``accelerators``, ``cpu``, ``memory``,
``estimated_seconds``, ``wait_seconds``, ``estimated_cost``, ``score``, ``estimate_source``,
``admissible_now``, ``nodes``, ``message``, ``alternatives``, and for a sub-task with variants
``variant``, ``quality`` and ``pairs``: every (variant, class) pair with the alternative's keys
plus ``variant`` and ``quality``, F including the quality term, best first), and ``preempts``:
the running preemptible sub-tasks the scheduler would stop for it now (``task`` as
namespace/name, ``subtask``, ``class``, ``message``; always empty with ``--cluster``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from aitask.control.cycle import CycleParams, cluster_snapshot
from aitask.core.dag import CycleError, UnknownDependencyError
from aitask.core.planner import TaskPlan, plan_task
from aitask.core.quantity import format_cpu, format_memory
from aitask.core.snapshot import class_info, learned_map, node_info
from aitask.core.types import Option, Preemption, SchedulerParams, Snapshot
from aitask.files import FileFormatError, load_cluster, load_workload


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "plan",
        help="preview the placement and cost of an AITask",
        description="Preview each sub-task's executor class, resources, estimated time and cost, "
        "and the alternatives, against a cluster file or a live cluster (read-only).",
    )
    parser.add_argument("aitask", help="YAML file with one AITask (or several)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cluster", help="multi-document YAML of Node and ExecutorClass objects")
    source.add_argument("--kubeconfig", help="read nodes and ExecutorClasses from this cluster (read-only)")
    parser.add_argument("--context", default=None, help="kubeconfig context (with --kubeconfig)")
    parser.add_argument("--format", choices=["table", "json"], default="table", dest="output_format")
    parser.add_argument("--time-weight", type=float, default=1.0, help="default alpha for tasks that set none")
    parser.add_argument("--cost-weight", type=float, default=0.0, help="default beta for tasks that set none")
    parser.add_argument(
        "--no-preemption", action="store_true", help="preview as an operator with AITASK_PREEMPTION=false"
    )
    parser.add_argument(
        "--preempt-min-run-seconds",
        type=float,
        default=600.0,
        help="the operator's AITASK_PREEMPT_MIN_RUN_SECONDS (running work younger than this is not stopped)",
    )
    parser.add_argument("--preempt-factor", type=float, default=2.0, help="the operator's AITASK_PREEMPT_FACTOR")
    parser.add_argument("--now", type=float, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        tasks = load_workload(args.aitask)
        state = _file_state(args) if args.cluster else _live_state(args)
    except (FileFormatError, _ReadError) as err:
        print(f"aitask plan: {err}", file=sys.stderr)
        return 2
    if not state.classes:
        print("aitask plan: the cluster has no ExecutorClass", file=sys.stderr)
        return 2
    params = SchedulerParams(
        preemption=not args.no_preemption,
        preempt_min_run_seconds=args.preempt_min_run_seconds,
        preempt_factor=args.preempt_factor,
    )
    plans: list[TaskPlan] = []
    for task in tasks:
        try:
            plans.append(
                plan_task(
                    task,
                    state.classes,
                    state.nodes,
                    now=state.now,
                    learned=state.learned,
                    running=state.running,
                    limits=state.limits,
                    params=params,
                    default_time_weight=args.time_weight,
                    default_cost_weight=args.cost_weight,
                )
            )
        except (CycleError, UnknownDependencyError) as err:
            print(f"aitask plan: {task.metadata.name}: {err}", file=sys.stderr)
            return 2
    if args.output_format == "json":
        docs = [plan_json(p) for p in plans]
        json.dump(docs[0] if len(docs) == 1 else docs, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for i, p in enumerate(plans):
            if i:
                sys.stdout.write("\n")
            write_table(p, sys.stdout)
    return 0 if all(p.feasible for p in plans) else 1


class _ReadError(Exception):
    """The cluster could not be read: one line for the user."""


def _file_state(args: argparse.Namespace) -> Snapshot:
    """A cluster file: its nodes idle, nothing running, what its ExecutorClasses learned."""
    executor_classes, node_docs = load_cluster(args.cluster)
    classes = {ec.metadata.name: class_info(ec) for ec in executor_classes}
    nodes = tuple(n for n in (node_info(doc, classes, {}) for doc in node_docs) if n is not None)
    return Snapshot(
        now=args.now if args.now is not None else 0.0,
        classes=classes,
        nodes=nodes,
        demands=(),
        learned=learned_map(executor_classes),
    )


def _live_state(args: argparse.Namespace) -> Snapshot:
    """The live cluster as the operator's cycle would see it (read-only): nodes less every pod and
    reservation, running work (preemptible work with what it would resume as), quotas and budgets."""
    from aitask.adapters.kube_read import ClusterReadError, read_cluster

    try:
        view, note = read_cluster(args.kubeconfig, args.context)
    except ClusterReadError as err:
        raise _ReadError(str(err)) from err
    if note:
        print(f"aitask plan: {note}", file=sys.stderr)
    now = datetime.fromtimestamp(args.now, UTC) if args.now is not None else datetime.now(UTC)
    params = CycleParams(
        default_time_weight=args.time_weight,
        default_cost_weight=args.cost_weight,
        preemption=not args.no_preemption,
        preempt_min_run_seconds=args.preempt_min_run_seconds,
        preempt_factor=args.preempt_factor,
    )
    return cluster_snapshot(view, params, now)


def _option_json(o: Option) -> dict[str, Any]:
    return {
        "class": o.class_name,
        "feasible": o.feasible,
        "reason": o.reason,
        "estimated_seconds": o.runtime_seconds,
        "wait_seconds": o.wait_seconds,
        "estimated_cost": o.cost,
        "score": o.score,
        "estimate_source": o.estimate_source,
    }


def _preemption_json(p: Preemption) -> dict[str, Any]:
    return {
        "task": f"{p.key.namespace}/{p.key.task}",
        "subtask": p.key.subtask,
        "class": p.class_name,
        "message": p.message,
    }


def plan_json(p: TaskPlan) -> dict[str, Any]:
    """The plan as the stable JSON document described in the module docstring."""
    subtasks = []
    for s in p.subtasks:
        d = s.demand
        chosen = s.chosen
        subtasks.append(
            {
                "name": s.name,
                "type": s.subtask_type,
                "profile": s.profile,
                "dependsOn": list(s.depends_on),
                "class": chosen.class_name if chosen is not None else None,
                "pods": d.pods,
                "accelerators": s.accelerators,
                "cpu": format_cpu(d.cpu),
                "memory": format_memory(d.memory),
                "estimated_seconds": chosen.runtime_seconds if chosen is not None else None,
                "wait_seconds": chosen.wait_seconds if chosen is not None else None,
                "estimated_cost": chosen.cost if chosen is not None else None,
                "score": chosen.score if chosen is not None else None,
                "estimate_source": chosen.estimate_source if chosen is not None else "",
                "admissible_now": s.admissible_now,
                "nodes": list(s.nodes),
                "message": s.message,
                "alternatives": [_option_json(o) for o in s.alternatives],
                "preempts": [_preemption_json(pr) for pr in s.preempts],
            }
        )
        if s.pairs:
            subtasks[-1]["variant"] = s.variant
            subtasks[-1]["quality"] = s.quality
            subtasks[-1]["pairs"] = [
                {"variant": pr.variant, "quality": pr.quality, **_option_json(pr.option)} for pr in s.pairs
            ]
    return {
        "task": p.task,
        "namespace": p.namespace,
        "feasible": p.feasible,
        "critical_path_seconds": p.critical_path_seconds,
        "critical_path": list(p.critical_path),
        "estimated_completion_seconds": p.estimated_completion_seconds,
        "total_cost": p.total_cost,
        "subtasks": subtasks,
    }


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def write_table(p: TaskPlan, out: TextIO) -> None:
    """Sub-tasks in topological order, each followed by its alternatives, then the totals."""
    out.write(f"AITask {p.namespace}/{p.task}\n")
    rows: list[tuple[str, ...]] = [("SUBTASK", "CLASS", "PODS", "RESOURCES/POD", "T(s)", "W(s)", "COST", "F", "SOURCE")]
    for s in p.subtasks:
        d = s.demand
        c = s.chosen
        accel = f"{s.accelerators} accelerator(s), " if s.accelerators else ""
        resources = f"{accel}{format_cpu(d.cpu)} cpu, {format_memory(d.memory)}"
        name = f"{s.name} [{s.variant}]" if s.variant else s.name
        if c is None:
            rows.append((name, "(none)", str(d.pods), resources, "-", "-", "-", "-", ""))
        else:
            rows.append(
                (
                    name,
                    c.class_name + ("" if s.admissible_now else " (waits)"),
                    str(d.pods),
                    resources,
                    _num(c.runtime_seconds),
                    _num(c.wait_seconds),
                    _num(c.cost, ".2f"),
                    _num(c.score, ".1f"),
                    c.estimate_source,
                )
            )
        listed = [(f"{pr.variant}/{pr.option.class_name}", pr.option) for pr in s.pairs] or [
            (o.class_name, o) for o in s.alternatives
        ]
        for label, o in listed:
            if o.feasible:
                rows.append(
                    (
                        "",
                        f"  {label}",
                        "",
                        "",
                        _num(o.runtime_seconds),
                        _num(o.wait_seconds),
                        _num(o.cost, ".2f"),
                        _num(o.score, ".1f"),
                        o.estimate_source,
                    )
                )
            else:
                rows.append(("", f"  {label}", "", "", "", "", "", "", f"infeasible: {o.reason}"))
        for pr in s.preempts:
            rows.append(("", f"  would preempt {pr.key} on {pr.class_name}", "", "", "", "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() + "\n")
    path = " -> ".join(p.critical_path)
    out.write(f"critical path: {p.critical_path_seconds:.0f} s ({path})\n")
    out.write(f"estimated completion (with waits): {p.estimated_completion_seconds:.0f} s\n")
    out.write(f"total estimated cost: {p.total_cost:.2f}\n")
    if not p.feasible:
        out.write("some sub-tasks have no feasible executor class (see the reasons above)\n")
