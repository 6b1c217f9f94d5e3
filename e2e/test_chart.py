"""The Helm chart and the rendered manifests, against the pinned helm/kubectl and the local control plane.

- offline (helm only): ``helm lint``, rendered output valid for the Kubernetes schemas
  (kubernetes-validate), manifests/install.yaml up to date, bad values rejected by the schema;
- on the cluster: install (the operator pod scheduled to a KWOK node and Ready, the GPU agent on
  every GPU node), upgrade with a changed value, uninstall; the samples and manifests/install.yaml
  accepted by the API server; the ServiceAccount's permissions checked with its own token, and the
  operator run on the host with that token alone takes a pipeline to Succeeded.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from e2e.cluster import Cluster, CommandError, kubeconfig_text, locate_binaries
from e2e.operator import running_operator
from e2e.util import get, list_objects, wait_for

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "aitask-operator"
SAMPLES = REPO / "manifests" / "samples"
INSTALL = REPO / "manifests" / "install.yaml"
K8S_VERSIONS = ("1.34.0", "1.36.0")
# Kinds kubernetes-validate has no schema for: ours (checked by the API server below) and
# prometheus-operator's (off by default).
CUSTOM_KINDS = {"ExecutorClass", "AITask", "ClusterKopfPeering", "KopfPeering", "ServiceMonitor", "PrometheusRule"}
ALL_ON: dict[str, Any] = yaml.safe_load((CHART / "ci" / "all-options-values.yaml").read_text())
GPU_NODES = 8  # e2e/nodes.yaml: h100 x2, a100 x2, l4 x2, t4 x2 carry nvidia.com/gpu.present=true


@pytest.fixture(scope="module")
def helm() -> str:
    return str(locate_binaries() / "helm")


def _helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, check=False, timeout=120)
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, [helm, *args], proc.stdout, proc.stderr)
    return proc


def _values_file(tmp_path: Path, values: dict[str, Any], name: str = "values.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _render(helm: str, *args: str) -> list[dict[str, Any]]:
    out = _helm(helm, "template", "aitask-operator", str(CHART), "-n", "aitask-system", "--include-crds", *args)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# ---- offline --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("all_on", [False, True], ids=["defaults", "all-options"])
def test_helm_lint_is_clean(helm: str, tmp_path: Path, all_on: bool) -> None:
    args = ["-f", _values_file(tmp_path, ALL_ON)] if all_on else []
    proc = _helm(helm, "lint", "--strict", str(CHART), *args)
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("all_on", [False, True], ids=["defaults", "all-options"])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_chart_is_valid_kubernetes(helm: str, tmp_path: Path, all_on: bool, version: str) -> None:
    docs = _render(helm, *(["-f", _values_file(tmp_path, ALL_ON)] if all_on else []))
    validated, custom = set(), set()
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            custom.add(doc["kind"])
            continue
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is invalid for {version}: {err}")
        validated.add(doc["kind"])
    assert custom <= CUSTOM_KINDS, f"no schema for {custom - CUSTOM_KINDS}"
    expected = {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service",
                "Deployment", "ConfigMap"}
    assert expected <= validated
    if all_on:
        assert "DaemonSet" in validated
        assert {"ServiceMonitor", "PrometheusRule", "ExecutorClass", "KopfPeering"} <= custom


def test_rendered_operator_pod_is_locked_down(helm: str) -> None:
    (deploy,) = [d for d in _render(helm) if d["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["aitask"] and c["args"] == ["run"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert (sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"], sc["capabilities"]) == (
        True, False, {"drop": ["ALL"]})
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert (c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]) == ("/healthz", "/readyz")
    assert deploy["spec"]["strategy"] == {"type": "Recreate"} and deploy["spec"]["replicas"] == 1
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["AITASK_PEERING_NAME"] == "aitask-operator" and env["AITASK_METRICS_PORT"] == "8080"
    standalone = [d for d in _render(helm, "--set", "peering.standalone=true") if d["kind"] == "Deployment"]
    assert standalone[0]["spec"]["template"]["spec"]["containers"][0]["args"] == ["run", "--standalone"]


def test_clusterrole_never_grants_secrets(helm: str, tmp_path: Path) -> None:
    for doc in _render(helm, "-f", _values_file(tmp_path, ALL_ON)):
        if doc["kind"] == "ClusterRole":
            for rule in doc["rules"]:
                assert "*" not in rule["resources"] and "*" not in rule["verbs"], rule
                assert "secrets" not in rule["resources"], rule


@pytest.mark.parametrize(("setting", "message"), [
    ("operator.schedulingPeriodSeconds=0", "/operator/schedulingPeriodSeconds"),
    ("operator.logLevel=trace", "/operator/logLevel"),
    ("replicaCount=-1", "/replicaCount"),
    ("operator.scheduligPeriod=3", "'scheduligPeriod' not allowed"),
])
def test_bad_values_fail_with_a_message_naming_them(helm: str, setting: str, message: str) -> None:
    proc = _helm(helm, "template", "x", str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_install_yaml_and_chart_crds_are_current(helm: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "render_manifests.py"), "--check", "--helm", helm],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"stale (run `make manifests`):\n{proc.stdout[-4000:]}{proc.stderr}"


# ---- on the cluster -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    """The chart's CRDs (ours + Kopf's peering ones), as the upgrade notes tell users to apply them."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/aitasks.aitask.dev",
                    "crd/executorclasses.aitask.dev", "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev")
    shutil.rmtree(cluster.dir / "cache" / "kube", ignore_errors=True)  # kubectl's stale discovery cache


def _release(namespace: str) -> str:
    return f"ait-{namespace[-6:]}"


@pytest.fixture
def release(cluster: Cluster, namespace: str, crds: None) -> Iterator[str]:
    name = _release(namespace)
    yield name
    cluster.helm("uninstall", name, "-n", namespace, "--ignore-not-found", "--wait", "--timeout", "60s", check=False)


def _deployment_env(deploy: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_install_upgrade_uninstall(cluster: Cluster, namespace: str, release: str, tmp_path: Path) -> None:
    suffix = namespace[-6:]
    values = {
        "peering": {"name": f"aitask-{suffix}"},
        "agent": {"enabled": True},
        "executorClasses": [{"name": f"chart-cpu-{suffix}",
                             "spec": {"nodeSelector": {"aitask.dev/pool": "cpu"}, "price": {"cpuHour": 0.04}}}],
    }
    cluster.helm("install", release, str(CHART), "-n", namespace, "-f", _values_file(tmp_path, values),
                 "--wait", "--timeout", "120s")
    full = f"{release}-aitask-operator"

    deploy = get(cluster, "deployment", full, namespace)
    assert deploy is not None and deploy["status"].get("readyReplicas") == 1
    (pod,) = list_objects(cluster, "pods", namespace, "app.kubernetes.io/component=operator")
    assert pod["spec"]["nodeName"] in cluster.node_names  # scheduled by kube-scheduler to a KWOK node
    assert pod["spec"]["serviceAccountName"] == full
    ds = get(cluster, "daemonset", f"{full}-agent", namespace)
    assert ds is not None
    assert (ds["status"]["desiredNumberScheduled"], ds["status"]["numberReady"]) == (GPU_NODES, GPU_NODES)
    agent_nodes = {p["spec"]["nodeName"] for p in list_objects(cluster, "pods", namespace,
                                                                "app.kubernetes.io/component=gpu-agent")}
    assert any(n.startswith("gpu-h100-") for n in agent_nodes)  # the tainted pool is tolerated
    assert not any(n.startswith("cpu-") for n in agent_nodes)
    svc = get(cluster, "service", full, namespace)
    assert svc is not None and [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("metrics", 8080)]
    assert get(cluster, "clusterkopfpeering", f"aitask-{suffix}") is not None
    ec = get(cluster, "executorclass", f"chart-cpu-{suffix}")  # accepted by the CRD's schema
    assert ec is not None and ec["spec"]["price"]["cpuHour"] == 0.04
    cm = get(cluster, "configmap", f"{full}-dashboard", namespace)
    assert cm is not None and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["aitask-operator.json"])["panels"]

    generation = deploy["metadata"]["generation"]
    old_uid = pod["metadata"]["uid"]
    cluster.helm("upgrade", release, str(CHART), "-n", namespace, "--reuse-values",
                 "--set", "operator.schedulingPeriodSeconds=2", "--wait", "--timeout", "120s")
    deploy = get(cluster, "deployment", full, namespace)
    assert deploy is not None and deploy["metadata"]["generation"] > generation
    assert _deployment_env(deploy)["AITASK_SCHEDULING_PERIOD_SECONDS"] == "2"
    pods = wait_for(lambda: [p for p in list_objects(cluster, "pods", namespace,
                                                     "app.kubernetes.io/component=operator")
                             if p["metadata"]["uid"] != old_uid and p["status"].get("phase") == "Running"],
                    timeout=60, what="the upgraded operator pod Running")
    assert len(pods) == 1
    history = json.loads(cluster.helm("history", release, "-n", namespace, "-o", "json").stdout)
    assert [h["status"] for h in history] == ["superseded", "deployed"]

    cluster.helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "60s")
    assert get(cluster, "deployment", full, namespace) is None
    assert get(cluster, "clusterrole", full) is None
    assert get(cluster, "executorclass", f"chart-cpu-{suffix}") is None
    assert get(cluster, "clusterkopfpeering", f"aitask-{suffix}") is None
    assert get(cluster, "crd", "aitasks.aitask.dev") is not None  # Helm never deletes CRDs


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_sample_is_accepted_by_the_api_server(cluster: Cluster, namespace: str, crds: None, path: Path) -> None:
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", str(path))
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            assert f"{doc['metadata']['name']} serverside-applied (server dry run)" in proc.stdout, proc.stdout


def test_install_yaml_applies_and_runs(cluster: Cluster, crds: None) -> None:
    """`kubectl apply --server-side -f manifests/install.yaml` for real, then everything but the CRDs
    removed again (other suites share them)."""
    cluster.kubectl("apply", "--server-side", "-f", str(INSTALL))
    try:
        cluster.kubectl("-n", "aitask-system", "rollout", "status", "deployment/aitask-operator", "--timeout=90s")
        assert get(cluster, "clusterkopfpeering", "aitask-operator") is not None
    finally:
        docs = [d for d in yaml.safe_load_all(INSTALL.read_text())
                if d and d["kind"] not in ("CustomResourceDefinition", "Namespace")]
        cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}), check=False)
        cluster.kubectl("delete", "namespace", "aitask-system", "--ignore-not-found", "--wait=false", check=False)


# ---- RBAC -----------------------------------------------------------------------------------------------


class ServiceAccountClient:
    """Requests with a ServiceAccount's token only (no impersonation, no admin credentials)."""

    def __init__(self, cluster: Cluster, token: str, kubeconfig: Path) -> None:
        self.cluster, self.token, self.kubeconfig = cluster, token, kubeconfig
        self._ctx = ssl.create_default_context(cafile=str(cluster.dir / "pki" / "ca.pem"))

    def status(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> int:
        req = urllib.request.Request(self.cluster.server + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def can_i(self, verb: str, resource: str, namespace: str | None = None, subresource: str | None = None) -> bool:
        args = [str(self.cluster.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), "auth", "can-i", verb,
                resource]
        args += ["-n", namespace] if namespace else ["--all-namespaces"]
        if subresource:
            args += [f"--subresource={subresource}"]
        proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=30,
                              env={**self.cluster.env(), "KUBECONFIG": str(self.kubeconfig)})
        answer = proc.stdout.strip()
        assert answer in ("yes", "no"), f"{args}: {proc.stdout}{proc.stderr}"
        return answer == "yes"


@pytest.fixture
def installed_sa(cluster: Cluster, namespace: str, release: str, tmp_path: Path) -> ServiceAccountClient:
    """The chart installed (peering off: the operator run below is standalone) and a client holding a
    freshly minted token of its ServiceAccount."""
    suffix = namespace[-6:]
    values = {"peering": {"standalone": True},
              "executorClasses": [{"name": f"rbac-cpu-{suffix}",
                                   "spec": {"nodeSelector": {"aitask.dev/pool": "cpu"}, "price": {"cpuHour": 0.04}}}]}
    cluster.helm("install", release, str(CHART), "-n", namespace, "-f", _values_file(tmp_path, values))
    sa = f"{release}-aitask-operator"
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=20m").stdout.strip()
    kubeconfig = tmp_path / "sa.kubeconfig"
    kubeconfig.write_text(kubeconfig_text(cluster.server, cluster.dir / "pki" / "ca.pem", token,
                                          user=f"system:serviceaccount:{namespace}:{sa}"))
    kubeconfig.chmod(0o600)
    return ServiceAccountClient(cluster, token, kubeconfig)


Row = tuple[str, str, str | None, str | None]
ALLOWED: list[Row] = [
    ("list", "pods", None, None), ("watch", "pods", None, None), ("list", "nodes", None, None),
    ("watch", "nodes", None, None), ("create", "jobs.batch", "NS", None), ("delete", "jobs.batch", "NS", None),
    ("patch", "jobs.batch", "NS", None),
    ("watch", "jobs.batch", None, None), ("list", "aitasks.aitask.dev", None, None),
    ("patch", "aitasks.aitask.dev", "NS", None), ("patch", "aitasks.aitask.dev", "NS", "status"),
    ("get", "aitasks.aitask.dev", "NS", "status"), ("watch", "executorclasses.aitask.dev", None, None),
    ("patch", "executorclasses.aitask.dev", None, "status"), ("create", "events", "NS", None),
    ("patch", "events", "NS", None), ("patch", "clusterkopfpeerings.kopf.dev", None, None),
    ("patch", "kopfpeerings.kopf.dev", "NS", None), ("watch", "customresourcedefinitions.apiextensions.k8s.io",
                                                     None, None), ("list", "namespaces", None, None),
    ("create", "persistentvolumeclaims", "NS", None),
]
DENIED: list[Row] = [
    ("get", "secrets", "NS", None), ("list", "secrets", None, None), ("watch", "secrets", "NS", None),
    ("delete", "nodes", None, None), ("patch", "nodes", None, None), ("delete", "pods", "NS", None),
    ("create", "pods", "NS", None), ("get", "configmaps", "NS", None), ("update", "aitasks.aitask.dev", "NS", None),
    ("delete", "aitasks.aitask.dev", "NS", None), ("create", "executorclasses.aitask.dev", None, None),
    ("update", "jobs.batch", "NS", None), ("create", "customresourcedefinitions.apiextensions.k8s.io", None, None),
    ("create", "clusterroles.rbac.authorization.k8s.io", None, None), ("create", "serviceaccounts/token", "NS", None),
    ("delete", "persistentvolumeclaims", "NS", None), ("get", "persistentvolumes", None, None),
]


def _ids(rows: list[Row]) -> list[str]:
    return [f"{v}-{r}{'/' + s if s else ''}{'-ns' if n else ''}" for v, r, n, s in rows]


def test_serviceaccount_permission_matrix(installed_sa: ServiceAccountClient, namespace: str) -> None:
    wrong = []
    for rows, want in ((ALLOWED, True), (DENIED, False)):
        for (verb, resource, ns, sub), label in zip(rows, _ids(rows), strict=True):
            if installed_sa.can_i(verb, resource, namespace if ns else None, sub) != want:
                wrong.append(f"{label}: expected {'allowed' if want else 'denied'}")
    assert not wrong, "\n".join(wrong)


def test_serviceaccount_real_requests(cluster: Cluster, installed_sa: ServiceAccountClient, namespace: str) -> None:
    """Real API calls with the token (dry-run where the call would change something)."""
    cluster.kubectl("create", "secret", "generic", "top-secret", "-n", namespace, "--from-literal=k=v")
    cluster.apply({"apiVersion": "aitask.dev/v1alpha1", "kind": "AITask", "metadata": {"name": "probe"},
                   "spec": {"subtasks": [{"name": "a", "image": "registry.example/x:1"}]}}, namespace=namespace)
    sa = installed_sa
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "rbac-probe"},
           "spec": {"template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "c", "image": "registry.example/x:1"}]}}}}
    merge = "application/merge-patch+json"
    assert sa.status("GET", "/api/v1/pods") == 200
    assert sa.status("GET", "/api/v1/nodes") == 200
    assert sa.status("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs?dryRun=All", job) == 201
    assert sa.status("PATCH", f"/apis/aitask.dev/v1alpha1/namespaces/{namespace}/aitasks/probe/status",
                     {"status": {"observedGeneration": 1}}, merge) == 200
    assert sa.status("GET", f"/api/v1/namespaces/{namespace}/secrets/top-secret") == 403
    assert sa.status("GET", "/api/v1/secrets") == 403
    assert sa.status("DELETE", "/api/v1/nodes/cpu-0?dryRun=All") == 403
    assert sa.status("DELETE", f"/apis/aitask.dev/v1alpha1/namespaces/{namespace}/aitasks/probe?dryRun=All") == 403


def test_operator_runs_a_pipeline_with_only_the_chart_rbac(
    cluster: Cluster, installed_sa: ServiceAccountClient, namespace: str, tmp_path: Path
) -> None:
    """The real operator on the host (`aitask run --standalone -n NS`) with KUBECONFIG holding only the
    ServiceAccount's token: a CPU -> CPU pipeline reaches Succeeded and nothing is forbidden on the way."""
    suffix = namespace[-6:]
    task = {"apiVersion": "aitask.dev/v1alpha1", "kind": "AITask", "metadata": {"name": "rbac-pipe"},
            "spec": {"subtasks": [
                {"name": "prep", "type": "preprocess", "image": "registry.example/prep:1",
                 "executor": {"classes": [f"rbac-cpu-{suffix}"], "cpu": "1", "memory": "1Gi"},
                 "estimate": {"seconds": 5}, "podMetadata": {"annotations": {"sim.aitask.dev/duration": "1s"}}},
                {"name": "fuse", "type": "fusion", "image": "registry.example/fuse:1", "dependsOn": ["prep"],
                 "executor": {"classes": [f"rbac-cpu-{suffix}"], "cpu": "1", "memory": "1Gi"},
                 "estimate": {"seconds": 5}, "podMetadata": {"annotations": {"sim.aitask.dev/duration": "1s"}}},
            ]}}
    env = {"KUBECONFIG": str(installed_sa.kubeconfig), "AITASK_METRICS_PORT": "0"}
    with running_operator(cluster, namespace, tmp_path, env=env) as op:
        cluster.apply(task, namespace=namespace)

        def phase() -> str | None:
            obj = get(cluster, "aitask", "rbac-pipe", namespace) or {}
            value = (obj.get("status") or {}).get("phase")
            return value if value in ("Succeeded", "Failed", "Invalid") else None

        final = wait_for(phase, timeout=120, interval=0.5, what="AITask rbac-pipe finished",
                         describe=lambda: op.log(80))
        log = op.log(2000)
    assert final == "Succeeded", log[-6000:]
    # An HTTP 403 as urllib3 logs it (`"PATCH /... HTTP/1.1" 403`) or any "forbidden"; not a bare "403",
    # which also occurs in log timestamps (",403]") and durations.
    denied = re.compile(r'HTTP/1\.1" 403\b|\b403 Forbidden\b|forbidden', re.IGNORECASE)
    forbidden = [line for line in log.splitlines() if denied.search(line)]
    assert not forbidden, "\n".join(forbidden[:20])
    jobs = list_objects(cluster, "jobs", namespace, "aitask.dev/task=rbac-pipe")
    assert len(jobs) == 2


def test_two_releases_do_not_collide(cluster: Cluster, namespace: str, crds: None, tmp_path: Path) -> None:
    """Cluster-scoped names derive from the release, so two installs (e.g. staging, prod) coexist."""
    names = [f"a{secrets.token_hex(3)}", f"b{secrets.token_hex(3)}"]
    try:
        for name in names:
            cluster.helm("install", name, str(CHART), "-n", namespace, "--set", f"peering.name={name}")
        for name in names:
            assert get(cluster, "clusterrole", f"{name}-aitask-operator") is not None
    finally:
        for name in names:
            cluster.helm("uninstall", name, "-n", namespace, "--ignore-not-found", check=False)
