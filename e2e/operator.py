"""Run the real operator (`python -m aitask run`) as a child process against the local control plane.

A separate process, not an in-process runner, so that a test can SIGKILL it at any moment the
way a node failure or an OOM kill would, and start a fresh one with nothing carried over in memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from e2e.cluster import Cluster, free_port, tail

REPO = Path(__file__).resolve().parent.parent


class Operator:
    """One operator process watching one namespace (``namespace=None``: every namespace, i.e. without
    ``-n``, as the chart runs it); its log is kept for failure reports."""

    def __init__(self, cluster: Cluster, namespace: str | None, log_dir: Path,
                 env: Mapping[str, str] | None = None, *, name: str = "operator", standalone: bool = True,
                 verbose: bool = True, test_timings: bool = True):
        """``namespace`` None runs it cluster-wide (the chart's default). ``verbose`` passes ``-v`` (DEBUG
        logs); ``test_timings`` sets the short scheduling period and retry back-off the suites rely on.
        Scale runs turn both off to measure the operator's defaults."""
        self.name = name
        self.standalone = standalone
        self.verbose = verbose
        self.test_timings = test_timings
        self.cluster = cluster
        self.namespace = namespace
        self.log_dir = log_dir
        self.metrics_port = free_port()
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.sigkilled = False  # a stop() had to SIGKILL it

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.namespace or 'all-namespaces'}.log"

    def start(self) -> Operator:
        env = {
            **os.environ,
            **self.cluster.env(),
            "AITASK_METRICS_HOST": "127.0.0.1",
            "AITASK_METRICS_PORT": str(self.metrics_port),
            **({"AITASK_SCHEDULING_PERIOD_SECONDS": "1", "AITASK_RETRY_BACKOFF_MAX_SECONDS": "5"}
               if self.test_timings else {}),
            "PYTHONUNBUFFERED": "1",
            **({} if self.namespace else {"AITASK_NAMESPACES": ""}),  # cluster-wide: nothing narrows it
            **self.extra_env,
        }
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
        log.write(f"\n===== operator start #{self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aitask", "run", *(["--standalone"] if self.standalone else []),
             *(["-n", self.namespace] if self.namespace else []), *(["-v"] if self.verbose else [])],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash: no cleanup handler runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` (recorded in ``sigkilled``)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.sigkilled = True
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    @property
    def pid(self) -> int | None:
        """The operator's Python process (it leads its own process group), for /proc/PID readings."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, lines: int = 80) -> str:
        return tail(self.log_path, lines) if self.log_path.exists() else "(no operator log)"

    def wait_metrics(self, timeout: float = 30.0) -> None:
        import urllib.request

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"operator /healthz not up on port {self.metrics_port}\n{self.log()}")


@contextmanager
def running_operator(
    cluster: Cluster, namespace: str, log_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[Operator]:
    op = Operator(cluster, namespace, log_dir, env).start()
    try:
        yield op
    finally:
        op.stop()
