"""The batch script of a Slurm job: resources from the payload, checked against the worker's limits, and the
script rendered from slurm_batch.sh.tmpl. No I/O except reading the template.

Files of one job, all in its run directory on the cluster (see `run_files`):
  job.sbatch  the batch script (mode SCRIPT_MODE); holds no secret, since Slurm keeps a copy of every batch
              script that `scontrol write batch_script` prints to the job's owner and the cluster's operators;
  job.env     the job's environment as `export NAME='value'` lines (mode ENV_FILE_MODE, owner only), sourced
              by the script: this is where secrets go;
  stdout.log, stderr.log  the job's output (sbatch --output/--error, appended).
"""

from __future__ import annotations

import posixpath
import re
import shlex
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# The template exits with it when the job cannot be set up; slurm_status reports it as setup_failed.
from worker_agent.executors.slurm_status import SETUP_FAILED_EXIT as SETUP_FAILED_EXIT

Runtime = Literal["apptainer", "singularity", "podman", "docker", "none"]
RUNTIMES: tuple[Runtime, ...] = ("apptainer", "singularity", "podman", "docker", "none")

TEMPLATE_PATH = Path(__file__).with_name("slurm_batch.sh.tmpl")
SCRIPT_MODE = 0o700
ENV_FILE_MODE = 0o600
DEUCALION_OPTIONS = ("partition", "account", "time", "cpus", "mem", "gpus")

# Job and worker ids become Slurm job names, comments and container names; ':' separates them in the comment.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Partition, account and module names: also what may stand on an #SBATCH line unquoted.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+/-]{0,127}")
# Paths on #SBATCH lines cannot be quoted (sbatch reads them itself), '%' is sbatch's pattern character, and ':'
# or ',' would split a `-v`/`--bind` mount.
_PATH = re.compile(r"/[A-Za-z0-9_.+@/-]*")
# An image must not start with '-': the container runtime would read it as one of its options.
_IMAGE = re.compile(r"[A-Za-z0-9/][^\s]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SBATCH_OPTION = re.compile(r"--[a-z][a-z0-9-]*(=[^\s%]+)?")


@dataclass(frozen=True)
class Resources:
    """What a job asks Slurm for; None leaves it to the cluster's defaults."""

    partition: str | None = None
    account: str | None = None
    time_minutes: int | None = None
    cpus: int | None = None
    mem_mb: int | None = None
    gpus: int | None = None


@dataclass(frozen=True)
class ResourceLimits:
    """What a job may ask for in deucalion_options. A partition or account other than the default must be in
    its allow-list (empty: only the default); a cap of None means no cap."""

    partitions: frozenset[str] = frozenset()
    accounts: frozenset[str] = frozenset()
    max_time_minutes: int | None = None
    max_cpus: int | None = None
    max_mem_mb: int | None = None
    max_gpus: int | None = None


@dataclass(frozen=True)
class Bind:
    """A mount besides the share: `host` on the cluster's node, seen at `container` inside the job."""

    host: str
    container: str
    read_only: bool = False


@dataclass(frozen=True)
class BatchJob:
    """Everything the batch script needs, with paths as the cluster's nodes see them."""

    job_id: str
    worker_id: str
    image: str  # a registry reference (converted to SIF for apptainer/singularity) or a .sif path
    command: tuple[str, ...]
    env: Mapping[str, str]
    share_path: str
    run_dir: str
    runtime: Runtime = "apptainer"
    sif_dir: str | None = None
    resources: Resources = field(default_factory=Resources)
    modules: tuple[str, ...] = ()
    binds: tuple[Bind, ...] = ()
    runtime_args: tuple[str, ...] = ()  # e.g. ("--network=none",) for docker, ("--writable-tmpfs",) for apptainer
    sbatch_options: tuple[str, ...] = ()  # extra #SBATCH options, e.g. ("--qos=normal",)
    data_dir: str = "/data"  # where the share appears inside the container
    stop_grace_seconds: int = 10  # below the cluster's KillWait (see the template)
    sif_lock_wait_seconds: int = 1800


@dataclass(frozen=True)
class RunFiles:
    script: str
    env_file: str
    stdout: str
    stderr: str


def run_files(run_dir: str) -> RunFiles:
    return RunFiles(
        script=posixpath.join(run_dir, "job.sbatch"),
        env_file=posixpath.join(run_dir, "job.env"),
        stdout=posixpath.join(run_dir, "stdout.log"),
        stderr=posixpath.join(run_dir, "stderr.log"),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Time and memory in Slurm's notations

_TIME_FORMATS = (
    # (pattern, names of its parts); days-hours-minutes-seconds, as sbatch --time accepts them
    (re.compile(r"(\d+)"), ("m",)),
    (re.compile(r"(\d+):(\d+)"), ("m", "s")),
    (re.compile(r"(\d+):(\d+):(\d+)"), ("h", "m", "s")),
    (re.compile(r"(\d+)-(\d+)"), ("d", "h")),
    (re.compile(r"(\d+)-(\d+):(\d+)"), ("d", "h", "m")),
    (re.compile(r"(\d+)-(\d+):(\d+):(\d+)"), ("d", "h", "m", "s")),
)


def parse_time(value: str | int) -> int:
    """A Slurm time limit in minutes: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (or an int of minutes).

    Seconds are rounded up to a whole minute, as Slurm does. Zero and 'UNLIMITED' are refused: Slurm reads
    them as no limit at all.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    minutes = value if isinstance(value, int) else _parse_time_text(value.strip())
    if minutes <= 0:
        raise ValueError(f"{value!r} is not a positive time limit")
    return minutes


def _parse_time_text(text: str) -> int:
    for pattern, names in _TIME_FORMATS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        parts = dict(zip(names, map(int, match.groups()), strict=True))
        # The leading part may be as large as it likes (90 minutes, 36 hours); the others must fit their unit.
        limits = {"h": 24, "m": 60, "s": 60}
        for name in names[1:]:
            if parts[name] >= limits[name]:
                raise ValueError(f"{text!r}: {parts[name]} is out of range")
        seconds = parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
        return -(-seconds // 60)
    raise ValueError(f"{text!r} is not a Slurm time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)")


def format_time(minutes: int) -> str:
    """Minutes as sbatch --time reads them back: 90 -> '01:30:00', 2880 -> '2-00:00:00'."""
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    clock = f"{hours:02d}:{mins:02d}:00"
    return f"{days}-{clock}" if days else clock


_MEMORY = re.compile(r"(\d+)([KMGT]?)", re.IGNORECASE)
_KB_PER_UNIT = {"K": 1, "M": 1024, "": 1024, "G": 1024**2, "T": 1024**3}


def parse_memory(value: str | int) -> int:
    """Memory in MB, as sbatch --mem takes it: '4G', '512M', '2048K', or a plain number of MB.

    Zero is refused: --mem=0 means all of a node's memory.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an amount of memory")
    match = _MEMORY.fullmatch(value.strip()) if isinstance(value, str) else None
    if isinstance(value, int):
        megabytes = value
    elif match is not None:
        kilobytes = int(match.group(1)) * _KB_PER_UNIT[match.group(2).upper()]
        megabytes = -(-kilobytes // 1024)  # K rounds up to a whole MB
    else:
        raise ValueError(f"{value!r} is not an amount of memory (e.g. 4G, 512M, or MB as a number)")
    if megabytes <= 0:
        raise ValueError(f"{value!r} is not a positive amount of memory")
    return megabytes


# ---------------------------------------------------------------------------------------------------------------------
# deucalion_options


def resolve_resources(defaults: Resources, options: object, limits: ResourceLimits) -> Resources:
    """The worker's defaults with the job's deucalion_options applied. Raises ValueError with a one-line
    reason naming the field for an unknown option or a value outside the allow-lists or caps."""
    if options is None:
        return defaults
    if not isinstance(options, Mapping):
        raise ValueError(f"deucalion_options: expected an object, got {type(options).__name__}")
    unknown = sorted(str(key) for key in options if key not in DEUCALION_OPTIONS)
    if unknown:
        raise ValueError(f"deucalion_options.{unknown[0]}: unknown option (allowed: {', '.join(DEUCALION_OPTIONS)})")
    # null counts as not given: the default applies.
    given = {str(key): value for key, value in options.items() if value is not None}
    return Resources(
        partition=_choice(given, "partition", defaults.partition, limits.partitions),
        account=_choice(given, "account", defaults.account, limits.accounts),
        time_minutes=_capped(given, "time", defaults.time_minutes, limits.max_time_minutes, parse_time, format_time),
        cpus=_capped(given, "cpus", defaults.cpus, limits.max_cpus, _parse_count, str),
        mem_mb=_capped(given, "mem", defaults.mem_mb, limits.max_mem_mb, parse_memory, _format_mb),
        gpus=_capped(given, "gpus", defaults.gpus, limits.max_gpus, _parse_count, str, minimum=0),
    )


def _choice(given: Mapping[str, object], key: str, default: str | None, allowed: frozenset[str]) -> str | None:
    if key not in given:
        return default
    value = given[key]
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"deucalion_options.{key}: {value!r} is not a valid {key} name")
    if value != default and value not in allowed:
        choices = sorted({*allowed, *([default] if default else [])})
        raise ValueError(f"deucalion_options.{key}: {value!r} is not allowed (allowed: {', '.join(choices) or 'none'})")
    return value


def _capped(
    given: Mapping[str, object],
    key: str,
    default: int | None,
    cap: int | None,
    parse: Callable[[str | int], int],
    show: Callable[[int], str],
    minimum: int = 1,
) -> int | None:
    if key not in given:
        return default
    raw = given[key]
    try:
        if not isinstance(raw, str | int):
            raise ValueError(f"{raw!r} is neither a number nor a string")
        value = parse(raw)
    except ValueError as exc:
        raise ValueError(f"deucalion_options.{key}: {exc}") from None
    if value < minimum:
        raise ValueError(f"deucalion_options.{key}: {raw!r} is below the minimum of {minimum}")
    if cap is not None and value > cap:
        raise ValueError(f"deucalion_options.{key}: {raw!r} is above the maximum of {show(cap)}")
    return value


def _parse_count(value: str | int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise ValueError(f"{value!r} is not a whole number")
        return int(value)
    return value


def _format_mb(megabytes: int) -> str:
    return f"{megabytes // 1024}G" if megabytes % 1024 == 0 else f"{megabytes}M"


# ---------------------------------------------------------------------------------------------------------------------
# The script


class BatchTemplate(string.Template):
    """Only `${lower_case}` is a placeholder: `$NAME`, `${NAME}`, `$1`, `$$` are the script's own bash."""

    flags = re.NOFLAG  # case-sensitive, so that ${NAME} in capitals is never taken for a placeholder
    # Replacing `pattern` with a string is the documented way to change the syntax; Template.__init_subclass__
    # compiles it, and typeshed only knows the compiled attribute. Only the braced group can ever match.
    pattern = r"\$(?:(?P<escaped>(?!))|(?P<named>(?!))|\{(?P<braced>[a-z][a-z0-9_]*)\}|(?P<invalid>(?!)))"  # type: ignore[assignment]


def default_template() -> str:
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def render_batch_script(job: BatchJob, template: str) -> str:
    """The batch script for `job`; ValueError for a value that cannot be written into it safely, KeyError
    for a placeholder of the template that this function does not know."""
    _check(job)
    files = run_files(job.run_dir)
    values = {
        "job_name": f"opeva-{job.job_id}",
        "comment": job_comment(job.worker_id, job.job_id),
        "run_dir": job.run_dir,
        "stdout_path": files.stdout,
        "stderr_path": files.stderr,
        "sbatch_options": "\n".join(f"#SBATCH {option}" for option in sbatch_options(job)),
        "job_id": shlex.quote(job.job_id),
        "runtime": shlex.quote(job.runtime),
        "image": shlex.quote(job.image),
        "share": shlex.quote(job.share_path),
        "data_dir": shlex.quote(job.data_dir),
        "binds": _words(_bind_spec(bind) for bind in job.binds),
        "sif_dir": shlex.quote(job.sif_dir or ""),
        "sif_lock_wait": str(job.sif_lock_wait_seconds),
        "stop_grace": str(job.stop_grace_seconds),
        "env_file": shlex.quote(files.env_file if job.env else ""),
        "env_names": _words(sorted(job.env)),
        "modules": _words(job.modules),
        "gpus": str(job.resources.gpus or 0),
        "runtime_args": _words(job.runtime_args),
        "command": _words(job.command),
    }
    return BatchTemplate(template).substitute(values)


def render_env_file(env: Mapping[str, str]) -> str:
    """`export NAME='value'` lines for the script to source; write it with mode ENV_FILE_MODE."""
    for name, value in env.items():
        _check_env(name, value)
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(env.items()))


def job_comment(worker_id: str, job_id: str) -> str:
    """The job's Slurm comment: how a worker finds its own jobs again in squeue (`%k`)."""
    return f"opeva:{worker_id}:{job_id}"


def parse_job_comment(comment: str | None) -> tuple[str, str] | None:
    """(worker_id, job_id) from a comment written by job_comment; None for anybody else's."""
    if not comment:
        return None
    parts = comment.split(":")
    if len(parts) != 3 or parts[0] != "opeva" or not all(_ID.fullmatch(part) for part in parts[1:]):
        return None
    return parts[1], parts[2]


def sbatch_options(job: BatchJob) -> list[str]:
    """The #SBATCH options for the job's resources, then its extra options."""
    res = job.resources
    options = [f"--partition={res.partition}"] if res.partition else []
    options += [f"--account={res.account}"] if res.account else []
    options += [f"--time={format_time(res.time_minutes)}"] if res.time_minutes else []
    options += [f"--cpus-per-task={res.cpus}"] if res.cpus else []
    options += [f"--mem={res.mem_mb}M"] if res.mem_mb else []
    options += [f"--gpus={res.gpus}"] if res.gpus else []
    return options + list(job.sbatch_options)


def sbatch_command(script_path: str, extra_args: Sequence[str] = ()) -> list[str]:
    """sbatch printing only the job id (`<id>` or `<id>;<cluster>`, see parse_sbatch_output)."""
    return ["sbatch", "--parsable", *extra_args, script_path]


def parse_sbatch_output(text: str) -> str:
    """The job id from `sbatch --parsable` output; ValueError if there is none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    job_id = lines[-1].split(";")[0] if lines else ""
    if not job_id.isdigit():
        raise ValueError(f"sbatch printed no job id: {text.strip()[:200]!r}")
    return job_id


def _words(words: Iterable[str]) -> str:
    """Shell words for a bash array: `NAME=(${name})` in the template becomes `NAME=(a 'b c')`."""
    return " ".join(shlex.quote(word) for word in words)


def _bind_spec(bind: Bind) -> str:
    return f"{bind.host}:{bind.container}" + (":ro" if bind.read_only else "")


def _check(job: BatchJob) -> None:
    for label, value in (("job_id", job.job_id), ("worker_id", job.worker_id)):
        if not _ID.fullmatch(value):
            raise ValueError(f"{label} {value!r} must match {_ID.pattern}")
    if job.runtime not in RUNTIMES:
        raise ValueError(f"runtime {job.runtime!r} is not one of {', '.join(RUNTIMES)}")
    paths = {"run_dir": job.run_dir, "share_path": job.share_path, "data_dir": job.data_dir}
    paths |= {f"bind {bind.host}": bind.host for bind in job.binds}
    paths |= {f"bind target {bind.container}": bind.container for bind in job.binds}
    for label, path in paths.items():
        if not _PATH.fullmatch(path):
            raise ValueError(f"{label} {path!r} must be an absolute path of letters, digits and _.+@/-")
    if job.runtime != "none" and not _IMAGE.fullmatch(job.image):
        raise ValueError(f"image {job.image!r} is not an image reference or .sif path")
    if not job.command:
        raise ValueError("the job has no command")
    for option in job.sbatch_options:
        if not _SBATCH_OPTION.fullmatch(option):
            raise ValueError(f"sbatch option {option!r} must look like --name or --name=value, without spaces")
    for module in job.modules:
        if not _NAME.fullmatch(module):
            raise ValueError(f"module {module!r} is not a valid module name")
    for name, value in job.env.items():
        _check_env(name, value)


def _check_env(name: str, value: str) -> None:
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(f"environment variable name {name!r} is not a valid shell name")
    if "\x00" in value:
        raise ValueError(f"environment variable {name} holds a NUL byte")
