"""Helpers of the Slurm tests: the captured fixtures, and submitting to / waiting on the live test cluster."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from worker_agent.domain import JobHandle, JobSpec, Mount
from worker_agent.executors.slurm import SlurmExecutor
from worker_agent.executors.slurm_script import parse_job_comment
from worker_agent.executors.slurm_settings import load
from worker_agent.executors.slurm_status import (
    SlurmJobState,
    is_terminal,
    parse_scontrol_job,
    parse_squeue,
    scontrol_args,
    squeue_args,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The worker id of this test run's jobs: jobs left by another run never show in its find_owned.
WORKER = f"slurm-test-{os.getpid()}"
IMAGE = "opeva-test-busybox:latest"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def fixture_jobs() -> dict[str, str]:
    """Scenario name -> the Slurm job id it had when the fixtures were captured."""
    jobs: dict[str, str] = json.loads(fixture("jobs.json"))
    return jobs


def run(*args: str, timeout: float = 60) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
    return proc.stdout


def job_state(job_id: str) -> SlurmJobState:
    state = parse_scontrol_job(run(*scontrol_args(job_id)))
    assert state is not None, f"slurmctld does not know job {job_id}"
    return state


def wait_job(job_id: str, done: bool = True, timeout: float = 90) -> SlurmJobState:
    """Poll scontrol until the job has ended (done) or runs (not done)."""
    deadline = time.monotonic() + timeout
    while True:
        state = job_state(job_id)
        if is_terminal(state.state) if done else state.state == "RUNNING":
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is still {state.state} ({state.reason}) after {timeout}s")
        time.sleep(0.3)


# ---------------------------------------------------------------------------------------------------------------------
# SlurmExecutor


def new_executor(tmp_path: Path, **env: str) -> SlurmExecutor:
    """An executor on the test cluster: Docker jobs in partition debug, fast polls, the share in tmp_path/share,
    run directories in tmp_path/runs; `env` overrides or adds SLURM_* settings."""
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    defaults = {
        "SLURM_CONTAINER_RUNTIME": "docker",
        "SLURM_PARTITION": "debug",
        "SLURM_TIME": "5",
        "SLURM_RUN_DIR": str(tmp_path / "runs"),
        "SLURM_POLL_INTERVAL": "0.1",
        "SLURM_STATE_INTERVAL": "0.3",
        "SLURM_COMMAND_TIMEOUT": "30",
    }
    settings = load(defaults | env, share)
    return SlurmExecutor(settings, share, tmp_path / "state")


def ssh_env(sshd: dict[str, str], **env: str) -> dict[str, str]:
    return {
        "SLURM_SSH_HOST": "127.0.0.1",
        "SLURM_SSH_USER": "root",
        "SLURM_SSH_PORT": sshd["SSHD_PORT"],
        "SLURM_SSH_KEY": sshd["SSHD_KEY"],
        "SLURM_SSH_KNOWN_HOSTS": sshd["SSHD_KNOWN_HOSTS"],
        **env,
    }


def job_spec(
    job_id: str,
    script: str,
    env: dict[str, str] | None = None,
    share: Path | None = None,
    args: Sequence[str] = (),
    image: str = IMAGE,
    worker_id: str = WORKER,
) -> JobSpec:
    """A job running `sh -c script sh args...`, with the share at /data as the worker's policy mounts it."""
    mounts = [Mount(str(share), "/data")] if share else []
    command = ["sh", "-c", script, "sh", *args]
    return JobSpec(job_id, worker_id, image, command, f"opeva-{job_id}", env=env or {}, mounts=mounts)


def read_all(
    executor: SlurmExecutor, job: JobHandle, from_start: bool = False, follow: bool = True
) -> dict[int, bytes]:
    """Every byte of each stream that output() gives."""
    streams = {1: b"", 2: b""}
    for stream, data in executor.output(job, from_start, follow):
        streams[stream] += data
    return streams


def wait_code(executor: SlurmExecutor, job: JobHandle, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (code := executor.exit_code(job)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job.ref} still runs after {timeout}s: {executor.outcome(job)}")
        time.sleep(0.2)
    return code


def wait_state(job_id: str, states: Sequence[str], timeout: float = 60) -> SlurmJobState:
    deadline = time.monotonic() + timeout
    while (state := job_state(job_id)).state not in states:
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {state.state} ({state.reason}), not {states}, after {timeout}s")
        time.sleep(0.2)
    return state


def cancel_jobs_of(worker_id: str) -> None:
    """Cancel the jobs that may still run of `worker_id` and of every worker id `worker_id-...`."""
    mine = [
        state.job_id
        for state in parse_squeue(run(*squeue_args(), "--me"))
        if not is_terminal(state.state) and _of(worker_id, (parse_job_comment(state.comment) or ("",))[0])
    ]
    if mine:
        run("scancel", *mine)


def _of(worker_id: str, owner: str) -> bool:
    # Not a bare prefix: WORKER of the test process with pid 123 is a prefix of that of pid 1234 (pytest-xdist).
    return owner == worker_id or owner.startswith(f"{worker_id}-")


def copy_share(tmp_path: Path) -> Path:
    """A worker share for job "copied" (run with COPY_JOB): a config, an input file and the worker's own log."""
    share = tmp_path / "share"
    (share / "configs").mkdir(parents=True)
    (share / "configs" / "sim.yaml").write_text("steps: 3\n")
    (share / "jobs" / "copied" / "logs").mkdir(parents=True)
    (share / "jobs" / "copied" / "input.txt").write_text("input\n")
    (share / "jobs" / "copied" / "logs" / "copied.log").write_text("the worker's own log\n")
    return share


COPY_JOB = (
    'cat "$1" /data/jobs/copied/input.txt; '
    "test -e /data/jobs/copied/logs && echo logs were copied; "
    "mkdir -p /data/jobs/copied/progress /data/jobs/copied/results; "
    "echo 50 > /data/jobs/copied/progress/p.txt; sleep 4; "
    "echo 100 > /data/jobs/copied/progress/p.txt; echo result > /data/jobs/copied/results/r.txt"
)
