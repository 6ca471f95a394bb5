"""The orchestrator 1.0 protocol against the reference backend in both modes: fencing, setup, requeue, 404s."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import docker
import pytest
from harness import Devserver, WorkerProcess, sh, wait_for

pytestmark = pytest.mark.docker
Make = Callable[..., WorkerProcess]
IMAGE = "opeva-test-busybox:latest"


def statuses(devserver: Devserver, job_id: str) -> list[str]:
    return [entry["status"] for entry in devserver.job(job_id)["history"]]


def test_a_fenced_job_reports_setup_then_running_with_its_attempt(devserver: Devserver, make_worker: Make) -> None:
    job_id = devserver.submit(image=IMAGE, command=sh("echo fenced"))
    worker = make_worker().start("--exit-after-job")
    assert worker.wait(60) == 0, worker.text()

    record = devserver.job(job_id)
    assert statuses(devserver, job_id) == ["queued", "dispatched", "setup", "running", "finished"]
    assert (record["attempt_fencing_enabled"], record["attempt_number"]) == (True, 1)
    assert record["worker_version"] and "attempt_token" not in record
    state_files = list(worker.state_dir.rglob("*.json"))
    assert all(path.stat().st_mode & 0o077 == 0 for path in state_files)  # tokens sit in 0600 files


def test_the_2026_04_backend_gets_no_setup_and_no_error(
    make_devserver: Callable[..., Devserver], make_worker: Make
) -> None:
    server = make_devserver("--protocol", "2026-04")
    jobs = [server.submit(image=IMAGE, command=sh("echo old")) for _ in range(2)]
    worker = make_worker({"WORKER_MAX_ACTIVE_JOBS": "1"}, server=server).start()
    for job_id in jobs:
        server.wait_status(job_id, {"finished"})
        assert statuses(server, job_id) == ["queued", "dispatched", "running", "finished"]
    assert "ERROR" not in worker.text()
    assert worker.text().count("does not know the setup status") == 1  # remembered after the first refusal


def test_a_job_requeued_onto_another_worker_is_removed_here_and_finished_there(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    job_id = devserver.submit(image=IMAGE, command=sh("for i in $(seq 1 30); do echo tick $i; sleep 0.5; done"))
    first = make_worker({"STOP_GRACE_PERIOD": "1"}).start()
    devserver.wait_status(job_id, {"running"})
    second = make_worker()

    devserver.request(
        "POST", f"/ops/jobs/{job_id}/requeue", {"force": True, "preferred_host": second.worker_id, "require_host": True}
    )
    began = time.monotonic()
    wait_for(lambda: first.containers(docker_client) == [], 20, "the first worker's container removed")
    assert time.monotonic() - began < 1 + 1 + 5  # STATUS_POLL_INTERVAL + grace + slack
    second.start("--exit-after-job")

    assert second.wait(60) == 0, second.text()
    record = devserver.job(job_id)
    assert (record["status"], record["attempt_number"], record["worker_id"]) == ("finished", 2, second.worker_id)
    assert "no longer this worker's" in first.text()
    time.sleep(2)  # nothing of the first attempt is retried later
    assert devserver.job(job_id)["status"] == "finished"
    assert list((first.state_dir / "outbox").glob("*.json")) == []


class Proxy:
    """A proxy in front of the backend: HTML 404s to everything while `broken` is set, a 500 to every status
    update of `failing_job`; each status update it saw is in `statuses` (job id, status, the answer's code)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.url = ""
        self.broken = threading.Event()
        self.failing_job = ""
        self.statuses: list[tuple[str, str, int]] = []

    def answer(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes, str]:
        if self.broken.is_set():
            return 404, b"<html><body><h1>404 Not Found</h1>nginx</body></html>", "text/html"
        update = json.loads(body) if path == "/api/agent/job-status" and body else {}
        if update and update.get("job_id") == self.failing_job:
            code, answer, content_type = 500, b'{"detail": "Internal Server Error"}', "application/json"
        else:
            request = urllib.request.Request(self.backend + path, data=body, method=method)
            request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    code, answer, content_type = reply.status, reply.read(), reply.headers.get("Content-Type", "")
            except urllib.error.HTTPError as error:
                code, answer, content_type = error.code, error.read(), error.headers.get("Content-Type", "")
        if update:
            self.statuses.append((update["job_id"], update["status"], code))
        return code, answer, content_type


@pytest.fixture
def proxy(devserver: Devserver) -> Iterator[Proxy]:
    proxy = Proxy(devserver.url)

    class Handler(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            code, answer, content_type = proxy.answer(self.command, self.path, body)
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield proxy
    server.shutdown()
    server.server_close()


def test_html_404s_from_a_proxy_are_an_outage_not_a_lost_job(
    devserver: Devserver, make_worker: Make, proxy: Proxy
) -> None:
    job_id = devserver.submit(image=IMAGE, command=sh("sleep 6; echo survived"))
    worker = make_worker({"OPEVA_SERVER": proxy.url}).start("--exit-after-job")
    devserver.wait_status(job_id, {"running"})

    proxy.broken.set()  # 15 s of HTML 404s to every call, across the job's end
    time.sleep(15)
    assert devserver.status(job_id) == "running"
    proxy.broken.clear()

    assert worker.wait(60) == 0, worker.text()
    assert devserver.status(job_id) == "finished"
    assert "survived" in devserver.log_file(job_id).read_text()


def test_a_job_whose_statuses_keep_failing_holds_back_no_other_job(
    devserver: Devserver, make_worker: Make, proxy: Proxy
) -> None:
    stuck = devserver.submit(image=IMAGE, command=sh("echo stuck"))
    proxy.failing_job = stuck  # e.g. a backend bug for this one job: each of its statuses gets a 500
    worker = make_worker({"OPEVA_SERVER": proxy.url, "WORKER_MAX_ACTIVE_JOBS": "2"}).start()

    def tries_of_stuck() -> int:
        return sum(job_id == stuck for job_id, _, _ in proxy.statuses)

    # Backoff from 1 s, doubling: after 5 tries the next two come 8 to 16 s and 16 to 32 s later.
    wait_for(lambda: tries_of_stuck() >= 5, 60, "five tries of the stuck job's status")
    before = tries_of_stuck()
    other = devserver.submit(image=IMAGE, command=sh("echo other"))
    devserver.wait_status(other, {"finished"}, timeout=120)

    # Its setup, running and finished went out as they came, not one per retry of the stuck job.
    assert tries_of_stuck() - before <= 1, proxy.statuses
    proxy.failing_job = ""
    devserver.wait_status(stuck, {"finished"}, timeout=60)
    assert statuses(devserver, stuck) == ["queued", "dispatched", "setup", "running", "finished"], worker.text()
