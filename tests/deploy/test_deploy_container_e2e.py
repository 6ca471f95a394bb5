"""The worker image, deployed with scripts/setup_worker.sh, runs a job end to end.

The reference backend runs on the host's loopback; the worker container uses
`--network host` (setup_worker.sh --network host) to reach it, and the share is a
local directory (--skip-mount) at the same path inside and outside.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deploy_support import SCRIPTS, free_port, http, run, wait_for_status

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_image_metadata(worker_image: str) -> None:
    config = json.loads(run(["docker", "image", "inspect", "-f", "{{json .Config}}", worker_image]).stdout)
    assert config["Entrypoint"] == ["job-worker-agent"]
    assert "/var/lib/job-worker-agent" in config["Volumes"]
    assert "healthz" in " ".join(config["Healthcheck"]["Test"])
    assert config.get("User", "") in ("", "root", "0")  # root on purpose: see docs/deployment.md
    assert "WORKER_STATE_DIR=/var/lib/job-worker-agent" in config["Env"]


def test_image_has_the_worker_but_no_test_extras(worker_image: str) -> None:
    out = run(["docker", "run", "--rm", worker_image, "--help"]).stdout
    assert "job-worker-agent" in out
    extras = "('fastapi', 'uvicorn', 'pytest', 'hypothesis')"
    probe = f"import importlib.util as u; print([m for m in {extras} if u.find_spec(m)])"
    out = run(["docker", "run", "--rm", "--entrypoint", "python3", worker_image, "-c", probe]).stdout
    assert out.strip() == "[]"


@pytest.fixture
def worker_group() -> Iterator[str]:
    worker_id = f"e2e-{uuid.uuid4().hex[:8]}"
    yield worker_id
    ids = run(["docker", "ps", "-aq", "--filter", f"label=opeva.worker-group={worker_id}"]).stdout.split()
    if ids:
        subprocess.run(["docker", "logs", "--tail", "40", ids[0]])  # shown by pytest on failure
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    subprocess.run(["docker", "volume", "rm", f"job-worker-{worker_id}-state"], capture_output=True)


def containers(worker_id: str) -> list[str]:
    return run(["docker", "ps", "-q", "--no-trunc", "--filter", f"label=opeva.worker-group={worker_id}"]).stdout.split()


def test_setup_worker_runs_a_job_end_to_end(
    worker_image: str, demo_image: str, start_backend: Callable[..., object], worker_group: str
) -> None:
    backend = start_backend("--payload-mode", "legacy")  # the worker's --job-image decides the image
    shared: Path = backend.shared  # type: ignore[attr-defined]
    url: str = backend.url  # type: ignore[attr-defined]
    (shared / "configs" / "e2e.yaml").write_text("experiment: e2e\n")
    metrics_port = free_port()

    setup = [
        "bash", str(SCRIPTS / "setup_worker.sh"),
        "--server", url, "--worker-id", worker_group,
        "--skip-mount", "--mount-point", str(shared),
        "--image", worker_image, "--job-image", demo_image,
        "--network", "host", "--metrics-port", str(metrics_port),
        "--poll-interval", "1", "--status-poll-interval", "2",
        "--env", "ALLOWED_IMAGES=opeva-demo-sim:*", "--env", "IMAGE_PULL_POLICY=never",
    ]  # fmt: skip
    run(setup, timeout=120)
    [first] = containers(worker_group)

    # Re-running replaces the container cleanly.
    run(setup, timeout=120)
    [second] = containers(worker_group)
    assert second != first

    job = http("POST", f"{url}/run-simulation", {"config_path": "configs/e2e.yaml", "target_host": worker_group})
    job_id = job["job_id"]
    status = wait_for_status(url, job_id)
    log = shared / "jobs" / job_id / "logs" / f"{job_id}.log"
    assert status == "finished", f"{status}\n{log.read_text() if log.exists() else 'no job log'}"

    text = log.read_text()
    assert "experiment: e2e" in text and "opeva-demo-sim: done (ok)" in text
    assert http("GET", f"{url}/file-logs/{job_id}") == text
    result = json.loads((shared / "jobs" / job_id / "results" / "result.json").read_text())
    assert result["status"] == "ok"
    assert worker_group in [h.get("worker_id") for h in http("GET", f"{url}/hosts")]

    # METRICS_PORT reached the worker, and the image's HEALTHCHECK command passes inside it.
    assert urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5).status == 200
    test = json.loads(run(["docker", "inspect", "-f", "{{json .Config.Healthcheck.Test}}", second]).stdout)
    assert test[0] == "CMD"
    run(["docker", "exec", second, *test[1:]])

    # `doctor` inside the deployed container finds everything in place.
    doctor = run(["docker", "exec", second, "job-worker-agent", "doctor"], check=False)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    # The state volume is per worker and survives a re-run.
    volumes = run(["docker", "inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", second]).stdout
    assert f"job-worker-{worker_group}-state" in volumes.split()
