"""SlurmExecutor reaching the test cluster over SSH (the loopback sshd of scripts/sshd_loopback.sh), as a worker
away from the cluster's login node does."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from slurm_support import COPY_JOB, copy_share, job_spec, read_all, ssh_env, wait_code

from worker_agent.executors.base import ExecutorError, ExecutorUnavailable
from worker_agent.executors.slurm import SlurmExecutor

pytestmark = [pytest.mark.slurm, pytest.mark.docker, pytest.mark.usefixtures("busybox_image")]

MakeExecutor = Callable[..., SlurmExecutor]


def _masters(sockets: Path) -> list[str]:
    """ssh processes serving as a connection master for a socket in `sockets` (OpenSSH titles them '[mux]')."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if "[mux]" in line and str(sockets) in line]


def test_a_job_over_ssh(make_executor: MakeExecutor, sshd: dict[str, str], tmp_path: Path) -> None:
    executor = make_executor(**ssh_env(sshd))
    assert executor.ping().startswith("slurm")
    script = 'echo "out $SECRET"; echo err >&2; exit 2'
    job = executor.start(job_spec("over-ssh", script, {"SECRET": "it's $1"}), lambda line: None)
    streams = read_all(executor, job)
    assert streams[1] == b"out it's $1\n"
    assert streams[2].endswith(b"err\n")
    assert executor.exit_code(job) == 2
    assert read_all(executor, job, from_start=True, follow=False) == streams
    # The run directory was written over SSH: check its modes here, where it also is.
    run_dir = tmp_path / "runs" / "jobs" / "over-ssh"
    assert (run_dir / "job.env").stat().st_mode & 0o777 == 0o600
    assert (run_dir / "job.sbatch").stat().st_mode & 0o777 == 0o700
    executor.remove(job)
    assert not run_dir.exists()


def test_stop_over_ssh_and_one_connection_for_all_commands(make_executor: MakeExecutor, sshd: dict[str, str]) -> None:
    executor = make_executor(**ssh_env(sshd, SLURM_CONTAINER_RUNTIME="none"))
    script = 'trap "echo got TERM; exit 0" TERM; echo started; while true; do sleep 1; done'
    job = executor.start(job_spec("ssh-stop", script), lambda line: None)
    frames = executor.output(job, from_start=False)
    assert next(data for stream, data in frames if stream == 1) == b"started\n"
    sockets = Path("/tmp") / f"opeva-ssh-{os.getuid()}"  # the state dir is too long a path for a socket
    masters = _masters(sockets)
    assert len(masters) == 1, masters
    executor.stop(job, grace_seconds=20)
    assert b"".join(data for stream, data in frames if stream == 1) == b"got TERM\n"
    assert executor.exit_code(job) == 0
    # Dozens of commands later (squeue, scontrol, reads, scancel), still the same single master.
    assert _masters(sockets) == masters
    executor.close()
    assert _masters(sockets) == []


def test_default_run_dir_is_in_the_cluster_users_home(make_executor: MakeExecutor, sshd: dict[str, str]) -> None:
    env = ssh_env(sshd, SLURM_CONTAINER_RUNTIME="none")
    del env["SLURM_SSH_USER"]  # ssh's default user, root here
    executor = make_executor(**env, SLURM_RUN_DIR="")
    root = Path.home() / ".opeva-slurm"
    existed = root.exists()
    job = executor.start(job_spec("in-home", "echo home"), lambda line: None)
    run_dir = root / "jobs" / "in-home"
    try:
        assert wait_code(executor, job) == 0
        assert (run_dir / "stdout.log").read_bytes() == b"home\n"
    finally:
        executor.remove(job)
        assert not run_dir.exists()
        if not existed:
            shutil.rmtree(root)


def test_unreachable_login_node_is_an_outage(make_executor: MakeExecutor, sshd: dict[str, str]) -> None:
    executor = make_executor(**ssh_env(sshd, SLURM_SSH_PORT="1", SLURM_COMMAND_TIMEOUT="10"))
    with pytest.raises(ExecutorUnavailable) as caught:
        executor.ping()
    assert not isinstance(caught.value, ExecutorError)
    assert "ssh to 127.0.0.1 failed" in str(caught.value)


def test_unknown_host_key_is_refused(make_executor: MakeExecutor, sshd: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    executor = make_executor(**ssh_env(sshd, SLURM_SSH_KNOWN_HOSTS=str(empty)))
    with pytest.raises(ExecutorUnavailable, match="Host key verification failed"):
        executor.ping()


def test_copy_staging_over_ssh(make_executor: MakeExecutor, sshd: dict[str, str], tmp_path: Path) -> None:
    share, cluster = copy_share(tmp_path), tmp_path / "cluster"
    executor = make_executor(**ssh_env(sshd, SLURM_STAGING="copy", SLURM_SHARED_DIR=str(cluster)))
    job = executor.start(job_spec("copied", COPY_JOB, share=share, args=["/data/configs/sim.yaml"]), lambda line: None)
    assert not (cluster / "jobs/copied/logs").exists()
    assert read_all(executor, job)[1] == b"steps: 3\ninput\n"
    assert executor.exit_code(job) == 0
    assert (share / "jobs/copied/results/r.txt").read_text() == "result\n"
