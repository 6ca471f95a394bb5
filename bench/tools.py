"""Measuring instruments for the bench: file watchers, process meters, the Docker CLI, job scripts."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# One line of the flood, as `yes LINE | head -c N` prints it: 70 characters and a newline.
LINE = "0123456789" * 7
PATTERN = (LINE + "\n").encode() * 14768  # ~1 MiB, a whole number of lines
# The container's own wall clock (host CLOCK_REALTIME, in microseconds): busybox `date` has no %N here.
STAMP = "adjtimex | grep tv_"


def flood_script(*parts: int, pause: float = 0) -> list[str]:
    """A job that prints its start time, then `parts` bytes of lines as fast as it can (pausing between)."""
    pieces = [f"yes {LINE} | head -c {size}" for size in parts]
    gap = f"; sleep {pause}; " if pause else "; "
    return ["sh", "-c", f"{STAMP}; {gap.join(pieces)}"]


def tick_script(count: int, period: float) -> list[str]:
    """A job that prints its clock `count` times, `period` seconds apart, then DONE."""
    loop = f"i=0; while [ $i -lt {count} ]; do {STAMP}; sleep {period}; i=$((i+1)); done; echo DONE"
    return ["sh", "-c", loop]


# Exits at once on SIGTERM, as a well-behaved job does.
SLEEPER = ["sh", "-c", 'trap "exit 0" TERM; sleep 3600 & wait']


def parse_stamp(data: bytes) -> tuple[int, int] | None:
    """(wall-clock ns, bytes used) of the two `time.tv_sec:` / `time.tv_usec:` lines at the start of data."""
    lines = data.split(b"\n", 2)
    if len(lines) < 3 or b"tv_sec" not in lines[0] or b"tv_usec" not in lines[1]:
        return None
    sec, usec = int(lines[0].split()[-1]), int(lines[1].split()[-1])
    return sec * 1_000_000_000 + usec * 1000, len(lines[0]) + len(lines[1]) + 2


class Sampler:
    """Peak RSS and CPU seconds of a long-lived process, sampled at most every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.every = every
        self._next = 0.0
        self.peak_rss = 0
        self.cpu0 = self.cpu()

    def cpu(self) -> float:
        times = self.proc.cpu_times()
        return float(times.user + times.system)

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)

    def cpu_used(self) -> float:
        return self.cpu() - self.cpu0


def dockerd_pid() -> int | None:
    return pid_of("dockerd")


def wait_flood(
    path: Path,
    payload: int,
    timeout: float,
    tick: Callable[[], None] = lambda: None,
    ended: Callable[[], bool] = lambda: False,
) -> tuple[int, int]:
    """Wait until the file holds the start stamp and `payload` bytes after it; return (start ns, done ns).

    Polls the size every 2 ms; the file may be cut back meanwhile (a restarted worker resumes at a checkpoint).
    Raises ShortLog when `ended()` (asked every 0.5 s) says the writer is done while bytes are missing.
    """
    deadline = time.monotonic() + timeout
    next_ask = time.monotonic() + 0.5
    writer_done = False
    fd = -1
    start_ns, head = 0, -1
    try:
        while True:
            tick()
            if fd < 0 and path.exists():
                fd = os.open(path, os.O_RDONLY)
            if fd >= 0:
                size = os.fstat(fd).st_size
                if head < 0 and (stamp := parse_stamp(os.pread(fd, 200, 0))):
                    start_ns, head = stamp
                if head >= 0 and size >= head + payload:
                    return start_ns, time.time_ns()
                if writer_done:
                    raise ShortLog(f"the job ended with {size} bytes in its log, short of {payload} + stamp")
            if time.monotonic() >= next_ask:
                next_ask = time.monotonic() + 0.5
                writer_done = ended()
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not reach {payload} bytes in {timeout}s")
            time.sleep(0.002)
    finally:
        if fd >= 0:
            os.close(fd)


class ShortLog(Exception):
    """The writer finished, but the file does not hold every byte."""


def wait_size(path: Path, size: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size >= size):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not reach {size} bytes in {timeout}s")
        time.sleep(0.002)


def watch_ticks(path: Path, timeout: float) -> list[float]:
    """Read the file as it grows (every 1 ms); return each stamp's delay in ms, from print to arrival."""
    deadline = time.monotonic() + timeout
    delays: list[float] = []
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.001)
    with open(path, "rb") as handle:
        pending = b""
        sec = 0
        while True:
            chunk = handle.read()
            now = time.time_ns()
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if b"tv_sec" in line:
                        sec = int(line.split()[-1])
                    elif b"tv_usec" in line:
                        printed = sec * 1_000_000_000 + int(line.split()[-1]) * 1000
                        delays.append((now - printed) / 1e6)
                    elif line == b"DONE":
                        return delays
            elif time.monotonic() > deadline:
                raise TimeoutError(f"{path}: no DONE within {timeout}s ({len(delays)} stamps)")
            else:
                time.sleep(0.001)


def verify_flood(path: Path, parts: Sequence[int]) -> str | None:
    """None when the file is the stamp then exactly `parts` floods; else what is wrong."""
    return verify_pieces(path, list(parts))


def verify_pieces(path: Path, pieces: Sequence[int | bytes]) -> str | None:
    """None when the file is the stamp then exactly `pieces` (an int: that many bytes of flood, restarting the
    pattern; bytes: those bytes); else what is wrong."""
    with open(path, "rb") as handle:
        stamp = parse_stamp(handle.read(200))
        if stamp is None:
            return "no start stamp"
        handle.seek(stamp[1])
        done = 0
        for piece in pieces:
            if isinstance(piece, bytes):
                expected_parts = [piece]
            else:
                whole, rest = divmod(piece, len(PATTERN))
                expected_parts = [PATTERN] * whole + [PATTERN[:rest]]
            for expected in expected_parts:
                if handle.read(len(expected)) != expected:
                    return f"content differs within bytes {done}..{done + len(expected)} after the stamp"
                done += len(expected)
        extra = len(handle.read(1 << 20))
        return f"{extra} unexpected bytes after {done}" if extra else None


def printing_flood_script(parts: Sequence[int], names: Sequence[str]) -> list[str]:
    """A job that prints its start time, then `parts` bytes of lines, after each part one line
    `value <i>: $NAME` of the env var names[i % len(names)] (printf, so the value comes out exactly)."""
    steps = [
        f"yes {LINE} | head -c {size}; printf 'value {i}: %s\\n' \"${names[i % len(names)]}\""
        for i, size in enumerate(parts)
    ]
    return ["sh", "-c", "; ".join([STAMP, *steps])]


def printed_line(index: int, value: str) -> bytes:
    """What `printing_flood_script` prints after part `index` for a value (unmasked)."""
    return f"value {index}: {value}\n".encode()


def busy_cpu() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores; idle and iowait excluded)."""
    times = psutil.cpu_times()
    return float(sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal")))


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process, 0 when it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def pid_of(name: str) -> int | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == name:
            return int(proc.pid)
    return None


class CpuMeters:
    """CPU seconds used from now on by groups of processes, by the bench itself (with its reaped children, such as
    `docker` CLI runs) and by the whole machine; NaN for a group whose process went away (dockerd restarted)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.start = {name: self._group(pids) for name, pids in groups.items()}
        self.bench0 = _own_cpu()
        self.busy0 = busy_cpu()
        self.wall0 = time.monotonic()

    @staticmethod
    def _group(pids: list[int]) -> float:
        return sum(process_cpu(pid) for pid in pids)

    def used(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall0
        used = {f"{name}_cpu_s": self._group(pids) - self.start[name] for name, pids in self.groups.items()}
        found = {key: value if value >= 0 else float("nan") for key, value in used.items()}
        busy = busy_cpu() - self.busy0
        found.update(
            bench_cpu_s=_own_cpu() - self.bench0,
            machine_busy_s=busy,
            machine_busy_share=busy / ((psutil.cpu_count() or 1) * wall),
            window_s=wall,
        )
        return found


def _own_cpu() -> float:
    own = os.times()
    return own.user + own.system + own.children_user + own.children_system


@dataclass
class CliRun:
    """A Docker CLI process whose output goes to a file; its rusage once it has exited."""

    argv: list[str]
    out: Path
    proc: subprocess.Popen[bytes] = field(init=False)
    cpu: float = 0.0
    maxrss: int = 0

    def __post_init__(self) -> None:
        with open(self.out, "wb") as handle:
            self.proc = subprocess.Popen(self.argv, stdout=handle, stderr=subprocess.DEVNULL)

    def exited(self) -> bool:
        """Whether the process has ended, without reaping it (wait() still gets its rusage)."""
        return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def wait(self) -> int:
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu = usage.ru_utime + usage.ru_stime
        self.maxrss = usage.ru_maxrss * 1024
        return self.proc.returncode


def docker(*args: str, check: bool = True, timeout: float | None = None) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
