"""What a backend may ask of this worker: turns a checked payload into a runnable JobSpec, or refuses it."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from worker_agent import defaults
from worker_agent.config import Settings
from worker_agent.docker_executor import LABEL_WORKER
from worker_agent.executor import JobSpec, Mount
from worker_agent.payload import JobPayload, PayloadError

SECRET_NAME_PARTS = ("TOKEN", "SECRET", "PASSWORD", "KEY")
_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def build_spec(payload: JobPayload, settings: Settings) -> JobSpec:
    """The container to run for this payload; PayloadError when the payload asks for what is not allowed."""
    image = payload.image or settings.image
    if not any(fnmatch.fnmatchcase(image, pattern) for pattern in settings.image_allowed_patterns()):
        raise PayloadError(f"image {image!r} is not in ALLOWED_IMAGES", payload.job_id)
    payload.config_file(settings.shared_dir)
    return JobSpec(
        job_id=payload.job_id,
        image=image,
        command=payload.command_args(defaults.CONTAINER_DATA_DIR),
        name=payload.docker_name(),
        env=dict(payload.env),
        mounts=[
            Mount(str(settings.shared_dir), defaults.CONTAINER_DATA_DIR),
            *_extra_mounts(payload, settings),
        ],
        labels={LABEL_WORKER: settings.worker_id},
        cpus=settings.job_cpus,
        memory_bytes=settings.job_memory,
        pids_limit=settings.job_pids_limit,
        gpus=settings.enable_gpu,
    )


def secret_values(env: dict[str, str], settings: Settings) -> list[str]:
    """Values to mask in the job log: env vars whose names look secret, plus REDACT_VARS."""
    named = set(settings.redact_vars)
    return [
        value for name, value in env.items() if name in named or any(part in name.upper() for part in SECRET_NAME_PARTS)
    ]


def _extra_mounts(payload: JobPayload, settings: Settings) -> list[Mount]:
    """Payload volumes, only from under the shared directory; the share itself is always at /data."""
    root = settings.shared_dir.resolve()
    mounts = []
    for volume in payload.volumes:
        if volume.container == defaults.CONTAINER_DATA_DIR:
            continue
        host = Path(volume.host).resolve()
        if str(host) in _DOCKER_SOCKETS or not host.is_relative_to(root):
            raise PayloadError(f"volume {volume.host!r} is outside the allowed host paths", payload.job_id)
        mounts.append(Mount(str(host), volume.container, read_only=volume.mode == "ro"))
    return mounts
