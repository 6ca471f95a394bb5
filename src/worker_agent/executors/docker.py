"""The Docker executor: one container per job, driven through the Docker Engine API (never the CLI)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fnmatch
import functools
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import docker
import docker.errors
import requests
from docker.types import DeviceRequest, LogConfig
from docker.types import Mount as DockerMount

from worker_agent import defaults
from worker_agent.domain import JobHandle, JobSpec
from worker_agent.executors.base import (
    ExecutorError,
    ExecutorUnavailable,
    ImageUnavailable,
    JobLost,
    StartCancelled,
)
from worker_agent.logs.messages import restore_newlines

log = logging.getLogger(__name__)

LABEL_WORKER = "opeva.worker_id"
LABEL_JOB = "opeva.job_id"
LABEL_MANAGED = "opeva.managed-by"
LABEL_ATTEMPT = "opeva.attempt"
# How long a create waits for another attempt's container of the same job (e.g. a worker on the same engine
# that lost the job) to go away before removing it.
_STALE_ATTEMPT_WAIT_SECONDS = 30.0
_HEADER = struct.Struct(">BxxxL")
_READ_SIZE = 256 * 1024
# How long after a SIGKILLed job's exit an `oom` event from dockerd still counts (see _sigkill_record).
_LATE_OOM_SECONDS = 2.0


@contextlib.contextmanager
def _engine(action: str) -> Iterator[None]:
    """Turn 'cannot reach dockerd' into ExecutorUnavailable and API refusals into ExecutorError."""
    try:
        yield
    except docker.errors.NotFound as exc:
        raise JobLost(f"{action}: {exc.explanation or exc}") from None
    except docker.errors.APIError as exc:
        raise ExecutorError(f"{action}: {exc.explanation or exc}") from None
    except (requests.exceptions.RequestException, docker.errors.DockerException, OSError) as exc:
        raise ExecutorUnavailable(f"{action}: Docker unreachable: {exc}") from None


def demux(blobs: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Split Docker's multiplexed stream (8-byte header: stream id, size) into (stream, bytes) frames.

    Reads big blobs and slices frames out of them: far fewer system calls than a read per header.
    """
    buffer = bytearray()
    for blob in blobs:
        buffer += blob
        offset = 0
        while len(buffer) - offset >= _HEADER.size:
            stream, size = _HEADER.unpack_from(buffer, offset)
            end = offset + _HEADER.size + size
            if len(buffer) < end:
                break
            if size and stream in (1, 2):
                yield stream, bytes(buffer[offset + _HEADER.size : end])
            offset = end
        del buffer[:offset]


class _ImageMissing(ImageUnavailable):
    """Create found no such image: pulled (or refused, by IMAGE_PULL_POLICY=never) before trying again."""


class DockerExecutor:
    name = "docker"
    answered_at = -math.inf

    def __init__(
        self,
        pull_policy: str = "if-not-present",
        client: docker.DockerClient | None = None,
        timeout: float = 60.0,
        log_bytes: int = 2 * 1024**3,
    ) -> None:
        self._pull_policy = pull_policy
        self.gpus_refused = False  # the heartbeat's gpu_enabled turns false once the runtime refused GPUs
        files = defaults.DOCKER_LOG_FILES
        # Uncompressed: compressing a rotated file would cost dockerd the CPU the `local` driver saves.
        self._log_options = {
            "max-size": str(max(1, log_bytes // files)),
            "max-file": str(files),
            "compress": "false",
        }
        self._client = client
        self._timeout = timeout
        self._attached: dict[str, Any] = {}
        self._exit_inspects: dict[str, dict[str, Any]] = {}  # the inspect seen by exit_code, until end_details asks

    @property
    def _api(self) -> docker.APIClient:
        if self._client is None:
            with _engine("connect"):
                self._client = docker.from_env(timeout=int(self._timeout))
            if self._client.api.base_url.startswith("http+docker://"):
                # Else requests looks up proxy variables and ~/.netrc before each call (a twelfth of the
                # worker's CPU when jobs follow each other), and neither applies to a local socket.
                self._client.api.trust_env = False
        return self._client.api

    def ping(self) -> str:
        with _engine("ping"):
            return str(self._api.version().get("Version", "unknown"))

    def start(
        self,
        spec: JobSpec,
        progress: Callable[[str], None] = lambda line: None,
        cancel: threading.Event | None = None,
    ) -> JobHandle:
        cancel = cancel or threading.Event()
        if effective_pull_policy(self._pull_policy, spec.image) == "always":
            self._ensure_image(spec.image, progress, cancel)
        try:
            return self._create_and_start(spec, progress, cancel)
        except _ImageMissing:
            # Looked for only when create says it is missing, as `docker run` does: asking Docker before
            # each create would put one more round trip on every job's way.
            self._ensure_image(spec.image, progress, cancel)
        return self._create_and_start(spec, progress, cancel)

    def _create_and_start(self, spec: JobSpec, progress: Callable[[str], None], cancel: threading.Event) -> JobHandle:
        if cancel.is_set():
            raise StartCancelled("the worker is shutting down; the container was not created")
        try:
            return self._start(spec)
        except ExecutorError as exc:
            if not spec.gpus or isinstance(exc, _ImageMissing):
                raise
            # A host without the NVIDIA runtime refuses GPU requests: run the job on the CPU instead.
            progress(f"GPU request refused ({exc}); retrying once without GPUs")
            self.gpus_refused = True
            return self._start(dataclasses.replace(spec, gpus=None))

    def _start(self, spec: JobSpec) -> JobHandle:
        labels = {LABEL_WORKER: spec.worker_id, LABEL_JOB: spec.job_id, LABEL_MANAGED: "job-worker-agent"}
        if spec.attempt_number is not None:
            labels[LABEL_ATTEMPT] = str(spec.attempt_number)
        mounts = [
            DockerMount(target=m.container, source=m.host, type="bind", read_only=m.read_only) for m in spec.mounts
        ]
        with _engine(f"create container {spec.name}"):
            host_config = self._api.create_host_config(
                mounts=mounts,
                # `local` whatever the daemon's default: it is what a restarted worker catches up from
                # (logs/messages.py), bounded by the worker's own setting, never by the daemon's log-opts.
                # It keeps the bytes as printed and costs dockerd less CPU than json-file (docs/logs.md).
                log_config=LogConfig(type="local", config=self._log_options),
                security_opt=["no-new-privileges"],
                nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
                mem_limit=spec.memory_bytes,
                pids_limit=spec.pids_limit,
                device_requests=gpu_requests(spec.gpus),
                privileged=spec.privileged,
                network_mode=spec.network_mode,
                pid_mode=spec.pid_mode,
            )
            create = functools.partial(
                self._api.create_container,
                spec.image,
                command=spec.command,
                name=spec.name,
                environment=spec.env,
                labels=labels,
                host_config=host_config,
                detach=True,
            )
            try:
                created = create()
            except docker.errors.ImageNotFound as exc:
                raise _ImageMissing(f"image {spec.image} is not present: {exc.explanation or exc}") from None
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or not self._clear_name_of_same_job(spec):
                    raise
                created = create()
        job = JobHandle(spec.job_id, created["Id"], spec.name, dict(spec.env))
        try:
            # Attach before start, so the first byte the job prints is captured.
            self._attached[job.ref] = self._attach(job.ref)
            with _engine(f"start container {spec.name}"):
                self._api.start(job.ref)
        except (ExecutorError, ExecutorUnavailable):
            with contextlib.suppress(ExecutorError, ExecutorUnavailable):
                self.remove(job)  # also closes the attach stream
            raise
        return job

    def _clear_name_of_same_job(self, spec: JobSpec) -> bool:
        """The name is taken: by a container of this job (another attempt, another worker on this engine)?
        Then wait for it to go away (its worker removes it once it sees the job is no longer its own), and
        remove it after a while; True when the name is free again. A container of another job: False."""
        deadline = time.monotonic() + _STALE_ATTEMPT_WAIT_SECONDS
        while True:
            try:
                other = self._api.inspect_container(spec.name)
            except docker.errors.NotFound:
                return True
            if (other["Config"].get("Labels") or {}).get(LABEL_JOB) != spec.job_id:
                return False
            if time.monotonic() >= deadline or not other["State"].get("Running"):
                log.warning("removing %s, a container of another attempt of job %s", spec.name, spec.job_id)
                with contextlib.suppress(docker.errors.NotFound):
                    self._api.remove_container(other["Id"], force=True)
                return True
            time.sleep(1.0)

    def end_details(self, job: JobHandle) -> dict[str, Any]:
        if (inspected := self._exit_inspects.pop(job.ref, None)) is None:
            with _engine(f"inspect {job.name}"):
                inspected = self._api.inspect_container(job.ref)
        state = inspected["State"]
        ended = {"oom_killed": bool(state.get("OOMKilled")), "image_id": inspected.get("Image")}
        if ended["oom_killed"] or state.get("ExitCode") != 128 + 9:
            return ended
        # SIGKILLed, not by this worker (a stop it asked for never gets here): say by whom, where Docker knows.
        killer = self._sigkill_record(job, state)
        if killer == "oom":
            return {**ended, "oom_killed": True}
        limit = (inspected.get("HostConfig") or {}).get("Memory") or 0
        if killer == "kill":
            hint = (
                "The job was killed through Docker outside this worker (docker kill, or docker stop after its grace)."
            )
        elif limit:
            hint = (
                f"The job was killed at a memory limit of {limit // 2**20} MiB: most often the kernel's OOM killer, "
                "which Docker did not record; ask for more memory or use less."
            )
        else:
            return ended
        return {**ended, "error_hint": hint}

    def _sigkill_record(self, job: JobHandle, state: dict[str, Any]) -> str | None:
        """Docker's record of who SIGKILLed an ended job: "oom", "kill" (through Docker's API), None for neither.

        dockerd 20.10 sets State.OOMKilled only when containerd's OOM event reaches it before the exit event;
        under load it can come after (then only an `oom` event records it) or, if the shim exits first, never.
        """
        started, died = (datetime.datetime.fromisoformat(state[key]).timestamp() for key in ("StartedAt", "FinishedAt"))
        with _engine(f"events of {job.name}"):
            events = self._api.events(
                since=started,
                until=died + _LATE_OOM_SECONDS,
                filters={"container": job.ref, "event": ["oom", "kill"]},
                decode=True,
            )
            try:
                for event in events:
                    if (
                        event.get("Action") == "oom"
                        or event.get("Actor", {}).get("Attributes", {}).get("signal") == "9"
                    ):
                        return str(event["Action"])
            finally:
                events.close()
        return None

    def start_created(self, job: JobHandle) -> None:
        with _engine(f"start container {job.name}"):
            self._api.start(job.ref)

    def output(self, job: JobHandle, from_start: bool, follow: bool = True) -> Iterator[tuple[int, bytes]]:
        response = None if from_start else self._attached.pop(job.ref, None)
        frames: Iterable[tuple[int, bytes]]
        if response is None:
            response = self._logs(job.ref, follow)
            frames = restore_newlines(_messages(demux(response.iter_content(chunk_size=None))))
        else:
            frames = demux(_read_raw(response))
        try:
            yield from frames
        except (requests.exceptions.RequestException, OSError) as exc:
            raise ExecutorUnavailable(f"output of {job.name}: {exc}") from None
        finally:
            response.close()

    def exit_code(self, job: JobHandle) -> int | None:
        with _engine(f"inspect {job.name}"):
            details = self._api.inspect_container(job.ref)
        self.answered_at = time.monotonic()
        state = details["State"]
        if state.get("Status") == "created":
            # Never started: it would never exit either (re-adoption starts or removes such containers).
            raise JobLost(f"container {job.name} was created but never started")
        if state.get("Running") or state.get("Status") == "restarting":
            return None
        self._exit_inspects[job.ref] = details  # end_details comes next: no second round trip
        return int(state.get("ExitCode", -1))

    def stop(self, job: JobHandle, grace_seconds: float) -> None:
        with _engine(f"stop {job.name}"):
            # The Engine sends the image's stop signal (SIGTERM), then SIGKILL after the grace period.
            self._api.stop(job.ref, timeout=max(0, round(grace_seconds)))

    def remove(self, job: JobHandle) -> None:
        self._close_attached(job.ref)
        self._exit_inspects.pop(job.ref, None)
        with contextlib.suppress(JobLost), _engine(f"remove {job.name}"):
            self._api.remove_container(job.ref, force=True)

    def find_owned(self, worker_id: str) -> list[JobHandle]:
        with _engine("list containers"):
            found = self._api.containers(all=True, filters={"label": f"{LABEL_WORKER}={worker_id}"})
            handles = []
            for item in found:
                labels = item.get("Labels") or {}
                try:
                    details = self._api.inspect_container(item["Id"])
                except docker.errors.NotFound:
                    continue  # removed between the listing and the inspect: nothing to take back
                env = details["Config"].get("Env") or []
                handles.append(
                    JobHandle(
                        labels.get(LABEL_JOB, ""),
                        item["Id"],
                        (item.get("Names") or ["/" + item["Id"][:12]])[0].lstrip("/"),
                        dict(entry.split("=", 1) for entry in env if "=" in entry),
                        started=details["State"].get("Status") != "created",
                    )
                )
        return [handle for handle in handles if handle.job_id]

    # --- helpers ---

    def _ensure_image(self, image: str, progress: Callable[[str], None], cancel: threading.Event) -> None:
        policy = effective_pull_policy(self._pull_policy, image)
        if policy != "always" and self.has_image(image):
            return
        if policy == "never":
            raise ImageUnavailable(f"image {image} is not present and IMAGE_PULL_POLICY=never")
        progress(f"pulling image {image}")
        repository, tag = _split_reference(image)
        try:
            with _engine(f"pull {image}"):
                last = ""
                for event in self._api.pull(repository, tag=tag, stream=True, decode=True):
                    if cancel.is_set():
                        raise StartCancelled(f"the worker is shutting down; pull of {image} abandoned")
                    if "error" in event:
                        raise ImageUnavailable(f"image {image} could not be pulled: {event['error']}")
                    line = " ".join(str(event[k]) for k in ("id", "status") if event.get(k))
                    if line and line != last and "progress" not in event:
                        progress(line)
                        last = line
        except StartCancelled:
            raise
        except ExecutorError as exc:
            if policy == "always" and self.has_image(image):
                progress(f"pull failed ({exc}); using the local copy of {image}")
                return
            raise ImageUnavailable(f"image {image} is not available: {exc}") from None

    def prune_images(self, keep: int, patterns: tuple[str, ...], last_used: dict[str, float]) -> list[str]:
        """Untag all but the `keep` most recently used tags of each repository matching `patterns`; Docker
        itself refuses to remove an image a container uses (no force). Returns the tags removed."""
        with _engine("list images"):
            tags = [
                tag for image in self._api.images() for tag in image.get("RepoTags") or [] if tag != "<none>:<none>"
            ]
        by_repository: dict[str, list[str]] = {}
        for tag in tags:
            if any(fnmatch.fnmatchcase(tag, pattern) for pattern in patterns):
                by_repository.setdefault(_split_reference(tag)[0], []).append(tag)
        removed = []
        for repository_tags in by_repository.values():
            # Newest use first; tags never used by this worker last (ties by name, so the choice is stable).
            repository_tags.sort(key=lambda tag: (last_used.get(tag, 0.0), tag), reverse=True)
            for tag in repository_tags[keep:]:
                try:
                    with _engine(f"remove image {tag}"):
                        self._api.remove_image(tag)
                    removed.append(tag)
                except (ExecutorError, ExecutorUnavailable) as exc:  # in use, or Docker busy: next time
                    log.info("image %s kept: %s", tag, exc)
        return removed

    def has_image(self, image: str) -> bool:
        """Whether the engine holds the image; raises ExecutorUnavailable when it cannot be asked."""
        try:
            with _engine(f"inspect image {image}"):
                self._api.inspect_image(image)
            return True
        except JobLost:
            return False

    def _attach(self, ref: str) -> Any:
        return self._stream(
            "attach",
            self._api._post,
            ref,
            params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0},
            headers={"Connection": "Upgrade", "Upgrade": "tcp"},
        )

    def _logs(self, ref: str, follow: bool) -> Any:
        return self._stream(
            "logs",
            self._api._get,
            ref,
            # With timestamps, the empty message that ends a line of exactly k x 16 KiB is a frame too.
            params={"stdout": 1, "stderr": 1, "follow": int(follow), "tail": "all", "timestamps": 1},
        )

    def _stream(self, endpoint: str, send: Callable[..., Any], ref: str, **request: Any) -> Any:
        """An open streaming response of /containers/{ref}/{endpoint}, with no read timeout (jobs run for hours)."""
        with _engine(endpoint):
            response = send(self._api._url(f"/containers/{{0}}/{endpoint}", ref), stream=True, **request)
            self._api._raise_for_status(response)
            self._api._disable_socket_timeout(self._api._get_raw_response_socket(response))
        return response

    def _close_attached(self, ref: str) -> None:
        response = self._attached.pop(ref, None)
        if response is not None:
            response.close()


def gpu_requests(gpus: str | None) -> list[DeviceRequest] | None:
    """Docker's request for GPUs: all of them, or the listed device ids."""
    if not gpus:
        return None
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=[part.strip() for part in gpus.split(",")], capabilities=[["gpu"]])]


def effective_pull_policy(policy: str, image: str) -> str:
    """`auto` is the rule users know from Kubernetes: `:latest` or no tag -> always, a pinned tag or a digest
    -> if-not-present (a host would otherwise run the first `latest` it ever pulled, for ever)."""
    if policy != "auto":
        return policy
    if "@" in image:
        return "if-not-present"
    _, tag = _split_reference(image)
    return "always" if tag == "latest" else "if-not-present"


def _messages(frames: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """Replayed frames without the timestamp each starts with ("2026-01-02T03:04:05.123456789Z ")."""
    for stream, frame in frames:
        yield stream, frame[frame.index(b" ") + 1 :]


def _read_raw(response: Any) -> Iterator[bytes]:
    """Bytes of a hijacked (attach) connection, including any the HTTP parser already buffered."""
    reader = response.raw._fp.fp
    while chunk := reader.read1(_READ_SIZE):
        yield chunk


def _split_reference(image: str) -> tuple[str, str | None]:
    """`repo[:tag][@digest]` -> (repo, tag or digest); a port in the registry host is not a tag."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"
