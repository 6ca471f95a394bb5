"""Job output as log messages, exactly the way Docker's log copier cuts it.

The live log comes from the attach stream (raw bytes, cut anywhere); after a restart the worker catches up
from the container's own log (Docker's `local` driver), which replays one message per frame. For the two to
give the same bytes, the live path cuts its raw bytes the way Docker's copier does (docs/logs.md):

- a message is one line with its newline, or 16 KiB of a longer line (the copier's buffer), or what is left
  when the stream ends;
- the last message of a line longer than 16 KiB always ends with a newline. dockerd 20.10's replay drops that
  newline, and where such a line ends the output it cannot tell whether the job printed one; both paths
  therefore write one (`restore_newlines` on the replay, `MessageSplitter.flush` on the live path).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

# Docker's log copier buffer (daemon/logger/copier.go): a longer line is stored in pieces of this size.
MESSAGE_BYTES = 16 * 1024


def count_messages(whole: bytes) -> int:
    """How many messages `whole` holds: one per line, plus one per full 16 KiB piece of any line."""
    lines = whole.count(b"\n")
    if len(whole) - lines < MESSAGE_BYTES:  # no line can be long enough to be cut
        return lines
    return lines + sum(len(part) // MESSAGE_BYTES for part in whole.split(b"\n"))


class MessageSplitter:
    """Raw bytes of one stream in, complete messages out; the incomplete last message is held."""

    def __init__(self) -> None:
        self._pending = b""  # the start of the current message, not complete yet
        self._long = False  # the current line has had a 16 KiB piece already

    @property
    def held(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes, skip: int = 0) -> tuple[bytes, int, int]:
        """The messages that `data` completes, joined, how many they are, and how many of the first ones were
        dropped because the file has them already (at most `skip`)."""
        data = self._pending + data if self._pending else data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            self._long = False  # the held rest starts a new line
        if len(rest) >= MESSAGE_BYTES:  # a line longer than Docker's buffer: its full pieces are messages
            rest = rest[len(rest) // MESSAGE_BYTES * MESSAGE_BYTES :]
            self._long = True
        whole = data[: len(data) - len(rest)]
        self._pending = rest
        skipped = 0
        if skip and whole:
            messages = split_messages(whole)
            skipped = min(skip, len(messages))
            whole = b"".join(messages[skipped:])  # starts on a message boundary, so pieces stay aligned
        return whole, count_messages(whole), skipped

    def flush(self) -> tuple[bytes, int]:
        """The stream really ended: what is left is a last message of its own (with a newline when it ends
        a line longer than 16 KiB, as the replay gives it)."""
        message, self._pending = self._pending, b""
        if message and self._long:
            message += b"\n"
        return message, 1 if message else 0


def restore_newlines(frames: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """Docker's replay, one frame per message, with the newline back at the end of each line longer than
    16 KiB: a message after a piece (16 KiB, no newline) that is shorter and has no newline ends its line."""
    after_piece = {1: False, 2: False}
    for stream, message in frames:
        if after_piece[stream] and len(message) < MESSAGE_BYTES and not message.endswith(b"\n"):
            message += b"\n"
        after_piece[stream] = len(message) == MESSAGE_BYTES and not message.endswith(b"\n")
        yield stream, message


def split_messages(whole: bytes) -> list[bytes]:
    """Split whole messages apart: at each newline, and every 16 KiB within a longer line."""
    messages = []
    parts = whole.split(b"\n")
    for index, part in enumerate(parts):
        newline = b"\n" if index < len(parts) - 1 else b""
        while len(part) >= MESSAGE_BYTES:
            messages.append(part[:MESSAGE_BYTES])
            part = part[MESSAGE_BYTES:]
        if part or newline:
            messages.append(part + newline)
    return messages
