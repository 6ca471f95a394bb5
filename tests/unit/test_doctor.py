"""Doctor's verdicts from what it observed (the real backend/Docker runs are in tests/integration)."""

from __future__ import annotations

import dataclasses
import email.utils
import time
from pathlib import Path

import httpx
import pytest

from worker_agent import config
from worker_agent.ops import doctor
from worker_agent.ops.doctor import FAIL, OK, SKIP, WARN, Check


def settings(**overrides: object) -> config.Settings:
    return dataclasses.replace(config.load(environ={"WORKER_ID": "w1"}), server="http://backend:8000", **overrides)


def probe_with(status: int, seen: list[httpx.Request] | None = None, **headers: str) -> doctor._Probe:
    def answer(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, headers=headers, json={"detail": "unknown job"})

    return doctor.probe_backend(settings(token="s3cret"), httpx.MockTransport(answer))


def test_probe_asks_for_an_unknown_job_with_the_token() -> None:
    seen: list[httpx.Request] = []
    probe_with(404, seen)

    (request,) = seen
    assert request.method == "GET" and request.url.path.startswith("/status/doctor-")
    assert request.headers["Authorization"] == "Bearer s3cret"


def test_404_means_reachable_and_token_accepted() -> None:
    check = doctor.check_backend(settings(token="t"), probe_with(404))
    assert (check.result, check.detail) == (OK, "http://backend:8000 answers, token accepted")


@pytest.mark.parametrize("status", [401, 403])
def test_401_or_403_means_bad_token(status: int) -> None:
    check = doctor.check_backend(settings(token="t"), probe_with(status))
    assert check.result == FAIL and f"HTTP {status}" in check.detail
    assert check.fix == "correct OPEVA_TOKEN"
    assert doctor.check_backend(settings(), probe_with(status)).fix == "set OPEVA_TOKEN to the backend's token"


def test_other_answers_are_failures() -> None:
    check = doctor.check_backend(settings(), probe_with(500))
    assert check.result == FAIL and "HTTP 500" in check.detail


def test_unreachable_backend_fails_and_skips_the_clock() -> None:
    error = httpx.ConnectError("refused")
    assert doctor.check_backend(settings(), error).result == FAIL
    assert doctor.check_clock(error).result == SKIP


def _dated(offset: float) -> doctor._Probe:
    now = time.time()
    return doctor._Probe(404, email.utils.formatdate(now + offset, usegmt=True), now, now)


def test_clock_within_a_few_seconds_is_ok() -> None:
    assert doctor.check_clock(_dated(1)).result == OK


@pytest.mark.parametrize(("offset", "side"), [(-60, "ahead of"), (60, "behind")])
def test_clock_skew_is_a_warning_naming_the_direction(offset: float, side: str) -> None:
    check = doctor.check_clock(_dated(offset))
    assert check.result == WARN and side in check.detail and "sync" in check.fix


def test_clock_without_or_with_a_bad_date_header_is_a_warning() -> None:
    assert doctor.check_clock(doctor._Probe(404, None, 0, 0)).result == WARN
    assert doctor.check_clock(doctor._Probe(404, "yesterday", 0, 0)).result == WARN


def test_image_needs_docker() -> None:
    assert doctor.check_image(settings(), None).result == SKIP


def test_gpus_requested_without_nvml_is_a_warning_not_a_failure() -> None:
    assert doctor.check_gpus(settings()).result == SKIP
    assert doctor.check_gpus(settings(enable_gpu="all"), lambda: None).result == WARN
    found = doctor.check_gpus(settings(enable_gpu="0"), lambda: [{"name": "Tesla T4"}])
    assert (found.result, found.detail) == (OK, "1 GPU(s): Tesla T4")


def test_state_dir_under_a_file_is_a_failure(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert doctor.check_state_dir(settings(state_dir=tmp_path / "file" / "state")).result == FAIL
    assert doctor.check_state_dir(settings(state_dir=tmp_path / "a" / "b")).detail.endswith("can be created")
    assert doctor.check_state_dir(settings(state_dir=tmp_path)).detail.endswith("writable")


def test_share_check_uses_the_share_guard(tmp_path: Path) -> None:
    assert doctor.check_share(settings(shared_dir=tmp_path)).result == OK
    missing = doctor.check_share(settings(shared_dir=tmp_path / "gone"))
    assert missing.result == FAIL and "does not exist" in missing.detail and missing.fix


def test_render_gives_a_fix_line_and_a_verdict() -> None:
    text = doctor.render([Check("backend", FAIL, "down", "start it"), Check("clock", SKIP, "needs the backend")])
    assert text.splitlines() == [
        "CHECK    RESULT  DETAIL",
        "backend  FAIL    down",
        "                 fix: start it",
        "clock    SKIP    needs the backend",
        "verdict: NOT READY - fix backend",
    ]
    assert doctor.render([Check("clock", WARN, "skew")]).endswith("verdict: READY (warnings: clock)")


def test_bad_configuration_stops_after_the_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLL_INTERVAL", "soon")
    checks = doctor.run_checks(None)
    assert [(c.name, c.result) for c in checks] == [("configuration", FAIL)]
    assert "POLL_INTERVAL" in checks[0].detail


def test_a_server_without_the_agent_routes_is_broken_with_the_fix() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Not Found"})  # FastAPI's answer for a route it lacks

    check = doctor.check_backend(settings(), doctor.probe_backend(settings(), httpx.MockTransport(answer)))
    assert check.result == FAIL and "no OPEVA agent API" in check.detail and "8011" in check.fix
