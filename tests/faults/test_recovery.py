"""Fault injection against real dockerd, the reference backend and a job printing numbered lines.

Each test asserts the job's final status on the backend, that every numbered line is in the log
exactly once and in order, and that no job container is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from harness import Devserver, WorkerProcess, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]
Make = Callable[..., WorkerProcess]


def numbered_job(devserver: Devserver, lines: int, per_second: int = 100) -> str:
    script = f"i=1; while [ $i -le {lines} ]; do echo line-$i; i=$((i+1)); usleep {1_000_000 // per_second}; done"
    return devserver.submit(image="opeva-test-busybox:latest", command=["sh", "-c", script])


def start_numbered(
    devserver: Devserver,
    make_worker: Make,
    lines: int,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    under_way: int = 200,
) -> tuple[str, WorkerProcess, Path]:
    """Submit a numbered-lines job, start a worker, and wait until the job has printed `under_way` lines."""
    job_id = numbered_job(devserver, lines)
    worker = make_worker(env, server=devserver).start(*args)
    log = devserver.log_file(job_id)
    wait_for(lambda: lines_in(log) > under_way, 30, "the job to be under way")
    return job_id, worker, log


def assert_numbered_lines(log: Path, expected: int | None) -> int:
    """Lines line-1..line-N, each once, in order; returns N (== expected when given)."""
    numbered = [line for line in log.read_text().splitlines() if line.startswith("line-")]
    assert numbered == [f"line-{i}" for i in range(1, len(numbered) + 1)], "lines lost, doubled or out of order"
    if expected is not None:
        assert len(numbered) == expected
    return len(numbered)


def lines_in(log: Path) -> int:
    return log.read_text().count("line-") if log.exists() else 0


def assert_no_containers(worker: WorkerProcess, client: docker.DockerClient) -> None:
    wait_for(lambda: worker.containers(client) == [], 20, "job containers to be removed")


def test_kill_9_mid_job_then_restart_readopts(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    job_id, worker, log = start_numbered(devserver, make_worker, 1500)

    worker.kill()  # SIGKILL: no clean-up at all
    time.sleep(2)  # the job keeps printing while no worker reads it
    worker.start("--exit-after-job")

    assert worker.wait(90) == 0, worker.text()
    assert devserver.status(job_id) == "finished"
    assert_numbered_lines(log, 1500)
    assert_no_containers(worker, docker_client)


def test_sigterm_leaves_job_running_and_next_worker_readopts(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    job_id, worker, log = start_numbered(devserver, make_worker, 1500)

    asked = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - asked < 5, "SIGTERM must leave within 5 s"
    assert [c.status for c in worker.containers(docker_client)] == ["running"]
    assert devserver.status(job_id) == "running"

    worker.start("--exit-after-job")
    assert worker.wait(90) == 0, worker.text()
    assert devserver.status(job_id) == "finished"
    assert_numbered_lines(log, 1500)
    assert_no_containers(worker, docker_client)


def test_sigterm_with_stop_job_on_exit_reports_stopped(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    job_id, worker, log = start_numbered(
        devserver, make_worker, 100_000, {"WORKER_STOP_JOB_ON_EXIT": "1", "STOP_GRACE_PERIOD": "2"}, under_way=100
    )

    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert devserver.status(job_id) == "stopped"
    assert_numbered_lines(log, None)
    assert_no_containers(worker, docker_client)


def test_backend_down_when_job_ends_status_arrives_after_restart(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    job_id, worker, log = start_numbered(devserver, make_worker, 1000, args=("--exit-after-job",), under_way=100)

    devserver.stop()
    wait_for(lambda: worker.containers(docker_client) == [], 60, "the job to end while the backend is down")
    time.sleep(max(0.0, 30 - 10))  # the backend stays down 30 s in all
    assert worker.proc is not None and worker.proc.poll() is None, "the worker must wait for the backend"
    devserver.start()

    assert worker.wait(90) == 0, worker.text()
    assert devserver.status(job_id) == "finished"
    assert_numbered_lines(log, 1000)
    assert worker.text().count("backend (status delivery) unavailable") == 1, "one log line per outage"


@contextlib.contextmanager
def share_mounted(export: Path, mount_point: Path) -> Iterator[Callable[[bool], None]]:
    """A bind mount standing in for the NFS share (this kernel has no NFS); yields set_mounted(bool)."""

    def set_mounted(mounted: bool) -> None:
        command = ["mount", "--bind", str(export), str(mount_point)] if mounted else ["umount", "-l", str(mount_point)]
        subprocess.run(command, check=True)

    set_mounted(True)
    try:
        yield set_mounted
    finally:
        # Not os.path.ismount: a bind mount from the same file system has the same device as its parent, so it
        # would say False and leave the mount behind (and pytest unable to remove its temp dir).
        while _mounted(mount_point):
            set_mounted(False)


def _mounted(path: Path) -> bool:
    return str(path) in (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_share_gone_mid_job_then_back(
    make_devserver: Callable[..., Devserver], make_worker: Make, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    server = make_devserver()
    export = tmp_path / "export"
    # The backend's tree becomes the "export"; the worker sees it through the mount point only.
    server.shared.rename(export)
    server.shared.mkdir()
    with share_mounted(export, server.shared) as set_mounted:
        job_id = numbered_job(server, 1500)
        worker = make_worker({"SHARED_DIR_CHECK": "marker"}, server=server).start()
        log = server.log_file(job_id)
        wait_for(lambda: lines_in(log) > 200, 30, "the job to be under way")

        second = server.submit(image="opeva-test-busybox:latest", command=["sh", "-c", "echo second"])
        set_mounted(False)
        wait_for(lambda: server.hosts()[worker.worker_id]["info"]["share_ok"] is False, 20, "heartbeat: share down")
        time.sleep(3)
        # Nothing about the job was written onto the local disk under the bare mount point.
        assert not (server.shared / "jobs" / job_id / "logs").exists()
        assert server.status(second) == "queued", "no job is taken while the share is gone"

        set_mounted(True)
        server.wait_status(job_id, {"finished"}, timeout=60)
        server.wait_status(second, {"finished"}, timeout=60)
        assert_numbered_lines(log, 1500)
        assert_no_containers(worker, docker_client)
        worker.signal(signal.SIGTERM)
        worker.wait(10)


def _gone(pid: int) -> bool:
    """No such process any more, or only a zombie that nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _restart_dockerd() -> None:
    pid = int(subprocess.run(["pidof", "dockerd"], capture_output=True, text=True, check=True).stdout.split()[0])
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    os.kill(pid, signal.SIGTERM)
    try:  # dockerd gives each container 10 s to stop: with a few it takes a while on a loaded machine
        wait_for(lambda: _gone(pid), 120, "dockerd to exit")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _gone(pid), 30, "dockerd to be killed")
    with open("/tmp/dockerd.log", "ab") as out:
        subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)
    wait_for(lambda: subprocess.run(["docker", "info"], capture_output=True).returncode == 0, 60, "dockerd back")


@pytest.mark.serial  # restarts dockerd under every other test's containers
def test_dockerd_restart_mid_job(devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient) -> None:
    job_id, worker, log = start_numbered(devserver, make_worker, 1500, args=("--exit-after-job",))

    _restart_dockerd()

    assert worker.wait(120) == 0, worker.text()
    record = devserver.job(job_id)
    live_restore = docker.from_env().info().get("LiveRestoreEnabled")
    if live_restore:
        assert record["status"] == "finished"
        assert_numbered_lines(log, 1500)
    else:
        # Without live-restore dockerd takes its containers down with it: the job failed, and says how.
        assert record["status"] == "failed"
        assert record["exit_code"] is not None or record["error"]
        printed = assert_numbered_lines(log, None)
        assert printed > 200
    assert_no_containers(worker, docker.from_env())


@pytest.mark.xdist_group("cpu")  # floods ~50 MB through dockerd: one such test at a time (tests/conftest.py)
def test_kill_9_during_a_log_flood_loses_no_byte(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    # The restarted worker reads the container's own log from far behind, while the job floods it and exits
    # (the replay is several times slower than the flood, so the job ends long before the catch-up does).
    line = b"0123456789" * 7 + b"\n"
    total = len(line) * 700_000  # ~50 MB
    job_id = devserver.submit(
        image="opeva-test-busybox:latest", command=["sh", "-c", f"yes {line[:-1].decode()} | head -c {total}"]
    )
    worker = make_worker().start()
    log = devserver.log_file(job_id)
    wait_for(lambda: log.exists() and log.stat().st_size > 10_000_000, 60, "the flood to be under way")
    worker.kill()
    time.sleep(0.5)
    worker.start("--exit-after-job")

    assert worker.wait(180) == 0, worker.text()
    assert devserver.status(job_id) == "finished"
    assert log.stat().st_size == total
    with open(log, "rb") as handle:
        while chunk := handle.read(len(line) * 10_000):
            assert chunk == line * (len(chunk) // len(line)), "a line was cut, doubled or garbled"
    assert_no_containers(worker, docker_client)


def test_job_stopped_while_the_worker_was_down_is_stopped_on_readoption(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    job_id, worker, log = start_numbered(devserver, make_worker, 100_000, under_way=100)
    worker.kill()
    assert devserver.stop_job(job_id) == "stop_requested"

    worker.start()
    devserver.wait_status(job_id, {"stopped"}, timeout=30)
    assert_no_containers(worker, docker_client)
    assert_numbered_lines(log, None)
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


def test_container_of_a_job_the_backend_does_not_know_is_removed(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    job_id = numbered_job(devserver, 100_000)
    worker = make_worker().start()
    wait_for(lambda: lines_in(devserver.log_file(job_id)) > 100, 30, "the job to be under way")
    worker.kill()
    devserver.stop()
    for leftover in devserver.db.parent.glob(devserver.db.name + "*"):  # with SQLite's -wal and -shm files
        leftover.unlink()  # the backend comes back without any memory of the job
    devserver.start()

    worker.start()
    assert_no_containers(worker, docker_client)
    assert "the backend does not know the job" in worker.text()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


def _created_container(client: docker.DockerClient, worker: WorkerProcess, job_id: str, script: str) -> Any:
    """What a worker leaves behind when it (or dockerd) is interrupted between create and start."""
    labels = {"opeva.worker_id": worker.worker_id, "opeva.job_id": job_id, "opeva.managed-by": "job-worker-agent"}
    return client.containers.create(
        "opeva-test-busybox:latest", ["sh", "-c", script], name=f"opeva-job-{job_id}", labels=labels
    )


def _claim(devserver: Devserver, worker: WorkerProcess) -> str:
    return str(devserver.request("POST", "/api/agent/next-job", {"worker_id": worker.worker_id})["job_id"])


def test_a_created_container_of_its_job_is_started_and_new_jobs_still_run(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    worker = make_worker(server=devserver)
    devserver.submit(image="opeva-test-busybox:latest", command=["sh", "-c", "echo unused"])
    job_id = _claim(devserver, worker)
    _created_container(docker_client, worker, job_id, "echo started-late")
    later = devserver.submit(image="opeva-test-busybox:latest", command=["sh", "-c", "echo later"])

    worker.start()

    devserver.wait_status(later, {"finished"}, timeout=30)
    devserver.wait_status(job_id, {"finished"}, timeout=30)
    assert "started-late" in devserver.log_file(job_id).read_text()
    assert_no_containers(worker, docker_client)


def test_a_created_container_of_a_canceled_job_is_removed_unstarted(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    worker = make_worker(server=devserver)
    devserver.submit(image="opeva-test-busybox:latest", command=["sh", "-c", "echo unused"])
    job_id = _claim(devserver, worker)
    devserver.request(
        "POST", "/api/agent/job-status", {"job_id": job_id, "status": "canceled", "worker_id": worker.worker_id}
    )
    container = _created_container(docker_client, worker, job_id, "touch /data/must-not-exist")
    later = devserver.submit(image="opeva-test-busybox:latest", command=["sh", "-c", "echo later"])

    worker.start()

    devserver.wait_status(later, {"finished"}, timeout=30)
    with pytest.raises(docker.errors.NotFound):
        container.reload()
    assert devserver.status(job_id) == "canceled"
    assert not (devserver.shared / "must-not-exist").exists()
