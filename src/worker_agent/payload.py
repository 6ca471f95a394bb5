"""The job payload sent by the backend: one typed model, where every field is checked once."""

from __future__ import annotations

import posixpath
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Docker accepts [a-zA-Z0-9][a-zA-Z0-9_.-]+; 63 characters keeps the name usable as a hostname too.
CONTAINER_NAME_MAX = 63
MAX_TEXT = 4096
MAX_PATH = 1024
MAX_NAME_BYTES = 255  # one path component (NAME_MAX)
MAX_LIST = 64
MAX_COMMAND_BYTES = 64 * 1024
MAX_ENV_VALUE = 32 * 1024
MAX_ENV_BYTES = 256 * 1024
MAX_REASON = 300
# Docker options that widen what a container may do on the host: the worker never applies them, so a
# payload asking for one is refused rather than silently run without it.
REFUSED_FIELDS = (
    "cap_add",
    "devices",
    "device_requests",
    "device_cgroup_rules",
    "security_opt",
    "ipc_mode",
    "uts_mode",
    "userns_mode",
    "cgroupns_mode",
    "cgroup_parent",
    "sysctls",
    "volumes_from",
    "runtime",
    "mounts",
)


class PayloadError(Exception):
    """The payload cannot be run. `job_id` is set when it is safe to report the failure against it."""

    def __init__(self, reason: str, job_id: str | None = None, code: str = "invalid_payload") -> None:
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id
        self.code = code  # errors.py


def _clean_text(value: str) -> str:
    """No NUL byte (C APIs cut there) and no lone surrogate (cannot be encoded for the OS or Docker)."""
    if "\x00" in value:
        raise ValueError("holds a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text") from None
    return value


ShortText = Annotated[str, StringConstraints(max_length=256), AfterValidator(_clean_text)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_clean_text)]
PathText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATH), AfterValidator(_clean_text)]
EnvValue = Annotated[str, StringConstraints(max_length=MAX_ENV_VALUE), AfterValidator(_clean_text)]


def _absolute_path(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError("must be an absolute path without '..'")
    if any(len(part.encode()) > MAX_NAME_BYTES for part in path.parts):
        raise ValueError(f"has a path component longer than {MAX_NAME_BYTES} bytes")
    return posixpath.normpath(value).replace("//", "/")


AbsolutePath = Annotated[PathText, AfterValidator(_absolute_path)]
DockerMode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]


class Volume(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    host: AbsolutePath
    container: AbsolutePath
    mode: Annotated[str, StringConstraints(pattern=r"^(rw|ro)$")] = "rw"


class JobPayload(BaseModel):
    """A job as the backend hands it out. Fields the worker does not know are ignored, except
    REFUSED_FIELDS. Strict: JSON types must match (no "true" for a bool, no number for a string)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    job_id: str = Field(max_length=128)
    config_path: PathText
    job_name: ShortText | None = None
    image: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")] | None = None
    command: Text | list[Text] | None = None
    container_name: ShortText | None = None
    volumes: list[Volume] = Field(default_factory=list, max_length=MAX_LIST)
    env: dict[str, EnvValue] = Field(default_factory=dict, max_length=256)
    privileged: bool = False
    network_mode: DockerMode | None = None
    # Orchestrator 1.0 attempt fencing: echoed on every status of this dispatch.
    attempt_number: Annotated[int, Field(ge=0, le=2**31)] | None = None
    attempt_token: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    deucalion_options: dict[str, Any] | None = Field(default=None, max_length=32)
    pid_mode: DockerMode | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_host_options(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in REFUSED_FIELDS:
                if data.get(name) not in (None, [], {}, "", False):
                    raise ValueError(f"{name} is not allowed")
        return data

    @field_validator("job_id")
    @classmethod
    def _safe_job_id(cls, value: str) -> str:
        if not JOB_ID_PATTERN.fullmatch(value) or ".." in value:
            raise ValueError("job_id must be 1-128 of [A-Za-z0-9_.-], start alphanumeric, no '..'")
        return value

    @field_validator("config_path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or not path.parts or value.endswith("/"):
            raise ValueError("config_path must be a file path relative to the shared root, without '..'")
        if any(len(part.encode()) > MAX_NAME_BYTES for part in path.parts):
            raise ValueError(f"config_path has a component longer than {MAX_NAME_BYTES} bytes")
        return value

    @field_validator("command")
    @classmethod
    def _bounded_command(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, str):
            try:
                shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"command cannot be split into arguments: {exc}") from None
        parts = [value] if isinstance(value, str) else value or []
        if len(parts) > MAX_LIST * 4 or sum(len(part.encode()) for part in parts) > MAX_COMMAND_BYTES:
            raise ValueError("command is too long")
        return value

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ENV_NAME_PATTERN.fullmatch(name):
                raise ValueError(f"env name {name[:64]!r} is not a valid variable name")
        if sum(len(name) + len(text.encode()) for name, text in value.items()) > MAX_ENV_BYTES:
            raise ValueError(f"env is larger than {MAX_ENV_BYTES} bytes")
        return value

    def command_args(self, data_dir: str) -> list[str]:
        """The container command: the payload's, or the worker-owned default of older backends."""
        if self.command is None:
            return ["--config", f"{data_dir}/{self.config_path}", "--job_id", self.job_id]
        if isinstance(self.command, str):
            return shlex.split(self.command)
        return list(self.command)

    def docker_name(self) -> str:
        """A container name Docker accepts, whatever the payload's name holds; one per attempt, since every
        attempt of a job gets the same container_name and two may meet on one Docker engine."""
        suffix = f"-a{self.attempt_number}" if self.attempt_number is not None else ""
        room = CONTAINER_NAME_MAX - len(suffix)
        fallback = f"opeva-job-{self.job_id}"[:room].rstrip("-_.")
        cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.container_name or fallback).strip("-_.")
        name = cleaned[:room].rstrip("-_.")
        return (name if len(name) >= 2 else fallback) + suffix

    def config_file(self, shared_dir: Path) -> Path:
        """The config's real path, checked to be inside the shared root (symlinks resolved) and to exist."""
        try:
            root = shared_dir.resolve()
            resolved = (root / self.config_path).resolve()
            inside = resolved.is_relative_to(root)
            exists = inside and resolved.is_file()
        except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a symlink loop
            raise PayloadError(f"config_path {self.config_path!r} cannot be resolved: {exc}", self.job_id) from None
        if not inside:
            raise PayloadError(f"config_path {self.config_path!r} leaves the shared directory", self.job_id)
        if not exists:
            raise PayloadError(
                f"config file {self.config_path!r} not found in the shared directory", self.job_id, "config_missing"
            )
        return resolved


def parse(raw: Any) -> JobPayload:
    """Check a decoded next-job answer; raise PayloadError (and nothing else) with a one-line reason."""
    if not isinstance(raw, dict):
        raise PayloadError(f"payload must be a JSON object, not {type(raw).__name__}")
    job_id = usable_job_id(raw.get("job_id"))
    try:
        return JobPayload.model_validate(raw)
    except ValidationError as exc:
        raise PayloadError(_reason(exc), job_id) from None
    except (ValueError, TypeError, RecursionError) as exc:  # defensive: a validator's own surprise
        raise PayloadError(one_line(f"payload: {type(exc).__name__}"), job_id) from None


def attempt_of(raw: Any) -> tuple[int | None, str | None]:
    """The attempt number and token of a payload, even one that is refused (its failure must carry them)."""
    if not isinstance(raw, dict):
        return None, None
    number, token = raw.get("attempt_number"), raw.get("attempt_token")
    valid_number = isinstance(number, int) and not isinstance(number, bool) and 0 <= number <= 2**31
    valid_token = isinstance(token, str) and 0 < len(token) <= 512 and token.isprintable()
    return (number if valid_number else None), (token if valid_token else None)


def usable_job_id(value: Any) -> str | None:
    """`value` when it is safe as a folder name and in a URL, else None."""
    if isinstance(value, str) and JOB_ID_PATTERN.fullmatch(value) and ".." not in value:
        return value
    return None


def one_line(text: str) -> str:
    """Printable, one line, bounded: safe in a log line and in the job's `error`."""
    cleaned = "".join(char if char.isprintable() else "?" for char in text)
    return cleaned if len(cleaned) <= MAX_REASON else cleaned[: MAX_REASON - 3] + "..."


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part)[:64] for part in first["loc"]) or "payload"
    return one_line(f"{where}: {first['msg'].removeprefix('Value error, ')}")
