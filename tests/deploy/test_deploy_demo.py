"""scripts/demo.sh, the README's first command, runs one job to `finished`."""

from __future__ import annotations

import os

import pytest
from deploy_support import SCRIPTS, free_port, run

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_demo_script(docker_daemon: None) -> None:
    env = {**os.environ, "DEMO_PORT": str(free_port())}
    proc = run(["bash", str(SCRIPTS / "demo.sh")], env=env, timeout=300)
    out = proc.stdout
    assert "step 10/10 (100%)" in out  # the job log is printed
    assert "opeva-demo-sim: done (ok)" in out
    assert "final status of job" in out and out.rstrip().splitlines()[-2].endswith(": finished")
