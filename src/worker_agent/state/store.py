"""Job records in WORKER_STATE_DIR: which container runs each job and how far its log got."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from worker_agent.domain import JobRecord, LogPosition
from worker_agent.state.atomic import write_json_atomic
from worker_agent.state.outbox import Outbox


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

    def jobs(self) -> list[JobRecord]:
        """Every readable job record."""
        names = sorted(path.stem for path in self._jobs.glob("*.json"))
        return [record for name in names if (record := self.load_job(name)) is not None]

    def load_job(self, job_id: str) -> JobRecord | None:
        try:
            data = json.loads((self._jobs / f"{job_id}.json").read_text(encoding="utf-8"))
            return JobRecord(**{**data, "position": LogPosition(**data["position"])})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def forget_job(self, job_id: str, container_id: str | None = None) -> None:
        """Remove the job's record; with `container_id`, only when the record is that container's (another
        attempt of the job may have written its own since)."""
        if container_id is not None:
            record = self.load_job(job_id)
            if record is not None and record.container_id != container_id:
                return
        (self._jobs / f"{job_id}.json").unlink(missing_ok=True)

    # --- images (IMAGE_PRUNE_KEEP) ---

    def image_used(self, image: str) -> dict[str, float]:
        """Record that `image` was just used; every image's last use by this worker, unix seconds."""
        path = self.root / "images.json"
        try:
            uses = {str(k): float(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            uses = {}
        uses[image] = time.time()
        write_json_atomic(path, uses)
        return uses

    # --- outbox ---

    def outbox(self) -> Outbox:
        return Outbox(self._outbox)
