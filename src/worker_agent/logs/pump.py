"""The log pump: job output -> Docker's log messages, masked and capped, appended to the job's log file.

Raw input (Docker's live attach stream, or a Slurm job's output files, live or replayed) is cut into messages
by a MessageSplitter per stream; Docker's replay of its log gives one message per frame already (its lost
newlines restored). Both give the same bytes (logs/messages.py), so a log resumed after a restart equals one
written without interruption.

The resume point (`LogPosition`) is the number of messages of each stream in the file and the file's size
then. A new pump cuts the file back to that size (a crash may have left bytes written after the last
checkpoint) and skips that many messages of each stream. Nothing is flushed when a stream merely ends (a cut
attach stream, a dockerd restart): what the splitters and maskers hold stays unwritten, and the next pump
resumes from the checkpoint. Only `finish`, at the job's real end, writes it.

Docker keeps a bounded, rotated copy (DOCKER_LOG_MAX_BYTES). A job that printed more than that while no
worker read it has lost the start of its replay: the last bytes before the resume point (their digest is in
the checkpoint) are then not where the count says. `ReplayShifted` is raised, and `relocate` finds them in
what Docker kept, or, when they are gone too, writes one marker line where the output was lost.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence

from worker_agent.domain import LogPosition
from worker_agent.logs.jobfiles import JobLog
from worker_agent.logs.masking import MIN_SECRET_LENGTH, SECRET_MASK, SecretMasker
from worker_agent.logs.messages import MessageSplitter
from worker_agent.ops import metrics

STDOUT, STDERR = 1, 2
_STREAMS = (STDOUT, STDERR)
_TAIL_BYTES = 64  # what a resume point's digest covers: enough to tell one place in the output from another
LOST_MARKER = (
    "output may be missing here: while no worker read it, the job printed more than Docker keeps of it "
    "(DOCKER_LOG_MAX_BYTES); the log goes on with the oldest output Docker still had"
)


class ReplayShifted(Exception):
    """Docker's replay does not start with the job's first message any more (its copy was rotated)."""


def tail_digest(tail: bytes) -> str:
    return hashlib.blake2b(tail, digest_size=16).hexdigest() if tail else ""


def _roll(tail: bytes, data: bytes) -> bytes:
    """The last _TAIL_BYTES of `tail + data`, without copying a whole 256 KiB frame on the hot path."""
    return (tail + data[-_TAIL_BYTES:])[-_TAIL_BYTES:]


class LogPump:
    def __init__(
        self,
        log: JobLog,
        position: LogPosition,
        raw: bool,
        secrets: Sequence[str] = (),
        max_bytes: int | None = None,
        on_checkpoint: Callable[[LogPosition], None] = lambda position: None,
        checkpoint_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._splitters = {stream: MessageSplitter() for stream in _STREAMS} if raw else None
        self._maskers = {stream: SecretMasker(secrets) for stream in _STREAMS}
        self._skip = {STDOUT: position.stdout_messages, STDERR: position.stderr_messages}
        self._messages = dict(self._skip)
        self._expected = {STDOUT: position.stdout_tail, STDERR: position.stderr_tail}
        self._tails = {stream: b"" for stream in _STREAMS}  # the last bytes of each stream's messages
        self._max_bytes = max_bytes
        self._on_checkpoint = on_checkpoint
        self._checkpoint_seconds = checkpoint_seconds
        self._clock = clock
        self._last_checkpoint = clock()
        size = log.size()
        if size > position.file_size:
            log.truncate(position.file_size)
        self.written = min(size, position.file_size)

    @property
    def position(self) -> LogPosition:
        return LogPosition(
            self._messages[STDOUT],
            self._messages[STDERR],
            self.written,
            tail_digest(self._tails[STDOUT]),
            tail_digest(self._tails[STDERR]),
        )

    @property
    def replay_short(self) -> bool:
        """A whole replay ended before the resume point: Docker no longer has all the file has."""
        return self._splitters is None and any(self._skip[stream] and self._expected[stream] for stream in _STREAMS)

    def pump(self, frames: Iterable[tuple[int, bytes]]) -> None:
        """Consume frames until the stream ends (or is cut: nothing held is written then).

        Raises ReplayShifted when a replay reaches the resume point and the bytes before it differ.
        """
        for stream, frame in frames:
            if self._splitters is not None:
                # Raw input replayed from its start (Slurm's output files) is never rotated: no check.
                data, count, skipped = self._splitters[stream].feed(frame, self._skip[stream])
                self._skip[stream] -= skipped  # raw input replayed from its start: the file has those
            elif self._skip[stream]:
                self._skip[stream] -= 1  # a message the file already has
                self._tails[stream] = _roll(self._tails[stream], frame)
                if not self._skip[stream] and self._expected[stream]:
                    if self._expected[stream] != tail_digest(self._tails[stream]):
                        raise ReplayShifted(f"stream {stream}: the replay does not reach the resume point")
                    self._expected[stream] = ""  # found where the file stopped: the count holds from here
                continue
            else:
                data, count = frame, 1
            if count:
                self._messages[stream] += count
                self._tails[stream] = _roll(self._tails[stream], data)
                self._write(self._maskers[stream].feed(data))
            if self._clock() - self._last_checkpoint >= self._checkpoint_seconds:
                self._checkpoint()

    def finish(self) -> None:
        """The job has ended and every frame was pumped: write what is held, and record it."""
        for stream in _STREAMS:
            if self._splitters is not None:
                data, count = self._splitters[stream].flush()
                self._messages[stream] += count
                self._write(self._maskers[stream].feed(data))
            masker = self._maskers[stream]
            held, tail = masker.held, masker.flush()
            # A held tail is the start of some secret that the job's end cut off. Four bytes or more of it
            # could mean something: mask it; a shorter one is most often an ordinary word's first letters.
            self._write(SECRET_MASK if held >= MIN_SECRET_LENGTH and tail else tail)
        self._log.sync()
        self._on_checkpoint(self.position)

    def relocate(self, frames: Iterable[tuple[int, bytes]]) -> None:
        """After ReplayShifted or a short replay: read Docker's whole copy once more to find where this
        file stopped in it (the last place, before the count, whose last bytes match the digest). Where it is
        no longer there, output between may be lost (how much, nobody counted while the worker was down): one
        marker line says so, and the stream goes on from the oldest message Docker kept. The next `pump` reads
        the replay from its start again."""
        wanted = dict(self._messages)
        seen = {stream: 0 for stream in _STREAMS}
        tails = {stream: b"" for stream in _STREAMS}
        found: dict[int, int | None] = {
            stream: None if self._expected[stream] else wanted[stream] for stream in _STREAMS
        }
        for stream, frame in frames:
            if not self._expected[stream] or seen[stream] >= wanted[stream]:
                continue
            seen[stream] += 1
            tails[stream] = _roll(tails[stream], frame)
            if tail_digest(tails[stream]) == self._expected[stream]:
                found[stream] = seen[stream]
        lost = False
        for stream in _STREAMS:
            place = found[stream]
            lost = lost or (place is None and wanted[stream] > 0)
            self._skip[stream] = self._messages[stream] = place or 0
            self._expected[stream], self._tails[stream] = "", b""
        if lost:
            start = "" if self._log.ends_line() else "\n"
            self._write(f"{start}[job-worker-agent] {LOST_MARKER}\n".encode())

    def _checkpoint(self) -> None:
        # Only where no masker holds anything back: the recorded message counts must match the file exactly.
        # The log reaches the disk first, so that a power cut never leaves a checkpoint vouching for lost bytes.
        if not any(masker.held for masker in self._maskers.values()):
            self._last_checkpoint = self._clock()
            self._log.sync()
            self._on_checkpoint(self.position)

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self._max_bytes is not None:
            room = self._max_bytes - self.written
            if room < 0:  # the marker is already in the file; room == 0 still gets the marker below
                return
            if len(data) > room:
                marker = f"\n[job-worker-agent] log reached {self._max_bytes} bytes; further output dropped\n"
                data = data[:room] + marker.encode()
        self._log.write(data)
        self.written += len(data)
        metrics.LOG_BYTES.inc(len(data))
