"""``aitask simulate CLUSTER.yaml WORKLOAD.yaml --policy {cost,fifo,agnostic} --format {json,table}``.

Trace-driven evaluation on the same pure scheduler the operator runs (``core.simulator``).
The JSON document's keys are a stable interface (DESIGN.md section 6): ``policy``, ``tasks``,
``avg_completion_seconds``, ``weighted_avg_completion_seconds``, ``makespan_seconds``,
``total_cost``, ``placements`` (``task``, ``subtask``, ``class``, ``node``, ``start``, ``end``, and
``variant`` for a sub-task with variants: the one the cost model chose, as in ``aitask plan``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from aitask.core.simulator import SimResult, simulate
from aitask.core.snapshot import class_info, learned_map, node_info
from aitask.core.types import Policy, SchedulerParams
from aitask.files import FileFormatError, load_cluster, load_workload


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "simulate",
        help="simulate a workload on a cluster with a scheduling policy",
        description=(
            "Event-driven simulation of WORKLOAD (AITask objects, arrival from the annotation "
            "aitask.dev/submit-after-seconds) on CLUSTER (Node and ExecutorClass objects). The true "
            "runtime of a sub-task on a class is estimate.secondsByClass[class]."
        ),
    )
    parser.add_argument("cluster", help="multi-document YAML of Node and ExecutorClass objects")
    parser.add_argument("workload", help="multi-document YAML of AITask objects")
    parser.add_argument("--policy", choices=[p.value for p in Policy], default=Policy.COST.value)
    parser.add_argument("--format", choices=["json", "table"], default="table", dest="output_format")
    parser.add_argument(
        "--learn",
        action="store_true",
        help="hide estimate.secondsByClass from the scheduler: it starts from priors and learns from completions",
    )
    parser.add_argument("--learning-rate", type=float, default=0.3, help="EWMA weight of a new observation")
    parser.add_argument("--ageing-seconds", type=float, default=600.0, help="waiting this long doubles a weight")
    parser.add_argument("--time-weight", type=float, default=1.0, help="default alpha for tasks that set none")
    parser.add_argument("--cost-weight", type=float, default=0.0, help="default beta for tasks that set none")
    parser.add_argument(
        "--no-preemption",
        action="store_true",
        help="never stop running work (sub-tasks with preemption.allowed run to the end, as non-preemptible ones do)",
    )
    parser.add_argument(
        "--preempt-order",
        choices=["remaining", "attained"],
        default="remaining",
        help="who is stopped for whom: weighted shortest remaining time (default) or least attained service",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        executor_classes, node_docs = load_cluster(args.cluster)
        tasks = load_workload(args.workload)
    except FileFormatError as err:
        print(f"aitask simulate: {err}", file=sys.stderr)
        return 2
    classes = {ec.metadata.name: class_info(ec) for ec in executor_classes}
    nodes = [n for n in (node_info(doc, classes, {}) for doc in node_docs) if n is not None]
    params = SchedulerParams(
        policy=Policy(args.policy),
        ageing_seconds=args.ageing_seconds,
        preemption=not args.no_preemption,
        preempt_order=args.preempt_order,
    )
    try:
        result = simulate(
            classes,
            nodes,
            tasks,
            params=params,
            learn=args.learn,
            learning_rate=args.learning_rate,
            default_time_weight=args.time_weight,
            default_cost_weight=args.cost_weight,
            learned=learned_map(executor_classes),
        )
    except ValueError as err:
        print(f"aitask simulate: {err}", file=sys.stderr)
        return 2
    if args.output_format == "json":
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        write_table(result, sys.stdout)
    for name, why in sorted(result.unschedulable.items()):
        print(f"aitask simulate: {name} can never run: {why}", file=sys.stderr)
    return 1 if result.unschedulable else 0


def write_table(result: SimResult, out: TextIO) -> None:
    """Human summary: the figures, then one line per placement."""
    out.write(f"policy:                    {result.policy}\n")
    out.write(f"tasks:                     {result.tasks}\n")
    out.write(f"avg completion:            {result.avg_completion_seconds:.1f} s\n")
    out.write(f"weighted avg completion:   {result.weighted_avg_completion_seconds:.1f} s\n")
    out.write(f"makespan:                  {result.makespan_seconds:.1f} s\n")
    out.write(f"total cost:                {result.total_cost:.2f}\n")
    out.write(f"scheduling cycles:         {result.cycles}\n")
    out.write(f"preemptions, migrations:   {result.preemptions}, {result.migrations}\n\n")
    rows = [("TASK", "SUBTASK", "CLASS", "NODE", "START", "END")]
    rows += [
        (
            p.task,
            f"{p.subtask} [{p.variant}]" if p.variant else p.subtask,
            p.class_name,
            p.node,
            f"{p.start:.1f}",
            f"{p.end:.1f}",
        )
        for p in result.placements
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() + "\n")
