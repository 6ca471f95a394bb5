"""Configuration: every setting from an environment variable or its command-line flag, checked once."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from worker_agent import defaults

T = TypeVar("T")


class ConfigError(Exception):
    """A setting has a value the worker cannot use; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    server: str = defaults.SERVER
    worker_id: str = ""
    shared_dir: Path = Path(defaults.SHARED_DIR)
    poll_interval: float = defaults.POLL_INTERVAL_SECONDS
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL_SECONDS
    status_poll_interval: float = defaults.STATUS_POLL_INTERVAL_SECONDS
    running_refresh_interval: float = defaults.RUNNING_REFRESH_INTERVAL_SECONDS
    stop_grace_period: float = defaults.STOP_GRACE_PERIOD_SECONDS
    log_level: str = defaults.LOG_LEVEL
    image: str = defaults.WORKER_IMAGE
    image_pull_policy: str = defaults.IMAGE_PULL_POLICY
    exit_after_job: bool = False
    max_active_jobs: int = defaults.MAX_ACTIVE_JOBS
    executor: str = defaults.EXECUTOR
    state_dir: Path = Path(defaults.STATE_DIR)
    http_timeout: float = defaults.HTTP_TIMEOUT_SECONDS
    allowed_images: tuple[str, ...] = ()
    job_timeout: float | None = None
    max_log_bytes: int = defaults.MAX_LOG_BYTES
    docker_log_max_bytes: int | None = None  # None: DOCKER_LOG_MAX_FACTOR x max_log_bytes
    image_prune_keep: int | None = None  # None: keep every image
    stop_job_on_exit: bool = False
    redact_vars: tuple[str, ...] = ()
    token: str | None = None
    ca_bundle: Path | None = None
    tls_verify: bool = True
    metrics_port: int = defaults.METRICS_PORT
    log_format: str = "text"
    share_check: str = "writable"
    enable_gpu: str | None = None
    job_cpus: float | None = None
    job_memory: int | None = None
    job_pids_limit: int | None = None
    allowed_volume_roots: tuple[Path, ...] = ()
    allowed_networks: tuple[str, ...] = ()
    allow_privileged: bool = False
    allow_host_namespaces: bool = False

    def docker_log_bytes(self) -> int:
        return self.docker_log_max_bytes or defaults.DOCKER_LOG_MAX_FACTOR * self.max_log_bytes

    def image_allowed_patterns(self) -> tuple[str, ...]:
        """ALLOWED_IMAGES, or by default any tag or digest of the worker's own image repository."""
        if self.allowed_images:
            return self.allowed_images
        repository = self.image.split("@", 1)[0]
        if ":" in repository.rsplit("/", 1)[-1]:
            repository = repository.rsplit(":", 1)[0]
        return (repository, f"{repository}:*", f"{repository}@*")


# --- value parsers: each takes the raw string and returns the value or raises ValueError(reason) ---


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")) or len(raw) <= len("https://"):
        raise ValueError("must start with http:// or https://")
    return raw.rstrip("/")


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _path(raw: str) -> Path:
    return Path(_text(raw))


def _positive(raw: str, unit: str = "") -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number{unit}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a positive number{unit}")
    return value


def _seconds(raw: str) -> float:
    return _positive(raw, " of seconds")


def _whole(raw: str) -> int:
    if not raw.strip().isdigit():
        raise ValueError("must be a whole number (0: no limit)")
    return int(raw)


def _count(raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError("must be a whole number of at least 1")
    return int(raw)


def _unless_zero(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """For limits: empty or 0 means none; anything else must parse."""

    def parse_or_none(raw: str) -> T | None:
        return None if raw.strip() in ("", "0") else parse(raw)

    return parse_or_none


def _byte_count(raw: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = raw.strip().lower().removesuffix("ib").removesuffix("b")
    scale = units.get(text[-1:], 1)
    try:
        value = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise ValueError("must be a byte count such as 1073741824, 512M or 1G") from None
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _port(raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) > 65535:
        raise ValueError("must be a port number from 0 to 65535 (0 turns it off)")
    return int(raw)


def _gpus(raw: str) -> str | None:
    text = raw.strip().lower()
    if text in ("", "0", "no", "false", "off"):
        return None
    if text in ("1", "yes", "true", "on", "all"):
        return "all"
    if not all(part.strip() for part in text.split(",")):
        raise ValueError("must be all, 0, or a comma-separated list of GPU ids")
    return raw.strip()


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(part) for part in _names(raw))


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def choice(*allowed: str) -> Callable[[str], str]:
    """A parser for a setting that takes one of `allowed` (surrounding blanks ignored)."""

    def parse(raw: str) -> str:
        value = raw.strip()
        if value not in allowed:
            raise ValueError("must be one of " + ", ".join(allowed))
        return value

    return parse


@dataclass(frozen=True)
class Option:
    field: str
    env: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    switch: bool = False  # a flag without a value (store_true)


OPTIONS: tuple[Option, ...] = (
    Option("server", "OPEVA_SERVER", "--server", _url, f"Backend base URL (default {defaults.SERVER})."),
    Option("worker_id", "WORKER_ID", "--worker-id", _text, "Worker identifier (default: the hostname)."),
    Option(
        "shared_dir",
        "OPEVA_SHARED_DIR",
        "--shared-dir",
        _path,
        f"Local path of the mounted shared directory (default {defaults.SHARED_DIR}).",
    ),
    Option(
        "poll_interval",
        "POLL_INTERVAL",
        "--poll-interval",
        _seconds,
        f"Seconds between queue polls when idle (default {defaults.POLL_INTERVAL_SECONDS:g}).",
    ),
    Option(
        "heartbeat_interval",
        "WORKER_HEARTBEAT_INTERVAL",
        "--heartbeat-interval",
        _seconds,
        f"Heartbeat interval in seconds, also while a job runs (default {defaults.HEARTBEAT_INTERVAL_SECONDS:g}).",
    ),
    Option(
        "status_poll_interval",
        "STATUS_POLL_INTERVAL",
        "--status-poll-interval",
        _seconds,
        "How often to read the job's status while it runs, to see stop requests "
        f"(seconds, default {defaults.STATUS_POLL_INTERVAL_SECONDS:g}).",
    ),
    Option(
        "running_refresh_interval",
        "RUNNING_REFRESH_INTERVAL",
        "--running-refresh-interval",
        _seconds,
        "Seconds between re-sends of `running` while a job runs "
        f"(default {defaults.RUNNING_REFRESH_INTERVAL_SECONDS:g}).",
    ),
    Option(
        "stop_grace_period",
        "STOP_GRACE_PERIOD",
        "--stop-grace-period",
        _seconds,
        f"Seconds between SIGTERM and SIGKILL when stopping a job (default {defaults.STOP_GRACE_PERIOD_SECONDS:g}).",
    ),
    Option(
        "log_level",
        "LOG_LEVEL",
        "--log-level",
        _log_level,
        f"Python logging level: DEBUG, INFO, ... (default {defaults.LOG_LEVEL}).",
    ),
    Option(
        "image",
        "WORKER_IMAGE",
        "--image",
        _text,
        f"Job image when the backend names none (default {defaults.WORKER_IMAGE}).",
    ),
    Option(
        "image_pull_policy",
        "IMAGE_PULL_POLICY",
        "--image-pull-policy",
        choice("auto", "if-not-present", "always", "never"),
        "When to pull a job image: auto (:latest or no tag: always; a pinned tag or digest: if not present), "
        f"if-not-present, always, never (default {defaults.IMAGE_PULL_POLICY}).",
    ),
    Option(
        "image_prune_keep",
        "IMAGE_PRUNE_KEEP",
        "--image-prune-keep",
        _unless_zero(_whole),
        "Keep only this many most recently used tags of each allowed image repository; older ones are removed "
        "after a job starts, never an image in use (default 0: off).",
    ),
    Option(
        "exit_after_job",
        "WORKER_EXIT_AFTER_JOB",
        "--exit-after-job",
        _flag,
        "Take no new job once one was taken, and exit when the jobs in hand have ended (default off). "
        "SIGUSR1 does the same at run time.",
        switch=True,
    ),
    Option(
        "executor",
        "WORKER_EXECUTOR",
        "--executor",
        choice("docker", "slurm"),
        f"What runs the jobs: docker, or slurm (a Slurm cluster, locally or over SSH: SLURM_* settings; "
        f"default {defaults.EXECUTOR}).",
    ),
    Option(
        "max_active_jobs",
        "WORKER_MAX_ACTIVE_JOBS",
        "--max-active-jobs",
        _count,
        f"Jobs this worker runs at once, one slot each (default {defaults.MAX_ACTIVE_JOBS}).",
    ),
    Option(
        "state_dir",
        "WORKER_STATE_DIR",
        "--state-dir",
        _path,
        f"Durable state directory: status outbox and active job (default {defaults.STATE_DIR}).",
    ),
    Option(
        "allowed_images",
        "ALLOWED_IMAGES",
        "--allowed-images",
        _names,
        "Comma-separated glob patterns of images a backend may ask for "
        "(default: any tag of WORKER_IMAGE's repository).",
    ),
    Option(
        "job_timeout",
        "JOB_TIMEOUT",
        "--job-timeout",
        _unless_zero(_seconds),
        "Stop a job after this many seconds and report it failed with error=timeout (default 0: no limit).",
    ),
    Option(
        "max_log_bytes",
        "MAX_LOG_BYTES",
        "--max-log-bytes",
        _byte_count,
        "Cap of one job log; past it one marker line is written and output dropped (default 1G).",
    ),
    Option(
        "docker_log_max_bytes",
        "DOCKER_LOG_MAX_BYTES",
        "--docker-log-max-bytes",
        _byte_count,
        "Bound of Docker's own copy of a job's output (`local` driver, rotated over "
        f"{defaults.DOCKER_LOG_FILES} files), which a restarted worker catches up from "
        f"(default {defaults.DOCKER_LOG_MAX_FACTOR} x MAX_LOG_BYTES).",
    ),
    Option(
        "stop_job_on_exit",
        "WORKER_STOP_JOB_ON_EXIT",
        "--stop-job-on-exit",
        _flag,
        "On SIGTERM/SIGINT stop the running job and report it stopped, instead of leaving it running "
        "for the next worker start to re-adopt (default off).",
        switch=True,
    ),
    Option(
        "redact_vars",
        "REDACT_VARS",
        "--redact-vars",
        _names,
        "Comma-separated job env var names whose values are masked in the job log, on top of names "
        "containing TOKEN, SECRET, PASSWORD or KEY.",
    ),
    Option("token", "OPEVA_TOKEN", "--token", _text, "Bearer token for the backend (never logged)."),
    Option(
        "ca_bundle",
        "OPEVA_CA_BUNDLE",
        "--ca-bundle",
        _path,
        "CA bundle to verify the backend's TLS certificate.",
    ),
    Option(
        "tls_verify", "OPEVA_TLS_VERIFY", "--tls-verify", _flag, "Verify the backend's TLS certificate (default 1)."
    ),
    Option(
        "metrics_port",
        "METRICS_PORT",
        "--metrics-port",
        _port,
        f"Port of /metrics, /healthz and /readyz (default {defaults.METRICS_PORT}; 0 turns it off).",
    ),
    Option("log_format", "LOG_FORMAT", "--log-format", choice("text", "json"), "Worker log format: text or json."),
    Option(
        "share_check",
        "SHARED_DIR_CHECK",
        "--shared-dir-check",
        choice("writable", "mountpoint", "marker"),
        "How to tell the share is really there before taking a job: writable (default), mountpoint "
        "(OPEVA_SHARED_DIR must be a mount point), or marker (the backend's .opeva-share file must exist).",
    ),
    Option(
        "enable_gpu",
        "WORKER_ENABLE_GPU",
        "--enable-gpu",
        _gpus,
        "Request GPUs for job containers: all, or a comma-separated list of GPU ids (default off).",
    ),
    Option(
        "job_cpus", "JOB_CPUS", "--job-cpus", _unless_zero(_positive), "CPU limit of a job container (default none)."
    ),
    Option(
        "job_memory",
        "JOB_MEMORY",
        "--job-memory",
        _byte_count,
        "Memory limit of a job container, e.g. 8G (default none).",
    ),
    Option(
        "job_pids_limit",
        "JOB_PIDS_LIMIT",
        "--job-pids-limit",
        _unless_zero(_whole),
        "Process limit of a job container (default none).",
    ),
    Option(
        "allowed_volume_roots",
        "ALLOWED_VOLUME_ROOTS",
        "--allowed-volume-roots",
        _paths,
        "Comma-separated host directories a payload's volumes may come from (default: none; the share is "
        "always at /data). An opt-in: a job that can write under a root could swap a folder for a symlink.",
    ),
    Option(
        "allowed_networks",
        "ALLOWED_NETWORKS",
        "--allowed-networks",
        _names,
        "Comma-separated Docker networks a payload's network_mode may name, besides bridge and none.",
    ),
    Option(
        "allow_privileged",
        "ALLOW_PRIVILEGED",
        "--allow-privileged",
        _flag,
        "Let a payload ask for a privileged container (default off).",
        switch=True,
    ),
    Option(
        "allow_host_namespaces",
        "ALLOW_HOST_NAMESPACES",
        "--allow-host-namespaces",
        _flag,
        "Let a payload ask for the host's network or PID namespace (default off).",
        switch=True,
    ),
    Option(
        "http_timeout",
        "HTTP_TIMEOUT",
        "--http-timeout",
        _seconds,
        f"Timeout of one backend HTTP call in seconds (default {defaults.HTTP_TIMEOUT_SECONDS:g}).",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option; values stay raw strings so that one parser checks env and flags alike."""
    for option in OPTIONS:
        help_text = f"{option.help} [env {option.env}]"
        if option.switch:
            parser.add_argument(option.flag, dest=option.field, action="store_const", const="1", help=help_text)
        else:
            parser.add_argument(option.flag, dest=option.field, metavar=option.env, help=help_text)


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings: a flag wins over its env var, which wins over the default."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        from_flag = getattr(args, option.field, None) if args is not None else None
        raw, source = (from_flag, option.flag) if from_flag is not None else (env.get(option.env), option.env)
        if raw is None:
            continue
        try:
            values[option.field] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {source}={raw!r}: {exc}") from None
    if not values.get("worker_id"):
        values["worker_id"] = socket.gethostname()
    return dataclasses.replace(Settings(), **values)


def describe(settings: Settings) -> Sequence[str]:
    """The effective settings as `ENV=value` lines, for the worker's start-up log."""
    shown = {option.env: getattr(settings, option.field) for option in OPTIONS}
    if settings.token:
        shown["OPEVA_TOKEN"] = "***"
    return [f"{name}={value}" for name, value in shown.items()]
