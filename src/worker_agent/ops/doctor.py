"""`job-worker-agent doctor`: check, in order, what the worker needs to run jobs, and say how to fix each gap.

Nothing is changed on the way (no pull, no heartbeat, no job claimed); the share check writes and removes one
probe file, like the worker itself does before each job.
"""

from __future__ import annotations

import argparse
import email.utils
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from worker_agent import config
from worker_agent.backend.client import BackendClient, BackendError
from worker_agent.executors.base import ExecutorError, ExecutorUnavailable
from worker_agent.executors.docker import DockerExecutor
from worker_agent.ops.telemetry import gpu_info
from worker_agent.share import share_problem

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
# Clock skew beyond this many seconds is worth a warning (the Date header has a 1 s resolution).
MAX_SKEW_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    result: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class _Probe:
    """What the backend answered to one harmless request."""

    status: int
    date: str | None
    sent_at: float
    received_at: float
    agent_api: bool = True  # a 404 in the backend's own words, not a missing route


def check_configuration(args: argparse.Namespace | None) -> tuple[Check, config.Settings | None]:
    try:
        settings = config.load(args)
    except config.ConfigError as exc:
        return Check("configuration", FAIL, str(exc), "correct that variable or flag (see --help)"), None
    detail = f"worker {settings.worker_id}, backend {settings.server}, shared dir {settings.shared_dir}"
    return Check("configuration", OK, detail), settings


def probe_backend(settings: config.Settings, transport: httpx.BaseTransport | None = None) -> _Probe:
    """One harmless request through the worker's own backend client (same URL, token and TLS settings)."""
    client = BackendClient.for_settings(settings, transport)
    try:
        sent_at = time.time()
        status, date, agent_api = client.probe()
        return _Probe(status, date, sent_at, time.time(), agent_api)
    finally:
        client.close()


def check_backend(settings: config.Settings, probe: _Probe | Exception) -> Check:
    if isinstance(probe, Exception):
        return Check(
            "backend",
            FAIL,
            f"cannot reach {settings.server}: {probe}",
            "start the backend, or correct OPEVA_SERVER (and OPEVA_CA_BUNDLE / OPEVA_TLS_VERIFY for https)",
        )
    if probe.status in (401, 403):
        fix = "set OPEVA_TOKEN to the backend's token" if not settings.token else "correct OPEVA_TOKEN"
        return Check("backend", FAIL, f"{settings.server} refused the token (HTTP {probe.status})", fix)
    if probe.status == 404 and not probe.agent_api:
        return Check(
            "backend",
            FAIL,
            f"{settings.server} has no OPEVA agent API (GET /status/<id> is not a route there)",
            "point OPEVA_SERVER at the job orchestrator (port 8011) or the reference backend, not at the "
            "training backend or a proxy page",
        )
    if probe.status == 404:
        auth = ", token accepted" if settings.token else ""
        return Check("backend", OK, f"{settings.server} answers{auth}")
    return Check(
        "backend",
        FAIL,
        f"{settings.server} answered HTTP {probe.status} to GET /status/<unknown job> (expected 404)",
        "check that OPEVA_SERVER is the OPEVA backend and that it is healthy",
    )


def check_clock(probe: _Probe | Exception) -> Check:
    if isinstance(probe, Exception):
        return Check("clock", SKIP, "needs the backend")
    if probe.date is None:
        return Check("clock", WARN, "the backend sent no Date header: skew unknown")
    try:
        server_time = email.utils.parsedate_to_datetime(probe.date).timestamp()
    except (TypeError, ValueError):
        return Check("clock", WARN, f"the backend's Date header is unreadable: {probe.date!r}")
    # The header is truncated to the second: compare with the middle of the request, plus half a second.
    skew = (probe.sent_at + probe.received_at) / 2 - (server_time + 0.5)
    if abs(skew) > MAX_SKEW_SECONDS:
        side = "ahead of" if skew > 0 else "behind"
        return Check(
            "clock",
            WARN,
            f"this host is {abs(skew):.0f}s {side} the backend",
            "sync both clocks (chrony/systemd-timesyncd): heartbeat and status times are compared",
        )
    return Check("clock", OK, f"within {MAX_SKEW_SECONDS:g}s of the backend (skew {skew:+.1f}s)")


def connect_docker(settings: config.Settings) -> tuple[Check, DockerExecutor | None]:
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    executor = DockerExecutor(settings.image_pull_policy, timeout=settings.http_timeout)
    try:
        version = executor.ping()
    except ExecutorUnavailable as exc:
        return Check(
            "docker",
            FAIL,
            f"no Docker engine at {where}: {exc}",
            "start dockerd, correct DOCKER_HOST, or give this user access to the socket (docker group)",
        ), None
    return Check("docker", OK, f"Docker {version} at {where}"), executor


def check_image(settings: config.Settings, executor: DockerExecutor | None) -> Check:
    image, policy = settings.image, settings.image_pull_policy
    if executor is None:
        return Check("image", SKIP, f"{image}: needs Docker")
    try:
        present = executor.has_image(image)
    except (ExecutorError, ExecutorUnavailable) as exc:
        return Check("image", FAIL, f"{image}: cannot inspect: {exc}", "check the Docker engine")
    if not present and policy == "never":
        return Check(
            "image",
            FAIL,
            f"{image} is not present and IMAGE_PULL_POLICY=never",
            f"docker pull {image} (or docker load it), or set IMAGE_PULL_POLICY=if-not-present",
        )
    if not present:
        return Check("image", WARN, f"{image} is not present: pulled at the first job (IMAGE_PULL_POLICY={policy})")
    pulled = "; pulled again before each job" if policy == "always" else ""
    return Check("image", OK, f"{image} present{pulled}")


def check_gpus(settings: config.Settings, gpus: Callable[[], list[dict[str, object]] | None] = gpu_info) -> Check:
    if not settings.enable_gpu:
        return Check("gpus", SKIP, "not requested (WORKER_ENABLE_GPU off)")
    found = gpus()
    if not found:
        return Check(
            "gpus",
            WARN,
            f"WORKER_ENABLE_GPU={settings.enable_gpu} but no NVIDIA GPU/driver found through NVML: "
            "jobs will be retried without GPUs",
            "install the NVIDIA driver, nvidia-container-toolkit and nvidia-ml-py, or unset WORKER_ENABLE_GPU",
        )
    names = ", ".join(str(gpu["name"]) for gpu in found)
    return Check("gpus", OK, f"{len(found)} GPU(s): {names}")


def check_share(settings: config.Settings) -> Check:
    problem = share_problem(settings.shared_dir, settings.share_check)
    if problem is not None:
        return Check(
            "shared dir",
            FAIL,
            problem,
            "mount the share at OPEVA_SHARED_DIR (see scripts/setup_worker.sh) and let this user write to it",
        )
    return Check("shared dir", OK, f"{settings.shared_dir} usable (SHARED_DIR_CHECK={settings.share_check})")


def check_state_dir(settings: config.Settings) -> Check:
    """The worker creates WORKER_STATE_DIR at start: it must be writable, or creatable in its nearest parent."""
    path = settings.state_dir
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return Check("state dir", OK, f"{path} {'writable' if existing == path else 'can be created'}")
    return Check(
        "state dir",
        FAIL,
        f"{path} is not writable ({existing} is the nearest existing path)",
        "create it for this user, or point WORKER_STATE_DIR elsewhere",
    )


def run_checks(args: argparse.Namespace | None) -> list[Check]:
    checks: list[Check] = []
    configuration, settings = check_configuration(args)
    checks.append(configuration)
    if settings is None:
        return checks
    probe: _Probe | Exception
    try:
        probe = probe_backend(settings)
    except (BackendError, config.ConfigError) as exc:
        probe = exc
    checks += [check_backend(settings, probe), check_clock(probe)]
    docker_check, executor = connect_docker(settings)
    checks += [docker_check, check_image(settings, executor), check_gpus(settings)]
    checks += [check_share(settings), check_state_dir(settings)]
    return checks


def render(checks: list[Check]) -> str:
    width = max(len(check.name) for check in checks)
    lines = [f"{'CHECK':<{width}}  RESULT  DETAIL"]
    for check in checks:
        lines.append(f"{check.name:<{width}}  {check.result:<6}  {check.detail}")
        if check.fix:
            lines.append(f"{'':<{width}}  {'':<6}  fix: {check.fix}")
    failed = [check.name for check in checks if check.result == FAIL]
    warned = [check.name for check in checks if check.result == WARN]
    if failed:
        lines.append(f"verdict: NOT READY - fix {', '.join(failed)}")
    else:
        lines.append("verdict: READY" + (f" (warnings: {', '.join(warned)})" if warned else ""))
    return "\n".join(lines)


def main(args: argparse.Namespace | None = None) -> int:
    checks = run_checks(args)
    print(render(checks), flush=True)
    return 1 if any(check.result == FAIL for check in checks) else 0
