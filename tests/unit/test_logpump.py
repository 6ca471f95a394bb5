from __future__ import annotations

import os
from pathlib import Path

from worker_agent.domain import LogPosition
from worker_agent.executors.docker import _messages, demux
from worker_agent.logs.jobfiles import JobLog
from worker_agent.logs.pump import LOST_MARKER, STDERR, STDOUT, LogPump, ReplayShifted


def open_log(path: Path) -> JobLog:
    return JobLog(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644))


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_demux_splits_frames_across_arbitrary_blob_boundaries() -> None:
    raw = frame(1, b"out-1\n") + frame(2, b"err-1\n") + frame(1, b"") + frame(1, b"out-2")
    for cut in range(len(raw) + 1):
        assert list(demux([raw[:cut], raw[cut:]])) == [(1, b"out-1\n"), (2, b"err-1\n"), (1, b"out-2")]


def test_replayed_frames_lose_their_timestamp_only() -> None:
    frames = [(1, b"2026-11-29T10:47:07.421264616Z a b\n"), (2, b"2026-11-29T10:47:07.421264617Z ")]
    assert list(_messages(frames)) == [(1, b"a b\n"), (2, b"")]


def test_live_pump_writes_whole_messages_as_printed_and_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    log = open_log(path)
    checkpoints: list[LogPosition] = []
    pump = LogPump(log, LogPosition(), raw=True, on_checkpoint=checkpoints.append)
    pump.pump([(STDOUT, b"caf\xc3"), (STDOUT, b"\xa9 ok\n"), (STDERR, b"bad \xff byte\n"), (STDOUT, b"no newline")])
    assert path.read_bytes() == b"caf\xc3\xa9 ok\nbad \xff byte\n"  # the unfinished message is held
    pump.finish()
    log.close()
    assert path.read_bytes() == b"caf\xc3\xa9 ok\nbad \xff byte\nno newline"
    last = checkpoints[-1]
    assert (last.stdout_messages, last.stderr_messages, last.file_size) == (2, 1, path.stat().st_size)


def test_a_cut_stream_writes_nothing_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    log = open_log(path)
    pump = LogPump(log, LogPosition(), raw=True, secrets=["SUPERSECRET-42"])
    pump.pump([(STDOUT, b"line\nMY_TOKEN=SUPERSEC"), (STDOUT, b"\xe2\x82")])  # then the stream is cut
    log.close()
    assert path.read_bytes() == b"line\n"


def test_resume_truncates_the_unrecorded_tail_and_skips_known_messages(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    # The file has 3 lines but the last checkpoint only knew of 2: a crash came between write and checkpoint.
    path.write_text("l1\nl2\nl3\n")
    log = open_log(path)
    pump = LogPump(log, LogPosition(stdout_messages=2, stderr_messages=0, file_size=6), raw=False)
    # The container's log replays everything from the start, one frame per message.
    pump.pump([(STDOUT, b"l1\n"), (STDOUT, b"l2\n"), (STDOUT, b"l3\n"), (STDOUT, b"l4\n")])
    pump.finish()
    log.close()
    assert path.read_text() == "l1\nl2\nl3\nl4\n"


def test_cap_writes_one_marker_and_drops_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    log = open_log(path)
    pump = LogPump(log, LogPosition(), raw=True, max_bytes=10)
    pump.pump([(STDOUT, b"12345678\n")] * 5)
    log.close()
    text = path.read_text()
    assert text.startswith("12345678\n1")
    assert text.count("further output dropped") == 1
    assert text.endswith("further output dropped\n")


def test_secret_masked_in_file(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    log = open_log(path)
    pump = LogPump(log, LogPosition(), raw=True, secrets=["tok-123456"])
    pump.pump([(STDOUT, b"token=tok-12"), (STDOUT, b"3456\n")])
    log.close()
    assert path.read_text() == "token=***\n"


def test_raw_input_replayed_from_its_start_skips_the_messages_the_file_has(tmp_path: Path) -> None:
    # A Slurm job's output file is read again from byte 0 after a restart.
    path = tmp_path / "job.log"
    path.write_bytes(b"l1\nl2\npartial-written-after-the-checkpoint")
    log = open_log(path)
    pump = LogPump(log, LogPosition(stdout_messages=2, file_size=6), raw=True)
    pump.pump([(STDOUT, b"l1\nl"), (STDOUT, b"2\nl3\nl4")])
    pump.finish()
    log.close()
    assert path.read_bytes() == b"l1\nl2\nl3\nl4"
    assert pump.position.stdout_messages == 4


def _lines(*numbers: int) -> list[tuple[int, bytes]]:
    return [(STDOUT, f"line {n} of the job's output\n".encode()) for n in numbers]


def _live_then_resume(tmp_path: Path, live: int, replay: list[tuple[int, bytes]]) -> bytes:
    """Lines 0..live-1 written live and checkpointed, then a worker restart that catches up from `replay`
    (Docker's copy, one frame per message) the way JobRun does: relocating when it does not fit."""
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "job.log"
    log = open_log(path)
    checkpoints: list[LogPosition] = []
    LogPump(log, LogPosition(), raw=True, on_checkpoint=checkpoints.append, checkpoint_seconds=0).pump(
        _lines(*range(live))
    )
    pump = LogPump(log, checkpoints[-1], raw=False)
    try:
        pump.pump(replay)
        shifted = pump.replay_short
    except ReplayShifted:
        shifted = True
    if shifted:
        pump.relocate(replay)
        pump.pump(replay)
    pump.finish()
    log.close()
    return path.read_bytes()


def test_a_replay_that_still_holds_the_resume_point_continues_exactly(tmp_path: Path) -> None:
    whole = b"".join(data for _, data in _lines(*range(13)))
    assert _live_then_resume(tmp_path / "a", 10, _lines(*range(13))) == whole
    # Docker rotated away lines 0-3, which the file has: found again by their bytes, nothing is lost.
    assert _live_then_resume(tmp_path / "b", 10, _lines(*range(4, 13))) == whole


def test_a_replay_rotated_past_the_resume_point_says_so_once(tmp_path: Path) -> None:
    before = b"".join(data for _, data in _lines(*range(10)))
    marker = f"[job-worker-agent] {LOST_MARKER}\n".encode()
    for name, kept in (("short", range(15, 21)), ("long", range(15, 41))):
        after = b"".join(data for _, data in _lines(*kept))
        # Fewer messages than the file had (a short replay) or more (the count lands on other bytes).
        assert _live_then_resume(tmp_path / name, 10, _lines(*kept)) == before + marker + after
