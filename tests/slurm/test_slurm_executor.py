"""SlurmExecutor against the live test cluster, with Slurm's commands run on this host (no SSH)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import wait_for
from slurm_support import COPY_JOB, WORKER, copy_share, job_spec, job_state, read_all, run, wait_code, wait_state

from worker_agent.domain import JobHandle
from worker_agent.executors import slurm_commands
from worker_agent.executors.base import ExecutorError, JobLost
from worker_agent.executors.slurm import SlurmExecutor

pytestmark = [pytest.mark.slurm, pytest.mark.docker, pytest.mark.usefixtures("busybox_image")]

MakeExecutor = Callable[..., SlurmExecutor]

PRINTS = (
    'for i in $(seq 1 200); do echo "line $i of stdout"; echo "line $i of stderr" >&2; done; '
    'printf "no newline at the end"; echo "$GREETING" >&2'
)


def test_a_job_finishes_and_output_gives_every_byte(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor()
    job = executor.start(job_spec("prints", PRINTS, {"GREETING": "hello 'quoted' $x"}), progress=lambda line: None)
    assert (job.job_id, job.name, job.ref.isdigit()) == ("prints", "opeva-prints", True)

    live = read_all(executor, job)
    expected_out = "".join(f"line {i} of stdout\n" for i in range(1, 201)) + "no newline at the end"
    expected_err = "".join(f"line {i} of stderr\n" for i in range(1, 201)) + "hello 'quoted' $x\n"
    assert live[1].decode() == expected_out
    assert live[2].decode().endswith(expected_err)  # after the batch script's own "opeva: job ..." line
    assert executor.exit_code(job) == 0
    verdict = executor.outcome(job)
    assert verdict is not None and (verdict.status, verdict.exit_code) == ("finished", 0)
    # A replay from the start gives the same bytes, and a live read resumed later nothing more.
    assert read_all(executor, job, from_start=True, follow=False) == live
    assert read_all(executor, job, from_start=False, follow=False) == {1: b"", 2: b""}
    # The environment, secrets included, is in the owner-only env file, not in the batch script.
    run_dir = tmp_path / "runs" / "jobs" / "prints"
    assert (run_dir / "job.env").stat().st_mode & 0o777 == 0o600
    assert (run_dir / "job.sbatch").stat().st_mode & 0o777 == 0o700
    assert "hello" not in (run_dir / "job.sbatch").read_text()

    executor.remove(job)
    assert not run_dir.exists()
    assert job.ref not in [found.ref for found in executor.find_owned(WORKER)]


def test_a_failing_job_gives_its_exit_code(make_executor: MakeExecutor) -> None:
    executor = make_executor()
    job = executor.start(job_spec("fails", "echo failing >&2; exit 3"), progress=lambda line: None)
    streams = read_all(executor, job)
    assert streams[2].endswith(b"failing\n")
    assert executor.exit_code(job) == 3
    verdict = executor.outcome(job)
    assert verdict is not None and (verdict.error_code, verdict.error_category) == ("nonzero_exit", "user")


def test_stop_a_pending_job(make_executor: MakeExecutor) -> None:
    executor = make_executor(SLURM_EXTRA_ARGS="--hold")
    job = executor.start(job_spec("held", "echo never"), progress=lambda line: None)
    assert executor.exit_code(job) is None
    pending = executor.outcome(job)
    assert pending is not None and pending.status == "setup"
    assert "held" in pending.details["pending_reason"]

    started = time.monotonic()
    executor.stop(job, grace_seconds=30)
    assert time.monotonic() - started < 10  # a pending job is cancelled at once, without the grace
    assert wait_code(executor, job) != 0
    stopped = executor.outcome(job)
    assert stopped is not None and stopped.error_code == "stopped_by_worker"
    assert read_all(executor, job, from_start=True) == {1: b"", 2: b""}


def test_stop_a_running_job(make_executor: MakeExecutor) -> None:
    executor = make_executor()
    script = 'trap "echo got TERM; exit 0" TERM; echo started; while true; do sleep 1; done'
    job = executor.start(job_spec("stoppable", script), progress=lambda line: None)
    frames = executor.output(job, from_start=False)
    seen = b""
    for stream, data in frames:
        seen += data if stream == 1 else b""
        if b"started" in seen:
            break
    executor.stop(job, grace_seconds=20)
    # The same live read goes on to the job's end.
    seen += b"".join(data for stream, data in frames if stream == 1)
    assert seen == b"started\ngot TERM\n"
    assert executor.exit_code(job) == 0  # the job caught SIGTERM and exited 0


def test_stop_escalates_when_the_job_ignores_sigterm(make_executor: MakeExecutor) -> None:
    """Without a container (SIGTERM reaches the command itself), a job ignoring it is killed after the grace."""
    executor = make_executor(SLURM_CONTAINER_RUNTIME="none")
    job = executor.start(job_spec("stubborn", 'trap "" TERM; echo started; sleep 300'), progress=lambda line: None)
    # Slurm says RUNNING before the shell reaches its trap: wait for the job's own word that it ignores SIGTERM.
    wait_started(executor, job)
    started = time.monotonic()
    executor.stop(job, grace_seconds=2)
    code = wait_code(executor, job, timeout=30)
    assert time.monotonic() - started < 20
    assert code != 0
    verdict = executor.outcome(job)
    assert verdict is not None and verdict.error_code == "stopped_by_worker"


def test_a_job_that_dies_of_the_stops_sigterm_was_stopped_by_the_worker(make_executor: MakeExecutor) -> None:
    """Slurm says FAILED with signal 15, not CANCELLED: still the worker's stop, not the user's fault."""
    executor = make_executor(SLURM_CONTAINER_RUNTIME="none")
    job = executor.start(job_spec("obeys", "echo started; sleep 300"), progress=lambda line: None)
    wait_started(executor, job)
    executor.stop(job, grace_seconds=20)
    assert wait_code(executor, job, timeout=30) == 128 + 15
    verdict = executor.outcome(job)
    assert verdict is not None
    assert (verdict.error_code, verdict.error_category) == ("stopped_by_worker", "worker")


def wait_started(executor: SlurmExecutor, job: JobHandle) -> None:
    """Until the job has printed "started" (its traps are set by then)."""
    seen = b""
    for stream, data in executor.output(job, from_start=True):
        seen += data if stream == 1 else b""
        if b"started" in seen:
            return


def test_a_job_cancelled_behind_the_workers_back(make_executor: MakeExecutor) -> None:
    executor = make_executor(SLURM_CONTAINER_RUNTIME="none")
    job = executor.start(job_spec("cancelled", "sleep 300"), progress=lambda line: None)
    wait_state(job.ref, ["RUNNING"])
    assert executor.exit_code(job) is None
    run("scancel", job.ref)
    assert wait_code(executor, job, timeout=30) != 0
    verdict = executor.outcome(job)
    assert verdict is not None
    assert (verdict.error_code, verdict.error_category) == ("canceled_externally", "infrastructure")


def test_a_restarted_worker_finds_its_running_and_ended_jobs(make_executor: MakeExecutor) -> None:
    worker = f"{WORKER}-restarted"  # only this test's jobs, whatever other tests leave behind
    first = make_executor(SLURM_CONTAINER_RUNTIME="none")
    long_spec = job_spec("long", "echo begun; sleep 300", {"API_TOKEN": "s3cret"}, worker_id=worker)
    running = first.start(long_spec, lambda line: None)
    ended = first.start(job_spec("short", "echo done; exit 4", worker_id=worker), lambda line: None)
    removed = first.start(job_spec("removed", "true", worker_id=worker), lambda line: None)
    assert wait_code(first, removed) == 0
    first.remove(removed)
    wait_state(ended.ref, ["FAILED"])
    wait_state(running.ref, ["RUNNING"])

    # A new instance, as after a worker restart: only the state dir and Slurm know the jobs.
    second = make_executor(SLURM_CONTAINER_RUNTIME="none")
    found = {job.job_id: job for job in second.find_owned(worker)}
    assert sorted(found) == ["long", "short"]
    assert found["long"].ref == running.ref and found["long"].started
    assert found["long"].env == {"API_TOKEN": "s3cret"}  # so that the worker masks it in the re-adopted log
    assert second.exit_code(found["long"]) is None
    assert second.exit_code(found["short"]) == 4
    assert read_all(second, found["short"], from_start=True, follow=False)[1] == b"done\n"
    assert second.find_owned("another-worker") == []


def test_a_job_slurm_forgot_is_lost_after_the_grace(make_executor: MakeExecutor) -> None:
    executor = make_executor(SLURM_LOST_GRACE="1")
    job = executor.start(job_spec("forgotten", "true"), lambda line: None)
    ghost = type(job)(job.job_id, "999999", job.name)
    assert executor.exit_code(ghost) is None  # within the grace
    time.sleep(1.2)
    with pytest.raises(JobLost):
        executor.exit_code(ghost)
    verdict = executor.outcome(ghost)
    assert verdict is not None and verdict.error_code == "lost_job"


def test_deucalion_options(make_executor: MakeExecutor) -> None:
    executor = make_executor(SLURM_EXTRA_ARGS="--hold", SLURM_ALLOWED_PARTITIONS="long", SLURM_MAX_TIME="2:00:00")
    with pytest.raises(ExecutorError, match=r"deucalion_options\.time"):
        executor.set_job_options("options", {"time": "3:00:00"})
    with pytest.raises(ExecutorError, match=r"deucalion_options\.account"):
        executor.set_job_options("options", {"account": "someone-elses"})
    executor.set_job_options("options", {"partition": "long", "time": "90", "cpus": 2, "mem": "1G"})
    notes: list[str] = []
    job = executor.start(job_spec("options", "true"), notes.append)
    assert any("partition long" in note for note in notes)
    state = job_state(job.ref)
    assert (state.partition, state.time_limit) == ("long", "01:30:00")
    assert "NumCPUs=2" in run("scontrol", "show", "job", job.ref)
    executor.stop(job, 5)


def test_ping(make_executor: MakeExecutor) -> None:
    assert make_executor().ping().startswith("slurm")


def test_a_volume_outside_the_share_is_refused(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor()
    spec = job_spec("volume", "true", share=tmp_path / "share")
    spec.mounts.append(type(spec.mounts[0])("/etc", "/etc-of-host"))
    with pytest.raises(ExecutorError, match="outside the shared directory"):
        executor.start(spec, lambda line: None)


# ---------------------------------------------------------------------------------------------------------------------
# SLURM_STAGING=copy: tmp_path/cluster plays the cluster's own file system


def test_copy_staging(make_executor: MakeExecutor, tmp_path: Path) -> None:
    share, cluster = copy_share(tmp_path), tmp_path / "cluster"
    executor = make_executor(SLURM_STAGING="copy", SLURM_SHARED_DIR=str(cluster), SLURM_COPY_INTERVAL="0.5")
    # The config is copied because the command names it (as the worker's default command does: --config PATH).
    spec = job_spec("copied", COPY_JOB, share=share, args=["/data/configs/sim.yaml"])
    job = executor.start(spec, lambda line: None)
    assert (cluster / "configs" / "sim.yaml").read_text() == "steps: 3\n"
    assert not (cluster / "jobs" / "copied" / "logs").exists()

    streams: dict[int, bytes] = {}
    reader = threading.Thread(target=lambda: streams.update(read_all(executor, job)))
    reader.start()
    # Progress comes back while the job still runs.
    wait_for(lambda: (share / "jobs/copied/progress/p.txt").is_file(), 20, "progress copied back", interval=0.2)
    assert job_state(job.ref).state == "RUNNING"
    reader.join(30)
    assert streams[1] == b"steps: 3\ninput\n"
    assert executor.exit_code(job) == 0
    assert (share / "jobs/copied/results/r.txt").read_text() == "result\n"
    assert (share / "jobs/copied/progress/p.txt").read_text() == "100\n"
    assert (share / "jobs/copied/logs/copied.log").read_text() == "the worker's own log\n"


def test_a_failed_copy_back_fails_the_job(
    make_executor: MakeExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slurm_commands, "COPY_RETRY_DELAY", 0.1)
    share, cluster = copy_share(tmp_path), tmp_path / "cluster"
    executor = make_executor(SLURM_STAGING="copy", SLURM_SHARED_DIR=str(cluster), SLURM_COPY_INTERVAL="600")
    script = "mkdir -p /data/jobs/copied/results && echo r > /data/jobs/copied/results/r.txt"
    job = executor.start(job_spec("copied", script, share=share), lambda line: None)
    # A file where the results directory should be: the copy back cannot write there.
    (share / "jobs" / "copied" / "results").write_text("in the way")
    assert wait_code(executor, job) != 0
    verdict = executor.outcome(job)
    assert verdict is not None
    assert (verdict.error_code, verdict.error_category) == ("artifact_sync_failed", "infrastructure")
    assert verdict.details["job_exit_code"] == 0


@pytest.mark.slow
def test_a_job_over_its_time_limit(make_executor: MakeExecutor) -> None:
    """SLURM_TIME=1: Slurm ends the job between 60 and ~90 s after it started."""
    executor = make_executor(SLURM_CONTAINER_RUNTIME="none", SLURM_TIME="1")
    job = executor.start(job_spec("too-long", "echo begun; sleep 300"), lambda line: None)
    assert wait_code(executor, job, timeout=180) != 0
    verdict = executor.outcome(job)
    assert verdict is not None and (verdict.error_code, verdict.error_category) == ("timeout", "user")
    assert read_all(executor, job, from_start=True, follow=False)[1] == b"begun\n"


def test_a_job_waiting_for_resources_has_a_queue_position(make_executor: MakeExecutor, tmp_path: Path) -> None:
    memory = run("sinfo", "-h", "-N", "-o", "%m").split()[0]
    comment = f"--comment=opeva:{WORKER}:blocker"
    blocker = run("sbatch", "--parsable", f"--mem={memory}", comment, "--output=/dev/null", "--wrap=sleep 60").strip()
    try:
        wait_state(blocker, ["RUNNING"])
        executor = make_executor(SLURM_CONTAINER_RUNTIME="none", SLURM_MEM="100M")
        job = executor.start(job_spec("queued", "echo ran"), lambda line: None)
        wait_for(lambda: job_state(job.ref).reason == "Resources", 30, "the job to wait for resources")
        assert executor.exit_code(job) is None
        waiting = executor.outcome(job)
        assert waiting is not None and waiting.status == "setup"
        assert waiting.details["queue_position"] == 1
        assert waiting.details["pending_reason"] == "waiting for free CPUs, memory or GPUs"
    finally:
        run("scancel", blocker)
    assert read_all(executor, job)[1] == b"ran\n"
    assert executor.exit_code(job) == 0
