"""``aitask agent``: the per-node NVML exporter (run as a DaemonSet).

Reads NVML every ``--interval`` seconds, attributes GPU processes to pods through
``<proc-root>/<pid>/cgroup`` and serves ``/metrics``, ``/healthz`` and ``/readyz``.
Without an NVIDIA driver it still starts, logs why, and serves
``aitask_agent_nvml_up{reason="..."} 0`` and no GPU series.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry

from aitask.adapters.nvml import NvmlReader
from aitask.agent.exporter import GpuExporter, PodRef, PodResolver, container_id_of
from aitask.metrics import serve_metrics

logger = logging.getLogger(__name__)


def build_registry(exporter: GpuExporter) -> CollectorRegistry:
    """A registry holding only the agent's series."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    return registry


def kubernetes_pod_resolver(node_name: str) -> PodResolver | None:
    """A resolver listing the pods of ``node_name`` through the Kubernetes API; None without a config.

    Needs RBAC ``list pods`` (cluster-wide, filtered by ``spec.nodeName``).
    """
    if not node_name:
        return None
    try:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        return None
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except ConfigException:
        try:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        except (ConfigException, OSError) as error:
            logger.info("No Kubernetes config (%s); pods are labelled by pod_uid only", error)
            return None
    api = client.CoreV1Api()
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    def resolve() -> Mapping[str, PodRef]:
        try:
            pods: Any = api.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node_name}", _request_timeout=10
            )
        except (ApiException, HTTPError) as error:
            raise LookupError(f"list pods on {node_name}: {error}") from error
        result: dict[str, PodRef] = {}
        for pod in pods.items:
            statuses = list(pod.status.container_statuses or []) + list(pod.status.init_container_statuses or [])
            containers = {
                container_id_of(status.container_id): status.name for status in statuses if status.container_id
            }
            result[pod.metadata.uid] = PodRef(pod.metadata.namespace, pod.metadata.name, containers)
        return result

    return resolve


def run_agent(
    host: str,
    port: int,
    node_name: str,
    interval: float,
    *,
    proc_root: Path = Path("/proc"),
    nvml: Any = None,
    pod_resolver: PodResolver | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve the agent until ``stop`` is set (or SIGTERM/SIGINT when run in the main thread)."""
    stop = stop if stop is not None else threading.Event()
    hostname = node_name or socket.gethostname()
    reader = NvmlReader(nvml)
    exporter = GpuExporter(reader, hostname, proc_root=proc_root, pod_resolver=pod_resolver)
    state = exporter.refresh()
    if state.snapshot.available:
        logger.info(
            "GPU agent on %s: %d GPU(s), driver %s",
            hostname,
            len(state.snapshot.gpus),
            state.snapshot.driver_version,
        )
    else:
        logger.warning(
            "GPU agent on %s: no GPU series will be served (%s: %s)",
            hostname,
            state.snapshot.reason,
            state.snapshot.detail,
        )
    server = serve_metrics(host, port, lambda: True, registry=build_registry(exporter))
    if threading.current_thread() is threading.main_thread():

        def _on_signal(signum: int, _frame: FrameType | None) -> None:
            logger.info("Signal %d received, stopping the GPU agent", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    try:
        while not stop.wait(interval):
            exporter.refresh()
    finally:
        server.stop()
        reader.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aitask agent", description="Per-node NVML GPU exporter.")
    parser.add_argument("--host", default="0.0.0.0", help="bind address (default: %(default)s)")  # noqa: S104
    parser.add_argument("--port", type=int, default=9400, help="port of /metrics (default: %(default)s)")
    parser.add_argument(
        "--node-name", default=os.environ.get("NODE_NAME", ""), help="this node's name (default: $NODE_NAME)"
    )
    parser.add_argument(
        "--proc-root",
        type=Path,
        default=Path("/proc"),
        help="the host's /proc (hostPID, or a hostPath mount such as /host/proc) (default: %(default)s)",
    )
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between NVML reads")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    parser.add_argument(
        "--no-kubernetes", action="store_true", help="do not resolve pod names through the Kubernetes API"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``aitask agent``; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.interval <= 0:
        logger.error("--interval must be positive")
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resolver = None if args.no_kubernetes else kubernetes_pod_resolver(args.node_name)
    try:
        run_agent(
            args.host,
            args.port,
            args.node_name,
            args.interval,
            proc_root=args.proc_root,
            pod_resolver=resolver,
        )
    except OSError as error:
        logger.error("GPU agent failed to serve on %s:%d: %s", args.host, args.port, error)
        return 1
    return 0
