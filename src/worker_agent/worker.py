"""The worker loop: bootstrap, re-adopt, then poll -> run -> report, until told to stop."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from worker_agent import __version__, metrics, payload
from worker_agent.backend import BackendClient, BackendError, StatusUpdate
from worker_agent.config import ConfigError, Settings
from worker_agent.docker_executor import DockerExecutor
from worker_agent.executor import Executor, ExecutorUnavailable, JobHandle, StartError
from worker_agent.heartbeat import Heartbeat
from worker_agent.jobfiles import open_job_log
from worker_agent.jobrun import DETACHED, JobRun
from worker_agent.policy import build_spec
from worker_agent.reporter import Reporter
from worker_agent.retry import Outage
from worker_agent.share import share_problem
from worker_agent.state import JobRecord, LogPosition, StateDir
from worker_agent.telemetry import host_info, share_free_bytes

log = logging.getLogger(__name__)

# SIGTERM must leave the worker within 5 s: this much of it may go to delivering pending statuses.
_EXIT_FLUSH_SECONDS = 3.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        backend: BackendClient | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend or BackendClient(
            settings.server,
            settings.worker_id,
            timeout=settings.http_timeout,
            token=settings.token,
            verify=str(settings.ca_bundle) if settings.ca_bundle and settings.tls_verify else settings.tls_verify,
        )
        self.executor: Executor = executor or DockerExecutor(settings.image_pull_policy)
        self.state = StateDir(settings.state_dir)
        self.outbox = self.state.outbox()
        self.reporter = Reporter(self.backend, self.outbox, on_stop_seen=self._stop_seen)
        self.heartbeat = Heartbeat(self.backend, settings.heartbeat_interval, self.heartbeat_info)
        self.stopping = threading.Event()  # SIGTERM/SIGINT: leave now
        self.draining = threading.Event()  # SIGUSR1: leave after the current job
        self._wake = threading.Event()
        self._threads_stop = threading.Event()
        self._backend_outage = Outage("backend", log)
        self._docker_outage = Outage("Docker", log)
        self._share_outage = Outage("shared directory", log)
        self.share_problem: str | None = None
        self.shared_free_bytes: int | None = None
        self._needs_readopt = True
        self.active: JobRun | None = None
        self.last_job_id: str | None = None
        self.last_terminal_status: str | None = None
        self.docker_version: str | None = None
        self._docker_error: ExecutorUnavailable | None = None

    # --- the story ---

    def run(self) -> int:
        self._bootstrap()
        try:
            while not self._should_exit():
                delay = self._step()
                if delay:
                    self._sleep(delay)
        finally:
            self._teardown()
        return 0

    def _step(self) -> float:
        """One turn of the loop; returns how long to wait before the next."""
        if not self.check_docker():
            return self._docker_outage.failed(self._docker_error)
        if not self._share_ready():
            return self._share_outage.failed(self.share_problem)
        if self._needs_readopt:
            self._readopt()
            return 0
        try:
            raw = self.backend.next_job()
        except BackendError as exc:
            return self._backend_outage.failed(exc)
        self._backend_outage.succeeded()
        if raw is None or not self._run_payload(raw):
            # No work, or a payload skipped unread: a backend that keeps sending one must not spin the loop.
            return self.settings.poll_interval
        return 0  # right after a job ends, poll again at once

    def _should_exit(self) -> bool:
        # Between jobs: SIGUSR1 means leave now; exit-after-job means leave once one job has run.
        one_done = self.settings.exit_after_job and self.last_job_id is not None
        return self.stopping.is_set() or self.draining.is_set() or one_done

    # --- jobs ---

    def _run_payload(self, raw: Any) -> bool:
        """Run (or fail) the payload's job; False when it was skipped for want of a usable job_id."""
        try:
            job = payload.parse(raw)
            spec = build_spec(job, self.settings)
        except payload.PayloadError as exc:
            if exc.job_id is None:
                log.error("skipping a payload without a usable job_id: %s", exc.reason)
                return False
            self._report_start_failure(exc.job_id, f"invalid_payload: {exc.reason}")
            return True
        try:
            fd = open_job_log(self.settings.shared_dir, job.job_id)
        except OSError as exc:
            self._report_start_failure(job.job_id, f"cannot write the job log: {exc}")
            return True
        try:
            handle = self.executor.start(spec, progress=lambda line: _note(fd, job.job_id, line))
            log_size = os.fstat(fd).st_size
        except (StartError, ExecutorUnavailable) as exc:
            _note(fd, job.job_id, f"job could not start: {exc}")
            self._report_start_failure(job.job_id, str(exc))
            return True
        finally:
            os.close(fd)
        record = JobRecord(job.job_id, handle.ref, handle.name, LogPosition(file_size=log_size))
        self.state.save_job(record)
        self.reporter.report(StatusUpdate(job.job_id, "running", handle.ref, handle.name))
        self._supervise(handle, record, adopted=False)
        return True

    def _readopt(self) -> None:
        """Take back the containers this worker started before it restarted."""
        try:
            owned = self.executor.find_owned(self.settings.worker_id)
        except ExecutorUnavailable as exc:
            self._docker_outage.failed(exc)
            return
        self._needs_readopt = False
        for handle in owned:
            if self.stopping.is_set():
                return
            record = self.state.load_job(handle.job_id)
            if record is None or record.container_id != handle.ref:
                record = JobRecord(handle.job_id, handle.ref, handle.name)
            log.info(
                "re-adopting job %s (container %s)",
                handle.job_id,
                handle.name,
                extra={"job_id": handle.job_id},
            )
            self._supervise(handle, record, adopted=True)

    def _supervise(self, handle: JobHandle, record: JobRecord, adopted: bool) -> None:
        self.active = JobRun(self, handle, record, adopted)
        self.heartbeat.beat_now()
        metrics.JOBS_STARTED.inc()
        try:
            status = self.active.supervise()
        except OSError as exc:
            # The job log cannot be written (share gone, or a symlink planted): do not run blind.
            log.error("job %s: cannot write its log: %s", handle.job_id, exc, extra={"job_id": handle.job_id})
            with contextlib.suppress(StartError, ExecutorUnavailable):
                self.executor.stop(handle, self.settings.stop_grace_period)
            status = "failed"
            self.reporter.report(
                StatusUpdate(handle.job_id, status, handle.ref, handle.name, error=f"cannot write the job log: {exc}")
            )
        finally:
            self.active = None
        if status != DETACHED:
            metrics.JOBS_ENDED.labels(status).inc()
            metrics.JOB_DURATION.observe(max(0.0, time.time() - record.started_at))
        self.last_job_id, self.last_terminal_status = handle.job_id, status
        self.heartbeat.beat_now()

    def _report_start_failure(self, job_id: str, error: str) -> None:
        log.error("job %s failed to start: %s", job_id, error, extra={"job_id": job_id})
        self.reporter.report(StatusUpdate(job_id, "failed", error=error))
        self.last_job_id, self.last_terminal_status = job_id, "failed"

    def _stop_seen(self, job_id: str) -> None:
        active = self.active
        if active is not None and active.job.job_id == job_id:
            active.check_status_now()

    # --- health of what the worker depends on ---

    def check_docker(self) -> bool:
        try:
            self.docker_version = self.executor.ping()
        except ExecutorUnavailable as exc:
            self.docker_lost(exc)
        metrics.DOCKER_UP.set(self.docker_version is not None)
        if self.docker_version is not None:
            self._docker_outage.succeeded()
        return self.docker_version is not None

    def docker_lost(self, error: ExecutorUnavailable) -> None:
        if self.docker_version is not None:
            self.heartbeat.beat_now()  # tell the backend at once that this host cannot run jobs now
        self.docker_version, self._docker_error = None, error
        metrics.DOCKER_UP.set(0)

    def _share_ready(self) -> bool:
        """No job is taken (or re-adopted) while the share is missing: its log would land on local disk."""
        self.share_problem = share_problem(self.settings.shared_dir, self.settings.share_check)
        self.shared_free_bytes = None if self.share_problem else share_free_bytes(self.settings.shared_dir)
        metrics.SHARE_HEALTHY.set(self.share_problem is None)
        if self.share_problem is None:
            self._share_outage.succeeded()
        return self.share_problem is None

    def heartbeat_info(self) -> dict[str, Any]:
        active = self.active
        return {
            "worker_version": __version__,
            "executor": self.executor.name,
            "active_job_id": active.job.job_id if active else None,
            "active_job_count": 1 if active else 0,
            "last_job_id": self.last_job_id,
            "last_terminal_status": self.last_terminal_status,
            "draining": self.draining.is_set() or self.stopping.is_set() or self.settings.exit_after_job,
            "docker_ok": self.docker_version is not None,
            "docker_version": self.docker_version,
            "share_ok": self.share_problem is None,
            "share_problem": self.share_problem,
            "outbox_depth": self.outbox.depth(),
            "shared_free_bytes": self.shared_free_bytes,
            **host_info(),
        }

    # --- start and end ---

    def _bootstrap(self) -> None:
        try:
            self.state.prepare()
        except OSError as exc:
            raise ConfigError(f"invalid WORKER_STATE_DIR={str(self.settings.state_dir)!r}: {exc}") from None
        self._install_signal_handlers()
        for name, target in (("heartbeat", self.heartbeat.run), ("reporter", self.reporter.run)):
            threading.Thread(target=target, args=(self._threads_stop,), name=name, daemon=True).start()
        log.info("worker %s started (version %s)", self.settings.worker_id, __version__)

    def _teardown(self) -> None:
        if not self.stopping.is_set() and self.outbox.depth():
            # A planned exit (exit-after-job, SIGUSR1) waits until the backend has every status; a signal cuts it short.
            log.info("waiting for the backend to acknowledge %d status update(s)", self.outbox.depth())
            while not self.reporter.flush(1.0) and not self.stopping.is_set():
                pass
        if not self.reporter.flush(_EXIT_FLUSH_SECONDS):
            log.warning("statuses not yet acknowledged stay in %s for the next start", self.state.root)
        self._threads_stop.set()
        self.heartbeat.beat_now()
        # A last heartbeat, so the hosts view shows how the last job ended and that the worker is leaving.
        if not self.outbox.depth():
            with contextlib.suppress(BackendError):
                self.heartbeat.send()
        log.info("worker %s stopped", self.settings.worker_id)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGUSR1, self._on_drain_signal)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping.is_set():
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s received: shutting down", signal.Signals(signum).name)
        self.stopping.set()
        self._wake.set()

    def _on_drain_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("SIGUSR1 received: exiting after the current job")
        self.draining.set()
        self._wake.set()
        self.heartbeat.beat_now()

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()


def _note(fd: int, job_id: str, line: str) -> None:
    """A line from the worker itself (e.g. image pull progress), in both the worker log and the job log."""
    log.info("job %s: %s", job_id, line, extra={"job_id": job_id})
    os.write(fd, f"[job-worker-agent] {line}\n".encode())
