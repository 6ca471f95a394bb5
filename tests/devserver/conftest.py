"""Fixtures for the opeva-devserver tests: an in-process client with a fake clock, a live uvicorn server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from devserver_support import Env, FakeClock, Live, MakeEnv, build_env, wait_for_port
from harness import free_port

from opeva_devserver.app import create_app
from opeva_devserver.settings import Settings
from opeva_devserver.store import Store


@pytest.fixture
def make_env(tmp_path: Path) -> MakeEnv:
    made: list[Env] = []

    def make(**overrides: Any) -> Env:
        """A fresh environment: the first in ``tmp_path/shared``, later ones in shared2, shared3..."""
        name = "shared" if not made else f"shared{len(made) + 1}"
        made.append(build_env(tmp_path / name, FakeClock(), **overrides))
        return made[-1]

    return make


@pytest.fixture
def env(make_env: MakeEnv) -> Env:
    return make_env()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Live]:
    """A real uvicorn server on a free loopback port, running in a thread."""
    shared = tmp_path / "shared"
    settings = Settings(shared_dir=shared, sweep_interval=0)
    store = Store(settings.resolved_db_path, shared)
    app = create_app(store, settings)
    (shared / "configs" / "demo.yaml").write_text("name: demo\n", encoding="utf-8")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        yield Live(f"http://127.0.0.1:{port}", store, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
