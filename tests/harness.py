"""Real parts for integration tests: a reference backend process, worker processes, a busybox image.

Nothing here is a fake: the backend is `opeva-devserver` over loopback HTTP, the worker is the
`job-worker-agent` process, and jobs run in a real dockerd.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker

from worker_agent import domain

if TYPE_CHECKING:
    import pytest

BUSYBOX_IMAGE = "opeva-test-busybox:latest"
# Accepts the legacy command `--config PATH --job_id ID` the way the real simulator does.
SIM_IMAGE = "opeva-test-sim:latest"
_SIM_SCRIPT = """#!/bin/sh
echo "sim: config=$2 job=$4"
cat "$2"
echo "sim: done"
"""
REPO = Path(__file__).resolve().parent.parent
TERMINAL = frozenset(str(status) for status in domain.TERMINAL)


def sh(script: str) -> list[str]:
    """A job command that runs `script` in the image's shell."""
    return ["sh", "-c", script]


def free_port() -> int:
    """A loopback port that is free now, for a server the test starts next.

    Not one of the kernel's ephemeral ports (32768-60999 on Linux), which bind(0) and every outgoing connection
    take theirs from: under pytest-xdist the tests side by side open many connections, and any of them could
    take the port before the server binds it. Each xdist worker picks in a block of its own (16000 + 1000 * n),
    so two of them never pick the same; a run without xdist uses the block above them.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) % 15 if worker[:2] == "gw" and worker[2:].isdigit() else 15
    low = 16000 + 1000 * index
    for _ in range(200):
        port = random.randrange(low, low + 1000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port in {low}-{low + 999}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[], str]) -> str:
    """`make()` once per test run: under pytest-xdist each worker runs the session fixtures itself, so the first
    one to get here builds (an image, say) while the others wait on a file lock, then read its result."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return make()
    from filelock import FileLock  # a test dependency; bench/ imports this module too

    shared = tmp_path_factory.getbasetemp().parent  # the run's base temp dir, above each worker's own
    with FileLock(str(shared / f"{name}.lock")):
        done = shared / f"{name}.done"
        if done.exists():
            return done.read_text()
        value = make()
        done.write_text(value)
        return value


def build_busybox_image(client: docker.DockerClient, tmp: Path) -> str:
    """FROM scratch + the host's static busybox: a shell image built in about a second, offline."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise AssertionError("/bin/busybox missing: install busybox-static (scripts/bootstrap.sh does)")
    (tmp / "busybox").write_bytes(busybox.read_bytes())
    (tmp / "busybox").chmod(0o755)
    (tmp / "Dockerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["sh"]\n'
    )
    client.images.build(path=str(tmp), tag=BUSYBOX_IMAGE, rm=True)
    (tmp / "sim.sh").write_text(_SIM_SCRIPT)
    (tmp / "Dockerfile").write_text(f'FROM {BUSYBOX_IMAGE}\nCOPY sim.sh /sim.sh\nENTRYPOINT ["sh", "/sim.sh"]\n')
    client.images.build(path=str(tmp), tag=SIM_IMAGE, rm=True)
    return BUSYBOX_IMAGE


class Devserver:
    """The reference backend as a separate process, restartable with its database kept."""

    def __init__(self, root: Path, *options: str) -> None:
        self.shared = root / "shared"
        self.db = root / "devserver.sqlite3"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.options = options
        self.token = options[options.index("--token") + 1] if "--token" in options else None
        self.log_path = root / "devserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.shared / "configs").mkdir(parents=True, exist_ok=True)
        (self.shared / "configs" / "test.yaml").write_text("simulation: test\n")

    def start(self) -> None:
        command = [sys.executable, "-m", "opeva_devserver", "--port", str(self.port), "--shared-dir", str(self.shared)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*command, "--db", str(self.db), *self.options], stdout=log, stderr=log)
        wait_for(self._answers, 30, "the devserver to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def _answers(self) -> bool:
        try:
            self.request("GET", "/jobs")
            return True
        except (OSError, urllib.error.URLError):
            return False

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def submit(self, **body: Any) -> str:
        body.setdefault("config_path", "configs/test.yaml")
        return str(self.request("POST", "/run-simulation", body)["job_id"])

    def status(self, job_id: str) -> str:
        return str(self.request("GET", f"/status/{job_id}")["status"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/job-info/{job_id}"))

    def hosts(self) -> dict[str, dict[str, Any]]:
        return {host["worker_id"]: host for host in self.request("GET", "/hosts")}

    def stop_job(self, job_id: str) -> str:
        return str(self.request("POST", f"/stop/{job_id}")["status"])

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 60) -> str:
        return str(wait_for(lambda: (s := self.status(job_id)) in statuses and s, timeout, f"{job_id} in {statuses}"))

    def log_file(self, job_id: str) -> Path:
        return self.shared / "jobs" / job_id / "logs" / f"{job_id}.log"


class WorkerProcess:
    """`python -m worker_agent` against a devserver, with its own id, state dir and output file."""

    def __init__(self, devserver: Devserver, root: Path, env: dict[str, str] | None = None) -> None:
        self.worker_id = f"test-{uuid.uuid4().hex[:10]}"
        self.state_dir = root / f"state-{self.worker_id}"
        self.output = root / f"{self.worker_id}.log"
        self.env = {
            **os.environ,
            "OPEVA_SERVER": devserver.url,
            "WORKER_ID": self.worker_id,
            "OPEVA_SHARED_DIR": str(devserver.shared),
            "WORKER_STATE_DIR": str(self.state_dir),
            "WORKER_IMAGE": BUSYBOX_IMAGE,
            # The test images are built here: never ask a registry for them (no network beyond loopback).
            "IMAGE_PULL_POLICY": "if-not-present",
            "ALLOWED_IMAGES": "opeva-test-*",
            "POLL_INTERVAL": "0.5",
            "STATUS_POLL_INTERVAL": "1",
            "WORKER_HEARTBEAT_INTERVAL": "2",
            "STOP_GRACE_PERIOD": "5",
            "METRICS_PORT": "0",
            "LOG_LEVEL": "DEBUG",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> WorkerProcess:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker_agent", *args], env=self.env, stdout=out, stderr=out
            )
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def containers(self, client: docker.DockerClient) -> list[Any]:
        # sparse: no inspect per container, which races with a worker that is removing it right now.
        labelled = {"label": f"opeva.worker_id={self.worker_id}"}
        return list(client.containers.list(all=True, sparse=True, filters=labelled))

    def cleanup(self, client: docker.DockerClient) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        for container in self.containers(client):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
