"""Policy: which images, host paths and host privileges a payload may ask for."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest

from worker_agent.config import Settings
from worker_agent.domain import Mount
from worker_agent.payload import PayloadError, parse
from worker_agent.policy import build_spec, secret_values


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    (root / "configs").mkdir(parents=True)
    (root / "datasets" / "d1").mkdir(parents=True)
    (root / "configs" / "a.yaml").write_text("a")
    return root


@pytest.fixture
def settings(shared: Path) -> Settings:
    return Settings(shared_dir=shared, worker_id="w1", image="registry.example/opeva/sim:1.0")


def spec_for(settings: Settings, **fields: Any) -> Any:
    return build_spec(parse({"job_id": "j1", "config_path": "configs/a.yaml", **fields}), settings)


def refused(settings: Settings, **fields: Any) -> str:
    with pytest.raises(PayloadError) as caught:
        spec_for(settings, **fields)
    assert caught.value.job_id == "j1"
    return caught.value.reason


def test_legacy_payload_runs_the_worker_image_with_the_share_at_data(settings: Settings, shared: Path) -> None:
    spec = spec_for(settings)
    assert spec.image == "registry.example/opeva/sim:1.0"
    assert spec.mounts == [Mount(str(shared), "/data")]
    assert spec.worker_id == "w1"
    assert (spec.privileged, spec.network_mode, spec.pid_mode) == (False, None, None)


def test_default_allow_list_is_the_worker_images_repository(settings: Settings) -> None:
    assert spec_for(settings, image="registry.example/opeva/sim:2.0").image == "registry.example/opeva/sim:2.0"
    assert spec_for(settings, image="registry.example/opeva/sim@sha256:ab").image.endswith("@sha256:ab")
    for image in ("alpine:latest", "registry.example/opeva/sim-evil:1", "registry.example/opeva/simx"):
        assert "not in ALLOWED_IMAGES" in refused(settings, image=image)


def test_allowed_images_globs(settings: Settings) -> None:
    custom = dataclasses.replace(settings, allowed_images=("opeva-test-*", "ghcr.io/opeva/*:v*"))
    assert spec_for(custom, image="opeva-test-busybox:latest").image == "opeva-test-busybox:latest"
    assert spec_for(custom, image="ghcr.io/opeva/sim:v3").image == "ghcr.io/opeva/sim:v3"
    assert "ALLOWED_IMAGES" in refused(custom, image="ghcr.io/opeva/sim:latest")
    # The worker's own image is not implicitly allowed once ALLOWED_IMAGES is set.
    assert "ALLOWED_IMAGES" in refused(custom)


def test_by_default_no_payload_volume_but_the_share_itself(settings: Settings, shared: Path) -> None:
    # A job can write to the share, so it could swap a checked folder for a symlink before Docker mounts it.
    spec = spec_for(settings, volumes=[{"host": str(shared), "container": "/data", "mode": "rw"}])
    assert spec.mounts == [Mount(str(shared), "/data")]  # from the worker's own setting, not from the payload
    reason = refused(settings, volumes=[{"host": f"{shared}/datasets", "container": "/input"}])
    assert "ALLOWED_VOLUME_ROOTS" in reason


@pytest.mark.parametrize("host", ["/", "/etc", "/var/run/docker.sock", "/run/docker.sock", "/var/run"])
def test_host_paths_outside_the_allowed_roots_are_refused(settings: Settings, shared: Path, host: str) -> None:
    opted_in = dataclasses.replace(settings, allowed_volume_roots=(shared,))
    assert "outside the allowed host paths" in refused(opted_in, volumes=[{"host": host, "container": "/x"}])


def test_symlink_out_of_an_allowed_root_is_refused(settings: Settings, shared: Path, tmp_path: Path) -> None:
    opted_in = dataclasses.replace(settings, allowed_volume_roots=(shared,))
    (tmp_path / "outside").mkdir()
    (shared / "escape").symlink_to(tmp_path / "outside")
    (shared / "loop").symlink_to(shared / "loop")
    for host in (f"{shared}/escape", f"{shared}/escape/sub", f"{shared}/loop"):
        assert "outside the allowed host paths" in refused(opted_in, volumes=[{"host": host, "container": "/x"}])


def test_allowed_volume_roots_are_an_opt_in_and_must_be_visible(settings: Settings, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    (scratch / "run1").mkdir(parents=True)
    custom = dataclasses.replace(settings, allowed_volume_roots=(scratch,))
    spec = spec_for(custom, volumes=[{"host": f"{scratch}/run1", "container": "/scratch", "mode": "ro"}])
    assert spec.mounts[-1] == Mount(str(scratch / "run1"), "/scratch", True)
    unseen = dataclasses.replace(settings, allowed_volume_roots=(tmp_path / "not-mounted-here",))
    reason = refused(unseen, volumes=[{"host": f"{tmp_path}/not-mounted-here/x", "container": "/x"}])
    assert "not visible to the worker" in reason


def test_a_socket_or_a_folder_holding_the_docker_socket_is_refused(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(run / "docker.sock"))
        monkeypatch.setenv("DOCKER_HOST", f"unix://{run}/docker.sock")
        wide = dataclasses.replace(settings, allowed_volume_roots=(tmp_path,))
        assert "Docker socket" in refused(wide, volumes=[{"host": str(run / "docker.sock"), "container": "/s"}])
        assert "Docker socket" in refused(wide, volumes=[{"host": str(run), "container": "/s"}])
        assert "Docker socket" in refused(wide, volumes=[{"host": str(tmp_path), "container": "/s"}])


def test_volume_targets_inside_data_are_refused(settings: Settings, shared: Path) -> None:
    settings = dataclasses.replace(settings, allowed_volume_roots=(shared,))
    reason = refused(settings, volumes=[{"host": f"{shared}/datasets", "container": "/data/jobs/other"}])
    assert "shadow" in reason


def test_privileged_refused_unless_allowed(settings: Settings) -> None:
    assert "ALLOW_PRIVILEGED" in refused(settings, privileged=True)
    assert spec_for(dataclasses.replace(settings, allow_privileged=True), privileged=True).privileged


@pytest.mark.parametrize("option", ["network_mode", "pid_mode"])
def test_host_namespaces_refused_unless_allowed(settings: Settings, option: str) -> None:
    assert "ALLOW_HOST_NAMESPACES" in refused(settings, **{option: "host"})
    allowed = dataclasses.replace(settings, allow_host_namespaces=True)
    assert getattr(spec_for(allowed, **{option: "host"}), option) == "host"
    # Joining another container's namespaces is never allowed.
    assert "another container" in refused(allowed, **{option: "container:opeva-job-x"})


def test_only_bridge_none_and_allowed_networks_pass_and_unknown_pid_modes_do_not(settings: Settings) -> None:
    assert spec_for(settings, network_mode="none").network_mode == "none"
    assert spec_for(settings, network_mode="bridge").network_mode == "bridge"
    # A user-defined network could be the backend's private one.
    assert "ALLOWED_NETWORKS" in refused(settings, network_mode="opeva-net")
    allowed = dataclasses.replace(settings, allowed_networks=("opeva-net",))
    assert spec_for(allowed, network_mode="opeva-net").network_mode == "opeva-net"
    assert "pid_mode" in refused(settings, pid_mode="private")


def test_resource_limits_come_from_the_worker_configuration(settings: Settings) -> None:
    limited = dataclasses.replace(settings, job_cpus=1.5, job_memory=2**30, job_pids_limit=100, enable_gpu="0,1")
    spec = spec_for(limited, env={"A": "1"})
    assert (spec.cpus, spec.memory_bytes, spec.pids_limit, spec.gpus) == (1.5, 2**30, 100, "0,1")


def test_missing_config_is_refused_after_the_rest(settings: Settings) -> None:
    with pytest.raises(PayloadError, match="not found"):
        build_spec(parse({"job_id": "j1", "config_path": "configs/none.yaml"}), settings)


def test_secret_values(settings: Settings) -> None:
    env = {"API_TOKEN": "t", "db_password": "p", "SSH_KEY": "k", "PLAIN": "v", "MINE": "m", "MY_SECRET_X": "s"}
    assert sorted(secret_values(env, dataclasses.replace(settings, redact_vars=("MINE",)))) == [
        "k",
        "m",
        "p",
        "s",
        "t",
    ]
