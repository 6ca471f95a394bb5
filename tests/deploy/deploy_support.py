"""Helpers shared by the deployment tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from typing import Any

import pytest
from harness import REPO, TERMINAL, free_port

__all__ = ["REPO", "TERMINAL", "free_port"]
SCRIPTS = REPO / "scripts"
DEMO_IMAGE = "opeva-demo-sim:latest"


def run(cmd: list[str], *, check: bool = True, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; on an unexpected failure show it."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as answer:
        text = answer.read().decode()
    try:
        return json.loads(text)
    except ValueError:
        return text


def wait_for_status(server: str, job_id: str, timeout: float = 150) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = http("GET", f"{server}/status/{job_id}")["status"]
        if status in TERMINAL:
            return str(status)
        time.sleep(1)
    return f"timeout (last status {status!r})"
