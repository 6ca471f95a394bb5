"""What Slurm says about a batch job, and what the worker reports for it. Pure logic, no I/O.

Three sources give a job's state, all parsed into one `SlurmJobState`:
  - `squeue -h -t all -o SQUEUE_FORMAT` (`squeue_args()`): cheap, many jobs at once, but no exit code;
  - `scontrol show job -o <id>` (`scontrol_args()`): one job, with `ExitCode=<code>:<signal>`;
  - `sacct -n -P -o SACCT_FIELDS` (`sacct_args()`): only where accounting is on; the only source that
    still knows a job after slurmctld forgot it (MinJobAge) and the only one that says who cancelled it.
`outcome()` maps a state to the status the worker reports ("setup", "running", "finished", "failed").

Observed on Slurm 22.05 without accounting (fixtures in tests/slurm/fixtures/):
  - a batch script killed by a signal ends FAILED with Reason=JobLaunchFailure and ExitCode=0:<signal>,
    the same reason as a real launch failure (e.g. an unwritable --output), whose ExitCode is 0:<errno>;
  - `scancel` (and a time limit) shows ExitCode=0:15; nothing in scontrol says who cancelled;
  - a job cancelled while pending keeps its pending reason (JobState=CANCELLED Reason=JobHeldUser);
  - StartTime/EndTime of a pending job are the scheduler's estimates;
  - a requeued job (node failure, `scontrol requeue`) is PENDING again with Reason=BeginTime, Restarts>0;
  - `--time` is in whole minutes: seconds are rounded up (`--time=0:10` is a 1-minute limit).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

Status = Literal["setup", "running", "finished", "failed"]
# The batch script's exit code when it fails before the job's command runs (env file, modules, image conversion),
# the code `docker run` and `podman run` use for their own failures too.
SETUP_FAILED_EXIT = 125
Category = Literal["user", "infrastructure", "worker"]

# ---------------------------------------------------------------------------------------------------------------------
# squeue

# %i job id, %T state (long form), %r reason code, %P partition, %Q priority, %l time limit, %S start (estimated
# while pending), %e end, %N node list, %j name, %k comment. The two free-text fields come last: the comment is
# the last one so that a '|' in it cannot shift the others (the worker writes both name and comment itself).
SQUEUE_FIELDS = ("job_id", "state", "reason", "partition", "priority", "time_limit", "start", "end", "nodes", "name")
SQUEUE_FORMAT = "%i|%T|%r|%P|%Q|%l|%S|%e|%N|%j|%k"
_SQUEUE_COLUMNS = len(SQUEUE_FIELDS) + 1  # + the comment

# What slurmctld prints for a job id it does not (or no longer) know.
_UNKNOWN_JOB = "Invalid job id specified"
_ACCOUNTING_OFF = "accounting storage is disabled"

# ---------------------------------------------------------------------------------------------------------------------
# States

PENDING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
)
# SUSPENDED and STOPPED jobs have started: reporting "setup" again would move the job backwards.
RUNNING_STATES = frozenset(
    {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT", "UPDATE_DB"}
)
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
    }
)

# Pending reasons that never clear by waiting: the job has to be changed or cancelled.
BLOCKED_REASONS = frozenset(
    {
        "PartitionTimeLimit",
        "PartitionNodeLimit",
        "PartitionConfig",
        "DependencyNeverSatisfied",
        "InvalidAccount",
        "InvalidQOS",
        "BadConstraints",
        "AccountNotAllowed",
        "QOSMaxWallDurationPerJobLimit",
        "AssocMaxWallDurationPerJobLimit",
        "QOSMaxCpuPerJobLimit",
        "AssocMaxCpuPerJobLimit",
        "QOSMaxMemoryPerJob",
        "launch_failed_requeued_held",
    }
)

_NOT_IN_LINE = BLOCKED_REASONS | {"BeginTime", "Dependency", "JobHeldUser", "JobHeldAdmin"}

_PENDING_REASON_TEXT = {
    "Priority": "waiting behind jobs of higher priority",
    "Resources": "waiting for free CPUs, memory or GPUs",
    "BeginTime": "waiting for its start time (a requeued job waits a little before it runs again)",
    "Dependency": "waiting for the jobs it depends on",
    "JobHeldUser": "held by its owner (scontrol release)",
    "JobHeldAdmin": "held by a cluster administrator",
    "ReqNodeNotAvail": "the nodes it needs are not available",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "PartitionTimeLimit": "its time limit is above its partition's maximum",
    "PartitionNodeLimit": "it asks for more nodes than its partition allows",
    "PartitionConfig": "it asks for more than any node of its partition has (CPUs, memory or GPUs)",
    "Reservation": "waiting for its reservation",
    "NodeDown": "a node it needs is down",
    "None": "waiting to be scheduled",
}


# ---------------------------------------------------------------------------------------------------------------------
# The parsed state


@dataclass(frozen=True)
class SlurmJobState:
    """One job as Slurm reports it. Fields a source does not give are None."""

    job_id: str
    state: str  # the base state in capitals, e.g. "PENDING", "CANCELLED" (no "by <uid>")
    reason: str | None = None  # reason code or text; None for Slurm's "None"
    exit_code: int | None = None  # the script's exit status (ExitCode=<this>:<signal>)
    signal: int | None = None  # the signal that ended it (ExitCode=<code>:<this>), 0 when none
    comment: str | None = None
    name: str | None = None
    partition: str | None = None
    priority: int | None = None
    queue_position: int | None = None  # 1 = next to start in its partition; pending jobs only
    nodes: str | None = None
    start_time: datetime | None = None  # for a pending job: the scheduler's estimate, if any
    end_time: datetime | None = None
    time_limit: str | None = None  # as Slurm prints it, e.g. "30:00", "1-00:00:00"
    restarts: int | None = None
    cancelled_by: str | None = None  # uid, from sacct's "CANCELLED by <uid>"
    extra: Mapping[str, str] = field(default_factory=dict)  # every other scontrol key, raw


def _none_if_unset(value: str | None) -> str | None:
    """Slurm prints unset values as (null), None, N/A or Unknown, and some as nothing at all."""
    if value is None:
        return None
    value = value.strip()
    return None if value in ("", "(null)", "None", "N/A", "Unknown", "n/a") else value


def _parse_time(value: str | None) -> datetime | None:
    value = _none_if_unset(value)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _parse_int(value: str | None) -> int | None:
    value = _none_if_unset(value)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def base_state(raw: str) -> str:
    """'CANCELLED by 1000' -> 'CANCELLED'; 'completed' -> 'COMPLETED'; 'RUNNING+' (truncated) -> 'RUNNING'."""
    words = raw.strip().split()
    return words[0].rstrip("+").upper() if words else ""


def parse_exit_code(value: str | None) -> tuple[int | None, int | None]:
    """Slurm's 'code:signal' (e.g. '3:0', '0:15') -> (3, 0), (0, 15); (None, None) when absent or malformed."""
    value = _none_if_unset(value)
    if value is None:
        return None, None
    code, _, signal = value.partition(":")
    try:
        return int(code), int(signal or "0")
    except ValueError:
        return None, None


# ---------------------------------------------------------------------------------------------------------------------
# squeue


def squeue_args(job_ids: Sequence[str] = (), user: str | None = None) -> list[str]:
    """squeue for all states (finished jobs too, for MinJobAge seconds after their end).

    For queue positions, list every pending job of the partition (no job_ids, no user): positions are
    counted among the lines given to parse_squeue. `squeue -j` with only unknown ids exits 1.
    """
    args = ["squeue", "--noheader", "--states=all", f"--format={SQUEUE_FORMAT}"]
    if job_ids:
        args.append("--jobs=" + ",".join(job_ids))
    if user:
        args.append(f"--user={user}")
    return args


def parse_squeue_line(line: str) -> SlurmJobState:
    """One line of `squeue -h -o SQUEUE_FORMAT`; ValueError if it has too few fields."""
    parts = line.rstrip("\n").split("|", _SQUEUE_COLUMNS - 1)
    if len(parts) != _SQUEUE_COLUMNS:
        raise ValueError(f"squeue line has {len(parts)} fields, expected {_SQUEUE_COLUMNS}: {line!r}")
    values = dict(zip(SQUEUE_FIELDS, parts, strict=False))
    return SlurmJobState(
        job_id=values["job_id"].strip(),
        state=base_state(values["state"]),
        reason=_none_if_unset(values["reason"]),
        comment=_none_if_unset(parts[-1]),
        name=_none_if_unset(values["name"]),
        partition=_none_if_unset(values["partition"]),
        priority=_parse_int(values["priority"]),
        nodes=_none_if_unset(values["nodes"]),
        start_time=_parse_time(values["start"]),
        end_time=_parse_time(values["end"]),
        time_limit=_none_if_unset(values["time_limit"]),
    )


def parse_squeue(text: str) -> list[SlurmJobState]:
    """All lines of `squeue -h -o SQUEUE_FORMAT`, with queue positions of the pending ones filled in."""
    if _UNKNOWN_JOB in text:
        return []
    states = [parse_squeue_line(line) for line in text.splitlines() if line.strip()]
    positions = queue_positions(states)
    return [replace(state, queue_position=positions.get(state.job_id)) for state in states]


def queue_positions(states: Iterable[SlurmJobState]) -> dict[str, int]:
    """Rank of each job waiting in line in its partition: higher priority first, then the older (smaller) id.

    This is the order the main scheduler tries jobs in; backfill may start a small job earlier. Jobs not in
    line get no position and do not count: held ones (priority 0), blocked ones, and those waiting for a
    start time or a dependency.
    """
    pending: dict[str | None, list[SlurmJobState]] = {}
    for state in states:
        if state.state == "PENDING" and state.priority != 0 and (state.reason or "None") not in _NOT_IN_LINE:
            pending.setdefault(state.partition, []).append(state)
    positions: dict[str, int] = {}
    for jobs in pending.values():
        jobs.sort(key=lambda s: (-(s.priority or 0), _job_id_key(s.job_id)))
        positions.update({state.job_id: rank for rank, state in enumerate(jobs, start=1)})
    return positions


def _job_id_key(job_id: str) -> tuple[int, str]:
    digits = re.match(r"\d+", job_id)
    return (int(digits.group()) if digits else 0, job_id)


# ---------------------------------------------------------------------------------------------------------------------
# scontrol show job -o

# Values that may hold spaces (free text and paths). Inside one of them, a 'Key=' token starts the next field
# only if Key is one scontrol prints and has not been seen yet, so a comment like "a=b Partition=x" stays whole.
FREE_TEXT_KEYS = frozenset(
    {
        "JobName",
        "Reason",
        "Comment",
        "AdminComment",
        "SystemComment",
        "Command",
        "WorkDir",
        "StdErr",
        "StdIn",
        "StdOut",
        "Features",
        "Dependency",
        "SubmitLine",
        "MailUser",
        "Container",
        "Reservation",
        "Licenses",
    }
)
# Keys of `scontrol show job -o` on Slurm 22.05, and a few that newer versions add.
SCONTROL_KEYS = FREE_TEXT_KEYS | frozenset(
    {
        "JobId",
        "ArrayJobId",
        "ArrayTaskId",
        "HetJobId",
        "HetJobOffset",
        "UserId",
        "GroupId",
        "MCS_label",
        "Priority",
        "Nice",
        "Account",
        "QOS",
        "JobState",
        "Requeue",
        "Restarts",
        "BatchFlag",
        "Reboot",
        "ExitCode",
        "DerivedExitCode",
        "RunTime",
        "TimeLimit",
        "TimeMin",
        "SubmitTime",
        "EligibleTime",
        "AccrueTime",
        "StartTime",
        "EndTime",
        "Deadline",
        "PreemptEligibleTime",
        "PreemptTime",
        "SuspendTime",
        "SecsPreSuspend",
        "LastSchedEval",
        "Scheduler",
        "Partition",
        "AllocNode:Sid",
        "ReqNodeList",
        "ExcNodeList",
        "NodeList",
        "SchedNodeList",
        "BatchHost",
        "NumNodes",
        "NumCPUs",
        "NumTasks",
        "CPUs/Task",
        "ReqB:S:C:T",
        "TRES",
        "Socks/Node",
        "NtasksPerN:B:S:C",
        "CoreSpec",
        "MinCPUsNode",
        "MinMemoryCPU",
        "MinMemoryNode",
        "MinTmpDiskNode",
        "DelayBoot",
        "OverSubscribe",
        "Contiguous",
        "Network",
        "Power",
        "TresPerNode",
        "TresPerJob",
        "TresPerTask",
        "CpusPerTres",
        "MemPerTres",
        "MailType",
        "ContainerID",
        "OOMKillStep",
        "BurstBuffer",
        "ResvPorts",
        "LicensesAlloc",
    }
)
_KEY_TOKEN = re.compile(r"([A-Za-z][A-Za-z0-9_/:]*)=(.*)", re.DOTALL)


def parse_scontrol_fields(line: str) -> dict[str, str]:
    """`Key=value Key=value ...` of one `scontrol show job -o` line into a dict of raw values (stripped)."""
    fields: dict[str, str] = {}
    key: str | None = None
    # Split on single spaces: a run of spaces inside a free-text value survives as empty tokens.
    for token in line.rstrip("\n").split(" "):
        match = _KEY_TOKEN.fullmatch(token)
        if match and _starts_field(match.group(1), key, fields):
            key = match.group(1)
            fields[key] = match.group(2)
        elif key is not None:
            fields[key] += " " + token
    return {name: value.strip() for name, value in fields.items()}


def _starts_field(name: str, current: str | None, seen: Mapping[str, str]) -> bool:
    if name in seen:
        return False
    if current in FREE_TEXT_KEYS:
        return name in SCONTROL_KEYS
    return True


def parse_scontrol_job(text: str) -> SlurmJobState | None:
    """`scontrol show job -o <id>` output -> its (first) job; None when Slurm does not know the id."""
    jobs = parse_scontrol_jobs(text)
    return jobs[0] if jobs else None


def parse_scontrol_jobs(text: str) -> list[SlurmJobState]:
    """Every job line of `scontrol show job -o` (one per array task or het component); [] for an unknown id."""
    return [_from_scontrol(parse_scontrol_fields(line)) for line in text.splitlines() if line.startswith("JobId=")]


def _from_scontrol(fields: Mapping[str, str]) -> SlurmJobState:
    exit_code, signal = parse_exit_code(fields.get("ExitCode"))
    known = {"JobId", "JobState", "Reason", "ExitCode", "Comment", "JobName", "Partition", "Priority"}
    known |= {"NodeList", "StartTime", "EndTime", "TimeLimit", "Restarts"}
    return SlurmJobState(
        job_id=fields.get("JobId", ""),
        state=base_state(fields.get("JobState", "")),
        reason=_none_if_unset(fields.get("Reason")),
        exit_code=exit_code,
        signal=signal,
        comment=_none_if_unset(fields.get("Comment")),
        name=_none_if_unset(fields.get("JobName")),
        partition=_none_if_unset(fields.get("Partition")),
        priority=_parse_int(fields.get("Priority")),
        nodes=_none_if_unset(fields.get("NodeList")),
        start_time=_parse_time(fields.get("StartTime")),
        end_time=_parse_time(fields.get("EndTime")),
        time_limit=_none_if_unset(fields.get("TimeLimit")),
        restarts=_parse_int(fields.get("Restarts")),
        extra={name: value for name, value in fields.items() if name not in known},
    )


def scontrol_args(job_id: str) -> list[str]:
    return ["scontrol", "show", "job", "--oneliner", job_id]


# ---------------------------------------------------------------------------------------------------------------------
# sacct

SACCT_FIELDS = "JobID,State,ExitCode,Reason"


def sacct_args(job_ids: Sequence[str]) -> list[str]:
    return ["sacct", "--noheader", "--parsable2", f"--format={SACCT_FIELDS}", "--jobs=" + ",".join(job_ids)]


def parse_sacct(text: str) -> list[SlurmJobState]:
    """`sacct -n -P -o JobID,State,ExitCode,Reason` -> one state per job (its steps folded in).

    [] when accounting is off ("Slurm accounting storage is disabled") or the jobs are unknown.
    """
    if _ACCOUNTING_OFF in text:
        return []
    jobs: dict[str, SlurmJobState] = {}
    steps: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 3 or not parts[0].strip():
            continue
        job_id, _, step = parts[0].strip().partition(".")
        if step:
            steps.setdefault(job_id, []).append(base_state(parts[1]))
            continue
        jobs[job_id] = _from_sacct(job_id, parts)
    return [_fold_steps(state, steps.get(state.job_id, [])) for state in jobs.values()]


def _from_sacct(job_id: str, parts: Sequence[str]) -> SlurmJobState:
    raw_state = parts[1].strip()
    exit_code, signal = parse_exit_code(parts[2])
    by = re.fullmatch(r"\S+ by (\S+)", raw_state)
    return SlurmJobState(
        job_id=job_id,
        state=base_state(raw_state),
        reason=_none_if_unset(parts[3]) if len(parts) > 3 else None,
        exit_code=exit_code,
        signal=signal,
        cancelled_by=by.group(1) if by else None,
    )


def _fold_steps(state: SlurmJobState, step_states: Sequence[str]) -> SlurmJobState:
    # Some versions mark only the step that the kernel's OOM killer hit; the job line then says FAILED.
    if "OUT_OF_MEMORY" in step_states and state.state in ("FAILED", "CANCELLED", "COMPLETED"):
        return replace(state, state="OUT_OF_MEMORY")
    return state


# ---------------------------------------------------------------------------------------------------------------------
# What the worker reports


@dataclass(frozen=True)
class Outcome:
    """The status update for a job's Slurm state. `error_hint` is one sentence for whoever submitted the job."""

    status: Status
    exit_code: int | None = None
    error_code: str | None = None
    error_category: Category | None = None
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    error_hint: str | None = None


def is_terminal(state: str) -> bool:
    """True once Slurm will not change the job's state any more (not for COMPLETING)."""
    return base_state(state) in TERMINAL_STATES


def outcome(job: SlurmJobState) -> Outcome:
    """The worker's view of a job. For a terminal state without an exit code (from squeue), ask scontrol
    first: only COMPLETED implies one (0)."""
    details = _details(job)
    if job.state in PENDING_STATES:
        return _pending(job, details)
    if job.state in RUNNING_STATES:
        if job.state in ("SUSPENDED", "STOPPED"):
            details["suspended"] = True
        return Outcome("running", details=details)
    handler = _TERMINAL.get(job.state)
    if handler is None:
        return Outcome(
            "failed",
            error_code="unknown_state",
            error_category="worker",
            error=f"Slurm reports the state {job.state or '(empty)'!r}, which this worker does not know",
            details=details,
            error_hint="The worker could not interpret the job's Slurm state; the worker's operators should check it.",
        )
    return handler(job, details)


def outcome_for_missing(job_id: str) -> Outcome:
    """The job is unknown to slurmctld (and to sacct, if any): it ended more than MinJobAge ago or was purged."""
    return Outcome(
        "failed",
        error_code="lost_job",
        error_category="infrastructure",
        error=f"Slurm no longer knows job {job_id} and its outcome was not recorded",
        details={"slurm_job_id": job_id},
        error_hint="The worker lost track of the job (it was away longer than Slurm keeps finished jobs); resubmit it.",
    )


def _details(job: SlurmJobState) -> dict[str, Any]:
    details: dict[str, Any] = {"slurm_job_id": job.job_id, "slurm_state": job.state}
    optional = {
        "slurm_reason": job.reason,
        "partition": job.partition,
        "nodes": job.nodes,
        "time_limit": job.time_limit,
        "signal": job.signal or None,
        "restarts": job.restarts or None,
    }
    details.update({key: value for key, value in optional.items() if value is not None})
    return details


def _pending(job: SlurmJobState, details: dict[str, Any]) -> Outcome:
    reason = job.reason or "None"
    details["pending_reason"] = _PENDING_REASON_TEXT.get(reason, reason)
    if job.queue_position is not None:
        details["queue_position"] = job.queue_position
    if job.start_time is not None:
        details["expected_start"] = job.start_time.isoformat()
    if reason not in BLOCKED_REASONS:
        return Outcome("setup", details=details)
    details["blocked"] = True
    return Outcome(
        "setup",
        details=details,
        error_hint=f"The job cannot start as submitted ({details['pending_reason']}); "
        "cancel it and resubmit with other deucalion_options.",
    )


def _completed(job: SlurmJobState, details: dict[str, Any]) -> Outcome:
    # COMPLETED means exit code 0 and no signal; squeue does not show the code, so None counts as 0.
    if not job.exit_code and not job.signal:
        return Outcome("finished", exit_code=0, details=details)
    return _failed(job, details)


# Linux signals go up to 64. With Reason=JobLaunchFailure only the classic ones (1-31) count as a signal: Slurm
# puts its launch error numbers there too (0:53 for an unwritable --output).
_MAX_SIGNAL = 64


def _failed(job: SlurmJobState, details: dict[str, Any]) -> Outcome:
    signal = job.signal or 0
    if job.reason == "JobLaunchFailure" and not 0 < signal < 32:
        return Outcome(
            "failed",
            error_code="launch_failed",
            error_category="infrastructure",
            error=f"Slurm could not launch the batch script (error {signal})",
            details=details,
            error_hint="Slurm could not start the job on its node (e.g. its output directory was not writable); "
            "the worker's operators should check the node.",
        )
    if 0 < signal <= _MAX_SIGNAL:
        # The shell's convention, which Docker follows too: 128 + the signal.
        return Outcome(
            "failed",
            exit_code=128 + signal,
            error_code="killed_by_signal",
            error_category="user",
            error=f"The job was killed by signal {signal}",
            details=details,
            error_hint=f"The job's process was killed by signal {signal} (9 is often the kernel's OOM killer); "
            "check its log.",
        )
    if job.exit_code == SETUP_FAILED_EXIT:
        return Outcome(
            "failed",
            exit_code=job.exit_code,
            error_code="setup_failed",
            error_category="infrastructure",
            error=f"The job's environment or container could not be set up (exit code {SETUP_FAILED_EXIT})",
            details=details,
            error_hint="The job's command did not run: its image, modules or environment could not be set up on "
            "the cluster; the job's stderr log says which.",
        )
    if job.exit_code:
        return Outcome(
            "failed",
            exit_code=job.exit_code,
            error_code="nonzero_exit",
            error_category="user",
            error=f"The job exited with code {job.exit_code}",
            details=details,
            error_hint=f"The job's command exited with code {job.exit_code}; its log shows why.",
        )
    reason = f" ({job.reason})" if job.reason else ""
    return Outcome(
        "failed",
        exit_code=job.exit_code,
        error_code="slurm_failed",
        error_category="infrastructure",
        error=f"Slurm marked the job FAILED{reason} without an exit code",
        details=details,
        error_hint="Slurm failed the job before or after its command ran; the worker's operators should check "
        "the cluster.",
    )


def _timeout(job: SlurmJobState, details: dict[str, Any]) -> Outcome:
    limit = job.time_limit or "unknown"
    return Outcome(
        "failed",
        error_code="timeout",
        error_category="user",
        error=f"The job reached its Slurm time limit ({limit})",
        details=details,
        error_hint=f"The job ran longer than its Slurm time limit ({limit}); ask for more time with "
        "deucalion_options.time.",
    )


def _out_of_memory(job: SlurmJobState, details: dict[str, Any]) -> Outcome:
    return Outcome(
        "failed",
        error_code="oom_killed",
        error_category="user",
        error="The job ran out of memory and was killed",
        details=details,
        error_hint="The job used more memory than it was given; ask for more with deucalion_options.mem.",
    )


def _cancelled(job: SlurmJobState, details: dict[str, Any]) -> Outcome:
    who = f" by uid {job.cancelled_by}" if job.cancelled_by else ""
    # scontrol keeps the pending reason of a job cancelled before it started; "None" says nothing.
    why = f" (reason: {job.reason})" if job.reason else ""
    if job.cancelled_by:
        details["cancelled_by_uid"] = job.cancelled_by
    return Outcome(
        "failed",
        error_code="canceled_externally",
        error_category="infrastructure",
        error=f"The job was cancelled in Slurm{who}, not by this worker{why}",
        details=details,
        error_hint="Someone (the cluster's administrators or the account's owner) cancelled the job in Slurm; "
        "resubmit it if that was not intended.",
    )


_INFRASTRUCTURE = {
    "NODE_FAIL": ("node_fail", "A node of the job failed", "The node running the job failed; resubmit the job."),
    "PREEMPTED": (
        "preempted",
        "The job was preempted by a job of higher priority",
        "A job of higher priority took the job's resources; resubmit it, or use a partition without preemption.",
    ),
    "BOOT_FAIL": (
        "boot_fail",
        "The job's node failed to boot",
        "The node chosen for the job could not be booted; resubmit the job.",
    ),
    "DEADLINE": (
        "deadline",
        "The job reached its deadline before it could finish",
        "The job could not finish before its Slurm deadline; resubmit it without one or with a later one.",
    ),
    "REVOKED": (
        "revoked",
        "The job was revoked (a federated cluster ran it instead)",
        "Slurm revoked the job in favour of another cluster; the worker's operators should check the federation.",
    ),
}


def _infrastructure(job: SlurmJobState, details: dict[str, Any]) -> Outcome:
    code, error, hint = _INFRASTRUCTURE[job.state]
    reason = f" ({job.reason})" if job.reason else ""
    return Outcome(
        "failed",
        error_code=code,
        error_category="infrastructure",
        error=error + reason,
        details=details,
        error_hint=hint,
    )


_TERMINAL = {
    "COMPLETED": _completed,
    "FAILED": _failed,
    "TIMEOUT": _timeout,
    "OUT_OF_MEMORY": _out_of_memory,
    "CANCELLED": _cancelled,
    **dict.fromkeys(_INFRASTRUCTURE, _infrastructure),
}
