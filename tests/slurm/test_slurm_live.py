"""Against the live test cluster (bash scripts/slurm_cluster.sh): rendered batch scripts submitted with sbatch,
their state read back with the parsers, and stopping a Docker job with `scancel --signal=TERM --full`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import docker
import pytest
from harness import wait_for
from slurm_support import job_state, run, wait_job

from worker_agent.executors.slurm_script import (
    BatchJob,
    Resources,
    Runtime,
    default_template,
    parse_job_comment,
    parse_sbatch_output,
    render_batch_script,
    render_env_file,
    run_files,
    sbatch_command,
)
from worker_agent.executors.slurm_status import (
    outcome,
    parse_scontrol_job,
    parse_squeue,
    scontrol_args,
    squeue_args,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

WORKER = "live-worker"


def submit(
    tmp_path: Path, name: str, runtime: Runtime, command: tuple[str, ...], image: str = "", **extra: object
) -> str:
    """Render, write (script 0700, env file 0600) and sbatch one job; its Slurm job id."""
    run_dir = tmp_path / name
    share = tmp_path / "share"
    run_dir.mkdir()
    share.mkdir(exist_ok=True)
    (share / "input.txt").write_text("from the share\n")
    fields: dict[str, object] = {
        "job_id": name,
        "worker_id": WORKER,
        "image": image,
        "command": command,
        "env": {"GREETING": "hello 'quoted' $world"},
        "share_path": str(share),
        "run_dir": str(run_dir),
        "runtime": runtime,
        "resources": Resources(partition="debug", time_minutes=5, cpus=1, mem_mb=256),
        "stop_grace_seconds": 3,  # below the test cluster's KillWait of 5 s
    }
    job = BatchJob(**(fields | extra))  # type: ignore[arg-type]
    files = run_files(job.run_dir)
    Path(files.script).write_text(render_batch_script(job, default_template()))
    os.chmod(files.script, 0o700)
    descriptor = os.open(files.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as env_file:
        env_file.write(render_env_file(job.env))
    return parse_sbatch_output(run(*sbatch_command(files.script)))


def output(tmp_path: Path, name: str) -> tuple[str, str]:
    files = run_files(str(tmp_path / name))
    return Path(files.stdout).read_text(), Path(files.stderr).read_text()


def containers_of(client: docker.DockerClient, slurm_job_id: str, running: bool = False) -> list[str]:
    """The names of the Slurm job's containers, from the listing alone: `client.containers.list` inspects each
    one it lists, which fails when `docker run --rm` removes that container in between."""
    found = client.api.containers(all=not running, filters={"label": f"opeva.slurm_job_id={slurm_job_id}"})
    return [item["Names"][0].lstrip("/") for item in found]


def wait_container_running(client: docker.DockerClient, tmp_path: Path, name: str, slurm_job_id: str) -> None:
    try:
        wait_for(lambda: containers_of(client, slurm_job_id, running=True), 30, "the job's container to run")
    except AssertionError as exc:
        stdout, stderr = output(tmp_path, name)
        raise AssertionError(f"{exc}; Slurm: {job_state(slurm_job_id)}; stdout {stdout!r}; stderr {stderr!r}") from None


@pytest.mark.docker
def test_docker_and_none_jobs(tmp_path: Path, busybox_image: str) -> None:
    show = ("sh", "-c", 'echo "$GREETING"; cat /data/input.txt; echo to-stderr >&2')
    docker_job = submit(tmp_path, "in-docker", "docker", show, busybox_image)
    share = tmp_path / "share"
    plain = ("sh", "-c", f'echo "$GREETING"; cat {share}/input.txt; echo to-stderr >&2')
    none_job = submit(tmp_path, "plain", "none", plain)
    failing = submit(tmp_path, "failing", "docker", ("sh", "-c", "exit 3"), busybox_image)

    for job_id, name in ((docker_job, "in-docker"), (none_job, "plain")):
        result = outcome(wait_job(job_id))
        assert (result.status, result.exit_code) == ("finished", 0), output(tmp_path, name)
        stdout, stderr = output(tmp_path, name)
        assert stdout == "hello 'quoted' $world\nfrom the share\n"
        assert stderr.endswith("to-stderr\n")
        assert f"opeva: job {name}, Slurm job {job_id}" in stderr

    result = outcome(wait_job(failing))
    assert (result.status, result.exit_code, result.error_code) == ("failed", 3, "nonzero_exit")


def test_squeue_and_scontrol_parse_live_output(tmp_path: Path) -> None:
    job_id = submit(tmp_path, "listed", "none", ("sleep", "30"))
    try:
        running = wait_job(job_id, done=False)
        assert parse_job_comment(running.comment) == (WORKER, "listed")
        assert running.name == "opeva-listed" and running.partition == "debug"
        assert running.time_limit == "00:05:00"
        (listed,) = parse_squeue(run(*squeue_args([job_id])))
        assert (listed.job_id, listed.state, listed.comment) == (job_id, "RUNNING", running.comment)
        assert outcome(listed).status == "running"
    finally:
        run("scancel", job_id)
    cancelled = wait_job(job_id)
    assert (cancelled.state, cancelled.signal) == ("CANCELLED", 15)
    assert outcome(cancelled).error_code == "canceled_externally"


def test_unknown_job_id() -> None:
    proc = subprocess.run(scontrol_args("999999999"), capture_output=True, text=True)
    assert proc.returncode == 1
    assert parse_scontrol_job(proc.stdout + proc.stderr) is None


def test_three_jobs_run_at_once(tmp_path: Path) -> None:
    """The test cluster shares its cores between jobs: three 1-CPU jobs run together even on 2 CPUs."""
    job_ids = [submit(tmp_path, f"together-{i}", "none", ("sleep", "20")) for i in range(3)]
    try:
        wait_for(
            lambda: all(state.state == "RUNNING" for state in parse_squeue(run(*squeue_args(job_ids)))),
            30,
            "three jobs running at the same time",
            interval=0.3,
        )
    finally:
        run("scancel", *job_ids)


TRAPPING = ("sh", "-c", 'trap "echo got TERM; exit 0" TERM; echo started; while true; do sleep 1; done')


@pytest.mark.docker
def test_scancel_term_full_stops_docker_job(tmp_path: Path, busybox_image: str) -> None:
    client = docker.from_env()
    job_id = submit(tmp_path, "stoppable", "docker", TRAPPING, busybox_image)
    wait_job(job_id, done=False)
    wait_container_running(client, tmp_path, "stoppable", job_id)
    wait_for(lambda: "started" in output(tmp_path, "stoppable")[0], 30, "the job to print")

    run("scancel", "--signal=TERM", "--full", job_id)
    state = wait_job(job_id, timeout=30)
    stdout, stderr = output(tmp_path, "stoppable")
    assert "got TERM" in stdout, stderr
    # The container caught SIGTERM and exited 0: the script's exit code is the container's.
    assert (state.state, state.exit_code) == ("COMPLETED", 0)
    wait_for(lambda: not containers_of(client, job_id), 10, "the container to be removed")


@pytest.mark.docker
def test_scancel_stops_a_container_that_ignores_sigterm(tmp_path: Path, busybox_image: str) -> None:
    """`sleep` as PID 1 ignores SIGTERM: the trap's `docker stop` kills it after STOP_GRACE (3 s)."""
    client = docker.from_env()
    job_id = submit(tmp_path, "stubborn", "docker", ("sleep", "300"), busybox_image)
    wait_job(job_id, done=False)
    wait_container_running(client, tmp_path, "stubborn", job_id)
    run("scancel", job_id)
    state = wait_job(job_id, timeout=30)
    assert state.state == "CANCELLED"
    # Not a timing check (a loaded host stretches it): a `sleep 300` still there after 60 s was not stopped.
    wait_for(lambda: not containers_of(client, job_id), 60, "the container to be removed")
    assert "SIGTERM: stopping container" in output(tmp_path, "stubborn")[1]


def test_job_state_of_a_timed_out_job_is_not_waited_for_here(tmp_path: Path) -> None:
    """Time limits take at least a minute (whole minutes, checked every ~30 s): the TIMEOUT mapping is tested on
    captured output (fixtures/scontrol_timeout.txt); here only that --time lands in Slurm as rendered."""
    job_id = submit(tmp_path, "limited", "none", ("true",), resources=Resources(partition="long", time_minutes=90))
    state = job_state(job_id)
    assert (state.partition, state.time_limit) == ("long", "01:30:00")
    wait_job(job_id)
