"""What the worker needs from whatever runs jobs (Docker today, Slurm next)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from worker_agent.domain import JobHandle, JobSpec


class ExecutorError(Exception):
    """The executor refused or failed an action on a job (create, start, stop, inspect...); the message says why."""


class JobLost(ExecutorError):
    """The job's container (or batch job) no longer exists."""


class ImageUnavailable(ExecutorError):
    """The job's image could not be pulled and is not present."""


class StartCancelled(ExecutorError):
    """The worker is shutting down: the job was not started (nothing of it is left behind)."""


class ExecutorUnavailable(Exception):
    """The executor itself (e.g. dockerd) cannot be reached; retry later, the job is not at fault."""


class Executor(Protocol):
    name: str
    # When a job's exit check last got an answer (time.monotonic(), -inf for none): the worker's loop
    # takes it for a ping, so that jobs following each other do not wait for one.
    answered_at: float

    def ping(self) -> str:
        """The executor's version; raises ExecutorUnavailable when it cannot be reached."""
        ...

    def start(self, spec: JobSpec, progress: Callable[[str], None], cancel: threading.Event) -> JobHandle:
        """Start the job with its output captured from the first byte; raises ExecutorError.

        `progress` receives one-line notes (e.g. image pull progress) for the worker and job logs. Once
        `cancel` is set (the worker shuts down) a pull is abandoned and nothing is created: StartCancelled.
        """
        ...

    def start_created(self, job: JobHandle) -> None:
        """Start a job that was created but never started (found by find_owned with started=False)."""
        ...

    def output(self, job: JobHandle, from_start: bool, follow: bool = True) -> Iterator[tuple[int, bytes]]:
        """(stream, bytes) frames until the job's output ends; stream 1 is stdout, 2 is stderr.

        `from_start` replays everything the job printed so far (used after a restart), then follows
        the job unless `follow` is False.
        """
        ...

    def exit_code(self, job: JobHandle) -> int | None:
        """The exit code once the job has ended, None while it runs; raises JobLost if it vanished."""
        ...

    def end_details(self, job: JobHandle) -> dict[str, Any]:
        """What the executor knows about how an ended job ended: `oom_killed` (bool), an `error_hint` for the
        exit code's verdict, and for an executor with its own verdict (Slurm) `error_code`, `error` and anything
        else for the status' details."""
        ...

    def stop(self, job: JobHandle, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after the grace period."""
        ...

    def remove(self, job: JobHandle) -> None: ...

    def find_owned(self, worker_id: str) -> list[JobHandle]:
        """Jobs this worker started and that still exist (running or not)."""
        ...
