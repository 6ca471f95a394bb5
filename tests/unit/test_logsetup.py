"""LOG_FORMAT=text|json: every line carries a job_id, "-" when it is about no job."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from worker_agent import logsetup


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_json_lines_are_objects_with_job_id(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("INFO", "json")
    log = logging.getLogger("worker_agent.test")

    log.info("job %s started", "j-1", extra={"job_id": "j-1"})
    log.info("polling, caf\u00e9")
    log.debug("not shown at INFO")

    first, second = (json.loads(line) for line in lines(capsys))
    assert first["job_id"] == "j-1" and first["message"] == "job j-1 started"
    assert first["level"] == "INFO" and first["logger"] == "worker_agent.test"
    assert first["time"].endswith("+00:00")
    assert second["job_id"] == "-" and second["message"] == "polling, caf\u00e9"


def test_json_keeps_an_exception_on_the_same_line(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("INFO", "json")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("x").exception("failed", extra={"job_id": "j-2"})

    (line,) = lines(capsys)
    entry = json.loads(line)
    assert entry["job_id"] == "j-2"
    assert "RuntimeError: boom" in entry["exception"]


def test_text_lines_carry_job_tag(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("DEBUG", "text")
    logging.getLogger("w").info("about a job", extra={"job_id": "j-3"})
    logging.getLogger("w").debug("about nothing")

    first, second = lines(capsys)
    assert first.endswith("INFO w [job=j-3] about a job")
    assert second.endswith("DEBUG w [job=-] about nothing")


def test_noisy_http_libraries_are_quieted() -> None:
    logsetup.configure("DEBUG", "text")
    assert logging.getLogger("httpx").level == logging.WARNING


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        logsetup.configure("INFO", "xml")
