"""Heartbeats on their own thread and schedule, so a long job never silences the host."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from worker_agent.backend.client import BackendClient, BackendError, Rejected
from worker_agent.backoff import Outage
from worker_agent.health import Health, keep_running

log = logging.getLogger(__name__)

# Beats asked for at once (a job started or ended) go out at most this often: jobs that follow each other
# share one instead of sending two each, which the backend would serve alongside their next-job calls.
_MIN_GAP_SECONDS = 1.0


class Heartbeat:
    def __init__(
        self, backend: BackendClient, interval: float, info: Callable[[], dict[str, Any]], health: Health
    ) -> None:
        self._backend = backend
        self._interval = interval
        self._info = info
        self._health = health
        self._outage = Outage("backend (heartbeat)", log)
        self._wake = threading.Event()
        self._refused = False  # the last heartbeat got a 400: logged once, with the fix
        self._sent_at = -math.inf

    def beat_now(self) -> None:
        """Send the next heartbeat now, or a second after the last (e.g. when the worker drains, a job starts)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        keep_running("heartbeat", self._turn, stop, self._health, log, wake=self._wake)

    def _turn(self) -> float:
        too_soon = self._sent_at + min(_MIN_GAP_SECONDS, self._interval) - time.monotonic()
        if too_soon > 0:
            return too_soon
        self._sent_at = time.monotonic()
        try:
            self.send()
        except Rejected as exc:
            if not self._refused:
                log.error(
                    "the backend refuses heartbeats from WORKER_ID=%s (%s): add it to the orchestrator's "
                    "AVAILABLE_HOSTS",
                    self._backend.worker_id,
                    exc,
                )
            self._refused = True
            return self._interval
        except BackendError as exc:
            return min(self._interval, self._outage.failed(exc))
        self._refused = False
        return self._interval

    def send(self) -> None:
        """One heartbeat; raises BackendError when the backend did not acknowledge it."""
        self._backend.heartbeat(self._info())
        self._outage.succeeded()
        self._health.heartbeat_acknowledged()
