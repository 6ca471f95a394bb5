"""What a job may take: resource limits on its container, a capped log, and its secrets masked."""

from __future__ import annotations

import time

import pytest
from conftest import Scene, normal_job
from harness import wait_for

pytestmark = pytest.mark.docker


def test_job_container_has_the_configured_limits(scene: Scene) -> None:
    scene.backend.push(normal_job("lim-1", "echo limited; sleep 60"))
    worker = scene.worker({"JOB_CPUS": "0.5", "JOB_MEMORY": "64M", "JOB_PIDS_LIMIT": "50"})
    running = wait_for(lambda: (r := scene.backend.last("lim-1")) and r["status"] == "running" and r, 60, "lim-1")

    info = scene.docker.api.inspect_container(running["container_id"])
    host = info["HostConfig"]
    assert info["State"]["Running"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 * 1024**2
    assert host["PidsLimit"] == 50
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False
    assert host["NetworkMode"] not in ("host",) and host["PidMode"] == ""
    assert not host.get("CapAdd") and not host.get("Devices")
    assert [(m["Source"], m["Destination"]) for m in info["Mounts"]] == [(str(scene.shared), "/data")]

    scene.backend.request_stop("lim-1")
    assert scene.backend.wait_terminal("lim-1", 60)["status"] == "stopped"
    scene.assert_still_working(worker)


TWO_GIB = 2 * 1024**3


# Odd on purpose: the job writes 1 KiB lines, so the cap falls inside a write, never between two
# (see test_cap_reached_exactly_then_more_output for the boundary case).
CAP = 8_000_001


@pytest.mark.slow
def test_a_job_printing_2_gib_is_capped_and_keeps_running(scene: Scene) -> None:
    # 1 KiB lines: `yes` (2-byte lines) is throttled by dockerd's per-line log overhead to ~1.5 MB/s.
    script = f"yes \"$(head -c 1023 /dev/zero | tr '\\0' x)\" | head -c {TWO_GIB}; echo printed-all >&2; exit 0"
    scene.backend.push(normal_job("big-1", script))
    scene.mark("big-1", "after-1")
    started = time.monotonic()
    worker = scene.worker({"MAX_LOG_BYTES": str(CAP)})
    final = scene.backend.wait_terminal("big-1", 300)
    elapsed = time.monotonic() - started
    print(f"\n2 GiB job, MAX_LOG_BYTES={CAP}: {elapsed:.1f} s from worker start to `finished`")

    # Not killed at the cap: the job printed all 2 GiB and exited by itself.
    assert (final["status"], final.get("exit_code", 0)) == ("finished", 0), final
    log = (scene.shared / "jobs" / "big-1" / "logs" / "big-1.log").read_bytes()
    marker = f"[job-worker-agent] log reached {CAP} bytes; further output dropped\n".encode()
    assert log.count(b"further output dropped") == 1
    assert log.endswith(marker)
    assert CAP < len(log) <= CAP + len(marker) + 1
    assert log.startswith(b"x" * 1023 + b"\n")
    assert b"printed-all" not in log
    scene.assert_nothing_else_changed()
    scene.assert_still_working(worker)


def test_cap_reached_exactly_then_more_output_still_gets_the_marker(scene: Scene) -> None:
    cap = 1024 * 1024
    scene.backend.push(normal_job("edge-1", f"head -c {cap} /dev/zero | tr '\\0' x; sleep 1; echo later-output"))
    worker = scene.worker({"MAX_LOG_BYTES": str(cap)})
    assert scene.backend.wait_terminal("edge-1", 60)["status"] == "finished"
    log = (scene.shared / "jobs" / "edge-1" / "logs" / "edge-1.log").read_bytes()
    assert log.startswith(b"x" * cap) and b"later-output" not in log
    assert log.endswith(f"log reached {cap} bytes; further output dropped\n".encode()), log[cap:]
    scene.assert_still_working(worker)


def test_secrets_are_masked_also_split_across_writes(scene: Scene) -> None:
    secret, mine = "hunter2-very-secret-value", "plain-but-redacted"
    script = (
        'echo "whole: $API_TOKEN"; '
        "printf 'split: hunter2-very-'; sleep 1; printf 'secret-value\\n'; "
        'echo "mine: $MY_VAR"; echo "plain: $PLAIN"; sleep 0.5; echo "err: $DB_PASSWORD" >&2'
    )
    env = {"API_TOKEN": secret, "DB_PASSWORD": secret, "MY_VAR": mine, "PLAIN": "visible-value"}
    scene.backend.push({**normal_job("sec-1", script), "env": env})
    worker = scene.worker({"REDACT_VARS": "MY_VAR"})
    assert scene.backend.wait_terminal("sec-1", 60)["status"] == "finished"

    log = (scene.shared / "jobs" / "sec-1" / "logs" / "sec-1.log").read_text()
    assert secret not in log and mine not in log
    for piece in ("hunter2", "very-secret", "secret-value"):
        assert piece not in log, log
    for line in ("whole: ***\n", "err: ***\n", "split: ***\n", "mine: ***\n", "plain: visible-value\n"):
        assert line in log, log
    assert secret not in worker.text()
    scene.assert_still_working(worker)
