"""The worker against a real dockerd and the reference backend over loopback, reading the real log files."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import docker
import pytest
from harness import SIM_IMAGE, Devserver, WorkerProcess, sh, wait_for

pytestmark = pytest.mark.docker
Make = Callable[..., WorkerProcess]


def run_one(devserver: Devserver, make_worker: Make, **job: object) -> tuple[str, WorkerProcess]:
    """Submit one job, run a worker with --exit-after-job until it exits, return the job id."""
    job_id = devserver.submit(image="opeva-test-busybox:latest", **job)
    worker = make_worker().start("--exit-after-job")
    assert worker.wait(90) == 0, worker.text()
    return job_id, worker


def test_job_that_succeeds_is_finished_with_its_output_logged(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    job_id, worker = run_one(devserver, make_worker, command=sh("echo hello-out; echo hello-err >&2; ls /data"))

    record = devserver.job(job_id)
    assert record["status"] == "finished"
    assert record["exit_code"] == 0
    assert record["container_id"] and record["container_name"]
    log = devserver.log_file(job_id).read_text()
    assert "hello-out\n" in log and "hello-err\n" in log
    assert "configs\n" in log  # the shared dir is mounted at /data
    assert worker.containers(docker_client) == []


def test_job_exiting_3_is_failed_with_exit_code(devserver: Devserver, make_worker: Make) -> None:
    job_id, _ = run_one(devserver, make_worker, command=sh("echo about to fail; exit 3"))

    record = devserver.job(job_id)
    assert (record["status"], record["exit_code"]) == ("failed", 3)
    assert "about to fail" in devserver.log_file(job_id).read_text()


def test_how_a_job_ended_comes_from_docker_oom_kill_and_image_included(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    # Several hogs three at a time: under load dockerd 20.10 records some OOM kills only after the exit (an
    # `oom` event, State.OOMKilled false) or not at all. The worker must agree with Docker's own record.
    hogs = [
        devserver.submit(image="opeva-test-busybox:latest", command=sh("dd if=/dev/zero of=/dev/null bs=64M count=1"))
        for _ in range(6)
    ]
    fine = devserver.submit(image="opeva-test-busybox:latest", command=sh("true"))
    worker = make_worker({"JOB_MEMORY": "16m", "WORKER_MAX_ACTIVE_JOBS": "3"})
    events = docker_client.api.events(
        decode=True, filters={"event": "oom", "label": f"opeva.worker_id={worker.worker_id}"}
    )
    oom_seen: set[str] = set()
    watcher = threading.Thread(target=lambda: oom_seen.update(e["Actor"]["Attributes"]["opeva.job_id"] for e in events))
    watcher.start()
    worker.start()

    devserver.wait_status(fine, {"finished"})
    for hog in hogs:
        devserver.wait_status(hog, {"failed"})
    time.sleep(3)  # an `oom` event may come up to the worker's wait for it after the exit
    events.close()
    watcher.join(10)
    for hog in hogs:
        record = devserver.job(hog)
        expected_code = "oom_killed" if hog in oom_seen else "killed_by_signal"
        assert (record["status"], record["error_code"], record["exit_code"]) == ("failed", expected_code, 137), hog
        if expected_code == "killed_by_signal":
            assert "memory limit of 16 MiB" in record["error_hint"]
    image_id = docker_client.images.get("opeva-test-busybox:latest").id
    assert devserver.job(fine)["details"]["image_id"] == devserver.job(hogs[0])["details"]["image_id"] == image_id
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


@pytest.mark.parametrize(
    ("how", "hint"),
    [("docker kill", "through Docker outside this worker"), ("kill -9 on the host", "memory limit of 64 MiB")],
)
def test_a_job_killed_outside_the_worker_says_by_whom_where_docker_knows(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient, how: str, hint: str
) -> None:
    job_id = devserver.submit(image="opeva-test-busybox:latest", command=sh("echo up; sleep 60"))
    worker = make_worker({"JOB_MEMORY": "64m"}).start()
    devserver.wait_status(job_id, {"running"})
    container = wait_for(lambda: worker.containers(docker_client), 30, "the job's container")[0]
    if how == "docker kill":
        container.kill()
    else:  # SIGKILL as the kernel's OOM killer sends it: Docker records no kill and, here, no OOM
        os.kill(docker_client.api.inspect_container(container.id)["State"]["Pid"], signal.SIGKILL)

    devserver.wait_status(job_id, {"failed"})
    record = devserver.job(job_id)
    assert (record["error_code"], record["exit_code"], record["error"]) == (
        "killed_by_signal",
        137,
        "the job was killed by signal 9",
    )
    assert hint in record["error_hint"]
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


def test_missing_image_fails_the_job_with_reason_and_worker_goes_on(devserver: Devserver, make_worker: Make) -> None:
    # Port 1 on loopback refuses at once: the image is neither present nor pullable.
    missing = devserver.submit(image="127.0.0.1:1/opeva-test-missing:1", command=sh("true"))
    good = devserver.submit(image="opeva-test-busybox:latest", command=sh("echo second job"))
    worker = make_worker({"ALLOWED_IMAGES": "opeva-test-*,127.0.0.1:1/opeva-test-*"}).start()

    devserver.wait_status(good, {"finished"})
    record = devserver.job(missing)
    assert record["status"] == "failed"
    assert "127.0.0.1:1/opeva-test-missing:1" in record["error"]
    assert "not available" in record["error"]
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


def test_missing_config_fails_the_job_with_reason(devserver: Devserver, make_worker: Make) -> None:
    (devserver.shared / "configs" / "gone.yaml").write_text("x: 1\n")
    job_id = devserver.submit(config_path="configs/gone.yaml", image="opeva-test-busybox:latest", command=sh("true"))
    (devserver.shared / "configs" / "gone.yaml").unlink()
    worker = make_worker().start("--exit-after-job")
    assert worker.wait(60) == 0

    record = devserver.job(job_id)
    assert record["status"] == "failed"
    assert "configs/gone.yaml" in record["error"] and "not found" in record["error"]


def test_legacy_payload_runs_worker_image_with_default_command(
    make_devserver: Callable[..., Devserver], make_worker: Make
) -> None:
    legacy = make_devserver("--payload-mode", "legacy")
    job_id = legacy.submit()
    worker = make_worker({"WORKER_IMAGE": SIM_IMAGE}, server=legacy).start("--exit-after-job")
    assert worker.wait(60) == 0, worker.text()

    assert legacy.status(job_id) == "finished"
    log = legacy.log_file(job_id).read_text()
    assert f"sim: config=/data/configs/test.yaml job={job_id}\n" in log
    assert "simulation: test\n" in log  # the config was readable through /data


def test_100000_lines_all_present_in_order(devserver: Devserver, make_worker: Make) -> None:
    job_id, _ = run_one(devserver, make_worker, command=sh("seq 1 100000"))

    assert devserver.status(job_id) == "finished"
    lines = devserver.log_file(job_id).read_text().splitlines()
    assert lines == [str(n) for n in range(1, 100001)]


def test_output_without_newlines_reaches_the_file_per_16_kib_and_at_the_end(
    devserver: Devserver, make_worker: Make
) -> None:
    # Docker's own copy keeps such output as 16 KiB pieces; the live log follows the same cut, so that a log
    # resumed after a restart is byte-identical (docs/logs.md).
    script = "printf 'no-newline-1'; head -c 20000 /dev/zero | tr '\\0' x; sleep 2; printf '\\377-2'; sleep 300"
    job_id = devserver.submit(image="opeva-test-busybox:latest", command=sh(script))
    worker = make_worker({"STOP_GRACE_PERIOD": "1"}).start()
    log = devserver.log_file(job_id)
    wait_for(lambda: log.exists() and log.stat().st_size == 16384, 20, "the first 16 KiB piece")
    assert log.read_bytes().startswith(b"no-newline-1xxx")
    devserver.wait_status(job_id, {"running"})  # its report may still be on its way: statuses go out on their own
    devserver.stop_job(job_id)
    devserver.wait_status(job_id, {"stopped"}, timeout=30)
    # The rest arrives at the job's end, bytes as printed; the line is longer than 16 KiB, so it ends with a
    # newline, as Docker's replay gives it.
    assert log.read_bytes() == b"no-newline-1" + b"x" * 20000 + b"\xff-2\n"
    worker.signal(signal.SIGTERM)
    worker.wait(10)


def test_stop_request_stops_the_container_within_grace_plus_one_poll(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    # The job ignores SIGTERM, so the stop has to go all the way to SIGKILL after the grace period.
    job_id = devserver.submit(image="opeva-test-busybox:latest", command=sh("trap '' TERM; echo started; sleep 300"))
    worker = make_worker({"STOP_GRACE_PERIOD": "3", "STATUS_POLL_INTERVAL": "2"}).start()
    devserver.wait_status(job_id, {"running"})
    wait_for(lambda: "started" in devserver.log_file(job_id).read_text(), 20, "the job to print")

    asked = time.monotonic()
    assert devserver.stop_job(job_id) == "stop_requested"
    devserver.wait_status(job_id, {"stopped"}, timeout=30)
    wait_for(lambda: worker.containers(docker_client) == [], 10, "the container to be removed")
    elapsed = time.monotonic() - asked

    # grace 3 s + one status poll 2 s; the rest is slack for a loaded machine, not a benchmark.
    assert elapsed < 3 + 2 + 6, elapsed
    assert devserver.job(job_id)["exit_code"] == 137  # killed: it ignored SIGTERM
    assert devserver.status(job_id) == "stopped"
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


def test_sigusr1_while_idle_exits_and_sigterm_exits_cleanly(devserver: Devserver, make_worker: Make) -> None:
    idle = make_worker().start()
    wait_for(lambda: idle.worker_id in devserver.hosts(), 20, "a first heartbeat")
    idle.signal(signal.SIGUSR1)
    assert idle.wait(10) == 0

    other = make_worker().start()
    wait_for(lambda: other.worker_id in devserver.hosts(), 20, "a first heartbeat")
    other.signal(signal.SIGTERM)
    assert other.wait(10) == 0


def test_bad_configuration_exits_2_naming_the_variable(make_worker: Make) -> None:
    for env, name in (
        ({"POLL_INTERVAL": "abc"}, "POLL_INTERVAL"),
        ({"WORKER_HEARTBEAT_INTERVAL": "-5"}, "WORKER_HEARTBEAT_INTERVAL"),
        ({"OPEVA_SERVER": "backend:8000"}, "OPEVA_SERVER"),
    ):
        worker = make_worker(env).start()
        assert worker.wait(30) == 2
        message = worker.text().strip().splitlines()
        assert len(message) == 1 and name in message[0], message


def test_heartbeats_and_refreshes_keep_a_long_job_alive(
    make_devserver: Callable[..., Devserver], make_worker: Make
) -> None:
    # The backend's host TTL (60 s) and offline grace (120 s) scaled down by 10: a silent host's running job
    # would fail after 18 s. A status TTL shorter than the job also proves the running refreshes.
    server = make_devserver("--host-ttl", "6", "--offline-grace", "12", "--status-ttl", "3")
    job_id = server.submit(image="opeva-test-busybox:latest", command=sh("sleep 22; echo done"))
    worker = make_worker({"WORKER_HEARTBEAT_INTERVAL": "2", "RUNNING_REFRESH_INTERVAL": "1"}, server=server)
    worker.start("--exit-after-job")
    server.wait_status(job_id, {"running"})
    while worker.proc is not None and worker.proc.poll() is None:
        assert server.hosts()[worker.worker_id]["online"], "host went offline during the job"
        assert server.status(job_id) in ("running", "finished")
        time.sleep(0.5)
    assert worker.wait(1) == 0
    assert server.status(job_id) == "finished"
    assert server.hosts()[worker.worker_id]["info"]["last_terminal_status"] == "finished"


def test_job_timeout_stops_the_job_and_reports_failed_timeout(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    job_id, worker = run_one(
        devserver,
        make_worker_with(make_worker, {"JOB_TIMEOUT": "2", "STOP_GRACE_PERIOD": "1"}),
        command=sh("sleep 300"),
    )
    record = devserver.job(job_id)
    assert (record["status"], record["error"]) == ("failed", "timeout")
    assert worker.containers(docker_client) == []


def make_worker_with(make_worker: Make, env: dict[str, str]) -> Make:
    return lambda **kwargs: make_worker(env, **kwargs)


def test_worker_with_the_backend_token_runs_jobs(make_devserver: Callable[..., Devserver], make_worker: Make) -> None:
    server = make_devserver("--token", "opeva-test-token")
    job_id = server.submit(image="opeva-test-busybox:latest", command=sh("echo with token"))
    without = make_worker(server=server).start()
    wait_for(lambda: without.text().count("next-job: HTTP 401") >= 2, 30, "next-job refused twice")
    assert server.status(job_id) == "queued", "a worker without the token must not get work"
    without.signal(signal.SIGTERM)
    assert without.wait(10) == 0

    worker = make_worker({"OPEVA_TOKEN": "opeva-test-token"}, server=server).start("--exit-after-job")
    assert worker.wait(60) == 0, worker.text()
    assert server.status(job_id) == "finished"
    assert "opeva-test-token" not in worker.text()


def test_dockers_own_copy_of_the_output_is_bounded_and_rotated(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    job_id = devserver.submit(image="opeva-test-busybox:latest", command=sh("sleep 300"))
    worker = make_worker({"MAX_LOG_BYTES": "1M", "STOP_GRACE_PERIOD": "1"}).start()
    devserver.wait_status(job_id, {"running"})
    (container,) = worker.containers(docker_client)
    config = docker_client.api.inspect_container(container.id)["HostConfig"]["LogConfig"]
    assert config == {
        "Type": "local",
        "Config": {"max-size": str(2 * 1024**2 // 4), "max-file": "4", "compress": "false"},
    }
    devserver.stop_job(job_id)
    devserver.wait_status(job_id, {"stopped"}, timeout=30)
