"""The two protocols the dev server speaks, and the small pure rules of the orchestrator 1.0 one.

``1.0`` (the default) is what OPEVA's job_orchestrator_agent speaks: the ``setup`` state, attempt fencing,
heartbeat keep-alive, GPU routing, operator requeue. ``2026-04`` is the older contract of docs/contract.md, kept
unchanged so that compatibility tests can run a worker against it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

ProtocolVersion = Literal["1.0", "2026-04"]
CURRENT: Final = "1.0"
LEGACY: Final = "2026-04"

# The capability a worker sends in next-job to get fenced attempts, and the name echoed in the payload.
ATTEMPT_FENCING: Final = "attempt_fencing_v1"
STALE_ATTEMPT_CODE: Final = "stale_job_attempt"
STALE_ATTEMPT_MESSAGE: Final = "this status update does not come from the job's current attempt"

# Statuses in which a job holds a worker: the staleness sweep watches these.
ACTIVE: Final = frozenset({"dispatched", "setup", "running", "stop_requested"})
# Active statuses in which the job has not started yet: on trouble it goes back to the queue instead of failing.
NOT_STARTED: Final = frozenset({"dispatched", "setup"})

# Transitions a worker may report through job-status. Same-status updates are always accepted.
_TRANSITIONS_2026_04: Final[dict[str, frozenset[str]]] = {
    "launching": frozenset(),
    "queued": frozenset(),
    "dispatched": frozenset({"running", "failed", "canceled", "stop_requested", "queued"}),
    "running": frozenset({"finished", "failed", "stop_requested", "stopped", "canceled"}),
    "stop_requested": frozenset({"stopped", "failed", "canceled"}),
    "finished": frozenset(),
    "failed": frozenset(),
    "stopped": frozenset(),
    "canceled": frozenset(),
}
_TRANSITIONS_1_0: Final[dict[str, frozenset[str]]] = {
    **_TRANSITIONS_2026_04,
    "dispatched": _TRANSITIONS_2026_04["dispatched"] | {"setup"},
    "setup": frozenset({"running", "failed", "canceled", "stop_requested", "queued"}),
}

# Heartbeat info keys through which a worker says it can run GPU jobs (any truthy value counts).
_GPU_KEYS: Final = ("gpu_enabled", "gpu_required", "has_gpu", "gpu", "cuda_available")
_TRUE_WORDS: Final = frozenset({"1", "true", "yes", "y", "on"})


def worker_transitions(protocol: ProtocolVersion) -> Mapping[str, frozenset[str]]:
    return _TRANSITIONS_1_0 if protocol == CURRENT else _TRANSITIONS_2026_04


# -- attempt fencing ------------------------------------------------------------------------------------------


def new_attempt_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the store keeps instead of the token: a leaked database must not let anyone speak for a worker."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(expected_digest: str | None, token: str | None) -> bool:
    if not expected_digest or not token:
        return False
    return hmac.compare_digest(expected_digest, token_digest(token))


# -- heartbeat info -------------------------------------------------------------------------------------------


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value > 0
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_WORDS
    return False


def advertises_gpu(info: Mapping[str, Any]) -> bool:
    return any(_truthy(info.get(key)) for key in _GPU_KEYS)


def lists_job(info: Mapping[str, Any], job_id: str) -> bool:
    """Whether a heartbeat says the worker is still busy with ``job_id``.

    Three shapes exist in the wild, newest first: ``active_jobs`` (rows with a ``job_id``), ``active_job_ids``
    (a list) and ``active_job_id``. A worker that sends the list is believed over the single-id field.
    """
    rows = info.get("active_jobs")
    if isinstance(rows, list) and any(isinstance(row, dict) and row.get("job_id") == job_id for row in rows):
        return True
    ids = info.get("active_job_ids")
    if isinstance(ids, list):
        return job_id in {str(item) for item in ids if item is not None}
    return info.get("active_job_id") == job_id


# -- hosts ----------------------------------------------------------------------------------------------------


def unknown_host_detail(field: str, name: str, hosts: Iterable[str]) -> str:
    return f"unknown {field} {name!r}: the configured hosts are {sorted(hosts)}"
