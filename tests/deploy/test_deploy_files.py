"""Static checks of the deployment files: Dockerfile, systemd unit, env example, CI workflow."""

from __future__ import annotations

import configparser
import re

from deploy_support import REPO

KNOWN_VARS = {
    "OPEVA_SERVER", "WORKER_ID", "OPEVA_SHARED_DIR", "POLL_INTERVAL", "WORKER_HEARTBEAT_INTERVAL",
    "STATUS_POLL_INTERVAL", "LOG_LEVEL", "WORKER_IMAGE", "STOP_GRACE_PERIOD", "RUNNING_REFRESH_INTERVAL",
    "WORKER_EXIT_AFTER_JOB", "WORKER_STATE_DIR", "IMAGE_PULL_POLICY", "METRICS_PORT", "LOG_FORMAT",
    "OPEVA_TOKEN", "ALLOWED_IMAGES",
}  # fmt: skip


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "deploy/systemd/job-worker-agent.service")
    service = unit["Service"]
    assert service["ExecStart"].split()[0].endswith("/job-worker-agent")
    assert service["EnvironmentFile"] == "/etc/job-worker-agent/worker.env"
    assert service["StateDirectory"] == "job-worker-agent"
    assert "docker" in service["SupplementaryGroups"].split()
    assert "docker.service" in unit["Unit"]["Requires"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_env_example_names_only_known_variables() -> None:
    lines = (REPO / "deploy/systemd/job-worker-agent.env.example").read_text().splitlines()
    names = [re.sub(r"^#\s*", "", line).split("=", 1)[0] for line in lines if re.match(r"^#?\s*[A-Z_]+=", line)]
    assert {"OPEVA_SERVER", "WORKER_ID", "OPEVA_SHARED_DIR"} <= set(names)
    assert set(names) <= KNOWN_VARS


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert 'ENTRYPOINT ["job-worker-agent"]' in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'VOLUME ["/var/lib/job-worker-agent"]' in text
    [install] = [line for line in text.splitlines() if "pip install" in line]
    assert install.rstrip(" ;\\").endswith(' ".[gpu]"')  # the package and NVML only: no test/devserver extras
    ignore = (REPO / ".dockerignore").read_text()
    assert ignore.splitlines()[1] == "*"  # allow-list: nothing but what the image needs


def test_ci_workflow() -> None:
    text = (REPO / ".github/workflows/ci.yml").read_text()
    assert "bash .ci/run" in text
    assert "needs: test" in text
    assert "calof/job_worker_agent" in text and "$IMAGE:$GITHUB_SHA" in text and "$IMAGE:latest" in text
    assert "secrets.DOCKERHUB_USERNAME" in text and "secrets.DOCKERHUB_TOKEN" in text
    assert "\t" not in text
