"""Every default of the worker, in one place, each with what it means."""

# Backend base URL.
SERVER = "http://localhost:8000"
# Local path of the mounted shared (NFS) directory; it is mounted at /data in job containers.
SHARED_DIR = "/opt/opeva_shared_data"
# Where the shared directory appears inside a job container.
CONTAINER_DATA_DIR = "/data"
# Seconds between next-job polls while idle.
POLL_INTERVAL_SECONDS = 5.0
# Seconds between heartbeats (the backend marks a host offline after ~60 s of silence).
HEARTBEAT_INTERVAL_SECONDS = 30.0
# Seconds between GET /status reads while a job runs (how fast a stop request is seen).
STATUS_POLL_INTERVAL_SECONDS = 10.0
# Seconds between `running` refreshes (the backend fails a job not refreshed for ~300 s).
RUNNING_REFRESH_INTERVAL_SECONDS = 60.0
# Seconds between SIGTERM and SIGKILL when a job container is stopped.
STOP_GRACE_PERIOD_SECONDS = 30.0
# What runs the jobs: docker or slurm.
EXECUTOR = "docker"
# Jobs one worker runs at once (slots); the seed's "one job per agent" is 1.
MAX_ACTIVE_JOBS = 1
# Job image when the backend names none (older backends never do).
WORKER_IMAGE = "calof/opeva_simulator:latest"
# When to pull a job image: auto (:latest or no tag -> always, pinned -> if-not-present), if-not-present,
# always or never.
IMAGE_PULL_POLICY = "auto"
# Durable state (status outbox, active job record); a volume in container deployments.
STATE_DIR = "/var/lib/job-worker-agent"
# Python logging level of the worker's own log.
LOG_LEVEL = "INFO"
# Timeout of one HTTP call to the backend; a hung backend never hangs the worker.
HTTP_TIMEOUT_SECONDS = 10.0
# Largest backend answer the worker reads; anything bigger is an error, not a memory spike.
MAX_RESPONSE_BYTES = 1024 * 1024
# Backoff after a failed backend or Docker call: first delay and cap, in seconds.
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
# How often the log pump records how far it got, so a restarted worker resumes there.
LOG_CHECKPOINT_SECONDS = 1.0
# Cap of one job log file; past it one marker line is written and further output dropped.
MAX_LOG_BYTES = 1024**3
# Docker's own copy of a job's output (its `local` log, what a restarted worker catches up from) is bounded to this
# many times MAX_LOG_BYTES, rotated over this many files: room for the framing Docker stores with each line.
DOCKER_LOG_MAX_FACTOR = 2
DOCKER_LOG_FILES = 4
# Port of the worker's /metrics, /healthz and /readyz; 0 turns the endpoint off.
METRICS_PORT = 9464
# File the backend writes at the share's root; SHARED_DIR_CHECK=marker looks for it.
SHARE_MARKER = ".opeva-share"
