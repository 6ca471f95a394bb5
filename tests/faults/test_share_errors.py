"""A share that answers ESTALE (an NFS server that lost its file handles), served by a real FUSE mount:
the worker waits, says why in its heartbeat, and resumes when the share answers again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import Devserver, WorkerProcess, sh, wait_for
from test_recovery import assert_numbered_lines, lines_in, numbered_job

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="this kernel has no FUSE (/dev/fuse)"),
]
Make = Callable[..., WorkerProcess]


@contextmanager
def stale_share(backing: Path, mountpoint: Path, switch: Path) -> Iterator[None]:
    """`mountpoint` shows `backing`; every call on it fails with ESTALE while `switch` exists."""
    mountpoint.mkdir()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("stale_share.py")), str(backing), str(mountpoint), str(switch)]
    )
    try:
        wait_for(lambda: os.path.ismount(mountpoint) or server.poll() is not None, 10, "the FUSE mount")
        assert server.poll() is None, "the FUSE share did not start (is libfuse2 installed?)"
        yield
    finally:
        switch.unlink(missing_ok=True)
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        server.terminate()
        server.wait(10)


def share_problem(devserver: Devserver, worker: WorkerProcess) -> str:
    host = devserver.hosts().get(worker.worker_id) or {}
    return str((host.get("info") or {}).get("share_problem"))


def test_a_share_answering_estale_is_waited_out(devserver: Devserver, make_worker: Make, tmp_path: Path) -> None:
    mountpoint, switch = tmp_path / "share", tmp_path / "stale"
    with stale_share(devserver.shared, mountpoint, switch):
        switch.touch()
        job_id = devserver.submit(image="opeva-test-busybox:latest", command=sh("echo the-job-ran"))
        worker = make_worker({"OPEVA_SHARED_DIR": str(mountpoint)}).start()

        wait_for(lambda: "ESTALE" in share_problem(devserver, worker), 30, "heartbeat: the share is stale")
        assert devserver.status(job_id) == "queued", "no job is taken while the share answers ESTALE"

        switch.unlink()
        devserver.wait_status(job_id, {"finished"}, timeout=60)
        assert "the-job-ran" in devserver.log_file(job_id).read_text()
        wait_for(lambda: share_problem(devserver, worker) == "None", 10, "heartbeat: the share is back")
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    outage_lines = [line for line in worker.text().splitlines() if "ESTALE" in line and "WARNING" in line]
    assert len(outage_lines) == 1, outage_lines  # logged once per outage, however many checks


def test_a_share_answering_estale_mid_job_loses_no_line(
    devserver: Devserver, make_worker: Make, tmp_path: Path
) -> None:
    mountpoint, switch = tmp_path / "share", tmp_path / "stale"
    with stale_share(devserver.shared, mountpoint, switch):
        job_id = numbered_job(devserver, 1000)
        worker = make_worker({"OPEVA_SHARED_DIR": str(mountpoint)}).start("--exit-after-job")
        log = devserver.log_file(job_id)
        wait_for(lambda: lines_in(log) > 200, 30, "the job to be under way")

        switch.touch()  # the log's writes and the share checks now fail with ESTALE
        wait_for(lambda: "ESTALE" in share_problem(devserver, worker), 30, "heartbeat: the share is stale")
        switch.unlink()

        assert worker.wait(90) == 0, worker.text()
        assert devserver.status(job_id) == "finished"
        assert_numbered_lines(log, 1000)
