"""`job-worker-agent status`: a real state dir (StateDir, Outbox, JobRecord) and a tiny loopback HTTP server
standing in for the worker's /readyz and /metrics; the worker-down case; nothing in the state dir changes."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from worker_agent import cli
from worker_agent.domain import JobRecord, LogPosition, Status, StatusUpdate
from worker_agent.ops import metrics, status
from worker_agent.state.store import StateDir

METRICS_TEXT = """\
# HELP opeva_worker_last_heartbeat_timestamp_seconds Unix time of the last acknowledged heartbeat.
# TYPE opeva_worker_last_heartbeat_timestamp_seconds gauge
opeva_worker_last_heartbeat_timestamp_seconds {beat}
# TYPE opeva_worker_outbox_depth gauge
opeva_worker_outbox_depth 1.0
# TYPE opeva_worker_docker_up gauge
opeva_worker_docker_up 1.0
# TYPE opeva_worker_share_healthy gauge
opeva_worker_share_healthy {share}
# TYPE opeva_worker_active_jobs gauge
opeva_worker_active_jobs 1.0
# TYPE opeva_worker_slots gauge
opeva_worker_slots 2.0
# TYPE opeva_worker_jobs_ended counter
opeva_worker_jobs_ended_total{{status="finished"}} 3.0
"""


@dataclass
class FakeEndpoint:
    """What the stand-in worker answers: path -> (HTTP code, content type, body)."""

    answers: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    port: int = 0

    def ready(self, beat_age: float = 12.0) -> None:
        self.answers["/readyz"] = (200, "application/json", b'{"status": "ready"}\n')
        self.metrics(beat=time.time() - beat_age, share=1)

    def unready(self, *problems: str) -> None:
        body = {"status": "unready", "reason": "; ".join(problems), "problems": list(problems)}
        self.answers["/readyz"] = (503, "application/json", json.dumps(body).encode())
        self.metrics(beat=0, share=0)

    def metrics(self, beat: float, share: int) -> None:
        text = METRICS_TEXT.format(beat=beat, share=share).encode()
        self.answers["/metrics"] = (200, "text/plain; version=0.0.4; charset=utf-8", text)


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    fake = FakeEndpoint()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, content_type, body = fake.answers.get(self.path, (404, "text/plain", b"not found"))
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: the worker is not running."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Host:
    state_dir: Path
    shared_dir: Path

    def record(self, job_id: str, age: float, file_size: int = 0) -> JobRecord:
        record = JobRecord(job_id, f"cid-{job_id}", f"opeva-{job_id}", LogPosition(5, 1, file_size))
        record.started_at = time.time() - age
        StateDir(self.state_dir).save_job(record)
        return record

    def report(self, *updates: StatusUpdate) -> None:
        outbox = StateDir(self.state_dir).outbox()
        for update in updates:
            outbox.put(update)

    def job_log(self, job_id: str, size: int) -> None:
        folder = self.shared_dir / "jobs" / job_id / "logs"
        folder.mkdir(parents=True)
        (folder / f"{job_id}.log").write_bytes(b"x" * size)

    def args(self, port: int, *extra: str) -> list[str]:
        return [
            "status",
            "--worker-id",
            "w1",
            "--state-dir",
            str(self.state_dir),
            "--shared-dir",
            str(self.shared_dir),
            "--metrics-port",
            str(port),
            *extra,
        ]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    made = Host(tmp_path / "state", tmp_path / "shared")
    StateDir(made.state_dir).prepare()  # what the worker did when it started
    made.shared_dir.mkdir()
    return made


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and mtime: proof that a read-only command changed nothing."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns) for path in root.rglob("*")}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().out


# --- a worker that answers ---


def test_ready_worker_shows_its_job_outbox_and_health(
    host: Host, endpoint: FakeEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint.ready(beat_age=12)
    host.record("job-123", age=2 * 3600 + 3 * 60 + 5)
    host.job_log("job-123", 1258291)

    code, out = run(host.args(endpoint.port), capsys)

    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"worker w1 (state {host.state_dir}, metrics :{endpoint.port}): ready, 1 of 2 slot(s) busy"
    assert lines[1].split() == ["JOB", "AGE", "LOG", "BYTES", "PENDING", "STATUS", "CONTAINER"]
    assert lines[2].split() == ["job-123", "2h03m", "1.2", "MiB", "none", "pending", "opeva-job-123"]
    assert lines[3] == "outbox: 0 pending"
    assert lines[4] in (
        "health: docker ok, share ok, heartbeat 12s ago",
        "health: docker ok, share ok, heartbeat 13s ago",
    )


def test_pending_statuses_show_per_job_newest_first_and_ended_jobs_too(
    host: Host, endpoint: FakeEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint.ready()
    host.record("job-a", age=30)
    host.report(
        StatusUpdate("job-old", Status.RUNNING, "cid-old", "opeva-job-old"),
        StatusUpdate("job-a", Status.RUNNING, "cid-a", "opeva-job-a"),
        StatusUpdate("job-old", Status.FINISHED, "cid-old", "opeva-job-old", exit_code=0),
    )

    code, out = run(host.args(endpoint.port), capsys)

    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[2:4]}
    assert rows["job-a"].split()[1:] == ["30s", "0", "B", "(record)", "running", "opeva-job-a"]
    # job-old has no record any more (it ended): only its undelivered statuses remain
    assert rows["job-old"].split()[1:] == ["-", "-", "finished", "(+1", "older)", "opeva-job-old"]
    assert "(AGE -: no job record left" in out
    assert "outbox: 3 pending, oldest 0s old" in out


def test_log_bytes_fall_back_to_the_record_when_the_share_has_no_log(
    host: Host, endpoint: FakeEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint.ready()
    host.record("job-1", age=5, file_size=4096)

    _, out = run(host.args(endpoint.port), capsys)

    assert "4.0 KiB (record)" in out


def test_unready_worker_exits_1_and_says_why(
    host: Host, endpoint: FakeEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint.unready("shared directory: /x does not exist", "no heartbeat acknowledged by the backend yet")

    code, out = run(host.args(endpoint.port), capsys)

    assert code == 1
    lines = out.splitlines()
    assert lines[0].endswith(": NOT READY, 1 of 2 slot(s) busy")
    assert lines[1:3] == [
        "  why: shared directory: /x does not exist",
        "  why: no heartbeat acknowledged by the backend yet",
    ]
    assert lines[-1] == "health: docker ok, share DOWN, no heartbeat acknowledged yet"


def test_something_else_on_the_port_is_not_ready(
    host: Host, endpoint: FakeEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(host.args(endpoint.port), capsys)  # answers 404 everywhere

    assert code == 1
    assert "why: /readyz answered HTTP 404 (is this port the worker's?)" in out


def test_json_for_scripts(host: Host, endpoint: FakeEndpoint, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint.ready(beat_age=12)
    host.record("job-123", age=60)
    host.job_log("job-123", 10)
    host.report(StatusUpdate("job-123", Status.RUNNING, "cid-job-123", "opeva-job-123"))

    code, out = run(host.args(endpoint.port, "--json"), capsys)

    assert code == 0
    data = json.loads(out)
    assert data["worker_id"] == "w1" and data["metrics_port"] == endpoint.port
    assert data["worker"] == {"answering": True, "ready": True, "problems": [], "error": None}
    [job] = data["jobs"]
    assert job["job_id"] == "job-123" and job["recorded"] is True
    assert (job["log_bytes"], job["log_bytes_from"]) == (10, "share")
    assert job["pending_statuses"] == ["running"] and job["container_id"] == "cid-job-123"
    assert 59 <= job["age_seconds"] < 70
    assert data["outbox_pending"] == 1
    health = data["health"]
    assert (health["docker_up"], health["share_healthy"], health["active_jobs"], health["slots"]) == (True, True, 1, 2)
    assert 11 <= health["last_heartbeat_age_seconds"] < 20


# --- the worker is down: say so, show the state dir, change nothing ---


def test_worker_down_exits_1_and_still_lists_the_state_dir_unchanged(
    host: Host, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    host.record("job-left", age=600)
    host.report(StatusUpdate("job-done", Status.FINISHED, exit_code=0))
    corrupt = host.state_dir / "outbox" / "000000000009-job-bad.json"
    corrupt.write_text("{not json")  # Outbox.heads would move this aside; status must not
    before = snapshot(host.state_dir)

    code, out = run(host.args(closed_port), capsys)

    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"worker w1 (state {host.state_dir}, metrics :{closed_port}): not answering - ")
    assert f"metrics endpoint 127.0.0.1:{closed_port} unreachable" in lines[0]
    assert lines[0].endswith("; showing the state dir only")
    assert lines[2].split()[:2] == ["job-left", "10m00s"]
    assert lines[3].split()[0] == "job-done"
    assert "outbox: 1 pending, oldest 0s old, 1 unreadable" in out
    assert lines[-1] == "health: unknown (the worker is not answering)"
    assert snapshot(host.state_dir) == before


def test_missing_state_dir_is_reported_and_not_created(
    tmp_path: Path, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "never"

    code, out = run(["status", "--state-dir", str(state_dir), "--metrics-port", str(closed_port)], capsys)

    assert code == 1
    assert f"jobs: none - {state_dir} does not exist" in out
    assert not state_dir.exists()


def test_corrupt_entries_set_aside_by_the_worker_are_pointed_out(
    host: Host, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    (host.state_dir / "outbox" / "000000000001-j.json.corrupt").write_text("x")

    _, out = run(host.args(closed_port), capsys)

    assert f"outbox: 0 pending, 1 corrupt entry set aside ({host.state_dir}/outbox/*.corrupt)" in out
    assert "jobs: none recorded" in out


def test_a_folder_it_may_not_read_is_not_shown_as_empty(
    host: Host, closed_port: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    host.record("job-1", age=5)
    jobs, listdir = host.state_dir / "jobs", os.listdir

    def refuse_jobs(path: str | os.PathLike[str]) -> list[str]:
        if Path(path) == jobs:  # what a user other than the worker's gets (root reads anything, so simulated)
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refuse_jobs)
    _, out = run(host.args(closed_port), capsys)

    assert f"jobs: unknown - cannot read {jobs}: Permission denied" in out
    assert "outbox: unknown (the state dir could not be read)" in out


def test_a_corrupt_job_record_is_counted(host: Host, closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    host.record("job-1", age=5)
    (host.state_dir / "jobs" / "job-2.json").write_text("{")

    _, out = run(host.args(closed_port), capsys)

    assert "job-1" in out and "jobs: 1 record(s) unreadable" in out


def test_endpoint_off_is_said(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(host.args(0), capsys)

    assert code == 1
    assert "not answering - the endpoint is off (METRICS_PORT=0)" in out.splitlines()[0]


def test_bad_setting_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--metrics-port", "99999"]) == cli.EXIT_CONFIG
    assert "--metrics-port" in capsys.readouterr().err


def test_json_flag_belongs_to_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--json"])
    assert "--json goes with the status command" in capsys.readouterr().err


# --- the pieces ---


def test_the_metric_names_read_are_the_workers() -> None:
    assert metrics.LAST_HEARTBEAT is not None  # imported: the worker's metrics are in the default registry
    exposed = {sample.name for family in REGISTRY.collect() for sample in family.samples}
    assert set(status.METRIC_NAMES) <= exposed


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"), (7385, "2h03m"), (90000, "1d01h")],
)
def test_format_age(seconds: float, text: str) -> None:
    assert status.format_age(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1258291, "1.2 MiB"), (5 * 1024**3, "5.0 GiB")],
)
def test_format_bytes(size: int, text: str) -> None:
    assert status.format_bytes(size) == text
