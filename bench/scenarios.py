"""The measurements: each runs the worker and its Docker CLI baseline side by side, interleaved."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import json
import math
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from bench import masking, tools
from worker_agent.logs.masking import SecretMasker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import BUSYBOX_IMAGE, Devserver, WorkerProcess, build_busybox_image, wait_for

IMAGE = BUSYBOX_IMAGE
# Seconds between a worker's next-job polls, unless a scenario sets its own.
POLL_INTERVAL = 1
CLI_LABEL = "opeva-bench=docker-cli"  # the baseline's containers, to clean up after a wedged dockerd
MiB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    repeats: int
    flood_bytes: int
    tick_count: int
    jobs: int
    stop_intervals: tuple[int, ...]
    idle_seconds: float
    # Many workers, one backend: this many single-slot workers against one worker with as many slots.
    fleet_workers: int = 16
    fleet_jobs: int = 500


FULL = Sizes(repeats=3, flood_bytes=200 * MiB, tick_count=800, jobs=50, stop_intervals=(1, 10), idle_seconds=60)
SMOKE = Sizes(
    repeats=1,
    flood_bytes=4 * MiB,
    tick_count=30,
    jobs=3,
    stop_intervals=(1,),
    idle_seconds=3,
    fleet_workers=2,
    fleet_jobs=6,
)
# Every scenario at full shape (16 workers) but small: a trial of the whole suite in a few minutes.
QUICK = Sizes(
    repeats=1,
    flood_bytes=20 * MiB,
    tick_count=100,
    jobs=20,
    stop_intervals=(1,),
    idle_seconds=10,
    fleet_workers=16,
    fleet_jobs=48,
)
# The masking scenario's job env: a 4 KB PEM-like key and 31 tokens (bench/masking.py), under names the worker
# takes for secrets (KEY, TOKEN) or, for the baseline, under names it does not. The job prints these few of them
# (the key and 3 tokens) after the parts of its flood; the other 28 it never prints.
MASK_PARTS = 8
PRINTED = (0, 1, 2, 3)
TERMINAL = ("finished", "failed", "stopped", "canceled")

Row = dict[str, Any]


class Bench:
    def __init__(self, root: Path, sizes: Sizes) -> None:
        self.root = root
        self.sizes = sizes
        self.client = docker.from_env()
        build_busybox_image(self.client, _fresh(root / "image"))
        self.dev = Devserver(root)
        self.dev.start()
        self.dockerd = tools.dockerd_pid()
        self.workers: list[WorkerProcess] = []
        self.names: list[str] = []
        self.others: set[str] = set()

    def close(self) -> None:
        for worker in self.workers:
            worker.cleanup(self.client)
        for name in self.names:
            tools.docker("rm", "-f", name, check=False)
        self.dev.stop()

    # --- parts ---

    def note_others(self) -> None:
        """Containers that are not the bench's (other test runs on a shared machine skew the figures)."""
        ours = {worker.worker_id for worker in self.workers}
        listing = tools.docker("ps", "--format", '{{.Names}} {{.Label "opeva.worker_id"}}', check=False)
        for line in listing.splitlines():
            name, _, owner = line.partition(" ")
            if not name.startswith("bench-") and owner not in ours:
                self.others.add(name)

    def worker(self, dev: Devserver | None = None, wait: bool = True, **env: str) -> WorkerProcess:
        """A worker process against `dev` (default: the bench's devserver), up once its first heartbeat is in."""
        dev = dev or self.dev
        self.note_others()
        base = {
            "LOG_LEVEL": "INFO",
            "POLL_INTERVAL": str(POLL_INTERVAL),
            "STATUS_POLL_INTERVAL": "10",
            "STOP_GRACE_PERIOD": "10",
        }
        worker = WorkerProcess(dev, dev.shared.parent, {**base, **env}).start()
        self.workers.append(worker)
        if wait:
            wait_for(lambda: worker.worker_id in dev.hosts(), 30, "the worker's first heartbeat")
        return worker

    def retire(self, worker: WorkerProcess) -> None:
        worker.signal(signal.SIGTERM)
        worker.wait(15)
        worker.cleanup(self.client)

    def container_name(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        return name

    def dockerd_meter(self) -> tools.Sampler | None:
        # Looked up each time: another user of this machine's dockerd may have restarted it.
        self.dockerd = tools.dockerd_pid()
        return tools.Sampler(self.dockerd) if self.dockerd else None

    def submit(self, command: list[str]) -> str:
        return str(self.dev.submit(image=IMAGE, command=command))

    def drop_job_files(self, job_id: str) -> None:
        shutil.rmtree(self.dev.shared / "jobs" / job_id, ignore_errors=True)

    # --- log throughput ---

    def flood_worker(self, worker: WorkerProcess) -> Row:
        assert worker.proc is not None
        size = self.sizes.flood_bytes
        meter, dockerd = tools.Sampler(worker.proc.pid), self.dockerd_meter()
        job_id = self.submit(tools.flood_script(size))
        path = self.dev.log_file(job_id)
        start, done = tools.wait_flood(path, size, 300, meter.tick, self._ended(job_id))
        row = _flood_row("worker", size, start, done, meter.cpu_used(), meter.peak_rss, dockerd)
        self.dev.wait_status(job_id, {"finished"}, 60)
        row["error"] = tools.verify_flood(path, [size])
        self.drop_job_files(job_id)
        return row

    def flood_cli(self, how: str) -> Row:
        """how: `logs -f` (follow a detached container), `run` (attached) or `run, no log driver`."""
        size = self.sizes.flood_bytes
        out = self.root / "cli.log"
        name = self.container_name()
        dockerd = self.dockerd_meter()
        command = tools.flood_script(size)
        if how == "logs -f":
            tools.docker("run", "-d", "--name", name, IMAGE, *command)
            cli = tools.CliRun(["docker", "logs", "-f", name], out)
        else:
            driver = ["--log-driver", "none"] if "no log driver" in how else []
            cli = tools.CliRun(["docker", "run", "--name", name, *driver, IMAGE, *command], out)
        try:
            start, done = tools.wait_flood(out, size, 300, ended=cli.exited)
            cli.wait()
            row = _flood_row(f"docker {how}", size, start, done, cli.cpu, cli.maxrss, dockerd)
            row["error"] = tools.verify_flood(out, [size])
        except tools.ShortLog as exc:
            cli.wait()
            row = _flood_row(f"docker {how}", size, 0, 0, cli.cpu, cli.maxrss, dockerd)
            row["error"] = f"`docker {how}` exited {cli.proc.returncode}: {exc}"
        tools.docker("rm", "-f", name)
        out.unlink()
        return row

    def throughput(self) -> list[Row]:
        worker = self.worker()
        rows: list[Row] = []
        variants = ["worker", "logs -f", "run", "run, no log driver"]
        for rep in range(self.sizes.repeats):
            for how in variants[rep % 4 :] + variants[: rep % 4]:
                row = self.flood_worker(worker) if how == "worker" else self.flood_cli(how)
                rows.append({**row, "repeat": rep})
                _progress(row)
        self.retire(worker)
        return rows

    # --- masking at full speed ---

    def masking(self) -> list[Row]:
        """The flood with 32 secrets in the job's env (4 of them printed between its parts, 28 never) against the
        same job with the same values under names the worker does not take for secrets: only masking differs."""
        values = masking.secrets(random.Random(1))
        worker = self.worker()
        rows: list[Row] = []
        for rep in range(self.sizes.repeats):
            for secret in (True, False)[:: 1 if rep % 2 == 0 else -1]:
                row = {**self._masked_flood(worker, values, secret), "repeat": rep}
                rows.append(row)
                _progress(row)
        self.retire(worker)
        return rows

    def _masked_flood(self, worker: WorkerProcess, values: list[str], secret: bool) -> Row:
        assert worker.proc is not None
        names = _env_names(secret, len(values))
        env = dict(zip(names, values, strict=True))
        size = self.sizes.flood_bytes
        parts = [size // MASK_PARTS] * (MASK_PARTS - 1)
        parts.append(size - sum(parts))
        printed = [names[i] for i in PRINTED]
        lines = [tools.printed_line(i, env[printed[i % len(printed)]]) for i in range(len(parts))]
        if secret:
            lines = [_masked(line, values) for line in lines]
        pieces: list[int | bytes] = [piece for pair in zip(parts, lines, strict=True) for piece in pair]
        payload = size + sum(map(len, lines))
        what = f"worker, {len(values)} secrets" if secret else "worker, no secrets"
        meter, dockerd = tools.Sampler(worker.proc.pid), self.dockerd_meter()
        job_id = str(self.dev.submit(image=IMAGE, command=tools.printing_flood_script(parts, printed), env=env))
        path = self.dev.log_file(job_id)
        try:
            start, done = tools.wait_flood(path, payload, 300, meter.tick, self._ended(job_id))
            row = _flood_row(what, payload, start, done, meter.cpu_used(), meter.peak_rss, dockerd)
            self.dev.wait_status(job_id, {"finished"}, 60)
            row["error"] = tools.verify_pieces(path, pieces)
        except tools.ShortLog as exc:
            row = _flood_row(what, payload, 0, 0, meter.cpu_used(), meter.peak_rss, dockerd)
            row["error"] = f"{exc} (status {self.dev.status(job_id)})"
        row["secrets"] = len(values) if secret else 0
        self.drop_job_files(job_id)
        return row

    def readopt(self) -> Row:
        """SIGKILL the worker a quarter into a flood, start it again, and check that every byte arrives once."""
        half = self.sizes.flood_bytes // 2
        worker = self.worker()
        job_id = self.submit(tools.flood_script(half, half, pause=1))
        path = self.dev.log_file(job_id)
        tools.wait_size(path, half // 2, 120)
        worker.kill()
        killed_at = path.stat().st_size
        time.sleep(0.5)
        worker.start()
        try:
            start, done = tools.wait_flood(path, 2 * half, 300, ended=self._ended(job_id))
            seconds = (done - start) / 1e9
            self.dev.wait_status(job_id, {"finished"}, 60)
            error = tools.verify_flood(path, [half, half])
        except tools.ShortLog as exc:
            seconds, error = float("nan"), f"{exc} (status {self.dev.status(job_id)})"
        self.drop_job_files(job_id)
        self.retire(worker)
        row = {"killed_at_bytes": killed_at, "bytes": 2 * half, "seconds": seconds, "error": error}
        _progress({"what": "re-adoption", **row})
        return row

    # --- log latency ---

    def latency(self) -> list[Row]:
        worker = self.worker()
        rows: list[Row] = []
        count, period = self.sizes.tick_count, 0.01
        for rep in range(self.sizes.repeats):
            for how in ("worker", "docker logs -f")[:: 1 if rep % 2 == 0 else -1]:
                if how == "worker":
                    job_id = self.submit(tools.tick_script(count, period))
                    delays = tools.watch_ticks(self.dev.log_file(job_id), 120)
                    self.dev.wait_status(job_id, {"finished"}, 60)
                    self.drop_job_files(job_id)
                else:
                    name, out = self.container_name(), self.root / "ticks.log"
                    tools.docker("run", "-d", "--name", name, IMAGE, *tools.tick_script(count, period))
                    cli = tools.CliRun(["docker", "logs", "-f", name], out)
                    delays = tools.watch_ticks(out, 120)
                    cli.wait()
                    tools.docker("rm", "-f", name)
                row = {
                    "what": how,
                    "repeat": rep,
                    "lines": len(delays),
                    "p50_ms": tools.percentile(delays, 50),
                    "p99_ms": tools.percentile(delays, 99),
                    "max_ms": max(delays),
                }
                rows.append(row)
                _progress(row)
        self.retire(worker)
        return rows

    # --- job turnaround ---

    def turnaround(self) -> list[Row]:
        worker = self.worker()
        rows: list[Row] = []
        n = self.sizes.jobs
        for rep in range(self.sizes.repeats):
            for how in ("worker", "docker run --rm")[:: 1 if rep % 2 == 0 else -1]:
                worker_figures: Row = {}
                if how == "worker":
                    elapsed, jobs = self._batch(n)
                    worker_figures = {"phases": _phases(jobs), "first_pickup_s": _first_pickup(jobs)}
                else:
                    began = time.monotonic()
                    for _ in range(n):
                        _docker_run_true()
                    elapsed = time.monotonic() - began
                row = {"what": how, "repeat": rep, "jobs": n, "seconds": elapsed, "per_job_s": elapsed / n}
                row.update(worker_figures)
                rows.append(row)
                _progress(row)
        self.retire(worker)
        return rows

    # --- slots ---

    def slots(self) -> list[Row]:
        """One worker with 4 slots against 4 single-slot workers on the same batch; then the 4-slot worker's
        RSS while 4 jobs run. Workers are up (heartbeat seen) before the clock starts."""
        rows: list[Row] = []
        n = self.sizes.jobs
        for rep in range(self.sizes.repeats):
            for how in ("1 worker, 4 slots", "4 workers, 1 slot each")[:: 1 if rep % 2 == 0 else -1]:
                if how.startswith("1 worker"):
                    workers = [self.worker(WORKER_MAX_ACTIVE_JOBS="4")]
                else:
                    workers = [self.worker() for _ in range(4)]
                elapsed, _ = self._batch(n)
                row = {"what": how, "repeat": rep, "jobs": n, "seconds": elapsed, "per_job_s": elapsed / n}
                rows.append(row)
                _progress(row)
                for worker in workers:
                    self.retire(worker)
        rows.append(self._rss_with_jobs(4))
        return rows

    def _rss_with_jobs(self, count: int) -> Row:
        worker = self.worker(WORKER_MAX_ACTIVE_JOBS=str(count))
        assert worker.proc is not None
        ids = [self.submit(["sleep", "5"]) for _ in range(count)]
        wait_for(lambda: all(self.dev.status(job_id) == "running" for job_id in ids), 60, "all running")
        meter = tools.Sampler(worker.proc.pid)
        for _ in range(20):
            meter.tick()
            time.sleep(0.1)
        self.retire(worker)
        return {"what": f"RSS of one worker with {count} jobs running", "repeat": 0, "rss": meter.peak_rss}

    def _batch(self, n: int) -> tuple[float, list[Row]]:
        """Submit n `true` jobs at once; seconds from the first submit to the last `finished` by the backend's
        clock, and the jobs' rows. The bench looks only every half second, and in the backend's database
        (read-only), never through its API: on these 2 cores, asking the API every 50 ms cost the backend 65 ms
        of CPU per job that Docker's create and start then lacked, and even every 0.5 s a `GET /jobs` of the
        turnaround's 250 jobs held the backend for 23 ms each time (a `docker run` loop has no such onlooker).
        The end is read from the backend's own records, not from the look.

        The batch comes at a random moment of the workers' poll cycle (POLL_INTERVAL), as a user's would: right
        after a poll (a worker that just came up, or just found the queue empty after the previous batch) its
        first job would wait the whole cycle instead of half of it on average."""
        time.sleep(random.uniform(0, POLL_INTERVAL))
        began = time.time()
        ids = {self.submit(["true"]) for _ in range(n)}
        wait_for(lambda: self._all_done(ids), 300, f"{n} jobs", interval=0.5)
        jobs = [job for job in _job_rows(self.dev.db) if job["job_id"] in ids]
        return max(_first(job, "finished") or math.inf for job in jobs) - began, jobs

    def _ended(self, job_id: str) -> Callable[[], bool]:
        return lambda: self.dev.status(job_id) in ("finished", "failed", "stopped", "canceled")

    def _all_done(self, ids: set[str]) -> bool:
        with _read_db(self.dev.db) as conn:
            rows = conn.execute("SELECT job_id, status FROM jobs").fetchall()
        statuses: dict[str, str] = {job_id: status for job_id, status in rows if job_id in ids}
        bad = {job_id: status for job_id, status in statuses.items() if status in ("failed", "stopped", "canceled")}
        if bad:
            job_id, status = next(iter(bad.items()))
            raise RuntimeError(f"a batch job ended {status}: {self.dev.job(job_id)}")
        return sum(status == "finished" for status in statuses.values()) == len(ids)

    # --- many workers, one backend ---

    def fleet(self) -> list[Row]:
        """The same batch of jobs that exit at once through k single-slot workers, through one worker with k slots
        (each configuration against a fresh devserver of its own), and through k `docker run --rm` at a time."""
        k = self.sizes.fleet_workers
        variants = [f"{k} workers, 1 slot each", f"1 worker, {k} slots", f"docker run --rm, {k} at a time"]
        rows: list[Row] = []
        for rep in range(self.sizes.repeats):
            for how in variants[rep % 3 :] + variants[: rep % 3]:
                if how.startswith("docker"):
                    figures = self._fleet_cli(k)
                else:
                    figures = self._fleet_workers(k, slots=how.startswith("1 worker"))
                row = {"what": how, "repeat": rep, "jobs": self.sizes.fleet_jobs, "concurrency": k, **figures}
                rows.append(row)
                _progress(row)
        return rows

    def _fleet_workers(self, k: int, slots: bool) -> Row:
        n = self.sizes.fleet_jobs
        dev = Devserver(_fresh(self.root / f"fleet-{uuid.uuid4().hex[:8]}"))
        dev.start()
        workers: list[WorkerProcess] = []
        try:
            # The heartbeat at its default period: per-job beats still go out, as in a deployment.
            env = {"WORKER_HEARTBEAT_INTERVAL": "30"}
            if slots:
                workers = [self.worker(dev, wait=False, WORKER_MAX_ACTIVE_JOBS=str(k), **env)]
            else:
                workers = [self.worker(dev, wait=False, **env) for _ in range(k)]
            ids = {worker.worker_id for worker in workers}
            wait_for(lambda: ids <= set(dev.hosts()), 120, "every worker's first heartbeat", interval=0.5)
            time.sleep(1)  # the workers' start-up CPU is over before the meters start
            assert dev.proc is not None
            pids = [worker.proc.pid for worker in workers if worker.proc is not None]
            meters = tools.CpuMeters({"backend": [dev.proc.pid], "workers": pids, **self._docker_pids()})
            submitting = time.monotonic()
            for _ in range(n):
                dev.submit(image=IMAGE, command=["true"])
            submit_s = time.monotonic() - submitting
            wait_for(lambda: _count_done(dev.db) >= n, 600, f"{n} jobs", interval=0.2)
            cpu = meters.used()
            jobs = _job_rows(dev.db)
        finally:
            for worker in workers:
                worker.signal(signal.SIGTERM)
            for worker in workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(20)
                worker.cleanup(self.client)
            dev.stop()
        figures = _fleet_figures(jobs)
        return {**figures, **cpu, "submit_s": submit_s, "backend_ms_per_job": 1000 * cpu["backend_cpu_s"] / n}

    def _fleet_cli(self, k: int) -> Row:
        n = self.sizes.fleet_jobs
        meters = tools.CpuMeters(self._docker_pids())
        began = time.monotonic()

        try:
            with concurrent.futures.ThreadPoolExecutor(k) as pool:
                list(pool.map(lambda _: _docker_run_true(), range(n)))
        except subprocess.TimeoutExpired as exc:
            # dockerd 20.10 has wedged here once (containers left "Up", `docker inspect` hanging): a known class
            # of moby bugs, not the worker's. The row says so instead of the bench hanging.
            with contextlib.suppress(subprocess.TimeoutExpired):
                if left := tools.docker("ps", "-aq", "--filter", f"label={CLI_LABEL}", check=False, timeout=60).split():
                    tools.docker("rm", "-f", *left, check=False, timeout=60)
            return {"seconds": float("nan"), "jobs_per_s": float("nan"), "error": f"dockerd stopped answering: {exc}"}
        seconds = time.monotonic() - began
        return {"seconds": seconds, "jobs_per_s": n / seconds, **meters.used()}

    def _docker_pids(self) -> dict[str, list[int]]:
        """dockerd and containerd (the per-container shims and runc come and go: they count as the rest)."""
        found = {name: tools.pid_of(name) for name in ("dockerd", "containerd")}
        return {name: [pid] for name, pid in found.items() if pid is not None}

    # --- stop latency ---

    def stop_latency(self) -> list[Row]:
        rows: list[Row] = []
        for interval in self.sizes.stop_intervals:
            worker = self.worker(STATUS_POLL_INTERVAL=str(interval))
            for rep in range(self.sizes.repeats):
                row = {"what": f"worker, STATUS_POLL_INTERVAL={interval}", "repeat": rep, **self._stop_worker(interval)}
                rows.append(row)
                _progress(row)
                row = {"what": "docker stop + rm", "repeat": rep, "interval": interval, **self._stop_cli()}
                rows.append(row)
                _progress(row)
            self.retire(worker)
        return rows

    def _stop_worker(self, interval: int) -> Row:
        job_id = self.submit(tools.SLEEPER)
        self.dev.wait_status(job_id, {"running"}, 60)
        # The worker reads the status every `interval` s; stop at a random moment of that cycle.
        time.sleep(random.uniform(0.2, 0.2 + interval))
        began = time.monotonic()
        self.dev.stop_job(job_id)
        ref = self.dev.job(job_id)["container_id"]
        gone = wait_for(lambda: self._gone(ref) and time.monotonic(), 120, "the container to go", interval=0.01)
        stopped = wait_for(
            lambda: self.dev.status(job_id) == "stopped" and time.monotonic(), 60, "status stopped", interval=0.01
        )
        self.drop_job_files(job_id)
        return {"interval": interval, "gone_s": gone - began, "seconds": max(gone, stopped) - began}

    def _stop_cli(self) -> Row:
        name = self.container_name()
        tools.docker("run", "-d", "--name", name, IMAGE, *tools.SLEEPER)
        time.sleep(0.3)
        began = time.monotonic()
        tools.docker("stop", "-t", "10", name)
        tools.docker("rm", name)
        return {"seconds": time.monotonic() - began}

    def _gone(self, ref: str) -> bool:
        try:
            self.client.api.inspect_container(ref)
            return False
        except docker.errors.NotFound:
            return True

    # --- footprint at rest ---

    def idle(self) -> Row:
        """The worker with its default intervals next to `docker logs -f` of a silent container, same window."""
        worker = self.worker(POLL_INTERVAL="5", WORKER_HEARTBEAT_INTERVAL="30")
        assert worker.proc is not None
        name = self.container_name()
        tools.docker("run", "-d", "--name", name, IMAGE, *tools.SLEEPER)
        cli = tools.CliRun(["docker", "logs", "-f", name], self.root / "idle-cli.log")
        time.sleep(3)
        meters = {"worker": tools.Sampler(worker.proc.pid, 1), "docker logs -f": tools.Sampler(cli.proc.pid, 1)}
        assert self.dev.proc is not None
        backend = tools.Sampler(self.dev.proc.pid, 1)
        requests0 = self._request_count()
        end = time.monotonic() + self.sizes.idle_seconds
        while time.monotonic() < end:
            for meter in meters.values():
                meter.tick()
            time.sleep(0.2)
        requests = self._request_count() - requests0
        row: Row = {"seconds": self.sizes.idle_seconds, "requests": requests, "expected_requests": 0.0}
        row["expected_requests"] = self.sizes.idle_seconds * (1 / 5 + 1 / 30)
        row["backend_cpu_s"] = backend.cpu_used()
        for what, meter in meters.items():
            row[what] = {"cpu_s": meter.cpu_used(), "rss": meter.peak_rss}
        tools.docker("rm", "-f", name)
        cli.wait()
        self.retire(worker)
        _progress({"what": "idle", **row})
        return row

    def _request_count(self) -> int:
        text = self.dev.log_path.read_text(errors="replace")
        return sum(' HTTP/1.1" ' in line for line in text.splitlines())

    # --- profiles ---

    def profile(self, out: Path) -> dict[str, list[tuple[str, float]]]:
        """py-spy samples of the worker during one flood and a 20 s idle stretch: where its CPU goes."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            return {}
        out.mkdir(parents=True, exist_ok=True)
        found: dict[str, list[tuple[str, float]]] = {}
        worker = self.worker(POLL_INTERVAL="1", WORKER_HEARTBEAT_INTERVAL="2")
        assert worker.proc is not None
        for what in ("flood", "idle"):
            raw = out / f"worker-{what}.txt"
            recorder = subprocess.Popen(
                [spy, "record", "--pid", str(worker.proc.pid), "--format", "raw", "--rate", "200", "-o", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            if what == "flood":
                self.flood_worker(worker)
            else:
                time.sleep(20)
            recorder.send_signal(signal.SIGINT)
            recorder.wait(30)
            found[what] = _top_self(raw) if raw.exists() else []
        self.retire(worker)
        return found


def _env_names(secret: bool, count: int) -> list[str]:
    """Names for masking.secrets() values (the key first): secret-looking (TOKEN, KEY) or plain ones."""
    if secret:
        return ["BENCH_PRIVATE_KEY", *(f"BENCH_TOKEN_{i:02d}" for i in range(1, count))]
    return ["BENCH_PEM", *(f"BENCH_VALUE_{i:02d}" for i in range(1, count))]


def _masked(line: bytes, values: list[str]) -> bytes:
    """A printed line as the worker must write it with these secrets; it must differ (the value is masked)."""
    masker = SecretMasker(values)
    masked: bytes = masker.feed(line) + masker.flush()
    assert masked != line, "a printed secret must be masked"
    return masked


@contextlib.contextmanager
def _read_db(db: Path) -> Iterator[sqlite3.Connection]:
    """The devserver's database, read-only: polling it costs the backend process nothing (WAL: no lock held)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def _count_done(db: Path) -> int:
    with _read_db(db) as conn:
        counts = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    bad = {status: counts[status] for status in TERMINAL[1:] if counts.get(status)}
    if bad:
        raise RuntimeError(f"fleet jobs ended badly: {bad}")
    return int(counts.get("finished", 0))


def _job_rows(db: Path) -> list[Row]:
    """Every job with the times the backend recorded: created_at and each status change (history)."""
    with _read_db(db) as conn:
        rows = conn.execute("SELECT job_id, worker_id, created_at, attempt_number, history FROM jobs").fetchall()
    return [{**dict(row), "history": json.loads(row["history"])} for row in rows]


def _first(job: Row, status: str) -> float | None:
    return next((float(entry["at"]) for entry in job["history"] if entry["status"] == status), None)


def _phases(jobs: list[Row]) -> dict[str, float]:
    """Median seconds of each step of a job, by the backend's clock (when each report arrived)."""
    steps: dict[str, list[float]] = collections.defaultdict(list)
    ends: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)  # worker -> (dispatched, finished)
    for job in jobs:
        at = {status: _first(job, status) for status in ("dispatched", "setup", "running", "finished")}
        pairs: tuple[tuple[str, str], ...] = (("dispatched", "setup"), ("setup", "running"), ("running", "finished"))
        if at["setup"] is None:
            pairs = (("dispatched", "running"), ("running", "finished"))
        for begin, end in pairs:
            if (one := at[begin]) is not None and (two := at[end]) is not None:
                steps[f"{begin} -> {end}"].append(two - one)
        if at["dispatched"] is not None and at["finished"] is not None:
            ends[job["worker_id"]].append((at["dispatched"], at["finished"]))
    for spans in ends.values():
        spans.sort()
        steps["finished -> next dispatched"] += [b[0] - a[1] for a, b in itertools.pairwise(spans)]
    return {name: tools.median(values) for name, values in steps.items()}


def _first_pickup(jobs: list[Row]) -> float:
    """Seconds from the first job's creation to the first dispatch: once per batch, not per job, the first job
    waits in the queue for the worker's next poll."""
    dispatched = [at for job in jobs if (at := _first(job, "dispatched")) is not None]
    return min(dispatched) - min(float(job["created_at"]) for job in jobs)


def _fleet_figures(jobs: list[Row]) -> Row:
    """Jobs per second (first job created to last job finished), pickup delay (created -> first dispatched, time
    in the queue included), slot refill delay (a job of a worker finished -> that worker's next dispatch, pairing
    each dispatch with the oldest unpaired finish: a freed slot) and jobs dispatched more than once."""
    created = [float(job["created_at"]) for job in jobs]
    dispatched = [_first(job, "dispatched") for job in jobs]
    finished = [_first(job, "finished") for job in jobs]
    pickup = [d - c for c, d in zip(created, dispatched, strict=True) if d is not None]
    by_worker: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
    for job, d, f in zip(jobs, dispatched, finished, strict=True):
        if d is not None and f is not None:
            by_worker[job["worker_id"]] += [(d, 1), (f, 0)]
    refill: list[float] = []
    for events in by_worker.values():
        freed: collections.deque[float] = collections.deque()
        for at, is_dispatch in sorted(events):
            if not is_dispatch:
                freed.append(at)
            elif freed:
                refill.append(at - freed.popleft())
    twice = sum(
        1
        for job in jobs
        if job["attempt_number"] > 1 or sum(entry["status"] == "dispatched" for entry in job["history"]) > 1
    )
    ends = [f for f in finished if f is not None]
    seconds = max(ends) - min(created) if ends else float("nan")
    return {
        "seconds": seconds,
        "jobs_per_s": len(ends) / seconds,
        "pickup_p50_s": tools.percentile(pickup, 50),
        "pickup_p99_s": tools.percentile(pickup, 99),
        "refill_p50_s": tools.percentile(refill, 50),
        "refill_p99_s": tools.percentile(refill, 99),
        "dispatched_twice": twice,
        "workers_used": len(by_worker),
    }


def _flood_row(what: str, size: int, start: int, done: int, cpu: float, rss: int, dockerd: tools.Sampler | None) -> Row:
    seconds = (done - start) / 1e9 if done else float("nan")
    return {
        "what": what,
        "seconds": seconds,
        "mib_s": size / MiB / seconds,
        "cpu_s": cpu,
        "rss": rss,
        "dockerd_cpu_s": dockerd.cpu_used() if dockerd else float("nan"),
    }


def _top_self(raw: Path, count: int = 8) -> list[tuple[str, float]]:
    """Share of samples per innermost function, from py-spy's collapsed stacks ("a;b;c N" lines)."""
    totals: dict[str, int] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        name, _, where = leaf.partition(" (")
        key = f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]})" if where else name
        totals[key] = totals.get(key, 0) + int(samples)
    grand = sum(totals.values()) or 1
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:count]
    return [(key, 100 * value / grand) for key, value in ranked]


def _progress(row: Row) -> None:
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
    print("bench:", shown, flush=True)


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _docker_run_true() -> None:
    """The baseline's job: `docker run --rm` of a command that exits at once, given two minutes to return."""
    subprocess.run(
        ["docker", "run", "--rm", "--label", CLI_LABEL, IMAGE, "true"], check=True, capture_output=True, timeout=120
    )
