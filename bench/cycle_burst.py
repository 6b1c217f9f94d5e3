"""The operator's pure cycle through a burst, this tree against an earlier revision (issue 9).

`bench/scale.py` measures the whole operator on a real control plane, where the machine's noise is
large (the plain-Job rate alone moves by 30% between runs). This replays a burst through
``control.cycle.run_cycle`` alone, with the inputs the engine would hand it, so the cycle's own CPU
can be compared between two revisions on the same inputs:

- ``--burst`` one-step CPU AITasks (the shape `scale.py` creates) arrive ``--per-cycle`` per cycle,
  one cycle per simulated second, on 50 KWOK-style CPU nodes of 64 cores and the sample
  ExecutorClasses;
- what a cycle writes is applied before the next, as the engine's overlay does: the status becomes
  the task's status (a new resourceVersion), each Job created appears with one pod running on its
  planned node, a Job's TTL patch is applied;
- a pod runs ``--pod-cycles`` cycles and then succeeds, so hundreds of tasks are in play at once,
  as in a real burst where the writes lag behind;
- a finished task is handed over as the finished record the informer keeps.

Each revision runs in a fresh process (this tree, then ``--baseline REV`` from a temporary git
worktree, alternately, ``--repeat`` times). Printed: the CPU seconds spent in ``run_cycle`` over the
whole burst (fastest run), the longest cycle, the number of cycles, and whether both made the same
decisions (the Jobs created, cycle by cycle, and every task's final phase). Run:
``.venv/bin/python bench/cycle_burst.py --baseline 41d8b30`` (about a minute).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _ts(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _aitask(i: int, at: datetime) -> dict[str, Any]:
    """scale.py's one-step AITask, with the metadata the API server would add."""
    from scale import aitask_body

    body = aitask_body(f"burst-{i:05d}", "1s")
    body["metadata"].update({"namespace": "bench", "uid": f"uid-{i}", "generation": 1,
                             "resourceVersion": str(i + 1), "creationTimestamp": _ts(at)})
    return body


def _planned_node(manifest: dict[str, Any]) -> str:
    affinity = manifest["spec"]["template"]["spec"].get("affinity") or {}
    for term in (affinity.get("nodeAffinity") or {}).get("preferredDuringSchedulingIgnoredDuringExecution") or []:
        for expr in term.get("preference", {}).get("matchExpressions") or []:
            if expr.get("values"):
                return str(expr["values"][0])
    return "cpu-scale-0"


def worker(code: Path, burst: int, per_cycle: int, pod_cycles: int) -> dict[str, Any]:
    """The replay with the aitask package of ``code`` (imported first on the path)."""
    sys.path[:0] = [str(code / "operator"), str(ROOT)]
    import yaml
    from e2e.cluster import cpu_nodes_yaml

    import aitask
    from aitask.control.cycle import ClusterView, CycleCache, CycleParams, FinishedTask, run_cycle
    from aitask.core.observed import job_view, pod_view
    from aitask.handlers.indexes import aitask_entry, class_entry, node_entry

    assert Path(aitask.__file__).is_relative_to(code), aitask.__file__
    from scale import CLASSES

    samples = yaml.safe_load_all(CLASSES.read_text())
    classes = [class_entry({**d, "metadata": {"generation": 1, **d["metadata"]}}) for d in samples if d]
    nodes = [node_entry(d) for d in yaml.safe_load_all(cpu_nodes_yaml(50))]
    tasks: dict[str, dict[str, Any]] = {}
    jobs: dict[str, tuple[dict[str, Any], int, str]] = {}  # name -> (manifest, cycle created, node)
    cache, params = CycleCache(), CycleParams()
    digest = hashlib.sha256()
    seconds: list[float] = []
    created, rv, cycle = 0, 10**6, 0
    while cycle < 100_000:
        now = T0 + timedelta(seconds=cycle)
        for _ in range(per_cycle):
            if created < burst:
                body = _aitask(created, now)
                tasks[f"bench/{body['metadata']['name']}"] = body
                created += 1
        job_views, pod_views = [], []
        for name, (manifest, at, node) in jobs.items():
            done = cycle - at >= pod_cycles
            started = _ts(T0 + timedelta(seconds=at))
            body = copy.deepcopy(manifest)
            body["metadata"]["creationTimestamp"] = started
            body["status"] = ({"succeeded": 1, "startTime": started, "completionTime": _ts(now),
                               "conditions": [{"type": "Complete", "status": "True"}]} if done
                              else {"active": 1, "startTime": started})
            job_views.append(job_view(body))
            template = manifest["spec"]["template"]
            pod_views.append(pod_view({
                "metadata": {"name": f"{name}-pod", "namespace": "bench",
                             "labels": {**template["metadata"].get("labels", {}), "job-name": name}},
                "spec": {**template["spec"], "nodeName": node},
                "status": {"phase": "Succeeded" if done else "Running"},
            }))
        entries = [aitask_entry(b) for b in tasks.values()]
        view = ClusterView(tasks=[e for e in entries if not isinstance(e, FinishedTask)],
                           finished=[e for e in entries if isinstance(e, FinishedTask)],
                           jobs=job_views, pods=pod_views, nodes=nodes, classes=classes)
        start = time.process_time()
        outcome = run_cycle(view, params, now, cache)
        seconds.append(time.process_time() - start)
        for out in outcome.tasks:
            key = f"{out.namespace}/{out.name}"
            for manifest in out.create_jobs:
                jobs[manifest["metadata"]["name"]] = (manifest, cycle, _planned_node(manifest))
                digest.update(f"{cycle} {manifest['metadata']['name']} {_planned_node(manifest)}\n".encode())
            if out.status is not None and key in tasks:
                rv += 1
                tasks[key] = {**tasks[key], "metadata": {**tasks[key]["metadata"], "resourceVersion": str(rv)},
                              "status": out.status}
            for name in out.expire_jobs:
                manifest, at, node = jobs[name]
                jobs[name] = ({**manifest, "spec": {**manifest["spec"], "ttlSecondsAfterFinished": 60}}, at, node)
        cycle += 1
        if created >= burst and not view.tasks:
            break
    phases = sorted((k, (b.get("status") or {}).get("phase", "")) for k, b in tasks.items())
    digest.update(json.dumps(phases).encode())
    return {"cycle_cpu_s": sum(seconds), "longest_s": max(seconds), "cycles": cycle, "jobs": len(jobs),
            "succeeded": sum(1 for _, p in phases if p == "Succeeded"), "digest": digest.hexdigest()}


def run(code: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(code), "--burst", str(args.burst),
         "--per-cycle", str(args.per_cycle), "--pod-cycles", str(args.pod_cycles)],
        check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"),
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=None, help="git revision to compare with (e.g. 41d8b30)")
    p.add_argument("--burst", type=int, default=1000)
    p.add_argument("--per-cycle", type=int, default=25, help="AITasks arriving per cycle")
    p.add_argument("--pod-cycles", type=int, default=40, help="cycles a pod runs before it succeeds")
    p.add_argument("--repeat", type=int, default=2, help="runs per revision (the fastest counts)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker), args.burst, args.per_cycle, args.pod_cycles)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"ours": ROOT}
        if args.baseline:
            tree = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), args.baseline],
                           check=True)
            codes[args.baseline] = tree
        try:
            best: dict[str, dict[str, Any]] = {}
            for _ in range(args.repeat):
                for name, code in codes.items():
                    r = run(code, args)
                    if name not in best or r["cycle_cpu_s"] < best[name]["cycle_cpu_s"]:
                        best[name] = r
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(tmp) / "baseline")],
                               check=False)
    print(f"{args.burst}-task burst through run_cycle, {args.per_cycle} per cycle, pods run {args.pod_cycles} "
          f"cycles (fastest of {args.repeat})")
    print(f"{'code':>10} {'cycle CPU s':>12} {'longest s':>10} {'cycles':>7} {'Jobs':>6} {'Succeeded':>10}")
    for name, r in best.items():
        print(f"{name:>10} {r['cycle_cpu_s']:>12.2f} {r['longest_s']:>10.3f} {r['cycles']:>7} {r['jobs']:>6} "
              f"{r['succeeded']:>10}")
    ok = all(r["jobs"] == args.burst and r["succeeded"] == args.burst for r in best.values())
    if args.baseline:
        base, ours = best[args.baseline], best["ours"]
        same = base["digest"] == ours["digest"]
        print(f"{args.baseline} / ours: {base['cycle_cpu_s'] / ours['cycle_cpu_s']:.2f}; same decisions: "
              f"{'yes' if same else 'NO'}")
        ok = ok and same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
