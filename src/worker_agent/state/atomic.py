"""Crash-safe file writes for the state directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write-then-rename with fsync of the file and then of its folder: a crash or a power cut leaves either
    the old file or the new one, never half, and never loses the rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    # 0600: job records and outbox entries hold attempt tokens.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
