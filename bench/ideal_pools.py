"""How close idealised preemptive schedulers come to 0.5 x our cost policy on the Philly traces (issue 10).

The issue's target is a preemptive average JCT of at most half that of our non-preemptive ``cost``
policy wherever waiting dominates. This asks what a scheduler could reach if preemption were perfect,
to tell a weak policy apart from a target out of reach on a trace. For every trace of
``../shared/data/philly`` and 12+12+12 and 32+32+32 GPUs it prints, in hours:

- ``bound``: the no-wait bound (every job alone on its fastest GPU at its arrival);
- ``relax``: a second lower bound on any schedule's average JCT: the cluster as one machine that does
  the whole of every GPU's work at the job's fastest speed (C GPU-seconds a second for C GPUs), with
  free preemption, where shortest-remaining-work-first is optimal (a job of w GPUs and t seconds on
  its fastest GPU is w*t of work). A GPU never does more than one second of a job's fastest-GPU work
  in a second, so no real schedule finishes a job sooner than this one;
- ``cost``: our cost policy without preemption, through ``aitask.core.simulator.simulate`` (the
  figure the target halves), and ``target`` = 0.5 x cost;
- ``ideal-*``: an idealised preemptive scheduler, run here: the GPUs of each model are one pool (no
  nodes, so no fragmentation; a job of w GPUs takes any w of one model), every switch is free and
  instant, the true runtimes are known, and it re-plans at every arrival and completion: jobs in order
  of remaining time on their fastest GPU (``time``) or remaining GPU-seconds (``area``) each take the
  fastest model with w GPUs free (``area<=s``: only models within s x their fastest time);
- ``ideal/cost``: the best of these over ``cost``.

Where ``ideal/cost`` > 0.5, the target is out of reach of preemption by remaining time, even
perfect, on that trace and cluster. These schedulers ignore everything that makes the operator's
policy slower (nodes, gangs' co-placement, switch costs, estimates), so they are optimistic, not
bounds: a scheduler of another kind could still do better. ``relax`` is the only bound.

Run: ``.venv/bin/python bench/ideal_pools.py [--traces vc-7f04ca.tsv ...]`` (~10 minutes for all).
"""

from __future__ import annotations

import argparse
import heapq
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import philly
from aitask.core.simulator import simulate
from aitask.core.types import Policy, SchedulerParams
from workloads import GPU_TYPES

SIZES = (12, 32)
Key = Callable[[philly.TraceJob, float], float]
KEYS: dict[str, tuple[Key, float]] = {
    "time": (lambda j, left: left * j.best, math.inf),
    "area": (lambda j, left: left * j.best * j.gpus, math.inf),
    "area<=1.5": (lambda j, left: left * j.best * j.gpus, 1.5),
    "area<=3": (lambda j, left: left * j.best * j.gpus, 3.0),
}


def relaxation(jobs: Sequence[philly.TraceJob], gpus: int) -> float:
    """Average JCT of preemptive shortest-remaining-work-first on one machine doing ``gpus`` GPU-seconds a
    second, job work = GPUs x seconds on the fastest GPU: optimal there, so a lower bound here."""
    arrivals = sorted((j.arrival, j.gpus * j.best) for j in jobs)
    heap: list[list[float]] = []
    now, i, total = 0.0, 0, 0.0
    while i < len(arrivals) or heap:
        if not heap:
            now = max(now, arrivals[i][0])
        while i < len(arrivals) and arrivals[i][0] <= now:
            heapq.heappush(heap, [arrivals[i][1], arrivals[i][0]])
            i += 1
        work, arrived = heap[0]
        next_arrival = arrivals[i][0] if i < len(arrivals) else math.inf
        finish = now + work / gpus
        if finish <= next_arrival:
            heapq.heappop(heap)
            now = finish
            total += now - arrived
        else:
            heap[0][0] -= (next_arrival - now) * gpus
            now = next_arrival
    return total / len(jobs)


def ideal(jobs: Sequence[philly.TraceJob], per_type: int, key: Key, slack: float) -> float:
    """Average JCT of the idealised pooled preemptive scheduler (see the module docstring)."""
    n = len(jobs)
    left = [1.0] * n  # fraction of the job still to do
    order = sorted(range(n), key=lambda i: jobs[i].arrival)
    now, arrived, finished, total = 0.0, 0, 0, 0.0
    active: set[int] = set()
    while finished < n:
        while arrived < n and jobs[order[arrived]].arrival <= now:
            active.add(order[arrived])
            arrived += 1
        free = dict.fromkeys(GPU_TYPES, per_type)
        placed: dict[int, str] = {}
        for i in sorted(active, key=lambda i: (key(jobs[i], left[i]), i)):
            j = jobs[i]
            fits = [(s, t) for t, s in j.seconds.items() if free[t] >= j.gpus and s <= slack * j.best]
            if fits:
                _, t = min(fits)
                placed[i] = t
                free[t] -= j.gpus
        step = jobs[order[arrived]].arrival if arrived < n else math.inf
        for i, t in placed.items():
            step = min(step, now + left[i] * jobs[i].seconds[t])
        for i, t in placed.items():
            left[i] -= (step - now) / jobs[i].seconds[t]
            if left[i] <= 1e-9:
                active.discard(i)
                finished += 1
                total += step - jobs[i].arrival
        now = step
    return total / n


def run_one(args: tuple[str, int, str]) -> tuple[str, int, str, float]:
    trace, size, what = args
    jobs, _ = philly.load(philly.TRACES / trace)
    if what == "cost":
        cl = philly.philly_cluster(size)
        result = simulate(cl.classes, cl.nodes, philly.aitasks(jobs), params=SchedulerParams(policy=Policy.COST))
        return trace, size, what, result.avg_completion_seconds
    if what == "relax":
        return trace, size, what, relaxation(jobs, 3 * size)
    key, slack = KEYS[what]
    return trace, size, what, ideal(jobs, size, key, slack)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", nargs="*", default=None)
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    traces = opts.traces or sorted(p.name for p in philly.TRACES.glob("*.tsv"))
    runs = [(t, s, w) for t in traces for s in SIZES for w in ("cost", "relax", *KEYS)]
    with ProcessPoolExecutor(max_workers=opts.workers) as pool:
        got: dict[tuple[str, int, str], float] = {(t, s, w): v for t, s, w, v in pool.map(run_one, runs)}
    h = 3600.0
    print(f"{'trace':<14}{'GPUs':>5} {'bound':>7} {'relax':>7} {'cost':>7} {'target':>7} | "
          + " ".join(f"{'ideal-' + k:>15}" for k in KEYS) + " | ideal/cost  waiting dominates")
    for trace in traces:
        jobs, _ = philly.load(philly.TRACES / trace)
        bound = philly.no_wait_bound(jobs)
        for size in SIZES:
            cost = got[(trace, size, "cost")]
            best = min(got[(trace, size, k)] for k in KEYS)
            row: list[Any] = [got[(trace, size, k)] / h for k in KEYS]
            print(f"{trace:<14}{3 * size:>5} {bound / h:>7.1f} {got[(trace, size, 'relax')] / h:>7.1f} "
                  f"{cost / h:>7.1f} {0.5 * cost / h:>7.1f} | " + " ".join(f"{v:>15.1f}" for v in row)
                  + f" | {best / cost:>10.2f}  {'yes' if cost >= 2 * bound else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
