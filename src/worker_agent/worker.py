"""The worker loop: bootstrap, re-adopt, then poll for work while a slot is free, until told to stop.

Each job lives in its own slot thread (job.JobRun); the loop only decides when to ask for work.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from worker_agent import __version__, payload
from worker_agent.backend.client import CAPABILITIES, BackendClient, BackendError
from worker_agent.backend.heartbeat import Heartbeat
from worker_agent.backend.reporter import Reporter
from worker_agent.backoff import Outage
from worker_agent.config import ConfigError, Settings
from worker_agent.domain import Status
from worker_agent.executors.base import Executor, ExecutorError, ExecutorUnavailable
from worker_agent.health import Health
from worker_agent.job import JobContext, JobRun
from worker_agent.ops import metrics
from worker_agent.ops.telemetry import host_info, share_free_bytes
from worker_agent.share import share_problem
from worker_agent.state.store import StateDir

log = logging.getLogger(__name__)

# SIGTERM must leave the worker within 5 s: this much of it may go to jobs detaching, and this much to
# delivering pending statuses.
_EXIT_DETACH_SECONDS = 1.5
_EXIT_FLUSH_SECONDS = 2.5


class _Slots:
    """The jobs in hand, one thread each; `changed` is set whenever one ends.

    A slot is free once its job's exit code is known: the next job starts while the thread records and reports
    the end (fsyncs, a few milliseconds) and removes the container (Docker takes tens of milliseconds)."""

    def __init__(self, limit: int, changed: threading.Event) -> None:
        self.limit = limit
        # Keyed by the run itself: for a moment two attempts of one job may both be in hand.
        self._runs: dict[int, tuple[JobRun, threading.Thread]] = {}
        self._cleaning: set[threading.Thread] = set()  # slots freed, containers still being removed
        self._lock = threading.Lock()
        self._changed = changed
        metrics.SLOTS.set(limit)

    def start(
        self, run: JobRun, body: Callable[[], Status | None], on_end: Callable[[JobRun, Status | None], None]
    ) -> None:
        def life() -> None:
            try:
                on_end(run, body())
            except Exception:
                log.exception("job %s: unexpected error in its slot", run.job_id, extra={"job_id": run.job_id})
            finally:
                with self._lock:
                    self._runs.pop(id(run), None)
                    self._cleaning.add(thread)
                    metrics.ACTIVE_JOBS.set(len(self._runs))
                self._changed.set()
            try:
                run.clean_up()
            except Exception:
                log.exception("job %s: unexpected error removing it", run.job_id, extra={"job_id": run.job_id})
            finally:
                with self._lock:
                    self._cleaning.discard(thread)

        thread = threading.Thread(target=life, name=f"job-{run.job_id}", daemon=True)
        with self._lock:
            self._runs[id(run)] = (run, thread)
            metrics.ACTIVE_JOBS.set(len(self._runs))
        thread.start()

    def runs(self) -> list[JobRun]:
        with self._lock:
            return [run for run, _ in self._runs.values()]

    def get(self, job_id: str) -> JobRun | None:
        """The newest run of this job in hand, if any."""
        with self._lock:
            runs = [run for run, _ in self._runs.values() if run.job_id == job_id]
        return runs[-1] if runs else None

    @property
    def free(self) -> int:
        with self._lock:
            return self.limit - sum(not run.exited for run, _ in self._runs.values())

    def join(self, timeout: float | None) -> bool:
        """Wait for every slot to end and every container of an ended job to be removed; False when `timeout`
        ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = [thread for _, thread in self._runs.values()] + list(self._cleaning)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)


class Worker:
    def __init__(
        self,
        settings: Settings,
        backend: BackendClient | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.health = Health()
        self.backend = backend or BackendClient.for_settings(settings)
        self.executor = executor or _default_executor(settings)
        self.state = StateDir(settings.state_dir)
        self.outbox = self.state.outbox()
        self.reporter = Reporter(
            self.backend, self.outbox, self.health, on_stop_seen=self._stop_seen, on_lost=self._lost
        )
        self.heartbeat = Heartbeat(self.backend, settings.heartbeat_interval, self.heartbeat_info, self.health)
        self.health.on_change = self.heartbeat.beat_now
        self.stopping = threading.Event()  # SIGTERM/SIGINT: leave now, jobs stay running (detached)
        self.draining = threading.Event()  # SIGUSR1: take no new job, leave once the jobs in hand ended
        self._wake = threading.Event()  # a signal arrived or a slot ended
        self._threads_stop = threading.Event()
        self._slots = _Slots(settings.max_active_jobs, self._wake)
        self._ctx = JobContext(
            settings,
            self.executor,
            self.backend,
            self.reporter,
            self.state,
            self.health,
            self.stopping,
            exited=self._wake.set,
        )
        self._backend_outage = Outage("backend", log)
        self._executor_outage = Outage(f"executor ({self.executor.name})", log)
        self._share_outage = Outage("shared directory", log)
        self._busy_share_check = 0.0  # when the share is looked at next while every slot is busy
        self._executor_error: object = None
        self._executor_answered = -math.inf  # when the executor last answered a ping
        self._share_problem: str | None = None
        self._needs_readopt = True
        self._signalled = ""  # set by a signal handler, logged by the loop
        self._jobs_taken = 0
        self._last_job: tuple[str, Status | None] | None = None

    # --- the story ---

    def run(self) -> int:
        self._bootstrap()
        try:
            while not self._should_exit():
                delay = self._step()
                if delay:
                    self._sleep(delay)
        finally:
            self._signals_seen()
            self._teardown()
        return 0

    def _step(self) -> float:
        """One turn of the loop; returns how long to wait before the next."""
        if not self._needs_readopt and not self._may_take_job():
            # Nothing to take: no executor check (each job watches its own; with every slot busy these checks
            # were most of a Slurm worker's commands, bench/SLURM.md). The share, a few local calls, is still
            # looked at once per heartbeat, so that the heartbeat says when it goes away under running jobs.
            if time.monotonic() >= self._busy_share_check:
                self._busy_share_check = time.monotonic() + self.settings.heartbeat_interval
                if not self._share_ready():
                    self._share_outage.failed(self._share_problem)
            return self.settings.poll_interval  # woken at once when a slot ends
        if not self._executor_ready():
            return self._executor_outage.failed(self._executor_error)
        if not self._share_ready():
            return self._share_outage.failed(self._share_problem)
        if self._needs_readopt:
            self._readopt()
            return 0
        try:
            raw = self.backend.next_job()
        except BackendError as exc:
            return self._backend_outage.failed(exc)
        self._backend_outage.succeeded()
        if raw is None or not self._accept(raw):
            # No work, or a payload skipped unread: a backend that keeps sending one must not spin the loop.
            return self.settings.poll_interval
        return 0  # a slot may still be free: ask again at once

    def _may_take_job(self) -> bool:
        one_done = self.settings.exit_after_job and self._jobs_taken > 0
        return self._slots.free > 0 and not self.draining.is_set() and not one_done and not self.stopping.is_set()

    def _should_exit(self) -> bool:
        # Draining (SIGUSR1, or exit-after-job once a job was taken) ends when the jobs in hand have ended.
        if self.stopping.is_set():
            return True
        draining = self.draining.is_set() or (self.settings.exit_after_job and self._jobs_taken > 0)
        return draining and not self._slots.runs()

    # --- jobs ---

    def _accept(self, raw: Any) -> bool:
        """Give the payload's job a slot; False when it was skipped for want of a usable job_id."""
        try:
            job = payload.parse(raw)
        except payload.PayloadError as exc:
            if exc.job_id is None:
                log.error("skipping a payload without a usable job_id: %s", exc.reason)
                return False
            refused = JobRun(self._ctx, exc.job_id, *payload.attempt_of(raw))
            self._job_ended(refused, refused.refuse(exc))
            return True
        run = JobRun(self._ctx, job.job_id, job.attempt_number, job.attempt_token)
        if self.stopping.is_set():  # SIGTERM came while next-job was on its way: start nothing
            run.hand_back()
            return True
        if (older := self._slots.get(job.job_id)) is not None:
            # Dispatched again to this very worker (an operator requeue): the older attempt is not ours any more.
            older.lose(f"the backend dispatched it again (attempt {job.attempt_number})")
        self._jobs_taken += 1
        self._slots.start(run, functools.partial(run.run_new, job), self._job_ended)
        self.heartbeat.beat_now()
        return True

    def _readopt(self) -> None:
        """Take back every job this worker started before it restarted, even beyond the slot limit."""
        try:
            owned = self.executor.find_owned(self.settings.worker_id)
        except (ExecutorUnavailable, ExecutorError) as exc:  # an API error too: try again, never exit on it
            self.health.executor_down(exc)
            return
        self._needs_readopt = False
        starting = {handle.job_id for handle in owned}
        for record in self.state.jobs():
            if record.container_id is None and record.job_id not in starting and self._slots.get(record.job_id) is None:
                # Accepted, then the worker stopped before the container existed: nothing runs; give it back.
                JobRun(self._ctx, record.job_id, record.attempt_number, record.attempt_token).hand_back()
        for handle in owned:
            if self._slots.get(handle.job_id) is not None:
                continue
            self._jobs_taken += 1
            run = JobRun(self._ctx, handle.job_id)
            self._slots.start(run, functools.partial(run.run_adopted, handle), self._job_ended)
        if owned:
            self.heartbeat.beat_now()

    def _job_ended(self, run: JobRun, status: Status | None) -> None:
        self._last_job = (run.job_id, status)
        self.heartbeat.beat_now()

    def _stop_seen(self, job_id: str) -> None:
        run = self._slots.get(job_id)
        if run is not None:
            run.check_status_now()

    def _lost(self, job_id: str, why: str) -> None:
        run = self._slots.get(job_id)
        if run is not None:
            run.lose(why)

    # --- health of what the worker depends on ---

    def _executor_ready(self) -> bool:
        # Asked at most once per poll interval, and not after a job's exit check just got an answer: when jobs
        # follow each other, a ping before every next-job would be a Docker round trip on each job's way.
        # Not while anyone saw it down since (a job, a failed re-adoption): then it is asked at once.
        answered = max(self._executor_answered, self.executor.answered_at)
        recent = time.monotonic() - answered < self.settings.poll_interval
        if recent and self.health.executor_ok:
            return True
        try:
            self.health.executor_up(self.executor.ping())
        except (ExecutorUnavailable, ExecutorError) as exc:
            self._executor_error = exc
            self.health.executor_down(exc)
            return False
        self._executor_answered = time.monotonic()
        self._executor_outage.succeeded()
        return True

    def _share_ready(self) -> bool:
        """No job is taken (or re-adopted) while the share is missing: its log would land on local disk."""
        self._share_problem = share_problem(self.settings.shared_dir, self.settings.share_check)
        free = None if self._share_problem else share_free_bytes(self.settings.shared_dir)
        self.health.share_checked(self._share_problem, free)
        if self._share_problem is None:
            self._share_outage.succeeded()
        return self._share_problem is None

    def heartbeat_info(self) -> dict[str, Any]:
        jobs = [run.summary() for run in self._slots.runs()]
        running = sum(job["status"] in (Status.RUNNING, Status.STOP_REQUESTED) for job in jobs)
        last_id, last_status = self._last_job or (None, None)
        health = self.health.heartbeat_info()
        if self.executor.name == "docker":  # the name dashboards of the first version read
            health.update(docker_ok=health["executor_ok"], docker_version=health["executor_version"])
        return {
            "worker_version": __version__,
            "executor": self.executor.name,
            "capabilities": list(CAPABILITIES),
            # True only when GPUs are configured and the runtime has not refused them.
            "gpu_enabled": bool(self.settings.enable_gpu) and not getattr(self.executor, "gpus_refused", False),
            "max_active_jobs": self._slots.limit,
            "active_jobs": jobs,
            "active_job_ids": [job["job_id"] for job in jobs],
            "active_job_id": jobs[0]["job_id"] if jobs else None,
            "active_job_count": len(jobs),
            "running_job_count": running,
            "pending_job_count": len(jobs) - running,  # accepted, not running yet (image pull, Slurm queue)
            "last_job_id": last_id,
            "last_terminal_status": str(last_status) if last_status else None,
            "draining": self.draining.is_set() or self.stopping.is_set() or self.settings.exit_after_job,
            "outbox_depth": self.outbox.depth(),
            **health,
            **host_info(),
        }

    def readiness(self) -> list[str]:
        return self.health.problems(self.settings.heartbeat_interval)

    # --- start and end ---

    def _bootstrap(self) -> None:
        try:
            self.state.prepare()
        except OSError as exc:
            raise ConfigError(f"invalid WORKER_STATE_DIR={str(self.settings.state_dir)!r}: {exc}") from None
        self._install_signal_handlers()
        for name, target in (("heartbeat", self.heartbeat.run), ("reporter", self.reporter.run)):
            threading.Thread(target=target, args=(self._threads_stop,), name=name, daemon=True).start()
        log.info("worker %s started (version %s, %d slot(s))", self.settings.worker_id, __version__, self._slots.limit)

    def _teardown(self) -> None:
        if self.stopping.is_set():
            # Jobs detach within a tick; with WORKER_STOP_JOB_ON_EXIT they are stopped and reported first.
            timeout = None if self.settings.stop_job_on_exit else _EXIT_DETACH_SECONDS
            if not self._slots.join(timeout):
                log.warning("some jobs were still starting; they stay for the next worker start")
        elif not self._slots.join(_EXIT_DETACH_SECONDS):
            log.warning("containers of ended jobs not removed yet: the next worker start removes them")
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
            try:
                self.heartbeat.send()
            except BackendError as exc:
                log.debug("last heartbeat not sent: %s", exc)
        log.info("worker %s stopped", self.settings.worker_id)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGUSR1, self._on_drain_signal)

    # Signal handlers run between two bytecodes of the main thread, which may hold any lock at that moment
    # (the slots', an Event's): they only set flags, which the loop polls (_sleep) and acts on.

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping.is_set():
            os.write(2, f"second {signal.Signals(signum).name}: exiting at once\n".encode())
            os._exit(1)
        self._signalled = f"{signal.Signals(signum).name} received: shutting down"
        self.stopping.set()

    def _on_drain_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = "SIGUSR1 received: exiting after the jobs in hand"
        self.draining.set()

    def shutdown(self) -> None:
        """Leave now: jobs are detached (or stopped, with WORKER_STOP_JOB_ON_EXIT) for the next start."""
        self.stopping.set()
        self._wake.set()

    def drain(self) -> None:
        """Take no new job; leave once the jobs in hand have ended and their statuses are delivered."""
        self.draining.set()
        self._wake.set()

    def _signals_seen(self) -> None:
        """What a signal asked for, done from the loop: wake the jobs, tell the backend."""
        if self._signalled:
            log.info("%s", self._signalled)
            self._signalled = ""
            self.heartbeat.beat_now()
        if self.stopping.is_set():
            for run in self._slots.runs():
                run.wake()

    def _sleep(self, seconds: float) -> None:
        """Wait until a slot ends or `seconds` pass, looking at the signal flags every 0.2 s."""
        deadline = time.monotonic() + seconds
        while not self._wake.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
            if self._signalled or time.monotonic() >= deadline:
                break
        self._wake.clear()
        self._signals_seen()


def _default_executor(settings: Settings) -> Executor:
    # Imported here: a worker loads only its own executor (the Docker SDK alone is ~5 MiB).
    if settings.executor == "slurm":
        from worker_agent.executors import slurm, slurm_settings

        cluster = slurm_settings.load(os.environ, settings.shared_dir)
        return slurm.SlurmExecutor(cluster, settings.shared_dir, settings.state_dir)
    from worker_agent.executors.docker import DockerExecutor

    return DockerExecutor(settings.image_pull_policy, log_bytes=settings.docker_log_bytes())
