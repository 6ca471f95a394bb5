"""Durable local state: the status outbox and how far each job's log got, kept across worker restarts."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worker_agent.backend import StatusUpdate


@dataclass
class LogPosition:
    """Bytes of each container stream already in the log file, and the file's size at that moment."""

    stdout: int = 0
    stderr: int = 0
    file_size: int = 0


@dataclass
class JobRecord:
    job_id: str
    container_id: str
    container_name: str
    position: LogPosition = field(default_factory=LogPosition)
    started_at: float = field(default_factory=time.time)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write-then-rename with fsync: a crash leaves either the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._jobs = root / "jobs"
        self._outbox = root / "outbox"

    def prepare(self) -> None:
        """Create the directories and prove they are writable; raises OSError otherwise."""
        for folder in (self._jobs, self._outbox):
            folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / "probe.json", {"at": time.time()})

    # --- job records ---

    def save_job(self, record: JobRecord) -> None:
        write_json_atomic(self._jobs / f"{record.job_id}.json", asdict(record))

    def load_job(self, job_id: str) -> JobRecord | None:
        try:
            data = json.loads((self._jobs / f"{job_id}.json").read_text(encoding="utf-8"))
            return JobRecord(**{**data, "position": LogPosition(**data["position"])})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def forget_job(self, job_id: str) -> None:
        (self._jobs / f"{job_id}.json").unlink(missing_ok=True)

    # --- outbox ---

    def outbox(self) -> Outbox:
        return Outbox(self._outbox)


class Outbox:
    """A FIFO of status updates on disk: written before the first send, removed once acknowledged."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._lock = threading.Lock()
        self._seq = max((int(p.name.split("-", 1)[0]) for p in self._entries()), default=0)
        self.changed = threading.Event()

    def _entries(self) -> list[Path]:
        return sorted(p for p in self._folder.glob("*.json") if p.name.split("-", 1)[0].isdigit())

    def put(self, update: StatusUpdate) -> None:
        with self._lock:
            self._seq += 1
            write_json_atomic(self._folder / f"{self._seq:012d}-{update.job_id}.json", asdict(update))
        self.changed.set()

    def peek(self) -> tuple[Path, StatusUpdate] | None:
        """The oldest update not yet acknowledged. A corrupt entry is dropped rather than blocking all."""
        for path in self._entries():
            try:
                return path, StatusUpdate(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                path.unlink(missing_ok=True)
        return None

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def depth(self) -> int:
        return len(self._entries())
