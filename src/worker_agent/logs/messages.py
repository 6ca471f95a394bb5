"""Job output as log messages, exactly the way Docker's json-file log driver keeps them.

The live log comes from the attach stream (raw bytes, cut anywhere); after a restart the worker catches up
from the container's json-file log. For the two to give the same bytes, the live path turns its raw bytes
into what json-file stores (docs/logs.md):

- a message is one line with its newline, or 16 KiB of a longer line (Docker's copier buffer), or what is
  left when the stream ends; json-file replays each message as one frame;
- each message is made valid UTF-8 on its own: every byte that is not part of a valid UTF-8 character
  becomes U+FFFD (Go's rule), so a character cut by a 16 KiB boundary becomes U+FFFD in both paths.
"""

from __future__ import annotations

import codecs

# Docker's log copier buffer (daemon/logger/copier.go): a longer line is stored in pieces of this size.
MESSAGE_BYTES = 16 * 1024
_ERRORS = "opeva-per-byte"


def _per_byte_replacement(error: UnicodeError) -> tuple[str, int]:
    # One U+FFFD for every byte of the invalid sequence, as Go's utf8.DecodeRune does (width 1 per error).
    assert isinstance(error, UnicodeDecodeError)
    return "\ufffd" * (error.end - error.start), error.end


codecs.register_error(_ERRORS, _per_byte_replacement)


def coerce(message: bytes) -> bytes:
    """A whole message as json-file stores it: valid UTF-8, every invalid byte replaced by U+FFFD."""
    if message.isascii():
        return message
    return message.decode("utf-8", _ERRORS).encode()


def count_messages(whole: bytes) -> int:
    """How many messages `whole` holds: one per line, plus one per full 16 KiB piece of any line."""
    lines = whole.count(b"\n")
    if len(whole) - lines < MESSAGE_BYTES:  # no line can be long enough to be cut
        return lines
    return lines + sum(len(part) // MESSAGE_BYTES for part in whole.split(b"\n"))


class MessageSplitter:
    """Raw bytes of one stream in, complete json-file messages out; the incomplete last message is held."""

    def __init__(self) -> None:
        self._pending = b""  # the start of the current message, not complete yet

    @property
    def held(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes, skip: int = 0) -> tuple[bytes, int, int]:
        """The messages that `data` completes, joined and coerced, how many they are, and how many of the
        first ones were dropped because the file has them already (at most `skip`, counted before coercion)."""
        data = self._pending + data if self._pending else data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        while len(rest) >= MESSAGE_BYTES:  # a line longer than Docker's buffer: its full pieces are messages
            rest = rest[MESSAGE_BYTES:]
        whole = data[: len(data) - len(rest)]
        self._pending = rest
        skipped = 0
        if skip and whole:
            messages = split_messages(whole)
            skipped = min(skip, len(messages))
            whole = b"".join(messages[skipped:])  # starts on a message boundary, so pieces stay aligned
        if not whole:
            return b"", 0, skipped
        count = count_messages(whole)
        if whole.isascii() or (count == whole.count(b"\n") and _is_utf8(whole)):
            return whole, count, skipped  # the common case: nothing to replace, no piece boundary to look at
        return b"".join(coerce(message) for message in split_messages(whole)), count, skipped

    def flush(self) -> tuple[bytes, int]:
        """The stream really ended: what is left is a last message of its own."""
        message, self._pending = self._pending, b""
        return coerce(message), 1 if message else 0


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
