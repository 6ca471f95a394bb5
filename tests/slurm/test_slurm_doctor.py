"""`job-worker-agent doctor` with WORKER_EXECUTOR=slurm, as a process, against the live cluster (bash
scripts/slurm_cluster.sh), the reference backend and, for SSH, the loopback sshd. The verdicts' details are
tested in tests/unit/test_doctor.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Devserver, WorkerProcess
from slurm_support import IMAGE, ssh_env

pytestmark = [pytest.mark.slurm, pytest.mark.docker]
Doctor = Callable[..., tuple[int, dict[str, str], str]]

HEALTHY = {
    "configuration": "OK",
    "backend": "OK",
    "clock": "OK",
    "worker id": "SKIP",  # the reference backend publishes no AVAILABLE_HOSTS
    "slurm settings": "OK",
    "slurm": "OK",
    "partition": "OK",
    "account": "SKIP",  # SLURM_ACCOUNT unset
    "runtime": "OK",
    "cluster share": "OK",
    "run dir": "OK",
    "shared dir": "OK",
    "state dir": "OK",
}
CLUSTER_ROWS = ("partition", "account", "runtime", "cluster share", "run dir")


def doctor_jobs() -> str:
    """The cluster's jobs named like doctor's runtime probe, whatever their state."""
    return subprocess.run(
        ["squeue", "-h", "--name=opeva-doctor", "-o", "%i %T"], capture_output=True, text=True, timeout=30
    ).stdout.strip()


@pytest.fixture
def doctor(
    devserver: Devserver,
    make_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    slurm_cluster: None,
    busybox_image: str,
) -> Doctor:
    """Runs `python -m worker_agent doctor` for a Slurm worker (Docker jobs in partition debug, run directories
    in tmp_path/runs) with more env; returns its exit code, RESULT by row and output."""
    worker = make_worker(
        {
            "WORKER_EXECUTOR": "slurm",
            "WORKER_IMAGE": IMAGE,
            "SLURM_CONTAINER_RUNTIME": "docker",
            "SLURM_PARTITION": "debug",
            "SLURM_RUN_DIR": str(tmp_path / "runs"),
            "SLURM_COMMAND_TIMEOUT": "30",
        }
    )

    def run(**env: str) -> tuple[int, dict[str, str], str]:
        done = subprocess.run(
            [sys.executable, "-m", "worker_agent", "doctor"],
            env={**worker.env, **env},
            capture_output=True,
            text=True,
            timeout=150,
        )
        rows = {}
        for line in done.stdout.splitlines()[1:]:
            name, _, rest = line.partition("  ")
            if name.strip() and not name.startswith("verdict"):
                rows[name.strip()] = rest.split()[0]
        return done.returncode, rows, done.stdout + done.stderr

    return run


def test_a_healthy_local_setup_passes_every_slurm_row_and_changes_nothing(
    doctor: Doctor, devserver: Devserver, tmp_path: Path
) -> None:
    code, rows, out = doctor()

    assert (code, rows) == (0, HEALTHY), out  # no docker, image or gpus row: Slurm runs the jobs
    assert out.rstrip().endswith("verdict: READY"), out
    assert "Docker version" in out and f"{devserver.shared} visible and writable on this host" in out
    # The run directory could be created, and was not; no probe file stayed; the probe job is gone.
    assert f"{tmp_path / 'runs'} can be created on this host" in out
    assert not (tmp_path / "runs").exists()
    assert not [path for path in devserver.shared.rglob(".opeva-doctor-*")]
    assert doctor_jobs() == ""


def test_a_healthy_setup_over_ssh_passes_every_slurm_row(doctor: Doctor, sshd: dict[str, str]) -> None:
    code, rows, out = doctor(**ssh_env(sshd))

    assert (code, rows) == (0, HEALTHY), out
    assert "Slurm commands over SSH on 127.0.0.1" in out and "on 127.0.0.1, slurmctld answers" in out


def test_an_account_the_cluster_cannot_check_is_a_warning(doctor: Doctor) -> None:
    code, rows, out = doctor(SLURM_ACCOUNT="opeva")  # this cluster keeps no accounting

    assert (code, rows) == (0, {**HEALTHY, "account": "WARN"}), out
    assert "no way to check SLURM_ACCOUNT=opeva" in out


def test_a_partition_that_does_not_exist_fails_its_row(doctor: Doctor) -> None:
    code, rows, out = doctor(SLURM_PARTITION="nope")

    assert (code, rows) == (1, {**HEALTHY, "partition": "FAIL", "runtime": "SKIP"}), out
    assert "the cluster has no partition nope" in out
    assert "fix: set SLURM_PARTITION to one of: debug" in out
    assert "verdict: NOT READY - fix partition" in out


def test_a_runtime_missing_on_the_compute_node_fails_with_the_fix(doctor: Doctor) -> None:
    code, rows, out = doctor(SLURM_CONTAINER_RUNTIME="podman")  # not installed on this node

    assert (code, rows) == (1, {**HEALTHY, "runtime": "FAIL"}), out
    assert "podman is not on the PATH of node" in out
    assert "fix: install podman on the compute nodes, add the module that provides it to SLURM_MODULES" in out
    assert doctor_jobs() == ""


def test_ssh_to_a_wrong_port_fails_the_slurm_row_as_unreachable(doctor: Doctor, sshd: dict[str, str]) -> None:
    code, rows, out = doctor(**ssh_env(sshd, SLURM_SSH_PORT="1"))

    assert (code, rows) == (1, {**HEALTHY, "slurm": "FAIL", **dict.fromkeys(CLUSTER_ROWS, "SKIP")}), out
    assert "unreachable over SSH" in out and "port 1" in out
    assert "fix: check SLURM_SSH_HOST/_PORT/_USER/_KEY/_KNOWN_HOSTS" in out


def test_a_cluster_share_that_does_not_exist_fails(doctor: Doctor, tmp_path: Path) -> None:
    code, rows, out = doctor(SLURM_SHARED_DIR=str(tmp_path / "not-mounted"))

    assert (code, rows) == (1, {**HEALTHY, "cluster share": "FAIL"}), out
    assert "the share is not visible from the cluster" in out
    assert "or set SLURM_STAGING=copy" in out
    assert not (tmp_path / "not-mounted").exists()


def test_bad_slurm_settings_fail_naming_the_variable(doctor: Doctor) -> None:
    code, rows, out = doctor(SLURM_CONTAINER_RUNTIME="lxc")

    skipped = dict.fromkeys(("slurm", *CLUSTER_ROWS), "SKIP")
    assert (code, rows) == (1, {**HEALTHY, "slurm settings": "FAIL", **skipped}), out
    assert "invalid SLURM_CONTAINER_RUNTIME='lxc'" in out
