"""Benchmark 3: learning runtimes from completions, starting from priors only.

The workload is a Poisson stream of single-GPU Gavel jobs on 36 K80 + 36 P100 + 36 V100 GPUs.
Each job declares its size (``work.units`` = kilo-steps) but no runtime hint; the classes carry
only a prior speed (Gavel's geometric-mean throughput relative to the K80, one number per GPU
model, so it is wrong per model: Recommendation is *slower* on a V100). `aitask simulate
--learn` hides ``estimate.secondsByClass`` from the scheduler: the first estimate of a profile
is the type prior, later ones come from ``estimator.observe`` on every completion (learned on
the class, or transferred from other classes through the prior speeds until the class has
its own sample). Each job's runtime carries a 5% log-normal noise around its profile's
steps/throughput, so a learned value is never exact.

Printed: the relative estimate error |T_est - T_true| / T_true of each placement against the
number N of completions of its profile the scheduler had seen when it placed it (median and
90th percentile), the smallest N from which the median error stays under 10%, and the average
completion time of the learning scheduler over the oracle's (which sees the true runtimes),
for each tenth of the stream, at a moderate and a heavy load: early mistakes cost most, and
the ratio falls toward 1 as the profiles are learned (faster at the moderate load, where the
queue they caused drains).

Targets: the median error settles under 10% after some N; and the learning scheduler approaches
the oracle: in every run the last tenth's ratio is below the first tenth's, and at the moderate
load the last tenth is within 5% of the oracle (``LAST_TENTH_MODERATE``) on every seed.

Run: ``.venv/bin/python bench/learning.py`` (about a minute on 2 shared cores).
"""

from __future__ import annotations

import sys
from collections import defaultdict

import workloads as W
from aitask.api import v1alpha1 as api
from aitask.core.simulator import SimResult, simulate
from aitask.core.types import SchedulerParams

SEEDS = (0, 1)
N_JOBS = 1200
LOADS = (60.0, 45.0)  # mean seconds between arrivals: moderate, heavy
NOISE = 0.05  # log-normal sigma of each job's runtime around its profile's steps/throughput
DECILES = 10
BUCKETS = ((0, 0), (1, 1), (2, 2), (3, 3), (4, 5), (6, 9), (10, 19), (20, 10**9))
LAST_TENTH_MODERATE = 1.05  # learned/oracle over the last tenth of the stream at the moderate load


def run(tasks: list[api.AITask], *, learn: bool) -> SimResult:
    cl = W.cluster(36, speeds=W.prior_speeds(W.job_types()))
    return simulate(cl.classes, cl.nodes, tasks, params=SchedulerParams(), learn=learn, learning_rate=0.3)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    speeds = W.prior_speeds(W.job_types())
    print("prior speeds (geometric mean vs K80): " + ", ".join(f"{k} {v:.2f}" for k, v in speeds.items()))
    print(f"{N_JOBS} jobs per run, Poisson arrivals, runtimes with {NOISE:.0%} log-normal noise per job")
    print("learned/oracle avg completion, all jobs | per tenth of the stream:")
    errors: dict[tuple[int, int], list[float]] = defaultdict(list)
    by_source: dict[str, list[float]] = defaultdict(list)
    last_tenth: dict[float, list[float]] = defaultdict(list)
    falls: list[bool] = []
    for gap in LOADS:
        for seed in SEEDS:
            jobs = W.jobs(N_JOBS, seed, arrival="poisson", mean_interarrival=gap, noise=NOISE)
            tasks = W.aitasks(jobs, work_units=True)
            learned = run(tasks, learn=True)
            oracle = run(tasks, learn=False)
            for obs in learned.observations:
                for bucket in BUCKETS:
                    if bucket[0] <= obs.known_at_admission <= bucket[1]:
                        errors[bucket].append(obs.relative_error)
                by_source[obs.source.split("(")[0]].append(obs.relative_error)
            size = len(jobs) // DECILES
            tenths = []
            for d in range(DECILES):
                names = [j.name for j in jobs[d * size : (d + 1) * size]]
                ours = sum(learned.completion_seconds[n] for n in names)
                best = sum(oracle.completion_seconds[n] for n in names)
                tenths.append(ours / best)
            last_tenth[gap].append(tenths[-1])
            falls.append(tenths[-1] < tenths[0])
            total = learned.avg_completion_seconds / oracle.avg_completion_seconds
            print(f"  1 job per {gap:g}s, seed {seed}: all {total:.3f} | " + " ".join(f"{r:.2f}" for r in tenths))

    print("\nestimate error of each placement vs N = completions of its profile seen when it was placed")
    print(f"{'N seen':>10} {'placements':>10} {'median err':>11} {'p90 err':>9}")
    settled: int | None = None
    for bucket in BUCKETS:
        values = errors.get(bucket, [])
        if not values:
            continue
        median = percentile(values, 0.5)
        if bucket[0] == bucket[1]:
            label = f"{bucket[0]}"
        else:
            label = f"{bucket[0]}-{bucket[1]}" if bucket[1] < 10**9 else f">={bucket[0]}"
        print(f"{label:>10} {len(values):>10} {median:>10.1%} {percentile(values, 0.9):>8.1%}")
        if median < 0.10 and settled is None:
            settled = bucket[0]
        elif median >= 0.10:
            settled = None
    print("by source of the estimate: " + ", ".join(
        f"{src} n={len(v)} median {percentile(v, 0.5):.1%} p90 {percentile(v, 0.9):.1%}"
        for src, v in sorted(by_source.items())))
    print(f"median estimate error under 10% from N = {settled} completed tasks of the profile"
          if settled is not None else "median estimate error never settles under 10%")
    for gap, values in last_tenth.items():
        print(f"learned/oracle avg completion over the last tenth of the stream, 1 job per {gap:g}s: "
              + ", ".join(f"{v:.3f}" for v in values))
    moderate = last_tenth[LOADS[0]]
    close = bool(moderate) and max(moderate) <= LAST_TENTH_MODERATE
    falling = bool(falls) and all(falls)
    print(f"last tenth below the first in every run: {'yes' if falling else 'NO'} ({sum(falls)} of {len(falls)}); "
          f"last tenth at 1 job per {LOADS[0]:g}s <= {LAST_TENTH_MODERATE}: {'met' if close else 'NOT met'}")
    return 0 if settled is not None and falling and close else 1


if __name__ == "__main__":
    sys.exit(main())
