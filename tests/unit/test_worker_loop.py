"""The loop around the jobs: slots, drain, shutdown, re-adoption, outages, against the fast doubles."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
from fakes import Script
from harness import wait_for
from rig import Rig

from worker_agent.domain import JobHandle, JobSpec


def test_never_more_jobs_at_once_than_slots_and_all_finish(rig: Rig) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    for index in range(10):
        rig.backend.submit(f"j{index}")
    rig.start(max_active_jobs=3)

    for _ in range(4):  # finish whatever runs, three at a time, until the queue is empty
        wait_for(lambda: len(rig.executor.running()) == min(3, 10 - _finished(rig)), 3, "slots filled")
        for container in rig.executor.running():
            rig.executor.exit(container.spec.job_id, 0)
        if _finished(rig) == 10:
            break
    wait_for(lambda: _finished(rig) == 10, 5, "all finished")
    assert rig.executor.max_running == 3


def _finished(rig: Rig) -> int:
    return sum(1 for job_id in rig.backend.jobs if rig.backend.status(job_id) == "finished")


def test_a_stop_request_hits_only_its_job(rig: Rig) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    rig.run_jobs("abc", "running", max_active_jobs=3)

    rig.backend.set_status("b", "stop_requested")

    rig.wait_status("b", "stopped")
    assert rig.backend.status("a") == rig.backend.status("c") == "running"
    assert sorted(c.spec.job_id for c in rig.executor.running()) == ["a", "c"]


def test_heartbeat_lists_every_active_job(rig: Rig) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    rig.backend.submit("a")
    rig.backend.submit("b")
    rig.start(max_active_jobs=2)
    rig.wait_status("a", "running")
    rig.wait_status("b", "running")

    def both_running() -> dict[str, object] | None:
        info = rig.backend.heartbeats[-1]
        return info if [job["status"] for job in info["active_jobs"]] == ["running", "running"] else None

    info = wait_for(both_running, 2, "a heartbeat with both jobs running")
    assert sorted(info["active_job_ids"]) == ["a", "b"]  # type: ignore[call-overload]
    assert info["max_active_jobs"] == 2 and info["active_job_count"] == 2
    assert all(job["container_name"] and job["started_at"] for job in info["active_jobs"])


def test_jobs_that_follow_each_other_share_heartbeats(rig: Rig) -> None:
    rig.run_jobs("abcd", "finished", heartbeat_interval=30)
    wait_for(lambda: rig.backend.heartbeats[-1]["last_job_id"] == "d", 3, "a heartbeat after the last job")

    # The one at start, then at most one a second however many jobs start and end (each asks for one at once).
    assert len(rig.backend.heartbeats) <= 3


def test_shutdown_detaches_every_job_and_the_next_start_readopts_them(rig: Rig) -> None:
    rig.executor.default = Script(frames=[(1, b"before\n")], runs_until_stopped=True)
    worker = rig.run_jobs("abc", "running", max_active_jobs=3)

    worker.shutdown()
    rig.wait_exit(timeout=5)
    assert len(rig.executor.running()) == 3  # left running for the next start

    for job_id in ("a", "b", "c"):
        rig.executor.emit(job_id, 1, b"after\n")
    rig.start()  # one slot: all three are taken back anyway
    for job_id in ("a", "b", "c"):
        wait_for(lambda job_id=job_id: rig.log(job_id).count(b"after\n") == 1, 3, "caught up")
        rig.executor.exit(job_id, 0)
    for job_id in ("a", "b", "c"):
        rig.wait_status(job_id, "finished")
        assert rig.log(job_id).endswith(b"before\nafter\n")
        assert rig.log(job_id).count(b"before\n") == 1


def test_more_owned_jobs_than_slots_take_no_new_job_until_below_the_limit(rig: Rig) -> None:
    for job_id in ("old1", "old2"):
        rig.backend.submit(job_id)
        rig.backend.queue.remove(job_id)
        rig.backend.set_status(job_id, "running")
        rig.executor.adopt_existing(job_id, "w1")
    rig.backend.submit("new")
    rig.start(max_active_jobs=1)

    wait_for(lambda: rig.worker is not None and len(rig.worker.heartbeat_info()["active_jobs"]) == 2, 2, "adopted")
    rig.executor.exit("old1", 0)
    rig.wait_status("old1", "finished")
    assert rig.backend.status("new") == "queued"  # still one slot busy with old2
    rig.executor.exit("old2", 0)
    rig.wait_status("new", "finished")


def test_drain_waits_for_the_jobs_in_hand_then_exits(rig: Rig) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    for job_id in ("a", "b", "c"):
        rig.backend.submit(job_id)
    worker = rig.start(max_active_jobs=2)
    rig.wait_status("a", "running")
    rig.wait_status("b", "running")

    worker.drain()
    rig.executor.exit("a", 0)
    rig.wait_status("a", "finished")
    assert rig.exit_code is None and rig.backend.status("c") == "queued"
    rig.executor.exit("b", 1)
    rig.wait_exit()
    assert (rig.exit_code, rig.backend.status("b"), rig.backend.status("c")) == (0, "failed", "queued")


def test_exit_after_job_takes_one_job_and_leaves_once_it_is_delivered(rig: Rig) -> None:
    rig.backend.submit("a")
    rig.backend.submit("b")
    rig.start(exit_after_job=True, max_active_jobs=2)

    rig.wait_exit()
    assert (rig.backend.status("a"), rig.backend.status("b")) == ("finished", "queued")


def test_no_job_is_taken_while_the_executor_is_down(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.executor.available = False
    rig.backend.submit("a")
    with caplog.at_level(logging.WARNING):
        rig.start()
        wait_for(lambda: len(rig.backend.heartbeats) >= 2, 2, "heartbeats")
        info = rig.backend.heartbeats[-1]
        assert info["executor_ok"] is False and rig.backend.status("a") == "queued"

        rig.executor.available = True
        rig.wait_status("a", "finished")
    down_lines = [r for r in caplog.records if "unavailable" in r.getMessage() and "executor" in r.getMessage()]
    assert len(down_lines) == 1  # logged once per outage, however many retries


def test_jobs_back_to_back_ask_the_executor_if_it_is_up_once_per_poll_interval(rig: Rig) -> None:
    rig.run_jobs("abc", "finished", poll_interval=30)

    assert rig.executor.pings == 1  # the jobs' own calls went through just before each next-job


def test_a_job_whose_end_the_executor_just_told_stands_for_a_ping(rig: Rig) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    for job_id in "ab":
        rig.backend.submit(job_id)
    rig.start(poll_interval=0.5)  # a's end to the next turn of the loop well within it, even on a busy runner
    rig.wait_status("a", "running")
    time.sleep(0.6)  # the last ping is older than the poll interval now
    pings = rig.executor.pings
    rig.executor.exit("a", 0)
    rig.wait_status("b", "running")

    assert rig.executor.pings == pings  # the exit check of a answered just before the next-job that gave b


def test_docker_gone_right_after_a_ping_is_asked_again_not_hammered(rig: Rig) -> None:
    ping, calls = rig.executor.ping, []

    def ping_then_go_away() -> str:
        version = ping()
        rig.executor.available = False  # dockerd restarts just after answering
        return version

    rig.executor.ping = ping_then_go_away  # type: ignore[method-assign]
    find_owned = rig.executor.find_owned
    rig.executor.find_owned = lambda worker_id: (calls.append(1), find_owned(worker_id))[-1]  # type: ignore[method-assign]
    rig.start(poll_interval=30)
    wait_for(lambda: rig.executor.pings >= 2, 2, "a second ping")

    assert len(calls) == 1  # the failed re-adoption voids the last answer: the next turn pings (and backs off)


def slow_removal(rig: Rig) -> threading.Event:
    """Container removal waits until the returned event is set."""
    release, remove = threading.Event(), rig.executor.remove
    rig.executor.remove = lambda job: (release.wait(5), remove(job))[-1]
    return release


def test_the_next_job_starts_while_the_last_ones_container_is_being_removed(rig: Rig) -> None:
    release = slow_removal(rig)
    rig.backend.submit("a")
    rig.backend.submit("b")
    rig.start()

    rig.wait_status("b", "finished")
    assert not any(container.removed for container in rig.executor.containers.values())
    release.set()
    wait_for(lambda: all(c.removed for c in rig.executor.containers.values()), 2, "both containers removed")


def test_the_next_job_is_taken_once_the_last_ones_exit_code_is_known(rig: Rig) -> None:
    b_started, start, end_details = threading.Event(), rig.executor.start, rig.executor.end_details

    def start_and_tell(spec: JobSpec, progress: Callable[[str], None], cancel: threading.Event) -> JobHandle:
        handle = start(spec, progress, cancel)
        if spec.job_id == "b":
            b_started.set()
        return handle

    rig.executor.start = start_and_tell  # type: ignore[method-assign]
    # a's end is recorded and reported only once b started: a slot held until then would never let b in.
    rig.executor.end_details = lambda job: (b_started.wait(5), end_details(job))[-1]  # type: ignore[method-assign]
    rig.backend.submit("a")
    rig.backend.submit("b")
    rig.start()

    rig.wait_status("a", "finished")
    assert b_started.is_set()


def test_a_planned_exit_waits_until_the_last_container_is_removed(rig: Rig) -> None:
    release = slow_removal(rig)
    rig.backend.submit("a")
    rig.start(exit_after_job=True)
    rig.wait_status("a", "finished")
    threading.Timer(0.2, release.set).start()

    rig.wait_exit()
    assert [container.removed for container in rig.executor.containers.values()] == [True]


def test_a_backend_outage_is_waited_out_and_the_status_delivered(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    rig.backend.submit("a")
    rig.start()
    rig.wait_status("a", "running")

    with caplog.at_level(logging.WARNING):
        rig.backend.down = True
        since = len(rig.backend.calls)
        rig.executor.exit("a", 0)
        tried = "POST /api/agent/job-status"
        wait_for(lambda: rig.backend.calls[since:].count(tried) >= 3, 2, "the status retried during the outage")
        rig.backend.down = False
        rig.wait_status("a", "finished")
        delivery = wait_for(
            lambda: (
                (lines := [r.getMessage() for r in caplog.records if "status delivery" in r.getMessage()])[1:] and lines
            ),
            2,
            "the outage's end logged",
        )
    assert len(delivery) == 2 and "unavailable" in delivery[0] and "is back" in delivery[1]


def test_sigterm_during_an_image_pull_hands_the_job_back_and_starts_nothing(rig: Rig) -> None:
    rig.executor.block_start.set()
    rig.backend.submit("a")
    worker = rig.start()
    rig.wait_status("a", "setup")
    wait_for(lambda: rig.worker is not None and rig.worker.heartbeat_info()["active_job_count"] == 1, 2, "pulling")

    worker.shutdown()

    rig.wait_exit()
    assert rig.backend.status("a") == "queued" and rig.executor.containers == {}
    assert rig.backend.jobs["a"]["error_code"] == "worker_shutdown"


def test_a_job_handed_back_to_a_backend_that_refuses_queued_is_failed_with_the_reason(rig: Rig) -> None:
    rig.executor.block_start.set()
    rig.backend.refused["queued"] = True
    rig.backend.submit("a")
    worker = rig.start()
    wait_for(lambda: rig.worker is not None and rig.worker.heartbeat_info()["active_job_count"] == 1, 2, "pulling")

    worker.shutdown()

    rig.wait_exit()
    assert (rig.backend.status("a"), rig.backend.jobs["a"]["error_code"]) == ("failed", "worker_shutdown")
