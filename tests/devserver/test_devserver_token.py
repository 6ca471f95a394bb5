"""--token: the agent API wants the bearer token; job control for people stays open."""

from __future__ import annotations

from devserver_support import Env, MakeEnv


def test_agent_api_requires_the_bearer_token(make_env: MakeEnv) -> None:
    env = make_env(token="s3cret")
    job_id = env.submit()  # job control is not behind the token

    assert env.client.post("/api/agent/next-job", json={"worker_id": "w1"}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (
        env.client.post("/api/agent/heartbeat", json={"worker_id": "w1", "info": {}}, headers=wrong).status_code == 401
    )
    assert env.client.get(f"/status/{job_id}").status_code == 401

    right = {"Authorization": "Bearer s3cret"}
    answer = env.client.post("/api/agent/next-job", json={"worker_id": "w1"}, headers=right)
    assert answer.status_code == 200 and answer.json()["job_id"] == job_id
    assert env.client.get(f"/status/{job_id}", headers=right).json()["status"] == "dispatched"


def test_without_a_token_nothing_is_checked(env: Env) -> None:
    assert env.client.post("/api/agent/next-job", json={"worker_id": "w1"}).status_code == 204
