"""Attempt fencing and operator requeue (protocol 1.0): over the HTTP API, on the store, and over real HTTP."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

import httpx
import pytest
from devserver_support import Env, Live, MakeEnv

from opeva_devserver.store import Requeue, StaleAttempt, StatusReport, TransitionRejected

STALE = {
    "detail": {
        "code": "stale_job_attempt",
        "message": "this status update does not come from the job's current attempt",
    }
}


def fenced_job(env: Env, *path: str, worker_id: str = "w1") -> dict[str, Any]:
    """Submit a job, claim it as a fencing worker and report each status of ``path``; return the payload."""
    env.submit()
    payload = env.claim_fenced(worker_id)
    for status in path:
        assert env.report_attempt(payload, status, worker_id=worker_id).status_code == 200
    return payload


def requeue(env: Env, job_id: str, **body: Any) -> Any:
    return env.client.post(f"/ops/jobs/{job_id}/requeue", json=body)


def stored_hash(env: Env, job_id: str) -> str | None:
    with sqlite3.connect(env.store.db_path) as conn:
        row = conn.execute("SELECT attempt_token_hash FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    value: str | None = row[0]
    return value


# -- the fenced dispatch ------------------------------------------------------------------------------------


def test_fencing_worker_gets_an_attempt_and_the_job_records_it(env: Env) -> None:
    job_id = env.submit()
    payload = env.claim_fenced("w1")
    assert payload["job_id"] == job_id
    assert payload["attempt_number"] == 1
    assert payload["attempt_protocol"] == "attempt_fencing_v1"
    assert isinstance(payload["attempt_token"], str) and len(payload["attempt_token"]) >= 32
    info = env.info(job_id)
    assert (info["attempt_number"], info["attempt_fencing_enabled"], info["worker_id"]) == (1, True, "w1")


def test_capability_is_matched_after_trimming_and_among_others(env: Env) -> None:
    env.submit()
    payload = env.claim("w1", capabilities=["something_else", " attempt_fencing_v1 "])
    assert payload is not None and "attempt_token" in payload


def test_token_is_stored_hashed_and_never_shown(env: Env) -> None:
    payload = fenced_job(env, "running")
    job_id, token = payload["job_id"], payload["attempt_token"]
    assert stored_hash(env, job_id) == hashlib.sha256(token.encode()).hexdigest()
    for url in (f"/job-info/{job_id}", "/jobs", f"/status/{job_id}", "/queue", "/hosts"):
        text = env.client.get(url).text
        assert token not in text and "attempt_token" not in text, url
    job_dir = env.shared / "jobs" / job_id
    for name in ("status.json", "job_info.json"):
        text = (job_dir / name).read_text()
        assert token not in text and "attempt_token" not in text, name
    assert token.encode() not in env.store.db_path.read_bytes()


def test_the_current_attempt_reports_through_to_the_end(env: Env) -> None:
    payload = fenced_job(env)
    for status in ("setup", "running", "running", "finished"):
        resp = env.report_attempt(payload, status, exit_code=0 if status == "finished" else None)
        assert resp.status_code == 200, resp.text
    assert env.status(payload["job_id"]) == "finished"


def _wrong_token(payload: dict[str, Any]) -> dict[str, Any]:
    return {"attempt_number": payload["attempt_number"], "attempt_token": payload["attempt_token"] + "x"}


def _no_token(payload: dict[str, Any]) -> dict[str, Any]:
    return {"attempt_number": payload["attempt_number"]}


def _wrong_attempt(payload: dict[str, Any]) -> dict[str, Any]:
    return {"attempt_number": payload["attempt_number"] + 1, "attempt_token": payload["attempt_token"]}


def _no_attempt(payload: dict[str, Any]) -> dict[str, Any]:
    return {"attempt_token": payload["attempt_token"]}


def _nothing(payload: dict[str, Any]) -> dict[str, Any]:
    return {}


@pytest.mark.parametrize("fence", [_wrong_token, _no_token, _wrong_attempt, _no_attempt, _nothing])
@pytest.mark.parametrize("status", ["running", "finished", "failed"])
def test_report_that_does_not_prove_the_attempt_is_stale(env: Env, fence: Any, status: str) -> None:
    payload = fenced_job(env, "running")
    before = env.info(payload["job_id"])
    resp = env.report(payload["job_id"], status, worker_id="w1", **fence(payload))
    assert resp.status_code == 409
    assert resp.json() == STALE
    assert env.info(payload["job_id"]) == before


def test_right_token_from_another_worker_is_stale(env: Env) -> None:
    payload = fenced_job(env, "running")
    resp = env.report_attempt(payload, "finished", worker_id="w2")
    assert resp.status_code == 409 and resp.json() == STALE
    assert env.status(payload["job_id"]) == "running"


def test_stale_check_comes_before_the_transition_check(env: Env) -> None:
    payload = fenced_job(env, "running")
    assert env.report(payload["job_id"], "queued", worker_id="w1").json() == STALE  # a 409 either way: this one
    assert env.report_attempt(payload, "queued").json()["status"] == "running"  # the plain transition 409


def test_legacy_worker_is_not_fenced(env: Env) -> None:
    job_id = env.submit()
    payload = env.claim("w1")
    assert payload is not None and "attempt_token" not in payload
    info = env.info(job_id)
    assert (info["attempt_number"], info["attempt_fencing_enabled"]) == (1, False)
    assert env.report(job_id, "running").status_code == 200
    assert env.report(job_id, "running", attempt_number=7, attempt_token="anything").status_code == 200
    assert env.report(job_id, "running", worker_id="w2").status_code == 409  # the worker check of 2026-04
    assert env.report(job_id, "finished", exit_code=0).status_code == 200


def test_report_fields_of_1_0_are_stored(env: Env) -> None:
    payload = fenced_job(env, "running")
    resp = env.report_attempt(
        payload,
        "failed",
        worker_version="2.1.0",
        error="image pull failed",
        error_code="image_pull",
        error_category="infrastructure",
        error_hint="check the registry",
        exit_code=125,
        details={"phase": "setup"},
    )
    assert resp.status_code == 200
    info = env.info(payload["job_id"])
    assert info["worker_version"] == "2.1.0"
    assert (info["error_code"], info["error_category"], info["error_hint"]) == (
        "image_pull",
        "infrastructure",
        "check the registry",
    )
    assert (info["exit_code"], info["details"]) == (125, {"phase": "setup"})


# -- requeue and new attempts -------------------------------------------------------------------------------


def test_force_requeue_makes_a_new_attempt_and_fences_off_the_old_one(env: Env) -> None:
    first = fenced_job(env, "running", worker_id="w1")
    job_id = first["job_id"]
    resp = requeue(env, job_id, force=True)
    assert resp.status_code == 200
    assert resp.json() == {"message": "job requeued", "job_id": job_id, "status": "queued"}
    info = env.info(job_id)
    assert (info["status"], info["worker_id"], info["requeue_count"]) == ("queued", None, 1)
    assert info["attempt_fencing_enabled"] is True and stored_hash(env, job_id) is None
    assert env.report_attempt(first, "running").json() == STALE  # the old attempt learns it is over

    second = env.claim_fenced("w2")
    assert second["job_id"] == job_id
    assert second["attempt_number"] == 2 and second["attempt_token"] != first["attempt_token"]
    info = env.info(job_id)
    assert (info["attempt_number"], info["worker_id"], info["status"]) == (2, "w2", "dispatched")
    assert env.report_attempt(first, "finished", exit_code=0).json() == STALE
    assert env.report(job_id, "running", worker_id="w2", **_wrong_attempt(second)).json() == STALE
    assert env.report_attempt(second, "running", worker_id="w2").status_code == 200
    assert env.report_attempt(second, "finished", worker_id="w2", exit_code=0).status_code == 200
    assert [(h["status"], h.get("worker_id")) for h in env.info(job_id)["history"]] == [
        ("queued", None),
        ("dispatched", "w1"),
        ("running", "w1"),
        ("queued", "w1"),
        ("dispatched", "w2"),
        ("running", "w2"),
        ("finished", "w2"),
    ]


def test_requeue_clears_what_the_old_attempt_reported(env: Env) -> None:
    first = fenced_job(env, "running")
    env.report_attempt(first, "failed", exit_code=3, error="boom", error_code="x", container_id="c1")
    assert requeue(env, first["job_id"]).status_code == 200  # failed: no force needed
    info = env.info(first["job_id"])
    for key in ("exit_code", "error", "error_code", "container_id", "dispatched_at", "started_at", "finished_at"):
        assert info[key] is None, key


def test_a_fenced_job_never_goes_back_to_a_legacy_worker(env: Env) -> None:
    first = fenced_job(env, "running")
    requeue(env, first["job_id"], force=True)
    assert env.claim("legacy") is None
    assert env.claim_fenced("modern")["job_id"] == first["job_id"]


def test_requeue_to_a_required_host(make_env: MakeEnv) -> None:
    env = make_env(hosts=("w1", "w2", "w3"))
    first = fenced_job(env, "running", worker_id="w1")
    job_id = first["job_id"]
    bad = requeue(env, job_id, force=True, preferred_host="w9")
    assert bad.status_code == 400
    assert bad.json() == {"detail": "unknown preferred_host 'w9': the configured hosts are ['w1', 'w2', 'w3']"}
    assert env.status(job_id) == "running"
    assert requeue(env, job_id, force=True, preferred_host="w3", require_host=True).status_code == 200
    assert env.claim("w1", capabilities=["attempt_fencing_v1"]) is None
    assert env.claim("w2", capabilities=["attempt_fencing_v1"]) is None
    payload = env.claim_fenced("w3")
    assert (payload["job_id"], payload["attempt_number"], payload["preferred_host"]) == (job_id, 2, "w3")


def test_a_mere_preference_lets_any_worker_take_the_job(env: Env) -> None:
    job_id = env.submit()
    env.claim("w1")
    assert requeue(env, job_id, preferred_host="w3").status_code == 200  # dispatched: no force needed
    payload = env.claim("w2")
    assert payload is not None and payload["job_id"] == job_id and payload["preferred_host"] == "w3"


def test_requeue_keeps_a_pinned_job_pinned_unless_told_otherwise(env: Env) -> None:
    job_id = env.submit(target_host="w1")
    env.claim("w1")
    requeue(env, job_id)
    assert env.claim("w2") is None
    payload = env.claim("w1")
    assert payload is not None and payload["attempt_number"] == 2
    requeue(env, job_id, require_host=False)
    payload = env.claim("w2")
    assert payload is not None and payload["job_id"] == job_id and payload["preferred_host"] is None


@pytest.mark.parametrize(
    ("status", "path"),
    [
        ("setup", ["setup"]),
        ("running", ["running"]),
        ("stop_requested", ["setup"]),
        ("finished", ["running", "finished"]),
    ],
)
def test_requeue_without_force_refuses_a_job_that_may_be_at_work_or_is_done(
    env: Env, status: str, path: list[str]
) -> None:
    payload = fenced_job(env, *path)
    if status == "stop_requested":
        env.client.post(f"/stop/{payload['job_id']}")
    resp = requeue(env, payload["job_id"])
    assert resp.status_code == 409
    assert resp.json()["status"] == status and isinstance(resp.json()["detail"], str)
    assert requeue(env, payload["job_id"], force=True).status_code == 200
    assert env.status(payload["job_id"]) == "queued"


@pytest.mark.parametrize("status", ["queued", "dispatched", "failed", "stopped", "canceled"])
def test_requeue_without_force_of_jobs_not_at_work(env: Env, status: str) -> None:
    job_id = env.submit()
    if status != "queued":
        env.claim("w1")
    if status in ("failed", "stopped", "canceled"):
        env.report(job_id, "running")
        if status == "stopped":
            env.client.post(f"/stop/{job_id}")
        env.report(job_id, status)
    resp = env.client.post(f"/ops/jobs/{job_id}/requeue")  # no body at all
    assert resp.status_code == 200, resp.text
    assert env.info(job_id)["status"] == "queued"
    assert env.claim("w2") is not None


def test_requeue_of_an_unknown_job_is_404(env: Env) -> None:
    assert requeue(env, "nope", force=True).status_code == 404


def test_handing_back_a_fenced_job_ends_its_attempt(env: Env) -> None:
    first = fenced_job(env, "setup")
    assert env.report_attempt(first, "queued").status_code == 200
    assert env.report_attempt(first, "queued").json() == STALE  # even a same-status refresh: the token died
    assert env.claim_fenced("w2")["attempt_number"] == 2


# -- the store, with the fake clock -------------------------------------------------------------------------


def test_store_fencing(env: Env) -> None:
    job_id = env.submit()
    store, now = env.store, env.clock.now
    claim = store.claim_next("w1", now, fencing=True)
    assert claim is not None and claim.attempt_token is not None
    assert claim.job["attempt_number"] == 1 and "attempt_token_hash" not in claim.job
    good = StatusReport(job_id, "running", "w1", attempt_number=1, attempt_token=claim.attempt_token)
    assert store.report_status(good, now + 1) == "running"
    with pytest.raises(StaleAttempt):
        store.report_status(StatusReport(job_id, "finished", "w1", attempt_number=1, attempt_token="x"), now + 2)
    with pytest.raises(TransitionRejected):
        store.requeue(job_id, now + 3, Requeue())
    assert store.requeue(job_id, now + 4, Requeue(force=True)) == "queued"
    with pytest.raises(StaleAttempt):
        store.report_status(good, now + 5)
    assert store.claim_next("w1", now + 6) is None  # not fencing
    again = store.claim_next("w2", now + 7, fencing=True)
    assert again is not None and again.job["attempt_number"] == 2 and again.attempt_token != claim.attempt_token
    job = store.get_job(job_id)
    assert job is not None and job["history"][-2:] == [
        {"status": "queued", "at": now + 4, "by": "requeue", "force": True, "worker_id": "w1"},
        {"status": "dispatched", "at": now + 7, "worker_id": "w2"},
    ]


# -- over real HTTP -----------------------------------------------------------------------------------------


def test_fenced_attempts_over_http(live_server: Live) -> None:
    with httpx.Client(base_url=live_server.base_url, timeout=10) as client:
        job_id = client.post("/run-simulation", json={"config_path": "demo.yaml"}).json()["job_id"]
        body = {"worker_id": "w1", "capabilities": ["attempt_fencing_v1"]}
        first = client.post("/api/agent/next-job", json=body).json()
        fence = {"attempt_number": first["attempt_number"], "attempt_token": first["attempt_token"]}
        report = {"job_id": job_id, "worker_id": "w1", **fence}
        assert client.post("/api/agent/job-status", json={**report, "status": "setup"}).status_code == 200
        assert client.post(f"/ops/jobs/{job_id}/requeue", json={"force": True}).json()["status"] == "queued"
        stale = client.post("/api/agent/job-status", json={**report, "status": "running"})
        assert (stale.status_code, stale.json()["detail"]["code"]) == (409, "stale_job_attempt")
        second = client.post("/api/agent/next-job", json={**body, "worker_id": "w2"}).json()
        assert (second["job_id"], second["attempt_number"]) == (job_id, 2)
        info = client.get(f"/job-info/{job_id}").json()
        assert (info["attempt_number"], info["attempt_fencing_enabled"], info["worker_id"]) == (2, True, "w2")
        assert second["attempt_token"] not in json.dumps(info)
