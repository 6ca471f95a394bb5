"""The HTTP client for the OPEVA backend's agent API (docs/contract.md)."""

from __future__ import annotations

import json
import re
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from worker_agent import __version__, defaults
from worker_agent.config import ConfigError, Settings
from worker_agent.domain import Status, StatusUpdate
from worker_agent.ops import metrics

_KNOWN_STATUSES = frozenset(status.value for status in Status)


class BackendError(Exception):
    """The call did not succeed and may be retried: transport error, 5xx, or an answer that is not JSON."""


class Conflict(BackendError):
    """409: the backend does not allow this transition; the job moved on."""


class StaleAttempt(Conflict):
    """409 stale_job_attempt: this status is not from the job's current attempt; this worker lost the job."""


class Rejected(BackendError):
    """400/422: the backend refuses this body for good (e.g. a status it does not know); retrying cannot help."""


class UnknownJob(BackendError):
    """404 in the backend's own words: it does not know the job (docs/contract.md, "How a 404 is read")."""


# The attempt-fencing protocol of the OPEVA orchestrator 1.0 (docs/contract.md).
CAPABILITIES = ("attempt_fencing_v1",)
# A 404 means "unknown job" only in the backend's own words for it (docs/contract.md): the orchestrator's
# "Job not found" / "Job <id> not found", the reference backend's "unknown job". FastAPI's "Not Found" for a
# route it lacks, an HTML page or an empty body come from a wrong OPEVA_SERVER or a proxy: an outage.
_UNKNOWN_JOB = re.compile(r"Job (\S+ )?not found|unknown job")


@dataclass(frozen=True)
class JobView:
    """A job as GET /status/{id} shows it; worker and attempt only where the backend says."""

    status: Status
    worker_id: str | None = None
    attempt_number: int | None = None


class BackendClient:
    def __init__(
        self,
        server: str,
        worker_id: str,
        timeout: float = defaults.HTTP_TIMEOUT_SECONDS,
        token: str | None = None,
        verify: bool | str = True,
        max_response_bytes: int = defaults.MAX_RESPONSE_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # Identity only: a compressed answer can inflate far past any cap before a chunk is counted.
        headers = {
            "User-Agent": f"job-worker-agent/{__version__}",
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        }
        if token:
            # Checked here, once: a token httpx cannot send would fail every call. Never echo its value.
            if not token.isascii() or not token.isprintable() or " " in token:
                raise ConfigError("invalid OPEVA_TOKEN: must be printable ASCII without spaces")
            headers["Authorization"] = f"Bearer {token}"
        self.worker_id = worker_id
        self._max_bytes = max_response_bytes
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=server, timeout=timeout, headers=headers, verify=_tls(verify), transport=transport
        )

    @classmethod
    def for_settings(cls, settings: Settings, transport: httpx.BaseTransport | None = None) -> BackendClient:
        """The client the worker and `doctor` both use: server, token, timeout and TLS from the settings."""
        verify: bool | str = settings.tls_verify
        if settings.ca_bundle and settings.tls_verify:
            verify = str(settings.ca_bundle)
        return cls(
            settings.server, settings.worker_id, settings.http_timeout, settings.token, verify, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def next_job(self) -> Any | None:
        """The next job's payload as decoded JSON (checked by payload.parse), or None when there is no work."""
        request = {"worker_id": self.worker_id, "capabilities": list(CAPABILITIES)}
        status, body = self._call("POST", "/api/agent/next-job", request)
        if status == 204:
            return None
        answer = _decode(body)
        if not isinstance(answer, dict):
            raise BackendError(f"POST /api/agent/next-job: answer is a JSON {type(answer).__name__}, not an object")
        return answer

    def send_status(self, update: StatusUpdate) -> None:
        self._call("POST", "/api/agent/job-status", update.body(self.worker_id))

    def heartbeat(self, info: dict[str, Any]) -> None:
        self._call("POST", "/api/agent/heartbeat", {"worker_id": self.worker_id, "info": info})

    def job_status(self, job_id: str) -> JobView | None:
        """The job as the backend has it, or None when the backend does not know the job."""
        try:
            _, body = self._call("GET", f"/status/{job_id}")
        except UnknownJob:
            return None
        answer = _decode(body)
        status = answer.get("status") if isinstance(answer, dict) else None
        if not isinstance(status, str) or status not in _KNOWN_STATUSES:
            raise BackendError(f"GET /status/{job_id}: answer has no known status: {str(status)[:40]!r}")
        assert isinstance(answer, dict)
        worker, attempt = answer.get("worker_id") or answer.get("target_host"), answer.get("attempt_number")
        return JobView(
            Status(status),
            worker if isinstance(worker, str) else None,
            attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
        )

    def probe(self) -> tuple[int, str | None, bool]:
        """GET /status/<random id>, for doctor: needs no job and changes nothing.

        (HTTP status, Date header, whether a 404 was the backend's own "unknown job" rather than a missing route).
        """
        try:
            response = self._http.get(f"/status/doctor-{uuid.uuid4().hex[:12]}")
        except httpx.HTTPError as exc:
            raise BackendError(f"GET /status: {type(exc).__name__}: {exc}") from None
        detail = _detail(response.content[: self._max_bytes]).get("detail")
        own_404 = isinstance(detail, str) and bool(_UNKNOWN_JOB.fullmatch(detail))
        return response.status_code, response.headers.get("date"), own_404

    def available_hosts(self) -> list[str] | None:
        """The orchestrator's AVAILABLE_HOSTS (GET /hosts), or None where the backend does not publish them."""
        _, body = self._call("GET", "/hosts")
        answer = _decode(body)
        hosts = answer.get("available_hosts") if isinstance(answer, dict) else None
        return [str(host) for host in hosts] if isinstance(hosts, list) else None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        try:
            return self._exchange(method, path, body)
        except (Conflict, UnknownJob, Rejected):
            raise
        except BackendError:
            endpoint = "/status" if path.startswith("/status/") else path
            metrics.BACKEND_ERRORS.labels(endpoint).inc()
            raise

    def _exchange(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        try:
            with self._http.stream(method, path, json=body) as response:
                content = self._read_bounded(response)
        except httpx.HTTPError as exc:
            raise BackendError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        code = response.status_code
        if code == 409:
            stale = _detail(content).get("code") == "stale_job_attempt"
            raise (StaleAttempt if stale else Conflict)(f"{method} {path}: 409 {content[:200]!r}")
        if code == 404:
            detail = _detail(content).get("detail")
            if not isinstance(detail, str) or not _UNKNOWN_JOB.fullmatch(detail):
                # An HTML page, an empty body or a route-level 404: not the backend's word on the job.
                raise BackendError(f"{method} {path}: 404 from something that is not the OPEVA agent API")
            raise UnknownJob(f"{method} {path}: 404")
        if code in (400, 422):
            raise Rejected(f"{method} {path}: HTTP {code} {content[:200]!r}")
        if not 200 <= code < 300:
            raise BackendError(f"{method} {path}: HTTP {response.status_code}")
        return response.status_code, content

    def _read_bounded(self, response: httpx.Response) -> bytes:
        """The body, at most max_response_bytes (after decompression), within one timeout in all.

        httpx's timeout bounds each read; the deadline also bounds a backend that drips a byte at a time.
        """
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise BackendError(f"answer is compressed ({encoding[:20]}) though the worker asked for identity")
        deadline = time.monotonic() + self._timeout
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():  # identity: no decoding happens here
            size += len(chunk)
            if size > self._max_bytes:
                raise BackendError(f"answer larger than {self._max_bytes} bytes")
            if time.monotonic() > deadline:
                raise BackendError(f"answer not complete within {self._timeout:g} s")
            chunks.append(chunk)
        return b"".join(chunks)


def _tls(verify: bool | str) -> bool | ssl.SSLContext:
    """True/False, or a context trusting the CA bundle at `verify` (httpx no longer takes a path)."""
    if isinstance(verify, bool):
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"invalid OPEVA_CA_BUNDLE={verify!r}: {exc}") from None


def _detail(body: bytes) -> dict[str, Any]:
    """An error answer's JSON object with its `detail` flattened in ({"code": ...} of a 409); {} if none."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(answer, dict):
        return {}
    detail = answer.get("detail")
    return {**detail, "detail": detail} if isinstance(detail, dict) else answer


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        raise BackendError(f"answer is not JSON: {body[:80]!r}") from None
