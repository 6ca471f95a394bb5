"""A hostile backend: a tiny HTTP server in the test process that speaks docs/contract.md's agent endpoints,
answers next-job with whatever the test queued (crafted payloads, garbage, slow or huge answers), and
records every job-status, heartbeat and Authorization header. Workers are real processes, jobs run in
the real dockerd."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest
from harness import BUSYBOX_IMAGE, TERMINAL, WorkerProcess, wait_for


@dataclass
class Raw:
    """A crafted next-job answer: any status and body, optionally late or dripped byte by byte."""

    body: bytes = b""
    status: int = 200
    delay: float = 0.0
    drip_seconds: float = 0.0  # > 0: send the body one byte at a time, this long between bytes


class HostileBackend:
    def __init__(self, root: Path) -> None:
        self.shared = root / "shared"
        (self.shared / "configs").mkdir(parents=True)
        (self.shared / "jobs").mkdir()
        (self.shared / "configs" / "test.yaml").write_text("simulation: test\n")
        self._answers: list[Any] = []
        self._lock = threading.Lock()
        self.statuses: list[dict[str, Any]] = []
        self.heartbeats: list[float] = []
        self.authorization: list[str | None] = []
        self.next_job_calls = 0
        self._stop_requested: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HostileBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def push(self, *answers: Any) -> None:
        """Queue next-job answers: a dict is sent as a JSON payload, a Raw as crafted, None as 204; then 204s."""
        with self._lock:
            self._answers.extend(answers)

    def request_stop(self, job_id: str) -> None:
        self._stop_requested.add(job_id)

    def reports(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for body in self.statuses if body.get("job_id") == job_id]

    def last(self, job_id: str) -> dict[str, Any] | None:
        reports = self.reports(job_id)
        return reports[-1] if reports else None

    def wait_terminal(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        def terminal() -> dict[str, Any] | None:
            last = self.last(job_id)
            return last if last and last["status"] in TERMINAL else None

        return dict(wait_for(terminal, timeout, f"a terminal status for {job_id}"))

    def queue_empty(self) -> bool:
        with self._lock:
            return not self._answers

    # --- called by the handler ---

    def _next(self) -> Any:
        with self._lock:
            self.next_job_calls += 1
            return self._answers.pop(0) if self._answers else None

    def _status_of(self, job_id: str) -> str:
        if job_id in self._stop_requested:
            return "stop_requested"
        last = self.last(job_id)
        return str(last["status"]) if last else "dispatched"


def _handler(backend: HostileBackend) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            backend.authorization.append(self.headers.get("Authorization"))
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/api/agent/next-job":
                self._next_job()
            elif self.path == "/api/agent/job-status":
                with backend._lock:
                    backend.statuses.append(body)
                self._send(200, b'{"ok": true}')
            elif self.path == "/api/agent/heartbeat":
                backend.heartbeats.append(time.monotonic())
                self._send(200, b'{"ok": true}')
            else:
                self._send(404, b"{}")

        def do_GET(self) -> None:
            backend.authorization.append(self.headers.get("Authorization"))
            if self.path.startswith("/status/"):
                job_id = self.path.removeprefix("/status/")
                self._send(200, json.dumps({"status": backend._status_of(job_id)}).encode())
            else:
                self._send(404, b"{}")

        def _next_job(self) -> None:
            answer = backend._next()
            if answer is None:
                self._send(204, b"")
            elif isinstance(answer, Raw):
                time.sleep(answer.delay)
                self._send(answer.status, answer.body, answer.drip_seconds)
            else:
                self._send(200, json.dumps(answer).encode())

        def _send(self, status: int, body: bytes, drip: float = 0.0) -> None:
            with contextlib.suppress(OSError):  # the worker may hang up on a huge or slow answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not drip:
                    self.wfile.write(body)
                    return
                for index in range(len(body)):
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
                    time.sleep(drip)

    return Handler


def normal_job(job_id: str, script: str = "echo normal-job-ok") -> dict[str, Any]:
    return {
        "job_id": job_id,
        "job_name": "normal",
        "config_path": "configs/test.yaml",
        "image": BUSYBOX_IMAGE,
        "command": ["sh", "-c", script],
    }


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[Any, ...]]:
    """Every entry under `root` except those under `skip`: type and, for files and links, content facts.

    Directories record no mtime: creating jobs/<id> legitimately touches jobs/ itself; a new entry
    anywhere still shows up as a new key. The worker's own share probe (jobs/.probe-<pid>, written and
    removed at every check) is not an entry a job made.
    """
    entries: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if any(path == s or path.is_relative_to(s) for s in skip) or _is_share_probe(root, path):
                continue
            try:
                info = os.lstat(path)
            except FileNotFoundError:  # gone since the listing (a probe removed meanwhile)
                continue
            if os.path.islink(path):
                entries[str(path)] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                entries[str(path)] = ("dir", info.st_mode)
            else:
                entries[str(path)] = ("file", info.st_mode, info.st_size, info.st_mtime_ns)
    return entries


def _is_share_probe(root: Path, path: Path) -> bool:
    return path.parent == root / "jobs" and re.fullmatch(r"\.probe-\d+", path.name) is not None


class Scene:
    """A hostile backend, a sentinel folder outside the share, and the workers started against them."""

    def __init__(self, root: Path, docker_client: docker.DockerClient) -> None:
        self.root = root
        self.backend = HostileBackend(root).start()
        self.sentinel = root / "sentinel"
        (self.sentinel / "victim").mkdir(parents=True)
        (self.sentinel / "secret.yaml").write_text("do not touch\n")
        self.docker = docker_client
        self.workers: list[WorkerProcess] = []
        self._job_dirs: list[Path] = []
        self._before: dict[str, tuple[Any, ...]] = {}

    @property
    def shared(self) -> Path:
        return self.backend.shared

    def worker(self, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(self.backend, self.root, env)  # type: ignore[arg-type]  # has .url and .shared
        self.workers.append(worker)
        return worker.start()

    def mark(self, *job_ids: str) -> None:
        """Snapshot the share (except these jobs' folders) and the sentinel, to compare after the run."""
        self._job_dirs = [self.shared / "jobs" / job_id for job_id in job_ids]
        self._before = self._snapshot()

    def assert_nothing_else_changed(self) -> None:
        assert self._before, "mark() first"
        assert self._snapshot() == self._before

    def _snapshot(self) -> dict[str, tuple[Any, ...]]:
        return {**snapshot(self.shared, tuple(self._job_dirs)), **snapshot(self.sentinel)}

    def assert_still_working(self, worker: WorkerProcess, job_id: str = "after-1") -> None:
        """The worker survived: it keeps heartbeating, then takes and finishes a normal job."""
        assert worker.proc is not None and worker.proc.poll() is None, worker.text()
        beats = len(self.backend.heartbeats)
        wait_for(lambda: len(self.backend.heartbeats) > beats, 20, "another heartbeat")
        self.backend.push(normal_job(job_id))
        assert self.backend.wait_terminal(job_id, 60)["status"] == "finished", worker.text()
        assert "normal-job-ok" in (self.shared / "jobs" / job_id / "logs" / f"{job_id}.log").read_text()
        assert worker.proc.poll() is None
        assert "Traceback" not in worker.text()

    def close(self) -> None:
        for worker in self.workers:
            worker.cleanup(self.docker)
        self.backend.stop()


@pytest.fixture
def scene(tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str) -> Iterator[Scene]:
    scene = Scene(tmp_path, docker_client)
    yield scene
    scene.close()
