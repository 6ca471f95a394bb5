from __future__ import annotations

import os
from pathlib import Path

from worker_agent.docker_executor import demux
from worker_agent.logpump import STDERR, STDOUT, LogPump, SecretMasker
from worker_agent.state import LogPosition


def open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_demux_splits_frames_across_arbitrary_blob_boundaries() -> None:
    raw = frame(1, b"out-1\n") + frame(2, b"err-1\n") + frame(1, b"") + frame(1, b"out-2")
    for cut in range(len(raw) + 1):
        assert list(demux([raw[:cut], raw[cut:]])) == [(1, b"out-1\n"), (2, b"err-1\n"), (1, b"out-2")]


def test_masker_catches_a_secret_split_across_chunks() -> None:
    masker = SecretMasker(["hunter2-secret"])
    out = masker.feed("password is hunt") + masker.feed("er2-sec") + masker.feed("ret, bye\n") + masker.flush()
    assert out == "password is ***, bye\n"


def test_masker_holds_back_only_a_possible_secret_prefix() -> None:
    masker = SecretMasker(["abcdef"])
    assert masker.feed("line 1\n") == "line 1\n"
    assert masker.feed("x ab") == "x "
    assert masker.feed("z\n") == "abz\n"


def test_short_values_are_not_masked() -> None:
    assert SecretMasker(["1"]).feed("a1b2\n") == "a1b2\n"


def test_pump_writes_streams_keeps_non_utf8_readable_and_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    fd = open_log(path)
    checkpoints: list[LogPosition] = []
    pump = LogPump(fd, LogPosition(), on_checkpoint=checkpoints.append)
    pump.pump([(STDOUT, b"caf\xc3"), (STDOUT, b"\xa9 ok\n"), (STDERR, b"bad \xff byte\n")])
    os.close(fd)
    assert path.read_text() == "café ok\nbad \\xff byte\n"
    assert checkpoints[-1] == LogPosition(stdout=9, stderr=11, file_size=path.stat().st_size)


def test_resume_truncates_the_unrecorded_tail_and_skips_known_bytes(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    # The file has 3 lines but the last checkpoint only knew of 2: a crash came between write and checkpoint.
    path.write_text("l1\nl2\nl3\n")
    fd = open_log(path)
    pump = LogPump(fd, LogPosition(stdout=6, stderr=0, file_size=6))
    # The container's log replays everything from the start.
    pump.pump([(STDOUT, b"l1\nl2"), (STDOUT, b"\nl3\nl4\n")])
    os.close(fd)
    assert path.read_text() == "l1\nl2\nl3\nl4\n"


def test_cap_writes_one_marker_and_drops_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    fd = open_log(path)
    pump = LogPump(fd, LogPosition(), max_bytes=10)
    pump.pump([(STDOUT, b"12345678\n")] * 5)
    os.close(fd)
    text = path.read_text()
    assert text.startswith("12345678\n1")
    assert text.count("further output dropped") == 1
    assert text.endswith("further output dropped\n")


def test_secret_masked_in_file(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    fd = open_log(path)
    LogPump(fd, LogPosition(), secrets=["tok-123456"]).pump([(STDOUT, b"token=tok-12"), (STDOUT, b"3456\n")])
    os.close(fd)
    assert path.read_text() == "token=***\n"
