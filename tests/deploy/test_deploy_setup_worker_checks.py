"""setup_worker.sh's precondition checks in real (not dry) runs; they stop before any container starts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_support import SCRIPTS, run

pytestmark = pytest.mark.docker
BASE = ["--server", "http://127.0.0.1:9", "--worker-id", "check-only", "--image", "opeva-demo-sim:latest"]


def setup_worker(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["bash", str(SCRIPTS / "setup_worker.sh"), *BASE, *args], check=False, timeout=60)


def test_failing_mount_command_stops_the_setup(docker_daemon: None, tmp_path: Path) -> None:
    proc = setup_worker("--mount-point", str(tmp_path / "mnt"), "--mount-cmd", "exit 3")
    assert proc.returncode != 0
    assert "mount command failed" in proc.stderr


def test_read_only_share_is_refused(docker_daemon: None, tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    try:
        proc = setup_worker("--mount-point", str(mnt), "--mount-cmd", f'mount -o bind,ro {src} "$MOUNT_POINT"')
        assert proc.returncode != 0
        assert "is not writable" in proc.stderr
        # A second run finds the mount in place and leaves it alone, then fails the same way.
        again = setup_worker("--mount-point", str(mnt), "--mount-cmd", "exit 3")
        assert "already a mount point" in again.stdout
        assert "is not writable" in again.stderr
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    assert run(["docker", "ps", "-aq", "--filter", "label=opeva.worker-group=check-only"]).stdout == ""


def test_missing_nfs_client_is_reported(docker_daemon: None, tmp_path: Path) -> None:
    if shutil.which("mount.nfs") or Path("/sbin/mount.nfs").exists():
        pytest.skip("nfs-common is installed here: the check cannot be exercised")
    proc = setup_worker("--mount-point", str(tmp_path), "--nfs-server", "192.0.2.1", "--nfs-export", "/x")
    assert proc.returncode != 0
    assert "NFS client missing (mount.nfs): apt-get install nfs-common" in proc.stderr
