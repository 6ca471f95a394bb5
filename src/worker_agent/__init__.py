"""job-worker-agent: runs OPEVA simulation jobs in Docker and reports them to the backend."""

__version__ = "0.1.0"
