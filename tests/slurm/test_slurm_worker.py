"""The whole worker with WORKER_EXECUTOR=slurm: real slurmctld/slurmd, real dockerd on the node, the reference
backend over loopback. The executor's own behaviour is tested in test_slurm_executor*.py."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import REPO, Devserver, WorkerProcess, sh, wait_for
from slurm_support import cancel_jobs_of, ssh_env

pytestmark = [pytest.mark.slurm, pytest.mark.docker]
Make = Callable[..., WorkerProcess]
IMAGE = "opeva-test-busybox:latest"


def numbered(count: int, pause: str = "0.1") -> list[str]:
    return sh(f"for i in $(seq 1 {count}); do echo line-$i; echo err-$i >&2; sleep {pause}; done")


def expected_lines(log: Path, count: int) -> None:
    text = log.read_text()
    assert [line for line in text.splitlines() if line.startswith("line-")] == [
        f"line-{i}" for i in range(1, count + 1)
    ]
    assert [line for line in text.splitlines() if line.startswith("err-")] == [f"err-{i}" for i in range(1, count + 1)]


@pytest.fixture
def slurm_worker(
    make_worker: Make, tmp_path: Path, slurm_cluster: None, busybox_image: str
) -> Iterator[Callable[..., WorkerProcess]]:
    made: list[WorkerProcess] = []

    def make(**env: str) -> WorkerProcess:
        worker = make_worker(
            {
                "WORKER_EXECUTOR": "slurm",
                "SLURM_CONTAINER_RUNTIME": "docker",
                "SLURM_PARTITION": "debug",
                "SLURM_TIME": "5",
                "SLURM_RUN_DIR": str(tmp_path / "runs"),
                "SLURM_POLL_INTERVAL": "0.2",
                "SLURM_STATE_INTERVAL": "0.5",
                "STOP_GRACE_PERIOD": "3",
                **env,
            }
        )
        made.append(worker)
        return worker

    yield make
    for worker in made:
        cancel_jobs_of(worker.worker_id)


def test_a_job_runs_on_the_cluster_to_finished_with_its_whole_log(
    devserver: Devserver, slurm_worker: Callable[..., WorkerProcess]
) -> None:
    job_id = devserver.submit(image=IMAGE, command=numbered(20))
    worker = slurm_worker().start("--exit-after-job")

    assert worker.wait(120) == 0, worker.text()
    assert [entry["status"] for entry in devserver.job(job_id)["history"]][-3:] == ["setup", "running", "finished"]
    expected_lines(devserver.log_file(job_id), 20)


def test_a_failing_job_is_failed_with_its_code(
    devserver: Devserver, slurm_worker: Callable[..., WorkerProcess]
) -> None:
    job_id = devserver.submit(image=IMAGE, command=sh("echo bad; exit 3"))
    worker = slurm_worker().start("--exit-after-job")

    assert worker.wait(120) == 0, worker.text()
    record = devserver.job(job_id)
    assert (record["status"], record["error_code"]) == ("failed", "nonzero_exit")


def test_a_stop_request_stops_the_batch_job(devserver: Devserver, slurm_worker: Callable[..., WorkerProcess]) -> None:
    job_id = devserver.submit(image=IMAGE, command=sh("echo started; sleep 300"))
    worker = slurm_worker().start()
    devserver.wait_status(job_id, {"running"}, timeout=60)

    devserver.stop_job(job_id)

    devserver.wait_status(job_id, {"stopped"}, timeout=60)
    assert "started" in devserver.log_file(job_id).read_text()
    worker.kill()


def test_kill_9_with_three_jobs_running_readopts_all_with_complete_logs(
    devserver: Devserver, slurm_worker: Callable[..., WorkerProcess]
) -> None:
    jobs = [devserver.submit(image=IMAGE, command=numbered(60)) for _ in range(3)]
    worker = slurm_worker(WORKER_MAX_ACTIVE_JOBS="3").start()
    for job_id in jobs:
        devserver.wait_status(job_id, {"running"}, timeout=60)
    wait_for(lambda: all("line-5\n" in devserver.log_file(job_id).read_text() for job_id in jobs), 60, "output")

    worker.kill()
    worker.start("--exit-after-job")

    assert worker.wait(180) == 0, worker.text()
    for job_id in jobs:
        assert devserver.status(job_id) == "finished"
        expected_lines(devserver.log_file(job_id), 60)


def test_an_ssh_outage_mid_job_is_waited_out_and_no_job_is_lost(
    devserver: Devserver, slurm_worker: Callable[..., WorkerProcess], sshd: dict[str, str]
) -> None:
    job_id = devserver.submit(image=IMAGE, command=numbered(80))
    worker = slurm_worker(**ssh_env(sshd)).start("--exit-after-job")
    devserver.wait_status(job_id, {"running"}, timeout=60)
    wait_for(lambda: "line-5\n" in devserver.log_file(job_id).read_text(), 60, "output")

    sshd_script = str(REPO / "scripts" / "sshd_loopback.sh")
    subprocess.run(["bash", sshd_script, "stop", "/tmp/opeva-sshd"], check=True, capture_output=True)
    # Also the session of the multiplexed connection, which outlives the listening daemon: the network is gone.
    subprocess.run(["pkill", "-f", "^sshd: root"], check=False)
    time.sleep(5)  # the login node is unreachable: an outage, not a failed job
    assert devserver.status(job_id) == "running"
    env = {**os.environ, "SSHD_PORT": sshd["SSHD_PORT"]}  # the same port, the same host key
    subprocess.run(["bash", sshd_script, "start", "/tmp/opeva-sshd"], check=True, capture_output=True, env=env)

    assert worker.wait(180) == 0, worker.text()
    assert devserver.status(job_id) == "finished"
    expected_lines(devserver.log_file(job_id), 80)
    assert "unavailable" in worker.text()  # said once, then waited out


def test_a_queued_job_is_setup_with_why_it_waits_then_runs(
    devserver: Devserver, slurm_worker: Callable[..., WorkerProcess]
) -> None:
    job_id = devserver.submit(image=IMAGE, command=numbered(3))
    worker = slurm_worker(SLURM_EXTRA_ARGS="--hold").start("--exit-after-job")

    def held() -> dict[str, object] | None:
        job = devserver.job(job_id)
        details = job.get("details") or {}
        return details if job["status"] == "setup" and "held" in str(details.get("pending_reason")) else None

    details = wait_for(held, 60, "setup with the pending reason")
    subprocess.run(["scontrol", "release", str(details["slurm_job_id"])], check=True)

    assert worker.wait(120) == 0, worker.text()
    assert [entry["status"] for entry in devserver.job(job_id)["history"]][-3:] == ["setup", "running", "finished"]
    expected_lines(devserver.log_file(job_id), 3)
