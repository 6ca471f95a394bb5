"""The HTTP client for the OPEVA backend's agent API (CONTRACT.md)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from worker_agent import __version__, defaults, metrics


class BackendError(Exception):
    """The call did not succeed and may be retried: transport error, 5xx, or an answer that is not JSON."""


class Conflict(BackendError):
    """409: the backend does not allow this transition; the job moved on."""


class UnknownJob(BackendError):
    """404: the backend does not know the job."""


TERMINAL = frozenset({"finished", "failed", "stopped", "canceled"})
STOPPING = frozenset({"stop_requested", "stopped", "canceled"})


@dataclass(frozen=True)
class StatusUpdate:
    job_id: str
    status: str
    container_id: str | None = None
    container_name: str | None = None
    exit_code: int | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def body(self, worker_id: str) -> dict[str, Any]:
        fields = {key: value for key, value in asdict(self).items() if value not in (None, {})}
        return {**fields, "worker_id": worker_id}


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
        headers = {"User-Agent": f"job-worker-agent/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.worker_id = worker_id
        self._max_bytes = max_response_bytes
        self._http = httpx.Client(base_url=server, timeout=timeout, headers=headers, verify=verify, transport=transport)

    def close(self) -> None:
        self._http.close()

    def next_job(self) -> Any | None:
        """The next job's payload as decoded JSON (checked by payload.parse), or None when there is no work."""
        status, body = self._call("POST", "/api/agent/next-job", {"worker_id": self.worker_id})
        if status == 204:
            return None
        return _decode(body)

    def send_status(self, update: StatusUpdate) -> None:
        self._call("POST", "/api/agent/job-status", update.body(self.worker_id))

    def heartbeat(self, info: dict[str, Any]) -> None:
        self._call("POST", "/api/agent/heartbeat", {"worker_id": self.worker_id, "info": info})

    def job_status(self, job_id: str) -> str | None:
        """The job's status on the backend, or None when the backend does not know the job."""
        try:
            _, body = self._call("GET", f"/status/{job_id}")
        except UnknownJob:
            return None
        answer = _decode(body)
        status = answer.get("status") if isinstance(answer, dict) else None
        if not isinstance(status, str):
            raise BackendError(f"GET /status/{job_id}: answer has no status")
        return status

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        try:
            return self._exchange(method, path, body)
        except (Conflict, UnknownJob):
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
        if response.status_code == 409:
            raise Conflict(f"{method} {path}: 409 {content[:200]!r}")
        if response.status_code == 404:
            raise UnknownJob(f"{method} {path}: 404")
        if not 200 <= response.status_code < 300:
            raise BackendError(f"{method} {path}: HTTP {response.status_code}")
        return response.status_code, content

    def _read_bounded(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise BackendError(f"answer larger than {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise BackendError(f"answer is not JSON: {body[:80]!r}") from None
