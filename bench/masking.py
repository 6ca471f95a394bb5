"""Secret masker throughput on ordinary log lines, side by side in one run (MB/s, median of 3 interleaved repeats).

.venv/bin/python bench/masking.py [--mib N] [--old-mib M]

Rows: no secrets; 32 secrets (a 4 KB PEM-like key and 31 tokens of 20-64 characters) in 256 KiB and 4 KiB
feeds; the same with one secret form every ~4 KiB; and the old text masker of worker_agent.logpump on the
first M MiB of the same data, already decoded (it runs at a few MB/s: the whole N would take minutes), read from
git history since the pump moved to bytes.
"""

from __future__ import annotations

import argparse
import ast
import base64
import random
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker_agent.logs.masking import SecretMasker, secret_forms

REPO = Path(__file__).resolve().parent.parent
# The last commit whose log pump masked text (str.replace per secret): the baseline.
OLD_MASKER = "dfe923e147fc02fe41439c44c752266dfd7a9c4d:src/worker_agent/logpump.py"
WORDS = ("the", "step", "epoch", "loss", "worker", "job", "started", "file", "model", "checkpoint", "took")


def log_lines(size: int, rnd: random.Random) -> bytes:
    """Timestamped lines with words, numbers, paths, hex ids and JSON; a 4 MiB block repeated up to `size`."""
    lines = []
    for i in range(40_000):
        words = " ".join(rnd.choices(WORDS, k=rnd.randint(3, 12)))
        stamp = f"2024-05-01T12:{i // 60 % 60:02d}:{i % 60:02d}.{rnd.randrange(1000):03d}Z"
        lines.append(
            f"{stamp} INFO worker[{rnd.randrange(99999)}]: {words} loss={rnd.random():.6f}\n"
            if i % 3
            else f'{stamp} DEBUG {words} path=/data/run-{i}/ckpt.pt id={rnd.getrandbits(128):032x} {{"n": {i}}}\n'
        )
    block = "".join(lines).encode()
    return (block * (size // len(block) + 1))[:size]


def secrets(rnd: random.Random) -> list[str]:
    body = base64.b64encode(rnd.randbytes(3000)).decode()
    key = "\n".join(["-----BEGIN PRIVATE KEY-----", *(body[i : i + 64] for i in range(0, 4000, 64))])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    tokens = ["".join(rnd.choices(alphabet, k=rnd.randint(20, 64))) for _ in range(31)]
    return [key + "\n-----END PRIVATE KEY-----\n", *tokens]


def with_secrets(data: bytes, values: list[str], rnd: random.Random) -> bytes:
    """`data` with a random form of a random secret inserted every ~4 KiB."""
    forms = sorted({form for value in values for form in secret_forms(value)})
    return b"".join(data[i : i + 4096] + rnd.choice(forms) for i in range(0, len(data), 4096))


def new_masker(values: list[str]) -> Callable[[list[bytes]], tuple[float, float]]:
    def seconds(chunks: list[bytes]) -> tuple[float, float]:
        masker = SecretMasker(values)
        wall, cpu = time.perf_counter(), time.process_time()
        for chunk in chunks:
            masker.feed(chunk)
        masker.flush()
        return time.perf_counter() - wall, time.process_time() - cpu

    return seconds


def old_text_masker() -> Any:
    """The log pump's former str-based SecretMasker, read from git history: the pump now uses the byte masker."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", OLD_MASKER], capture_output=True, text=True, check=True
    ).stdout
    wanted = {"SecretMasker", "SECRET_MASK", "MIN_SECRET_LENGTH", "__future__", "collections.abc"}
    body: list[ast.stmt] = [
        node
        for node in ast.parse(source).body
        if (isinstance(node, ast.ClassDef) and node.name in wanted)
        or (isinstance(node, ast.ImportFrom) and node.module in wanted)
        or (isinstance(node, ast.Assign) and {getattr(target, "id", "") for target in node.targets} & wanted)
    ]
    namespace: dict[str, Any] = {}
    exec(compile(ast.Module(body, type_ignores=[]), OLD_MASKER, "exec"), namespace)
    return namespace["SecretMasker"]


def old_masker(masker_class: Any, values: list[str]) -> Callable[[list[bytes]], tuple[float, float]]:
    def seconds(chunks: list[bytes]) -> tuple[float, float]:
        masker = masker_class(values)
        texts = [chunk.decode() for chunk in chunks]  # its decoding is not counted against it
        wall, cpu = time.perf_counter(), time.process_time()
        for text in texts:
            masker.feed(text)
        masker.flush()
        return time.perf_counter() - wall, time.process_time() - cpu

    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=200, help="MiB of log lines per run (default 200)")
    parser.add_argument("--old-mib", type=int, default=8, help="MiB for the old text masker (default 8)")
    args = parser.parse_args()
    rnd = random.Random(1)
    data = log_lines(args.mib << 20, rnd)
    values = secrets(rnd)
    check = SecretMasker(values)
    assert check.feed(data[: 4 << 20]) + check.flush() == data[: 4 << 20], "the log lines must hold no secret"

    def cut(blob: bytes, size: int) -> list[bytes]:
        return [blob[i : i + size] for i in range(0, len(blob), size)]

    big, small, old = cut(data, 256 << 10), cut(data[: 32 << 20], 4 << 10), cut(data[: args.old_mib << 20], 256 << 10)
    mixed = cut(with_secrets(data[: 64 << 20], values, rnd), 256 << 10)
    rows: list[tuple[str, Callable[[list[bytes]], tuple[float, float]], list[bytes]]] = [
        ("no secrets, 256 KiB feeds", new_masker([]), big),
        ("32 secrets, 256 KiB feeds", new_masker(values), big),
        ("32 secrets, 4 KiB feeds", new_masker(values), small),
        ("32 secrets, 256 KiB feeds, a secret every 4 KiB", new_masker(values), mixed),
        ("old text masker, 32 secrets, 256 KiB feeds", old_masker(old_text_masker(), values), old),
    ]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in rows}
    for _ in range(3):
        for name, seconds, chunks in rows:
            results[name].append(seconds(chunks))
    # CPU time too: on a shared machine other processes' load shows in the wall clock only.
    print(f"{'':<50} {'wall MB/s':>10} {'CPU MB/s':>10}")
    for name, _, chunks in rows:
        size = sum(map(len, chunks))
        wall, cpu = (size / statistics.median(times) / 1e6 for times in zip(*results[name], strict=True))
        print(f"{name:<50} {wall:10.1f} {cpu:10.1f}   ({size / (1 << 20):.0f} MiB)")


if __name__ == "__main__":
    main()
