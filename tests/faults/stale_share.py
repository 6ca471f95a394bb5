"""A share that answers ESTALE on demand, as an NFS mount does when the server lost the file handle.

A FUSE file system (fusepy) passing every call through to a backing directory, run as its own process:

    python stale_share.py BACKING MOUNTPOINT SWITCH

While the file SWITCH exists, every call on the mount fails with ESTALE, served by the kernel like any
other errno (the worker and Docker see a real ESTALE, not a patched Python function).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

from fuse import FUSE, FuseOSError, Operations  # type: ignore[import-untyped]


class StaleShare(Operations):  # type: ignore[misc]
    def __init__(self, backing: str, switch: str) -> None:
        self.backing = backing
        self.switch = switch

    def __call__(self, op: str, path: str, *args: Any) -> Any:
        if os.path.exists(self.switch):
            raise FuseOSError(errno.ESTALE)
        try:
            return super().__call__(op, self.backing + path, *args)
        except OSError as exc:
            raise FuseOSError(exc.errno or errno.EIO) from None

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(path)
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime", "st_ctime")
        return {key: getattr(st, key) for key in keys}

    def statfs(self, path: str) -> dict[str, Any]:
        sv = os.statvfs(path)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_namemax")
        return {key: getattr(sv, key) for key in keys}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(path)]

    def access(self, path: str, amode: int) -> None:
        if not os.access(path, amode):
            raise FuseOSError(errno.EACCES)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(path, mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def rename(self, old: str, new: str) -> None:
        os.rename(old, self.backing + new)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(path, uid, gid)

    def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
        os.utime(path, times)

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT, mode)

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags & ~os.O_APPEND)  # offsets come with each write: the kernel appends

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        os.truncate(path, length)

    def flush(self, path: str, fh: int) -> None:
        pass

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        os.fsync(fh)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)


if __name__ == "__main__":
    backing, mountpoint, switch = sys.argv[1:4]
    FUSE(StaleShare(os.path.realpath(backing), switch), mountpoint, foreground=True, allow_other=True, nothreads=False)
