"""Benchmark 6 (issue 9): the client CPU of one write, generated API methods vs ``kube.send``.

The operator's writes used the kubernetes client's generated methods, which validate every
argument into client models (pydantic ``validate_call``) and turn every answer back into models
(a ``V1Job`` per create). ``aitask.adapters.kube.send`` sends the same JSON with the same
``ApiClient`` (credentials, connection pool) and reads the answer as a dict.

One run, on a real local control plane (e2e/cluster.py, or ``AITASK_E2E_CLUSTER=DIR`` to attach):
creates N suspended Jobs (``spec.suspend: true``, so no pod is made and the controllers stay idle)
with each path, in alternating batches so that load drifts hit both alike, then patches each Job's
status-like field (a merge patch of an annotation) the same way. It measures the process CPU time
(user + system, ``time.process_time``: what the operator's core is spent on, not the wall clock,
which the API server dominates) per request and prints the ratio. The one difference between the
two sides is the call path; the manifests, connection pool and server are the same.

Run: ``.venv/bin/python bench/api_writes.py [--n 400]`` (about a minute).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from e2e.cluster import Cluster  # noqa: E402


def job(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": {"bench": "api-writes"},
                     "annotations": {"aitask.dev/estimated-seconds": "60"}},
        "spec": {
            "suspend": True,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"bench": "api-writes"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "registry.example/x:1", "command": ["true"],
                                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                                  "limits": {"memory": "1Gi"}}}],
                },
            },
        },
    }


def timed(calls: list[Callable[[], Any]]) -> float:
    start = time.process_time()
    for call in calls:
        call()
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="Jobs per path")
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args(argv)
    attach = os.environ.get("AITASK_E2E_CLUSTER")
    cluster = Cluster.attach(attach) if attach else Cluster.start(Path(tempfile.mkdtemp(prefix="bench-api-")))
    try:
        os.environ["KUBECONFIG"] = str(cluster.dir / "kubeconfig")  # read when the client is imported
        from aitask.adapters import kube

        kube.configure(concurrency=4, qps=1e6, burst=1_000_000)
        batch = kube._client("batch")  # noqa: SLF001 - the generated methods are the baseline
        ns = f"bench-api-{os.getpid()}"
        cluster.kubectl("create", "namespace", ns)
        cpu: dict[str, float] = {"generated create": 0.0, "send create": 0.0, "generated patch": 0.0,
                                 "send patch": 0.0}
        patch = {"metadata": {"annotations": {"aitask.dev/bench": "patched"}}}
        done = 0
        while done < args.n:
            size = min(args.batch, args.n - done)
            gen = [f"g-{done + i}" for i in range(size)]
            raw = [f"r-{done + i}" for i in range(size)]
            cpu["generated create"] += timed(
                [lambda n=n: batch.create_namespaced_job(ns, job(ns, n)) for n in gen])
            cpu["send create"] += timed(
                [lambda n=n: kube.send("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", job(ns, n)) for n in raw])
            cpu["generated patch"] += timed([lambda n=n: batch.patch_namespaced_job(n, ns, patch) for n in gen])
            cpu["send patch"] += timed(
                [lambda n=n: kube.send("PATCH", f"/apis/batch/v1/namespaces/{ns}/jobs/{n}", patch,
                                       "application/merge-patch+json") for n in raw])
            done += size
        listed = batch.list_namespaced_job(ns).items
        assert len(listed) == 2 * args.n, f"expected {2 * args.n} Jobs, found {len(listed)}"
        assert all((j.metadata.annotations or {}).get("aitask.dev/bench") == "patched" for j in listed)
        print(f"client CPU per request, {args.n} Jobs per path, one run ({os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.1f}):")
        print(f"{'request':<10} {'generated ms':>13} {'send ms':>9} {'generated / send':>17}")
        for verb in ("create", "patch"):
            g = 1000 * cpu[f"generated {verb}"] / args.n
            r = 1000 * cpu[f"send {verb}"] / args.n
            print(f"{verb:<10} {g:>13.2f} {r:>9.2f} {g / r if r else float('inf'):>17.2f}")
        cluster.kubectl("delete", "namespace", ns, "--wait=false")
    finally:
        if not attach:
            cluster.stop(remove=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
