"""The status outbox: every status update is on disk before the first send, and stays until acknowledged."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import asdict
from pathlib import Path

from worker_agent.domain import StatusUpdate
from worker_agent.state.atomic import write_json_atomic

log = logging.getLogger(__name__)


class Outbox:
    """Status updates on disk, FIFO per job: written before the first send, removed once acknowledged."""

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

    def heads(self) -> list[tuple[Path, StatusUpdate]]:
        """The oldest update of each job not yet acknowledged, oldest first; raises OSError when one cannot be
        read now (retry later).

        The order that matters is within one job (its `running` before its end): a job's later updates wait
        for its oldest, but jobs need not wait for each other. Only each job's first entry is read.
        """
        heads: dict[str, tuple[Path, StatusUpdate]] = {}
        for path in self._entries():
            job_id = path.name.split("-", 1)[1].removesuffix(".json")
            if job_id not in heads and (update := self._read(path)) is not None:
                heads[job_id] = (path, update)
        return list(heads.values())

    def _read(self, path: Path) -> StatusUpdate | None:
        """The update in `path`; None when it is gone or corrupt. A read that fails raises OSError (retry later).

        Only an entry that was read whole and does not parse is corrupt: it is moved aside (`*.corrupt`,
        for a person to look at) so that it does not block the others. Nothing is ever deleted unsent.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None  # acknowledged or dropped (drop_attempt) since the folder was listed
        try:
            return StatusUpdate(**json.loads(text))
        except (ValueError, TypeError):
            log.error("outbox entry %s is corrupt; moved aside to %s.corrupt", path.name, path.name)
            path.replace(path.with_name(path.name + ".corrupt"))
            return None

    def drop_attempt(self, job_id: str, attempt_number: int | None) -> int:
        """Remove the pending updates of one attempt of a job (it is no longer this worker's); how many."""
        dropped = 0
        with self._lock:
            for path in self._entries():
                if not path.name.endswith(f"-{job_id}.json"):
                    continue
                with contextlib.suppress(OSError, ValueError):
                    entry = json.loads(path.read_text(encoding="utf-8"))
                    if (entry.get("job_id"), entry.get("attempt_number")) == (job_id, attempt_number):
                        path.unlink()
                        dropped += 1
        return dropped

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def depth(self) -> int:
        return len(self._entries())
