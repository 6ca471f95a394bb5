"""The Slurm executor's tests: parsers against captured real output (fixtures/, see capture_fixtures.py), the
batch script, and tests marked `slurm` against a live cluster (bash scripts/slurm_cluster.sh): skipped when Slurm
is not installed, failed when it is but the cluster does not answer."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock
from slurm_support import WORKER, cancel_jobs_of, new_executor

from worker_agent.executors.slurm import SlurmExecutor


def _cluster_problem() -> str | None:
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20s"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()} (bash scripts/slurm_cluster.sh starts the cluster)"
    if not any(state.rstrip("*~#") in ("idle", "mix", "alloc") for state in proc.stdout.split()):
        return f"no node of the cluster is up (sinfo: {' '.join(proc.stdout.split())})"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    if shutil.which("sinfo") is None:
        pytest.skip("Slurm is not installed (bash scripts/slurm_cluster.sh installs and starts it)")
    problem = _cluster_problem()
    if problem:
        pytest.fail(problem)


@pytest.fixture(scope="session")
def sshd() -> dict[str, str]:
    """The loopback sshd of scripts/sshd_loopback.sh (started if needed): SSHD_PORT, SSHD_KEY, SSHD_KNOWN_HOSTS."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "sshd_loopback.sh"
    # One start at a time: pytest-xdist workers (and other test runs on this host) share the one sshd.
    with FileLock("/tmp/opeva-sshd.lock"):
        proc = subprocess.run(["bash", str(script), "/tmp/opeva-sshd"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"scripts/sshd_loopback.sh failed: {proc.stderr.strip()}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


@pytest.fixture
def make_executor(tmp_path: Path, slurm_cluster: None) -> Iterator[Callable[..., SlurmExecutor]]:
    """SlurmExecutors for one test, all with its worker id, share and state dir; its jobs are cancelled after."""
    made: list[SlurmExecutor] = []

    def make(**env: str) -> SlurmExecutor:
        executor = new_executor(tmp_path, **env)
        made.append(executor)
        return executor

    yield make
    cancel_jobs_of(WORKER)
    for executor in made:
        executor.close()
