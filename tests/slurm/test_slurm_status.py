"""slurm_status: parsers against output captured from a real Slurm 22.05 (fixtures/), and the mapping to the
worker's statuses. sacct output is written by hand (the test cluster has no accounting), in the format of
`sacct -n -P -o JobID,State,ExitCode,Reason`."""

from __future__ import annotations

import pytest
from slurm_support import fixture, fixture_jobs

from worker_agent.executors.slurm_status import (
    SQUEUE_FORMAT,
    Outcome,
    SlurmJobState,
    base_state,
    is_terminal,
    outcome,
    outcome_for_missing,
    parse_exit_code,
    parse_sacct,
    parse_scontrol_fields,
    parse_scontrol_job,
    parse_squeue,
    parse_squeue_line,
    queue_positions,
    sacct_args,
    scontrol_args,
    squeue_args,
)

JOBS = fixture_jobs()


def scontrol(scenario: str) -> SlurmJobState:
    state = parse_scontrol_job(fixture(f"scontrol_{scenario}.txt"))
    assert state is not None
    assert state.job_id == JOBS[scenario]
    return state


def squeue_by_scenario() -> dict[str, SlurmJobState]:
    states = {state.job_id: state for state in parse_squeue(fixture("squeue_all.txt"))}
    return {scenario: states[job_id] for scenario, job_id in JOBS.items() if job_id in states}


# --- scontrol show job -o ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "state", "reason", "exit_code", "signal"),
    [
        ("completed", "COMPLETED", None, 0, 0),
        ("exit3", "FAILED", "NonZeroExitCode", 3, 0),
        ("signal9", "FAILED", "JobLaunchFailure", 0, 9),
        ("launch_failure", "FAILED", "JobLaunchFailure", 0, 53),
        ("timeout", "TIMEOUT", "TimeLimit", 0, 15),
        ("running", "RUNNING", None, 0, 0),
        ("cancelled_running", "CANCELLED", None, 0, 15),
        ("cancelled_pending", "CANCELLED", "JobHeldUser", 0, 0),
        ("term_full_trap", "FAILED", "NonZeroExitCode", 143, 0),
        ("held", "PENDING", "JobHeldUser", 0, 0),
        ("suspended", "SUSPENDED", None, 0, 0),
        ("requeued", "PENDING", "BeginTime", 0, 0),
        ("partition_time_limit", "PENDING", "PartitionTimeLimit", 0, 0),
        ("partition_config", "PENDING", "PartitionConfig", 0, 0),
        ("pending_resources", "PENDING", "Resources", 0, 0),
        ("pending_priority", "PENDING", "Priority", 0, 0),
        ("node_fail", "NODE_FAIL", "NodeDown", 0, 15),
    ],
)
def test_scontrol_fixture(scenario: str, state: str, reason: str | None, exit_code: int, signal: int) -> None:
    job = scontrol(scenario)
    assert (job.state, job.reason, job.exit_code, job.signal) == (state, reason, exit_code, signal)
    assert job.partition == "debug"


def test_scontrol_free_text_values_keep_their_spaces() -> None:
    job = scontrol("free_text")
    assert job.name == "my job name"
    # "Partition=x" inside the comment is not taken for a field: Partition was seen before.
    assert job.comment == "opeva:w 1:j1 a=b Partition=x"
    assert job.partition == "debug"
    assert job.extra["StdErr"].endswith(f"/{JOBS['free_text']}.out")


def test_scontrol_times_limits_and_restarts() -> None:
    timeout = scontrol("timeout")
    assert timeout.time_limit == "00:01:00"  # --time=0:10 became one minute
    assert timeout.start_time is not None and timeout.end_time is not None
    assert (timeout.end_time - timeout.start_time).total_seconds() >= 60
    assert scontrol("requeued").restarts == 1
    held = scontrol("held")
    assert held.start_time is None and held.nodes is None
    assert scontrol("running").nodes is not None


def test_scontrol_unknown_job_is_none() -> None:
    assert parse_scontrol_job(fixture("scontrol_unknown.txt")) is None
    assert parse_scontrol_job("") is None


def test_scontrol_fields_edge_cases() -> None:
    line = (
        "JobId=7 JobName=a b=c JobState=FAILED Reason=Job's account not permitted to use this partition "
        "(debug allows x) Dependency=(null) ExitCode=1:0 TRES=cpu=1,mem=256M Command=/path with space/run.sh "
        "WorkDir=/w Comment=x  y StdErr=/e Power= NewKeyFromLaterSlurm=1"
    )
    fields = parse_scontrol_fields(line)
    assert fields["JobName"] == "a b=c"
    assert fields["Reason"] == "Job's account not permitted to use this partition (debug allows x)"
    assert fields["TRES"] == "cpu=1,mem=256M"
    assert fields["Command"] == "/path with space/run.sh"
    assert fields["Comment"] == "x  y"
    assert fields["Power"] == ""
    # After a non-free-text field any Key= starts a new one, so unknown fields of newer versions are kept.
    assert fields["NewKeyFromLaterSlurm"] == "1"


# --- squeue -----------------------------------------------------------------------------------------------------


def test_squeue_fixture_matches_scontrol() -> None:
    listed = squeue_by_scenario()
    assert set(listed) == set(JOBS) - {"node_fail"}  # node_fail was captured after the listing
    for scenario, job in listed.items():
        detailed = scontrol(scenario)
        assert (job.state, job.reason, job.partition) == (detailed.state, detailed.reason, detailed.partition)
        assert job.exit_code is None  # squeue has no exit code


def test_squeue_free_text_and_unset_fields() -> None:
    listed = squeue_by_scenario()
    assert listed["free_text"].name == "my job name"
    assert listed["free_text"].comment == "opeva:w 1:j1 a=b Partition=x"
    assert listed["completed"].comment is None  # (null)
    assert listed["partition_config"].start_time is None  # N/A
    assert listed["held"].priority == 0
    assert listed["timeout"].time_limit == "1:00"


def test_squeue_queue_positions() -> None:
    listed = squeue_by_scenario()
    in_line = {name: job.queue_position for name, job in listed.items() if job.queue_position is not None}
    # Only jobs waiting in line count, by priority (older first): not held, blocked or requeued-and-waiting ones.
    assert in_line == {"pending_resources": 1, "pending_priority": 2}


def test_squeue_line_with_pipes_in_the_comment() -> None:
    job = parse_squeue_line("5|PENDING|Priority|long|10|1:00:00|N/A|N/A||opeva-j|opeva:w:j|x|y")
    assert job.comment == "opeva:w:j|x|y"
    assert (job.job_id, job.partition, job.priority, job.nodes) == ("5", "long", 10, None)
    with pytest.raises(ValueError, match="fields"):
        parse_squeue_line("5|PENDING")


def test_squeue_unknown_job() -> None:
    assert parse_squeue("slurm_load_jobs error: Invalid job id specified\n") == []
    assert parse_squeue("") == []


def test_queue_positions_per_partition_and_ties() -> None:
    jobs = [
        SlurmJobState("12", "PENDING", reason="Priority", partition="a", priority=5),
        SlurmJobState("11", "PENDING", reason="Priority", partition="a", priority=5),
        SlurmJobState("13", "PENDING", reason="Resources", partition="a", priority=9),
        SlurmJobState("14", "PENDING", reason="Priority", partition="b", priority=1),
        SlurmJobState("15", "RUNNING", partition="a", priority=100),
    ]
    assert queue_positions(jobs) == {"13": 1, "11": 2, "12": 3, "14": 1}


def test_command_lines_use_the_parsed_format() -> None:
    assert squeue_args() == ["squeue", "--noheader", "--states=all", f"--format={SQUEUE_FORMAT}"]
    assert squeue_args(["1", "2"], user="alice")[-2:] == ["--jobs=1,2", "--user=alice"]
    assert scontrol_args("7") == ["scontrol", "show", "job", "--oneliner", "7"]
    assert sacct_args(["7"])[-1] == "--jobs=7"


# --- sacct (hand-written: the test cluster has no accounting) ---------------------------------------------------


def test_sacct_accounting_disabled_fixture() -> None:
    assert parse_sacct(fixture("sacct_accounting_disabled.txt")) == []


def test_sacct_jobs_and_steps() -> None:
    text = (
        "101|COMPLETED|0:0|None\n101.batch|COMPLETED|0:0|\n101.extern|COMPLETED|0:0|\n"
        "102|CANCELLED by 1000|0:15|None\n102.batch|CANCELLED|0:15|\n"
        "103|FAILED|0:9|None\n103.batch|OUT_OF_MEMORY|0:125|\n"
        "104|TIMEOUT|0:0|TimeLimit\n"
    )
    jobs = {job.job_id: job for job in parse_sacct(text)}
    assert set(jobs) == {"101", "102", "103", "104"}
    assert (jobs["101"].state, jobs["101"].exit_code) == ("COMPLETED", 0)
    assert (jobs["102"].state, jobs["102"].cancelled_by, jobs["102"].signal) == ("CANCELLED", "1000", 15)
    assert jobs["103"].state == "OUT_OF_MEMORY"  # the batch step's OOM counts for the job
    assert jobs["104"].reason == "TimeLimit"


# --- small parsers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("3:0", (3, 0)), ("0:15", (0, 15)), ("", (None, None)), ("x:y", (None, None)), ("2", (2, 0))],
)
def test_parse_exit_code(raw: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_exit_code(raw) == expected


def test_base_state() -> None:
    assert base_state("CANCELLED by 0") == "CANCELLED"
    assert base_state("completed") == "COMPLETED"
    assert base_state("RUNNING+") == "RUNNING"
    assert is_terminal("OUT_OF_MEMORY") and not is_terminal("COMPLETING") and not is_terminal("PENDING")


# --- outcome ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "status", "exit_code", "error_code", "category"),
    [
        ("completed", "finished", 0, None, None),
        ("exit3", "failed", 3, "nonzero_exit", "user"),
        ("signal9", "failed", 137, "killed_by_signal", "user"),
        ("launch_failure", "failed", None, "launch_failed", "infrastructure"),
        ("timeout", "failed", None, "timeout", "user"),
        ("running", "running", None, None, None),
        ("suspended", "running", None, None, None),
        ("cancelled_running", "failed", None, "canceled_externally", "infrastructure"),
        ("cancelled_pending", "failed", None, "canceled_externally", "infrastructure"),
        ("term_full_trap", "failed", 143, "nonzero_exit", "user"),
        ("held", "setup", None, None, None),
        ("requeued", "setup", None, None, None),
        ("pending_resources", "setup", None, None, None),
        ("partition_time_limit", "setup", None, None, None),
        ("node_fail", "failed", None, "node_fail", "infrastructure"),
    ],
)
def test_outcome_of_real_states(
    scenario: str, status: str, exit_code: int | None, error_code: str | None, category: str | None
) -> None:
    result = outcome(scontrol(scenario))
    assert (result.status, result.exit_code, result.error_code, result.error_category) == (
        status,
        exit_code,
        error_code,
        category,
    )
    assert result.details["slurm_job_id"] == JOBS[scenario]
    if status == "failed":
        assert result.error and result.error_hint and result.error_hint.endswith(".")


def test_outcome_hints_name_what_to_change() -> None:
    timeout = outcome(scontrol("timeout"))
    assert timeout.error_hint is not None
    assert "00:01:00" in timeout.error_hint and "deucalion_options.time" in timeout.error_hint
    oom = outcome(SlurmJobState("9", "OUT_OF_MEMORY", exit_code=0, signal=125))
    assert (oom.error_code, oom.error_category) == ("oom_killed", "user")
    assert oom.error_hint is not None and "deucalion_options.mem" in oom.error_hint


def test_outcome_pending_details() -> None:
    listed = squeue_by_scenario()
    job = listed["pending_priority"]
    assert job.start_time is not None  # the scheduler's estimate
    waiting = outcome(job)
    assert waiting.status == "setup" and waiting.error_hint is None
    assert waiting.details["queue_position"] == 2
    assert waiting.details["pending_reason"] == "waiting behind jobs of higher priority"
    assert waiting.details["expected_start"] == job.start_time.isoformat()
    blocked = outcome(listed["partition_time_limit"])
    assert blocked.details["blocked"] is True
    assert blocked.error_hint is not None and "deucalion_options" in blocked.error_hint


def test_outcome_completed_from_squeue_has_exit_zero() -> None:
    job = squeue_by_scenario()["completed"]
    assert job.exit_code is None
    expected_details: dict[str, object] = {
        "slurm_job_id": JOBS["completed"],
        "slurm_state": "COMPLETED",
        "partition": "debug",
    }
    expected_details |= {"nodes": job.nodes, "time_limit": "30:00"}
    assert outcome(job) == Outcome("finished", exit_code=0, details=expected_details)


def test_outcome_cancelled_by_whom_from_sacct() -> None:
    (job,) = parse_sacct("102|CANCELLED by 1000|0:15|None\n")
    result = outcome(job)
    assert result.error_code == "canceled_externally"
    assert result.details["cancelled_by_uid"] == "1000"
    assert result.error is not None and "uid 1000" in result.error
    pending = outcome(scontrol("cancelled_pending"))
    assert pending.error is not None and "JobHeldUser" in pending.error


@pytest.mark.parametrize(
    ("state", "error_code"),
    [("PREEMPTED", "preempted"), ("BOOT_FAIL", "boot_fail"), ("DEADLINE", "deadline"), ("NODE_FAIL", "node_fail")],
)
def test_outcome_infrastructure_states(state: str, error_code: str) -> None:
    result = outcome(SlurmJobState("1", state, exit_code=0, signal=0))
    assert (result.status, result.error_code, result.error_category) == ("failed", error_code, "infrastructure")


@pytest.mark.parametrize("state", ["CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "SPECIAL_EXIT"])
def test_outcome_other_waiting_states(state: str) -> None:
    assert outcome(SlurmJobState("1", state)).status == "setup"


@pytest.mark.parametrize("state", ["COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"])
def test_outcome_other_running_states(state: str) -> None:
    assert outcome(SlurmJobState("1", state)).status == "running"


def test_outcome_unknown_state_and_missing_job() -> None:
    strange = outcome(SlurmJobState("1", "WEIRD_NEW_STATE"))
    assert (strange.status, strange.error_code, strange.error_category) == ("failed", "unknown_state", "worker")
    assert strange.error is not None and "WEIRD_NEW_STATE" in strange.error
    lost = outcome_for_missing("42")
    assert (lost.status, lost.error_code, lost.details["slurm_job_id"]) == ("failed", "lost_job", "42")


def test_outcome_failed_without_exit_code() -> None:
    result = outcome(SlurmJobState("1", "FAILED", reason="Prolog", exit_code=0, signal=0))
    assert (result.error_code, result.error_category) == ("slurm_failed", "infrastructure")
    assert result.error is not None and "Prolog" in result.error


def test_outcome_setup_failed_exit_code() -> None:
    result = outcome(SlurmJobState("1", "FAILED", reason="NonZeroExitCode", exit_code=125, signal=0))
    assert (result.status, result.exit_code, result.error_code) == ("failed", 125, "setup_failed")
    assert result.error_category == "infrastructure"
