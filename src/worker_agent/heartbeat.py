"""Heartbeats on their own thread and schedule, so a long job never silences the host."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from worker_agent import metrics
from worker_agent.backend import BackendClient, BackendError
from worker_agent.retry import Outage

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, backend: BackendClient, interval: float, info: Callable[[], dict[str, Any]]) -> None:
        self._backend = backend
        self._interval = interval
        self._info = info
        self._outage = Outage("backend (heartbeat)", log)
        self.last_success: float | None = None
        self._wake = threading.Event()

    def beat_now(self) -> None:
        """Send the next heartbeat at once (e.g. when the worker starts draining or a job starts)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.send()
                delay = self._interval
            except BackendError as exc:
                delay = min(self._interval, self._outage.failed(exc))
            self._wake.wait(delay)
            self._wake.clear()

    def send(self) -> None:
        """One heartbeat; raises BackendError when the backend did not acknowledge it."""
        self._backend.heartbeat(self._info())
        self._outage.succeeded()
        self.last_success = time.time()
        metrics.LAST_HEARTBEAT.set(self.last_success)
