"""One job from its start (or re-adoption) to its reported end: log pump, refreshes, stop checks."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from worker_agent.backend import STOPPING, TERMINAL, BackendError, Conflict, StatusUpdate
from worker_agent.executor import ExecutorUnavailable, JobHandle, StartError
from worker_agent.jobfiles import open_job_log
from worker_agent.logpump import LogPump
from worker_agent.policy import secret_values
from worker_agent.retry import Outage
from worker_agent.state import JobRecord, LogPosition

if TYPE_CHECKING:
    from worker_agent.worker import Worker

log = logging.getLogger(__name__)

# How often the supervision loop looks at the job when nothing else is due.
_TICK_SECONDS = 0.5
DETACHED = "detached"  # the worker exits and leaves the job running, for its next start to re-adopt
ABANDONED = "abandoned"  # the backend gave up on the job: its container is removed, nothing reported


@dataclass
class _Ending:
    """Why the job is ending when the worker (not the job) decided it."""

    status: str
    error: str | None = None


@dataclass
class _PumpState:
    live: bool  # reading the attach stream opened before the container started
    follow: bool  # reading the container's log and following it
    ended: threading.Event = field(default_factory=threading.Event)
    clean: bool = False

    @property
    def complete(self) -> bool:
        """A clean end that proves every byte was read once the container has exited.

        A *followed* log read is not proof: dockerd stops following when the container exits,
        however far behind the reader is (seen with dockerd 20.10 after a worker restart mid-flood).
        """
        return self.clean and (self.live or not self.follow)


class JobRun:
    def __init__(self, worker: Worker, job: JobHandle, record: JobRecord, adopted: bool) -> None:
        self.w = worker
        self._adopted = adopted
        self.job = job
        self.record = record
        self._ending: _Ending | None = None
        self._stop_sent = False
        self._stop_seen = threading.Event()
        self._docker = Outage("Docker", log, extra={"job_id": job.job_id})
        self._docker_trouble = False
        self._fd = -1
        self._pump_state = _PumpState(live=True, follow=True)

    @property
    def _extra(self) -> dict[str, str]:
        return {"job_id": self.job.job_id}

    def check_status_now(self) -> None:
        """Called when the backend answered 409 to `running`: look at the job's status at once."""
        self._stop_seen.set()

    def supervise(self) -> str:
        """Run until the job has ended and is reported; return its terminal status, or DETACHED."""
        settings = self.w.settings
        self._fd = open_job_log(settings.shared_dir, self.job.job_id)
        try:
            # A re-adopted job catches up from the container's own log, skipping what the file already has.
            self._start_pump(from_start=self._adopted)
            return self._watch()
        finally:
            os.close(self._fd)

    # --- the watch loop ---

    def _watch(self) -> str:
        settings = self.w.settings
        next_status_poll = time.monotonic() + (0 if self._adopted else settings.status_poll_interval)
        next_refresh = time.monotonic() + settings.running_refresh_interval
        while True:
            self._pump_state.ended.wait(_TICK_SECONDS)
            if self._pump_state.ended.is_set():
                code = self._settle()
                if code is not None:
                    return self._finish(code)
            now = time.monotonic()
            if self.w.stopping.is_set():
                if not settings.stop_job_on_exit:
                    log.info("job %s left running for the next worker start", self.job.job_id, extra=self._extra)
                    return DETACHED
                self._stop(_Ending("stopped", "worker shut down"))
            if self._stop_seen.is_set() or now >= next_status_poll:
                self._stop_seen.clear()
                next_status_poll = now + settings.status_poll_interval
                self._check_backend()
            if now >= next_refresh:
                next_refresh = now + settings.running_refresh_interval
                self._refresh_running()
            # Wall time since the job started, so a re-adopted job keeps its original deadline.
            overdue = settings.job_timeout and time.time() - self.record.started_at >= settings.job_timeout
            if overdue and self._ending is None:
                log.warning("job %s hit JOB_TIMEOUT", self.job.job_id, extra=self._extra)
                self._stop(_Ending("failed", "timeout"))

    def _check_backend(self) -> None:
        try:
            status = self.w.backend.job_status(self.job.job_id)
        except BackendError as exc:
            log.debug("status check failed: %s", exc, extra=self._extra)
            return
        if status in STOPPING and self._ending is None:
            log.info("job %s: backend says %s; stopping it", self.job.job_id, status, extra=self._extra)
            self._stop(_Ending("canceled" if status == "canceled" else "stopped"))
        elif (status is None or status in TERMINAL or status == "queued") and self._ending is None:
            # The backend has given up on this job (or never knew it): running it on helps no one.
            log.warning(
                "job %s: backend has it as %s; removing its container", self.job.job_id, status, extra=self._extra
            )
            self._stop(_Ending(ABANDONED))

    def _refresh_running(self) -> None:
        if self._ending is not None:
            return
        try:
            self.w.backend.send_status(self._update("running"))
        except Conflict:
            self._stop_seen.set()
        except BackendError as exc:
            log.debug("running refresh failed: %s", exc, extra=self._extra)

    def _stop(self, ending: _Ending) -> None:
        self._ending = self._ending or ending
        if self._stop_sent:
            return
        try:
            self.w.executor.stop(self.job, self.w.settings.stop_grace_period)
            self._stop_sent = True
        except ExecutorUnavailable as exc:
            self._docker_lost(exc)
        except StartError as exc:
            log.warning("stopping job %s: %s", self.job.job_id, exc, extra=self._extra)

    # --- the end of the job ---

    def _settle(self) -> int | None:
        """The pump has ended: return the exit code once every byte is in the log, else resume pumping."""
        try:
            code = self.w.executor.exit_code(self.job)
        except ExecutorUnavailable as exc:
            time.sleep(min(self._docker_lost(exc), self.w.settings.status_poll_interval))
            return None
        except StartError as exc:
            log.error("job %s: %s", self.job.job_id, exc, extra=self._extra)
            self._ending = self._ending or _Ending("failed", f"container lost: {exc}")
            return -1
        if self._docker.down:
            self._docker.succeeded()
            self.w.check_docker()
        if code is not None and self._pump_state.complete and not self._docker_trouble:
            return code
        # Catch up from the container's own log, where the file stopped: following it while the job
        # runs, and once it has exited with one read to the end of its log.
        self._docker_trouble = False
        self._start_pump(from_start=True, follow=code is None)
        return None

    def _finish(self, code: int) -> str:
        ending = self._ending
        if ending is not None and ending.status == ABANDONED:
            status = ABANDONED
        else:
            status, error = (ending.status, ending.error) if ending else ("finished" if code == 0 else "failed", None)
            self.w.reporter.report(self._update(status, exit_code=code, error=error))
        log.info("job %s ended: exit code %s, %s", self.job.job_id, code, status, extra=self._extra)
        try:
            self.w.executor.remove(self.job)
        except (StartError, ExecutorUnavailable) as exc:
            log.warning("could not remove container %s: %s", self.job.name, exc, extra=self._extra)
        self.w.state.forget_job(self.job.job_id)
        return status

    # --- helpers ---

    def _start_pump(self, from_start: bool, follow: bool = True) -> None:
        self._pump_state = state = _PumpState(live=not from_start, follow=follow)
        pump = LogPump(
            self._fd,
            self.record.position,
            secrets=secret_values(self.job.env, self.w.settings),
            max_bytes=self.w.settings.max_log_bytes,
            on_checkpoint=self._save_position,
        )

        def run() -> None:
            try:
                pump.pump(self.w.executor.output(self.job, from_start, follow))
                state.clean = True
            except (ExecutorUnavailable, StartError, OSError) as exc:
                log.warning("log stream of job %s broke: %s", self.job.job_id, exc, extra=self._extra)
            finally:
                state.ended.set()

        threading.Thread(target=run, name=f"pump-{self.job.job_id}", daemon=True).start()

    def _docker_lost(self, error: ExecutorUnavailable) -> float:
        """Docker went away mid-job: say so in the heartbeat; the job's fate is settled when it is back."""
        self._docker_trouble = True
        self.w.docker_lost(error)
        return self._docker.failed(error)

    def _save_position(self, position: LogPosition) -> None:
        self.record.position = position
        self.w.state.save_job(self.record)

    def _update(self, status: str, exit_code: int | None = None, error: str | None = None) -> StatusUpdate:
        return StatusUpdate(self.job.job_id, status, self.job.ref, self.job.name, exit_code=exit_code, error=error)
