"""The Slurm executor: one batch job per job, submitted with sbatch on this host or on a login node over SSH.

A job's files live in its run directory on the cluster, `<SLURM_RUN_DIR>/jobs/<job_id>/` (slurm_script.run_files):
the batch script, the environment file (secrets, owner only), and stdout.log / stderr.log, which Slurm
writes and `output()` reads by byte offset. `remove()` deletes that directory once the worker has copied
the output into the share's job log: it holds the job's secrets, and nothing else of it is needed.

The executor keeps a small index of the batch jobs it submitted in `<state_dir>/slurm/` (one JSON file per
Slurm job, written at submit, deleted by `remove()`), so that a restarted worker finds its jobs again even
after Slurm has forgotten them (MinJobAge) and can still say what became of them.

Besides the Executor protocol: `set_job_options(job_id, deucalion_options)` before `start` (checks them, keeps
them for that job), `outcome(job)` after `exit_code` (Slurm's detailed verdict, for error codes and details),
`replay_is_raw` (see below) and `close()` (ends the shared SSH connection).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from worker_agent.domain import JobHandle, JobSpec
from worker_agent.executors.base import ExecutorError, ExecutorUnavailable, JobLost, StartCancelled
from worker_agent.executors.slurm_commands import Cluster, control_dir
from worker_agent.executors.slurm_script import (
    ENV_FILE_MODE,
    SCRIPT_MODE,
    BatchJob,
    Bind,
    Resources,
    default_template,
    parse_job_comment,
    parse_sbatch_output,
    render_batch_script,
    render_env_file,
    resolve_resources,
    run_files,
    sbatch_command,
)
from worker_agent.executors.slurm_settings import SlurmSettings
from worker_agent.executors.slurm_status import (
    PENDING_STATES,
    Outcome,
    SlurmJobState,
    is_terminal,
    outcome,
    outcome_for_missing,
    parse_sacct,
    parse_scontrol_job,
    parse_squeue,
    sacct_args,
    scontrol_args,
    squeue_args,
)

log = logging.getLogger(__name__)

_UNKNOWN_JOB = "Invalid job id specified"
_ACCOUNTING_OFF = "accounting storage is disabled"
_ALREADY_DONE = ("Job/step already completing or completed", _UNKNOWN_JOB)
_READ_LIMIT = 1024 * 1024  # bytes of one output file per read
_STDOUT, _STDERR = 1, 2
# What a copied job brings back to the worker's share (SLURM_STAGING=copy); logs/ is the worker's own.
_ARTIFACTS = ("results", "progress")


class SlurmExecutor:
    name = "slurm"
    answered_at = -math.inf  # not kept: the controller is asked once per poll interval, as before
    # output(from_start=True) replays the job's raw bytes as it printed them, not Docker's log messages:
    # a catch-up after a restart splits them into messages the same way as the live read does.
    replay_is_raw = True
    # A submitted job waits in the queue: it is reported `running` only once Slurm runs it (outcome()).
    pending_after_start = True

    def __init__(self, settings: SlurmSettings, worker_shared_dir: Path, state_dir: Path) -> None:
        self._settings = settings
        self._share = Path(worker_shared_dir)
        self._index = Path(state_dir) / "slurm"
        self._index.mkdir(mode=0o700, parents=True, exist_ok=True)
        sockets = control_dir(self._index) if not settings.local else self._index
        self._cluster = Cluster(settings, sockets)
        self._template = Path(settings.template).read_text() if settings.template else default_template()
        self._clock = time.monotonic
        self._run_root = settings.run_dir or None  # resolved on first use: $HOME of the cluster's user
        self._accounting = True  # until sacct says it is off
        self._options: dict[str, Resources] = {}
        self._offsets: dict[str, list[int]] = {}  # the live read's position in stdout.log and stderr.log
        self._outcomes: dict[str, Outcome] = {}
        self._ended: dict[str, int] = {}  # exit codes of jobs that ended (and whose files were copied back)
        self._missing_since: dict[str, float] = {}
        self._stopped: set[str] = set()  # also on disk in the index, for a job whose entry is there
        self._copied_at: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}

    # --- Executor -------------------------------------------------------------------------------------------

    def ping(self) -> str:
        version = self._cluster.slurm(["sinfo", "--version"]).strip()
        try:
            self._cluster.slurm(["scontrol", "ping"])  # sinfo --version does not ask slurmctld
        except ExecutorError as exc:
            raise ExecutorUnavailable(f"slurmctld is down: {exc}") from None
        return version

    def set_job_options(self, job_id: str, options: object) -> None:
        """Check a job's deucalion_options against the worker's limits and keep them for its `start`.

        Raises ExecutorError with the reason for a refused option, before anything is submitted.
        """
        try:
            self._options[job_id] = resolve_resources(self._settings.resources, options, self._settings.limits)
        except ValueError as exc:
            raise ExecutorError(str(exc)) from None

    def start(
        self,
        spec: JobSpec,
        progress: Callable[[str], None] = lambda line: None,
        cancel: threading.Event | None = None,
    ) -> JobHandle:
        if cancel is not None and cancel.is_set():
            raise StartCancelled("the worker is shutting down; the job was not submitted")
        resources = self._options.get(spec.job_id, self._settings.resources)
        run_dir = self._run_dir(spec.job_id)
        files = run_files(run_dir)
        try:
            script = render_batch_script(self._batch_job(spec, run_dir, resources, progress), self._template)
        except (ValueError, KeyError) as exc:
            raise ExecutorError(f"cannot write the batch script: {exc}") from None
        # A resubmitted job starts clean: its logs are appended to (--open-mode=append).
        self._cluster.remove_tree(run_dir)
        self._cluster.make_dir(run_dir)
        try:
            if self._settings.staging == "copy":
                progress(f"copying the job's files to {self._cluster.where}:{self._settings.shared_dir}")
                self._stage_in(spec)
            if spec.env:
                self._cluster.write_file(files.env_file, render_env_file(spec.env).encode(), ENV_FILE_MODE)
            self._cluster.write_file(files.script, script.encode(), SCRIPT_MODE)
            ref = parse_sbatch_output(self._cluster.slurm(sbatch_command(files.script, self._settings.extra_args)))
        except (ExecutorError, ValueError) as exc:
            with contextlib.suppress(ExecutorError, ExecutorUnavailable):
                self._cluster.remove_tree(run_dir)
            raise ExecutorError(str(exc)) from None
        self._remember(ref, spec.job_id, spec.worker_id)
        self._options.pop(spec.job_id, None)  # only now: a failed start may be tried again with the same options
        progress(f"submitted Slurm job {ref} ({_describe(resources)})")
        return JobHandle(spec.job_id, ref, f"opeva-{spec.job_id}", dict(spec.env))

    def start_created(self, job: JobHandle) -> None:
        """Nothing to do: a submitted batch job is started by Slurm (find_owned never says started=False)."""

    def output(self, job: JobHandle, from_start: bool, follow: bool = True) -> Iterator[tuple[int, bytes]]:
        files = run_files(self._run_dir(job.job_id))
        paths = (files.stdout, files.stderr)
        offsets = [0, 0] if from_start else self._offsets.setdefault(job.ref, [0, 0])
        ended = not follow
        next_state = self._clock()
        while True:
            chunks = self._cluster.read_from(list(zip(paths, offsets, strict=True)), _READ_LIMIT)
            for index, chunk in enumerate(chunks):
                if chunk:
                    offsets[index] += len(chunk)
                    yield (_STDOUT, _STDERR)[index], chunk
            if any(chunks):
                continue
            if ended:
                return  # read to the end after the job ended: nothing more can come
            self._copy_back_now_and_then(job)
            if self._clock() >= next_state:
                next_state = self._clock() + self._settings.state_interval
                ended = self._has_ended(job)
                if ended:
                    continue
            time.sleep(self._settings.poll_interval)

    def exit_code(self, job: JobHandle) -> int | None:
        with self._lock(job.ref):
            if job.ref in self._ended:
                return self._ended[job.ref]
            state = self._state(job.ref)
            if state is None:
                self._missing(job)
                return None
            self._missing_since.pop(job.ref, None)
            if not is_terminal(state.state):
                self._outcomes[job.ref] = outcome(self._with_queue_position(state))
                return None
            verdict = self._verdict(job, state)
            code = _exit_code(state, verdict)
            if self._settings.staging == "copy":
                verdict, code = self._final_copy_back(job, verdict, code)
            self._outcomes[job.ref], self._ended[job.ref] = verdict, code
            return code

    def end_details(self, job: JobHandle) -> dict[str, Any]:
        """The Slurm verdict of an ended job, for its status (error code, category, hint, details)."""
        verdict = self._outcomes.get(job.ref)
        if verdict is None or verdict.error_code is None:
            return dict(verdict.details) if verdict else {}
        return {
            **verdict.details,
            "error_code": verdict.error_code,
            "error": verdict.error,
            "error_category": verdict.error_category,
            "error_hint": verdict.error_hint,
        }

    def outcome(self, job: JobHandle) -> Outcome | None:
        """Slurm's detailed verdict behind the last exit_code() answer (pending reason and queue position,
        timeout, out of memory, node failure, cancelled outside the worker...); None before the first."""
        return self._outcomes.get(job.ref)

    def stop(self, job: JobHandle, grace_seconds: float) -> None:
        """SIGTERM to the batch script and every step, then scancel (SIGKILL after KillWait) after the grace."""
        self._remember_stop(job.ref)
        state = self._state(job.ref)
        if state is None or is_terminal(state.state):
            return
        if state.state in PENDING_STATES:
            self._scancel(job.ref)  # nothing runs yet to signal
            return
        self._scancel(job.ref, "--signal=TERM", "--full")
        deadline = self._clock() + grace_seconds
        while self._clock() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - self._clock())))
            state = self._state(job.ref)
            if state is None or is_terminal(state.state):
                return
        self._scancel(job.ref)

    def remove(self, job: JobHandle) -> None:
        """Cancel the job if it may still run, delete its run directory (its output is in the share's job log by
        now, and its environment file holds secrets) and forget it. The cluster-side copy of the job's share
        files (SLURM_STAGING=copy) is left alone."""
        if job.ref not in self._ended:
            self._scancel(job.ref)
        self._cluster.remove_tree(self._run_dir(job.job_id))
        with contextlib.suppress(FileNotFoundError):
            (self._index / f"{job.ref}.json").unlink()
        for cache in (self._offsets, self._missing_since, self._copied_at, self._locks):
            cache.pop(job.ref, None)
        self._stopped.discard(job.ref)

    def find_owned(self, worker_id: str) -> list[JobHandle]:
        """This worker's batch jobs that are queued or running, and those that ended but were not removed yet."""
        remembered = self._remembered(worker_id)
        found: dict[str, str] = {}  # Slurm job id -> job id
        for state in parse_squeue(self._cluster.slurm([*squeue_args(), "--me"])):
            owner = parse_job_comment(state.comment)
            if owner is None or owner[0] != worker_id:
                continue
            # An ended job the worker already removed stays in squeue for MinJobAge: it is not to be taken back.
            if not is_terminal(state.state) or state.job_id in remembered:
                found[state.job_id] = owner[1]
        found = remembered | found
        return [
            JobHandle(job_id, ref, f"opeva-{job_id}", self._job_env(job_id))
            for ref, job_id in sorted(found.items(), key=lambda item: (len(item[0]), item[0]))
        ]

    def close(self) -> None:
        """End the shared SSH connection now rather than ControlPersist seconds after its last use."""
        self._cluster.close()

    # --- the batch job --------------------------------------------------------------------------------------

    def _batch_job(
        self, spec: JobSpec, run_dir: str, resources: Resources, progress: Callable[[str], None]
    ) -> BatchJob:
        if spec.privileged:
            raise ExecutorError("privileged jobs cannot run on Slurm")
        data_dir, binds = self._binds(spec)
        runtime = self._settings.container_runtime
        runtime_args: list[str] = []
        for option, mode in (("network", spec.network_mode), ("pid", spec.pid_mode)):
            if mode and runtime in ("docker", "podman"):
                runtime_args.append(f"--{option}={mode}")
            elif mode:
                progress(f"{option}_mode={mode} is ignored: the {runtime} runtime has no such option")
        return BatchJob(
            job_id=spec.job_id,
            worker_id=spec.worker_id,
            image=spec.image,
            command=tuple(spec.command),
            env=spec.env,
            share_path=self._settings.shared_dir,
            run_dir=run_dir,
            runtime=runtime,
            sif_dir=self._settings.sif_dir or f"{self._root()}/sif",
            resources=resources,
            modules=self._settings.modules,
            binds=tuple(binds),
            runtime_args=tuple(runtime_args),
            data_dir=data_dir,
        )

    def _binds(self, spec: JobSpec) -> tuple[str, list[Bind]]:
        """Where the share appears in the job, and its other mounts as cluster paths. Those are only allowed
        inside the share: the worker's other host paths do not exist on the cluster."""
        data_dir, binds = "/data", []
        for mount in spec.mounts:
            relative = _relative_to(Path(mount.host), self._share)
            if relative is None:
                raise ExecutorError(f"volume {mount.host} is outside the shared directory, all a Slurm job sees")
            if relative == ".":
                data_dir = mount.container
            else:
                binds.append(Bind(f"{self._settings.shared_dir}/{relative}", mount.container, mount.read_only))
        return data_dir, binds

    def _run_dir(self, job_id: str) -> str:
        return f"{self._root()}/jobs/{job_id}"

    def _root(self) -> str:
        if self._run_root is None:
            self._run_root = f"{self._cluster.home().rstrip('/')}/.opeva-slurm"
        return self._run_root

    # --- Slurm's view of a job ------------------------------------------------------------------------------

    def _state(self, ref: str) -> SlurmJobState | None:
        """scontrol (state, reason and exit code in one call), then sacct for a job slurmctld has forgotten."""
        state = parse_scontrol_job(self._cluster.slurm(scontrol_args(ref), accept=[_UNKNOWN_JOB]))
        if state is not None or not self._accounting:
            return state
        answer = self._cluster.slurm(sacct_args([ref]), accept=[_ACCOUNTING_OFF])
        if _ACCOUNTING_OFF in answer:
            self._accounting = False
        return next((job for job in parse_sacct(answer) if job.job_id == ref), None)

    def _with_queue_position(self, state: SlurmJobState) -> SlurmJobState:
        """A pending job's place in its partition's line, counted among all users' pending jobs there."""
        if state.state != "PENDING" or not state.partition:
            return state
        try:
            pending = [*squeue_args(), "--states=PENDING", f"--partition={state.partition}"]  # the last --states wins
            queue = parse_squeue(self._cluster.slurm(pending))
        except ExecutorError as exc:
            log.debug("queue position of %s: %s", state.job_id, exc)
            return state
        position = next((job.queue_position for job in queue if job.job_id == state.job_id), None)
        return replace(state, queue_position=position)

    def _missing(self, job: JobHandle) -> None:
        """Slurm does not know the job: the grace covers a controller failing over; after it the job is lost."""
        since = self._missing_since.setdefault(job.ref, self._clock())
        if self._clock() - since < self._settings.lost_grace:
            return None
        if self._settings.staging == "copy":
            with contextlib.suppress(ExecutorError):
                self._copy_back(job)  # whatever it left may still help whoever looks into it
        self._outcomes[job.ref] = outcome_for_missing(job.ref)
        raise JobLost(f"Slurm no longer knows job {job.ref} ({job.name}) and has no record of its end")

    def _verdict(self, job: JobHandle, state: SlurmJobState) -> Outcome:
        verdict = outcome(state)
        # The worker's stop ends a job by scancel (CANCELLED) or by the SIGTERM it sent first (a signal death).
        by_stop = verdict.error_code == "canceled_externally" or state.signal in (signal.SIGTERM, signal.SIGKILL)
        if by_stop and self._stop_requested(job.ref):
            return replace(
                verdict,
                error_code="stopped_by_worker",
                error_category="worker",
                error="The worker cancelled the job",
                error_hint=None,
            )
        return verdict

    def _has_ended(self, job: JobHandle) -> bool:
        try:
            return self.exit_code(job) is not None
        except JobLost:
            return True

    def _scancel(self, ref: str, *options: str) -> None:
        self._cluster.slurm(["scancel", *options, ref], accept=_ALREADY_DONE)

    # --- SLURM_STAGING=copy ---------------------------------------------------------------------------------

    def _stage_in(self, spec: JobSpec) -> None:
        """The share's jobs/<id>/ (without the worker's logs/) and every file the command names under /data."""
        job_dir = f"jobs/{spec.job_id}"
        paths = [job_dir] if (self._share / job_dir).is_dir() else []
        data_dir = self._binds(spec)[0]
        for word in spec.command:
            value = word.partition("=")[2] if word.startswith("-") else word  # --config=/data/x too
            if value.startswith(data_dir + "/"):
                relative = _relative_to(self._share / value[len(data_dir) + 1 :], self._share)
                if relative not in (None, ".") and (self._share / relative).exists():
                    paths.append(relative)
        if paths:
            logs = f"{job_dir}/logs"
            self._cluster.send_tree(self._share, paths, self._settings.shared_dir, skip=lambda name: name == logs)

    def _copy_back(self, job: JobHandle) -> None:
        self._copied_at[job.ref] = self._clock()
        paths = [f"jobs/{job.job_id}/{name}" for name in _ARTIFACTS]
        self._cluster.fetch_tree(self._settings.shared_dir, paths, self._share)

    def _copy_back_now_and_then(self, job: JobHandle) -> None:
        if self._settings.staging != "copy":
            return
        if self._clock() - self._copied_at.get(job.ref, -1e18) < self._settings.copy_interval:
            return
        try:
            with self._lock(job.ref):
                self._copy_back(job)
        except ExecutorError as exc:
            log.warning("job %s: %s (trying again in %gs)", job.job_id, exc, self._settings.copy_interval)

    def _final_copy_back(self, job: JobHandle, verdict: Outcome, code: int) -> tuple[Outcome, int]:
        try:
            self._copy_back(job)
            return verdict, code
        except ExecutorError as exc:
            log.error("job %s: %s", job.job_id, exc)
            failed = Outcome(
                "failed",
                exit_code=code or 1,
                error_code="artifact_sync_failed",
                error_category="infrastructure",
                error=f"The job's results could not be copied back from the cluster: {exc}",
                details={**verdict.details, "job_exit_code": code},
                error_hint="The job ran, but its results/ and progress/ did not reach the share; the worker's "
                "operators should check the copy from the cluster.",
            )
            return failed, code or 1

    # --- the index of submitted jobs ------------------------------------------------------------------------

    def _remember(self, ref: str, job_id: str, worker_id: str, stop_requested: bool = False) -> None:
        entry = {"job_id": job_id, "worker_id": worker_id, "stop_requested": stop_requested}
        path = self._index / f"{ref}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(entry))
        os.replace(temporary, path)

    def _entry(self, ref: str) -> dict[str, object] | None:
        try:
            entry = json.loads((self._index / f"{ref}.json").read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) else None

    def _remembered(self, worker_id: str) -> dict[str, str]:
        """Slurm job id -> job id of this worker's submitted jobs not removed yet."""
        found = {}
        for path in self._index.glob("*.json"):
            entry = self._entry(path.stem)
            if entry and entry.get("worker_id") == worker_id and path.stem.isdigit():
                found[path.stem] = str(entry.get("job_id"))
        return found

    def _remember_stop(self, ref: str) -> None:
        # Kept on disk too: after a restart the job's CANCELLED state must still read as the worker's own stop.
        self._stopped.add(ref)
        entry = self._entry(ref)
        if entry is not None and not entry.get("stop_requested"):
            self._remember(ref, str(entry["job_id"]), str(entry["worker_id"]), stop_requested=True)

    def _stop_requested(self, ref: str) -> bool:
        entry = self._entry(ref)
        return ref in self._stopped or bool(entry and entry.get("stop_requested"))

    # --- helpers --------------------------------------------------------------------------------------------

    def _job_env(self, job_id: str) -> dict[str, str]:
        """A re-found job's environment, from its env file: the worker masks its secret values in the log."""
        data = self._cluster.read_file(run_files(self._run_dir(job_id)).env_file)
        return _parse_env_file(data.decode(errors="replace")) if data else {}

    def _lock(self, ref: str) -> threading.Lock:
        return self._locks.setdefault(ref, threading.Lock())


def _exit_code(state: SlurmJobState, verdict: Outcome) -> int:
    """A non-zero code for every end but success: Slurm gives none for a time limit, a cancel or a node failure."""
    if verdict.exit_code:
        return verdict.exit_code
    if verdict.status == "finished":
        return 0
    if state.signal:
        return 128 + state.signal
    return state.exit_code or 1


def _parse_env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


def _relative_to(path: Path, root: Path) -> str | None:
    """`path` relative to `root` ('.' for root itself), symlinks resolved; None when it is outside."""
    try:
        resolved, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(base):
        return None
    return str(resolved.relative_to(base))


def _describe(resources: Resources) -> str:
    fields: Mapping[str, object] = {
        "partition": resources.partition,
        "account": resources.account,
        "time": resources.time_minutes and f"{resources.time_minutes} min",
        "cpus": resources.cpus,
        "mem": resources.mem_mb and f"{resources.mem_mb} MB",
        "gpus": resources.gpus,
    }
    shown = [f"{name} {value}" for name, value in fields.items() if value]
    return ", ".join(shown) or "the cluster's defaults"
