"""Docker keeps a bounded, rotated copy of a job's output (DOCKER_LOG_MAX_BYTES). A worker that comes back
after the job printed past that bound must neither skip nor repeat output, and must say where some may be
missing: real dockerd, real `local` log rotation, worker killed with kill -9.

64 KiB over 4 files keeps about 1,600 of the short lines below (Docker stores each with some 35 bytes of framing).
"""

from __future__ import annotations

from collections.abc import Callable

import docker
import pytest
from harness import Devserver, WorkerProcess, sh, wait_for

from worker_agent.logs.pump import LOST_MARKER

pytestmark = [pytest.mark.docker, pytest.mark.slow]
Make = Callable[..., WorkerProcess]
BOUND = {"DOCKER_LOG_MAX_BYTES": str(64 * 1024)}


def lines(prefix: str, first: int, last: int) -> list[str]:
    return [f"{prefix}-{n}" for n in range(first, last + 1)]


def loop(prefix: str, count: int, pause_us: int = 0) -> str:
    pause = f"usleep {pause_us}; " if pause_us else ""
    return f"i=1; while [ $i -le {count} ]; do echo {prefix}-$i; {pause}i=$((i+1)); done"


def kill_and_come_back(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient, script: str, kill_at: bytes
) -> list[str]:
    """Run `script`; kill -9 the worker once the log holds `kill_at`; restart it after the job has ended."""
    job_id = devserver.submit(image="opeva-test-busybox:latest", command=sh(script))
    worker = make_worker(BOUND).start("--exit-after-job")
    log = devserver.log_file(job_id)
    wait_for(lambda: log.exists() and kill_at in log.read_bytes(), 60, f"{kill_at!r} in the log")
    worker.kill()
    (container,) = worker.containers(docker_client)
    docker_client.containers.get(container.id).wait(timeout=60)  # all of it printed while no worker read it

    worker.start("--exit-after-job")
    assert worker.wait(90) == 0, worker.text()
    assert devserver.status(job_id) == "finished"
    return log.read_text().splitlines()


def test_rotated_output_the_log_already_has_is_found_again_and_nothing_repeats(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    # The flood rotates Docker's copy while the worker reads it live; slow lines give it checkpoints after.
    script = "; ".join([loop("a", 3000), loop("s", 3, 1_200_000), "sleep 3", loop("b", 5)])
    log = kill_and_come_back(devserver, make_worker, docker_client, script, b"s-3\n")

    assert log == lines("a", 1, 3000) + lines("s", 1, 3) + lines("b", 1, 5)


def test_output_rotated_away_while_the_worker_was_down_is_marked_once(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    script = "; ".join([loop("early", 40, 100_000), "sleep 2", loop("late", 4000)])
    log = kill_and_come_back(devserver, make_worker, docker_client, script, b"early-25\n")

    marker = log.index(f"[job-worker-agent] {LOST_MARKER}")
    kept, after = log[:marker], log[marker + 1 :]
    assert kept and kept == lines("early", 1, len(kept))  # up to the worker's last checkpoint
    first = int(after[0].removeprefix("late-"))
    assert first > 1 and after == lines("late", first, 4000)  # what Docker still had, each line once
