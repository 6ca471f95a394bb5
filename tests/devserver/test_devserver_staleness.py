"""Staleness rules, driven through ``Store.sweep`` with a fake clock (no sleeps, except one sweeper check)."""

from __future__ import annotations

import time

from devserver_support import Env, MakeEnv
from fastapi.testclient import TestClient

from opeva_devserver.app import create_app


def heartbeat(env: Env, worker_id: str = "w1") -> None:
    assert env.client.post("/api/agent/heartbeat", json={"worker_id": worker_id}).status_code == 200


def running_job(env: Env, worker_id: str = "w1") -> str:
    job_id = env.submit()
    payload = env.claim(worker_id)
    assert payload is not None and payload["job_id"] == job_id
    assert env.report(job_id, "running", worker_id=worker_id).status_code == 200
    return job_id


def info(env: Env, job_id: str) -> dict[str, object]:
    value: dict[str, object] = env.client.get(f"/job-info/{job_id}").json()
    return value


def test_running_job_without_refresh_fails_after_status_ttl(env: Env) -> None:
    job_id = running_job(env)
    for _ in range(10):  # host stays online the whole time
        env.clock.advance(30)
        heartbeat(env)
    assert env.store.sweep(env.clock.now) == []  # exactly 300 s: not yet
    assert env.status(job_id) == "running"
    env.clock.advance(1)
    heartbeat(env)
    changes = env.store.sweep(env.clock.now)
    assert [(c.job_id, c.new_status, c.reason) for c in changes] == [(job_id, "failed", "stale_status")]
    assert info(env, job_id)["error"] == "stale_status"
    assert info(env, job_id)["status"] == "failed"
    # the worker's late refresh is refused and tells it the job is gone
    resp = env.report(job_id, "running")
    assert resp.status_code == 409 and resp.json()["status"] == "failed"


def test_refreshes_keep_a_running_job_alive(env: Env) -> None:
    job_id = running_job(env)
    for _ in range(20):
        env.clock.advance(200)
        heartbeat(env)
        env.report(job_id, "running")
        assert env.store.sweep(env.clock.now) == []
    assert env.status(job_id) == "running"


def test_stop_requested_job_without_refresh_fails_after_status_ttl(env: Env) -> None:
    job_id = running_job(env)
    env.client.post(f"/stop/{job_id}")
    env.clock.advance(301)
    heartbeat(env)
    env.store.sweep(env.clock.now)
    assert info(env, job_id)["status"] == "failed"
    assert info(env, job_id)["error"] == "stale_status"


def test_dispatched_job_of_an_online_host_is_left_alone_in_2026_04(make_env: MakeEnv) -> None:
    # Protocol 1.0 requeues it instead (test_devserver_keepalive.py).
    env = make_env(protocol="2026-04")
    job_id = env.submit()
    env.claim("w1")
    for _ in range(30):
        env.clock.advance(50)
        heartbeat(env)
        env.store.sweep(env.clock.now)
    assert env.status(job_id) == "dispatched"


def test_offline_host_jobs_after_ttl_plus_grace(env: Env) -> None:
    heartbeat(env, "w1")
    heartbeat(env, "w2")
    running = running_job(env, "w1")
    stopping = running_job(env, "w1")
    env.client.post(f"/stop/{stopping}")
    dispatched = env.submit()
    assert env.claim("w1") is not None
    other = running_job(env, "w2")

    # w1 goes silent; w2 keeps heartbeating and refreshing its job
    def tick(seconds: float) -> None:
        env.clock.advance(seconds)
        heartbeat(env, "w2")
        env.report(other, "running", worker_id="w2")

    tick(61)
    hosts = {h["worker_id"]: h["online"] for h in env.client.get("/hosts").json()}
    assert hosts == {"w1": False, "w2": True}
    assert env.store.sweep(env.clock.now) == []  # offline, but still within the grace period
    tick(119)  # 180 s of silence exactly: still within
    env.report(running, "running")  # refreshing the status does not make the host look alive
    assert env.store.sweep(env.clock.now) == []
    tick(1)
    changes = {c.job_id: (c.old_status, c.new_status, c.reason) for c in env.store.sweep(env.clock.now)}
    assert changes == {
        running: ("running", "failed", "host_offline"),
        stopping: ("stop_requested", "failed", "host_offline"),
        dispatched: ("dispatched", "queued", "host_offline"),
    }
    assert info(env, running)["error"] == "host_offline"
    assert info(env, stopping)["error"] == "host_offline"
    requeued = info(env, dispatched)
    assert requeued["status"] == "queued" and requeued["worker_id"] is None
    assert env.status(other) == "running"
    # the requeued job goes to the next worker that asks
    payload = env.claim("w2")
    assert payload is not None and payload["job_id"] == dispatched
    # the old worker, back from the dead, is told the job moved on
    resp = env.report(dispatched, "running", worker_id="w1")
    assert resp.status_code == 409
    assert env.store.sweep(env.clock.now) == []


def test_worker_that_never_heartbeats_is_judged_by_its_jobs_last_change(env: Env) -> None:
    job_id = env.submit()
    env.claim("ghost")
    env.clock.advance(180)
    assert env.store.sweep(env.clock.now) == []
    env.clock.advance(1)
    assert [c.new_status for c in env.store.sweep(env.clock.now)] == ["queued"]
    assert env.status(job_id) == "queued"


def test_terminal_and_queued_jobs_are_never_touched(env: Env) -> None:
    heartbeat(env)
    done = running_job(env)
    env.report(done, "finished", exit_code=0)
    queued = env.submit()
    env.clock.advance(10_000)
    assert env.store.sweep(env.clock.now) == []
    assert env.status(done) == "finished"
    assert env.status(queued) == "queued"


def test_ttls_are_configurable(make_env: MakeEnv) -> None:
    env = make_env(host_ttl=5, status_ttl=20, offline_grace=2)
    heartbeat(env, "w1")
    job_id = running_job(env, "w1")
    env.clock.advance(5.5)
    assert {h["worker_id"]: h["online"] for h in env.client.get("/hosts").json()} == {"w1": False}
    env.clock.advance(1)  # 6.5 s: offline, but within the grace
    assert env.store.sweep(env.clock.now) == []
    env.clock.advance(1)  # 7.5 s > 5 + 2 s
    assert [(c.job_id, c.reason) for c in env.store.sweep(env.clock.now)] == [(job_id, "host_offline")]

    env2 = make_env(status_ttl=20)
    heartbeat(env2, "w9")
    job2 = running_job(env2, "w9")
    env2.clock.advance(21)
    heartbeat(env2, "w9")
    assert [(c.job_id, c.reason) for c in env2.store.sweep(env2.clock.now)] == [(job2, "stale_status")]


def test_downtime_of_the_server_is_not_held_against_workers(env: Env) -> None:
    heartbeat(env)
    job_id = running_job(env)
    env.clock.advance(3600)  # the server was down for an hour
    started = env.clock.now
    env.clock.advance(100)
    assert env.store.sweep(env.clock.now, since=started) == []
    env.clock.advance(200)  # 300 s after restart, no heartbeat, no refresh
    changes = env.store.sweep(env.clock.now, since=started)
    assert [(c.job_id, c.reason) for c in changes] == [(job_id, "host_offline")]


def test_background_sweeper_runs_with_the_app(env: Env) -> None:
    job_id = running_job(env)
    app = create_app(
        env.store,
        env.settings.__class__(shared_dir=env.shared, sweep_interval=0.05),
        clock=env.clock,
    )
    with TestClient(app) as client:  # the lifespan starts the sweeper; it takes its start time now
        env.clock.advance(10_000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if client.get(f"/status/{job_id}").json()["status"] == "failed":
                break
            time.sleep(0.05)
        assert client.get(f"/job-info/{job_id}").json()["error"] == "host_offline"
