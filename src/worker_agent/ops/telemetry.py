"""Host figures for the heartbeat: what the backend's hosts view shows about this machine."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)


def host_info() -> dict[str, Any]:
    """CPU, load, memory and GPUs. Nothing here touches the share: a hung NFS mount must not stop heartbeats."""
    memory = psutil.virtual_memory()
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "load_avg": [round(value, 2) for value in os.getloadavg()],
        "memory_total_bytes": memory.total,
        "memory_available_bytes": memory.available,
    }
    gpus = gpu_info()
    if gpus is not None:
        info["gpu_count"] = len(gpus)
        info["gpus"] = gpus
    return info


def share_free_bytes(shared_dir: Path) -> int | None:
    try:
        return shutil.disk_usage(shared_dir).free
    except OSError:
        return None


def _load_nvml() -> Any | None:
    """The NVML bindings (package nvidia-ml-py, an optional dependency), or None when not installed."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def gpu_info(nvml: Any | None = None) -> list[dict[str, Any]] | None:
    """NVIDIA GPUs through NVML: model, memory and utilisation of each; None without bindings or driver.

    A host without GPUs is normal: nothing here ever raises, the heartbeat just has no GPU keys.
    """
    nvml = nvml if nvml is not None else _load_nvml()
    if nvml is None:
        return None
    error = nvml.NVMLError
    try:
        nvml.nvmlInit()
    except error:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no usable NVIDIA driver
        return None
    try:
        return [_device(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
    except error as exc:  # a driver that answers init but not the device queries
        log.debug("NVML device query failed: %s", exc)
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except error as exc:
            log.debug("NVML shutdown failed: %s", exc)


def _device(nvml: Any, index: int) -> dict[str, Any]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        utilisation: int | None = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except nvml.NVMLError:  # NVMLError_NotSupported on some boards
        utilisation = None
    return {
        "index": index,
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "memory_total_bytes": int(memory.total),
        "memory_used_bytes": int(memory.used),
        "utilization_percent": utilisation,
    }
