"""Doubles for the fast tier: an executor with scripted jobs and a backend behind httpx.MockTransport.

They stand in for dockerd and the backend where the behaviour under test is the worker's own (the job
state machine, the loop, the slots). What only Docker or a real server shows is tested in integration/.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from worker_agent.domain import JobHandle, JobSpec
from worker_agent.executors.base import ExecutorError, ExecutorUnavailable, JobLost, StartCancelled


@dataclass
class Script:
    """How a fake job behaves: what it prints, then whether it exits by itself and with which code."""

    frames: list[tuple[int, bytes]] = field(default_factory=lambda: [(1, b"hello\n")])
    exit_code: int = 0
    runs_until_stopped: bool = False
    start_error: str | None = None


@dataclass
class FakeContainer:
    spec: JobSpec
    ref: str
    script: Script
    printed: list[tuple[int, bytes]] = field(default_factory=list)
    exit_code: int | None = None
    stopped: bool = False
    removed: bool = False


class FakeExecutor:
    name = "fake"
    answered_at = -math.inf

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.default = Script()
        self.containers: dict[str, FakeContainer] = {}
        self.available = True
        self.pings = 0
        self.block_start = threading.Event()
        self.unreachable_starts = 0  # this many starts find the executor gone (dockerd restarting)
        self.max_running = 0
        self._ids = itertools.count(1)
        self._changed = threading.Condition()

    # --- controls for the test ---

    def running(self) -> list[FakeContainer]:
        with self._changed:
            return [c for c in self.containers.values() if c.exit_code is None and not c.removed]

    def emit(self, job_id: str, stream: int, data: bytes) -> None:
        with self._changed:
            self._container_of(job_id).printed.append((stream, data))
            self._changed.notify_all()

    def exit(self, job_id: str, code: int) -> None:
        with self._changed:
            self._container_of(job_id).exit_code = code
            self._changed.notify_all()

    def vanish(self, job_id: str) -> None:
        """Someone ran `docker rm -f` on the job's container."""
        with self._changed:
            container = self._container_of(job_id)
            container.removed, container.exit_code = True, 137
            self._changed.notify_all()

    def adopt_existing(self, job_id: str, worker_id: str, script: Script | None = None) -> FakeContainer:
        """A container this worker started before a restart."""
        spec = JobSpec(job_id, worker_id, "img", [], f"opeva-job-{job_id}")
        return self._create(spec, script or Script(runs_until_stopped=True))

    def _container_of(self, job_id: str) -> FakeContainer:
        (container,) = [c for c in self.containers.values() if c.spec.job_id == job_id and not c.removed]
        return container

    # --- the Executor interface ---

    def ping(self) -> str:
        self.pings += 1
        self._reachable()
        return "fake-1.0"

    def _reachable(self) -> None:
        if not self.available:
            raise ExecutorUnavailable("fake executor down")

    def start(self, spec: JobSpec, progress: Callable[[str], None], cancel: threading.Event) -> JobHandle:
        self._reachable()
        if self.unreachable_starts:
            self.unreachable_starts -= 1
            raise ExecutorUnavailable("fake executor restarting")
        if self.block_start.is_set():  # an image pull that takes as long as the worker lets it
            cancel.wait()
            raise StartCancelled("the worker is shutting down; pull abandoned")
        script = self.scripts.get(spec.job_id, self.default)
        if script.start_error:
            raise ExecutorError(script.start_error)
        progress(f"starting {spec.name}")
        container = self._create(spec, script)
        return JobHandle(spec.job_id, container.ref, spec.name, dict(spec.env))

    def _create(self, spec: JobSpec, script: Script) -> FakeContainer:
        with self._changed:
            container = FakeContainer(spec, f"c{next(self._ids)}", script, printed=list(script.frames))
            if not script.runs_until_stopped:
                container.exit_code = script.exit_code
            self.containers[container.ref] = container
            self.max_running = max(self.max_running, len(self.running()))
            self._changed.notify_all()
            return container

    def start_created(self, job: JobHandle) -> None:
        self._reachable()

    def end_details(self, job: JobHandle) -> dict[str, Any]:
        self._reachable()
        return {"oom_killed": self._get(job).script.exit_code == 137 and not self._get(job).stopped}

    def output(self, job: JobHandle, from_start: bool, follow: bool = True) -> Iterator[tuple[int, bytes]]:
        self._reachable()
        container = self._get(job)
        index = 0
        while True:
            with self._changed:
                while follow and index == len(container.printed) and container.exit_code is None:
                    self._changed.wait()
                frames = container.printed[index:]
                index = len(container.printed)
                ended = container.exit_code is not None or not follow
            yield from frames
            if ended and index == len(container.printed):
                return

    def exit_code(self, job: JobHandle) -> int | None:
        self._reachable()
        self.answered_at = time.monotonic()
        return self._get(job).exit_code

    def stop(self, job: JobHandle, grace_seconds: float) -> None:
        self._reachable()
        with self._changed:
            container = self._get(job)
            container.stopped = True
            if container.exit_code is None:
                container.exit_code = 143
            self._changed.notify_all()

    def remove(self, job: JobHandle) -> None:
        self._reachable()
        with self._changed:
            self.containers[job.ref].removed = True
            self._changed.notify_all()

    def find_owned(self, worker_id: str) -> list[JobHandle]:
        self._reachable()
        return [
            JobHandle(c.spec.job_id, c.ref, c.spec.name, dict(c.spec.env))
            for c in self.containers.values()
            if c.spec.worker_id == worker_id and not c.removed
        ]

    def _get(self, job: JobHandle) -> FakeContainer:
        container = self.containers.get(job.ref)
        if container is None or container.removed:
            raise JobLost(f"no container {job.ref}")
        return container


# Transitions a worker may report (docs/contract.md); a same-status update is always accepted.
_ALLOWED = {
    "dispatched": {"setup", "running", "failed", "canceled", "stop_requested", "queued"},
    "setup": {"running", "failed", "canceled", "stop_requested", "queued"},
    "running": {"finished", "failed", "stop_requested", "stopped", "canceled"},
    "stop_requested": {"stopped", "failed", "canceled"},
}


class FakeBackend:
    """The backend's agent API in memory, served to the real BackendClient through httpx.MockTransport."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.queue: list[str] = []
        self.history: dict[str, list[str]] = {}
        self.reports: dict[str, list[dict[str, Any]]] = {}  # every status body accepted, per job
        self.heartbeats: list[dict[str, Any]] = []
        self.down = False
        self.refused: dict[str, bool] = {}  # statuses this backend does not know, e.g. {"setup": True}
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # --- what an operator does ---

    def submit(self, job_id: str, **payload: Any) -> None:
        with self._lock:
            self.jobs[job_id] = {"job_id": job_id, "config_path": "configs/test.yaml", **payload, "status": "queued"}
            self.history[job_id] = ["queued"]
            self.queue.append(job_id)

    def set_status(self, job_id: str, status: str) -> None:
        with self._lock:
            self.jobs[job_id]["status"] = status
            self.history[job_id].append(status)

    def status(self, job_id: str) -> str:
        with self._lock:
            return str(self.jobs[job_id]["status"])

    # --- the agent API ---

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        with self._lock:
            self.calls.append(f"{request.method} {path}")
            if self.down:
                return httpx.Response(503, text="down")
            body = json.loads(request.content) if request.content else {}
            if path == "/api/agent/next-job":
                return self._next_job(body)
            if path == "/api/agent/job-status":
                return self._job_status(body)
            if path == "/api/agent/heartbeat":
                self.heartbeats.append(body["info"])
                return httpx.Response(200, json={"ok": True})
            if path.startswith("/status/"):
                job = self.jobs.get(path.removeprefix("/status/"))
                if job is None:
                    return httpx.Response(404, json={"detail": "unknown job"})
                return httpx.Response(200, json={"job_id": job["job_id"], "status": job["status"]})
        return httpx.Response(404, json={"detail": "Not Found"})

    def _next_job(self, body: dict[str, Any]) -> httpx.Response:
        if not self.queue:
            return httpx.Response(204)
        key = self.queue.pop(0)
        job = self.jobs[key]
        job.update(status="dispatched", worker_id=body["worker_id"])
        self.history[key].append("dispatched")
        return httpx.Response(200, json={k: v for k, v in job.items() if k not in ("status", "worker_id")})

    def _job_status(self, body: dict[str, Any]) -> httpx.Response:
        job = self.jobs.get(body["job_id"])
        if job is None:
            return httpx.Response(404, json={"detail": "unknown job"})
        current, wanted = job["status"], body["status"]
        if self.refused.get(wanted):
            return httpx.Response(409, json={"detail": f"{wanted} is not allowed here"})
        if wanted != current and wanted not in _ALLOWED.get(current, set()):
            return httpx.Response(409, json={"detail": f"{current} -> {wanted} not allowed"})
        if wanted != current:
            job["status"] = wanted
            self.history[job["job_id"]].append(wanted)
        self.reports.setdefault(job["job_id"], []).append(body)
        job.update({k: v for k, v in body.items() if k in ("exit_code", "error", "error_code", "error_category")})
        return httpx.Response(200, json={"ok": True})
