"""Command line: `job-worker-agent [run]` starts the worker; every setting is a flag or an env var."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from worker_agent import __version__, config, logsetup
from worker_agent.config import ConfigError

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="job-worker-agent",
        description="Runs OPEVA jobs from the backend's queue in Docker containers, one at a time. "
        "Each option can also be set by the environment variable shown in brackets; a flag wins.",
    )
    parser.add_argument("command", nargs="?", default="run", choices=["run"], help="run: start the worker (default)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    config.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load(args)
        logsetup.configure(settings.log_level)
        for line in config.describe(settings):
            logging.getLogger("worker_agent").debug("setting %s", line)
        from worker_agent.worker import Worker

        return Worker(settings).run()
    except ConfigError as exc:
        print(f"job-worker-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
