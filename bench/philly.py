"""Philly-derived traces (``../shared/data/philly``) as AITasks and 4-GPU-node clusters.

A trace line is (job type, total steps, arrival seconds, GPUs). A job's runtime on a GPU type is
``steps / throughput(model, batch size, GPUs, type)`` from Gavel's table; a throughput of 0 leaves
that type out of the job's classes. Jobs of 1, 2 or 4 GPUs are one pod; jobs of 8 GPUs are a gang
of two 4-GPU pods. Jobs without a row in the table (CycleGAN and A3C beyond one GPU, 12+ GPUs) are
left out and counted.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aitask.api import v1alpha1 as api
from workloads import GPU_TYPES, ROOT, Cluster, cluster, submitted

SHARED = ROOT.parent / "shared" / "data"
TRACES = SHARED / "philly"
THROUGHPUTS = SHARED / "gavel_throughputs.csv"
_TYPE = re.compile(r"^(?P<model>[^(]+?)\s*(?:\(batch size (?P<bs>\d+)\))?$")


@dataclass(frozen=True)
class TraceJob:
    name: str
    profile: str
    gpus: int
    arrival: float
    seconds: Mapping[str, float]  # true runtime per GPU type where it can run

    @property
    def best(self) -> float:
        return min(self.seconds.values())


def throughputs(path: Path = THROUGHPUTS) -> dict[tuple[str, str, int], dict[str, float]]:
    out = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            out[(row["model"], row["batch_size"], int(row["gpus"]))] = {
                t: float(row[f"{t}_steps_per_s"]) for t in GPU_TYPES
            }
    return out


def load(path: Path, limit: int | None = None) -> tuple[list[TraceJob], int]:
    """The trace's jobs that have a throughput row, and how many were left out."""
    table = throughputs()
    jobs: list[TraceJob] = []
    left_out = 0
    with path.open() as f:
        for i, line in enumerate(f):
            kind, steps, arrival, gpus = line.rstrip("\n").split("\t")
            m = _TYPE.match(kind.strip())
            assert m is not None, kind
            model, bs = m["model"].strip(), m["bs"] or ""
            row = table.get((model, bs, int(gpus)))
            if row is None or int(gpus) not in (1, 2, 4, 8):
                left_out += 1
                continue
            seconds = {t: float(steps) / v for t, v in row.items() if v > 0}
            profile = f"{model.lower()}-bs{bs}-g{gpus}" if bs else f"{model.lower()}-g{gpus}"
            jobs.append(TraceJob(f"job-{i:04d}", profile, int(gpus), float(arrival), seconds))
            if limit is not None and len(jobs) >= limit:
                break
    return jobs, left_out


def philly_cluster(per_type: int) -> Cluster:
    return cluster(per_type, gpus_per_node=4)


def aitask_doc(job: TraceJob, preemption: Mapping[str, Any] | None = None) -> dict[str, Any]:
    pods, per_pod = (2, 4) if job.gpus == 8 else (1, job.gpus)
    sub: dict[str, Any] = {
        "name": "train",
        "type": "training",
        "profile": job.profile,
        "image": "registry.example/train:1",
        "parallelism": pods,
        "gang": pods > 1,
        "executor": {
            "kinds": ["gpu"],
            "accelerators": per_pod,
            "classes": sorted(job.seconds),
            "cpu": "1",
            "memory": "1Gi",
        },
        "estimate": {"secondsByClass": dict(job.seconds)},
    }
    if preemption is not None:
        sub["preemption"] = dict(preemption)
    return submitted(job.name, job.arrival, {"priority": 1.0, "objective": {"timeWeight": 1.0}, "subtasks": [sub]})


def aitasks(jobs: Sequence[TraceJob], preemption: Mapping[str, Any] | None = None) -> list[api.AITask]:
    return [api.AITask.model_validate(aitask_doc(j, preemption)) for j in jobs]


def no_wait_bound(jobs: Sequence[TraceJob]) -> float:
    """Average completion if every job ran alone on its fastest GPU at once (a lower bound)."""
    return sum(j.best for j in jobs) / len(jobs)


def write_files(trace: str, per_type: int, out: Path, preemption: Mapping[str, Any] | None) -> tuple[Path, Path]:
    """The trace as the two files of ``aitask simulate CLUSTER WORKLOAD`` (for timing the CLI)."""
    import yaml

    jobs, _ = load(TRACES / trace)
    out.mkdir(parents=True, exist_ok=True)
    cluster_file, workload_file = out / "cluster.yaml", out / "workload.yaml"
    cluster_file.write_text(yaml.safe_dump_all(philly_cluster(per_type).docs))
    workload_file.write_text(yaml.safe_dump_all([aitask_doc(j, preemption) for j in jobs]))
    return cluster_file, workload_file


if __name__ == "__main__":
    import sys

    # python bench/philly.py TRACE GPUS_PER_TYPE OUT_DIR [OVERHEAD_SECONDS]: write the simulate files
    grace = sys.argv[4] if len(sys.argv) > 4 else None
    pre = None
    if grace is not None:
        pre = {"allowed": True, "gracePeriodSeconds": int(grace), "resumeOverheadSeconds": float(grace)}
    print(*write_files(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), pre))
