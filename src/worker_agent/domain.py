"""The words every part of the worker shares: job statuses, stop reasons, status updates, jobs and their logs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A job's status as the backend knows it (docs/contract.md)."""

    QUEUED = "queued"
    DISPATCHED = "dispatched"
    SETUP = "setup"
    RUNNING = "running"
    STOP_REQUESTED = "stop_requested"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    CANCELED = "canceled"


TERMINAL = frozenset({Status.FINISHED, Status.FAILED, Status.STOPPED, Status.CANCELED})
# Statuses that mean "stop the job" when the worker reads them while the job runs.
STOPPING = frozenset({Status.STOP_REQUESTED, Status.STOPPED, Status.CANCELED})


class StopReason(StrEnum):
    """Why the worker (not the job itself) ends a job. Every stop goes through JobRun.stop with one of these."""

    REQUESTED = "requested"  # the backend asked (stop_requested or stopped)
    CANCELED = "canceled"  # the backend canceled the job
    TIMEOUT = "timeout"  # JOB_TIMEOUT passed
    LOST_OWNERSHIP = "lost_ownership"  # the backend gave the job up or handed it to someone else
    SHUTDOWN = "shutdown"  # the worker exits with WORKER_STOP_JOB_ON_EXIT

    @property
    def status(self) -> Status | None:
        """The status to report once the job has ended; None: report nothing (the job is not ours)."""
        return _STOP_STATUS[self]

    @property
    def error(self) -> str | None:
        return _STOP_ERROR.get(self)


_STOP_STATUS: dict[StopReason, Status | None] = {
    StopReason.REQUESTED: Status.STOPPED,
    StopReason.CANCELED: Status.CANCELED,
    StopReason.TIMEOUT: Status.FAILED,
    StopReason.LOST_OWNERSHIP: None,
    StopReason.SHUTDOWN: Status.STOPPED,
}
_STOP_ERROR = {StopReason.TIMEOUT: "timeout", StopReason.SHUTDOWN: "worker shut down"}


@dataclass(frozen=True)
class StatusUpdate:
    job_id: str
    status: Status
    container_id: str | None = None
    container_name: str | None = None
    exit_code: int | None = None
    error: str | None = None
    error_code: str | None = None  # stable, documented in docs/contract.md
    error_category: str | None = None  # user, infrastructure or worker
    error_hint: str | None = None  # one sentence for the person who submitted the job
    details: dict[str, Any] = field(default_factory=dict)
    # The dispatch this status belongs to (orchestrator 1.0 attempt fencing); the token is a secret.
    attempt_number: int | None = None
    attempt_token: str | None = field(default=None, repr=False)
    worker_version: str | None = None

    def __post_init__(self) -> None:
        # Read back from the outbox the status is a plain string: make it a Status again (ValueError if unknown).
        object.__setattr__(self, "status", Status(self.status))

    def body(self, worker_id: str) -> dict[str, Any]:
        fields = {key: value for key, value in asdict(self).items() if value not in (None, {})}
        return {**fields, "status": str(self.status), "worker_id": worker_id}


@dataclass
class LogPosition:
    """Where a job's log is: messages of each output stream already in the file, and its size then.

    A message is what Docker's log copier keeps as one entry (logs/messages.py); counting those, not
    bytes, makes the live stream and a replay of the container's log agree on where the file stopped.
    """

    stdout_messages: int = 0
    stderr_messages: int = 0
    file_size: int = 0
    # A digest of the last bytes of each stream's messages so far ("" if none): a replay that no longer
    # starts with the job's first message (Docker rotated its copy) is told from one that does.
    stdout_tail: str = ""
    stderr_tail: str = ""


@dataclass
class JobRecord:
    """What the worker keeps on disk about a job it runs, so that a restarted worker takes it back."""

    job_id: str
    container_id: str | None  # None: saved before the container (or batch job) existed; see JobRun.run_new
    container_name: str
    position: LogPosition = field(default_factory=LogPosition)
    started_at: float = field(default_factory=time.time)
    attempt_number: int | None = None
    attempt_token: str | None = field(default=None, repr=False)  # a secret: state dir files are mode 0600


@dataclass(frozen=True)
class Mount:
    host: str
    container: str
    read_only: bool = False


@dataclass(frozen=True)
class JobSpec:
    """What to run for one job; the executor turns it into a container (or a batch job)."""

    job_id: str
    worker_id: str
    image: str
    command: list[str]
    name: str
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    cpus: float | None = None
    memory_bytes: int | None = None
    pids_limit: int | None = None
    gpus: str | None = None  # "all" or comma-separated device ids
    privileged: bool = False
    network_mode: str | None = None
    pid_mode: str | None = None
    attempt_number: int | None = None


@dataclass
class JobHandle:
    """A started (or re-found) job. `ref` is the executor's own id: the container id for Docker."""

    job_id: str
    ref: str
    name: str
    env: dict[str, str] = field(default_factory=dict)
    started: bool = True  # False: created but never started (the worker or the executor was interrupted)
