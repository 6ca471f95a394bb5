"""The job payload sent by the backend: one typed model, where every field is checked once."""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Docker accepts [a-zA-Z0-9][a-zA-Z0-9_.-]+; 63 characters keeps the name usable as a hostname too.
CONTAINER_NAME_MAX = 63
MAX_TEXT = 4096
MAX_LIST = 64


class PayloadError(Exception):
    """The payload cannot be run. `job_id` is set when it is safe to report the failure against it."""

    def __init__(self, reason: str, job_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id


class Volume(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    host: str = Field(min_length=1, max_length=MAX_TEXT)
    container: str = Field(min_length=1, max_length=MAX_TEXT)
    mode: str = Field(default="rw", pattern=r"^(rw|ro)$")

    @field_validator("host", "container")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if "\x00" in value or not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value


class JobPayload(BaseModel):
    """A job as the backend hands it out. Fields the worker does not know are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_id: str = Field(max_length=128)
    config_path: str = Field(min_length=1, max_length=MAX_TEXT)
    job_name: str | None = Field(default=None, max_length=MAX_TEXT)
    image: str | None = Field(default=None, min_length=1, max_length=512)
    command: str | list[str] | None = None
    container_name: str | None = Field(default=None, max_length=MAX_TEXT)
    volumes: list[Volume] = Field(default_factory=list, max_length=MAX_LIST)
    env: dict[str, str] = Field(default_factory=dict, max_length=256)

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
        if "\x00" in value or path.is_absolute() or ".." in path.parts:
            raise ValueError("config_path must be relative to the shared root, without '..'")
        return value

    @field_validator("command")
    @classmethod
    def _bounded_command(cls, value: str | list[str] | None) -> str | list[str] | None:
        parts = [value] if isinstance(value, str) else value or []
        if len(parts) > MAX_LIST * 4 or any(len(part) > MAX_TEXT or "\x00" in part for part in parts):
            raise ValueError("command is too long or holds a NUL byte")
        return value

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not ENV_NAME_PATTERN.fullmatch(name):
                raise ValueError(f"env name {name[:64]!r} is not a valid variable name")
            if len(text) > 32 * 1024 or "\x00" in text:
                raise ValueError(f"env value of {name} is too long or holds a NUL byte")
        return value

    def command_args(self, data_dir: str) -> list[str]:
        """The container command: the payload's, or the worker-owned default of older backends."""
        if self.command is None:
            return ["--config", f"{data_dir}/{self.config_path}", "--job_id", self.job_id]
        if isinstance(self.command, str):
            return shlex.split(self.command)
        return list(self.command)

    def docker_name(self) -> str:
        """A container name Docker accepts, whatever the payload's name or job name holds."""
        wanted = self.container_name or f"opeva-job-{self.job_id}"
        cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", wanted).strip("-_.")
        if not cleaned:
            cleaned = f"opeva-job-{self.job_id}"
        return cleaned[:CONTAINER_NAME_MAX].rstrip("-_.") or "opeva-job"

    def config_file(self, shared_dir: Path) -> Path:
        """The config's real path, checked to be inside the shared root and to exist."""
        root = shared_dir.resolve()
        resolved = (root / self.config_path).resolve()
        if not resolved.is_relative_to(root):
            raise PayloadError(f"config_path {self.config_path!r} leaves the shared directory", self.job_id)
        if not resolved.is_file():
            raise PayloadError(f"config file {self.config_path!r} not found in the shared directory", self.job_id)
        return resolved


def parse(raw: Any) -> JobPayload:
    """Check a decoded next-job answer; raise PayloadError with a one-line reason."""
    if not isinstance(raw, dict):
        raise PayloadError(f"payload must be a JSON object, not {type(raw).__name__}")
    try:
        return JobPayload.model_validate(raw)
    except ValidationError as exc:
        raise PayloadError(_reason(exc), _usable_job_id(raw.get("job_id"))) from None


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    return f"{where}: {first['msg']}"


def _usable_job_id(value: Any) -> str | None:
    if isinstance(value, str) and JOB_ID_PATTERN.fullmatch(value) and ".." not in value:
        return value
    return None
