"""The Slurm executor's settings: SLURM_* environment variables, each checked once by `load`.

`SETTINGS` lists every variable with its default and a one-line help text (README rows, --help).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from worker_agent import defaults
from worker_agent.config import ConfigError, choice
from worker_agent.executors.slurm_script import (
    RUNTIMES,
    ResourceLimits,
    Resources,
    Runtime,
    format_time,
    parse_memory,
    parse_time,
)

Staging = Literal["shared", "copy"]

# Paths that end up on #SBATCH lines or in container bind specs, where they cannot be quoted (slurm_script._check).
_CLUSTER_PATH = re.compile(r"/[A-Za-z0-9_.+@/-]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+/-]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9_.:\[\]-]+")


@dataclass(frozen=True)
class SlurmSettings:
    ssh_host: str = ""  # empty: Slurm's commands run on this host
    ssh_user: str = ""
    ssh_port: int = 22
    ssh_key: str = ""
    ssh_known_hosts: str = ""
    resources: Resources = field(default_factory=Resources)  # the defaults deucalion_options may change
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    modules: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    container_runtime: Runtime = "apptainer"
    sif_dir: str = ""  # empty: <run_dir>/sif
    shared_dir: str = defaults.SHARED_DIR  # the share as the cluster's nodes see it
    run_dir: str = ""  # empty: $HOME/.opeva-slurm of the cluster's user
    staging: Staging = "shared"
    lost_grace: float = 60.0
    template: str = ""
    command_timeout: float = 60.0
    copy_timeout: float = 1800.0
    copy_interval: float = 60.0
    poll_interval: float = 0.5
    state_interval: float = 5.0

    @property
    def local(self) -> bool:
        return not self.ssh_host


# --- parsers: raw text -> value, ValueError with the reason -------------------------------------------------------


def _host(raw: str) -> str:
    host = raw.strip()
    # A leading '-' would make ssh read the host as an option.
    if host and (host.startswith("-") or not _HOST.fullmatch(host)):
        raise ValueError("not a host name or address")
    return host


def _user(raw: str) -> str:
    user = raw.strip()
    if user and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", user):
        raise ValueError("not a user name")
    return user


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 < port < 65536:
        raise ValueError("must be between 1 and 65535")
    return port


def _local_file(raw: str) -> str:
    path = raw.strip()
    if path and not Path(path).is_file():
        raise ValueError("no such file")
    return path


def _cluster_path(raw: str) -> str:
    path = raw.strip().rstrip("/") or raw.strip()
    if path and not _CLUSTER_PATH.fullmatch(path):
        raise ValueError("must be an absolute path of letters, digits and _.+@/- only")
    return path


def _name(raw: str) -> str | None:
    name = raw.strip()
    if name and not _NAME.fullmatch(name):
        raise ValueError("not a valid Slurm name")
    return name or None


def _split(raw: str) -> tuple[str, ...]:
    """Comma- or space-separated names, in their order, each checked."""
    names = tuple(dict.fromkeys(part for part in re.split(r"[\s,]+", raw.strip()) if part))
    for name in names:
        _name(name)
    return names


def _names(raw: str) -> frozenset[str]:
    return frozenset(_split(raw))


def _optional(parse: Callable[[str], int]) -> Callable[[str], int | None]:
    def parse_or_none(raw: str) -> int | None:
        return parse(raw) if raw.strip() else None

    return parse_or_none


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if not value > 0:  # also refuses nan
        raise ValueError("must be a positive number of seconds")
    return value


def _words(raw: str) -> tuple[str, ...]:
    words = tuple(shlex.split(raw))
    for word in words:
        if not word.startswith("-"):
            raise ValueError(f"{word!r} is not an option: write --name=value")
    return words


# --- the table ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    env: str
    target: str  # a SlurmSettings field, or "resources.<x>" / "limits.<x>"
    parse: Callable[[str], Any]
    default: str  # as shown to the operator
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("SLURM_SSH_HOST", "ssh_host", _host, "", "Login node to run Slurm's commands on over SSH; empty: here."),
    Setting("SLURM_SSH_USER", "ssh_user", _user, "", "User on the login node; empty: ssh's default (~/.ssh/config)."),
    Setting("SLURM_SSH_PORT", "ssh_port", _port, "22", "SSH port of the login node."),
    Setting("SLURM_SSH_KEY", "ssh_key", _local_file, "", "Private key for SSH; empty: ssh's default keys."),
    Setting(
        "SLURM_SSH_KNOWN_HOSTS",
        "ssh_known_hosts",
        _local_file,
        "",
        "known_hosts file holding the login node's host key (always checked); empty: ~/.ssh/known_hosts.",
    ),
    Setting("SLURM_PARTITION", "resources.partition", _name, "", "Default partition; empty: the cluster's default."),
    Setting("SLURM_ACCOUNT", "resources.account", _name, "", "Default account; empty: the user's default."),
    Setting(
        "SLURM_TIME",
        "resources.time_minutes",
        _optional(parse_time),
        "",
        "Default time limit (MM, HH:MM:SS, D-HH:MM...); empty: the partition's default.",
    ),
    Setting("SLURM_CPUS_PER_TASK", "resources.cpus", _optional(_count), "", "Default CPUs of a job."),
    Setting("SLURM_MEM", "resources.mem_mb", _optional(parse_memory), "", "Default memory of a job, e.g. 4G."),
    Setting("SLURM_GPUS", "resources.gpus", _optional(_count), "", "Default GPUs of a job."),
    Setting(
        "SLURM_ALLOWED_PARTITIONS",
        "limits.partitions",
        _names,
        "",
        "Comma-separated partitions a job's deucalion_options may choose besides SLURM_PARTITION.",
    ),
    Setting(
        "SLURM_ALLOWED_ACCOUNTS",
        "limits.accounts",
        _names,
        "",
        "Comma-separated accounts a job's deucalion_options may choose besides SLURM_ACCOUNT.",
    ),
    Setting("SLURM_MAX_TIME", "limits.max_time_minutes", _optional(parse_time), "", "Largest time a job may ask for."),
    Setting("SLURM_MAX_CPUS", "limits.max_cpus", _optional(_count), "", "Most CPUs a job may ask for."),
    Setting("SLURM_MAX_MEM", "limits.max_mem_mb", _optional(parse_memory), "", "Most memory a job may ask for."),
    Setting("SLURM_MAX_GPUS", "limits.max_gpus", _optional(_count), "", "Most GPUs a job may ask for."),
    Setting("SLURM_MODULES", "modules", _split, "", "Environment modules the batch script loads, comma-separated."),
    Setting(
        "SLURM_EXTRA_ARGS",
        "extra_args",
        _words,
        "",
        "More sbatch options (shell words, e.g. --qos=normal); on sbatch's command line, they win over the rest.",
    ),
    Setting(
        "SLURM_CONTAINER_RUNTIME",
        "container_runtime",
        choice(*RUNTIMES),
        "apptainer",
        "What runs the job's image on the node: apptainer, singularity, podman, docker or none (no container).",
    ),
    Setting(
        "SLURM_SIF_DIR",
        "sif_dir",
        _cluster_path,
        "<SLURM_RUN_DIR>/sif",
        "Cluster directory where registry images are converted to SIF files for apptainer/singularity.",
    ),
    Setting(
        "SLURM_SHARED_DIR",
        "shared_dir",
        _cluster_path,
        "OPEVA_SHARED_DIR",
        "The share as the cluster's nodes see it, mounted at /data in jobs; with SLURM_STAGING=copy a cluster "
        "directory that job files are copied to and from.",
    ),
    Setting(
        "SLURM_RUN_DIR",
        "run_dir",
        _cluster_path,
        "$HOME/.opeva-slurm",
        "Cluster directory (seen by login and compute nodes) for each job's batch script, environment file and "
        "output, in jobs/<job_id>/; outside the share so that no job reads another's secrets under /data.",
    ),
    Setting(
        "SLURM_STAGING",
        "staging",
        choice("shared", "copy"),
        "shared",
        "shared: the cluster mounts the share itself; copy: the job's files are copied to SLURM_SHARED_DIR before "
        "it starts, and its results/ and progress/ back while it runs and at its end.",
    ),
    Setting(
        "SLURM_LOST_GRACE",
        "lost_grace",
        _seconds,
        "60",
        "Seconds Slurm may not know a job (and no record of its end exists) before the job counts as lost.",
    ),
    Setting(
        "SLURM_TEMPLATE",
        "template",
        _local_file,
        "",
        "Batch script template to use instead of the packaged slurm_batch.sh.tmpl.",
    ),
    Setting("SLURM_COMMAND_TIMEOUT", "command_timeout", _seconds, "60", "Timeout of one Slurm command, in seconds."),
    Setting("SLURM_COPY_TIMEOUT", "copy_timeout", _seconds, "1800", "Timeout of one copy to or from the cluster."),
    Setting(
        "SLURM_COPY_INTERVAL",
        "copy_interval",
        _seconds,
        "60",
        "Seconds between copies of a running job's results/ and progress/ back (SLURM_STAGING=copy).",
    ),
    Setting("SLURM_POLL_INTERVAL", "poll_interval", _seconds, "0.5", "Seconds between reads of a job's output files."),
    Setting(
        "SLURM_STATE_INTERVAL",
        "state_interval",
        _seconds,
        "5",
        "Seconds between Slurm queries while a job's output is followed (spares slurmctld).",
    ),
)


def load(environ: Mapping[str, str] | None = None, worker_shared_dir: Path | str | None = None) -> SlurmSettings:
    """The settings from `environ` (default os.environ); ConfigError naming the variable for a bad value.

    SLURM_SHARED_DIR defaults to the worker's own share (`worker_shared_dir`, else OPEVA_SHARED_DIR).
    """
    env = os.environ if environ is None else environ
    share = worker_shared_dir or env.get("OPEVA_SHARED_DIR") or defaults.SHARED_DIR
    fields: dict[str, Any] = {"shared_dir": str(share).rstrip("/") or "/"}
    nested: dict[str, dict[str, Any]] = {"resources": {}, "limits": {}}
    for setting in SETTINGS:
        raw = env.get(setting.env)
        if raw is None or (not raw.strip() and setting.target == "shared_dir"):
            continue
        try:
            value = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {setting.env}={raw!r}: {exc}") from None
        group, _, name = setting.target.rpartition(".")
        (nested[group] if group else fields)[name] = value
    settings = SlurmSettings(
        **fields, resources=Resources(**nested["resources"]), limits=ResourceLimits(**nested["limits"])
    )
    _check(settings)
    return settings


def _check(settings: SlurmSettings) -> None:
    if not _CLUSTER_PATH.fullmatch(settings.shared_dir):
        raise ConfigError(
            f"invalid SLURM_SHARED_DIR={settings.shared_dir!r}: must be an absolute path of letters, digits and "
            "_.+@/- only (set it when OPEVA_SHARED_DIR does not qualify)"
        )
    res, limits = settings.resources, settings.limits
    caps = (
        ("SLURM_TIME", res.time_minutes, "SLURM_MAX_TIME", limits.max_time_minutes, format_time),
        ("SLURM_CPUS_PER_TASK", res.cpus, "SLURM_MAX_CPUS", limits.max_cpus, str),
        ("SLURM_MEM", res.mem_mb, "SLURM_MAX_MEM", limits.max_mem_mb, lambda mb: f"{mb}M"),
        ("SLURM_GPUS", res.gpus, "SLURM_MAX_GPUS", limits.max_gpus, str),
    )
    for name, value, cap_name, cap, show in caps:
        if value is not None and cap is not None and value > cap:
            raise ConfigError(f"invalid {name}: {show(value)} is above {cap_name}={show(cap)}")
