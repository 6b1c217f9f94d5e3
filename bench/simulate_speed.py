"""How long `aitask simulate` takes on the 2,000-line Philly trace, against an earlier revision (issue 10).

The trace ``vc-6214e9`` (1,985 jobs with a throughput row) is written as the two files of
``aitask simulate CLUSTER WORKLOAD`` (``philly.write_files``) for 12+12+12 and 32+32+32 GPUs, with
every job preemptible at 60 s per switch and without preemption. Each case runs the real command
(``python -m aitask simulate ... --format json``, a fresh process: YAML, validation, simulation,
JSON) with this tree's code and, with ``--baseline REV``, with the code of git revision REV (checked
out into a temporary worktree; the same interpreter and packages), one after the other, case by case,
so both see the same machine. The two must print the same document (same placements, preemptions,
migrations): the change is in speed only.

Prints wall seconds per case and the ratio baseline / ours. Target (issue 10): <= 60 s per case on
2 cores. Run: ``.venv/bin/python bench/simulate_speed.py [--baseline 8673a6b] [--repeat N]``
(~10 minutes with a baseline); exits 1 when a case is over 60 s or the documents differ.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import philly
from workloads import ROOT

TRACE = "vc-6214e9.tsv"
CASES = ((12, None), (12, 60), (32, None), (32, 60))  # (GPUs per type, switch overhead; None: not preemptible)
TARGET_SECONDS = 60.0


def run(code: Path, cluster: Path, workload: Path) -> tuple[float, bytes]:
    env = dict(os.environ, PYTHONPATH=str(code))
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "aitask", "simulate", str(cluster), str(workload), "--format", "json"],
        env=env,
        check=True,
        capture_output=True,
    ).stdout
    return time.perf_counter() - started, out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default=None, help="git revision to compare with (e.g. 8673a6b)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case and code (the fastest counts)")
    opts = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"ours": ROOT / "operator"}
        if opts.baseline:
            tree = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), opts.baseline],
                           check=True)
            codes["baseline"] = tree / "operator"
        try:
            print(f"{TRACE}, aitask simulate wall seconds (fastest of {opts.repeat})")
            print(f"{'GPUs':>5} {'preemption':>11} {'ours':>7} {'baseline':>9} {'ratio':>6}  same output")
            for per_type, overhead in CASES:
                files = philly.write_files(TRACE, per_type, Path(tmp) / f"{per_type}-{overhead}", (
                    None if overhead is None else
                    {"allowed": True, "gracePeriodSeconds": overhead, "resumeOverheadSeconds": float(overhead)}
                ))
                times: dict[str, float] = {}
                outputs: dict[str, bytes] = {}
                for _ in range(opts.repeat):
                    for name, code in codes.items():
                        seconds, outputs[name] = run(code, *files)
                        times[name] = min(times.get(name, seconds), seconds)
                same = len(set(outputs.values())) == 1
                ok = ok and same and times["ours"] <= TARGET_SECONDS
                base = times.get("baseline")
                label = "off" if overhead is None else f"{overhead} s"
                print(f"{3 * per_type:>5} {label:>11} {times['ours']:>7.1f} "
                      f"{base if base is not None else float('nan'):>9.1f} "
                      f"{(base / times['ours']) if base else float('nan'):>6.2f}  {'yes' if same else 'NO'}",
                      flush=True)
        finally:
            if opts.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(tmp) / "baseline")],
                               check=False)
    print(f"target <= {TARGET_SECONDS:.0f} s per case:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
