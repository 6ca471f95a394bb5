"""Benchmark the worker's Slurm executor against bare Slurm, side by side in one run; write the figures as Markdown.

.venv/bin/python bench/slurm.py [--jobs 20] [--repeats 3] [--lines 200] [--docker] [--out bench/SLURM.md]

Needs the one-node test cluster (bash scripts/slurm_cluster.sh); --docker adds the runtime-docker pair of rows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import docker

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from harness import BUSYBOX_IMAGE, Devserver, WorkerProcess, build_busybox_image, wait_for  # noqa: E402

from bench.tools import median, percentile  # noqa: E402
from worker_agent.executors.slurm_status import is_terminal, parse_scontrol_job, scontrol_args  # noqa: E402

PARTITION = "debug"
# The worker's defaults, but POLL_INTERVAL=1 (5) and a partition and time limit (none).
BASE = dict(WORKER_EXECUTOR="slurm", SLURM_CONTAINER_RUNTIME="none", SLURM_PARTITION=PARTITION, SLURM_TIME="5",
            POLL_INTERVAL="1", STATUS_POLL_INTERVAL="10", WORKER_HEARTBEAT_INTERVAL="30", LOG_LEVEL="INFO")  # fmt: skip
WAIT, FLOOR, WAIT_DOCKER = "`sbatch --wait` loop", "sbatch, then `scontrol` every 0.1 s", "`sbatch --wait` loop, docker"
# Row -> (worker settings, or None for a bare loop; the baseline of its ratio). Docker rows only with --docker.
ROWS: dict[str, tuple[dict[str, str] | None, str]] = {
    WAIT: (None, WAIT),
    FLOOR: (None, WAIT),
    "worker, 1 slot": ({}, WAIT),
    "worker, 4 slots": ({"WORKER_MAX_ACTIVE_JOBS": "4"}, WAIT),
    "worker, 1 slot, SLURM_STATE_INTERVAL=1": ({"SLURM_STATE_INTERVAL": "1"}, WAIT),
    WAIT_DOCKER: (None, WAIT_DOCKER),
    "worker, 1 slot, runtime docker": ({"SLURM_CONTAINER_RUNTIME": "docker"}, WAIT_DOCKER),
}
BOUNDS = (
    "`sbatch --wait` asks about its job 2 s after submitting, then 8 s later, so each job of that loop costs 2 s or "
    "10 s ({wait:.1f} s on average): a job here stays PENDING up to ~3 s (slurmctld defers scheduling batch jobs, "
    "`batch_sched_delay`, 3 s by default); Slurm's floor, asked every 0.1 s, is {floor:.1f} s a job. The worker "
    "submits with one `sbatch`, reads stdout.log/stderr.log every SLURM_POLL_INTERVAL (file reads, no command) and "
    "asks whether the job ended every SLURM_STATE_INTERVAL: one `scontrol show job`, plus one `squeue` (queue "
    "position) while PENDING, as the job always is at the first check right after `sbatch`. So a job that exits at "
    "once is seen ended 5 s after submission at the earliest (1 s apart with SLURM_STATE_INTERVAL=1, where Slurm's "
    "scheduling bounds it); a freed slot fetches the next job at once: 1 slot costs SLURM_STATE_INTERVAL + "
    "{extra:.1f} s a job. With 4 slots four such waits overlap (the partition shares each core among up to 4 jobs: "
    "the four run at once). Most commands per job are not the job's: every turn of the worker's loop (each "
    "POLL_INTERVAL, even with its slots full, and when a slot frees) runs `sinfo --version` and `scontrol ping`. The"
    " log delay is bounded by SLURM_POLL_INTERVAL (0.5 s: a line waits in stdout.log until the next read), plus a "
    "`scontrol` when a state check falls between two reads; slurmstepd writes each line to Slurm's file within "
    "milliseconds. The worker writes whole lines: a line reaches the share once its newline was read."
)


class Follower:
    """A file read as it grows: the delay (s) of each `tick <epoch seconds>` line from print to arrival."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd, self.rest, self.delays, self.done = path, -1, b"", list[float](), False

    def poll(self) -> None:
        if self.fd < 0 and self.path.exists():
            self.fd = os.open(self.path, os.O_RDONLY)
        while self.fd >= 0 and (chunk := os.read(self.fd, 1 << 20)):
            now = time.time()
            *lines, self.rest = (self.rest + chunk).split(b"\n")
            for line in lines:
                if (at := line.find(b"tick ")) >= 0:
                    self.delays.append(now - float(line[at + 5 :]))
                self.done = self.done or line.endswith(b"DONE")


class SlurmBench:
    def __init__(self, root: Path, jobs: int) -> None:
        self.root, self.jobs, self.comment = root, jobs, f"opeva-bench-{os.getpid()}"
        self.client = docker.from_env()
        if not self.client.images.list(name=BUSYBOX_IMAGE):
            (root / "image").mkdir()
            build_busybox_image(self.client, root / "image")
        self.dev = Devserver(root)
        self.dev.start()
        self.workers: list[WorkerProcess] = []
        self.others: set[str] = set()
        # The workers run Slurm's commands through shims that count them (scontrol with its subcommand).
        self.calls, self.shims = root / "slurm-calls", root / "shims"
        self.shims.mkdir()
        for name in ("sbatch", "scontrol", "squeue", "sacct", "scancel", "sinfo"):
            if real := shutil.which(name):
                what = f"{name} $1" if name in ("scontrol", "sinfo") else name
                (self.shims / name).write_text(f'#!/bin/sh\necho "{what}" >> {self.calls}\nexec {real} "$@"\n')
                (self.shims / name).chmod(0o755)

    def close(self) -> None:
        for worker in self.workers:
            worker.cleanup(self.client)
        if ours := [ref for ref, comment in self.queue() if self.ours(comment)]:
            subprocess.run(["scancel", *ours], capture_output=True, check=False)
        self.dev.stop()

    def queue(self) -> list[tuple[str, str]]:
        listing = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True, check=False).stdout
        return [(ref, comment) for ref, _, comment in (line.partition(" ") for line in listing.splitlines())]

    def ours(self, comment: str) -> bool:
        return comment == self.comment or any(f":{worker.worker_id}:" in comment for worker in self.workers)

    def note_others(self) -> None:
        """Wait up to a minute for Slurm jobs that are not the bench's (another test run) to end; note those left."""
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self.other_jobs(), 60, "other Slurm jobs to end", interval=1)
        self.others |= self.other_jobs()

    def other_jobs(self) -> set[str]:
        return {ref for ref, comment in self.queue() if not self.ours(comment)}

    def worker(self, env: dict[str, str]) -> WorkerProcess:
        self.note_others()
        more = {"SLURM_RUN_DIR": f"{self.root}/runs", "PATH": f"{self.shims}:{os.environ['PATH']}"}
        worker = WorkerProcess(self.dev, self.root, {**BASE, **more, **env})
        self.workers.append(worker.start())
        wait_for(lambda: worker.worker_id in self.dev.hosts(), 60, "the worker's first heartbeat")
        return worker

    def retire(self, worker: WorkerProcess) -> None:
        worker.signal(signal.SIGTERM)
        worker.wait(30)
        worker.cleanup(self.client)

    def through_worker(self, env: dict[str, str]) -> dict[str, Any]:
        """Submit the batch to the backend at once; seconds until every job is `finished`; Slurm calls per job."""
        worker = self.worker(env)
        self.calls.write_text("")
        began = time.monotonic()
        ids = {self.dev.submit(image=BUSYBOX_IMAGE, command=["true"]) for _ in range(self.jobs)}
        wait_for(lambda: self.all_finished(ids), 30 * self.jobs, f"{self.jobs} jobs", interval=0.05)
        seconds = time.monotonic() - began
        calls = Counter(self.calls.read_text().splitlines())
        self.retire(worker)
        return {"seconds": seconds, "calls": {name: n / self.jobs for name, n in sorted(calls.items())}}

    def bare(self, how: str) -> dict[str, Any]:
        """The same jobs one after another, straight to Slurm (same partition, time limit, runtime)."""
        self.note_others()
        out = f"--output={self.root}/bare-%j.out"
        sbatch = ["sbatch", f"--partition={PARTITION}", "--time=5", f"--comment={self.comment}", out]
        wrap = ["--wrap", f"docker run --rm {BUSYBOX_IMAGE} true" if how == WAIT_DOCKER else "true"]
        began = time.monotonic()
        for _ in range(self.jobs):
            wait = [] if how == FLOOR else ["--wait"]
            done = subprocess.run([*sbatch, "--parsable", *wait, *wrap], capture_output=True, text=True, check=False)
            ref = done.stdout.strip().split(";")[0]
            if done.returncode != 0:
                output = self.root / f"bare-{ref}.out"
                raise RuntimeError(f"Slurm job {ref}: {done.stderr}{output.exists() and output.read_text()}")
            if how == FLOOR:
                wait_for(lambda ref=ref: self.ended(ref), 120, f"Slurm job {ref}", interval=0.1)
        return {"seconds": time.monotonic() - began}

    def ended(self, ref: str) -> bool:
        state = parse_scontrol_job(subprocess.run(scontrol_args(ref), capture_output=True, text=True).stdout)
        if state is not None and is_terminal(state.state) and state.state != "COMPLETED":
            raise RuntimeError(f"Slurm job {ref} ended {state.state}")
        return state is not None and is_terminal(state.state)

    def all_finished(self, ids: set[str]) -> bool:
        jobs = [job for job in self.dev.request("GET", "/jobs") if job["job_id"] in ids]
        if bad := [job for job in jobs if job["status"] in ("failed", "stopped", "canceled")]:
            raise RuntimeError(f"a job ended {bad[0]['status']}: {bad[0]}")
        return bool(sum(job["status"] == "finished" for job in jobs) == len(ids))

    def log_delay(self, repeats: int, lines: int) -> dict[str, list[float]]:
        """A job printing `tick <its clock>` every 100 ms; each line's delay into the share's job log and, for the
        same lines, into Slurm's own output file (what the worker reads), both polled every 10 ms."""
        worker = self.worker({})
        script = f"i=0; while [ $i -lt {lines} ]; do echo tick $(date +%s.%N); sleep 0.1; i=$((i+1)); done; echo DONE"
        delays: dict[str, list[float]] = {"share job log (worker)": [], "Slurm output file (baseline)": []}
        for _ in range(repeats):
            job_id = self.dev.submit(image=BUSYBOX_IMAGE, command=["sh", "-c", script])
            files = [self.dev.log_file(job_id), self.root / "runs" / "jobs" / job_id / "stdout.log"]
            share, _ = followers = [Follower(path) for path in files]
            deadline = time.monotonic() + 120 + lines * 0.2
            while not share.done and time.monotonic() < deadline:
                for follower in followers:
                    follower.poll()
                time.sleep(0.01)
            for name, follower in zip(delays, followers, strict=True):
                os.close(follower.fd)
                delays[name] += follower.delays
            self.dev.wait_status(job_id, {"finished"}, 60)
            print(f"bench: log delay: {len(share.delays)}/{lines} lines, p99 {percentile(share.delays, 99):.2f} s")
        self.retire(worker)
        return delays


def render(meta: dict[str, Any], turn: dict[str, list[dict[str, Any]]], delays: dict[str, list[float]]) -> str:
    med = {row: median([run["seconds"] for run in runs]) for row, runs in turn.items()}
    jobs, others = meta["jobs"], ", ".join(sorted(meta["others"]))
    out = [
        "# Slurm executor: job-worker-agent against bare Slurm",
        "",
        f"Run `{meta['command']}` ({meta['seconds']:.0f} s) on {meta['date']}: {meta['machine']}, {meta['slurm']}, "
        f"commit {meta['commit']}. One-node cluster of `scripts/slurm_cluster.sh`, partition `{PARTITION}`, "
        "`--time=5`, runtime `none` (the job is the plain command on the node) unless a row says docker. Worker: "
        "POLL_INTERVAL=1 (default 5); STATUS_POLL_INTERVAL=10, WORKER_HEARTBEAT_INTERVAL=30, SLURM_POLL_INTERVAL=0.5 "
        "and SLURM_STATE_INTERVAL=5 are the defaults, unless a row says otherwise; one worker at a time, up before "
        f"the clock starts. Medians of {meta['repeats']} repeats, rows interleaved (order rotated each repeat); "
        "ratio = figure / its baseline from the same run (> 1: slower).",
        *(["", f"Other Slurm jobs ran during the run: {others}."] if others else []),
        "",
        f"## Turnaround of {jobs} jobs that exit at once (`true`), submitted together, until all are `finished`",
        "",
        "| how | seconds | per job | each repeat (s) | baseline | ratio | goal <= 1.25x | Slurm commands per job |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, runs in turn.items():
        base, worker, calls = ROWS[row][1], "calls" in runs[0], Counter[str]()
        for run in runs:
            calls.update({name: n / len(runs) for name, n in run.get("calls", {}).items()})
        each = ", ".join(f"{run['seconds']:.1f}" for run in runs)
        ratio = "-" if base == row else f"{med[row] / med[base]:.2f}x"
        goal = ("**met**" if med[row] <= 1.25 * med[base] else "**missed**") if worker else ""
        used = ", ".join(f"{name} {n:.2f}" for name, n in sorted(calls.items())) if worker else "1 sbatch"
        cells = [row, f"{med[row]:.1f}", f"{med[row] / jobs:.2f} s", each, "-" if base == row else base, ratio]
        out.append(f"| {' | '.join(cells)} | {goal} | {used} |")
    out += ["", f"## Log delay: a job printing its clock every 100 ms, {meta['lines']} lines a repeat", ""]
    out += ["| file (polled every 10 ms) | lines | p50 | p99 | max | goal p99 < 3 s |", "| --- " * 6 + "|"]
    for name, values in delays.items():
        p50, p99, top = percentile(values, 50), percentile(values, 99), max(values, default=float("nan"))
        goal = ("**met**" if p99 < 3 else "**missed**") if "worker" in name else ""
        out.append(f"| {name} | {len(values)} | {p50:.3f} s | {p99:.3f} s | {top:.3f} s | {goal} |")
    one = med["worker, 1 slot"] / jobs - 5
    bounds = BOUNDS.format(wait=med[WAIT] / jobs, floor=med[FLOOR] / jobs, extra=one)
    return "\n".join([*out, "", "## What bounds each figure", "", bounds, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20, help="jobs per turnaround batch (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (default 3)")
    parser.add_argument("--lines", type=int, default=200, help="lines of the log-delay job, 100 ms apart")
    parser.add_argument("--docker", action="store_true", help="also the runtime-docker worker and its bare loop")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "SLURM.md")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # still cancel jobs, stop processes
    rows = [row for row in ROWS if args.docker or "docker" not in row]
    began, turn = time.monotonic(), {row: list[dict[str, Any]]() for row in rows}
    with tempfile.TemporaryDirectory(prefix="opeva-bench-slurm-") as tmp:
        bench = SlurmBench(Path(tmp), args.jobs)
        try:
            for rep in range(args.repeats):
                for row in rows[rep % len(rows) :] + rows[: rep % len(rows)]:
                    env = ROWS[row][0]
                    turn[row].append(bench.bare(row) if env is None else bench.through_worker(env))
                    print(f"bench: repeat {rep}, {row}: {turn[row][-1]}", flush=True)
            delays = bench.log_delay(args.repeats, args.lines)
        finally:
            bench.close()
    git = ["git", "-C", str(REPO)]
    meta = {
        "command": " ".join([".venv/bin/python bench/slurm.py", *(sys.argv[1:] if argv is None else argv)]),
        "seconds": time.monotonic() - began,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "slurm": _run("sinfo", "--version"),
        "commit": _run(*git, "rev-parse", "--short", "HEAD")
        + (" + uncommitted src/ changes" if _run(*git, "status", "-s", "src") else ""),
        **{"jobs": args.jobs, "repeats": args.repeats, "lines": args.lines, "others": bench.others},
    }
    args.out.write_text(text := render(meta, turn, delays))
    print(text)
    return 0


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
