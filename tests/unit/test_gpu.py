"""WORKER_ENABLE_GPU -> the Docker SDK's DeviceRequest objects (the runtime path is in tests/integration)."""

from __future__ import annotations

import pytest
from docker.types import DeviceRequest

from worker_agent.executors.docker import effective_pull_policy, gpu_requests


def test_no_gpus_means_no_device_requests() -> None:
    assert gpu_requests(None) is None
    assert gpu_requests("") is None


def test_all_gpus_is_count_minus_one_with_the_gpu_capability() -> None:
    requests = gpu_requests("all")

    assert requests is not None and len(requests) == 1
    request = requests[0]
    assert isinstance(request, DeviceRequest)
    assert (request.count, request.device_ids, request.capabilities) == (-1, [], [["gpu"]])
    # What goes over the wire to the Engine API (HostConfig.DeviceRequests), as `docker run --gpus all` sends.
    assert dict(request) == {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}


def test_a_list_of_gpus_becomes_device_ids() -> None:
    requests = gpu_requests("0, 2,GPU-3f2a")

    assert requests is not None and len(requests) == 1
    assert isinstance(requests[0], DeviceRequest)
    assert dict(requests[0]) == {
        "Driver": "",
        "Count": 0,
        "DeviceIDs": ["0", "2", "GPU-3f2a"],
        "Capabilities": [["gpu"]],
        "Options": {},
    }


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("calof/opeva_simulator:latest", "always"),
        ("calof/opeva_simulator", "always"),
        ("registry:5000/opeva/sim", "always"),
        ("calof/opeva_simulator:1.4.2", "if-not-present"),
        ("calof/opeva_simulator@sha256:" + "0" * 64, "if-not-present"),
    ],
)
def test_auto_pull_policy_pulls_latest_every_time_and_pinned_images_once(image: str, policy: str) -> None:
    assert effective_pull_policy("auto", image) == policy
    assert effective_pull_policy("never", image) == "never"
