"""The live path's messages and the repaired replay, against a byte-by-byte model of Docker's copier and of
dockerd 20.10's `local` replay.

The real replay is compared with the live path in tests/faults (kill -9 mid-job, byte-identical log).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worker_agent.logs.messages import MESSAGE_BYTES, MessageSplitter, restore_newlines


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


def replay_of_dockerd_20_10(messages: list[bytes], rest: bytes) -> list[bytes]:
    """What the `local` driver replays: each message, except that the one ending a line longer than 16 KiB
    has lost its newline (an empty frame when that line was k x 16 KiB)."""
    replayed, after_piece = [], False
    for message in [*messages, rest] if rest else messages:
        replayed.append(message[:-1] if after_piece and message.endswith(b"\n") else message)
        after_piece = len(message) == MESSAGE_BYTES and not message.endswith(b"\n")
    return replayed


def live(data: bytes, chunks: list[int]) -> tuple[bytes, int, tuple[bytes, int]]:
    splitter, out, count, start = MessageSplitter(), b"", 0, 0
    for size in chunks * (len(data) // sum(chunks) + 1):
        written, completed, _ = splitter.feed(data[start : start + size])
        out, count, start = out + written, count + completed, start + size
        if start >= len(data):
            break
    return out, count, splitter.flush()


@settings(max_examples=50, deadline=None)
@given(outputs(), st.lists(st.integers(1, 40_000), min_size=1, max_size=20))
def test_splitter_gives_the_copiers_messages_as_printed_whatever_the_chunks(data: bytes, chunks: list[int]) -> None:
    messages, rest = copier(data)
    out, count, last = live(data, chunks)
    assert (out, count) == (b"".join(messages), len(messages))
    assert last[0].rstrip(b"\n") == rest and last[1] == (1 if rest else 0)


@settings(max_examples=50, deadline=None)
@given(outputs(), st.lists(st.integers(1, 40_000), min_size=1, max_size=20))
def test_the_repaired_replay_equals_the_live_log(data: bytes, chunks: list[int]) -> None:
    messages, rest = copier(data)
    replayed = [frame for _, frame in restore_newlines((1, frame) for frame in replay_of_dockerd_20_10(messages, rest))]
    out, count, (last, last_count) = live(data, chunks)
    assert b"".join(replayed) == out + last and len(replayed) == count + last_count


def test_only_a_line_longer_than_16_kib_that_ends_the_output_gets_a_newline_it_did_not_have() -> None:
    assert live(b"x" * 20000, [7000])[2] == (b"x" * (20000 - MESSAGE_BYTES) + b"\n", 1)
    assert live(b"x" * 20000 + b"\nshort", [7000])[2] == (b"short", 1)
    assert live(b"x" * MESSAGE_BYTES, [7000])[2] == (b"", 0)


def test_repair_is_per_stream_and_keeps_a_newline_dockerd_kept() -> None:
    piece = b"a" * MESSAGE_BYTES
    frames = [(1, piece), (2, b"err"), (1, b"tail"), (1, piece), (1, b"b\n"), (2, piece), (2, b"")]
    assert list(restore_newlines(frames)) == [
        (1, piece),
        (2, b"err"),
        (1, b"tail\n"),
        (1, piece),
        (1, b"b\n"),
        (2, piece),
        (2, b"\n"),
    ]


def test_bytes_that_are_not_utf8_are_kept_as_printed() -> None:
    out, count, _ = MessageSplitter().feed(b"caf\xe9 \xff\xfe\n")
    assert (out, count) == (b"caf\xe9 \xff\xfe\n", 1)
