"""The measurements: each runs the worker and its Docker CLI baseline side by side, interleaved."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from bench import tools

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import BUSYBOX_IMAGE, Devserver, WorkerProcess, build_busybox_image, wait_for

IMAGE = BUSYBOX_IMAGE
MiB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    repeats: int
    flood_bytes: int
    tick_count: int
    jobs: int
    stop_intervals: tuple[int, ...]
    idle_seconds: float


FULL = Sizes(repeats=3, flood_bytes=200 * MiB, tick_count=800, jobs=50, stop_intervals=(1, 10), idle_seconds=60)
SMOKE = Sizes(repeats=1, flood_bytes=4 * MiB, tick_count=30, jobs=3, stop_intervals=(1,), idle_seconds=3)

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

    def worker(self, **env: str) -> WorkerProcess:
        self.note_others()
        base = {"LOG_LEVEL": "INFO", "POLL_INTERVAL": "1", "STATUS_POLL_INTERVAL": "10", "STOP_GRACE_PERIOD": "10"}
        worker = WorkerProcess(self.dev, self.root, {**base, **env}).start()
        self.workers.append(worker)
        wait_for(lambda: worker.worker_id in self.dev.hosts(), 30, "the worker's first heartbeat")
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
        worker = self.worker(POLL_INTERVAL="1")
        rows: list[Row] = []
        n = self.sizes.jobs
        for rep in range(self.sizes.repeats):
            for how in ("worker", "docker run --rm")[:: 1 if rep % 2 == 0 else -1]:
                began = time.monotonic()
                if how == "worker":
                    ids = {self.submit(["true"]) for _ in range(n)}
                    wait_for(lambda ids=ids: self._all_done(ids), 300, f"{n} jobs", interval=0.05)
                else:
                    for _ in range(n):
                        subprocess.run(["docker", "run", "--rm", IMAGE, "true"], check=True, capture_output=True)
                elapsed = time.monotonic() - began
                row = {"what": how, "repeat": rep, "jobs": n, "seconds": elapsed, "per_job_s": elapsed / n}
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
                    workers = [self.worker(POLL_INTERVAL="1", WORKER_MAX_ACTIVE_JOBS="4")]
                else:
                    workers = [self.worker(POLL_INTERVAL="1") for _ in range(4)]
                began = time.monotonic()
                ids = {self.submit(["true"]) for _ in range(n)}
                wait_for(lambda ids=ids: self._all_done(ids), 300, f"{n} jobs", interval=0.05)
                elapsed = time.monotonic() - began
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

    def _ended(self, job_id: str) -> Callable[[], bool]:
        return lambda: self.dev.status(job_id) in ("finished", "failed", "stopped", "canceled")

    def _all_done(self, ids: set[str]) -> bool:
        jobs = [job for job in self.dev.request("GET", "/jobs") if job["job_id"] in ids]
        bad = [job for job in jobs if job["status"] in ("failed", "stopped", "canceled")]
        if bad:
            raise RuntimeError(f"a turnaround job ended {bad[0]['status']}: {bad[0]}")
        return bool(sum(job["status"] == "finished" for job in jobs) == len(ids))

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
        requests0 = self._request_count()
        end = time.monotonic() + self.sizes.idle_seconds
        while time.monotonic() < end:
            for meter in meters.values():
                meter.tick()
            time.sleep(0.2)
        requests = self._request_count() - requests0
        row: Row = {"seconds": self.sizes.idle_seconds, "requests": requests, "expected_requests": 0.0}
        row["expected_requests"] = self.sizes.idle_seconds * (1 / 5 + 1 / 30)
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
