from __future__ import annotations

import threading
from pathlib import Path

import httpx

from worker_agent.backend import BackendClient, StatusUpdate
from worker_agent.reporter import Reporter
from worker_agent.state import JobRecord, LogPosition, StateDir


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
    reporter = Reporter(client, state.outbox())
    reporter._outage._initial = 0.01  # fast retries in a unit test
    stop = threading.Event()
    thread = threading.Thread(target=reporter.run, args=(stop,), daemon=True)
    thread.start()
    reporter.report(StatusUpdate("j1", "finished", exit_code=0))
    assert reporter.flush(10)
    stop.set()
    thread.join(5)
    assert backend.sent == [("finished", 0), ("stopped", 0)]
