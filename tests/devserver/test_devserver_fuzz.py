"""Whatever a client sends, the server answers with a deliberate status code, never a 500."""

from __future__ import annotations

import json
from typing import Any

from devserver_support import FakeClock, build_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "queued",
            "setup",
            "running",
            "finished",
            "configs/demo.yaml",
            "demo.yaml",
            "w1",
            "",
            "../x",
            "attempt_fencing_v1",
        ]
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "worker_id", "job_id", "status", "exit_code", "error", "details", "info", "container_id",
        "container_name", "config_path", "config", "config_name", "target_host", "image", "command", "env",
        "volumes", "job_name", "capabilities", "attempt_number", "attempt_token", "worker_version", "error_code",
        "target_worker_profile", "force", "preferred_host", "require_host",
    ]
)  # fmt: skip
BODIES = st.dictionaries(KEYS, JSON, max_size=6) | JSON
URLS = st.sampled_from(
    ["/api/agent/next-job", "/api/agent/job-status", "/api/agent/heartbeat", "/run-simulation", "/ops/jobs/JOB/requeue"]
)
ALLOWED = {200, 204, 400, 404, 409, 422}  # 400: protocol 1.0's unknown status


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(URLS, BODIES), min_size=1, max_size=6))
def test_random_bodies_never_cause_a_500(tmp_path_factory: Any, steps: list[tuple[str, Any]]) -> None:
    env = build_env(tmp_path_factory.mktemp("fuzz"), FakeClock())
    job_id = env.submit()
    for url, body in steps:
        if isinstance(body, dict) and body.get("job_id") == "":
            body["job_id"] = job_id
        raw = json.dumps(body, allow_nan=True).encode()
        url = url.replace("JOB", job_id)
        resp = env.client.post(url, content=raw, headers={"content-type": "application/json"})
        assert resp.status_code in ALLOWED, (url, body, resp.status_code, resp.text)
        if resp.status_code == 422:
            assert resp.json()["detail"]
    for url in ("/jobs", "/queue", "/hosts", f"/job-info/{job_id}", f"/status/{job_id}"):
        assert env.client.get(url).status_code == 200


_FAILED = b'{"job_id": "JOB", "status": "failed", "worker_id": "w1", '
BAD_RAW_BODIES = [
    ("/api/agent/heartbeat", b'{"worker_id": "w\\ud800"}'),
    ("/api/agent/heartbeat", b'{"worker_id": "w1", "info": {"a": NaN}}'),
    ("/api/agent/heartbeat", b'{"worker_id": "w1", "info": {"a": [Infinity]}}'),
    ("/api/agent/job-status", b'{"job_id": "JOB", "status": "running", "worker_id": "w1", "error": "\\udc00"}'),
    ("/api/agent/job-status", b'{"job_id": "JOB", "status": "running", "worker_id": "w1", "details": {"x": NaN}}'),
    ("/api/agent/job-status", b'{"job_id": "\\ud800", "status": "running", "worker_id": "w1"}'),
    ("/api/agent/job-status", b'{"job_id": "JOB", "status": "failed", "worker_id": "w1", "exit_code": 1e400}'),
    ("/api/agent/job-status", _FAILED + b'"exit_code": 1' + b"0" * 30 + b"}"),
    ("/run-simulation", b'{"config": {"a": "\\ud800"}}'),
    ("/run-simulation", b'{"config": {"a": NaN}}'),
    ("/run-simulation", b'{"config_path": "configs/\\ud800.yaml"}'),
    ("/run-simulation", b'{"config_path": "configs/demo.yaml", "image": "\\ud800"}'),
    ("/api/agent/next-job", b'{"worker_id": "w\\u0000"}'),
]  # fmt: skip


def test_non_json_values_and_bad_unicode_get_422_and_change_nothing(tmp_path: Any) -> None:
    env = build_env(tmp_path, FakeClock())
    job_id = env.submit()
    env.claim("w1")
    before = env.client.get("/jobs").json()
    for url, raw in BAD_RAW_BODIES:
        resp = env.client.post(
            url, content=raw.replace(b"JOB", job_id.encode()), headers={"content-type": "application/json"}
        )
        assert resp.status_code == 422, (url, raw, resp.text)
        assert resp.json()["detail"]
    assert env.client.get("/jobs").json() == before
    assert env.client.get("/hosts").json() == []
