"""Agent API, job control, payload modes, validation and the shared-dir mirror."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from devserver_support import Env, MakeEnv

LEGACY_KEYS = {"job_id", "job_name", "config_path"}
FULL_KEYS = LEGACY_KEYS | {"image", "command", "container_name", "volumes", "env"}
# What protocol 1.0 adds to every full payload (test_devserver_protocol.py checks the values).
V1_KEYS = {"attempt_number", "source_config_path", "preferred_host", "target_worker_profile"}


# -- next-job and payloads ----------------------------------------------------------------------------------


def test_next_job_204_with_empty_body_when_no_work(env: Env) -> None:
    resp = env.client.post("/api/agent/next-job", json={"worker_id": "w1"})
    assert resp.status_code == 204
    assert resp.content == b""


@pytest.mark.parametrize(("protocol", "keys"), [("1.0", FULL_KEYS | V1_KEYS), ("2026-04", FULL_KEYS)])
def test_full_payload_defaults(make_env: MakeEnv, protocol: str, keys: set[str]) -> None:
    env = make_env(protocol=protocol)
    job_id = env.submit(job_name="my-run")
    payload = env.claim("w1")
    assert payload is not None
    assert set(payload) == keys
    assert payload["job_id"] == job_id
    assert payload["job_name"] == "my-run"
    assert payload["config_path"] == "configs/demo.yaml"
    assert payload["image"] == "calof/opeva_simulator:latest"
    assert payload["command"] == ["--config", "/data/configs/demo.yaml", "--job_id", job_id]
    assert payload["container_name"] == f"opeva-job-{job_id}"
    assert len(payload["container_name"]) <= 63
    assert payload["volumes"] == [{"host": str(env.shared.resolve()), "container": "/data", "mode": "rw"}]
    assert payload["env"] == {}


def test_full_payload_uses_the_jobs_own_fields(make_env: MakeEnv) -> None:
    env = make_env(job_image="example/default:1")
    body: dict[str, Any] = {
        "image": "example/sim:2",
        "command": "python run.py",
        "container_name": "my_box",
        "env": {"A": "1"},
        "volumes": [{"host": "/srv/data", "container": "/in", "mode": "ro"}],
    }
    env.submit(**body)
    env.submit(command=["a", "b"])
    first, second = env.claim(), env.claim()
    assert first is not None and second is not None
    assert {k: first[k] for k in body} == body
    assert second["command"] == ["a", "b"]
    assert second["image"] == "example/default:1"


def test_legacy_payload_has_exactly_three_keys(make_env: MakeEnv) -> None:
    env = make_env(payload_mode="legacy")
    job_id = env.submit(image="example/sim:2", command=["x"])
    payload = env.claim()
    assert payload == {"job_id": job_id, "job_name": "demo", "config_path": "configs/demo.yaml"}


def test_jobs_are_handed_out_oldest_first_and_queue_shows_that_order(env: Env) -> None:
    ids = [env.submit() for _ in range(5)]
    assert [job["job_id"] for job in env.client.get("/queue").json()] == ids
    assert [job["job_id"] for job in env.client.get("/jobs").json()] == ids[::-1]
    got = [env.claim(f"w{i}") for i in range(5)]
    assert [p["job_id"] for p in got if p is not None] == ids
    assert env.client.get("/queue").json() == []


def test_claim_records_worker_and_timestamps(env: Env) -> None:
    job_id = env.submit()
    env.clock.advance(3)
    env.claim("w9")
    info = env.client.get(f"/job-info/{job_id}").json()
    assert info["status"] == "dispatched"
    assert info["worker_id"] == "w9"
    assert info["dispatched_at"] == env.clock.now
    assert info["created_at"] == env.clock.now - 3


def test_next_job_does_not_mark_a_host_as_seen(env: Env) -> None:
    env.claim("w1")
    assert env.client.get("/hosts").json() == []


# -- pinned jobs --------------------------------------------------------------------------------------------


def test_pinned_job_only_goes_to_its_host(env: Env) -> None:
    pinned = env.submit(target_host="w2")
    free = env.submit()
    first = env.claim("w1")
    assert first is not None and first["job_id"] == free
    assert env.claim("w1") is None
    assert env.claim("w3") is None
    second = env.claim("w2")
    assert second is not None and second["job_id"] == pinned


def test_pinned_job_goes_first_to_its_host_when_oldest(env: Env) -> None:
    pinned = env.submit(target_host="w2")
    env.submit()
    got = env.claim("w2")
    assert got is not None and got["job_id"] == pinned


# -- job-status details -------------------------------------------------------------------------------------


def test_job_status_404_for_unknown_job(env: Env) -> None:
    resp = env.report("nope", "running")
    assert resp.status_code == 404
    assert env.client.get("/status/nope").status_code == 404
    assert env.client.get("/job-info/nope").status_code == 404
    assert env.client.post("/stop/nope").status_code == 404


def test_job_status_stores_what_the_worker_reports(env: Env) -> None:
    job_id = env.submit()
    env.claim("w1")
    resp = env.report(job_id, "running", container_id="abc123", container_name="opeva-job-x", details={"pid": 7})
    assert resp.status_code == 200
    env.clock.advance(5)
    assert env.report(job_id, "failed", exit_code=3, error="boom").status_code == 200
    info = env.client.get(f"/job-info/{job_id}").json()
    assert info["container_id"] == "abc123"
    assert info["container_name"] == "opeva-job-x"
    assert info["details"] == {"pid": 7}
    assert info["exit_code"] == 3
    assert info["error"] == "boom"
    assert info["finished_at"] == env.clock.now
    assert [h["status"] for h in info["history"]] == ["queued", "dispatched", "running", "failed"]
    status = env.client.get(f"/status/{job_id}").json()
    assert set(status) == {
        "job_id", "status", "worker_id", "exit_code", "error", "updated_at", "status_updated_at", "attempt_number"
    }  # fmt: skip
    assert status["attempt_number"] == 1
    assert status["status"] == "failed" and status["exit_code"] == 3 and status["worker_id"] == "w1"


def test_same_status_refresh_moves_status_updated_at(env: Env) -> None:
    job_id = env.submit()
    env.claim("w1")
    env.report(job_id, "running")
    first = env.client.get(f"/status/{job_id}").json()["status_updated_at"]
    env.clock.advance(100)
    assert env.report(job_id, "running").status_code == 200
    assert env.client.get(f"/status/{job_id}").json()["status_updated_at"] == first + 100


def test_report_from_another_worker_is_409(env: Env) -> None:
    job_id = env.submit()
    env.claim("w1")
    resp = env.report(job_id, "running", worker_id="w2")
    assert resp.status_code == 409
    assert resp.json()["status"] == "dispatched"
    assert env.status(job_id) == "dispatched"


# -- stop / cancel ------------------------------------------------------------------------------------------


def test_stop_queued_job_cancels_it_and_it_is_never_handed_out(env: Env) -> None:
    job_id = env.submit()
    resp = env.client.post(f"/stop/{job_id}")
    assert resp.status_code == 200
    assert resp.json() == {"job_id": job_id, "status": "canceled"}
    assert env.claim() is None
    assert env.client.post(f"/stop/{job_id}").status_code == 409


@pytest.mark.parametrize("worker_answer", ["stopped", "canceled"])
def test_stop_dispatched_job(env: Env, worker_answer: str) -> None:
    job_id = env.submit()
    env.claim("w1")
    assert env.client.post(f"/stop/{job_id}").json() == {"job_id": job_id, "status": "stop_requested"}
    assert env.client.get(f"/status/{job_id}").json()["status"] == "stop_requested"
    assert env.report(job_id, "running").status_code == 409
    assert env.report(job_id, worker_answer).status_code == 200
    assert env.status(job_id) == worker_answer


def test_stop_running_job_flow(env: Env) -> None:
    job_id = env.submit()
    env.claim("w1")
    env.report(job_id, "running")
    assert env.client.post(f"/stop/{job_id}").json()["status"] == "stop_requested"
    again = env.client.post(f"/stop/{job_id}")
    assert again.status_code == 200 and again.json()["status"] == "stop_requested"
    finished = env.report(job_id, "finished", exit_code=0)
    assert finished.status_code == 409 and finished.json()["status"] == "stop_requested"
    assert env.report(job_id, "stop_requested").status_code == 200
    assert env.report(job_id, "stopped", exit_code=0).status_code == 200
    assert env.status(job_id) == "stopped"
    resp = env.client.post(f"/stop/{job_id}")
    assert resp.status_code == 409 and resp.json()["status"] == "stopped"


@pytest.mark.parametrize("terminal", ["finished", "failed"])
def test_stop_terminal_job_is_409(env: Env, terminal: str) -> None:
    job_id = env.submit()
    env.claim("w1")
    env.report(job_id, "running")
    env.report(job_id, terminal)
    resp = env.client.post(f"/stop/{job_id}")
    assert resp.status_code == 409
    assert resp.json()["status"] == terminal


# -- hosts --------------------------------------------------------------------------------------------------


def test_heartbeat_and_hosts_online_offline(env: Env) -> None:
    resp = env.client.post("/api/agent/heartbeat", json={"worker_id": "w1", "info": {"executor": "docker"}})
    assert resp.status_code == 200 and resp.json() == {"ok": True}
    env.clock.advance(30)
    env.client.post("/api/agent/heartbeat", json={"worker_id": "w2"})
    hosts = {h["worker_id"]: h for h in env.client.get("/hosts").json()}
    assert hosts["w1"]["info"] == {"executor": "docker"} and hosts["w1"]["online"] is True
    assert hosts["w2"]["info"] == {} and hosts["w2"]["last_seen"] == env.clock.now
    env.clock.advance(30)
    assert all(h["online"] for h in env.client.get("/hosts").json())
    env.clock.advance(0.5)
    hosts = {h["worker_id"]: h for h in env.client.get("/hosts").json()}
    assert hosts["w1"]["online"] is False and hosts["w2"]["online"] is True
    env.client.post("/api/agent/heartbeat", json={"worker_id": "w1", "info": {"active_job_id": "x"}})
    hosts = {h["worker_id"]: h for h in env.client.get("/hosts").json()}
    assert hosts["w1"]["online"] is True and hosts["w1"]["info"] == {"active_job_id": "x"}


# -- run-simulation -----------------------------------------------------------------------------------------


def test_inline_config_is_saved_under_configs(env: Env) -> None:
    config = {"simulation": {"steps": 10}, "name": "x"}
    resp = env.client.post("/run-simulation", json={"config": config, "config_name": "exp1"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "queued" and body["config_path"] == "configs/exp1.yaml"
    assert json.loads((env.shared / "configs" / "exp1.yaml").read_text()) == config
    assert len(body["job_id"]) == 32 and int(body["job_id"], 16) >= 0


def test_inline_config_without_name_is_named_after_the_job(env: Env) -> None:
    resp = env.client.post("/run-simulation", json={"config": {"a": 1}})
    job_id = resp.json()["job_id"]
    assert resp.json()["config_path"] == f"configs/{job_id}.yaml"
    assert (env.shared / "configs" / f"{job_id}.yaml").is_file()


def test_config_path_in_a_subfolder(env: Env) -> None:
    (env.shared / "configs" / "sub").mkdir()
    (env.shared / "configs" / "sub" / "x.yaml").write_text("a: 1\n")
    assert env.client.post("/run-simulation", json={"config_path": "configs/sub/x.yaml"}).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"config_path": "configs/demo.yaml", "config": {"a": 1}},
        {"config_path": "/etc/passwd"},
        {"config_path": "configs/../configs/demo.yaml"},
        {"config_path": "../demo.yaml"},
        {"config_path": "datasets/demo.yaml"},
        {"config_path": "configs/"},
        {"config_path": "configs/missing.yaml"},
        {"config_path": "configs"},
        {"config_path": 5},
        {"config": "not an object"},
        {"config": {"a": 1}, "config_name": "../evil"},
        {"config": {"a": 1}, "config_name": ".hidden"},
        {"config_path": "configs/demo.yaml", "config_name": "x"},
        {"config_path": "configs/demo.yaml", "env": {"BAD-KEY": "1"}},
        {"config_path": "configs/demo.yaml", "env": {"A": 1}},
        {"config_path": "configs/demo.yaml", "container_name": "x" * 64},
        {"config_path": "configs/demo.yaml", "container_name": "-bad"},
        {"config_path": "configs/demo.yaml", "volumes": [{"host": "rel", "container": "/data"}]},
        {"config_path": "configs/demo.yaml", "volumes": [{"host": "/a", "container": "/b", "mode": "rwx"}]},
        {"config_path": "configs/demo.yaml", "command": []},
        {"config_path": "configs/demo.yaml", "command": [1, 2]},
        {"config_path": "configs/demo.yaml", "target_host": ""},
        {"config_path": "configs/demo.yaml", "unknown_field": 1},
    ],
)
def test_run_simulation_rejects_bad_bodies_with_422(env: Env, body: dict[str, Any]) -> None:
    resp = env.client.post("/run-simulation", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"]
    assert env.client.get("/jobs").json() == []


def test_config_path_symlink_out_of_configs_is_rejected(env: Env, tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text("a: 1\n")
    (env.shared / "configs" / "link.yaml").symlink_to(outside)
    resp = env.client.post("/run-simulation", json={"config_path": "configs/link.yaml"})
    assert resp.status_code == 422
    assert "outside" in resp.text


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/agent/next-job", {}),
        ("/api/agent/next-job", {"worker_id": ""}),
        ("/api/agent/next-job", {"worker_id": 5}),
        ("/api/agent/next-job", [1]),
        ("/api/agent/heartbeat", {"info": {}}),
        ("/api/agent/heartbeat", {"worker_id": "w1", "info": [1]}),
        ("/api/agent/job-status", {"job_id": "x", "status": "running"}),
        ("/api/agent/job-status", {"job_id": "x", "status": "failed", "worker_id": "w1", "exit_code": "1"}),
        ("/api/agent/job-status", {"job_id": "x", "status": "failed", "worker_id": "w1", "exit_code": 1.5}),
        ("/api/agent/job-status", {"job_id": "x", "status": "failed", "worker_id": "w1", "details": [1]}),
        ("/api/agent/job-status", None),
    ],
)
def test_agent_bad_bodies_get_422(env: Env, url: str, body: Any) -> None:
    resp = env.client.post(url, json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"]


@pytest.mark.parametrize("url", ["/api/agent/next-job", "/api/agent/heartbeat", "/api/agent/job-status"])
def test_malformed_json_gets_422(env: Env, url: str) -> None:
    resp = env.client.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422


def test_agent_bodies_ignore_unknown_fields(env: Env) -> None:
    env.submit()
    assert env.client.post("/api/agent/next-job", json={"worker_id": "w1", "new": 1}).status_code == 200
    resp = env.client.post("/api/agent/heartbeat", json={"worker_id": "w1", "info": {}, "extra": True})
    assert resp.status_code == 200


def test_openapi_schema_lists_the_api(env: Env) -> None:
    schema = env.client.get("/openapi.json").json()
    for path in (
        "/api/agent/next-job",
        "/api/agent/job-status",
        "/api/agent/heartbeat",
        "/status/{job_id}",
        "/run-simulation",
        "/jobs",
        "/job-info/{job_id}",
        "/stop/{job_id}",
        "/hosts",
        "/file-logs/{job_id}",
        "/queue",
    ):
        assert path in schema["paths"], path


def test_jobs_filter_and_limit(env: Env) -> None:
    a, b, c = env.submit(), env.submit(), env.submit()
    env.client.post(f"/stop/{b}")
    assert [j["job_id"] for j in env.client.get("/jobs", params={"status": "queued"}).json()] == [c, a]
    assert [j["job_id"] for j in env.client.get("/jobs", params={"limit": 1}).json()] == [c]
    assert env.client.get("/jobs", params={"status": "nonsense"}).status_code == 422
    assert env.client.get("/jobs", params={"limit": 0}).status_code == 422


# -- shared-dir layout and mirror ---------------------------------------------------------------------------


def test_startup_creates_layout_and_marker(env: Env) -> None:
    assert (env.shared / "configs").is_dir() and (env.shared / "jobs").is_dir()
    marker = json.loads((env.shared / ".opeva-share").read_text())
    assert marker["backend"] == "opeva-devserver" and isinstance(marker["created_at"], float)


def test_marker_is_not_overwritten(make_env: MakeEnv, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / ".opeva-share").write_text('{"backend": "opeva", "created_at": 1}')
    make_env()
    assert json.loads((shared / ".opeva-share").read_text()) == {"backend": "opeva", "created_at": 1}


def test_status_and_job_info_are_mirrored_on_every_change(env: Env) -> None:
    job_id = env.submit()
    job_dir = env.shared / "jobs" / job_id

    def mirrored() -> tuple[dict[str, Any], dict[str, Any]]:
        return (
            json.loads((job_dir / "status.json").read_text()),
            json.loads((job_dir / "job_info.json").read_text()),
        )

    status, info = mirrored()
    assert status["job_id"] == job_id and status["status"] == "queued" and "updated_at" in status
    assert info == env.client.get(f"/job-info/{job_id}").json()
    env.claim("w1")
    assert mirrored()[0]["status"] == "dispatched"
    # the worker may add container info to job_info.json: later rewrites keep it
    info = mirrored()[1]
    info["container"] = {"id": "abc"}
    (job_dir / "job_info.json").write_text(json.dumps(info))
    env.report(job_id, "running", container_id="abc")
    status, info = mirrored()
    assert status["status"] == "running" and status["container_id"] == "abc"
    assert info["container"] == {"id": "abc"} and info["status"] == "running"
    env.report(job_id, "finished", exit_code=0)
    status, info = mirrored()
    assert status["status"] == "finished" and status["exit_code"] == 0 and info["status"] == "finished"
    assert not list(job_dir.glob("*.tmp")) and not list(job_dir.glob(".*.tmp"))


def test_mirror_does_not_write_through_symlinks(env: Env, tmp_path: Path) -> None:
    job_id = env.submit()
    job_dir = env.shared / "jobs" / job_id
    victim = tmp_path / "victim.json"
    victim.write_text("keep")
    (job_dir / "status.json").unlink()
    (job_dir / "status.json").symlink_to(victim)
    env.claim("w1")
    assert victim.read_text() == "keep"
    assert not (job_dir / "status.json").is_symlink()
    assert json.loads((job_dir / "status.json").read_text())["status"] == "dispatched"


def test_mirror_skips_a_job_dir_that_is_a_symlink(env: Env, tmp_path: Path) -> None:
    job_id = env.submit()
    job_dir = env.shared / "jobs" / job_id
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for child in job_dir.iterdir():
        child.unlink()
    job_dir.rmdir()
    job_dir.symlink_to(elsewhere)
    assert env.claim("w1") is not None  # still works: the database is the truth
    assert list(elsewhere.iterdir()) == []
    assert env.status(job_id) == "dispatched"


# -- file-logs ----------------------------------------------------------------------------------------------


def test_file_logs(env: Env, tmp_path: Path) -> None:
    job_id = env.submit()
    assert env.client.get(f"/file-logs/{job_id}").status_code == 404
    assert env.client.get("/file-logs/unknown").status_code == 404
    logs = env.shared / "jobs" / job_id / "logs"
    logs.mkdir()
    (logs / f"{job_id}.log").write_bytes("line 1\nline \xe9 2\n".encode() + b"\xff\n")
    resp = env.client.get(f"/file-logs/{job_id}")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.text.startswith("line 1\nline \xe9 2\n")


def test_file_logs_does_not_follow_symlinks_out_of_the_job_folder(env: Env, tmp_path: Path) -> None:
    job_id = env.submit()
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    logs = env.shared / "jobs" / job_id / "logs"
    logs.mkdir()
    (logs / f"{job_id}.log").symlink_to(secret)
    resp = env.client.get(f"/file-logs/{job_id}")
    assert resp.status_code == 404
    assert "secret" not in resp.text
