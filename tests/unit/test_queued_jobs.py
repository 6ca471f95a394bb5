"""A batch executor's queue (Slurm): `setup` says why a job waits and where it stands; the heartbeat counts
pending and running jobs. Against the fast doubles: the Slurm side is in tests/slurm."""

from __future__ import annotations

from typing import Any

from fakes import FakeExecutor, Script
from harness import wait_for
from rig import Rig

from worker_agent.domain import JobHandle
from worker_agent.executors.slurm_status import Outcome


class QueuedExecutor(FakeExecutor):
    """Jobs wait in a queue after start; the test says what the queue reports for each."""

    name = "queued"
    pending_after_start = True

    def __init__(self) -> None:
        super().__init__()
        self.verdicts: dict[str, Outcome] = {}

    def outcome(self, job: JobHandle) -> Outcome | None:
        return self.verdicts.get(job.job_id)


def _pending(reason: str, position: int) -> Outcome:
    return Outcome("setup", details={"slurm_job_id": "7", "pending_reason": reason, "queue_position": position})


def _setups(rig: Rig, job_id: str) -> list[dict[str, Any]]:
    return [body.get("details", {}) for body in rig.backend.reports.get(job_id, []) if body["status"] == "setup"]


def test_a_queued_job_reports_its_reason_and_place_once_per_change(rig: Rig) -> None:
    rig.executor = executor = QueuedExecutor()
    executor.default = Script(runs_until_stopped=True)
    executor.verdicts["a"] = _pending("waiting for resources", 2)
    rig.backend.submit("a")
    rig.start()

    wait_for(lambda: len(_setups(rig, "a")) == 2, 3, "setup with the queue details")
    first = _setups(rig, "a")[1]
    assert (first["pending_reason"], first["queue_position"]) == ("waiting for resources", 2)
    checks = len(rig.backend.calls)
    wait_for(lambda: len(rig.backend.calls) > checks + 20, 3, "more status checks")
    assert len(_setups(rig, "a")) == 2  # nothing changed in the queue: no new setup

    executor.verdicts["a"] = _pending("waiting for resources", 1)
    wait_for(lambda: len(_setups(rig, "a")) == 3, 3, "the new place in the line")
    assert _setups(rig, "a")[2]["queue_position"] == 1

    executor.verdicts["a"] = Outcome("running")
    rig.wait_status("a", "running")
    executor.exit("a", 0)
    rig.wait_status("a", "finished")
    assert rig.backend.history["a"] == ["queued", "dispatched", "setup", "running", "finished"]


def test_the_heartbeat_counts_pending_and_running_jobs(rig: Rig) -> None:
    rig.executor = executor = QueuedExecutor()
    executor.default = Script(runs_until_stopped=True)
    executor.verdicts.update(a=_pending("priority", 1), b=Outcome("running"))
    rig.backend.submit("a")
    rig.backend.submit("b")
    rig.start(max_active_jobs=2)
    rig.wait_status("b", "running")

    def counted() -> bool:
        info = rig.backend.heartbeats[-1]
        return (info["pending_job_count"], info["running_job_count"], info["active_job_count"]) == (1, 1, 2)

    wait_for(counted, 3, "one pending and one running job in the heartbeat")
    info = rig.backend.heartbeats[-1]
    assert (info["executor"], info["executor_ok"], info["max_active_jobs"]) == ("queued", True, 2)
    assert "docker_ok" not in info  # the Docker names are kept for the Docker executor only
