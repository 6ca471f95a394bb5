"""Host figures for the heartbeat: what the backend's hosts view shows about this machine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import psutil


def host_info(shared_dir: Path) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "load_avg": [round(value, 2) for value in os.getloadavg()],
        "memory_total_bytes": memory.total,
        "memory_available_bytes": memory.available,
    }
    try:
        info["shared_free_bytes"] = shutil.disk_usage(shared_dir).free
    except OSError:
        info["shared_free_bytes"] = None
    return info
