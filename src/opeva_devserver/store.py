"""SQLite job store: every state transition, the atomic claim, the staleness sweep, the shared-dir mirror.

All times are unix seconds supplied by the caller (``now``), so tests can drive the store with a fake clock.
Each call opens its own connection; writes run inside ``BEGIN IMMEDIATE`` so that concurrent claims (threads
or processes) are serialised by SQLite itself.

The store speaks one protocol (see protocol.py): in ``2026-04`` it behaves exactly as before protocol 1.0
and hides the columns 1.0 added.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, get_args

from opeva_devserver.models import JobState
from opeva_devserver.protocol import (
    ACTIVE,
    CURRENT,
    LEGACY,
    NOT_STARTED,
    ProtocolVersion,
    advertises_gpu,
    lists_job,
    new_attempt_token,
    token_digest,
    token_matches,
    worker_transitions,
)

log = logging.getLogger(__name__)

STATES: Final = get_args(JobState)
TERMINAL: Final = frozenset({"finished", "failed", "stopped", "canceled"})

_JSON_COLUMNS: Final = ("command", "volumes", "env", "details", "history")

# Columns protocol 1.0 added, created on startup when missing so that an older database keeps working.
_ADDED_COLUMNS: Final = (
    ("attempt_number", "INTEGER NOT NULL DEFAULT 0"),
    ("attempt_fencing_enabled", "INTEGER NOT NULL DEFAULT 0"),
    ("attempt_token_hash", "TEXT"),
    ("preferred_host", "TEXT"),
    ("target_worker_profile", "TEXT"),
    ("requeue_count", "INTEGER NOT NULL DEFAULT 0"),
    ("worker_version", "TEXT"),
    ("error_code", "TEXT"),
    ("error_category", "TEXT"),
    ("error_hint", "TEXT"),
)
# Never leaves the store: not in any answer, not in the job_info.json mirror.
_SECRET_COLUMNS: Final = frozenset({"attempt_token_hash"})
# Runtime facts of one attempt, cleared when an operator requeues the job.
_ATTEMPT_COLUMNS: Final = (
    "worker_id",
    "container_id",
    "exit_code",
    "error",
    "error_code",
    "error_category",
    "error_hint",
    "details",
    "worker_version",
    "dispatched_at",
    "started_at",
    "finished_at",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    job_name TEXT,
    config_path TEXT NOT NULL,
    status TEXT NOT NULL,
    target_host TEXT,
    worker_id TEXT,
    image TEXT,
    command TEXT,
    container_name TEXT,
    volumes TEXT,
    env TEXT,
    container_id TEXT,
    exit_code INTEGER,
    error TEXT,
    details TEXT,
    history TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status_updated_at REAL NOT NULL,
    dispatched_at REAL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs(status, seq);
CREATE TABLE IF NOT EXISTS hosts (
    worker_id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}'
);
"""


class JobNotFound(Exception):
    """No job with that id."""


class TransitionRejected(Exception):
    """The requested change is not allowed from the job's current status."""

    def __init__(self, current: str, detail: str) -> None:
        super().__init__(detail)
        self.current = current
        self.detail = detail


class UnknownStatus(Exception):
    """Protocol 1.0: a worker reported a status that does not exist."""


class StaleAttempt(Exception):
    """Protocol 1.0: a fenced job got a report whose token, attempt number or worker is not the current one."""


@dataclass(frozen=True)
class NewJob:
    job_id: str
    config_path: str
    job_name: str | None = None
    # A job with a target host is bound to it; preferred_host is only echoed to the worker.
    target_host: str | None = None
    target_worker_profile: str | None = None
    image: str | None = None
    command: str | list[str] | None = None
    container_name: str | None = None
    volumes: list[dict[str, str]] | None = None
    env: dict[str, str] | None = None


@dataclass(frozen=True)
class StatusReport:
    job_id: str
    status: str
    worker_id: str
    container_id: str | None = None
    container_name: str | None = None
    exit_code: int | None = None
    error: str | None = None
    details: dict[str, Any] | None = None
    worker_version: str | None = None
    attempt_number: int | None = None
    attempt_token: str | None = None
    error_code: str | None = None
    error_category: str | None = None
    error_hint: str | None = None


@dataclass(frozen=True)
class Claim:
    job: dict[str, Any]
    # The fenced attempt's token in clear: handed to the worker once, never stored.
    attempt_token: str | None = None


@dataclass(frozen=True)
class Requeue:
    force: bool = False
    preferred_host: str | None = None
    require_host: bool | None = None


@dataclass(frozen=True)
class SweepChange:
    job_id: str
    old_status: str
    new_status: str
    reason: str


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _row_to_job(row: sqlite3.Row, hidden: frozenset[str]) -> dict[str, Any]:
    job = dict(row)
    for key in ("seq", *hidden):
        job.pop(key, None)
    for key in _JSON_COLUMNS:
        if job[key] is not None:
            job[key] = json.loads(job[key])
    if "attempt_fencing_enabled" in job:
        job["attempt_fencing_enabled"] = bool(job["attempt_fencing_enabled"])
    return job


class Store:
    def __init__(
        self,
        db_path: Path,
        shared_dir: Path,
        *,
        host_ttl: float = 60.0,
        status_ttl: float = 300.0,
        offline_grace: float = 120.0,
        protocol: ProtocolVersion = CURRENT,
    ) -> None:
        self.db_path = db_path
        self.shared_dir = shared_dir
        self.host_ttl = host_ttl
        self.status_ttl = status_ttl
        self.offline_grace = offline_grace
        self.protocol = protocol
        self._transitions = worker_transitions(protocol)
        hidden = {name for name, _ in _ADDED_COLUMNS} if protocol == LEGACY else set()
        self._hidden = frozenset(hidden | _SECRET_COLUMNS)
        self._mirror_lock = threading.Lock()
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as conn:
            with contextlib.suppress(sqlite3.DatabaseError):
                conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        self._add_missing_columns()

    # -- plumbing -------------------------------------------------------------------------------------------

    def _add_missing_columns(self) -> None:
        # Checked inside the write transaction: two servers starting on one database must not both add a column.
        with self._tx() as conn:
            present = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
            for name, declaration in _ADDED_COLUMNS:
                if name not in present:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=60.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _fetch(conn: sqlite3.Connection, job_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row

    @staticmethod
    def _set_status(
        conn: sqlite3.Connection,
        row: sqlite3.Row,
        new_status: str,
        now: float,
        *,
        extra: dict[str, Any] | None = None,
        note: dict[str, Any] | None = None,
    ) -> None:
        """Write ``new_status`` (and ``extra`` columns) to ``row``'s job; append to history on a change."""
        values: dict[str, Any] = dict(extra or {})
        values["status"] = new_status
        values["updated_at"] = now
        values["status_updated_at"] = now
        if new_status != row["status"]:
            history = json.loads(row["history"] or "[]")
            entry: dict[str, Any] = {"status": new_status, "at": now}
            entry.update({k: v for k, v in (note or {}).items() if v is not None})
            history.append(entry)
            values["history"] = json.dumps(history)
            if new_status == "running" and row["started_at"] is None:
                values["started_at"] = now
            if new_status in TERMINAL:
                values["finished_at"] = now
            if new_status == "queued":
                # Back in the queue, the attempt is over: its token must stop working at once.
                values["attempt_token_hash"] = None
                if row["status"] != "launching":
                    values["requeue_count"] = row["requeue_count"] + 1
        assignments = ", ".join(f"{key} = ?" for key in values)
        conn.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*values.values(), row["job_id"]))

    # -- jobs -----------------------------------------------------------------------------------------------

    def create_job(self, job: NewJob, now: float) -> dict[str, Any]:
        history = json.dumps([{"status": "queued", "at": now}])
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO jobs (job_id, job_name, config_path, status, target_host, preferred_host,"
                " target_worker_profile, image, command, container_name, volumes, env, history, created_at,"
                " updated_at, status_updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.job_id,
                    job.job_name,
                    job.config_path,
                    job.target_host,
                    job.target_host,
                    job.target_worker_profile,
                    job.image,
                    _dumps(job.command),
                    job.container_name,
                    _dumps(job.volumes),
                    _dumps(job.env),
                    history,
                    now,
                    now,
                    now,
                ),
            )
        self.mirror(job.job_id)
        created = self.get_job(job.job_id)
        assert created is not None
        return created

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = self._fetch(conn, job_id)
        return None if row is None else _row_to_job(row, self._hidden)

    def list_jobs(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM jobs"
        params: list[Any] = []
        if status is not None:
            query += " WHERE status = ?"
            params.append(status)
        query += " ORDER BY seq DESC"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self._read() as conn:
            rows = conn.execute(query, params).fetchall()
        return [_row_to_job(row, self._hidden) for row in rows]

    def queue(self) -> list[dict[str, Any]]:
        """Queued jobs in hand-out order."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq").fetchall()
        return [_row_to_job(row, self._hidden) for row in rows]

    def claim_next(self, worker_id: str, now: float, *, fencing: bool = False) -> Claim | None:
        """Atomically hand the oldest eligible queued job to ``worker_id`` as a new attempt (or return None).

        Eligible: not bound to another host; in protocol 1.0 also not fenced unless the worker fences
        (``fencing``) and, for a job with a compute profile, matching what the worker's latest heartbeat says
        about its GPU.
        """
        legacy = self.protocol == LEGACY
        with self._tx() as conn:
            profile = None if legacy else "gpu" if advertises_gpu(self._host_info(conn, worker_id)) else "cpu"
            row = conn.execute(
                "SELECT * FROM jobs WHERE status = 'queued' AND (target_host IS NULL OR target_host = ?)"
                " AND (? OR attempt_fencing_enabled = 0)"
                " AND (? IS NULL OR target_worker_profile IS NULL OR target_worker_profile = ?)"
                " ORDER BY seq LIMIT 1",
                (worker_id, fencing or legacy, profile, profile),
            ).fetchone()
            if row is None:
                return None
            token = new_attempt_token() if fencing else None
            extra: dict[str, Any] = {
                "worker_id": worker_id,
                "dispatched_at": now,
                "exit_code": None,
                "error": None,
                "error_code": None,
                "error_category": None,
                "error_hint": None,
                "container_id": None,
                "attempt_number": row["attempt_number"] + 1,
                "attempt_token_hash": None if token is None else token_digest(token),
            }
            if fencing:
                # Once fenced, always fenced: a legacy worker could not prove it owns a later attempt.
                extra["attempt_fencing_enabled"] = 1
            self._set_status(conn, row, "dispatched", now, extra=extra, note={"worker_id": worker_id})
            job_id: str = row["job_id"]
        self.mirror(job_id)
        claimed = self.get_job(job_id)
        assert claimed is not None
        return Claim(claimed, token)

    def report_status(self, report: StatusReport, now: float) -> str:
        """Apply a worker's job-status report; return the new status.

        Raises JobNotFound; UnknownStatus (protocol 1.0); StaleAttempt for a fenced job when the report is not
        from its current attempt; TransitionRejected when the transition is not in the table or the (unfenced)
        job is assigned to another worker.
        """
        with self._tx() as conn:
            row = self._fetch(conn, report.job_id)
            if row is None:
                raise JobNotFound(report.job_id)
            if report.status not in self._transitions:
                raise UnknownStatus(report.status)
            self._check_sender(row, report)
            current: str = row["status"]
            if report.status != current and report.status not in self._transitions[current]:
                raise TransitionRejected(current, f"transition {current} -> {report.status} is not allowed")
            self._set_status(
                conn,
                row,
                report.status,
                now,
                extra=self._reported_columns(row, report),
                note={"worker_id": report.worker_id, "error": report.error, "exit_code": report.exit_code},
            )
        self.mirror(report.job_id)
        return report.status

    def _check_sender(self, row: sqlite3.Row, report: StatusReport) -> None:
        """Refuse a report that does not come from the job's current attempt (fenced) or worker (legacy)."""
        if self.protocol == CURRENT and row["attempt_fencing_enabled"]:
            fresh = (
                token_matches(row["attempt_token_hash"], report.attempt_token)
                and report.attempt_number == row["attempt_number"]
                and row["worker_id"] is not None
                and report.worker_id == row["worker_id"]
            )
            if not fresh:
                log.warning(
                    "job %s: refused a stale report from %s (attempt %r, current %s)",
                    report.job_id,
                    report.worker_id,
                    report.attempt_number,
                    row["attempt_number"],
                )
                raise StaleAttempt(report.job_id)
            return
        owner: str | None = row["worker_id"]
        if owner is not None and owner != report.worker_id:
            raise TransitionRejected(row["status"], f"job {report.job_id} is assigned to worker {owner}")

    @staticmethod
    def _reported_columns(row: sqlite3.Row, report: StatusReport) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if report.status == "queued" and row["status"] != "queued":
            extra["worker_id"] = None  # the worker handed the job back
        elif row["worker_id"] is None and report.status != "queued":
            extra["worker_id"] = report.worker_id
        reported = (
            "container_id",
            "container_name",
            "exit_code",
            "error",
            "error_code",
            "error_category",
            "error_hint",
            "worker_version",
        )
        for key in reported:
            value = getattr(report, key)
            if value is not None:
                extra[key] = value
        if report.details is not None:
            extra["details"] = json.dumps(report.details, sort_keys=True)
        return extra

    def request_stop(self, job_id: str, now: float) -> str:
        """Cancel a job not yet handed out; ask the worker to stop one that was. Return the new status."""
        with self._tx() as conn:
            row = self._fetch(conn, job_id)
            if row is None:
                raise JobNotFound(job_id)
            current: str = row["status"]
            if current == "stop_requested":
                return current
            if current in TERMINAL:
                raise TransitionRejected(current, f"job is already {current}")
            new_status = "canceled" if current in ("launching", "queued") else "stop_requested"
            self._set_status(conn, row, new_status, now, note={"by": "stop"})
        self.mirror(job_id)
        return new_status

    def requeue(self, job_id: str, now: float, request: Requeue) -> str:
        """Operator requeue: put the job back to ``queued`` so that its next dispatch is a new attempt.

        Without ``force`` a finished job, or one that may be running (setup, running, stop_requested), is
        refused: its worker may still be at work. With it, the old attempt's reports are refused from now on.
        """
        with self._tx() as conn:
            row = self._fetch(conn, job_id)
            if row is None:
                raise JobNotFound(job_id)
            current: str = row["status"]
            if not request.force and current == "finished":
                raise TransitionRejected(current, "a finished job is requeued only with force")
            if not request.force and current in ("setup", "running", "stop_requested"):
                raise TransitionRejected(current, f"job is {current}: stop it first, or requeue with force")
            preferred, bound = _requeue_hosts(row, request)
            extra: dict[str, Any] = dict.fromkeys(_ATTEMPT_COLUMNS)
            extra.update({"preferred_host": preferred, "target_host": bound})
            note = {"by": "requeue", "force": request.force, "worker_id": row["worker_id"]}
            self._set_status(conn, row, "queued", now, extra=extra, note=note)
        self.mirror(job_id)
        return "queued"

    # -- hosts ----------------------------------------------------------------------------------------------

    def heartbeat(self, worker_id: str, info: dict[str, Any], now: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO hosts (worker_id, first_seen, last_seen, info) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(worker_id) DO UPDATE SET last_seen = excluded.last_seen, info = excluded.info",
                (worker_id, now, now, json.dumps(info, sort_keys=True)),
            )

    def hosts(self, now: float) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM hosts ORDER BY worker_id").fetchall()
        return [
            {
                "worker_id": row["worker_id"],
                "last_seen": row["last_seen"],
                "first_seen": row["first_seen"],
                "online": now - row["last_seen"] <= self.host_ttl,
                "info": json.loads(row["info"]),
            }
            for row in rows
        ]

    @staticmethod
    def _host_info(conn: sqlite3.Connection, worker_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT info FROM hosts WHERE worker_id = ?", (worker_id,)).fetchone()
        info = {} if row is None else json.loads(row["info"])
        return info if isinstance(info, dict) else {}

    # -- staleness ------------------------------------------------------------------------------------------

    def sweep(self, now: float, since: float | None = None) -> list[SweepChange]:
        """Apply the staleness rules once.

        ``since`` (the server's start time) caps how old any evidence may look: silence while the server was
        down is not counted against workers.

        1. A worker silent for longer than host_ttl + offline_grace (judged by its last heartbeat, or, for a
           worker that never sent one, by the job's last status change): its running/stop_requested jobs
           become failed (error ``host_offline``), its dispatched (or setup) jobs go back to queued.
        2. A job whose status was not refreshed for status_ttl: running/stop_requested become failed (error
           ``stale_status``). Protocol 1.0 also requeues dispatched/setup jobs, and spares any job that the
           worker's latest heartbeat still lists as active.
        """
        changes: list[SweepChange] = []
        watched = sorted(ACTIVE)
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT jobs.*, hosts.last_seen AS host_last_seen, hosts.info AS host_info FROM jobs"
                " LEFT JOIN hosts ON hosts.worker_id = jobs.worker_id"
                f" WHERE jobs.status IN ({', '.join('?' * len(watched))}) ORDER BY jobs.seq",
                watched,
            ).fetchall()
            for row in rows:
                verdict = self._verdict(row, now, since)
                if verdict is not None:
                    self._apply_verdict(conn, row, now, *verdict)
                    changes.append(SweepChange(row["job_id"], row["status"], *verdict))
        for change in changes:
            log.warning(
                "sweep: job %s %s -> %s (%s)",
                change.job_id,
                change.old_status,
                change.new_status,
                change.reason,
            )
            self.mirror(change.job_id)
        return changes

    def _verdict(self, row: sqlite3.Row, now: float, since: float | None) -> tuple[str, str] | None:
        """(new status, reason) for an active job the sweep must move, or None to leave it alone."""
        current: str = row["status"]
        last_seen: float = row["host_last_seen"] if row["host_last_seen"] is not None else row["status_updated_at"]
        status_at: float = row["status_updated_at"]
        if since is not None:
            last_seen = max(last_seen, since)
            status_at = max(status_at, since)
        give_back = "queued" if current in NOT_STARTED else "failed"
        if last_seen < now - (self.host_ttl + self.offline_grace):
            return give_back, "host_offline"
        if now - status_at <= self.status_ttl:
            return None
        if self.protocol == LEGACY:
            # 2026-04 waits for an online host's worker to start a dispatched job, however long it takes.
            return None if current == "dispatched" else ("failed", "stale_status")
        if self._heartbeat_lists(row):
            return None
        return give_back, "stale_status"

    @staticmethod
    def _heartbeat_lists(row: sqlite3.Row) -> bool:
        """Whether the worker's latest heartbeat (recent: the host is not offline) names this job as active.

        A worker busy pulling an image or running a long step may not refresh the status, but it heartbeats.
        """
        if row["host_info"] is None:
            return False
        info = json.loads(row["host_info"])
        return isinstance(info, dict) and lists_job(info, row["job_id"])

    def _apply_verdict(self, conn: sqlite3.Connection, row: sqlite3.Row, now: float, new: str, reason: str) -> None:
        if new == "queued":
            extra: dict[str, Any] = {"worker_id": None, "dispatched_at": None}
            note = {"reason": reason, "worker_id": row["worker_id"]}
        else:
            extra = {"error": reason}
            note = {"error": reason, "worker_id": row["worker_id"]}
        self._set_status(conn, row, new, now, extra=extra, note=note)

    # -- shared-dir mirror ----------------------------------------------------------------------------------

    def mirror(self, job_id: str) -> None:
        """Write ``jobs/<id>/status.json`` and ``job_info.json`` from the current record. Never raises."""
        try:
            with self._mirror_lock:
                job = self.get_job(job_id)
                if job is not None:
                    self._write_mirror(job)
        except Exception:  # the mirror is a convenience; the database is the truth
            log.exception("could not mirror job %s into the shared dir", job_id)

    def job_dir(self, job_id: str) -> Path | None:
        """The job's folder if it is a real directory inside ``<shared>/jobs`` (created if missing)."""
        jobs_root = self.shared_dir / "jobs"
        jobs_root.mkdir(parents=True, exist_ok=True)
        job_dir = jobs_root / job_id
        if job_dir.is_symlink():
            log.warning("refusing to use %s: it is a symlink", job_dir)
            return None
        job_dir.mkdir(exist_ok=True)
        if job_dir.resolve().parent != jobs_root.resolve():
            log.warning("refusing to use %s: it resolves outside %s", job_dir, jobs_root)
            return None
        return job_dir

    def _write_mirror(self, job: dict[str, Any]) -> None:
        job_dir = self.job_dir(job["job_id"])
        if job_dir is None:
            return
        status = {
            key: job[key]
            for key in (
                "job_id",
                "status",
                "updated_at",
                "status_updated_at",
                "worker_id",
                "exit_code",
                "error",
                "container_id",
                "container_name",
            )
        }
        _atomic_write_json(job_dir, "status.json", status)
        info: dict[str, Any] = {}
        existing = _read_json_object(job_dir / "job_info.json")
        if existing is not None:
            info.update(existing)  # keep keys the worker added
        info.update(job)
        _atomic_write_json(job_dir, "job_info.json", info)


def _requeue_hosts(row: sqlite3.Row, request: Requeue) -> tuple[str | None, str | None]:
    """(preferred host, host the job is bound to) after a requeue.

    Without a new preference the job keeps its old one, else the host of its last attempt; it stays bound to
    a host when it was bound before, unless the request says otherwise.
    """
    if request.require_host is False and request.preferred_host is None:
        return None, None
    preferred: str | None = request.preferred_host or row["preferred_host"] or row["target_host"] or row["worker_id"]
    bound = request.require_host if request.require_host is not None else row["target_host"] is not None
    return preferred, preferred if bound else None


def _read_json_object(path: Path) -> dict[str, Any] | None:
    if path.is_symlink() or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _atomic_write_json(directory: Path, name: str, value: Any) -> None:
    """Write ``directory/name`` via a fresh temp file and rename.

    The rename replaces a symlink at ``name`` rather than writing through it.
    """
    tmp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
