"""What a backend may ask of this worker: turns a checked payload into a runnable JobSpec, or refuses it."""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path

from worker_agent import defaults
from worker_agent.config import Settings
from worker_agent.domain import JobSpec, Mount
from worker_agent.logs.masking import is_maskable
from worker_agent.payload import JobPayload, PayloadError

SECRET_NAME_PARTS = ("TOKEN", "SECRET", "PASSWORD", "KEY")
_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
_HOST = "host"


def build_spec(payload: JobPayload, settings: Settings) -> JobSpec:
    """The container to run for this payload; PayloadError (with the reason) when it asks for what is not allowed."""
    image = payload.image or settings.image
    if not any(fnmatch.fnmatchcase(image, pattern) for pattern in settings.image_allowed_patterns()):
        raise PayloadError(f"image {image!r} is not in ALLOWED_IMAGES", payload.job_id)
    _check_privileges(payload, settings)
    mounts = _extra_mounts(payload, settings)
    payload.config_file(settings.shared_dir)
    return JobSpec(
        job_id=payload.job_id,
        worker_id=settings.worker_id,
        image=image,
        command=payload.command_args(defaults.CONTAINER_DATA_DIR),
        name=payload.docker_name(),
        attempt_number=payload.attempt_number,
        env=dict(payload.env),
        mounts=[Mount(str(settings.shared_dir), defaults.CONTAINER_DATA_DIR), *mounts],
        cpus=settings.job_cpus,
        memory_bytes=settings.job_memory,
        pids_limit=settings.job_pids_limit,
        gpus=settings.enable_gpu,
        privileged=payload.privileged,
        network_mode=payload.network_mode,
        pid_mode=payload.pid_mode,
    )


def secret_values(env: dict[str, str], settings: Settings) -> list[str]:
    """Values to mask in the job log: env vars whose names look secret, plus REDACT_VARS."""
    return [env[name] for name in _secret_names(env, settings)]


def unmaskable_secrets(env: dict[str, str], settings: Settings) -> list[str]:
    """Names of secret env vars whose values are too short to mask without garbling the log (1-3 characters)."""
    return [name for name in _secret_names(env, settings) if env[name] and not is_maskable(env[name])]


def _secret_names(env: dict[str, str], settings: Settings) -> list[str]:
    named = set(settings.redact_vars)
    return [name for name in env if name in named or any(part in name.upper() for part in SECRET_NAME_PARTS)]


def allowed_volume_roots(settings: Settings) -> list[Path]:
    """ALLOWED_VOLUME_ROOTS with symlinks resolved; empty (the default): no payload volume at all."""
    return [resolved for resolved in map(_resolve, settings.allowed_volume_roots) if resolved is not None]


def _check_privileges(payload: JobPayload, settings: Settings) -> None:
    def refuse(reason: str) -> None:
        raise PayloadError(reason, payload.job_id)

    if payload.privileged and not settings.allow_privileged:
        refuse("privileged containers are not allowed (ALLOW_PRIVILEGED is off)")
    for option, mode in (("network_mode", payload.network_mode), ("pid_mode", payload.pid_mode)):
        if mode == _HOST and not settings.allow_host_namespaces:
            refuse(f"{option}=host is not allowed (ALLOW_HOST_NAMESPACES is off)")
        if mode is not None and mode.startswith("container:"):
            refuse(f"{option} {mode!r} is not allowed: a job never joins another container's namespaces")
    if payload.pid_mode not in (None, _HOST):
        refuse(f"pid_mode {payload.pid_mode!r} is not allowed")
    # A user-defined network could be the backend's own private one.
    networks = (None, _HOST, "bridge", "none", *settings.allowed_networks)
    if payload.network_mode not in networks:
        refuse(f"network_mode {payload.network_mode!r} is not in ALLOWED_NETWORKS (bridge and none always are)")


def _extra_mounts(payload: JobPayload, settings: Settings) -> list[Mount]:
    """Payload volumes: none by default; with ALLOWED_VOLUME_ROOTS, only from under those roots.

    The share is always mounted at /data from the worker's own setting: a payload volume for /data is
    skipped. Every other volume is a risk the operator opts into: a job that can write under a root can
    swap a checked folder for a symlink between this check and Docker's mount (docs/deployment.md).
    """
    data_dir = defaults.CONTAINER_DATA_DIR
    wanted = [volume for volume in payload.volumes if volume.container != data_dir]
    if wanted and not settings.allowed_volume_roots:
        raise PayloadError(
            f"volume {wanted[0].host!r}: payload volumes are not allowed (ALLOWED_VOLUME_ROOTS is empty); "
            f"the share is mounted at {data_dir} by the worker",
            payload.job_id,
        )
    for root in settings.allowed_volume_roots:
        if not _is_dir(root):
            raise PayloadError(f"ALLOWED_VOLUME_ROOTS entry {str(root)!r} is not visible to the worker", payload.job_id)
    roots = allowed_volume_roots(settings)
    sockets = [path for path in map(_resolve, _docker_socket_paths()) if path is not None]
    mounts = []
    for volume in wanted:
        if volume.container.startswith(data_dir + "/"):
            raise PayloadError(f"volume target {volume.container!r} would shadow part of {data_dir}", payload.job_id)
        host = _resolve(Path(volume.host))
        if host is None or not any(host.is_relative_to(root) for root in roots):
            raise PayloadError(f"volume {volume.host!r} is outside the allowed host paths", payload.job_id)
        if _is_socket(host) or any(socket.is_relative_to(host) for socket in sockets):
            raise PayloadError(f"volume {volume.host!r} exposes the Docker socket", payload.job_id)
        mounts.append(Mount(str(host), volume.container, read_only=volume.mode == "ro"))
    return mounts


def _docker_socket_paths() -> list[Path]:
    paths = [Path(path) for path in _DOCKER_SOCKETS]
    docker_host = os.environ.get("DOCKER_HOST", "")
    if docker_host.startswith("unix://"):
        paths.append(Path(docker_host.removeprefix("unix://")))
    return paths


def _resolve(path: Path) -> Path | None:
    """The real path (symlinks followed), or None when it cannot be resolved (loop, bad name)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except (OSError, ValueError):
        return False
