from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from worker_agent import defaults
from worker_agent.backend.client import BackendClient
from worker_agent.backend.reporter import Reporter
from worker_agent.domain import JobRecord, LogPosition, Status, StatusUpdate
from worker_agent.health import Health
from worker_agent.state.atomic import write_json_atomic
from worker_agent.state.store import StateDir


def test_outbox_is_fifo_and_survives_a_new_instance(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    outbox = state.outbox()
    outbox.put(StatusUpdate("j1", "running", "cid", "name"))
    outbox.put(StatusUpdate("j1", "finished", exit_code=0))
    again = StateDir(tmp_path).outbox()
    assert again.depth() == 2
    item = again.peek()
    assert item is not None and item[1].status == "running"
    again.done(item[0])
    again.put(StatusUpdate("j2", "failed", error="x"))
    first = again.peek()
    assert first is not None and (first[1].job_id, first[1].status) == ("j1", "finished")
    assert again.depth() == 2


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
    state = StateDir(tmp_path)
    state.prepare()
    outbox = state.outbox()
    outbox.put(StatusUpdate("j1", Status.FINISHED, exit_code=0))
    real_read = Path.read_text

    def emfile(self: Path, *args: Any, **kwargs: Any) -> str:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Path, "read_text", emfile)
    with pytest.raises(OSError):
        outbox.peek()
    monkeypatch.setattr(Path, "read_text", real_read)
    item = outbox.peek()
    assert item is not None and item[1].status == Status.FINISHED


def test_a_corrupt_outbox_entry_is_moved_aside_never_deleted(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    outbox = state.outbox()
    outbox.put(StatusUpdate("j1", Status.RUNNING))
    outbox.put(StatusUpdate("j1", Status.FINISHED))
    first = sorted((tmp_path / "outbox").glob("*.json"))[0]
    first.write_text('{"job_id": "j1", "sta')  # a torn file, as a full disk leaves it

    item = outbox.peek()

    assert item is not None and item[1].status == Status.FINISHED
    assert first.with_name(first.name + ".corrupt").read_text() == '{"job_id": "j1", "sta'


def test_reporter_survives_emfile_and_still_delivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "BACKOFF_INITIAL_SECONDS", 0.01)
    state = StateDir(tmp_path)
    state.prepare()
    outbox = state.outbox()
    outbox.put(StatusUpdate("j1", Status.FINISHED, exit_code=0))
    delivered: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        delivered.append(json.loads(request.content))
        return httpx.Response(200, json={"ok": True})

    client = BackendClient("http://backend", "w1", transport=httpx.MockTransport(answer))
    health = Health()
    reporter = Reporter(client, outbox, health)
    real_peek, failures = outbox.peek, [OSError(errno.EMFILE, "Too many open files")]

    def flaky_peek() -> Any:
        if failures:
            raise failures.pop()
        return real_peek()

    monkeypatch.setattr(outbox, "peek", flaky_peek)
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
