"""Over real HTTP: the claim race, restart persistence, and the console script itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from devserver_support import FakeClock, Live, build_env, wait_for_port
from harness import free_port

from opeva_devserver.cli import build_parser, settings_from_args


@pytest.mark.slow
def test_twenty_pollers_drain_two_hundred_jobs_each_handed_out_once(live_server: Live) -> None:
    with httpx.Client(base_url=live_server.base_url, timeout=30) as client:
        job_ids = []
        for i in range(200):
            body: dict[str, Any] = {"config_path": "configs/demo.yaml", "job_name": f"job-{i}"}
            resp = client.post("/run-simulation", json=body)
            assert resp.status_code == 200
            job_ids.append(resp.json()["job_id"])

    got: dict[str, list[str]] = {f"w{i:02d}": [] for i in range(20)}
    errors: list[str] = []
    barrier = threading.Barrier(20)

    def poll(worker_id: str) -> None:
        with httpx.Client(base_url=live_server.base_url, timeout=60) as client:
            barrier.wait()
            while True:
                resp = client.post("/api/agent/next-job", json={"worker_id": worker_id})
                if resp.status_code == 204:
                    return
                if resp.status_code != 200:
                    errors.append(f"{worker_id}: {resp.status_code} {resp.text}")
                    return
                got[worker_id].append(resp.json()["job_id"])

    threads = [threading.Thread(target=poll, args=(w,)) for w in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    handed = Counter(job_id for ids in got.values() for job_id in ids)
    assert sorted(handed) == sorted(job_ids)
    assert set(handed.values()) == {1}
    assert sum(1 for ids in got.values() if ids) > 1  # the work really was shared
    for worker_id, ids in got.items():
        assert ids == sorted(ids, key=job_ids.index)  # each worker got them oldest first
        for job_id in ids:
            job = live_server.store.get_job(job_id)
            assert job is not None and job["status"] == "dispatched" and job["worker_id"] == worker_id
    assert live_server.store.queue() == []


def test_state_survives_a_restart_in_process(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    clock = FakeClock()
    env = build_env(shared, clock)
    env.client.post("/api/agent/heartbeat", json={"worker_id": "w1", "info": {"v": 1}})
    running = env.submit(target_host="w1", env={"A": "b"})
    env.claim("w1")
    env.report(running, "running", container_id="c1")
    queued = [env.submit(), env.submit(target_host="w2")]
    canceled = env.submit()
    env.client.post(f"/stop/{canceled}")
    before = {job["job_id"]: job for job in env.client.get("/jobs").json()}
    hosts_before = env.client.get("/hosts").json()

    again = build_env(shared, clock)  # a new store and app over the same files
    assert {job["job_id"]: job for job in again.client.get("/jobs").json()} == before
    assert again.client.get("/hosts").json() == hosts_before
    assert [job["job_id"] for job in again.client.get("/queue").json()] == queued
    assert again.report(running, "finished", exit_code=0).status_code == 200
    payload = again.claim("w2")
    assert payload is not None and payload["job_id"] == queued[0]


def _start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    script = Path(sys.executable).parent / "opeva-devserver"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "opeva_devserver"]
    return subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out, err


@pytest.mark.slow
def test_console_script_serves_and_keeps_state_across_restarts(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    port = free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), "--shared-dir", str(shared)]
    args += ["--payload-mode", "legacy"]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("OPEVA_")}
    base = f"http://127.0.0.1:{port}"

    proc = _start_cli(args, child_env)
    try:
        wait_for_port(port)
        with httpx.Client(base_url=base, timeout=10) as client:
            resp = client.post("/run-simulation", json={"config": {"steps": 3}, "config_name": "cli"})
            assert resp.status_code == 200
            first = resp.json()["job_id"]
            second = client.post("/run-simulation", json={"config_path": "configs/cli.yaml"}).json()["job_id"]
            client.post("/api/agent/heartbeat", json={"worker_id": "w1", "info": {}})
            payload = client.post("/api/agent/next-job", json={"worker_id": "w1"}).json()
            assert payload == {"job_id": first, "job_name": "cli", "config_path": "configs/cli.yaml"}
            assert client.post("/api/agent/job-status", json={
                "job_id": first, "status": "running", "worker_id": "w1"
            }).status_code == 200  # fmt: skip
    finally:
        out, err = _stop(proc)
    assert f"opeva-devserver listening on http://127.0.0.1:{port}" in out.splitlines(), (out, err)
    assert (shared / ".opeva-devserver" / "jobs.sqlite3").is_file()
    assert json.loads((shared / ".opeva-share").read_text())["backend"] == "opeva-devserver"

    proc = _start_cli(args, child_env)
    try:
        wait_for_port(port)
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get(f"/status/{first}").json()["status"] == "running"
            assert [job["job_id"] for job in client.get("/queue").json()] == [second]
            assert [host["worker_id"] for host in client.get("/hosts").json()] == ["w1"]
            assert client.get("/openapi.json").status_code == 200
    finally:
        _stop(proc)


def test_cli_defaults_and_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("OPEVA_"):
            monkeypatch.delenv(key)
    settings = settings_from_args(build_parser().parse_args([]))
    assert settings.shared_dir == Path("/opt/opeva_shared_data")
    assert settings.resolved_db_path == Path("/opt/opeva_shared_data/.opeva-devserver/jobs.sqlite3")
    assert (settings.payload_mode, settings.host_ttl, settings.status_ttl) == ("full", 60, 300)
    assert (settings.offline_grace, settings.sweep_interval) == (120, 5)
    assert settings.job_image == "calof/opeva_simulator:latest"
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.log_level) == ("127.0.0.1", 8000, "INFO")

    monkeypatch.setenv("OPEVA_SHARED_DIR", str(tmp_path))
    monkeypatch.setenv("OPEVA_DEVSERVER_HOST_TTL", "7")
    argv = ["--db", str(tmp_path / "x.db"), "--status-ttl", "9"]
    settings = settings_from_args(build_parser().parse_args(argv))
    assert settings.shared_dir == tmp_path
    assert settings.resolved_db_path == tmp_path / "x.db"
    assert (settings.host_ttl, settings.status_ttl) == (7, 9)


@pytest.mark.parametrize(
    "argv",
    [["--port", "70000"], ["--host-ttl", "-1"], ["--payload-mode", "new"], ["--sweep-interval", "nan"]],
)
def test_cli_rejects_bad_options(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


@pytest.mark.slow
def test_console_script_takes_protocol_and_hosts_from_the_environment(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    port = free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), "--shared-dir", str(shared)]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("OPEVA_")}
    base = f"http://127.0.0.1:{port}"

    proc = _start_cli(args, {**child_env, "OPEVA_DEVSERVER_HOSTS": "w1, w2"})
    try:
        wait_for_port(port)
        with httpx.Client(base_url=base, timeout=10) as client:
            refused = client.post("/api/agent/heartbeat", json={"worker_id": "w3", "info": {}})
            assert refused.status_code == 400 and "w3" in refused.json()["detail"]
            assert client.post("/api/agent/heartbeat", json={"worker_id": "w2", "info": {}}).status_code == 200
            assert client.get("/health").json()["protocol"] == "1.0"
            (shared / "configs" / "exp.yaml").write_text("a: 1\n")
            job_id = client.post("/run-simulation", json={"config_path": "exp.yaml"}).json()["job_id"]
    finally:
        _, err = _stop(proc)
    assert "protocol 1.0, hosts w1,w2" in err, err

    proc = _start_cli(args, {**child_env, "OPEVA_DEVSERVER_PROTOCOL": "2026-04"})
    try:
        wait_for_port(port)
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.post("/api/agent/heartbeat", json={"worker_id": "w3", "info": {}}).status_code == 200
            assert "attempt_number" not in client.get(f"/job-info/{job_id}").json()
            assert client.post("/api/agent/next-job", json={"worker_id": "w3"}).json()["job_id"] == job_id
            setup = {"job_id": job_id, "status": "setup", "worker_id": "w3"}
            assert client.post("/api/agent/job-status", json=setup).status_code == 422
    finally:
        _stop(proc)
