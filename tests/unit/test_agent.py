"""The GPU agent over a fake NVML module: DCGM-compatible series with pod attribution, the no-driver
state, per-process readings, and a scrape of the real HTTP server."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aitask.adapters.nvml import REASON_LIBRARY_NOT_FOUND, REASON_OK, GpuProcess, NvmlReader
from aitask.agent.exporter import GpuExporter, PodRef, container_id_of
from aitask.agent.main import build_registry, main, run_agent

MIB = 1024 * 1024
UID_A = "11111111-2222-3333-4444-555555555555"
UID_B = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
CID_A = "a" * 64
CID_B = "b" * 64


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    uuid: str
    name: str = "Tesla-V100-SXM2-16GB"
    util: int = 0
    mem_util: int = 0
    used: int = 0
    total: int = 16 * 1024 * MIB
    power_mw: int | None = 50_000
    temp: int = 40
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, used bytes)
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # (pid, timestamp, smUtil)


class FakeNvml:
    """Implements the pynvml calls NvmlReader uses, over a list of FakeGpu (no GPU: init fails)."""

    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NOT_FOUND = 6

    def __init__(self, gpus: list[FakeGpu] | None, init_error: int | None = None) -> None:
        self.gpus = gpus or []
        self.init_error = init_error
        self.initialised = 0
        self.shutdowns = 0
        self.utilisation_since: list[int] = []

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> bytes:  # noqa: N802
        return b"550.54.15"

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:  # noqa: N802
        return gpu.uuid

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:  # noqa: N802
        return gpu.name

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> Any:  # noqa: N802
        return SimpleNamespace(gpu=gpu.util, memory=gpu.mem_util)

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> Any:  # noqa: N802
        return SimpleNamespace(used=gpu.used, total=gpu.total, free=gpu.total - gpu.used)

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:  # noqa: N802
        if gpu.power_mw is None:
            raise FakeNVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return gpu.power_mw

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:  # noqa: N802
        assert sensor == self.NVML_TEMPERATURE_GPU
        return gpu.temp

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[Any]:  # noqa: N802
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]

    def nvmlDeviceGetGraphicsRunningProcesses(self, gpu: FakeGpu) -> list[Any]:  # noqa: N802
        return []

    def nvmlDeviceGetProcessUtilization(self, gpu: FakeGpu, since: int) -> list[Any]:  # noqa: N802
        self.utilisation_since.append(since)
        samples = [s for s in gpu.samples if s[1] > since]
        if not samples:
            raise FakeNVMLError(self.NVML_ERROR_NOT_FOUND)
        return [SimpleNamespace(pid=p, timeStamp=t, smUtil=u, memUtil=u // 2) for p, t, u in samples]


def write_cgroup(proc: Path, pid: int, text: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(text)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """A fake host /proc: pids 100 and 101 in pod A (systemd, cgroup v2), 200 in pod B (cgroupfs v1),
    300 a host process, 400 gone."""
    root = tmp_path / "proc"
    uid_a = UID_A.replace("-", "_")
    write_cgroup(
        root,
        100,
        f"0::/kubepods.slice/kubepods-pod{uid_a}.slice/cri-containerd-{CID_A}.scope\n",
    )
    write_cgroup(
        root,
        101,
        f"0::/kubepods.slice/kubepods-pod{uid_a}.slice/cri-containerd-{CID_A}.scope\n",
    )
    write_cgroup(root, 200, f"12:memory:/kubepods/burstable/pod{UID_B}/{CID_B}\n1:name=systemd:/\n")
    write_cgroup(root, 300, "0::/system.slice/nvidia-persistenced.service\n")
    return root


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(
            "GPU-0000",
            util=87,
            mem_util=40,
            used=4096 * MIB,
            processes=[(100, 3000 * MIB), (101, 1000 * MIB)],
            samples=[(100, 10, 60), (100, 20, 80), (101, 20, 10)],
        ),
        FakeGpu(
            "GPU-1111",
            util=12,
            used=2048 * MIB,
            power_mw=None,
            processes=[(200, 1500 * MIB), (300, 500 * MIB), (400, None)],
        ),
    ]


def resolver() -> Mapping[str, PodRef]:
    return {UID_A: PodRef("ml", "train-a-0-abcde", {CID_A: "trainer"})}


def samples(exporter: GpuExporter) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = build_registry(exporter)
    text = generate_latest(registry).decode()
    result: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return result


def one(series: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> tuple[dict[str, str], float]:
    found = [(labels, value) for labels, value in series.get(name, []) if match.items() <= labels.items()]
    assert len(found) == 1, (name, match, series.get(name))
    return found[0]


def test_reader_returns_gpu_and_process_readings() -> None:
    fake = FakeNvml(two_gpus())
    snapshot = NvmlReader(fake).read()
    assert snapshot.available
    assert snapshot.reason == REASON_OK
    assert snapshot.driver_version == "550.54.15"
    gpu0, gpu1 = snapshot.gpus
    assert (gpu0.uuid, gpu0.util_percent, gpu0.memory_used_bytes, gpu0.power_watts) == ("GPU-0000", 87, 4096 * MIB, 50)
    assert gpu1.power_watts is None  # NOT_SUPPORTED on this device
    assert gpu0.processes == (
        GpuProcess(100, 3000 * MIB, sm_util_percent=70.0, mem_util_percent=35.0),
        GpuProcess(101, 1000 * MIB, sm_util_percent=10.0, mem_util_percent=5.0),
    )
    assert gpu1.processes[2] == GpuProcess(400, None)


def test_process_utilisation_reads_only_new_samples() -> None:
    fake = FakeNvml(two_gpus())
    reader = NvmlReader(fake)
    reader.read()
    second = reader.read()
    assert fake.utilisation_since[-2:] == [20, 0]  # GPU 0 resumes after its last sample; GPU 1 had none
    assert second.gpus[0].processes[0].sm_util_percent is None


def test_exporter_renders_dcgm_names_with_pod_attribution(proc: Path) -> None:
    exporter = GpuExporter(NvmlReader(FakeNvml(two_gpus())), "node-1", proc_root=proc, pod_resolver=resolver)
    series = samples(exporter)

    assert one(series, "aitask_agent_nvml_up")[1] == 1
    assert one(series, "aitask_agent_gpus")[1] == 2
    labels, util = one(series, "DCGM_FI_DEV_GPU_UTIL", gpu="0")
    assert util == 87
    assert labels == {
        "gpu": "0",
        "UUID": "GPU-0000",
        "device": "nvidia0",
        "modelName": "Tesla-V100-SXM2-16GB",
        "Hostname": "node-1",
        "namespace": "ml",
        "pod": "train-a-0-abcde",
        "container": "trainer",
    }
    assert one(series, "DCGM_FI_DEV_FB_USED", gpu="0")[1] == 4096  # MiB, as DCGM
    assert one(series, "DCGM_FI_DEV_FB_FREE", gpu="0")[1] == 16 * 1024 - 4096
    assert one(series, "DCGM_FI_DEV_GPU_TEMP", gpu="1")[1] == 40
    assert one(series, "DCGM_FI_DEV_POWER_USAGE", gpu="0")[1] == 50
    assert [labels["gpu"] for labels, _ in series["DCGM_FI_DEV_POWER_USAGE"]] == ["0"]
    # GPU 1 is shared by an unnamed pod and a host process: no pod on the device series.
    assert one(series, "DCGM_FI_DEV_GPU_UTIL", gpu="1")[0]["pod"] == ""

    assert one(series, "aitask_agent_gpu_memory_total_bytes", gpu="1")[1] == 16 * 1024 * MIB
    assert one(series, "aitask_agent_gpu_unattributed_processes", gpu="1")[1] == 2

    labels, used = one(series, "aitask_agent_pod_gpu_memory_used_bytes", pod="train-a-0-abcde")
    assert used == 4000 * MIB
    assert labels["pod_uid"] == UID_A
    assert labels["container"] == "trainer"
    assert one(series, "aitask_agent_pod_gpu_utilization_percent", pod="train-a-0-abcde")[1] == 80
    assert one(series, "aitask_agent_pod_gpu_processes", pod="train-a-0-abcde")[1] == 2
    # Pod B is not known to the resolver: labelled by its UID only.
    labels, used = one(series, "aitask_agent_pod_gpu_memory_used_bytes", pod_uid=UID_B)
    assert (labels["pod"], labels["namespace"], used) == ("", "", 1500 * MIB)


def test_without_a_resolver_pods_carry_only_their_uid(proc: Path) -> None:
    series = samples(GpuExporter(NvmlReader(FakeNvml(two_gpus())), "node-1", proc_root=proc))
    assert {labels["pod_uid"] for labels, _ in series["aitask_agent_pod_gpu_memory_used_bytes"]} == {UID_A, UID_B}
    assert one(series, "DCGM_FI_DEV_GPU_UTIL", gpu="0")[0]["pod"] == ""


def test_failing_resolver_degrades_to_uids(proc: Path) -> None:
    def broken() -> Mapping[str, PodRef]:
        raise LookupError("apiserver unreachable")

    series = samples(GpuExporter(NvmlReader(FakeNvml(two_gpus())), "n", proc_root=proc, pod_resolver=broken))
    assert len(series["aitask_agent_pod_gpu_memory_used_bytes"]) == 2


@pytest.mark.parametrize(
    ("error", "reason"),
    [(12, REASON_LIBRARY_NOT_FOUND), (9, "driver_not_loaded"), (4, "no_permission"), (999, "init_failed")],
    ids=["no-library", "no-driver", "no-permission", "other"],
)
def test_without_driver_only_nvml_up_zero_is_served(
    proc: Path, caplog: pytest.LogCaptureFixture, error: int, reason: str
) -> None:
    exporter = GpuExporter(NvmlReader(FakeNvml(None, init_error=error)), "cpu-node", proc_root=proc)
    with caplog.at_level("WARNING"):
        series = samples(exporter)
    labels, up = one(series, "aitask_agent_nvml_up")
    assert (up, labels["reason"]) == (0, reason)
    assert not [name for name in series if name.startswith(("DCGM_", "aitask_agent_gpu", "aitask_agent_pod"))]
    assert "NVML unavailable" in caplog.text
    assert "serving no GPU series" in caplog.text


def test_missing_pynvml_module_is_reported() -> None:
    reader = NvmlReader()
    reader._nvml = None  # as if nvidia-ml-py were not installed
    snapshot = reader.read()
    assert (snapshot.available, snapshot.reason) == (False, "import_error")


def test_real_pynvml_without_driver_does_not_raise() -> None:
    snapshot = NvmlReader().read()  # the real library: a GPU machine reports GPUs, others say why not
    assert snapshot.available or snapshot.reason in {"library_not_found", "driver_not_loaded", "init_failed"}


def test_driver_appearing_later_is_picked_up(proc: Path) -> None:
    fake = FakeNvml(two_gpus(), init_error=12)
    reader = NvmlReader(fake)
    assert not reader.read().available
    fake.init_error = None
    assert reader.read().available
    reader.close()
    assert fake.shutdowns == 1


def test_container_id_of() -> None:
    assert container_id_of("containerd://ABC123") == "abc123"
    assert container_id_of("abc") == "abc"


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.status, response.read().decode()


@pytest.fixture
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_in_thread(stop: threading.Event, **kwargs: Any) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=run_agent, kwargs={"stop": stop, **kwargs}, daemon=True)
    thread.start()
    yield thread
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def wait_for_scrape(port: int, deadline_s: float = 5.0) -> str:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            status, body = scrape(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        assert status == 200
        return body


def test_agent_serves_gpu_series_over_http(proc: Path, free_port: int) -> None:
    stop = threading.Event()
    runner = run_in_thread(
        stop,
        host="127.0.0.1",
        port=free_port,
        node_name="node-1",
        interval=0.05,
        proc_root=proc,
        nvml=FakeNvml(two_gpus()),
        pod_resolver=resolver,
    )
    next(runner)
    try:
        body = wait_for_scrape(free_port)
        assert 'aitask_agent_nvml_up{Hostname="node-1",reason="ok"} 1.0' in body
        assert 'DCGM_FI_DEV_GPU_UTIL{Hostname="node-1",UUID="GPU-0000",container="trainer"' in body
        assert scrape(free_port, "/healthz") == (200, "ok\n")
        assert scrape(free_port, "/readyz")[0] == 200
    finally:
        next(runner, None)


def test_agent_without_driver_over_http(proc: Path, free_port: int) -> None:
    stop = threading.Event()
    runner = run_in_thread(
        stop,
        host="127.0.0.1",
        port=free_port,
        node_name="cpu-node",
        interval=0.05,
        proc_root=proc,
        nvml=FakeNvml(None, init_error=12),
    )
    next(runner)
    try:
        body = wait_for_scrape(free_port)
        assert 'aitask_agent_nvml_up{Hostname="cpu-node",reason="library_not_found"} 0.0' in body
        assert "DCGM_FI_DEV" not in body
    finally:
        next(runner, None)


def test_main_rejects_a_bad_interval() -> None:
    assert main(["--interval", "0", "--no-kubernetes"]) == 2
