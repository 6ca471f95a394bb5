"""The backend client: token, bounded answers, timeouts, and answers that are errors, never crashes."""

from __future__ import annotations

import gzip
import json
import ssl
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from worker_agent.backend.client import (
    BackendClient,
    BackendError,
    Conflict,
    JobView,
    Rejected,
    StaleAttempt,
    UnknownJob,
)
from worker_agent.config import ConfigError
from worker_agent.domain import Status, StatusUpdate

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, **options: object) -> BackendClient:
    return BackendClient(
        "http://backend.test",
        "w1",
        transport=httpx.MockTransport(handler),
        **options,  # type: ignore[arg-type]
    )


def answer(status: int, body: bytes = b"", **headers: str) -> Handler:
    return lambda request: httpx.Response(status, content=body, headers=headers)


def test_token_is_sent_as_bearer_on_every_call() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "running"} if request.method == "GET" else {"ok": True})

    backend = client(handler, token="tok-123")
    backend.heartbeat({"a": 1})
    backend.send_status(StatusUpdate("j1", "running"))
    assert backend.job_status("j1") == JobView(Status.RUNNING)
    assert [r.headers["Authorization"] for r in seen] == ["Bearer tok-123"] * 3
    assert json.loads(seen[0].content) == {"worker_id": "w1", "info": {"a": 1}}


def test_no_token_no_authorization_header() -> None:
    seen: list[httpx.Request] = []
    client(lambda r: seen.append(r) or httpx.Response(204)).next_job()
    assert "Authorization" not in seen[0].headers


@pytest.mark.parametrize("token", ["two words", "new\nline", "tök"])
def test_a_token_that_cannot_be_sent_is_a_config_error_that_does_not_echo_it(token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        client(answer(204), token=token)
    assert token not in str(caught.value) and "OPEVA_TOKEN" in str(caught.value)


def test_204_is_no_work_and_an_object_is_the_payload() -> None:
    assert client(answer(204)).next_job() is None
    assert client(answer(200, b'{"job_id": "j"}')).next_job() == {"job_id": "j"}


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>oops</html>", b"\xff\xfe", b"[1, 2]", b'"job"', b"null", b"[" * 100_000 + b"]" * 100_000],
)
def test_200_that_is_not_a_json_object_is_an_error_to_retry(body: bytes) -> None:
    with pytest.raises(BackendError):
        client(answer(200, body)).next_job()


def test_status_answer_without_status_is_an_error() -> None:
    for body in (b"{}", b'{"status": 3}', b"[]", b"nope"):
        with pytest.raises(BackendError):
            client(answer(200, body)).job_status("j1")


def test_answer_larger_than_the_bound_is_an_error() -> None:
    big = b'{"job_id": "' + b"x" * 2_000_000 + b'"}'
    with pytest.raises(BackendError, match="larger than"):
        client(answer(200, big)).next_job()
    small = client(answer(200, b'{"job_id": "' + b"x" * 500 + b'"}'), max_response_bytes=100)
    with pytest.raises(BackendError, match="larger than 100"):
        small.next_job()


def test_compressed_answers_are_not_asked_for_and_refused_before_inflating() -> None:
    bomb = gzip.compress(b'{"job_id": "' + b"x" * 50_000_000 + b'"}')
    assert len(bomb) < 100_000
    asked: list[str | None] = []

    class Bomb(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            asked.append(self.headers.get("Accept-Encoding"))
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Bomb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tracemalloc.start()
    try:
        with pytest.raises(BackendError, match="compressed"):
            BackendClient(f"http://127.0.0.1:{server.server_address[1]}", "w1").next_job()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        server.shutdown()
        server.server_close()
    assert asked == ["identity"]
    assert peak < 10 * 1024 * 1024  # the 50 MB it inflates to were never made


UNKNOWN_JOB = b'{"detail": "Job not found"}'  # the orchestrator's words; the devserver says "unknown job"


def test_status_codes() -> None:
    with pytest.raises(Conflict):
        client(answer(409, b"{}")).send_status(StatusUpdate("j1", "running"))
    with pytest.raises(StaleAttempt):
        stale = b'{"detail": {"code": "stale_job_attempt", "message": "not the current attempt"}}'
        client(answer(409, stale)).send_status(StatusUpdate("j1", "running"))
    assert client(answer(404, UNKNOWN_JOB)).job_status("j1") is None
    for code in (500, 302, 401, 418):
        with pytest.raises(BackendError):
            client(answer(code, b"{}")).heartbeat({})
    with pytest.raises(UnknownJob):
        client(answer(404, b'{"detail": "unknown job"}')).send_status(StatusUpdate("j1", "running"))
    with pytest.raises(Rejected):
        client(answer(400, b'{"detail": "unknown worker_id"}')).heartbeat({})


@pytest.mark.parametrize("body", [b"", b"<html><body>404 Not Found</body></html>", b'{"detail": "Not Found"}'])
def test_a_404_that_is_not_the_backends_word_on_the_job_is_an_outage(body: bytes) -> None:
    # A wrong OPEVA_SERVER, a proxy, or a backend without the agent routes: the job must not be given up.
    with pytest.raises(BackendError) as raised:
        client(answer(404, body)).job_status("j1")
    assert not isinstance(raised.value, UnknownJob)
    with pytest.raises(BackendError) as raised:
        client(answer(404, body)).send_status(StatusUpdate("j1", "finished"))
    assert not isinstance(raised.value, UnknownJob)


def test_status_answer_names_worker_and_attempt() -> None:
    body = b'{"status": "running", "worker_id": "w2", "attempt_number": 3}'
    assert client(answer(200, body)).job_status("j1") == JobView(Status.RUNNING, "w2", 3)


def test_next_job_advertises_attempt_fencing() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    assert client(handler).next_job() is None
    assert json.loads(seen[0].content) == {"worker_id": "w1", "capabilities": ["attempt_fencing_v1"]}


def test_the_attempt_token_is_sent_but_never_shown() -> None:
    update = StatusUpdate("j1", Status.RUNNING, attempt_number=2, attempt_token="s3cr3t-token")
    assert update.body("w1")["attempt_token"] == "s3cr3t-token"
    assert "s3cr3t-token" not in repr(update)


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), httpx.RemoteProtocolError("x")]
)
def test_transport_errors_are_backend_errors(error: httpx.HTTPError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(BackendError):
        client(handler).next_job()


class _Drip(httpx.SyncByteStream):
    """A body that arrives a byte at a time, each byte within any read timeout, forever."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"job_id": "'
        while True:
            self.clock[0] += 0.5
            yield b"x"


def test_a_dripping_answer_is_cut_at_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("worker_agent.backend.client.time.monotonic", lambda: clock[0])
    backend = client(lambda request: httpx.Response(200, stream=_Drip(clock)), timeout=3.0)
    with pytest.raises(BackendError, match="within 3 s"):
        backend.next_job()
    assert clock[0] <= 4.0


def test_timeout_reaches_httpx() -> None:
    seen: list[httpx.Request] = []
    client(lambda r: seen.append(r) or httpx.Response(204), timeout=1.5).next_job()
    assert seen[0].extensions["timeout"] == {"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5}


def test_ca_bundle_becomes_a_context_and_a_bad_one_is_a_config_error(tmp_path: Path) -> None:
    from worker_agent.backend.client import _tls

    assert _tls(True) is True and _tls(False) is False
    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    assert isinstance(_tls(str(ca)), ssl.SSLContext)
    (tmp_path / "bad.pem").write_text("not a certificate")
    for path in (tmp_path / "missing.pem", tmp_path / "bad.pem"):
        with pytest.raises(ConfigError, match="OPEVA_CA_BUNDLE"):
            BackendClient("https://backend.test", "w1", verify=str(path))
