"""Guarded access to NVML (nvidia-ml-py, imported as ``pynvml``).

The only module that talks to NVML. It never raises on a machine without an
NVIDIA driver: :class:`NvmlReader` reports ``available=False`` with a short,
bounded ``reason`` (used as a metric label) and a human ``detail`` (for the log),
and retries the initialisation on every read, so a driver that appears later
(or comes back after a reload) is picked up.

Tests inject a fake module object implementing the calls used here:
``nvmlInit``, ``nvmlShutdown``, ``nvmlSystemGetDriverVersion``,
``nvmlDeviceGetCount``, ``nvmlDeviceGetHandleByIndex``, ``nvmlDeviceGetUUID``,
``nvmlDeviceGetName``, ``nvmlDeviceGetUtilizationRates`` (``.gpu``, ``.memory``),
``nvmlDeviceGetMemoryInfo`` (``.used``, ``.total``, ``.free``),
``nvmlDeviceGetPowerUsage`` (milliwatts), ``nvmlDeviceGetTemperature``,
``nvmlDeviceGetComputeRunningProcesses`` / ``nvmlDeviceGetGraphicsRunningProcesses``
(``.pid``, ``.usedGpuMemory``), ``nvmlDeviceGetProcessUtilization`` (samples with
``.pid``, ``.timeStamp``, ``.smUtil``, ``.memUtil``), the ``NVMLError`` class
(with ``.value``) and the constants ``NVML_TEMPERATURE_GPU``,
``NVML_ERROR_LIBRARY_NOT_FOUND``, ``NVML_ERROR_DRIVER_NOT_LOADED``,
``NVML_ERROR_NO_PERMISSION``, ``NVML_ERROR_NOT_FOUND``.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: Bounded values of :attr:`NvmlSnapshot.reason`.
REASON_OK = "ok"
REASON_IMPORT_ERROR = "import_error"
REASON_LIBRARY_NOT_FOUND = "library_not_found"
REASON_DRIVER_NOT_LOADED = "driver_not_loaded"
REASON_NO_PERMISSION = "no_permission"
REASON_INIT_FAILED = "init_failed"
REASON_NO_DEVICES = "no_devices"


@dataclass(frozen=True)
class GpuProcess:
    """One process using a GPU, as NVML sees it (host PID namespace)."""

    pid: int
    used_memory_bytes: int | None
    sm_util_percent: float | None = None
    mem_util_percent: float | None = None


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant; ``None`` where the device does not support a reading."""

    index: int
    uuid: str
    name: str
    util_percent: float | None
    memory_util_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    memory_free_bytes: int | None
    power_watts: float | None
    temperature_celsius: float | None
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class NvmlSnapshot:
    """The result of one read: GPUs when NVML is available, else why not."""

    available: bool
    reason: str
    detail: str = ""
    driver_version: str = ""
    gpus: tuple[GpuReading, ...] = field(default_factory=tuple)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def import_pynvml() -> Any:
    """Import the real ``pynvml``; ``None`` when nvidia-ml-py is not installed."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


class NvmlReader:
    """Reads GPU and per-process readings; thread-safe; never raises NVML errors.

    ``nvml`` is the pynvml module (default: import the real one), injectable for tests.
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml if nvml is not None else import_pynvml()
        self._lock = threading.Lock()
        self._initialised = False
        self._driver_version = ""
        self._last_state: tuple[bool, str] | None = None
        # Per GPU index: timestamp (microseconds) of the last process-utilisation sample seen.
        self._last_sample_ts: dict[int, int] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    def _init(self) -> NvmlSnapshot | None:
        """Initialise NVML if needed; a snapshot describing the failure, or None on success."""
        if self._initialised:
            return None
        nvml = self._nvml
        if nvml is None:
            return NvmlSnapshot(False, REASON_IMPORT_ERROR, "nvidia-ml-py (pynvml) is not installed")
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            return NvmlSnapshot(False, self._reason(error), f"NVML initialisation failed: {error}")
        except OSError as error:  # a broken libnvidia-ml.so can fail at load time
            return NvmlSnapshot(False, REASON_LIBRARY_NOT_FOUND, f"NVML library could not be loaded: {error}")
        self._initialised = True
        try:
            self._driver_version = _text(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError:
            self._driver_version = ""
        return None

    def _reason(self, error: Any) -> str:
        nvml = self._nvml
        code = getattr(error, "value", None)
        by_code = {
            getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", -1): REASON_LIBRARY_NOT_FOUND,
            getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", -1): REASON_DRIVER_NOT_LOADED,
            getattr(nvml, "NVML_ERROR_NO_PERMISSION", -1): REASON_NO_PERMISSION,
        }
        return by_code.get(code, REASON_INIT_FAILED)

    def close(self) -> None:
        """Shut NVML down (idempotent)."""
        with self._lock:
            if self._initialised and self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError as error:
                    logger.debug("nvmlShutdown failed: %s", error)
            self._initialised = False

    # -- reading ---------------------------------------------------------------------------------

    def read(self) -> NvmlSnapshot:
        """Read every GPU; on a device-wide NVML failure, re-initialise on the next read."""
        with self._lock:
            failure = self._init()
            if failure is not None:
                self._log_state(failure)
                return failure
            nvml = self._nvml
            try:
                count = int(nvml.nvmlDeviceGetCount())
            except nvml.NVMLError as error:
                self._initialised = False
                snapshot = NvmlSnapshot(False, REASON_INIT_FAILED, f"nvmlDeviceGetCount failed: {error}")
                self._log_state(snapshot)
                return snapshot
            gpus = []
            for index in range(count):
                try:
                    gpus.append(self._read_gpu(index))
                except nvml.NVMLError as error:
                    logger.warning("GPU %d could not be read, skipped: %s", index, error)
            reason = REASON_OK if count else REASON_NO_DEVICES
            snapshot = NvmlSnapshot(True, reason, "", self._driver_version, tuple(gpus))
            self._log_state(snapshot)
            return snapshot

    def _log_state(self, snapshot: NvmlSnapshot) -> None:
        state = (snapshot.available, snapshot.reason)
        if state == self._last_state:
            return
        self._last_state = state
        if snapshot.available:
            logger.info("NVML available: driver %s, %d GPU(s)", snapshot.driver_version or "?", len(snapshot.gpus))
        else:
            logger.warning(
                "NVML unavailable (%s): %s; no NVIDIA driver usable on this node, serving no GPU series",
                snapshot.reason,
                snapshot.detail,
            )

    def _optional(self, call: Any, *args: Any) -> Any:
        """Call an NVML function; None where the device does not support it."""
        try:
            return call(*args)
        except self._nvml.NVMLError as error:
            logger.debug("%s not available: %s", getattr(call, "__name__", call), error)
            return None

    def _read_gpu(self, index: int) -> GpuReading:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        name = _text(nvml.nvmlDeviceGetName(handle))
        rates = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = self._optional(nvml.nvmlDeviceGetMemoryInfo, handle)
        power_mw = self._optional(nvml.nvmlDeviceGetPowerUsage, handle)
        temperature = self._optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        return GpuReading(
            index=index,
            uuid=uuid,
            name=name,
            util_percent=float(rates.gpu) if rates is not None else None,
            memory_util_percent=float(rates.memory) if rates is not None else None,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            memory_free_bytes=int(memory.free) if memory is not None else None,
            power_watts=float(power_mw) / 1000.0 if power_mw is not None else None,
            temperature_celsius=float(temperature) if temperature is not None else None,
            processes=self._read_processes(index, handle),
        )

    def _read_processes(self, index: int, handle: Any) -> tuple[GpuProcess, ...]:
        nvml = self._nvml
        memory_by_pid: dict[int, int | None] = {}
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            call = getattr(nvml, getter, None)
            if call is None:
                continue
            for process in self._optional(call, handle) or ():
                pid = int(process.pid)
                used = getattr(process, "usedGpuMemory", None)
                used_bytes = int(used) if isinstance(used, int) else None
                previous = memory_by_pid.get(pid)
                if previous is None or (used_bytes is not None and used_bytes > previous):
                    memory_by_pid[pid] = used_bytes
        utilisation = self._process_utilisation(index, handle)
        return tuple(
            GpuProcess(
                pid=pid,
                used_memory_bytes=memory_by_pid.get(pid),
                sm_util_percent=utilisation.get(pid, (None, None))[0],
                mem_util_percent=utilisation.get(pid, (None, None))[1],
            )
            for pid in sorted(set(memory_by_pid) | set(utilisation))
        )

    def _process_utilisation(self, index: int, handle: Any) -> dict[int, tuple[float, float]]:
        """Mean SM and memory utilisation per PID over the samples since the previous read."""
        nvml = self._nvml
        call = getattr(nvml, "nvmlDeviceGetProcessUtilization", None)
        if call is None:
            return {}
        try:
            samples = call(handle, self._last_sample_ts.get(index, 0))
        except nvml.NVMLError as error:
            # NOT_FOUND: no sample since the timestamp (idle GPU); NOT_SUPPORTED: older GPUs.
            logger.debug("process utilisation of GPU %d unavailable: %s", index, error)
            return {}
        sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        latest = self._last_sample_ts.get(index, 0)
        for sample in samples:
            pid = int(sample.pid)
            if pid == 0:
                continue
            acc = sums[pid]
            acc[0] += float(sample.smUtil)
            acc[1] += float(sample.memUtil)
            acc[2] += 1
            latest = max(latest, int(sample.timeStamp))
        self._last_sample_ts[index] = latest
        return {pid: (acc[0] / acc[2], acc[1] / acc[2]) for pid, acc in sums.items()}
