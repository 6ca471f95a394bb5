"""slurm_script: Slurm time/memory notation, deucalion_options against allow-lists and caps, and the rendered
batch script, which runs here under bash (outside Slurm: #SBATCH lines are comments to bash). Apptainer is
not packaged for Debian: its tests put a stand-in `apptainer` executable first in PATH that records how it
was called, to check the script's conversion-once-under-a-lock logic."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from worker_agent.executors.slurm_script import (
    SETUP_FAILED_EXIT,
    BatchJob,
    BatchTemplate,
    Bind,
    ResourceLimits,
    Resources,
    Runtime,
    default_template,
    format_time,
    job_comment,
    parse_job_comment,
    parse_memory,
    parse_sbatch_output,
    parse_time,
    render_batch_script,
    render_env_file,
    resolve_resources,
    run_files,
    sbatch_command,
)

# --- time and memory ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("90", 90),
        ("0:30", 1),  # seconds round up to a minute, as Slurm does
        ("1:30", 2),
        ("01:30:00", 90),
        ("36:00:00", 2160),
        ("1-0", 1440),
        ("1-02:03", 1563),
        ("1-02:03:04", 1564),
        (" 15 ", 15),
        (45, 45),
    ],
)
def test_parse_time(text: str | int, minutes: int) -> None:
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["0", "0:00", "", "abc", "1:60", "1-24", "1-00:60", "UNLIMITED", "-5", "1.5", 0])
def test_parse_time_refuses(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def test_parse_time_refuses_bool() -> None:
    with pytest.raises(ValueError):
        parse_time(True)


@pytest.mark.parametrize(
    ("minutes", "text"), [(1, "00:01:00"), (90, "01:30:00"), (2880, "2-00:00:00"), (1563, "1-02:03:00")]
)
def test_format_time(minutes: int, text: str) -> None:
    assert format_time(minutes) == text
    assert parse_time(text) == minutes


@pytest.mark.parametrize(
    ("text", "megabytes"),
    [("4G", 4096), ("512M", 512), ("512m", 512), ("1024", 1024), (2048, 2048), ("1536K", 2), ("1T", 1048576)],
)
def test_parse_memory(text: str | int, megabytes: int) -> None:
    assert parse_memory(text) == megabytes


@pytest.mark.parametrize("text", ["0", "0G", "4GB", "1.5G", "", "-1", -1, "G"])
def test_parse_memory_refuses(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_memory(text)


# --- deucalion_options ----------------------------------------------------------------------------------------

DEFAULTS = Resources(partition="debug", account="proj1", time_minutes=60, cpus=1, mem_mb=2048, gpus=None)
LIMITS = ResourceLimits(
    partitions=frozenset({"long"}),
    accounts=frozenset({"proj2"}),
    max_time_minutes=2 * 1440,
    max_cpus=16,
    max_mem_mb=64 * 1024,
    max_gpus=2,
)


def test_resources_defaults_without_options() -> None:
    assert resolve_resources(DEFAULTS, None, LIMITS) == DEFAULTS
    assert resolve_resources(DEFAULTS, {}, LIMITS) == DEFAULTS
    assert resolve_resources(DEFAULTS, {"time": None}, LIMITS) == DEFAULTS  # null = not given


def test_resources_overrides_within_limits() -> None:
    options = {"partition": "long", "account": "proj2", "time": "1-12:00:00", "cpus": "8", "mem": "32G", "gpus": 2}
    assert resolve_resources(DEFAULTS, options, LIMITS) == Resources("long", "proj2", 2160, 8, 32768, 2)
    # The defaults are always allowed, even when not in the allow-lists.
    assert resolve_resources(DEFAULTS, {"partition": "debug", "gpus": 0}, LIMITS).gpus == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nodes": 2}, "deucalion_options.nodes: unknown option (allowed: partition, account, time, cpus, mem, gpus)"),
        ({"partition": "gpu"}, "deucalion_options.partition: 'gpu' is not allowed (allowed: debug, long)"),
        ({"partition": "debug\n#SBATCH --x"}, "deucalion_options.partition: "),
        ({"partition": 3}, "deucalion_options.partition: 3 is not a valid partition name"),
        ({"account": "other"}, "deucalion_options.account: 'other' is not allowed (allowed: proj1, proj2)"),
        ({"time": "3-00:00:00"}, "deucalion_options.time: '3-00:00:00' is above the maximum of 2-00:00:00"),
        ({"time": "0"}, "deucalion_options.time: "),
        ({"time": "soon"}, "deucalion_options.time: 'soon' is not a Slurm time"),
        ({"cpus": 17}, "deucalion_options.cpus: 17 is above the maximum of 16"),
        ({"cpus": 0}, "deucalion_options.cpus: 0 is below the minimum of 1"),
        ({"cpus": True}, "deucalion_options.cpus: True is not a whole number"),
        ({"cpus": 1.5}, "deucalion_options.cpus: 1.5 is neither a number nor a string"),
        ({"mem": "65G"}, "deucalion_options.mem: '65G' is above the maximum of 64G"),
        ({"mem": "0"}, "deucalion_options.mem: "),
        ({"gpus": 3}, "deucalion_options.gpus: 3 is above the maximum of 2"),
        ({"gpus": -1}, "deucalion_options.gpus: -1 is below the minimum of 0"),
    ],
)
def test_resources_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        resolve_resources(DEFAULTS, options, LIMITS)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_resources_options_must_be_an_object() -> None:
    with pytest.raises(ValueError, match=r"^deucalion_options: expected an object, got list$"):
        resolve_resources(DEFAULTS, ["time"], LIMITS)


def test_resources_without_caps_or_lists() -> None:
    open_limits = ResourceLimits()
    assert resolve_resources(Resources(), {"cpus": 512, "time": "30-00:00:00"}, open_limits).cpus == 512
    with pytest.raises(ValueError, match="allowed: none"):
        resolve_resources(Resources(), {"partition": "debug"}, open_limits)


# --- rendering ------------------------------------------------------------------------------------------------

PLACEHOLDERS = {
    "job_name", "comment", "run_dir", "stdout_path", "stderr_path", "sbatch_options", "job_id", "runtime", "image",
    "share", "data_dir", "binds", "sif_dir", "sif_lock_wait", "stop_grace", "env_file", "env_names", "modules",
    "gpus", "runtime_args", "command",
}  # fmt: skip
TRICKY_ENV = {
    "PLAIN": "value",
    "SPACES": "a b  c",
    "QUOTES": 'it\'s "quoted"',
    "SHELL": "$HOME `id` $(id) ;|&<>",
    "NEWLINE": "line1\nline2",
    "UNICODE": "ação ✓",
    "EMPTY": "",
}


def make_job(tmp_path: Path, runtime: Runtime | str = "none", **changes: object) -> BatchJob:
    run_dir = tmp_path / "run"
    share = tmp_path / "share"
    run_dir.mkdir(exist_ok=True)
    share.mkdir(exist_ok=True)
    fields: dict[str, object] = {
        "job_id": "job-1",
        "worker_id": "worker.a",
        "image": "registry.example/org/sim:1.0",
        "command": ("sh", "-c", 'printf "%s|" "$@"; echo', "arg0", "two words", "it's", "$NOT_EXPANDED"),
        "env": {"SECRET_TOKEN": "s3cr3t-value"},
        "share_path": str(share),
        "run_dir": str(run_dir),
        "runtime": runtime,
        "sif_dir": str(tmp_path / "sif"),
    }
    fields.update(changes)
    return BatchJob(**fields)  # type: ignore[arg-type]


def write_job(job: BatchJob) -> Path:
    files = run_files(job.run_dir)
    Path(files.script).write_text(render_batch_script(job, default_template()))
    Path(files.env_file).write_text(render_env_file(job.env))
    os.chmod(files.env_file, 0o600)
    return Path(files.script)


def run_script(
    script: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=environment, timeout=timeout)


def test_template_placeholders() -> None:
    assert set(BatchTemplate(default_template()).get_identifiers()) == PLACEHOLDERS


def test_template_ignores_the_scripts_own_variables() -> None:
    text = "a ${name} $NAME ${NAME} $1 $$ ${ARR[@]} ${x%y} ${#ARR[@]} $lower"
    assert BatchTemplate(text).substitute(name="N") == "a N $NAME ${NAME} $1 $$ ${ARR[@]} ${x%y} ${#ARR[@]} $lower"
    with pytest.raises(KeyError):
        BatchTemplate("${missing}").substitute({})


def test_rendered_sbatch_lines(tmp_path: Path) -> None:
    resources = Resources(partition="long", account="proj2", time_minutes=90, cpus=4, mem_mb=8192, gpus=1)
    job = make_job(tmp_path, "docker", resources=resources, sbatch_options=("--qos=normal", "--exclusive"))
    script = render_batch_script(job, default_template())
    sbatch = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    files = run_files(job.run_dir)
    assert sbatch == [
        "#SBATCH --job-name=opeva-job-1",
        "#SBATCH --comment=opeva:worker.a:job-1",
        f"#SBATCH --chdir={job.run_dir}",
        f"#SBATCH --output={files.stdout}",
        f"#SBATCH --error={files.stderr}",
        "#SBATCH --open-mode=append",
        "#SBATCH --no-requeue",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --partition=long",
        "#SBATCH --account=proj2",
        "#SBATCH --time=01:30:00",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8192M",
        "#SBATCH --gpus=1",
        "#SBATCH --qos=normal",
        "#SBATCH --exclusive",
    ]
    # sbatch reads #SBATCH lines only up to the first command.
    first_command = next(i for i, line in enumerate(script.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(script.splitlines()) if line.startswith("#SBATCH"))


def test_secrets_stay_out_of_the_script(tmp_path: Path) -> None:
    job = make_job(tmp_path, env=TRICKY_ENV | {"SECRET_TOKEN": "s3cr3t-value"})
    script = render_batch_script(job, default_template())
    assert "s3cr3t-value" not in script
    assert "SECRET_TOKEN" in script  # the name only
    assert "s3cr3t-value" in render_env_file(job.env)


@pytest.mark.parametrize("runtime", ["none", "docker", "podman", "apptainer", "singularity"])
def test_rendered_script_passes_shellcheck(tmp_path: Path, runtime: Runtime) -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck not installed (scripts/bootstrap.sh installs it)")
    job = make_job(
        tmp_path,
        runtime,
        modules=("gcc/12", "apptainer"),
        binds=(Bind("/scratch", "/scratch", read_only=True),),
        runtime_args=("--network=none",),
        resources=Resources(gpus=1),
    )
    script = write_job(job)
    # SC2016: the job's command holds a literal $NOT_EXPANDED in single quotes, on purpose.
    proc = subprocess.run(["shellcheck", "-e", "SC2016", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_env_file_round_trips_through_bash(tmp_path: Path) -> None:
    env_file = tmp_path / "job.env"
    env_file.write_text(render_env_file(TRICKY_ENV))
    for name, value in TRICKY_ENV.items():
        proc = subprocess.run(
            ["bash", "-c", f'. "$1"; printf %s "${name}"', "bash", str(env_file)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == value, name


def test_runtime_none_runs_the_command_with_its_environment(tmp_path: Path) -> None:
    job = make_job(
        tmp_path,
        command=("sh", "-c", 'printf "%s|" "$@"; printf "%s" "$SHELL_VAR"; exit 7', "arg0", "two words", "it's", "$X"),
        env={"SHELL_VAR": TRICKY_ENV["SHELL"]},
    )
    proc = run_script(write_job(job))
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "two words|it's|$X|" + TRICKY_ENV["SHELL"]
    assert "opeva: job job-1" in proc.stderr and "runtime none" in proc.stderr


def test_runtime_none_without_environment(tmp_path: Path) -> None:
    job = make_job(tmp_path, env={}, command=("echo", "ok"))
    script = render_batch_script(job, default_template())
    assert "ENV_FILE=''" in script
    assert run_script(write_job(job)).stdout == "ok\n"


def test_missing_env_file_fails_before_the_command(tmp_path: Path) -> None:
    job = make_job(tmp_path, command=("echo", "never"))
    script = write_job(job)
    os.unlink(run_files(job.run_dir).env_file)
    proc = run_script(script)
    assert proc.returncode == SETUP_FAILED_EXIT
    assert "never" not in proc.stdout
    assert "cannot read the job's environment file" in proc.stderr


def test_failing_module_load_fails_the_job(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir / "module", 'echo "module $*" >&2; [ "$2" = good ]')
    good = write_job(make_job(tmp_path, modules=("good",), command=("echo", "ran")))
    assert run_script(good, {"PATH": f"{bin_dir}:{os.environ['PATH']}"}).stdout == "ran\n"
    bad = write_job(make_job(tmp_path, modules=("bad",), command=("echo", "ran")))
    proc = run_script(bad, {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == SETUP_FAILED_EXIT and "module load bad failed" in proc.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"job_id": "a:b"}, "job_id"),
        ({"job_id": "../x"}, "job_id"),
        ({"worker_id": ""}, "worker_id"),
        ({"run_dir": "/tmp/with space"}, "run_dir"),
        ({"run_dir": "relative/dir"}, "run_dir"),
        ({"run_dir": "/tmp/%j"}, "run_dir"),
        ({"share_path": "/a:b"}, "share_path"),
        ({"binds": (Bind("/a", "/b,c"),)}, "bind target"),
        ({"image": "--privileged"}, "image"),
        ({"image": "a b"}, "image"),
        ({"command": ()}, "command"),
        ({"env": {"BAD-NAME": "x"}}, "BAD-NAME"),
        ({"env": {"X": "nul\x00"}}, "NUL"),
        ({"sbatch_options": ("--constraint=a b",)}, "sbatch option"),
        ({"sbatch_options": ("-p debug",)}, "sbatch option"),
        ({"modules": ("gcc; rm -rf /",)}, "module"),
    ],
)
def test_render_refuses_unsafe_values(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_batch_script(make_job(tmp_path, "docker", **changes), default_template())


def test_render_refuses_an_unknown_runtime(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runtime 'kubernetes' is not one of"):
        render_batch_script(make_job(tmp_path, "kubernetes"), default_template())


def test_comment_round_trip() -> None:
    assert parse_job_comment(job_comment("worker.a", "job-1")) == ("worker.a", "job-1")
    for foreign in (None, "", "(null)", "opeva:a", "other:w:j", "opeva:w 1:j1", "opeva:w:j:x"):
        assert parse_job_comment(foreign) is None


def test_sbatch_command_and_output() -> None:
    assert sbatch_command("/r/job.sbatch") == ["sbatch", "--parsable", "/r/job.sbatch"]
    assert sbatch_command("/r/job.sbatch", ["--hold"]) == ["sbatch", "--parsable", "--hold", "/r/job.sbatch"]
    assert parse_sbatch_output("123\n") == "123"
    assert parse_sbatch_output("sbatch: warning: x\n456;cluster1\n") == "456"
    for bad in ("", "sbatch: error: Batch job submission failed: Invalid partition name specified\n"):
        with pytest.raises(ValueError, match="no job id"):
            parse_sbatch_output(bad)


# --- apptainer / singularity, with a stand-in executable -----------------------------------------------------

APPTAINER_STUB = """\
log="$STUB_LOG"
case "$1" in
    build)
        echo "build $2 $3" >>"$log"
        sleep "${STUB_BUILD_SECONDS:-0}"
        [ "${STUB_BUILD_FAILS:-0}" = 1 ] && exit 1
        echo "sif of $3" >"$2"
        ;;
    exec)
        shift
        {
            echo "exec $*"
            env | grep -E '^(APPTAINERENV|SINGULARITYENV)_' | sort
        } >>"$log.$$"
        mv "$log.$$" "$log.exec.$$"
        ;;
esac
"""


def stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


@pytest.fixture
def apptainer_path(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("apptainer", "singularity"):
        stub(bin_dir / name, APPTAINER_STUB)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "stub.log")}


def stub_execs(tmp_path: Path) -> list[str]:
    return [path.read_text() for path in sorted(tmp_path.glob("stub.log.exec.*"))]


def test_apptainer_converts_once_for_concurrent_jobs(tmp_path: Path, apptainer_path: dict[str, str]) -> None:
    scripts = []
    for index in range(3):
        job_dir = tmp_path / f"job{index}"
        job_dir.mkdir()
        job = make_job(job_dir, "apptainer", job_id=f"job-{index}", sif_dir=str(tmp_path / "sif"))
        scripts.append(write_job(job))
    environment = {**os.environ, **apptainer_path, "STUB_BUILD_SECONDS": "1"}
    procs = [subprocess.Popen(["bash", str(s)], env=environment, stderr=subprocess.PIPE, text=True) for s in scripts]
    errors = [proc.communicate(timeout=30)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], errors
    builds = (tmp_path / "stub.log").read_text().splitlines()
    assert len(builds) == 1, builds
    sif_files = sorted((tmp_path / "sif").glob("*.sif"))
    assert len(sif_files) == 1 and sif_files[0].read_text() == "sif of docker://registry.example/org/sim:1.0\n"
    assert builds[0] == f"build {sif_files[0]}.partial docker://registry.example/org/sim:1.0"
    execs = stub_execs(tmp_path)
    assert len(execs) == 3
    share = tmp_path / "job0" / "share"
    assert execs[0].splitlines()[0] == (
        f"exec --cleanenv --bind {share}:/data {sif_files[0]} sh -c "
        'printf "%s|" "$@"; echo arg0 two words it\'s $NOT_EXPANDED'
    )
    assert "APPTAINERENV_SECRET_TOKEN=s3cr3t-value" in execs[0].splitlines()


def test_singularity_gpus_binds_and_sif_path(tmp_path: Path, apptainer_path: dict[str, str]) -> None:
    sif = tmp_path / "given.sif"
    job = make_job(
        tmp_path,
        "singularity",
        image=str(sif),
        resources=Resources(gpus=1),
        binds=(Bind("/scratch", "/scratch", read_only=True),),
        runtime_args=("--writable-tmpfs",),
    )
    proc = run_script(write_job(job), apptainer_path | {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "stub.log").exists()  # a .sif image is used as it is
    (lines,) = [text.splitlines() for text in stub_execs(tmp_path)]
    share = tmp_path / "share"
    assert lines[0].startswith(
        f"exec --cleanenv --bind {share}:/data --bind /scratch:/scratch:ro --nv --writable-tmpfs {sif} sh"
    )
    assert "SINGULARITYENV_CUDA_VISIBLE_DEVICES=0,1" in lines
    assert "SINGULARITYENV_SECRET_TOKEN=s3cr3t-value" in lines


def test_apptainer_gives_up_waiting_for_the_lock(tmp_path: Path, apptainer_path: dict[str, str]) -> None:
    script = write_job(make_job(tmp_path, "apptainer", sif_lock_wait_seconds=1))
    assert run_script(script, apptainer_path).returncode == 0  # converts, and leaves the lock file behind
    next((tmp_path / "sif").glob("*.sif")).unlink()
    lock = next((tmp_path / "sif").glob("*.lock"))
    # Another converter holds the lock of the same image.
    # --no-fork: the lock belongs to the process that is killed below, not to a child left running.
    holder = subprocess.Popen(["flock", "--no-fork", str(lock), "sleep", "30"])
    try:
        time.sleep(0.3)
        started = time.monotonic()
        proc = run_script(script, apptainer_path)
        assert proc.returncode == SETUP_FAILED_EXIT
        assert "another job has been converting docker://registry.example/org/sim:1.0 for more than 1s" in proc.stderr
        assert time.monotonic() - started < 10
        assert len(stub_execs(tmp_path)) == 1  # the first run's only
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is gone (even killed), its lock is too: nothing is stale.
    assert run_script(script, apptainer_path).returncode == 0


def test_apptainer_failed_conversion_leaves_no_sif(tmp_path: Path, apptainer_path: dict[str, str]) -> None:
    script = write_job(make_job(tmp_path, "apptainer"))
    proc = run_script(script, apptainer_path | {"STUB_BUILD_FAILS": "1"})
    assert proc.returncode == SETUP_FAILED_EXIT
    assert "could not convert docker://registry.example/org/sim:1.0" in proc.stderr
    assert not list((tmp_path / "sif").glob("*.sif"))
    assert stub_execs(tmp_path) == []
