"""Prometheus metrics of the worker (official client library, default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_STARTED = Counter("opeva_worker_jobs_started", "Jobs whose container was started or re-adopted.")
JOBS_ENDED = Counter("opeva_worker_jobs_ended", "Jobs that ended, by reported status.", ["status"])
JOB_DURATION = Histogram(
    "opeva_worker_job_duration_seconds",
    "Wall time of a job from container start to its end.",
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400),
)
LOG_BYTES = Counter("opeva_worker_log_bytes_written", "Bytes appended to job log files.")
BACKEND_ERRORS = Counter("opeva_worker_backend_errors", "Failed backend calls, by endpoint.", ["endpoint"])
LAST_HEARTBEAT = Gauge("opeva_worker_last_heartbeat_timestamp_seconds", "Unix time of the last acknowledged heartbeat.")
OUTBOX_DEPTH = Gauge("opeva_worker_outbox_depth", "Status updates recorded but not yet acknowledged by the backend.")
DOCKER_UP = Gauge("opeva_worker_docker_up", "1 when the Docker engine answered the last check.")
SHARE_HEALTHY = Gauge("opeva_worker_share_healthy", "1 when the shared directory passed the last check.")
ACTIVE_JOBS = Gauge("opeva_worker_active_jobs", "Jobs this worker supervises now (one per busy slot).")
SLOTS = Gauge("opeva_worker_slots", "Jobs this worker may supervise at once (WORKER_MAX_ACTIVE_JOBS).")
THREAD_FAILURES = Counter(
    "opeva_worker_thread_failures", "Unexpected errors caught in a background thread, which then went on.", ["thread"]
)
