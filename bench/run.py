"""Benchmark the worker against Docker's own CLI, side by side in one run; write the figures as Markdown.

.venv/bin/python bench/run.py                  # full run (~25 min on 2 idle cores) -> bench/RESULTS.md
.venv/bin/python bench/run.py --smoke --out F  # small sizes, 1 repeat, no profile (~1 min) -> F
.venv/bin/python bench/run.py --quick --out F  # every scenario at its full shape but small (~5 min) -> F
.venv/bin/python bench/run.py --quick --only masking,fleet --out F   # some scenarios only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import report, scenarios  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and one repeat: proves the suite still runs")
    parser.add_argument("--quick", action="store_true", help="small sizes (20 MiB, 20 jobs, 16 workers), one repeat")
    parser.add_argument("--only", help=f"comma-separated scenarios to run, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, help="Markdown to write (default bench/RESULTS.md; smoke: a temp file)")
    parser.add_argument("--repeats", type=int, help="repeats of each measurement (default 3; smoke 1)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument("--render", type=Path, help="only re-render the Markdown from a saved results JSON")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        (args.out or REPO / "bench" / "RESULTS.md").write_text(report.render(saved))
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = {"smoke": scenarios.SMOKE, "quick": scenarios.QUICK, "full": scenarios.FULL}[mode]
    if args.repeats:
        sizes = scenarios.Sizes(**{**sizes.__dict__, "repeats": args.repeats})
    chosen = args.only.split(",") if args.only else list(SCENARIOS)
    if unknown := set(chosen) - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.smoke or args.no_profile:
        chosen = [name for name in chosen if name != "profile"]
    if args.only:
        mode += " (" + ", ".join(chosen) + ")"
    # Only a full run of every scenario replaces bench/RESULTS.md by default.
    partial = mode != "full"
    out = args.out or (Path(tempfile.mkstemp(suffix=".md")[1]) if partial else REPO / "bench" / "RESULTS.md")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # still remove containers and processes
    began = time.monotonic()
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="opeva-bench-"))
    bench = scenarios.Bench(tmp, sizes)
    try:
        for name in chosen:
            began_one = time.monotonic()
            results[name] = SCENARIOS[name](bench)
            timings[name] = time.monotonic() - began_one
            # Kept as it goes: a run cut short still leaves its figures (`--render` makes the Markdown).
            _save(results, mode, bool(args.only))
    except BaseException:
        # What tells why (the backends' databases, the workers' output) stays for a look.
        print(f"bench: run cut short; its backends and workers left their files in {tmp}", file=sys.stderr)
        raise
    finally:
        bench.note_others()
        bench.close()
    shutil.rmtree(tmp, ignore_errors=True)
    results["meta"] = {
        "mode": mode,
        "repeats": sizes.repeats,
        "seconds": time.monotonic() - began,
        "scenario_seconds": timings,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {_cores()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "docker": _docker_version(),
        "commit": _git("rev-parse", "--short", "HEAD")
        + (" + uncommitted src/ changes" if _git("status", "-s", "src") else ""),
        "sizes": dataclasses.asdict(sizes),
        "others": sorted(bench.others),
    }
    _save(results, mode, bool(args.only))
    text = report.render(results)
    out.write_text(text)
    print(text)
    print(f"bench: wrote {out} after {results['meta']['seconds']:.0f}s")
    failures = report.failures(results)
    for failure in failures:
        print(f"bench: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


# In the order they run: the log floods first, the many-process scenarios later.
SCENARIOS: dict[str, Callable[[scenarios.Bench], Any]] = {
    "throughput": scenarios.Bench.throughput,
    "masking": scenarios.Bench.masking,
    "readopt": scenarios.Bench.readopt,
    "latency": scenarios.Bench.latency,
    "turnaround": scenarios.Bench.turnaround,
    "slots": scenarios.Bench.slots,
    "stop": scenarios.Bench.stop_latency,
    "idle": scenarios.Bench.idle,
    "fleet": scenarios.Bench.fleet,  # late: dockerd 20.10 has wedged once under its 16 concurrent `docker run`
    "profile": lambda bench: bench.profile(REPO / "bench" / "out"),
}


def _save(results: dict[str, Any], mode: str, partial: bool) -> None:
    saved = REPO / "bench" / "out" / f"results-{mode.split()[0]}{'-partial' if partial else ''}.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps(results, indent=1))


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def _docker_version() -> str:
    done = subprocess.run(["docker", "version", "-f", "{{.Server.Version}}"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return done.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
