"""Fixtures of the fast tier (tests/rig.py holds the rig itself)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rig import Rig

from worker_agent import defaults


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    monkeypatch.setattr(defaults, "BACKOFF_INITIAL_SECONDS", 0.01)
    monkeypatch.setattr(defaults, "BACKOFF_MAX_SECONDS", 0.05)
    made = Rig(tmp_path)
    yield made
    made.stop()
