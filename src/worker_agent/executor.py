"""What the worker loop needs from whatever runs jobs (Docker today, Slurm next)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol


class StartError(Exception):
    """The job could not be started; the message says why (reported as the job's `error`)."""


class ExecutorUnavailable(Exception):
    """The executor itself (e.g. dockerd) cannot be reached; retry later, the job is not at fault."""


@dataclass(frozen=True)
class Mount:
    host: str
    container: str
    read_only: bool = False


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    image: str
    command: list[str]
    name: str
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    cpus: float | None = None
    memory_bytes: int | None = None
    pids_limit: int | None = None
    gpus: str | None = None  # "all" or comma-separated device ids
    privileged: bool = False
    network_mode: str | None = None
    pid_mode: str | None = None


@dataclass
class JobHandle:
    """A started (or re-found) job. `ref` is the executor's own id: the container id for Docker."""

    job_id: str
    ref: str
    name: str
    env: dict[str, str] = field(default_factory=dict)


class Executor(Protocol):
    name: str

    def ping(self) -> str:
        """The executor's version; raises ExecutorUnavailable when it cannot be reached."""
        ...

    def start(self, spec: JobSpec, progress: Callable[[str], None]) -> JobHandle:
        """Start the job with its output captured from the first byte; raises StartError.

        `progress` receives one-line notes (e.g. image pull progress) for the worker and job logs.
        """
        ...

    def output(self, job: JobHandle, from_start: bool, follow: bool = True) -> Iterator[tuple[int, bytes]]:
        """(stream, bytes) frames until the job's output ends; stream 1 is stdout, 2 is stderr.

        `from_start` replays everything the job printed so far (used after a restart), then follows
        the job unless `follow` is False.
        """
        ...

    def exit_code(self, job: JobHandle) -> int | None:
        """The exit code once the job has ended, None while it runs; raises StartError if it vanished."""
        ...

    def stop(self, job: JobHandle, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after the grace period."""
        ...

    def remove(self, job: JobHandle) -> None: ...

    def find_owned(self, worker_id: str) -> list[JobHandle]:
        """Jobs this worker started and that still exist (running or not)."""
        ...
