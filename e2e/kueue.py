"""The real Kueue manager (sigs.k8s.io/kueue, built by e2e/tools/build-kueue.sh) as a process of a test.

    kueue = Kueue(cluster, tmp_path / "kueue").start()   # CRDs applied, manager ready
    ...
    kueue.stop()

How it runs here, and why:

- Kueue's manager reads its metrics serving certificate from the fixed path /etc/kueue/metrics/certs
  unless its internal certificate management is on, so it is on: the harness writes a CA and a
  serving certificate of its own into the Secret Kueue's cert rotator manages
  (``kueue-system/kueue-webhook-server-cert``, valid for the webhook Service's DNS name, as the
  rotator checks, and for 127.0.0.1) and into the manager's cert dir, as the kubelet would mount
  that Secret. The rotator finds the Secret valid, keeps it, and injects the CA into the CRDs.
- The API server cannot reach a Service here (no kube-proxy), so the CRDs' conversion webhook is
  registered by URL, ``https://127.0.0.1:<port>/convert``. No validating or mutating webhook
  configuration is registered (the rotator skips absent ones): the operator creates its Jobs
  suspended with the queue label already, which is all Kueue's Job webhook would add, and the
  harness writes fully specified Kueue objects, so neither defaulting nor validation is needed and
  a stopped Kueue cannot block Job creation for the other suites sharing the control plane.
- Only the batch/Job integration is enabled; leader election and the visibility server are off;
  every listener (webhook, metrics, health probes) binds 127.0.0.1 on a free port.
- The process is started and stopped like the control plane's components: its own process group,
  ``setpriv --pdeathsig``, stopped by PID (``e2e.cluster.stop_processes``), never by name.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import (
    E2E_DIR,
    Cluster,
    ClusterError,
    Proc,
    _http_ok,
    _spawn,
    free_port,
    poll_until,
    stop_processes,
    tail,
)

BUILD_KUEUE_SH = E2E_DIR / "tools" / "build-kueue.sh"
NAMESPACE = "kueue-system"
SERVICE = "kueue-webhook-service"
SECRET = "kueue-webhook-server-cert"
CA_NAME = "kueue-ca"  # the rotator requires its CA to be valid for this DNS name
# The CRDs whose conversion webhook Kueue's cert rotator injects its CA into (it fails without one).
CONVERTED = ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")
API = "kueue.x-k8s.io/v1beta2"


def locate_kueue() -> Path:
    """The folder holding ``kueue`` and ``crds/`` (``$AITASK_E2E_KUEUE_BIN`` wins, else build-kueue.sh)."""
    override = os.environ.get("AITASK_E2E_KUEUE_BIN")
    if override:
        path = Path(override)
    else:
        proc = subprocess.run(["bash", str(BUILD_KUEUE_SH)], stdout=subprocess.PIPE, text=True, check=False)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise ClusterError(f"{BUILD_KUEUE_SH} failed (exit {proc.returncode}); see its stderr")
        path = Path(lines[-1])
    if not os.access(path / "kueue", os.X_OK) or not (path / "crds").is_dir():
        raise ClusterError(f"{path} lacks kueue or crds/; run: bash e2e/tools/build-kueue.sh")
    return path


def _pem_pair() -> tuple[bytes, bytes, bytes, bytes]:
    """(ca cert, ca key, server cert, server key) as PEM: the CA valid for ``kueue-ca``, the server
    certificate for the webhook Service's DNS name and 127.0.0.1, both for three years (the rotator
    renews anything that expires within 90 days)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    life = (now - dt.timedelta(hours=1), now + dt.timedelta(days=3 * 365))

    def key_pem(key: rsa.RSAPrivateKey) -> bytes:  # PKCS#1: the rotator parses the CA key only so
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kueue"),
                         x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(life[0]).not_valid_after(life[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectAlternativeName([x509.DNSName(CA_NAME)]), critical=False)
          .sign(ca_key, hashes.SHA256()))
    srv_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dns = f"{SERVICE}.{NAMESPACE}.svc"
    srv = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
           .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(life[0]).not_valid_after(life[1])
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns),
                                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                          critical=False)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
           .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), key_pem(ca_key), srv.public_bytes(pem), key_pem(srv_key)


class Kueue:
    """One Kueue manager against ``cluster``; state (config, certs, log) in ``dir``."""

    def __init__(self, cluster: Cluster, dir: Path) -> None:
        self.cluster = cluster
        self.dir = dir
        self.bin_dir = locate_kueue()
        self.ports = {name: free_port() for name in ("webhook", "metrics", "health")}
        self.proc: Proc | None = None
        self._popens: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def log_path(self) -> Path:
        return self.dir / "kueue.log"

    def log(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def _install_crds(self, ca_pem: bytes) -> None:
        bundle = base64.b64encode(ca_pem).decode()
        url = f"https://127.0.0.1:{self.ports['webhook']}/convert"
        docs: list[dict[str, Any]] = []
        for path in sorted((self.bin_dir / "crds").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            if crd["spec"]["names"]["plural"] in CONVERTED:
                crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                    "conversionReviewVersions": ["v1"], "clientConfig": {"url": url, "caBundle": bundle}}}
            docs.append(crd)
        self.cluster.apply(docs)
        names = [f"crd/{d['metadata']['name']}" for d in docs]
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)

    def _config(self) -> Path:
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "namespace": NAMESPACE,
            "manageJobsWithoutQueueName": False,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['health']}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.ports['metrics']}"},
            "webhook": {"host": "127.0.0.1", "port": self.ports["webhook"], "certDir": str(self.dir / "certs")},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": True, "webhookServiceName": SERVICE, "webhookSecretName": SECRET},
            "integrations": {"frameworks": ["batch/job"]},
            "featureGates": {"VisibilityOnDemand": False},
        }
        path = self.dir / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self, timeout: float = 120.0) -> Kueue:
        """Applies the CRDs (from the module's config/components/crd/bases), the namespace and the
        certificate Secret, starts the manager and returns once its /readyz answers (certificates in
        place and the webhook server listening)."""
        deadline = time.monotonic() + timeout
        self.dir.mkdir(parents=True, exist_ok=True)
        ca, ca_key, crt, key = _pem_pair()
        certs = self.dir / "certs"
        certs.mkdir(exist_ok=True)
        (certs / "tls.crt").write_bytes(crt)
        (certs / "tls.key").write_bytes(key)
        (certs / "tls.key").chmod(0o600)
        self._install_crds(ca)
        self.cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        data = {"ca.crt": ca, "ca.key": ca_key, "tls.crt": crt, "tls.key": key}
        self.cluster.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                            "metadata": {"name": SECRET, "namespace": NAMESPACE},
                            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})
        argv = [str(self.bin_dir / "kueue"), f"--config={self._config()}",
                f"--kubeconfig={self.cluster.kubeconfig}", "--zap-log-level=info"]
        self.proc = _spawn("kueue", argv, self.dir, self._popens)
        ready = f"http://127.0.0.1:{self.ports['health']}/readyz"
        try:
            poll_until("the Kueue manager's /readyz", lambda: self._alive() and _http_ok(ready), deadline,
                       on_timeout=lambda: f"kueue log ({self.log_path}):\n{self.log()}")
        except ClusterError:
            self.stop()
            raise
        if not self._alive():
            raise ClusterError(f"the Kueue manager exited\n{self.log()}")
        # The rotator keeps a valid Secret; had it replaced ours, the cert dir would no longer match.
        secret = self.cluster.kubectl_json("get", "secret", SECRET, "-n", NAMESPACE)
        if base64.b64decode(secret["data"]["tls.crt"]) != crt:
            self.stop()
            raise ClusterError("Kueue's cert rotator replaced the harness's certificate; the conversion "
                               f"webhook would not match it\n{self.log()}")
        return self

    def _alive(self) -> bool:
        if self.proc is None:
            return False
        popen = self._popens.get(self.proc.pid)
        return popen is not None and popen.poll() is None

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) the manager's process group, by its PID."""
        if self.proc is not None:
            stop_processes([self.proc], timeout=10.0, popens=self._popens)
            self.proc = None


# ---- Kueue objects, written out in full (no defaulting webhook runs) -------------------------------------


def resource_flavor(name: str, node_labels: dict[str, str], tolerations: list[dict[str, Any]] | None = None
                    ) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeLabels": dict(node_labels)}
    if tolerations:
        spec["tolerations"] = tolerations
    return {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": spec}


def cluster_queue(name: str, flavors: dict[str, dict[str, str]], *,
                  resources: tuple[str, ...] = ("cpu", "memory", "nvidia.com/gpu")) -> dict[str, Any]:
    """One resource group covering ``resources``; ``flavors`` maps a flavor to its nominal quotas."""
    return {
        "apiVersion": API, "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},  # every namespace
            "queueingStrategy": "BestEffortFIFO",
            "stopPolicy": "None",
            "flavorFungibility": {"whenCanBorrow": "MayStopSearch", "whenCanPreempt": "TryNextFlavor"},
            "preemption": {"withinClusterQueue": "Never", "reclaimWithinCohort": "Never",
                           "borrowWithinCohort": {"policy": "Never"}},
            "resourceGroups": [{
                "coveredResources": list(resources),
                "flavors": [{"name": flavor,
                             "resources": [{"name": r, "nominalQuota": quotas[r]} for r in resources]}
                            for flavor, quotas in flavors.items()],
            }],
        },
    }


def local_queue(name: str, namespace: str, cluster_queue_name: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "LocalQueue", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": cluster_queue_name, "stopPolicy": "None"}}
