"""An existing cluster (kind, or any other) as an e2e.cluster.Cluster, for ``AITASK_E2E_PROVIDER=kubeconfig``.

``e2e/kind/run.sh`` creates a kind cluster with KWOK and the fake nodes of e2e/nodes.yaml, then runs the
e2e suite with this provider: the ``cluster`` fixture is built from ``$KUBECONFIG`` instead of starting the
local control plane. Nothing is started or stopped here; the suite talks to the cluster with

- kubectl/helm from the pinned build (``$AITASK_E2E_BIN`` or e2e/tools/build.sh) and ``$KUBECONFIG``;
- raw API calls (``Cluster.api``) with the token of a ServiceAccount ``kube-system/aitask-e2e-admin``
  bound to cluster-admin (created here, idempotently), and the cluster's CA written to ``DIR/pki/ca.pem``.

What only the local control plane has is absent: ``ports`` (component metrics ports) and ``procs``
(component logs), so the few harness tests that read them do not apply to this provider.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import NODES_YAML, Cluster, ClusterError, locate_binaries

ADMIN_SA = "aitask-e2e-admin"


def _current(config: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    for entry in config.get(section) or []:
        if entry.get("name") == name:
            value: dict[str, Any] = entry[section[:-1]]
            return value
    raise ClusterError(f"kubeconfig has no {section[:-1]} named {name!r}")


def from_kubeconfig(dir: Path, kubeconfig: str | None = None) -> Cluster:
    """A Cluster for the current context of ``kubeconfig`` (default ``$KUBECONFIG``), state in ``dir``."""
    path = Path(kubeconfig or os.environ.get("KUBECONFIG", "")).expanduser()
    if not path.is_file():
        raise ClusterError(f"AITASK_E2E_PROVIDER=kubeconfig needs KUBECONFIG to name a file (got {str(path)!r})")
    config = yaml.safe_load(path.read_text())
    context = _current(config, "contexts", config["current-context"])
    entry = _current(config, "clusters", context["cluster"])
    pki = dir / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    if entry.get("certificate-authority-data"):
        (pki / "ca.pem").write_bytes(base64.b64decode(entry["certificate-authority-data"]))
    elif entry.get("certificate-authority"):
        (pki / "ca.pem").write_bytes(Path(entry["certificate-authority"]).read_bytes())
    else:
        raise ClusterError("the kubeconfig's cluster has no certificate authority; the suite verifies TLS")
    bins = locate_binaries()

    def kubectl(*args: str, input: str | None = None) -> str:
        proc = subprocess.run([str(bins / "kubectl"), "--kubeconfig", str(path), *args], input=input,
                              capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    kubectl("apply", "--server-side", "--field-manager=aitask-e2e", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ADMIN_SA, "namespace": "kube-system"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": ADMIN_SA},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
         "subjects": [{"kind": "ServiceAccount", "name": ADMIN_SA, "namespace": "kube-system"}]},
    ]))
    token = kubectl("create", "token", ADMIN_SA, "-n", "kube-system", "--duration=24h").strip()
    nodes = [d["metadata"]["name"] for d in yaml.safe_load_all(NODES_YAML.read_text()) if d]
    return Cluster(dir=dir, bin_dir=bins, kubeconfig=path, server=entry["server"], token=token, ports={}, procs=[],
                   node_names=nodes)
