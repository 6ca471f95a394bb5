"""Backend answers that are not what the contract promises: errors to retry, never a crash or a hang."""

from __future__ import annotations

import json
import signal
import time

import pytest
from conftest import Raw, Scene, normal_job
from harness import wait_for

pytestmark = pytest.mark.docker


def test_garbage_and_huge_answers_are_retried(scene: Scene) -> None:
    crafted = [
        Raw(b"<html>502 Bad Gateway</html>"),
        Raw(b""),
        Raw(b"\xff\xfe\x00garbage"),
        Raw(b"[" * 200_000 + b"]" * 200_000),  # deeper than Python's recursion limit
        Raw(b'["job_id", "x"]'),
        Raw(b"null"),
        Raw(b'{"job_id": "' + b"x" * 20_000_000 + b'"}'),  # 20 MB: far above the worker's 1 MiB bound
        Raw(b'{"job_id": "huge-1"}', status=500),
        Raw(b"redirect", status=302),
    ]
    # A 204 after each: a successful call ends the worker's backoff, so the test need not wait it out.
    scene.backend.push(*(answer for raw in crafted for answer in (raw, None)))
    scene.mark("after-1")
    worker = scene.worker({"POLL_INTERVAL": "0.2"})
    wait_for(scene.backend.queue_empty, 60, "the worker to read every crafted answer")

    text = worker.text()
    assert text.count("answer is not JSON") >= 4, text
    assert "answer larger than" in text
    assert "not an object" in text
    assert scene.backend.statuses == []
    scene.assert_nothing_else_changed()
    scene.assert_still_working(worker)


def test_a_slow_backend_is_cut_by_http_timeout(scene: Scene) -> None:
    scene.backend.push(
        Raw(b'{"job_id": "late-1", "config_path": "configs/test.yaml"}', delay=6),
        Raw(b'{"job_id": "drip-1", "config_path": "configs/test.yaml"}', drip_seconds=0.3),
    )
    worker = scene.worker({"HTTP_TIMEOUT": "1", "WORKER_HEARTBEAT_INTERVAL": "1"})
    started = time.monotonic()
    wait_for(scene.backend.queue_empty, 30, "both slow answers to be asked for")
    wait_for(lambda: "not complete within 1 s" in worker.text(), 10, "the dripping answer to be cut")
    # The late answer took 6 s to come; the worker gave up after 1 s and asked again (with backoff).
    assert time.monotonic() - started < 15
    text = worker.text()
    assert "ReadTimeout" in text, text
    # Neither job was taken: an answer that did not arrive in time is not a job.
    assert scene.backend.statuses == []
    scene.assert_still_working(worker)


def test_token_is_sent_as_bearer_and_never_logged(scene: Scene) -> None:
    token = "tok-9f8e7d6c5b4a-very-secret"
    scene.backend.push(Raw(b"{}", status=500), Raw(b"not json"), Raw(b"{}", status=401))
    worker = scene.worker({"OPEVA_TOKEN": token, "LOG_LEVEL": "DEBUG"})
    wait_for(scene.backend.queue_empty, 30, "the error answers to be read")
    scene.assert_still_working(worker)

    assert len(scene.backend.authorization) > 5
    assert set(scene.backend.authorization) == {f"Bearer {token}"}
    text = worker.text()
    assert "setting OPEVA_TOKEN=***" in text  # DEBUG really was on: the settings were logged
    assert token not in text
    assert token[4:16] not in text


def test_sigterm_while_next_job_is_answered_starts_nothing_and_hands_the_job_back(scene: Scene) -> None:
    payload = json.dumps(normal_job("late-1", "echo must-not-run")).encode()
    scene.backend.push(Raw(body=payload, delay=2.0))
    worker = scene.worker()
    wait_for(lambda: scene.backend.next_job_calls >= 1, 20, "next-job asked")

    worker.signal(signal.SIGTERM)  # while the answer is still on its way

    assert worker.wait(10) == 0, worker.text()
    assert worker.containers(scene.docker) == []
    assert [(r["status"], r.get("error_code")) for r in scene.backend.reports("late-1")] == [
        ("queued", "worker_shutdown")
    ]
