"""Why a job failed: the stable error codes sent with `failed` (docs/contract.md), with category and hint."""

from __future__ import annotations

import dataclasses
from typing import Any

from worker_agent.domain import StatusUpdate

USER, INFRASTRUCTURE, WORKER = "user", "infrastructure", "worker"

# code -> (category, one sentence for the person who submitted the job)
ERRORS: dict[str, tuple[str, str]] = {
    "invalid_payload": (USER, "The job asked for something this worker does not allow; see the error."),
    "config_missing": (USER, "The job's config file is not in the shared directory; check config_path."),
    "image_unavailable": (USER, "The job's image could not be pulled and is not on the host; check its name and tag."),
    "start_failed": (INFRASTRUCTURE, "The host could not start the job; resubmit it, or ask the operator."),
    "nonzero_exit": (USER, "The job exited with an error; its log says why."),
    "killed_by_signal": (USER, "The job was killed by a signal; its log may say why."),
    "oom_killed": (USER, "The job ran out of memory; ask for more or use less."),
    "timeout": (USER, "The job ran longer than its time limit and was stopped."),
    "log_unwritable": (INFRASTRUCTURE, "The job's log on the shared directory could not be written; ask the operator."),
    "docker_unavailable": (INFRASTRUCTURE, "Docker was not reachable on the host; resubmit the job."),
    "lost_container": (INFRASTRUCTURE, "The job's container disappeared while it ran; resubmit the job."),
    "worker_shutdown": (WORKER, "The worker shut down before the job started; resubmit it."),
    "artifact_sync_failed": (INFRASTRUCTURE, "The job's results could not be copied back from the cluster."),
    "lost_job": (INFRASTRUCTURE, "The cluster no longer knows the job and it left no exit record."),
    "node_fail": (INFRASTRUCTURE, "The cluster node running the job failed; resubmit it."),
    "preempted": (INFRASTRUCTURE, "The cluster preempted the job; resubmit it."),
    "boot_fail": (INFRASTRUCTURE, "The cluster node could not boot for the job; resubmit it."),
    "canceled_externally": (INFRASTRUCTURE, "The batch job was canceled outside the worker."),
}


def failure(
    update: StatusUpdate, code: str, category: str | None = None, hint: str | None = None, **details: Any
) -> StatusUpdate:
    """`update` with the error code, its category and hint (the executor's own, else this list's), and details."""
    known_category, known_hint = ERRORS.get(code, (INFRASTRUCTURE, "See the error."))
    category, hint = category or known_category, hint or known_hint
    merged = {**update.details, **{key: value for key, value in details.items() if value is not None}}
    return dataclasses.replace(update, error_code=code, error_category=category, error_hint=hint, details=merged)


def exit_code_error(code: int, oom_killed: bool = False) -> str | None:
    """The error code of a job that ended by itself with `code` (None: it succeeded)."""
    if oom_killed:
        return "oom_killed"
    if code == 0:
        return None
    return "killed_by_signal" if code > 128 else "nonzero_exit"
