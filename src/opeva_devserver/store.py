"""SQLite job store: every state transition, the atomic claim, the staleness sweep, the shared-dir mirror.

All times are unix seconds supplied by the caller (``now``), so tests can drive the store with a fake clock.
Each call opens its own connection; writes run inside ``BEGIN IMMEDIATE`` so that concurrent claims (threads
or processes) are serialised by SQLite itself.
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

log = logging.getLogger(__name__)

STATES: Final = get_args(JobState)
TERMINAL: Final = frozenset({"finished", "failed", "stopped", "canceled"})

# Transitions a worker may report through job-status (CONTRACT.md). Same-status updates are always accepted.
WORKER_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "launching": frozenset(),
    "queued": frozenset(),
    "dispatched": frozenset({"running", "failed", "canceled", "stop_requested", "queued"}),
    "running": frozenset({"finished", "failed", "stop_requested", "stopped", "canceled"}),
    "stop_requested": frozenset({"stopped", "failed", "canceled"}),
    "finished": frozenset(),
    "failed": frozenset(),
    "stopped": frozenset(),
    "canceled": frozenset(),
}

_JSON_COLUMNS: Final = ("command", "volumes", "env", "details", "history")

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


@dataclass(frozen=True)
class NewJob:
    job_id: str
    config_path: str
    job_name: str | None = None
    target_host: str | None = None
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


@dataclass(frozen=True)
class SweepChange:
    job_id: str
    old_status: str
    new_status: str
    reason: str


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _row_to_job(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    job.pop("seq", None)
    for key in _JSON_COLUMNS:
        if job[key] is not None:
            job[key] = json.loads(job[key])
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
    ) -> None:
        self.db_path = db_path
        self.shared_dir = shared_dir
        self.host_ttl = host_ttl
        self.status_ttl = status_ttl
        self.offline_grace = offline_grace
        self._mirror_lock = threading.Lock()
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as conn:
            with contextlib.suppress(sqlite3.DatabaseError):
                conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    # -- plumbing -------------------------------------------------------------------------------------------

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
        assignments = ", ".join(f"{key} = ?" for key in values)
        conn.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*values.values(), row["job_id"]))

    # -- jobs -----------------------------------------------------------------------------------------------

    def create_job(self, job: NewJob, now: float) -> dict[str, Any]:
        history = json.dumps([{"status": "queued", "at": now}])
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO jobs (job_id, job_name, config_path, status, target_host, image, command,"
                " container_name, volumes, env, history, created_at, updated_at, status_updated_at)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.job_id,
                    job.job_name,
                    job.config_path,
                    job.target_host,
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
        return None if row is None else _row_to_job(row)

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
        return [_row_to_job(row) for row in rows]

    def queue(self) -> list[dict[str, Any]]:
        """Queued jobs in hand-out order."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq").fetchall()
        return [_row_to_job(row) for row in rows]

    def claim_next(self, worker_id: str, now: float) -> dict[str, Any] | None:
        """Atomically hand the oldest eligible queued job to ``worker_id`` (or return None)."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT * FROM jobs WHERE status = 'queued' AND (target_host IS NULL OR target_host = ?)"
                " ORDER BY seq LIMIT 1",
                (worker_id,),
            ).fetchone()
            if row is None:
                return None
            self._set_status(
                conn,
                row,
                "dispatched",
                now,
                extra={
                    "worker_id": worker_id,
                    "dispatched_at": now,
                    "exit_code": None,
                    "error": None,
                    "container_id": None,
                },
                note={"worker_id": worker_id},
            )
            job_id: str = row["job_id"]
        self.mirror(job_id)
        claimed = self.get_job(job_id)
        assert claimed is not None
        return claimed

    def report_status(self, report: StatusReport, now: float) -> str:
        """Apply a worker's job-status report; return the new status.

        Raises JobNotFound, or TransitionRejected when the transition is not in the table or the job is
        assigned to another worker.
        """
        with self._tx() as conn:
            row = self._fetch(conn, report.job_id)
            if row is None:
                raise JobNotFound(report.job_id)
            current: str = row["status"]
            owner: str | None = row["worker_id"]
            if owner is not None and owner != report.worker_id:
                raise TransitionRejected(current, f"job {report.job_id} is assigned to worker {owner}")
            if report.status != current and report.status not in WORKER_TRANSITIONS[current]:
                raise TransitionRejected(current, f"transition {current} -> {report.status} is not allowed")
            extra: dict[str, Any] = {}
            if report.status == "queued" and current != "queued":
                extra["worker_id"] = None  # the worker handed the job back
            elif owner is None and report.status != "queued":
                extra["worker_id"] = report.worker_id
            for key in ("container_id", "container_name", "exit_code", "error"):
                value = getattr(report, key)
                if value is not None:
                    extra[key] = value
            if report.details is not None:
                extra["details"] = json.dumps(report.details, sort_keys=True)
            self._set_status(
                conn,
                row,
                report.status,
                now,
                extra=extra,
                note={"worker_id": report.worker_id, "error": report.error, "exit_code": report.exit_code},
            )
        self.mirror(report.job_id)
        return report.status

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

    # -- staleness ------------------------------------------------------------------------------------------

    def sweep(self, now: float, since: float | None = None) -> list[SweepChange]:
        """Apply the staleness rules once.

        ``since`` (the server's start time) caps how old any evidence may look: silence while the server was
        down is not counted against workers.

        1. A worker silent for longer than host_ttl + offline_grace (judged by its last heartbeat, or, for a
           worker that never sent one, by the job's last status change): its running/stop_requested jobs
           become failed (error ``host_offline``), its dispatched jobs go back to queued.
        2. A running or stop_requested job whose status was not refreshed for status_ttl becomes failed
           (error ``stale_status``).
        """
        changes: list[SweepChange] = []
        offline_before = now - (self.host_ttl + self.offline_grace)
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT jobs.*, hosts.last_seen AS host_last_seen FROM jobs"
                " LEFT JOIN hosts ON hosts.worker_id = jobs.worker_id"
                " WHERE jobs.status IN ('dispatched', 'running', 'stop_requested') ORDER BY jobs.seq"
            ).fetchall()
            for row in rows:
                current: str = row["status"]
                last_seen = row["host_last_seen"]
                if last_seen is None:
                    last_seen = row["status_updated_at"]
                status_at: float = row["status_updated_at"]
                if since is not None:
                    last_seen = max(last_seen, since)
                    status_at = max(status_at, since)
                if last_seen < offline_before:
                    if current == "dispatched":
                        self._set_status(
                            conn,
                            row,
                            "queued",
                            now,
                            extra={"worker_id": None, "dispatched_at": None},
                            note={"reason": "host_offline", "worker_id": row["worker_id"]},
                        )
                        changes.append(SweepChange(row["job_id"], current, "queued", "host_offline"))
                    else:
                        self._set_status(
                            conn,
                            row,
                            "failed",
                            now,
                            extra={"error": "host_offline"},
                            note={"error": "host_offline", "worker_id": row["worker_id"]},
                        )
                        changes.append(SweepChange(row["job_id"], current, "failed", "host_offline"))
                elif current != "dispatched" and now - status_at > self.status_ttl:
                    self._set_status(
                        conn,
                        row,
                        "failed",
                        now,
                        extra={"error": "stale_status"},
                        note={"error": "stale_status", "worker_id": row["worker_id"]},
                    )
                    changes.append(SweepChange(row["job_id"], current, "failed", "stale_status"))
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
