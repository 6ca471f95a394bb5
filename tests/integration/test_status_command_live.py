"""`job-worker-agent status` against a real worker process running a real `sleep` job in dockerd, then against
what that worker leaves in its state dir once it is stopped (the job stays running, to be re-adopted)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import BUSYBOX_IMAGE, Devserver, WorkerProcess, free_port, sh, wait_for

pytestmark = pytest.mark.docker
Make = Callable[..., WorkerProcess]


def status(worker: WorkerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as a person on the host runs it: same environment (settings) as the worker."""
    return subprocess.run(
        [sys.executable, "-m", "worker_agent", "status", *args],
        env=worker.env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns) for path in root.rglob("*")}


def test_status_of_a_running_job_then_of_the_state_dir_once_the_worker_is_stopped(
    devserver: Devserver, make_worker: Make
) -> None:
    port = free_port()
    worker = make_worker({"METRICS_PORT": str(port)}).start()
    job_id = devserver.submit(image=BUSYBOX_IMAGE, command=sh("echo started; sleep 120"))
    devserver.wait_status(job_id, {"running"})
    log_file = devserver.log_file(job_id)
    wait_for(lambda: b"started" in log_file.read_bytes(), 20, "the job's first line in its log")

    # Ready once the backend acknowledged a heartbeat (every 2 s here) and the outbox has delivered `running`.
    up = wait_for(
        lambda: (done := status(worker)).returncode == 0 and "none pending" in done.stdout and done, 30, "ready"
    )
    lines = up.stdout.splitlines()
    assert (
        lines[0] == f"worker {worker.worker_id} (state {worker.state_dir}, metrics :{port}): ready, 1 of 1 slot(s) busy"
    )
    row = next(line for line in lines if line.startswith(job_id)).split()
    assert row[-3:-1] == ["none", "pending"] and row[-1] != "-"  # the container's name
    assert lines[-2] == "outbox: 0 pending"
    assert lines[-1].startswith("health: docker ok, share ok, heartbeat ")

    report = json.loads(status(worker, "--json").stdout)
    [job] = report["jobs"]
    assert (job["job_id"], job["recorded"], job["log_bytes_from"]) == (job_id, True, "share")
    assert job["log_bytes"] == log_file.stat().st_size
    assert report["worker"]["ready"] is True and report["health"]["active_jobs"] == 1

    worker.signal(signal.SIGTERM)  # the job is left running, its record kept for the next start to re-adopt
    assert worker.wait(10) == 0
    before = snapshot(worker.state_dir)

    down = status(worker)

    assert down.returncode == 1, down.stdout + down.stderr
    lines = down.stdout.splitlines()
    assert f"not answering - metrics endpoint 127.0.0.1:{port} unreachable" in lines[0]
    assert any(line.startswith(job_id) for line in lines), down.stdout
    assert lines[-1] == "health: unknown (the worker is not answering)"
    assert snapshot(worker.state_dir) == before  # read-only
    assert devserver.status(job_id) == "running"
