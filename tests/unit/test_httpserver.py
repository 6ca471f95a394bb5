"""/metrics, /healthz and /readyz over real HTTP on loopback; readiness from the worker's attributes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker_agent.ops import httpserver, metrics


@pytest.fixture
def problems() -> list[str]:
    return []


@pytest.fixture
def base(problems: list[str]) -> Iterator[str]:
    server = httpserver.serve(0, lambda: list(problems), host="127.0.0.1")
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def get(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_healthz_answers_ok(base: str) -> None:
    assert get(base + "/healthz")[::2] == (200, b'{"status": "ok"}\n')


def test_readyz_is_503_with_reasons_then_200(base: str, problems: list[str]) -> None:
    problems += ["Docker is not reachable", "shared directory: gone"]
    code, content_type, body = get(base + "/readyz")
    assert (code, content_type) == (503, "application/json")
    answer = json.loads(body)
    assert answer["reason"] == "Docker is not reachable; shared directory: gone"
    assert answer["problems"] == problems

    problems.clear()
    code, _, body = get(base + "/readyz")
    assert (code, json.loads(body)) == (200, {"status": "ready"})


def test_metrics_parse_with_the_prometheus_parser(base: str) -> None:
    metrics.OUTBOX_DEPTH.set(7)
    code, content_type, body = get(base + "/metrics")

    assert code == 200 and content_type.startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    assert families["opeva_worker_outbox_depth"].samples[0].value == 7
    for name in ("opeva_worker_jobs_started", "opeva_worker_job_duration_seconds", "opeva_worker_docker_up"):
        assert name in families


def test_head_has_no_body_and_unknown_paths_are_404(base: str) -> None:
    assert get(base + "/healthz", "HEAD")[::2] == (200, b"")
    assert get(base + "/nothing")[0] == 404


def test_port_taken_is_an_oserror(base: str) -> None:
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        httpserver.serve(port, list, host="127.0.0.1")
