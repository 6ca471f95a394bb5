"""The command line: `run` (default) and `doctor`, exit codes, METRICS_PORT already taken."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from worker_agent import cli


def test_commands_are_run_and_doctor() -> None:
    parser = cli.build_parser()
    assert parser.parse_args([]).command == "run"
    assert parser.parse_args(["doctor"]).command == "doctor"
    with pytest.raises(SystemExit):
        parser.parse_args(["fly"])


def test_bad_log_format_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--log-format", "xml"]) == cli.EXIT_CONFIG
    assert "--log-format" in capsys.readouterr().err


def test_doctor_with_bad_configuration_prints_the_table_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORKER_HEARTBEAT_INTERVAL", "-1")
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "configuration  FAIL" in out and "WORKER_HEARTBEAT_INTERVAL" in out
    assert out.rstrip().endswith("verdict: NOT READY - fix configuration")


def test_metrics_port_taken_exits_2_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["--metrics-port", str(port), "--state-dir", str(tmp_path / "state")])

    assert code == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"METRICS_PORT={port}" in err and "METRICS_PORT=0 turns the endpoint off" in err
    assert not (tmp_path / "state").exists()  # the worker never started
