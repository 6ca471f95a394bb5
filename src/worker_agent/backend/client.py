"""The HTTP client for the OPEVA backend's agent API (docs/contract.md)."""

from __future__ import annotations

import json
import ssl
import time
import uuid
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


class UnknownJob(BackendError):
    """404: the backend does not know the job."""


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
        status, body = self._call("POST", "/api/agent/next-job", {"worker_id": self.worker_id})
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

    def job_status(self, job_id: str) -> Status | None:
        """The job's status on the backend, or None when the backend does not know the job."""
        try:
            _, body = self._call("GET", f"/status/{job_id}")
        except UnknownJob:
            return None
        answer = _decode(body)
        status = answer.get("status") if isinstance(answer, dict) else None
        if not isinstance(status, str) or status not in _KNOWN_STATUSES:
            raise BackendError(f"GET /status/{job_id}: answer has no known status: {str(status)[:40]!r}")
        return Status(status)

    def probe(self) -> tuple[int, str | None]:
        """GET /status/<random id>: needs no job and changes nothing; (HTTP status, Date header). For doctor."""
        try:
            response = self._http.get(f"/status/doctor-{uuid.uuid4().hex[:12]}")
        except httpx.HTTPError as exc:
            raise BackendError(f"GET /status: {type(exc).__name__}: {exc}") from None
        return response.status_code, response.headers.get("date")

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


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        raise BackendError(f"answer is not JSON: {body[:80]!r}") from None
