"""Files of one job inside the share, opened so that no symlink can redirect a write out of the job folder."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _subdir(parent_fd: int, name: str) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    # O_NOFOLLOW: a symlink planted in place of the folder fails here instead of being followed.
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


def open_job_log(shared_dir: Path, job_id: str) -> int:
    """Open (creating folders and file) `<shared>/jobs/<id>/logs/<id>.log` for appending; return the fd.

    `job_id` must already be checked (payload.JOB_ID_PATTERN). Raises OSError when any part of the
    path is a symlink or not what it should be.
    """
    fds = [os.open(shared_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    try:
        for name in ("jobs", job_id, "logs"):
            fds.append(_subdir(fds[-1], name))
        # Read and write: JobLog.ends_line reads the last byte back.
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(f"{job_id}.log", flags, 0o644, dir_fd=fds[-1])
    finally:
        for opened in fds:
            os.close(opened)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"jobs/{job_id}/logs/{job_id}.log is not a regular file")
    os.set_blocking(fd, True)
    return fd


class LogClosed(OSError):
    """The job log was closed while a pump still wanted to write."""


class JobLog:
    """One job's log file, opened once for the job's whole life and written only through this object.

    `close` and `write` share a lock, so a pump thread that is still running when the job is detached
    can never write into a file descriptor number the process has reused for another file.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, shared_dir: Path, job_id: str) -> JobLog:
        return cls(open_job_log(shared_dir, job_id))

    def size(self) -> int:
        with self._lock:
            return 0 if self._closed else os.fstat(self._fd).st_size

    def truncate(self, size: int) -> None:
        with self._lock:
            if not self._closed:
                os.ftruncate(self._fd, size)

    def write(self, data: bytes) -> None:
        """Append all of `data`; raises OSError when the file cannot be written, LogClosed once closed."""
        view = memoryview(data)
        with self._lock:
            self._check_open()
            while view:
                view = view[os.write(self._fd, view) :]

    def sync(self) -> None:
        """Make what was written durable (before a checkpoint vouches for it); LogClosed once closed."""
        with self._lock:
            self._check_open()
            os.fsync(self._fd)

    def _check_open(self) -> None:
        # A pump still running after its job was detached must stop here: writing nothing but going on
        # would let it checkpoint bytes that never reached the file.
        if self._closed:
            raise LogClosed("the job log was closed (job detached or handed over)")

    def ends_line(self) -> bool:
        """True when the file is empty or ends with a newline: a line of the worker's own can start here."""
        with self._lock:
            self._check_open()
            size = os.fstat(self._fd).st_size
            return size == 0 or os.pread(self._fd, 1, size - 1) == b"\n"

    def note(self, line: str) -> None:
        """A line from the worker itself (e.g. image pull progress), marked as such in the job log."""
        self.write(f"[job-worker-agent] {line}\n".encode())

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                # An NFS close can report a failed write-back (ESTALE, EIO); the descriptor is released anyway,
                # and what reached the file is what the checkpoints vouch for.
                with contextlib.suppress(OSError):
                    os.close(self._fd)
