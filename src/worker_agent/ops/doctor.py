"""`job-worker-agent doctor`: check, in order, what the worker needs to run jobs, and say how to fix each gap.

Nothing is changed on the way (no pull, no heartbeat, no job claimed); the share check writes and removes one
probe file, like the worker itself does before each job.

With WORKER_EXECUTOR=slurm the Docker rows (docker, image, gpus) give way to the cluster's: its SLURM_* settings,
Slurm reachable (here or over SSH), the default partition and account, the container runtime on a compute node,
the share and the run directory as the cluster sees them. The cluster share and the run directory get one probe
file each (in the nearest existing parent while one is still missing), written and removed at once. And doctor
runs one job, the only one it ever runs: a single `srun` step of `<runtime> --version` in the default partition
(one task, one minute at most, `--immediate` so that it never waits in the queue), because only a compute node
can say whether the runtime is installed there.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from worker_agent import config
from worker_agent.backend.client import BackendClient, BackendError
from worker_agent.executors import slurm_settings
from worker_agent.executors.base import ExecutorError, ExecutorUnavailable
from worker_agent.executors.docker import DockerExecutor
from worker_agent.executors.slurm import SlurmExecutor
from worker_agent.executors.slurm_commands import Cluster, Result, control_dir
from worker_agent.executors.slurm_script import RUNTIMES
from worker_agent.executors.slurm_settings import SlurmSettings
from worker_agent.ops.telemetry import gpu_info
from worker_agent.share import share_problem

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
# Clock skew beyond this many seconds is worth a warning (the Date header has a 1 s resolution).
MAX_SKEW_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    result: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class _Probe:
    """What the backend answered to one harmless request."""

    status: int
    date: str | None
    sent_at: float
    received_at: float
    agent_api: bool = True  # a 404 in the backend's own words, not a missing route


def _available_hosts(settings: config.Settings) -> list[str] | Exception | None:
    client = BackendClient.for_settings(settings)
    try:
        return client.available_hosts()
    except BackendError as exc:
        return exc
    finally:
        client.close()


def check_configuration(args: argparse.Namespace | None) -> tuple[Check, config.Settings | None]:
    try:
        settings = config.load(args)
    except config.ConfigError as exc:
        return Check("configuration", FAIL, str(exc), "correct that variable or flag (see --help)"), None
    detail = f"worker {settings.worker_id}, backend {settings.server}, shared dir {settings.shared_dir}"
    return Check("configuration", OK, detail), settings


def probe_backend(settings: config.Settings, transport: httpx.BaseTransport | None = None) -> _Probe:
    """One harmless request through the worker's own backend client (same URL, token and TLS settings)."""
    client = BackendClient.for_settings(settings, transport)
    try:
        sent_at = time.time()
        status, date, agent_api = client.probe()
        return _Probe(status, date, sent_at, time.time(), agent_api)
    finally:
        client.close()


def check_worker_id(settings: config.Settings, hosts: list[str] | Exception | None) -> Check:
    """The orchestrator answers heartbeats of worker ids outside its AVAILABLE_HOSTS with 400 (read-only check)."""
    if isinstance(hosts, Exception):
        return Check("worker id", SKIP, f"the backend's host list could not be read: {hosts}")
    if hosts is None:
        return Check("worker id", SKIP, "the backend publishes no list of hosts (not the orchestrator)")
    if settings.worker_id not in hosts:
        return Check(
            "worker id",
            FAIL,
            f"WORKER_ID={settings.worker_id} is not in the orchestrator's AVAILABLE_HOSTS {hosts}",
            "add it to AVAILABLE_HOSTS on the orchestrator, or set WORKER_ID to one of those names",
        )
    return Check("worker id", OK, f"{settings.worker_id} is one of the orchestrator's AVAILABLE_HOSTS")


def check_backend(settings: config.Settings, probe: _Probe | Exception) -> Check:
    if isinstance(probe, Exception):
        return Check(
            "backend",
            FAIL,
            f"cannot reach {settings.server}: {probe}",
            "start the backend, or correct OPEVA_SERVER (and OPEVA_CA_BUNDLE / OPEVA_TLS_VERIFY for https)",
        )
    if probe.status in (401, 403):
        fix = "set OPEVA_TOKEN to the backend's token" if not settings.token else "correct OPEVA_TOKEN"
        return Check("backend", FAIL, f"{settings.server} refused the token (HTTP {probe.status})", fix)
    if probe.status == 404 and not probe.agent_api:
        return Check(
            "backend",
            FAIL,
            f"{settings.server} has no OPEVA agent API (GET /status/<id> is not a route there)",
            "point OPEVA_SERVER at the job orchestrator (port 8011) or the reference backend, not at the "
            "training backend or a proxy page",
        )
    if probe.status == 404:
        auth = ", token accepted" if settings.token else ""
        return Check("backend", OK, f"{settings.server} answers{auth}")
    return Check(
        "backend",
        FAIL,
        f"{settings.server} answered HTTP {probe.status} to GET /status/<unknown job> (expected 404)",
        "check that OPEVA_SERVER is the OPEVA backend and that it is healthy",
    )


def check_clock(probe: _Probe | Exception) -> Check:
    if isinstance(probe, Exception):
        return Check("clock", SKIP, "needs the backend")
    if probe.date is None:
        return Check("clock", WARN, "the backend sent no Date header: skew unknown")
    try:
        server_time = email.utils.parsedate_to_datetime(probe.date).timestamp()
    except (TypeError, ValueError):
        return Check("clock", WARN, f"the backend's Date header is unreadable: {probe.date!r}")
    # The header is truncated to the second: compare with the middle of the request, plus half a second.
    skew = (probe.sent_at + probe.received_at) / 2 - (server_time + 0.5)
    if abs(skew) > MAX_SKEW_SECONDS:
        side = "ahead of" if skew > 0 else "behind"
        return Check(
            "clock",
            WARN,
            f"this host is {abs(skew):.0f}s {side} the backend",
            "sync both clocks (chrony/systemd-timesyncd): heartbeat and status times are compared",
        )
    return Check("clock", OK, f"within {MAX_SKEW_SECONDS:g}s of the backend (skew {skew:+.1f}s)")


def connect_docker(settings: config.Settings) -> tuple[Check, DockerExecutor | None]:
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    executor = DockerExecutor(settings.image_pull_policy, timeout=settings.http_timeout)
    try:
        version = executor.ping()
    except ExecutorUnavailable as exc:
        return Check(
            "docker",
            FAIL,
            f"no Docker engine at {where}: {exc}",
            "start dockerd, correct DOCKER_HOST, or give this user access to the socket (docker group)",
        ), None
    return Check("docker", OK, f"Docker {version} at {where}"), executor


def check_image(settings: config.Settings, executor: DockerExecutor | None) -> Check:
    image, policy = settings.image, settings.image_pull_policy
    if executor is None:
        return Check("image", SKIP, f"{image}: needs Docker")
    try:
        present = executor.has_image(image)
    except (ExecutorError, ExecutorUnavailable) as exc:
        return Check("image", FAIL, f"{image}: cannot inspect: {exc}", "check the Docker engine")
    if not present and policy == "never":
        return Check(
            "image",
            FAIL,
            f"{image} is not present and IMAGE_PULL_POLICY=never",
            f"docker pull {image} (or docker load it), or set IMAGE_PULL_POLICY=if-not-present",
        )
    if not present:
        return Check("image", WARN, f"{image} is not present: pulled at the first job (IMAGE_PULL_POLICY={policy})")
    pulled = "; pulled again before each job" if policy == "always" else ""
    return Check("image", OK, f"{image} present{pulled}")


def check_gpus(settings: config.Settings, gpus: Callable[[], list[dict[str, object]] | None] = gpu_info) -> Check:
    if not settings.enable_gpu:
        return Check("gpus", SKIP, "not requested (WORKER_ENABLE_GPU off)")
    found = gpus()
    if not found:
        return Check(
            "gpus",
            WARN,
            f"WORKER_ENABLE_GPU={settings.enable_gpu} but no NVIDIA GPU/driver found through NVML: "
            "jobs will be retried without GPUs",
            "install the NVIDIA driver, nvidia-container-toolkit and nvidia-ml-py, or unset WORKER_ENABLE_GPU",
        )
    names = ", ".join(str(gpu["name"]) for gpu in found)
    return Check("gpus", OK, f"{len(found)} GPU(s): {names}")


def check_share(settings: config.Settings) -> Check:
    problem = share_problem(settings.shared_dir, settings.share_check)
    if problem is not None:
        return Check(
            "shared dir",
            FAIL,
            problem,
            "mount the share at OPEVA_SHARED_DIR (see scripts/setup_worker.sh) and let this user write to it",
        )
    return Check("shared dir", OK, f"{settings.shared_dir} usable (SHARED_DIR_CHECK={settings.share_check})")


def check_state_dir(settings: config.Settings) -> Check:
    """The worker creates WORKER_STATE_DIR at start: it must be writable, or creatable in its nearest parent."""
    path = settings.state_dir
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return Check("state dir", OK, f"{path} {'writable' if existing == path else 'can be created'}")
    return Check(
        "state dir",
        FAIL,
        f"{path} is not writable ({existing} is the nearest existing path)",
        "create it for this user, or point WORKER_STATE_DIR elsewhere",
    )


# --- the Slurm executor (WORKER_EXECUTOR=slurm) ---------------------------------------------------------------------

# The rows after `slurm settings`, skipped together when what they need is missing.
SLURM_ROWS = ("slurm", "partition", "account", "runtime", "cluster share", "run dir")
# The runtime probe: srun gives up after RUNTIME_WAIT_SECONDS without a free node (--immediate), so that no
# probe is ever left waiting in the queue, and the whole step must end within RUNTIME_TIMEOUT_SECONDS.
RUNTIME_WAIT_SECONDS = 20
RUNTIME_TIMEOUT_SECONDS = 60
_BUSY = "Requested nodes are busy"  # srun --immediate found no free node in time
_NO_ACCOUNTING = "accounting_storage"  # sacctmgr: "You are not running a supported accounting_storage plugin"
# Exit codes of _RUNTIME_SCRIPT (unlike 1, 2 or 127, neither srun nor a shell uses them for its own failures).
_MODULES_FAILED, _RUNTIME_MISSING = 93, 94
# On the compute node: load SLURM_MODULES as the batch script does (the runtime may come from one), then
# print the node's name and the runtime's version.
_RUNTIME_SCRIPT = f"""
runtime=$1; shift
if [ "$#" -gt 0 ]; then
    if ! type module >/dev/null 2>&1; then
        for init in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh /usr/share/lmod/lmod/init/bash; do
            if [ -r "$init" ]; then . "$init"; break; fi
        done
    fi
    module load "$@" || exit {_MODULES_FAILED}
fi
if ! command -v "$runtime" >/dev/null 2>&1; then
    echo "$runtime is not on the PATH of node $(hostname -s)" >&2
    exit {_RUNTIME_MISSING}
fi
printf '%s ' "$(hostname -s)"
exec "$runtime" --version
"""
# srun also reads these variables, which the worker's settings of the same names may have set in this process's
# environment: the probe is one task on one CPU and no GPU, whatever a job gets by default.
_SRUN_READS = ("SLURM_CPUS_PER_TASK", "SLURM_GPUS")
# Exit codes of _DIR_SCRIPT.
_DIR_NOT_A_DIR, _DIR_NOT_WRITABLE, _DIR_CREATABLE, _DIR_NOT_CREATABLE = 2, 3, 4, 5
# $1 is a directory, $2 a probe file name. The probe goes to jobs/ when that exists: there the worker and its
# jobs write. A missing directory prints its nearest existing parent, and says whether `mkdir -p` could create
# it (the worker creates the run directory so, and with SLURM_STAGING=copy the share too): a probe file there,
# since `test -w` says yes to root even where nothing can be created. `true`, not `:`: a failed redirection of a
# special built-in such as `:` ends a POSIX shell at once.
_DIR_SCRIPT = f"""
dir=$1 probe=$2
if [ -d "$dir" ]; then
    [ -d "$dir/jobs" ] && dir=$dir/jobs
    {{ true >"$dir/$probe" && rm -f -- "$dir/$probe"; }} || exit {_DIR_NOT_WRITABLE}
    exit 0
fi
[ -e "$dir" ] && exit {_DIR_NOT_A_DIR}
parent=$dir
while [ ! -e "$parent" ]; do parent=$(dirname -- "$parent"); done
printf %s "$parent"
[ -d "$parent" ] || exit {_DIR_NOT_CREATABLE}
{{ true >"$parent/$probe" && rm -f -- "$parent/$probe"; }} 2>/dev/null || exit {_DIR_NOT_CREATABLE}
exit {_DIR_CREATABLE}
"""


def check_slurm_settings(settings: config.Settings) -> tuple[Check, SlurmSettings | None]:
    """The SLURM_* variables, loaded as the worker loads them (slurm_settings.load, the worker's share)."""
    try:
        slurm = slurm_settings.load(os.environ, settings.shared_dir)
    except config.ConfigError as exc:
        return Check(
            "slurm settings", FAIL, str(exc), "correct that variable (README: Running jobs on a Slurm cluster)"
        ), None
    where = f"over SSH on {slurm.ssh_host}:{slurm.ssh_port}" if slurm.ssh_host else "on this host"
    detail = f"Slurm commands {where}, runtime {slurm.container_runtime}, staging {slurm.staging}"
    return Check("slurm settings", OK, detail), slurm


def check_ssh(slurm: SlurmSettings, cluster: Cluster) -> Check | None:
    """Over SSH, a FAIL when the login node's shell cannot be reached (every other row needs it); else None."""
    if slurm.local:
        return None
    try:
        cluster.run(["true"])
    except ExecutorUnavailable as exc:
        return Check(
            "slurm",
            FAIL,
            f"unreachable over SSH: {exc}",
            "check SLURM_SSH_HOST/_PORT/_USER/_KEY/_KNOWN_HOSTS: "
            f"`ssh -p {slurm.ssh_port} {slurm.ssh_host} true` must work without a prompt",
        )
    return None


def check_slurm(cluster: Cluster, ping: Callable[[], str]) -> Check:
    """The executor's own ping: Slurm's commands answer and slurmctld is up."""
    try:
        version = ping()
    except (ExecutorError, ExecutorUnavailable) as exc:
        fix = f"is slurmctld running? (`scontrol ping` on {cluster.where})"
        if "is not installed" in str(exc):
            fix = f"install Slurm's client commands on {cluster.where}, or set SLURM_SSH_HOST to a login node"
        return Check("slurm", FAIL, f"Slurm on {cluster.where}: {exc}", fix)
    return Check("slurm", OK, f"{version} on {cluster.where}, slurmctld answers")


def check_partition(slurm: SlurmSettings, cluster: Cluster) -> tuple[Check, str | None]:
    """SLURM_PARTITION (else the cluster's default) exists and is up; also returns its name when it is."""
    try:
        # --all: hidden partitions count too (a job may use one it is allowed in).
        answer = cluster.slurm(["sinfo", "--all", "-h", "-o", "%P %a"])
    except (ExecutorError, ExecutorUnavailable) as exc:
        return Check("partition", FAIL, str(exc), "check Slurm with `sinfo` on the cluster"), None
    return partition_verdict(slurm.resources.partition, answer)


def partition_verdict(wanted: str | None, sinfo: str) -> tuple[Check, str | None]:
    """From `sinfo -h -o '%P %a'`: SLURM_PARTITION, else the cluster's default, must be there and up."""
    states, default = _partitions(sinfo)
    known = ", ".join(states) or "none"
    name = wanted or default
    if name is None:
        return Check(
            "partition",
            FAIL,
            "SLURM_PARTITION is not set and the cluster has no default partition",
            f"set SLURM_PARTITION (partitions: {known})",
        ), None
    which = name if wanted else f"{name} (the cluster's default)"
    if name not in states:
        return Check(
            "partition", FAIL, f"the cluster has no partition {name}", f"set SLURM_PARTITION to one of: {known}"
        ), None
    if states[name] != "up":
        return Check(
            "partition",
            FAIL,
            f"{which} is {states[name]}",
            f"ask the cluster's admins to bring it up, or set SLURM_PARTITION to another one ({known})",
        ), None
    return Check("partition", OK, f"{which} is up"), name


def _partitions(sinfo: str) -> tuple[dict[str, str], str | None]:
    """Each partition's state, and the default one: `name state` lines, the default's name ending in '*'."""
    states, default = {}, None
    for line in sinfo.splitlines():
        name, _, state = line.strip().partition(" ")
        if name.endswith("*"):
            name = default = name.rstrip("*")
        if name:
            states[name] = state.strip()
    return states, default


def check_account(slurm: SlurmSettings, cluster: Cluster) -> Check:
    """SLURM_ACCOUNT has an association with the cluster's user; without accounting there is nothing to ask."""
    account = slurm.resources.account
    if account is None:
        return Check("account", SKIP, "SLURM_ACCOUNT not set: jobs go to the user's default account")
    try:
        user = cluster.run(["id", "-un"]).text.strip()
        query = ["sacctmgr", "-n", "-P", "show", "associations", "where", f"account={account}", f"user={user}"]
        answer = cluster.slurm([*query, "format=account"])
    except (ExecutorError, ExecutorUnavailable) as exc:
        return account_unknown(account, str(exc))
    if not answer.strip():
        return Check(
            "account",
            FAIL,
            f"{user} has no association with account {account}",
            f"correct SLURM_ACCOUNT (`sacctmgr show associations user={user}` lists the user's accounts)",
        )
    return Check("account", OK, f"{account}: {user} may submit to it")


def account_unknown(account: str, reason: str) -> Check:
    if _NO_ACCOUNTING in reason:
        return Check(
            "account",
            WARN,
            f"the cluster keeps no accounting: no way to check SLURM_ACCOUNT={account} (nor does Slurm check it)",
        )
    return Check("account", WARN, f"SLURM_ACCOUNT={account} could not be checked: {reason}")


def runtime_argv(slurm: SlurmSettings, partition: str) -> list[str]:
    """The one job doctor runs: a single srun step of `<runtime> --version`, see the module's docstring."""
    unset = [word for name in _SRUN_READS for word in ("-u", name)]
    srun = [
        "srun",
        "--nodes=1",
        "--ntasks=1",
        f"--partition={partition}",
        "--time=1",
        f"--immediate={RUNTIME_WAIT_SECONDS}",
        "--job-name=opeva-doctor",
        "--quiet",
    ]
    if slurm.resources.account:
        srun.append(f"--account={slurm.resources.account}")
    return ["env", *unset, *srun, "bash", "-c", _RUNTIME_SCRIPT, "bash", slurm.container_runtime, *slurm.modules]


def check_runtime(slurm: SlurmSettings, cluster: Cluster, partition: str | None) -> Check:
    runtime = slurm.container_runtime
    if runtime == "none":
        return Check("runtime", SKIP, "SLURM_CONTAINER_RUNTIME=none: jobs run without a container")
    if partition is None:
        return Check("runtime", SKIP, f"{runtime}: needs a partition that is up")
    argv = runtime_argv(slurm, partition)
    try:
        result = cluster.run(argv, timeout=RUNTIME_TIMEOUT_SECONDS)
    except ExecutorUnavailable as exc:
        return Check(
            "runtime",
            FAIL,
            f"{runtime}: {exc}",
            f"try it by hand on {cluster.where}: srun -p {partition} --time=1 {runtime} --version",
        )
    return runtime_verdict(slurm, partition, result)


def runtime_verdict(slurm: SlurmSettings, partition: str, result: Result) -> Check:
    runtime = slurm.container_runtime
    message = _first_line(line for line in result.stderr.splitlines() if not line.startswith("srun: "))
    if result.returncode == 0:
        node, _, version = result.text.strip().partition(" ")
        return Check("runtime", OK, f"{_first_line(version.splitlines()) or runtime} on node {node} of {partition}")
    if result.returncode == _RUNTIME_MISSING:
        others = ", ".join(name for name in RUNTIMES if name != runtime)
        return Check(
            "runtime",
            FAIL,
            message or f"{runtime} is not installed on the compute nodes of {partition}",
            f"install {runtime} on the compute nodes, add the module that provides it to SLURM_MODULES, or set "
            f"SLURM_CONTAINER_RUNTIME to one they have ({others})",
        )
    if result.returncode == _MODULES_FAILED:
        return Check(
            "runtime",
            FAIL,
            f"module load {' '.join(slurm.modules)} failed on a compute node: {message}",
            "correct SLURM_MODULES (`module avail` on a compute node lists them)",
        )
    srun_said = _first_line(result.stderr.splitlines()) or f"exit code {result.returncode}"
    if _BUSY in result.stderr:
        return Check(
            "runtime",
            WARN,
            f"{runtime} not checked: no node of {partition} free within {RUNTIME_WAIT_SECONDS}s ({srun_said})",
        )
    return Check(
        "runtime",
        FAIL,
        f"{runtime} --version on a node of {partition} failed: {srun_said}",
        "check the partition, account and the runtime on a compute node (srun ... <runtime> --version)",
    )


def check_cluster_share(slurm: SlurmSettings, cluster: Cluster) -> Check:
    """SLURM_SHARED_DIR as the cluster sees it: there, and writable (a probe file, written and removed)."""
    path = slurm.shared_dir
    try:
        result = cluster.run(_dir_argv(path))
    except ExecutorUnavailable as exc:
        return Check("cluster share", FAIL, f"{path}: {exc}", "check the cluster connection")
    return share_verdict(slurm, cluster.where, result)


def share_verdict(slurm: SlurmSettings, where: str, result: Result) -> Check:
    path, code = slurm.shared_dir, result.returncode
    if code == 0:
        return Check("cluster share", OK, f"{path} visible and writable on {where} (SLURM_STAGING={slurm.staging})")
    if code == _DIR_CREATABLE and slurm.staging == "copy":
        return Check("cluster share", OK, f"{path} is created on {where} by the first job's copy")
    if code in (_DIR_CREATABLE, _DIR_NOT_CREATABLE) and slurm.staging == "shared":
        return Check(
            "cluster share",
            FAIL,
            f"{path} does not exist on {where}: the share is not visible from the cluster",
            "mount the share at SLURM_SHARED_DIR on the cluster's nodes (or point SLURM_SHARED_DIR at where it is "
            "mounted there), or set SLURM_STAGING=copy",
        )
    return Check("cluster share", FAIL, _dir_problem(path, where, result), _dir_fix("SLURM_SHARED_DIR"))


def check_run_dir(slurm: SlurmSettings, cluster: Cluster) -> Check:
    """SLURM_RUN_DIR (default $HOME/.opeva-slurm of the cluster's user): writable, or creatable."""
    try:
        path = slurm.run_dir or f"{cluster.home().rstrip('/')}/.opeva-slurm"
        result = cluster.run(_dir_argv(path))
    except (ExecutorError, ExecutorUnavailable) as exc:
        return Check("run dir", FAIL, f"SLURM_RUN_DIR: {exc}", "check the cluster connection")
    return run_dir_verdict(path, cluster.where, result)


def run_dir_verdict(path: str, where: str, result: Result) -> Check:
    if result.returncode == 0:
        return Check("run dir", OK, f"{path} writable on {where}")
    if result.returncode == _DIR_CREATABLE:
        return Check("run dir", OK, f"{path} can be created on {where}")
    return Check("run dir", FAIL, _dir_problem(path, where, result), _dir_fix("SLURM_RUN_DIR"))


def _dir_argv(path: str) -> list[str]:
    return ["sh", "-c", _DIR_SCRIPT, "sh", path, f".opeva-doctor-{uuid.uuid4().hex[:12]}"]


def _dir_problem(path: str, where: str, result: Result) -> str:
    if result.returncode == _DIR_NOT_A_DIR:
        return f"{path} on {where} is not a directory"
    if result.returncode == _DIR_NOT_WRITABLE:
        return f"{path} on {where} is not writable: {result.stderr or 'the probe file failed'}"
    if result.returncode == _DIR_NOT_CREATABLE:
        return f"{path} does not exist on {where} and cannot be created ({result.text} is not writable)"
    return f"{path} on {where} could not be checked: {result.stderr or f'exit code {result.returncode}'}"


def _dir_fix(variable: str) -> str:
    return f"create it for the cluster's user and let that user write to it, or point {variable} elsewhere"


def _first_line(lines: Iterable[str]) -> str:
    return next((line.strip() for line in lines if line.strip()), "")


def _skipped(names: Sequence[str], detail: str) -> list[Check]:
    return [Check(name, SKIP, detail) for name in names]


def slurm_rows(slurm: SlurmSettings, cluster: Cluster, ping: Callable[[], str]) -> list[Check]:
    unreachable = check_ssh(slurm, cluster)
    if unreachable is not None:
        return [unreachable, *_skipped(SLURM_ROWS[1:], f"needs {cluster.where}")]
    checks = [check_slurm(cluster, ping)]
    if checks[0].result == OK:
        partition_check, partition = check_partition(slurm, cluster)
        checks += [partition_check, check_account(slurm, cluster), check_runtime(slurm, cluster, partition)]
    else:
        checks += _skipped(("partition", "account", "runtime"), "needs Slurm")
    # The files need only the cluster's shell, not slurmctld.
    return [*checks, check_cluster_share(slurm, cluster), check_run_dir(slurm, cluster)]


def slurm_checks(settings: config.Settings) -> list[Check]:
    settings_check, slurm = check_slurm_settings(settings)
    if slurm is None:
        return [settings_check, *_skipped(SLURM_ROWS, "needs valid SLURM_* settings")]
    # A scratch state directory: the executor creates <state dir>/slurm, and doctor leaves the worker's alone.
    with tempfile.TemporaryDirectory(prefix="opeva-doctor-") as scratch:
        try:
            executor = SlurmExecutor(slurm, settings.shared_dir, Path(scratch))
        except (ExecutorUnavailable, OSError) as exc:
            return [settings_check, Check("slurm", FAIL, str(exc)), *_skipped(SLURM_ROWS[1:], "needs Slurm")]
        # The executor's socket directory: the checks' commands share its SSH connection (same ControlPath).
        sockets = Path(scratch) / "slurm"
        cluster = Cluster(slurm, sockets if slurm.local else control_dir(sockets))
        try:
            return [settings_check, *slurm_rows(slurm, cluster, executor.ping)]
        finally:
            # Ends the SSH connection; a hung `ssh -O exit` must not cost the report.
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                executor.close()


def run_checks(args: argparse.Namespace | None) -> list[Check]:
    checks: list[Check] = []
    configuration, settings = check_configuration(args)
    checks.append(configuration)
    if settings is None:
        return checks
    probe: _Probe | Exception
    try:
        probe = probe_backend(settings)
    except (BackendError, config.ConfigError) as exc:
        probe = exc
    checks += [check_backend(settings, probe), check_clock(probe)]
    reachable = not isinstance(probe, Exception) and probe.agent_api
    checks.append(check_worker_id(settings, _available_hosts(settings) if reachable else None))
    if settings.executor == "slurm":
        checks += slurm_checks(settings)
    else:
        docker_check, executor = connect_docker(settings)
        checks += [docker_check, check_image(settings, executor), check_gpus(settings)]
    checks += [check_share(settings), check_state_dir(settings)]
    return checks


def render(checks: list[Check]) -> str:
    width = max(len(check.name) for check in checks)
    lines = [f"{'CHECK':<{width}}  RESULT  DETAIL"]
    for check in checks:
        lines.append(f"{check.name:<{width}}  {check.result:<6}  {check.detail}")
        if check.fix:
            lines.append(f"{'':<{width}}  {'':<6}  fix: {check.fix}")
    failed = [check.name for check in checks if check.result == FAIL]
    warned = [check.name for check in checks if check.result == WARN]
    if failed:
        lines.append(f"verdict: NOT READY - fix {', '.join(failed)}")
    else:
        lines.append("verdict: READY" + (f" (warnings: {', '.join(warned)})" if warned else ""))
    return "\n".join(lines)


def main(args: argparse.Namespace | None = None) -> int:
    checks = run_checks(args)
    print(render(checks), flush=True)
    return 1 if any(check.result == FAIL for check in checks) else 0
