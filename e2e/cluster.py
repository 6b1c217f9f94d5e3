"""A real local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
with KWOK playing the kubelets of the fake GPU nodes in e2e/nodes.yaml, and a real Prometheus server.

Library::

    cluster = Cluster.start(Path("/tmp/c"))          # blocks until every node is Ready
    cluster.kubectl("get", "nodes")
    cluster.stop()

Command line (from the repository root)::

    python -m e2e.cluster up [--dir DIR]     # leaves the cluster running, detached
    python -m e2e.cluster status [--dir DIR]
    python -m e2e.cluster down [--dir DIR]

Every process binds 127.0.0.1 only, runs in its own session (process group) and logs to
``DIR/logs/<component>.log``. Teardown signals only the process groups of the PIDs this module started
(recorded in ``DIR/state.json``), never processes found by name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent
BUILD_SH = E2E_DIR / "tools" / "build.sh"
NODES_YAML = E2E_DIR / "nodes.yaml"
STAGES_YAML = E2E_DIR / "kwok" / "stages.yaml"
DEFAULT_DIR = REPO_ROOT / ".e2e" / "cluster"
STATE_FILE = "state.json"
# kwok's stock stages copied by build.sh into <bin>/kwok-stages/; the pod-complete stage is ours.
STOCK_STAGES = ("node-initialize.yaml", "node-heartbeat-with-lease.yaml", "pod-ready.yaml", "pod-delete.yaml")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
POLL = 0.2
# Taints a node carries until the node lifecycle controller has seen it Ready.
_NOT_READY_TAINTS = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}


class ClusterError(RuntimeError):
    """The control plane (or Prometheus) could not be started, reached or stopped."""


class CommandError(subprocess.CalledProcessError):
    """kubectl or helm exited non-zero; ``str()`` shows the command and its stderr."""

    def __str__(self) -> str:
        cmd = " ".join(str(c) for c in self.cmd)
        return f"{cmd!r} exited {self.returncode}:\n{self.stderr or ''}{self.output or ''}".rstrip()


# --------------------------------------------------------------------------------------------------------
# Binaries, ports, processes


def locate_binaries(*, build: bool = True) -> Path:
    """The folder holding kube-apiserver, kubectl, helm, etcd, kwok (and kwok-stages/).

    ``$AITASK_E2E_BIN`` wins; otherwise e2e/tools/build.sh is run: a no-op printing the folder when the
    binaries are cached, a cold build (tens of minutes on 2 cores, progress on stderr) when not.
    """
    override = os.environ.get("AITASK_E2E_BIN")
    if override:
        path = Path(override)
    else:
        if not build:
            raise ClusterError("AITASK_E2E_BIN is not set and build=False")
        proc = subprocess.run(["bash", str(BUILD_SH)], stdout=subprocess.PIPE, text=True, check=False)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise ClusterError(f"{BUILD_SH} failed (exit {proc.returncode}); see its stderr above")
        path = Path(lines[-1])
    missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
                           "kwok", "helm") if not os.access(path / b, os.X_OK)]
    if missing:
        raise ClusterError(f"{path} lacks {', '.join(missing)}; run: bash e2e/tools/build.sh")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    """A process this module started, in its own process group (pgid == pid)."""

    name: str
    pid: int
    exe: str
    log: str
    argv: list[str] = field(default_factory=list)  # what it was started with, for restart_component
    detached: bool = False


def _pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _is_ours(proc: Proc) -> bool:
    """Guards against PID reuse: the PID must still run our binary and lead its own process group."""
    if not _pid_running(proc.pid):
        return False
    try:
        argv0 = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        return argv0 == proc.exe and os.getpgid(proc.pid) == proc.pid
    except (OSError, UnicodeDecodeError):
        return False


def _spawn(name: str, argv: Sequence[str], log_dir: Path, popens: dict[int, subprocess.Popen[bytes]], *,
           detached: bool = False) -> Proc:
    """Starts ``argv`` in a new session, logging to ``log_dir/<name>.log``. Unless ``detached``, the process
    gets SIGTERM when its parent dies (``setpriv --pdeathsig``, util-linux), so a killed pytest run
    leaves no control plane behind; the PID stays the same because setpriv execs the binary."""
    log_path = log_dir / f"{name}.log"
    setpriv = shutil.which("setpriv")
    command = list(argv) if detached or not setpriv else [setpriv, "--pdeathsig", "TERM", "--", *argv]
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    popens[popen.pid] = popen
    return Proc(name=name, pid=popen.pid, exe=str(argv[0]), log=str(log_path), argv=[str(a) for a in argv],
                detached=detached)


def _signal_groups(procs: Sequence[Proc], sig: signal.Signals) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)


def _wait_gone(procs: Sequence[Proc], timeout: float,
               popens: Mapping[int, subprocess.Popen[bytes]]) -> list[Proc]:
    """Waits up to ``timeout`` s for ``procs`` to exit (reaping our own children); returns the survivors."""
    deadline = time.monotonic() + timeout
    live = list(procs)
    while True:
        for p in live:
            if p.pid in popens:
                popens[p.pid].poll()
        live = [p for p in live if _pid_running(p.pid)]
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.05)


def stop_processes(procs: Sequence[Proc], *, timeout: float = 10.0,
                   popens: Mapping[int, subprocess.Popen[bytes]] | None = None) -> list[str]:
    """SIGTERM the process group of each of ``procs`` that is still ours (see _is_ours), SIGKILL the groups
    still alive after ``timeout`` seconds. Returns the names that needed SIGKILL."""
    popens = popens or {}
    live = [p for p in procs if _is_ours(p)]
    _signal_groups(live, signal.SIGTERM)
    live = _wait_gone(live, timeout, popens)
    killed = [p.name for p in live]
    if live:
        _signal_groups(live, signal.SIGKILL)
        live = _wait_gone(live, 5.0, popens)
        if live:
            raise ClusterError(f"could not stop {[(p.name, p.pid) for p in live]}")
    return killed


def tail(path: Path | str, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' if absent)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200 * lines - 4096))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def poll_until(what: str, check: Callable[[], bool], deadline: float, *,
               on_timeout: Callable[[], str] = lambda: "") -> None:
    """Polls ``check`` every 0.2 s until it is true; ClusterError at ``deadline`` (time.monotonic())."""
    while not check():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for {what}\n{on_timeout()}".rstrip())
        time.sleep(POLL)


def _http_ok(url: str, *, context: ssl.SSLContext | None = None, token: str | None = None) -> bool:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, context=context, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _decode(raw: bytes) -> Any:
    """JSON when it parses (the API's objects), else text (/readyz says "ok")."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _component_args(api_qps: int | None,
                    extra_args: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """Extra flags per component: the client rate limits of KCM and scheduler, then ``extra_args``."""
    known = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    unknown = set(extra_args or {}) - known
    if unknown:
        raise ClusterError(f"extra_args for unknown components {sorted(unknown)}; known: {sorted(known)}")
    out: dict[str, list[str]] = {name: [] for name in known}
    if api_qps is not None:
        for name in ("kube-controller-manager", "kube-scheduler"):
            out[name] += [f"--kube-api-qps={api_qps}", f"--kube-api-burst={2 * api_qps}"]
    for name, args in (extra_args or {}).items():
        out[name] += list(args)
    return out


def cpu_nodes_yaml(count: int, *, cpu: int = 64, memory_gib: int = 256, pods: int = 1000,
                   prefix: str = "cpu-scale") -> str:
    """``count`` fake CPU nodes (``aitask.dev/pool: cpu``, the pool of the ``cpu`` ExecutorClass) of
    ``cpu`` cores, ``memory_gib`` GiB and room for ``pods`` pods each, spread over three zones, as a
    manifest for ``Cluster.start(nodes=...)``: for scale runs where e2e/nodes.yaml's three CPU nodes
    (110 pods each) would be the limit."""
    docs = []
    for i in range(count):
        name = f"{prefix}-{i}"
        resources = {"cpu": str(cpu), "memory": f"{memory_gib}Gi", "ephemeral-storage": "500Gi", "pods": str(pods)}
        docs.append({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "c7i.16xlarge",
                           "topology.kubernetes.io/region": "us-east-1",
                           "topology.kubernetes.io/zone": f"us-east-1{'abc'[i % 3]}", "aitask.dev/pool": "cpu"},
            },
            "status": {"capacity": resources, "allocatable": resources,
                       "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake",
                                    "kubeProxyVersion": "fake", "containerRuntimeVersion": "kwok",
                                    "osImage": "kwok", "kernelVersion": "", "machineID": "", "systemUUID": "",
                                    "bootID": ""}},
        })
    return yaml.safe_dump_all(docs, sort_keys=False)


# --------------------------------------------------------------------------------------------------------
# PKI and kubeconfigs


def _write_pki(pki: Path) -> str:
    """CA, apiserver serving cert, service-account key and a token file; returns the admin token."""
    import trustme  # dev dependency, only needed to start a cluster
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pki.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="aitask-e2e")
    ca.cert_pem.write_to_path(str(pki / "ca.pem"))
    ca.private_key_pem.write_to_path(str(pki / "ca-key.pem"))
    srv = ca.issue_cert("127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
                        "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1",
                        common_name="kube-apiserver")
    srv.cert_chain_pems[0].write_to_path(str(pki / "apiserver.pem"))
    srv.private_key_pem.write_to_path(str(pki / "apiserver-key.pem"))
    # Front-proxy (request-header) CA: without it every delegating component (KCM, scheduler) logs
    # "missing content for CA bundle ... requestheader-client-ca-file" forever; it also makes
    # aggregated API servers possible.
    proxy_ca = trustme.CA(organization_name="aitask-e2e-front-proxy")
    proxy_ca.cert_pem.write_to_path(str(pki / "front-proxy-ca.pem"))
    proxy = proxy_ca.issue_cert("front-proxy-client", common_name="front-proxy-client")
    proxy.cert_chain_pems[0].write_to_path(str(pki / "front-proxy-client.pem"))
    proxy.private_key_pem.write_to_path(str(pki / "front-proxy-client-key.pem"))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(sa_key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    tokens = {name: secrets.token_hex(16) for name in ("admin", "kcm", "scheduler")}
    (pki / "tokens.csv").write_text(
        f'{tokens["admin"]},admin,admin-uid,"system:masters"\n'
        f"{tokens['kcm']},system:kube-controller-manager,kcm-uid\n"
        f"{tokens['scheduler']},system:kube-scheduler,scheduler-uid\n")
    for f in pki.iterdir():
        f.chmod(0o600)
    (pki / "kcm.token").write_text(tokens["kcm"])
    (pki / "scheduler.token").write_text(tokens["scheduler"])
    return tokens["admin"]


def kubeconfig_text(server: str, ca_file: Path, token: str, user: str = "admin") -> str:
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "aitask-e2e",
                      "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "aitask-e2e", "context": {"cluster": "aitask-e2e", "user": user}}],
        "current-context": "aitask-e2e",
    }, sort_keys=False)


# --------------------------------------------------------------------------------------------------------
# The cluster


@dataclass
class Cluster:
    """A running local control plane. Create with :meth:`start` (or :meth:`attach` to one left by ``up``)."""

    dir: Path
    bin_dir: Path
    kubeconfig: Path
    server: str
    token: str
    ports: dict[str, int]
    procs: list[Proc]
    node_names: list[str]
    startup_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    detached: bool = False
    _popens: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    # ---- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    def start(cls, dir: Path | str | None = None, *, nodes: Path | str = NODES_YAML,
              stages: Sequence[Path | str] = (STAGES_YAML,), bin_dir: Path | None = None,
              timeout: float = 180.0, detached: bool = False, api_qps: int | None = None,
              extra_args: Mapping[str, Sequence[str]] | None = None) -> Cluster:
        """Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok in ``dir`` (a new
        temporary folder when None), creates the nodes of ``nodes`` and returns once every one of them is
        Ready and untainted by the node lifecycle controller and ``default/default`` ServiceAccount exists.
        On failure everything started is stopped and ClusterError carries the component log tails.

        The components die with the calling thread's process unless ``detached`` (what ``up`` uses).

        For scale runs: ``api_qps`` raises the client rate limits of kube-controller-manager and
        kube-scheduler (``--kube-api-qps=api_qps --kube-api-burst=2*api_qps``; their defaults are 20/30
        and 50/100, which cap the Job controller at ~20 requests/s); ``extra_args`` maps a component
        name (``etcd``, ``kube-apiserver``, ``kube-controller-manager``, ``kube-scheduler``, ``kwok``)
        to more command-line flags, appended last. Neither changes anything when left at None."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        root = Path(tempfile.mkdtemp(prefix="aitask-e2e-")) if dir is None else Path(dir).resolve()
        root.mkdir(parents=True, exist_ok=True)
        if (root / STATE_FILE).exists() or (root / "run").exists():
            raise ClusterError(f"{root} was already used by a cluster; stop it (python -m e2e.cluster down "
                               f"--dir {root}) or use an empty folder")
        bins = bin_dir or locate_binaries()
        logs, pki, run = root / "logs", root / "pki", root / "run"
        for d in (logs, run):
            d.mkdir(parents=True, exist_ok=True)
        names = ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
        ports = {name: free_port() for name in names}
        server = f"https://127.0.0.1:{ports['kube-apiserver']}"
        node_docs = [d for d in yaml.safe_load_all(Path(nodes).read_text()) if d]
        cluster = cls(dir=root, bin_dir=bins, kubeconfig=root / "kubeconfig", server=server, token="",
                      ports=ports, procs=[], node_names=[d["metadata"]["name"] for d in node_docs],
                      detached=detached)
        try:
            cluster._boot(Path(nodes), [Path(s) for s in stages], pki, logs, run, t0, deadline,
                          _component_args(api_qps, extra_args))
        except BaseException as exc:
            report = cluster.logs()
            stop_processes(cluster.procs, timeout=5, popens=cluster._popens)
            with contextlib.suppress(OSError):
                (root / STATE_FILE).rename(root / "state.failed.json")
            if isinstance(exc, ClusterError):
                raise ClusterError(f"{exc}\n\ncomponent logs ({logs}):\n{report}") from None
            raise
        return cluster

    def _boot(self, nodes: Path, stages: list[Path], pki: Path, logs: Path, run: Path, t0: float,
              deadline: float, more: Mapping[str, Sequence[str]] | None = None) -> None:
        b, p = self.bin_dir, self.ports
        more = more or {}

        def mark(what: str) -> None:
            self.timings[what] = round(time.monotonic() - t0, 2)

        etcd_url = f"http://127.0.0.1:{p['etcd']}"
        peer_url = f"http://127.0.0.1:{p['etcd-peer']}"
        self._add(_spawn("etcd", [
            str(b / "etcd"), "--name=e2e", f"--data-dir={run / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=e2e={peer_url}", "--unsafe-no-fsync=true", "--log-level=warn",
            "--quota-backend-bytes=8589934592", "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=5m", *more.get("etcd", ()),
        ], logs, self._popens, detached=self.detached))
        self.token = _write_pki(pki)  # overlaps with etcd's start
        ca = pki / "ca.pem"
        self.kubeconfig.write_text(kubeconfig_text(self.server, ca, self.token))
        self.kubeconfig.chmod(0o600)
        kcm_kc, sched_kc = run / "kube-controller-manager.kubeconfig", run / "kube-scheduler.kubeconfig"
        kcm_kc.write_text(kubeconfig_text(self.server, ca, (pki / "kcm.token").read_text(),
                                          "system:kube-controller-manager"))
        sched_kc.write_text(kubeconfig_text(self.server, ca, (pki / "scheduler.token").read_text(),
                                            "system:kube-scheduler"))
        poll_until("etcd /health", lambda: _http_ok(f"{etcd_url}/health"), deadline,
                   on_timeout=lambda: tail(logs / "etcd.log"))
        mark("etcd")

        self._add(_spawn("kube-apiserver", [
            str(b / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={p['kube-apiserver']}",
            f"--cert-dir={run / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.pem'}", f"--tls-private-key-file={pki / 'apiserver-key.pem'}",
            f"--client-ca-file={ca}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.key'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
            "--endpoint-reconciler-type=none", "--profiling=false",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.pem'}",
            "--requestheader-allowed-names=front-proxy-client", "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.pem'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client-key.pem'}",
            *more.get("kube-apiserver", ()),
        ], logs, self._popens, detached=self.detached))
        ctx = ssl.create_default_context(cafile=str(ca))
        poll_until("kube-apiserver /readyz",
                   lambda: _http_ok(f"{self.server}/readyz", context=ctx, token=self.token), deadline,
                   on_timeout=lambda: tail(logs / "kube-apiserver.log"))
        mark("kube-apiserver")

        # Everything else starts together once the API server answers.
        common = ["--bind-address=127.0.0.1", "--leader-elect=false",
                  "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"]
        self._add(_spawn("kube-controller-manager", [
            str(b / "kube-controller-manager"), *common, f"--secure-port={p['kube-controller-manager']}",
            f"--kubeconfig={kcm_kc}", f"--authentication-kubeconfig={kcm_kc}",
            f"--authorization-kubeconfig={kcm_kc}", f"--cert-dir={run / 'kcm-certs'}",
            "--controllers=*", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={ca}",
            f"--cluster-signing-cert-file={ca}", f"--cluster-signing-key-file={pki / 'ca-key.pem'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", *more.get("kube-controller-manager", ()),
        ], logs, self._popens, detached=self.detached))
        self._add(_spawn("kube-scheduler", [
            str(b / "kube-scheduler"), *common, f"--secure-port={p['kube-scheduler']}",
            f"--kubeconfig={sched_kc}", f"--authentication-kubeconfig={sched_kc}",
            f"--authorization-kubeconfig={sched_kc}", f"--cert-dir={run / 'scheduler-certs'}",
            *more.get("kube-scheduler", ()),
        ], logs, self._popens, detached=self.detached))
        stage_files = [b / "kwok-stages" / s for s in STOCK_STAGES] + stages
        self._add(_spawn("kwok", [
            str(b / "kwok"), f"--kubeconfig={self.kubeconfig}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40", f"--cidr={POD_CIDR}", "--node-ip=10.255.0.1",
            *[f"--config={f}" for f in stage_files], *more.get("kwok", ()),
        ], logs, self._popens, detached=self.detached))
        self.kubectl("create", "-f", str(nodes))

        insecure = _insecure_context()
        for comp in ("kube-controller-manager", "kube-scheduler"):
            url = f"https://127.0.0.1:{p[comp]}/healthz"
            log = logs / f"{comp}.log"
            poll_until(f"{comp} /healthz", partial(_http_ok, url, context=insecure), deadline,
                       on_timeout=partial(tail, log))
            mark(comp)
        poll_until(f"{len(self.node_names)} nodes Ready", self._nodes_ready, deadline,
                   on_timeout=self._node_report)
        mark("nodes-ready")
        sa_path = "/api/v1/namespaces/default/serviceaccounts/default"
        poll_until("ServiceAccount default/default", lambda: self.api_status("GET", sa_path) == 200, deadline)
        mark("default-serviceaccount")
        self.startup_seconds = round(time.monotonic() - t0, 2)
        self.save()

    def _add(self, proc: Proc) -> None:
        self.procs.append(proc)
        self.save()  # keep the state file current so `down` can clean up even a half-started cluster

    @classmethod
    def attach(cls, dir: Path | str = DEFAULT_DIR) -> Cluster:
        """The cluster described by ``dir/state.json`` (left running by ``python -m e2e.cluster up``)."""
        root = Path(dir).resolve()
        try:
            state = json.loads((root / STATE_FILE).read_text())
        except FileNotFoundError:
            raise ClusterError(f"no cluster state in {root}") from None
        return cls(dir=root, bin_dir=Path(state["bin_dir"]), kubeconfig=Path(state["kubeconfig"]),
                   server=state["server"], token=state["token"], ports=state["ports"],
                   procs=[Proc(**p) for p in state["procs"]], node_names=state["node_names"],
                   startup_seconds=state.get("startup_seconds", 0.0), timings=state.get("timings", {}))

    def save(self) -> None:
        state = {"dir": str(self.dir), "bin_dir": str(self.bin_dir), "kubeconfig": str(self.kubeconfig),
                 "server": self.server, "token": self.token, "ports": self.ports,
                 "procs": [asdict(p) for p in self.procs], "node_names": self.node_names,
                 "startup_seconds": self.startup_seconds, "timings": self.timings}
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.dir / STATE_FILE)

    def stop(self, *, timeout: float = 10.0, remove: bool = False) -> list[str]:
        """Stops the components (kwok, scheduler, controller manager, then the API server, then etcd) by
        their process groups; returns the names that needed SIGKILL. ``remove`` also deletes ``dir``."""
        order = [["kwok", "kube-scheduler", "kube-controller-manager"], ["kube-apiserver"], ["etcd"]]
        killed: list[str] = []
        for names in order:
            killed += stop_processes([p for p in self.procs if p.name in names], timeout=timeout,
                                     popens=self._popens)
        killed += stop_processes(self.procs, timeout=timeout, popens=self._popens)  # anything not in `order`
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif (self.dir / STATE_FILE).exists():
            (self.dir / STATE_FILE).rename(self.dir / "state.stopped.json")
        return killed

    def running(self) -> dict[str, bool]:
        """Component name -> whether its process is alive."""
        return {p.name: _is_ours(p) for p in self.procs}

    # ---- faults (chaos suites) ------------------------------------------------------------------------

    def kill_component(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Sends ``sig`` (default SIGKILL, a crash) to the process group of component ``name`` (one we
        started, checked by _is_ours) and waits until it is gone."""
        proc = next(p for p in self.procs if p.name == name)
        if _is_ours(proc):
            _signal_groups([proc], sig)
            if _wait_gone([proc], 15.0, self._popens):
                raise ClusterError(f"{name} (pid {proc.pid}) survived {sig.name}")

    def start_component(self, name: str) -> None:
        """Starts component ``name`` again with the arguments, log and ports it had (a restart after
        kill_component); the state file records the new PID."""
        index = next(i for i, p in enumerate(self.procs) if p.name == name)
        old = self.procs[index]
        if not old.argv:
            raise ClusterError(f"{name} was started without a recorded command line; cannot restart it")
        if _is_ours(old):
            raise ClusterError(f"{name} (pid {old.pid}) is still running")
        self.procs[index] = _spawn(name, old.argv, Path(old.log).parent, self._popens, detached=old.detached)
        self.save()

    def restart_apiserver(self, down_seconds: float = 0.0, *, timeout: float = 120.0) -> float:
        """SIGKILLs kube-apiserver, keeps it down ``down_seconds``, starts it again on the same port and
        waits for ``/readyz``; returns the seconds from the start to ready. etcd keeps the state, so
        every client (KCM, scheduler, kwok, the operator) sees an outage, not a new cluster."""
        self.kill_component("kube-apiserver")
        time.sleep(down_seconds)
        t0 = time.monotonic()
        self.start_component("kube-apiserver")
        poll_until("kube-apiserver /readyz after a restart", self.readyz, t0 + timeout,
                   on_timeout=lambda: tail(self.dir / "logs" / "kube-apiserver.log"))
        return time.monotonic() - t0

    # ---- talking to it --------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, PATH (bin_dir first) and cache folders for kubectl/helm in ``dir``."""
        env = dict(os.environ)
        env.update({
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "KUBECACHEDIR": str(self.dir / "cache" / "kube"),
            "HELM_CACHE_HOME": str(self.dir / "cache" / "helm"),
            "HELM_CONFIG_HOME": str(self.dir / "config" / "helm"),
            "HELM_DATA_HOME": str(self.dir / "data" / "helm"),
        })
        return env

    def _run(self, tool: str, args: Sequence[str], input: str | None, check: bool,
             timeout: float) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / tool), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                              env=self.env(), check=False)
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Runs the built kubectl against this cluster; CommandError on a non-zero exit when ``check``."""
        return self._run("kubectl", args, input, check, timeout)

    def kubectl_json(self, *args: str, timeout: float = 60.0) -> Any:
        """``kubectl ARGS -o json``, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)

    def apply(self, manifest: str | Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
              namespace: str | None = None) -> None:
        """``kubectl apply`` of YAML text, one object or a list of objects (server-side apply)."""
        if isinstance(manifest, str):
            text = manifest
        elif isinstance(manifest, Mapping):
            text = json.dumps(manifest)
        else:
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifest)})
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", "--server-side", "--field-manager=e2e", *ns, "-f", "-", input=text)

    def helm(self, *args: str, check: bool = True,
             timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Runs the built helm (v3) against this cluster."""
        return self._run("helm", args, None, check, timeout)

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this cluster (admin token)."""
        from kubernetes import config  # imported lazily: only suites that want the Python client pay for it

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """A raw API request as admin (JSON in, JSON out); ClusterError on an HTTP error."""
        status, data = self._request(method, path, body)
        if status >= 400:
            raise ClusterError(f"{method} {path}: HTTP {status}: {data}")
        return data

    def api_status(self, method: str, path: str, body: Any = None) -> int:
        """The HTTP status of a raw API request (0 when unreachable)."""
        return self._request(method, path, body)[0]

    def api_response(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A raw API request as admin: (HTTP status, decoded body); status 0 when unreachable."""
        return self._request(method, path, body)

    def _request(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        ctx = ssl.create_default_context(cafile=str(self.dir / "pki" / "ca.pem"))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, _decode(err.read())
        except (OSError, urllib.error.URLError) as err:
            return 0, str(err)

    def readyz(self) -> bool:
        return self.api_status("GET", "/readyz") == 200

    # ---- nodes and diagnostics ------------------------------------------------------------------------

    def node_states(self) -> dict[str, str]:
        """Node name -> 'Ready', 'Ready,tainted-not-ready' or 'NotReady' for the nodes that exist."""
        status, data = self._request("GET", "/api/v1/nodes", None)
        if status != 200:
            return {}
        out: dict[str, str] = {}
        for node in data["items"]:
            conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            state = "Ready" if conds.get("Ready") == "True" else "NotReady"
            if any(t["key"] in _NOT_READY_TAINTS for t in node.get("spec", {}).get("taints") or []):
                state += ",tainted-not-ready"
            out[node["metadata"]["name"]] = state
        return out

    def _nodes_ready(self) -> bool:
        states = self.node_states()
        return all(states.get(n) == "Ready" for n in self.node_names)

    def _node_report(self) -> str:
        states = self.node_states()
        return "node states: " + ", ".join(f"{n}={states.get(n, 'absent')}" for n in self.node_names)

    def logs(self, lines: int = 40) -> str:
        """The tail of every component's log, for failure reports."""
        parts = []
        for p in self.procs:
            state = "running" if _is_ours(p) else "NOT RUNNING"
            parts.append(f"===== {p.name} (pid {p.pid}, {state}) {p.log} =====\n{tail(p.log, lines)}")
        return "\n".join(parts)

    def usage(self) -> str:
        return (f"  export KUBECONFIG={self.kubeconfig}\n"
                f"  export PATH={self.bin_dir}:$PATH      # kubectl, helm of the pinned versions\n"
                f"  kubectl get nodes -L nvidia.com/gpu.product,aitask.dev/pool\n"
                f"  python -m e2e.cluster down --dir {self.dir}")


# --------------------------------------------------------------------------------------------------------
# Prometheus


def prometheus_config(jobs: Mapping[str, Sequence[str]], *, interval: str = "1s") -> str:
    """A Prometheus config scraping each job's ``host:port`` targets every ``interval``."""
    return yaml.safe_dump({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}
                           for job, targets in jobs.items()],
    }, sort_keys=False)


class Prometheus:
    """The real Prometheus server (Debian package) on 127.0.0.1, with a config the caller controls.

    ``Prometheus(dir, config_text).start()``; ``stop()`` and ``start()`` again keep the port (so the URL)
    and the TSDB in ``dir``, like a server restart. ``{port}`` in the config text is replaced by the port,
    so a config can scrape the server itself.
    """

    def __init__(self, dir: Path | str, config_text: str, *, port: int | None = None,
                 binary: Path | str | None = None) -> None:
        self.dir = Path(dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        found = (binary or os.environ.get("AITASK_PROMETHEUS") or shutil.which("prometheus")
                 or "/usr/bin/prometheus")
        self.binary = Path(found)
        if not os.access(self.binary, os.X_OK):
            raise ClusterError(f"no prometheus binary at {self.binary}; install it with "
                               "`apt-get install -y --no-install-recommends prometheus`")
        self.config_file = self.dir / "prometheus.yml"
        self.log = self.dir / "prometheus.log"
        self._write_config(config_text)
        self.proc: Proc | None = None
        self._popens: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self, config_text: str) -> None:
        self.config_file.write_text(config_text.replace("{port}", str(self.port)))

    def start(self, *, timeout: float = 60.0) -> Prometheus:
        """Starts the server (no-op when running) and waits for ``/-/ready``."""
        if self.proc is not None and _is_ours(self.proc):
            return self
        self.proc = _spawn("prometheus", [
            str(self.binary), f"--config.file={self.config_file}", f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d", "--log.level=info",
        ], self.dir, self._popens)
        poll_until("prometheus /-/ready", lambda: self._ready_or_dead(), time.monotonic() + timeout,
                   on_timeout=lambda: tail(self.log))
        if not _is_ours(self.proc):
            raise ClusterError(f"prometheus exited during start:\n{tail(self.log)}")
        return self

    def _ready_or_dead(self) -> bool:
        assert self.proc is not None
        return _http_ok(f"{self.url}/-/ready") or not _pid_running(self.proc.pid)

    def stop(self, *, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_processes([self.proc], timeout=timeout, popens=self._popens)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and _is_ours(self.proc)

    def reload(self, config_text: str) -> None:
        """Writes a new config and POSTs ``/-/reload``; ClusterError (and the old file back) when Prometheus
        rejects it."""
        previous = self.config_file.read_text()
        self._write_config(config_text)
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST", data=b"")
        try:
            with urllib.request.urlopen(req, timeout=30):
                pass
        except urllib.error.HTTPError as err:
            self.config_file.write_text(previous)  # a later start() must not trip over the bad config
            detail = err.read().decode(errors="replace")
            raise ClusterError(f"prometheus rejected the config: {detail}") from err

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; returns ``data``; ClusterError unless status is success."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise ClusterError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the ``result`` list (each item has ``metric`` and ``value`` = [ts, "str"])."""
        data = self.api("query", query=promql)
        result: list[dict[str, Any]] = data["result"] if isinstance(data["result"], list) else [data]
        return result

    def logs(self, lines: int = 40) -> str:
        return tail(self.log, lines)


# --------------------------------------------------------------------------------------------------------
# Command line


def _leftovers(root: Path) -> bool:
    """``root`` holds what a stopped or failed cluster of this module left (and nothing runs there)."""
    return (root / "logs").is_dir() and any(root.glob("state*.json"))


def _cmd_up(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    if (root / STATE_FILE).exists() and any(Cluster.attach(root).running().values()):
        print(f"a cluster is already up in {root}:\n{Cluster.attach(root).usage()}")
        return 1
    if root.exists() and any(root.iterdir()):
        if not _leftovers(root):
            print(f"{root} exists and is not a cluster folder; remove it or pick another --dir", file=sys.stderr)
            return 2
        shutil.rmtree(root)
    print(f"starting the control plane in {root} ...", flush=True)
    try:
        nodes = args.nodes
        if args.cpu_nodes:
            root.mkdir(parents=True, exist_ok=True)
            nodes = root / "nodes-cpu-scale.yaml"
            nodes.write_text(cpu_nodes_yaml(args.cpu_nodes))
        cluster = Cluster.start(root, nodes=nodes, timeout=args.timeout, detached=True, api_qps=args.api_qps)
    except ClusterError as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    timings = ", ".join(f"{k} {v}s" for k, v in cluster.timings.items())
    print(f"up in {cluster.startup_seconds:.1f} s ({len(cluster.node_names)} nodes Ready; {timings})")
    print(f"API server {cluster.server}; logs in {root / 'logs'}\n{cluster.usage()}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    try:
        cluster = Cluster.attach(root)
    except ClusterError:
        if _leftovers(root):
            shutil.rmtree(root)
            print(f"nothing was running; removed the leftovers in {root}")
        else:
            print(f"no cluster in {root}")
        return 0
    killed = cluster.stop(remove=True)
    extra = f" (SIGKILL needed for {killed})" if killed else ""
    # The components were orphaned when `up` exited, so init reaps them; wait for that (about 1 s here)
    # so that no zombie entry is left when this command returns.
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{p.pid}").exists() for p in cluster.procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    zombies = [p.pid for p in cluster.procs if Path(f"/proc/{p.pid}").exists()]
    if zombies:
        extra += f"; exited but not yet reaped by init: {zombies}"
    print(f"stopped {len(cluster.procs)} processes{extra} and removed {root}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    try:
        cluster = Cluster.attach(root)
    except ClusterError:
        print(f"no cluster in {root}")
        return 3
    running = cluster.running()
    for p in cluster.procs:
        print(f"  {p.name:<25} pid {p.pid:<8} {'running' if running[p.name] else 'NOT RUNNING'}")
    ready = cluster.readyz() if running.get("kube-apiserver") else False
    print(f"  API server {cluster.server}: {'ready' if ready else 'NOT READY'}")
    if ready:
        states = cluster.node_states()
        n_ready = sum(1 for s in states.values() if s == "Ready")
        print(f"  nodes: {n_ready}/{len(states)} Ready")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    return 0 if ready and all(running.values()) else 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("up", "start a detached control plane"), ("down", "stop it and remove its folder"),
                        ("status", "show what runs")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--dir", default=str(DEFAULT_DIR), help=f"state folder (default {DEFAULT_DIR})")
        if name == "up":
            p.add_argument("--nodes", default=str(NODES_YAML), help="Node manifests (default e2e/nodes.yaml)")
            p.add_argument("--timeout", type=float, default=180.0, help="start-up deadline, seconds")
            p.add_argument("--cpu-nodes", type=int, default=0,
                           help="instead of --nodes: this many generated 64-core CPU nodes (scale runs)")
            p.add_argument("--api-qps", type=int, default=None,
                           help="raise KCM/scheduler --kube-api-qps (burst twice it), e.g. 500 for scale runs")
    args = parser.parse_args(argv)
    handler = {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
