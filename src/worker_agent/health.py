"""What the worker depends on, in one place: Docker (the executor), the share, the backend, its own threads.

The loop writes the executor and share findings, the heartbeat thread the backend's, every background
thread its own failures; the loop, the heartbeat and /readyz read them. One lock guards it all, so no
thread ever reads another's half-written state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker_agent.backoff import Outage
from worker_agent.ops import metrics

# The backend counts as reached recently when the last heartbeat was acknowledged within this many intervals.
HEARTBEAT_INTERVALS = 3


@dataclass
class _State:
    executor_version: str | None = None
    executor_error: str | None = None
    share_problem: str | None = "not checked yet"
    share_free_bytes: int | None = None
    last_heartbeat: float | None = None
    failing_threads: dict[str, str] = field(default_factory=dict)


class Health:
    def __init__(self, on_change: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time) -> None:
        self._state = _State()
        self._lock = threading.Lock()
        self._clock = clock
        # Called when the host loses something it needs, so the backend hears it before the next heartbeat.
        self.on_change = on_change

    # --- written by the loop, the jobs and the background threads ---

    def executor_up(self, version: str) -> None:
        with self._lock:
            self._state.executor_version, self._state.executor_error = version, None
        metrics.DOCKER_UP.set(1)

    def executor_down(self, error: object) -> None:
        with self._lock:
            was_up = self._state.executor_version is not None
            self._state.executor_version, self._state.executor_error = None, str(error)
        metrics.DOCKER_UP.set(0)
        if was_up:
            self.on_change()

    def share_checked(self, problem: str | None, free_bytes: int | None) -> None:
        with self._lock:
            self._state.share_problem, self._state.share_free_bytes = problem, free_bytes
        metrics.SHARE_HEALTHY.set(problem is None)

    def heartbeat_acknowledged(self) -> None:
        now = self._clock()
        with self._lock:
            self._state.last_heartbeat = now
        metrics.LAST_HEARTBEAT.set(now)

    def thread_failed(self, name: str, error: BaseException) -> None:
        with self._lock:
            self._state.failing_threads[name] = f"{type(error).__name__}: {error}"
        metrics.THREAD_FAILURES.labels(name).inc()

    def thread_ok(self, name: str) -> None:
        with self._lock:
            self._state.failing_threads.pop(name, None)

    # --- read by anyone ---

    @property
    def executor_ok(self) -> bool:
        with self._lock:
            return self._state.executor_version is not None

    @property
    def share_ok(self) -> bool:
        with self._lock:
            return self._state.share_problem is None

    def problems(self, heartbeat_interval: float) -> list[str]:
        """Why the worker cannot take jobs now (empty: ready). /readyz answers with these."""
        with self._lock:
            state = self._state
            found = []
            if state.executor_version is None:
                found.append(f"executor not reachable: {state.executor_error or 'not checked yet'}")
            if state.share_problem is not None:
                found.append(f"shared directory: {state.share_problem}")
            window = HEARTBEAT_INTERVALS * heartbeat_interval
            if state.last_heartbeat is None:
                found.append("no heartbeat acknowledged by the backend yet")
            elif (age := self._clock() - state.last_heartbeat) > window:
                found.append(f"no heartbeat acknowledged by the backend for {age:.0f}s (limit {window:g}s)")
            found += [f"thread {name} failing: {error}" for name, error in sorted(state.failing_threads.items())]
        return found

    def heartbeat_info(self) -> dict[str, Any]:
        with self._lock:
            state = self._state
            return {
                "executor_ok": state.executor_version is not None,
                "executor_version": state.executor_version,
                "share_ok": state.share_problem is None,
                "share_problem": state.share_problem,
                "shared_free_bytes": state.share_free_bytes,
                "failing_threads": dict(state.failing_threads),
            }


def keep_running(
    name: str,
    turn: Callable[[], float],
    stop: threading.Event,
    health: Health,
    logger: logging.Logger,
    wake: threading.Event | None = None,
) -> None:
    """Call `turn` until `stop` is set, waiting the delay it returns (or until `wake`); a background thread's life.

    Any exception (EMFILE, a bug) is logged with its traceback and shown in /readyz and the heartbeat,
    and the thread backs off and goes on: a thread that dies quietly would silence statuses or heartbeats.
    """
    outage = Outage(f"thread {name}", logger)
    while not stop.is_set():
        try:
            delay = turn()
        except Exception as exc:
            logger.exception("thread %s: unexpected error; going on", name)
            health.thread_failed(name, exc)
            delay = outage.failed(exc)
        else:
            if outage.down:
                outage.succeeded()
                health.thread_ok(name)
        (wake or stop).wait(delay)
        if wake is not None:
            wake.clear()
