"""slurm_commands without a cluster: error classes, the SSH command line, and the shell scripts run over SSH
(run here with sh, as the login node would)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from worker_agent.executors import slurm_commands
from worker_agent.executors.base import ExecutorError, ExecutorUnavailable
from worker_agent.executors.slurm_commands import Cluster, control_dir
from worker_agent.executors.slurm_settings import SlurmSettings


def local(**fields: object) -> Cluster:
    return Cluster(SlurmSettings(**fields), Path("/tmp"))  # type: ignore[arg-type]


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_an_unreachable_controller_is_an_outage() -> None:
    script = 'echo "squeue: error: Unable to contact slurm controller (connect failure)" >&2; exit 1'
    with pytest.raises(ExecutorUnavailable, match="Unable to contact slurm controller"):
        local().slurm(sh(script))


def test_a_refusal_is_an_error_with_slurms_message() -> None:
    script = 'echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2; exit 1'
    with pytest.raises(ExecutorError, match="Invalid partition name specified") as caught:
        local().slurm(sh(script))
    assert not isinstance(caught.value, ExecutorUnavailable)


def test_an_accepted_message_returns_the_output() -> None:
    script = 'echo out; echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1'
    assert local().slurm(sh(script), accept=["Invalid job id specified"]) == "out\n"


def test_missing_commands_and_timeouts_are_outages() -> None:
    with pytest.raises(ExecutorUnavailable, match="not installed"):
        local().slurm(["no-such-slurm-command"])
    with pytest.raises(ExecutorUnavailable, match="not installed"):
        local().slurm(sh("exec no-such-slurm-command"))  # exit 127, as over ssh
    with pytest.raises(ExecutorUnavailable, match=r"did not answer within 0\.2s"):
        local(command_timeout=0.2).slurm(["sleep", "5"])


def test_ssh_command_line() -> None:
    settings = SlurmSettings(
        ssh_host="login", ssh_user="me", ssh_port=2200, ssh_key="/k", ssh_known_hosts="/kh", command_timeout=60
    )
    argv = Cluster(settings, Path("/state/slurm")).ssh_argv("squeue --me", 60)
    assert argv[:3] == ["ssh", "-p", "2200"] and argv[-3:] == ["--", "login", "squeue --me"]
    options = {argv[i + 1] for i, word in enumerate(argv) if word == "-o"}
    assert {
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/kh",
        "ControlMaster=auto",
        "ControlPath=/state/slurm/s-%C",
        "ControlPersist=300",
        "ConnectTimeout=30",
        "IdentitiesOnly=yes",
    } <= options
    assert argv[argv.index("-i") + 1] == "/k" and argv[argv.index("-l") + 1] == "me"


def test_control_dir_falls_back_to_a_private_tmp_dir(tmp_path: Path) -> None:
    short = Path("/tmp") / "opeva-cd-test"
    assert control_dir(short) == short
    short.rmdir()
    fallback = control_dir(tmp_path / ("x" * 60))
    assert fallback.parent == Path("/tmp") and fallback.stat().st_mode & 0o777 == 0o700


def run_script(script: str, *args: str, stdin: bytes = b"") -> bytes:
    proc = subprocess.run(["sh", "-c", script, "sh", *args], input=stdin, capture_output=True, check=True)
    return proc.stdout


def test_the_read_script_frames_both_files(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    out.write_bytes(b"line 1\nline 2\n\x00binary\xff")
    answer = run_script(slurm_commands._READ_SCRIPT, "8", str(out), "7", str(err), "0")
    assert slurm_commands._split_chunks(answer, 2) == [b"line 2\n\x00", b""]
    answer = run_script(slurm_commands._READ_SCRIPT, "1000", str(out), "14", str(out), "99")
    assert slurm_commands._split_chunks(answer, 2) == [b"\x00binary\xff", b""]
    with pytest.raises(ExecutorError, match="unexpected answer"):
        slurm_commands._split_chunks(b"5\nabc", 1)


def test_local_reads_match_the_script(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"0123456789")
    assert local().read_from([(str(path), 3), (str(tmp_path / "missing"), 0)], 4) == [b"3456", b""]


def test_write_script_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "job.env"
    run_script(slurm_commands._WRITE_SCRIPT, str(target), "600", stdin=b"export A='b'\n")
    assert target.read_bytes() == b"export A='b'\n" and target.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "job.env.tmp").exists()
    local().write_file(str(tmp_path / "job.sbatch"), b"#!/bin/bash\n", 0o700)
    assert (tmp_path / "job.sbatch").stat().st_mode & 0o777 == 0o700


def test_trees_copy_in_and_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker, cluster = tmp_path / "worker", tmp_path / "cluster"
    (worker / "jobs/j/logs").mkdir(parents=True)
    (worker / "jobs/j/in.txt").write_text("in")
    (worker / "jobs/j/logs/j.log").write_text("log")
    (worker / "configs").mkdir()
    (worker / "configs/c.yaml").write_text("c")
    local().send_tree(worker, ["jobs/j", "configs/c.yaml"], str(cluster), skip=lambda name: name == "jobs/j/logs")
    assert sorted(str(p.relative_to(cluster)) for p in cluster.rglob("*")) == [
        "configs",
        "configs/c.yaml",
        "jobs",
        "jobs/j",
        "jobs/j/in.txt",
    ]

    (cluster / "jobs/j/results").mkdir()
    (cluster / "jobs/j/results/r.txt").write_text("r")
    (cluster / "jobs/j/other.txt").write_text("not asked for")
    local().fetch_tree(str(cluster), ["jobs/j/results", "jobs/j/progress"], worker)
    assert (worker / "jobs/j/results/r.txt").read_text() == "r"
    assert not (worker / "jobs/j/other.txt").exists()
    local().fetch_tree(str(cluster), ["jobs/j/none-of-these"], worker)  # nothing there: nothing to do

    monkeypatch.setattr(slurm_commands, "COPY_RETRY_DELAY", 0.01)
    with pytest.raises(ExecutorError, match=r"failed 3 times.*is not a directory"):
        local().fetch_tree(str(tmp_path / "no-such-dir"), ["jobs/j/results"], worker)
