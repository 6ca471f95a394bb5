"""Protocol 1.0 staleness: heartbeat keep-alive, and dispatched/setup jobs going back to the queue.

Driven through ``Store.sweep`` with the fake clock, like test_devserver_staleness.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from devserver_support import Env, MakeEnv

Info = Callable[[str], dict[str, Any]]

# The three ways a heartbeat can say "still busy with this job".
KEEP_ALIVE_FORMS: dict[str, Info] = {
    "active_jobs": lambda job_id: {"active_jobs": [{"job_id": "other"}, {"job_id": job_id, "status": "running"}]},
    "active_job_ids": lambda job_id: {"active_job_ids": ["other", job_id]},
    "active_job_id": lambda job_id: {"active_job_id": job_id, "active_job_count": 1},
}


def job_at(env: Env, status: str, worker_id: str = "w1") -> str:
    job_id = env.submit()
    payload = env.claim(worker_id)
    assert payload is not None and payload["job_id"] == job_id
    if status != "dispatched":
        assert env.report(job_id, status, worker_id=worker_id).status_code == 200
    return job_id


def silent_for(env: Env, seconds: int, worker_id: str = "w1", **info: Any) -> list[tuple[str, str, str]]:
    """Let ``seconds`` pass in 30 s steps, the worker heartbeating ``info`` but never refreshing a status."""
    changes = []
    for _ in range(seconds // 30):
        env.clock.advance(30)
        assert env.heartbeat(worker_id, **info).status_code == 200
        changes += [(c.job_id, c.new_status, c.reason) for c in env.store.sweep(env.clock.now)]
    return changes


@pytest.mark.parametrize("form", KEEP_ALIVE_FORMS)
@pytest.mark.parametrize("status", ["dispatched", "setup", "running", "stop_requested"])
def test_heartbeat_listing_the_job_keeps_it_alive(env: Env, form: str, status: str) -> None:
    job_id = job_at(env, "setup" if status == "stop_requested" else status)
    if status == "stop_requested":
        env.client.post(f"/stop/{job_id}")
    assert silent_for(env, 3000, **KEEP_ALIVE_FORMS[form](job_id)) == []  # ten status TTLs
    assert env.status(job_id) == status


@pytest.mark.parametrize("form", KEEP_ALIVE_FORMS)
def test_keep_alive_ends_when_the_heartbeat_stops_listing_the_job(env: Env, form: str) -> None:
    job_id = job_at(env, "running")
    assert silent_for(env, 600, **KEEP_ALIVE_FORMS[form](job_id)) == []
    assert silent_for(env, 30, **KEEP_ALIVE_FORMS[form]("other")) == [(job_id, "failed", "stale_status")]
    assert env.info(job_id)["error"] == "stale_status"


@pytest.mark.parametrize(
    "info",
    [
        {},
        {"active_job_id": "other"},
        {"active_job_ids": [], "active_job_id": "JOB"},  # the list is believed over the single id
        {"active_jobs": [{"id": "JOB"}, "JOB"]},
        {"active_job_ids": "JOB"},
    ],
)
def test_heartbeats_that_do_not_list_the_job_do_not_keep_it(env: Env, info: dict[str, Any]) -> None:
    job_id = job_at(env, "running")
    info = {key: _with_job(value, job_id) for key, value in info.items()}
    assert silent_for(env, 300, **info) == []  # exactly the status TTL: not yet
    assert silent_for(env, 30, **info) == [(job_id, "failed", "stale_status")]


def _with_job(value: Any, job_id: str) -> Any:
    if value == "JOB":
        return job_id
    if isinstance(value, list):
        return [_with_job(item, job_id) for item in value]
    if isinstance(value, dict):
        return {key: _with_job(item, job_id) for key, item in value.items()}
    return value


def test_another_workers_heartbeat_does_not_keep_the_job(env: Env) -> None:
    job_id = job_at(env, "running", worker_id="w1")
    for _ in range(11):
        env.clock.advance(30)
        env.heartbeat("w1")
        env.heartbeat("w2", active_job_id=job_id)
    assert [(c.job_id, c.reason) for c in env.store.sweep(env.clock.now)] == [(job_id, "stale_status")]


@pytest.mark.parametrize("status", ["dispatched", "setup"])
def test_stale_job_that_has_not_started_goes_back_to_the_queue(env: Env, status: str) -> None:
    job_id = job_at(env, status)
    assert silent_for(env, 300) == []
    assert silent_for(env, 30) == [(job_id, "queued", "stale_status")]
    info = env.info(job_id)
    assert (info["status"], info["worker_id"], info["requeue_count"]) == ("queued", None, 1)
    payload = env.claim("w2")
    assert payload is not None and payload["job_id"] == job_id and payload["attempt_number"] == 2


def test_setup_job_of_an_offline_host_goes_back_to_the_queue(env: Env) -> None:
    env.heartbeat("w1")
    job_id = job_at(env, "setup")
    env.clock.advance(181)
    changes = env.store.sweep(env.clock.now)
    assert [(c.job_id, c.old_status, c.new_status, c.reason) for c in changes] == [
        (job_id, "setup", "queued", "host_offline")
    ]


def test_stale_requeue_ends_a_fenced_attempt(env: Env) -> None:
    env.submit()
    payload = env.claim_fenced("w1")
    assert silent_for(env, 330) == [(payload["job_id"], "queued", "stale_status")]
    resp = env.report_attempt(payload, "running")
    assert resp.status_code == 409 and resp.json()["detail"]["code"] == "stale_job_attempt"
    assert env.claim_fenced("w2")["attempt_number"] == 2


def test_2026_04_has_no_keep_alive(make_env: MakeEnv) -> None:
    env = make_env(protocol="2026-04")
    job_id = job_at(env, "running")
    for form in KEEP_ALIVE_FORMS.values():
        env.heartbeat("w1", **form(job_id))
    assert silent_for(env, 330, active_job_id=job_id) == [(job_id, "failed", "stale_status")]
