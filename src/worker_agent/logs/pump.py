"""The log pump: job output -> json-file messages, masked and capped, appended to the job's log file.

Raw input (Docker's live attach stream, or a Slurm job's output files, live or replayed) is cut into messages
by a MessageSplitter per stream; Docker's replay of its json-file log gives one message per frame already.
Both give the same bytes (logs/messages.py), so a log resumed after a restart equals one written without
interruption.

The resume point (`LogPosition`) is the number of messages of each stream in the file and the file's size
then. A new pump cuts the file back to that size (a crash may have left bytes written after the last
checkpoint) and skips that many messages of each stream. Nothing is flushed when a stream merely ends (a cut
attach stream, a dockerd restart): what the splitters and maskers hold stays unwritten, and the next pump
resumes from the checkpoint. Only `finish`, at the job's real end, writes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from worker_agent.domain import LogPosition
from worker_agent.logs.jobfiles import JobLog
from worker_agent.logs.masking import MIN_SECRET_LENGTH, SECRET_MASK, SecretMasker
from worker_agent.logs.messages import MessageSplitter
from worker_agent.ops import metrics

STDOUT, STDERR = 1, 2
_STREAMS = (STDOUT, STDERR)


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
        return LogPosition(self._messages[STDOUT], self._messages[STDERR], self.written)

    def pump(self, frames: Iterable[tuple[int, bytes]]) -> None:
        """Consume frames until the stream ends (or is cut: nothing held is written then)."""
        for stream, frame in frames:
            if self._splitters is not None:
                data, count, skipped = self._splitters[stream].feed(frame, self._skip[stream])
                self._skip[stream] -= skipped  # raw input replayed from its start: the file has those
            elif self._skip[stream]:
                self._skip[stream] -= 1  # a message the file already has
                continue
            else:
                data, count = frame, 1
            if count:
                self._messages[stream] += count
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
