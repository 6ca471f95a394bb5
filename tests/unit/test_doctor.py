"""Doctor's verdicts from what it observed (the real backend/Docker runs are in tests/integration, the real Slurm
runs in tests/slurm/test_slurm_doctor.py)."""

from __future__ import annotations

import dataclasses
import email.utils
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from worker_agent import config
from worker_agent.executors import slurm_settings
from worker_agent.executors.base import ExecutorUnavailable
from worker_agent.executors.slurm_commands import Cluster, Result
from worker_agent.executors.slurm_script import Resources
from worker_agent.executors.slurm_settings import SlurmSettings
from worker_agent.ops import doctor
from worker_agent.ops.doctor import FAIL, OK, SKIP, WARN, Check


def settings(**overrides: Any) -> config.Settings:
    return dataclasses.replace(config.load(environ={"WORKER_ID": "w1"}), server="http://backend:8000", **overrides)


def probe_with(status: int, seen: list[httpx.Request] | None = None, **headers: str) -> doctor._Probe:
    def answer(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, headers=headers, json={"detail": "unknown job"})

    return doctor.probe_backend(settings(token="s3cret"), httpx.MockTransport(answer))


def test_probe_asks_for_an_unknown_job_with_the_token() -> None:
    seen: list[httpx.Request] = []
    probe_with(404, seen)

    (request,) = seen
    assert request.method == "GET" and request.url.path.startswith("/status/doctor-")
    assert request.headers["Authorization"] == "Bearer s3cret"


def test_404_means_reachable_and_token_accepted() -> None:
    check = doctor.check_backend(settings(token="t"), probe_with(404))
    assert (check.result, check.detail) == (OK, "http://backend:8000 answers, token accepted")


@pytest.mark.parametrize("status", [401, 403])
def test_401_or_403_means_bad_token(status: int) -> None:
    check = doctor.check_backend(settings(token="t"), probe_with(status))
    assert check.result == FAIL and f"HTTP {status}" in check.detail
    assert check.fix == "correct OPEVA_TOKEN"
    assert doctor.check_backend(settings(), probe_with(status)).fix == "set OPEVA_TOKEN to the backend's token"


def test_other_answers_are_failures() -> None:
    check = doctor.check_backend(settings(), probe_with(500))
    assert check.result == FAIL and "HTTP 500" in check.detail


def test_unreachable_backend_fails_and_skips_the_clock() -> None:
    error = httpx.ConnectError("refused")
    assert doctor.check_backend(settings(), error).result == FAIL
    assert doctor.check_clock(error).result == SKIP


def _dated(offset: float) -> doctor._Probe:
    now = time.time()
    return doctor._Probe(404, email.utils.formatdate(now + offset, usegmt=True), now, now)


def test_clock_within_a_few_seconds_is_ok() -> None:
    assert doctor.check_clock(_dated(1)).result == OK


@pytest.mark.parametrize(("offset", "side"), [(-60, "ahead of"), (60, "behind")])
def test_clock_skew_is_a_warning_naming_the_direction(offset: float, side: str) -> None:
    check = doctor.check_clock(_dated(offset))
    assert check.result == WARN and side in check.detail and "sync" in check.fix


def test_clock_without_or_with_a_bad_date_header_is_a_warning() -> None:
    assert doctor.check_clock(doctor._Probe(404, None, 0, 0)).result == WARN
    assert doctor.check_clock(doctor._Probe(404, "yesterday", 0, 0)).result == WARN


def test_image_needs_docker() -> None:
    assert doctor.check_image(settings(), None).result == SKIP


def test_gpus_requested_without_nvml_is_a_warning_not_a_failure() -> None:
    assert doctor.check_gpus(settings()).result == SKIP
    assert doctor.check_gpus(settings(enable_gpu="all"), lambda: None).result == WARN
    found = doctor.check_gpus(settings(enable_gpu="0"), lambda: [{"name": "Tesla T4"}])
    assert (found.result, found.detail) == (OK, "1 GPU(s): Tesla T4")


def test_state_dir_under_a_file_is_a_failure(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert doctor.check_state_dir(settings(state_dir=tmp_path / "file" / "state")).result == FAIL
    assert doctor.check_state_dir(settings(state_dir=tmp_path / "a" / "b")).detail.endswith("can be created")
    assert doctor.check_state_dir(settings(state_dir=tmp_path)).detail.endswith("writable")


def test_share_check_uses_the_share_guard(tmp_path: Path) -> None:
    assert doctor.check_share(settings(shared_dir=tmp_path)).result == OK
    missing = doctor.check_share(settings(shared_dir=tmp_path / "gone"))
    assert missing.result == FAIL and "does not exist" in missing.detail and missing.fix


def test_render_gives_a_fix_line_and_a_verdict() -> None:
    text = doctor.render([Check("backend", FAIL, "down", "start it"), Check("clock", SKIP, "needs the backend")])
    assert text.splitlines() == [
        "CHECK    RESULT  DETAIL",
        "backend  FAIL    down",
        "                 fix: start it",
        "clock    SKIP    needs the backend",
        "verdict: NOT READY - fix backend",
    ]
    assert doctor.render([Check("clock", WARN, "skew")]).endswith("verdict: READY (warnings: clock)")


def test_bad_configuration_stops_after_the_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLL_INTERVAL", "soon")
    checks = doctor.run_checks(None)
    assert [(c.name, c.result) for c in checks] == [("configuration", FAIL)]
    assert "POLL_INTERVAL" in checks[0].detail


def test_a_server_without_the_agent_routes_is_broken_with_the_fix() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Not Found"})  # FastAPI's answer for a route it lacks

    check = doctor.check_backend(settings(), doctor.probe_backend(settings(), httpx.MockTransport(answer)))
    assert check.result == FAIL and "no OPEVA agent API" in check.detail and "8011" in check.fix


# --- WORKER_EXECUTOR=slurm: verdicts from canned command results; the directory probes run for real, locally ---

SINFO = "debug* up\nlong up\nold down\nmaint drain\n"  # `sinfo --all -h -o '%P %a'`
NO_ACCOUNTING = (
    "You are not running a supported accounting_storage plugin\nOnly 'accounting_storage/slurmdbd' is supported."
)


class FakeCluster(Cluster):
    """A Cluster whose commands answer from `answers` (keyed by the command's name; for `env ... srun`, srun):
    a Result, or an exception to raise. Cluster.slurm's own outage and error handling runs on top."""

    def __init__(self, answers: dict[str, Result | Exception], settings: SlurmSettings | None = None) -> None:
        super().__init__(settings or SlurmSettings(), Path("/nonexistent"))
        self.answers = answers
        self.calls: list[list[str]] = []

    def run(
        self,
        argv: Sequence[str],
        stdin: bytes | IO[bytes] | None = None,
        stdout: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> Result:
        self.calls.append(list(argv))
        answer = self.answers["srun" if argv[0] == "env" else argv[0]]
        if isinstance(answer, Exception):
            raise answer
        return answer


def ok(text: str = "") -> Result:
    return Result(0, text.encode(), "")


def failed(code: int, stderr: str, text: str = "") -> Result:
    return Result(code, text.encode(), stderr)


def slurm(**overrides: Any) -> SlurmSettings:
    return dataclasses.replace(SlurmSettings(), **overrides)


@pytest.fixture
def no_slurm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for setting in slurm_settings.SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)


def test_bad_slurm_settings_fail_naming_the_variable_and_skip_the_cluster_rows(
    monkeypatch: pytest.MonkeyPatch, no_slurm_env: None
) -> None:
    monkeypatch.setenv("SLURM_SSH_PORT", "0")
    checks = doctor.slurm_checks(settings(executor="slurm"))

    assert [(c.name, c.result) for c in checks] == [
        ("slurm settings", FAIL),
        *[(name, SKIP) for name in doctor.SLURM_ROWS],
    ]
    assert "SLURM_SSH_PORT" in checks[0].detail and checks[0].fix


def test_slurm_settings_load_with_the_workers_share(no_slurm_env: None, tmp_path: Path) -> None:
    check, loaded = doctor.check_slurm_settings(settings(shared_dir=tmp_path))
    assert check.result == OK and loaded is not None and loaded.shared_dir == str(tmp_path)
    assert check.detail == "Slurm commands on this host, runtime apptainer, staging shared"


def test_the_slurm_executor_replaces_the_docker_rows(monkeypatch: pytest.MonkeyPatch, no_slurm_env: None) -> None:
    monkeypatch.setenv("WORKER_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_STAGING", "nowhere")  # stops the Slurm rows before any command runs
    now = time.time()
    monkeypatch.setattr(doctor, "probe_backend", lambda s: doctor._Probe(404, email.utils.formatdate(now), now, now))
    monkeypatch.setattr(doctor, "_available_hosts", lambda s: None)

    names = [check.name for check in doctor.run_checks(None)]

    assert names == [
        "configuration",
        "backend",
        "clock",
        "worker id",
        "slurm settings",
        *doctor.SLURM_ROWS,
        "shared dir",
        "state dir",
    ]


def no_ping() -> str:
    raise AssertionError("Slurm is not asked when the login node cannot be reached")


def test_an_unreachable_login_node_fails_the_slurm_row_with_the_ssh_fix_and_skips_the_rest() -> None:
    down = ExecutorUnavailable("ssh to login.example failed: ssh: connect to host login.example port 2222: refused")
    over_ssh = slurm(ssh_host="login.example", ssh_port=2222)

    checks = doctor.slurm_rows(over_ssh, FakeCluster({"true": down}, over_ssh), ping=no_ping)

    assert [(c.name, c.result) for c in checks] == [("slurm", FAIL), *[(n, SKIP) for n in doctor.SLURM_ROWS[1:]]]
    assert "unreachable over SSH" in checks[0].detail and "refused" in checks[0].detail
    assert "SLURM_SSH_HOST/_PORT/_USER/_KEY/_KNOWN_HOSTS" in checks[0].fix
    assert doctor.check_ssh(slurm(), FakeCluster({})) is None  # locally there is no connection to check


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (ExecutorUnavailable("slurmctld is down: scontrol failed: Slurmctld(primary) at vm is DOWN"), "is slurmctld"),
        (ExecutorUnavailable("sinfo: Unable to contact slurm controller (connect failure)"), "is slurmctld running?"),
        (ExecutorUnavailable("sinfo is not installed on this host: "), "install Slurm's client commands"),
    ],
)
def test_slurm_unreachable_fails_with_the_fix(error: Exception, fix: str) -> None:
    def ping() -> str:
        raise error

    check = doctor.check_slurm(FakeCluster({}), ping)
    assert check.result == FAIL and str(error) in check.detail and fix in check.fix
    assert doctor.check_slurm(FakeCluster({}), lambda: "slurm 23.11.4").detail == (
        "slurm 23.11.4 on this host, slurmctld answers"
    )


def test_without_slurmctld_the_files_are_still_checked(tmp_path: Path) -> None:
    def ping() -> str:
        raise ExecutorUnavailable("slurmctld is down: ...")

    checks = doctor.slurm_rows(*local(shared_dir=str(tmp_path), run_dir=str(tmp_path)), ping)

    assert [(c.name, c.result) for c in checks] == [
        ("slurm", FAIL),
        ("partition", SKIP),
        ("account", SKIP),
        ("runtime", SKIP),
        ("cluster share", OK),
        ("run dir", OK),
    ]


@pytest.mark.parametrize(
    ("wanted", "result", "detail", "fix"),
    [
        ("long", OK, "long is up", ""),
        (None, OK, "debug (the cluster's default) is up", ""),
        ("gpu", FAIL, "the cluster has no partition gpu", "set SLURM_PARTITION to one of: debug, long, old, maint"),
        ("old", FAIL, "old is down", "bring it up"),
        ("maint", FAIL, "maint is drain", "bring it up"),
    ],
)
def test_partition_verdicts(wanted: str | None, result: str, detail: str, fix: str) -> None:
    check, usable = doctor.partition_verdict(wanted, SINFO)
    assert (check.result, check.detail) == (result, detail) and fix in check.fix
    assert usable == ((wanted or "debug") if result == OK else None)


def test_no_partition_set_and_no_default_fails() -> None:
    check, usable = doctor.partition_verdict(None, "long up\n")
    assert check.result == FAIL and usable is None
    assert check.fix == "set SLURM_PARTITION (partitions: long)"


def test_partition_asks_sinfo_for_every_partition_hidden_ones_too() -> None:
    cluster = FakeCluster({"sinfo": ok(SINFO)})
    check, usable = doctor.check_partition(slurm(resources=Resources(partition="long")), cluster)
    assert (check.result, usable) == (OK, "long")
    assert cluster.calls == [["sinfo", "--all", "-h", "-o", "%P %a"]]


def test_account_unset_is_skipped() -> None:
    assert doctor.check_account(slurm(), FakeCluster({})).result == SKIP


@pytest.mark.parametrize(
    ("sacctmgr", "result", "detail"),
    [
        (ok("proj1\n"), OK, "proj1: alice may submit to it"),
        (ok(""), FAIL, "alice has no association with account proj1"),
        (failed(1, NO_ACCOUNTING), WARN, "the cluster keeps no accounting: no way to check SLURM_ACCOUNT=proj1"),
        (failed(1, "sacctmgr: error: Problem talking to the database"), WARN, "could not be checked"),
        (failed(127, "sh: sacctmgr: not found"), WARN, "could not be checked"),
    ],
)
def test_account_verdicts(sacctmgr: Result, result: str, detail: str) -> None:
    cluster = FakeCluster({"id": ok("alice\n"), "sacctmgr": sacctmgr})
    check = doctor.check_account(slurm(resources=Resources(account="proj1")), cluster)
    assert check.result == result and detail in check.detail
    assert cluster.calls[-1] == [
        "sacctmgr",
        "-n",
        "-P",
        "show",
        "associations",
        "where",
        "account=proj1",
        "user=alice",
        "format=account",
    ]


def test_the_runtime_probe_is_one_short_srun_step_that_never_waits_in_the_queue() -> None:
    settings_ = slurm(
        container_runtime="apptainer", modules=("apptainer/1.3",), resources=Resources(account="proj1", cpus=8)
    )
    argv = doctor.runtime_argv(settings_, "debug")

    srun = argv.index("srun")
    assert argv[:srun] == ["env", "-u", "SLURM_CPUS_PER_TASK", "-u", "SLURM_GPUS"]
    options = argv[srun + 1 : argv.index("bash")]
    assert options == [
        "--nodes=1",
        "--ntasks=1",
        "--partition=debug",
        "--time=1",
        f"--immediate={doctor.RUNTIME_WAIT_SECONDS}",
        "--job-name=opeva-doctor",
        "--quiet",
        "--account=proj1",
    ]
    assert argv[-2:] == ["apptainer", "apptainer/1.3"]


@pytest.mark.parametrize(
    ("answer", "result", "detail", "fix"),
    [
        (ok("node7 apptainer version 1.3.4\n"), OK, "apptainer version 1.3.4 on node node7 of debug", ""),
        (
            failed(
                94, "apptainer is not on the PATH of node node7\nsrun: error: node7: task 0: Exited with exit code 94"
            ),
            FAIL,
            "apptainer is not on the PATH of node node7",
            "install apptainer on the compute nodes, add the module that provides it to SLURM_MODULES, or set "
            "SLURM_CONTAINER_RUNTIME to one they have (singularity, podman, docker, none)",
        ),
        (
            failed(93, "Lmod has detected the following error: apptainer/9 is unknown"),
            FAIL,
            "module load apptainer/9 failed on a compute node: Lmod has detected",
            "correct SLURM_MODULES",
        ),
        (
            failed(1, "srun: error: Unable to allocate resources: Requested nodes are busy"),
            WARN,
            "apptainer not checked: no node of debug free within 20s",
            "",
        ),
        (
            failed(1, "srun: error: Unable to allocate resources: Invalid account or account/partition combination"),
            FAIL,
            "apptainer --version on a node of debug failed: srun: error: Unable to allocate resources: Invalid account",
            "check the partition, account",
        ),
    ],
)
def test_runtime_verdicts(answer: Result, result: str, detail: str, fix: str) -> None:
    settings_ = slurm(container_runtime="apptainer", modules=("apptainer/9",))
    check = doctor.check_runtime(settings_, FakeCluster({"srun": answer}), "debug")
    assert check.result == result and detail in check.detail, check
    assert fix in check.fix


def test_runtime_none_or_without_a_partition_is_skipped_and_a_hung_srun_fails() -> None:
    assert doctor.check_runtime(slurm(container_runtime="none"), FakeCluster({}), "debug").result == SKIP
    assert doctor.check_runtime(slurm(), FakeCluster({}), None).result == SKIP
    hung = FakeCluster({"srun": ExecutorUnavailable("env on this host did not answer within 60s")})
    check = doctor.check_runtime(slurm(container_runtime="docker"), hung, "debug")
    assert check.result == FAIL and "srun -p debug --time=1 docker --version" in check.fix


def local(**overrides: Any) -> tuple[SlurmSettings, Cluster]:
    settings_ = slurm(**overrides)
    return settings_, Cluster(settings_, Path("/nonexistent"))


def test_cluster_share_writable_leaves_no_probe_behind(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    check = doctor.check_cluster_share(*local(shared_dir=str(tmp_path)))
    assert (check.result, check.detail) == (OK, f"{tmp_path} visible and writable on this host (SLURM_STAGING=shared)")
    assert list(tmp_path.rglob("*")) == [tmp_path / "jobs"]


def test_a_missing_cluster_share_fails_when_shared_and_is_created_when_copied(tmp_path: Path) -> None:
    missing = str(tmp_path / "not-mounted")
    shared = doctor.check_cluster_share(*local(shared_dir=missing))
    assert shared.result == FAIL and "the share is not visible from the cluster" in shared.detail
    assert "mount the share" in shared.fix and "SLURM_STAGING=copy" in shared.fix

    copied = doctor.check_cluster_share(*local(shared_dir=missing, staging="copy"))
    assert (copied.result, copied.detail) == (OK, f"{missing} is created on this host by the first job's copy")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_cluster_share_fails() -> None:
    check = doctor.check_cluster_share(*local(shared_dir="/proc"))  # not even root creates files there
    assert check.result == FAIL and "/proc on this host is not writable" in check.detail
    assert "SLURM_SHARED_DIR" in check.fix


def test_run_dir_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("")
    assert doctor.check_run_dir(*local(run_dir=str(tmp_path))).detail == f"{tmp_path} writable on this host"
    creatable = doctor.check_run_dir(*local(run_dir=str(tmp_path / "a" / "b")))
    assert (creatable.result, creatable.detail) == (OK, f"{tmp_path}/a/b can be created on this host")
    not_a_dir = doctor.check_run_dir(*local(run_dir=str(tmp_path / "a-file")))
    assert not_a_dir.result == FAIL and "is not a directory" in not_a_dir.detail and "SLURM_RUN_DIR" in not_a_dir.fix
    under_a_file = doctor.check_run_dir(*local(run_dir=str(tmp_path / "a-file" / "runs")))
    assert under_a_file.result == FAIL and "cannot be created" in under_a_file.detail
    assert doctor.check_run_dir(*local(run_dir="/proc/opeva/runs")).result == FAIL
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]

    monkeypatch.setenv("HOME", str(tmp_path))  # the default: $HOME/.opeva-slurm of the cluster's user
    assert doctor.check_run_dir(*local()).detail == f"{tmp_path}/.opeva-slurm can be created on this host"


def test_a_worker_id_outside_the_orchestrators_available_hosts_fails_with_the_fix() -> None:
    check = doctor.check_worker_id(settings(), ["w2", "w3"])
    assert check.result == FAIL and "AVAILABLE_HOSTS" in check.detail and "AVAILABLE_HOSTS" in check.fix
    assert doctor.check_worker_id(settings(), ["w1"]).result == OK
    assert doctor.check_worker_id(settings(), None).result == SKIP  # the reference backend has no such list
