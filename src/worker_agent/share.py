"""The share guard: is the shared directory really there, and writable, before a job is taken?"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from worker_agent import defaults


def share_problem(shared_dir: Path, check: str) -> str | None:
    """None when the share is usable; otherwise a one-line reason for the log and the heartbeat.

    Any error the share answers (an NFS mount gives ESTALE, EIO or EACCES) means "unavailable": the
    worker waits and says why, it never crashes on it.
    """
    try:
        return _problem(shared_dir, check)
    except OSError as exc:
        return f"{shared_dir} is unavailable: {os_error(exc)}"


def os_error(error: OSError) -> str:
    """An error from the share, with its errno's name (ESTALE, EIO...) for whoever reads the heartbeat."""
    return f"{error.strerror or error} ({errno.errorcode.get(error.errno or 0, '?')})"


def _problem(shared_dir: Path, check: str) -> str | None:
    if not shared_dir.is_dir():
        return f"{shared_dir} does not exist or is not a directory"
    if check == "mountpoint" and not os.path.ismount(shared_dir):
        return f"{shared_dir} is not a mount point (is the share mounted?)"
    if check == "marker" and not (shared_dir / defaults.SHARE_MARKER).is_file():
        return f"{shared_dir}/{defaults.SHARE_MARKER} is missing (is the share mounted?)"
    probe = shared_dir / "jobs" / f".probe-{os.getpid()}"
    try:
        probe.parent.mkdir(exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"{shared_dir} is not writable: {os_error(exc)}"
    return None
