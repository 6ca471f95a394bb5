"""The demo job image (scripts/demo-image) and its entrypoint."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from deploy_support import run

pytestmark = pytest.mark.docker


def sim(image: str, data: Path, *args: str, env: dict[str, str] | None = None, check: bool = False):  # type: ignore[no-untyped-def]
    env_args = [x for k, v in {"DEMO_SIM_DELAY": "0.05", **(env or {})}.items() for x in ("-e", f"{k}={v}")]
    return run(["docker", "run", "--rm", "-v", f"{data}:/data", *env_args, image, *args], check=check)


def test_demo_image_is_small_and_has_no_base(demo_image: str) -> None:
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", demo_image]).stdout)
    assert size < 5_000_000


def test_sim_writes_progress_and_result(demo_image: str, tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "c.yaml").write_text("experiment: test\nseed: 7\n")
    proc = sim(
        demo_image,
        tmp_path,
        "--config",
        "/data/configs/c.yaml",
        "--job_id",
        "j1",
        env={"DEMO_SIM_STEPS": "4"},
        check=True,
    )
    assert "experiment: test" in proc.stdout  # prints the config
    assert [line for line in proc.stdout.splitlines() if line.startswith("step ")] == [
        "step 1/4 (25%)",
        "step 2/4 (50%)",
        "step 3/4 (75%)",
        "step 4/4 (100%)",
    ]
    progress = json.loads((tmp_path / "jobs/j1/progress/progress.json").read_text())
    assert progress == {"job_id": "j1", "step": 4, "total_steps": 4, "percent": 100}
    result = json.loads((tmp_path / "jobs/j1/results/result.json").read_text())
    assert result["status"] == "ok" and result["exit_code"] == 0 and result["job_id"] == "j1"


def test_sim_default_is_ten_steps(demo_image: str, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("a: 1\n")
    proc = sim(demo_image, tmp_path, "--config=/data/c.yaml", "--job-id=j2", check=True)
    assert "step 10/10 (100%)" in proc.stdout


def test_sim_failure_exit_code(demo_image: str, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("a: 1\n")
    proc = sim(
        demo_image,
        tmp_path,
        "--config",
        "/data/c.yaml",
        "--job_id",
        "j3",
        env={"DEMO_SIM_STEPS": "1", "DEMO_SIM_EXIT_CODE": "3"},
    )
    assert proc.returncode == 3
    assert json.loads((tmp_path / "jobs/j3/results/result.json").read_text())["status"] == "error"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--job_id", "x"],
        ["--config", "/data/missing.yaml", "--job_id", "x"],
        ["--config", "/data/c.yaml"],
        ["--what"],
    ],
)
def test_sim_rejects_bad_arguments(demo_image: str, tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "c.yaml").write_text("a: 1\n")
    proc = sim(demo_image, tmp_path, *args)
    assert proc.returncode == 2
    assert "opeva-demo-sim:" in proc.stderr


def test_sim_stops_on_sigterm(demo_image: str, tmp_path: Path) -> None:
    """As PID 1 the script must handle TERM itself, or `docker stop` waits for the kill."""
    (tmp_path / "c.yaml").write_text("a: 1\n")
    name = f"opeva-sim-test-{uuid.uuid4().hex[:8]}"
    run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "-v",
            f"{tmp_path}:/data",
            "-e",
            "DEMO_SIM_DELAY=1",
            "-e",
            "DEMO_SIM_STEPS=100",
            demo_image,
            "--config",
            "/data/c.yaml",
            "--job_id",
            "j4",
        ]
    )
    try:
        time.sleep(1.5)
        started = time.monotonic()
        run(["docker", "stop", "-t", "20", name])
        assert time.monotonic() - started < 8
        assert run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name]).stdout.strip() == "143"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
