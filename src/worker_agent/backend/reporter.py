"""Status delivery: every transition goes through the durable outbox and is retried until acknowledged."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from worker_agent.backend.client import (
    BackendClient,
    BackendError,
    Conflict,
    JobView,
    Rejected,
    StaleAttempt,
    UnknownJob,
)
from worker_agent.backoff import Outage
from worker_agent.domain import STOPPING, Status, StatusUpdate
from worker_agent.health import Health, keep_running
from worker_agent.ops import metrics
from worker_agent.state.outbox import Outbox

log = logging.getLogger(__name__)


class Reporter:
    def __init__(
        self,
        backend: BackendClient,
        outbox: Outbox,
        health: Health,
        on_stop_seen: Callable[[str], None] = lambda job_id: None,
        on_lost: Callable[[str, str], None] = lambda job_id, why: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._outbox = outbox
        self._health = health
        self._on_stop_seen = on_stop_seen
        self._on_lost = on_lost
        self.knows_setup = True  # False once the backend refused a `setup` status
        self._outage = Outage("backend (status delivery)", log)
        self._failing: list[str] = []  # jobs whose last send failed, in the order of that failure
        self._retry_at = -math.inf  # when the failing jobs are tried again
        self._clock = clock

    def report(self, update: StatusUpdate) -> None:
        """Record the update durably; the delivery thread sends it."""
        log.info("job %s: status %s", update.job_id, update.status, extra={"job_id": update.job_id})
        self._outbox.put(update)
        metrics.OUTBOX_DEPTH.set(self._outbox.depth())

    def drop_attempt(self, job_id: str, attempt_number: int | None) -> int:
        """Forget the pending statuses of an attempt this worker no longer owns (never sent)."""
        dropped = self._outbox.drop_attempt(job_id, attempt_number)
        metrics.OUTBOX_DEPTH.set(self._outbox.depth())
        return dropped

    def flush(self, timeout: float) -> bool:
        """Wait until every recorded update is acknowledged; False when time ran out."""
        deadline = time.monotonic() + timeout
        while self._outbox.depth():
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return True

    def run(self, stop: threading.Event) -> None:
        """Delivery loop: in order per job, so a job's `running` always precedes its terminal status."""
        # Woken by every new update: one from a job whose sends go through is sent at once, whatever backoff
        # another job's failures are in.
        keep_running("reporter", self._turn, stop, self._health, log, wake=self._outbox.changed)

    def _turn(self) -> float:
        """Send the oldest pending update of each job, oldest first, the jobs whose last send failed last.

        One error cannot tell a job's own trouble (a 500 the backend answers only for it) from a backend down
        for everyone (a proxy's 502 while it restarts, a refused connection). So a failure backs off the jobs
        that failed, logged once for the whole stretch; every other job's updates are still sent as they come,
        each job's in order. A whole outage costs one request per backoff period, the failing jobs in turn (and
        one more for each job that gets a new update meanwhile). It ends with a turn that sent everything.
        """
        heads = self._outbox.heads()
        pending = {update.job_id for _, update in heads}
        self._failing = [job_id for job_id in self._failing if job_id in pending]  # forget jobs with nothing left
        if not heads:
            return 1.0
        for path, update in sorted(heads, key=self._place):  # stable: oldest first within each group
            wait = self._retry_at - self._clock()
            if update.job_id in self._failing and wait > 0:
                return wait  # the rest are failing jobs, not yet due
            try:
                self._deliver(update)
            except BackendError as exc:
                if self._failed(update.job_id, exc):
                    return self._retry_at - self._clock()
                continue
            self._failing = [job_id for job_id in self._failing if job_id != update.job_id]
            self._outbox.done(path)
            metrics.OUTBOX_DEPTH.set(self._outbox.depth())
        if self._failing:
            return self._retry_at - self._clock()
        self._outage.succeeded()
        return 0

    def _failed(self, job_id: str, error: BackendError) -> bool:
        """Put the job last among the failing; True when the turn ends and backs off further.

        A job failing for the first time while others wait out a backoff joins them: it neither backs off
        further nor ends the turn, so one such job costs the others nothing."""
        joins = job_id not in self._failing and self._retry_at > self._clock()
        self._failing = [failing for failing in self._failing if failing != job_id] + [job_id]
        if joins:
            return False
        self._retry_at = self._clock() + self._outage.failed(f"job {job_id}: {error}")
        return True

    def _place(self, head: tuple[Path, StatusUpdate]) -> int:
        """Where a job's update goes in a turn: -1 when its last send went through, else its place among the failing."""
        job_id = head[1].job_id
        return self._failing.index(job_id) if job_id in self._failing else -1

    def _deliver(self, update: StatusUpdate) -> None:
        try:
            self._backend.send_status(update)
        except UnknownJob:
            log.warning("job %s: backend does not know it; dropping status %s", update.job_id, update.status)
        except StaleAttempt:
            self._lost(update, "the backend answered stale_job_attempt")
        except (Conflict, Rejected) as exc:
            if update.status == Status.SETUP and self._refuses_setup(update, exc):
                # A backend without the `setup` state (the 2026-04 contract): remembered, never an error.
                self.knows_setup = False
                log.info("the backend does not know the setup status; it is not sent any more")
            elif update.status == Status.SETUP:
                return  # the job moved on before its setup arrived (e.g. a stop request): nothing to resolve
            elif isinstance(exc, Rejected):
                log.error("job %s: backend refused status %s for good: %s", update.job_id, update.status, exc)
            else:
                self._resolve_conflict(update)

    def _refuses_setup(self, update: StatusUpdate, error: BackendError) -> bool:
        """A 400/422, or a 409 while the job is still `dispatched`: the backend has no `setup` state."""
        if isinstance(error, Rejected):
            return True
        view = self._backend.job_status(update.job_id)
        return view is not None and view.status == Status.DISPATCHED

    def _resolve_conflict(self, update: StatusUpdate) -> None:
        """The backend moved the job on: read where it is and send what still makes sense."""
        view = self._backend.job_status(update.job_id)
        if view is None:
            log.warning("job %s: backend does not know it; dropping status %s", update.job_id, update.status)
            return
        if not owns(view, self._backend.worker_id, update.attempt_number):
            self._lost(update, f"the backend has it with worker {view.worker_id}, attempt {view.attempt_number}")
            return
        current = view.status
        if current == update.status:
            return  # an earlier try of this very update got through
        if current == Status.STOP_REQUESTED and update.status in (Status.FINISHED, Status.FAILED):
            # stop_requested -> finished is not allowed: a job that ended after a stop request is stopped.
            self._deliver(dataclasses.replace(update, status=Status.STOPPED))
            return
        if update.status == Status.QUEUED and current in (Status.DISPATCHED, Status.SETUP):
            # A backend that does not take a job back from a worker: fail it, saying why, so it can be resubmitted.
            self._deliver(dataclasses.replace(update, status=Status.FAILED))
            return
        if update.status == Status.RUNNING and current in STOPPING:
            self._on_stop_seen(update.job_id)
            return
        log.warning(
            "job %s: backend has it as %s; status %s no longer applies",
            update.job_id,
            current,
            update.status,
            extra={"job_id": update.job_id},
        )

    def _lost(self, update: StatusUpdate, why: str) -> None:
        """This attempt is no longer the job's: none of its statuses is sent any more; its run stops."""
        dropped = self._outbox.drop_attempt(update.job_id, update.attempt_number)
        log.warning(
            "job %s: no longer this worker's (%s); %d pending status(es) dropped",
            update.job_id,
            why,
            dropped,
            extra={"job_id": update.job_id},
        )
        self._on_lost(update.job_id, why)


def owns(view: JobView, worker_id: str, attempt_number: int | None) -> bool:
    """Whether the backend's view of a job still names this worker and this attempt (where it names them)."""
    if view.worker_id is not None and view.worker_id != worker_id:
        return False
    return view.attempt_number is None or attempt_number is None or view.attempt_number == attempt_number
