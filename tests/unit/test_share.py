"""The share guard: any error from the share (NFS's ESTALE, EIO, EACCES) means "share unavailable", never a crash."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from worker_agent.share import share_problem


@pytest.mark.parametrize("code", [errno.ESTALE, errno.EIO, errno.EACCES])
@pytest.mark.parametrize("check", ["writable", "mountpoint", "marker"])
def test_any_error_from_the_share_is_a_problem_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, check: str
) -> None:
    def failing(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise OSError(code, errno.errorcode[code])

    for method in ("is_dir", "is_file", "stat", "mkdir", "write_bytes"):
        monkeypatch.setattr(Path, method, failing)

    problem = share_problem(tmp_path, check)

    assert problem is not None and errno.errorcode[code] in problem


def test_a_healthy_share_has_no_problem(tmp_path: Path) -> None:
    assert share_problem(tmp_path, "writable") is None
    assert (tmp_path / "jobs").is_dir() and list((tmp_path / "jobs").iterdir()) == []
