"""Fixtures for the deployment tests: scripts, images, a reference backend on the host.

Docker tests FAIL (never skip) when the daemon is missing: scripts/bootstrap.sh
starts it, and a silent skip would hide a broken CI machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_support import DEMO_IMAGE, SCRIPTS, free_port, http, run
from harness import once_per_run


@pytest.fixture(scope="session")
def docker_daemon() -> None:
    """A reachable Docker daemon, or a test failure saying why."""
    if shutil.which("docker") is None:
        pytest.fail("docker CLI not found: run scripts/bootstrap.sh (installs docker.io)")
    proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"docker daemon not reachable (scripts/bootstrap.sh starts it):\n{proc.stderr}")


@pytest.fixture(scope="session")
def demo_image(docker_daemon: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    def build() -> str:
        run(["bash", str(SCRIPTS / "build_demo_image.sh"), DEMO_IMAGE])
        return DEMO_IMAGE

    return once_per_run(tmp_path_factory, "demo-image", build)


@pytest.fixture(scope="session")
def worker_image(docker_daemon: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The worker image built from this checkout.

    Base: OPEVA_TEST_BASE_IMAGE when set (e.g. python:3.11-slim where a registry is
    reachable), else the debootstrap-made opeva-local/python:3.11.
    """
    tag = "opeva-test/job_worker_agent:ci"
    base = os.environ.get("OPEVA_TEST_BASE_IMAGE")
    args = ["--base", base] if base else ["--local-base"]

    def build() -> str:
        run(["bash", str(SCRIPTS / "build_image.sh"), "--tag", tag, *args], timeout=1200)
        return tag

    return once_per_run(tmp_path_factory, "worker-image", build)


@dataclass
class Backend:
    url: str
    shared: Path
    log: Path


@pytest.fixture
def start_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Backend]]:
    """Start opeva-devserver (the console script of this venv) on a free loopback port."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> Backend:
        shared = tmp_path_factory.mktemp("shared")
        (shared / "configs").mkdir()
        log = shared.parent / f"{shared.name}-devserver.log"
        port = free_port()
        exe = Path(sys.executable).with_name("opeva-devserver")
        cmd = [str(exe), "--host", "127.0.0.1", "--port", str(port), "--shared-dir", str(shared), *extra]
        with log.open("wb") as out:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                http("GET", f"{url}/health", timeout=2)
                break
            except (urllib.error.URLError, OSError):
                if procs[-1].poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"opeva-devserver did not start:\n{log.read_text(errors='replace')}")
                time.sleep(0.2)
        return Backend(url, shared, log)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
