"""`make demo`: the operator doing its job on a local control plane with simulated GPU pools.

1. start the local control plane (real kube-apiserver, controller-manager, scheduler; KWOK nodes:
   H100, A100, L4, T4 and CPU pools)
2. `helm install` the chart (CRDs, RBAC, the sample ExecutorClasses; the in-cluster Deployment is
   scaled to 0 because KWOK pods run no containers)
3. run the operator on this machine (`python -m aitask run`)
4. show `aitask plan` for the sample pipeline, apply it, follow its progress
5. print each sub-task's executor class, nodes, runtime and cost, and the total

Everything it started is stopped at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from e2e.cluster import Cluster  # noqa: E402
from e2e.operator import Operator  # noqa: E402

SAMPLE = REPO / "manifests" / "samples" / "pipeline.yaml"
CHART = REPO / "charts" / "aitask-operator"
NAMESPACE = "demo"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def status_of(cluster: Cluster) -> dict[str, Any]:
    out = cluster.kubectl("get", "aitasks.aitask.dev", "pipeline", "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=str(REPO / ".e2e" / "demo"), help="state folder of the demo cluster")
    parser.add_argument("--keep", action="store_true", help="leave the cluster and the operator running")
    args = parser.parse_args()

    say("starting the local control plane with simulated GPU pools")
    cluster = Cluster.start(args.dir)
    operator: Operator | None = None
    try:
        print(f"up in {cluster.startup_seconds:.1f} s")
        print(cluster.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count,aitask.dev/pool")
              .stdout)

        say("helm install aitask-operator (CRDs, RBAC, peering); kubectl apply the sample ExecutorClasses")
        cluster.helm("install", "aitask-operator", str(CHART), "-n", "aitask-system", "--create-namespace",
                     "--set", "replicaCount=0", "--wait", "--timeout", "120s")
        cluster.kubectl("apply", "-f", str(REPO / "manifests" / "samples" / "executorclasses.yaml"))
        print(cluster.kubectl("get", "executorclasses").stdout)

        say("running the operator on this machine (python -m aitask run)")
        cluster.kubectl("create", "namespace", NAMESPACE)
        operator = Operator(cluster, NAMESPACE, Path(args.dir)).start()
        operator.wait_metrics()

        say(f"aitask plan {SAMPLE.relative_to(REPO)} --kubeconfig ...   (a preview: nothing runs yet)")
        plan = subprocess.run([sys.executable, "-m", "aitask", "plan", str(SAMPLE), "--kubeconfig",
                               str(cluster.kubeconfig)], capture_output=True, text=True, cwd=REPO, check=False)
        print(plan.stdout or plan.stderr)

        say(f"kubectl apply -f {SAMPLE.relative_to(REPO)}")
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(SAMPLE))
        deadline = time.monotonic() + 180
        last = ""
        while time.monotonic() < deadline:
            status = status_of(cluster)
            line = f"{status.get('phase', '-'):<10} {status.get('progress', '')}  " + "  ".join(
                f"{s['name']}={s['phase']}" for s in status.get("subtasks", []))
            if line != last:
                print(time.strftime("%H:%M:%S"), line, flush=True)
                last = line
            if status.get("phase") in ("Succeeded", "Failed", "Invalid"):
                break
            time.sleep(0.5)

        say("kubectl get aitasks -n demo")
        print(cluster.kubectl("get", "aitasks", "-n", NAMESPACE).stdout)
        status = status_of(cluster)
        rows = []
        for sub in status.get("subtasks", []):
            plan_ = sub.get("plan") or {}
            rows.append([
                sub["name"], sub["phase"], plan_.get("class", "-"),
                ",".join(sorted(set(sub.get("nodes") or []))) or "-",
                f"{plan_.get('estimatedSeconds', 0):.0f}s", f"{sub.get('actualSeconds') or 0:.0f}s",
                f"{plan_.get('estimatedCost', 0):.4f}", f"{sub.get('actualCost') or 0:.4f}",
            ])
        say("where each sub-task ran, and what it cost")
        print(table(rows, ["SUBTASK", "PHASE", "CLASS", "NODES", "EST-T", "ACTUAL-T", "EST-COST", "COST"]))
        print(f"\ntotal: estimated cost {status.get('estimatedCost', 0):.4f}, "
              f"actual cost {status.get('actualCost') or 0:.4f} (simulated runtimes: seconds, not hours)")
        return 0 if status.get("phase") == "Succeeded" else 1
    finally:
        if args.keep:
            print(f"\nleft running: export KUBECONFIG={cluster.kubeconfig}; "
                  f"stop with: python -m e2e.cluster down --dir {args.dir} (operator pid "
                  f"{operator.proc.pid if operator and operator.proc else '-'})")
        else:
            if operator is not None:
                operator.stop()
            cluster.stop(remove=True)


if __name__ == "__main__":
    raise SystemExit(main())
