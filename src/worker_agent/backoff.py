"""Backoff with jitter for calls that fail while a dependency is down, logged once per outage."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from worker_agent import defaults


class Outage:
    """Tracks one dependency (backend, Docker, share): the next delay, and one log line per outage."""

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        initial: float | None = None,
        maximum: float | None = None,
        jitter: Callable[[], float] = random.random,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.what = what
        self._logger = logger
        # Read at run time, not import time, so that the fast tests can shrink them.
        self._initial = defaults.BACKOFF_INITIAL_SECONDS if initial is None else initial
        self._maximum = defaults.BACKOFF_MAX_SECONDS if maximum is None else maximum
        self._jitter = jitter
        self._failures = 0
        self._extra = extra  # e.g. {"job_id": ...}: the outage lines of a job carry its id

    @property
    def down(self) -> bool:
        return self._failures > 0

    def failed(self, error: object) -> float:
        """Record a failure; return how long to wait before trying again."""
        if self._failures == 0:
            self._logger.warning("%s unavailable: %s (retrying with backoff)", self.what, error, extra=self._extra)
        else:
            self._logger.debug("%s still unavailable: %s", self.what, error, extra=self._extra)
        self._failures += 1
        delay: float = min(self._maximum, self._initial * 2.0 ** min(self._failures - 1, 30))
        # Jitter in [delay/2, delay) keeps a fleet of workers from retrying in lock-step.
        return delay / 2 + self._jitter() * delay / 2

    def succeeded(self) -> None:
        if self._failures:
            self._logger.warning("%s is back after %d failed attempts", self.what, self._failures, extra=self._extra)
        self._failures = 0
