"""Host figures for the heartbeat, and the NVML path: absent library, absent driver, and a present one."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from worker_agent.ops import telemetry


class FakeNvmlError(Exception):
    pass


class FakeNvml:
    """The slice of the pynvml API telemetry uses: two boards, the second without utilisation figures."""

    NVMLError = FakeNvmlError

    def __init__(self, init_error: bool = False) -> None:
        self.init_error = init_error
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise FakeNvmlError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return b"Tesla T4" if handle == 0 else "NVIDIA A100-SXM4-40GB"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=16 * 2**30, used=(handle + 1) * 2**20, free=0)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        if handle == 1:
            raise FakeNvmlError("Not Supported")
        return SimpleNamespace(gpu=37, memory=5)


def test_host_info_reports_cpu_load_memory_and_share_space(tmp_path: Path) -> None:
    info = {**telemetry.host_info(), "shared_free_bytes": telemetry.share_free_bytes(tmp_path)}

    assert isinstance(info["cpu_count"], int) and info["cpu_count"] >= 1
    assert len(info["load_avg"]) == 3
    assert 0 < info["memory_available_bytes"] <= info["memory_total_bytes"]
    assert info["shared_free_bytes"] > 0


def test_host_info_on_a_missing_share_has_no_free_space_figure(tmp_path: Path) -> None:
    assert telemetry.share_free_bytes(tmp_path / "gone") is None


def test_no_gpu_keys_when_the_nvml_library_is_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError

    assert telemetry.gpu_info() is None
    info = telemetry.host_info()
    assert "gpus" not in info and "gpu_count" not in info


def test_no_gpus_when_the_library_is_there_but_no_driver() -> None:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py not installed: the no-library case covers this host")
    with pytest.raises(pynvml.NVMLError):
        pynvml.nvmlInit()  # this host has no NVIDIA driver; on one that does this test does not apply
    assert telemetry.gpu_info() is None


def test_no_gpus_when_init_fails() -> None:
    assert telemetry.gpu_info(FakeNvml(init_error=True)) is None


def test_gpus_reported_with_model_memory_and_utilisation() -> None:
    nvml = FakeNvml()

    gpus = telemetry.gpu_info(nvml)

    assert gpus == [
        {
            "index": 0,
            "name": "Tesla T4",
            "memory_total_bytes": 16 * 2**30,
            "memory_used_bytes": 2**20,
            "utilization_percent": 37,
        },
        {
            "index": 1,
            "name": "NVIDIA A100-SXM4-40GB",
            "memory_total_bytes": 16 * 2**30,
            "memory_used_bytes": 2 * 2**20,
            "utilization_percent": None,
        },
    ]
    assert nvml.shutdowns == 1


def test_host_info_carries_gpu_count_and_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(telemetry, "_load_nvml", FakeNvml)

    info = telemetry.host_info()

    assert info["gpu_count"] == 2
    assert [gpu["name"] for gpu in info["gpus"]] == ["Tesla T4", "NVIDIA A100-SXM4-40GB"]
