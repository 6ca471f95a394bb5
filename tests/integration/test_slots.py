"""Slots against real Docker and the reference backend: never more jobs at once than slots, each log whole."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import docker
import pytest
from harness import Devserver, WorkerProcess, sh, wait_for

pytestmark = pytest.mark.docker
Make = Callable[..., WorkerProcess]
IMAGE = "opeva-test-busybox:latest"


def lines(count: int, pause: str = "0") -> list[str]:
    return sh(f"for i in $(seq 1 {count}); do echo line $i; sleep {pause}; done")


def expected(count: int) -> str:
    return "".join(f"line {i}\n" for i in range(1, count + 1))


def most_at_once(devserver: Devserver, job_ids: list[str]) -> int:
    """The most jobs `running` at once, from the backend's own history (statuses arrive oldest first)."""
    events = []
    for job_id in job_ids:
        history = devserver.job(job_id)["history"]
        started = next(entry["at"] for entry in history if entry["status"] == "running")
        ended = next(entry["at"] for entry in history if entry["status"] in ("finished", "failed", "stopped"))
        events += [(started, 1), (ended, -1)]
    running = peak = 0
    for _, change in sorted(events, key=lambda event: (event[0], event[1])):
        running += change
        peak = max(peak, running)
    return peak


def test_three_slots_run_33_jobs_never_more_than_three_at_once(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    short, long = [], []
    for index in range(33):
        if index % 11 == 0:
            long.append(devserver.submit(image=IMAGE, command=lines(40, "0.1")))
        else:
            # A second each: long enough that three jobs overlap even when a loaded host refills slots slowly.
            short.append(devserver.submit(image=IMAGE, command=lines(20, "0.05")))
    worker = make_worker({"WORKER_MAX_ACTIVE_JOBS": "3"}).start()
    seen = 0
    deadline = time.monotonic() + 180
    while not all(devserver.status(job_id) == "finished" for job_id in short + long):
        # Jobs at once: containers created or running. The exited container of an ended job is removed while
        # the next job starts in its slot.
        states = [container.attrs["State"] for container in worker.containers(docker_client)]
        seen = max(seen, sum(state in ("created", "running", "restarting", "paused") for state in states))
        assert time.monotonic() < deadline, worker.text()
        time.sleep(0.05)

    assert seen <= 3 and most_at_once(devserver, short + long) == 3
    for job_id in short:
        assert devserver.log_file(job_id).read_text().endswith(expected(20))
    for job_id in long:
        assert devserver.log_file(job_id).read_text().endswith(expected(40))


def test_a_stop_request_hits_only_its_job(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    jobs = [devserver.submit(image=IMAGE, command=sh("sleep 300")) for _ in range(3)]
    worker = make_worker({"WORKER_MAX_ACTIVE_JOBS": "3", "STOP_GRACE_PERIOD": "1"}).start()
    for job_id in jobs:
        devserver.wait_status(job_id, {"running"})

    devserver.stop_job(jobs[1])

    devserver.wait_status(jobs[1], {"stopped"}, timeout=20)
    wait_for(lambda: len(worker.containers(docker_client)) == 2, 10, "the stopped job's container removed")
    assert [devserver.status(job_id) for job_id in jobs] == ["running", "stopped", "running"]


def test_sigterm_detaches_three_jobs_and_the_next_start_readopts_all(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    jobs = [devserver.submit(image=IMAGE, command=lines(60, "0.1")) for _ in range(3)]
    worker = make_worker({"WORKER_MAX_ACTIVE_JOBS": "3"}).start()
    for job_id in jobs:
        devserver.wait_status(job_id, {"running"})
    wait_for(lambda: all("line 5\n" in devserver.log_file(job_id).read_text() for job_id in jobs), 20, "output")

    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - began < 5
    assert len(worker.containers(docker_client)) == 3  # the jobs run on

    worker.start("--exit-after-job")
    assert worker.wait(60) == 0, worker.text()
    for job_id in jobs:
        assert devserver.status(job_id) == "finished"
        assert devserver.log_file(job_id).read_text() == expected(60)
