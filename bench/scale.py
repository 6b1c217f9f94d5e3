"""Benchmark 5 (issue 9): the operator at cluster scale, on the local control plane.

Starts a control plane (e2e/cluster.py: real etcd, kube-apiserver, kube-controller-manager,
kube-scheduler; KWOK playing the kubelets of ``--nodes`` generated 64-core CPU nodes, so node capacity
is never the limit; KCM and scheduler with ``--kube-api-qps`` raised, since the Job controller's
default 20 requests/s would cap completions), runs the operator as a child process (e2e/operator.py,
the operator's default settings, INFO logs) on one namespace, and measures in ONE run:

1. burst: N plain Jobs created directly vs N one-step CPU AITasks until all N child Jobs exist, with the
   same client (keep-alive HTTPS, one connection per thread), the same concurrency, and the same
   namespace setup (two namespaces created alike; the operator runs during both);
2. create -> Job latency p50/p99 at steady rates (client-side monotonic clock: the create call's
   return, and the Job's ADDED event on a watch);
3. operator RSS (VmRSS of its Python process) with 1,000 / 5,000 / 10,000 finished AITasks present,
   created in batches of ``--fill-batch``, each finished before the next;
4. writes per AITask by resource and verb: exactly, from an API server audit log (writes only,
   attributed by user and user agent: the operator runs as the harness's admin user, as do kwok and
   this script, which differ by user agent), and from ``apiserver_request_total`` before/after (that
   metric has no user label, so the plain-Job burst is the baseline subtracted from the AITask burst);
5. idle: writes and operator CPU (utime+stime) over ``--idle-seconds`` with every AITask finished;
6. restart: SIGKILL and restart with all AITasks present: time to the first cycle (operator /metrics
   cycle count, and the log's ``cycle (`` line), time until a new AITask gets its Job, and what
   ``/readyz`` and ``/healthz`` answered meanwhile;
7. cycle duration against N: from the operator's cycle histogram, around a small probe burst at each
   population size;
8. killburst: a burst of ``--kill-burst`` AITasks, the operator SIGKILLed once half of them have their
   Job and started again: every AITask must finish with exactly one Job and one attempt.

Run (not part of ``make test``)::

    .venv/bin/python bench/scale.py --small            # ~10 min on 2 busy cores: 200-burst, 500/1,000
    .venv/bin/python bench/scale.py                    # the issue's sizes: 1,000-burst, 1k/5k/10k
    .venv/bin/python bench/scale.py --json out.json --burst 500 --populations 2000,5000

Prints one table; ``--json PATH`` writes every figure (and the raw deltas). Everything is measured,
nothing is hard-coded; the machine (nproc, memory, load) is part of the output. Exit 0 when the run
completed (whatever the figures), 1 when a phase failed or timed out (its figures are then partial).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import re
import shutil
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from e2e.cluster import Cluster, cpu_nodes_yaml  # noqa: E402
from e2e.operator import Operator  # noqa: E402

USER_AGENT = "aitask-bench-scale/1"
CLASSES = REPO / "manifests" / "samples" / "executorclasses.yaml"
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}
AUDIT_WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
FINISHED = ("Succeeded", "Failed", "Invalid")
CYCLE_HISTOGRAMS = ("aitask_scheduling_cycle_seconds", "aitask_cycle_duration_seconds")
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEARTBEATS = {"leases", "nodes/status"}
# Writes only; the control plane's own identities (KCM controllers act as service accounts) are left out
# so the log stays small: what remains is the admin user (operator, kwok, this script, kubectl).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "verbs": ["get", "list", "watch"]},
        {"level": "None", "userGroups": ["system:serviceaccounts", "system:nodes"]},
        {"level": "None", "users": ["system:kube-scheduler", "system:kube-controller-manager"]},
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {"level": "Metadata"},
    ],
}


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class PhaseFailed(RuntimeError):
    """A phase could not complete within its time bound."""


# --------------------------------------------------------------------------------------------------------
# A small keep-alive API client (one HTTPS connection per thread), the same for every workload


class Api:
    def __init__(self, cluster: Cluster) -> None:
        url = cluster.server.removeprefix("https://")
        self.host, port = url.rsplit(":", 1)
        self.port = int(port)
        self.ctx = ssl.create_default_context(cafile=str(cluster.dir / "pki" / "ca.pem"))
        self.headers = {"Authorization": f"Bearer {cluster.token}", "User-Agent": USER_AGENT,
                        "Accept": "application/json", "Content-Type": "application/json"}
        self._local = threading.local()

    def _conn(self, fresh: bool = False) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=60)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body: Any = None, *, text: bool = False) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):
            conn = self._conn(fresh=attempt == 1)
            try:
                conn.request(method, path, body=data, headers=self.headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException):
                if attempt == 1:
                    raise
        if text:
            return resp.status, raw.decode(errors="replace")
        return resp.status, (json.loads(raw) if raw else None)

    def list_all(self, path: str, limit: int = 500) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            sep = "&" if "?" in path else "?"
            status, data = self.request("GET", f"{path}{sep}limit={limit}" + (f"&continue={cont}" if cont else ""))
            if status != 200:
                raise PhaseFailed(f"GET {path}: HTTP {status}: {str(data)[:300]}")
            items += data.get("items") or []
            cont = (data.get("metadata") or {}).get("continue") or ""
            if not cont:
                return items

    def watch(self, path: str, resource_version: str, stop: threading.Event) -> Iterator[dict[str, Any]]:
        """Watch events of ``path`` from ``resource_version`` (its own connection) until ``stop``."""
        # The server ends the watch after timeoutSeconds (and sends bookmarks meanwhile), so a socket
        # timeout above it only catches a dead connection; after one the caller relists.
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=660)
        sep = "&" if "?" in path else "?"
        conn.request("GET", f"{path}{sep}watch=1&allowWatchBookmarks=true&timeoutSeconds=600"
                     f"&resourceVersion={resource_version}", headers=self.headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise PhaseFailed(f"watch {path}: HTTP {resp.status}")
        try:
            while not stop.is_set():
                line = resp.readline()
                if not line:
                    return
                yield json.loads(line)
        finally:
            conn.close()


class JobWatch(threading.Thread):
    """Records when each Job of a namespace was first seen (ADDED), keyed by its owning AITask."""

    def __init__(self, api: Api, namespace: str) -> None:
        super().__init__(daemon=True, name=f"jobwatch-{namespace}")
        self.api, self.namespace = api, namespace
        self.stop_event = threading.Event()
        self.lock = threading.Condition()
        self.first_job: dict[str, float] = {}  # owner AITask name -> monotonic time of its first Job
        self.jobs_per_owner: Counter[str] = Counter()
        self.seen: set[str] = set()
        self.errors: list[str] = []
        self.ready = threading.Event()

    def _record(self, job: dict[str, Any], at: float) -> None:
        meta = job.get("metadata") or {}
        name = meta.get("name", "")
        if name in self.seen:
            return
        owners = [o.get("name", "") for o in meta.get("ownerReferences") or [] if o.get("kind") == "AITask"]
        owner = owners[0] if owners else "(none)"
        with self.lock:
            self.seen.add(name)
            self.jobs_per_owner[owner] += 1
            self.first_job.setdefault(owner, at)
            self.lock.notify_all()

    def run(self) -> None:
        path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        while not self.stop_event.is_set():
            try:
                status, data = self.api.request("GET", path + "?limit=0")
                rv = data["metadata"]["resourceVersion"]
                now = time.monotonic()
                for job in data.get("items") or []:
                    self._record(job, now)
                self.ready.set()
                for event in self.api.watch(path, rv, self.stop_event):
                    kind = event.get("type")
                    if kind == "ERROR":
                        break  # 410 Gone: relist
                    if kind == "ADDED":
                        self._record(event["object"], time.monotonic())
            except (OSError, http.client.HTTPException, ValueError, PhaseFailed, KeyError) as err:
                self.errors.append(repr(err))
                time.sleep(0.5)

    def count(self, owners: Iterable[str]) -> int:
        with self.lock:
            return sum(1 for o in owners if o in self.first_job)

    def wait_for(self, owners: list[str], deadline: float) -> bool:
        with self.lock:
            while sum(1 for o in owners if o in self.first_job) < len(owners):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 1.0))
        return True


# --------------------------------------------------------------------------------------------------------
# Workloads


def aitask_body(name: str, duration: str) -> dict[str, Any]:
    return {
        "apiVersion": "aitask.dev/v1alpha1", "kind": "AITask", "metadata": {"name": name},
        "spec": {"subtasks": [{
            "name": "step", "type": "preprocess", "image": "registry.example/step:bench",
            "executor": {"cpu": "100m", "memory": "64Mi"}, "estimate": {"seconds": 1},
            "podMetadata": {"annotations": {"sim.aitask.dev/duration": duration}},
        }]},
    }


def job_body(name: str, duration: str) -> dict[str, Any]:
    """A plain Job shaped like the operator's child Job for the AITask above."""
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {"bench": "plain"}},
        "spec": {"backoffLimit": 0, "parallelism": 1, "completions": 1, "template": {
            "metadata": {"annotations": {"sim.aitask.dev/duration": duration}},
            "spec": {"restartPolicy": "Never", "nodeSelector": {"aitask.dev/pool": "cpu"}, "containers": [{
                "name": "main", "image": "registry.example/step:bench",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "64Mi"}},
            }]},
        }},
    }


@dataclass
class Created:
    name: str
    sent: float
    done: float
    status: int


def create_all(api: Api, path: str, bodies: list[dict[str, Any]], concurrency: int, deadline: float, *,
               rate: float | None = None) -> list[Created]:
    """POSTs every body (``rate`` per second when given, else as fast as ``concurrency`` allows)."""
    t0 = time.monotonic()

    def one(i: int, body: dict[str, Any]) -> Created:
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if time.monotonic() > deadline:
            return Created(body["metadata"]["name"], time.monotonic(), time.monotonic(), 0)
        sent = time.monotonic()
        try:
            status, _ = api.request("POST", path, body)
        except (OSError, http.client.HTTPException):
            status = 0
        return Created(body["metadata"]["name"], sent, time.monotonic(), status)

    workers = concurrency if not rate else max(concurrency, int(rate) + 4)
    with ThreadPoolExecutor(workers) as pool:
        out = list(pool.map(lambda ib: one(*ib), enumerate(bodies)))
    bad = [c for c in out if c.status not in (200, 201)]
    if bad:
        codes = Counter(c.status for c in bad)
        raise PhaseFailed(f"{len(bad)} of {len(out)} creates under {path} failed: {dict(codes)}")
    return out


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --------------------------------------------------------------------------------------------------------
# Readings: API server metrics, audit log, operator process and /metrics

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        with contextlib.suppress(ValueError):
            out[m.group(1)].append((dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def apiserver_writes(api: Api) -> Counter[str]:
    """``apiserver_request_total`` of the write verbs, summed over codes, keyed "resource[/sub] VERB"."""
    status, text = api.request("GET", "/metrics", text=True)
    if status != 200:
        raise PhaseFailed(f"apiserver /metrics: HTTP {status}")
    out: Counter[str] = Counter()
    for labels, value in parse_metrics(text).get("apiserver_request_total", []):
        if labels.get("verb") in WRITE_VERBS:
            res = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
            out[f"{res} {labels['verb']}"] += int(value)
    return out


class Audit:
    """Reads the API server's audit log (JSON lines) from a remembered offset."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def offset(self) -> int:
        return self.path.stat().st_size if self.path and self.path.exists() else 0

    def since(self, offset: int, end: int | None = None) -> dict[str, Counter[str]]:
        """actor -> Counter of "resource[/sub] verb" for the writes logged between the offsets."""
        out: dict[str, Counter[str]] = defaultdict(Counter)
        if not self.path or not self.path.exists():
            return out
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(None if end is None else max(0, end - offset))
            for raw in data.splitlines():
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue  # a line cut at the offset
                if ev.get("verb") not in AUDIT_WRITE_VERBS:
                    continue
                ref = ev.get("objectRef") or {}
                res = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                who = actor(ev)
                out[who][f"{res} {ev['verb']}"] += 1
                if who == "operator":  # which of its clients: Kopf's (aiohttp) or the kubernetes client
                    agent = ev.get("userAgent", "").split("/", 1)[0] or "unknown"
                    out[f"operator[{agent}]"][f"{res} {ev['verb']}"] += 1
        return out


def actor(ev: dict[str, Any]) -> str:
    """Who made a request: the operator runs as the admin user with the Python client's or Kopf's agent."""
    user = (ev.get("user") or {}).get("username", "")
    agent = ev.get("userAgent", "")
    if agent.startswith(USER_AGENT):
        return "bench"
    if user != "admin":
        return user or "unknown"
    for prefix in ("kwok", "kubectl", "helm"):
        if agent.startswith(prefix):
            return prefix
    return "operator"


def proc_stats(pid: int) -> tuple[float, float]:
    """(VmRSS MiB, utime+stime seconds) of a process."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return rss, (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_by_component(cluster: Cluster, op: Operator) -> dict[str, float]:
    """utime+stime seconds so far of every control-plane process, the operator and this script (all threads)."""
    out: dict[str, float] = {}
    for proc in cluster.procs:
        with contextlib.suppress(OSError):
            out[proc.name] = out.get(proc.name, 0.0) + proc_stats(proc.pid)[1]
    if op.pid is not None:
        with contextlib.suppress(OSError):
            out["operator"] = proc_stats(op.pid)[1]
    out["bench client"] = proc_stats(os.getpid())[1]
    return out


def cpu_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 1) for k, v in after.items()}


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


@dataclass
class Cycles:
    """The operator's cycle histogram at one moment."""

    count: float = 0.0
    total: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    name: str = ""

    def minus(self, other: Cycles) -> Cycles:
        return Cycles(self.count - other.count, self.total - other.total,
                      {le: v - other.buckets.get(le, 0.0) for le, v in self.buckets.items()}, self.name)

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile ``q`` (Prometheus buckets are cumulative)."""
        if self.count <= 0:
            return None
        for le in sorted(self.buckets):
            if self.buckets[le] >= q * self.count:
                return le
        return math.inf

    def summary(self) -> dict[str, Any]:
        return {"cycles": int(self.count), "mean_s": round(self.total / self.count, 4) if self.count else None,
                "p50_le_s": self.quantile(0.5), "p99_le_s": self.quantile(0.99), "total_s": round(self.total, 2)}


def operator_metrics(op: Operator) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, text = http_get(f"{op.metrics_url}/metrics")
    return parse_metrics(text) if status == 200 else {}


def cycles(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> Cycles:
    for name in CYCLE_HISTOGRAMS:
        if f"{name}_count" in metrics:
            out = Cycles(name=name)
            out.count = sum(v for _, v in metrics[f"{name}_count"])
            out.total = sum(v for _, v in metrics.get(f"{name}_sum", []))
            for labels, v in metrics.get(f"{name}_bucket", []):
                le = float(labels.get("le", "inf").replace("+Inf", "inf"))
                out.buckets[le] = out.buckets.get(le, 0.0) + v
            return out
    return Cycles()


# --------------------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Bench:
    args: argparse.Namespace
    cluster: Cluster
    api: Api
    audit: Audit
    op: Operator
    watch: JobWatch
    ns: str = "scale"
    plain_ns: str = "scale-plain"
    names: list[str] = field(default_factory=list)  # every AITask created, in order
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks_path(self) -> str:
        return f"/apis/aitask.dev/v1alpha1/namespaces/{self.ns}/aitasks"

    def new_names(self, count: int, prefix: str) -> list[str]:
        start = len(self.names)
        names = [f"{prefix}-{i:05d}" for i in range(start, start + count)]
        self.names += names
        return names

    def finished_count(self, names: set[str] | None = None) -> tuple[int, Counter[str]]:
        """How many of ``names`` (all when None) are finished, and the phases of all, from one list."""
        phases: Counter[str] = Counter()
        done = 0
        for t in self.api.list_all(self.tasks_path):
            if names is not None and t["metadata"]["name"] not in names:
                continue
            phase = (t.get("status") or {}).get("phase") or "(none)"
            phases[phase] += 1
            done += phase in FINISHED
        return done, phases

    def wait_finished(self, names: list[str], timeout: float, what: str) -> float:
        """Waits until every AITask in ``names`` is finished (listing every ``poll`` s); returns seconds."""
        t0 = time.monotonic()
        wanted = set(names)
        poll = max(2.0, min(15.0, len(self.names) / 1000))
        while True:
            done, phases = self.finished_count(wanted)
            if done >= len(wanted):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise PhaseFailed(f"{what}: {done} of {len(wanted)} finished after {timeout:.0f} s: {dict(phases)}")
            time.sleep(poll)

    def op_stats(self) -> tuple[float, float]:
        if self.op.pid is None:
            raise PhaseFailed(f"the operator exited:\n{self.op.log(30)}")
        return proc_stats(self.op.pid)

    # ---- 1 + 4: bursts ---------------------------------------------------------------------------------

    def burst(self) -> None:
        n, c = self.args.burst, self.args.concurrency
        timeout = self.args.timeout_base + n * self.args.timeout_per_task
        log(f"burst: {n} plain Jobs in {self.plain_ns}, concurrency {c}")
        m0, a0 = apiserver_writes(self.api), self.audit.offset()
        cpu0 = cpu_by_component(self.cluster, self.op)
        deadline = time.monotonic() + timeout
        jobs = create_all(self.api, f"/apis/batch/v1/namespaces/{self.plain_ns}/jobs",
                          [job_body(f"plain-{i:05d}", self.args.duration) for i in range(n)], c, deadline)
        plain_s = max(j.done for j in jobs) - min(j.sent for j in jobs)
        cpu_plain_created = cpu_by_component(self.cluster, self.op)

        def plain_done() -> int:
            items = self.api.list_all(f"/apis/batch/v1/namespaces/{self.plain_ns}/jobs")
            return sum(1 for j in items if (j.get("status") or {}).get("succeeded")
                       or (j.get("status") or {}).get("failed"))

        while plain_done() < n:
            if time.monotonic() > deadline:
                raise PhaseFailed(f"plain Jobs did not all complete within {timeout:.0f} s")
            time.sleep(2)
        plain_complete_s = time.monotonic() - min(j.sent for j in jobs)
        time.sleep(self.args.settle)
        m1, a1 = apiserver_writes(self.api), self.audit.offset()
        plain_audit = self.audit.since(a0, a1)
        cpu1 = cpu_by_component(self.cluster, self.op)

        log(f"burst: {n} AITasks in {self.ns}")
        names = self.new_names(n, "burst")
        deadline = time.monotonic() + timeout
        created = create_all(self.api, self.tasks_path, [aitask_body(x, self.args.duration) for x in names], c,
                             deadline)
        create_s = max(x.done for x in created) - min(x.sent for x in created)
        if not self.watch.wait_for(names, deadline):
            raise PhaseFailed(f"only {self.watch.count(names)} of {n} AITasks got a Job within {timeout:.0f} s")
        t_first = min(x.sent for x in created)
        ait_s = max(self.watch.first_job[x] for x in names) - t_first
        cpu_ait_jobs = cpu_by_component(self.cluster, self.op)
        lat = [self.watch.first_job[x.name] - x.done for x in created]
        finished_s = self.wait_finished(names, max(1.0, deadline - time.monotonic()), "burst")
        time.sleep(self.args.settle)
        m2, a2 = apiserver_writes(self.api), self.audit.offset()
        ait_audit = self.audit.since(a1, a2)
        cpu2 = cpu_by_component(self.cluster, self.op)

        plain_rate, ait_rate = n / plain_s, n / ait_s
        self.result["burst"] = {
            "n": n, "concurrency": c,
            "plain_jobs_create_s": round(plain_s, 2), "plain_jobs_per_s": round(plain_rate, 1),
            "plain_jobs_all_complete_s": round(plain_complete_s, 1),
            "aitasks_create_s": round(create_s, 2), "aitasks_created_per_s": round(n / create_s, 1),
            "aitask_to_all_jobs_s": round(ait_s, 2), "aitask_jobs_per_s": round(ait_rate, 1),
            "ratio_aitask_over_plain": round(ait_rate / plain_rate, 3),
            "create_to_job_p50_s": round(quantile(lat, 0.5) or 0, 3),
            "create_to_job_p99_s": round(quantile(lat, 0.99) or 0, 3),
            "aitasks_all_finished_s": round(finished_s + ait_s, 1),
            # CPU seconds by process: until the last Job exists, and for the whole window (to all finished)
            "cpu_s_plain_until_all_created": cpu_delta(cpu_plain_created, cpu0),
            "cpu_s_plain_window": cpu_delta(cpu1, cpu0),
            "cpu_s_aitask_until_all_jobs": cpu_delta(cpu_ait_jobs, cpu1),
            "cpu_s_aitask_window": cpu_delta(cpu2, cpu1),
        }
        # Writes per AITask. Audit: exact, the operator's own requests. Metric: no user label, so
        # (AITask window - plain window) with this script's own creates put back: the plain window had n
        # Job creates by us, the AITask window n AITask creates by us; the rest (KCM, scheduler, kwok)
        # is the same work for both, except what only the operator's Jobs cause (TTL, its Events).
        op_audit = ait_audit.get("operator", Counter())
        metric_plain, metric_ait = m1 - m0, m2 - m1
        metric_op: dict[str, float] = {}
        for key in set(metric_plain) | set(metric_ait):
            if key.split(" ")[0] in HEARTBEATS:
                continue  # kwok's node heartbeats: they follow the windows' lengths, not the work
            metric_op[key] = metric_ait.get(key, 0) - metric_plain.get(key, 0)
        metric_op["aitasks POST"] = metric_op.get("aitasks POST", 0) - n
        metric_op["jobs POST"] = metric_op.get("jobs POST", 0) + n
        self.result["writes_per_aitask"] = {
            "audit_operator": {k: round(v / n, 2) for k, v in sorted(op_audit.items())},
            "audit_operator_total": round(sum(op_audit.values()) / n, 2),
            "audit_by_actor_aitask_window": {k: dict(v) for k, v in ait_audit.items()},
            "audit_by_actor_plain_window": {k: dict(v) for k, v in plain_audit.items()},
            "metric_minus_plain_baseline": {k: round(v / n, 2) for k, v in sorted(metric_op.items()) if v},
            "metric_minus_plain_baseline_total": round(sum(metric_op.values()) / n, 2),
            "metric_plain_window_raw": dict(metric_plain), "metric_aitask_window_raw": dict(metric_ait),
        }

    # ---- 2: steady rates -------------------------------------------------------------------------------

    def steady(self) -> None:
        out = {}
        for rate in self.args.rates:
            count = max(1, int(rate * self.args.steady_seconds))
            log(f"steady: {count} AITasks at {rate}/s")
            names = self.new_names(count, f"steady{rate:g}")
            timeout = self.args.timeout_base + self.args.steady_seconds + count * self.args.timeout_per_task
            deadline = time.monotonic() + timeout
            created = create_all(self.api, self.tasks_path, [aitask_body(x, self.args.duration) for x in names],
                                 self.args.concurrency, deadline, rate=rate)
            ok = self.watch.wait_for(names, deadline)
            lat = [self.watch.first_job[x.name] - x.done for x in created if x.name in self.watch.first_job]
            lat_sent = [self.watch.first_job[x.name] - x.sent for x in created if x.name in self.watch.first_job]
            span = max(x.sent for x in created) - min(x.sent for x in created)
            out[f"{rate:g}/s"] = {
                "n": count, "achieved_rate": round((count - 1) / span, 2) if span else None,
                "with_job": len(lat), "p50_s": round(quantile(lat, 0.5) or 0, 3),
                "p99_s": round(quantile(lat, 0.99) or 0, 3), "max_s": round(max(lat, default=0), 3),
                "p50_from_send_s": round(quantile(lat_sent, 0.5) or 0, 3),
            }
            if not ok:
                raise PhaseFailed(f"steady {rate}/s: {len(lat)} of {count} got a Job within {timeout:.0f} s")
            self.wait_finished(names, max(1.0, deadline - time.monotonic()), f"steady {rate}/s")
            self.result["steady"] = out
        self.result["steady"] = out

    # ---- 3 + 7: populations ----------------------------------------------------------------------------

    def populations(self) -> None:
        out = self.result.setdefault("populations", [])
        for target in self.args.populations:
            missing = target - len(self.names)
            t0 = time.monotonic()
            _, cpu_before = self.op_stats()
            fill_before = cycles(operator_metrics(self.op))
            if missing > 0:
                log(f"population: {missing} more AITasks to reach {target}")
                timeout = self.args.timeout_base + missing * self.args.timeout_per_task
                deadline = time.monotonic() + timeout
                names: list[str] = []
                # Batch after batch, each finished before the next: the population is N finished AITasks
                # (what a cluster keeps), not one burst of N (the burst phase measures bursts).
                for start in range(0, missing, self.args.fill_batch):
                    batch = self.new_names(min(self.args.fill_batch, missing - start), "fill")
                    create_all(self.api, self.tasks_path, [aitask_body(x, self.args.duration) for x in batch],
                               self.args.concurrency, deadline)
                    names += batch
                    self.wait_finished(batch, max(1.0, deadline - time.monotonic()), f"population {target}")
            fill_s = time.monotonic() - t0
            fill_cycles = cycles(operator_metrics(self.op)).minus(fill_before).summary()
            time.sleep(self.args.settle)
            rss, cpu = self.op_stats()
            # Cycle duration with `target` finished AITasks present, around a small probe burst.
            before = cycles(operator_metrics(self.op))
            probe = self.new_names(self.args.probe, "probe")
            deadline = time.monotonic() + self.args.timeout_base + self.args.probe * self.args.timeout_per_task
            created = create_all(self.api, self.tasks_path, [aitask_body(x, self.args.duration) for x in probe],
                                 self.args.concurrency, deadline)
            got = self.watch.wait_for(probe, deadline)
            lat = [self.watch.first_job[x.name] - x.done for x in created if x.name in self.watch.first_job]
            self.wait_finished(probe, max(1.0, deadline - time.monotonic()), f"probe at {target}")
            after = cycles(operator_metrics(self.op))
            empty = self.result.get("operator_rss_empty_mib", 0.0)
            row = {"aitasks": target, "fill_s": round(fill_s, 1), "filled": max(0, missing),
                   "rss_mib": round(rss, 1), "rss_kib_per_aitask": round(rss * 1024 / max(1, target), 1),
                   "rss_kib_per_aitask_above_empty": round((rss - empty) * 1024 / max(1, target), 1),
                   "operator_cpu_s_total": round(cpu, 1),
                   "operator_cpu_s_per_filled_aitask": round((cpu - cpu_before) / missing, 3) if missing > 0 else None,
                   "probe": {"n": len(probe), "create_to_job_p50_s": round(quantile(lat, 0.5) or 0, 3),
                             "max_s": round(max(lat, default=0), 3), "all_got_jobs": got},
                   "cycle_during_fill": fill_cycles, "cycle_during_probe": after.minus(before).summary()}
            out.append(row)
            log(f"population {target}: RSS {rss:.0f} MiB, cycles {row['cycle_during_probe']}")

    # ---- 5: idle ---------------------------------------------------------------------------------------

    def idle(self) -> None:
        secs = self.args.idle_seconds
        n = len(self.names)
        log(f"idle: {secs:g} s with {n} finished AITasks")
        time.sleep(self.args.settle)
        m0, a0, (_, cpu0), c0 = apiserver_writes(self.api), self.audit.offset(), self.op_stats(), \
            cycles(operator_metrics(self.op))
        time.sleep(secs)
        m1, (rss, cpu1), c1 = apiserver_writes(self.api), self.op_stats(), cycles(operator_metrics(self.op))
        aud = self.audit.since(a0)
        metric = {k: v for k, v in (m1 - m0).items() if v}
        op_writes = aud.get("operator", Counter())
        self.result["idle"] = {
            "aitasks": n, "seconds": secs, "operator_writes": sum(op_writes.values()),
            "operator_writes_by_kind": dict(op_writes), "operator_cpu_core_fraction": round((cpu1 - cpu0) / secs, 4),
            "cycles": c1.minus(c0).summary(), "rss_mib": round(rss, 1),
            "metric_writes_all_clients": metric,
            "metric_aitasks_events_writes": {k: v for k, v in metric.items()
                                             if k.split(" ")[0].split("/")[0] in ("aitasks", "events")},
            "audit_by_actor": {k: dict(v) for k, v in aud.items()},
        }

    # ---- 6: restart ------------------------------------------------------------------------------------

    def restart(self) -> None:
        n = len(self.names)
        log(f"restart: SIGKILL and start the operator with {n} AITasks present")
        self.op.kill()
        log_offset = self.op.log_path.stat().st_size
        t0 = time.monotonic()
        self.op.start()
        name = self.new_names(1, "after-restart")[0]
        status, body = self.api.request("POST", self.tasks_path, aitask_body(name, self.args.duration))
        if status not in (200, 201):
            raise PhaseFailed(f"create {name} after restart: HTTP {status}: {body}")
        t_created = time.monotonic()
        first_metric = first_log = job = None
        probes: list[tuple[float, int, int]] = []
        deadline = t0 + self.args.restart_timeout
        last = (-1, -1)
        while time.monotonic() < deadline and (first_metric is None or job is None or first_log is None):
            now = time.monotonic() - t0
            ready, _ = http_get(f"{self.op.metrics_url}/readyz", timeout=2)
            health, _ = http_get(f"{self.op.metrics_url}/healthz", timeout=2)
            if (ready, health) != last:
                probes.append((round(now, 1), ready, health))
                last = (ready, health)
            if first_metric is None and cycles(operator_metrics(self.op)).count > 0:
                first_metric = now
            if first_log is None:
                with open(self.op.log_path, "rb") as f:
                    f.seek(log_offset)
                    new = f.read()
                log_offset += new.rfind(b"\n") + 1  # only whole lines are searched
                if b"cycle (" in new[: new.rfind(b"\n") + 1]:
                    first_log = now
            if job is None and name in self.watch.first_job:
                job = self.watch.first_job[name] - t_created
            if self.op.pid is None:
                raise PhaseFailed(f"the operator exited after restart:\n{self.op.log(30)}")
            time.sleep(0.5)
        probes.append((round(time.monotonic() - t0, 1), *last))
        self.result["restart"] = {
            "aitasks": n, "first_cycle_metric_s": _r(first_metric), "first_cycle_log_s": _r(first_log),
            "new_aitask_job_s": _r(job), "timeout_s": self.args.restart_timeout,
            "readyz_healthz_changes": [{"t_s": t, "readyz": r, "healthz": h} for t, r, h in probes],
        }
        if job is None:
            log(f"restart: the new AITask got no Job within {self.args.restart_timeout:g} s")


    # ---- 8: SIGKILL during a burst ------------------------------------------------------------------------

    def killburst(self) -> None:
        """SIGKILL the operator while a burst is half turned into Jobs, start it again, and check that every
        AITask completes with exactly one Job and one attempt (nothing lost, nothing admitted twice)."""
        n, c = self.args.kill_burst, self.args.concurrency
        timeout = self.args.timeout_base + n * self.args.timeout_per_task
        names = self.new_names(n, "kill")
        log(f"killburst: {n} AITasks, SIGKILL once about half have their Job")
        deadline = time.monotonic() + timeout
        created: list[Created] = []
        creator = threading.Thread(target=lambda: created.extend(
            create_all(self.api, self.tasks_path, [aitask_body(x, self.args.duration) for x in names], c, deadline)))
        creator.start()
        while self.watch.count(names) < n // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        at_kill = self.watch.count(names)
        self.op.kill()
        t_kill = time.monotonic()
        self.op.start()
        creator.join(max(1.0, deadline - time.monotonic()))
        if not self.watch.wait_for(names, deadline):
            raise PhaseFailed(f"killburst: only {self.watch.count(names)} of {n} AITasks got a Job")
        finished_s = self.wait_finished(names, max(1.0, deadline - time.monotonic()), "killburst")
        wanted = set(names)
        tasks = [t for t in self.api.list_all(self.tasks_path) if t["metadata"]["name"] in wanted]
        subs = [s for t in tasks for s in (t.get("status") or {}).get("subtasks") or []]
        phases = Counter((t.get("status") or {}).get("phase") for t in tasks)
        self.result["killburst"] = {
            "n": n, "created": len(created), "with_a_job_at_kill": at_kill, "listed": len(tasks),
            "phases": dict(phases), "subtasks": len(subs),
            "subtasks_not_one_attempt": sum(1 for s in subs
                                            if s.get("attempts") != 1 or len(s.get("history") or []) != 1),
            "aitasks_with_more_than_one_job": sum(1 for x in names if self.watch.jobs_per_owner.get(x, 0) > 1),
            "all_finished_s_after_kill": round(time.monotonic() - t_kill, 1), "wait_finished_s": round(finished_s, 1),
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def machine() -> dict[str, Any]:
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {"nproc": os.cpu_count(), "mem_gib": round(int(mem) / 1024 / 1024, 1),
            "loadavg_at_start": os.getloadavg(), "python": platform.python_version(),
            "platform": platform.platform()}


def operator_log_summary(op: Operator) -> dict[str, Any]:
    lines = op.log_path.read_text(errors="replace").splitlines() if op.log_path.exists() else []
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for line in lines:
        m = re.search(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b", line)
        if m:
            levels[m.group(1)] += 1
            msg = re.sub(r"\d+(\.\d+)?", "N", line.split(m.group(1), 1)[1])[:140]
            messages[msg.strip()] += 1
    cycle_lines = [line for line in lines if "cycle (" in line]
    timed = [(float(m.group(1)), line) for line in cycle_lines if (m := re.search(r" in ([0-9.]+)s\b", line))]
    longest = max(timed, default=(None, ""))
    return {"lines": len(lines), "levels": dict(levels), "top_messages": messages.most_common(8),
            "cycle_log_lines": len(cycle_lines), "last_cycle_lines": cycle_lines[-3:],
            "longest_logged_cycle_s": longest[0], "longest_logged_cycle": longest[1][-160:]}


# --------------------------------------------------------------------------------------------------------
# Output


def table(r: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    m = r["machine"]
    rows.append(("machine", f"{m['nproc']} CPUs, {m['mem_gib']} GiB, load {m['loadavg_at_start'][0]:.1f} at start; "
                            f"{r['config']['nodes']} KWOK CPU nodes x 64 cores; KCM/scheduler qps "
                            f"{r['config']['api_qps']}; run {r.get('run_seconds', 0):.0f} s"))
    b = r.get("burst")
    if b:
        rows.append((f"burst of {b['n']} (concurrency {b['concurrency']}): plain Jobs created/s",
                     f"{b['plain_jobs_per_s']} /s ({b['plain_jobs_create_s']} s)"))
        rows.append(("  AITask -> all child Jobs exist, Jobs/s",
                     f"{b['aitask_jobs_per_s']} /s ({b['aitask_to_all_jobs_s']} s); "
                     f"AITasks created {b['aitasks_created_per_s']}/s"))
        rows.append(("  ratio AITask-Job rate / plain-Job rate", f"{b['ratio_aitask_over_plain']}"))
        rows.append(("  create -> Job in the burst, p50 / p99",
                     f"{b['create_to_job_p50_s']} s / {b['create_to_job_p99_s']} s"))
        for label, key in (("plain Jobs, until all created", "cpu_s_plain_until_all_created"),
                           ("AITasks, until all Jobs exist", "cpu_s_aitask_until_all_jobs")):
            cpu = b.get(key) or {}
            rows.append((f"  CPU s by process, {label}",
                         ", ".join(f"{k} {v}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))))
    for rate, s in (r.get("steady") or {}).items():
        rows.append((f"steady {rate} ({s['n']} AITasks): create -> Job p50 / p99",
                     f"{s['p50_s']} s / {s['p99_s']} s (max {s['max_s']} s, rate {s['achieved_rate']}/s)"))
    w = r.get("writes_per_aitask")
    if w:
        rows.append(("writes per AITask, audit (operator's own)",
                     f"{w['audit_operator_total']}: " + ", ".join(f"{k} {v}" for k, v in w["audit_operator"].items())))
        n = r["burst"]["n"] if r.get("burst") else 1
        clients = {k: round(sum(v.values()) / n, 2) for k, v in w["audit_by_actor_aitask_window"].items()
                   if k.startswith("operator[")}
        if clients:
            rows.append(("  by the operator's client (user agent)",
                         ", ".join(f"{k[9:-1]} {v}" for k, v in clients.items())))
        rows.append(("writes per AITask, apiserver_request_total - plain baseline (no heartbeats)",
                     f"{w['metric_minus_plain_baseline_total']}: "
                     + ", ".join(f"{k} {v}" for k, v in w["metric_minus_plain_baseline"].items())))
    for p in r.get("populations") or []:
        c = p["cycle_during_probe"]
        rows.append((f"{p['aitasks']} finished AITasks: operator RSS",
                     f"{p['rss_mib']} MiB ({p['rss_kib_per_aitask_above_empty']} KiB each above the empty "
                     f"{r.get('operator_rss_empty_mib')} MiB)"))
        f = p["cycle_during_fill"]
        rows.append(("  filling up to it", f"{p['filled']} AITasks in {p['fill_s']} s, "
                                           f"{p['operator_cpu_s_per_filled_aitask']} operator CPU-s each; "
                                           f"{f['cycles']} cycles, mean {f['mean_s']} s"))
        rows.append((f"  cycles during a {p['probe']['n']}-AITask probe",
                     f"{c['cycles']} cycles, mean {c['mean_s']} s, p50 <= {c['p50_le_s']} s, p99 <= {c['p99_le_s']} s; "
                     f"probe create -> Job p50 {p['probe']['create_to_job_p50_s']} s"))
    i = r.get("idle")
    if i:
        rows.append((f"idle {i['seconds']:g} s with {i['aitasks']} finished: operator writes",
                     f"{i['operator_writes']} " + (str(i["operator_writes_by_kind"]) if i["operator_writes"] else "")))
        rows.append(("  operator CPU, cycles", f"{i['operator_cpu_core_fraction'] * 100:.1f}% of a core; "
                                               f"{i['cycles']['cycles']} cycles (mean {i['cycles']['mean_s']} s)"))
        rows.append(("  AITask/Event writes, all clients (metric)", str(i["metric_aitasks_events_writes"] or 0)))
    s = r.get("restart")
    if s:
        ch = ", ".join(f"{c['t_s']}s readyz {c['readyz']} healthz {c['healthz']}" for c in s["readyz_healthz_changes"])
        rows.append((f"restart (SIGKILL) with {s['aitasks']} AITasks: first cycle",
                     f"metric {s['first_cycle_metric_s']} s, log {s['first_cycle_log_s']} s (None = not within "
                     f"{s['timeout_s']:g} s)"))
        rows.append(("  new AITask -> its Job", f"{s['new_aitask_job_s']} s"))
        rows.append(("  /readyz, /healthz meanwhile (0 = no answer)", ch))
    k = r.get("killburst")
    if k:
        rows.append((f"SIGKILL during a burst of {k['n']} (at {k['with_a_job_at_kill']} with a Job)",
                     f"phases {k['phases']}; sub-tasks not at exactly one attempt {k['subtasks_not_one_attempt']} "
                     f"of {k['subtasks']}; AITasks with more than one Job {k['aitasks_with_more_than_one_job']}; "
                     f"all finished {k['all_finished_s_after_kill']} s after the kill"))
    ol = r.get("operator_log") or {}
    if ol.get("longest_logged_cycle_s") is not None:
        rows.append(("longest cycle in the operator log", f"{ol['longest_logged_cycle_s']} s: "
                                                          f"{ol['longest_logged_cycle'].split('] ')[-1]}"))
    if ol.get("levels"):
        rows.append(("operator log warnings/errors", str(ol["levels"])))
    j = r.get("jobs")
    if j:
        rows.append(("AITasks created / with a Job / with more than one",
                     f"{j['aitasks_created']} / {j['aitasks_with_a_job']} / {j['aitasks_with_more_than_one_job']}"))
    if r.get("errors"):
        rows.append(("FAILED phases", "; ".join(r["errors"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true",
                   help="a few minutes: --burst 200 --populations 500,1000 --steady-seconds 10")
    p.add_argument("--burst", type=int, default=1000, help="AITasks (and plain Jobs) per burst")
    p.add_argument("--kill-burst", type=int, default=1000,
                   help="AITasks of the burst during which the operator is SIGKILLed")
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[5.0, 20.0],
                   help="steady creation rates per second, comma-separated")
    p.add_argument("--steady-seconds", type=float, default=30.0, help="how long each steady rate runs")
    p.add_argument("--populations", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 5000, 10000],
                   help="finished-AITask counts at which RSS and cycle duration are read")
    p.add_argument("--probe", type=int, default=20, help="AITasks of the probe burst at each population")
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--restart-timeout", type=float, default=300.0, help="how long to watch a restart")
    p.add_argument("--concurrency", type=int, default=16, help="client threads creating objects")
    p.add_argument("--fill-batch", type=int, default=500, help="AITasks created per batch when filling")
    p.add_argument("--nodes", type=int, default=50, help="generated KWOK CPU nodes of 64 cores")
    p.add_argument("--api-qps", type=int, default=500, help="KCM/scheduler --kube-api-qps (burst 2x)")
    p.add_argument("--duration", default="1s", help="how long each KWOK pod runs")
    p.add_argument("--settle", type=float, default=5.0, help="seconds waited after a phase before reading")
    p.add_argument("--timeout-base", type=float, default=120.0)
    p.add_argument("--timeout-per-task", type=float, default=0.5, help="added to each phase's bound per AITask")
    p.add_argument("--no-audit", action="store_true", help="no API server audit log (metric deltas only)")
    p.add_argument("--skip", default="",
                   help="phases to skip, comma-separated: burst,steady,populations,idle,restart,killburst")
    p.add_argument("--dir", default=None, help="cluster folder (default .e2e/scale-<time>, removed unless --keep)")
    p.add_argument("--keep", action="store_true", help="leave the cluster folder (logs, audit) behind")
    p.add_argument("--json", default=None, help="also write every figure here")
    args = p.parse_args(argv)
    if args.small:
        defaults = {"burst": 1000, "kill_burst": 1000, "steady_seconds": 30.0, "populations": [1000, 5000, 10000],
                    "idle_seconds": 60.0}
        small = {"burst": 200, "kill_burst": 200, "steady_seconds": 10.0, "populations": [500, 1000],
                 "idle_seconds": 60.0}
        for k, v in small.items():
            if getattr(args, k) == defaults[k]:
                setattr(args, k, v)
    args.populations = sorted(args.populations)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    root = Path(args.dir or REPO / ".e2e" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    root.mkdir(parents=True, exist_ok=True)
    nodes_file = root / "nodes-cpu-scale.yaml"
    nodes_file.write_text(cpu_nodes_yaml(args.nodes))
    extra: dict[str, list[str]] = {"kube-controller-manager": ["--concurrent-job-syncs=20"]}
    audit_path = None
    if not args.no_audit:
        audit_path = root / "audit.log"
        (root / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        extra["kube-apiserver"] = [f"--audit-policy-file={root / 'audit-policy.yaml'}",
                                   f"--audit-log-path={audit_path}", "--audit-log-format=json",
                                   "--audit-log-maxsize=0", "--audit-log-maxbackup=0"]
    result: dict[str, Any] = {
        "machine": machine(),
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "dir")},
        "audit": "writes of the admin user, by user agent (operator = admin, not kwok/kubectl/this script)"
                 if audit_path else "off",
        "errors": [],
    }
    log(f"starting the control plane in {root} with {args.nodes} CPU nodes")
    cluster = Cluster.start(root / "cluster", nodes=nodes_file, api_qps=args.api_qps, extra_args=extra,
                            timeout=300)
    op: Operator | None = None
    watch: JobWatch | None = None
    try:
        result["cluster_startup_s"] = cluster.startup_seconds
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/aitasks.aitask.dev", "crd/executorclasses.aitask.dev")
        shutil.rmtree(cluster.dir / "cache" / "kube", ignore_errors=True)
        cpu_class = [d for d in yaml.safe_load_all(CLASSES.read_text()) if d and d["metadata"]["name"] == "cpu"]
        cluster.apply(cpu_class)
        api = Api(cluster)
        for ns in ("scale", "scale-plain"):  # the same setup for both
            cluster.kubectl("create", "namespace", ns)
            cluster.kubectl("label", "namespace", ns, "aitask.dev/bench=scale")
            end = time.monotonic() + 60
            while api.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")[0] != 200:
                if time.monotonic() > end:
                    raise PhaseFailed(f"no default ServiceAccount in {ns}")
                time.sleep(0.2)
        op = Operator(cluster, "scale", root, verbose=False, test_timings=False).start()
        op.wait_metrics(60)
        time.sleep(args.settle)
        rss0, _ = proc_stats(op.pid or 0)
        result["operator_rss_empty_mib"] = round(rss0, 1)
        watch = JobWatch(api, "scale")
        watch.start()
        watch.ready.wait(30)
        bench = Bench(args, cluster, api, Audit(audit_path), op, watch, result=result)
        skip = set(filter(None, args.skip.split(",")))
        for phase in ("burst", "steady", "populations", "idle", "restart", "killburst"):
            if phase in skip:
                continue
            try:
                getattr(bench, phase)()
            except PhaseFailed as err:
                log(f"{phase} FAILED: {err}")
                result["errors"].append(f"{phase}: {str(err)[:300]}")
                if op.pid is None:
                    break
        dup = {k: v for k, v in watch.jobs_per_owner.items() if v > 1}
        result["jobs"] = {"aitasks_created": len(bench.names), "aitasks_with_a_job": len(watch.first_job),
                          "aitasks_with_more_than_one_job": len(dup), "watch_errors": watch.errors[:5]}
    finally:
        if watch is not None:
            watch.stop_event.set()
        if op is not None:
            result["operator_log"] = operator_log_summary(op)
            op.stop()
        cluster.stop()
        result["run_seconds"] = round(time.monotonic() - t_start, 1)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
        if args.keep or result["errors"]:
            log(f"cluster folder (logs, audit) kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(table(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
