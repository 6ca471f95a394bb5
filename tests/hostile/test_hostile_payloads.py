"""Crafted payloads: each fails its job with the reason (or is skipped when its job_id is unusable), nothing
outside the job's folder changes, no container starts, and the worker goes on working."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Scene, normal_job
from harness import wait_for

pytestmark = pytest.mark.docker


def payload(job_id: Any, **fields: Any) -> dict[str, Any]:
    return {**normal_job(str(job_id)), "job_id": job_id, **fields}


def run_all(scene: Scene, payloads: list[dict[str, Any]], env: dict[str, str] | None = None) -> Any:
    """Queue the payloads and then a marker job; return the worker once the marker job has finished."""
    scene.backend.push(*payloads, normal_job("marker-1"))
    worker = scene.worker(env)
    assert scene.backend.wait_terminal("marker-1", 90)["status"] == "finished", worker.text()
    return worker


def assert_refused(scene: Scene, job_id: str, *words: str) -> str:
    reports = scene.backend.reports(job_id)
    assert [r["status"] for r in reports] == ["failed"], reports  # never `running`: no container started
    error, code = str(reports[0]["error"]), reports[0]["error_code"]
    assert code in ("invalid_payload", "config_missing") and error.startswith(f"{code}: "), error
    for word in words:
        assert word in error, error
    return error


def test_traversal_in_job_id_is_skipped_and_nothing_is_written(scene: Scene) -> None:
    bad_ids = ["../../sentinel", "..", "a/../../x", "/etc", f"../{scene.sentinel}/victim", "x" * 300, 42, None, ""]
    scene.mark("marker-1", "after-1")
    worker = run_all(scene, [payload(job_id) for job_id in bad_ids] + [{"config_path": "configs/test.yaml"}])

    # Not reported at all: a job_id that is not safe is never used, not even in a URL.
    reported = {body["job_id"] for body in scene.backend.statuses}
    assert reported == {"marker-1"}
    assert worker.text().count("skipping a payload without a usable job_id") == len(bad_ids) + 1
    scene.assert_nothing_else_changed()
    scene.assert_still_working(worker)


def test_traversal_in_config_path_fails_the_job(scene: Scene) -> None:
    (scene.shared / "configs" / "evil.yaml").symlink_to(scene.sentinel / "secret.yaml")
    (scene.shared / "configs" / "loop.yaml").symlink_to(scene.shared / "configs" / "loop.yaml")
    cases = {
        "cfg-1": ("../sentinel/secret.yaml", "config_path"),
        "cfg-2": (str(scene.sentinel / "secret.yaml"), "config_path"),
        "cfg-3": ("configs/../../sentinel/secret.yaml", "config_path"),
        "cfg-4": ("configs/evil.yaml", "leaves the shared directory"),
        "cfg-5": ("configs/missing.yaml", "not found"),
        "cfg-6": ("configs/loop.yaml", "configs/loop.yaml"),
        "cfg-7": ("configs/\u0000x", "config_path"),
    }
    scene.mark("marker-1", "after-1", *cases)
    worker = run_all(scene, [payload(job_id, config_path=path) for job_id, (path, _) in cases.items()])

    for job_id, (_, words) in cases.items():
        assert_refused(scene, job_id, words)
    scene.assert_nothing_else_changed()
    scene.assert_still_working(worker)


def test_symlinked_job_folders_never_redirect_the_log(scene: Scene) -> None:
    jobs = scene.shared / "jobs"
    (jobs / "sym-1").mkdir(parents=True)
    (jobs / "sym-1" / "logs").symlink_to(scene.sentinel / "victim")
    (jobs / "sym-2").symlink_to(scene.sentinel / "victim")
    (jobs / "sym-3" / "logs").mkdir(parents=True)
    (jobs / "sym-3" / "logs" / "sym-3.log").symlink_to(scene.sentinel / "secret.yaml")
    scene.mark("marker-1", "after-1", "sym-1", "sym-3")  # sym-2 is itself the link: it must stay as it is
    worker = run_all(scene, [normal_job(job_id) for job_id in ("sym-1", "sym-2", "sym-3")])

    for job_id in ("sym-1", "sym-2", "sym-3"):
        reports = scene.backend.reports(job_id)
        assert [r["status"] for r in reports] == ["setup", "failed"], reports  # never `running`
        assert "cannot write the job log" in reports[-1]["error"] and reports[-1]["error_code"] == "log_unwritable"
    assert list((scene.sentinel / "victim").iterdir()) == []
    assert (scene.sentinel / "secret.yaml").read_text() == "do not touch\n"
    scene.assert_nothing_else_changed()
    scene.assert_still_working(worker)


def test_a_job_that_swaps_its_logs_folder_for_a_symlink_writes_nothing_outside(scene: Scene) -> None:
    victim = scene.sentinel / "victim"
    script = (
        "echo before; sleep 1; mv /data/jobs/swap-1/logs /data/jobs/swap-1/moved; "
        f"ln -s {victim} /data/jobs/swap-1/logs; for i in $(seq 1 50); do echo after-$i; done; sleep 2; echo end"
    )
    scene.mark("marker-1", "after-1", "swap-1")
    worker = run_all(scene, [normal_job("swap-1", script)])

    assert scene.backend.wait_terminal("swap-1")["status"] == "finished"
    assert list(victim.iterdir()) == []
    # The worker kept writing through the file it had open, which moved along inside the job's folder.
    moved = (scene.shared / "jobs" / "swap-1" / "moved" / "swap-1.log").read_text()
    assert moved.startswith("before\n") and moved.endswith("after-50\nend\n")
    scene.assert_nothing_else_changed()
    scene.assert_still_working(worker)


def test_volumes_outside_the_share_and_the_docker_socket_are_refused(scene: Scene) -> None:
    (scene.shared / "escape").symlink_to(scene.sentinel)
    cases = {
        "vol-1": "/",
        "vol-2": "/var/run/docker.sock",
        "vol-3": "/run/docker.sock",
        "vol-4": "/var/run",
        "vol-5": str(scene.sentinel),
        "vol-6": f"{scene.shared}/escape",
        "vol-7": "/etc",
    }
    scene.mark("marker-1", "after-1", "vol-0", *cases)
    # Opted in to volumes under the share: every path outside it is still refused.
    payloads = [payload(job_id, volumes=[{"host": host, "container": "/mnt"}]) for job_id, host in cases.items()]
    # By default no payload volume at all, not even one under the share.
    payloads.append(payload("vol-0", volumes=[{"host": f"{scene.shared}/configs", "container": "/mnt"}]))
    worker = run_all(scene, payloads, {"ALLOWED_VOLUME_ROOTS": str(scene.shared)})

    for job_id in cases:
        assert_refused(scene, job_id, "volume", "outside the allowed host paths")
    assert scene.backend.wait_terminal("vol-0", 30)["status"] == "finished"
    scene.assert_nothing_else_changed()
    scene.assert_still_working(worker)


def test_host_privileges_are_refused_with_the_reason(scene: Scene) -> None:
    cases = {
        "priv-1": ({"privileged": True}, "ALLOW_PRIVILEGED"),
        "priv-2": ({"network_mode": "host"}, "ALLOW_HOST_NAMESPACES"),
        "priv-3": ({"pid_mode": "host"}, "ALLOW_HOST_NAMESPACES"),
        "priv-4": ({"cap_add": ["SYS_ADMIN"]}, "cap_add is not allowed"),
        "priv-5": ({"devices": ["/dev/sda:/dev/sda:rwm"]}, "devices is not allowed"),
        "priv-6": ({"network_mode": "container:opeva-job-other"}, "another container"),
        "priv-7": ({"security_opt": ["seccomp=unconfined"]}, "security_opt is not allowed"),
        "priv-8": ({"privileged": "yes"}, "privileged"),
    }
    scene.mark("marker-1", "after-1", *cases)
    worker = run_all(scene, [payload(job_id, **fields) for job_id, (fields, _) in cases.items()])

    for job_id, (_, words) in cases.items():
        assert_refused(scene, job_id, words)
    scene.assert_nothing_else_changed()
    scene.assert_still_working(worker)


def test_host_network_runs_when_the_worker_allows_it(scene: Scene) -> None:
    scene.backend.push(payload("net-1", network_mode="host", command=["sh", "-c", "echo on-host; sleep 30"]))
    worker = scene.worker({"ALLOW_HOST_NAMESPACES": "1"})
    running = wait_for(lambda: (r := scene.backend.last("net-1")) and r["status"] == "running" and r, 60, "net-1")
    host_config = scene.docker.api.inspect_container(running["container_id"])["HostConfig"]
    assert host_config["NetworkMode"] == "host"
    assert host_config["Privileged"] is False
    scene.backend.request_stop("net-1")
    assert scene.backend.wait_terminal("net-1", 60)["status"] == "stopped"
    scene.assert_still_working(worker)


def test_image_outside_the_allow_list_is_refused(scene: Scene) -> None:
    cases = {
        "img-1": "alpine:latest",
        "img-2": "docker.io/library/busybox",
        "img-3": "evil.example/opeva-test-busybox:latest",
    }
    scene.mark("marker-1", "after-1", *cases)
    worker = run_all(scene, [payload(job_id, image=image) for job_id, image in cases.items()])

    for job_id, image in cases.items():
        assert_refused(scene, job_id, image, "not in ALLOWED_IMAGES")
    scene.assert_nothing_else_changed()
    scene.assert_still_working(worker)


def test_oversized_and_ill_typed_fields_are_refused(scene: Scene) -> None:
    cases = {
        "big-1": ({"env": {"A": "x" * 100_000}}, "env"),
        "big-2": ({"command": ["x"] * 10_000}, "command"),
        "big-3": ({"env": {"BAD-NAME": "1"}}, "env"),
        "big-4": ({"volumes": [{"host": "/x", "container": "/y"}] * 100}, "volumes"),
        "big-5": ({"job_name": "n" * 10_000}, "job_name"),
        "big-6": ({"command": "echo 'unbalanced"}, "command"),
    }
    scene.mark("marker-1", "after-1", *cases)
    worker = run_all(scene, [payload(job_id, **fields) for job_id, (fields, _) in cases.items()])

    for job_id, (_, where) in cases.items():
        error = assert_refused(scene, job_id, where)
        assert len(error) < 400
    scene.assert_nothing_else_changed()
    scene.assert_still_working(worker)
