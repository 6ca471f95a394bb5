"""Health: what /readyz and the heartbeat say about Docker, the share, the backend and the worker's threads."""

from __future__ import annotations

import logging
import threading

from worker_agent.health import Health, keep_running


def healthy(now: list[float]) -> Health:
    health = Health(clock=lambda: now[0])
    health.executor_up("27.0")
    health.share_checked(None, 10)
    health.heartbeat_acknowledged()
    return health


def test_ready_when_executor_share_and_a_recent_heartbeat() -> None:
    now = [1000.0]
    health = healthy(now)
    now[0] = 1030.0
    assert health.problems(heartbeat_interval=10.0) == []


def test_each_missing_condition_is_named() -> None:
    now = [1000.0]
    health = healthy(now)
    health.executor_down("connection refused")
    health.share_checked("/s does not exist", None)

    assert health.problems(10.0) == [
        "executor not reachable: connection refused",
        "shared directory: /s does not exist",
    ]
    info = health.heartbeat_info()
    assert (info["executor_ok"], info["share_ok"], info["share_problem"]) == (False, False, "/s does not exist")


def test_heartbeat_older_than_three_intervals_or_none_is_not_ready() -> None:
    now = [1000.0]
    health = healthy(now)
    now[0] = 1031.0
    assert health.problems(10.0) == ["no heartbeat acknowledged by the backend for 31s (limit 30s)"]
    never = Health()
    never.executor_up("27.0")
    never.share_checked(None, None)
    assert never.problems(10.0) == ["no heartbeat acknowledged by the backend yet"]


def test_losing_the_executor_calls_on_change_once() -> None:
    changes: list[int] = []
    health = Health(on_change=lambda: changes.append(1))
    health.executor_down("not checked")  # never up: nothing was lost
    health.executor_up("27.0")
    health.executor_down("gone")
    health.executor_down("still gone")
    assert changes == [1]


def test_a_thread_survives_any_exception_and_shows_it_until_it_recovers() -> None:
    health = Health()
    stop = threading.Event()
    turns: list[str] = []

    def turn() -> float:
        turns.append("turn")
        if len(turns) == 1:
            raise OSError(24, "Too many open files")
        if len(turns) == 2:
            assert health.heartbeat_info()["failing_threads"] == {"reporter": "OSError: [Errno 24] Too many open files"}
            assert "thread reporter failing" in health.problems(10.0)[-1]
            return 0
        stop.set()
        return 0

    keep_running("reporter", turn, stop, health, logging.getLogger("test"))

    assert turns == ["turn"] * 3
    assert health.heartbeat_info()["failing_threads"] == {}
