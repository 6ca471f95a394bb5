"""The job payload sent by the backend: one typed, immutable JobPayload, where every field is checked once.

Plain code rather than a validation library: pydantic cost the idle worker ~9 MiB of RSS. The rules
are strict JSON types (no "true" for a bool, no number for a string, a bool is not an int), fields checked
in declaration order, and the first problem reported as "<where>: <what>", where is the field's path
(`env.NAME`, `volumes.0.host`, `command.2`) or `payload` for the payload as a whole.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Always used with fullmatch, never as ^...$: Python's `$` also matches before a trailing newline.
IMAGE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")
DOCKER_MODE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")  # network_mode, pid_mode
VOLUME_MODES = ("rw", "ro")
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

_T = TypeVar("_T")


class PayloadError(Exception):
    """The payload cannot be run. `job_id` is set when it is safe to report the failure against it."""

    def __init__(self, reason: str, job_id: str | None = None, code: str = "invalid_payload") -> None:
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id
        self.code = code  # errors.py


@dataclass(frozen=True)
class Volume:
    host: str  # absolute, normalised
    container: str  # absolute, normalised
    mode: str = "rw"  # one of VOLUME_MODES


@dataclass(frozen=True)
class JobPayload:
    """A job as the backend hands it out. Made by parse(), which checks every field: the constructor does
    not. Fields the worker does not know are ignored, except REFUSED_FIELDS."""

    job_id: str
    config_path: str
    job_name: str | None = None
    image: str | None = None
    command: str | list[str] | None = None
    container_name: str | None = None
    volumes: list[Volume] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    privileged: bool = False
    network_mode: str | None = None
    # Orchestrator 1.0 attempt fencing: echoed on every status of this dispatch.
    attempt_number: int | None = None
    attempt_token: str | None = None
    deucalion_options: dict[str, Any] | None = None
    pid_mode: str | None = None

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
        return _job_payload(raw)
    except _Invalid as exc:
        raise PayloadError(one_line(str(exc)), job_id) from None
    except (ValueError, TypeError, RecursionError) as exc:  # defensive: a check's own surprise
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


# --- the checks ---


class _Invalid(Exception):
    """The first problem found, at a field path; parse turns it into a PayloadError."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")


def _job_payload(raw: dict[str, Any]) -> JobPayload:
    _refuse_host_options(raw)
    # Python evaluates keyword arguments left to right: the fields are checked in this (declaration)
    # order and the first problem is the one reported. Only the fields whose default is None accept null.
    return JobPayload(
        job_id=_checked("job_id", _safe_job_id, _string(_required(raw, "job_id"), "job_id", max_length=128)),
        config_path=_checked("config_path", _relative_path, _path_text(_required(raw, "config_path"), "config_path")),
        job_name=_optional(raw, "job_name", _short_text),
        image=_optional(raw, "image", _image),
        command=_command(raw.get("command")),
        container_name=_optional(raw, "container_name", _short_text),
        volumes=_list(raw.get("volumes", []), "volumes", _volume, max_items=MAX_LIST),
        env=_checked("env", _valid_env, _dict(raw.get("env", {}), "env", _env_value, max_items=256)),
        privileged=_bool(raw.get("privileged", False), "privileged"),
        network_mode=_optional(raw, "network_mode", _docker_mode),
        attempt_number=_optional(raw, "attempt_number", _attempt_number),
        attempt_token=_optional(raw, "attempt_token", _attempt_token),
        deucalion_options=_optional(raw, "deucalion_options", _options),
        pid_mode=_optional(raw, "pid_mode", _docker_mode),
    )


def _refuse_host_options(raw: dict[str, Any]) -> None:
    """Checked before any field. An empty value (null, [], {}, "", false) asks for nothing: harmless."""
    for name in REFUSED_FIELDS:
        if raw.get(name) not in (None, [], {}, "", False):
            raise _Invalid("payload", f"{name} is not allowed")


def _volume(value: Any, where: str) -> Volume:
    if not isinstance(value, dict):
        raise _Invalid(where, "Input should be a valid dictionary")
    host = _absolute(_required(value, "host", where), f"{where}.host")
    container = _absolute(_required(value, "container", where), f"{where}.container")
    mode = _string(value.get("mode", "rw"), f"{where}.mode")
    if mode not in VOLUME_MODES:
        raise _Invalid(f"{where}.mode", f"should be one of {', '.join(VOLUME_MODES)}")
    return Volume(host, container, mode)


# Presence and JSON types. Strict: what the JSON holds must already be of the right type.


def _required(raw: dict[str, Any], name: str, where: str = "") -> Any:
    if name not in raw:
        raise _Invalid(f"{where}.{name}" if where else name, "Field required")
    return raw[name]


def _optional(raw: dict[str, Any], name: str, check: Callable[[Any, str], _T]) -> _T | None:
    """A field whose default is None: missing and null are the same."""
    value = raw.get(name)
    return None if value is None else check(value, name)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):  # not 0/1, not "true"
        raise _Invalid(where, "Input should be a valid boolean")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):  # bool is an int subclass; 1.0 is a float
        raise _Invalid(where, "Input should be a valid integer")
    if not low <= value <= high:
        raise _Invalid(where, f"Input should be between {low} and {high}")
    return value


def _string(value: Any, where: str, max_length: int | None = None, min_length: int = 0) -> str:
    """A string of min_length..max_length characters without lone surrogates (JSON may escape one, as
    "\\ud800"; it cannot be encoded for the OS, Docker or a log), as every string of the payload."""
    if not isinstance(value, str):
        raise _Invalid(where, "Input should be a valid string")
    if max_length is not None and len(value) > max_length:
        raise _Invalid(where, f"String should have at most {max_length} characters")
    if len(value) < min_length:
        raise _Invalid(where, f"String should have at least {min_length} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(where, "is not valid Unicode text") from None
    return value


def _list(value: Any, where: str, check: Callable[[Any, str], _T], max_items: int | None = None) -> list[_T]:
    """A list whose items pass `check` (a problem is at where.INDEX). Too many items is reported first."""
    if not isinstance(value, list):  # a tuple never comes from JSON
        raise _Invalid(where, "Input should be a valid list")
    if max_items is not None and len(value) > max_items:
        raise _Invalid(where, f"List should have at most {max_items} items, not {len(value)}")
    return [check(item, f"{where}.{index}") for index, item in enumerate(value)]


def _dict(value: Any, where: str, check: Callable[[Any, str], _T], max_items: int) -> dict[str, _T]:
    """A JSON object whose values pass `check` (a problem is at where.KEY); its size is checked after them."""
    if not isinstance(value, dict):
        raise _Invalid(where, "Input should be a valid dictionary")
    checked: dict[str, _T] = {}
    for key, item in value.items():
        at = f"{where}.{str(key)[:64]}"  # the key is the sender's: keep the reason short
        if not isinstance(key, str):  # never from JSON; from Python code, maybe
            raise _Invalid(f"{at}.[key]", "Input should be a valid string")
        checked[key] = check(item, at)
    if len(checked) > max_items:
        raise _Invalid(where, f"Dictionary should have at most {max_items} items, not {len(checked)}")
    return checked


def _checked(where: str, check: Callable[[_T], _T], value: _T) -> _T:
    """Run one of the field checks at the end of this module, reporting its ValueError at `where`."""
    try:
        return check(value)
    except ValueError as exc:
        raise _Invalid(where, str(exc)) from None


# The kinds of value the fields hold.


def _text(value: Any, where: str, max_length: int, min_length: int = 0) -> str:
    return _checked(where, _clean_text, _string(value, where, max_length, min_length))


def _short_text(value: Any, where: str) -> str:  # job_name, container_name
    return _text(value, where, max_length=256)


def _path_text(value: Any, where: str) -> str:
    return _text(value, where, max_length=MAX_PATH, min_length=1)


def _absolute(value: Any, where: str) -> str:
    return _checked(where, _absolute_path, _path_text(value, where))


def _env_value(value: Any, where: str) -> str:
    return _text(value, where, max_length=MAX_ENV_VALUE)


def _matching(value: Any, where: str, pattern: re.Pattern[str]) -> str:
    """A string matching `pattern` whole; the pattern bounds its length."""
    text = _string(value, where)
    if not pattern.fullmatch(text):
        raise _Invalid(where, f"String should match pattern '{pattern.pattern}'")
    return text


def _image(value: Any, where: str) -> str:
    return _matching(value, where, IMAGE_PATTERN)


def _docker_mode(value: Any, where: str) -> str:  # network_mode, pid_mode
    return _matching(value, where, DOCKER_MODE_PATTERN)


def _command(value: Any) -> str | list[str] | None:
    """A string (split as a shell would), a list of arguments, or null for the default command."""
    command: str | list[str]
    if value is None:
        return None
    if isinstance(value, str):
        command = _text(value, "command", MAX_TEXT)
    elif isinstance(value, list):
        command = _list(value, "command", lambda item, where: _text(item, where, MAX_TEXT))
    else:
        raise _Invalid("command", "Input should be a valid string or list of strings")
    return _checked("command", _bounded_command, command)


def _attempt_number(value: Any, where: str) -> int:
    return _int(value, where, 0, 2**31)


def _attempt_token(value: Any, where: str) -> str:
    return _string(value, where, max_length=512, min_length=1)


def _options(value: Any, where: str) -> dict[str, Any]:
    """deucalion_options: the values are passed on as they are; the Deucalion executor checks them."""
    return _dict(value, where, lambda item, _: item, max_items=32)


# The field checks proper: a ValueError with the reason, which _checked reports at the field.


def _clean_text(value: str) -> str:
    """No NUL byte (C APIs cut there); lone surrogates are already refused in every string (_string)."""
    if "\x00" in value:
        raise ValueError("holds a NUL byte")
    return value


def _absolute_path(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError("must be an absolute path without '..'")
    if _has_long_component(path):
        raise ValueError(f"has a path component longer than {MAX_NAME_BYTES} bytes")
    return posixpath.normpath(value).replace("//", "/")


def _has_long_component(path: PurePosixPath) -> bool:
    return any(len(part.encode()) > MAX_NAME_BYTES for part in path.parts)


def _safe_job_id(value: str) -> str:
    if usable_job_id(value) is None:
        raise ValueError("job_id must be 1-128 of [A-Za-z0-9_.-], start alphanumeric, no '..'")
    return value


def _relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not path.parts or value.endswith("/"):
        raise ValueError("config_path must be a file path relative to the shared root, without '..'")
    if _has_long_component(path):
        raise ValueError(f"config_path has a component longer than {MAX_NAME_BYTES} bytes")
    return value


def _bounded_command(value: str | list[str]) -> str | list[str]:
    if isinstance(value, str):
        try:
            shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"command cannot be split into arguments: {exc}") from None
    parts = [value] if isinstance(value, str) else value
    if len(parts) > MAX_LIST * 4 or sum(len(part.encode()) for part in parts) > MAX_COMMAND_BYTES:
        raise ValueError("command is too long")
    return value


def _valid_env(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if not ENV_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"env name {name[:64]!r} is not a valid variable name")
    if sum(len(name) + len(text.encode()) for name, text in value.items()) > MAX_ENV_BYTES:
        raise ValueError(f"env is larger than {MAX_ENV_BYTES} bytes")
    return value
