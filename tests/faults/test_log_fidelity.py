"""A resumed log equals an uninterrupted one, and a cut stream leaks no secret: real dockerd, real `local` log.

The same job runs twice, once under a worker left alone and once under a worker killed (kill -9) in the
middle; both logs must be byte for byte the same, for output that Docker's copy does not replay as printed:
a `\\r` progress bar of multi-byte characters with no newline for far more than 64 KiB (cut by Docker's
16 KiB pieces inside characters; dockerd 20.10 replays its end without the newline), Latin-1 bytes,
stdout/stderr interleaved, a line of exactly 16 KiB (its replay ends with an empty message), and a last line
longer than 16 KiB with no newline. The two streams are printed
50 ms apart: Docker itself may store lines of two streams printed closer together in either order (more so
on a loaded host), and the worker cannot know its order before it reads Docker's copy (docs/logs.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import docker
import pytest
from harness import Devserver, WorkerProcess, sh, wait_for
from test_recovery import _restart_dockerd, assert_no_containers

pytestmark = [pytest.mark.docker, pytest.mark.slow]
Make = Callable[..., WorkerProcess]

BLOCK = r"\342\226\210" * 50  # 50 x U+2588 FULL BLOCK, 150 bytes
HOSTILE_OUTPUT = f"""
i=0; while [ $i -lt 60 ]; do
  printf 'out %d caf\\351 na\\357ve \\342\\202\\254\\n' $i; usleep 50000; printf 'err %d \\377\\376\\n' $i >&2
  i=$((i+1)); usleep 15000
done
echo bar-start
i=0; while [ $i -lt 700 ]; do printf '\\r{BLOCK}%d' $i; i=$((i+1)); usleep 4000; done
printf '\\n'
i=0; while [ $i -lt 60 ]; do
  printf 'tail %d \\351\\n' $i; usleep 50000; printf 'tail-err %d\\n' $i >&2; i=$((i+1)); usleep 15000
done
head -c 16384 /dev/zero | tr '\\0' k; echo
head -c 20000 /dev/zero | tr '\\0' z
"""


def run_to_end(devserver: Devserver, make_worker: Make, kill_when: Callable[[bytes], bool] | None) -> bytes:
    job_id = devserver.submit(image="opeva-test-busybox:latest", command=sh(HOSTILE_OUTPUT))
    worker = make_worker(server=devserver).start("--exit-after-job")
    log = devserver.log_file(job_id)
    if kill_when is not None:
        wait_for(lambda: log.exists() and kill_when(log.read_bytes()), 30, "the moment to kill the worker")
        worker.kill()
        time.sleep(1)  # the job prints on while no worker reads it
        worker.start("--exit-after-job")
    assert worker.wait(90) == 0, worker.text()
    assert devserver.status(job_id) == "finished"
    return log.read_bytes()


@pytest.mark.serial  # the two streams' order holds only on a quiet host (see the module's docstring)
@pytest.mark.parametrize(
    "moment",
    [
        pytest.param(lambda log: b"out 20 " in log, id="during-interleaved-lines"),
        pytest.param(lambda log: len(log) > 40_000, id="during-the-progress-bar"),
    ],
)
def test_a_log_resumed_after_kill_9_is_byte_identical(
    devserver: Devserver, make_worker: Make, moment: Callable[[bytes], bool]
) -> None:
    uninterrupted = run_to_end(devserver, make_worker, None)
    resumed = run_to_end(devserver, make_worker, moment)

    assert b"bar-start\n" in uninterrupted and uninterrupted.count(b"\n") == 60 * 2 + 2 + 60 * 2 + 2
    assert b"caf\xe9 na\xefve \xe2\x82\xac\n" in uninterrupted  # bytes that are not UTF-8, as printed
    assert uninterrupted.endswith(b"\n" + b"k" * 16384 + b"\n" + b"z" * 20000 + b"\n")  # a long last line: newline
    assert resumed == uninterrupted


@pytest.mark.serial  # restarts dockerd under every other test's containers
def test_dockerd_restart_while_a_secret_is_printed_leaks_nothing(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    secret = "SUPERSECRET-42-abcdefgh"
    # One long line of secrets, no newline: Docker's 16 KiB pieces and the cut stream fall inside them.
    script = 'while true; do printf "MY_TOKEN=$MY_TOKEN "; usleep 200; done'
    job_id = devserver.submit(image="opeva-test-busybox:latest", command=sh(script), env={"MY_TOKEN": secret})
    worker = make_worker(server=devserver).start("--exit-after-job")
    log = devserver.log_file(job_id)
    wait_for(lambda: log.exists() and log.stat().st_size > 50_000, 60, "secrets printed")

    _restart_dockerd()  # without live-restore this also ends the job: its stream is cut mid-secret
    if docker.from_env().info().get("LiveRestoreEnabled"):
        devserver.stop_job(job_id)

    assert worker.wait(120) == 0, worker.text()
    text = log.read_bytes()
    assert text.count(b"MY_TOKEN=***") > 1000
    for size in range(8, len(secret) + 1):  # no piece of the secret long enough to mean anything
        assert secret[:size].encode() not in text and secret[-size:].encode() not in text
    assert_no_containers(worker, docker_client)
