"""Protocol 1.0 (the default) over the HTTP API: the setup state, unknown statuses, the host list, relative
config paths, GPU routing, the 1.0 payload; and ``--protocol 2026-04`` keeping the older contract."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from devserver_support import Env, MakeEnv, build_env

from opeva_devserver.app import create_app
from opeva_devserver.cli import build_parser, main, settings_from_args
from opeva_devserver.settings import Settings

STATES = [
    "launching",
    "queued",
    "dispatched",
    "setup",
    "running",
    "stop_requested",
    "finished",
    "failed",
    "stopped",
    "canceled",
]
# The rows and columns of the orchestrator's table that involve setup, written out on purpose.
ALLOWED_WITH_SETUP = {
    ("dispatched", "setup"),
    ("setup", "running"),
    ("setup", "failed"),
    ("setup", "canceled"),
    ("setup", "stop_requested"),
    ("setup", "queued"),
}
SETUP_CASES = [("setup", target) for target in STATES] + [(source, "setup") for source in STATES if source != "setup"]
FULL_KEYS = {"job_id", "job_name", "config_path", "image", "command", "container_name", "volumes", "env"}
# Every job column of the 2026-04 contract: --protocol 2026-04 shows exactly these.
COLUMNS_2026_04 = {
    "job_id", "job_name", "config_path", "status", "target_host", "worker_id", "image", "command",
    "container_name", "volumes", "env", "container_id", "exit_code", "error", "details", "history", "created_at",
    "updated_at", "status_updated_at", "dispatched_at", "started_at", "finished_at",
}  # fmt: skip


def _force(env: Env, job_id: str, status: str) -> None:
    with sqlite3.connect(env.store.db_path) as conn:
        conn.execute("UPDATE jobs SET status = ? WHERE job_id = ?", (status, job_id))


def job_in(env: Env, state: str) -> str:
    """A job of worker w1 (unfenced) brought to ``state`` through the API where the API can get it there."""
    job_id = env.submit()
    if state in ("queued", "launching"):
        if state == "launching":
            _force(env, job_id, state)
        return job_id
    assert env.claim("w1") is not None
    if state == "stop_requested":
        assert env.client.post(f"/stop/{job_id}").json()["status"] == "stop_requested"
    elif state != "dispatched":
        assert env.report(job_id, "setup").status_code == 200
        if state not in ("setup", "canceled"):
            assert env.report(job_id, "running").status_code == 200
        if state == "stopped":
            assert env.client.post(f"/stop/{job_id}").status_code == 200
        if state not in ("setup", "running"):
            assert env.report(job_id, state).status_code == 200
    assert env.status(job_id) == state
    return job_id


# -- the setup state ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), SETUP_CASES)
def test_transition_table_rows_with_setup(env: Env, source: str, target: str) -> None:
    job_id = job_in(env, source)
    before = env.info(job_id)
    env.clock.advance(7)
    resp = env.report(job_id, target)
    if source == target or (source, target) in ALLOWED_WITH_SETUP:
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"ok": True, "status": target}
        after = env.info(job_id)
        assert after["status"] == target
        assert after["status_updated_at"] == before["status_updated_at"] + 7
    else:
        assert resp.status_code == 409, resp.text
        assert resp.json()["status"] == source and isinstance(resp.json()["detail"], str)
        assert env.info(job_id) == before


def test_setup_is_recorded_in_the_history_and_running_sets_started_at(env: Env) -> None:
    job_id = job_in(env, "setup")
    env.clock.advance(40)  # pulling the image
    assert env.info(job_id)["started_at"] is None
    assert env.report(job_id, "running").status_code == 200
    info = env.info(job_id)
    assert [h["status"] for h in info["history"]] == ["queued", "dispatched", "setup", "running"]
    assert info["started_at"] == env.clock.now


@pytest.mark.parametrize("worker_answer", ["stopped", "canceled"])
def test_stop_during_setup(env: Env, worker_answer: str) -> None:
    job_id = job_in(env, "setup")
    assert env.client.post(f"/stop/{job_id}").json() == {"job_id": job_id, "status": "stop_requested"}
    assert env.report(job_id, "running").status_code == 409
    assert env.report(job_id, worker_answer).status_code == 200
    assert env.status(job_id) == worker_answer


def test_setup_job_handed_back_goes_to_the_next_worker(env: Env) -> None:
    job_id = job_in(env, "setup")
    assert env.report(job_id, "queued").status_code == 200
    payload = env.claim("w2")
    assert payload is not None and payload["job_id"] == job_id and payload["attempt_number"] == 2
    assert env.info(job_id)["requeue_count"] == 1


# -- unknown statuses ---------------------------------------------------------------------------------------


def test_unknown_status_of_a_known_job_is_400_and_changes_nothing(env: Env) -> None:
    job_id = job_in(env, "running")
    before = env.info(job_id)
    resp = env.report(job_id, "exploded")
    assert resp.status_code == 400
    assert resp.json() == {"detail": "unknown status 'exploded'"}
    assert env.info(job_id) == before


def test_unknown_job_is_404_before_the_status_is_looked_at(env: Env) -> None:
    resp = env.report("nope", "exploded")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "unknown job"}


@pytest.mark.parametrize("status", ["not_found", "unknown", "", "RUNNING"])
def test_statuses_the_devserver_does_not_accept_are_400(env: Env, status: str) -> None:
    # The orchestrator's enum has not_found/unknown as internal utility values; a worker has no use for them.
    job_id = job_in(env, "running")
    assert env.report(job_id, status).status_code == 400
    assert env.status(job_id) == "running"


# -- the host list ------------------------------------------------------------------------------------------


def test_heartbeat_from_a_worker_not_in_the_host_list_is_400(make_env: MakeEnv) -> None:
    env = make_env(hosts=("w1", "w2"))
    resp = env.heartbeat("w3", executor="docker")
    assert resp.status_code == 400
    assert resp.json() == {"detail": "unknown worker_id 'w3': the configured hosts are ['w1', 'w2']"}
    assert env.client.get("/hosts").json() == []
    assert env.heartbeat("w2").json() == {"ok": True}
    assert [h["worker_id"] for h in env.client.get("/hosts").json()] == ["w2"]


def test_host_list_does_not_gate_next_job_or_job_status(make_env: MakeEnv) -> None:
    # The orchestrator checks its host list on heartbeats and job placement only.
    env = make_env(hosts=("w1",))
    job_id = env.submit()
    assert env.claim("w9") is not None
    assert env.report(job_id, "running", worker_id="w9").status_code == 200


def test_target_host_must_be_in_the_host_list(make_env: MakeEnv) -> None:
    env = make_env(hosts=("w1", "w2"))
    resp = env.client.post("/run-simulation", json={"config_path": "configs/demo.yaml", "target_host": "w3"})
    assert resp.status_code == 400
    assert resp.json() == {"detail": "unknown target_host 'w3': the configured hosts are ['w1', 'w2']"}
    assert env.client.get("/jobs").json() == []
    assert env.submit(target_host="w2")


def test_without_a_host_list_every_worker_id_is_accepted(env: Env) -> None:
    assert env.settings.hosts is None
    for worker_id in ("w1", "anything-at-all", "x" * 255):
        assert env.heartbeat(worker_id).status_code == 200
    assert env.submit(target_host="never-seen")


def test_a_host_list_needs_protocol_1_0(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="host list"):
        Settings(shared_dir=tmp_path, protocol="2026-04", hosts=("w1",))


# -- run-simulation config paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("demo.yaml", "configs/demo.yaml"),
        ("configs/demo.yaml", "configs/demo.yaml"),
        ("sub/x.yaml", "configs/sub/x.yaml"),
    ],
)
def test_config_path_relative_to_configs_or_with_the_prefix(env: Env, given: str, stored: str) -> None:
    (env.shared / "configs" / "sub").mkdir()
    (env.shared / "configs" / "sub" / "x.yaml").write_text("a: 1\n")
    resp = env.client.post("/run-simulation", json={"config_path": given})
    assert resp.status_code == 200, resp.text
    assert resp.json()["config_path"] == stored
    payload = env.claim()
    assert payload is not None and payload["config_path"] == stored
    assert payload["command"][1] == f"/data/{stored}"


@pytest.mark.parametrize("given", ["missing.yaml", "../demo.yaml", "./demo.yaml", "/demo.yaml", "configs", "sub/"])
def test_bad_relative_config_paths_are_422(env: Env, given: str) -> None:
    resp = env.client.post("/run-simulation", json={"config_path": given})
    assert resp.status_code == 422, resp.text
    assert env.client.get("/jobs").json() == []


# -- GPU routing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gpu_info",
    [{"gpu_enabled": True}, {"has_gpu": "yes"}, {"cuda_available": 1}, {"gpu": "true"}, {"gpu_required": "on"}],
)
def test_gpu_job_goes_only_to_a_worker_that_advertises_a_gpu(env: Env, gpu_info: dict[str, Any]) -> None:
    env.heartbeat("cpu1", gpu_enabled=False)
    env.heartbeat("gpu1", **gpu_info)
    job_id = env.submit(target_worker_profile="gpu")
    assert env.claim("cpu1") is None
    assert env.claim("silent") is None  # no heartbeat: no GPU known
    payload = env.claim("gpu1")
    assert payload is not None and payload["job_id"] == job_id
    assert payload["target_worker_profile"] == "gpu"


@pytest.mark.parametrize("cpu_info", [{}, {"gpu_enabled": False}, {"gpu_enabled": "no"}, {"gpu": 0}])
def test_cpu_job_skips_workers_that_advertise_a_gpu(env: Env, cpu_info: dict[str, Any]) -> None:
    env.heartbeat("gpu1", gpu_enabled=True)
    env.heartbeat("cpu1", **cpu_info)
    cpu_job = env.submit(target_worker_profile="cpu")
    any_job = env.submit()
    first = env.claim("gpu1")
    assert first is not None and first["job_id"] == any_job  # the older CPU job is passed over, not blocking
    second = env.claim("cpu1")
    assert second is not None and second["job_id"] == cpu_job


def test_profile_and_target_host_together_are_400(env: Env) -> None:
    body = {"config_path": "configs/demo.yaml", "target_host": "w1", "target_worker_profile": "gpu"}
    resp = env.client.post("/run-simulation", json=body)
    assert resp.status_code == 400
    assert "target_worker_profile" in resp.json()["detail"]
    bad = env.client.post("/run-simulation", json={"config_path": "configs/demo.yaml", "target_worker_profile": "tpu"})
    assert bad.status_code == 422


def test_run_simulation_answer_names_the_profile(env: Env) -> None:
    resp = env.client.post("/run-simulation", json={"config_path": "demo.yaml", "target_worker_profile": "cpu"})
    assert resp.json()["target_worker_profile"] == "cpu"
    assert env.info(resp.json()["job_id"])["target_worker_profile"] == "cpu"


# -- the 1.0 payload ----------------------------------------------------------------------------------------


def test_full_payload_adds_the_orchestrator_fields(env: Env) -> None:
    pinned = env.submit(target_host="w1")
    payload = env.claim("w1")
    assert payload is not None and payload["job_id"] == pinned
    assert payload["attempt_number"] == 1
    assert payload["source_config_path"] == payload["config_path"] == "configs/demo.yaml"
    assert payload["preferred_host"] == "w1"
    assert payload["target_worker_profile"] is None
    assert "attempt_token" not in payload and "attempt_protocol" not in payload  # not a fencing worker


def test_legacy_payload_mode_still_carries_the_fence_for_a_fencing_worker(make_env: MakeEnv) -> None:
    env = make_env(payload_mode="legacy")
    job_id = env.submit()
    payload = env.claim_fenced("w1")
    assert set(payload) == {"job_id", "job_name", "config_path", "attempt_number", "attempt_token", "attempt_protocol"}
    assert env.report_attempt(payload, "running").status_code == 200
    assert env.status(job_id) == "running"


def test_health_names_the_protocol(env: Env, make_env: MakeEnv) -> None:
    assert env.client.get("/health").json()["protocol"] == "1.0"
    assert "protocol" not in make_env(protocol="2026-04").client.get("/health").json()


# -- --protocol 2026-04 -------------------------------------------------------------------------------------


def test_2026_04_ignores_capabilities_and_shows_only_the_old_columns(make_env: MakeEnv) -> None:
    env = make_env(protocol="2026-04")
    job_id = env.submit()
    payload = env.claim("w1", capabilities=["attempt_fencing_v1"])
    assert payload is not None and set(payload) == FULL_KEYS
    assert set(env.info(job_id)) == COLUMNS_2026_04
    assert all(set(job) == COLUMNS_2026_04 for job in env.client.get("/jobs").json())
    # tokens mean nothing here: the worker id alone decides, as before
    assert env.report(job_id, "running", attempt_number=9, attempt_token="made-up").status_code == 200
    assert env.report(job_id, "running", worker_id="w2").status_code == 409


def test_2026_04_has_no_setup_no_ops_and_422_for_unknown_statuses(make_env: MakeEnv) -> None:
    env = make_env(protocol="2026-04")
    job_id = env.submit()
    env.claim("w1")
    for status in ("setup", "exploded"):
        resp = env.report(job_id, status)
        assert resp.status_code == 422, resp.text
        assert resp.json()["detail"][0]["loc"] == ["body", "status"]
    assert env.report("nope", "exploded").status_code == 422  # the body is checked before the job
    assert env.client.post(f"/ops/jobs/{job_id}/requeue", json={"force": True}).status_code == 404
    assert env.status(job_id) == "dispatched"
    assert "/ops/jobs/{job_id}/requeue" not in env.client.get("/openapi.json").json()["paths"]


def test_2026_04_config_paths_need_the_prefix_and_profiles_are_unknown(make_env: MakeEnv) -> None:
    env = make_env(protocol="2026-04")
    assert env.client.post("/run-simulation", json={"config_path": "demo.yaml"}).status_code == 422
    body = {"config_path": "configs/demo.yaml", "target_worker_profile": "gpu"}
    assert env.client.post("/run-simulation", json=body).status_code == 422
    resp = env.client.post("/run-simulation", json={"config_path": "configs/demo.yaml"})
    assert set(resp.json()) == {"job_id", "status", "job_name", "config_path", "target_host"}


def test_2026_04_accepts_any_worker_id_on_heartbeat(make_env: MakeEnv) -> None:
    env = make_env(protocol="2026-04")
    assert env.heartbeat("whoever").json() == {"ok": True}


def test_store_and_settings_must_agree_on_the_protocol(make_env: MakeEnv) -> None:
    env = make_env()
    with pytest.raises(ValueError, match="protocol"):
        create_app(env.store, Settings(shared_dir=env.shared, protocol="2026-04"))


def test_database_of_an_older_devserver_gains_the_new_columns(make_env: MakeEnv) -> None:
    old = make_env(protocol="2026-04")
    job_id = old.submit()
    with sqlite3.connect(old.store.db_path) as conn:
        for column in ("attempt_number", "attempt_fencing_enabled", "attempt_token_hash", "requeue_count"):
            conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    again = build_env(old.shared, old.clock)  # protocol 1.0 over the same files
    assert again.info(job_id)["attempt_number"] == 0
    payload = again.claim_fenced("w1")
    assert payload["job_id"] == job_id and payload["attempt_number"] == 1


# -- the command line ---------------------------------------------------------------------------------------


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("OPEVA_"):
            monkeypatch.delenv(key)


def test_cli_protocol_and_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    settings = settings_from_args(build_parser().parse_args([]))
    assert (settings.protocol, settings.hosts) == ("1.0", None)
    settings = settings_from_args(build_parser().parse_args(["--hosts", " w1, w2,,w1 ", "--protocol", "1.0"]))
    assert settings.hosts == ("w1", "w2")
    assert settings_from_args(build_parser().parse_args(["--hosts", ""])).hosts is None
    monkeypatch.setenv("OPEVA_DEVSERVER_HOSTS", "a,b")
    assert settings_from_args(build_parser().parse_args([])).hosts == ("a", "b")
    monkeypatch.delenv("OPEVA_DEVSERVER_HOSTS")
    monkeypatch.setenv("OPEVA_DEVSERVER_PROTOCOL", "2026-04")
    assert settings_from_args(build_parser().parse_args([])).protocol == "2026-04"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--protocol", "2026-04", "--hosts", "w1"], {}),
        (["--protocol", "2026-04"], {"OPEVA_DEVSERVER_HOSTS": "w1"}),
        ([], {"OPEVA_DEVSERVER_PROTOCOL": "2025"}),
        (["--protocol", "2.0"], {}),
    ],
)
def test_cli_rejects_bad_protocol_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]
) -> None:
    _clean_env(monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "protocol" in capsys.readouterr().err


def test_2026_04_over_a_database_of_1_0_ignores_fences_and_profiles(env: Env) -> None:
    fenced = env.submit()
    env.claim_fenced("w1")
    assert env.client.post(f"/ops/jobs/{fenced}/requeue", json={"force": True}).status_code == 200
    gpu = env.submit(target_worker_profile="gpu")
    old = build_env(env.shared, env.clock, protocol="2026-04")
    handed = [old.claim("w2"), old.claim("w2")]
    assert [p["job_id"] for p in handed if p is not None] == [fenced, gpu]
    assert old.report(fenced, "running", worker_id="w2").status_code == 200
