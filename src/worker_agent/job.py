"""One job's whole life in its slot: accept -> start -> supervise -> finish (or detach for the next worker start).

A JobRun owns its job log (opened once, closed when the run ends) and the pump thread that fills it; it
reads the backend's view of the job, stops the job through one path (`stop`, with a typed reason), and
reports the end through the reporter's durable outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from worker_agent import __version__
from worker_agent.backend.client import BackendClient, BackendError, Conflict
from worker_agent.backend.reporter import Reporter, owns
from worker_agent.backoff import Outage
from worker_agent.config import Settings
from worker_agent.domain import (
    STOPPING,
    TERMINAL,
    JobHandle,
    JobRecord,
    JobSpec,
    LogPosition,
    Status,
    StatusUpdate,
    StopReason,
)
from worker_agent.errors import exit_code_error, failure
from worker_agent.executors.base import (
    Executor,
    ExecutorError,
    ExecutorUnavailable,
    ImageUnavailable,
    JobLost,
    StartCancelled,
)
from worker_agent.health import Health
from worker_agent.logs.jobfiles import JobLog
from worker_agent.logs.pump import LogPump, ReplayShifted
from worker_agent.ops import metrics
from worker_agent.ops.telemetry import share_free_bytes
from worker_agent.payload import JobPayload, PayloadError
from worker_agent.policy import build_spec, secret_values, unmaskable_secrets
from worker_agent.share import os_error
from worker_agent.state.store import StateDir

log = logging.getLogger(__name__)

# How often the supervision loop looks at the job when nothing else is due.
_TICK_SECONDS = 0.5
# How long a job waits for an unreachable executor (e.g. dockerd restarting) before it fails to start.
_START_PATIENCE_SECONDS = 300.0
# What makes a queued batch job's `setup` worth sending again.
_QUEUE_DETAILS = ("pending_reason", "queue_position", "blocked")


@dataclass(frozen=True)
class JobContext:
    """What a job needs from the worker, and nothing more."""

    settings: Settings
    executor: Executor
    backend: BackendClient
    reporter: Reporter
    state: StateDir
    health: Health
    shutdown: threading.Event  # SIGTERM/SIGINT: detach (or stop, with WORKER_STOP_JOB_ON_EXIT) and leave
    clock: Callable[[], float] = time.time  # wall time: JOB_TIMEOUT counts from the job's start across restarts
    exited: Callable[[], None] = lambda: None  # a job's exit code is known: its slot is free (wakes the loop)


@dataclass
class _PumpState:
    live: bool  # reading the attach stream opened before the container started
    follow: bool  # reading the container's log and following it
    ended: threading.Event = field(default_factory=threading.Event)
    clean: bool = False
    log_broke: bool = False  # a write to the job's log failed (the share): reopen it before the next pump

    @property
    def complete(self) -> bool:
        """A clean end that proves every byte was read once the container has exited.

        A *followed* log read is not proof: dockerd stops following when the container exits,
        however far behind the reader is (seen with dockerd 20.10 after a worker restart mid-flood).
        """
        return self.clean and (self.live or not self.follow)


class JobRun:
    def __init__(
        self, ctx: JobContext, job_id: str, attempt_number: int | None = None, attempt_token: str | None = None
    ) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.accepted_at = ctx.clock()
        self.handle: JobHandle | None = None
        self.record: JobRecord | None = None
        self.status: Status | None = None  # the last status this run reported
        self._log: JobLog | None = None
        self._adopted = False
        self._stop_reason: StopReason | None = None
        self._stop_sent = False
        self._queue_seen: dict[str, Any] | None = None  # the pending reason and queue position last reported
        self._fail_reason: str | None = None  # the container vanished under the job
        self._ended = False  # the job ended and was reported: its container is removed by clean_up()
        self.exited = False  # its exit code is known: it no longer takes a slot
        self._lost: str | None = None  # why this worker no longer owns the job (set from any thread)
        self.attempt_number = attempt_number
        self._attempt_token = attempt_token
        self._check_now = threading.Event()
        self._wake = threading.Event()  # the pump ended, a status check is due at once, or the worker stops
        self._executor_outage = Outage("executor", log, extra={"job_id": job_id})
        self._executor_trouble = False
        self._pump_state = _PumpState(live=True, follow=True)
        self._pump: LogPump | None = None
        self._pump_started = 0.0
        self._pump_outage = Outage("output stream", log, extra={"job_id": job_id})
        self._log_outage = Outage("job log on the share", log, extra={"job_id": job_id})

    @property
    def _extra(self) -> dict[str, str]:
        return {"job_id": self.job_id}

    # --- the two ways a job comes to a slot ---

    def run_new(self, payload: JobPayload) -> Status | None:
        """Start the payload's job and supervise it to its end; the status reported last, None if none."""
        try:
            spec = build_spec(payload, self.ctx.settings)
        except PayloadError as exc:
            return self.refuse(exc)
        if self.ctx.reporter.knows_setup:
            self._report(Status.SETUP)  # accepted: the image pull and container creation come next
        try:
            self._log = JobLog.open(self.ctx.settings.shared_dir, self.job_id)
        except OSError as exc:
            return self._fail("log_unwritable", f"cannot write the job log: {exc}")
        try:
            if short := unmaskable_secrets(spec.env, self.ctx.settings):
                self._note(f"not masked in this log: {', '.join(short)} (values of 1-3 characters cannot be masked)")
            try:
                set_options = getattr(self.ctx.executor, "set_job_options", None)
                if set_options is not None and payload.deucalion_options:
                    try:
                        set_options(self.job_id, payload.deucalion_options)
                    except ExecutorError as exc:
                        return self._fail("invalid_payload", f"invalid_payload: {exc}")
                # Recorded before the container exists: a worker killed between its creation and the record
                # below still finds the attempt's token (run_adopted), or hands the job back (Worker._readopt).
                self.ctx.state.save_job(
                    JobRecord(
                        self.job_id,
                        None,
                        spec.name,
                        attempt_number=self.attempt_number,
                        attempt_token=self._attempt_token,
                    )
                )
                self.handle = self._start(spec)
                log_size = self._log.size()
            except StartCancelled as exc:
                self._note(str(exc))
                return self.hand_back()
            except (ExecutorError, ExecutorUnavailable) as exc:
                self._note(f"job could not start: {exc}")
                return self._fail(_start_error_code(exc), str(exc))
            self.record = JobRecord(
                self.job_id,
                self.handle.ref,
                self.handle.name,
                LogPosition(file_size=log_size),
                attempt_number=self.attempt_number,
                attempt_token=self._attempt_token,
            )
            self.ctx.state.save_job(self.record)
            self._prune_images(spec.image)
            if not getattr(self.ctx.executor, "pending_after_start", False):
                self._report(Status.RUNNING)
            return self._supervise()
        finally:
            self._log.close()

    def _start(self, spec: JobSpec) -> JobHandle:
        """Start the job; while the executor is unreachable (dockerd restarting), wait for it with backoff
        for a while instead of failing a job that did nothing wrong."""
        deadline = time.monotonic() + _START_PATIENCE_SECONDS
        while True:
            try:
                return self.ctx.executor.start(spec, self._note, self.ctx.shutdown)
            except ExecutorUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise
                self._note(f"the executor is unreachable ({exc}); waiting for it")
                self.ctx.health.executor_down(exc)
                if self.ctx.shutdown.wait(self._executor_outage.failed(exc)):
                    raise StartCancelled("the worker is shutting down; the job was not started") from None

    def _prune_images(self, image: str) -> None:
        """IMAGE_PRUNE_KEEP: hosts that run many tags keep only the most recently used ones."""
        keep, prune = self.ctx.settings.image_prune_keep, getattr(self.ctx.executor, "prune_images", None)
        if not keep or prune is None:
            return
        try:
            uses = self.ctx.state.image_used(image)
            if removed := prune(keep, self.ctx.settings.image_allowed_patterns(), uses):
                log.info("removed older images: %s", ", ".join(removed), extra=self._extra)
        except (OSError, ExecutorError, ExecutorUnavailable) as exc:
            log.warning("image pruning skipped: %s", exc, extra=self._extra)

    def run_adopted(self, handle: JobHandle) -> Status | None:
        """Supervise a job this worker started before it restarted, catching its log up first."""
        self.handle, self._adopted = handle, True
        record = self.ctx.state.load_job(handle.job_id)
        unfinished = record is not None and record.container_id is None and record.container_name == handle.name
        if record is None or (record.container_id != handle.ref and not unfinished):
            record = JobRecord(handle.job_id, handle.ref, handle.name)
        self.record = record
        self.attempt_number, self._attempt_token = record.attempt_number, record.attempt_token
        log.info("re-adopting job %s (container %s)", self.job_id, handle.name, extra=self._extra)
        self._check_backend()
        if self._lost is not None:  # before the log is touched: it may be another attempt's by now
            log.warning("job %s: no longer this worker's (%s); removing its container", self.job_id, self._lost)
            self.stop(StopReason.LOST_OWNERSHIP)
            self._remove()
            self.ctx.state.forget_job(self.job_id, handle.ref)
            return None
        try:
            self._log = JobLog.open(self.ctx.settings.shared_dir, self.job_id)
            if unfinished:  # the worker died while starting it: the file has the worker's own lines only
                record.container_id, record.position = handle.ref, LogPosition(file_size=self._log.size())
                self.ctx.state.save_job(record)
        except OSError as exc:
            return self._log_unwritable(exc)
        try:
            if not handle.started and not self._start_created():
                return self.status
            return self._supervise()
        finally:
            self._log.close()

    def _start_created(self) -> bool:
        """A container created but never started (the worker or dockerd was interrupted in between).

        Started when its job is still this worker's, else removed; False when it was removed.
        """
        assert self.handle is not None
        status: Status | None = Status.RUNNING  # if the backend cannot be asked now: run it, the checks stop it
        try:
            view = self.ctx.backend.job_status(self.job_id)
            status = view.status if view and owns(view, self.ctx.settings.worker_id, self.attempt_number) else None
        except BackendError as exc:
            log.debug("status check failed: %s", exc, extra=self._extra)
        if status in (Status.DISPATCHED, Status.SETUP, Status.RUNNING):
            self._note("the container had been created but not started; starting it now")
            try:
                self.ctx.executor.start_created(self.handle)
                self._report(Status.RUNNING)
                return True
            except (ExecutorError, ExecutorUnavailable) as exc:
                self._note(f"job could not start: {exc}")
                self._remove()
                self._fail(_start_error_code(exc), f"the container could not be started: {exc}")
                return False
        log.warning("job %s: never started and the backend has it as %s; removing it", self.job_id, status)
        self._remove()
        if status == Status.STOP_REQUESTED:
            self._report(Status.STOPPED, error="stopped before it started")
        self.ctx.state.forget_job(self.job_id)
        return False

    # --- asked from other threads ---

    def check_status_now(self) -> None:
        """The backend answered 409 to `running`: look at the job's status at once."""
        self._check_now.set()
        self._wake.set()

    def wake(self) -> None:
        """Look at the worker's shutdown flag now rather than at the next tick."""
        self._wake.set()

    def lose(self, why: str) -> None:
        """This worker no longer owns the job (another attempt has it): stop it at once, report nothing."""
        self._lost = self._lost or why
        self._wake.set()

    def summary(self) -> dict[str, Any]:
        """This job as the heartbeat lists it."""
        return {
            "job_id": self.job_id,
            "attempt_number": self.attempt_number,
            "status": str(self.status or Status.SETUP),
            "started_at": self.record.started_at if self.record else self.accepted_at,
            "container_name": self.handle.name if self.handle else None,
        }

    # --- the one way the worker ends a job ---

    def stop(self, reason: StopReason) -> None:
        """Stop the job (SIGTERM, SIGKILL after the grace period); the first reason decides what is reported,
        except that losing the job overrides any: then nothing is reported."""
        losing = reason == StopReason.LOST_OWNERSHIP and self._stop_reason != reason
        if self._stop_reason is None or losing:
            self._stop_reason = reason
            log.info("job %s: stopping it (%s)", self.job_id, reason, extra=self._extra)
        if self._stop_sent or self.handle is None:
            return
        try:
            self.ctx.executor.stop(self.handle, self.ctx.settings.stop_grace_period)
            self._stop_sent = True
        except ExecutorUnavailable as exc:
            self._executor_lost(exc)
        except ExecutorError as exc:
            log.warning("stopping job %s: %s", self.job_id, exc, extra=self._extra)

    # --- supervision ---

    def _supervise(self) -> Status | None:
        metrics.JOBS_STARTED.inc()
        try:
            # A re-adopted job catches up from the container's own log, skipping what the file already has.
            self._start_pump(from_start=self._adopted)
            return self._watch()
        except OSError as exc:
            return self._log_unwritable(exc)

    def _watch(self) -> Status | None:
        settings = self.ctx.settings
        next_status_poll = time.monotonic() + (0 if self._adopted else settings.status_poll_interval)
        next_refresh = time.monotonic() + settings.running_refresh_interval
        tick = min(_TICK_SECONDS, settings.status_poll_interval)
        while True:
            self._wake.wait(tick)
            self._wake.clear()
            if self._lost is not None and self._stop_reason != StopReason.LOST_OWNERSHIP:
                self._give_up_ownership(self._lost)  # before anything is reported or written for it
            if self._pump_state.ended.is_set():
                code = self._settle()
                if code is not None:
                    self.exited = True
                    self.ctx.exited()
                    return self._finish(code)
            if self.ctx.shutdown.is_set():
                if not settings.stop_job_on_exit:
                    log.info("job %s left running for the next worker start", self.job_id, extra=self._extra)
                    return None
                self.stop(StopReason.SHUTDOWN)
            now = time.monotonic()
            if self._check_now.is_set() or now >= next_status_poll:
                self._check_now.clear()
                next_status_poll = now + settings.status_poll_interval
                if self._stop_reason is not None and not self._stop_sent:
                    self.stop(self._stop_reason)  # the last try failed (executor down, an API error)
                self._check_backend()
                self._check_started()
            if now >= next_refresh:
                next_refresh = now + settings.running_refresh_interval
                self._refresh_running()
            self._check_timeout()

    def _check_backend(self) -> None:
        try:
            view = self.ctx.backend.job_status(self.job_id)
        except BackendError as exc:
            log.debug("status check failed: %s", exc, extra=self._extra)
            return
        if view is None:
            self.lose("the backend does not know the job")
        elif not owns(view, self.ctx.settings.worker_id, self.attempt_number):
            self.lose(f"the backend gave it to worker {view.worker_id}, attempt {view.attempt_number}")
        elif view.status in STOPPING:
            self.stop(StopReason.CANCELED if view.status == Status.CANCELED else StopReason.REQUESTED)
        elif view.status in TERMINAL or view.status == Status.QUEUED:
            self.lose(f"the backend has it as {view.status}")

    def _give_up_ownership(self, why: str) -> None:
        log.warning("job %s: no longer this worker's (%s); removing its container", self.job_id, why, extra=self._extra)
        dropped = self.ctx.reporter.drop_attempt(self.job_id, self.attempt_number)
        if dropped:
            log.info("job %s: %d pending status(es) of this attempt dropped", self.job_id, dropped, extra=self._extra)
        self._note(f"this worker no longer runs the job ({why}); its container is removed")
        assert self._log is not None
        self._log.close()  # from here on the log belongs to whoever has the job now
        self.stop(StopReason.LOST_OWNERSHIP)

    def _check_started(self) -> None:
        """A queued batch job (Slurm) is `setup` until the cluster runs it; then `running`, once."""
        outcome = getattr(self.ctx.executor, "outcome", None)
        if self.status not in (None, Status.SETUP) or outcome is None or self.handle is None or self._stop_reason:
            return
        try:
            self.ctx.executor.exit_code(self.handle)  # refreshes the executor's verdict
        except (ExecutorError, ExecutorUnavailable) as exc:
            log.debug("state check failed: %s", exc, extra=self._extra)
            return
        verdict = outcome(self.handle)
        if verdict is None:
            return
        if verdict.status in (Status.RUNNING, Status.FINISHED, Status.FAILED):
            self._report(Status.RUNNING)
            return
        # Still queued: `setup` again whenever the reason or the place in the line changes, so that the
        # person who submitted the job sees why it waits (the backend takes a repeated status as a refresh).
        waiting = {key: verdict.details[key] for key in _QUEUE_DETAILS if key in verdict.details}
        if waiting != self._queue_seen:
            self._queue_seen = waiting
            details = dict(verdict.details)
            if verdict.error_hint:
                details["hint"] = verdict.error_hint  # e.g. the job can never start as submitted
            self._report(Status.SETUP, **details)

    def _refresh_running(self) -> None:
        if self._stop_reason is not None or self.status != Status.RUNNING:
            return
        try:
            self.ctx.backend.send_status(self._update(Status.RUNNING))
        except Conflict:
            self.check_status_now()
        except BackendError as exc:
            log.debug("running refresh failed: %s", exc, extra=self._extra)

    def _check_timeout(self) -> None:
        # Wall time since the job started, so a re-adopted job keeps its original deadline.
        limit = self.ctx.settings.job_timeout
        if limit and self.record and self.ctx.clock() - self.record.started_at >= limit and not self._stop_reason:
            log.warning("job %s hit JOB_TIMEOUT", self.job_id, extra=self._extra)
            self.stop(StopReason.TIMEOUT)

    # --- the end of the job ---

    def _settle(self) -> int | None:
        """The pump has ended: return the exit code once every byte is in the log, else resume pumping."""
        assert self.handle is not None
        try:
            code = self.ctx.executor.exit_code(self.handle)
        except ExecutorUnavailable as exc:
            self.ctx.shutdown.wait(min(self._executor_lost(exc), self.ctx.settings.status_poll_interval))
            return None
        except JobLost as exc:
            log.error("job %s: %s", self.job_id, exc, extra=self._extra)
            self._fail_reason = f"container lost: {exc}"
            return -1
        except ExecutorError as exc:  # an API error (e.g. a 500): the container is still there; ask again later
            log.warning("job %s: %s", self.job_id, exc, extra=self._extra)
            self.ctx.shutdown.wait(min(self._pump_outage.failed(exc), self.ctx.settings.status_poll_interval))
            return None
        if self._executor_outage.down:
            self._executor_outage.succeeded()
        if self._stop_reason == StopReason.LOST_OWNERSHIP:
            return code  # its log is no longer this worker's to complete
        if code is not None and self._pump_state.complete and not self._executor_trouble:
            assert self._pump is not None
            try:
                self._pump.finish()  # only now: a stream that was merely cut holds its tail for the next pump
                return code
            except OSError as exc:
                self._pump_state.clean = False  # the next turn catches up from the last checkpoint
                self._log_failed(exc)
                return None
        # Catch up from the container's own log, where the file stopped: following it while the job
        # runs, and once it has exited with one read to the end of its log.
        if code is None and time.monotonic() - self._pump_started < 1.0:
            # The stream keeps ending at once (a broken log, an API error): back off instead of spinning.
            self.ctx.shutdown.wait(min(self._pump_outage.failed("the output stream ended at once"), 10.0))
        else:
            self._pump_outage.succeeded()
        self._executor_trouble = False
        try:
            if self._log_outage.down or self._pump_state.log_broke:
                self._reopen_log()
            self._start_pump(from_start=True, follow=code is None)
        except OSError as exc:
            self._log_failed(exc)
        return None

    def _log_failed(self, error: OSError) -> None:
        """The share failed under the job's log (NFS: ESTALE, EIO). The job runs on and Docker keeps its
        output: wait for the share (the heartbeat says why), then reopen the log and catch up."""
        self.ctx.health.share_checked(f"the log of job {self.job_id} cannot be written: {os_error(error)}", None)
        self.ctx.shutdown.wait(min(self._log_outage.failed(error), self.ctx.settings.status_poll_interval))

    def _reopen_log(self) -> None:
        """By its path: a descriptor NFS answered ESTALE for stays stale even once the share is back."""
        assert self._log is not None
        fresh = JobLog.open(self.ctx.settings.shared_dir, self.job_id)
        self._log.close()
        self._log = fresh
        self._log_outage.succeeded()
        self.ctx.health.share_checked(None, share_free_bytes(self.ctx.settings.shared_dir))

    def _finish(self, code: int) -> Status | None:
        assert self.handle is not None
        error_code, error, details = self._verdict(code)
        if self._stop_reason is not None:
            status = self._stop_reason.status
        else:
            status = Status.FAILED if error_code else Status.FINISHED
        if status in (Status.FINISHED, Status.FAILED) and self.status in (None, Status.SETUP):
            self._report(Status.RUNNING)  # a batch job that ran between two looks: setup -> finished is refused
        if status is not None:
            self._report(status, exit_code=code, error=error, error_code=error_code, **details)
        log.info("job %s ended: exit code %s, %s", self.job_id, code, status or "not reported", extra=self._extra)
        self._ended = True
        metrics.JOBS_ENDED.labels(str(status or "abandoned")).inc()
        if self.record is not None:
            metrics.JOB_DURATION.observe(max(0.0, self.ctx.clock() - self.record.started_at))
        return status

    def _verdict(self, code: int) -> tuple[str | None, str | None, dict[str, Any]]:
        """(error code, error, details) of a job that ended with `code`."""
        assert self.handle is not None
        details: dict[str, Any] = {"duration_seconds": round(self.ctx.clock() - self.accepted_at, 3)}
        if self._pump is not None:
            details["log_bytes"] = self._pump.written
        if code > 128:
            details["signal"] = code - 128
        if self._stop_reason is not None:
            timed_out = self._stop_reason == StopReason.TIMEOUT
            return ("timeout" if timed_out else None), self._stop_reason.error, details
        if self._fail_reason is not None:
            return "lost_container", self._fail_reason, details
        try:
            ended = self.ctx.executor.end_details(self.handle)
        except (ExecutorError, ExecutorUnavailable) as exc:
            log.debug("no end details: %s", exc, extra=self._extra)
            ended = {}
        verdict_keys = ("error_code", "error", "error_category", "error_hint")
        details.update({key: value for key, value in ended.items() if key not in verdict_keys})
        if ended.get("error_code"):  # an executor with its own verdict (Slurm: timeout, node failure...)
            details.update(category=ended.get("error_category"), hint=ended.get("error_hint"))
            return str(ended["error_code"]), ended.get("error"), details
        error_code = exit_code_error(code, bool(ended.get("oom_killed")))
        if error_code and ended.get("error_hint"):  # the executor knows more than the code (Docker: who SIGKILLed)
            details["hint"] = ended["error_hint"]
        return error_code, _exit_error(error_code, code), details

    def refuse(self, error: PayloadError) -> Status:
        """The payload asks for what this worker does not run: the job fails with the reason."""
        return self._fail(error.code, f"{error.code}: {error.reason}")

    def hand_back(self) -> Status:
        """The worker shuts down before the job started: give it back to the queue (or fail it, if refused)."""
        log.info("job %s: handed back to the backend (worker shutting down)", self.job_id, extra=self._extra)
        self._report(Status.QUEUED, error="worker shut down before the job started", error_code="worker_shutdown")
        self._forget_unstarted()
        return Status.QUEUED

    def _fail(self, error_code: str, error: str) -> Status:
        log.error("job %s failed to start: %s", self.job_id, error, extra=self._extra)
        self._report(Status.FAILED, error=error, error_code=error_code)
        self._forget_unstarted()
        return Status.FAILED

    def _forget_unstarted(self) -> None:
        """Remove this attempt's record if it was saved before its container existed (never another's)."""
        record = self.ctx.state.load_job(self.job_id)
        if record is not None and record.container_id is None and record.attempt_number == self.attempt_number:
            self.ctx.state.forget_job(self.job_id)

    def _log_unwritable(self, exc: OSError) -> Status:
        # The job log cannot be written (share gone, or a symlink planted): do not run the job blind.
        log.error("job %s: cannot write its log: %s", self.job_id, exc, extra=self._extra)
        if self.handle is not None:
            try:
                self.ctx.executor.stop(self.handle, self.ctx.settings.stop_grace_period)
            except (ExecutorError, ExecutorUnavailable) as error:
                log.warning("stopping job %s: %s", self.job_id, error, extra=self._extra)
        self._report(Status.FAILED, error=f"cannot write the job log: {exc}", error_code="log_unwritable")
        return Status.FAILED

    def clean_up(self) -> None:
        """Once a job that ended is reported and its slot taken by the next: remove its container, then its
        record (the record last: a worker killed in between finds the container, sees the job has ended and
        removes it)."""
        if self._ended and self.handle is not None:
            self._remove()
            self.ctx.state.forget_job(self.job_id, self.handle.ref)

    def _remove(self) -> None:
        assert self.handle is not None
        try:
            self.ctx.executor.remove(self.handle)
        except (ExecutorError, ExecutorUnavailable) as exc:
            log.warning("could not remove container %s: %s", self.handle.name, exc, extra=self._extra)

    # --- helpers ---

    def _start_pump(self, from_start: bool, follow: bool = True) -> None:
        assert self.handle is not None and self.record is not None and self._log is not None
        handle, executor = self.handle, self.ctx.executor
        # First the pump, which touches the file (OSError when the share fails): the state is replaced only
        # once a pump thread will run and end it, else the next turn would wait for an end that never comes.
        self._pump = pump = LogPump(
            self._log,
            self.record.position,
            # Docker replays its log's messages; a Slurm job's output files are raw bytes from the start.
            raw=not from_start or self._raw_replay,
            secrets=secret_values(handle.env, self.ctx.settings),
            max_bytes=self.ctx.settings.max_log_bytes,
            on_checkpoint=self._save_position,
        )
        # A raw replay (Slurm's output files) that ends cleanly has read all the job printed, followed or not.
        self._pump_state = state = _PumpState(live=not from_start or self._raw_replay, follow=follow)
        self._pump_started = time.monotonic()

        def run() -> None:
            try:
                try:
                    pump.pump(executor.output(handle, from_start, follow))
                    shifted = not follow and pump.replay_short
                except ReplayShifted:
                    shifted = True
                if shifted:  # Docker rotated away the start of its copy while no worker read it
                    log.warning(
                        "job %s: the replay no longer starts at the job's start", self.job_id, extra=self._extra
                    )
                    pump.relocate(executor.output(handle, True, False))
                    pump.pump(executor.output(handle, True, follow))
                state.clean = True
            except (ExecutorUnavailable, ExecutorError) as exc:
                log.warning("log stream of job %s broke: %s", self.job_id, exc, extra=self._extra)
            except OSError as exc:  # the log's: the output stream wraps its own errors in ExecutorUnavailable
                state.log_broke = True
                log.warning("job %s: its log could not be written: %s", self.job_id, exc, extra=self._extra)
            finally:
                state.ended.set()
                self._wake.set()

        threading.Thread(target=run, name=f"pump-{self.job_id}", daemon=True).start()

    @property
    def _raw_replay(self) -> bool:
        return bool(getattr(self.ctx.executor, "replay_is_raw", False))

    def _executor_lost(self, error: ExecutorUnavailable) -> float:
        """The executor went away mid-job: say so in the heartbeat; the job's fate is settled when it is back."""
        self._executor_trouble = True
        self.ctx.health.executor_down(error)
        return self._executor_outage.failed(error)

    def _save_position(self, position: LogPosition) -> None:
        assert self.record is not None
        self.record.position = position
        self.ctx.state.save_job(self.record)

    def _note(self, line: str) -> None:
        """A line from the worker itself (e.g. image pull progress), in both the worker log and the job log."""
        log.info("job %s: %s", self.job_id, line, extra=self._extra)
        if self._log is not None:
            self._log.note(line)

    def _report(
        self,
        status: Status,
        exit_code: int | None = None,
        error: str | None = None,
        error_code: str | None = None,
        **details: Any,
    ) -> None:
        self.status = status
        update = self._update(status, exit_code, error)
        if error_code is not None:
            update = failure(update, error_code, exit_code=exit_code, **details)
        elif details:
            update = replace(update, details=details)
        self.ctx.reporter.report(update)

    def _update(self, status: Status, exit_code: int | None = None, error: str | None = None) -> StatusUpdate:
        ref, name = (self.handle.ref, self.handle.name) if self.handle else (None, None)
        return StatusUpdate(
            self.job_id,
            status,
            ref,
            name,
            exit_code=exit_code,
            error=error,
            attempt_number=self.attempt_number,
            attempt_token=self._attempt_token,
            worker_version=__version__,
        )


def _exit_error(error_code: str | None, code: int) -> str | None:
    """The `error` text of a job that ended by itself."""
    if error_code == "oom_killed":
        return f"the job ran out of memory (exit code {code})"
    if error_code == "killed_by_signal":
        return f"the job was killed by signal {code - 128}"
    return f"the job exited with code {code}" if error_code else None


def _start_error_code(error: Exception) -> str:
    if isinstance(error, ExecutorUnavailable):
        return "docker_unavailable"
    return "image_unavailable" if isinstance(error, ImageUnavailable) else "start_failed"
