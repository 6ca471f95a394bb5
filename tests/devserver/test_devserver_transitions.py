"""The job-status transition table of docs/contract.md, row by row, over the HTTP API."""

from __future__ import annotations

import sqlite3

import pytest
from devserver_support import Env

STATES = [
    "launching",
    "queued",
    "dispatched",
    "running",
    "stop_requested",
    "finished",
    "failed",
    "stopped",
    "canceled",
]

# Written out from docs/contract.md on purpose (not imported from the store).
ALLOWED = {
    ("dispatched", "running"),
    ("dispatched", "failed"),
    ("dispatched", "canceled"),
    ("dispatched", "stop_requested"),
    ("dispatched", "queued"),
    ("running", "finished"),
    ("running", "failed"),
    ("running", "stop_requested"),
    ("running", "stopped"),
    ("running", "canceled"),
    ("stop_requested", "stopped"),
    ("stop_requested", "failed"),
    ("stop_requested", "canceled"),
}


def _force(env: Env, job_id: str, status: str, worker_id: str | None) -> None:
    conn = sqlite3.connect(env.store.db_path)
    with conn:
        conn.execute("UPDATE jobs SET status = ?, worker_id = ? WHERE job_id = ?", (status, worker_id, job_id))
    conn.close()


def _job_in(env: Env, state: str) -> str:
    """A job brought to ``state`` through the real API where the API can get it there."""
    job_id = env.submit()
    if state == "queued":
        return job_id
    if state == "launching":
        _force(env, job_id, "launching", None)
        return job_id
    payload = env.claim("w1")
    assert payload is not None and payload["job_id"] == job_id
    if state == "dispatched":
        return job_id
    if state == "stop_requested":
        assert env.client.post(f"/stop/{job_id}").json()["status"] == "stop_requested"
        return job_id
    assert env.report(job_id, "running").status_code == 200
    if state == "running":
        return job_id
    if state == "stopped":
        assert env.client.post(f"/stop/{job_id}").status_code == 200
    assert env.report(job_id, state).status_code == 200
    return job_id


@pytest.mark.parametrize("source", STATES)
def test_job_in_helper_reaches_state(env: Env, source: str) -> None:
    assert env.status(_job_in(env, source)) == source


@pytest.mark.parametrize("target", STATES)
@pytest.mark.parametrize("source", STATES)
def test_transition_table(env: Env, source: str, target: str) -> None:
    job_id = _job_in(env, source)
    before = env.client.get(f"/job-info/{job_id}").json()
    env.clock.advance(7)
    resp = env.report(job_id, target)
    if source == target or (source, target) in ALLOWED:
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"ok": True, "status": target}
        after = env.client.get(f"/job-info/{job_id}").json()
        assert after["status"] == target
        assert after["status_updated_at"] == before["status_updated_at"] + 7
    else:
        assert resp.status_code == 409, resp.text
        assert resp.json()["status"] == source
        assert isinstance(resp.json()["detail"], str)
        after = env.client.get(f"/job-info/{job_id}").json()
        assert after == before


def test_every_terminal_state_rejects_every_other_state(env: Env) -> None:
    for terminal in ("finished", "failed", "stopped", "canceled"):
        job_id = _job_in(env, terminal)
        for target in STATES:
            code = env.report(job_id, target).status_code
            assert code == (200 if target == terminal else 409), (terminal, target)


def test_handing_a_job_back_requeues_it_for_anyone(env: Env) -> None:
    job_id = _job_in(env, "dispatched")
    assert env.report(job_id, "queued").status_code == 200
    assert env.client.get(f"/job-info/{job_id}").json()["worker_id"] is None
    payload = env.claim("w2")
    assert payload is not None and payload["job_id"] == job_id
    assert env.client.get(f"/status/{job_id}").json()["worker_id"] == "w2"
