"""One job's life through the real Worker and JobRun, against the fast doubles: every branch in milliseconds."""

from __future__ import annotations

from fakes import Script
from harness import wait_for
from rig import Rig

from worker_agent.domain import JobRecord
from worker_agent.state.store import StateDir


def test_a_job_runs_to_finished_with_its_whole_log(rig: Rig) -> None:
    rig.executor.default = Script(frames=[(1, b"one\n"), (2, b"err\n"), (1, b"two\n")])
    rig.backend.submit("j1")
    rig.start()

    rig.wait_status("j1", "finished")
    assert rig.backend.history["j1"] == ["queued", "dispatched", "setup", "running", "finished"]
    assert rig.log("j1").endswith(b"one\nerr\ntwo\n")
    assert rig.backend.jobs["j1"]["exit_code"] == 0
    wait_for(lambda: not rig.executor.running() and all(c.removed for c in rig.executor.containers.values()), 2, "rm")


def test_a_nonzero_exit_is_failed_with_its_code(rig: Rig) -> None:
    rig.executor.default = Script(exit_code=3)
    rig.backend.submit("j1")
    rig.start()

    rig.wait_status("j1", "failed")
    assert rig.backend.jobs["j1"]["exit_code"] == 3


def test_a_start_failure_is_failed_with_the_reason_in_status_and_log(rig: Rig) -> None:
    rig.executor.scripts["j1"] = Script(start_error="image not found")
    rig.backend.submit("j1")
    rig.start()

    rig.wait_status("j1", "failed")
    assert rig.backend.jobs["j1"]["error"] == "image not found"
    assert b"job could not start: image not found" in rig.log("j1")
    assert rig.backend.history["j1"][-3:] == ["dispatched", "setup", "failed"]
    # the record saved before the start goes once the failure is reported
    wait_for(lambda: StateDir(rig.settings.state_dir).jobs() == [], 3, "the record to go")


def test_an_invalid_payload_fails_its_job_and_one_without_job_id_is_skipped(rig: Rig) -> None:
    rig.backend.submit("j1", config_path="../etc/passwd")
    rig.backend.submit("j2", config_path="configs/missing.yaml")
    rig.backend.jobs["bad"] = {"job_id": "../x", "config_path": "c", "status": "queued"}
    rig.backend.history["bad"] = []
    rig.backend.queue.append("bad")
    rig.backend.submit("j3")
    rig.start()

    rig.wait_status("j3", "finished")
    assert rig.backend.status("j1") == "failed" and rig.backend.jobs["j1"]["error"].startswith("invalid_payload: ")
    assert "not found" in rig.backend.jobs["j2"]["error"]
    assert len(rig.executor.containers) == 1


def test_a_stop_request_stops_the_job_and_reports_stopped(rig: Rig) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    rig.backend.submit("j1")
    rig.start()
    rig.wait_status("j1", "running")

    rig.backend.set_status("j1", "stop_requested")

    rig.wait_status("j1", "stopped")
    (container,) = rig.executor.containers.values()
    assert container.stopped
    wait_for(lambda: container.removed, 3, "the container removed after the report")


def test_a_cancel_is_reported_canceled(rig: Rig) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    rig.backend.submit("j1")
    rig.start()
    rig.wait_status("j1", "running")

    rig.backend.set_status("j1", "canceled")

    wait_for(lambda: all(c.removed for c in rig.executor.containers.values()), 2, "container removed")
    assert rig.backend.status("j1") == "canceled"


def test_a_job_the_backend_gave_up_is_removed_and_nothing_reported(rig: Rig) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    rig.backend.submit("j1")
    rig.start()
    rig.wait_status("j1", "running")

    rig.backend.set_status("j1", "queued")  # requeued elsewhere by an operator

    wait_for(lambda: all(c.removed for c in rig.executor.containers.values()), 2, "container removed")
    assert rig.backend.history["j1"][-1] == "queued"
    assert rig.worker is not None and rig.worker.outbox.depth() == 0


def test_a_409_on_running_refresh_looks_at_the_status_at_once(rig: Rig) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    rig.backend.submit("j1")
    rig.start(status_poll_interval=30.0, running_refresh_interval=0.02)
    rig.wait_status("j1", "running")

    rig.backend.set_status("j1", "stop_requested")  # the refresh gets 409: running is not allowed from here

    rig.wait_status("j1", "stopped", timeout=3)


def test_job_timeout_stops_the_job_and_reports_failed_timeout(rig: Rig) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    rig.backend.submit("j1")
    rig.start(job_timeout=0.1)

    rig.wait_status("j1", "failed")
    assert rig.backend.jobs["j1"]["error"] == "timeout"


def test_a_vanished_container_fails_its_job(rig: Rig) -> None:
    rig.executor.default = Script(runs_until_stopped=True)
    rig.backend.submit("j1")
    rig.start()
    rig.wait_status("j1", "running")

    rig.executor.vanish("j1")

    rig.wait_status("j1", "failed")
    assert "container lost" in rig.backend.jobs["j1"]["error"]


def test_output_printed_while_the_stream_follows_lands_in_order(rig: Rig) -> None:
    rig.executor.default = Script(frames=[], runs_until_stopped=True)
    rig.backend.submit("j1")
    rig.start()
    rig.wait_status("j1", "running")

    for index in range(50):
        rig.executor.emit("j1", 1 + index % 2, f"line {index}\n".encode())
    rig.executor.exit("j1", 0)

    rig.wait_status("j1", "finished")
    assert rig.log("j1").endswith(b"".join(f"line {index}\n".encode() for index in range(50)))


def test_the_log_says_which_secrets_are_too_short_to_mask(rig: Rig) -> None:
    rig.executor.default = Script(frames=[(1, b"token is abc, key is long-enough\n")])
    rig.backend.submit("j1", env={"API_TOKEN": "abc", "MY_KEY": "long-enough", "PLAIN": "x"})
    rig.start()

    rig.wait_status("j1", "finished")
    log = rig.log("j1")
    assert log.startswith(b"[job-worker-agent] not masked in this log: API_TOKEN (values of 1-3 characters")
    assert log.endswith(b"token is abc, key is ***\n")


def test_a_start_that_finds_the_executor_gone_waits_for_it_instead_of_failing(rig: Rig) -> None:
    rig.executor.unreachable_starts = 2  # dockerd restarting right after the loop's own check
    rig.backend.submit("j1")
    rig.start()

    rig.wait_status("j1", "finished")
    assert "failed" not in rig.backend.history["j1"]
    assert rig.log("j1").count(b"the executor is unreachable") == 2


def test_a_nonzero_exit_says_so_in_error(rig: Rig) -> None:
    rig.executor.default = Script(exit_code=3)
    rig.backend.submit("j1")
    rig.start()

    rig.wait_status("j1", "failed")
    job = rig.backend.jobs["j1"]
    assert (job["error"], job["error_code"]) == ("the job exited with code 3", "nonzero_exit")


def _record_before_start(rig: Rig, job_id: str, token: str) -> StateDir:
    """What a worker killed between creating the job's container and recording it leaves on disk."""
    state = StateDir(rig.settings.state_dir)
    state.prepare()
    state.save_job(JobRecord(job_id, None, f"opeva-job-{job_id}", attempt_number=1, attempt_token=token))
    return state


def test_a_container_created_just_before_the_worker_died_keeps_its_attempt(rig: Rig) -> None:
    _record_before_start(rig, "a", "token-a")
    rig.backend.submit("a")
    rig.backend.queue.remove("a")
    rig.backend.set_status("a", "setup")
    rig.executor.adopt_existing("a", "w1")
    rig.start()

    wait_for(lambda: rig.worker is not None and rig.worker.heartbeat_info()["active_job_count"] == 1, 3, "adopted")
    rig.executor.exit("a", 0)
    rig.wait_status("a", "finished")
    assert [body.get("attempt_token") for body in rig.backend.reports["a"]] == ["token-a", "token-a"]


def test_a_job_accepted_but_never_created_is_handed_back_at_restart(rig: Rig) -> None:
    state = _record_before_start(rig, "b", "token-b")
    rig.backend.submit("b")
    rig.backend.queue.remove("b")
    rig.backend.set_status("b", "setup")
    rig.start()

    rig.wait_status("b", "queued")
    (body,) = rig.backend.reports["b"]
    assert (body["error_code"], body["attempt_token"]) == ("worker_shutdown", "token-b")
    wait_for(lambda: state.jobs() == [], 3, "the record to go")
