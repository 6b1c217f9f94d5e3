"""Workloads and clusters for the benchmarks, built from Gavel's measured throughputs.

A job is one single-GPU training sub-task of one (model, batch size) from
``bench/data/gavel_throughputs.csv``; its runtime on a GPU type is ``steps / throughput``.
Clusters are K80/P100/V100 pools of single-GPU or multi-GPU nodes. Everything is seeded so
a benchmark run is reproducible.
"""

from __future__ import annotations

import csv
import math
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from aitask.api import v1alpha1 as api  # noqa: E402
from aitask.core.quantity import GIB  # noqa: E402
from aitask.core.types import ClassInfo, NodeInfo  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "gavel_throughputs.csv"
GPU_TYPES = ("k80", "p100", "v100")
GPU_MEMORY_GIB = {"k80": 12.0, "p100": 16.0, "v100": 16.0}
#: Per-GPU-hour prices in the spirit of Gavel's cloud figures (K80 cheapest, V100 dearest).
PRICES = {"k80": 0.9, "p100": 1.46, "v100": 3.06}
ZERO_PRICES = {"k80": 0.0, "p100": 0.0, "v100": 0.0}


@dataclass(frozen=True)
class JobType:
    model: str
    batch_size: str
    throughput: Mapping[str, float]  # steps per second on one GPU of each type

    @property
    def profile(self) -> str:
        name = self.model.lower().replace("_", "-")
        return f"{name}-bs{self.batch_size}" if self.batch_size else name


def job_types(path: Path = DATA) -> list[JobType]:
    """The single-GPU rows of the Gavel table."""
    out = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["gpus"] != "1":
                continue
            tput = {t: float(row[f"{t}_steps_per_s"]) for t in GPU_TYPES}
            if min(tput.values()) <= 0:
                continue
            out.append(JobType(model=row["model"], batch_size=row["batch_size"], throughput=tput))
    return out


def prior_speeds(types: Sequence[JobType]) -> dict[str, float]:
    """Per-class prior speed: geometric mean throughput relative to the K80, as a platform
    team would put in ``ExecutorClass.spec.speed.default`` from a public benchmark."""
    out = {}
    for t in GPU_TYPES:
        logs = [math.log(j.throughput[t] / j.throughput["k80"]) for j in types]
        out[t] = math.exp(sum(logs) / len(logs))
    return out


@dataclass(frozen=True)
class Cluster:
    classes: dict[str, ClassInfo]
    nodes: tuple[NodeInfo, ...]
    docs: list[dict[str, Any]]  # the same as a multi-document cluster YAML (Node + ExecutorClass)


def cluster(
    per_type: int = 36,
    *,
    gpus_per_node: int = 1,
    prices: Mapping[str, float] = ZERO_PRICES,
    speeds: Mapping[str, float] | None = None,
    types: Sequence[str] = GPU_TYPES,
    extra_classes: int = 0,
) -> Cluster:
    """``per_type`` GPUs of each type on nodes of ``gpus_per_node`` GPUs (8 cores, 64Gi per GPU)."""
    classes: dict[str, ClassInfo] = {}
    nodes: list[NodeInfo] = []
    docs: list[dict[str, Any]] = []
    speeds = speeds or {}
    for t in types:
        classes[t] = ClassInfo(
            name=t,
            kind="gpu",
            node_selector={"nvidia.com/gpu.product": t},
            accelerator_resource="nvidia.com/gpu",
            accelerator_model=t,
            accelerator_memory_gib=GPU_MEMORY_GIB.get(t, 16.0),
            price_accelerator_hour=prices.get(t, 0.0),
            speed_default=speeds.get(t, 1.0),
        )
        docs.append(
            {
                "apiVersion": api.API_VERSION,
                "kind": "ExecutorClass",
                "metadata": {"name": t},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": t},
                    "accelerator": {
                        "resourceName": "nvidia.com/gpu",
                        "model": t,
                        "memoryGiB": GPU_MEMORY_GIB.get(t, 16.0),
                    },
                    "price": {"acceleratorHour": prices.get(t, 0.0)},
                    "speed": {"default": speeds.get(t, 1.0)},
                },
            }
        )
        count = math.ceil(per_type / gpus_per_node)
        for i in range(count):
            gpus = min(gpus_per_node, per_type - i * gpus_per_node)
            alloc = {"cpu": 8.0 * gpus, "memory": 64.0 * gpus * GIB, "nvidia.com/gpu": float(gpus)}
            name = f"{t}-{i:03d}"
            nodes.append(NodeInfo(name=name, classes=(t,), allocatable=alloc, free=dict(alloc)))
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": t}},
                    "status": {
                        "allocatable": {"cpu": str(8 * gpus), "memory": f"{64 * gpus}Gi", "nvidia.com/gpu": str(gpus)}
                    },
                }
            )
    return Cluster(classes=classes, nodes=tuple(nodes), docs=docs)


@dataclass(frozen=True)
class Job:
    name: str
    kind: JobType
    seconds: Mapping[str, float]  # true runtime per GPU type
    arrival: float
    priority: float = 1.0
    steps: float = 0.0  # training steps: the job's size in work units (kilo-steps in AITask.work)


def jobs(
    n: int,
    seed: int,
    *,
    arrival: str = "once",
    mean_interarrival: float = 60.0,
    min_seconds: float = 600.0,
    max_seconds: float = 3 * 3600.0,
    priorities: Sequence[float] = (1.0,),
    noise: float = 0.0,
) -> list[Job]:
    """``n`` jobs; the runtime on the job's fastest GPU is log-uniform in [min, max] seconds.

    ``arrival="once"``: all at time 0; ``"poisson"``: exponential inter-arrival times.
    ``noise``: sigma of a log-normal factor on each job's runtimes (the same on every GPU
    type: input pipeline, checkpointing), so the seconds per step of a profile vary by job.
    """
    rng = random.Random(seed)
    types = job_types()
    out = []
    t = 0.0
    for i in range(n):
        kind = rng.choice(types)
        fastest = max(kind.throughput.values())
        best_seconds = math.exp(rng.uniform(math.log(min_seconds), math.log(max_seconds)))
        steps = best_seconds * fastest
        steps = round(steps)
        factor = math.exp(rng.gauss(0.0, noise)) if noise > 0 else 1.0
        seconds = {g: steps / kind.throughput[g] * factor for g in GPU_TYPES}
        if arrival == "poisson" and i > 0:
            t += rng.expovariate(1.0 / mean_interarrival)
        out.append(
            Job(
                name=f"job-{i:04d}",
                kind=kind,
                seconds=seconds,
                arrival=round(t, 1),
                priority=rng.choice(priorities),
                steps=steps,
            )
        )
    return out


def aitask_doc(job: Job, *, cost_weight: float | None = None, work_units: bool = False) -> dict[str, Any]:
    """An AITask document for a job: ``estimate.secondsByClass`` is the truth (what
    `aitask simulate` runs; its learn mode hides it from the scheduler). ``work_units``: declare
    the job's size (kilo-steps) in ``work.units`` so that runtimes are learned per unit of work."""
    estimate: dict[str, Any] = {"secondsByClass": dict(job.seconds)}
    objective: dict[str, Any] = {"timeWeight": 1.0}
    if cost_weight is not None:
        objective["costWeight"] = cost_weight
    subtask: dict[str, Any] = {
        "name": "train",
        "type": "training",
        "profile": job.kind.profile,
        "image": f"registry.example/{job.kind.profile}:1",
        "executor": {"kinds": ["gpu"], "accelerators": 1},
        "estimate": estimate,
    }
    if work_units:
        subtask["work"] = {"units": job.steps / 1000.0}
    return submitted(job.name, job.arrival, {"priority": job.priority, "objective": objective, "subtasks": [subtask]})


def submitted(name: str, arrival: float, spec: dict[str, Any]) -> dict[str, Any]:
    """An AITask of the benchmarks' namespace, arriving ``arrival`` seconds into the trace."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": "AITask",
        "metadata": {
            "name": name,
            "namespace": "bench",
            "annotations": {"aitask.dev/submit-after-seconds": str(arrival)},
        },
        "spec": spec,
    }


def aitasks(js: Sequence[Job], **kwargs: Any) -> list[api.AITask]:
    return [api.AITask.model_validate(aitask_doc(j, **kwargs)) for j in js]


def ratio_summary(values: Sequence[float]) -> tuple[float, float]:
    """(median, worst) of a list of ratios."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return median, max(ordered)
