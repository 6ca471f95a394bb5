"""Operations against real parts: /metrics, /readyz, doctor, GPU fallback, JSON logs and image pulls.

The worker is the real process, jobs run in the real dockerd, the backend is opeva-devserver, and pulls come
from a real registry (Debian's docker-registry) on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
from harness import BUSYBOX_IMAGE, Devserver, WorkerProcess, free_port, sh, wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.docker
Make = Callable[..., WorkerProcess]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(port: int, name: str, **labels: str) -> float:
    return scrape(port).get((name, tuple(sorted(labels.items()))), 0.0)


def readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def served_worker(make_worker: Make, env: dict[str, str] | None = None) -> tuple[WorkerProcess, int]:
    port = free_port()
    worker = make_worker({"METRICS_PORT": str(port), **(env or {})}).start()
    wait_for(lambda: _answers(port), 20, "the metrics endpoint")
    return worker, port


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
        return True
    return False


# --- /metrics and /readyz ---


def test_metrics_move_during_and_after_a_real_job(devserver: Devserver, make_worker: Make) -> None:
    worker, port = served_worker(make_worker)
    wait_for(lambda: readyz(port)[0] == 200, 20, "readiness")
    before = time.time()
    job_id = devserver.submit(image=BUSYBOX_IMAGE, command=sh("seq 1 1000; sleep 4; echo end"))

    devserver.wait_status(job_id, {"running"})
    wait_for(lambda: metric(port, "opeva_worker_log_bytes_written_total") >= 3893, 20, "seq's output counted")
    during = scrape(port)
    assert during[("opeva_worker_jobs_started_total", ())] == 1
    assert ("opeva_worker_jobs_ended_total", (("status", "finished"),)) not in during
    assert during[("opeva_worker_docker_up", ())] == 1
    assert during[("opeva_worker_share_healthy", ())] == 1
    wait_for(lambda: metric(port, "opeva_worker_last_heartbeat_timestamp_seconds") >= before, 10, "a heartbeat")

    devserver.wait_status(job_id, {"finished"})
    wait_for(lambda: metric(port, "opeva_worker_jobs_ended_total", status="finished") == 1, 10, "the end counted")
    after = scrape(port)
    assert after[("opeva_worker_job_duration_seconds_count", ())] == 1
    assert after[("opeva_worker_job_duration_seconds_sum", ())] >= 4
    assert after[("opeva_worker_job_duration_seconds_bucket", (("le", "1.0"),))] == 0
    assert after[("opeva_worker_job_duration_seconds_bucket", (("le", "60.0"),))] == 1
    assert after[("opeva_worker_log_bytes_written_total", ())] == devserver.log_file(job_id).stat().st_size
    # The gauge moves once the reporter has the backend's answer, a moment after the backend has the status.
    wait_for(lambda: metric(port, "opeva_worker_outbox_depth") == 0, 10, "the outbox emptied")
    assert readyz(port) == (200, {"status": "ready"})
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


def test_readyz_follows_the_share_marker(devserver: Devserver, make_worker: Make) -> None:
    worker, port = served_worker(make_worker, {"SHARED_DIR_CHECK": "marker"})
    wait_for(lambda: readyz(port)[0] == 200, 20, "readiness")
    marker = devserver.shared / ".opeva-share"
    hidden = devserver.shared / "opeva-share.away"

    marker.rename(hidden)
    _, body = wait_for(lambda: (r := readyz(port))[0] == 503 and r, 10, "unready without the marker")
    assert ".opeva-share is missing" in str(body["reason"]), body
    assert metric(port, "opeva_worker_share_healthy") == 0
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200  # alive all along

    hidden.rename(marker)
    wait_for(lambda: readyz(port)[0] == 200, 10, "ready again with the marker back")
    assert metric(port, "opeva_worker_share_healthy") == 1
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


def test_backend_outage_shows_in_errors_outbox_and_readyz(devserver: Devserver, make_worker: Make) -> None:
    worker, port = served_worker(make_worker)  # heartbeat every 2 s: unready after 6 s of silence
    job_id = devserver.submit(image=BUSYBOX_IMAGE, command=sh("sleep 3; echo done"))
    devserver.wait_status(job_id, {"running"})
    wait_for(lambda: readyz(port)[0] == 200, 10, "readiness")

    devserver.stop()
    wait_for(lambda: metric(port, "opeva_worker_outbox_depth") >= 1, 30, "the final status queued")
    _, body = wait_for(lambda: (r := readyz(port))[0] == 503 and r, 30, "unready without heartbeats")
    assert "no heartbeat acknowledged by the backend" in str(body["reason"]), body
    samples = scrape(port)
    assert samples[("opeva_worker_backend_errors_total", (("endpoint", "/api/agent/heartbeat"),))] >= 1
    assert samples[("opeva_worker_backend_errors_total", (("endpoint", "/api/agent/job-status"),))] >= 1

    devserver.start()
    wait_for(lambda: metric(port, "opeva_worker_outbox_depth") == 0, 60, "the outbox drained")
    wait_for(lambda: readyz(port)[0] == 200, 30, "ready again")
    assert devserver.status(job_id) == "finished"
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


# --- doctor ---


def doctor(worker: WorkerProcess, **env: str) -> tuple[int, dict[str, str], str]:
    done = subprocess.run(
        [sys.executable, "-m", "worker_agent", "doctor"],
        env={**worker.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = {}
    for line in done.stdout.splitlines()[1:]:
        name, _, rest = line.partition("  ")
        if name.strip() and not name.startswith("verdict"):
            rows[name.strip()] = rest.split()[0]
    return done.returncode, rows, done.stdout


HEALTHY = {
    "configuration": "OK",
    "backend": "OK",
    "clock": "OK",
    "worker id": "SKIP",  # the reference backend publishes no AVAILABLE_HOSTS
    "docker": "OK",
    "image": "OK",
    "gpus": "SKIP",
    "shared dir": "OK",
    "state dir": "OK",
}


def test_doctor_passes_on_a_healthy_setup(devserver: Devserver, make_worker: Make) -> None:
    code, rows, out = doctor(make_worker())
    assert (code, rows) == (0, HEALTHY), out
    assert out.rstrip().endswith("verdict: READY")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("backend down", {"backend": "FAIL", "clock": "SKIP"}),
        ("docker socket wrong", {"docker": "FAIL", "image": "SKIP"}),
        ("share missing", {"shared dir": "FAIL"}),
        ("share marker missing", {"shared dir": "FAIL"}),
        ("image absent, policy never", {"image": "FAIL"}),
        ("state dir unusable", {"state dir": "FAIL"}),
    ],
)
def test_doctor_fails_each_broken_precondition_alone(
    devserver: Devserver, make_worker: Make, tmp_path: Path, case: str, expected: dict[str, str]
) -> None:
    (tmp_path / "a-file").write_text("")
    env = {
        "backend down": {"OPEVA_SERVER": f"http://127.0.0.1:{free_port()}"},
        "docker socket wrong": {"DOCKER_HOST": "unix:///nonexistent"},
        "share missing": {"OPEVA_SHARED_DIR": str(tmp_path / "not-mounted")},
        "share marker missing": {"OPEVA_SHARED_DIR": str(tmp_path), "SHARED_DIR_CHECK": "marker"},
        "image absent, policy never": {"WORKER_IMAGE": f"opeva-test-absent-{uuid.uuid4().hex[:8]}:1"},
        "state dir unusable": {"WORKER_STATE_DIR": str(tmp_path / "a-file" / "state")},
    }[case]
    code, rows, out = doctor(make_worker(), IMAGE_PULL_POLICY="never", **env)

    assert code == 1, out
    assert rows == {**HEALTHY, **expected}, out
    assert "verdict: NOT READY - fix" in out and "fix: " in out


def test_doctor_absent_image_that_will_be_pulled_is_only_a_warning(devserver: Devserver, make_worker: Make) -> None:
    image = f"opeva-test-absent-{uuid.uuid4().hex[:8]}:1"
    code, rows, out = doctor(make_worker(), WORKER_IMAGE=image, IMAGE_PULL_POLICY="if-not-present")
    assert (code, rows) == (0, {**HEALTHY, "image": "WARN"}), out
    assert "pulled at the first job" in out


def test_doctor_bad_token(devserver: Devserver, make_worker: Make) -> None:
    help_text = subprocess.run([sys.executable, "-m", "opeva_devserver", "--help"], capture_output=True, text=True)
    if "--token" not in help_text.stdout:
        pytest.skip("opeva-devserver has no token check: the 401/403 verdict is covered in tests/unit/test_doctor.py")
    server = Devserver(devserver.shared.parent / "with-token", "--token", "right")
    server.start()
    try:
        code, rows, out = doctor(make_worker(server=server), OPEVA_TOKEN="wrong")
    finally:
        server.stop()
    assert (code, rows["backend"]) == (1, "FAIL"), out
    assert "refused the token" in out


# --- GPUs: this dockerd has no NVIDIA runtime, so the request is refused and the job runs without ---


def test_gpu_job_refused_by_the_runtime_is_retried_once_without_gpus(devserver: Devserver, make_worker: Make) -> None:
    job_id = devserver.submit(image=BUSYBOX_IMAGE, command=sh("echo ran-on-cpu"))
    worker = make_worker({"WORKER_ENABLE_GPU": "all"}).start("--exit-after-job")
    assert worker.wait(90) == 0, worker.text()

    assert devserver.status(job_id) == "finished"
    log = devserver.log_file(job_id).read_text()
    note = next(line for line in log.splitlines() if "GPU request refused" in line)
    assert note.startswith("[job-worker-agent] ") and note.endswith("retrying once without GPUs"), note
    assert "ran-on-cpu\n" in log
    assert "GPU request refused" in worker.text()
    assert doctor(worker)[1]["gpus"] == "WARN"


# --- heartbeat telemetry, as the backend's hosts view shows it ---


def test_heartbeat_carries_worker_and_host_figures_and_no_gpu_keys_here(
    devserver: Devserver, make_worker: Make
) -> None:
    job_id = devserver.submit(image=BUSYBOX_IMAGE, command=sh("sleep 30"))
    worker = make_worker().start()
    devserver.wait_status(job_id, {"running"})
    info = wait_for(
        lambda: (i := devserver.hosts().get(worker.worker_id, {}).get("info", {})).get("active_job_id") == job_id and i,
        20,
        "a heartbeat naming the active job",
    )

    assert info["executor"] == "docker" and info["worker_version"]
    assert info["active_job_count"] == 1 and info["draining"] is False
    assert info["docker_version"] == docker.from_env().version()["Version"]
    assert info["cpu_count"] == os.cpu_count() and len(info["load_avg"]) == 3
    assert 0 < info["memory_available_bytes"] <= info["memory_total_bytes"]
    assert info["shared_free_bytes"] > 0
    assert "gpus" not in info and "gpu_count" not in info  # no NVIDIA driver on this host: absent, not an error
    devserver.stop_job(job_id)
    devserver.wait_status(job_id, {"stopped"}, timeout=30)
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


# --- structured logs ---


def test_json_worker_log_lines_about_a_job_carry_its_id(devserver: Devserver, make_worker: Make) -> None:
    job_id = devserver.submit(image=BUSYBOX_IMAGE, command=sh("echo hi"))
    worker = make_worker({"LOG_FORMAT": "json"}).start("--exit-after-job")
    assert worker.wait(60) == 0, worker.text()

    entries = [json.loads(line) for line in worker.text().splitlines()]
    about_job = [entry for entry in entries if job_id in entry["message"]]
    assert about_job, entries
    assert all(entry["job_id"] == job_id for entry in about_job), about_job
    assert {entry["job_id"] for entry in entries} == {"-", job_id}
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)


# --- image pulls from a real registry on loopback (Docker allows plain HTTP to 127.0.0.0/8) ---


@pytest.fixture
def registry(tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str) -> Iterator[str]:
    """A docker-registry process with one image pushed to it and absent locally; yields its reference."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with open(tmp_path / "registry.log", "wb") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out, stderr=out)
    image = f"127.0.0.1:{port}/opeva-test-pulled-{uuid.uuid4().hex[:8]}:1"
    try:
        wait_for(lambda: _registry_up(port), 20, "the registry")
        # A layer of its own, so the pull really downloads something.
        context = tmp_path / "image"
        context.mkdir()
        (context / "unique").write_bytes(os.urandom(256 * 1024))
        (context / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY unique /unique\n")
        docker_client.images.build(path=str(context), tag=image, rm=True)
        docker_client.images.push(image)
        docker_client.images.remove(image)
        yield image
    finally:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(image, force=True)
        proc.terminate()
        proc.wait(10)


def _registry_up(port: int) -> bool:
    with contextlib.suppress(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
        return True
    return False


def run_pulled(devserver: Devserver, make_worker: Make, image: str, policy: str) -> tuple[str, WorkerProcess]:
    job_id = devserver.submit(image=image, command=sh("echo pulled-job-ran; ls /unique"))
    env = {"ALLOWED_IMAGES": f"opeva-test-*,{image}", "IMAGE_PULL_POLICY": policy}
    worker = make_worker(env).start("--exit-after-job")
    assert worker.wait(120) == 0, worker.text()
    return job_id, worker


def test_pull_progress_goes_to_the_job_log_and_the_worker_log(
    devserver: Devserver, make_worker: Make, registry: str
) -> None:
    job_id, worker = run_pulled(devserver, make_worker, registry, "if-not-present")

    assert devserver.status(job_id) == "finished"
    log = devserver.log_file(job_id).read_text()
    assert f"[job-worker-agent] pulling image {registry}\n" in log
    assert "Pull complete\n" in log and "Downloaded newer image" in log, log
    assert "pulled-job-ran\n/unique\n" in log
    pulled = [line for line in worker.text().splitlines() if "Pull complete" in line]
    assert pulled and all(f"[job={job_id}]" in line for line in pulled), pulled


def test_policy_never_fails_an_absent_image_with_the_reason(
    devserver: Devserver, make_worker: Make, registry: str
) -> None:
    job_id, _ = run_pulled(devserver, make_worker, registry, "never")

    record = devserver.job(job_id)
    assert record["status"] == "failed"
    assert f"image {registry} is not present and IMAGE_PULL_POLICY=never" in record["error"]
    assert "pulling image" not in devserver.log_file(job_id).read_text()


def test_policy_always_pulls_even_a_present_image(
    devserver: Devserver, make_worker: Make, registry: str, docker_client: docker.DockerClient
) -> None:
    docker_client.images.pull(registry)  # present locally now

    job_id, _ = run_pulled(devserver, make_worker, registry, "always")

    assert devserver.status(job_id) == "finished"
    log = devserver.log_file(job_id).read_text()
    assert f"[job-worker-agent] pulling image {registry}\n" in log
    assert "Image is up to date" in log, log


def test_image_prune_keep_leaves_the_most_recently_used_tags(
    devserver: Devserver, make_worker: Make, docker_client: docker.DockerClient
) -> None:
    repository = f"opeva-test-prune-{uuid.uuid4().hex[:6]}"
    image = docker_client.images.get(BUSYBOX_IMAGE)
    for tag in ("1", "2", "3"):
        image.tag(repository, tag)
    try:
        worker = make_worker({"IMAGE_PRUNE_KEEP": "2", "ALLOWED_IMAGES": f"{repository}:*"})
        worker.env["WORKER_MAX_ACTIVE_JOBS"] = "1"
        for tag in ("1", "3"):  # 3 is the most recently used, then 1; 2 was never used here
            job_id = devserver.submit(image=f"{repository}:{tag}", command=sh("echo pruned"))
            worker.start("--exit-after-job")
            assert worker.wait(60) == 0, worker.text()
            assert devserver.status(job_id) == "finished"
        tags = {tag for item in docker_client.images.list(name=repository) for tag in item.tags}
        assert {tag for tag in tags if tag.startswith(repository)} == {f"{repository}:1", f"{repository}:3"}
        assert docker_client.images.get(BUSYBOX_IMAGE)  # the image itself, tagged under its own name, stays
    finally:
        for tag in ("1", "2", "3"):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(f"{repository}:{tag}")
