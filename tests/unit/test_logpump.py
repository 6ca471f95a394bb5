from __future__ import annotations

import os
from pathlib import Path

from worker_agent.domain import LogPosition
from worker_agent.executors.docker import demux
from worker_agent.logs.jobfiles import JobLog
from worker_agent.logs.pump import STDERR, STDOUT, LogPump


def open_log(path: Path) -> JobLog:
    return JobLog(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_demux_splits_frames_across_arbitrary_blob_boundaries() -> None:
    raw = frame(1, b"out-1\n") + frame(2, b"err-1\n") + frame(1, b"") + frame(1, b"out-2")
    for cut in range(len(raw) + 1):
        assert list(demux([raw[:cut], raw[cut:]])) == [(1, b"out-1\n"), (2, b"err-1\n"), (1, b"out-2")]


def test_live_pump_writes_whole_messages_replaces_bad_bytes_and_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    log = open_log(path)
    checkpoints: list[LogPosition] = []
    pump = LogPump(log, LogPosition(), raw=True, on_checkpoint=checkpoints.append)
    pump.pump([(STDOUT, b"caf\xc3"), (STDOUT, b"\xa9 ok\n"), (STDERR, b"bad \xff byte\n"), (STDOUT, b"no newline")])
    assert path.read_bytes() == "café ok\nbad \ufffd byte\n".encode()  # the unfinished message is held
    pump.finish()
    log.close()
    assert path.read_bytes() == "café ok\nbad \ufffd byte\nno newline".encode()
    assert checkpoints[-1] == LogPosition(stdout_messages=2, stderr_messages=1, file_size=path.stat().st_size)


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
