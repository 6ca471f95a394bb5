from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import wait_for

from worker_agent import defaults
from worker_agent.backend.client import BackendClient
from worker_agent.backend.reporter import Reporter
from worker_agent.domain import JobRecord, LogPosition, Status, StatusUpdate
from worker_agent.health import Health
from worker_agent.state.atomic import write_json_atomic
from worker_agent.state.outbox import Outbox
from worker_agent.state.store import StateDir


def prepared_outbox(tmp_path: Path) -> Outbox:
    state = StateDir(tmp_path)
    state.prepare()
    return state.outbox()


def test_outbox_is_fifo_and_survives_a_new_instance(tmp_path: Path) -> None:
    outbox = prepared_outbox(tmp_path)
    outbox.put(StatusUpdate("j1", "running", "cid", "name"))
    outbox.put(StatusUpdate("j1", "finished", exit_code=0))
    again = StateDir(tmp_path).outbox()
    assert again.depth() == 2
    ((path, update),) = again.heads()
    assert update.status == "running"
    again.done(path)
    again.put(StatusUpdate("j2", "failed", error="x"))
    first = again.heads()[0]
    assert (first[1].job_id, first[1].status) == ("j1", "finished")
    assert again.depth() == 2


def test_outbox_heads_are_each_jobs_oldest_update_oldest_first(tmp_path: Path) -> None:
    outbox = prepared_outbox(tmp_path)
    outbox.put(StatusUpdate("j-2", Status.RUNNING))
    outbox.put(StatusUpdate("j1", Status.RUNNING))
    outbox.put(StatusUpdate("j-2", Status.FINISHED))
    outbox.put(StatusUpdate("j3", Status.FAILED))
    sorted((tmp_path / "outbox").glob("*.json"))[1].write_text("{")  # j1's only entry, torn

    heads = outbox.heads()

    assert [(update.job_id, update.status) for _, update in heads] == [("j-2", "running"), ("j3", "failed")]
    assert outbox.depth() == 3 and len(list((tmp_path / "outbox").glob("*.corrupt"))) == 1


def test_job_record_round_trip(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    state.save_job(JobRecord("j1", "cid", "name", LogPosition(1, 2, 3)))
    loaded = state.load_job("j1")
    assert loaded is not None and loaded.position == LogPosition(1, 2, 3)
    state.forget_job("j1")
    assert state.load_job("j1") is None


class ScriptedBackend:
    """Answers job-status like the backend after a stop request: 409 for finished, 200 for stopped."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []
        self.fail_first = 2

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/status/j1":
            return httpx.Response(200, json={"status": "stop_requested"})
        if self.fail_first:
            self.fail_first -= 1
            return httpx.Response(503)
        body = httpx.Request("POST", "/", content=request.content).read()
        import json

        update = json.loads(body)
        self.sent.append((update["status"], update.get("exit_code")))
        if update["status"] == "finished":
            return httpx.Response(409, json={"detail": "not allowed", "status": "stop_requested"})
        return httpx.Response(200, json={"ok": True})


def test_reporter_retries_and_turns_a_late_finish_into_stopped(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    backend = ScriptedBackend()
    client = BackendClient("http://backend", "w1", transport=httpx.MockTransport(backend.handle))
    reporter = Reporter(client, state.outbox(), Health())
    reporter._outage._initial = 0.01  # fast retries in a unit test
    stop = threading.Event()
    thread = threading.Thread(target=reporter.run, args=(stop,), daemon=True)
    thread.start()
    reporter.report(StatusUpdate("j1", "finished", exit_code=0))
    assert reporter.flush(10)
    stop.set()
    thread.join(5)
    assert backend.sent == [("finished", 0), ("stopped", 0)]


def test_an_unreadable_outbox_entry_is_kept_for_the_next_try(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outbox = prepared_outbox(tmp_path)
    outbox.put(StatusUpdate("j1", Status.FINISHED, exit_code=0))
    real_read = Path.read_text

    def emfile(self: Path, *args: Any, **kwargs: Any) -> str:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Path, "read_text", emfile)
    with pytest.raises(OSError):
        outbox.heads()
    monkeypatch.setattr(Path, "read_text", real_read)
    ((_, update),) = outbox.heads()
    assert update.status == Status.FINISHED


def test_a_corrupt_outbox_entry_is_moved_aside_never_deleted(tmp_path: Path) -> None:
    outbox = prepared_outbox(tmp_path)
    outbox.put(StatusUpdate("j1", Status.RUNNING))
    outbox.put(StatusUpdate("j1", Status.FINISHED))
    first = sorted((tmp_path / "outbox").glob("*.json"))[0]
    first.write_text('{"job_id": "j1", "sta')  # a torn file, as a full disk leaves it

    ((_, update),) = outbox.heads()

    assert update.status == Status.FINISHED
    assert first.with_name(first.name + ".corrupt").read_text() == '{"job_id": "j1", "sta'


def test_reporter_survives_emfile_and_still_delivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "BACKOFF_INITIAL_SECONDS", 0.01)
    outbox = prepared_outbox(tmp_path)
    outbox.put(StatusUpdate("j1", Status.FINISHED, exit_code=0))
    delivered: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        delivered.append(json.loads(request.content))
        return httpx.Response(200, json={"ok": True})

    client = BackendClient("http://backend", "w1", transport=httpx.MockTransport(answer))
    health = Health()
    reporter = Reporter(client, outbox, health)
    real_heads, failures = outbox.heads, [OSError(errno.EMFILE, "Too many open files")]

    def flaky_heads() -> Any:
        if failures:
            raise failures.pop()
        return real_heads()

    monkeypatch.setattr(outbox, "heads", flaky_heads)
    stop = threading.Event()
    thread = threading.Thread(target=reporter.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert reporter.flush(5.0)
    finally:
        stop.set()
        thread.join(5)
    assert [body["status"] for body in delivered] == ["finished"]


def test_atomic_writes_fsync_the_directory_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_json_atomic(tmp_path / "record.json", {"a": 1})
    assert synced == [False, True]  # the file's bytes, then the directory entry of the rename


class JobStatuses:
    """The backend's job-status endpoint: every request recorded, an answer per job as the test sets it."""

    def __init__(self) -> None:
        self.tried: list[tuple[str, str]] = []
        self.accepted: list[tuple[str, str]] = []
        self.answer: dict[str, int] = {}  # job id -> HTTP status; 200 for the others
        self.unreachable = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.tried.append((body["job_id"], body["status"]))
        if self.unreachable:
            raise httpx.ConnectError("connection refused", request=request)
        code = self.answer.get(body["job_id"], 200)
        if code == 200:
            self.accepted.append((body["job_id"], body["status"]))
        return httpx.Response(code, json={"ok": code == 200})


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reporter_with(
    tmp_path: Path, backend: JobStatuses, *updates: StatusUpdate, clock: Callable[[], float] | None = None
) -> Reporter:
    client = BackendClient("http://backend", "w1", transport=httpx.MockTransport(backend.handle))
    reporter = Reporter(client, prepared_outbox(tmp_path), Health(), clock=clock or Clock())
    for update in updates:
        reporter.report(update)
    return reporter


def test_a_job_whose_status_keeps_failing_holds_back_only_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend, clock = JobStatuses(), Clock()
    backend.answer["a"] = 500  # e.g. a backend bug for this one job
    updates = [StatusUpdate("a", Status.RUNNING), StatusUpdate("a", Status.FINISHED, exit_code=0)]
    reporter = reporter_with(tmp_path, backend, *updates, clock=clock)

    with caplog.at_level(logging.WARNING):
        first = reporter._turn()
        reporter.report(StatusUpdate("b", Status.RUNNING))
        reporter.report(StatusUpdate("b", Status.FINISHED, exit_code=0))
        waits = [reporter._turn() for _ in range(3)]  # before a's backoff is over

    assert backend.tried == [("a", "running"), ("b", "running"), ("b", "finished")]
    assert 0 < waits[-1] <= first  # waiting out a's backoff, not backing off further
    clock.now += first
    with caplog.at_level(logging.WARNING):
        again = reporter._turn()
    assert backend.tried[-1] == ("a", "running") and again > first  # a's retry, backed off further
    # One stretch of trouble: logged once, although b's statuses went through.
    assert len([r for r in caplog.records if "status delivery" in r.getMessage()]) == 1
    assert ("a", "finished") not in backend.tried  # a job's end never goes before its `running`
    kept = StateDir(tmp_path).outbox()  # a's statuses are on disk, for a restarted worker too
    assert [(update.job_id, update.status) for _, update in kept.heads()] == [("a", "running")]
    assert kept.depth() == 2

    del backend.answer["a"]
    clock.now += again
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            reporter._turn()

    assert backend.accepted[2:] == [("a", "running"), ("a", "finished")]
    assert kept.depth() == 0
    assert "is back" in caplog.records[-1].getMessage()


def test_a_new_status_is_sent_at_once_while_another_jobs_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivery thread itself: asleep in a's long backoff, it is woken by b's statuses."""
    monkeypatch.setattr(defaults, "BACKOFF_INITIAL_SECONDS", 120.0)  # a's first retry is a minute away or more
    backend = JobStatuses()
    backend.answer["a"] = 500
    reporter = reporter_with(tmp_path, backend, StatusUpdate("a", Status.RUNNING), clock=time.monotonic)
    thread = threading.Thread(target=reporter.run, args=(threading.Event(),), daemon=True)
    thread.start()
    wait_for(lambda: backend.tried, 10, "a's first try")

    reporter.report(StatusUpdate("b", Status.RUNNING))
    reporter.report(StatusUpdate("b", Status.FINISHED, exit_code=0))

    wait_for(lambda: len(backend.accepted) == 2, 10, "b's statuses, long before a's retry")
    assert backend.tried == [("a", "running"), ("b", "running"), ("b", "finished")]


@pytest.mark.parametrize("outage", ["unreachable", "503 for all"])
def test_a_whole_backend_outage_costs_one_request_per_backoff_period(
    tmp_path: Path, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend, clock = JobStatuses(), Clock()
    backend.unreachable = outage == "unreachable"
    backend.answer = {} if backend.unreachable else {"a": 503, "b": 503, "c": 503, "d": 503}
    jobs = [StatusUpdate(job_id, Status.RUNNING) for job_id in ("a", "b", "c")]
    reporter = reporter_with(tmp_path, backend, *jobs, clock=clock)

    delays = []
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            delays.append(reporter._turn())
            clock.now += delays[-1]

    assert [job_id for job_id, _ in backend.tried] == ["a", "b", "c", "a", "b"]  # one per period, in turn
    # Doubling from BACKOFF_INITIAL_SECONDS (jitter in [d/2, d)): the same backoff as with one job.
    assert all(later > earlier for earlier, later in itertools.pairwise(delays)) and delays[0] >= 0.5
    assert len([r for r in caplog.records if "status delivery" in r.getMessage()]) == 1  # logged once
    clock.now -= delays[-1] / 2
    reporter.report(StatusUpdate("d", Status.RUNNING))  # a job that ends meanwhile: one try, no further backoff
    assert 0 < reporter._turn() < delays[-1] and len(backend.tried) == 6  # the rest of the same wait
    backend.unreachable, backend.answer = False, {}
    clock.now += delays[-1]
    reporter._turn()
    assert sorted(backend.accepted) == [("a", "running"), ("b", "running"), ("c", "running"), ("d", "running")]
