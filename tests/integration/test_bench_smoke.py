"""The benchmark suite in its smoke mode, so that it cannot rot. It asserts no timing: only that every
byte reached the logs (the suite's own exit code) and that it wrote its report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.mark.xdist_group("cpu")  # floods logs on both cores: one such test at a time (tests/conftest.py)
def test_bench_smoke_runs_and_reports(tmp_path: Path, busybox_image: str) -> None:
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "throughput" in out.read_text().lower()
