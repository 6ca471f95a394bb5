"""Request bodies.

Agent bodies ignore unknown fields (newer workers may send more); run-simulation rejects them. Where protocol
1.0 changed a body, the 2026-04 one is kept as ``Legacy...`` so that ``--protocol 2026-04`` validates exactly
as before.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

LegacyJobState = Literal[
    "launching",
    "queued",
    "dispatched",
    "running",
    "stop_requested",
    "finished",
    "failed",
    "stopped",
    "canceled",
]
JobState = Literal[LegacyJobState, "setup"]

WorkerId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
Name = Annotated[str, Field(min_length=1, max_length=255)]


def _check_json(value: Any, depth: int = 0) -> None:
    """Reject what cannot be echoed back as strict JSON: NaN/Infinity, lone surrogates, absurd nesting."""
    if depth > 64:
        raise ValueError("nested too deeply")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and Infinity are not allowed")
    if isinstance(value, str):
        value.encode("utf-8")  # raises UnicodeEncodeError (a ValueError) on lone surrogates
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, depth + 1)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    _check_json(value)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]

_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CONTAINER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
ShortText = Annotated[str, Field(max_length=255)]


class LegacyNextJobRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    worker_id: WorkerId


class NextJobRequest(LegacyNextJobRequest):
    # "attempt_fencing_v1" asks for fenced attempts; a worker without it is served the legacy way.
    capabilities: list[ShortText] = Field(default_factory=list, max_length=64)


class HeartbeatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    worker_id: WorkerId
    info: JsonObject = Field(default_factory=dict)


class _JobStatusBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    job_id: Name
    worker_id: WorkerId
    container_id: str | None = None
    container_name: str | None = None
    exit_code: Int64 | None = None
    error: str | None = None
    details: JsonObject | None = None


class LegacyJobStatusRequest(_JobStatusBody):
    status: LegacyJobState


class JobStatusRequest(_JobStatusBody):
    # Any text: an unknown status is answered 400 after the 404 check, the way the orchestrator orders them.
    status: ShortText
    worker_version: ShortText | None = None
    attempt_number: Int64 | None = None
    attempt_token: Annotated[str, Field(max_length=512)] | None = None
    error_code: ShortText | None = None
    error_category: ShortText | None = None
    error_hint: str | None = None


class RequeueRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    force: bool = False
    preferred_host: WorkerId | None = None
    # None: keep whether the job was bound to its host; False with no preferred_host: any worker may take it.
    require_host: bool | None = None


class Volume(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1)
    container: str = Field(min_length=1)
    mode: Literal["rw", "ro"] = "rw"

    @field_validator("host", "container")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "\x00" in value:
            raise ValueError("must be an absolute path")
        return value


class LegacyRunSimulationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config_path: str | None = None
    config: JsonObject | None = None
    config_name: str | None = None
    job_name: Name | None = None
    target_host: WorkerId | None = None
    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    command: str | list[str] | None = None
    container_name: str | None = None
    env: dict[str, str] | None = None
    volumes: list[Volume] | None = None

    @field_validator("config_path")
    @classmethod
    def _config_path(cls, value: str | None) -> str | None:
        return None if value is None else _checked_config_path(value, bare_allowed=False)

    @field_validator("config_name")
    @classmethod
    def _config_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for suffix in (".yaml", ".yml"):
            if value.endswith(suffix) and len(value) > len(suffix):
                value = value[: -len(suffix)]
                break
        if not _CONFIG_NAME.match(value) or ".." in value:
            raise ValueError("config_name must be 1-128 characters from [A-Za-z0-9._-], not starting with . or -")
        return value

    @field_validator("container_name")
    @classmethod
    def _container_name(cls, value: str | None) -> str | None:
        if value is not None and not _CONTAINER_NAME.match(value):
            raise ValueError("container_name must match [A-Za-z0-9][A-Za-z0-9_.-]* and be at most 63 characters")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is not None and len(value) == 0:
            raise ValueError("command must not be empty")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            bad = [key for key in value if not _ENV_KEY.match(key)]
            if bad:
                raise ValueError(f"invalid environment variable names: {bad}")
        return value

    @model_validator(mode="after")
    def _exactly_one_config(self) -> Self:
        if (self.config_path is None) == (self.config is None):
            raise ValueError("give exactly one of config_path (an existing file under configs/) or config")
        if self.config_name is not None and self.config is None:
            raise ValueError("config_name only applies to an inline config")
        return self


class RunSimulationRequest(LegacyRunSimulationRequest):
    """Protocol 1.0: ``config_path`` may also be relative to configs/ (``exp.yaml``), and a compute profile."""

    # Automatic host selection limited to workers that advertise a GPU ("gpu") or do not ("cpu").
    target_worker_profile: Literal["cpu", "gpu"] | None = None

    @field_validator("config_path")
    @classmethod
    def _config_path(cls, value: str | None) -> str | None:
        return None if value is None else _checked_config_path(value, bare_allowed=True)


def _checked_config_path(value: str, *, bare_allowed: bool) -> str:
    """``value`` as ``configs/...``; with ``bare_allowed`` a path without the prefix is taken inside configs/."""
    if "\x00" in value or "\\" in value:
        raise ValueError("config_path contains a forbidden character")
    if value.startswith("/"):
        raise ValueError("config_path must be relative to the shared dir, e.g. configs/demo.yaml")
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("config_path must not contain empty, '.' or '..' segments")
    if parts[0] == "configs" and len(parts) >= 2:
        return value
    if not bare_allowed:
        raise ValueError("config_path must be under configs/")
    return f"configs/{value}"
