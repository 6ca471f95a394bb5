"""Helpers for the opeva-devserver tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from opeva_devserver.app import create_app
from opeva_devserver.protocol import ATTEMPT_FENCING
from opeva_devserver.settings import Settings
from opeva_devserver.store import Store

T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Env:
    shared: Path
    settings: Settings
    store: Store
    clock: FakeClock
    client: TestClient

    def submit(self, **body: Any) -> str:
        if "config" not in body and "config_path" not in body:
            body["config_path"] = "configs/demo.yaml"
        resp = self.client.post("/run-simulation", json=body)
        assert resp.status_code == 200, resp.text
        job_id: str = resp.json()["job_id"]
        return job_id

    def claim(self, worker_id: str = "w1", capabilities: list[str] | None = None) -> dict[str, Any] | None:
        body: dict[str, Any] = {"worker_id": worker_id}
        if capabilities is not None:
            body["capabilities"] = capabilities
        resp = self.client.post("/api/agent/next-job", json=body)
        if resp.status_code == 204:
            assert resp.content == b""
            return None
        assert resp.status_code == 200, resp.text
        payload: dict[str, Any] = resp.json()
        return payload

    def report(self, job_id: str, status: str, worker_id: str = "w1", **extra: Any) -> Any:
        body = {"job_id": job_id, "status": status, "worker_id": worker_id, **extra}
        return self.client.post("/api/agent/job-status", json=body)

    def claim_fenced(self, worker_id: str = "w1") -> dict[str, Any]:
        """Claim as a worker that fences its attempts; there must be work for it."""
        payload = self.claim(worker_id, capabilities=[ATTEMPT_FENCING])
        assert payload is not None, f"no job for {worker_id}"
        return payload

    def report_attempt(self, payload: dict[str, Any], status: str, worker_id: str = "w1", **extra: Any) -> Any:
        """Report ``status`` for the fenced attempt that ``payload`` (a next-job answer) started."""
        fence = {"attempt_number": payload["attempt_number"], "attempt_token": payload["attempt_token"]}
        return self.report(payload["job_id"], status, worker_id=worker_id, **{**fence, **extra})

    def heartbeat(self, worker_id: str = "w1", **info: Any) -> Any:
        return self.client.post("/api/agent/heartbeat", json={"worker_id": worker_id, "info": info})

    def info(self, job_id: str) -> dict[str, Any]:
        resp = self.client.get(f"/job-info/{job_id}")
        assert resp.status_code == 200, resp.text
        value: dict[str, Any] = resp.json()
        return value

    def status(self, job_id: str) -> str:
        resp = self.client.get(f"/status/{job_id}")
        assert resp.status_code == 200, resp.text
        value: str = resp.json()["status"]
        return value


MakeEnv = Callable[..., Env]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on port {port} after {timeout}s")


@dataclass
class Live:
    base_url: str
    store: Store
    settings: Settings


def build_env(shared: Path, clock: FakeClock, **overrides: Any) -> Env:
    """A store + app over ``shared`` with the sweeper off (tests call ``store.sweep`` themselves)."""
    settings = Settings(shared_dir=shared, **{"sweep_interval": 0, **overrides})
    store = Store(
        settings.resolved_db_path,
        shared,
        host_ttl=settings.host_ttl,
        status_ttl=settings.status_ttl,
        offline_grace=settings.offline_grace,
        protocol=settings.protocol,
    )
    app = create_app(store, settings, clock=clock)
    demo = shared / "configs" / "demo.yaml"
    if not demo.exists():
        demo.write_text("name: demo\n", encoding="utf-8")
    return Env(shared, settings, store, clock, TestClient(app))
