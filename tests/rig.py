"""The fast tier's rig: the real Worker and JobRun against FakeExecutor and FakeBackend, in milliseconds."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from fakes import FakeBackend, FakeExecutor
from harness import wait_for

from worker_agent import config
from worker_agent.backend.client import BackendClient
from worker_agent.worker import Worker


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.shared = tmp_path / "shared"
        (self.shared / "configs").mkdir(parents=True)
        (self.shared / "configs" / "test.yaml").write_text("simulation: test\n")
        self.backend = FakeBackend()
        self.executor = FakeExecutor()
        self.settings = dataclasses.replace(
            config.load(environ={}),
            worker_id="w1",
            shared_dir=self.shared,
            state_dir=tmp_path / "state",
            image="img",
            allowed_images=("img", "img:*"),
            poll_interval=0.01,
            heartbeat_interval=0.05,
            status_poll_interval=0.02,
            running_refresh_interval=0.05,
            stop_grace_period=0,
            metrics_port=0,
        )
        self.worker: Worker | None = None
        self._thread: threading.Thread | None = None
        self.exit_code: int | None = None

    def start(self, **settings: Any) -> Worker:
        self.settings = dataclasses.replace(self.settings, **settings)
        client = BackendClient("http://backend", "w1", transport=self.backend.transport())
        self.worker = worker = Worker(self.settings, backend=client, executor=self.executor)

        def run() -> None:
            self.exit_code = worker.run()

        self._thread = threading.Thread(target=run, name="worker-under-test", daemon=True)
        self._thread.start()
        return worker

    def wait_exit(self, timeout: float = 5) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the worker did not exit"

    def stop(self) -> None:
        if self.worker is not None and self._thread is not None and self._thread.is_alive():
            self.worker.shutdown()
            self.wait_exit()

    def run_jobs(self, job_ids: str, status: str, **settings: Any) -> Worker:
        """Submit one job per letter of `job_ids`, start the worker, return once each job reached `status`."""
        for job_id in job_ids:
            self.backend.submit(job_id)
        worker = self.start(**settings)
        for job_id in job_ids:
            self.wait_status(job_id, status)
        return worker

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 5) -> str:
        return str(
            wait_for(
                lambda: job_id in self.backend.jobs and (s := self.backend.status(job_id)) in statuses and s,
                timeout,
                f"{job_id} in {statuses}",
                interval=0.005,
            )
        )

    def log(self, job_id: str) -> bytes:
        return (self.shared / "jobs" / job_id / "logs" / f"{job_id}.log").read_bytes()
