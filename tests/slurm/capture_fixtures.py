"""Capture real Slurm output for the parser tests: `python tests/slurm/capture_fixtures.py` as root, with the
test cluster running (bash scripts/slurm_cluster.sh). Takes about two minutes (the time-limit scenario).

Each scenario submits one batch job, brings it into a known state, and saves `scontrol show job -o` as
fixtures/scontrol_<scenario>.txt; one squeue listing of all of them goes to fixtures/squeue_all.txt, and
fixtures/jobs.json maps scenario -> job id. The node_fail scenario marks the node DOWN for a moment: running
jobs of anybody else are requeued or failed, so run this on a test cluster only.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from worker_agent.executors.slurm_status import SACCT_FIELDS, SQUEUE_FORMAT

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORK = Path(tempfile.mkdtemp(prefix="slurm-capture-"))


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


def sbatch(*options: str, wrap: str) -> str:
    out = run("sbatch", "--parsable", f"--output={WORK}/%j.out", *options, f"--wrap={wrap}").stdout
    return out.strip().split(";")[0]


def state(job_id: str) -> str:
    return run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").stdout.strip()


def wait_state(job_id: str, wanted: set[str], timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while state(job_id) not in wanted:
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} did not reach {wanted} (it is {state(job_id)!r})")
        time.sleep(0.5)


def free_memory_mb(node: str) -> int:
    fields = dict(
        word.split("=", 1) for word in run("scontrol", "show", "node", "-o", node).stdout.split() if "=" in word
    )
    return int(fields["RealMemory"]) - int(fields["AllocMem"])


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    node = socket.gethostname().split(".")[0]
    jobs: dict[str, str] = {}
    sleep = "sleep 600"
    jobs["completed"] = sbatch(wrap="echo hi")
    jobs["exit3"] = sbatch(wrap="exit 3")
    jobs["signal9"] = sbatch(wrap="sleep 1; kill -9 $$")
    jobs["launch_failure"] = sbatch("--output=/nonexistent/dir/out.txt", wrap="echo never")
    jobs["free_text"] = sbatch("--job-name=my job name", "--comment=opeva:w 1:j1 a=b Partition=x", wrap="true")
    jobs["timeout"] = sbatch("--time=0:10", wrap=sleep)  # Slurm rounds 10 s up to 1 minute
    jobs["running"] = sbatch(wrap=sleep)
    jobs["cancelled_running"] = sbatch(wrap=sleep)
    jobs["term_full_trap"] = sbatch(wrap='trap "echo got TERM; exit 143" TERM; sleep 600 & wait')
    jobs["held"] = sbatch("--hold", wrap="true")
    jobs["cancelled_pending"] = sbatch("--hold", wrap="true")
    jobs["suspended"] = sbatch(wrap=sleep)
    jobs["requeued"] = sbatch(wrap=sleep)
    jobs["partition_time_limit"] = sbatch("--time=5:00:00", wrap="true")
    jobs["partition_config"] = sbatch("--cpus-per-task=64", wrap="true")
    for name in ("running", "cancelled_running", "term_full_trap", "suspended", "requeued", "timeout"):
        wait_state(jobs[name], {"RUNNING"})
    # Nearly all of the node's memory, twice: the second one waits for Resources, the next for Priority.
    memory = free_memory_mb(node) - 100
    jobs["big_running"] = sbatch(f"--mem={memory}", wrap=sleep)
    jobs["pending_resources"] = sbatch(f"--mem={memory}", wrap=sleep)
    jobs["pending_priority"] = sbatch(wrap=sleep)
    time.sleep(3)

    run("scancel", jobs["cancelled_running"])
    run("scancel", "--signal=TERM", "--full", jobs["term_full_trap"])
    run("scancel", jobs["cancelled_pending"])
    run("scontrol", "suspend", jobs["suspended"])
    run("scontrol", "requeue", jobs["requeued"])
    wait_state(jobs["timeout"], {"TIMEOUT"})
    time.sleep(2)

    squeue = run("squeue", "-h", "-t", "all", "-o", SQUEUE_FORMAT, "-j", ",".join(jobs.values())).stdout
    (FIXTURES / "squeue_all.txt").write_text(squeue)
    for name, job_id in jobs.items():
        (FIXTURES / f"scontrol_{name}.txt").write_text(run("scontrol", "show", "job", "-o", job_id).stdout)

    run("scancel", *jobs.values(), check=False)
    wait_state(jobs["big_running"], {"CANCELLED"})

    # A job on a node that goes down: NODE_FAIL without requeue (with it: PENDING again, Restarts=1).
    jobs["node_fail"] = sbatch("--no-requeue", wrap=sleep)
    wait_state(jobs["node_fail"], {"RUNNING"})
    run("scontrol", "update", f"nodename={node}", "state=down", "reason=capture_fixtures node_fail")
    wait_state(jobs["node_fail"], {"NODE_FAIL"}, timeout=30)
    (FIXTURES / "scontrol_node_fail.txt").write_text(run("scontrol", "show", "job", "-o", jobs["node_fail"]).stdout)
    run("scontrol", "update", f"nodename={node}", "state=resume", check=False)

    unknown = run("scontrol", "show", "job", "-o", "999999999", check=False)
    (FIXTURES / "scontrol_unknown.txt").write_text(unknown.stdout + unknown.stderr)
    sacct = run("sacct", "-n", "-P", "-o", SACCT_FIELDS, "-j", jobs["completed"], check=False)
    (FIXTURES / "sacct_accounting_disabled.txt").write_text(sacct.stdout + sacct.stderr)
    (FIXTURES / "jobs.json").write_text(json.dumps(jobs, indent=1) + "\n")
    (FIXTURES / "version.txt").write_text(run("scontrol", "--version").stdout)

    print(f"captured {len(jobs)} jobs into {FIXTURES}")


if __name__ == "__main__":
    main()
