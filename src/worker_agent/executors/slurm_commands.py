"""Slurm's commands, and the job files, on the cluster: run on this host, or on a login node over SSH.

Over SSH every call goes through one multiplexed OpenSSH connection (ControlMaster), so a poll costs a
round trip, not a handshake. Host keys are always checked (BatchMode, StrictHostKeyChecking): the worker
never answers a prompt and never trusts a new key.

Errors: a connection failure (ssh exit 255), a missing command, a timeout or an unreachable slurmctld raise
ExecutorUnavailable (an outage: retry later); Slurm refusing something raises ExecutorError with its message.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from worker_agent.executors.base import ExecutorError, ExecutorUnavailable
from worker_agent.executors.slurm_settings import SlurmSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

# What Slurm's commands print when slurmctld cannot be reached (or is failing over): an outage, not a refusal.
OUTAGE_MESSAGES = (
    "Unable to contact slurm controller",
    "Socket timed out on send/recv operation",
    "Zero Bytes were transmitted or received",
    "Slurm backup controller in standby mode",
)
_SSH_FAILED = 255
_NOT_FOUND = 127
# sun_path holds 108 bytes; ssh adds '/s-', the 40-character %C hash and a 17-character suffix while it binds.
_MAX_CONTROL_DIR = 45
COPY_ATTEMPTS = 3
COPY_RETRY_DELAY = 2.0  # seconds, times the attempt's number

# Prints, for each (path, offset) pair, how many bytes follow (at most $1) and then those bytes: both output
# files of a job in one round trip. `stat` first, so a file growing meanwhile cannot make the count wrong.
_READ_SCRIPT = """
limit=$1; shift
while [ "$#" -ge 2 ]; do
    size=$(stat -c %s -- "$1" 2>/dev/null || echo 0)
    count=$((size - $2))
    [ "$count" -lt 0 ] && count=0
    [ "$count" -gt "$limit" ] && count=$limit
    echo "$count"
    [ "$count" -gt 0 ] && tail -c +"$(($2 + 1))" -- "$1" | head -c "$count"
    shift 2
done
exit 0
"""
# Writes stdin to $1 with mode $2, atomically: a reader never sees half a script.
_WRITE_SCRIPT = 'umask 077 && cat >"$1.tmp" && chmod "$2" "$1.tmp" && mv -f "$1.tmp" "$1"'
_UNPACK_SCRIPT = 'mkdir -p -- "$1" && exec tar -x -f - --no-same-owner -C "$1"'
# A tar of those of $2... that exist under $1 (nothing at all when none does).
_PACK_SCRIPT = """
root=$1; shift
[ -d "$root" ] || { echo "$root is not a directory" >&2; exit 1; }
count=$#
while [ "$count" -gt 0 ]; do
    [ -e "$root/$1" ] && set -- "$@" "$1"
    shift
    count=$((count - 1))
done
[ "$#" -gt 0 ] || exit 0
exec tar -c -f - -C "$root" -- "$@"
"""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def control_dir(preferred: Path) -> Path:
    """Where ssh's control sockets go: `preferred` when its path is short enough for a socket, else a private
    directory in /tmp. Never a shared one: ControlMaster=auto would use a socket someone else put there."""
    if len(str(preferred)) <= _MAX_CONTROL_DIR and "%" not in str(preferred):
        preferred.mkdir(mode=0o700, parents=True, exist_ok=True)
        return preferred
    fallback = Path(tempfile.gettempdir()) / f"opeva-ssh-{os.getuid()}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    info = fallback.lstat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or fallback.is_symlink():
        raise ExecutorUnavailable(f"{fallback} is not a private directory of this user: remove it")
    return fallback


class Cluster:
    """Commands and files on the cluster. Local when settings.ssh_host is empty."""

    def __init__(self, settings: SlurmSettings, sockets: Path) -> None:
        self._settings = settings
        self._sockets = sockets
        self.where = settings.ssh_host or "this host"

    @property
    def local(self) -> bool:
        return self._settings.local

    # --- commands -------------------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        stdin: bytes | IO[bytes] | None = None,
        stdout: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Run argv on the cluster; any exit code is returned, but a failed connection, a missing command or
        a timeout raises ExecutorUnavailable."""
        timeout = timeout or self._settings.command_timeout
        command = list(argv) if self.local else self.ssh_argv(shlex.join(argv), timeout)
        data, source = (stdin, None) if isinstance(stdin, bytes) else (None, stdin or subprocess.DEVNULL)
        try:
            proc = subprocess.run(
                command,
                input=data,
                stdin=source,
                stdout=stdout or subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise ExecutorUnavailable(f"{command[0]} is not installed on this host") from None
        except subprocess.TimeoutExpired:
            raise ExecutorUnavailable(f"{argv[0]} on {self.where} did not answer within {timeout:g}s") from None
        except OSError as exc:
            raise ExecutorUnavailable(f"{command[0]}: {exc}") from None
        stderr = proc.stderr.decode(errors="replace").strip()
        if not self.local and proc.returncode == _SSH_FAILED:
            raise ExecutorUnavailable(f"ssh to {self.where} failed: {stderr or 'exit code 255'}")
        if proc.returncode == _NOT_FOUND:
            raise ExecutorUnavailable(f"{argv[0]} is not installed on {self.where}: {stderr}")
        return Result(proc.returncode, proc.stdout or b"", stderr)

    def slurm(self, argv: Sequence[str], accept: Iterable[str] = ()) -> str:
        """A Slurm command's output. ExecutorUnavailable when slurmctld cannot be reached; ExecutorError with
        Slurm's message when it fails, unless its message holds one of `accept` (then its output is returned)."""
        result = self.run(argv)
        message = result.stderr or result.text.strip()
        if any(outage in message for outage in OUTAGE_MESSAGES):
            raise ExecutorUnavailable(f"{argv[0]}: {message}")
        if result.returncode == 0 or any(expected in message for expected in accept):
            return result.text
        raise ExecutorError(f"{argv[0]} failed: {message or f'exit code {result.returncode}'}")

    def ssh_argv(self, command: str, timeout: float) -> list[str]:
        return ["ssh", *self._ssh_options(timeout), "--", self._settings.ssh_host, command]

    def _ssh_options(self, timeout: float) -> list[str]:
        settings = self._settings
        options = {
            "BatchMode": "yes",
            "StrictHostKeyChecking": "yes",
            "ConnectTimeout": str(max(1, round(min(timeout, 30)))),
            # A dead network shows within ~45 s even on a session that only waits.
            "ServerAliveInterval": "15",
            "ServerAliveCountMax": "3",
            "ControlMaster": "auto",
            "ControlPath": f"{self._sockets}/s-%C",
            "ControlPersist": "300",
        }
        if settings.ssh_known_hosts:
            options["UserKnownHostsFile"] = settings.ssh_known_hosts
        argv = ["-p", str(settings.ssh_port)]
        for name, value in options.items():
            argv += ["-o", f"{name}={value}"]
        if settings.ssh_key:
            argv += ["-i", settings.ssh_key, "-o", "IdentitiesOnly=yes"]
        if settings.ssh_user:
            argv += ["-l", settings.ssh_user]
        return argv

    def close(self) -> None:
        """End the shared SSH connection (it would end by itself ControlPersist seconds after its last use)."""
        if not self.local:
            subprocess.run(
                ["ssh", *self._ssh_options(10), "-O", "exit", self._settings.ssh_host],
                capture_output=True,
                timeout=10,
                check=False,
            )

    # --- files ----------------------------------------------------------------------------------------------

    def home(self) -> str:
        if self.local:
            return str(Path.home())
        return self._checked(["sh", "-c", 'printf %s "$HOME"'], "read $HOME").text

    def make_dir(self, path: str) -> None:
        if self.local:
            os.makedirs(path, mode=0o700, exist_ok=True)
        else:
            self._checked(["mkdir", "-p", "-m", "700", "--", path], f"create {path}")

    def remove_tree(self, path: str) -> None:
        if self.local:
            shutil.rmtree(path, ignore_errors=True)
        else:
            self._checked(["rm", "-rf", "--", path], f"remove {path}")

    def exists(self, path: str) -> bool:
        if self.local:
            return os.path.lexists(path)
        return self.run(["test", "-e", path]).returncode == 0

    def read_file(self, path: str) -> bytes | None:
        """A whole (small) file; None when it does not exist."""
        if self.local:
            try:
                return Path(path).read_bytes()
            except FileNotFoundError:
                return None
        result = self.run(["cat", "--", path])
        return result.stdout if result.returncode == 0 else None

    def write_file(self, path: str, data: bytes, mode: int) -> None:
        if not self.local:
            self._checked(["sh", "-c", _WRITE_SCRIPT, "sh", path, f"{mode:o}"], f"write {path}", stdin=data)
            return
        temporary = f"{path}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)  # the umask may have taken bits away
            file.write(data)
        os.replace(temporary, path)

    def read_from(self, files: Sequence[tuple[str, int]], limit: int) -> list[bytes]:
        """For each (path, offset): up to `limit` bytes of the file from that byte on (b"" for a missing file)."""
        if self.local:
            return [_read_local(path, offset, limit) for path, offset in files]
        argv = ["sh", "-c", _READ_SCRIPT, "sh", str(limit)]
        for path, offset in files:
            argv += [path, str(offset)]
        return _split_chunks(self._checked(argv, "read the job's output").stdout, len(files))

    # --- copies (SLURM_STAGING=copy) ------------------------------------------------------------------------

    def send_tree(self, local_root: Path, paths: Sequence[str], remote_root: str, skip: Callable[[str], bool]) -> None:
        """Copy `paths` (relative to local_root) to the same places under remote_root, retrying."""

        def attempt() -> None:
            with tempfile.TemporaryFile() as archive:
                with tarfile.open(fileobj=archive, mode="w") as tar:
                    for path in paths:
                        tar.add(local_root / path, arcname=path, filter=lambda info: None if skip(info.name) else info)
                archive.seek(0)
                argv = ["sh", "-c", _UNPACK_SCRIPT, "sh", remote_root]
                self._checked(argv, "copy files in", stdin=archive, timeout=self._settings.copy_timeout)

        _retry(attempt, f"copying {', '.join(paths)} to {self.where}")

    def fetch_tree(self, remote_root: str, paths: Sequence[str], local_root: Path) -> None:
        """Copy those of `paths` (relative to remote_root) that exist to the same places under local_root."""

        def attempt() -> None:
            with tempfile.TemporaryFile() as archive:
                argv = ["sh", "-c", _PACK_SCRIPT, "sh", remote_root, *paths]
                self._checked(argv, "copy files out", stdout=archive, timeout=self._settings.copy_timeout)
                if archive.tell() == 0:
                    return
                archive.seek(0)
                with tarfile.open(fileobj=archive, mode="r:") as tar:
                    wanted = [m for m in tar.getmembers() if any(_within(m.name, path) for path in paths)]
                    # The "data" filter refuses absolute paths, '..', links leaving the target and device files.
                    tar.extractall(local_root, members=wanted, filter="data")

        _retry(attempt, f"copying {', '.join(paths)} from {self.where}")

    def _checked(
        self,
        argv: Sequence[str],
        action: str,
        stdin: bytes | IO[bytes] | None = None,
        stdout: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> Result:
        result = self.run(argv, stdin=stdin, stdout=stdout, timeout=timeout)
        if result.returncode != 0:
            raise ExecutorError(f"{action} on {self.where}: {result.stderr or f'exit code {result.returncode}'}")
        return result


def _read_local(path: str, offset: int, limit: int) -> bytes:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read(limit)
    except FileNotFoundError:
        return b""


def _split_chunks(data: bytes, count: int) -> list[bytes]:
    """Undo _READ_SCRIPT's framing: `<n>\\n<n bytes>` per file."""
    chunks = []
    position = 0
    for _ in range(count):
        end = data.find(b"\n", position)
        size = int(data[position:end]) if end > position and data[position:end].isdigit() else -1
        chunk = data[end + 1 : end + 1 + size]
        if size < 0 or len(chunk) != size:
            raise ExecutorError(f"reading the job's output: unexpected answer {data[position : position + 40]!r}")
        chunks.append(chunk)
        position = end + 1 + size
    return chunks


def _within(name: str, path: str) -> bool:
    return name == path or name.startswith(path.rstrip("/") + "/")


def _retry(action: Callable[[], T], what: str) -> T:
    """Copies cross networks and shared file systems: retry a few times before giving up."""
    for attempt in range(1, COPY_ATTEMPTS + 1):
        try:
            return action()
        except (ExecutorError, ExecutorUnavailable, OSError, tarfile.TarError) as exc:
            if attempt == COPY_ATTEMPTS:
                raise ExecutorError(f"{what} failed {COPY_ATTEMPTS} times: {exc}") from None
            log.warning("%s failed (attempt %d of %d): %s", what, attempt, COPY_ATTEMPTS, exc)
            time.sleep(COPY_RETRY_DELAY * attempt)
    raise AssertionError("unreachable")
