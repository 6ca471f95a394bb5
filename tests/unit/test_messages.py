"""The live path's model of Docker's json-file messages, against a byte-by-byte model of Docker's copier.

The real json-file replay is compared with the live path in tests/faults (kill -9 mid-job, byte-identical log).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worker_agent.logs.messages import MESSAGE_BYTES, MessageSplitter, coerce


def copier(data: bytes) -> tuple[list[bytes], bytes]:
    """daemon/logger/copier.go, one byte at a time: a message ends at a newline or when 16 KiB are buffered."""
    messages, current = [], bytearray()
    for byte in data:
        current.append(byte)
        if byte == 10 or len(current) == MESSAGE_BYTES:
            messages.append(bytes(current))
            current.clear()
    return messages, bytes(current)


pieces = st.sampled_from([b"a", b"\n", b"\r", b"\xe2\x82\xac", b"\xe2\x82", b"\xff", b"\xc3", "█".encode()])
sizes = st.sampled_from([0, 1, 100, MESSAGE_BYTES - 1, MESSAGE_BYTES, MESSAGE_BYTES + 1, 3 * MESSAGE_BYTES])


@st.composite
def outputs(draw: st.DrawFn) -> bytes:
    runs = draw(st.lists(st.tuples(pieces, sizes), max_size=6))
    return b"".join(piece * (size // len(piece) or 1) for piece, size in runs)


@settings(max_examples=50, deadline=None)
@given(outputs(), st.lists(st.integers(1, 40_000), min_size=1, max_size=20))
def test_splitter_gives_the_copiers_messages_coerced_whatever_the_chunks(data: bytes, chunks: list[int]) -> None:
    messages, rest = copier(data)
    splitter, out, count, start = MessageSplitter(), b"", 0, 0
    for size in chunks * (len(data) // sum(chunks) + 1):
        written, completed, _ = splitter.feed(data[start : start + size])
        out, count, start = out + written, count + completed, start + size
        if start >= len(data):
            break
    assert (out, count) == (b"".join(coerce(m) for m in messages), len(messages))
    assert splitter.flush() == (coerce(rest), 1 if rest else 0)


def test_each_invalid_byte_becomes_one_replacement_character_as_in_go() -> None:
    assert coerce(b"x\xe2\x82\n") == "x\ufffd\ufffd\n".encode()
    assert coerce(b"\xed\xa0\x80") == "\ufffd\ufffd\ufffd".encode()  # a surrogate is not UTF-8 either
    assert coerce("€ ok".encode()) == "€ ok".encode()


def test_skipping_counts_raw_messages_before_bad_bytes_grow_them() -> None:
    # 6000 Latin-1 bytes become 18000 bytes of U+FFFD: skipping must count the message Docker would store
    # (one line), not pieces of the grown text.
    data = b"\xe9" * 6000 + b"\nsecond\n"
    out, count, skipped = MessageSplitter().feed(data, skip=1)
    assert (out, count, skipped) == (b"second\n", 1, 1)
