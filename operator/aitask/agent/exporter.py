"""The GPU agent's exposition: NVML readings, attributed to pods, as Prometheus series.

Series whose meaning overlaps the DCGM exporter's keep its names, units and labels
(``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname``, and ``pod``/``namespace``/
``container`` when the GPU's processes all belong to one pod), so dashboards and the
operator's Prometheus feedback work with either exporter. Note the DCGM units:
``DCGM_FI_DEV_FB_USED``/``FB_FREE`` are MiB, ``POWER_USAGE`` watts, ``GPU_TEMP`` °C.
Everything else is ``aitask_agent_*`` in base units (bytes, seconds).

Readings are taken by :meth:`GpuExporter.refresh` (called every interval by the
agent loop) and rendered from the latest refresh on scrape, so a scrape never
waits on NVML or the Kubernetes API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from aitask.adapters.nvml import GpuReading, NvmlReader, NvmlSnapshot
from aitask.agent.cgroups import PodCgroup, parse_proc_cgroup

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
DCGM_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "container", "namespace", "pod")
GPU_LABELS = ("gpu", "UUID", "modelName", "Hostname")
POD_LABELS = ("gpu", "UUID", "Hostname", "namespace", "pod", "container", "pod_uid")


@dataclass(frozen=True)
class PodRef:
    """A pod on this node: its name, and container IDs (without ``runtime://``) to container names."""

    namespace: str
    name: str
    containers: Mapping[str, str] = field(default_factory=dict)


#: uid -> pod for the pods on this node. Raise LookupError or OSError on failure.
PodResolver = Callable[[], Mapping[str, PodRef]]


@dataclass(frozen=True)
class PodUsage:
    """The GPU use of one container (or of a pod's processes outside any container) on one GPU."""

    gpu_index: int
    pod_uid: str
    container_id: str | None
    namespace: str
    pod: str
    container: str
    memory_used_bytes: int
    util_percent: float | None
    processes: int


@dataclass(frozen=True)
class AgentState:
    """The result of one refresh."""

    snapshot: NvmlSnapshot
    usage: tuple[PodUsage, ...]
    unattributed: Mapping[int, int]
    read_at: float
    read_seconds: float


def container_id_of(status_id: str) -> str:
    """``containerd://abc`` -> ``abc`` (the form in ``pod.status.containerStatuses[].containerID``)."""
    return status_id.split("://", 1)[-1].lower()


class GpuExporter:
    """A prometheus_client Collector over NVML readings attributed to pods through cgroups."""

    def __init__(
        self,
        reader: NvmlReader,
        hostname: str,
        *,
        proc_root: Path = Path("/proc"),
        pod_resolver: PodResolver | None = None,
        resolve_every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._reader = reader
        self._hostname = hostname
        self._proc_root = proc_root
        self._pod_resolver = pod_resolver
        self._resolve_every_s = resolve_every_s
        self._clock = clock
        self._pods: Mapping[str, PodRef] = {}
        self._resolved_at: float | None = None
        self._lock = threading.Lock()
        self._state: AgentState | None = None

    # -- refresh ---------------------------------------------------------------------------------

    def refresh(self) -> AgentState:
        """Read NVML, attribute processes to pods, and keep the result for the next scrapes."""
        started = time.monotonic()
        snapshot = self._reader.read()
        cgroups: dict[int, PodCgroup | None] = {}
        for gpu in snapshot.gpus:
            for process in gpu.processes:
                if process.pid not in cgroups:
                    cgroups[process.pid] = self._cgroup_of(process.pid)
        uids = {cgroup.pod_uid for cgroup in cgroups.values() if cgroup is not None}
        self._maybe_resolve(uids)
        usage, unattributed = self._attribute(snapshot, cgroups)
        state = AgentState(snapshot, usage, unattributed, self._clock(), time.monotonic() - started)
        with self._lock:
            self._state = state
        return state

    def _cgroup_of(self, pid: int) -> PodCgroup | None:
        try:
            text = (self._proc_root / str(pid) / "cgroup").read_text()
        except OSError as error:  # the process exited, or /proc is not the host's
            logger.debug("cgroup of pid %d unreadable: %s", pid, error)
            return None
        return parse_proc_cgroup(text)

    def _maybe_resolve(self, uids: set[str]) -> None:
        if self._pod_resolver is None:
            return
        now = time.monotonic()
        stale = self._resolved_at is None or now - self._resolved_at >= self._resolve_every_s
        unknown = bool(uids - set(self._pods))
        if not stale and not unknown:
            return
        # An unknown pod forces a lookup, but at most one every few seconds.
        if not stale and self._resolved_at is not None and now - self._resolved_at < 5.0:
            return
        self._resolved_at = now
        try:
            self._pods = dict(self._pod_resolver())
        except (LookupError, OSError) as error:
            logger.warning("Pods on node %s could not be listed, labelling by pod_uid: %s", self._hostname, error)

    def _attribute(
        self, snapshot: NvmlSnapshot, cgroups: Mapping[int, PodCgroup | None]
    ) -> tuple[tuple[PodUsage, ...], dict[int, int]]:
        usage: list[PodUsage] = []
        unattributed: dict[int, int] = {}
        for gpu in snapshot.gpus:
            groups: dict[tuple[str, str | None], list[tuple[int, float | None]]] = {}
            for process in gpu.processes:
                cgroup = cgroups.get(process.pid)
                if cgroup is None:
                    unattributed[gpu.index] = unattributed.get(gpu.index, 0) + 1
                    continue
                groups.setdefault((cgroup.pod_uid, cgroup.container_id), []).append(
                    (process.used_memory_bytes or 0, process.sm_util_percent)
                )
            for (uid, container_id), processes in sorted(groups.items(), key=lambda item: str(item[0])):
                pod = self._pods.get(uid)
                utils = [util for _, util in processes if util is not None]
                usage.append(
                    PodUsage(
                        gpu_index=gpu.index,
                        pod_uid=uid,
                        container_id=container_id,
                        namespace=pod.namespace if pod else "",
                        pod=pod.name if pod else "",
                        container=(pod.containers.get(container_id, "") if pod and container_id else ""),
                        memory_used_bytes=sum(memory for memory, _ in processes),
                        util_percent=min(sum(utils), 100.0) if utils else None,
                        processes=len(processes),
                    )
                )
        return tuple(usage), unattributed

    # -- collect ---------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Render the latest refresh (refreshing first if there was none)."""
        with self._lock:
            state = self._state
        if state is None:
            state = self.refresh()
        yield from self._render(state)

    def _render(self, state: AgentState) -> Iterator[Metric]:
        snapshot = state.snapshot
        up = GaugeMetricFamily(
            "aitask_agent_nvml_up",
            "1 when NVML is usable on this node; 0 with the reason (e.g. library_not_found: no driver).",
            labels=["Hostname", "reason"],
        )
        up.add_metric([self._hostname, snapshot.reason], 1 if snapshot.available else 0)
        yield up
        read = GaugeMetricFamily(
            "aitask_agent_last_read_timestamp_seconds",
            "Unix time of the last NVML read.",
            labels=["Hostname"],
        )
        read.add_metric([self._hostname], state.read_at)
        yield read
        duration = GaugeMetricFamily(
            "aitask_agent_read_duration_seconds",
            "Duration of the last NVML read and pod attribution.",
            labels=["Hostname"],
        )
        duration.add_metric([self._hostname], state.read_seconds)
        yield duration
        if not snapshot.available:
            return
        info = GaugeMetricFamily(
            "aitask_agent_driver_info",
            "NVIDIA driver version (value 1).",
            labels=["Hostname", "driver_version"],
        )
        info.add_metric([self._hostname, snapshot.driver_version], 1)
        yield info
        count = GaugeMetricFamily("aitask_agent_gpus", "Number of GPUs NVML reports.", labels=["Hostname"])
        count.add_metric([self._hostname], len(snapshot.gpus))
        yield count
        yield from self._render_dcgm(state)
        yield from self._render_gpus(state)
        yield from self._render_pods(state)

    def _dcgm_labels(self, gpu: GpuReading, owner: PodUsage | None) -> list[str]:
        return [
            str(gpu.index),
            gpu.uuid,
            f"nvidia{gpu.index}",
            gpu.name,
            self._hostname,
            owner.container if owner else "",
            owner.namespace if owner else "",
            owner.pod if owner else "",
        ]

    def _owner(self, state: AgentState, gpu: GpuReading) -> PodUsage | None:
        """The GPU's pod when all of its attributable processes are in one named pod and none is unknown."""
        usages = [usage for usage in state.usage if usage.gpu_index == gpu.index]
        pods = {(usage.namespace, usage.pod) for usage in usages}
        if len(pods) != 1 or state.unattributed.get(gpu.index) or not usages[0].pod:
            return None
        containers = {usage.container for usage in usages}
        first = usages[0]
        if len(containers) == 1:
            return first
        return PodUsage(first.gpu_index, first.pod_uid, None, first.namespace, first.pod, "", 0, None, 0)

    def _render_dcgm(self, state: AgentState) -> Iterator[Metric]:
        families = {
            "util": GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=DCGM_LABELS),
            "mem_util": GaugeMetricFamily(
                "DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", labels=DCGM_LABELS
            ),
            "fb_used": GaugeMetricFamily(
                "DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=DCGM_LABELS
            ),
            "fb_free": GaugeMetricFamily(
                "DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels=DCGM_LABELS
            ),
            "power": GaugeMetricFamily("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", labels=DCGM_LABELS),
            "temp": GaugeMetricFamily("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", labels=DCGM_LABELS),
        }
        for gpu in state.snapshot.gpus:
            labels = self._dcgm_labels(gpu, self._owner(state, gpu))
            values = {
                "util": gpu.util_percent,
                "mem_util": gpu.memory_util_percent,
                "fb_used": gpu.memory_used_bytes / _MIB if gpu.memory_used_bytes is not None else None,
                "fb_free": gpu.memory_free_bytes / _MIB if gpu.memory_free_bytes is not None else None,
                "power": gpu.power_watts,
                "temp": gpu.temperature_celsius,
            }
            for key, value in values.items():
                if value is not None:
                    families[key].add_metric(labels, value)
        yield from families.values()

    def _render_gpus(self, state: AgentState) -> Iterator[Metric]:
        used = GaugeMetricFamily("aitask_agent_gpu_memory_used_bytes", "GPU memory used.", labels=GPU_LABELS)
        total = GaugeMetricFamily("aitask_agent_gpu_memory_total_bytes", "GPU memory installed.", labels=GPU_LABELS)
        unattributed = GaugeMetricFamily(
            "aitask_agent_gpu_unattributed_processes",
            "Processes on the GPU that belong to no pod (host processes, or /proc not the host's).",
            labels=GPU_LABELS,
        )
        for gpu in state.snapshot.gpus:
            labels = [str(gpu.index), gpu.uuid, gpu.name, self._hostname]
            if gpu.memory_used_bytes is not None:
                used.add_metric(labels, gpu.memory_used_bytes)
            if gpu.memory_total_bytes is not None:
                total.add_metric(labels, gpu.memory_total_bytes)
            unattributed.add_metric(labels, state.unattributed.get(gpu.index, 0))
        yield from (used, total, unattributed)

    def _render_pods(self, state: AgentState) -> Iterator[Metric]:
        memory = GaugeMetricFamily(
            "aitask_agent_pod_gpu_memory_used_bytes",
            "GPU memory used by the processes of a pod's container on one GPU.",
            labels=POD_LABELS,
        )
        util = GaugeMetricFamily(
            "aitask_agent_pod_gpu_utilization_percent",
            "SM utilisation of a pod's container's processes on one GPU (NVML process samples).",
            labels=POD_LABELS,
        )
        processes = GaugeMetricFamily(
            "aitask_agent_pod_gpu_processes", "Processes of a pod's container on one GPU.", labels=POD_LABELS
        )
        gpus = {gpu.index: gpu for gpu in state.snapshot.gpus}
        for usage in state.usage:
            gpu = gpus[usage.gpu_index]
            labels = [
                str(gpu.index),
                gpu.uuid,
                self._hostname,
                usage.namespace,
                usage.pod,
                usage.container,
                usage.pod_uid,
            ]
            memory.add_metric(labels, usage.memory_used_bytes)
            processes.add_metric(labels, usage.processes)
            if usage.util_percent is not None:
                util.add_metric(labels, usage.util_percent)
        yield from (memory, util, processes)
