"""Runtime settings of the dev server and the shared-directory layout helpers."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .protocol import CURRENT, LEGACY, ProtocolVersion

PayloadMode = Literal["legacy", "full"]

DEFAULT_SHARED_DIR = "/opt/opeva_shared_data"
DEFAULT_JOB_IMAGE = "calof/opeva_simulator:latest"
SHARE_MARKER = ".opeva-share"


@dataclass(frozen=True)
class Settings:
    shared_dir: Path
    db_path: Path | None = None
    payload_mode: PayloadMode = "full"
    host_ttl: float = 60.0
    status_ttl: float = 300.0
    offline_grace: float = 120.0
    sweep_interval: float = 5.0
    job_image: str = DEFAULT_JOB_IMAGE
    # When set, the agent API (and GET /status) wants `Authorization: Bearer <token>`, like a real deployment.
    token: str | None = None
    protocol: ProtocolVersion = CURRENT
    # Worker ids allowed to heartbeat (the orchestrator's AVAILABLE_HOSTS); None accepts every worker id.
    hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # argparse does not check environment defaults against its choices: this does.
        if self.protocol not in (CURRENT, LEGACY):
            raise ValueError(f"unknown protocol {self.protocol!r}: use {CURRENT} or {LEGACY}")
        if self.hosts is not None and self.protocol == LEGACY:
            # The 2026-04 contract has no host list: accepting one and ignoring it would hide a mistake.
            raise ValueError(f"a host list only applies to protocol {CURRENT}, not {LEGACY}")

    @property
    def resolved_db_path(self) -> Path:
        if self.db_path is not None:
            return self.db_path
        return self.shared_dir / ".opeva-devserver" / "jobs.sqlite3"


def prepare_shared_dir(shared_dir: Path, now: float | None = None) -> None:
    """Create ``configs/`` and ``jobs/`` and the share marker file if missing."""
    shared_dir.mkdir(parents=True, exist_ok=True)
    (shared_dir / "configs").mkdir(exist_ok=True)
    (shared_dir / "jobs").mkdir(exist_ok=True)
    marker = shared_dir / SHARE_MARKER
    if not marker.exists() and not marker.is_symlink():
        body = json.dumps({"backend": "opeva-devserver", "created_at": time.time() if now is None else now})
        tmp = shared_dir / f".{SHARE_MARKER}.{os.getpid()}.tmp"
        tmp.write_text(body + "\n", encoding="utf-8")
        try:
            # link() fails if another process won the race: keep theirs.
            os.link(tmp, marker)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
