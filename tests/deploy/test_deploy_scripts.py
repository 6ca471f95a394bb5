"""Static checks of the shell scripts and setup_worker.sh --dry-run."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from deploy_support import REPO, SCRIPTS, run

SHELL_SCRIPTS = sorted([REPO / ".ci" / "run", *SCRIPTS.glob("*.sh"), *SCRIPTS.glob("demo-image/*.sh")])


def test_there_are_scripts() -> None:
    names = {p.name for p in SHELL_SCRIPTS}
    assert {"run", "bootstrap.sh", "test.sh", "demo.sh", "setup_worker.sh", "build_image.sh"} <= names


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck(script) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck not installed (scripts/bootstrap.sh installs it)")
    proc = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_strict_mode(script) -> None:  # type: ignore[no-untyped-def]
    text = script.read_text()
    assert "set -euo pipefail" in text or "set -eu" in text  # the job image's sh has no pipefail


BASE = ["--server", "http://backend:8000", "--worker-id", "worker-a"]
NFS = ["--nfs-server", "10.0.0.5", "--nfs-export", "/srv/opeva"]


def dry_run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["bash", str(SCRIPTS / "setup_worker.sh"), "--dry-run", *args], check=check)


def docker_runs(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("+ docker run ")]


def test_dry_run_defaults() -> None:
    out = dry_run(*BASE, *NFS).stdout
    assert "+ mount -t nfs 10.0.0.5:/srv/opeva /opt/opeva_shared_data" in out
    assert "fstab" not in out
    [line] = docker_runs(out)
    for part in [
        "-d --restart unless-stopped --name job-worker-worker-a",
        "-e OPEVA_SERVER=http://backend:8000",
        "-e WORKER_ID=worker-a",
        "-e OPEVA_SHARED_DIR=/opt/opeva_shared_data",
        "-e METRICS_PORT=9464",
        "-v /var/run/docker.sock:/var/run/docker.sock",
        "-v /opt/opeva_shared_data:/opt/opeva_shared_data",
        "-v job-worker-worker-a-state:/var/lib/job-worker-agent",
    ]:
        assert part in line, part
    assert line.endswith(" calof/job_worker_agent:latest")
    assert "--network" not in line and "--user" not in line and "WORKER_IMAGE" not in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--mount-point", "/mnt/share"], "-v /mnt/share:/mnt/share"),
        (["--mount-point", "/mnt/share"], "-e OPEVA_SHARED_DIR=/mnt/share"),
        (["--image", "reg.example/worker:1.2"], " reg.example/worker:1.2"),
        (["--job-image", "sim:2"], "-e WORKER_IMAGE=sim:2"),
        (["--poll-interval", "7"], "-e POLL_INTERVAL=7"),
        (["--heartbeat-interval", "11"], "-e WORKER_HEARTBEAT_INTERVAL=11"),
        (["--status-poll-interval", "13"], "-e STATUS_POLL_INTERVAL=13"),
        (["--log-level", "DEBUG"], "-e LOG_LEVEL=DEBUG"),
        (["--metrics-port", "0"], "-e METRICS_PORT=0"),
        (["--network", "host"], "--network host"),
        (["--env", "OPEVA_TOKEN"], "-e OPEVA_TOKEN "),
        (["--env", "ALLOWED_IMAGES=sim:*"], "-e ALLOWED_IMAGES=sim:\\*"),
        (["--user", "1000:1000"], "--user 1000:1000 --group-add "),
    ],
)
def test_dry_run_flag(flags: list[str], expected: str) -> None:
    [line] = docker_runs(dry_run(*BASE, *NFS, *flags).stdout)
    assert expected in line


def test_dry_run_replicas() -> None:
    lines = docker_runs(dry_run(*BASE, *NFS, "--replicas", "3", "--metrics-port", "9500").stdout)
    assert len(lines) == 3
    for i, line in enumerate(lines, start=1):
        assert f"--name job-worker-worker-a-{i} " in line
        assert f"-e WORKER_ID=worker-a-{i} " in line
        assert f"-e METRICS_PORT={9499 + i} " in line
        assert f"-v job-worker-worker-a-{i}-state:/var/lib/job-worker-agent" in line
        assert "--label opeva.worker-group=worker-a" in line


def test_dry_run_fstab() -> None:
    out = dry_run(*BASE, *NFS, "--fstab").stdout
    assert "10.0.0.5:/srv/opeva /opt/opeva_shared_data nfs defaults,_netdev 0 0" in out
    assert ">> /etc/fstab" in out


def test_dry_run_skip_mount_and_mount_cmd() -> None:
    out = dry_run(*BASE, "--skip-mount").stdout
    assert not [line for line in out.splitlines() if line.startswith(("+ mount", "+ env"))]
    assert "+ mkdir -p /opt/opeva_shared_data" in out
    out = dry_run(*BASE, "--mount-cmd", "mount --bind /x $MOUNT_POINT").stdout
    assert "sh -c mount\\ --bind\\ /x\\ \\$MOUNT_POINT" in out
    assert "mount -t nfs" not in out


def test_dry_run_removes_old_containers() -> None:
    out = dry_run(*BASE, "--skip-mount").stdout
    assert "docker rm -f" in out
    assert out.index("docker rm -f") < out.index("docker run")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--server URL is required"),
        (["--server", "backend:8000", "--worker-id", "a"], "must start with http://"),
        (["--server", "http://b", "--worker-id", "a b"], "--worker-id"),
        (["--server", "http://b", "--worker-id", "-a"], "--worker-id"),
        (["--server", "http://b"], "--worker-id ID is required"),
        ([*BASE], "--nfs-server and --nfs-export are required"),
        ([*BASE, *NFS, "--replicas", "0"], "--replicas"),
        ([*BASE, *NFS, "--poll-interval", "fast"], "whole seconds"),
        ([*BASE, *NFS, "--mount-point", "rel/dir"], "absolute path"),
        ([*BASE, "--skip-mount", "--fstab"], "--fstab needs"),
        ([*BASE, "--bogus"], "unknown argument"),
        ([*BASE, "--image"], "--image needs a value"),
    ],
)
def test_bad_input_is_refused(args: list[str], message: str) -> None:
    proc = dry_run(*args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "docker run" not in proc.stdout


def test_help() -> None:
    out = run(["bash", str(SCRIPTS / "setup_worker.sh"), "--help"]).stdout
    for flag in ["--server", "--nfs-export", "--replicas", "--dry-run", "--skip-mount", "--fstab"]:
        assert flag in out


def test_bootstrap_is_idempotent() -> None:
    """The venv and daemon exist by now (test.sh ran bootstrap): a second run changes nothing."""
    proc = run(["bash", str(SCRIPTS / "bootstrap.sh")], timeout=300)
    assert "installing" not in proc.stdout
    assert "pip install" not in proc.stdout
    assert proc.stdout.strip().endswith("bootstrap: ready")


def test_ci_entry_point_runs_the_test_script() -> None:
    text = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in text
    assert 'if [ "$rc" = 5 ]' in (SCRIPTS / "test.sh").read_text()
