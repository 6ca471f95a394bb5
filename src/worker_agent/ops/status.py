"""`job-worker-agent status`: what this host's worker is doing now, for a person (a table) or a script (--json).

Two sources, both only read: the state dir (job records and the status outbox, there whether or not the worker
runs) and the worker's own endpoint on 127.0.0.1:METRICS_PORT (/readyz and /metrics, only while it runs).
Nothing is created, moved or written: the outbox is read file by file rather than through Outbox.heads, which
moves corrupt entries aside, and StateDir.prepare (which creates folders) is never called.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from worker_agent.config import Settings
from worker_agent.domain import JobRecord, StatusUpdate
from worker_agent.payload import one_line, usable_job_id
from worker_agent.state.store import StateDir

# The endpoint is on this host: a worker that takes longer than this to answer is as good as not answering.
ENDPOINT_TIMEOUT_SECONDS = 2.0

# Metric samples read from /metrics (ops/metrics.py; a unit test checks these names against the registry).
M_LAST_HEARTBEAT = "opeva_worker_last_heartbeat_timestamp_seconds"
M_OUTBOX_DEPTH = "opeva_worker_outbox_depth"
M_DOCKER_UP = "opeva_worker_docker_up"
M_SHARE_HEALTHY = "opeva_worker_share_healthy"
M_ACTIVE_JOBS = "opeva_worker_active_jobs"
M_SLOTS = "opeva_worker_slots"
METRIC_NAMES = (M_LAST_HEARTBEAT, M_OUTBOX_DEPTH, M_DOCKER_UP, M_SHARE_HEALTHY, M_ACTIVE_JOBS, M_SLOTS)


# --- what was found ---


@dataclass(frozen=True)
class PendingStatus:
    """One outbox entry: a status update recorded but not yet acknowledged by the backend."""

    job_id: str
    status: str
    container_name: str | None
    recorded_at: float  # the entry's mtime: it is written once, atomically, when the status is reported


@dataclass(frozen=True)
class OutboxView:
    pending: list[PendingStatus] = field(default_factory=list)  # oldest first, the order of delivery
    corrupt: int = 0  # `*.corrupt` files the worker moved aside: a person should look at them
    unreadable: int = 0  # entries that could not be read or parsed right now (not moved: we only read)


@dataclass(frozen=True)
class StateView:
    exists: bool
    error: str | None
    records: list[JobRecord]
    outbox: OutboxView
    records_unreadable: int = 0


@dataclass(frozen=True)
class WorkerView:
    """What the worker's endpoint answered; `answering` False means the worker is not running (or not here)."""

    answering: bool
    ready: bool = False
    problems: list[str] = field(default_factory=list)
    error: str | None = None  # why the endpoint could not be asked
    samples: dict[str, float] = field(default_factory=dict)  # unlabelled samples of /metrics


@dataclass(frozen=True)
class JobRow:
    """What is shown of one job: chosen fields only, never a whole record or update (they hold attempt tokens)."""

    job_id: str
    recorded: bool  # False: only pending statuses are left of it (it ended, or never started)
    started_at: float | None
    age_seconds: float | None
    log_bytes: int | None
    log_bytes_from: str | None  # "share" (the log file itself) or "record" (last checkpoint in the state dir)
    container_name: str | None
    container_id: str | None
    pending_statuses: list[str]  # oldest first


@dataclass(frozen=True)
class HealthView:
    docker_up: bool | None
    share_healthy: bool | None
    last_heartbeat_age_seconds: float | None  # None: no heartbeat acknowledged yet
    active_jobs: int | None
    slots: int | None
    outbox_depth: int | None


@dataclass(frozen=True)
class Report:
    worker_id: str
    state_dir: str
    metrics_port: int
    worker: WorkerView
    state_exists: bool
    state_error: str | None
    jobs: list[JobRow]
    records_unreadable: int
    outbox_pending: int | None  # None: the state dir could not be read (state_error says why)
    outbox_oldest_age_seconds: float | None
    outbox_corrupt: int
    outbox_unreadable: int
    health: HealthView | None  # None when the worker did not answer: its health is unknown


# --- reading the state dir ---


def read_state(root: Path) -> StateView:
    try:
        os.stat(root)
    except FileNotFoundError:
        return StateView(False, None, [], OutboxView())
    except OSError as exc:
        return _unreadable(root, exc)
    try:
        records, unreadable = read_records(root)
        return StateView(True, None, records, read_outbox(root / "outbox"), unreadable)
    except OSError as exc:  # e.g. run as a user who may not read the worker's state dir
        return _unreadable(root, exc)


def _unreadable(root: Path, exc: OSError) -> StateView:
    return StateView(True, f"cannot read {exc.filename or root}: {exc.strerror or exc}", [], OutboxView())


def _listing(folder: Path) -> list[str]:
    """The names in `folder`, sorted; none when it does not exist. Unlike Path.glob, which answers nothing
    for a folder it may not read, any other error is raised: "no jobs" must never stand for "could not look"."""
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []


def read_records(root: Path) -> tuple[list[JobRecord], int]:
    """The job records, oldest job first, and how many could not be read. The layout `jobs/<job_id>.json`
    is StateDir's (state/store.py)."""
    state, folder = StateDir(root), root / "jobs"
    records: list[JobRecord] = []
    unreadable = 0
    for name in _listing(folder):
        if not name.endswith(".json") or name.startswith("."):  # `.<name>.tmp`: a write in progress
            continue
        record = state.load_job(name.removesuffix(".json"))
        if record is not None:
            records.append(record)
        elif (folder / name).exists():  # not just removed because its job ended: unreadable or corrupt
            unreadable += 1
    return sorted(records, key=lambda record: record.started_at), unreadable


def read_outbox(folder: Path) -> OutboxView:
    """The outbox entries in delivery order: `<sequence>-<job_id>.json`, as Outbox names them (state/outbox.py)."""
    names = _listing(folder)
    pending: list[PendingStatus] = []
    unreadable = 0
    for name in names:
        if not name.endswith(".json") or not name.split("-", 1)[0].isdigit():
            continue
        try:
            pending.append(_pending_status(folder / name))
        except FileNotFoundError:
            continue  # acknowledged (and removed) since the listing
        except (OSError, ValueError, TypeError):
            unreadable += 1
    corrupt = sum(name.endswith(".corrupt") for name in names)
    return OutboxView(pending, corrupt, unreadable)


def _pending_status(path: Path) -> PendingStatus:
    recorded_at = path.stat().st_mtime
    update = StatusUpdate(**json.loads(path.read_text(encoding="utf-8")))
    return PendingStatus(update.job_id, str(update.status), update.container_name, recorded_at)


def log_size(shared_dir: Path, job_id: str) -> int | None:
    """Size of the job's log in the share, None when it cannot be read (share gone, no such file)."""
    if usable_job_id(job_id) is None:
        return None  # never build a path from a name that could leave the share
    try:
        # lstat: a symlink planted in place of the log is not the log (the worker never writes through one).
        info = os.lstat(shared_dir / "jobs" / job_id / "logs" / f"{job_id}.log")
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


# --- asking the worker ---


def ask_worker(port: int, timeout: float = ENDPOINT_TIMEOUT_SECONDS) -> WorkerView:
    if not port:
        return WorkerView(False, error="the endpoint is off (METRICS_PORT=0)")
    base = f"http://127.0.0.1:{port}"
    try:
        # trust_env=False: an HTTP(S)_PROXY in the environment must not carry a loopback request elsewhere.
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            ready = client.get(f"{base}/readyz")
            metrics = client.get(f"{base}/metrics")
    except httpx.HTTPError as exc:
        return WorkerView(False, error=f"metrics endpoint 127.0.0.1:{port} unreachable ({one_line(str(exc))})")
    problems = _readyz_problems(ready)
    return WorkerView(True, ready=not problems, problems=problems, samples=parse_samples(metrics))


def _readyz_problems(response: httpx.Response) -> list[str]:
    """Empty when /readyz said 200; else the worker's own reasons, or what was wrong with the answer."""
    if response.status_code == 200:
        return []
    try:
        problems = response.json().get("problems")
    except (ValueError, AttributeError):
        problems = None
    if isinstance(problems, list) and problems:
        return [one_line(str(problem)) for problem in problems]
    return [f"/readyz answered HTTP {response.status_code} (is this port the worker's?)"]


def parse_samples(response: httpx.Response) -> dict[str, float]:
    """The unlabelled samples of a /metrics answer; empty when it is not the Prometheus text format."""
    if response.status_code != 200:
        return {}
    try:
        families = list(text_string_to_metric_families(response.text))
    except ValueError:
        return {}
    return {sample.name: sample.value for family in families for sample in family.samples if not sample.labels}


# --- putting it together ---


def build_report(settings: Settings, clock: Callable[[], float] = time.time) -> Report:
    state = read_state(settings.state_dir)
    worker = ask_worker(settings.metrics_port)
    now = clock()
    oldest = state.outbox.pending[0].recorded_at if state.outbox.pending else None
    return Report(
        worker_id=settings.worker_id,
        state_dir=str(settings.state_dir),
        metrics_port=settings.metrics_port,
        worker=worker,
        state_exists=state.exists,
        state_error=state.error,
        jobs=job_rows(state, settings.shared_dir, now),
        records_unreadable=state.records_unreadable,
        outbox_pending=None if state.error else len(state.outbox.pending),
        outbox_oldest_age_seconds=None if oldest is None else max(0.0, now - oldest),
        outbox_corrupt=state.outbox.corrupt,
        outbox_unreadable=state.outbox.unreadable,
        health=health_from(worker.samples, now) if worker.answering else None,
    )


def job_rows(state: StateView, shared_dir: Path, now: float) -> list[JobRow]:
    """One row per recorded job, then one per job that only has pending statuses left (it ended or never ran)."""
    pending: dict[str, list[PendingStatus]] = {}
    for entry in state.outbox.pending:
        pending.setdefault(entry.job_id, []).append(entry)
    rows = [_recorded_row(record, pending.pop(record.job_id, []), shared_dir, now) for record in state.records]
    return rows + [_unrecorded_row(job_id, entries, shared_dir) for job_id, entries in pending.items()]


def _recorded_row(record: JobRecord, pending: list[PendingStatus], shared_dir: Path, now: float) -> JobRow:
    size = log_size(shared_dir, record.job_id)
    return JobRow(
        job_id=record.job_id,
        recorded=True,
        started_at=record.started_at,
        age_seconds=max(0.0, now - record.started_at),
        # The share's file is the truth; the record's checkpoint is the fallback when the share is not readable.
        log_bytes=record.position.file_size if size is None else size,
        log_bytes_from="record" if size is None else "share",
        container_name=record.container_name,
        container_id=record.container_id,
        pending_statuses=[entry.status for entry in pending],
    )


def _unrecorded_row(job_id: str, pending: list[PendingStatus], shared_dir: Path) -> JobRow:
    size = log_size(shared_dir, job_id)
    names = [entry.container_name for entry in pending if entry.container_name]
    return JobRow(
        job_id=job_id,
        recorded=False,
        started_at=None,
        age_seconds=None,
        log_bytes=size,
        log_bytes_from=None if size is None else "share",
        container_name=names[-1] if names else None,
        container_id=None,
        pending_statuses=[entry.status for entry in pending],
    )


def health_from(samples: dict[str, float], now: float) -> HealthView:
    def flag(name: str) -> bool | None:
        return None if name not in samples else samples[name] == 1

    def count(name: str) -> int | None:
        return None if name not in samples else int(samples[name])

    # The gauge is 0 until the backend acknowledged a first heartbeat.
    beat = samples.get(M_LAST_HEARTBEAT, 0.0)
    return HealthView(
        docker_up=flag(M_DOCKER_UP),
        share_healthy=flag(M_SHARE_HEALTHY),
        last_heartbeat_age_seconds=max(0.0, now - beat) if beat > 0 else None,
        active_jobs=count(M_ACTIVE_JOBS),
        slots=count(M_SLOTS),
        outbox_depth=count(M_OUTBOX_DEPTH),
    )


# --- showing it ---


def render_json(report: Report) -> str:
    data: dict[str, Any] = asdict(report)
    data["worker"].pop("samples")  # the raw samples are /metrics' business; `health` has what they mean
    return json.dumps(data, indent=2)


def render_text(report: Report) -> str:
    lines = [_headline(report)]
    lines += [f"  why: {problem}" for problem in report.worker.problems]
    lines += _jobs_lines(report)
    lines.append(_outbox_line(report))
    lines.append(_health_line(report.health))
    return "\n".join(lines)


def _headline(report: Report) -> str:
    where = f"worker {report.worker_id} (state {report.state_dir}, metrics :{report.metrics_port})"
    worker = report.worker
    if not worker.answering:
        return f"{where}: not answering - {worker.error}; showing the state dir only"
    verdict = "ready" if worker.ready else "NOT READY"
    health = report.health
    if health is not None and health.active_jobs is not None and health.slots is not None:
        verdict += f", {health.active_jobs} of {health.slots} slot(s) busy"
    return f"{where}: {verdict}"


def _jobs_lines(report: Report) -> list[str]:
    if report.state_error:
        return [f"jobs: unknown - {report.state_error}"]
    if not report.state_exists:
        return [f"jobs: none - {report.state_dir} does not exist (the worker never ran with this WORKER_STATE_DIR)"]
    unreadable = [f"jobs: {report.records_unreadable} record(s) unreadable"] if report.records_unreadable else []
    if not report.jobs:
        return ["jobs: none recorded", *unreadable]
    header = ("JOB", "AGE", "LOG BYTES", "PENDING STATUS", "CONTAINER")
    cells = [header, *(_job_cells(row) for row in report.jobs)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    if any(not row.recorded for row in report.jobs):
        lines.append("(AGE -: no job record left; the job ended or never started, its status is still to deliver)")
    return lines + unreadable


def _job_cells(row: JobRow) -> tuple[str, str, str, str, str]:
    age = "-" if row.age_seconds is None else format_age(row.age_seconds)
    size = "-" if row.log_bytes is None else format_bytes(row.log_bytes)
    if row.log_bytes_from == "record":
        size += " (record)"  # the share's file could not be read: the last checkpoint instead
    return row.job_id, age, size, _pending_cell(row.pending_statuses), row.container_name or "-"


def _pending_cell(statuses: list[str]) -> str:
    # The state dir only keeps statuses not yet acknowledged: what was delivered is not recorded anywhere here.
    if not statuses:
        return "none pending"
    older = len(statuses) - 1
    return statuses[-1] + (f" (+{older} older)" if older else "")


def _outbox_line(report: Report) -> str:
    if report.outbox_pending is None:
        return "outbox: unknown (the state dir could not be read)"
    text = f"outbox: {report.outbox_pending} pending"
    if report.outbox_oldest_age_seconds is not None:
        text += f", oldest {format_age(report.outbox_oldest_age_seconds)} old"
    if report.outbox_unreadable:
        text += f", {report.outbox_unreadable} unreadable"
    if report.outbox_corrupt:
        text += f", {report.outbox_corrupt} corrupt entr{'y' if report.outbox_corrupt == 1 else 'ies'} set aside"
        text += f" ({report.state_dir}/outbox/*.corrupt)"
    return text


def _health_line(health: HealthView | None) -> str:
    if health is None:
        return "health: unknown (the worker is not answering)"
    beat = health.last_heartbeat_age_seconds
    parts = [
        f"docker {_ok(health.docker_up)}",
        f"share {_ok(health.share_healthy)}",
        "no heartbeat acknowledged yet" if beat is None else f"heartbeat {format_age(beat)} ago",
    ]
    return "health: " + ", ".join(parts)


def _ok(value: bool | None) -> str:
    return "unknown" if value is None else ("ok" if value else "DOWN")


def format_age(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def main(settings: Settings, as_json: bool = False) -> int:
    """Print the report; 0 only when the worker answered /readyz with 200."""
    report = build_report(settings)
    print(render_json(report) if as_json else render_text(report), flush=True)
    return 0 if report.worker.answering and report.worker.ready else 1
