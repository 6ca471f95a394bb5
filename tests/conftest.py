"""Shared fixtures: a real dockerd (a missing one fails the run, never skips), the busybox job image,
the reference backend and worker processes. See harness.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
from harness import Devserver, WorkerProcess, build_busybox_image, once_per_run


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"dockerd is not reachable ({exc}): run scripts/bootstrap.sh, which installs and starts it")
    return client


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    def build() -> str:
        return build_busybox_image(docker_client, tmp_path_factory.mktemp("busybox-image"))

    return once_per_run(tmp_path_factory, "busybox-image", build)


@pytest.fixture
def make_devserver(tmp_path: Path) -> Iterator[Callable[..., Devserver]]:
    started: list[Devserver] = []

    def make(*options: str) -> Devserver:
        server = Devserver(tmp_path / f"backend{len(started)}", "--sweep-interval", "1", *options)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def devserver(make_devserver: Callable[..., Devserver]) -> Devserver:
    return make_devserver()


@pytest.fixture
def make_worker(
    devserver: Devserver, tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> Iterator[Callable[..., WorkerProcess]]:
    """Worker processes against `devserver`; their processes and containers are removed afterwards."""
    workers: list[WorkerProcess] = []

    def make(env: dict[str, str] | None = None, server: Devserver | None = None) -> WorkerProcess:
        worker = WorkerProcess(server or devserver, tmp_path, env)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.cleanup(docker_client)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks (--dist loadgroup)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that must not run side by side with each other go to one pytest-xdist worker, one after the other
    (scripts/test.sh runs tier 2 with --dist loadgroup):
    - "slurm": the live cluster's tests and those using the loopback sshd; the node has room for a few jobs
      only, some tests time how soon their jobs start or which place they have in the queue, doctor's probe
      jobs are looked up by name, and one test stops sshd (the others would see an outage);
    - "hostile": the hostile backend's jobs have fixed ids (`after-1` in every scene), so two scenes at once
      would create containers of the same name;
    - tests marked xdist_group("cpu") keep both cores busy for a while: one of them at a time.
    Tests marked `serial` run apart from all others, after them."""
    for item in items:
        if item.get_closest_marker("slurm") or "sshd" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        elif item.path.parent.name == "hostile":
            item.add_marker(pytest.mark.xdist_group("hostile"))
