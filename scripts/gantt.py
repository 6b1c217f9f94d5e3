"""Draw the sample workload's placements from `aitask simulate` as Gantt charts, one per policy.

    python scripts/gantt.py --out docs/img/simulate-gantt.png     (make gantt)

Rows are nodes grouped by executor class; bars are sub-tasks coloured by AITask. The cluster is
the demo's (e2e/nodes.yaml + manifests/samples/executorclasses.yaml), the workload the samples.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLUSTER_PARTS = [REPO / "e2e" / "nodes.yaml", REPO / "manifests" / "samples" / "executorclasses.yaml"]
WORKLOAD_PARTS = [REPO / "manifests" / "samples" / f"{n}.yaml"
                  for n in ("pipeline", "traffic-light", "training-pipeline", "batch-inference")]


def concat(paths: list[Path], dest: Path) -> Path:
    dest.write_text("\n---\n".join(p.read_text() for p in paths))
    return dest


def simulate(cluster: Path, workload: Path, policy: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "aitask", "simulate", str(cluster), str(workload), "--policy", policy,
                          "--format", "json"], capture_output=True, text=True, check=True, cwd=REPO)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def draw(results: list[dict[str, Any]], out: Path) -> None:
    tasks = sorted({p["task"] for r in results for p in r["placements"]})
    colours = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(tasks)}
    fig, axes = plt.subplots(len(results), 1, figsize=(12, 3.2 * len(results)), squeeze=False)
    for ax, result in zip(axes[:, 0], results, strict=True):
        rows = sorted({(p["class"], p["node"]) for p in result["placements"]})
        index = {row: i for i, row in enumerate(rows)}
        for p in result["placements"]:
            y = index[(p["class"], p["node"])]
            ax.barh(y, p["end"] - p["start"], left=p["start"], color=colours[p["task"]], edgecolor="white",
                    height=0.8)
            if p["end"] - p["start"] > result["makespan_seconds"] / 40:
                ax.text((p["start"] + p["end"]) / 2, y, p["subtask"], ha="center", va="center", fontsize=6)
        ax.set_yticks(range(len(rows)), [f"{c} / {n}" for c, n in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.set_title(f"policy {result['policy']}: avg completion {result['avg_completion_seconds']:.0f} s, "
                     f"makespan {result['makespan_seconds']:.0f} s, cost {result['total_cost']:.2f}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[t]) for t in tasks]
    fig.legend(handles, tasks, loc="upper right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "img" / "simulate-gantt.png"))
    parser.add_argument("--policies", default="cost,agnostic")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = concat(CLUSTER_PARTS, Path(tmp) / "cluster.yaml")
        workload = concat(WORKLOAD_PARTS, Path(tmp) / "workload.yaml")
        results = [simulate(cluster, workload, p) for p in args.policies.split(",")]
    draw(results, Path(args.out))
    for r in results:
        print(f"{r['policy']:>9}: avg completion {r['avg_completion_seconds']:.0f} s, "
              f"makespan {r['makespan_seconds']:.0f} s, cost {r['total_cost']:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
