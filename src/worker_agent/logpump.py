"""The log pump: container output -> readable, masked, capped bytes appended to the job's log file."""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable, Iterable, Sequence

from worker_agent import metrics
from worker_agent.state import LogPosition

STDOUT, STDERR = 1, 2
SECRET_MASK = "***"
# Shorter values would mask ordinary text all over the log.
MIN_SECRET_LENGTH = 4


class SecretMasker:
    """Replaces secret values in a text stream, also when one arrives split across two chunks."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._pending = ""

    @property
    def clean(self) -> bool:
        return not self._pending

    def feed(self, text: str) -> str:
        if not self._secrets:
            return text
        text = self._pending + text
        for secret in self._secrets:
            text = text.replace(secret, SECRET_MASK)
        hold = self._held_tail(text)
        self._pending = text[len(text) - hold :]
        return text[: len(text) - hold]

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text

    def _held_tail(self, text: str) -> int:
        """Length of the longest end of `text` that could be the start of a secret."""
        for size in range(min(len(text), len(self._secrets[0]) - 1), 0, -1):
            tail = text[-size:]
            if any(secret.startswith(tail) for secret in self._secrets):
                return size
        return 0


class _Stream:
    """One container stream: its own UTF-8 decoder and masker, since stdout and stderr interleave."""

    def __init__(self, secrets: Sequence[str]) -> None:
        # backslashreplace: bytes that are not UTF-8 stay visible as \xNN instead of breaking the file.
        self.decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
        self.masker = SecretMasker(secrets)

    @property
    def clean(self) -> bool:
        return not self.decoder.getstate()[0] and self.masker.clean

    def feed(self, data: bytes) -> str:
        return self.masker.feed(self.decoder.decode(data))

    def flush(self) -> str:
        return self.masker.feed(self.decoder.decode(b"", final=True)) + self.masker.flush()


class LogPump:
    """Appends a job's output to its log file and records how far it got.

    `position` says how much of each stream is already in the file. The file is cut back to
    `position.file_size` first (a crash may have left a tail written after the last checkpoint), and
    that many bytes of each stream are skipped, so a resumed pump writes no line twice and loses none.
    """

    def __init__(
        self,
        fd: int,
        position: LogPosition,
        secrets: Sequence[str] = (),
        max_bytes: int | None = None,
        on_checkpoint: Callable[[LogPosition], None] = lambda position: None,
        checkpoint_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fd = fd
        self._skip = {STDOUT: position.stdout, STDERR: position.stderr}
        self._consumed = {STDOUT: position.stdout, STDERR: position.stderr}
        self._streams = {STDOUT: _Stream(secrets), STDERR: _Stream(secrets)}
        self._max_bytes = max_bytes
        self._on_checkpoint = on_checkpoint
        self._checkpoint_seconds = checkpoint_seconds
        self._clock = clock
        self._last_checkpoint = clock()
        size = os.fstat(fd).st_size
        if size > position.file_size:
            os.ftruncate(fd, position.file_size)
        self.written = min(size, position.file_size)
        self.bytes_in = 0

    @property
    def position(self) -> LogPosition:
        return LogPosition(self._consumed[STDOUT], self._consumed[STDERR], self.written)

    def pump(self, frames: Iterable[tuple[int, bytes]]) -> None:
        """Consume frames until the stream ends; then flush what the decoders and maskers still hold."""
        for stream, frame in frames:
            data = self._skip_known(stream, frame)
            if not data:
                continue
            self._consumed[stream] += len(data)
            self.bytes_in += len(data)
            self._write(self._streams[stream].feed(data))
            if self._clock() - self._last_checkpoint >= self._checkpoint_seconds:
                self._checkpoint()
        for pipeline in self._streams.values():
            self._write(pipeline.flush())
        self._on_checkpoint(self.position)

    def _skip_known(self, stream: int, data: bytes) -> bytes:
        skip = self._skip[stream]
        if not skip:
            return data
        self._skip[stream] = max(0, skip - len(data))
        return data[skip:]

    def _checkpoint(self) -> None:
        # Only where nothing is held back: the recorded stream offsets must match the file exactly.
        if all(stream.clean for stream in self._streams.values()):
            self._last_checkpoint = self._clock()
            self._on_checkpoint(self.position)

    def _write(self, text: str) -> None:
        if not text:
            return
        data = text.encode("utf-8", "surrogateescape")
        if self._max_bytes is not None:
            room = self._max_bytes - self.written
            if room < 0:  # the marker is already in the file; room == 0 still gets the marker below
                return
            if len(data) > room:
                marker = f"\n[job-worker-agent] log reached {self._max_bytes} bytes; further output dropped\n"
                data = data[:room] + marker.encode()
        view = memoryview(data)
        while view:
            done = os.write(self._fd, view)
            view = view[done:]
        self.written += len(data)
        metrics.LOG_BYTES.inc(len(data))
